/*
 * sampler: choose the next token of one sample (see sampler.h for the order
 * of operations and the key decisions).
 */
#include "worker/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/ids.h"

struct sampler {
    struct sampler_params p;
    int n_vocab;
    uint64_t rng[4];  /* xoshiro256** state */
    uint32_t *counts; /* (n_vocab) times each id was accepted */
    int *seen;        /* (n_vocab) the ids with counts > 0, n_seen of them */
    int n_seen;
    int *idx;    /* (n_vocab) candidate ids; the first n_cand are the candidates */
    float *prob; /* (n_vocab) by id: unnormalised probability, valid for candidates */
    int n_cand;
    int all;     /* the candidates are every id (idx not filled) */
    double mass; /* sum of prob over the candidates */
};

/* ---- RNG: splitmix64 for seeding, xoshiro256** for draws ---- */

#define SAMPLER_SM64_GAMMA 0x9e3779b97f4a7c15ULL

/* One step of a splitmix64 generator whose state is *st. */
static uint64_t splitmix64_next(uint64_t *st)
{
    uint64_t z = (*st += SAMPLER_SM64_GAMMA);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* splitmix64(x): the first output of a generator started at x (a bijection). */
static uint64_t splitmix64(uint64_t x)
{
    return splitmix64_next(&x);
}

static uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t result = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

/* A uniform double in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4])
{
    return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53;
}

/* key = splitmix64(splitmix64(seed) ^ stream); state = the next four outputs
 * of splitmix64 from key. The first word is a bijection of stream, so streams
 * of one seed never share a state. */
static void rng_seed(uint64_t s[4], uint64_t seed, uint64_t stream)
{
    uint64_t st = splitmix64(splitmix64(seed) ^ stream);
    for (int i = 0; i < 4; i++)
        s[i] = splitmix64_next(&st);
    if (!(s[0] | s[1] | s[2] | s[3])) // xoshiro's one bad state; unreachable in practice
        s[0] = 1;
}

/* ---- candidate ordering: by value descending, ties to the lower id ---- */

/* Whether id a comes before id b in the order of v (by id). NaN is never
 * before anything; comparisons stay bounded either way. */
static int before(const float *v, int a, int b)
{
    return v[a] > v[b] || (v[a] == v[b] && a < b);
}

/* Sift h[i] down a heap of n ids whose root is the LAST in the order. */
static void heap_sift(int *h, int n, int i, const float *v)
{
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && before(v, h[c], h[c + 1]))
            c++; // the later of the two children
        if (!before(v, h[i], h[c]))
            break;
        int t = h[i];
        h[i] = h[c];
        h[c] = t;
        i = c;
    }
}

/* Put the k first ids of v (0 < k < n) into h[0..k), sorted: one pass with a
 * heap of the k best so far, whose root (the worst of them) rejects almost
 * every id with one compare. Ids come in ascending order, so an id equal to
 * the root comes after it and is rejected too: ties go to the lower id. */
static void top_k_sorted(int *h, int k, const float *v, int n)
{
    for (int i = 0; i < k; i++)
        h[i] = i;
    for (int i = k / 2 - 1; i >= 0; i--)
        heap_sift(h, k, i, v);
    float worst = v[h[0]];
    for (int id = k; id < n; id++) {
        if (v[id] > worst) {
            h[0] = id;
            heap_sift(h, k, 0, v);
            worst = v[h[0]];
        }
    }
    for (int m = k - 1; m > 0; m--) { // heapsort: the worst goes last
        int t = h[0];
        h[0] = h[m];
        h[m] = t;
        heap_sift(h, m, 0, v);
    }
}

static void swap_int(int *a, int *b)
{
    int t = *a;
    *a = *b;
    *b = t;
}

/*
 * The nucleus of the n ids in a (unsorted) under probabilities v (by id):
 * reorders a so that a[0..m) are the m first ids in the order of v, where m
 * is the smallest count whose mass is >= target (> 0). Returns m >= 1.
 * Quickselect on mass: everything in a[0..lo) is in, a[hi..n) is out, and
 * need is the mass still missing. Expected O(n); ties cannot stall it since
 * the order is total (ties go to the lower id).
 */
static int nucleus_select(int *a, int n, const float *v, double target)
{
    int lo = 0, hi = n;
    double need = target;
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2, last = hi - 1;
        // median of three into a[last]
        if (before(v, a[mid], a[lo]))
            swap_int(&a[mid], &a[lo]);
        if (before(v, a[last], a[lo]))
            swap_int(&a[last], &a[lo]);
        if (before(v, a[mid], a[last]))
            swap_int(&a[mid], &a[last]);
        int pivot = a[last], j = lo;
        double upper = 0;
        for (int i = lo; i < last; i++) {
            if (before(v, a[i], pivot)) {
                upper += v[a[i]];
                swap_int(&a[i], &a[j++]);
            }
        }
        swap_int(&a[j], &a[last]);
        if (upper >= need) {
            hi = j; // the nucleus ends inside a[lo..j); j > lo since need > 0
        } else if (upper + v[pivot] >= need) {
            return j + 1;
        } else {
            need -= upper + v[pivot];
            lo = j + 1;
        }
    }
    if (lo < hi)
        return lo + 1;      // one id left in doubt and mass still missing: it is in
    return lo > 0 ? lo : 1; // rounding left the target unmet: all of a[0..n)
}

