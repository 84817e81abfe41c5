/*
 * matmul: y = x W^T for F32, F16, BF16, Q8_0 and Q8_0_R8 weights (see
 * matmul.h).
 *
 * The scalar code (kc_rows_scalar) is the reference and the fallback. The
 * AVX2 code splits the rows across threads and computes tiles of 4 weight
 * rows x 3 tokens: 12 accumulators of 8 lanes, which with the 3 x vectors
 * and the converted weight vector fill the 16 ymm registers:
 *
 *   for each block of up to 128 tokens
 *     for each pass [k0, k1) over n_in     (the block's x: half the L2)
 *       for each tile of 4 of the thread's rows    (4 rows x pass: L1)
 *         for each group of 3 tokens
 *
 * With few tokens the 4 rows of a tile come from the 4 quarters of the
 * thread's rows (4 long sequential streams for the prefetcher), with many
 * they are adjacent (kc_plan_rows has the numbers). Decode (1 token) of
 * F32/F16/BF16 uses a 4-row x 1-token kernel over all of n_in (kc_rows4_f).
 *
 * Batch invariance. A token's results must be the same bits whatever else
 * is in its batch (a request's greedy output, or its seeded sample, must
 * not depend on the server's load), so the reduction order of y[t][o] is a
 * function of n_in alone, the same in the decode kernel, every tile shape
 * and every pass size, for any thread count: n_in is cut in fixed chunks of
 * KC_MM_K values (Q8_0: KC_MM_KB blocks); within a chunk one 8-lane
 * accumulator per (row, token) takes the products in order (F types: one
 * FMA per 8 values; Q8_0: one FMA per block), then its 8 lanes are summed
 * as ((0+1)+(2+3))+((4+5)+(6+7)) (kc_hsum4, also for single rows); the n_in
 * % 8 leftover values are summed in order in f32 and added to the last
 * chunk's sum; and y = chunk 0, then y + chunk 1, y + chunk 2, ... Passes
 * and token blocks only decide when the chunks are computed. The former
 * code chunked n_in by n_tokens (128 Ki floats / n_tokens) and gave decode
 * 2 accumulators per row, so a token's logits moved by ~1e-7 with its
 * batch. The fixed order costs little: decode with 4 FMA chains instead
 * of 8 streams the weights from DRAM as fast (kc_rows4_f has the numbers;
 * weights that sit in cache lose up to 25%); chunk ends inside a
 * pass (one horizontal sum per 1024 values) are within the noise of the
 * prefill numbers; blocks of 128 tokens are faster past 128 tokens (1
 * thread, 512 tokens, F16 2048->768: 77 -> 93 GFLOP/s, F32 4096x4096: 70 ->
 * 85) where the former chunks got small, but 129-150 tokens of F32 weights
 * that do not fit L3 lose ~10% (4096x4096: 87 -> 77) to a second read of the
 * weights.
 *
 * Weights are converted to f32 as they are loaded (F16: vcvtph2ps, BF16: a
 * 16-bit shift); x was converted once by kc_matmul_prepare. Q8_0 multiplies
 * int8 by int8 with vpmaddubsw on |w| and sign(x, w), sums pairs to int32
 * with vpmaddwd and scales each block's int32 lanes by d_w * d_x in f32, as
 * ggml's ggml_vec_dot_q8_0_q8_0 does.
 *
 * Q8_0 has a third path, KC_ISA_AVX512VNNI: vpdpbusd on ymm makes the same
 * int32 lanes in one instruction, with tiles of 4 rows x 5 tokens in the 32
 * registers of AVX-512VL and the scale products made 8 blocks at a time;
 * the f32 operations are the AVX2 path's, so its results are too, bit for
 * bit. bench_kernels --tokens, 2 threads, best of 3 runs, GFLOP/s AVX2 ->
 * VNNI: 4096x4096 2 tokens 137 -> 208, 7: 145 -> 258, 16: 146 -> 263, 128:
 * 149 -> 287; 768->2048 7: 138 -> 219, 16: 140 -> 234, 128: 145 -> 286.
 * The dim-768 model's 128-token prefill, 2 threads: 869 -> 1521 tok/s;
 * its decode (1 token, memory-bound) does not change. kc_tile_q8_vnni has
 * the details.
 *
 * Q8_0_R8, Q8_0 repacked so that one vpdpbusd serves 8 blocks, has a
 * kernel of its own on the VNNI path (kc_tile_r8_vnni, 1.5-2x the Q8_0
 * kernel's speed with a few tokens) and its own reduction order, which the
 * scalar reference (kc_dot_r8) follows bit for bit.
 *
 * F32/F16/BF16 have no AVX-512 path: decode runs at the memory bandwidth
 * already, and this Zen 4 executes a 512-bit FMA as two 256-bit halves: a
 * register-bound FMA loop peaks at 116 GFLOP/s per core with ymm and 116
 * with zmm. Prefill reaches 75-100 of those 116 with AVX2
 * (tests/bench_kernels.c). The 32 registers of AVX-512VL would allow 4x6
 * tiles (the same bits): F16, 1 thread, 6-96 tokens, 768->2048 105-110 ->
 * 107-111 GFLOP/s, 4096x4096 at 24-96 tokens 91-93 -> 95-98: within 5%,
 * not taken.
 */
#include "kernels/cpu/matmul.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
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

/* The reduction order (see the file comment): values of n_in per chunk for
 * F32/F16/BF16, blocks of 32 per chunk for Q8_0. Fixed: they decide the
 * bits of every result. */
#define KC_MM_K  1024
#define KC_MM_KB 128

/* Bytes of x per pass over n_in for all the tokens of a block together: 512
 * KiB, half this machine's 1 MiB L2 per core. 4096x4096, 128 tokens, 1
 * thread, F32: passes of 128 KiB 80 GFLOP/s, 256 KiB 86, 512 KiB 90, 1 MiB
 * 79, one pass 75 (F16 within 5% for all). */
#ifndef KC_MM_CHUNK_BYTES
#define KC_MM_CHUNK_BYTES (1 << 19)
#endif

/* Tokens per block: one chunk of x of each (F32: KC_MM_K floats, Q8_0:
 * KC_MM_KB blocks of int8, both 4 KiB) for all fills KC_MM_CHUNK_BYTES. */
#define KC_MM_BLOCK_TOKENS (KC_MM_CHUNK_BYTES / (4 * KC_MM_K))
_Static_assert(KC_MM_K % 8 == 0 && KC_MM_KB * KC_QK8_0 == 4 * KC_MM_K, "chunks of 4 KiB of x");

