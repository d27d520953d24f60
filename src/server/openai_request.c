/*
 * openai_request.c: OpenAI / vLLM request bodies -> struct loom_api_request, validated field by field.
 * Every failure is a 400 (an OpenAI error object) that names the field, the value and the rule; JSON
 * null counts as absent everywhere. Does not tokenize, render templates or look at the model: the
 * checks that need the vocabulary or the context length are the route's (openai.c).
 */
#include "server/openai.h"

#include "core/error.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PROMPTS        1024 /* prompts in one completions request */
#define MAX_CHOICES        1024 /* n * prompts */
#define MAX_N              128  /* as OpenAI's chat API */
#define MAX_LOGPROBS       20   /* vLLM's default max_logprobs */
#define MAX_STOP           64   /* stop strings */
#define MAX_STOP_LEN       4096 /* bytes per stop string */
#define MAX_STOP_TOKEN_IDS 1024
#define MAX_LOGIT_BIAS     4096
#define MAX_TOKENS_LIMIT   (1 << 30)

int loom_api_error_set(struct loom_api_error *err, int status, const char *param, const char *fmt, ...)
{
    err->status = status;
    err->type = status >= 500 ? "server_error" : "invalid_request_error";
    err->code = NULL;
    snprintf(err->param, sizeof(err->param), "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
    return -1;
}

char *loom_api_error_json(const struct loom_api_error *err)
{
    json_t *e = json_object();
    json_object_set_new(e, "message", loom_api_json_string(err->message, strlen(err->message)));
    json_object_set_new(e, "type", json_string(err->type ? err->type : "invalid_request_error"));
    json_object_set_new(e, "param", err->param[0] ? json_string(err->param) : json_null());
    json_object_set_new(e, "code", err->code ? json_string(err->code) : json_null());
    json_t *root = json_object();
    json_object_set_new(root, "error", e);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!s) LOOM_DIE("out of memory formatting an error");
    return s;
}

/* ---------------------------------------------------------------------------------------------- */
/* Typed field access. Each returns 0 (absent or ok) or -1 (err filled). */

static json_t *field(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_null(v) ? NULL : v;
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

static int get_bool(json_t *obj, const char *key, bool *out, struct loom_api_error *err)
{
    json_t *v = field(obj, key);
    if (!v) return 0;
    if (!json_is_boolean(v))
        return loom_api_error_set(err, 400, key, "'%s' must be a boolean, got %s", key, json_kind(v));
    *out = json_is_true(v);
    return 0;
}

/* An integer (a real with an integral value is accepted, as pydantic does). */
static int as_int(json_t *v, const char *name, long long lo, long long hi, long long *out,
                  struct loom_api_error *err)
{
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d == floor(d)) || fabs(d) > 9e18)
            return loom_api_error_set(err, 400, name, "'%s' must be an integer, got %g", name, d);
        x = (long long)d;
    } else {
        return loom_api_error_set(err, 400, name, "'%s' must be an integer, got %s", name, json_kind(v));
    }
    if (x < lo)
        return loom_api_error_set(err, 400, name, "'%s' must be at least %lld, got %lld", name, lo, x);
    if (x > hi) return loom_api_error_set(err, 400, name, "'%s' must be at most %lld, got %lld", name, hi, x);
    *out = x;
    return 0;
}

static int get_int(json_t *obj, const char *key, long long lo, long long hi, long long *out, bool *present,
                   struct loom_api_error *err)
{
    json_t *v = field(obj, key);
    if (present) *present = v != NULL;
    if (!v) return 0;
    return as_int(v, key, lo, hi, out, err);
}