/* ---- the sampler ---- */

static int params_valid(const struct sampler_params *p)
{
    return isfinite(p->temperature) && p->temperature >= 0 && p->top_p > 0 && p->top_p <= 1 &&
           isfinite(p->presence_penalty) && isfinite(p->frequency_penalty);
}

int sampler_reset(struct sampler *s, const struct sampler_params *p, uint64_t stream)
{
    if (!params_valid(p))
        return SAMPLER_ERR_INVALID;
    s->p = *p;
    for (int i = 0; i < s->n_seen; i++)
        s->counts[s->seen[i]] = 0;
    s->n_seen = 0;
    s->n_cand = 0;
    s->mass = 0;
    // without a seed: 64 bits from getrandom as S, so every sampler differs
    rng_seed(s->rng, p->has_seed ? p->seed : ids_seed(), stream);
    return 0;
}

int sampler_create(struct sampler **out, const struct sampler_params *p, int n_vocab,
                   uint64_t stream)
{
    struct sampler *s = NULL;
    int rc = SAMPLER_ERR_INVALID;

    *out = NULL;
    if (n_vocab <= 0 || !params_valid(p))
        goto fail;
    rc = SAMPLER_ERR_NOMEM;
    s = calloc(1, sizeof *s);
    if (!s)
        goto fail;
    s->n_vocab = n_vocab;
    s->counts = calloc((size_t)n_vocab, sizeof *s->counts);
    s->seen = malloc((size_t)n_vocab * sizeof *s->seen);
    s->idx = malloc((size_t)n_vocab * sizeof *s->idx);
    s->prob = malloc((size_t)n_vocab * sizeof *s->prob);
    if (!s->counts || !s->seen || !s->idx || !s->prob)
        goto fail;
    rc = sampler_reset(s, p, stream);
    if (rc < 0)
        goto fail;
    *out = s;
    return 0;
fail:
    sampler_destroy(s);
    return rc;
}

void sampler_destroy(struct sampler *s)
{
    if (!s)
        return;
    free(s->counts);
    free(s->seen);
    free(s->idx);
    free(s->prob);
    free(s);
}

void sampler_accept(struct sampler *s, int id)
{
    if (id < 0 || id >= s->n_vocab)
        return;
    if (s->counts[id]++ == 0)
        s->seen[s->n_seen++] = id;
}

/* The largest of l[0..n), NaN ignored (-inf when there is none). Eight
 * independent maxima, because one running maximum is a chain of dependent
 * compare-and-moves: greedy at n 32000 took ~25 us that way, ~10 us so. */