/* Up to this many tokens a tile's 4 rows come from 4 quarters of the
 * thread's rows (see kc_plan_rows). */
#ifndef KC_MM_STREAM_TOKENS
#define KC_MM_STREAM_TOKENS 16
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
    int8_t *xq;      /* (n_tokens, xs) Q8_0 values (Q8_0_R8: in its column order) */
    float *xd;       /* (n_tokens, n_in / 32) Q8_0 scales */
    int32_t *xc;     /* (n_tokens, n_in / 32) Q8_0_R8: -128 * the sum of each block */
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
    size_t bytes = (4 * (n + (size_t)max_tokens * 32) + 256 + 63) &
                   ~(size_t)63; /* C11: a multiple of the alignment */
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

/* One token of x for Q8_0_R8 weights: quantized as for Q8_0, the values of
 * each group of 8 blocks put in the weights' column order (see matmul.h),
 * and each block's correction for the weights' + 128 */
static void kc_prep_r8(int8_t *q, float *d, int32_t *c, const float *x, int n)
{
    kc_quantize_q8_0_split(q, d, x, n);
    for (int g = 0; g < n / (8 * KC_QK8_0); g++) {
        int8_t *gq = q + g * 8 * KC_QK8_0;
        for (int j = 0; j < 8; j++) {
            int sum = 0;
            for (int i = 0; i < KC_QK8_0; i++)
                sum += gq[j * KC_QK8_0 + i];
            c[g * 8 + j] = -128 * sum;
        }
        /* block j's 4-byte chunk k goes to column k, slot j: an 8 x 8
         * transpose of 4-byte words */
        uint32_t v[64], t[64];
        memcpy(v, gq, sizeof(v));
        for (int k = 0; k < 8; k++)
            for (int j = 0; j < 8; j++)
                t[k * 8 + j] = v[j * 8 + k];
        memcpy(gq, t, sizeof(t));
    }
}

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
        case KC_TYPE_Q8_0_R8:
            kc_prep_r8(s->xq + (size_t)t * s->xs, s->xd + (size_t)t * (n / KC_QK8_0),
                       s->xc + (size_t)t * (n / KC_QK8_0), xt, n);
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
    assert((kc_type_supported(wtype) || wtype == KC_TYPE_Q8_0_R8) && n_tokens >= 1 && n_in >= 1);
    assert(kc_type_row_size(wtype, n_in) > 0);
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
     * in int8) fall into the same few L1/L2 sets. A 64-byte pad between rows:
     * 4096x4096 F16, 128 tokens, 1 thread, 84-88 -> 91-93 GFLOP/s (F32 and
     * Q8_0 unchanged within the noise). */
    const int q8 = wtype == KC_TYPE_Q8_0 || wtype == KC_TYPE_Q8_0_R8;
    int esize = q8 ? 1 : 4;
    s->xs = (n_in * esize + 63) / 64 * 64 / esize;
    if (n_tokens > 1 && (s->xs * esize) % 1024 == 0)
        s->xs += 64 / esize;
    size_t n = (size_t)n_tokens * s->xs;
    s->xf = s->buf;
    s->xq = s->buf;
    s->xd = (float *)((char *)s->buf + (n + 63) / 64 * 64);
    s->xc = (int32_t *)(s->xd + (size_t)n_tokens * (n_in / KC_QK8_0));
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
    int xs;            /* elements between token rows of xf / xq */
    const float *xf;   /* (n_tokens, xs) */
    const int8_t *xq;  /* (n_tokens, xs) */
    const float *xd;   /* (n_tokens, n_in / 32) */
    const int32_t *xc; /* (n_tokens, n_in / 32) */
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

/* The Q8_0_R8 reference (see kc_tile_r8_vnni): per chunk of KC_MM_KB
 * blocks, 8 lanes, lane j taking block j of each group of 8 (its exact int
 * sum times d_w * d_x, fused); the lanes summed as kc_hsum4 does; y = chunk
 * 0, y + chunk 1, ... */
static float kc_dot_r8(const char *row, const int8_t *qx, const float *dx, const int32_t *cx,
                       int nb)
{
    float y = 0.0f;
    for (int c0 = 0; c0 < nb; c0 += KC_MM_KB) {
        const int c1 = c0 + KC_MM_KB < nb ? c0 + KC_MM_KB : nb;
        float lane[8] = {0};
        for (int g0 = c0; g0 < c1; g0 += 8) {
            const unsigned char *gw =
                (const unsigned char *)row + (size_t)g0 * sizeof(struct kc_block_q8_0);
            for (int j = 0; j < 8; j++) {
                int32_t sum = cx[g0 + j]; /* the vpdpbusd sums: (w + 128) x, corrected */
                for (int k = 0; k < 8; k++)
                    for (int i = 0; i < 4; i++)
                        sum += gw[16 + k * 32 + j * 4 + i] * qx[g0 * 32 + k * 32 + j * 4 + i];
                uint16_t h;
                memcpy(&h, gw + 2 * j, 2);
                lane[j] = fmaf((float)sum, kc_fp16_to_fp32(h) * dx[g0 + j], lane[j]);
            }
        }
        const float part = ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
                           ((lane[4] + lane[5]) + (lane[6] + lane[7]));
        y = c0 == 0 ? part : y + part;
    }
    return y;
}

/* The reference: one dot product per (row, token), in order. It is also
 * the fallback without AVX2, slow by design (one FP add chain: the dim-768
 * model decodes at 11 (F32) / 2.8 (F16) / 15 (Q8_0) tok/s on 1 thread). */
