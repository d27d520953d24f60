/*
 * openai.c: the routes of `loom serve`, OpenAI's API as vLLM serves it.
 *
 *   POST /v1/completions        prompt(s) as text or token ids; echo, logprobs, n, stop, seed, stream
 *   POST /v1/chat/completions   messages through the model's chat template (tools passed to it)
 *   GET  /v1/models[/{id}]      the one served model (its name and its folder's path both work)
 *   POST /tokenize, /detokenize vLLM's shapes
 *   GET  /health, /ping, /version, /metrics
 *
 * A generation request becomes a `gen`: one engine request per prompt (each with n samples), one
 * choice per (prompt, sample) in OpenAI's order (prompt-major), and the job (server.h) through which
 * http.c sends the answer. The engine's callback (on the engine thread) formats SSE chunks as tokens
 * arrive, or gathers text for the one JSON answer, under the job's lock. Parsing and validation of
 * the body is openai_request.c's; HTTP is http.c's.
 */
#include "server/server.h"

#include "core/error.h"
#include "core/log.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LOGPROB_FLOOR -9999.0 /* -inf is not JSON; vLLM reports -9999.0 too */

static const char *finish_name(enum loom_finish_reason r)
{
    switch (r) {
    case LOOM_FINISH_STOP:
        return "stop";
    case LOOM_FINISH_LENGTH:
        return "length";
    case LOOM_FINISH_ABORT:
        return "abort";
    case LOOM_FINISH_ERROR:
        return "error";
    default:
        return NULL;
    }
}