static float max_all(const float *l, int n)
{
    float m[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
                  -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            m[j] = l[i + j] > m[j] ? l[i + j] : m[j];
    for (; i < n; i++)
        m[0] = l[i] > m[0] ? l[i] : m[0];
    for (int j = 1; j < 8; j++)
        m[0] = m[j] > m[0] ? m[j] : m[0];
    return m[0];
}

/* The argmax, ties to the lowest id; NaN never wins (no number: id 0). */
static int argmax(const float *l, int n)
{
    float max = max_all(l, n);
    for (int i = 0; i < n; i++)
        if (l[i] == max)
            return i;
    return 0;
}

/* prob[id] = exp((l[id] - max) / T) for the n candidate ids; returns their sum. */
static double softmax(float *prob, const int *ids, int n, const float *l, float t)
{
    float max = -INFINITY;
    for (int i = 0; i < n; i++)
        if (l[ids[i]] > max)
            max = l[ids[i]];
    double sum = 0;
    for (int i = 0; i < n; i++) {
        int id = ids[i];
        prob[id] = expf((l[id] - max) / t);
        sum += prob[id];
    }
    return sum;
}

/* The same over every id, without the index indirection. */
static double softmax_all(float *prob, const float *l, int n, float t)
{
    float max = max_all(l, n);
    double sum = 0;
    for (int i = 0; i < n; i++) {
        prob[i] = expf((l[i] - max) / t);
        sum += prob[i];
    }
    return sum;
}

/* Which power of two p in [0, 1] is under: 0 for [1, 2), b for
 * [2^-b, 2^-b+1), 63 for everything below 2^-62 (zero included). A lower
 * bucket holds only larger probabilities. NaN lands in 0. */
static int mass_bucket(float p)
{
    uint32_t bits;
    memcpy(&bits, &p, sizeof bits);
    int b = 127 - (int)((bits >> 23) & 0xff);
    return b < 0 ? 0 : b > 63 ? 63 : b;
}

/*
 * The nucleus over all n ids (prob by id, total mass >= target > 0) into
 * idx[0..m); returns m >= 1. A histogram of the mass by power of two finds
 * the bucket where the prefix sum crosses target: the buckets above it are
 * in whole, those below it out, and nucleus_select() only orders the one
 * bucket in doubt. Measured at n 32000 (model-like logits, top_p 0.9): the
 * whole path ~210 us, of which the softmax is ~130; with nucleus_select()
 * over all 32000 ids instead (a branch mispredicted per compare) it was
 * ~650 us, and a full qsort of the ids alone takes 4.3 ms.
 */
static int nucleus_all(int *idx, const float *prob, int n, double target)
{
    double bmass[64] = {0};
    for (int i = 0; i < n; i++)
        bmass[mass_bucket(prob[i])] += prob[i];
    int bstar = 63;
    double before_b = 0;
    for (int b = 0; b < 63; b++) {
        if (before_b + bmass[b] >= target) {
            bstar = b;
            break;
        }
        before_b += bmass[b];
    }
    int m0 = 0, nb = 0;
    for (int i = 0; i < n; i++) {
        int b = mass_bucket(prob[i]);
        if (b < bstar)
            idx[m0++] = i;
        else if (b == bstar)
            idx[n - 1 - nb++] = i; // from the end; never meets the front
    }
    if (nb == 0) // only when rounding or NaN left the target unmet
        return m0 > 0 ? m0 : 1;
    memmove(idx + m0, idx + n - nb, (size_t)nb * sizeof *idx);
    return m0 + nucleus_select(idx + m0, nb, prob, target - before_b);
}

static int is_greedy(const struct sampler_params *p)
{
    return p->temperature == 0 || p->top_k == 1;
}

double sampler_draw(struct sampler *s)
{
    return is_greedy(&s->p) ? 0 : rng_uniform(s->rng);
}

const struct sampler_params *sampler_params_of(const struct sampler *s)
{
    return &s->p;
}

int sampler_sample(struct sampler *s, float *logits)
{
    return sampler_sample_with(s, logits, sampler_draw(s));
}

int sampler_sample_with(struct sampler *s, float *logits, double draw)
{
    const struct sampler_params *p = &s->p;
    int n = s->n_vocab;

    if (p->presence_penalty != 0 || p->frequency_penalty != 0) {
        for (int i = 0; i < s->n_seen; i++) {
            int id = s->seen[i];
            logits[id] -= p->frequency_penalty * (float)s->counts[id] + p->presence_penalty;
        }
    }

    s->all = 0;
    if (is_greedy(p)) {
        int id = argmax(logits, n);
        s->idx[0] = id;
        s->prob[id] = 1;
        s->n_cand = 1;
        s->mass = 1;
        return id;
    }

    double mass;
    if (p->top_k > 0 && p->top_k < n) {
        // the k survivors come sorted: top-p is a prefix
        n = p->top_k;
        top_k_sorted(s->idx, n, logits, s->n_vocab);
        mass = softmax(s->prob, s->idx, n, logits, p->temperature);
        if (p->top_p < 1) {
            double target = (double)p->top_p * mass, cum = 0;
            for (int i = 0; i < n; i++) {
                cum += s->prob[s->idx[i]];
                if (cum >= target) {
                    n = i + 1;
                    mass = cum;
                    break;
                }
            }
        }
    } else if (p->top_p < 1) {
        mass = softmax_all(s->prob, logits, n, p->temperature);
        n = nucleus_all(s->idx, s->prob, n, (double)p->top_p * mass);
        mass = 0;
        for (int i = 0; i < n; i++)
            mass += s->prob[s->idx[i]];
    } else {
        mass = softmax_all(s->prob, logits, n, p->temperature);
        s->all = 1; // the candidates are 0 .. n-1; idx is not filled
    }
    s->n_cand = n;
    s->mass = mass;

    // renormalise by drawing u in [0, mass); zero-probability ids never win
    double u = draw * mass, cum = 0;
    int last = s->all ? 0 : s->idx[0];
    for (int i = 0; i < n; i++) {
        int id = s->all ? i : s->idx[i];
        float pr = s->prob[id];
        if (pr > 0) {
            cum += pr;
            last = id;
            if (u < cum)
                return id;
        }
    }
    return last; // u rounded past the end, or NaN logits
}

int sampler_candidates(const struct sampler *s, int *ids, float *probs, int cap)
{
    for (int i = 0; i < s->n_cand && i < cap; i++) {
        ids[i] = s->all ? i : s->idx[i];
        if (probs)
            probs[i] = (float)(s->prob[ids[i]] / s->mass);
    }
    return s->n_cand;
}