static void kc_rows_scalar(const struct kc_mm *m, int lo, int hi)
{
    const int n_in = m->n_in, nb = n_in / KC_QK8_0;
    for (int o = lo; o < hi; o++) {
        const char *row = m->w + (size_t)o * m->ws;
        for (int t = 0; t < m->n_tokens; t++) {
            float sum = 0.0f;
            if (m->type == KC_TYPE_Q8_0_R8) {
                sum = kc_dot_r8(row, m->xq + (size_t)t * m->xs, m->xd + (size_t)t * nb,
                                m->xc + (size_t)t * nb, nb);
            } else if (m->type == KC_TYPE_Q8_0) {
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

/* The four sums of a, b, c, d, each ((v0+v1)+(v2+v3))+((v4+v5)+(v6+v7)):
 * the one horizontal sum of the reduction order (see the file comment). */
static KC_AVX2_INLINE __m128 kc_hsum4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* the sum of a alone, in kc_hsum4's order */
static KC_AVX2_INLINE float kc_hsum1(__m256 a)
{
    return _mm_cvtss_f32(kc_hsum4(a, a, a, a));
}

/*
 * The end of one reduction chunk for one token of a tile: the partial sums
 * a[r] of its rm rows (plus the scalar tail of the last chunk, when n_in %
 * 8 != 0) go to yt[r*yr] (yr = 1: adjacent rows; the streaming layout below
 * puts the 4 rows of a tile q rows apart). add: onto the sum of the
 * previous chunks, as y + part.
 */
static KC_AVX2_INLINE void kc_token_store(int rm, const __m256 *a, float *yt, int yr, int add,
                                          const float *tail)
{
    if (rm == 4) {
        __m128 s = kc_hsum4(a[0], a[1], a[2], a[3]);
        if (tail)
            s = _mm_add_ps(s, _mm_loadu_ps(tail));
        if (yr == 1) {
            if (add)
                s = _mm_add_ps(_mm_loadu_ps(yt), s);
            _mm_storeu_ps(yt, s);
        } else {
            float f[4];
            _mm_storeu_ps(f, s);
            for (int r = 0; r < 4; r++)
                yt[(size_t)r * yr] = add ? yt[(size_t)r * yr] + f[r] : f[r];
        }
    } else {
        for (int r = 0; r < rm; r++) {
            float s = kc_hsum1(a[r]);
            if (tail)
                s = s + tail[r];
            yt[(size_t)r * yr] = add ? yt[(size_t)r * yr] + s : s;
        }
    }
}

/* kc_token_store for the rn tokens of a tile, y[t*ys + r*yr] */
static KC_AVX2_INLINE void kc_tile_store(int rm, int rn, __m256 acc[KC_RM][KC_RN], float *y, int ys,
                                         int yr, int add, const float tail[KC_RM][KC_RN])
{
#pragma GCC unroll 3
    for (int t = 0; t < rn; t++) {
        __m256 a[KC_RM];
        float tl[KC_RM];
#pragma GCC unroll 4
        for (int r = 0; r < rm; r++) {
            a[r] = acc[r][t];
            tl[r] = tail ? tail[r][t] : 0.0f;
        }
        kc_token_store(rm, a, y + (size_t)t * ys, yr, add, tail ? tl : NULL);
    }
}

/* rm rows (from w, ws bytes apart) x rn tokens (from x, xs floats apart),
 * over [k0, k1), k0 a multiple of KC_MM_K: chunk by chunk, each chunk's sum
 * added to y as it ends */
static KC_AVX2_INLINE void kc_tile_f(int type, int rm, int rn, const char *w, size_t ws,
                                     const float *x, int xs, float *y, int ys, int yr, int k0,
                                     int k1)
{
    for (int c0 = k0; c0 < k1; c0 += KC_MM_K) {
        const int c1 = c0 + KC_MM_K < k1 ? c0 + KC_MM_K : k1;
        __m256 acc[KC_RM][KC_RN];
#pragma GCC unroll 4
        for (int r = 0; r < rm; r++)
#pragma GCC unroll 3
            for (int t = 0; t < rn; t++)
                acc[r][t] = _mm256_setzero_ps();
        int k = c0;
        for (; k + 8 <= c1; k += 8) {
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
        if (k == c1) {
            kc_tile_store(rm, rn, acc, y, ys, yr, c0 > 0, NULL);
            continue;
        }
        /* n_in % 8 leftover values, only in the last chunk */
        float tail[KC_RM][KC_RN] = {{0}};
        for (; k < c1; k++)
            for (int r = 0; r < rm; r++)
                for (int t = 0; t < rn; t++)
                    tail[r][t] += kc_w1(type, w + r * ws, k) * x[(size_t)t * xs + k];
        kc_tile_store(rm, rn, acc, y, ys, yr, c0 > 0, tail);
    }
}

/* rm rows (ws bytes apart, results yr apart) x all tokens of m, over [k0, k1) */
static KC_AVX2_INLINE void kc_tokens_f(int type, int rm, const struct kc_mm *m, const char *w,
                                       size_t ws, float *y, int yr, int k0, int k1)
{
    int t = 0;
    for (; t + KC_RN <= m->n_tokens; t += KC_RN)
        kc_tile_f(type, rm, KC_RN, w, ws, m->xf + (size_t)t * m->xs, m->xs,
                  y + (size_t)t * m->n_out, m->n_out, yr, k0, k1);
    const float *x = m->xf + (size_t)t * m->xs;
    y += (size_t)t * m->n_out;
    switch (m->n_tokens - t) {
    case 2:
        kc_tile_f(type, rm, 2, w, ws, x, m->xs, y, m->n_out, yr, k0, k1);
        break;
    case 1:
        kc_tile_f(type, rm, 1, w, ws, x, m->xs, y, m->n_out, yr, k0, k1);
        break;
    }
}

/*
 * Decode: 4 rows, q bytes apart, against one token, all of n_in in one go;
 * per row the same operations as kc_tile_f with rn = 1 (one accumulator per
 * row and chunk), the sum of the chunks kept in a register instead of y.
 * The former kernel gave each row 2 accumulators (8 FMA chains; an order of
 * its own). With 4 chains the loop is latency-bound when the weights are in
 * cache (F16, 1 thread, 768x256: 82 -> 58 GFLOP/s) but decode streams them
 * from DRAM at a fraction of that (dim-768 model step, 1 thread, F16: 141-154
 * tok/s before, 143-160 after). Tried and dropped: 8 rows x 1 accumulator
 * from 8 eighths of the rows (78-82 GFLOP/s in cache, but the model step
 * falls to 111-121 tok/s: 8 short streams), or from 4 quarters in pairs of
 * adjacent rows (72 tok/s).
 */
static KC_AVX2_INLINE void kc_rows4_f(int type, const char *w, size_t q, const float *x, float *y,
                                      size_t yq, int n_in)
{
    __m128 sum = _mm_setzero_ps();
    for (int c0 = 0; c0 < n_in; c0 += KC_MM_K) {
        const int c1 = c0 + KC_MM_K < n_in ? c0 + KC_MM_K : n_in;
        __m256 acc[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            acc[r] = _mm256_setzero_ps();
        int k = c0;
        for (; k + 16 <= c1; k += 16) {
            const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                acc[r] = _mm256_fmadd_ps(kc_load_w8(type, w + r * q, k), x0, acc[r]);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                acc[r] = _mm256_fmadd_ps(kc_load_w8(type, w + r * q, k + 8), x1, acc[r]);
        }
        for (; k + 8 <= c1; k += 8) {
            const __m256 x0 = _mm256_loadu_ps(x + k);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                acc[r] = _mm256_fmadd_ps(kc_load_w8(type, w + r * q, k), x0, acc[r]);
        }
        __m128 part = kc_hsum4(acc[0], acc[1], acc[2], acc[3]);
        if (k < c1) { /* n_in % 8 leftover values, as in kc_tile_f */
            float tail[4] = {0};
            for (; k < c1; k++)
                for (int r = 0; r < 4; r++)
                    tail[r] += kc_w1(type, w + r * q, k) * x[k];
            part = _mm_add_ps(part, _mm_setr_ps(tail[0], tail[1], tail[2], tail[3]));
        }
        sum = c0 == 0 ? part : _mm_add_ps(sum, part);
    }
    float s[4];
    _mm_storeu_ps(s, sum);
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++)
        y[r * yq] = s[r];
}

/*
 * Which rows form a tile. With few tokens (memory-bound) the thread's rows
 * are cut in 4 quarters and a tile takes one row from each, so that each
 * quarter is one long sequential stream. Measured on the dim-768 model's
 * decode step (1 thread, F16): 4 adjacent rows per tile, 53 tok/s (11.6
 * GB/s: rows of 1.5 KB make short streams that the prefetcher keeps
 * restarting); one row at a time, 122 tok/s; 4 quarter streams, 145-152
 * tok/s (32 GB/s); with 2 to 16 tokens quarters beat adjacent rows by
 * 1.3-2x as well. With many tokens (compute-bound, x chunked) adjacent rows
 * win: 4096x4096 F16 at 128 tokens, 2 threads, 175 against 145 GFLOP/s.
 * The grouping of rows does not change any row's result.
 */
struct kc_rowplan {
    int n_tiles; /* tiles of 4 rows */
    int step;    /* first row of tile i: lo + i*step */
    int stride;  /* rows between the 4 rows of a tile */
    int rest;    /* rows [rest, hi) left over, done one by one */
};

static struct kc_rowplan kc_plan_rows(int n_tokens, int lo, int hi)
{
    const int n4 = (hi - lo) / 4;
    if (n_tokens <= KC_MM_STREAM_TOKENS)
        return (struct kc_rowplan){n4, 1, n4, lo + 4 * n4};
    return (struct kc_rowplan){n4, 4, 1, lo + 4 * n4};
}

/* Tokens [t0, t1) of m as a product of their own (y, x rows offset). */
static struct kc_mm kc_token_block(const struct kc_mm *m, int t0, int t1)
{
    struct kc_mm b = *m;
    b.n_tokens = t1 - t0;
    b.y += (size_t)t0 * m->n_out;
    if (m->type == KC_TYPE_Q8_0 || m->type == KC_TYPE_Q8_0_R8) {
        b.xq += (size_t)t0 * m->xs;
        b.xd += (size_t)t0 * (m->n_in / KC_QK8_0);
        b.xc += (size_t)t0 * (m->n_in / KC_QK8_0);
    } else {
        b.xf += (size_t)t0 * m->xs;
    }
    return b;
}

/* How many token blocks: at most KC_MM_BLOCK_TOKENS tokens each. */
static int kc_token_blocks(int n_tokens)
{
    return (n_tokens + KC_MM_BLOCK_TOKENS - 1) / KC_MM_BLOCK_TOKENS;
}

/* The pass over n_in (in units of `chunk`, chunks of `unit` bytes per
 * token): as many whole chunks as let all n_tokens' x fit KC_MM_CHUNK_BYTES */
static int kc_pass(int n_tokens, int chunk, int unit)
{
    int n = KC_MM_CHUNK_BYTES / unit / n_tokens;
    return (n < 1 ? 1 : n) * chunk;
}

static KC_AVX2_INLINE void kc_rows_f_avx2_t(int type, const struct kc_mm *m, int lo, int hi)
{
    if (m->n_tokens == 1) {
        const struct kc_rowplan rp = kc_plan_rows(1, lo, hi);
        for (int i = 0; i < rp.n_tiles; i++) {
            const int r = lo + i * rp.step;
            kc_rows4_f(type, m->w + (size_t)r * m->ws, (size_t)rp.stride * m->ws, m->xf, m->y + r,
                       (size_t)rp.stride, m->n_in);
        }
        for (int r = rp.rest; r < hi; r++)
            kc_tokens_f(type, 1, m, m->w + (size_t)r * m->ws, m->ws, m->y + r, 1, 0, m->n_in);
        return;
    }
    const int n_blocks = kc_token_blocks(m->n_tokens);
    for (int bi = 0; bi < n_blocks; bi++) {
        int t0, t1;
        kc_pool_split(m->n_tokens, 1, n_blocks, bi, &t0, &t1);
        const struct kc_mm b = kc_token_block(m, t0, t1);
        const struct kc_rowplan rp = kc_plan_rows(b.n_tokens, lo, hi);
        const int pass = kc_pass(b.n_tokens, KC_MM_K, KC_MM_K * 4);
        const size_t wstride = (size_t)rp.stride * b.ws;
        for (int k0 = 0; k0 < b.n_in; k0 += pass) {
            const int k1 = k0 + pass < b.n_in ? k0 + pass : b.n_in;
            for (int i = 0; i < rp.n_tiles; i++) {
                const int r = lo + i * rp.step;
                kc_tokens_f(type, 4, &b, b.w + (size_t)r * b.ws, wstride, b.y + r, rp.stride, k0,
                            k1);
            }
            for (int r = rp.rest; r < hi; r++)
                kc_tokens_f(type, 1, &b, b.w + (size_t)r * b.ws, b.ws, b.y + r, 1, k0, k1);
        }
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

/* Q8_0: rm rows (ws bytes apart) x rn tokens over blocks [b0, b1), b0 a
 * multiple of KC_MM_KB, chunk by chunk as kc_tile_f */
static KC_AVX2_INLINE void kc_tile_q8(int rm, int rn, const char *w, size_t ws, const int8_t *xq,
                                      int xs, const float *xd, int nb, float *y, int ys, int yr,
                                      int b0, int b1)
{
    const __m256i ones = _mm256_set1_epi16(1);
    for (int c0 = b0; c0 < b1; c0 += KC_MM_KB) {
        const int c1 = c0 + KC_MM_KB < b1 ? c0 + KC_MM_KB : b1;
        __m256 acc[KC_RM][KC_RN];
#pragma GCC unroll 4
        for (int r = 0; r < rm; r++)
#pragma GCC unroll 3
            for (int t = 0; t < rn; t++)
                acc[r][t] = _mm256_setzero_ps();
        for (int b = c0; b < c1; b++) {
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
        kc_tile_store(rm, rn, acc, y, ys, yr, c0 > 0, NULL);
    }
}

static KC_AVX2_INLINE void kc_tokens_q8(int rm, const struct kc_mm *m, const char *w, size_t ws,
                                        float *y, int yr, int b0, int b1)
{
    const int nb = m->n_in / KC_QK8_0;
    int t = 0;
    for (; t + KC_RN <= m->n_tokens; t += KC_RN)
        kc_tile_q8(rm, KC_RN, w, ws, m->xq + (size_t)t * m->xs, m->xs, m->xd + (size_t)t * nb, nb,
                   y + (size_t)t * m->n_out, m->n_out, yr, b0, b1);
    const int8_t *xq = m->xq + (size_t)t * m->xs;
    const float *xd = m->xd + (size_t)t * nb;
    y += (size_t)t * m->n_out;
    switch (m->n_tokens - t) {
    case 2:
        kc_tile_q8(rm, 2, w, ws, xq, m->xs, xd, nb, y, m->n_out, yr, b0, b1);
        break;
    case 1:
        kc_tile_q8(rm, 1, w, ws, xq, m->xs, xd, nb, y, m->n_out, yr, b0, b1);
        break;
    }
}

/* kc_tokens_q8 for rm = 4 or 1, compiled for AVX2 */
KC_AVX2 static void kc_tokens_q8_avx2(int rm, const struct kc_mm *m, const char *w, size_t ws,
                                      float *y, int yr, int b0, int b1)
{
    if (rm == 4)
        kc_tokens_q8(4, m, w, ws, y, yr, b0, b1);
    else
        kc_tokens_q8(1, m, w, ws, y, yr, b0, b1);
}

/* A Q8_0 kernel for rm = 4 (rows ws bytes apart) or 1 rows x all the tokens
 * of m over blocks [b0, b1): kc_tokens_q8_avx2 or kc_tokens_q8_vnni. */
typedef void (*kc_q8_tokens_fn)(int rm, const struct kc_mm *m, const char *w, size_t ws, float *y,
                                int yr, int b0, int b1);

static void kc_rows_q8(const struct kc_mm *m, int lo, int hi, kc_q8_tokens_fn tokens)
{
    /* as kc_rows_f_avx2_t, decode included (a tile of 4 rows x 1 token
     * keeps up with memory); the x chunk is int8, so the same bytes hold 4x
     * the values of f32 */
    const int nb = m->n_in / KC_QK8_0;
    const int n_blocks = kc_token_blocks(m->n_tokens);
    for (int bi = 0; bi < n_blocks; bi++) {
        int t0, t1;
        kc_pool_split(m->n_tokens, 1, n_blocks, bi, &t0, &t1);
        const struct kc_mm b = kc_token_block(m, t0, t1);
        const struct kc_rowplan rp = kc_plan_rows(b.n_tokens, lo, hi);
        const int pass = kc_pass(b.n_tokens, KC_MM_KB, KC_MM_KB * KC_QK8_0);
        const size_t wstride = (size_t)rp.stride * b.ws;
        for (int b0 = 0; b0 < nb; b0 += pass) {
            const int b1 = b0 + pass < nb ? b0 + pass : nb;
            for (int i = 0; i < rp.n_tiles; i++) {
                const int r = lo + i * rp.step;
                tokens(4, &b, b.w + (size_t)r * b.ws, wstride, b.y + r, rp.stride, b0, b1);
            }
            for (int r = rp.rest; r < hi; r++)
                tokens(1, &b, b.w + (size_t)r * b.ws, b.ws, b.y + r, 1, b0, b1);
        }
    }
}

/*
 * Q8_0 with AVX512_VNNI, on ymm registers (AVX512VL). vpdpbusd sums the
 * same 4 products into each int32 lane as vpmaddubsw + vpmaddwd do in
 * kc_tile_q8, exactly, and every float operation after it is the AVX2
 * code's, in the same order: the results are the AVX2 path's bit for bit
 * (tests/test_kernels.c checks). Measured one thread, weights in L2/L3,
 * 768->2048 (GFLOP/s AVX2 -> VNNI; tests/bench_kernels.c --tokens has the
 * 2-thread figures):
 *
 * - vpdpbusd multiplies unsigned by signed bytes: x goes in offset by 128
 *   (x ^ 0x80, once per token and block) and each block's lanes start from
 *   -128 * (the sum of their 4 weights) (one vpdpbusd per row and block).
 *   That alone, in kc_tile_q8's 4x3 tiles: 64 tokens 74 -> 104. The
 *   AVX2 code's sign trick (|w| times sign(x, w)) instead: 73 -> 90 (one
 *   vpsignb per row and token).
 * - 32 registers: tiles of 4 rows x up to 5 tokens (20 accumulators; 64
 *   tokens 4x4 103, 4x5 108, 4x6 no better), the tokens dealt into
 *   ceil(n / 5) tiles of equal size (16 tokens: 4 x 4, not 5 + 5 + 5 + 1:
 *   +5-10% at 6, 11 and 16 tokens).
 * - The products d_w * d_x of KC_VSUB blocks are made 8 blocks at a time
 *   (8 scales gathered with vpinsrw, one vcvtph2ps, one vmulps per row and
 *   token) into a table that the FMA reads as a broadcast operand, instead
 *   of a vmulss + vbroadcastss per row, token and block: 64 tokens 108 ->
 *   141, 7 tokens 102 -> 122, 2 tokens 92 -> 104. Gathering the scales
 *   through a uint16 array instead defeats store forwarding (1 token 0.65x
 *   of AVX2). One token keeps the product per block (1 token 63 -> 73; the
 *   table: 57).
 *
 * Left per (row, token, block): a register copy, vpdpbusd, vcvtdq2ps and the
 * FMA, ~1.7 cycles; vpdpbusd and the FMA share two pipes on Zen 4, so a loop
 * of nothing else takes 1.0. zmm would not help: Zen 4 runs a 512-bit
 * operation as two 256-bit halves, and keeping the AVX2 order needs each
 * block's 8 lanes added to an accumulator of their own, so 2 blocks in a
 * zmm cost an extract: in a register-only loop 2.0 cycles per (row, token)
 * and 2 blocks with ymm, 2.3 with zmm.
 *
 * Prefetch. With 4 to 16 tokens the kernel is compute-bound in cache (1.8
 * cycles per row, token and block at 8 tokens) but the weights of a real
 * model come from DRAM, and the hardware prefetcher does not keep 4
 * quarter streams far enough ahead: the same 8 tokens took 2.5 cycles. The
 * first tile of tokens therefore prefetches each row KC_Q8_PREFETCH bytes
 * ahead (a line per 2 blocks; within a quarter that runs into the rows of
 * the next tiles). bench_kernels --step, the bench-768 model's matmuls, 2
 * threads, 4 alternating runs, tok/s without -> with: 4 tokens 864-915 ->
 * 940-990, 8 tokens 784-961 -> 1027-1055, 16 tokens 987-1008 -> 1060-1095.
 * One token streams as fast without it; with 2 it lost (445-759 ->
 * 462-630), and past KC_MM_STREAM_TOKENS (adjacent rows) it gained nothing.
 *
 * Row pairs. The scale table and the correction of a row and block serve
 * every token of its tile, so 7 or 8 tokens go in one tile of 2 rows (16
 * accumulators; the 4 rows of a tile in 2 passes, the second from L1)
 * instead of 2 tiles of 4 rows x 4. The same model step, best of 6
 * alternating runs: 8 tokens 1044 -> 1104 tok/s, 16 (2 tiles of 8) 1093 ->
 * 1176, 12 (6 + 6) 1076 -> 1116 but 6 tokens 935 -> 874, so 6 stays as it
 * was. This machine's noise is as large as these gains (one token, the
 * same code both times: 433 and 362).
 */
#define KC_VNNI_TARGET "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"
#define KC_VNNI        __attribute__((target(KC_VNNI_TARGET)))
#define KC_VNNI_INLINE __attribute__((target(KC_VNNI_TARGET), always_inline)) inline

#define KC_VRN  5  /* most tokens per VNNI tile of 4 rows (or 1) */
#define KC_VRN2 8  /* most tokens per VNNI tile of 2 rows */
#define KC_VSUB 16 /* blocks per table of scale products */

/* How far ahead of the row it reads the first tile of tokens prefetches,
 * from how many tokens on (see the comment above) */
#ifndef KC_Q8_PREFETCH
#define KC_Q8_PREFETCH 2048
#endif
#ifndef KC_Q8_PREFETCH_MIN
#define KC_Q8_PREFETCH_MIN 4
#endif

/* -128 * the sum of each 4 weights of qw, the lanes' start for x + 128 */
static KC_VNNI_INLINE __m256i kc_q8_corr_vnni(__m256i qw)
{
    const __m256i zero = _mm256_setzero_si256();
    return _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, _mm256_set1_epi8((char)0x80), qw));
}

/* the scales of blk[0..8) as f32; for n < 8 only the first n count (the
 * rest repeat blk[n - 1]'s, so nothing past the chunk is read) */
static KC_VNNI_INLINE __m256 kc_q8_scales8_vnni(const struct kc_block_q8_0 *blk, int n)
{
    const int l = n < 8 ? n - 1 : 7;
    __m128i h = _mm_cvtsi32_si128(blk[0].d);
    h = _mm_insert_epi16(h, blk[1 < l ? 1 : l].d, 1);
    h = _mm_insert_epi16(h, blk[2 < l ? 2 : l].d, 2);
    h = _mm_insert_epi16(h, blk[3 < l ? 3 : l].d, 3);
    h = _mm_insert_epi16(h, blk[4 < l ? 4 : l].d, 4);
    h = _mm_insert_epi16(h, blk[5 < l ? 5 : l].d, 5);
    h = _mm_insert_epi16(h, blk[6 < l ? 6 : l].d, 6);
    h = _mm_insert_epi16(h, blk[l].d, 7);
    return _mm256_cvtph_ps(h);
}

/* kc_tile_q8 with VNNI, rm = 4 or 1 with rn <= KC_VRN, or rm = 2 with rn <=
 * KC_VRN2: the same sums in the same order;
 * pf: prefetch the weights KC_Q8_PREFETCH bytes ahead of each row */
static KC_VNNI_INLINE void kc_tile_q8_vnni(int pf, int rm, int rn, const char *w, size_t ws,
                                           const int8_t *xq, int xs, const float *xd, int nb,
                                           float *y, int ys, int yr, int b0, int b1)
{
    const __m256i off = _mm256_set1_epi8((char)0x80);
    for (int c0 = b0; c0 < b1; c0 += KC_MM_KB) {
        const int c1 = c0 + KC_MM_KB < b1 ? c0 + KC_MM_KB : b1;
        __m256 acc[KC_RM][KC_VRN2];
#pragma GCC unroll 4
        for (int r = 0; r < rm; r++)
#pragma GCC unroll 8
            for (int t = 0; t < rn; t++)
                acc[r][t] = _mm256_setzero_ps();
        for (int s0 = c0; s0 < c1; s0 += KC_VSUB) {
            const int n = s0 + KC_VSUB < c1 ? KC_VSUB : c1 - s0;
            /* dp[r][t][i] = d_w * d_x of block s0 + i (not for one token) */
            float dp[KC_RM][KC_VRN2][KC_VSUB] __attribute__((aligned(32)));
#pragma GCC unroll 4
            for (int r = 0; r < rm && rn > 1; r++) {
                const struct kc_block_q8_0 *blk = (const struct kc_block_q8_0 *)(w + r * ws) + s0;
                for (int i = 0; i < n; i += 8) {
                    const __mmask8 k8 = n - i >= 8 ? 0xff : (__mmask8)((1u << (n - i)) - 1);
                    const __m256 dw = kc_q8_scales8_vnni(blk + i, n - i);
#pragma GCC unroll 8
                    for (int t = 0; t < rn; t++) {
                        const __m256 dx = _mm256_maskz_loadu_ps(k8, xd + (size_t)t * nb + s0 + i);
                        _mm256_store_ps(&dp[r][t][i], _mm256_mul_ps(dw, dx));
                    }
                }
            }
            for (int i = 0; i < n; i++) {
                const int b = s0 + i;
                __m256i xo[KC_VRN2]; /* x + 128 */
#pragma GCC unroll 8
                for (int t = 0; t < rn; t++)
                    xo[t] = _mm256_xor_si256(
                        _mm256_loadu_si256((const __m256i *)(xq + (size_t)t * xs + b * KC_QK8_0)),
                        off);
#pragma GCC unroll 4
                for (int r = 0; r < rm; r++) {
                    const struct kc_block_q8_0 *blk =
                        (const struct kc_block_q8_0 *)(w + r * ws) + b;
                    if (pf && (i & 1) == 0) /* a line per 2 blocks */
                        _mm_prefetch((const char *)blk + KC_Q8_PREFETCH, _MM_HINT_T0);
                    const __m256i qw = _mm256_loadu_si256((const __m256i *)blk->qs);
                    const __m256i corr = kc_q8_corr_vnni(qw);
                    const __m256 dw =
                        rn == 1 ? _mm256_set1_ps(_cvtsh_ss(blk->d)) : _mm256_setzero_ps();
#pragma GCC unroll 8
                    for (int t = 0; t < rn; t++) {
                        const __m256i p = _mm256_dpbusd_epi32(corr, xo[t], qw);
                        const __m256 d = rn == 1 ? _mm256_mul_ps(dw, _mm256_set1_ps(xd[b]))
                                                 : _mm256_set1_ps(dp[r][t][i]);
                        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), d, acc[r][t]);
                    }
                }
            }
        }
#pragma GCC unroll 8
        for (int t = 0; t < rn; t++) {
            __m256 a[KC_RM];
#pragma GCC unroll 4
            for (int r = 0; r < rm; r++)
                a[r] = acc[r][t];
            kc_token_store(rm, a, y + (size_t)t * ys, yr, c0 > 0, NULL);
        }
    }
}

/*
 * Q8_0_R8 with AVX512_VNNI. In the repacked rows (matmul.h) a 32-byte load
 * holds 4 values of each of 8 blocks, so a vpdpbusd adds to each int32 lane
 * the products of its own block: 8 of them make the 8 blocks' exact dot
 * products, one per lane, and only then does each group of 8 blocks need a
 * vcvtdq2ps, the 8 scale products (one vmulps) and an FMA, where the Q8_0
 * kernel converts, scales and accumulates per block. Per row, token and
 * block that leaves about one vpdpbusd (with x as its memory operand). The
 * weights are stored + 128 (vpdpbusd multiplies unsigned by signed bytes)
 * and each block's sum starts at -128 * (the sum of its x), made once per
 * token by kc_matmul_prepare, so the int32 sums are exact.
 *
 * Tiles of 4 rows (the same row plan and passes as kc_rows_q8) x up to 4
 * tokens: 16 int32 sums and 16 float accumulators. Measured (1 thread,
 * ns per row, token and block, Q8_0 kernel -> this one): 768->2048 in cache,
 * 8 tokens 0.51 -> 0.23; from DRAM 8 tokens 0.55 -> 0.33-0.37, 16 tokens
 * 0.53 -> 0.28, 4 tokens 0.67 -> 0.49, 1 token 1.47 -> 1.25; 2048->768
 * from DRAM, 8 tokens 0.52 -> 0.33. The bench-768 model's matmuls
 * (bench_kernels --step, 3 runs, tok/s Q8_0 -> Q8_0_R8): 8 sequences
 * 1122-1131 -> 1444-1583, 16 sequences 1183-1191 -> 1597-1639, 1 sequence
 * on 1 thread 286-292 -> 312-352 (on 2 threads both are bound by memory).
 */
#define KC_R8RN 4 /* most tokens per Q8_0_R8 tile */

static KC_VNNI_INLINE void kc_tile_r8_vnni(int rm, int rn, const char *w, size_t ws,
                                           const int8_t *xq, int xs, const float *xd,
                                           const int32_t *xc, int nb, float *y, int ys, int yr,
                                           int b0, int b1)
{
    for (int c0 = b0; c0 < b1; c0 += KC_MM_KB) {
        const int c1 = c0 + KC_MM_KB < b1 ? c0 + KC_MM_KB : b1;
        __m256 acc[KC_RM][KC_R8RN];
#pragma GCC unroll 4
        for (int r = 0; r < rm; r++)
#pragma GCC unroll 4
            for (int t = 0; t < rn; t++)
                acc[r][t] = _mm256_setzero_ps();
        for (int g0 = c0; g0 < c1; g0 += 8) {
            const char *gw = w + (size_t)g0 * sizeof(struct kc_block_q8_0);
            __m256i p[KC_RM][KC_R8RN];
#pragma GCC unroll 4
            for (int t = 0; t < rn; t++) {
                const __m256i c = _mm256_loadu_si256((const __m256i *)(xc + (size_t)t * nb + g0));
#pragma GCC unroll 4
                for (int r = 0; r < rm; r++)
                    p[r][t] = c;
            }
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
#pragma GCC unroll 4
                for (int r = 0; r < rm; r++) {
                    const __m256i wv =
                        _mm256_loadu_si256((const __m256i *)(gw + r * ws + 16 + 32 * k));
#pragma GCC unroll 4
                    for (int t = 0; t < rn; t++)
                        p[r][t] = _mm256_dpbusd_epi32(
                            p[r][t], wv,
                            _mm256_loadu_si256((const __m256i *)(xq + (size_t)t * xs +
                                                                 (size_t)g0 * KC_QK8_0 + 32 * k)));
                }
            }
#pragma GCC unroll 4
            for (int r = 0; r < rm; r++) {
                const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(gw + r * ws)));
#pragma GCC unroll 4
                for (int t = 0; t < rn; t++)
                    acc[r][t] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(p[r][t]),
                        _mm256_mul_ps(dw, _mm256_loadu_ps(xd + (size_t)t * nb + g0)), acc[r][t]);
            }
        }
#pragma GCC unroll 4
        for (int t = 0; t < rn; t++) {
            __m256 a[KC_RM];
#pragma GCC unroll 4
            for (int r = 0; r < rm; r++)
                a[r] = acc[r][t];
            kc_token_store(rm, a, y + (size_t)t * ys, yr, c0 > 0, NULL);
        }
    }
}

