/*
 * Tests for kernels/cpu: every kernel against a plain reference, on every
 * dispatch path (scalar, AVX2 and AVX512VNNI; a path the CPU lacks says
 * "skipped"). AVX512VNNI has its own kernel only for Q8_0 matmuls, which
 * must equal the AVX2 path's bit for bit (everything else runs the AVX2
 * code there).
 *
 * Tolerances, with u = 2^-24 (f32 unit roundoff):
 * - conversions (fp16, bf16, Q8_0 quantization, RoPE, add): exact, bit for
 *   bit, against independent reimplementations.
 * - matmul: against a double-precision sum of the same rounded inputs (x
 *   rounded to fp16/bf16, or quantized to Q8_0 by a reimplementation of
 *   ggml's quantize_row_q8_0_ref). Any f32 summation order of n terms errs by
 *   at most gamma(n) * sum|terms|, gamma(n) = n u / (1 - n u) (Higham, Thm
 *   3.1; an FMA only removes roundings). We assert that bound with n = n_in
 *   (Q8_0: n = blocks + 8, the int32 block sums being exact), and print
 *   the largest error seen in units of u * sum|terms|.
 * - exp (AVX2 polynomial): <= 2 ulp of the correctly rounded exp for normal
 *   results; softmax and SwiGLU then within 4 ulp of the expf reference.
 * - attention: against a double-precision naive attention over the same
 *   fp16 K/V; f32 scores of head_dim terms and f32 weighted sums over the
 *   span give errors ~ (head_dim + span) u |v|, asserted at 4e-6 max|v| for
 *   these sizes (observed ~5e-7).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dtype.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/pool.h"

#define U (1.0 / 16777216.0) /* 2^-24 */

/* ---- helpers ---- */

static uint64_t rng_state;

static void rng_seed(uint64_t s)
{
    rng_state = s * 0x9e3779b97f4a7c15ull + 1;
}