static int status_of(int loom_status)
{
    switch (loom_status) {
    case LOOM_EINVAL:
    case LOOM_ETOOLONG:
    case LOOM_EUNSUPPORTED:
        return 400;
    case LOOM_ENOTFOUND:
        return 404;
    case LOOM_EFULL:
    case LOOM_ENOMEM:
        return 503;
    default:
        return 500;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Replies */

static void reply_json(struct loom_http_reply *out, int status, json_t *body)
{
    out->status = status;
    out->content_type = "application/json";
    out->body = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(9));
    if (!out->body) LOOM_DIE("out of memory formatting a response");
    out->body_len = strlen(out->body);
    json_decref(body);
}

void loom_openai_error_reply(struct loom_http_reply *out, const struct loom_api_error *err)
{
    out->status = err->status;
    out->content_type = "application/json";
    out->body = loom_api_error_json(err);
    out->body_len = strlen(out->body);
    snprintf(out->detail, sizeof(out->detail), "%s", err->message);
}

static void reply_error(struct loom_http_reply *out, int status, const char *param, const char *code,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void reply_error(struct loom_http_reply *out, int status, const char *param, const char *code,
                        const char *fmt, ...)
{
    struct loom_api_error err;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    loom_api_error_set(&err, status, param, "%s", msg);
    err.code = code;
    loom_openai_error_reply(out, &err);
}

/* ---------------------------------------------------------------------------------------------- */
/* Tokens */

/* How logprobs name tokens: the text a token adds after the token before it (prev, -1 = none), so
 * that the names concatenate to the output text (a SentencePiece "▁was" after another token is
 * " was", not "was"); or "token_id:N" (return_tokens_as_token_ids, or no tokenizer). */
struct lp_ctx {
    struct loom_server *s;
    bool as_ids;
    int32_t prev;
};

static char *decode_ids(struct loom_server *s, const int32_t *ids, int n, size_t *len)
{
    char *text = NULL;
    if (loom_tokenizer_decode(s->opts.tokenizer, ids, n, false, &text, len) != LOOM_OK) return NULL;
    return text;
}

/* Caller frees. */
static char *token_text(const struct lp_ctx *cx, int32_t id, bool as_id, size_t *len)
{
    struct loom_server *s = cx->s;
    *len = 0;
    if (!as_id && s->opts.tokenizer) {
        if (cx->prev >= 0) {
            int32_t pair[2] = {cx->prev, id};
            size_t l1 = 0, l2 = 0;
            char *a = decode_ids(s, pair, 1, &l1), *b = a ? decode_ids(s, pair, 2, &l2) : NULL;
            if (a && b && l2 >= l1 && !memcmp(a, b, l1)) {
                memmove(b, b + l1, l2 - l1 + 1);
                *len = l2 - l1;
                free(a);
                return b;
            }
            free(a);
            free(b);
        }
        char *t = decode_ids(s, &id, 1, len);
        if (t) return t;
    }
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "token_id:%d", id); /* vLLM's form when there is no text */
    *len = (size_t)n;
    return loom_strdup(buf);
}

static double clamp_lp(float lp)
{
    return isnan(lp) || lp < LOGPROB_FLOOR ? LOGPROB_FLOOR : (double)lp;
}

static json_t *bytes_json(const char *s, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(a, json_integer((unsigned char)s[i]));
    return a;
}

/* chat: {"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]} */
static json_t *chat_logprob_entry(const struct lp_ctx *cx, const struct loom_token_logprob *tok,
                                  const struct loom_token_logprob *top, int top_k, int want_top)
{
    size_t n;
    char *t = token_text(cx, tok->token_id, cx->as_ids, &n);
    json_t *e = json_object();
    json_object_set_new(e, "token", loom_api_json_string(t, n));
    json_object_set_new(e, "logprob", json_real(clamp_lp(tok->logprob)));
    json_object_set_new(e, "bytes", bytes_json(t, n));
    free(t);
    json_t *tops = json_array();
    for (int k = 0; k < top_k && k < want_top; k++) {
        char *tt = token_text(cx, top[k].token_id, cx->as_ids, &n);
        json_t *te = json_object();
        json_object_set_new(te, "token", loom_api_json_string(tt, n));
        json_object_set_new(te, "logprob", json_real(clamp_lp(top[k].logprob)));
        json_object_set_new(te, "bytes", bytes_json(tt, n));
        free(tt);
        json_array_append_new(tops, te);
    }
    json_object_set_new(e, "top_logprobs", tops);
    return e;
}

/* completions: {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []} */
static json_t *completion_logprobs_new(void)
{
    json_t *o = json_object();
    json_object_set_new(o, "text_offset", json_array());
    json_object_set_new(o, "token_logprobs", json_array());
    json_object_set_new(o, "tokens", json_array());
    json_object_set_new(o, "top_logprobs", json_array());
    return o;
}

/* Appends one token. tok NULL = the first prompt token (no logprob: null entries). *offset advances
 * by the token's length in code points. */
static void completion_logprobs_add(const struct lp_ctx *cx, json_t *o, int32_t id,
                                    const struct loom_token_logprob *tok,
                                    const struct loom_token_logprob *top, int top_k, int want_top,
                                    size_t *offset)
{
    size_t n;
    bool as_ids = cx->as_ids;
    char *t = token_text(cx, id, as_ids, &n);
    json_array_append_new(json_object_get(o, "tokens"), loom_api_json_string(t, n));
    json_array_append_new(json_object_get(o, "text_offset"), json_integer((json_int_t)*offset));
    size_t tn = n;
    char *text = as_ids ? token_text(cx, id, false, &tn) : t; /* offsets count the real text */
    *offset += loom_api_utf8_chars(text, tn);
    if (text != t) free(text);
    if (!tok) {
        json_array_append_new(json_object_get(o, "token_logprobs"), json_null());
        json_array_append_new(json_object_get(o, "top_logprobs"), json_null());
        free(t);
        return;
    }
    json_array_append_new(json_object_get(o, "token_logprobs"), json_real(clamp_lp(tok->logprob)));
    json_t *tops = json_object();
    for (int k = 0; k < top_k && k < want_top; k++) {
        size_t tn;
        char *tt = token_text(cx, top[k].token_id, as_ids, &tn);
        char *key = loom_api_utf8_repair(tt, tn, NULL);
        json_object_set_new(tops, key, json_real(clamp_lp(top[k].logprob)));
        free(key);
        free(tt);
    }
    /* vLLM also lists the sampled token */
    char *key = loom_api_utf8_repair(t, n, NULL);
    if (!json_object_get(tops, key)) json_object_set_new(tops, key, json_real(clamp_lp(tok->logprob)));
    free(key);
    free(t);
    json_array_append_new(json_object_get(o, "top_logprobs"), tops);
}

/* Appends every element of src's four arrays to dst's. */
static void completion_logprobs_extend(json_t *dst, json_t *src)
{
    const char *key;
    json_t *v;
    json_object_foreach(src, key, v) json_array_extend(json_object_get(dst, key), v);
}

/* ---------------------------------------------------------------------------------------------- */
/* Generation requests */

struct gen;

struct gen_prompt {
    struct gen *g;
    int index;
    int32_t *ids; /* the prompt as sent to the engine (owned) */
    int n_ids;
    uint64_t engine_id; /* written by the route after add_request returns (cancel reads it) */
    uint64_t seen_id;   /* the same id as the engine's outputs carry (for the log line) */
    bool added;
    int prompt_tokens, cached_tokens; /* from the engine's outputs */
    const char *echo_text;            /* completions echo: the prompt's text (into req or echo_owned) */
    size_t echo_len;
    char *echo_owned;
    json_t *echo_logprobs; /* completions echo + logprobs: the prompt tokens' entries */
    size_t echo_chars;     /* code points of the echoed prompt (text_offset base) */
};

struct gen_choice {
    struct loom_buf text; /* not streaming: the whole text */
    json_t *logprobs;     /* not streaming: chat array of entries / completions object */
    size_t text_offset;   /* completions logprobs: code points so far */
    int tokens;
    bool started, finished;
    enum loom_finish_reason finish;
    json_t *stop_reason; /* token id, string or null */
    int32_t
        prev_token; /* the last token so far (the prompt's last at first): logprobs name tokens in context */
    double t_last, ttft;
};

struct gen {
    struct loom_job job; /* first: container_of is a cast */
    struct loom_server *s;
    struct loom_api_request req;
    char id[64];
    long long created;
    int n, n_prompts, n_choices, remaining;
    struct gen_prompt *prompts;
    struct gen_choice *choices;
    double t0;
    char error[384];
};

static void gen_release(struct loom_job *j)
{
    struct gen *g = (struct gen *)j;
    for (int i = 0; i < g->n_prompts; i++) {
        free(g->prompts[i].ids);
        free(g->prompts[i].echo_owned);
        json_decref(g->prompts[i].echo_logprobs);
    }
    for (int i = 0; i < g->n_choices; i++) {
        loom_buf_free(&g->choices[i].text);
        json_decref(g->choices[i].logprobs);
        json_decref(g->choices[i].stop_reason);
    }
    free(g->prompts);
    free(g->choices);
    loom_api_request_free(&g->req);
    free(g);
}

static void gen_cancel(struct loom_job *j)
{
    struct gen *g = (struct gen *)j;
    for (int i = 0; i < g->n_prompts; i++)
        if (g->prompts[i].added) g->s->opts.engine.abort(g->s->opts.engine.ctx, g->prompts[i].engine_id);
}

static const char *model_of(struct gen *g)
{
    return g->s->model_name;
}

static json_t *chunk_new(struct gen *g)
{
    json_t *c = json_object();
    json_object_set_new(c, "id", json_string(g->id));
    json_object_set_new(
        c, "object", json_string(g->req.kind == LOOM_API_CHAT ? "chat.completion.chunk" : "text_completion"));
    json_object_set_new(c, "created", json_integer(g->created));
    json_object_set_new(c, "model", json_string(model_of(g)));
    return c;
}

static void usage_totals(struct gen *g, int *prompt, int *completion, int *cached)
{
    *prompt = *completion = *cached = 0;
    for (int i = 0; i < g->n_prompts; i++) {
        *prompt += g->prompts[i].prompt_tokens ? g->prompts[i].prompt_tokens : g->prompts[i].n_ids;
        *cached += g->prompts[i].cached_tokens;
    }
    for (int i = 0; i < g->n_choices; i++) *completion += g->choices[i].tokens;
}

static json_t *usage_now(struct gen *g)
{
    int p, c, k;
    usage_totals(g, &p, &c, &k);
    return loom_api_usage_json(p, c, k);
}

/* One SSE chunk for choice ci: text (may be empty), logprobs (stolen, may be NULL), finish. */
static void emit_chunk(struct gen *g, int ci, const char *text, size_t len, bool role, json_t *logprobs,
                       const struct gen_choice *c)
{
    json_t *chunk = chunk_new(g);
    json_t *choice = json_object();
    json_object_set_new(choice, "index", json_integer(ci));
    if (g->req.kind == LOOM_API_CHAT) {
        json_t *delta = json_object();
        if (role) json_object_set_new(delta, "role", json_string("assistant"));
        if (role || len) json_object_set_new(delta, "content", loom_api_json_string(text, len));
        json_object_set_new(choice, "delta", delta);
        if (logprobs) {
            json_t *lp = json_object();
            json_object_set_new(lp, "content", logprobs);
            json_object_set_new(lp, "refusal", json_null());
            json_object_set_new(choice, "logprobs", lp);
        } else {
            json_object_set_new(choice, "logprobs", json_null());
        }
    } else {
        json_object_set_new(choice, "text", loom_api_json_string(text, len));
        json_object_set_new(choice, "logprobs", logprobs ? logprobs : json_null());
    }
    const char *fin = c && c->finished ? finish_name(c->finish) : NULL;
    json_object_set_new(choice, "finish_reason", fin ? json_string(fin) : json_null());
    if (fin) json_object_set(choice, "stop_reason", c->stop_reason ? c->stop_reason : json_null());
    json_t *choices = json_array();
    json_array_append_new(choices, choice);
    json_object_set_new(chunk, "choices", choices);
    if (g->req.continuous_usage) json_object_set_new(chunk, "usage", usage_now(g));
    loom_sse_append_json(&g->job.out, chunk);
    json_decref(chunk);
}

static void finalize_stream(struct gen *g)
{
    struct loom_job *j = &g->job;
    if (g->error[0]) {
        struct loom_api_error err;
        loom_api_error_set(&err, 500, NULL, "%s", g->error);
        char *e = loom_api_error_json(&err);
        loom_buf_appendf(&j->out, "data: %s\n\n", e);
        free(e);
    }
    if (g->req.include_usage) {
        json_t *chunk = chunk_new(g);
        json_object_set_new(chunk, "choices", json_array());
        json_object_set_new(chunk, "usage", usage_now(g));
        loom_sse_append_json(&j->out, chunk);
        json_decref(chunk);
    }
    loom_sse_append_done(&j->out);
}

static void finalize_body(struct gen *g)
{
    struct loom_job *j = &g->job;
    if (g->error[0]) {
        struct loom_api_error err;
        loom_api_error_set(&err, 500, NULL, "%s", g->error);
        j->body = loom_api_error_json(&err);
        j->body_len = strlen(j->body);
        j->status = 500;
        return;
    }
    bool chat = g->req.kind == LOOM_API_CHAT;
    json_t *root = json_object();
    json_object_set_new(root, "id", json_string(g->id));
    json_object_set_new(root, "object", json_string(chat ? "chat.completion" : "text_completion"));
    json_object_set_new(root, "created", json_integer(g->created));
    json_object_set_new(root, "model", json_string(model_of(g)));
    json_t *choices = json_array();
    for (int i = 0; i < g->n_choices; i++) {
        struct gen_choice *c = &g->choices[i];
        struct gen_prompt *gp = &g->prompts[i / g->n];
        json_t *ch = json_object();
        json_object_set_new(ch, "index", json_integer(i));
        if (chat) {
            json_t *msg = json_object();
            json_object_set_new(msg, "role", json_string("assistant"));
            json_object_set_new(msg, "content",
                                loom_api_json_string(c->text.data ? c->text.data : "", c->text.len));
            json_object_set_new(msg, "refusal", json_null());
            json_object_set_new(ch, "message", msg);
            if (c->logprobs) {
                json_t *lp = json_object();
                json_object_set(lp, "content", c->logprobs);
                json_object_set_new(lp, "refusal", json_null());
                json_object_set_new(ch, "logprobs", lp);
            } else {
                json_object_set_new(ch, "logprobs", json_null());
            }
        } else {
            struct loom_buf t = {0};
            loom_buf_append(&t, "", 0);
            if (g->req.echo) loom_buf_append(&t, gp->echo_text, gp->echo_len);
            loom_buf_append(&t, c->text.data ? c->text.data : "", c->text.len);
            json_object_set_new(ch, "text", loom_api_json_string(t.data, t.len));
            loom_buf_free(&t);
            if (c->logprobs) {
                json_t *lp = completion_logprobs_new();
                if (g->req.echo && gp->echo_logprobs) completion_logprobs_extend(lp, gp->echo_logprobs);
                completion_logprobs_extend(lp, c->logprobs);
                json_object_set_new(ch, "logprobs", lp);
            } else {
                json_object_set_new(ch, "logprobs", json_null());
            }
        }
        const char *fin = finish_name(c->finish);
        json_object_set_new(ch, "finish_reason", fin ? json_string(fin) : json_null());
        json_object_set(ch, "stop_reason", c->stop_reason ? c->stop_reason : json_null());
        json_array_append_new(choices, ch);
    }
    json_object_set_new(root, "choices", choices);
    json_object_set_new(root, "usage", usage_now(g));
    j->body = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(9));
    if (!j->body) LOOM_DIE("out of memory formatting a response");
    j->body_len = strlen(j->body);
    j->status = 200;
    json_decref(root);
}

