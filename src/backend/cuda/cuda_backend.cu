/*
 * cuda_backend.cu: the CUDA backend's life cycle and memory: device selection, the one stream, the
 * cuBLAS/cuBLASLt handles and their workspace, allocation, uploads and downloads, and the ops table.
 * The kernels live in cuda_kernels.cu, cuda_matmul.cu and cuda_attention.cu.
 *
 * Activation dtype: opts->act_dtype when it is F32, F16 or BF16, else BF16 (the default). With F32
 * activations the matrix products run in true fp32 (CUBLAS_COMPUTE_32F, no TF32 math mode), so that
 * --dtype float32 reproduces the reference to ~1e-5.
 * This file does not pick a batch size or size the KV cache (the model and engine do, from memory_info).
 */
#include "backend/cuda/cuda_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" bool loom_backend_cuda_available(void)
{
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        return false;
    }
    return n > 0;
}

/* ---- memory ---- */

static void *cuda_alloc(struct loom_backend *be, size_t bytes)
{
    void *p = NULL;
    (void)cuda_ctx_of(be); /* the backend's device current on this thread */
    be->n_allocs++;
    if (bytes == 0) bytes = 1;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess)
        LOOM_DIE("CUDA: out of device memory allocating %zu bytes: %s (lower --gpu-memory-utilization, "
                 "--max-num-batched-tokens or --max-model-len)",
                 bytes, cudaGetErrorString(err));
    return p;
}

static void cuda_free(struct loom_backend *be, void *ptr)
{
    cuda_flush(cuda_ctx_of(be)); /* pending work may still read it */
    if (ptr) CUDA_CHECK(cudaFree(ptr));
}