static uint64_t rng_next(void) /* splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_uniform(float lo, float hi) /* [lo, hi) */
{
    return lo + (hi - lo) * (float)((rng_next() >> 40) * (1.0 / 16777216.0));
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

static const enum kc_isa all_isas[] = {KC_ISA_SCALAR, KC_ISA_AVX2, KC_ISA_AVX512VNNI};
#define N_ISAS 3

/* Select isa; returns 0 (and says so once per test) when the CPU lacks it. */
static int use_isa(enum kc_isa isa)
{
    if (kc_cpu_set_isa(isa) == 0)
        return 1;
    print_message("    skipped on %s: not supported by this CPU\n", kc_cpu_isa_name(isa));
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    return 0;
}

/* the best path this CPU has */
static enum kc_isa best_isa(void)
{
    for (int k = N_ISAS - 1; k > 0; k--)
        if (kc_cpu_supports(all_isas[k]))
            return all_isas[k];
    return KC_ISA_SCALAR;
}

static int group_teardown(void **state)
{
    (void)state;
    kc_cpu_set_isa(best_isa());
    return 0;
}

/* ---- fp16 ---- */

/* the value of a half, computed independently with ldexp */
static double half_value(uint16_t h)
{
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

static void test_fp16_to_fp32_is_exact_for_all_halves(void **state)
{
    (void)state;
    uint16_t *h = xmalloc(65536 * sizeof *h);
    float *row = xmalloc(65536 * sizeof *row);
    for (int i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    for (int k = 0; k < N_ISAS; k++) {
        if (!use_isa(all_isas[k]))
            continue;
        kc_fp16_to_fp32_row(row, h, 65536);
        for (int i = 0; i < 65536; i++) {
            float f = kc_fp16_to_fp32((uint16_t)i);
            assert_int_equal(f32_bits(f), f32_bits(row[i])); /* row == scalar, NaNs too */
            int e = (i >> 10) & 0x1f, m = i & 0x3ff;
            if (e == 31 && m) { /* NaN: sign kept, quiet, payload on top */
                uint32_t want = ((uint32_t)(i & 0x8000) << 16) | 0x7fc00000 | ((uint32_t)m << 13);
                assert_int_equal(f32_bits(f), want);
                assert_int_equal(kc_fp32_to_fp16(f), i | 0x200); /* quieted */
            } else if (e == 31) {
                assert_true(isinf(f) && (f < 0) == ((i & 0x8000) != 0));
                assert_int_equal(kc_fp32_to_fp16(f), i);
            } else {
                assert_true((double)f == half_value((uint16_t)i));
                assert_int_equal(signbit(f) != 0, (i & 0x8000) != 0);
                assert_int_equal(kc_fp32_to_fp16(f), i); /* round trip */
            }
        }
    }
    free(h);
    free(row);
}

/* Check that h is f rounded to nearest half, ties to even, overflow to inf. */
static void check_nearest_half(float f, uint16_t h)
{
    double x = fabs((double)f);
    if (isnan(f)) {
        assert_int_equal(h & 0x7c00, 0x7c00);
        assert_true(h & 0x3ff);
        return;
    }
    assert_int_equal((h & 0x8000) != 0, signbit(f) != 0);
    uint16_t a = h & 0x7fff;
    if (x >= 65520.0) { /* 65504 + half an ulp (16), a tie, rounds to even: inf */
        assert_int_equal(a, 0x7c00);
        return;
    }
    assert_true(a < 0x7c00);
    double v = half_value(a);
    double up = a < 0x7bff ? half_value((uint16_t)(a + 1)) : 65536.0;
    double down = a > 0 ? half_value((uint16_t)(a - 1)) : -half_value(1);
    double err = fabs(x - v);
    if (err > fabs(up - x) || err > fabs(x - down))
        fail_msg("f32 %a -> half %04x is not the nearest", f, h);
    if ((err == fabs(up - x) || err == fabs(x - down)) && (a & 1))
        fail_msg("f32 %a -> half %04x: tie not rounded to even", f, h);
}

static void test_fp32_to_fp16_rounds_to_nearest_even(void **state)
{
    (void)state;
    /* edge cases: halfway between normals, subnormals, the smallest
     * subnormal's half, overflow, inf, NaN payloads */
    static const uint32_t edge[] = {
        0x3f801000, /* 1 + 2^-11: tie -> 1 (even) */
        0x3f803000, /* 1 + 3*2^-11: tie -> 1 + 2^-9 (even) */
        0x3f801001, /* just above the tie -> up */
        0x33000000, /* 2^-25: half the smallest subnormal, tie -> 0 */
        0x33000001, /* just above -> smallest subnormal */
        0x33c00000, /* 1.5 * 2^-24: tie -> 2 * 2^-24 (even) */
        0x34200000, /* 2.5 * 2^-24: tie -> 2 * 2^-24 */
        0x387fe000, /* 1023.5 * 2^-24: tie -> 2^-14, the smallest normal */
        0x38800000, /* 2^-14 */
        0x477fe000, /* 65504, the largest half */
        0x477fefff, /* below the overflow tie -> 65504 */
        0x477ff000, /* 65520: tie -> inf */
        0x7f7fffff, /* FLT_MAX -> inf */
        0x7f800000, /* inf */
        0x7f800001, /* sNaN */
        0x7fc00000, /* qNaN */
        0x7fbfe000, /* NaN with payload */
        0x00000001, /* f32 subnormal -> 0 */
        0x80000000, /* -0 */
    };
    static const uint16_t want[] = {0x3c00, 0x3c02, 0x3c01, 0x0000, 0x0001, 0x0002, 0x0002,
                                    0x0400, 0x0400, 0x7bff, 0x7bff, 0x7c00, 0x7c00, 0x7c00,
                                    0x7e00, 0x7e00, 0x7fff, 0x0000, 0x8000};
    for (int k = 0; k < N_ISAS; k++) {
        if (!use_isa(all_isas[k]))
            continue;
        for (size_t i = 0; i < sizeof edge / sizeof *edge; i++) {
            for (int neg = 0; neg < 2; neg++) {
                float f = bits_f32(edge[i] ^ (neg ? 0x80000000u : 0));
                uint16_t w = want[i] ^ (neg ? 0x8000 : 0);
                uint16_t row[9];
                float in[9];
                for (int j = 0; j < 9; j++)
                    in[j] = f; /* 8 through the vector path, 1 through the tail */
                kc_fp32_to_fp16_row(row, in, 9);
                if (kc_fp32_to_fp16(f) != w || row[0] != w || row[8] != w)
                    fail_msg("%08x: want %04x, scalar %04x, row %04x", f32_bits(f), w,
                             kc_fp32_to_fp16(f), row[0]);
            }
        }
    }
    /* every f32 exponent and top mantissa bits, with low bits around the
     * rounding point: nearest-even by the definition, and the row path
     * (F16C) bit-identical to the scalar one */
    static const uint16_t lows[] = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff,
                                    0x2000, 0x3000, 0x8000, 0x9000, 0xffff};
    const int nl = sizeof lows / sizeof *lows;
    float *in = xmalloc(65536 * sizeof *in);
    uint16_t *out = xmalloc(65536 * sizeof *out);
    for (int k = 0; k < N_ISAS; k++) {
        if (!use_isa(all_isas[k]))
            continue;
        for (int l = 0; l < nl; l++) {
            for (uint32_t hi = 0; hi < 65536; hi++)
                in[hi] = bits_f32(hi << 16 | lows[l]);
            kc_fp32_to_fp16_row(out, in, 65536);
            for (uint32_t hi = 0; hi < 65536; hi++) {
                uint16_t s = kc_fp32_to_fp16(in[hi]);
                if (s != out[hi])
                    fail_msg("%08x: scalar %04x, row %04x", f32_bits(in[hi]), s, out[hi]);
                if (k == 0)
                    check_nearest_half(in[hi], s);
#ifdef __FLT16_MAX__
                if (k == 0 && !isnan(in[hi])) { /* the compiler's own conversion */
                    _Float16 c = (_Float16)in[hi];
                    uint16_t cb;
                    memcpy(&cb, &c, 2);
                    if (cb != s)
                        fail_msg("%08x: ours %04x, _Float16 %04x", f32_bits(in[hi]), s, cb);
                }
#endif
            }
        }
    }
    free(in);
    free(out);
}

/* ---- bf16 ---- */

/* GGML_FP32_TO_BF16 as ggml writes it (ggml-impl.h) */
static uint16_t ggml_fp32_to_bf16(float s)
{
    uint32_t i = f32_bits(s);
    if ((i & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((i >> 16) | 64);
    return (uint16_t)((i + (0x7fff + ((i >> 16) & 1))) >> 16);
}

static void test_bf16_conversions(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = kc_bf16_to_fp32((uint16_t)h);
        assert_int_equal(f32_bits(f), h << 16);
        uint16_t back = kc_fp32_to_bf16(f);
        assert_int_equal(back, isnan(f) ? (h | 64) : h);
    }
    static const uint16_t lows[] = {0x0000, 0x0001, 0x7fff, 0x8000, 0x8001, 0xffff};
    float *in = xmalloc(65536 * sizeof *in), *out = xmalloc(65536 * sizeof *out);
    for (int k = 0; k < N_ISAS; k++) {
        if (!use_isa(all_isas[k]))
            continue;
        for (size_t l = 0; l < sizeof lows / sizeof *lows; l++) {
            for (uint32_t hi = 0; hi < 65536; hi++)
                in[hi] = bits_f32(hi << 16 | lows[l]);
            kc_round_bf16_row(out, in, 65536);
            for (uint32_t hi = 0; hi < 65536; hi++) {
                uint16_t b = kc_fp32_to_bf16(in[hi]);
                assert_int_equal(b, ggml_fp32_to_bf16(in[hi]));
                assert_int_equal(f32_bits(out[hi]), (uint32_t)b << 16);
                if (isnan(in[hi]) || isinf(in[hi]))
                    continue;
                /* nearest, ties to even (finite results below the overflow) */
                double x = in[hi], v = kc_bf16_to_fp32(b);
                if (isinf(v))
                    continue;
                double ulp =
                    fabs(kc_bf16_to_fp32((uint16_t)(b | 1)) - kc_bf16_to_fp32((uint16_t)(b & ~1)));
                assert_true(fabs(x - v) <= ulp / 2);
                if (fabs(x - v) == ulp / 2 && ulp > 0)
                    assert_int_equal(b & 1, 0);
            }
        }
    }
    free(in);
    free(out);
}

/* ---- Q8_0 ---- */

/* quantize_row_q8_0_ref as ggml writes it (ggml-quants.c) */
static void ggml_quantize_row_q8_0_ref(const float *x, struct kc_block_q8_0 *y, int k)
{
    const int nb = k / 32;
    for (int i = 0; i < nb; i++) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            const float v = x[i * 32 + j];
            amax = amax > fabsf(v) ? amax : fabsf(v);
        }
        const float d = amax / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = kc_fp32_to_fp16(d); /* GGML_FP32_TO_FP16: exhaustively checked above */
        for (int j = 0; j < 32; ++j) {
            const float x0 = x[i * 32 + j] * id;
            y[i].qs[j] = (int8_t)roundf(x0);
        }
    }
}

static void fill_test_row(float *x, int n, int pattern)
{
    for (int i = 0; i < n; i++) {
        switch (pattern) {
        case 0: /* plain */
            x[i] = rng_uniform(-1, 1);
            break;
        case 1: /* magnitudes from 1e-6 to 1e4 */
            x[i] = rng_uniform(-1, 1) * powf(10.0f, rng_uniform(-6, 4));
            break;
        case 2: /* exact halves: amax 127 makes d = 1, so q = roundf(k + 0.5) */
            x[i] = (i % 32 == 0) ? 127.0f : (float)((int)(rng_next() % 200) - 100) + 0.5f;
            break;
        case 3: /* a zero block then a constant one */
            x[i] = i < 32 ? 0.0f : -3.0f;
            break;
        }
    }
}

static void test_q8_0_quantize_is_byte_identical_to_ggml(void **state)
{
    (void)state;
    enum { N = 4096 };
    float *x = xmalloc(N * sizeof *x), *d = xmalloc(N / 32 * sizeof *d);
    struct kc_block_q8_0 *want = xmalloc(N / 32 * sizeof *want);
    struct kc_block_q8_0 *got = xmalloc(N / 32 * sizeof *got);
    int8_t *qs = xmalloc(N);
    rng_seed(8);
    for (int k = 0; k < N_ISAS; k++) {
        if (!use_isa(all_isas[k]))
            continue;
        for (int pattern = 0; pattern < 4; pattern++) {
            fill_test_row(x, N, pattern);
            ggml_quantize_row_q8_0_ref(x, want, N);
            memset(got, 0x55, N / 32 * sizeof *got);
            kc_quantize_q8_0_row(got, x, N);
            assert_memory_equal(got, want, N / 32 * sizeof *got);
            kc_quantize_q8_0_split(qs, d, x, N);
            for (int b = 0; b < N / 32; b++) {
                assert_memory_equal(qs + 32 * b, want[b].qs, 32);
                assert_int_equal(f32_bits(d[b]), f32_bits(kc_fp16_to_fp32(want[b].d)));
            }
            if (pattern == 2) /* roundf: 2.5 -> 3 and -3.5 -> -4, not to even */
                for (int j = 1; j < 32; j++)
                    assert_int_equal(got[0].qs[j], (int)roundf(x[j]));
        }
    }
    free(x);
    free(d);
    free(want);
    free(got);
    free(qs);
}

static void test_dequant_row_every_type(void **state)
{
    (void)state;
    enum { N = 96 };
    float x[N], out[N];
    unsigned char buf[N * 4 + 8];
    rng_seed(9);
    fill_test_row(x, N, 1);
    for (int k = 0; k < N_ISAS; k++) {
        if (!use_isa(all_isas[k]))
            continue;
        for (int misalign = 0; misalign <= 2; misalign++) {
            unsigned char *p = buf + misalign;
            memcpy(p, x, sizeof x);
            kc_dequant_row(out, p, KC_TYPE_F32, N);
            assert_memory_equal(out, x, sizeof x);
            for (int i = 0; i < N; i++) {
                uint16_t h = kc_fp32_to_fp16(x[i]);
                memcpy(p + 2 * i, &h, 2);
            }
            kc_dequant_row(out, p, KC_TYPE_F16, N);
            for (int i = 0; i < N; i++)
                assert_int_equal(f32_bits(out[i]),
                                 f32_bits(kc_fp16_to_fp32(kc_fp32_to_fp16(x[i]))));
            for (int i = 0; i < N; i++) {
                uint16_t h = kc_fp32_to_bf16(x[i]);
                memcpy(p + 2 * i, &h, 2);
            }
            kc_dequant_row(out, p, KC_TYPE_BF16, N);
            for (int i = 0; i < N; i++)
                assert_int_equal(f32_bits(out[i]),
                                 f32_bits(kc_bf16_to_fp32(kc_fp32_to_bf16(x[i]))));
            struct kc_block_q8_0 q[N / 32];
            ggml_quantize_row_q8_0_ref(x, q, N);
            memcpy(p, q, sizeof q);
            kc_dequant_row(out, p, KC_TYPE_Q8_0, N);
            for (int i = 0; i < N; i++) {
                float want = q[i / 32].qs[i % 32] * kc_fp16_to_fp32(q[i / 32].d);
                assert_int_equal(f32_bits(out[i]), f32_bits(want));
            }
        }
    }
    assert_int_equal(kc_type_row_size(KC_TYPE_Q8_0, 64), 68);
    assert_int_equal(kc_type_row_size(KC_TYPE_Q8_0, 65), 0);
    assert_int_equal(kc_type_row_size(KC_TYPE_BF16, 7), 14);
    assert_int_equal(kc_type_row_size(2, 64), 0);
}

/* ---- thread pool ---- */

struct count_ctx {
    atomic_int counts[8];
    atomic_int wrong_n;
    int expect_n;
};

static void count_fn(void *ctx, int i, int n)
{
    struct count_ctx *c = ctx;
    if (n != c->expect_n || i < 0 || i >= n)
        atomic_fetch_add(&c->wrong_n, 1);
    else
        atomic_fetch_add(&c->counts[i], 1);
}

static void test_pool_runs_every_thread_index_once_per_call(void **state)
{
    (void)state;
    for (int n = 1; n <= 4; n++) {
        struct kc_pool *p;
        assert_int_equal(kc_pool_create(&p, n), 0);
        assert_int_equal(kc_pool_threads(p), n);
        struct count_ctx c = {.expect_n = n};
        for (int call = 1; call <= 2000; call++) {
            kc_pool_run(p, count_fn, &c);
            /* kc_pool_run returned: every thread has finished this call */
            for (int i = 0; i < n; i++)
                assert_int_equal(atomic_load(&c.counts[i]), call);
            if (call % 500 == 0) /* let the workers fall asleep: the futex path */
                usleep(2000);
        }
        assert_int_equal(atomic_load(&c.wrong_n), 0);
        for (int i = n; i < 8; i++)
            assert_int_equal(atomic_load(&c.counts[i]), 0);
        kc_pool_destroy(p);
    }
    kc_pool_destroy(NULL);
    struct count_ctx c = {.expect_n = 1};
    kc_pool_run(NULL, count_fn, &c);
    assert_int_equal(atomic_load(&c.counts[0]), 1);
    struct kc_pool *p = (struct kc_pool *)1;
    assert_int_equal(kc_pool_create(&p, 0), -22 /* -EINVAL */);
    assert_null(p);
}

static void test_pool_split_covers_range(void **state)
{
    (void)state;
    for (int n = 0; n < 40; n++)
        for (int align = 1; align <= 4; align *= 2)
            for (int parts = 1; parts <= 5; parts++) {
                int next = 0;
                for (int i = 0; i < parts; i++) {
                    int lo, hi;
                    kc_pool_split(n, align, parts, i, &lo, &hi);
                    assert_int_equal(lo, next);
                    assert_true(hi >= lo && hi <= n);
                    assert_true(lo % align == 0 || lo == n);
                    next = hi;
                }
                assert_int_equal(next, n);
            }
}

/* ---- matmul ---- */

static size_t row_bytes(int type, int n_in)
{
    return kc_type_row_size(type, n_in);
}

/* Q8_0 rows from Q8_0_R8 ones, read as matmul.h describes the layout (the
 * test's own reading of it, not kc_pack_q8_0_r8 run backwards) */
static void *unpack_r8(const void *w, int n_in, int n_out)
{
    const size_t rb = row_bytes(KC_TYPE_Q8_0, n_in);
    unsigned char *q = xmalloc(rb * n_out);
    for (int o = 0; o < n_out; o++)
        for (int b = 0; b < n_in / 32; b++) {
            const unsigned char *g = (const unsigned char *)w + rb * o + (size_t)(b / 8) * 272;
            struct kc_block_q8_0 blk;
            memcpy(&blk.d, g + 2 * (b % 8), 2);
            for (int i = 0; i < 32; i++)
                blk.qs[i] = (int8_t)(g[16 + (i / 4) * 32 + (b % 8) * 4 + i % 4] - 128);
            memcpy(q + rb * o + (size_t)b * sizeof blk, &blk, sizeof blk);
        }
    return q;
}

/* random weights of `type`: values in [-1, 1] (Q8_0: scales ~1e-2, q in
 * [-128, 127], -128 included on purpose: the sign trick must handle it;
 * Q8_0_R8: such Q8_0 weights repacked) */
static void *make_weights(int type, int n_in, int n_out)
{
    if (type == KC_TYPE_Q8_0_R8) {
        void *q = make_weights(KC_TYPE_Q8_0, n_in, n_out);
        void *r = xmalloc(row_bytes(type, n_in) * n_out + 2);
        kc_pack_q8_0_r8(r, q, n_in, n_out);
        free(q);
        return r;
    }
    size_t rb = row_bytes(type, n_in);
    unsigned char *w = xmalloc(rb * n_out + 2);
    for (int o = 0; o < n_out; o++) {
        unsigned char *row = w + rb * o;
        for (int i = 0; i < n_in; i++) {
            float v = rng_uniform(-1, 1);
            if (type == KC_TYPE_F32) {
                memcpy(row + 4 * i, &v, 4);
            } else if (type == KC_TYPE_F16 || type == KC_TYPE_BF16) {
                uint16_t h = type == KC_TYPE_F16 ? kc_fp32_to_fp16(v) : kc_fp32_to_bf16(v);
                memcpy(row + 2 * i, &h, 2);
            }
        }
        if (type == KC_TYPE_Q8_0)
            for (int b = 0; b < n_in / 32; b++) {
                struct kc_block_q8_0 blk;
                blk.d = kc_fp32_to_fp16(rng_uniform(-0.02f, 0.02f));
                for (int j = 0; j < 32; j++)
                    blk.qs[j] = (int8_t)((int)(rng_next() % 256) - 128);
                memcpy(row + b * sizeof blk, &blk, sizeof blk);
            }
    }
    return w;
}

static double weight_at(int type, const unsigned char *row, int i)
{
    uint16_t h;
    float f;
    switch (type) {
    case KC_TYPE_F32:
        memcpy(&f, row + 4 * i, 4);
        return f;
    case KC_TYPE_F16:
        memcpy(&h, row + 2 * i, 2);
        return kc_fp16_to_fp32(h);
    default:
        memcpy(&h, row + 2 * i, 2);
        return kc_bf16_to_fp32(h);
    }
}

/* y vs the double sum of the same rounded inputs; returns the largest error
 * in units of u * sum|terms| */
static double check_matmul_result(int type, const float *y, const float *x, const void *w,
                                  int n_tokens, int n_in, int n_out)
{
    if (type == KC_TYPE_Q8_0_R8) { /* the same sum, in another order */
        void *q = unpack_r8(w, n_in, n_out);
        double e = check_matmul_result(KC_TYPE_Q8_0, y, x, q, n_tokens, n_in, n_out);
        free(q);
        return e;
    }
    const size_t rb = row_bytes(type, n_in);
    const int nb = n_in / 32;
    double worst = 0;
    double *xr = xmalloc((size_t)n_in * sizeof *xr);
    struct kc_block_q8_0 *xq = xmalloc((size_t)(nb + 1) * sizeof *xq);
    for (int t = 0; t < n_tokens; t++) {
        const float *xt = x + (size_t)t * n_in;
        for (int i = 0; i < n_in; i++)
            xr[i] = type == KC_TYPE_F16    ? kc_fp16_to_fp32(kc_fp32_to_fp16(xt[i]))
                    : type == KC_TYPE_BF16 ? kc_bf16_to_fp32(kc_fp32_to_bf16(xt[i]))
                                           : xt[i];
        if (type == KC_TYPE_Q8_0)
            ggml_quantize_row_q8_0_ref(xt, xq, n_in);
        for (int o = 0; o < n_out; o++) {
            const unsigned char *row = (const unsigned char *)w + rb * o;
            double ref = 0, mag = 0;
            int n_terms = n_in;
            if (type == KC_TYPE_Q8_0) {
                for (int b = 0; b < nb; b++) {
                    struct kc_block_q8_0 wb;
                    memcpy(&wb, row + b * sizeof wb, sizeof wb);
                    double d = (double)kc_fp16_to_fp32(wb.d) * kc_fp16_to_fp32(xq[b].d);
                    long isum = 0, iabs = 0;
                    for (int j = 0; j < 32; j++) {
                        isum += wb.qs[j] * xq[b].qs[j];
                        iabs += labs((long)wb.qs[j] * xq[b].qs[j]);
                    }
                    ref += d * isum;
                    mag += fabs(d) * iabs;
                }
                n_terms = nb + 8;
            } else {
                for (int i = 0; i < n_in; i++) {
                    double p = xr[i] * weight_at(type, row, i);
                    ref += p;
                    mag += fabs(p);
                }
            }
            double got = y[(size_t)t * n_out + o];
            double gamma = n_terms * U / (1 - n_terms * U);
            double err = fabs(got - ref);
            if (!(err <= gamma * mag + 1e-37))
                fail_msg("%s n_in=%d n_out=%d n_tokens=%d y[%d][%d] = %.9g, want %.9g (+-%.3g)",
                         kc_type_name(type), n_in, n_out, n_tokens, t, o, got, ref, gamma * mag);
            if (mag > 0 && err / (U * mag) > worst)
                worst = err / (U * mag);
        }
    }
    free(xr);
    free(xq);
    return worst;
}

struct mm_shape {
    int n_in, n_out, n_tokens;
};

/* n_in {64, 96, 768, 4096} x n_out {1, 3, 172, 2048} x n_tokens {1, 2, 7, 64}
 * each covered, plus n_in % 8 != 0 tails (F types) and n_in past the prefill
 * chunk (several chunks, the last one short) */
static const struct mm_shape mm_shapes[] = {
    {64, 1, 1},     {64, 2048, 7},  {96, 3, 2},      {96, 172, 64},   {768, 172, 7},
    {768, 2048, 1}, {768, 3, 64},   {4096, 2048, 1}, {4096, 172, 64}, {4096, 1, 2},
    {4096, 3, 7},   {8224, 5, 64},  {172, 172, 7},   {100, 3, 64},    {2052, 9, 64},
    {172, 2048, 1}, {4100, 6, 128}, {4352, 7, 17},   {256, 5, 8},
};
static const int mm_types[] = {KC_TYPE_F32, KC_TYPE_F16, KC_TYPE_BF16, KC_TYPE_Q8_0,
                               KC_TYPE_Q8_0_R8};

static void test_matmul_matches_double_reference(void **state)
{
    (void)state;
    struct kc_pool *pool;
    struct kc_scratch *s;
    assert_int_equal(kc_pool_create(&pool, 2), 0);
    assert_int_equal(kc_scratch_create(&s, 128, 8224), 0);
    rng_seed(42);
    for (size_t ti = 0; ti < sizeof mm_types / sizeof *mm_types; ti++) {
        const int type = mm_types[ti];
        double worst[N_ISAS] = {0};
        for (size_t si = 0; si < sizeof mm_shapes / sizeof *mm_shapes; si++) {
            const struct mm_shape sh = mm_shapes[si];
            if (row_bytes(type, sh.n_in) == 0)
                continue;
            void *w = make_weights(type, sh.n_in, sh.n_out);
            float *x = xmalloc((size_t)sh.n_tokens * sh.n_in * sizeof *x);
            float *y = xmalloc((size_t)sh.n_tokens * sh.n_out * sizeof *y);
            for (int t = 0; t < sh.n_tokens; t++)
                fill_test_row(x + (size_t)t * sh.n_in, sh.n_in, t % 2);
            for (int k = 0; k < N_ISAS; k++) {
                if (kc_cpu_set_isa(all_isas[k]) != 0)
                    continue;
                memset(y, 0xff, (size_t)sh.n_tokens * sh.n_out * sizeof *y); /* NaNs */
                kc_matmul(pool, y, x, w, type, sh.n_tokens, sh.n_in, sh.n_out, s);
                double e = check_matmul_result(type, y, x, w, sh.n_tokens, sh.n_in, sh.n_out);
                worst[k] = e > worst[k] ? e : worst[k];
            }
            free(w);
            free(x);
            free(y);
        }
        print_message("    %-4s largest error: scalar %.2f, avx2 %.2f, avx512vnni %.2f (units of "
                      "u*sum|terms|)\n",
                      kc_type_name(type), worst[0], worst[1], worst[2]);
    }
    for (int k = 1; k < N_ISAS; k++)
        if (!kc_cpu_supports(all_isas[k]))
            print_message("    %s skipped: not supported by this CPU\n",
                          kc_cpu_isa_name(all_isas[k]));
    kc_scratch_destroy(s);
    kc_pool_destroy(pool);
}

static void test_matmul_same_bits_for_1_to_4_threads(void **state)
{
    (void)state;
    static const struct mm_shape shapes[] = {{768, 172, 7}, {4096, 2048, 1}, {4096, 43, 64}};
    struct kc_scratch *s;
    assert_int_equal(kc_scratch_create(&s, 64, 4096), 0);
    rng_seed(7);
    for (int k = 0; k < N_ISAS; k++) {
        if (!use_isa(all_isas[k]))
            continue;
        for (size_t ti = 0; ti < sizeof mm_types / sizeof *mm_types; ti++) {
            for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
                const struct mm_shape sh = shapes[si];
                const int type = mm_types[ti];
                void *w = make_weights(type, sh.n_in, sh.n_out);
                size_t ny = (size_t)sh.n_tokens * sh.n_out;
                float *x = xmalloc((size_t)sh.n_tokens * sh.n_in * sizeof *x);
                float *y1 = xmalloc(ny * sizeof *y1), *yn = xmalloc(ny * sizeof *yn);
                fill_test_row(x, sh.n_tokens * sh.n_in, 0);
                kc_matmul(NULL, y1, x, w, type, sh.n_tokens, sh.n_in, sh.n_out, s);
                for (int n = 1; n <= 4; n++) {
                    struct kc_pool *p;
                    assert_int_equal(kc_pool_create(&p, n), 0);
                    memset(yn, 0, ny * sizeof *yn);
                    kc_matmul(p, yn, x, w, type, sh.n_tokens, sh.n_in, sh.n_out, s);
                    assert_memory_equal(y1, yn, ny * sizeof *yn);
                    kc_pool_destroy(p);
                }
                free(w);
                free(x);
                free(y1);
                free(yn);
            }
        }
    }
    kc_scratch_destroy(s);
}

