/*
 * sampler: choose the next token of one sample from its logits.
 *
 * One struct sampler per sample (per sequence). It owns the sample's RNG and
 * the counts of the tokens the sample has generated so far (for the
 * penalties), and scratch for the candidate set, all allocated once by
 * sampler_create(): the decode step loop never allocates.
 *
 * The order of operations, for logits l over a vocabulary of n_vocab ids:
 *   1. penalties (OpenAI semantics), over this sample's accepted tokens only:
 *        l[t] -= frequency_penalty * count[t] + presence_penalty * (count[t] > 0)
 *   2. temperature == 0 (or top_k == 1): greedy, the argmax, ties to the
 *      lowest id; no RNG draw. Stop here.
 *   3. divide by the temperature (done inside the softmax as (l - max) / T,
 *      which keeps the order and cannot overflow for tiny T);
 *   4. top-k (top_k > 0 and < n_vocab): keep the k highest, ties to the lower
 *      id;
 *   5. softmax over what is left;
 *   6. top-p (top_p < 1): keep the smallest prefix of the candidates sorted by
 *      probability (descending, ties to the lower id) whose sum is >= top_p,
 *      always at least one;
 *   7. renormalise and draw with the sample's RNG (one 53-bit uniform double).
 *
 * Key decisions:
 * - top-k is a bounded heap of k ids over one pass of the logits (O(n log k),
 *   almost every id is rejected by one compare with the heap's root), then
 *   heapsorted, so top-p over the k survivors is a prefix scan.
 * - top-p without top-k does not sort the vocabulary: one pass buckets the
 *   probability mass by power of two, which says which bucket the nucleus
 *   ends in; the buckets above it are in whole, and a quickselect on mass
 *   orders only that one bucket. The nucleus is drawn from unsorted.
 * - RNG: xoshiro256** (Blackman & Vigna). With a seed S, sample i (the
 *   `stream` argument) starts from key = splitmix64(splitmix64(S) ^ i), and
 *   the four state words are the next four outputs of a splitmix64 generator
 *   started at key. splitmix64 is a bijection, so for one S different i give
 *   different states: the num_samples of a seeded job are each reproducible
 *   and differ from each other. Without a seed, S is 64 fresh bits from
 *   getrandom(2) (ids_seed) for each sampler.
 *
 * Measured at n_vocab 32000 on model-like random logits (-O2, one core of a
 * busy 2-core build machine, best of 8 runs of
 * test_time_per_call_at_vocab_32000), microseconds per sampler_sample():
 * greedy 10; top_k 50 (the default) 14, with top_p 0.9 too 15, with
 * penalties over 256 seen tokens 15; no truncation at all 130 (expf over
 * 32000 logits is most of it); top_p 0.9 without top_k 210, top_p 0.5 180
 * (with a quickselect over all 32000 ids instead of the histogram: ~650; a
 * full qsort of the ids alone: 4300).
 */
#pragma once

#include <stdint.h>

/* Return codes: 0, or one of these. */
#define SAMPLER_ERR_INVALID (-1) /* a parameter is out of range */
#define SAMPLER_ERR_NOMEM   (-2)

/* The sampling fields of a request (DESIGN.md, the HTTP contract). */
struct sampler_params {
    float temperature;       /* >= 0, finite; 0: greedy */
    int top_k;               /* <= 0: disabled */
    float top_p;             /* in (0, 1]; 1: disabled */
    float presence_penalty;  /* finite */
    float frequency_penalty; /* finite */
    int has_seed;            /* seed is set */
    uint64_t seed;
};

struct sampler;

/*
 * Make a sampler for sample number `stream` of a job (0 .. num_samples-1;
 * with a seed it selects the RNG stream, without one it is unused).
 * p: borrowed (copied). n_vocab: > 0. out: receives a new sampler (free with
 * sampler_destroy), NULL on error. Returns 0, SAMPLER_ERR_INVALID (bad
 * parameters: temperature < 0 or not finite, top_p outside (0, 1], a penalty
 * not finite, n_vocab <= 0) or SAMPLER_ERR_NOMEM. Thread-safe; the sampler
 * itself is used by one thread at a time.
 */
int sampler_create(struct sampler **out, const struct sampler_params *p, int n_vocab,
                   uint64_t stream);

/*
 * Start a new sample with the same vocabulary: new parameters and stream,
 * counts cleared, RNG reseeded, as if just created. Allocates nothing (so a
 * worker can keep one sampler per batch slot). p: borrowed. Returns 0 or
 * SAMPLER_ERR_INVALID (the sampler is unchanged then).
 */
int sampler_reset(struct sampler *s, const struct sampler_params *p, uint64_t stream);

/*
 * Choose the next token from logits (n_vocab floats, borrowed, modified in
 * place: on return they hold the penalised logits; the temperature is not
 * applied to them). Returns the id, in [0, n_vocab). Does not count the id:
 * call sampler_accept() with the token the sample really takes. Never fails
 * and never allocates; NaN logits give some valid id, never a crash.
 */
int sampler_sample(struct sampler *s, float *logits);

/*
 * sampler_sample in two halves, for a backend that samples where the logits
 * are (kernels/backend.h `sample`): sampler_draw advances the RNG exactly
 * as sampler_sample would and returns the uniform in [0, 1) it would use (0,
 * without advancing, when greedy); sampler_sample_with chooses with that
 * draw. sampler_sample(s, l) is sampler_sample_with(s, l, sampler_draw(s)).
 */
double sampler_draw(struct sampler *s);
int sampler_sample_with(struct sampler *s, float *logits, double draw);

/* The parameters the sampler was made (or last reset) with. */
const struct sampler_params *sampler_params_of(const struct sampler *s);

/* Count id (in [0, n_vocab); others are ignored) as generated by this sample,
 * for the penalties of later steps. */
void sampler_accept(struct sampler *s, int id);

/*
 * For tests and debugging: the candidate set of the last sampler_sample()
 * call, after top-k and top-p, with each candidate's renormalised
 * probability. Writes up to cap ids (and probabilities, when probs is not
 * NULL) into the caller's arrays, in no particular order; returns how many
 * candidates there were (which may exceed cap). 0 before the first sample.
 */
int sampler_candidates(const struct sampler *s, int *ids, float *probs, int cap);

/* Free the sampler. NULL is a no-op. */
void sampler_destroy(struct sampler *s);
