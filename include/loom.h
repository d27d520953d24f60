/*
 * loom.h: the public C API of the loom serving engine.
 *
 * An engine owns one model, one KV cache and one scheduler. Requests are added from any thread;
 * each step the engine batches every running request (continuous batching) and reports new tokens
 * through the request's callback. Drive it either with loom_engine_step() on your own thread or
 * with loom_engine_start(), which runs the step loop on a thread of the engine's.
 *
 * Status convention: functions return 0 (LOOM_OK) or a negative enum loom_status; the message
 * that explains a failure (naming the value and the fix) is in loom_last_error() on the same thread.
 */
#ifndef LOOM_H
#define LOOM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_VERSION "0.1.0"

enum loom_status {
    LOOM_OK = 0,
    LOOM_EINVAL = -1,       /* bad input: a value, a file's content, a request field */
    LOOM_EIO = -2,          /* a file could not be opened, read or written */
    LOOM_ENOMEM = -3,       /* a resource the caller sized is too small (host OOM aborts instead) */
    LOOM_EUNSUPPORTED = -4, /* valid but not supported by loom (an architecture, a dtype, a feature) */
    LOOM_ENOTFOUND = -5,    /* a named thing is missing (tensor, file, request id) */
    LOOM_EFULL = -6,        /* the engine cannot accept more work right now */
    LOOM_ETOOLONG = -7,     /* a prompt or request longer than the model or cache can ever hold */
};

/* The message of the last failure on this thread ("" if none). Valid until the next failure. */
const char *loom_last_error(void);
const char *loom_status_name(int status);

/* ---------------------------------------------------------------------------------------------- */
/* Engine options: the names follow vLLM's command-line flags. */

enum loom_sched_policy { LOOM_SCHED_FCFS = 0, LOOM_SCHED_PRIORITY = 1 };

struct loom_engine_options {
    const char *model_dir;      /* Hugging Face folder: config.json, *.safetensors, tokenizer.json */
    const char *tokenizer_dir;  /* NULL: model_dir */
    const char *device;         /* "cpu" (default) or "cuda" */
    const char *dtype;          /* "auto" (default), "float32", "bfloat16", "float16" */
    int threads;                /* CPU threads; 0 = all cores */
    int max_model_len;          /* 0 = the model's max_position_embeddings */
    int max_num_seqs;           /* most sequences in one step (default 256) */
    int max_num_batched_tokens; /* token budget of one step (default 2048) */
    int block_size;             /* tokens per KV block (default 16) */
    int64_t kv_cache_memory;    /* bytes for the KV cache on the CPU (default 1 GiB) */
    int num_kv_blocks;          /* > 0: exact KV pool size in blocks, overrides the memory sizing */
    float gpu_memory_utilization; /* fraction of device memory loom may use (default 0.9) */
    bool enable_prefix_caching; /* default true */
    enum loom_sched_policy policy;
    uint64_t seed;              /* default seed for requests that set none */
};
void loom_engine_options_default(struct loom_engine_options *opts);

/* ---------------------------------------------------------------------------------------------- */
/* Sampling parameters: vLLM's SamplingParams. */

struct loom_logit_bias {
    int32_t token_id;
    float bias;
};

struct loom_sampling_params {
    int n;                      /* parallel samples sharing the prompt's blocks (default 1) */
    float temperature;          /* 0 = greedy (default 1) */
    float top_p;                /* (0, 1], default 1 */
    int top_k;                  /* 0 or -1 = off */
    float min_p;                /* [0, 1], default 0 */
    float repetition_penalty;   /* > 0, default 1 (off) */
    float presence_penalty;     /* [-2, 2], default 0 */
    float frequency_penalty;    /* [-2, 2], default 0 */
    bool has_seed;
    uint64_t seed;
    int max_tokens;             /* default 16; counts generated tokens */
    int min_tokens;             /* EOS and stop tokens are masked until this many are generated */
    bool ignore_eos;
    const char *const *stop;    /* stop strings, matched on the detokenized text, not emitted */
    int n_stop;
    const int32_t *stop_token_ids;
    int n_stop_token_ids;
    const struct loom_logit_bias *logit_bias;
    int n_logit_bias;
    int logprobs;               /* -1 = none; k in [0, 20]: sampled token's logprob and the top k. Logprobs are
                                 * of the raw model output (vLLM's default "raw_logprobs": before penalties,
                                 * logit_bias and temperature) */
    int prompt_logprobs;        /* -1 = none; k in [0, 20]: per prompt token (such a request skips the prefix
                                 * cache, as in vLLM, since every prompt row must be computed) */
    bool skip_special_tokens;   /* in the text output (default true) */
    bool include_stop_str_in_output;
    int priority;               /* lower runs first under LOOM_SCHED_PRIORITY (ignored under FCFS) */
};
void loom_sampling_params_default(struct loom_sampling_params *p);

/* ---------------------------------------------------------------------------------------------- */
/* Outputs, delivered through the request's callback on the engine's stepping thread. */