/* The engine's callback, on the engine's thread. */
static void on_output(const struct loom_output *o, void *user)
{
    struct gen_prompt *gp = user;
    struct gen *g = gp->g;
    struct loom_job *j = &g->job;
    struct loom_server *s = g->s;
    double now = loom_now();
    pthread_mutex_lock(&j->lock);
    if (o->index < 0 || o->index >= g->n) {
        pthread_mutex_unlock(&j->lock);
        LOG_ERROR("[%s] engine output for sample %d of %d ignored", g->id, o->index, g->n);
        return;
    }
    int ci = gp->index * g->n + o->index;
    struct gen_choice *c = &g->choices[ci];
    if (c->finished) {
        pthread_mutex_unlock(&j->lock);
        return;
    }
    gp->seen_id = o->request_id;
    if (o->prompt_tokens) gp->prompt_tokens = o->prompt_tokens;
    gp->cached_tokens = o->cached_tokens;
    if (o->n_tokens > 0) {
        if (c->tokens == 0) {
            c->ttft = now - g->t0;
            loom_metrics_observe_ttft(&s->metrics, c->ttft);
        } else {
            loom_metrics_observe_itl(&s->metrics, now - c->t_last, o->n_tokens);
        }
        c->t_last = now;
        c->tokens += o->n_tokens;
    }
    if (o->completion_tokens > c->tokens) c->tokens = o->completion_tokens;

    bool chat = g->req.kind == LOOM_API_CHAT;
    int want = g->req.logprobs;
    /* prompt logprobs for completions echo (arrive with the first output) */
    if (!chat && g->req.echo && want >= 0 && o->prompt_logprobs && !gp->echo_logprobs) {
        gp->echo_logprobs = completion_logprobs_new();
        size_t off = 0;
        struct lp_ctx cx = {s, g->req.return_tokens_as_token_ids, -1};
        for (int i = 0; i < gp->n_ids; i++) {
            completion_logprobs_add(
                &cx, gp->echo_logprobs, gp->ids[i], i ? &o->prompt_logprobs[i] : NULL,
                o->prompt_top_logprobs ? o->prompt_top_logprobs + (size_t)i * o->prompt_top_k : NULL,
                o->prompt_top_k, want, &off);
            cx.prev = gp->ids[i];
        }
    }
    bool finishing = o->finish_reason != LOOM_FINISH_NONE;
    if (finishing) {
        c->finished = true;
        c->finish = o->finish_reason;
        int32_t eos = s->opts.tokenizer ? loom_tokenizer_eos_id(s->opts.tokenizer) : -1;
        if (o->stop_string)
            c->stop_reason = json_string(o->stop_string);
        else if (o->stop_token >= 0 && o->stop_token != eos)
            c->stop_reason = json_integer(o->stop_token);
        if (o->finish_reason == LOOM_FINISH_ERROR && !g->error[0])
            snprintf(g->error, sizeof(g->error), "generation failed: %s",
                     o->error ? o->error : "engine error");
    }

    if (!j->done) {
        /* logprobs of the new tokens */
        json_t *lp = NULL;
        if (want >= 0 && o->logprobs && o->n_tokens > 0) {
            struct lp_ctx cx = {s, g->req.return_tokens_as_token_ids, c->prev_token};
            lp = chat ? json_array() : completion_logprobs_new();
            for (int i = 0; i < o->n_tokens; i++) {
                const struct loom_token_logprob *top =
                    o->top_logprobs ? o->top_logprobs + (size_t)i * o->top_k : NULL;
                if (chat)
                    json_array_append_new(lp, chat_logprob_entry(&cx, &o->logprobs[i], top, o->top_k, want));
                else
                    completion_logprobs_add(&cx, lp, o->token_ids[i], &o->logprobs[i], top, o->top_k, want,
                                            &c->text_offset);
                cx.prev = o->token_ids[i];
            }
        }
        if (j->stream) {
            if (!chat && !c->started && g->req.echo) {
                json_t *elp = NULL;
                if (gp->echo_logprobs) {
                    elp = completion_logprobs_new();
                    completion_logprobs_extend(elp, gp->echo_logprobs);
                }
                emit_chunk(g, ci, gp->echo_text, gp->echo_len, false, elp, NULL);
            }
            c->started = true;
            /* as vLLM: a chunk for every output with new tokens, even when its text is held back
             * (partial UTF-8, a possible stop string) or the model has no tokenizer */
            if (o->text_len || o->n_tokens > 0 || finishing || lp)
                emit_chunk(g, ci, o->text, o->text_len, false, lp, c);
            else
                json_decref(lp);
        } else {
            c->started = true;
            loom_buf_append(&c->text, o->text ? o->text : "", o->text_len);
            if (lp) {
                if (!c->logprobs) c->logprobs = chat ? json_array() : completion_logprobs_new();
                if (chat)
                    json_array_extend(c->logprobs, lp);
                else
                    completion_logprobs_extend(c->logprobs, lp);
                json_decref(lp);
            }
        }
    }

    if (o->n_tokens > 0 && o->token_ids) c->prev_token = o->token_ids[o->n_tokens - 1];

    bool last = false;
    if (finishing) {
        loom_metrics_observe_finished(&s->metrics, c->finish, now - g->t0, c->ttft, c->tokens);
        last = --g->remaining == 0;
        if (last && !j->done) {
            if (j->stream)
                finalize_stream(g);
            else
                finalize_body(g);
            int p, k, q;
            usage_totals(g, &p, &k, &q);
            /* the engine's ids tie this line to the engine's own log lines */
            snprintf(j->detail, sizeof(j->detail),
                     "prompt=%d completion=%d cached=%d finish=%s ttft=%.3fs engine=req-%llu%s", p, k, q,
                     finish_name(g->choices[0].finish), g->choices[0].ttft,
                     (unsigned long long)g->prompts[0].seen_id, g->n_prompts > 1 ? "..." : "");
            j->done = true;
        }
    }
    loom_job_unlock_wake(j);
    if (last) loom_job_unref(j); /* the producer's reference */
}

