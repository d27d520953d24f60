/*
 * decode_bench.c: forward-pass speed of a model on one backend, without the engine: one prefill of
 * --batch sequences of --prompt tokens, then --steps decode steps of one token per sequence, each with
 * its logits downloaded (F32 [batch, vocab]), as the engine's step does. Prints prefill tokens/s (the
 * second of two identical prefills; the first loads the libraries' kernels) and
 * decode tokens/s (batch * steps / time, after --warmup steps). No sampling: the next token is arbitrary.
 * Built by bench/cuda/pack.sh (not part of the CMake build); run on the GPU machine by device_check.sh:
 *   decode_bench MODEL_DIR [--device cuda|cpu] [--dtype bfloat16|float32] [--batch 1] [--prompt 128]
 *                [--steps 256] [--warmup 8]
 */
#include "backend/backend.h"
#include "core/error.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: decode_bench MODEL_DIR [--device cuda] [--dtype bfloat16|float32] [--batch B]"
                        " [--prompt P] [--steps N] [--warmup W]\n");
        return 2;
    }
    const char *dir = argv[1], *device = "cuda", *dtype = "bfloat16";
    int B = 1, P = 128, N = 256, W = 8;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--device")) device = argv[i + 1];
        else if (!strcmp(argv[i], "--dtype")) dtype = argv[i + 1];
        else if (!strcmp(argv[i], "--batch")) B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--prompt")) P = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) N = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--warmup")) W = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "decode_bench: unknown flag %s\n", argv[i]);
            return 2;
        }
    }
    bool f32 = !strcmp(dtype, "float32");
    struct loom_backend_options bo = {.device = device, .act_dtype = f32 ? LOOM_DTYPE_F32 : LOOM_DTYPE_BF16};
    struct loom_backend *be;
    if (loom_backend_create(&bo, &be)) {
        fprintf(stderr, "decode_bench: %s\n", loom_last_error());
        return 1;
    }
    const int bs = 16, per_seq = (P + N + W + bs) / bs + 1;
    struct loom_model_options mo = {.weight_dtype = f32 ? LOOM_DTYPE_F32 : LOOM_DTYPE_COUNT,
                                    .max_batch_tokens = B * P > B ? B * P : B,
                                    .max_batch_seqs = B,
                                    .max_logit_rows = B,
                                    .max_model_len = per_seq * bs};
    struct loom_model *m;
    double t0 = now();
    if (loom_model_load(dir, be, &mo, &m) || loom_model_alloc_kv(m, B * per_seq, bs)) {
        fprintf(stderr, "decode_bench: %s\n", loom_last_error());
        return 1;
    }
    double t_load = now() - t0;
    const int V = m->cfg.vocab_size;
    int T = B * P;
    int32_t *tok = loom_malloc(sizeof(int32_t) * (size_t)T), *pos = loom_malloc(sizeof(int32_t) * (size_t)T);
    int32_t *slot = loom_malloc(sizeof(int32_t) * (size_t)T), *qs = loom_malloc(sizeof(int32_t) * (size_t)(B + 1));
    int32_t *sl = loom_malloc(sizeof(int32_t) * (size_t)B), *rows = loom_malloc(sizeof(int32_t) * (size_t)B);
    int32_t *bt = loom_malloc(sizeof(int32_t) * (size_t)B * per_seq);
    float *logits = loom_malloc(sizeof(float) * (size_t)B * V);
    /* scattered: logical block b -> physical (b * stride) % per_seq, a permutation only when stride and
     * per_seq share no factor (stride 5 with per_seq 70 mapped several blocks to one: runs with such
     * shapes read K/V that other positions overwrote, and their logits changed from run to run) */
    int stride = 5;
    for (;;) {
        int a = stride, b = per_seq;
        while (b) { int t = a % b; a = b; b = t; }
        if (a == 1) break;
        stride++;
    }
    for (int s = 0; s < B; s++)
        for (int b = 0; b < per_seq; b++) bt[s * per_seq + b] = s * per_seq + (int)(((int64_t)b * stride) % per_seq);

    /* prefill */
    for (int s = 0; s < B; s++) {
        qs[s] = s * P;
        sl[s] = P;
        rows[s] = s * P + P - 1;
        for (int j = 0; j < P; j++) {
            int t = s * P + j;
            tok[t] = (int32_t)((t * 2654435761u) % (unsigned)V);
            pos[t] = j;
            slot[t] = bt[s * per_seq + j / bs] * bs + j % bs;
        }
    }
    qs[B] = T;
    struct loom_batch b = {.n_tokens = T, .n_seqs = B, .token_ids = tok, .positions = pos, .slot_mapping = slot,
                           .query_start = qs, .seq_lens = sl, .block_tables = bt, .max_blocks_per_seq = per_seq,
                           .n_logits = B, .logit_rows = rows};
    double t_prefill = 0;
    for (int rep = 0; rep < 2; rep++) { /* the first is a warm-up (library kernels load on first use) */
        t0 = now();
        if (loom_model_forward(m, &b, logits)) {
            fprintf(stderr, "decode_bench: prefill: %s\n", loom_last_error());
            return 1;
        }
        t_prefill = now() - t0;
    }

    /* decode */
    double t_dec = 0;
    for (int step = 0; step < W + N; step++) {
        for (int s = 0; s < B; s++) {
            int p = P + step;
            tok[s] = (int32_t)(((unsigned)(step * 31 + s) * 2654435761u) % (unsigned)V);
            pos[s] = p;
            slot[s] = bt[s * per_seq + p / bs] * bs + p % bs;
            qs[s] = s;
            sl[s] = p + 1;
            rows[s] = s;
        }
        qs[B] = B;
        b.n_tokens = B;
        if (step == W) t0 = now();
        if (loom_model_forward(m, &b, logits)) {
            fprintf(stderr, "decode_bench: decode: %s\n", loom_last_error());
            return 1;
        }
    }
    t_dec = now() - t0;
    double checksum = 0;
    for (int i = 0; i < V; i++) checksum += logits[i];
    printf("decode_bench %s device=%s dtype=%s batch=%d prompt=%d steps=%d: load %.2fs, prefill %.1f ms (%.0f tok/s), "
           "decode %.3f ms/step, %.1f tok/s (logits checksum %.4g)\n",
           dir, device, dtype, B, P, N, t_load, t_prefill * 1e3, T / t_prefill, t_dec * 1e3 / N, (double)B * N / t_dec,
           checksum);
    loom_model_free(m);
    loom_backend_destroy(be);
    return 0;
}
