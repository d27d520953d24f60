/*
 * test_chat_oracle.c: chat templates against transformers. For every conversation in
 * ../shared/oracles/tokenizers/hf_tokenizers.json `chat[config file][]` (the key names the
 * tokenizer_config file in that tokenizer's folder), loom_chat_render with add_generation_prompt and the
 * conversation's tools must give the oracle's `text` byte for byte (or fail where the oracle records
 * `error`), and the text encoded without special tokens must give the oracle's `ids`.
 * strftime_now() is pinned to 25 Nov 2026, the day the oracle was rendered (see oracles/README.md).
 */
#include "core/error.h"
#include "core/util.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"
#include "test.h"

#include <jansson.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void show_diff(const char *want, size_t wn, const char *got, size_t gn)
{
    size_t i = 0;
    while (i < wn && i < gn && want[i] == got[i]) i++;
    size_t from = i > 40 ? i - 40 : 0;
    fprintf(stderr, "  first difference at byte %zu\n  want: %.*s\n  got:  %.*s\n", i,
            (int)((wn - from) > 120 ? 120 : wn - from), want + from, (int)((gn - from) > 120 ? 120 : gn - from),
            got + from);
}

/* `loom chat-render DIR --now T < request` must print exactly `want` (NULL: must fail with status 1). */
static int cli_pass, cli_total;
static void check_cli(const char *bin, const char *dir, const char *request, const char *want, size_t wn)
{
    char req[] = "/tmp/loom_chat_req_XXXXXX";
    int fd = mkstemp(req);
    if (fd < 0) return;
    FILE *f = fdopen(fd, "w");
    fputs(request, f);
    fclose(f);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' chat-render '%s' --now 1795608000 < '%s' 2>/dev/null", bin, dir, req);
    FILE *p = popen(cmd, "r");
    char *buf = malloc(1 << 20);
    size_t n = p ? fread(buf, 1, (1 << 20) - 1, p) : 0;
    int st = p ? pclose(p) : -1;
    remove(req);
    cli_total++;
    bool ok = want ? (st == 0 && n == wn && !memcmp(buf, want, wn)) : (WIFEXITED(st) && WEXITSTATUS(st) == 1 && n == 0);
    CHECK_MSG(ok, "loom chat-render %s: status %d, %zu bytes%s", dir, st, n, want ? "" : " (expected a failure)");
    cli_pass += ok;
    free(buf);
}

int main(void)
{
    setenv("TZ", "UTC", 1);
    tzset();
    loom_chat_set_time(1795608000LL); /* 2026-11-25 12:00:00 UTC */

    json_error_t je;
    json_t *oracle = json_load_file(test_shared("oracles/tokenizers/hf_tokenizers.json"), 0, &je);
    if (!oracle) test_skip("oracles/tokenizers/hf_tokenizers.json not found");

    int files = 0;
    const char *tok_name;
    json_t *tok_entry;
    json_object_foreach(oracle, tok_name, tok_entry)
    {
        json_t *chat = json_object_get(tok_entry, "chat");
        if (!json_is_object(chat)) continue;
        char rel[512];
        snprintf(rel, sizeof rel, "tokenizers/%s", tok_name);
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", test_shared(rel));
        struct loom_tokenizer *tok = NULL;
        int trc = loom_tokenizer_load(dir, &tok);
        CHECK_MSG(trc == 0, "%s: tokenizer: %s", tok_name, loom_last_error());

        const char *cfg_name;
        json_t *convs;
        json_object_foreach(chat, cfg_name, convs)
        {
            files++;
            int pass = 0, total = 0;
            char *cfgpath = loom_path_join(dir, cfg_name);
            char *cfg;
            size_t cfglen;
            if (loom_read_file(cfgpath, &cfg, &cfglen)) {
                CHECK_MSG(0, "%s: %s", cfgpath, loom_last_error());
                free(cfgpath);
                continue;
            }
            struct loom_chat_template *t;
            int rc = loom_chat_template_from_config(cfg, cfglen, &t);
            free(cfg);
            CHECK_MSG(rc == 0, "%s: %s", cfgpath, loom_last_error());
            if (rc) {
                free(cfgpath);
                continue;
            }
            size_t i;
            json_t *c;
            json_array_foreach(convs, i, c)
            {
                total++;
                json_t *conv = json_object_get(c, "conversation");
                json_t *messages = json_object_get(conv, "messages");
                json_t *tools = json_object_get(conv, "tools");
                json_t *want = json_object_get(c, "text");
                char *out = NULL;
                size_t out_len = 0;
                rc = loom_chat_render(t, messages, tools, true, NULL, &out, &out_len);
                if (json_object_get(c, "error")) {
                    CHECK_MSG(rc != 0, "%s/%s conversation %zu: the oracle fails, loom rendered", tok_name, cfg_name, i);
                    if (rc != 0) pass++;
                    free(out);
                    continue;
                }
                if (rc) {
                    CHECK_MSG(0, "%s/%s conversation %zu: %s", tok_name, cfg_name, i, loom_last_error());
                    continue;
                }
                const char *w = json_string_value(want);
                size_t wn = json_string_length(want);
                bool same = w && out_len == wn && !memcmp(out, w, wn);
                CHECK_MSG(same, "%s/%s conversation %zu: text differs", tok_name, cfg_name, i);
                if (!same && w) show_diff(w, wn, out, out_len);
                bool ids_ok = true;
                json_t *want_ids = json_object_get(c, "ids");
                if (tok && json_is_array(want_ids)) {
                    int32_t *ids = NULL;
                    int n = 0;
                    rc = loom_tokenizer_encode(tok, out, out_len, false, &ids, &n);
                    ids_ok = rc == 0 && (size_t)n == json_array_size(want_ids);
                    for (int k = 0; ids_ok && k < n; k++)
                        ids_ok = ids[k] == json_integer_value(json_array_get(want_ids, (size_t)k));
                    CHECK_MSG(ids_ok, "%s/%s conversation %zu: token ids differ (%d ids, oracle %zu)", tok_name,
                              cfg_name, i, n, json_array_size(want_ids));
                    free(ids);
                }
                if (same && ids_ok) pass++;
                free(out);
                const char *bin = getenv("LOOM_BIN");
                if (bin && !strcmp(cfg_name, "tokenizer_config.json") && w) {
                    char *req = json_dumps(conv, JSON_COMPACT);
                    size_t rl = strlen(req);
                    req[rl - 1] = 0; /* drop the closing brace: add add_generation_prompt */
                    char *full = malloc(rl + 64);
                    snprintf(full, rl + 64, "%s, \"add_generation_prompt\": true}", req);
                    check_cli(bin, dir, full, w, wn);
                    if (i == 0) check_cli(bin, dir, "{\"messages\": [", NULL, 0);
                    free(full);
                    free(req);
                }
            }
            printf("%s/%s: %d/%d conversations match (text%s)\n", tok_name, cfg_name, pass, total,
                   tok ? " and ids" : "");
            loom_chat_template_free(t);
            free(cfgpath);
        }
        loom_tokenizer_free(tok);
    }
    CHECK_MSG(files >= 4, "only %d chat oracle files found", files);
    if (getenv("LOOM_BIN"))
        printf("loom chat-render: %d/%d runs as expected\n", cli_pass, cli_total);
    else
        printf("loom chat-render: not checked (LOOM_BIN unset)\n");
    json_decref(oracle);
    return test_report();
}