/* ---------------------------------------------------------------------------------------------- */
/* Prompts */

static bool model_ok(struct loom_server *s, const char *model)
{
    return !model || !strcmp(model, s->model_name) || !strcmp(model, s->model_path);
}

static int model_error(struct loom_server *s, const char *model, struct loom_api_error *err)
{
    loom_api_error_set(err, 404, "model", "The model `%.200s` does not exist. This server serves `%.200s`.",
                       model, s->model_name);
    err->code = "model_not_found";
    return -1;
}

static int encode_text(struct loom_server *s, const char *text, size_t len, bool add_special, int32_t **ids,
                       int *n, struct loom_api_error *err)
{
    if (!s->opts.tokenizer)
        return loom_api_error_set(
            err, 400, "prompt",
            "this model folder has no tokenizer.json, so text cannot be tokenized; send token "
            "ids as the prompt");
    if (loom_tokenizer_encode(s->opts.tokenizer, text, len, add_special, ids, n) != LOOM_OK)
        return loom_api_error_set(err, 400, "prompt", "cannot tokenize the prompt: %s", loom_last_error());
    return 0;
}

/* messages -> the chat template's text. *text is new (caller frees). */
static int render_chat(struct loom_server *s, struct loom_api_request *r, char **text, size_t *len,
                       struct loom_api_error *err)
{
    *text = NULL;
    if (!s->opts.chat_template)
        return loom_api_error_set(
            err, 400, "messages",
            "this model has no chat template (tokenizer_config.json has no chat_template); use "
            "/v1/completions with a prompt");
    if (loom_chat_render(s->opts.chat_template, r->messages, r->tools, r->add_generation_prompt,
                         r->template_kwargs, text, len) != LOOM_OK)
        return loom_api_error_set(err, 400, "messages", "the chat template failed: %s", loom_last_error());
    if (r->continue_final_message) { /* cut what the template adds after the last message (vLLM's rule) */
        json_t *last = json_array_get(r->messages, json_array_size(r->messages) - 1);
        const char *content = json_string_value(json_object_get(last, "content"));
        if (content && *content) {
            size_t cl = strlen(content);
            char *hit = NULL;
            for (char *p = *text; (p = strstr(p, content)); p++) hit = p;
            if (hit) {
                *len = (size_t)(hit - *text) + cl;
                (*text)[*len] = 0;
            }
        }
    }
    return 0;
}

