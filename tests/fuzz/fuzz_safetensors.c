/*
 * fuzz_safetensors.c: libFuzzer target for the safetensors header parser. The input is a whole file
 * (8-byte length, JSON header, data); every input must parse or fail with a status, never crash, and a
 * parse that succeeds must describe tensors that lie inside the input.
 */
#include "core/error.h"
#include "format/safetensors.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct loom_st_header h;
    if (loom_st_header_parse(data, size, &h) == 0) {
        for (int i = 0; i < h.n_tensors; i++) {
            const struct loom_st_tensor *t = &h.tensors[i];
            const uint8_t *p = t->data;
            LOOM_ASSERT(t->name && t->ndim >= 0 && t->ndim <= LOOM_MAX_DIMS);
            LOOM_ASSERT(p >= data && p + t->nbytes <= data + size);
            LOOM_ASSERT(t->nbytes == (size_t)t->numel * loom_dtype_size(t->dtype));
            /* touch the first and last byte so ASan sees any bad range */
            volatile uint8_t sink = 0;
            if (t->nbytes) sink ^= p[0] ^ p[t->nbytes - 1];
            (void)sink;
        }
        loom_st_header_free(&h);
    }
    return 0;
}
