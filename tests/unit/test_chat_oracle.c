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
#include <time.h>

static void show_diff(const char *want, size_t wn, const char *got, size_t gn)
{
    size_t i = 0;
    while (i < wn && i < gn && want[i] == got[i]) i++;
    size_t from = i > 40 ? i - 40 : 0;
    fprintf(stderr, "  first difference at byte %zu\n  want: %.*s\n  got:  %.*s\n", i,
            (int)((wn - from) > 120 ? 120 : wn - from), want + from, (int)((gn - from) > 120 ? 120 : gn - from),
            got + from);
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
            }
            printf("%s/%s: %d/%d conversations match (text%s)\n", tok_name, cfg_name, pass, total,
                   tok ? " and ids" : "");
            loom_chat_template_free(t);
            free(cfgpath);
        }
        loom_tokenizer_free(tok);
    }
    CHECK_MSG(files >= 4, "only %d chat oracle files found", files);
    json_decref(oracle);
    return test_report();
}
