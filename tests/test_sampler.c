/*
 * Tests for worker/sampler.c: greedy; seeding (reproducible, one stream per
 * sample, checked against an independent implementation of splitmix64 and
 * xoshiro256**); top-k and top-p against references computed here by full
 * sorts in double; the empirical distribution against the softmax;
 * penalties; temperature; bad parameters; and the time per call at a
 * 32000-token vocabulary (printed, not asserted).
 *
 * That sampler_sample() never allocates is by construction (all scratch is
 * allocated in sampler_create), not tested here: a malloc hook does not mix
 * with the ASan build.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>

#include <cmocka.h>

#include "worker/sampler.h"

/* ---- helpers ---- */

#define VOCAB 32000

static const struct sampler_params DEFAULTS = {
    .temperature = 1.0f, .top_k = 50, .top_p = 1.0f, .has_seed = 1, .seed = 7};

static struct sampler *make(const struct sampler_params *p, int n_vocab, uint64_t stream)
{
    struct sampler *s = NULL;
    assert_int_equal(sampler_create(&s, p, n_vocab, stream), 0);
    assert_non_null(s);
    return s;
}

static uint64_t rnd_state = 0x2545f4914f6cdd1dULL;

static double rnd_unit(void)
{
    rnd_state = rnd_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rnd_state >> 11) * 0x1.0p-53;
}

/* Logits shaped roughly like a model's: a sum of uniforms (about normal),
 * spread by `scale`. */
static void random_logits(float *l, int n, float scale)
{
    for (int i = 0; i < n; i++)
        l[i] = scale * (float)(rnd_unit() + rnd_unit() + rnd_unit() - 1.5);
}

/* Full-sort reference: ids by value descending, ties to the lower id. */
static const double *ref_v;

static int ref_cmp(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    if (ref_v[x] != ref_v[y])
        return ref_v[x] > ref_v[y] ? -1 : 1;
    return x < y ? -1 : 1;
}

/*
 * The reference candidate set for logits l (no penalties): top-k, softmax in
 * double at temperature t, top-p. Fills in[id] = renormalised probability
 * (0 outside) and returns the number of candidates.
 */
static int ref_candidates(const float *l, int n, float t, int k, float top_p, double *in)
{
    static double v[VOCAB], p[VOCAB];
    static int ids[VOCAB];
    for (int i = 0; i < n; i++) {
        v[i] = l[i];
        ids[i] = i;
        in[i] = 0;
    }
    ref_v = v;
    qsort(ids, (size_t)n, sizeof ids[0], ref_cmp);
    int m = (k > 0 && k < n) ? k : n;
    double max = v[ids[0]], sum = 0;
    for (int i = 0; i < m; i++)
        sum += p[i] = exp((v[ids[i]] - max) / t);
    if (top_p < 1) {
        double cum = 0;
        for (int i = 0; i < m; i++) {
            cum += p[i] / sum;
            if (cum >= (double)top_p) {
                m = i + 1;
                break;
            }
        }
    }
    double kept = 0;
    for (int i = 0; i < m; i++)
        kept += p[i];
    for (int i = 0; i < m; i++)
        in[ids[i]] = p[i] / kept;
    return m;
}

static int argmax_ref(const float *l, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[b])
            b = i;
    return b;
}

/* The sampler's last candidate set equals the reference set (ids and
 * probabilities). */
static void expect_candidates(const struct sampler *s, const double *ref, int n_ref)
{
    static int ids[VOCAB];
    static float probs[VOCAB];
    int n = sampler_candidates(s, ids, probs, VOCAB);
    assert_int_equal(n, n_ref);
    for (int i = 0; i < n; i++) {
        if (ref[ids[i]] == 0)
            fail_msg("id %d is a candidate but not in the reference set", ids[i]);
        assert_float_equal(probs[i], ref[ids[i]], 1e-5);
    }
}

/* ---- greedy ---- */

