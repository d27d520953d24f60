/* test_utf8.c: core/utf8 encode, strict decode and validation on exact byte cases and every code point. */
#include "core/utf8.h"
#include "test.h"

#include <string.h>

/* Decodes s (n bytes) and checks the length and, when valid, the code point. */
static void dec(const char *s, size_t n, int want_len, uint32_t want_cp)
{
    uint32_t cp = 0xDEADBEEF;
    int l = loom_utf8_decode(s, n, &cp);
    CHECK_MSG(l == want_len, "decode length %d, want %d (first byte 0x%02x, n %zu)", l, want_len,
              n ? (unsigned char)s[0] : 0u, n);
    if (want_len > 0) CHECK_MSG(cp == want_cp, "decode U+%04X, want U+%04X", cp, want_cp);
    else CHECK_MSG(cp == 0xDEADBEEF, "decode wrote *cp on invalid input");
}

int main(void)
{
    char o[4];
    /* encode: each length at both ends */
    CHECK_EQ_INT(loom_utf8_encode('A', o), 1);
    CHECK(o[0] == 'A');
    CHECK_EQ_INT(loom_utf8_encode(0x7F, o), 1);
    CHECK_EQ_INT(loom_utf8_encode(0x80, o), 2);
    CHECK(!memcmp(o, "\xC2\x80", 2));
    CHECK_EQ_INT(loom_utf8_encode(0xE9, o), 2);
    CHECK(!memcmp(o, "\xC3\xA9", 2));
    CHECK_EQ_INT(loom_utf8_encode(0x7FF, o), 2);
    CHECK(!memcmp(o, "\xDF\xBF", 2));
    CHECK_EQ_INT(loom_utf8_encode(0x800, o), 3);
    CHECK(!memcmp(o, "\xE0\xA0\x80", 3));
    CHECK_EQ_INT(loom_utf8_encode(0x20AC, o), 3);
    CHECK(!memcmp(o, "\xE2\x82\xAC", 3));
    CHECK_EQ_INT(loom_utf8_encode(0xFFFD, o), 3);
    CHECK(!memcmp(o, "\xEF\xBF\xBD", 3));
    CHECK_EQ_INT(loom_utf8_encode(0x10000, o), 4);
    CHECK(!memcmp(o, "\xF0\x90\x80\x80", 4));
    CHECK_EQ_INT(loom_utf8_encode(0x1F600, o), 4);
    CHECK(!memcmp(o, "\xF0\x9F\x98\x80", 4));
    CHECK_EQ_INT(loom_utf8_encode(0x10FFFF, o), 4);
    CHECK(!memcmp(o, "\xF4\x8F\xBF\xBF", 4));

    /* decode: valid */
    dec("A", 1, 1, 'A');
    dec("\0", 1, 1, 0);
    dec("\xC3\xA9xyz", 4, 2, 0xE9);
    dec("\xE2\x82\xAC", 3, 3, 0x20AC);
    dec("\xED\x9F\xBF", 3, 3, 0xD7FF);  /* just below the surrogates */
    dec("\xEE\x80\x80", 3, 3, 0xE000);  /* just above */
    dec("\xF0\x9F\x98\x80", 4, 4, 0x1F600);
    dec("\xF4\x8F\xBF\xBF", 4, 4, 0x10FFFF);
    /* decode: invalid */
    dec("", 0, -1, 0);                  /* nothing */
    dec("\x80", 1, -1, 0);              /* stray continuation byte */
    dec("\xBF", 1, -1, 0);
    dec("\xC3\x41", 2, -1, 0);          /* bad continuation byte */
    dec("\xE2\x82\x41", 3, -1, 0);
    dec("\xF0\x9F\x98\xC0", 4, -1, 0);
    dec("\xC3", 1, -1, 0);              /* truncated sequences */
    dec("\xE2\x82", 2, -1, 0);
    dec("\xF0\x9F\x98", 3, -1, 0);
    dec("\xC0\x80", 2, -1, 0);          /* overlongs: NUL, '/', U+07FF, U+FFFF */
    dec("\xC1\xBF", 2, -1, 0);
    dec("\xE0\x9F\xBF", 3, -1, 0);
    dec("\xF0\x8F\xBF\xBF", 4, -1, 0);
    dec("\xED\xA0\x80", 3, -1, 0);      /* surrogates U+D800, U+DFFF */
    dec("\xED\xBF\xBF", 3, -1, 0);
    dec("\xF4\x90\x80\x80", 4, -1, 0);  /* U+110000 */
    dec("\xF5\x80\x80\x80", 4, -1, 0);  /* lead bytes that never occur */
    dec("\xF8\x88\x80\x80", 4, -1, 0);
    dec("\xFF", 1, -1, 0);

    /* validate: offset of the first bad byte */
    CHECK_EQ_INT(loom_utf8_validate("", 0), 0);
    CHECK(loom_utf8_valid("", 0));
    CHECK(loom_utf8_valid(NULL, 0));
    const char *good = "plain ascii text, long enough for the 8-byte path \xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80!";
    CHECK_EQ_INT(loom_utf8_validate(good, strlen(good)), strlen(good));
    CHECK(loom_utf8_valid(good, strlen(good)));
    CHECK_EQ_INT(loom_utf8_validate("abcdefghij\x80", 11), 10);
    CHECK_EQ_INT(loom_utf8_validate("abcdefghij\xE2\x82", 12), 10); /* truncated at the end */
    CHECK_EQ_INT(loom_utf8_validate("ab\xC3\xA9\xED\xA0\x80z", 8), 4); /* surrogate after a valid char */
    CHECK_EQ_INT(loom_utf8_validate("ab\xC0\xAF", 4), 2);
    CHECK_EQ_INT(loom_utf8_validate("\xF4\x90\x80\x80", 4), 0);
    CHECK(!loom_utf8_valid("ok\xFF", 3));
    CHECK(!loom_utf8_valid("\xE2\x82\xAC\xE2\x82", 5));

    /* round trip over every code point: scalars encode and decode back; surrogates encode as given
     * but are refused by decode and validate */
    int bad = 0;
    for (uint32_t cp = 0; cp <= 0x10FFFF && bad < 5; cp++) {
        char b[4];
        int l = loom_utf8_encode(cp, b);
        int want = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        uint32_t back = 0;
        int dl = loom_utf8_decode(b, (size_t)l, &back);
        bool sur = cp >= 0xD800 && cp <= 0xDFFF;
        bool ok = l == want && (sur ? dl == -1 && !loom_utf8_valid(b, (size_t)l)
                                    : dl == l && back == cp && loom_utf8_valid(b, (size_t)l));
        /* one byte short is always truncated (for multi-byte characters) */
        if (ok && l > 1) ok = loom_utf8_decode(b, (size_t)l - 1, &back) == -1;
        if (!ok) {
            CHECK_MSG(0, "round trip of U+%04X: encode %d bytes, decode %d", cp, l, dl);
            bad++;
        }
    }
    CHECK(bad == 0);
    return test_report();
}