/*
 * A token's row of y must not depend on the rest of its batch (continuous
 * batching: a request's output must be the same alone or under any load):
 * bit for bit the same whatever n_tokens is (the decode kernel, the few-token
 * and prefill tiles, 3-token groups and their leftovers, token blocks past
 * KC_MM_BLOCK_TOKENS) and wherever the token sits in the batch; single
 * tokens on 1 thread, batches on 3. Shapes: n_in over 4 reduction chunks
 * with a tail (F types) or 2 Q8_0 chunks, n_in % 8 != 0 in one chunk, and
 * n_out % 4 != 0 (rows outside the 4-row tiles).
 */
static void test_matmul_rows_do_not_depend_on_the_batch(void **state)
{
    (void)state;
    static const struct mm_shape shapes[] = {
        {4132, 43, 0}, {4128, 10, 0}, {100, 9, 0}, {768, 64, 0}, {4352, 11, 0}};
    static const int counts[] = {1, 2, 3, 7, 16, 17, 64, 128, 129, 257};
    enum { NROWS = 131, MAXT = 257, MAXIN = 4352 }; /* 131: prime, rows distinct up to 131 */
    struct kc_pool *pool;
    struct kc_scratch *s;
    assert_int_equal(kc_pool_create(&pool, 3), 0);
    assert_int_equal(kc_scratch_create(&s, MAXT, MAXIN), 0);
    float *rows = xmalloc((size_t)NROWS * MAXIN * sizeof *rows);
    float *x = xmalloc((size_t)MAXT * MAXIN * sizeof *x);
    rng_seed(19);
    for (int k = 0; k < N_ISAS; k++) {
        if (!use_isa(all_isas[k]))
            continue;
        for (size_t ti = 0; ti < sizeof mm_types / sizeof *mm_types; ti++) {
            for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
                const int type = mm_types[ti], n_in = shapes[si].n_in, n_out = shapes[si].n_out;
                if (row_bytes(type, n_in) == 0)
                    continue;
                void *w = make_weights(type, n_in, n_out);
                float *alone = xmalloc((size_t)NROWS * n_out * sizeof *alone);
                float *y = xmalloc((size_t)MAXT * n_out * sizeof *y);
                for (int r = 0; r < NROWS; r++) {
                    fill_test_row(rows + (size_t)r * n_in, n_in, r % 2);
                    kc_matmul(NULL, alone + (size_t)r * n_out, rows + (size_t)r * n_in, w, type, 1,
                              n_in, n_out, s);
                }
                for (size_t ci = 0; ci < sizeof counts / sizeof *counts; ci++) {
                    const int nt = counts[ci];
                    for (int j = 0; j < nt; j++) /* row r lands on a new position each time */
                        memcpy(x + (size_t)j * n_in,
                               rows + (size_t)((j * 37 + nt * 11) % NROWS) * n_in,
                               (size_t)n_in * sizeof *x);
                    memset(y, 0xff, (size_t)nt * n_out * sizeof *y);
                    kc_matmul(pool, y, x, w, type, nt, n_in, n_out, s);
                    for (int j = 0; j < nt; j++) {
                        const int r = (j * 37 + nt * 11) % NROWS;
                        if (memcmp(y + (size_t)j * n_out, alone + (size_t)r * n_out,
                                   (size_t)n_out * sizeof *y) != 0)
                            fail_msg("%s %s n_in=%d n_out=%d: token %d of %d differs from the "
                                     "same token alone",
                                     kc_cpu_isa_name(all_isas[k]), kc_type_name(type), n_in, n_out,
                                     j, nt);
                    }
                }
                free(w);
                free(alone);
                free(y);
            }
        }
    }
    free(rows);
    free(x);
    kc_scratch_destroy(s);
    kc_pool_destroy(pool);
}

