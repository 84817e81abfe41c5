/*
 * matmul: y = x W^T for F32, F16, BF16 and Q8_0 weights (see matmul.h).
 *
 * The scalar code (kc_rows_scalar) is the reference and the fallback; the
 * AVX2 code computes the same sums in tiles:
 *
 *   for each chunk [k0, k1) of the n_in dimension   (x chunk for all tokens in L2)
 *     for each group of 4 rows of this thread       (4 rows x chunk in L1)
 *       for each group of 3 tokens
 *         12 accumulators (4 rows x 3 tokens) of 8 lanes, 16 ymm registers
 *         with the 3 x vectors and the converted weight vector
 *
 * Weights are converted to f32 as they are loaded (F16: vcvtph2ps, BF16: a
 * 16-bit shift), x was converted once by kc_matmul_prepare. Q8_0 multiplies
 * int8 by int8 with vpmaddubsw on |w| and sign(x, w), sums pairs to int32
 * with vpmaddwd and scales each block's int32 lanes by d_w * d_x in f32, as
 * ggml's ggml_vec_dot_q8_0_q8_0 does.
 */
#include "kernels/cpu/matmul.h"

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dtype.h"
#include "kernels/cpu/pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KC_X86         1
#define KC_AVX2        __attribute__((target("avx2,fma,f16c")))
#define KC_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline
#endif

/* Floats of x per chunk for all tokens together: 64 Ki floats = 256 KiB,
 * a quarter of this machine's 1 MiB L2 per core. */
#ifndef KC_MM_CHUNK_FLOATS
#define KC_MM_CHUNK_FLOATS (1 << 16)
#endif

/* Converting x in parallel pays off above this many values. */
#define KC_MM_PREP_PARALLEL (1 << 16)

struct kc_scratch {
    int max_tokens, max_n_in;
    void *buf; /* 4 * max_tokens * max_n_in bytes + slack, 64-byte aligned */
    /* what kc_matmul_prepare left */
    int type, n_tokens, n_in;
    int xs;          /* elements from one token's row of xf or xq to the next */
    const float *xf; /* (n_tokens, xs): x for F32, x rounded for F16/BF16 */
    int8_t *xq;      /* (n_tokens, xs) Q8_0 values */
    float *xd;       /* (n_tokens, n_in / 32) Q8_0 scales */
};

int kc_scratch_create(struct kc_scratch **out, int max_tokens, int max_n_in)
{
    *out = NULL;
    if (max_tokens < 1 || max_n_in < 1)
        return -EINVAL;
    struct kc_scratch *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    size_t n = (size_t)max_tokens * (size_t)max_n_in;
    size_t bytes = 4 * (n + (size_t)max_tokens * 32) + 256;
    s->buf = aligned_alloc(64, bytes);
    if (!s->buf) {
        free(s);
        return -ENOMEM;
    }
    s->max_tokens = max_tokens;
    s->max_n_in = max_n_in;
    s->type = -1;
    *out = s;
    return 0;
}

void kc_scratch_destroy(struct kc_scratch *s)
{
    if (!s)
        return;
    free(s->buf);
    free(s);
}

/* ---- converting x ---- */

struct kc_prep {
    struct kc_scratch *s;
    const float *x;
};

static void kc_prep_tokens(struct kc_scratch *s, const float *x, int t0, int t1)
{
    const int n = s->n_in;
    for (int t = t0; t < t1; t++) {
        const float *xt = x + (size_t)t * n;
        float *xf = (float *)s->xf + (size_t)t * s->xs;
        switch (s->type) {
        case KC_TYPE_F32:
            memcpy(xf, xt, (size_t)n * sizeof *xf);
            break;
        case KC_TYPE_F16:
            kc_round_fp16_row(xf, xt, n);
            break;
        case KC_TYPE_BF16:
            kc_round_bf16_row(xf, xt, n);
            break;
        case KC_TYPE_Q8_0:
            kc_quantize_q8_0_split(s->xq + (size_t)t * s->xs, s->xd + (size_t)t * (n / KC_QK8_0),
                                   xt, n);
            break;
        }
    }
}

