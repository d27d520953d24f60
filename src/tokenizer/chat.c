/*
 * chat.c: chat templates as transformers' apply_chat_template renders them. The template comes from
 * tokenizer_config.json's `chat_template` (a string, or a list of {name, template}), or from a model
 * folder's chat_template.jinja and additional_chat_templates/NAME.jinja, which transformers prefers to the
 * config. The context is transformers': the tokenizer's special tokens (bos_token, eos_token, unk_token,
 * pad_token, ... when set), then the caller's extra keyword arguments, then messages, tools (None when not
 * given), documents (None unless given) and add_generation_prompt.
 *
 * Named templates are chosen per render: "tool_use" when tools are given and it exists, else "default"
 * (transformers' get_chat_template). Every template is parsed up front; one that does not parse fails
 * only when it is chosen. The Jinja interpreter is jinja.c.
 */
#include "tokenizer/chat.h"
#include "core/error.h"
#include "core/util.h"
#include "tokenizer/jinja.h"

#include <dirent.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct named_template {
    char *name;
    struct loom_jinja_template *tpl; /* NULL if it did not parse */
    char *error;                     /* the parse error then */
};

struct loom_chat_template {
    struct named_template *v;
    int n;
    json_t *special; /* object: special token name -> string (or list of strings) */
};

static _Atomic long long pinned_time;

void loom_chat_set_time(long long unix_seconds)
{
    atomic_store(&pinned_time, unix_seconds);
}

static void add_template(struct loom_chat_template *t, const char *name, const char *src, size_t len)
{
    for (int i = 0; i < t->n; i++) /* a later source of the same name wins */
        if (!strcmp(t->v[i].name, name)) {
            loom_jinja_free(t->v[i].tpl);
            free(t->v[i].error);
            free(t->v[i].name);
            t->v[i] = t->v[--t->n];
            break;
        }
    t->v = loom_realloc(t->v, (size_t)(t->n + 1) * sizeof(*t->v));
    struct named_template *nt = &t->v[t->n++];
    nt->name = loom_strdup(name);
    nt->tpl = NULL;
    nt->error = NULL;
    if (loom_jinja_parse(src, len, NULL, &nt->tpl)) nt->error = loom_strdup(loom_last_error());
}

static struct loom_chat_template *chat_new(void)
{
    struct loom_chat_template *t = loom_calloc(1, sizeof(*t));
    t->special = json_object();
    if (!t->special) LOOM_DIE("out of memory");
    return t;
}

void loom_chat_template_free(struct loom_chat_template *t)
{
    if (!t) return;
    for (int i = 0; i < t->n; i++) {
        loom_jinja_free(t->v[i].tpl);
        free(t->v[i].error);
        free(t->v[i].name);
    }
    free(t->v);
    json_decref(t->special);
    free(t);
}

/* A special token in tokenizer_config.json: a string or an AddedToken object {"content": ...}. */
static const char *token_string(json_t *v)
{
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v)) {
        json_t *c = json_object_get(v, "content");
        if (json_is_string(c)) return json_string_value(c);
    }
    return NULL;
}

static void read_special(struct loom_chat_template *t, json_t *cfg)
{
    static const char *const names[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                        "pad_token", "cls_token", "mask_token"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *s = token_string(json_object_get(cfg, names[i]));
        if (s && *s) json_object_set_new(t->special, names[i], json_string(s));
    }
    json_t *extra = json_object_get(cfg, "additional_special_tokens");
    if (json_is_array(extra) && json_array_size(extra)) {
        json_t *l = json_array();
        size_t i;
        json_t *v;
        json_array_foreach(extra, i, v)
        {
            const char *s = token_string(v);
            if (s) json_array_append_new(l, json_string(s));
        }
        json_object_set_new(t->special, "additional_special_tokens", l);
    }
}

/* The chat_template field: a string, or a list of {"name", "template"}. Returns the number found. */
static int read_templates(struct loom_chat_template *t, json_t *ct)
{
    if (json_is_string(ct)) {
        add_template(t, "default", json_string_value(ct), json_string_length(ct));
        return 1;
    }
    int n = 0;
    if (json_is_array(ct)) {
        size_t i;
        json_t *v;
        json_array_foreach(ct, i, v)
        {
            json_t *name = json_object_get(v, "name"), *src = json_object_get(v, "template");
            if (!json_is_string(name) || !json_is_string(src)) continue;
            add_template(t, json_string_value(name), json_string_value(src), json_string_length(src));
            n++;
        }
    } else if (json_is_object(ct)) {
        const char *k;
        json_t *v;
        json_object_foreach(ct, k, v)
        {
            if (!json_is_string(v)) continue;
            add_template(t, k, json_string_value(v), json_string_length(v));
            n++;
        }
    }
    return n;
}

int loom_chat_template_from_config(const char *tokenizer_config_json, size_t len, struct loom_chat_template **out)
{
    *out = NULL;
    json_error_t je;
    /* numbers are of no use here, and configs hold ints larger than jansson takes (model_max_length) */
    json_t *cfg = json_loadb(tokenizer_config_json, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &je);
    if (!cfg) return loom_fail(LOOM_EINVAL, "tokenizer_config.json: %s (line %d)", je.text, je.line);
    if (!json_is_object(cfg)) {
        json_decref(cfg);
        return loom_fail(LOOM_EINVAL, "tokenizer_config.json: not a JSON object");
    }
    struct loom_chat_template *t = chat_new();
    read_special(t, cfg);
    int n = read_templates(t, json_object_get(cfg, "chat_template"));
    json_decref(cfg);
    if (!n) {
        loom_chat_template_free(t);
        return loom_fail(LOOM_ENOTFOUND, "tokenizer_config.json has no chat_template");
    }
    *out = t;
    return 0;
}