enum loom_finish_reason {
    LOOM_FINISH_NONE = 0, /* still running */
    LOOM_FINISH_STOP,     /* EOS, a stop token or a stop string */
    LOOM_FINISH_LENGTH,   /* max_tokens or max_model_len */
    LOOM_FINISH_ABORT,    /* loom_engine_abort() */
    LOOM_FINISH_ERROR,    /* the request failed after it was accepted; see error */
};
const char *loom_finish_reason_name(enum loom_finish_reason r); /* "stop", "length", "abort", ... */

struct loom_token_logprob {
    int32_t token_id;
    float logprob;
};

struct loom_output {
    uint64_t request_id;
    int index;                       /* which of the request's n samples */
    const int32_t *token_ids;        /* tokens new since the last output of this sample */
    int n_tokens;
    const char *text;                /* text delta (UTF-8, never a partial character) */
    size_t text_len;
    /* logprobs of the new tokens when requested: for token i, logprobs[i] is the sampled token's,
     * top_logprobs[i * top_k .. +top_k] the best top_k (top_k = params.logprobs). */
    const struct loom_token_logprob *logprobs;
    const struct loom_token_logprob *top_logprobs;
    int top_k;
    /* prompt logprobs (when requested: on the first output of sample index 0 only): [n_prompt] entries,
     * the first is {prompt[0], 0} as vLLM reports None; top: [n_prompt * prompt_top_k] */
    const struct loom_token_logprob *prompt_logprobs;
    const struct loom_token_logprob *prompt_top_logprobs;
    int prompt_top_k;
    enum loom_finish_reason finish_reason; /* set on the last output of this sample */
    int32_t stop_token;              /* the token that stopped it, or -1 */
    const char *stop_string;         /* the stop string that matched, or NULL */
    const char *error;               /* LOOM_FINISH_ERROR: why */
    int prompt_tokens;               /* usage, valid on every output */
    int completion_tokens;           /* tokens generated so far by this sample */
    int cached_tokens;               /* prompt tokens served from the prefix cache */
    double time_first_token;         /* seconds since the request was added (0 until then) */
};

/* Called for every output; must not block for long and must not call back into the engine except
 * loom_engine_abort. The output's pointers are valid only during the call. */
typedef void (*loom_output_fn)(const struct loom_output *out, void *user);

struct loom_request {
    const char *prompt;              /* text, tokenized with the model's tokenizer; or NULL */
    bool add_special_tokens;         /* for text prompts (BOS etc.), default true */
    const int32_t *prompt_ids;       /* used when prompt is NULL */
    int n_prompt_ids;
    struct loom_sampling_params params;
    loom_output_fn on_output;
    void *user;
};
void loom_request_default(struct loom_request *r);

/* ---------------------------------------------------------------------------------------------- */
/* The engine. */

struct loom_engine;

int loom_engine_create(const struct loom_engine_options *opts, struct loom_engine **out);
void loom_engine_free(struct loom_engine *e); /* stops the thread; aborts what is left */

/* Validates and queues a request; thread-safe. Fails (nothing queued) with LOOM_EINVAL for bad
 * parameters, LOOM_ETOOLONG for a prompt that can never fit, LOOM_EFULL when the queue is full. */
int loom_engine_add_request(struct loom_engine *e, const struct loom_request *req, uint64_t *request_id);

/* Finishes a request at once (its blocks are freed before the next step); thread-safe.
 * Its callback gets a last output with LOOM_FINISH_ABORT. LOOM_ENOTFOUND if already finished. */
int loom_engine_abort(struct loom_engine *e, uint64_t request_id);

/* Runs one scheduling step on the calling thread. Returns the number of unfinished requests. */
int loom_engine_step(struct loom_engine *e);
bool loom_engine_has_work(struct loom_engine *e);

/* Runs the step loop on an engine thread until loom_engine_stop (which waits for it). */
int loom_engine_start(struct loom_engine *e);
void loom_engine_stop(struct loom_engine *e);

struct loom_engine_stats {
    int running, waiting, swapped;    /* sequences (a request of n samples counts n); swapped is always 0:
                                       * a preempted sequence is recomputed, never swapped out */
    int num_kv_blocks, free_kv_blocks;
    double kv_usage;                  /* used blocks / all blocks, 0..1 */
    int64_t num_steps;
    int64_t num_preemptions;
    int64_t num_prefill_chunks;       /* prefill pieces shorter than the rest of their prompt */
    int64_t prefix_cache_queries;     /* prompt tokens looked up in the prefix cache */
    int64_t prefix_cache_hits;        /* of them, found */
    int64_t prompt_tokens_total;      /* prompt tokens of finished + running requests */
    int64_t prompt_tokens_computed;   /* prompt tokens actually run through the model (every sample's,
                                       * recomputation after a preemption included) */
    int64_t generation_tokens_total;
    int64_t requests_finished;
};
void loom_engine_get_stats(struct loom_engine *e, struct loom_engine_stats *st);

/* The model's facts that a server needs. */
int loom_engine_max_model_len(const struct loom_engine *e);
int loom_engine_vocab_size(const struct loom_engine *e);
struct loom_tokenizer *loom_engine_tokenizer(struct loom_engine *e); /* NULL if the folder has none */

#ifdef __cplusplus
}
#endif
#endif
