/*
 * ceilings.cu: what the card itself reaches, to compare loom's numbers with (bench/RESULTS.md):
 *   - memory bandwidth: a read-only kernel summing 2 GiB (what a decode step's weight read is), and
 *     cudaMemcpy device to device (reads + writes, counted as 2x bytes);
 *   - dense bf16 GEMM throughput through cuBLAS (fp32 accumulate) at the shapes loom's prefill uses and at
 *     8192^3.
 * Built by bench/cuda/pack.sh (nvcc, not part of the CMake build); run on the GPU machine:
 *   ceilings            # prints one line per measurement
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#define CK(x)                                                                                            \
    do {                                                                                                 \
        cudaError_t e_ = (x);                                                                            \
        if (e_ != cudaSuccess) {                                                                         \
            fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));                                     \
            exit(1);                                                                                     \
        }                                                                                                \
    } while (0)

__global__ void read_kernel(const uint4 *p, size_t n, unsigned *sink)
{
    unsigned acc = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = __ldcs(p + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x12345678u) *sink = acc; /* keeps the loads */
}

static float time_ms(cudaEvent_t a, cudaEvent_t b)
{
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    return ms;
}

int main(void)
{
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs, %.1f GiB\n", prop.name, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));

    const size_t bytes = (size_t)2 << 30;
    void *buf, *dst;
    unsigned *sink;
    CK(cudaMalloc(&buf, bytes));
    CK(cudaMalloc(&dst, bytes));
    CK(cudaMalloc((void **)&sink, 4));
    CK(cudaMemset(buf, 1, bytes));
    int grid = prop.multiProcessorCount * 8;
    float best = 1e30f;
    for (int it = 0; it < 10; it++) {
        CK(cudaEventRecord(a));
        read_kernel<<<grid, 512>>>((const uint4 *)buf, bytes / 16, sink);
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float ms = time_ms(a, b);
        if (it && ms < best) best = ms;
    }
    printf("read bandwidth: %.0f GB/s (2 GiB read-only kernel, best of 9)\n", bytes / (best * 1e-3) / 1e9);
    best = 1e30f;
    for (int it = 0; it < 6; it++) {
        CK(cudaEventRecord(a));
        CK(cudaMemcpyAsync(dst, buf, bytes, cudaMemcpyDeviceToDevice));
        CK(cudaEventRecord(b));
        CK(cudaEventSynchronize(b));
        float ms = time_ms(a, b);
        if (it && ms < best) best = ms;
    }
    printf("copy bandwidth: %.0f GB/s (cudaMemcpy D2D of 2 GiB, read + write counted)\n", 2.0 * bytes / (best * 1e-3) / 1e9);
    CK(cudaFree(dst));

    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return 1;
    /* M x N = out rows x out cols, K inner: (tokens, out features, in features) as loom's prefill products */
    const int shapes[][3] = {{8192, 8192, 8192}, {8192, 4096, 4096}, {8192, 28672, 4096}, {8192, 4096, 14336},
                             {8192, 4864 * 2, 896}, {8192, 896, 4864}};
    __nv_bfloat16 *A = (__nv_bfloat16 *)buf; /* contents do not matter for the timing */
    size_t need = 0;
    for (auto &s : shapes) {
        size_t n = ((size_t)s[0] * s[2] + (size_t)s[1] * s[2] + (size_t)s[0] * s[1]) * 2;
        if (n > need) need = n;
    }
    if (need > bytes) {
        fprintf(stderr, "GEMM buffers need %zu bytes\n", need);
        return 1;
    }
    for (auto &s : shapes) {
        int M = s[0], N = s[1], K = s[2];
        __nv_bfloat16 *X = A, *W = A + (size_t)M * K, *C = W + (size_t)N * K;
        float one = 1, zero = 0;
        best = 1e30f;
        for (int it = 0; it < 8; it++) {
            CK(cudaEventRecord(a));
            /* column-major C^T[N, M] = W^T... as loom: out[M, N] = X[M, K] @ W[N, K]^T */
            cublasStatus_t st = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, W, CUDA_R_16BF, K, X,
                                             CUDA_R_16BF, K, &zero, C, CUDA_R_16BF, N, CUBLAS_COMPUTE_32F,
                                             CUBLAS_GEMM_DEFAULT);
            if (st != CUBLAS_STATUS_SUCCESS) {
                fprintf(stderr, "cublasGemmEx: %d\n", (int)st);
                return 1;
            }
            CK(cudaEventRecord(b));
            CK(cudaEventSynchronize(b));
            float ms = time_ms(a, b);
            if (it && ms < best) best = ms;
        }
        printf("bf16 GEMM %d x %d x %d: %.0f TFLOP/s (%.3f ms)\n", M, N, K, 2.0 * M * N * K / (best * 1e-3) / 1e12, best);
    }
    cublasDestroy(h);
    return 0;
}
