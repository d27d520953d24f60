/* test_core.c: dtype conversions, error messages, int-list parsing. */
#include "core/dtype.h"
#include "core/error.h"
#include "core/util.h"
#include "test.h"

int main(void)
{
    /* bf16 round trip and rounding to nearest even */
    CHECK(loom_bf16_to_f32(loom_f32_to_bf16(1.5f)) == 1.5f);
    CHECK_EQ_INT(loom_f32_to_bf16(1.0f), 0x3f80);
    CHECK_EQ_INT(loom_f32_to_bf16(-2.0f), 0xc000);
    /* 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even (1.0) */
    CHECK_EQ_INT(loom_f32_to_bf16(1.0f + 1.0f / 256), 0x3f80);
    CHECK_EQ_INT(loom_f32_to_bf16(1.0f + 3.0f / 256), 0x3f82);
    /* fp16: exact values, subnormals, overflow, rounding */
    CHECK(loom_f16_to_f32(0x3c00) == 1.0f);
    CHECK(loom_f16_to_f32(0xc000) == -2.0f);
    CHECK(loom_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    CHECK(loom_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(isinf(loom_f16_to_f32(0x7c00)));
    CHECK(isnan(loom_f16_to_f32(0x7e00)));
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = loom_f16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        if (loom_f32_to_f16(f) != h) {
            CHECK_MSG(0, "f16 round trip of 0x%04x", h);
            break;
        }
    }
    CHECK_EQ_INT(loom_f32_to_f16(1e6f), 0x7c00);
    CHECK_EQ_INT(loom_f32_to_f16(ldexpf(1.0f, -26)), 0); /* below half the smallest subnormal */
    CHECK_EQ_INT(loom_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00); /* tie -> even */

    enum loom_dtype t;
    CHECK(loom_dtype_from_name("BF16", &t) == 0 && t == LOOM_DTYPE_BF16);
    CHECK(loom_dtype_from_name("Q4", &t) == LOOM_EINVAL);
    CHECK(strstr(loom_last_error(), "Q4") != NULL);

    int32_t *v;
    int n;
    CHECK(loom_parse_int_list("1, 2,3", &v, &n) == 0 && n == 3 && v[0] == 1 && v[2] == 3);
    free(v);
    CHECK(loom_parse_int_list("[5]", &v, &n) == 0 && n == 1 && v[0] == 5);
    free(v);
    CHECK(loom_parse_int_list("1,x", &v, &n) == LOOM_EINVAL);
    CHECK(loom_parse_int_list("99999999999", &v, &n) == LOOM_EINVAL);

    loom_fail(LOOM_EIO, "inner");
    loom_fail_context(LOOM_EIO, "outer");
    CHECK_EQ_STR(loom_last_error(), "outer: inner");
    return test_report();
}