/* A number in [lo, hi]; lo_open makes the low end exclusive. */
static int get_num(json_t *obj, const char *key, double lo, bool lo_open, double hi, double *out,
                   struct loom_api_error *err)
{
    json_t *v = field(obj, key);
    if (!v) return 0;
    if (!json_is_number(v))
        return loom_api_error_set(err, 400, key, "'%s' must be a number, got %s", key, json_kind(v));
    double x = json_number_value(v);
    if (!isfinite(x) || (lo_open ? !(x > lo) : !(x >= lo)) || !(x <= hi))
        return loom_api_error_set(err, 400, key, "'%s' must be in %s%g, %g], got %g", key,
                                  lo_open ? "(" : "[", lo, hi, x);
    *out = x;
    return 0;
}

/* A field that loom does not support and that would change the output if ignored. */
static int reject_if_set(json_t *obj, const char *key, const char *why, struct loom_api_error *err)
{
    json_t *v = field(obj, key);
    if (!v) return 0;
    if (json_is_false(v)) return 0;
    if (json_is_string(v) && json_string_length(v) == 0) return 0;
    return loom_api_error_set(err, 400, key, "'%s' is not supported by loom: %s", key, why);
}

/* A list of token ids: [1, 2, 3]. */
static int parse_ids(json_t *arr, const char *name, int32_t **out, int *n_out, struct loom_api_error *err)
{
    size_t n = json_array_size(arr);
    int32_t *ids = loom_malloc((n ? n : 1) * sizeof(*ids));
    for (size_t i = 0; i < n; i++) {
        long long x = 0;
        if (as_int(json_array_get(arr, i), name, 0, INT32_MAX, &x, err)) {
            free(ids);
            return -1;
        }
        ids[i] = (int32_t)x;
    }
    *out = ids;
    *n_out = (int)n;
    return 0;
}

static bool all_of_type(json_t *arr, json_type t)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (t == JSON_INTEGER ? !json_is_number(v) : json_typeof(v) != t) return false;
    }
    return true;
}

/* ---------------------------------------------------------------------------------------------- */
/* Prompts (completions, tokenize) and messages (chat, tokenize). */

static int parse_prompt(json_t *root, struct loom_api_request *r, struct loom_api_error *err)
{
    json_t *p = field(root, "prompt");
    if (!p) return loom_api_error_set(err, 400, "prompt", "'prompt' is required");
    if (json_is_string(p)) {
        r->prompts = loom_calloc(1, sizeof(*r->prompts));
        r->n_prompts = 1;
        r->prompts[0].text = json_string_value(p);
        r->prompts[0].text_len = json_string_length(p);
        return 0;
    }
    if (!json_is_array(p))
        return loom_api_error_set(
            err, 400, "prompt",
            "'prompt' must be a string, an array of strings, an array of token ids or an "
            "array of token id arrays, got %s",
            json_kind(p));
    size_t n = json_array_size(p);
    if (n == 0) return loom_api_error_set(err, 400, "prompt", "'prompt' must not be an empty array");
    if (all_of_type(p, JSON_INTEGER)) { /* one prompt of ids */
        r->prompts = loom_calloc(1, sizeof(*r->prompts));
        r->n_prompts = 1;
        return parse_ids(p, "prompt", &r->prompts[0].ids, &r->prompts[0].n_ids, err);
    }
    if (n > MAX_PROMPTS)
        return loom_api_error_set(err, 400, "prompt", "'prompt' has %zu prompts; at most %d are allowed", n,
                                  MAX_PROMPTS);
    bool strings = all_of_type(p, JSON_STRING), lists = all_of_type(p, JSON_ARRAY);
    if (!strings && !lists)
        return loom_api_error_set(
            err, 400, "prompt",
            "'prompt' as an array must hold only strings, only token ids or only arrays of "
            "token ids");
    r->prompts = loom_calloc(n, sizeof(*r->prompts));
    r->n_prompts = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(p, i);
        if (strings) {
            r->prompts[i].text = json_string_value(e);
            r->prompts[i].text_len = json_string_length(e);
        } else {
            if (json_array_size(e) == 0)
                return loom_api_error_set(err, 400, "prompt", "'prompt[%zu]' is an empty token list", i);
            if (!all_of_type(e, JSON_INTEGER))
                return loom_api_error_set(err, 400, "prompt", "'prompt[%zu]' must be an array of token ids",
                                          i);
            if (parse_ids(e, "prompt", &r->prompts[i].ids, &r->prompts[i].n_ids, err)) return -1;
        }
    }
    return 0;
}