/*
 * rm rows x all the tokens of m over [b0, b1), in ceil(n / per_tile) tiles of
 * about equal size: Q8_0 tiles (kc_tile_q8_vnni: rm 4 or 1 with per_tile
 * KC_VRN, rm 2 with KC_VRN2) or, r8, Q8_0_R8 ones (kc_tile_r8_vnni, per_tile
 * KC_R8RN).
 */
static KC_VNNI_INLINE void kc_tokens_vnni_t(int r8, int rm, int per_tile, const struct kc_mm *m,
                                            const char *w, size_t ws, float *y, int yr, int b0,
                                            int b1)
{
    const int nb = m->n_in / KC_QK8_0, n = m->n_tokens;
    const int n_tiles = (n + per_tile - 1) / per_tile;
    for (int i = 0, t = 0; t < n; i++) {
        const int rn = n / n_tiles + (i < n % n_tiles);
        const int8_t *xq = m->xq + (size_t)t * m->xs;
        const float *xd = m->xd + (size_t)t * nb;
        const int32_t *xc = r8 ? m->xc + (size_t)t * nb : NULL;
        float *yt = y + (size_t)t * m->n_out;
        const int pf = t == 0 && n >= KC_Q8_PREFETCH_MIN && n <= KC_MM_STREAM_TOKENS;
        /* an R8 tile never has more than KC_R8RN tokens; the clamp only keeps
         * the unused instantiations in bounds */
#define KC_TILE(RN)                                                                                \
    (r8 ? kc_tile_r8_vnni(rm, (RN) < KC_R8RN ? (RN) : KC_R8RN, w, ws, xq, m->xs, xd, xc, nb, yt,   \
                          m->n_out, yr, b0, b1)                                                    \
        : kc_tile_q8_vnni(pf, rm, RN, w, ws, xq, m->xs, xd, nb, yt, m->n_out, yr, b0, b1))
        switch (rn) {
        case 8:
            KC_TILE(8);
            break;
        case 7:
            KC_TILE(7);
            break;
        case 6:
            KC_TILE(6);
            break;
        case 5:
            KC_TILE(5);
            break;
        case 4:
            KC_TILE(4);
            break;
        case 3:
            KC_TILE(3);
            break;
        case 2:
            KC_TILE(2);
            break;
        default:
            KC_TILE(1);
            break;
        }
#undef KC_TILE
        t += rn;
    }
}