/* The context rule (vLLM's): prompt + max_tokens must fit; chat without max_tokens gets the rest. */
static int fit_context(struct loom_server *s, struct loom_api_request *r, int n_ids, int *max_tokens,
                       struct loom_api_error *err)
{
    const char *what = r->kind == LOOM_API_CHAT ? "messages" : "prompt";
    int ctx = s->opts.max_model_len;
    if (n_ids <= 0) return loom_api_error_set(err, 400, what, "the %s is empty: it has 0 tokens", what);
    *max_tokens = r->params.max_tokens;
    if (ctx > 0) {
        if (r->kind == LOOM_API_CHAT && !r->max_tokens_set) {
            if (n_ids >= ctx)
                return loom_api_error_set(
                    err, 400, what,
                    "This model's maximum context length is %d tokens. However, you requested %d "
                    "tokens in the messages. Please reduce the length of the messages.",
                    ctx, n_ids);
            *max_tokens = ctx - n_ids;
        } else if ((long long)n_ids + *max_tokens > ctx) {
            return loom_api_error_set(
                err, 400, what,
                "This model's maximum context length is %d tokens. However, you requested %lld "
                "tokens (%d in the %s, %d in the completion). Please reduce the length of the "
                "%s or completion.",
                ctx, (long long)n_ids + *max_tokens, n_ids, what, *max_tokens, what);
        }
    }
    if (r->params.min_tokens > *max_tokens)
        return loom_api_error_set(err, 400, "min_tokens", "'min_tokens' (%d) must not exceed max_tokens (%d)",
                                  r->params.min_tokens, *max_tokens);
    return 0;
}