static void test_greedy_picks_the_argmax(void **state)
{
    (void)state;
    struct sampler_params p = DEFAULTS;
    p.temperature = 0;
    static float l[VOCAB];
    struct sampler *s = make(&p, VOCAB, 0);
    for (int r = 0; r < 20; r++) {
        random_logits(l, VOCAB, 4);
        assert_int_equal(sampler_sample(s, l), argmax_ref(l, VOCAB));
    }
    sampler_destroy(s);
}

static void test_greedy_ties_go_to_the_lowest_id(void **state)
{
    (void)state;
    struct sampler_params p = DEFAULTS;
    p.temperature = 0;
    float l[8] = {0, 3, 1, 3, 3, 2, 0, 1};
    struct sampler *s = make(&p, 8, 0);
    assert_int_equal(sampler_sample(s, l), 1);
    sampler_destroy(s);
}

static void test_temperature_zero_ignores_the_seed(void **state)
{
    (void)state;
    struct sampler_params a = DEFAULTS, b = DEFAULTS, c = DEFAULTS;
    a.temperature = b.temperature = c.temperature = 0;
    a.seed = 1;
    b.seed = 999;
    c.has_seed = 0;
    struct sampler *sa = make(&a, 1000, 0), *sb = make(&b, 1000, 3), *sc = make(&c, 1000, 0);
    float l[1000];
    for (int r = 0; r < 50; r++) {
        random_logits(l, 1000, 0.5f);
        int want = argmax_ref(l, 1000);
        assert_int_equal(sampler_sample(sa, l), want);
        assert_int_equal(sampler_sample(sb, l), want);
        assert_int_equal(sampler_sample(sc, l), want);
    }
    sampler_destroy(sa);
    sampler_destroy(sb);
    sampler_destroy(sc);
}

static void test_top_k_one_equals_greedy(void **state)
{
    (void)state;
    struct sampler_params p = DEFAULTS;
    p.temperature = 1.5f;
    p.top_k = 1;
    static float l[VOCAB];
    struct sampler *s = make(&p, VOCAB, 0);
    for (int r = 0; r < 50; r++) {
        random_logits(l, VOCAB, 0.2f); // flat: sampling would rarely hit the argmax
        assert_int_equal(sampler_sample(s, l), argmax_ref(l, VOCAB));
    }
    sampler_destroy(s);
}

/* ---- seeding ---- */

/* 200 draws from fresh samplers (seed, stream) on a fixed flat distribution. */
static void draws(uint64_t seed, int has_seed, uint64_t stream, int *out)
{
    struct sampler_params p = DEFAULTS;
    p.seed = seed;
    p.has_seed = has_seed;
    p.top_k = 0;
    float l[64];
    for (int i = 0; i < 64; i++)
        l[i] = (float)(i % 7) * 0.1f;
    struct sampler *s = make(&p, 64, stream);
    for (int i = 0; i < 200; i++)
        out[i] = sampler_sample(s, l);
    sampler_destroy(s);
}

static void test_same_seed_and_stream_repeat_200_draws(void **state)
{
    (void)state;
    int a[200], b[200];
    draws(12345, 1, 2, a);
    draws(12345, 1, 2, b);
    assert_memory_equal(a, b, sizeof a);
}

static void test_streams_of_one_seed_differ(void **state)
{
    (void)state;
    int a[200], b[200], c[200];
    draws(12345, 1, 0, a);
    draws(12345, 1, 1, b);
    draws(12346, 1, 0, c);
    assert_memory_not_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
}

static void test_unseeded_samplers_differ(void **state)
{
    (void)state;
    int a[200], b[200];
    draws(0, 0, 0, a);
    draws(0, 0, 0, b);
    assert_memory_not_equal(a, b, sizeof a);
}

/*
 * Two equal logits: the id drawn is the top bit of each xoshiro256** output
 * (u * 2 < 1). The expected bits come from a separate Python implementation
 * of the documented seeding, key = splitmix64(splitmix64(S) ^ i), so that the
 * streams stay what sampler.h says across releases.
 */