/* Whether 4 rows x n tokens go as 2 passes of 2 rows x tiles of 7 or 8
 * tokens (see the comment above) */
static int kc_q8_vnni_pairs(int n)
{
    return n <= KC_MM_STREAM_TOKENS && n / ((n + KC_VRN2 - 1) / KC_VRN2) >= 7;
}

/* kc_tokens_q8_avx2 with VNNI */
KC_VNNI static void kc_tokens_q8_vnni(int rm, const struct kc_mm *m, const char *w, size_t ws,
                                      float *y, int yr, int b0, int b1)
{
    if (rm == 4 && kc_q8_vnni_pairs(m->n_tokens)) {
        kc_tokens_vnni_t(0, 2, KC_VRN2, m, w, ws, y, yr, b0, b1);
        kc_tokens_vnni_t(0, 2, KC_VRN2, m, w + 2 * ws, ws, y + 2 * (size_t)yr, yr, b0, b1);
    } else if (rm == 4) {
        kc_tokens_vnni_t(0, 4, KC_VRN, m, w, ws, y, yr, b0, b1);
    } else {
        kc_tokens_vnni_t(0, 1, KC_VRN, m, w, ws, y, yr, b0, b1);
    }
}

KC_VNNI static void kc_tokens_r8_vnni(int rm, const struct kc_mm *m, const char *w, size_t ws,
                                      float *y, int yr, int b0, int b1)
{
    if (rm == 4)
        kc_tokens_vnni_t(1, 4, KC_R8RN, m, w, ws, y, yr, b0, b1);
    else
        kc_tokens_vnni_t(1, 1, KC_R8RN, m, w, ws, y, yr, b0, b1);
}
#endif /* KC_X86 */

