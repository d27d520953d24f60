/*
 * cmd_generate.c: `loom generate MODEL_DIR (--prompt TEXT | --prompt-ids 1,2,3)... [--max-tokens N]
 * [--temperature T] [--top-p P] [--top-k K] [--min-p P] [--seed S] [--n N] [--ignore-eos] [--json]`
 * + the common engine flags. Every prompt is added to one engine at once and runs concurrently
 * (continuous batching); this thread steps the engine until all are done.
 *
 * Output, in prompt order then sample order once everything has finished: the text of each sample
 * (the generated ids, space-separated, when the model has no tokenizer), one sample per line; or with
 * --json one object per line: {"index", "prompt_index", "token_ids", "text" (null without a tokenizer),
 * "finish_reason"}. On stderr: prefill and decode speed, preemptions, prefix-cache hits.
 * --seed is the engine's seed: a request without a seed of its own draws from seed + its request id.
 */
#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/util.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sample {
    int32_t *ids;
    int n_ids, cap_ids;
    char *text;
    size_t text_len, text_cap;
    enum loom_finish_reason finish;
    const char *error;
};

struct prompt {
    const char *text;     /* --prompt, or NULL */
    int32_t *ids;         /* --prompt-ids */
    int n_ids;
    struct sample *samples; /* [n] */
    int n;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: loom generate MODEL_DIR (--prompt TEXT | --prompt-ids 1,2,3)... [--max-tokens N]\n"
            "                     [--temperature T] [--top-p P] [--top-k K] [--min-p P] [--seed S] [--n N]\n"
            "                     [--ignore-eos] [--json] [common flags]\n\n"
            "Runs every prompt concurrently through the engine and prints each sample's text (its token ids\n"
            "when the model has no tokenizer.json), one per line, or with --json one object per line:\n"
            "{\"index\", \"prompt_index\", \"token_ids\", \"text\", \"finish_reason\"}. Defaults: --max-tokens 16,\n"
            "--temperature 1 (0 = greedy), --top-p 1, --top-k 0 (off), --min-p 0, --n 1.\n"
            "Common flags: --device --dtype --threads --max-model-len --max-num-seqs --max-num-batched-tokens\n"
            "--block-size --kv-cache-memory --num-kv-blocks --gpu-memory-utilization\n"
            "--[no-]enable-prefix-caching --seed --scheduling-policy --tokenizer.\n");
}

static void on_output(const struct loom_output *o, void *user)
{
    struct prompt *p = user;
    if (o->index < 0 || o->index >= p->n) return;
    struct sample *s = &p->samples[o->index];
    if (s->n_ids + o->n_tokens > s->cap_ids) {
        s->cap_ids = 2 * (s->n_ids + o->n_tokens) + 16;
        s->ids = loom_realloc(s->ids, sizeof(int32_t) * (size_t)s->cap_ids);
    }
    memcpy(s->ids + s->n_ids, o->token_ids, sizeof(int32_t) * (size_t)o->n_tokens);
    s->n_ids += o->n_tokens;
    if (s->text_len + o->text_len + 1 > s->text_cap) {
        s->text_cap = 2 * (s->text_len + o->text_len) + 64;
        s->text = loom_realloc(s->text, s->text_cap);
    }
    memcpy(s->text + s->text_len, o->text, o->text_len);
    s->text_len += o->text_len;
    s->text[s->text_len] = 0;
    s->finish = o->finish_reason;
    if (o->error) s->error = loom_strdup(o->error);
}

static void print_sample(const struct prompt *p, int pi, int k, bool json, bool has_tok)
{
    const struct sample *s = &p->samples[k];
    if (json) {
        json_t *o = json_object(), *ids = json_array();
        for (int i = 0; i < s->n_ids; i++) json_array_append_new(ids, json_integer(s->ids[i]));
        json_object_set_new(o, "index", json_integer(k));
        json_object_set_new(o, "prompt_index", json_integer(pi));
        json_object_set_new(o, "token_ids", ids);
        json_object_set_new(o, "text", has_tok ? json_stringn(s->text ? s->text : "", s->text_len) : json_null());
        json_object_set_new(o, "finish_reason", json_string(loom_finish_reason_name(s->finish)));
        if (s->error) json_object_set_new(o, "error", json_string(s->error));
        char *line = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
        printf("%s\n", line);
        free(line);
        json_decref(o);
    } else if (has_tok) {
        fwrite(s->text ? s->text : "", 1, s->text_len, stdout);
        printf("\n");
    } else {
        for (int i = 0; i < s->n_ids; i++) printf(i ? " %d" : "%d", s->ids[i]);
        printf("\n");
    }
}

