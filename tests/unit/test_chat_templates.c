/*
 * test_chat_templates.c: every chat template under ../shared/chat_templates (each subfolder; .jinja
 * files and JSON files with a chat_template) parses and renders a plain conversation with
 * add_generation_prompt: [system, user, assistant, user], or [user, assistant, user] for templates that
 * refuse a system message. The text must hold every message's content.
 *
 * Then mistral-common's own samples (../shared/oracles/mistral-common-samples): the pairs of sample and
 * tokenizer version whose text the mistral-common *_spm.jinja templates reproduce must come out equal,
 * reading the sample's U+2581 (SentencePiece's space) as a space. The other pairs differ in mistral-common
 * itself (it moves system prompts and tool results around), so they are only rendered.
 */
#include "core/error.h"
#include "core/util.h"
#include "tokenizer/chat.h"
#include "test.h"

#include <dirent.h>
#include <unistd.h>
#include <jansson.h>
#include <sys/stat.h>

static const char *conv_sys = "[{\"role\": \"system\", \"content\": \"You are a helpful assistant.\"},"
                              " {\"role\": \"user\", \"content\": \"Hello!\"},"
                              " {\"role\": \"assistant\", \"content\": \"Hi! How can I help?\"},"
                              " {\"role\": \"user\", \"content\": \"What is 2+2?\"}]";
static const char *conv_plain = "[{\"role\": \"user\", \"content\": \"Hello!\"},"
                                " {\"role\": \"assistant\", \"content\": \"Hi! How can I help?\"},"
                                " {\"role\": \"user\", \"content\": \"What is 2+2?\"}]";

static int n_templates, n_rendered, n_without_system;

static bool renders(struct loom_chat_template *t, const char *conv, bool with_system, char **err)
{
    json_t *m = json_loads(conv, 0, NULL);
    char *out = NULL;
    size_t n = 0;
    int rc = loom_chat_render(t, m, NULL, true, NULL, &out, &n);
    json_decref(m);
    if (rc) {
        free(*err);
        *err = loom_strdup(loom_last_error());
        return false;
    }
    bool ok = strstr(out, "Hello!") && strstr(out, "Hi! How can I help?") && strstr(out, "What is 2+2?") &&
              (!with_system || strstr(out, "You are a helpful assistant."));
    if (!ok) {
        free(*err);
        size_t k = n > 300 ? 300 : n;
        *err = loom_malloc(k + 64);
        snprintf(*err, k + 64, "a message is missing from the text: %.*s", (int)k, out);
    }
    free(out);
    return ok;
}

static void check_template(const char *path, struct loom_chat_template *t)
{
    n_templates++;
    char *err = NULL;
    if (renders(t, conv_sys, true, &err)) {
        n_rendered++;
    } else if (renders(t, conv_plain, false, &err)) {
        n_rendered++;
        n_without_system++;
        printf("  %s: refuses a system message; rendered [user, assistant, user]\n", path);
    } else {
        CHECK_MSG(0, "%s: %s", path, err);
    }
    free(err);
}

static void walk(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char **names = NULL;
    int n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        names = loom_realloc(names, (size_t)(n + 1) * sizeof(*names));
        names[n++] = loom_strdup(e->d_name);
    }
    closedir(d);
    for (int i = 0; i < n; i++) { /* sorted, for a stable report */
        for (int j = i + 1; j < n; j++)
            if (strcmp(names[j], names[i]) < 0) {
                char *t = names[i];
                names[i] = names[j];
                names[j] = t;
            }
    }
    for (int i = 0; i < n; i++) {
        char *p = loom_path_join(dir, names[i]);
        struct stat st;
        size_t l = strlen(names[i]);
        if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
            walk(p);
        } else if (l > 6 && !strcmp(names[i] + l - 6, ".jinja")) {
            char *src;
            if (loom_read_file(p, &src, NULL) == 0) {
                struct loom_chat_template *t;
                int rc = loom_chat_template_create(src, "<s>", "</s>", &t);
                CHECK_MSG(rc == 0, "%s: %s", p, loom_last_error());
                if (!rc) check_template(p, t);
                loom_chat_template_free(t);
                free(src);
            }
        } else if (l > 5 && !strcmp(names[i] + l - 5, ".json")) {
            char *src;
            size_t len;
            if (loom_read_file(p, &src, &len) == 0) {
                struct loom_chat_template *t;
                int rc = loom_chat_template_from_config(src, len, &t);
                if (rc != LOOM_ENOTFOUND) {
                    CHECK_MSG(rc == 0, "%s: %s", p, loom_last_error());
                    if (!rc) check_template(p, t);
                }
                loom_chat_template_free(t);
                free(src);
            }
        }
        free(p);
        free(names[i]);
    }
    free(names);
}

