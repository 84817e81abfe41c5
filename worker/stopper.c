/*
 * stopper: stop strings across token boundaries (see stopper.h for the rule
 * of which stop wins and why each stop has its own KMP matcher).
 */
#include "worker/stopper.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/jsonscan.h"

/* fail[j]: the length of the longest proper prefix of s[0..j] that is also a
 * suffix of it (the classic prefix function). */
static void kmp_prefix(const char *s, size_t n, size_t *fail)
{
    size_t k = 0;
    fail[0] = 0;
    for (size_t j = 1; j < n; j++) {
        while (k > 0 && s[j] != s[k])
            k = fail[k - 1];
        if (s[j] == s[k])
            k++;
        fail[j] = k;
    }
}

int stopper_init(struct stopper *st, const char *const *stops, const size_t *lens, int n)
{
    int rc = STOPPER_ERR_INVALID;

    memset(st, 0, sizeof *st);
    if (n < 0)
        return rc;
    for (int i = 0; i < n; i++)
        if (lens[i] == 0 || !jsonscan_utf8_valid(stops[i], lens[i]))
            return rc;
    rc = STOPPER_ERR_NOMEM;
    if (n > 0) {
        st->stops = calloc((size_t)n, sizeof *st->stops);
        st->fail = calloc((size_t)n, sizeof *st->fail);
        st->lens = calloc((size_t)n, sizeof *st->lens);
        st->state = calloc((size_t)n, sizeof *st->state);
        if (!st->stops || !st->fail || !st->lens || !st->state)
            goto fail;
    }
    st->n = n;
    for (int i = 0; i < n; i++) {
        st->stops[i] = malloc(lens[i]);
        st->fail[i] = malloc(lens[i] * sizeof *st->fail[i]);
        if (!st->stops[i] || !st->fail[i])
            goto fail;
        memcpy(st->stops[i], stops[i], lens[i]);
        st->lens[i] = lens[i];
        kmp_prefix(st->stops[i], lens[i], st->fail[i]);
    }
    return 0;
fail:
    stopper_fini(st);
    return rc;
}

void stopper_fini(struct stopper *st)
{
    for (int i = 0; i < st->n; i++) {
        if (st->stops)
            free(st->stops[i]);
        if (st->fail)
            free(st->fail[i]);
    }
    free(st->stops);
    free(st->fail);
    free(st->lens);
    free(st->state);
    free(st->buf);
    memset(st, 0, sizeof *st);
}

/* Make room for extra more bytes in buf (doubling). */
static int grow(struct stopper *st, size_t extra)
{
    if (st->cap - st->len >= extra)
        return 0;
    size_t cap = st->cap ? st->cap : 256;
    while (cap - st->len < extra) {
        if (cap > SIZE_MAX / 2)
            return STOPPER_ERR_NOMEM;
        cap *= 2;
    }
    char *b = realloc(st->buf, cap);
    if (!b)
        return STOPPER_ERR_NOMEM;
    st->buf = b;
    st->cap = cap;
    return 0;
}

/* Advance every matcher over byte c. Returns the length of the longest stop
 * that ends at c, or 0. */
static size_t step(struct stopper *st, char c)
{
    size_t done = 0;
    for (int i = 0; i < st->n; i++) {
        const char *s = st->stops[i];
        size_t q = st->state[i];
        while (q > 0 && s[q] != c)
            q = st->fail[i][q - 1];
        if (s[q] == c)
            q++;
        if (q == st->lens[i]) {
            if (q > done)
                done = q;
            q = st->fail[i][q - 1]; // unused after a stop; keeps q < len
        }
        st->state[i] = q;
    }
    return done;
}

int stopper_feed(struct stopper *st, const char *text, size_t len, const char **emit,
                 size_t *emit_len, int *stopped)
{
    size_t from = st->emitted;

    *emit = st->buf ? st->buf + from : "";
    *emit_len = 0;
    *stopped = st->stopped;
    if (st->stopped || len == 0)
        return 0;
    if (grow(st, len) < 0)
        return STOPPER_ERR_NOMEM;
    memcpy(st->buf + st->len, text, len);
    *emit = st->buf + from;

    for (size_t i = 0; i < len; i++) {
        size_t done = step(st, text[i]);
        if (done) {
            // the stop starts inside the held part: everything before it was
            // held back or is new, never emitted
            size_t end = st->len + i + 1;
            st->len = end - done;
            st->emitted = st->len;
            st->stopped = 1;
            *emit_len = st->emitted - from;
            *stopped = 1;
            return 0;
        }
    }
    st->len += len;

    size_t hold = 0;
    for (int i = 0; i < st->n; i++)
        if (st->state[i] > hold)
            hold = st->state[i];
    st->emitted = st->len - hold;
    *emit_len = st->emitted - from;
    return 0;
}

void stopper_flush(struct stopper *st, const char **emit, size_t *emit_len)
{
    *emit = st->buf ? st->buf + st->emitted : "";
    *emit_len = st->len - st->emitted;
    st->emitted = st->len;
    for (int i = 0; i < st->n; i++)
        st->state[i] = 0;
}

const char *stopper_text(const struct stopper *st, size_t *len)
{
    *len = st->emitted;
    return st->buf ? st->buf : "";
}