static void test_matmul_prepared_reuses_converted_x(void **state)
{
    (void)state;
    enum { NT = 5, NI = 256, NO = 40 };
    struct kc_scratch *s;
    assert_int_equal(kc_scratch_create(&s, NT, NI), 0);
    float x[NT * NI], y1[NT * NO], y2[NT * NO];
    rng_seed(11);
    fill_test_row(x, NT * NI, 0);
    for (size_t ti = 0; ti < sizeof mm_types / sizeof *mm_types; ti++) {
        const int type = mm_types[ti];
        void *wa = make_weights(type, NI, NO), *wb = make_weights(type, NI, NO);
        kc_matmul_prepare(NULL, s, x, type, NT, NI);
        kc_matmul_prepared(NULL, y1, wa, NO, s);
        kc_matmul_prepared(NULL, y2, wb, NO, s);
        float ya[NT * NO], yb[NT * NO];
        kc_matmul(NULL, ya, x, wa, type, NT, NI, NO, s);
        kc_matmul(NULL, yb, x, wb, type, NT, NI, NO, s);
        assert_memory_equal(y1, ya, sizeof ya);
        assert_memory_equal(y2, yb, sizeof yb);
        free(wa);
        free(wb);
    }
    kc_scratch_destroy(s);
}

/*
 * The VNNI Q8_0 kernel makes the same int32 block sums as the AVX2 one and
 * the same f32 operations in the same order, so y must be the same bits:
 * every Q8_0 shape of mm_shapes, plus every token count up to 17 (tiles of
 * 1 to 5 tokens, dealt evenly) and n_in whose blocks end inside a table of
 * 16 or 8 scale products (n_in / 32 = 3, 13, 129: 128 + 1 over two chunks),
 * on 2 threads; weights include -128 and x the patterns of fill_test_row.
 */