static void kc_prep_thread(void *ctx, int i, int n)
{
    struct kc_prep *job = ctx;
    int t0, t1;
    kc_pool_split(job->s->n_tokens, 1, n, i, &t0, &t1);
    if (t0 < t1)
        kc_prep_tokens(job->s, job->x, t0, t1);
}

void kc_matmul_prepare(struct kc_pool *p, struct kc_scratch *s, const float *x, int wtype,
                       int n_tokens, int n_in)
{
    assert(kc_type_supported(wtype) && n_tokens >= 1 && n_in >= 1);
    assert(wtype != KC_TYPE_Q8_0 || n_in % KC_QK8_0 == 0);
    s->type = wtype;
    s->n_tokens = n_tokens;
    s->n_in = n_in;
    s->xs = n_in;
    if (wtype == KC_TYPE_F32 && n_tokens == 1) {
        s->xf = x;
        return;
    }
    assert(n_tokens <= s->max_tokens && n_in <= s->max_n_in);
    /* Token rows a multiple of 4 KiB apart (n_in = 4096: 16 KiB in f32, 4 KiB
     * in int8) fall into the same few L1/L2 sets, and the chunk of x that
     * should stay in L2 evicts itself: a 64-byte pad between rows took the
     * f32 prefill (4096 x 4096, 128 tokens, 1 thread) from 57 to NN GFLOP/s. */
    int esize = wtype == KC_TYPE_Q8_0 ? 1 : 4;
    s->xs = (n_in * esize + 63) / 64 * 64 / esize;
    if (n_tokens > 1 && (s->xs * esize) % 1024 == 0)
        s->xs += 64 / esize;
    size_t n = (size_t)n_tokens * s->xs;
    s->xf = s->buf;
    s->xq = s->buf;
    s->xd = (float *)((char *)s->buf + (n + 63) / 64 * 64);
    if (n >= KC_MM_PREP_PARALLEL && kc_pool_threads(p) > 1 && n_tokens > 1) {
        struct kc_prep job = {s, x};
        kc_pool_run(p, kc_prep_thread, &job);
    } else {
        kc_prep_tokens(s, x, 0, n_tokens);
    }
}

/* ---- the products ---- */

struct kc_mm {
    float *y;      /* (n_tokens, n_out) */
    const char *w; /* (n_out, n_in) of type */
    size_t ws;     /* bytes per weight row */
    int type, n_tokens, n_in, n_out;
    int xs;           /* elements between token rows of xf / xq */
    const float *xf;  /* (n_tokens, xs) */
    const int8_t *xq; /* (n_tokens, xs) */
    const float *xd;  /* (n_tokens, n_in / 32) */
};