/* Rows [lo, hi) of m, on the path the CPU allows */
static void kc_mm_rows(const struct kc_mm *m, int lo, int hi)
{
#ifdef KC_X86
    const enum kc_isa isa = kc_cpu_isa();
    if (isa >= KC_ISA_AVX2) {
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
            kc_rows_q8(m, lo, hi, isa == KC_ISA_AVX512VNNI ? kc_tokens_q8_vnni : kc_tokens_q8_avx2);
            return;
        case KC_TYPE_Q8_0_R8:
            if (isa == KC_ISA_AVX512VNNI) {
                kc_rows_q8(m, lo, hi, kc_tokens_r8_vnni);
                return;
            }
            break; /* the scalar reference (only VNNI machines repack) */
        }
    }
#endif
    kc_rows_scalar(m, lo, hi);
}

/*
 * The rows are cut in n_chunks chunks (multiples of 4 rows) that the threads
 * take in turn, so that a thread the OS pauses (the API, Redis or a client
 * on the same cores) leaves its share to the others instead of holding up
 * the step. Chunks of at least KC_MM_CHUNK_ROWS rows keep the 4 quarter
 * streams of a chunk long (see kc_plan_rows); at most 4 per thread.
 */
#define KC_MM_CHUNK_ROWS 256

struct kc_mm_job {
    const struct kc_mm *m;
    atomic_int next; /* the next chunk to take */
    int n_chunks;
};