static void test_matmul_q8_0_vnni_equals_avx2_bitwise(void **state)
{
    (void)state;
    if (!kc_cpu_supports(KC_ISA_AVX512VNNI) || !kc_cpu_supports(KC_ISA_AVX2)) {
        print_message("    skipped: avx512vnni not supported by this CPU\n");
        skip();
    }
    enum { MAXT = 128, MAXIN = 8224, NEXTRA = 17 * 3 };
    struct mm_shape shapes[sizeof mm_shapes / sizeof *mm_shapes + NEXTRA];
    int n_shapes = 0;
    for (size_t si = 0; si < sizeof mm_shapes / sizeof *mm_shapes; si++)
        if (mm_shapes[si].n_in % 32 == 0)
            shapes[n_shapes++] = mm_shapes[si];
    static const int extra_in[] = {96, 416, 4128};
    for (int i = 0; i < 3; i++)
        for (int nt = 1; nt <= 17; nt++)
            shapes[n_shapes++] = (struct mm_shape){extra_in[i], 4 * i + 7, nt};
    struct kc_pool *pool;
    struct kc_scratch *s;
    assert_int_equal(kc_pool_create(&pool, 2), 0);
    assert_int_equal(kc_scratch_create(&s, MAXT, MAXIN), 0);
    rng_seed(23);
    for (int si = 0; si < n_shapes; si++) {
        const struct mm_shape sh = shapes[si];
        void *w = make_weights(KC_TYPE_Q8_0, sh.n_in, sh.n_out);
        const size_t ny = (size_t)sh.n_tokens * sh.n_out;
        float *x = xmalloc((size_t)sh.n_tokens * sh.n_in * sizeof *x);
        float *ya = xmalloc(ny * sizeof *ya), *yv = xmalloc(ny * sizeof *yv);
        for (int t = 0; t < sh.n_tokens; t++)
            fill_test_row(x + (size_t)t * sh.n_in, sh.n_in, (t + si) % 4);
        assert_int_equal(kc_cpu_set_isa(KC_ISA_AVX2), 0);
        memset(ya, 0xff, ny * sizeof *ya);
        kc_matmul(pool, ya, x, w, KC_TYPE_Q8_0, sh.n_tokens, sh.n_in, sh.n_out, s);
        assert_int_equal(kc_cpu_set_isa(KC_ISA_AVX512VNNI), 0);
        memset(yv, 0xff, ny * sizeof *yv);
        kc_matmul(pool, yv, x, w, KC_TYPE_Q8_0, sh.n_tokens, sh.n_in, sh.n_out, s);
        for (size_t i = 0; i < ny; i++)
            if (f32_bits(ya[i]) != f32_bits(yv[i]))
                fail_msg("n_in=%d n_out=%d n_tokens=%d: y[%zu] avx2 %a, avx512vnni %a", sh.n_in,
                         sh.n_out, sh.n_tokens, i, ya[i], yv[i]);
        free(w);
        free(x);
        free(ya);
        free(yv);
    }
    kc_scratch_destroy(s);
    kc_pool_destroy(pool);
}

/*
 * Q8_0_R8 has one reduction order, the scalar reference's (kc_dot_r8), and
 * the AVX512VNNI kernel must give its bits: every token count up to 17 and
 * some larger (tiles of 1 to 4, token blocks), n_in of 1 group, of 3, and of
 * 17 over two chunks, n_out % 4 != 0, on 2 threads; the AVX2 path runs the
 * scalar code and is checked with it.
 */
