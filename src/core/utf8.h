/* utf8.h: strict UTF-8 (RFC 3629) encode, decode and validate; no Unicode properties (utf8proc has them). */
#ifndef LOOM_CORE_UTF8_H
#define LOOM_CORE_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Writes cp (< 0x110000, not checked; surrogates are encoded as given) to out (room for 4 bytes, or
 * for as many as cp needs), returns the length 1..4. */
int loom_utf8_encode(uint32_t cp, char *out);
/* Decodes the character at s (n bytes available) into *cp and returns its length 1..4, or -1 (*cp
 * untouched) if the bytes there are not one whole valid character: a stray continuation byte, a lead
 * byte 0xC0/0xC1/0xF5..0xFF, a bad continuation byte, a truncated sequence (or n == 0), an overlong
 * form, a surrogate, or a code point above U+10FFFF. */
int loom_utf8_decode(const char *s, size_t n, uint32_t *cp);
/* Offset of the first byte of s that does not start a valid character (as loom_utf8_decode), or n. */
size_t loom_utf8_validate(const char *s, size_t n);
/* Whether s[0..n) is valid UTF-8 as a whole. */
bool loom_utf8_valid(const char *s, size_t n);

#endif