static void kc_mm_thread(void *ctx, int i, int n)
{
    struct kc_mm_job *job = ctx;
    (void)i;
    (void)n;
    for (;;) {
        const int c = atomic_fetch_add_explicit(&job->next, 1, memory_order_relaxed);
        if (c >= job->n_chunks)
            return;
        int lo, hi;
        kc_pool_split(job->m->n_out, 4, job->n_chunks, c, &lo, &hi);
        if (lo < hi)
            kc_mm_rows(job->m, lo, hi);
    }
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
        .xc = s->xc,
    };
    const int n = p ? kc_pool_threads(p) : 1;
    int per = n_out / (KC_MM_CHUNK_ROWS * n);
    per = per < 1 ? 1 : per > 4 ? 4 : per;
    struct kc_mm_job job = {.m = &m, .n_chunks = n * per};
    atomic_init(&job.next, 0);
    kc_pool_run(p, kc_mm_thread, &job);
}

void kc_matmul(struct kc_pool *p, float *y, const float *x, const void *w, int wtype, int n_tokens,
               int n_in, int n_out, struct kc_scratch *s)
{
    kc_matmul_prepare(p, s, x, wtype, n_tokens, n_in);
    kc_matmul_prepared(p, y, w, n_out, s);
}

int kc_q8_0_r8_fits(int n_in)
{
    return n_in > 0 && n_in % (8 * KC_QK8_0) == 0 && kc_cpu_isa() == KC_ISA_AVX512VNNI;
}

void kc_pack_q8_0_r8(void *dst, const void *src, int n_in, int n_out)
{
    assert(n_in % (8 * KC_QK8_0) == 0);
    const size_t ws = kc_type_row_size(KC_TYPE_Q8_0, n_in);
    for (int o = 0; o < n_out; o++) {
        const unsigned char *row = (const unsigned char *)src + (size_t)o * ws;
        unsigned char *out = (unsigned char *)dst + (size_t)o * ws;
        for (int g = 0; g < n_in / (8 * KC_QK8_0); g++) {
            unsigned char *gw = out + (size_t)g * 8 * sizeof(struct kc_block_q8_0);
            for (int j = 0; j < 8; j++) {
                struct kc_block_q8_0 blk;
                memcpy(&blk, row + (size_t)(8 * g + j) * sizeof blk, sizeof blk);
                memcpy(gw + 2 * j, &blk.d, 2);
                for (int k = 0; k < 8; k++)
                    for (int i = 0; i < 4; i++)
                        gw[16 + k * 32 + j * 4 + i] = (unsigned char)(blk.qs[4 * k + i] ^ 0x80);
            }
        }
    }
}