static void test_seeded_stream_matches_the_reference_generator(void **state)
{
    (void)state;
    const uint64_t want[2] = {0xa96005dfb546b113ULL, 0xa97a972470bafd99ULL}; // S=42, i=0 and 1
    struct sampler_params p = DEFAULTS;
    p.seed = 42;
    p.top_k = 0;
    for (int stream = 0; stream < 2; stream++) {
        struct sampler *s = make(&p, 2, (uint64_t)stream);
        float l[2] = {0.25f, 0.25f};
        uint64_t bits = 0;
        for (int i = 0; i < 64; i++)
            bits |= (uint64_t)sampler_sample(s, l) << i;
        assert_int_equal(bits, want[stream]);
        sampler_destroy(s);
    }
}

static void test_reset_reseeds_and_clears_counts(void **state)
{
    (void)state;
    struct sampler_params p = DEFAULTS;
    p.top_k = 0;
    p.presence_penalty = 1;
    float base[64], l[64];
    for (int i = 0; i < 64; i++)
        base[i] = (float)(i % 5) * 0.3f;
    struct sampler *s = make(&p, 64, 4);
    int first[50], again[50];
    for (int i = 0; i < 50; i++) {
        memcpy(l, base, sizeof l);
        first[i] = sampler_sample(s, l);
        sampler_accept(s, first[i]);
    }
    assert_int_equal(sampler_reset(s, &p, 4), 0);
    for (int i = 0; i < 50; i++) {
        memcpy(l, base, sizeof l);
        again[i] = sampler_sample(s, l);
        sampler_accept(s, again[i]);
    }
    assert_memory_equal(first, again, sizeof first);
    sampler_destroy(s);
}

/* ---- top-k and top-p ---- */

static void test_top_k_never_picks_outside_the_k_highest(void **state)
{
    (void)state;
    struct sampler_params p = DEFAULTS;
    p.top_k = 5;
    p.temperature = 2; // spread the draws over all five
    float l[1000];
    static double ref[VOCAB];
    random_logits(l, 1000, 3);
    int n_ref = ref_candidates(l, 1000, p.temperature, 5, 1, ref);
    struct sampler *s = make(&p, 1000, 0);
    int hits[1000] = {0};
    for (int i = 0; i < 10000; i++) {
        int id = sampler_sample(s, l);
        if (ref[id] == 0)
            fail_msg("draw %d picked id %d, outside the top 5", i, id);
        hits[id]++;
    }
    expect_candidates(s, ref, n_ref);
    int distinct = 0;
    for (int i = 0; i < 1000; i++)
        distinct += hits[i] > 0;
    assert_int_equal(distinct, 5);
    sampler_destroy(s);
}

static void test_top_k_ties_keep_the_lower_ids(void **state)
{
    (void)state;
    struct sampler_params p = DEFAULTS;
    p.top_k = 3;
    float l[10] = {1, 5, 2, 5, 2, 2, 2, 0, 2, 2}; // 5, 5, then a tie of 2s: id 2 wins
    struct sampler *s = make(&p, 10, 0);
    sampler_sample(s, l);
    int ids[10];
    assert_int_equal(sampler_candidates(s, ids, NULL, 10), 3);
    int seen = 0;
    for (int i = 0; i < 3; i++)
        seen |= 1 << ids[i];
    assert_int_equal(seen, (1 << 1) | (1 << 3) | (1 << 2));
    sampler_destroy(s);
}

/* top-p with top-k disabled: the quickselect on mass over all 32000 ids. */
static void test_top_p_never_picks_outside_the_nucleus(void **state)
{
    (void)state;
    struct sampler_params p = DEFAULTS;
    p.top_k = 0;
    p.top_p = 0.6f;
    static float l[VOCAB];
    static double ref[VOCAB];
    random_logits(l, VOCAB, 8);
    int n_ref = ref_candidates(l, VOCAB, 1, 0, p.top_p, ref);
    assert_true(n_ref > 3 && n_ref < 1000); // a nucleus worth the name
    struct sampler *s = make(&p, VOCAB, 0);
    int distinct = 0;
    static int hits[VOCAB];
    for (int i = 0; i < 10000; i++) {
        int id = sampler_sample(s, l);
        if (ref[id] == 0)
            fail_msg("draw %d picked id %d, outside the nucleus of %d", i, id, n_ref);
        distinct += hits[id]++ == 0;
    }
    expect_candidates(s, ref, n_ref);
    assert_true(distinct > 1);
    sampler_destroy(s);
}