/* Replaces U+2581 by a space, in place. */
static size_t unspm(char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        if (i + 2 < n && (unsigned char)s[i] == 0xE2 && (unsigned char)s[i + 1] == 0x96 &&
            (unsigned char)s[i + 2] == 0x81) {
            s[k++] = ' ';
            i += 3;
        } else {
            s[k++] = s[i++];
        }
    }
    s[k] = 0;
    return k;
}

static void mistral_samples(void)
{
    /* pairs mistral-common's *_spm.jinja templates reproduce */
    static const char *const match[][2] = {
        {"no_tools", "v1"},       {"no_tools", "v2"},      {"no_tools", "v3"},
        {"parallel_calls", "v3"}, {"several_calls", "v2"}, {"several_calls", "v3"},
    };
    static const char *const samples[] = {"get_weather_full", "get_weather_no_history", "get_weather_no_system_prompt",
                                          "no_tools", "parallel_calls", "several_calls"};
    static const char *const versions[] = {"v1", "v2", "v3"};
    int equal = 0, compared = 0, rendered = 0;
    for (size_t v = 0; v < 3; v++) {
        char rel[256];
        snprintf(rel, sizeof rel, "chat_templates/mistral-common/%s_spm.jinja", versions[v]);
        char *src;
        if (loom_read_file(test_shared(rel), &src, NULL)) continue;
        struct loom_chat_template *t;
        int rc = loom_chat_template_create(src, "<s>", "</s>", &t);
        free(src);
        CHECK_MSG(rc == 0, "%s: %s", rel, loom_last_error());
        if (rc) continue;
        for (size_t s = 0; s < sizeof samples / sizeof samples[0]; s++) {
            char path[512];
            snprintf(path, sizeof path, "oracles/mistral-common-samples/%s/text_%s.txt", samples[s], versions[v]);
            char *want;
            size_t wn;
            if (loom_read_file(test_shared(path), &want, &wn)) continue;
            wn = unspm(want, wn);
            snprintf(path, sizeof path, "oracles/mistral-common-samples/%s/sample.json", samples[s]);
            json_t *sample = json_load_file(test_shared(path), 0, NULL);
            CHECK_MSG(sample != NULL, "%s: not JSON", path);
            if (!sample) {
                free(want);
                continue;
            }
            json_t *tools = json_object_get(sample, "tools");
            char *out = NULL;
            size_t n = 0;
            rc = loom_chat_render(t, json_object_get(sample, "messages"), tools, false, NULL, &out, &n);
            bool expected = false;
            for (size_t k = 0; k < sizeof match / sizeof match[0]; k++)
                if (!strcmp(match[k][0], samples[s]) && !strcmp(match[k][1], versions[v])) expected = true;
            if (rc == 0) rendered++;
            if (expected) {
                compared++;
                bool same = rc == 0 && n == wn && !memcmp(out, want, n);
                CHECK_MSG(same, "mistral-common %s %s: %s", samples[s], versions[v],
                          rc ? loom_last_error() : "the text differs");
                if (same) equal++;
            } else {
                CHECK_MSG(rc == 0, "mistral-common %s %s: %s", samples[s], versions[v], loom_last_error());
            }
            free(out);
            free(want);
            json_decref(sample);
        }
        loom_chat_template_free(t);
    }
    printf("mistral-common samples: %d/%d equal to mistral-common's text, %d rendered\n", equal, compared, rendered);
}