static bool valid_role(const char *role)
{
    static const char *roles[] = {"system", "developer", "user", "assistant", "tool", "function"};
    for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++)
        if (!strcmp(role, roles[i])) return true;
    return false;
}

/* messages -> a normalized deep copy: content parts [{type: text, text}] joined by "\n" into a string
 * (as vLLM does for string-content templates), tool call arguments given as JSON strings parsed into
 * objects (as vLLM hands them to templates). */
static int parse_messages(json_t *root, struct loom_api_request *r, struct loom_api_error *err)
{
    json_t *msgs = field(root, "messages");
    if (!msgs) return loom_api_error_set(err, 400, "messages", "'messages' is required");
    if (!json_is_array(msgs))
        return loom_api_error_set(err, 400, "messages", "'messages' must be an array, got %s",
                                  json_kind(msgs));
    if (json_array_size(msgs) == 0)
        return loom_api_error_set(err, 400, "messages", "'messages' must hold at least one message");
    r->messages = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        if (!json_is_object(m))
            return loom_api_error_set(err, 400, "messages", "'messages[%zu]' must be an object, got %s", i,
                                      json_kind(m));
        json_t *role = field(m, "role");
        if (!role || !json_is_string(role))
            return loom_api_error_set(err, 400, "messages", "'messages[%zu].role' must be a string", i);
        if (!valid_role(json_string_value(role)))
            return loom_api_error_set(err, 400, "messages",
                                      "'messages[%zu].role' is '%.64s'; expected system, developer, user, "
                                      "assistant or tool",
                                      i, json_string_value(role));
        json_t *copy = json_deep_copy(m);
        json_array_append_new(r->messages, copy);
        json_t *content = field(m, "content");
        const char *rs = json_string_value(role);
        if (!content) {
            if (strcmp(rs, "assistant"))
                return loom_api_error_set(err, 400, "messages",
                                          "'messages[%zu].content' is required for role '%s'", i, rs);
        } else if (json_is_array(content)) {
            struct loom_buf text = {0};
            size_t j;
            json_t *part;
            json_array_foreach(content, j, part)
            {
                json_t *type = json_is_object(part) ? field(part, "type") : NULL;
                json_t *t = json_is_object(part) ? field(part, "text") : NULL;
                if (!type || !json_is_string(type) || strcmp(json_string_value(type), "text") ||
                    !json_is_string(t)) {
                    loom_buf_free(&text);
                    if (type && json_is_string(type) && strcmp(json_string_value(type), "text"))
                        return loom_api_error_set(
                            err, 400, "messages",
                            "'messages[%zu].content[%zu]' has type '%.64s'; loom serves "
                            "text-only models, so only {\"type\": \"text\", \"text\": ...} "
                            "parts are accepted",
                            i, j, json_string_value(type));
                    return loom_api_error_set(
                        err, 400, "messages",
                        "'messages[%zu].content[%zu]' must be {\"type\": \"text\", \"text\": "
                        "string}",
                        i, j);
                }
                if (j) loom_buf_append(&text, "\n", 1);
                loom_buf_append(&text, json_string_value(t), json_string_length(t));
            }
            json_object_set_new(copy, "content", json_stringn(text.data ? text.data : "", text.len));
            loom_buf_free(&text);
        } else if (!json_is_string(content)) {
            return loom_api_error_set(
                err, 400, "messages",
                "'messages[%zu].content' must be a string or an array of text parts, got %s", i,
                json_kind(content));
        }
        json_t *calls = field(copy, "tool_calls");
        if (calls && json_is_array(calls)) {
            size_t k;
            json_t *call;
            json_array_foreach(calls, k, call)
            {
                json_t *fn = json_is_object(call) ? field(call, "function") : NULL;
                json_t *args = fn && json_is_object(fn) ? field(fn, "arguments") : NULL;
                if (args && json_is_string(args)) {
                    json_t *parsed = json_loadb(json_string_value(args), json_string_length(args), 0, NULL);
                    if (parsed && json_is_object(parsed))
                        json_object_set_new(fn, "arguments", parsed);
                    else
                        json_decref(parsed);
                }
            }
        }
    }
    return 0;
}

