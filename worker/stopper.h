/*
 * stopper: stop strings for one sample, across token boundaries.
 *
 * The sample's text arrives in pieces (whatever the incremental detokenizer
 * gives per step: whole UTF-8 characters, any number of them). The stopper
 * says what may be emitted now: everything except a suffix that could still
 * grow into a stop string. When a stop string is complete it emits the text
 * before it and reports that the sample stopped; the stop string and
 * anything after it are never emitted.
 *
 * Which stop wins: the one that ENDS first in the text, ties to the one that
 * starts first (the longer). That is the stop a token-by-token reader sees
 * first, so the result does not depend on how the text was cut into pieces:
 * for stops "bc" and "abcd", "abcd" stops after "a", fed whole or byte by
 * byte.
 *
 * Key decision: one Knuth-Morris-Pratt matcher per stop string, its state
 * (the longest prefix of the stop that is a suffix of the text so far) kept
 * between feeds. A byte costs amortised O(1) per stop, so a feed is
 * O(len * n_stops) whatever the stop lengths (a 256-byte stop included) and
 * earlier text is never scanned again; what is held back is exactly the
 * longest such state, i.e. only what could still become a stop string.
 * Stop strings must be valid UTF-8, so a held-back suffix starts with a
 * stop's first byte, a lead byte: the boundary between emitted and held text
 * is always a character boundary of (valid UTF-8) input.
 */
#pragma once

#include <stddef.h>

/* Return codes: 0, or one of these. */
#define STOPPER_ERR_INVALID (-1) /* a stop string is empty or not valid UTF-8 */
#define STOPPER_ERR_NOMEM   (-2)

/* One sample's stop state. Fields are private to stopper.c. */
struct stopper {
    int n;          /* stop strings */
    char **stops;   /* (n) copies */
    size_t *lens;   /* (n) bytes of each */
    size_t **fail;  /* (n) KMP failure function of each: fail[i][j] for j < lens[i] */
    size_t *state;  /* (n) matched prefix length of each */
    char *buf;      /* the text so far: emitted, then held back */
    size_t len;     /* bytes in buf */
    size_t cap;     /* bytes allocated for buf */
    size_t emitted; /* bytes of buf emitted (== len once flushed) */
    int stopped;    /* a stop string was found; nothing more is taken */
};

/*
 * Set st up for one sample with n stop strings (n >= 0; stops and lens
 * borrowed, the strings copied, need not be NUL-terminated). Returns 0,
 * STOPPER_ERR_INVALID (a stop string is empty or not valid UTF-8) or
 * STOPPER_ERR_NOMEM; st needs stopper_fini() after 0 only. Thread-safe; st
 * itself is used by one thread at a time.
 */
int stopper_init(struct stopper *st, const char *const *stops, const size_t *lens, int n);

/* Free what st owns. Safe on a zeroed struct and after a failed init. */
void stopper_fini(struct stopper *st);

/*
 * Take the next len bytes of the sample's text (borrowed; whole UTF-8
 * characters). *emit, *emit_len: the text that may be shown now (borrowed
 * from st, valid until the next call on st; may be empty). *stopped: 1 once a
 * stop string is complete (then *emit is what came before it, and later
 * feeds take nothing and emit nothing), else 0. Returns 0 or
 * STOPPER_ERR_NOMEM (nothing taken then). Allocates only to grow the text.
 */
int stopper_feed(struct stopper *st, const char *text, size_t len, const char **emit,
                 size_t *emit_len, int *stopped);

/*
 * The sample ended without a stop (length or eos): emit what was held back.
 * *emit, *emit_len as for stopper_feed (empty after a stop). A later feed
 * would start matching afresh: flushed text never becomes part of a stop.
 */
void stopper_flush(struct stopper *st, const char **emit, size_t *emit_len);

/* The text emitted so far, the concatenation of every emit (borrowed from st,
 * valid until the next call on st; not NUL-terminated). */
const char *stopper_text(const struct stopper *st, size_t *len);