int loom_chat_template_create(const char *source, const char *bos_token, const char *eos_token,
                              struct loom_chat_template **out)
{
    struct loom_chat_template *t = chat_new();
    if (bos_token) json_object_set_new(t->special, "bos_token", json_string(bos_token));
    if (eos_token) json_object_set_new(t->special, "eos_token", json_string(eos_token));
    add_template(t, "default", source, strlen(source));
    if (t->v[0].error) {
        int rc = loom_fail(LOOM_EINVAL, "chat template: %s", t->v[0].error);
        loom_chat_template_free(t);
        *out = NULL;
        return rc;
    }
    *out = t;
    return 0;
}

int loom_chat_template_load(const char *dir, struct loom_chat_template **out)
{
    *out = NULL;
    char *path = loom_path_join(dir, "tokenizer_config.json");
    char *cfgtext = NULL;
    size_t cfglen = 0;
    bool have_cfg = loom_file_exists(path);
    if (have_cfg && loom_read_file(path, &cfgtext, &cfglen)) {
        free(path);
        return LOOM_EIO;
    }
    free(path);
    struct loom_chat_template *t = chat_new();
    if (have_cfg) {
        json_error_t je;
        json_t *cfg = json_loadb(cfgtext, cfglen, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &je);
        free(cfgtext);
        if (!cfg || !json_is_object(cfg)) {
            json_decref(cfg);
            loom_chat_template_free(t);
            return loom_fail(LOOM_EINVAL, "%s/tokenizer_config.json: %s", dir, cfg ? "not a JSON object" : je.text);
        }
        read_special(t, cfg);
        read_templates(t, json_object_get(cfg, "chat_template"));
        json_decref(cfg);
    }
    /* transformers saves templates as files and prefers them to the config's */
    char *jpath = loom_path_join(dir, "chat_template.jinja");
    if (loom_file_exists(jpath)) {
        char *src;
        size_t n;
        if (loom_read_file(jpath, &src, &n)) {
            free(jpath);
            loom_chat_template_free(t);
            return LOOM_EIO;
        }
        add_template(t, "default", src, n);
        free(src);
    }
    free(jpath);
    char *adir = loom_path_join(dir, "additional_chat_templates");
    DIR *d = opendir(adir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            size_t l = strlen(e->d_name);
            if (l <= 6 || strcmp(e->d_name + l - 6, ".jinja")) continue;
            char *p = loom_path_join(adir, e->d_name);
            char *src;
            size_t n;
            if (!loom_read_file(p, &src, &n)) {
                char *name = loom_strndup(e->d_name, l - 6);
                add_template(t, name, src, n);
                free(name);
                free(src);
            }
            free(p);
        }
        closedir(d);
    }
    free(adir);
    if (!t->n) {
        loom_chat_template_free(t);
        return loom_fail(LOOM_ENOTFOUND,
                         "%s has no chat template (tokenizer_config.json's chat_template or chat_template.jinja)", dir);
    }
    *out = t;
    return 0;
}

static const struct named_template *choose(const struct loom_chat_template *t, bool have_tools)
{
    const struct named_template *def = NULL;
    for (int i = 0; i < t->n; i++) {
        if (have_tools && !strcmp(t->v[i].name, "tool_use")) return &t->v[i];
        if (!strcmp(t->v[i].name, "default")) def = &t->v[i];
    }
    return def;
}

int loom_chat_render(const struct loom_chat_template *t, json_t *messages, json_t *tools, bool add_generation_prompt,
                     json_t *extra, char **out, size_t *out_len)
{
    *out = NULL;
    if (out_len) *out_len = 0;
    if (!json_is_array(messages)) return loom_fail(LOOM_EINVAL, "chat: messages must be an array");
    if (tools && !json_is_array(tools) && !json_is_null(tools))
        return loom_fail(LOOM_EINVAL, "chat: tools must be an array");
    if (extra && !json_is_object(extra)) return loom_fail(LOOM_EINVAL, "chat: template arguments must be an object");
    if (tools && json_is_null(tools)) tools = NULL;
    const struct named_template *nt = choose(t, tools != NULL);
    if (!nt)
        return loom_fail(LOOM_EINVAL, "chat: this model has several chat templates and none is named \"default\"; "
                                      "pass tools to use \"tool_use\"");
    if (nt->error) return loom_fail(LOOM_EINVAL, "chat template '%s': %s", nt->name, nt->error);
    json_t *ctx = json_deep_copy(t->special);
    if (!ctx) LOOM_DIE("out of memory");
    if (extra) json_object_update(ctx, extra);
    if (!json_object_get(ctx, "documents")) json_object_set_new(ctx, "documents", json_null());
    json_object_set(ctx, "messages", messages);
    json_object_set_new(ctx, "tools", tools ? json_incref(tools) : json_null());
    json_object_set_new(ctx, "add_generation_prompt", json_boolean(add_generation_prompt));
    int rc = loom_jinja_render(nt->tpl, ctx, atomic_load(&pinned_time), NULL, out, out_len);
    json_decref(ctx);
    if (rc) return loom_fail_context(rc, "chat template");
    return 0;
}