static void test_matmul_q8_0_r8_paths_equal_bitwise(void **state)
{
    (void)state;
    enum { MAXT = 130, MAXIN = 4352 };
    static const int ins[] = {256, 768, 4352}, outs[] = {1, 7, 172};
    static const int counts[] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10,
                                 11, 12, 13, 14, 15, 16, 17, 33, 64, 130};
    struct kc_pool *pool;
    struct kc_scratch *s;
    assert_int_equal(kc_pool_create(&pool, 2), 0);
    assert_int_equal(kc_scratch_create(&s, MAXT, MAXIN), 0);
    rng_seed(29);
    int compared = 0;
    for (int ii = 0; ii < 3; ii++)
        for (size_t ci = 0; ci < sizeof counts / sizeof *counts; ci++) {
            const int n_in = ins[ii], n_out = outs[(ci + ii) % 3], nt = counts[ci];
            void *w = make_weights(KC_TYPE_Q8_0_R8, n_in, n_out);
            const size_t ny = (size_t)nt * n_out;
            float *x = xmalloc((size_t)nt * n_in * sizeof *x);
            float *ys = xmalloc(ny * sizeof *ys), *yk = xmalloc(ny * sizeof *yk);
            for (int t = 0; t < nt; t++)
                fill_test_row(x + (size_t)t * n_in, n_in, (t + ii) % 4);
            assert_int_equal(kc_cpu_set_isa(KC_ISA_SCALAR), 0);
            memset(ys, 0xff, ny * sizeof *ys);
            kc_matmul(pool, ys, x, w, KC_TYPE_Q8_0_R8, nt, n_in, n_out, s);
            for (int k = 1; k < N_ISAS; k++) {
                if (kc_cpu_set_isa(all_isas[k]) != 0)
                    continue;
                memset(yk, 0xff, ny * sizeof *yk);
                kc_matmul(pool, yk, x, w, KC_TYPE_Q8_0_R8, nt, n_in, n_out, s);
                for (size_t i = 0; i < ny; i++)
                    if (f32_bits(ys[i]) != f32_bits(yk[i]))
                        fail_msg("n_in=%d n_out=%d n_tokens=%d: y[%zu] scalar %a, %s %a", n_in,
                                 n_out, nt, i, ys[i], kc_cpu_isa_name(all_isas[k]), yk[i]);
                compared += all_isas[k] == KC_ISA_AVX512VNNI;
            }
            free(w);
            free(x);
            free(ys);
            free(yk);
        }
    if (!compared)
        print_message("    avx512vnni not supported by this CPU: only avx2 compared\n");
    kc_scratch_destroy(s);
    kc_pool_destroy(pool);
}

/* ---- element-wise ops ---- */

static double ulps(float got, double want)
{
    if (got == want)
        return 0;
    double a = fabs(want);
    if (a < 1.1754943508222875e-38)
        a = 1.1754943508222875e-38;
    return fabs(got - want) / (ldexp(1.0, ilogb(a) - 23));
}

static const int op_sizes[] = {1, 7, 8, 64, 100, 4099};

static void test_rmsnorm_matches_reference(void **state)
{
    (void)state;
    float *x = xmalloc(4099 * sizeof *x), *w = xmalloc(4099 * sizeof *w);
    float *ref = xmalloc(4099 * sizeof *ref), *got = xmalloc(4099 * sizeof *got);
    rng_seed(3);
    for (size_t si = 0; si < sizeof op_sizes / sizeof *op_sizes; si++) {
        const int n = op_sizes[si];
        fill_test_row(x, n, si % 2);
        fill_test_row(w, n, 0);
        kc_rmsnorm_ref(ref, x, w, n, 1e-5f);
        double ss = 0;
        for (int i = 0; i < n; i++)
            ss += (double)x[i] * x[i];
        double scale = 1.0 / sqrt(ss / n + 1e-5);
        for (int i = 0; i < n; i++) /* squares, mean, sqrt, 1/, two products: <= 5 ulp */
            assert_true(ulps(ref[i], x[i] * scale * w[i]) <= 5);
        for (int k = 0; k < N_ISAS; k++) {
            if (kc_cpu_set_isa(all_isas[k]) != 0)
                continue;
            kc_rmsnorm(got, x, w, n, 1e-5f);
            assert_memory_equal(got, ref, n * sizeof *got); /* same ops, same order */
            memcpy(got, x, n * sizeof *got);
            kc_rmsnorm(got, got, w, n, 1e-5f); /* in place */
            assert_memory_equal(got, ref, n * sizeof *got);
        }
    }
    free(x);
    free(w);
    free(ref);
    free(got);
}

static void test_rope_table_and_rotation(void **state)
{
    (void)state;
    static const int dims[] = {6, 16, 64, 128};
    float cs[128], x[4 * 128], ref[4 * 128], got[4 * 128];
    rng_seed(5);
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
        const int hd = dims[di];
        for (int pos = 0; pos < 40000; pos += 997) {
            kc_rope_row(cs, pos, hd, 1e6f);
            /* angles pos * base^(-2i/d) by repeated f32 multiplication: after i
             * steps the angle is off by <= (i + 2) u relative */
            for (int i = 0; i < hd / 2; i++) {
                double theta = pos * pow(1e6, -2.0 * i / hd);
                double dtheta = (i + 2) * U * theta * 1.01 + 1e-7;
                assert_true(fabs(cs[2 * i] - cos(theta)) <= dtheta + 4 * U);
                assert_true(fabs(cs[2 * i + 1] - sin(theta)) <= dtheta + 4 * U);
            }
            fill_test_row(x, 4 * hd, 0);
            memcpy(ref, x, sizeof x);
            kc_rope_ref(ref, 4, hd, cs);
            for (int h = 0; h < 4; h++)
                for (int i = 0; i < hd; i += 2) {
                    const float *xh = x + h * hd;
                    double c = cs[i], s = cs[i + 1];
                    double r0 = xh[i] * c - xh[i + 1] * s, r1 = xh[i] * s + xh[i + 1] * c;
                    double m = fabs(xh[i]) + fabs(xh[i + 1]);
                    assert_true(fabs(ref[h * hd + i] - r0) <= 2 * U * m);
                    assert_true(fabs(ref[h * hd + i + 1] - r1) <= 2 * U * m);
                }
            for (int k = 0; k < N_ISAS; k++) {
                if (kc_cpu_set_isa(all_isas[k]) != 0)
                    continue;
                memcpy(got, x, sizeof x);
                kc_rope(got, 4, hd, cs);
                assert_memory_equal(got, ref, 4 * hd * sizeof *got);
            }
        }
    }
    float table[3 * 16];
    kc_rope_table(table, 3, 16, 10000.0f);
    for (int p = 0; p < 3; p++) {
        kc_rope_row(cs, p, 16, 10000.0f);
        assert_memory_equal(table + p * 16, cs, 16 * sizeof *cs);
    }
    assert_true(table[0] == 1.0f && table[1] == 0.0f); /* position 0: identity */
}

static void test_exp_polynomial_within_2_ulp(void **state)
{
    (void)state;
    enum { N = 1 << 16 };
    float *x = xmalloc(N * sizeof *x), *y = xmalloc(N * sizeof *y);
    double worst = 0;
    for (int k = 0; k < N_ISAS; k++) {
        if (!use_isa(all_isas[k]))
            continue;
        for (int round = 0; round < 8; round++) {
            for (int i = 0; i < N; i++) /* the whole range of normal results */
                x[i] = -87.33f + (88.72f + 87.33f) * (float)(round * N + i) / (8.0f * N);
            kc_exp_row(y, x, N);
            for (int i = 0; i < N; i++) {
                double e = ulps(y[i], exp((double)x[i]));
                worst = k == 1 && e > worst ? e : worst;
                if (e > 2)
                    fail_msg("exp(%a) = %a, %.2f ulp off", x[i], y[i], e);
            }
        }
        float sp[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 89.0f, -88.0f, -104.0f, 1.0f};
        float out[9];
        kc_exp_row(out, sp, 9);
        assert_true(out[0] == 1.0f && out[1] == 1.0f && isinf(out[2]) && out[3] == 0.0f);
        assert_true(isnan(out[4]) && isinf(out[5]) && out[6] < 1.2e-38f && out[7] == 0.0f);
        assert_true(ulps(out[8], exp(1.0)) <= 2);
    }
    print_message("    avx2 exp: largest error %.2f ulp\n", worst);
    free(x);
    free(y);
}