static void test_top_p_after_top_k_is_the_nucleus_of_the_k(void **state)
{
    (void)state;
    struct sampler_params p = DEFAULTS;
    p.top_k = 40;
    p.top_p = 0.5f;
    p.temperature = 0.7f;
    static float l[VOCAB];
    static double ref[VOCAB];
    struct sampler *s = make(&p, VOCAB, 0);
    for (int r = 0; r < 20; r++) {
        random_logits(l, VOCAB, 6);
        int n_ref = ref_candidates(l, VOCAB, p.temperature, 40, p.top_p, ref);
        int id = sampler_sample(s, l);
        assert_true(ref[id] > 0);
        expect_candidates(s, ref, n_ref);
    }
    sampler_destroy(s);
}

/* Nearly flat logits and a tiny top_p: the nucleus is the single most likely
 * token, never empty. */
static void test_tiny_top_p_keeps_only_the_most_likely_token(void **state)
{
    (void)state;
    struct sampler_params p = DEFAULTS;
    p.top_k = 0;
    p.top_p = 1e-9f;
    static float l[VOCAB];
    random_logits(l, VOCAB, 0.01f);
    struct sampler *s = make(&p, VOCAB, 0);
    int ids[2];
    for (int r = 0; r < 20; r++) {
        assert_int_equal(sampler_sample(s, l), argmax_ref(l, VOCAB));
        assert_int_equal(sampler_candidates(s, ids, NULL, 2), 1);
    }
    sampler_destroy(s);
}

/* ---- the distribution ---- */

static void test_frequencies_match_the_softmax_within_one_percent(void **state)
{
    (void)state;
    struct sampler_params p = DEFAULTS;
    p.top_k = 0;
    float l[4] = {1.0f, 2.0f, 0.5f, -1.0f};
    double want[4], sum = 0;
    for (int i = 0; i < 4; i++)
        sum += want[i] = exp(l[i]);
    struct sampler *s = make(&p, 4, 0);
    int hits[4] = {0};
    const int n = 100000;
    for (int i = 0; i < n; i++)
        hits[sampler_sample(s, l)]++;
    for (int i = 0; i < 4; i++) {
        double got = (double)hits[i] / n, exp_p = want[i] / sum;
        if (fabs(got - exp_p) > 0.01)
            fail_msg("id %d drawn %.4f of the time, softmax says %.4f", i, got, exp_p);
    }
    sampler_destroy(s);
}

static double entropy_at(float t, const float *l, int n)
{
    struct sampler_params p = DEFAULTS;
    p.top_k = 0;
    p.temperature = t;
    struct sampler *s = make(&p, n, 0);
    float copy[100], probs[100];
    int ids[100];
    memcpy(copy, l, (size_t)n * sizeof *l);
    sampler_sample(s, copy);
    int m = sampler_candidates(s, ids, probs, 100);
    assert_int_equal(m, n);
    double h = 0;
    for (int i = 0; i < m; i++)
        if (probs[i] > 0)
            h -= probs[i] * log(probs[i]);
    sampler_destroy(s);
    return h;
}

static void test_higher_temperature_flattens_the_distribution(void **state)
{
    (void)state;
    float l[100];
    random_logits(l, 100, 3);
    double h1 = entropy_at(0.3f, l, 100), h2 = entropy_at(1, l, 100), h3 = entropy_at(3, l, 100);
    assert_true(h1 < h2);
    assert_true(h2 < h3);
    assert_true(h3 < log(100.0) + 1e-9);
}

/* ---- penalties ---- */

static void test_penalties_change_exactly_the_generated_tokens_logits(void **state)
{
    (void)state;
    struct sampler_params p = DEFAULTS;
    p.temperature = 0;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    struct sampler *s = make(&p, 10, 0);
    sampler_accept(s, 3);
    sampler_accept(s, 5);
    sampler_accept(s, 3);
    sampler_accept(s, 3);
    float l[10];
    for (int i = 0; i < 10; i++)
        l[i] = (float)i;
    sampler_sample(s, l);
    for (int i = 0; i < 10; i++) {
        float want = (float)i;
        if (i == 3)
            want -= 0.25f * 3 + 0.5f; // presence once, frequency x 3
        if (i == 5)
            want -= 0.25f * 1 + 0.5f;
        assert_float_equal(l[i], want, 1e-6);
    }
    sampler_destroy(s);
}

