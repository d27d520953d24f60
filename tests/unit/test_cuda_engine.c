/* test_cuda_engine.c: the serving-engine golden tests (batch invariance, preemption, chunked prefill,
 * seeded sampling, prefix caching: test_engine_golden.c) on --device cuda, fp32 (TF32 off). Exits 77 without
 * a GPU. */
#define ENGINE_TEST_DEVICE "cuda"
#include "test_engine_golden.c"