static void *cuda_upload_weights(struct loom_backend *be, const void *src, size_t bytes)
{
    struct cuda_ctx *c = cuda_ctx_of(be);
    void *p = cuda_alloc(be, bytes);
    cuda_flush(c);
    CUDA_CHECK(cudaMemcpyAsync(p, src, bytes, cudaMemcpyHostToDevice, c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    c->pinned_used = 0;
    return p;
}

static void cuda_upload(struct loom_backend *be, void *dst, const void *src, size_t bytes)
{
    /* The pending segment goes first: it may read what dst holds now. src is copied into the pinned
     * staging (free again once the stream drains, at the next download or synchronize), so the caller
     * may reuse it at once; past the staging's size, a copy from pageable memory (staged by the driver). */
    struct cuda_ctx *c = cuda_ctx_of(be);
    cuda_flush(c);
    if (!bytes) return;
    if (c->pinned_used + bytes <= LOOM_CUDA_PINNED_BYTES) {
        unsigned char *st = c->pinned + c->pinned_used;
        memcpy(st, src, bytes);
        c->pinned_used += (bytes + 63) & ~(size_t)63;
        CUDA_CHECK(cudaMemcpyAsync(dst, st, bytes, cudaMemcpyHostToDevice, c->stream));
    } else {
        CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    }
}

static void cuda_download(struct loom_backend *be, void *dst, const void *src, size_t bytes)
{
    struct cuda_ctx *c = cuda_ctx_of(be);
    cuda_flush(c);
    if (c->profile) CUDA_CHECK(cudaEventRecord(c->prof_ev[0], c->stream));
    bool staged = bytes && c->pinned_used + bytes <= LOOM_CUDA_PINNED_BYTES;
    if (bytes)
        CUDA_CHECK(cudaMemcpyAsync(staged ? c->pinned + c->pinned_used : dst, src, bytes, cudaMemcpyDeviceToHost,
                                   c->stream));
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    if (staged) memcpy(dst, c->pinned + c->pinned_used, bytes);
    c->pinned_used = 0; /* the stream is drained: every staged upload has been read */
    if (c->profile) {
        float ms = 0;
        CUDA_CHECK(cudaEventRecord(c->prof_ev[1], c->stream));
        CUDA_CHECK(cudaEventSynchronize(c->prof_ev[1]));
        CUDA_CHECK(cudaEventElapsedTime(&ms, c->prof_ev[0], c->prof_ev[1]));
        cuda_prof_add(c, (const void *)2, "download (device to pageable host)", ms);
    }
}

static void cuda_synchronize(struct loom_backend *be)
{
    cuda_flush(cuda_ctx_of(be));
    CUDA_CHECK(cudaStreamSynchronize(cuda_ctx_of(be)->stream));
    cuda_ctx_of(be)->pinned_used = 0;
}

static void cuda_memory_info(struct loom_backend *be, size_t *free_bytes, size_t *total_bytes)
{
    size_t f = 0, t = 0;
    (void)cuda_ctx_of(be);
    CUDA_CHECK(cudaMemGetInfo(&f, &t));
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
}

static void cuda_destroy(struct loom_backend *be)
{
    struct cuda_ctx *c = cuda_ctx_of(be);
    cuda_flush(c);
    CUDA_CHECK(cudaStreamSynchronize(c->stream));
    if (getenv("LOOM_CUDA_STATS")) /* not loom_log: core links before this library */
        fprintf(stderr, "cuda: %lld graph replays, %lld graphs built, %lld segments launched op by op\n",
                c->graph_replays, c->graph_builds, c->direct_segments);
    cuda_rec_free(c);
    CUBLAS_CHECK(cublasLtDestroy(c->cublaslt));
    CUBLAS_CHECK(cublasDestroy(c->cublas));
    CUDA_CHECK(cudaFree(c->cublas_ws));
    CUDA_CHECK(cudaFree(c->attn_ws));
    CUDA_CHECK(cudaFree(c->attn_counters));
    if (c->sample_buf) CUDA_CHECK(cudaFree(c->sample_buf));
    CUDA_CHECK(cudaFreeHost(c->pinned));
    CUDA_CHECK(cudaStreamDestroy(c->stream));
    free(c);
    free(be);
}

/* The ops table, filled by name (C++17 has no designated initializers): one line per op. */
static struct loom_backend_ops cuda_ops_make(void)
{
    struct loom_backend_ops ops = {}, *o = &ops;
    o->destroy = cuda_destroy;
    o->alloc = cuda_alloc;
    o->free = cuda_free;
    o->upload_weights = cuda_upload_weights;
    o->upload = cuda_upload;
    o->download = cuda_download;
    o->synchronize = cuda_synchronize;
    o->memory_info = cuda_memory_info;
    o->embedding = cuda_embedding;
    o->rmsnorm = cuda_rmsnorm;
    o->add_rmsnorm = cuda_add_rmsnorm;
    o->matmul = cuda_matmul;
    o->rope = cuda_rope;
    o->kv_store = cuda_kv_store;
    o->qkv_rope_store = cuda_qkv_rope_store;
    o->attention = cuda_attention;
    o->silu_mul = cuda_silu_mul;
    o->add = cuda_add;
    o->gather_rows = cuda_gather_rows;
    o->scatter_add_rows = cuda_scatter_add_rows;
    o->moe_route = cuda_moe_route;
    o->convert = cuda_convert;
    o->moe_experts = cuda_moe_experts;
    o->moe_workspace_bytes = cuda_moe_workspace_bytes;
    o->sample = cuda_sample;
    o->sample_reserve = cuda_sample_reserve;
    o->matmul_fused = cuda_matmul_fused;
    o->decode_attention = cuda_decode_attention;
    return ops;
}


extern "C" int loom_backend_cuda_create(const struct loom_backend_options *opts, struct loom_backend **out)
{
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess || n == 0) {
        cudaGetLastError();
        return loom_fail(LOOM_EUNSUPPORTED, "--device cuda: no CUDA device found (%s); use --device cpu",
                         err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    }
    int dev = opts ? opts->device_index : 0;
    if (dev < 0 || dev >= n)
        return loom_fail(LOOM_EINVAL, "CUDA device index %d out of range (this machine has %d)", dev, n);

    CUDA_CHECK(cudaSetDevice(dev));
    struct cuda_ctx *c = (struct cuda_ctx *)loom_calloc(1, sizeof(*c));
    c->device = dev;
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    c->sm_count = prop.multiProcessorCount;
    c->cc_major = prop.major;
    c->smem_optin = prop.sharedMemPerBlockOptin;
    CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&c->cublas));
    CUBLAS_CHECK(cublasSetStream(c->cublas, c->stream));
    CUDA_CHECK(cudaMalloc(&c->cublas_ws, LOOM_CUDA_CUBLAS_WS_BYTES));
    CUBLAS_CHECK(cublasSetWorkspace(c->cublas, c->cublas_ws, LOOM_CUDA_CUBLAS_WS_BYTES));
    CUBLAS_CHECK(cublasLtCreate(&c->cublaslt));
    CUDA_CHECK(cudaMalloc((void **)&c->attn_ws, LOOM_CUDA_ATTN_WS_BYTES));
    CUDA_CHECK(cudaMallocHost((void **)&c->pinned, LOOM_CUDA_PINNED_BYTES));

    enum loom_dtype act = opts ? opts->act_dtype : LOOM_DTYPE_BF16;
    if (act != LOOM_DTYPE_F32 && act != LOOM_DTYPE_F16 && act != LOOM_DTYPE_BF16) act = LOOM_DTYPE_BF16;
    c->f32_exact = true;
    /* Default math: no TF32 for fp32 products; bf16/fp16 products accumulate in fp32 (CUBLAS_COMPUTE_32F). */
    CUBLAS_CHECK(cublasSetMathMode(c->cublas, CUBLAS_DEFAULT_MATH));
    cuda_attention_init(c);
    cuda_rec_init(c);

    struct loom_backend *be = (struct loom_backend *)loom_calloc(1, sizeof(*be));
    static const struct loom_backend_ops cuda_ops = cuda_ops_make(); /* C++: initialized once, thread-safe */
    be->ops = &cuda_ops;
    be->name = "cuda";
    be->act_dtype = act;
    be->threads = 1;
    be->ctx = c;
    be->copies_weights = true;
    be->replays_work = true;
    *out = be;
    return 0;
}