/* The chat API around the interpreter: template choice, special tokens, kwargs, errors, folders. */
static void chat_api(void)
{
    struct loom_chat_template *t;
    char *out;
    size_t n;
    json_t *msgs = json_loads("[{\"role\": \"user\", \"content\": \"hi\"}]", 0, NULL);
    /* named templates: tool_use when tools are given, else default; AddedToken-style special tokens */
    const char *cfg = "{\"bos_token\": {\"__type\": \"AddedToken\", \"content\": \"<s>\"}, \"eos_token\": \"</s>\","
                      " \"pad_token\": null, \"chat_template\": [{\"name\": \"default\", \"template\":"
                      " \"D{{ bos_token }}{{ messages[0].content }}{{ eos_token }}{{ pad_token is defined }}{{ tools }}\"},"
                      " {\"name\": \"tool_use\", \"template\": \"T{{ tools|length }}{{ documents }}{{ x }}\"}]}";
    CHECK(loom_chat_template_from_config(cfg, strlen(cfg), &t) == 0);
    CHECK(loom_chat_render(t, msgs, NULL, true, NULL, &out, &n) == 0);
    CHECK_EQ_STR(out, "D<s>hi</s>FalseNone");
    free(out);
    json_t *tools = json_loads("[{\"type\": \"function\"}]", 0, NULL);
    json_t *extra = json_loads("{\"x\": 5}", 0, NULL);
    CHECK(loom_chat_render(t, msgs, tools, true, extra, &out, &n) == 0);
    CHECK_EQ_STR(out, "T1None5");
    free(out);
    json_decref(extra);
    loom_chat_template_free(t);
    /* several templates and no default: an error, unless tools pick tool_use */
    cfg = "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}, {\"name\": \"rag\", \"template\": \"R\"}]}";
    CHECK(loom_chat_template_from_config(cfg, strlen(cfg), &t) == 0);
    CHECK(loom_chat_render(t, msgs, NULL, true, NULL, &out, &n) == LOOM_EINVAL);
    CHECK(loom_chat_render(t, msgs, tools, true, NULL, &out, &n) == 0);
    CHECK_EQ_STR(out, "T");
    free(out);
    loom_chat_template_free(t);
    json_decref(tools);
    /* kwargs reach the template (enable_thinking), and override special tokens */
    CHECK(loom_chat_template_create("{{ bos_token }}{% if enable_thinking is false %}no-think{% endif %}", "<s>", NULL,
                                    &t) == 0);
    extra = json_loads("{\"enable_thinking\": false, \"bos_token\": \"B\"}", 0, NULL);
    CHECK(loom_chat_render(t, msgs, NULL, false, extra, &out, &n) == 0);
    CHECK_EQ_STR(out, "Bno-think");
    free(out);
    json_decref(extra);
    loom_chat_template_free(t);
    /* errors: a template that raises, a syntax error, no template, a template that does not parse but is
     * never chosen, bad arguments */
    CHECK(loom_chat_template_create("{{ raise_exception('only user messages') }}", NULL, NULL, &t) == 0);
    CHECK(loom_chat_render(t, msgs, NULL, true, NULL, &out, &n) == LOOM_EINVAL);
    CHECK(strstr(loom_last_error(), "only user messages") && strstr(loom_last_error(), "line 1"));
    CHECK(loom_chat_render(t, json_object_get(msgs, "x") /* NULL */, NULL, true, NULL, &out, &n) == LOOM_EINVAL);
    loom_chat_template_free(t);
    CHECK(loom_chat_template_create("a\n{% for %}", NULL, NULL, &t) == LOOM_EINVAL);
    CHECK(strstr(loom_last_error(), "line 2") != NULL);
    cfg = "{\"bos_token\": \"<s>\", \"chat_template\": null}";
    CHECK(loom_chat_template_from_config(cfg, strlen(cfg), &t) == LOOM_ENOTFOUND);
    CHECK(loom_chat_template_from_config("{", 1, &t) == LOOM_EINVAL);
    cfg = "{\"chat_template\": [{\"name\": \"default\", \"template\": \"ok\"}, {\"name\": \"rag\", \"template\": \"{% if %}\"}]}";
    CHECK(loom_chat_template_from_config(cfg, strlen(cfg), &t) == 0);
    CHECK(loom_chat_render(t, msgs, NULL, true, NULL, &out, &n) == 0);
    CHECK_EQ_STR(out, "ok");
    free(out);
    loom_chat_template_free(t);
    /* the shared Mistral v1 config has no template */
    char *text;
    size_t len;
    if (loom_read_file(test_shared("tokenizers/mistral-7b-v0.1_mixtral-8x7b-v0.1/tokenizer_config.json"), &text, &len) == 0) {
        CHECK(loom_chat_template_from_config(text, len, &t) == LOOM_ENOTFOUND);
        free(text);
    }
    /* a folder: chat_template.jinja wins over the config's template */
    char dir[] = "/tmp/loom_chat_XXXXXX";
    if (mkdtemp(dir)) {
        char *p1 = loom_path_join(dir, "tokenizer_config.json"), *p2 = loom_path_join(dir, "chat_template.jinja");
        const char *c1 = "{\"eos_token\": \"</s>\", \"chat_template\": \"config\"}";
        CHECK(loom_write_file(p1, c1, strlen(c1)) == 0);
        CHECK(loom_chat_template_load(dir, &t) == 0);
        CHECK(loom_chat_render(t, msgs, NULL, true, NULL, &out, &n) == 0);
        CHECK_EQ_STR(out, "config");
        free(out);
        loom_chat_template_free(t);
        CHECK(loom_write_file(p2, "file{{ eos_token }}\n", 20) == 0);
        CHECK(loom_chat_template_load(dir, &t) == 0);
        CHECK(loom_chat_render(t, msgs, NULL, true, NULL, &out, &n) == 0);
        CHECK_EQ_STR(out, "file</s>");
        free(out);
        loom_chat_template_free(t);
        remove(p1);
        remove(p2);
        CHECK(loom_chat_template_load(dir, &t) == LOOM_ENOTFOUND);
        rmdir(dir);
        free(p1);
        free(p2);
    }
    json_decref(msgs);
}

int main(void)
{
    loom_chat_set_time(1795608000LL);
    const char *root = test_shared("chat_templates");
    struct stat st;
    if (stat(root, &st) != 0) test_skip("../shared/chat_templates not found");
    walk(root);
    printf("chat templates: %d/%d rendered (%d without a system message)\n", n_rendered, n_templates, n_without_system);
    CHECK_MSG(n_templates >= 20, "only %d templates found", n_templates);
    mistral_samples();
    chat_api();
    return test_report();
}