/* weight k of a row, as f32 */
static inline float kc_w1(int type, const char *row, int k)
{
    if (type == KC_TYPE_F32) {
        float f;
        memcpy(&f, row + 4 * (size_t)k, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, row + 2 * (size_t)k, 2);
    return type == KC_TYPE_F16 ? kc_fp16_to_fp32(h) : kc_bf16_to_fp32(h);
}

/* The reference: one dot product per (row, token), in order. */
static void kc_rows_scalar(const struct kc_mm *m, int lo, int hi)
{
    const int n_in = m->n_in, nb = n_in / KC_QK8_0;
    for (int o = lo; o < hi; o++) {
        const char *row = m->w + (size_t)o * m->ws;
        for (int t = 0; t < m->n_tokens; t++) {
            float sum = 0.0f;
            if (m->type == KC_TYPE_Q8_0) {
                const int8_t *qx = m->xq + (size_t)t * m->xs;
                const float *dx = m->xd + (size_t)t * nb;
                for (int b = 0; b < nb; b++) {
                    struct kc_block_q8_0 blk;
                    memcpy(&blk, row + b * sizeof blk, sizeof blk);
                    int sumi = 0;
                    for (int j = 0; j < KC_QK8_0; j++)
                        sumi += blk.qs[j] * qx[b * KC_QK8_0 + j];
                    sum += sumi * (kc_fp16_to_fp32(blk.d) * dx[b]);
                }
            } else {
                const float *xt = m->xf + (size_t)t * m->xs;
                for (int i = 0; i < n_in; i++)
                    sum += kc_w1(m->type, row, i) * xt[i];
            }
            m->y[(size_t)t * m->n_out + o] = sum;
        }
    }
}

#ifdef KC_X86

#define KC_RM 4 /* weight rows per tile */
#define KC_RN 3 /* tokens per tile */

static KC_AVX2_INLINE __m256 kc_load_w8(int type, const char *row, int k)
{
    if (type == KC_TYPE_F32)
        return _mm256_loadu_ps((const float *)row + k);
    __m128i h = _mm_loadu_si128((const __m128i *)(row + 2 * (size_t)k));
    if (type == KC_TYPE_F16)
        return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static KC_AVX2_INLINE float kc_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* the four sums of a, b, c, d */
static KC_AVX2_INLINE __m128 kc_hsum4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* y[t*ys + r] (+)= the reduced acc[r][t] (+ the scalar tail); add: accumulate
 * onto the partial sums of the previous chunks */
static KC_AVX2_INLINE void kc_tile_store(int rm, int rn, __m256 acc[KC_RM][KC_RN], float *y, int ys,
                                         int add, const float tail[KC_RM][KC_RN])
{
#pragma GCC unroll 3
    for (int t = 0; t < rn; t++) {
        float *yt = y + (size_t)t * ys;
        if (rm == 4) {
            __m128 s = kc_hsum4(acc[0][t], acc[1][t], acc[2][t], acc[3][t]);
            if (tail)
                s = _mm_add_ps(s, _mm_setr_ps(tail[0][t], tail[1][t], tail[2][t], tail[3][t]));
            if (add)
                s = _mm_add_ps(s, _mm_loadu_ps(yt));
            _mm_storeu_ps(yt, s);
        } else {
            for (int r = 0; r < rm; r++) {
                float s = kc_hsum(acc[r][t]) + (tail ? tail[r][t] : 0.0f);
                yt[r] = add ? yt[r] + s : s;
            }
        }
    }
}

/* rm rows (from w, ws bytes apart) x rn tokens (from x, xs floats apart),
 * over [k0, k1) */
static KC_AVX2_INLINE void kc_tile_f(int type, int rm, int rn, const char *w, size_t ws,
                                     const float *x, int xs, float *y, int ys, int k0, int k1,
                                     int add)
{
    __m256 acc[KC_RM][KC_RN];
#pragma GCC unroll 4
    for (int r = 0; r < rm; r++)
#pragma GCC unroll 3
        for (int t = 0; t < rn; t++)
            acc[r][t] = _mm256_setzero_ps();
    int k = k0;
    for (; k + 8 <= k1; k += 8) {
        __m256 xv[KC_RN];
#pragma GCC unroll 3
        for (int t = 0; t < rn; t++)
            xv[t] = _mm256_loadu_ps(x + (size_t)t * xs + k);
#pragma GCC unroll 4
        for (int r = 0; r < rm; r++) {
            __m256 wv = kc_load_w8(type, w + r * ws, k);
#pragma GCC unroll 3
            for (int t = 0; t < rn; t++)
                acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    if (k == k1) {
        kc_tile_store(rm, rn, acc, y, ys, add, NULL);
        return;
    }
    /* n_in % 8 leftover values, only in the last chunk */
    float tail[KC_RM][KC_RN] = {{0}};
    for (; k < k1; k++)
        for (int r = 0; r < rm; r++)
            for (int t = 0; t < rn; t++)
                tail[r][t] += kc_w1(type, w + r * ws, k) * x[(size_t)t * xs + k];
    kc_tile_store(rm, rn, acc, y, ys, add, tail);
}

/* rm rows x all tokens, over [k0, k1) */
static KC_AVX2_INLINE void kc_tokens_f(int type, int rm, const struct kc_mm *m, int r, int k0,
                                       int k1, int add)
{
    const char *w = m->w + (size_t)r * m->ws;
    int t = 0;
    for (; t + KC_RN <= m->n_tokens; t += KC_RN)
        kc_tile_f(type, rm, KC_RN, w, m->ws, m->xf + (size_t)t * m->xs, m->xs,
                  m->y + (size_t)t * m->n_out + r, m->n_out, k0, k1, add);
    float *y = m->y + (size_t)t * m->n_out + r;
    const float *x = m->xf + (size_t)t * m->xs;
    switch (m->n_tokens - t) {
    case 2:
        kc_tile_f(type, rm, 2, w, m->ws, x, m->xs, y, m->n_out, k0, k1, add);
        break;
    case 1:
        kc_tile_f(type, rm, 1, w, m->ws, x, m->xs, y, m->n_out, k0, k1, add);
        break;
    }
}

/* the n_in chunk: all tokens' x chunk fits KC_MM_CHUNK_FLOATS */
static int kc_chunk(int n_tokens, int n_in, int align)
{
    int kc = KC_MM_CHUNK_FLOATS / n_tokens / align * align;
    if (kc < 256)
        kc = 256;
    return kc >= n_in ? n_in : kc;
}

static KC_AVX2_INLINE void kc_rows_f_avx2_t(int type, const struct kc_mm *m, int lo, int hi)
{
    const int kc = kc_chunk(m->n_tokens, m->n_in, 32);
    for (int k0 = 0; k0 < m->n_in; k0 += kc) {
        int k1 = k0 + kc < m->n_in ? k0 + kc : m->n_in;
        int r = lo;
        for (; r + KC_RM <= hi; r += KC_RM)
            kc_tokens_f(type, KC_RM, m, r, k0, k1, k0 > 0);
        for (; r < hi; r++)
            kc_tokens_f(type, 1, m, r, k0, k1, k0 > 0);
    }
}

KC_AVX2 static void kc_rows_f32_avx2(const struct kc_mm *m, int lo, int hi)
{
    kc_rows_f_avx2_t(KC_TYPE_F32, m, lo, hi);
}

KC_AVX2 static void kc_rows_f16_avx2(const struct kc_mm *m, int lo, int hi)
{
    kc_rows_f_avx2_t(KC_TYPE_F16, m, lo, hi);
}

KC_AVX2 static void kc_rows_bf16_avx2(const struct kc_mm *m, int lo, int hi)
{
    kc_rows_f_avx2_t(KC_TYPE_BF16, m, lo, hi);
}

/* Q8_0: rm rows x rn tokens over blocks [b0, b1) */
static KC_AVX2_INLINE void kc_tile_q8(int rm, int rn, const char *w, size_t ws, const int8_t *xq,
                                      int xs, const float *xd, int nb, float *y, int ys, int b0,
                                      int b1, int add)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[KC_RM][KC_RN];
#pragma GCC unroll 4
    for (int r = 0; r < rm; r++)
#pragma GCC unroll 3
        for (int t = 0; t < rn; t++)
            acc[r][t] = _mm256_setzero_ps();
    for (int b = b0; b < b1; b++) {
#pragma GCC unroll 4
        for (int r = 0; r < rm; r++) {
            const struct kc_block_q8_0 *blk = (const struct kc_block_q8_0 *)(w + r * ws) + b;
            const __m256i qw = _mm256_loadu_si256((const __m256i *)blk->qs);
            const __m256i aw = _mm256_abs_epi8(qw);
            const __m256 dw = _mm256_set1_ps(_cvtsh_ss(blk->d));
#pragma GCC unroll 3
            for (int t = 0; t < rn; t++) {
                const __m256i qx =
                    _mm256_loadu_si256((const __m256i *)(xq + (size_t)t * xs + b * KC_QK8_0));
                const __m256i p =
                    _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(qx, qw)), ones);
                const __m256 d = _mm256_mul_ps(dw, _mm256_set1_ps(xd[(size_t)t * nb + b]));
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, acc[r][t]);
            }
        }
    }
    kc_tile_store(rm, rn, acc, y, ys, add, NULL);
}