static void test_penalties_count_only_accepted_tokens(void **state)
{
    (void)state;
    struct sampler_params p = DEFAULTS;
    p.temperature = 0;
    p.presence_penalty = 1;
    p.frequency_penalty = 1;
    struct sampler *s = make(&p, 4, 0);
    float l[4];
    for (int r = 0; r < 3; r++) { // sampled but never accepted: no penalty
        float base[4] = {0, 0, 3, 0};
        memcpy(l, base, sizeof l);
        assert_int_equal(sampler_sample(s, l), 2);
        assert_memory_equal(l, base, sizeof l);
    }
    sampler_accept(s, 2);
    sampler_accept(s, 7);  // out of range: ignored
    sampler_accept(s, -1); // likewise
    float base[4] = {0, 0, 3, 0};
    memcpy(l, base, sizeof l);
    assert_int_equal(sampler_sample(s, l), 2); // 3 - 2 = 1 still wins
    assert_float_equal(l[2], 1, 1e-6);
    assert_float_equal(l[0] + l[1] + l[3], 0, 0);
    sampler_accept(s, 2);
    memcpy(l, base, sizeof l);
    assert_int_equal(sampler_sample(s, l), 0); // 3 - 3 = 0 ties, lowest id wins
    sampler_destroy(s);
}

/* ---- robustness ---- */

static void test_invalid_parameters_are_refused(void **state)
{
    (void)state;
    struct sampler *s = (struct sampler *)1;
    struct sampler_params p = DEFAULTS;
    p.temperature = -0.1f;
    assert_int_equal(sampler_create(&s, &p, 10, 0), SAMPLER_ERR_INVALID);
    assert_null(s);
    p = DEFAULTS;
    p.temperature = INFINITY;
    assert_int_equal(sampler_create(&s, &p, 10, 0), SAMPLER_ERR_INVALID);
    p = DEFAULTS;
    p.top_p = 0;
    assert_int_equal(sampler_create(&s, &p, 10, 0), SAMPLER_ERR_INVALID);
    p.top_p = 1.01f;
    assert_int_equal(sampler_create(&s, &p, 10, 0), SAMPLER_ERR_INVALID);
    p.top_p = NAN;
    assert_int_equal(sampler_create(&s, &p, 10, 0), SAMPLER_ERR_INVALID);
    p = DEFAULTS;
    p.frequency_penalty = NAN;
    assert_int_equal(sampler_create(&s, &p, 10, 0), SAMPLER_ERR_INVALID);
    p = DEFAULTS;
    assert_int_equal(sampler_create(&s, &p, 0, 0), SAMPLER_ERR_INVALID);
    s = make(&p, 10, 0);
    p.top_p = 2;
    assert_int_equal(sampler_reset(s, &p, 0), SAMPLER_ERR_INVALID);
    sampler_destroy(s);
    sampler_destroy(NULL);
}

static void test_nan_logits_give_a_valid_id(void **state)
{
    (void)state;
    const int top_ks[] = {0, 5, 0};
    const float top_ps[] = {1, 1, 0.5f}, temps[] = {1, 1, 0};
    for (int c = 0; c < 3; c++) {
        struct sampler_params p = DEFAULTS;
        p.top_k = top_ks[c];
        p.top_p = top_ps[c];
        p.temperature = temps[c];
        struct sampler *s = make(&p, 100, 0);
        float l[100];
        for (int r = 0; r < 20; r++) {
            random_logits(l, 100, 1);
            for (int i = 0; i < 100; i += 1 + r % 3)
                l[i] = NAN;
            int id = sampler_sample(s, l);
            assert_in_range(id, 0, 99);
        }
        sampler_destroy(s);
    }
}