static int parse_tools(json_t *root, struct loom_api_request *r, struct loom_api_error *err)
{
    json_t *tools = field(root, "tools");
    if (tools) {
        if (!json_is_array(tools))
            return loom_api_error_set(err, 400, "tools", "'tools' must be an array, got %s",
                                      json_kind(tools));
        size_t i;
        json_t *t;
        json_array_foreach(tools, i, t)
        {
            json_t *type = json_is_object(t) ? field(t, "type") : NULL;
            json_t *fn = json_is_object(t) ? field(t, "function") : NULL;
            if (!type || !json_is_string(type) || strcmp(json_string_value(type), "function") ||
                !json_is_object(fn) || !json_is_string(field(fn, "name")))
                return loom_api_error_set(
                    err, 400, "tools",
                    "'tools[%zu]' must be {\"type\": \"function\", \"function\": {\"name\": "
                    "string, ...}}",
                    i);
        }
        if (json_array_size(tools)) r->tools = tools;
    }
    json_t *choice = field(root, "tool_choice");
    if (choice) {
        if (json_is_string(choice)) {
            const char *c = json_string_value(choice);
            if (!strcmp(c, "required"))
                return loom_api_error_set(
                    err, 400, "tool_choice",
                    "'tool_choice' \"required\" needs guided decoding, which loom does not "
                    "have; use \"auto\" (the template sees the tools)");
            if (strcmp(c, "auto") && strcmp(c, "none"))
                return loom_api_error_set(
                    err, 400, "tool_choice",
                    "'tool_choice' must be \"none\", \"auto\" or \"required\", got \"%.64s\"", c);
        } else if (json_is_object(choice)) {
            return loom_api_error_set(
                err, 400, "tool_choice",
                "'tool_choice' naming a function needs guided decoding, which loom does not "
                "have; use \"auto\"");
        } else {
            return loom_api_error_set(err, 400, "tool_choice",
                                      "'tool_choice' must be a string or an object, got %s",
                                      json_kind(choice));
        }
    }
    return 0;
}