static KC_AVX2_INLINE void kc_tokens_q8(int rm, const struct kc_mm *m, int r, int b0, int b1,
                                        int add)
{
    const char *w = m->w + (size_t)r * m->ws;
    const int nb = m->n_in / KC_QK8_0;
    int t = 0;
    for (; t + KC_RN <= m->n_tokens; t += KC_RN)
        kc_tile_q8(rm, KC_RN, w, m->ws, m->xq + (size_t)t * m->xs, m->xs, m->xd + (size_t)t * nb,
                   nb, m->y + (size_t)t * m->n_out + r, m->n_out, b0, b1, add);
    float *y = m->y + (size_t)t * m->n_out + r;
    const int8_t *xq = m->xq + (size_t)t * m->xs;
    const float *xd = m->xd + (size_t)t * nb;
    switch (m->n_tokens - t) {
    case 2:
        kc_tile_q8(rm, 2, w, m->ws, xq, m->xs, xd, nb, y, m->n_out, b0, b1, add);
        break;
    case 1:
        kc_tile_q8(rm, 1, w, m->ws, xq, m->xs, xd, nb, y, m->n_out, b0, b1, add);
        break;
    }
}

KC_AVX2 static void kc_rows_q8_avx2(const struct kc_mm *m, int lo, int hi)
{
    /* int8 x is a quarter of f32: the same bytes per chunk hold 4x the values */
    const int nb = m->n_in / KC_QK8_0;
    int kb = KC_MM_CHUNK_FLOATS * 4 / KC_QK8_0 / m->n_tokens;
    if (kb < 8)
        kb = 8;
    for (int b0 = 0; b0 < nb; b0 += kb) {
        int b1 = b0 + kb < nb ? b0 + kb : nb;
        int r = lo;
        for (; r + KC_RM <= hi; r += KC_RM)
            kc_tokens_q8(KC_RM, m, r, b0, b1, b0 > 0);
        for (; r < hi; r++)
            kc_tokens_q8(1, m, r, b0, b1, b0 > 0);
    }
}
#endif /* KC_X86 */

