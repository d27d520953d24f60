/*
 * test_cuda_fused.c: test_fused_weights.c on the CUDA backend (fused weights are its default there):
 * the same script with LOOM_FUSE_WEIGHTS=0 and =1, F32 and BF16 activations, logits within 1e-4 / 3e-2
 * of each other. Exits 77 where no CUDA device is present.
 */
#define FUSED_ON_CUDA 1
#include "test_fused_weights.c"
