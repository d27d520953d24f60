/*
 * fuzz_hf_config.c: libFuzzer target for config.json parsing, followed (when the config parses and is
 * small enough to list) by the architecture's weight list, so both see hostile values.
 */
#include "format/hf_config.h"
#include "model/arch.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct loom_model_config cfg;
    if (loom_hf_config_parse((const char *)data, size, &cfg) != 0) return 0;
    /* the spec list has layers x (experts + 1) entries: skip sizes that only test the allocator */
    if ((long long)cfg.num_layers * (cfg.num_experts + 1) > 20000) return 0;
    struct loom_weight_spec *specs;
    int n;
    if (loom_arch_weights(&cfg, &specs, &n) == 0) {
        for (int i = 0; i < n; i++)
            if (specs[i].shape[0] <= 0 || (specs[i].ndim == 2 && specs[i].shape[1] <= 0)) abort();
        free(specs);
    }
    for (int l = 0; l < cfg.num_layers && l < 64; l++) (void)loom_arch_layer_is_moe(&cfg, l);
    return 0;
}