static void kc_mm_thread(void *ctx, int i, int n)
{
    const struct kc_mm *m = ctx;
    int lo, hi;
    kc_pool_split(m->n_out, 4, n, i, &lo, &hi);
    if (lo >= hi)
        return;
#ifdef KC_X86
    if (kc_cpu_isa() == KC_ISA_AVX2) {
        switch (m->type) {
        case KC_TYPE_F32:
            kc_rows_f32_avx2(m, lo, hi);
            return;
        case KC_TYPE_F16:
            kc_rows_f16_avx2(m, lo, hi);
            return;
        case KC_TYPE_BF16:
            kc_rows_bf16_avx2(m, lo, hi);
            return;
        case KC_TYPE_Q8_0:
            kc_rows_q8_avx2(m, lo, hi);
            return;
        }
    }
#endif
    kc_rows_scalar(m, lo, hi);
}

void kc_matmul_prepared(struct kc_pool *p, float *y, const void *w, int n_out,
                        const struct kc_scratch *s)
{
    assert(s->type >= 0 && n_out >= 1);
    struct kc_mm m = {
        .y = y,
        .w = w,
        .ws = kc_type_row_size(s->type, s->n_in),
        .type = s->type,
        .n_tokens = s->n_tokens,
        .n_in = s->n_in,
        .n_out = n_out,
        .xs = s->xs,
        .xf = s->xf,
        .xq = s->xq,
        .xd = s->xd,
    };
    kc_pool_run(p, kc_mm_thread, &m);
}

void kc_matmul(struct kc_pool *p, float *y, const float *x, const void *w, int wtype, int n_tokens,
               int n_in, int n_out, struct kc_scratch *s)
{
    kc_matmul_prepare(p, s, x, wtype, n_tokens, n_in);
    kc_matmul_prepared(p, y, w, n_out, s);
}
