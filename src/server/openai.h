/*
 * openai.h: the OpenAI-compatible API's data layer, with no HTTP and no engine in it.
 *   - request parsing and validation: a JSON body -> struct loom_api_request (prompts or messages,
 *     loom_sampling_params, stream options), or an OpenAI error object naming the bad field;
 *   - response bodies: error objects, completion / chat completion objects, SSE chunks, usage;
 *   - token text helpers (UTF-8 repair for JSON strings, code point counts).
 * It accepts what vLLM's OpenAI server accepts: the OpenAI fields plus vLLM's extras (top_k, min_p,
 * repetition_penalty, ignore_eos, min_tokens, stop_token_ids, ...). Unknown fields are ignored;
 * fields that would change the output and that loom cannot honour (suffix, guided decoding,
 * response_format other than text, beam search, tool_choice "required") are rejected with 400.
 * The routes that use these (tokenizing, the engine, SSE delivery) are in openai.c.
 */
#ifndef LOOM_SERVER_OPENAI_H
#define LOOM_SERVER_OPENAI_H

#include "loom.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum loom_api_kind {
    LOOM_API_COMPLETIONS = 0, /* POST /v1/completions */
    LOOM_API_CHAT,            /* POST /v1/chat/completions */
    LOOM_API_TOKENIZE,        /* POST /tokenize (vLLM): {prompt} or {messages} */
    LOOM_API_DETOKENIZE,      /* POST /detokenize (vLLM): {tokens} */
};

/* An error as the API reports it: {"error": {"message", "type", "param", "code"}} with an HTTP status. */
struct loom_api_error {
    int status;       /* HTTP status: 400, 401, 404, 405, 413, 500, 503 */
    const char *type; /* "invalid_request_error", "server_error", ... (static) */
    const char *code; /* static string or NULL */
    char param[64];   /* the offending field ("" = null) */
    char message[512];
};
/* Fills err and returns -1 (so `return api_error(...)` is the idiom inside parsers). */
int loom_api_error_set(struct loom_api_error *err, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The JSON body of an error: a new string (caller frees). */
char *loom_api_error_json(const struct loom_api_error *err);

/* One prompt of a completions request: text (pointing into the request's JSON) or token ids. */
struct loom_api_prompt {
    const char *text; /* NULL for an id prompt */
    size_t text_len;
    int32_t *ids; /* owned; ids prompts only (text prompts are tokenized by the route) */
    int n_ids;
};

struct loom_api_request {
    enum loom_api_kind kind;
    json_t *root;      /* the parsed body (owned); strings below point into it */
    const char *model; /* NULL when absent */

    bool stream;
    bool include_usage;    /* stream_options.include_usage: a last chunk with usage and no choices */
    bool continuous_usage; /* stream_options.continuous_usage_stats (vLLM): usage on every chunk */

    /* completions (and /tokenize with a prompt) */
    struct loom_api_prompt *prompts;
    int n_prompts;
    bool echo;

    /* chat (and /tokenize with messages) */
    json_t *messages;        /* owned normalized copy: content parts joined into a string */
    json_t *tools;           /* borrowed from root, or NULL */
    json_t *template_kwargs; /* owned object: chat_template_kwargs (may be empty) */
    bool add_generation_prompt;
    bool continue_final_message;

    /* /detokenize */
    int32_t *tokens;
    int n_tokens;
    bool return_token_strs;          /* /tokenize */
    bool return_tokens_as_token_ids; /* logprobs name tokens "token_id:N" (vLLM) */

    bool add_special_tokens; /* completions default true, chat default false (as vLLM) */
    int logprobs;            /* -1 none; completions: `logprobs`; chat: top_logprobs when logprobs is true */
    bool max_tokens_set;     /* false: the route picks the default (16 / the rest of the context) */
    int truncate_prompt_tokens; /* > 0: keep only the last N prompt tokens; -1: the context length (vLLM) */

    /* params.stop, stop_token_ids and logit_bias point into the arrays below (owned). */
    struct loom_sampling_params params;
    const char **stop;
    int32_t *stop_token_ids;
    struct loom_logit_bias *logit_bias;
};

/* Parses and validates a body (need not be NUL-terminated). On failure returns -1 with err filled
 * (400, or 404/413 where the field says so) and leaves *req empty; on success the caller frees req
 * with loom_api_request_free. Range checks that need the model (vocabulary, context) are the
 * route's, see loom_api_check_ids. */
int loom_api_parse(enum loom_api_kind kind, const char *body, size_t len, struct loom_api_request *req,
                   struct loom_api_error *err);
void loom_api_request_free(struct loom_api_request *req);

/* 400 unless every id is in [0, vocab_size). what names the field. */
int loom_api_check_ids(const int32_t *ids, int n, int vocab_size, const char *what,
                       struct loom_api_error *err);

/* ---------------------------------------------------------------------------------------------- */
/* Response helpers. */

/* Copies s into a new NUL-terminated string where every invalid UTF-8 sequence became U+FFFD (so
 * that it can be a JSON string). *out_len gets the length. */
char *loom_api_utf8_repair(const char *s, size_t len, size_t *out_len);
/* A JSON string from bytes that may be invalid UTF-8 (repaired as above). */
json_t *loom_api_json_string(const char *s, size_t len);
/* Number of code points in valid UTF-8 text (what Python's len() gives, for text_offset). */
size_t loom_api_utf8_chars(const char *s, size_t len);

/* "data: <compact JSON>\n\n" appended to a growing buffer. */
struct loom_buf {
    char *data;
    size_t len, cap;
};
void loom_buf_append(struct loom_buf *b, const void *data, size_t n);
void loom_buf_appendf(struct loom_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void loom_buf_free(struct loom_buf *b);
/* Appends the SSE event `data: <json>\n\n` (json is dumped compactly; not stolen). */
void loom_sse_append_json(struct loom_buf *b, const json_t *json);
void loom_sse_append_done(struct loom_buf *b); /* "data: [DONE]\n\n" */

/* The usage object: {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"}. */
json_t *loom_api_usage_json(int prompt_tokens, int completion_tokens, int cached_tokens);

/* A random id with a prefix: "cmpl-" + 32 hex digits. buf gets at least 48 bytes. */
void loom_api_make_id(char *buf, size_t size, const char *prefix);

#endif
