/*
 * jsonscan: reading raw JSON text without a JSON parser, and the UTF-8
 * helpers that go with it.
 *
 * jansson refuses some bodies before any value exists (an integer too big for
 * json_int_t, a byte that is not UTF-8, "\u0000" in a string, a duplicate key,
 * nesting deeper than its limit) and reports only a byte offset.
 * jsonscan_locate() walks the raw text to find which top-level member holds
 * that offset, so that the job protocol can name the field at fault. The
 * UTF-8 helpers keep the fixed-size strings of errors and logs valid UTF-8
 * when they are cut or quote bad input.
 *
 * Key decision: the scanner is tolerant (it is meant for text jansson
 * rejected), iterative (no recursion on nesting) and never reads outside
 * [0, len); it knows nothing of jansson. Nothing here allocates, and every
 * function is thread-safe (no state).
 */
#pragma once

#include <stddef.h>

/*
 * Which top-level member of the JSON object in body[0..len) contains byte
 * `offset`: a member spans from its key's opening quote to one past the last
 * byte of its value. body: borrowed; NULL reads as empty. On success writes
 * the decoded key (escapes resolved, cut at a character boundary to fit
 * `cap`) to key_out, sets *in_key (when in_key is not NULL) to 1 when offset
 * lies in the key itself (from its opening quote to one past its closing
 * quote) and to 0 when it lies further on, and returns 0. Returns -1 when
 * offset lies in no member, the body is not an object, or the key is not
 * valid UTF-8, holds a NUL or a bad escape; key_out is then "" (if cap > 0)
 * and *in_key is left as it was.
 */
int jsonscan_locate(const char *body, size_t len, size_t offset, char *key_out, size_t cap,
                    int *in_key);

/* 1 when s[0..n) is valid UTF-8 (NUL bytes count as valid; no overlongs,
 * surrogates or values above U+10FFFF), else 0. s: borrowed, may be NULL
 * when n is 0. */
int jsonscan_utf8_valid(const char *s, size_t n);

/* s (NUL-terminated, modified in place) was valid UTF-8 before it was cut at
 * its end: drop a sequence left incomplete there. */
void jsonscan_utf8_trim(char *s);

/* Replace each byte of s (NUL-terminated, modified in place) that does not
 * start a valid UTF-8 sequence with '?'. Afterwards s is valid UTF-8. */
void jsonscan_utf8_sanitize(char *s);

/* Copy src[0..n) (borrowed; valid UTF-8, no NUL) into dst[cap] as a
 * NUL-terminated string, cut at a character boundary when it does not fit.
 * cap 0 writes nothing. */
void jsonscan_copy_cut(char *dst, size_t cap, const char *src, size_t n);