static void truncate_ids(struct loom_server *s, struct loom_api_request *r, int32_t *ids, int *n)
{
    int keep = r->truncate_prompt_tokens < 0 ? s->opts.max_model_len : r->truncate_prompt_tokens;
    if (keep > 0 && *n > keep) {
        memmove(ids, ids + (*n - keep), (size_t)keep * sizeof(*ids));
        *n = keep;
    }
}

/* Fills g->prompts[i].ids for every prompt. */
static int prepare_prompts(struct gen *g, struct loom_api_error *err)
{
    struct loom_server *s = g->s;
    struct loom_api_request *r = &g->req;
    for (int i = 0; i < g->n_prompts; i++) {
        struct gen_prompt *gp = &g->prompts[i];
        if (r->kind == LOOM_API_CHAT) {
            char *text;
            size_t len;
            if (render_chat(s, r, &text, &len, err)) return -1;
            int rc = encode_text(s, text, len, r->add_special_tokens, &gp->ids, &gp->n_ids, err);
            free(text);
            if (rc) return -1;
        } else {
            const struct loom_api_prompt *p = &r->prompts[i];
            if (p->text) {
                if (encode_text(s, p->text, p->text_len, r->add_special_tokens, &gp->ids, &gp->n_ids, err))
                    return -1;
                gp->echo_text = p->text;
                gp->echo_len = p->text_len;
            } else {
                gp->ids = loom_malloc((size_t)(p->n_ids ? p->n_ids : 1) * sizeof(int32_t));
                memcpy(gp->ids, p->ids, (size_t)p->n_ids * sizeof(int32_t));
                gp->n_ids = p->n_ids;
                if (loom_api_check_ids(gp->ids, gp->n_ids, s->opts.vocab_size, "prompt", err)) return -1;
            }
        }
        truncate_ids(s, r, gp->ids, &gp->n_ids);
        if (r->echo &&
            (!gp->echo_text || r->truncate_prompt_tokens)) { /* ids prompts echo their decoded text */
            size_t len = 0;
            if (s->opts.tokenizer && loom_tokenizer_decode(s->opts.tokenizer, gp->ids, gp->n_ids, false,
                                                           &gp->echo_owned, &len) == LOOM_OK) {
                gp->echo_text = gp->echo_owned;
                gp->echo_len = len;
            } else {
                gp->echo_text = "";
                gp->echo_len = 0;
            }
        }
        gp->echo_chars = loom_api_utf8_chars(gp->echo_text ? gp->echo_text : "", gp->echo_len);
    }
    if (r->params.n_stop_token_ids && loom_api_check_ids(r->params.stop_token_ids, r->params.n_stop_token_ids,
                                                         s->opts.vocab_size, "stop_token_ids", err))
        return -1;
    for (int i = 0; i < r->params.n_logit_bias; i++)
        if (r->params.logit_bias[i].token_id >= s->opts.vocab_size)
            return loom_api_error_set(err, 400, "logit_bias",
                                      "'logit_bias' token id %d is out of the vocabulary [0, %d)",
                                      r->params.logit_bias[i].token_id, s->opts.vocab_size);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Routes */

static void route_generate(struct loom_server *s, enum loom_api_kind kind, const struct loom_http_request *in,
                           struct loom_http_reply *out)
{
    struct gen *g = loom_calloc(1, sizeof(*g));
    loom_api_make_id(g->id, sizeof(g->id), kind == LOOM_API_CHAT ? "chatcmpl-" : "cmpl-");
    snprintf(out->id, sizeof(out->id), "%s", g->id);
    struct loom_api_error err;
    if (loom_api_parse(kind, in->body, in->body_len, &g->req, &err)) {
        free(g);
        loom_openai_error_reply(out, &err);
        return;
    }
    struct loom_api_request *r = &g->req;
    loom_job_init(&g->job, s, r->stream);
    g->job.release = gen_release;
    g->job.cancel = gen_cancel;
    g->s = s;
    g->created = (long long)time(NULL);
    g->t0 = loom_now();
    g->n = r->params.n;
    g->n_prompts = kind == LOOM_API_CHAT ? 1 : r->n_prompts;
    g->n_choices = g->n * g->n_prompts;
    g->prompts = loom_calloc((size_t)g->n_prompts, sizeof(*g->prompts));
    g->choices = loom_calloc((size_t)g->n_choices, sizeof(*g->choices));
    for (int i = 0; i < g->n_prompts; i++) {
        g->prompts[i].g = g;
        g->prompts[i].index = i;
    }
    int *max_tokens = loom_calloc((size_t)g->n_prompts, sizeof(int));

    if (!model_ok(s, r->model)) {
        model_error(s, r->model, &err);
        goto fail;
    }
    if (s->draining) {
        loom_api_error_set(&err, 503, NULL, "the server is shutting down");
        goto fail;
    }
    if (prepare_prompts(g, &err)) goto fail;
    for (int i = 0; i < g->n_prompts; i++)
        if (fit_context(s, r, g->prompts[i].n_ids, &max_tokens[i], &err)) goto fail;
    for (int i = 0; i < g->n_choices; i++) {
        struct gen_prompt *gp = &g->prompts[i / g->n];
        if (r->echo) g->choices[i].text_offset = gp->echo_chars;
        g->choices[i].prev_token = gp->ids[gp->n_ids - 1];
    }

    g->remaining = g->n_choices;
    if (r->stream && kind == LOOM_API_CHAT) /* the role first, before any token (as OpenAI and vLLM do) */
        for (int i = 0; i < g->n_choices; i++) emit_chunk(g, i, "", 0, true, NULL, NULL);

    loom_job_ref(&g->job); /* the reply's; the producer keeps the first until the last output */
    for (int i = 0; i < g->n_prompts; i++) {
        struct gen_prompt *gp = &g->prompts[i];
        struct loom_request lr;
        memset(&lr, 0, sizeof(lr));
        lr.prompt = NULL;
        lr.prompt_ids = gp->ids;
        lr.n_prompt_ids = gp->n_ids;
        lr.add_special_tokens = false;
        lr.params = r->params;
        lr.params.max_tokens = max_tokens[i];
        lr.on_output = on_output;
        lr.user = gp;
        int rc = s->opts.engine.add_request(s->opts.engine.ctx, &lr, &gp->engine_id);
        if (rc == LOOM_OK) {
            gp->added = true;
            continue;
        }
        /* Not accepted: the prompts before it are aborted, the ones after never start. */
        loom_api_error_set(&err, status_of(rc), rc == LOOM_ETOOLONG ? "prompt" : NULL, "%s",
                           loom_last_error()[0] ? loom_last_error() : loom_status_name(rc));
        if (rc == LOOM_EFULL) err.code = "overloaded";
        pthread_mutex_lock(&g->job.lock);
        g->job.done = true;
        g->remaining -= (g->n_prompts - i) * g->n;
        bool last = g->remaining == 0;
        pthread_mutex_unlock(&g->job.lock);
        for (int k = 0; k < i; k++) s->opts.engine.abort(s->opts.engine.ctx, g->prompts[k].engine_id);
        if (last) loom_job_unref(&g->job); /* the producer's: no output will come */
        free(max_tokens);
        loom_openai_error_reply(out, &err);
        loom_job_unref(&g->job); /* the reply's */
        return;
    }
    free(max_tokens);
    out->job = &g->job;
    return;
fail:
    free(max_tokens);
    loom_openai_error_reply(out, &err);
    loom_job_unref(&g->job); /* frees g */
}

static void route_tokenize(struct loom_server *s, const struct loom_http_request *in,
                           struct loom_http_reply *out)
{
    struct loom_api_request r;
    struct loom_api_error err;
    if (loom_api_parse(LOOM_API_TOKENIZE, in->body, in->body_len, &r, &err)) {
        loom_openai_error_reply(out, &err);
        return;
    }
    int32_t *ids = NULL;
    int n = 0;
    if (!model_ok(s, r.model)) {
        model_error(s, r.model, &err);
        goto fail;
    }
    if (r.messages) {
        char *text;
        size_t len;
        if (render_chat(s, &r, &text, &len, &err)) goto fail;
        int rc = encode_text(s, text, len, r.add_special_tokens, &ids, &n, &err);
        free(text);
        if (rc) goto fail;
    } else if (encode_text(s, r.prompts[0].text, r.prompts[0].text_len, r.add_special_tokens, &ids, &n,
                           &err)) {
        goto fail;
    }
    json_t *body = json_object();
    json_object_set_new(body, "count", json_integer(n));
    json_object_set_new(body, "max_model_len", json_integer(s->opts.max_model_len));
    json_t *tokens = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(tokens, json_integer(ids[i]));
    json_object_set_new(body, "tokens", tokens);
    if (r.return_token_strs) {
        json_t *strs = json_array();
        for (int i = 0; i < n; i++) {
            const char *t = loom_tokenizer_id_to_token(s->opts.tokenizer, ids[i]);
            json_array_append_new(strs, t ? loom_api_json_string(t, strlen(t)) : json_null());
        }
        json_object_set_new(body, "token_strs", strs);
    } else {
        json_object_set_new(body, "token_strs", json_null());
    }
    free(ids);
    loom_api_request_free(&r);
    reply_json(out, 200, body);
    snprintf(out->detail, sizeof(out->detail), "tokens=%d", n);
    return;
fail:
    free(ids);
    loom_api_request_free(&r);
    loom_openai_error_reply(out, &err);
}

static void route_detokenize(struct loom_server *s, const struct loom_http_request *in,
                             struct loom_http_reply *out)
{
    struct loom_api_request r;
    struct loom_api_error err;
    if (loom_api_parse(LOOM_API_DETOKENIZE, in->body, in->body_len, &r, &err)) {
        loom_openai_error_reply(out, &err);
        return;
    }
    char *text = NULL;
    size_t len = 0;
    if (!model_ok(s, r.model)) {
        model_error(s, r.model, &err);
        goto fail;
    }
    if (!s->opts.tokenizer) {
        loom_api_error_set(&err, 400, "tokens",
                           "this model folder has no tokenizer.json, so ids cannot become text");
        goto fail;
    }
    if (loom_api_check_ids(r.tokens, r.n_tokens, s->opts.vocab_size, "tokens", &err)) goto fail;
    if (loom_tokenizer_decode(s->opts.tokenizer, r.tokens, r.n_tokens, false, &text, &len) != LOOM_OK) {
        loom_api_error_set(&err, 400, "tokens", "cannot detokenize: %s", loom_last_error());
        goto fail;
    }
    json_t *body = json_object();
    json_object_set_new(body, "prompt", loom_api_json_string(text, len));
    free(text);
    loom_api_request_free(&r);
    reply_json(out, 200, body);
    return;
fail:
    loom_api_request_free(&r);
    loom_openai_error_reply(out, &err);
}

static json_t *model_json(struct loom_server *s)
{
    json_t *m = json_object();
    json_object_set_new(m, "id", json_string(s->model_name));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer(s->started));
    json_object_set_new(m, "owned_by", json_string("loom"));
    json_object_set_new(m, "root", json_string(s->model_path));
    json_object_set_new(m, "parent", json_null());
    json_object_set_new(m, "max_model_len", json_integer(s->opts.max_model_len));
    return m;
}