static void test_swiglu_softmax_add_match_reference(void **state)
{
    (void)state;
    float *g = xmalloc(4099 * sizeof *g), *u = xmalloc(4099 * sizeof *u);
    float *ref = xmalloc(4099 * sizeof *ref), *got = xmalloc(4099 * sizeof *got);
    rng_seed(6);
    for (size_t si = 0; si < sizeof op_sizes / sizeof *op_sizes; si++) {
        const int n = op_sizes[si];
        for (int i = 0; i < n; i++) { /* wide enough for exp to saturate both ways */
            g[i] = rng_uniform(-100, 100) * (i % 3 ? 0.05f : 1.0f);
            u[i] = rng_uniform(-2, 2);
        }
        kc_swiglu_ref(ref, g, u, n);
        for (int i = 0; i < n; i++) {
            double want = g[i] / (1 + exp(-(double)g[i])) * u[i];
            assert_true(ulps(ref[i], want) <= 4 || fabs(want) < 1e-30);
        }
        for (int k = 0; k < N_ISAS; k++) {
            if (kc_cpu_set_isa(all_isas[k]) != 0)
                continue;
            kc_swiglu_ref(ref, g, u, n);
            kc_swiglu(got, g, u, n);
            for (int i = 0; i < n; i++) {
                if (!(ulps(got[i], ref[i]) <= 4 || fabsf(ref[i]) < 1e-30f))
                    fail_msg("swiglu(%g, %g) = %g, want %g", g[i], u[i], got[i], ref[i]);
                /* the same bits alone as anywhere in a row (batch invariance:
                 * the forward pass runs it over all the batch's tokens) */
                float one;
                kc_swiglu(&one, g + i, u + i, 1);
                assert_int_equal(f32_bits(one), f32_bits(got[i]));
            }
            /* softmax: scores with a wide spread (many exps underflow) */
            memcpy(ref, g, n * sizeof *ref);
            kc_softmax_ref(ref, n);
            memcpy(got, g, n * sizeof *got);
            kc_softmax(got, n);
            double max = g[0], sum = 0, sumgot = 0;
            for (int i = 1; i < n; i++)
                max = g[i] > max ? g[i] : max;
            /* x - max is rounded to f32 first, as in the reference */
            for (int i = 0; i < n; i++)
                sum += exp((double)(g[i] - (float)max));
            for (int i = 0; i < n; i++) {
                double want = exp((double)(g[i] - (float)max)) / sum;
                if (want > 1e-30)
                    assert_true(ulps(ref[i], want) <= 4 && ulps(got[i], want) <= 4);
                else
                    assert_true(got[i] <= 1e-30 && ref[i] <= 1e-30);
                sumgot += got[i];
            }
            assert_true(fabs(sumgot - 1) <= n * U + 4 * U);
            kc_add_ref(ref, g, u, n);
            kc_add(got, g, u, n);
            assert_memory_equal(got, ref, n * sizeof *got);
            memcpy(got, g, n * sizeof *got);
            kc_add(got, got, u, n); /* the residual, in place */
            assert_memory_equal(got, ref, n * sizeof *got);
        }
    }
    free(g);
    free(u);
    free(ref);
    free(got);
}

/* ---- attention ---- */

struct kv_cache {
    int n_blocks, block_size, row;
    uint16_t **k, **v; /* block tables: blocks in shuffled memory order */
    uint16_t *k_mem, *v_mem;
};

static void kv_cache_init(struct kv_cache *c, int n_pos, int block_size, int row)
{
    c->block_size = block_size;
    c->row = row;
    c->n_blocks = (n_pos + block_size - 1) / block_size;
    size_t bsz = (size_t)block_size * row;
    c->k_mem = xmalloc(c->n_blocks * bsz * sizeof *c->k_mem);
    c->v_mem = xmalloc(c->n_blocks * bsz * sizeof *c->v_mem);
    c->k = xmalloc(c->n_blocks * sizeof *c->k);
    c->v = xmalloc(c->n_blocks * sizeof *c->v);
    for (int b = 0; b < c->n_blocks; b++) { /* reversed: block b is not after b-1 */
        c->k[b] = c->k_mem + (c->n_blocks - 1 - b) * bsz;
        c->v[b] = c->v_mem + (c->n_blocks - 1 - b) * bsz;
    }
    float *kf = xmalloc(row * sizeof *kf), *vf = xmalloc(row * sizeof *vf);
    for (int p = 0; p < n_pos; p++) {
        fill_test_row(kf, row, 0);
        fill_test_row(vf, row, 0);
        kc_kv_store(c->k[p / block_size] + (size_t)(p % block_size) * row, kf, row);
        kc_kv_store(c->v[p / block_size] + (size_t)(p % block_size) * row, vf, row);
        for (int i = 0; i < row; i++) /* the store is plain fp16 rounding */
            assert_int_equal(c->k[p / block_size][(p % block_size) * row + i],
                             kc_fp32_to_fp16(kf[i]));
    }
    free(kf);
    free(vf);
}

static void kv_cache_fini(struct kv_cache *c)
{
    free(c->k_mem);
    free(c->v_mem);
    free(c->k);
    free(c->v);
}

static double kv_at(uint16_t *const *blocks, const struct kv_cache *c, int p, int i)
{
    return kc_fp16_to_fp32(blocks[p / c->block_size][(size_t)(p % c->block_size) * c->row + i]);
}

/* naive attention in double over the same fp16 K/V: returns max |out - ref| /
 * max|v| */
static double check_attention(const float *out, const float *q, const struct kv_cache *c, int first,
                              int last, int n_heads, int n_kv, int hd, float scale)
{
    const int n_rep = n_heads / n_kv, span = last - first + 1;
    double *s = xmalloc(span * sizeof *s), worst = 0;
    for (int h = 0; h < n_heads; h++) {
        const int kv = h / n_rep;
        double max = -INFINITY, sum = 0, vmax = 0;
        for (int p = first; p <= last; p++) {
            double dot = 0;
            for (int d = 0; d < hd; d++)
                dot += (double)q[h * hd + d] * kv_at(c->k, c, p, kv * hd + d);
            s[p - first] = dot * scale;
            max = s[p - first] > max ? s[p - first] : max;
        }
        for (int i = 0; i < span; i++)
            sum += (s[i] = exp(s[i] - max));
        for (int d = 0; d < hd; d++) {
            double o = 0;
            for (int p = first; p <= last; p++) {
                double v = kv_at(c->v, c, p, kv * hd + d);
                o += s[p - first] / sum * v;
                vmax = fabs(v) > vmax ? fabs(v) : vmax;
            }
            double e = fabs(out[h * hd + d] - o) / vmax;
            worst = e > worst ? e : worst;
        }
    }
    free(s);
    return worst;
}

struct attn_case {
    int n_heads, n_kv, hd, block_size, first, last;
};