static int parse_template_options(json_t *root, struct loom_api_request *r, struct loom_api_error *err)
{
    json_t *kw = field(root, "chat_template_kwargs");
    if (kw && !json_is_object(kw))
        return loom_api_error_set(err, 400, "chat_template_kwargs",
                                  "'chat_template_kwargs' must be an object, got %s", json_kind(kw));
    r->template_kwargs = kw ? json_deep_copy(kw) : json_object();
    json_t *docs = field(root, "documents");
    if (docs) json_object_set(r->template_kwargs, "documents", docs);
    if (field(root, "chat_template"))
        return loom_api_error_set(
            err, 400, "chat_template",
            "'chat_template' in a request is not accepted (a template runs code); the model's "
            "tokenizer_config.json template is used");
    r->add_generation_prompt = true;
    if (get_bool(root, "add_generation_prompt", &r->add_generation_prompt, err)) return -1;
    if (get_bool(root, "continue_final_message", &r->continue_final_message, err)) return -1;
    if (r->continue_final_message && r->add_generation_prompt)
        return loom_api_error_set(err, 400, "continue_final_message",
                                  "'continue_final_message' and 'add_generation_prompt' cannot both be true");
    if (r->continue_final_message) {
        json_t *last = json_array_get(r->messages, json_array_size(r->messages) - 1);
        if (strcmp(json_string_value(json_object_get(last, "role")), "assistant"))
            return loom_api_error_set(
                err, 400, "continue_final_message",
                "'continue_final_message' needs the last message to be the assistant's");
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Sampling parameters (vLLM's SamplingParams, OpenAI names first). */

static int parse_stop(json_t *root, struct loom_api_request *r, struct loom_api_error *err)
{
    json_t *stop = field(root, "stop");
    if (!stop) return 0;
    if (json_is_string(stop)) {
        if (json_string_length(stop) == 0) return 0;
        if (json_string_length(stop) > MAX_STOP_LEN)
            return loom_api_error_set(err, 400, "stop", "'stop' is longer than %d bytes", MAX_STOP_LEN);
        r->stop = loom_malloc(sizeof(*r->stop));
        r->stop[0] = json_string_value(stop);
        r->params.n_stop = 1;
    } else if (json_is_array(stop)) {
        size_t n = json_array_size(stop);
        if (n > MAX_STOP)
            return loom_api_error_set(err, 400, "stop", "'stop' has %zu strings; at most %d", n, MAX_STOP);
        r->stop = loom_malloc((n ? n : 1) * sizeof(*r->stop));
        for (size_t i = 0; i < n; i++) {
            json_t *s = json_array_get(stop, i);
            if (!json_is_string(s))
                return loom_api_error_set(err, 400, "stop", "'stop[%zu]' must be a string, got %s", i,
                                          json_kind(s));
            if (json_string_length(s) > MAX_STOP_LEN)
                return loom_api_error_set(err, 400, "stop", "'stop[%zu]' is longer than %d bytes", i,
                                          MAX_STOP_LEN);
            if (json_string_length(s) == 0) continue;
            r->stop[r->params.n_stop++] = json_string_value(s);
        }
    } else {
        return loom_api_error_set(err, 400, "stop", "'stop' must be a string or an array of strings, got %s",
                                  json_kind(stop));
    }
    r->params.stop = r->stop;
    return 0;
}

static int parse_sampling(json_t *root, struct loom_api_request *r, struct loom_api_error *err)
{
    struct loom_sampling_params *p = &r->params;
    long long x = 0;
    double d;
    bool present = false;

    /* max_tokens (chat: max_completion_tokens wins) */
    const char *mt_key = "max_tokens";
    if (r->kind == LOOM_API_CHAT && field(root, "max_completion_tokens")) mt_key = "max_completion_tokens";
    if (get_int(root, mt_key, 1, MAX_TOKENS_LIMIT, &x, &present, err)) return -1;
    if (present) {
        p->max_tokens = (int)x;
        r->max_tokens_set = true;
    }
    if (get_int(root, "n", 1, MAX_N, &x, NULL, err)) return -1;
    p->n = (int)(field(root, "n") ? x : 1);
    json_t *best_of = field(root, "best_of");
    if (best_of) {
        if (as_int(best_of, "best_of", 1, MAX_N, &x, err)) return -1;
        if (x != p->n)
            return loom_api_error_set(
                err, 400, "best_of",
                "'best_of' (%lld) must equal 'n' (%d): loom returns every sample it draws", x, p->n);
    }
    d = p->temperature;
    if (get_num(root, "temperature", 0, false, 2, &d, err)) return -1;
    p->temperature = (float)d;
    d = p->top_p;
    if (get_num(root, "top_p", 0, true, 1, &d, err)) return -1;
    p->top_p = (float)d;
    if (get_int(root, "top_k", -1, INT32_MAX, &x, &present, err)) return -1;
    if (present) p->top_k = x < 0 ? 0 : (int)x;
    d = p->min_p;
    if (get_num(root, "min_p", 0, false, 1, &d, err)) return -1;
    p->min_p = (float)d;
    d = p->repetition_penalty;
    if (get_num(root, "repetition_penalty", 0, true, 2, &d, err)) return -1;
    p->repetition_penalty = (float)d;
    d = p->presence_penalty;
    if (get_num(root, "presence_penalty", -2, false, 2, &d, err)) return -1;
    p->presence_penalty = (float)d;
    d = p->frequency_penalty;
    if (get_num(root, "frequency_penalty", -2, false, 2, &d, err)) return -1;
    p->frequency_penalty = (float)d;
    if (get_int(root, "seed", INT64_MIN, INT64_MAX, &x, &present, err)) return -1;
    if (present) {
        p->has_seed = true;
        p->seed = (uint64_t)x;
    }
    if (get_int(root, "min_tokens", 0, MAX_TOKENS_LIMIT, &x, &present, err)) return -1;
    if (present) {
        p->min_tokens = (int)x;
        if (r->max_tokens_set && p->min_tokens > p->max_tokens)
            return loom_api_error_set(err, 400, "min_tokens", "'min_tokens' (%d) must not exceed '%s' (%d)",
                                      p->min_tokens, mt_key, p->max_tokens);
    }
    if (get_bool(root, "ignore_eos", &p->ignore_eos, err)) return -1;
    if (get_bool(root, "skip_special_tokens", &p->skip_special_tokens, err)) return -1;
    if (get_bool(root, "include_stop_str_in_output", &p->include_stop_str_in_output, err)) return -1;
    if (get_int(root, "priority", INT32_MIN, INT32_MAX, &x, &present, err)) return -1;
    if (present) p->priority = (int)x;
    if (parse_stop(root, r, err)) return -1;

    json_t *sti = field(root, "stop_token_ids");
    if (sti) {
        if (!json_is_array(sti))
            return loom_api_error_set(err, 400, "stop_token_ids",
                                      "'stop_token_ids' must be an array of token ids");
        if (json_array_size(sti) > MAX_STOP_TOKEN_IDS)
            return loom_api_error_set(err, 400, "stop_token_ids", "'stop_token_ids' has more than %d ids",
                                      MAX_STOP_TOKEN_IDS);
        if (parse_ids(sti, "stop_token_ids", &r->stop_token_ids, &p->n_stop_token_ids, err)) return -1;
        p->stop_token_ids = r->stop_token_ids;
    }

    json_t *lb = field(root, "logit_bias");
    if (lb) {
        if (!json_is_object(lb))
            return loom_api_error_set(err, 400, "logit_bias",
                                      "'logit_bias' must be an object mapping token ids to biases, got %s",
                                      json_kind(lb));
        size_t n = json_object_size(lb);
        if (n > MAX_LOGIT_BIAS)
            return loom_api_error_set(err, 400, "logit_bias", "'logit_bias' has more than %d entries",
                                      MAX_LOGIT_BIAS);
        r->logit_bias = loom_malloc((n ? n : 1) * sizeof(*r->logit_bias));
        const char *key;
        json_t *v;
        json_object_foreach(lb, key, v)
        {
            char *end;
            long long id = strtoll(key, &end, 10);
            if (end == key || *end || id < 0 || id > INT32_MAX)
                return loom_api_error_set(err, 400, "logit_bias",
                                          "'logit_bias' key '%.32s' is not a token id", key);
            if (!json_is_number(v) || !(json_number_value(v) >= -100 && json_number_value(v) <= 100))
                return loom_api_error_set(err, 400, "logit_bias",
                                          "'logit_bias[\"%.32s\"]' must be a number in [-100, 100]", key);
            r->logit_bias[p->n_logit_bias].token_id = (int32_t)id;
            r->logit_bias[p->n_logit_bias].bias = (float)json_number_value(v);
            p->n_logit_bias++;
        }
        p->logit_bias = r->logit_bias;
    }

    /* logprobs: completions an int, chat a bool + top_logprobs */
    json_t *lp = field(root, "logprobs");
    if (r->kind == LOOM_API_CHAT) {
        bool want = false;
        if (get_bool(root, "logprobs", &want, err)) return -1;
        if (get_int(root, "top_logprobs", 0, MAX_LOGPROBS, &x, &present, err)) return -1;
        if (present && !want && x > 0)
            return loom_api_error_set(err, 400, "top_logprobs",
                                      "'top_logprobs' needs 'logprobs' set to true");
        r->logprobs = want ? (present ? (int)x : 0) : -1;
    } else if (lp) {
        if (as_int(lp, "logprobs", 0, MAX_LOGPROBS, &x, err)) return -1;
        r->logprobs = (int)x;
    }
    p->logprobs = r->logprobs;
    if (get_bool(root, "return_tokens_as_token_ids", &r->return_tokens_as_token_ids, err)) return -1;
    if (get_int(root, "prompt_logprobs", 0, MAX_LOGPROBS, &x, &present, err)) return -1;
    if (present) p->prompt_logprobs = (int)x;
    if (get_int(root, "truncate_prompt_tokens", -1, INT32_MAX, &x, &present, err)) return -1;
    if (present) {
        if (x == 0)
            return loom_api_error_set(
                err, 400, "truncate_prompt_tokens",
                "'truncate_prompt_tokens' must be at least 1 (or -1: the context length)");
        r->truncate_prompt_tokens = (int)x;
    }
    return 0;
}

static int parse_stream(json_t *root, struct loom_api_request *r, struct loom_api_error *err)
{
    if (get_bool(root, "stream", &r->stream, err)) return -1;
    json_t *so = field(root, "stream_options");
    if (!so) return 0;
    if (!json_is_object(so))
        return loom_api_error_set(err, 400, "stream_options", "'stream_options' must be an object, got %s",
                                  json_kind(so));
    if (!r->stream)
        return loom_api_error_set(err, 400, "stream_options",
                                  "'stream_options' is only allowed when 'stream' is true");
    if (get_bool(so, "include_usage", &r->include_usage, err)) return -1;
    if (get_bool(so, "continuous_usage_stats", &r->continuous_usage, err)) return -1;
    return 0;
}

static int parse_unsupported(json_t *root, struct loom_api_request *r, struct loom_api_error *err)
{
    static const char *guided[] = {"guided_json",    "guided_regex",       "guided_choice",
                                   "guided_grammar", "structured_outputs", "allowed_token_ids",
                                   "bad_words",      "logits_processors"};
    for (size_t i = 0; i < sizeof(guided) / sizeof(guided[0]); i++)
        if (reject_if_set(root, guided[i], "guided decoding and token masks are not implemented", err))
            return -1;
    if (reject_if_set(root, "use_beam_search", "beam search is not implemented", err)) return -1;
    if (r->kind == LOOM_API_COMPLETIONS &&
        reject_if_set(root, "suffix",
                      "fill-in-the-middle needs a model-specific template; send the whole prompt", err))
        return -1;
    json_t *rf = field(root, "response_format");
    if (rf) {
        json_t *type = json_is_object(rf) ? field(rf, "type") : NULL;
        if (!type || !json_is_string(type))
            return loom_api_error_set(err, 400, "response_format",
                                      "'response_format' must be an object with a string 'type'");
        if (strcmp(json_string_value(type), "text"))
            return loom_api_error_set(
                err, 400, "response_format",
                "'response_format' type '%.64s' is not supported (it needs guided decoding); "
                "only \"text\" is",
                json_string_value(type));
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */

static void defaults(struct loom_api_request *r, enum loom_api_kind kind)
{
    memset(r, 0, sizeof(*r));
    r->kind = kind;
    r->logprobs = -1;
    r->add_special_tokens = kind == LOOM_API_COMPLETIONS || kind == LOOM_API_TOKENIZE;
    struct loom_sampling_params *p = &r->params;
    p->n = 1;
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->top_k = 0;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->max_tokens = 16;
    p->logprobs = -1;
    p->prompt_logprobs = -1;
    p->skip_special_tokens = true;
}

int loom_api_parse(enum loom_api_kind kind, const char *body, size_t len, struct loom_api_request *r,
                   struct loom_api_error *err)
{
    defaults(r, kind);
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!root)
        return loom_api_error_set(err, 400, NULL, "the body is not valid JSON: %s (line %d, column %d)",
                                  jerr.text, jerr.line, jerr.column);
    r->root = root;
    if (!json_is_object(root)) {
        loom_api_error_set(err, 400, NULL, "the body must be a JSON object, got %s", json_kind(root));
        goto fail;
    }
    json_t *model = field(root, "model");
    if (model) {
        if (!json_is_string(model)) {
            loom_api_error_set(err, 400, "model", "'model' must be a string, got %s", json_kind(model));
            goto fail;
        }
        r->model = json_string_value(model);
    }

    switch (kind) {
    case LOOM_API_COMPLETIONS:
        if (parse_prompt(root, r, err) || get_bool(root, "echo", &r->echo, err)) goto fail;
        break;
    case LOOM_API_CHAT:
        if (parse_messages(root, r, err) || parse_tools(root, r, err) || parse_template_options(root, r, err))
            goto fail;
        break;
    case LOOM_API_TOKENIZE:
        if (field(root, "messages")) {
            r->add_special_tokens = false;
            if (parse_messages(root, r, err) || parse_tools(root, r, err) ||
                parse_template_options(root, r, err))
                goto fail;
        } else {
            json_t *p = field(root, "prompt");
            if (!p || !json_is_string(p)) {
                loom_api_error_set(err, 400, "prompt", "/tokenize needs 'prompt' (a string) or 'messages'");
                goto fail;
            }
            if (parse_prompt(root, r, err)) goto fail;
        }
        if (get_bool(root, "add_special_tokens", &r->add_special_tokens, err) ||
            get_bool(root, "return_token_strs", &r->return_token_strs, err))
            goto fail;
        return 0;
    case LOOM_API_DETOKENIZE: {
        json_t *t = field(root, "tokens");
        if (!t || !json_is_array(t)) {
            loom_api_error_set(err, 400, "tokens", "/detokenize needs 'tokens', an array of token ids");
            goto fail;
        }
        if (parse_ids(t, "tokens", &r->tokens, &r->n_tokens, err)) goto fail;
        return 0;
    }
    }
    if (get_bool(root, "add_special_tokens", &r->add_special_tokens, err)) goto fail;
    if (parse_stream(root, r, err) || parse_sampling(root, r, err) || parse_unsupported(root, r, err))
        goto fail;
    if (r->n_prompts * r->params.n > MAX_CHOICES) {
        loom_api_error_set(err, 400, "n", "%d prompts x n=%d is more than %d choices", r->n_prompts,
                           r->params.n, MAX_CHOICES);
        goto fail;
    }
    if (r->echo && r->logprobs >= 0 && r->params.prompt_logprobs < r->logprobs)
        r->params.prompt_logprobs = r->logprobs; /* echo + logprobs reports the prompt's logprobs too */
    return 0;
fail:
    loom_api_request_free(r);
    return -1;
}

void loom_api_request_free(struct loom_api_request *r)
{
    for (int i = 0; i < r->n_prompts; i++) free(r->prompts[i].ids);
    free(r->prompts);
    json_decref(r->messages);
    json_decref(r->template_kwargs);
    free(r->tokens);
    free(r->stop);
    free(r->stop_token_ids);
    free(r->logit_bias);
    json_decref(r->root);
    enum loom_api_kind kind = r->kind;
    memset(r, 0, sizeof(*r));
    r->kind = kind;
}

int loom_api_check_ids(const int32_t *ids, int n, int vocab_size, const char *what,
                       struct loom_api_error *err)
{
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab_size)
            return loom_api_error_set(err, 400, what, "token id %d in '%s' is out of the vocabulary [0, %d)",
                                      ids[i], what, vocab_size);
    return 0;
}