static void route_models(struct loom_server *s, struct loom_http_reply *out)
{
    json_t *body = json_object();
    json_object_set_new(body, "object", json_string("list"));
    json_t *data = json_array();
    json_array_append_new(data, model_json(s));
    json_object_set_new(body, "data", data);
    reply_json(out, 200, body);
}

static void route_model(struct loom_server *s, const char *name, struct loom_http_reply *out)
{
    struct loom_api_error err;
    if (!model_ok(s, name)) {
        model_error(s, name, &err);
        loom_openai_error_reply(out, &err);
        return;
    }
    reply_json(out, 200, model_json(s));
}

static void route_metrics(struct loom_server *s, struct loom_http_reply *out)
{
    struct loom_engine_stats st;
    memset(&st, 0, sizeof(st));
    if (s->opts.engine.get_stats) s->opts.engine.get_stats(s->opts.engine.ctx, &st);
    out->status = 200;
    out->content_type = "text/plain; version=0.0.4; charset=utf-8";
    out->body = loom_metrics_render(&s->metrics, s->opts.engine.get_stats ? &st : NULL, &out->body_len);
}

/* "Bearer KEY", compared in constant time. */
static bool authorized(struct loom_server *s, const char *header)
{
    if (!header || strncasecmp(header, "Bearer ", 7)) return false;
    const char *got = header + 7;
    while (*got == ' ') got++;
    size_t a = strlen(got), b = strlen(s->api_key);
    unsigned diff = (unsigned)(a ^ b);
    for (size_t i = 0; i < b; i++) diff |= (unsigned char)s->api_key[i] ^ (unsigned char)(i < a ? got[i] : 0);
    return diff == 0;
}