static void test_attention_gqa_paged_matches_naive(void **state)
{
    (void)state;
    static const struct attn_case cases[] = {
        {4, 2, 16, 4, 0, 10},    /* the brief's GQA shape, across blocks */
        {4, 2, 16, 4, 5, 13},    /* sliding window: first_pos > 0, mid-block */
        {4, 2, 16, 4, 7, 7},     /* a single position */
        {4, 2, 16, 16, 0, 0},    /* the first token */
        {8, 2, 128, 16, 3, 300}, /* 4 heads per group: the 4-score path */
        {12, 4, 40, 8, 0, 57},   /* 3 heads per group, head_dim % 32 != 0 */
        {4, 4, 64, 32, 20, 200}, /* no grouping */
        {4, 2, 6, 4, 0, 9},      /* head_dim % 8 != 0: the scalar code on both paths */
    };
    double worst[N_ISAS] = {0};
    rng_seed(13);
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const struct attn_case a = cases[ci];
        struct kv_cache c;
        kv_cache_init(&c, a.last + 1, a.block_size, a.n_kv * a.hd);
        float *q = xmalloc(a.n_heads * a.hd * sizeof *q);
        float *out = xmalloc(a.n_heads * a.hd * sizeof *out);
        /* the documented minimum: (n_heads / n_kv_heads) * span */
        float *scratch =
            xmalloc((size_t)(a.n_heads / a.n_kv) * (a.last - a.first + 1) * sizeof *scratch);
        fill_test_row(q, a.n_heads * a.hd, 0);
        const float scale = 1.0f / sqrtf((float)a.hd);
        for (int k = 0; k < N_ISAS; k++) {
            if (kc_cpu_set_isa(all_isas[k]) != 0)
                continue;
            memset(out, 0xff, a.n_heads * a.hd * sizeof *out);
            kc_attention(out, q, (const uint16_t *const *)c.k, (const uint16_t *const *)c.v,
                         a.block_size, a.first, a.last, a.n_heads, a.n_kv, a.hd, scale, scratch);
            double e = check_attention(out, q, &c, a.first, a.last, a.n_heads, a.n_kv, a.hd, scale);
            if (!(e <= 4e-6))
                fail_msg("case %zu (%s): error %.3g max|v|", ci, kc_cpu_isa_name(all_isas[k]), e);
            worst[k] = e > worst[k] ? e : worst[k];
        }
        free(q);
        free(out);
        free(scratch);
        kv_cache_fini(&c);
    }
    print_message("    largest error: scalar %.3g, avx2 %.3g, avx512vnni %.3g (of max|v|)\n",
                  worst[0], worst[1], worst[2]);
}

static void test_attention_batch_and_per_kv_head_equal_single_calls(void **state)
{
    (void)state;
    enum { NH = 8, NKV = 2, HD = 64, BS = 16, NT = 37 };
    struct kv_cache c;
    rng_seed(17);
    kv_cache_init(&c, NT, BS, NKV * HD);
    float *q = xmalloc(NT * NH * HD * sizeof *q);
    float *want = xmalloc(NT * NH * HD * sizeof *want), *got = xmalloc(NT * NH * HD * sizeof *got);
    float *scratch = xmalloc(4 * (NH / NKV) * NT * sizeof *scratch); /* the minimum */
    fill_test_row(q, NT * NH * HD, 0);
    struct kc_attn_token toks[NT];
    for (int k = 0; k < N_ISAS; k++) {
        if (!use_isa(all_isas[k]))
            continue;
        for (int t = 0; t < NT; t++) { /* causal prefill, window of 20 */
            int first = t - 19 > 0 ? t - 19 : 0;
            kc_attention(want + t * NH * HD, q + t * NH * HD, (const uint16_t *const *)c.k,
                         (const uint16_t *const *)c.v, BS, first, t, NH, NKV, HD, 0.125f, scratch);
            toks[t] = (struct kc_attn_token){got + t * NH * HD,
                                             q + t * NH * HD,
                                             (const uint16_t *const *)c.k,
                                             (const uint16_t *const *)c.v,
                                             first,
                                             t};
            memset(got + t * NH * HD, 0, NH * HD * sizeof *got);
            for (int kv = 0; kv < NKV; kv++) /* head by head: the same bits */
                kc_attention_kv(got + t * NH * HD, q + t * NH * HD, (const uint16_t *const *)c.k,
                                (const uint16_t *const *)c.v, BS, first, t, NH, NKV, HD, 0.125f,
                                scratch, kv);
            assert_memory_equal(got + t * NH * HD, want + t * NH * HD, NH * HD * sizeof *got);
        }
        /* 37 tokens: whole tokens per work item; 1 or 3 tokens with up to 4
         * threads: tokens cut into KV-head ranges */
        static const int counts[] = {NT, 1, 3};
        for (int ci = 0; ci < 3; ci++) {
            const int nt = counts[ci], t0 = NT - nt; /* the last, longest tokens */
            for (int n = 1; n <= 4; n++) {
                struct kc_pool *p;
                assert_int_equal(kc_pool_create(&p, n), 0);
                memset(got, 0, NT * NH * HD * sizeof *got);
                kc_attention_batch(p, toks + t0, nt, BS, NH, NKV, HD, 0.125f, scratch, NT);
                assert_memory_equal(got + t0 * NH * HD, want + t0 * NH * HD,
                                    nt * NH * HD * sizeof *got);
                kc_pool_destroy(p);
            }
        }
    }
    free(q);
    free(want);
    free(got);
    free(scratch);
    kv_cache_fini(&c);
}

/* ---- dispatch ---- */

/* Run this binary again with MILLRACE_CPU=env (unset for NULL) and return
 * which path the child chose, as its name in buf. */
static void child_isa(const char *env, char *buf, size_t len)
{
    int fd[2];
    assert_int_equal(pipe(fd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        if (env)
            setenv("MILLRACE_CPU", env, 1);
        else
            unsetenv("MILLRACE_CPU");
        execl("/proc/self/exe", "test_kernels", "--print-isa", (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    memset(buf, 0, len);
    ssize_t n = read(fd[0], buf, len - 1);
    close(fd[0]);
    int st;
    waitpid(pid, &st, 0);
    assert_true(n > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char *nl = strchr(buf, '\n');
    assert_non_null(nl);
    *nl = 0;
}

/* MILLRACE_CPU=scalar forces the scalar path, =avx2 the AVX2 kernels (no
 * VNNI; scalar without AVX2); unset, the best path is chosen */
static void test_env_forces_path(void **state)
{
    (void)state;
    char buf[32];
    child_isa("scalar", buf, sizeof buf);
    assert_string_equal(buf, "scalar");
    child_isa("avx2", buf, sizeof buf);
    assert_string_equal(buf, kc_cpu_supports(KC_ISA_AVX2) ? "avx2" : "scalar");
    child_isa("avx512vnni", buf, sizeof buf);
    assert_string_equal(buf, kc_cpu_isa_name(best_isa()));
    child_isa(NULL, buf, sizeof buf);
    assert_string_equal(buf, kc_cpu_isa_name(best_isa()));
    assert_true(kc_cpu_set_isa(KC_ISA_SCALAR) == 0);
    assert_int_equal(kc_cpu_isa(), KC_ISA_SCALAR);
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--print-isa") == 0) {
        printf("%s\n", kc_cpu_isa_name(kc_cpu_isa()));
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fp16_to_fp32_is_exact_for_all_halves),
        cmocka_unit_test(test_fp32_to_fp16_rounds_to_nearest_even),
        cmocka_unit_test(test_bf16_conversions),
        cmocka_unit_test(test_q8_0_quantize_is_byte_identical_to_ggml),
        cmocka_unit_test(test_dequant_row_every_type),
        cmocka_unit_test(test_pool_runs_every_thread_index_once_per_call),
        cmocka_unit_test(test_pool_split_covers_range),
        cmocka_unit_test(test_matmul_matches_double_reference),
        cmocka_unit_test(test_matmul_same_bits_for_1_to_4_threads),
        cmocka_unit_test(test_matmul_rows_do_not_depend_on_the_batch),
        cmocka_unit_test(test_matmul_prepared_reuses_converted_x),
        cmocka_unit_test(test_matmul_q8_0_vnni_equals_avx2_bitwise),
        cmocka_unit_test(test_matmul_q8_0_r8_paths_equal_bitwise),
        cmocka_unit_test(test_rmsnorm_matches_reference),
        cmocka_unit_test(test_rope_table_and_rotation),
        cmocka_unit_test(test_exp_polynomial_within_2_ulp),
        cmocka_unit_test(test_swiglu_softmax_add_match_reference),
        cmocka_unit_test(test_attention_gqa_paged_matches_naive),
        cmocka_unit_test(test_attention_batch_and_per_kv_head_equal_single_calls),
        cmocka_unit_test(test_env_forces_path),
    };
    return cmocka_run_group_tests_name("kernels", tests, group_setup, group_teardown);
}