int loom_cmd_generate(int argc, char **argv)
{
    struct loom_engine_options eo;
    loom_engine_options_default(&eo);
    struct loom_sampling_params sp;
    loom_sampling_params_default(&sp);
    const char *dir = NULL;
    struct prompt *prompts = NULL;
    int n_prompts = 0, rc = 2;
    bool json = false;
    long long n;
    double d;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            rc = 0;
            goto done;
        }
        int r = loom_cli_common_flag(argc, argv, &i, &eo);
        if (r < 0) goto done;
        if (r > 0) continue;
        if (!strcmp(a, "--prompt") || !strcmp(a, "--prompt-ids")) {
            if (!(v = loom_cli_value(argc, argv, &i))) goto done;
            prompts = loom_realloc(prompts, sizeof(*prompts) * (size_t)(n_prompts + 1));
            struct prompt *p = &prompts[n_prompts++];
            memset(p, 0, sizeof(*p));
            if (!strcmp(a, "--prompt")) {
                p->text = v;
            } else if (loom_parse_int_list(v, &p->ids, &p->n_ids) || p->n_ids == 0) {
                fprintf(stderr, "loom generate: --prompt-ids: %s\n", p->n_ids == 0 ? "empty list" : loom_last_error());
                goto done;
            }
        } else if (!strcmp(a, "--max-tokens")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_int(a, v, 1, 1 << 24, &n)) goto done;
            sp.max_tokens = (int)n;
        } else if (!strcmp(a, "--temperature")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_float(a, v, 0, 100, &d)) goto done;
            sp.temperature = (float)d;
        } else if (!strcmp(a, "--top-p")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_float(a, v, 1e-9, 1, &d)) goto done;
            sp.top_p = (float)d;
        } else if (!strcmp(a, "--top-k")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_int(a, v, -1, 1 << 30, &n)) goto done;
            sp.top_k = (int)n;
        } else if (!strcmp(a, "--min-p")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_float(a, v, 0, 1, &d)) goto done;
            sp.min_p = (float)d;
        } else if (!strcmp(a, "--n")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_int(a, v, 1, 1024, &n)) goto done;
            sp.n = (int)n;
        } else if (!strcmp(a, "--ignore-eos")) {
            sp.ignore_eos = true;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "loom generate: unknown flag '%s'\n", a);
            usage(stderr);
            goto done;
        } else if (!dir) {
            dir = a;
        } else {
            fprintf(stderr, "loom generate: unexpected argument '%s'\n", a);
            goto done;
        }
    }
    if (!dir || n_prompts == 0) {
        usage(stderr);
        goto done;
    }
    eo.model_dir = dir;

    rc = 1;
    struct loom_engine *e = NULL;
    double t_start = loom_now();
    if (loom_engine_create(&eo, &e)) {
        fprintf(stderr, "loom generate: %s\n", loom_last_error());
        goto done;
    }
    double t_loaded = loom_now();
    bool has_tok = loom_engine_tokenizer(e) != NULL;
    for (int p = 0; p < n_prompts; p++) {
        struct prompt *pr = &prompts[p];
        pr->n = sp.n;
        pr->samples = loom_calloc((size_t)sp.n, sizeof(struct sample));
        struct loom_request req;
        loom_request_default(&req);
        req.prompt = pr->text;
        req.prompt_ids = pr->ids;
        req.n_prompt_ids = pr->n_ids;
        req.params = sp;
        req.on_output = on_output;
        req.user = pr;
        if (loom_engine_add_request(e, &req, NULL)) {
            fprintf(stderr, "loom generate: prompt %d: %s\n", p, loom_last_error());
            loom_engine_free(e);
            goto done;
        }
    }

    /* step to the end, timing steps that computed prompt tokens apart from pure decode steps */
    double t_prefill = 0, t_decode = 0;
    long long decode_tokens = 0;
    struct loom_engine_stats before, after;
    loom_engine_get_stats(e, &before);
    double t_run = loom_now();
    while (loom_engine_has_work(e)) {
        double t0 = loom_now();
        loom_engine_step(e);
        double dt = loom_now() - t0;
        loom_engine_get_stats(e, &after);
        if (after.prompt_tokens_computed > before.prompt_tokens_computed) t_prefill += dt;
        else {
            t_decode += dt;
            decode_tokens += after.generation_tokens_total - before.generation_tokens_total;
        }
        before = after;
    }
    double t_end = loom_now();
    loom_engine_get_stats(e, &after);

    for (int p = 0; p < n_prompts; p++)
        for (int k = 0; k < prompts[p].n; k++) print_sample(&prompts[p], p, k, json, has_tok);
    fflush(stdout);
    fprintf(stderr,
            "loom generate: %d prompts x %d samples: %lld prompt tokens (%lld computed, %lld from the prefix cache), "
            "%lld generated in %.3f s (load %.3f s)\n"
            "loom generate: prefill %.1f tok/s, decode %.1f tok/s, overall %.1f generated tok/s; %lld steps, "
            "%lld preemptions, %lld prefill chunks\n",
            n_prompts, sp.n, (long long)after.prompt_tokens_total, (long long)after.prompt_tokens_computed,
            (long long)after.prefix_cache_hits, (long long)after.generation_tokens_total, t_end - t_run,
            t_loaded - t_start, t_prefill > 0 ? after.prompt_tokens_computed / t_prefill : 0.0,
            t_decode > 0 ? decode_tokens / t_decode : 0.0,
            t_end > t_run ? after.generation_tokens_total / (t_end - t_run) : 0.0, (long long)after.num_steps,
            (long long)after.num_preemptions, (long long)after.num_prefill_chunks);
    rc = 0;
    for (int p = 0; p < n_prompts; p++)
        for (int k = 0; k < prompts[p].n; k++)
            if (prompts[p].samples[k].finish == LOOM_FINISH_ERROR) rc = 1;
    loom_engine_free(e);
done:
    for (int p = 0; p < n_prompts; p++) {
        for (int k = 0; prompts[p].samples && k < prompts[p].n; k++) {
            free(prompts[p].samples[k].ids);
            free(prompts[p].samples[k].text);
            free((char *)prompts[p].samples[k].error);
        }
        free(prompts[p].samples);
        free(prompts[p].ids);
    }
    free(prompts);
    return rc;
}