/* ---- time per call ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const float *sort_v;

static int sort_cmp(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    if (sort_v[x] != sort_v[y])
        return sort_v[x] > sort_v[y] ? -1 : 1;
    return x < y ? -1 : 1;
}

/* Microseconds per sampler_sample() at vocab 32000 on model-like logits, for
 * the configurations that take different paths; and, for comparison, what
 * the full sort that nucleus_select() avoids would cost by itself. */
static void test_time_per_call_at_vocab_32000(void **state)
{
    (void)state;
    static float l[VOCAB];
    random_logits(l, VOCAB, 4);
    struct {
        const char *name;
        float t;
        int k;
        float top_p;
        float pen;
    } cfg[] = {
        {"greedy (temperature 0)", 0, 50, 1, 0},
        {"top_k 50 (the default)", 1, 50, 1, 0},
        {"top_k 50, top_p 0.9", 1, 50, 0.9f, 0},
        {"top_k 50 + penalties, 256 seen", 1, 50, 1, 0.5f},
        {"no truncation", 1, 0, 1, 0},
        {"top_p 0.9, no top_k (histogram)", 1, 0, 0.9f, 0},
        {"top_p 0.5, no top_k (histogram)", 1, 0, 0.5f, 0},
    };
    const int reps = 300;
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        struct sampler_params p = DEFAULTS;
        p.temperature = cfg[c].t;
        p.top_k = cfg[c].k;
        p.top_p = cfg[c].top_p;
        p.presence_penalty = p.frequency_penalty = cfg[c].pen;
        struct sampler *s = make(&p, VOCAB, 0);
        if (cfg[c].pen != 0)
            for (int i = 0; i < 256; i++)
                sampler_accept(s, i * 97);
        double t0 = now_s();
        for (int r = 0; r < reps; r++)
            assert_in_range(sampler_sample(s, l), 0, VOCAB - 1); // penalties drift l: fine
        printf("   sampler %-36s %7.1f us a call\n", cfg[c].name, (now_s() - t0) / reps * 1e6);
        sampler_destroy(s);
    }
    static int ids[VOCAB];
    double t0 = now_s();
    for (int r = 0; r < 30; r++) {
        for (int i = 0; i < VOCAB; i++)
            ids[i] = i;
        sort_v = l;
        qsort(ids, VOCAB, sizeof ids[0], sort_cmp);
    }
    printf("   (for comparison: qsort of 32000 ids alone %7.1f us)\n", (now_s() - t0) / 30 * 1e6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_picks_the_argmax),
        cmocka_unit_test(test_greedy_ties_go_to_the_lowest_id),
        cmocka_unit_test(test_temperature_zero_ignores_the_seed),
        cmocka_unit_test(test_top_k_one_equals_greedy),
        cmocka_unit_test(test_same_seed_and_stream_repeat_200_draws),
        cmocka_unit_test(test_streams_of_one_seed_differ),
        cmocka_unit_test(test_unseeded_samplers_differ),
        cmocka_unit_test(test_seeded_stream_matches_the_reference_generator),
        cmocka_unit_test(test_reset_reseeds_and_clears_counts),
        cmocka_unit_test(test_top_k_never_picks_outside_the_k_highest),
        cmocka_unit_test(test_top_k_ties_keep_the_lower_ids),
        cmocka_unit_test(test_top_p_never_picks_outside_the_nucleus),
        cmocka_unit_test(test_top_p_after_top_k_is_the_nucleus_of_the_k),
        cmocka_unit_test(test_tiny_top_p_keeps_only_the_most_likely_token),
        cmocka_unit_test(test_frequencies_match_the_softmax_within_one_percent),
        cmocka_unit_test(test_higher_temperature_flattens_the_distribution),
        cmocka_unit_test(test_penalties_change_exactly_the_generated_tokens_logits),
        cmocka_unit_test(test_penalties_count_only_accepted_tokens),
        cmocka_unit_test(test_invalid_parameters_are_refused),
        cmocka_unit_test(test_nan_logits_give_a_valid_id),
        cmocka_unit_test(test_time_per_call_at_vocab_32000),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