enum { GET = 1, POST = 2 };

void loom_openai_route(struct loom_server *s, const struct loom_http_request *in, struct loom_http_reply *out)
{
    const char *url = in->url;
    int method = !strcmp(in->method, "GET") ? GET : !strcmp(in->method, "POST") ? POST : 0;
    bool v1 = !strncmp(url, "/v1", 3) && (url[3] == 0 || url[3] == '/');
    if (!out->id[0]) loom_api_make_id(out->id, sizeof(out->id), "req-");
    if (v1 && s->api_key && !authorized(s, in->authorization)) {
        reply_error(
            out, 401, NULL, "invalid_api_key",
            "Incorrect or missing API key: send the header 'Authorization: Bearer <key>' with the key given "
            "to --api-key");
        return;
    }
    static const struct {
        const char *path;
        int methods;
        int id;
    } routes[] = {
        {"/v1/completions", POST, 1}, {"/v1/chat/completions", POST, 2},
        {"/v1/models", GET, 3},       {"/tokenize", POST, 4},
        {"/detokenize", POST, 5},     {"/health", GET, 6},
        {"/ping", GET | POST, 6},     {"/version", GET, 7},
        {"/metrics", GET, 8},
    };
    int route = 0, allowed = 0;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
        if (!strcmp(url, routes[i].path)) {
            route = routes[i].id;
            allowed = routes[i].methods;
        }
    if (!route && !strncmp(url, "/v1/models/", 11)) {
        route = 9;
        allowed = GET;
    }
    if (!route) {
        reply_error(out, 404, NULL, "not_found",
                    "Not Found: %s %.200s (see /v1/models, /v1/completions, "
                    "/v1/chat/completions)",
                    in->method, url);
        return;
    }
    if (!(allowed & method)) {
        out->allow = allowed == GET ? "GET, HEAD" : allowed == POST ? "POST" : "GET, HEAD, POST";
        reply_error(out, 405, NULL, "method_not_allowed", "Method Not Allowed: %s %.200s accepts %s",
                    in->method, url, out->allow);
        return;
    }
    switch (route) {
    case 1:
        route_generate(s, LOOM_API_COMPLETIONS, in, out);
        break;
    case 2:
        route_generate(s, LOOM_API_CHAT, in, out);
        break;
    case 3:
        route_models(s, out);
        break;
    case 4:
        route_tokenize(s, in, out);
        break;
    case 5:
        route_detokenize(s, in, out);
        break;
    case 6:
        out->status = 200;
        out->content_type = "text/plain";
        break;
    case 7: {
        json_t *b = json_object();
        json_object_set_new(b, "version", json_string(LOOM_VERSION));
        reply_json(out, 200, b);
        break;
    }
    case 8:
        route_metrics(s, out);
        break;
    case 9:
        route_model(s, url + 11, out);
        break;
    }
}
