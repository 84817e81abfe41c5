/*
 * attention: GQA attention of one query token over a paged fp16 KV cache
 * (see attention.h). The reference (kc_attn_kv_ref) is the textbook two
 * passes per query head; the AVX2 code is one pass over position chunks
 * with an online softmax, described (with its measurements) above
 * kc_attn_range_avx2.
 */
#include "kernels/cpu/attention.h"

#include <assert.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dtype.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KC_X86         1
#define KC_AVX2        __attribute__((target("avx2,fma,f16c")))
#define KC_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline
#endif

void kc_kv_store(uint16_t *row, const float *x, int n)
{
    kc_fp32_to_fp16_row(row, x, n);
}

/* The cache row of position p for KV head kv (plus offset d). */
static inline const uint16_t *kc_kv_row(const uint16_t *const *blocks, int block_size, int p,
                                        int row, int off)
{
    return blocks[p / block_size] + (size_t)(p % block_size) * row + off;
}

static void kc_attn_kv_ref(float *out, const float *q, const uint16_t *const *k_blocks,
                           const uint16_t *const *v_blocks, int block_size, int first_pos,
                           int last_pos, int n_heads, int n_kv_heads, int head_dim, float scale,
                           float *scratch, int kv)
{
    const int n_rep = n_heads / n_kv_heads, span = last_pos - first_pos + 1;
    const int row = n_kv_heads * head_dim;
    for (int j = 0; j < n_rep; j++) {
        const int h = kv * n_rep + j;
        const float *qh = q + (size_t)h * head_dim;
        float *s = scratch + (size_t)j * span;
        for (int p = first_pos; p <= last_pos; p++) {
            const uint16_t *k = kc_kv_row(k_blocks, block_size, p, row, kv * head_dim);
            float dot = 0.0f;
            for (int d = 0; d < head_dim; d++)
                dot += qh[d] * kc_fp16_to_fp32(k[d]);
            s[p - first_pos] = dot * scale;
        }
        kc_softmax_ref(s, span);
        float *oh = out + (size_t)h * head_dim;
        memset(oh, 0, (size_t)head_dim * sizeof *oh);
        for (int p = first_pos; p <= last_pos; p++) {
            const uint16_t *v = kc_kv_row(v_blocks, block_size, p, row, kv * head_dim);
            const float w = s[p - first_pos];
            for (int d = 0; d < head_dim; d++)
                oh[d] += w * kc_fp16_to_fp32(v[d]);
        }
    }
}

void kc_attention_ref(float *out, const float *q, const uint16_t *const *k_blocks,
                      const uint16_t *const *v_blocks, int block_size, int first_pos, int last_pos,
                      int n_heads, int n_kv_heads, int head_dim, float scale, float *scratch)
{
    for (int kv = 0; kv < n_kv_heads; kv++)
        kc_attn_kv_ref(out, q, k_blocks, v_blocks, block_size, first_pos, last_pos, n_heads,
                       n_kv_heads, head_dim, scale, scratch, kv);
}

#ifdef KC_X86
/*
 * One pass over the positions in chunks of KC_ATT_CHUNK (a chunk may span
 * blocks: its row pointers are gathered first): scores of every query head
 * of the KV range against the chunk's K rows, an online-softmax update
 * (running max and sum per head; the outputs so far are rescaled when the
 * max grows), then the chunk's V rows weighted into the outputs. Every row
 * is read once, whole when the range is all KV heads, and no scratch grows
 * with the span.
 *
 * Measured, one token, 32 heads / 8 KV heads of 128, 4096 positions, 1
 * thread (16 MiB of KV): two passes KV head by KV head, 5.1 ms (256-byte
 * pieces 2 KiB apart share a few cache sets and restart the prefetchers on
 * every 4 KiB page; software prefetching only got it to 3.4 ms); two passes
 * in position chunks over all KV heads, 2.2 ms, and 1.4-1.9 ms with 8 FMA
 * chains in the score loop instead of 4 (it was latency-bound); this one
 * pass, 1.6-2.2 ms (the same within this machine's noise, but no scratch,
 * and the same bits however the KV heads are split among threads).
 */
#define KC_ATT_CHUNK     16  /* positions per chunk */
#define KC_ATT_MAX_HEADS 256 /* query heads per call (stack buffer of scores) */

static void kc_gather_rows(const uint16_t **rows, const uint16_t *const *blocks, int block_size,
                           int p0, int n, int row, int off)
{
    for (int i = 0; i < n; i++)
        rows[i] = kc_kv_row(blocks, block_size, p0 + i, row, off);
}

static KC_AVX2_INLINE float kc_hsum8(__m256 v)
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

/* s[j*span + i] = scale * q_j . K_i[col ..], for nh (1, 2 or 4) query heads
 * q_j and np positions at a time (np*nh = 8 accumulators: with one position
 * and 4 heads the 4 FMA chains made the loop latency-bound, 64 cycles per
 * position where 8 chains take 32) */
static KC_AVX2_INLINE void kc_attn_dots(int nh, int np, const float *q, int head_dim,
                                        const uint16_t *const *rows, int col, float scale, float *s,
                                        int span)
{
    __m256 acc[8];
#pragma GCC unroll 8
    for (int e = 0; e < np * nh; e++)
        acc[e] = _mm256_setzero_ps();
    for (int d = 0; d < head_dim; d += 8) {
        __m256 kv[8];
#pragma GCC unroll 8
        for (int p = 0; p < np; p++)
            kv[p] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(rows[p] + col + d)));
#pragma GCC unroll 4
        for (int j = 0; j < nh; j++) {
            const __m256 qv = _mm256_loadu_ps(q + (size_t)j * head_dim + d);
#pragma GCC unroll 8
            for (int p = 0; p < np; p++)
                acc[p * nh + j] = _mm256_fmadd_ps(qv, kv[p], acc[p * nh + j]);
        }
    }
    float f[8];
    if (np * nh == 8) {
        _mm_storeu_ps(f, _mm_mul_ps(kc_hsum4(acc[0], acc[1], acc[2], acc[3]), _mm_set1_ps(scale)));
        _mm_storeu_ps(f + 4,
                      _mm_mul_ps(kc_hsum4(acc[4], acc[5], acc[6], acc[7]), _mm_set1_ps(scale)));
    } else {
        for (int e = 0; e < np * nh; e++)
            f[e] = kc_hsum8(acc[e]) * scale;
    }
#pragma GCC unroll 8
    for (int p = 0; p < np; p++)
#pragma GCC unroll 4
        for (int j = 0; j < nh; j++)
            s[(size_t)j * span + p] = f[p * nh + j];
}

static KC_AVX2_INLINE void kc_attn_scores(int nh, const float *q, int head_dim,
                                          const uint16_t *const *rows, int col, int n, float scale,
                                          float *s, int span)
{
    const int np = 8 / nh;
    int i = 0;
    for (; i + np <= n; i += np)
        kc_attn_dots(nh, np, q, head_dim, rows + i, col, scale, s + i, span);
    for (; i < n; i++)
        kc_attn_dots(nh, 1, q, head_dim, rows + i, col, scale, s + i, span);
}

/* out_j[0 .. 8*nv) += sum_i s[j*span + i] * V_i[col .. col + 8*nv), i < n,
 * for nh (1 or 2) heads, out_j = out + j*head_dim */
static KC_AVX2_INLINE void kc_attn_values(int nv, int nh, float *out, int head_dim,
                                          const uint16_t *const *rows, int col, int n,
                                          const float *s, int span)
{
    __m256 acc[2][4];
#pragma GCC unroll 2
    for (int j = 0; j < nh; j++)
#pragma GCC unroll 4
        for (int c = 0; c < nv; c++)
            acc[j][c] = _mm256_loadu_ps(out + (size_t)j * head_dim + 8 * c);
    for (int i = 0; i < n; i++) {
        const uint16_t *v = rows[i] + col;
        __m256 vv[4];
#pragma GCC unroll 4
        for (int c = 0; c < nv; c++)
            vv[c] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + 8 * c)));
#pragma GCC unroll 2
        for (int j = 0; j < nh; j++) {
            const __m256 w = _mm256_broadcast_ss(s + (size_t)j * span + i);
#pragma GCC unroll 4
            for (int c = 0; c < nv; c++)
                acc[j][c] = _mm256_fmadd_ps(w, vv[c], acc[j][c]);
        }
    }
#pragma GCC unroll 2
    for (int j = 0; j < nh; j++)
#pragma GCC unroll 4
        for (int c = 0; c < nv; c++)
            _mm256_storeu_ps(out + (size_t)j * head_dim + 8 * c, acc[j][c]);
}

/* the n_rep query heads of one KV head (q and s for the first of them)
 * against n positions */
static KC_AVX2_INLINE void kc_attn_scores_group(const float *q, int n_rep, int head_dim,
                                                const uint16_t *const *rows, int col, int n,
                                                float scale, float *s, int span)
{
    for (int j = 0; j < n_rep;) {
        const float *qj = q + (size_t)j * head_dim;
        float *sj = s + (size_t)j * span;
        if (n_rep - j >= 4) {
            kc_attn_scores(4, qj, head_dim, rows, col, n, scale, sj, span);
            j += 4;
        } else if (n_rep - j >= 2) {
            kc_attn_scores(2, qj, head_dim, rows, col, n, scale, sj, span);
            j += 2;
        } else {
            kc_attn_scores(1, qj, head_dim, rows, col, n, scale, sj, span);
            j += 1;
        }
    }
}

static KC_AVX2_INLINE void kc_attn_values_group(float *out, int n_rep, int head_dim,
                                                const uint16_t *const *rows, int col, int n,
                                                const float *s, int span)
{
    for (int j = 0; j < n_rep; j += 2) {
        const int two = n_rep - j >= 2;
        const float *sj = s + (size_t)j * span;
        float *oj = out + (size_t)j * head_dim;
        int d = 0;
        for (; d + 32 <= head_dim; d += 32) {
            if (two)
                kc_attn_values(4, 2, oj + d, head_dim, rows, col + d, n, sj, span);
            else
                kc_attn_values(4, 1, oj + d, head_dim, rows, col + d, n, sj, span);
        }
        for (; d < head_dim; d += 8) {
            if (two)
                kc_attn_values(1, 2, oj + d, head_dim, rows, col + d, n, sj, span);
            else
                kc_attn_values(1, 1, oj + d, head_dim, rows, col + d, n, sj, span);
        }
    }
}

/* KV heads [kv0, kv1), online softmax (see above) */
KC_AVX2 static void kc_attn_range_avx2(float *out, const float *q, const uint16_t *const *k_blocks,
                                       const uint16_t *const *v_blocks, int block_size,
                                       int first_pos, int last_pos, int n_heads, int n_kv_heads,
                                       int head_dim, float scale, int kv0, int kv1)
{
    const int n_rep = n_heads / n_kv_heads, span = last_pos - first_pos + 1;
    const int row = n_kv_heads * head_dim, off = kv0 * head_dim;
    const int nh = (kv1 - kv0) * n_rep; /* query heads in the range */
    const size_t group = (size_t)n_rep * head_dim;
    float sc[KC_ATT_MAX_HEADS * KC_ATT_CHUNK]; /* (nh, KC_ATT_CHUNK) scores, then weights */
    float max[KC_ATT_MAX_HEADS];
    double sum[KC_ATT_MAX_HEADS];
    const uint16_t *krows[KC_ATT_CHUNK], *vrows[KC_ATT_CHUNK];
    float *o = out + kv0 * group; /* (nh, head_dim) */
    assert(nh <= KC_ATT_MAX_HEADS);

    memset(o, 0, (size_t)nh * head_dim * sizeof *o);
    for (int h = 0; h < nh; h++) {
        max[h] = -INFINITY;
        sum[h] = 0.0;
    }
    for (int c0 = 0; c0 < span; c0 += KC_ATT_CHUNK) {
        const int n = span - c0 < KC_ATT_CHUNK ? span - c0 : KC_ATT_CHUNK;
        kc_gather_rows(krows, k_blocks, block_size, first_pos + c0, n, row, off);
        kc_gather_rows(vrows, v_blocks, block_size, first_pos + c0, n, row, off);
        for (int kv = kv0; kv < kv1; kv++)
            kc_attn_scores_group(q + kv * group, n_rep, head_dim, krows, (kv - kv0) * head_dim, n,
                                 scale, sc + (size_t)(kv - kv0) * n_rep * KC_ATT_CHUNK,
                                 KC_ATT_CHUNK);
        for (int h = 0; h < nh; h++) {
            float *sh = sc + (size_t)h * KC_ATT_CHUNK, m = max[h];
            for (int i = 0; i < n; i++)
                m = sh[i] > m ? sh[i] : m;
            if (m > max[h]) { /* rescale what came before to the new max */
                float f;
                kc_exp_row(&f, &(float){max[h] - m}, 1);
                sum[h] *= f;
                const __m256 vf = _mm256_set1_ps(f);
                float *oh = o + (size_t)h * head_dim;
                for (int d = 0; d < head_dim; d += 8)
                    _mm256_storeu_ps(oh + d, _mm256_mul_ps(_mm256_loadu_ps(oh + d), vf));
                max[h] = m;
            }
            for (int i = 0; i < n; i++)
                sh[i] -= m;
            kc_exp_row(sh, sh, n);
            for (int i = 0; i < n; i++)
                sum[h] += sh[i];
        }
        for (int kv = kv0; kv < kv1; kv++)
            kc_attn_values_group(out + kv * group, n_rep, head_dim, vrows, (kv - kv0) * head_dim, n,
                                 sc + (size_t)(kv - kv0) * n_rep * KC_ATT_CHUNK, KC_ATT_CHUNK);
    }
    for (int h = 0; h < nh; h++) {
        const __m256 r = _mm256_set1_ps((float)(1.0 / sum[h]));
        float *oh = o + (size_t)h * head_dim;
        for (int d = 0; d < head_dim; d += 8)
            _mm256_storeu_ps(oh + d, _mm256_mul_ps(_mm256_loadu_ps(oh + d), r));
    }
}
#endif /* KC_X86 */

/* KV heads [kv0, kv1): the AVX2 code, or the reference one KV head at a
 * time (scratch: n_rep * span floats, reused for each) */
static void kc_attn_range(float *out, const float *q, const uint16_t *const *k_blocks,
                          const uint16_t *const *v_blocks, int block_size, int first_pos,
                          int last_pos, int n_heads, int n_kv_heads, int head_dim, float scale,
                          float *scratch, int kv0, int kv1)
{
    assert(first_pos >= 0 && first_pos <= last_pos && block_size >= 1);
    assert(n_kv_heads >= 1 && n_heads % n_kv_heads == 0);
    assert(kv0 >= 0 && kv0 < kv1 && kv1 <= n_kv_heads);
#ifdef KC_X86
    if (kc_cpu_isa() >= KC_ISA_AVX2 && head_dim % 8 == 0) {
        kc_attn_range_avx2(out, q, k_blocks, v_blocks, block_size, first_pos, last_pos, n_heads,
                           n_kv_heads, head_dim, scale, kv0, kv1);
        return;
    }
#endif
    for (int kv = kv0; kv < kv1; kv++)
        kc_attn_kv_ref(out, q, k_blocks, v_blocks, block_size, first_pos, last_pos, n_heads,
                       n_kv_heads, head_dim, scale, scratch, kv);
}

void kc_attention_kv(float *out, const float *q, const uint16_t *const *k_blocks,
                     const uint16_t *const *v_blocks, int block_size, int first_pos, int last_pos,
                     int n_heads, int n_kv_heads, int head_dim, float scale, float *scratch, int kv)
{
    kc_attn_range(out, q, k_blocks, v_blocks, block_size, first_pos, last_pos, n_heads, n_kv_heads,
                  head_dim, scale, scratch, kv, kv + 1);
}

void kc_attention(float *out, const float *q, const uint16_t *const *k_blocks,
                  const uint16_t *const *v_blocks, int block_size, int first_pos, int last_pos,
                  int n_heads, int n_kv_heads, int head_dim, float scale, float *scratch)
{
    kc_attn_range(out, q, k_blocks, v_blocks, block_size, first_pos, last_pos, n_heads, n_kv_heads,
                  head_dim, scale, scratch, 0, n_kv_heads);
}

struct kc_attn_job {
    const struct kc_attn_token *tokens;
    int n_tokens, block_size, n_heads, n_kv_heads, head_dim;
    float scale;
    float *scratch;
    int max_span;
    int n_slices;    /* KV-head ranges per token */
    atomic_int next; /* next work item: token * n_slices + slice */
};

static void kc_attn_thread(void *ctx, int ti, int n)
{
    (void)n;
    struct kc_attn_job *job = ctx;
    const int n_rep = job->n_heads / job->n_kv_heads;
    float *scratch = job->scratch + (size_t)ti * n_rep * job->max_span;
    const int items = job->n_tokens * job->n_slices;
    for (;;) {
        int item = atomic_fetch_add_explicit(&job->next, 1, memory_order_relaxed);
        if (item >= items)
            return;
        const struct kc_attn_token *t = &job->tokens[item / job->n_slices];
        int kv0, kv1;
        kc_pool_split(job->n_kv_heads, 1, job->n_slices, item % job->n_slices, &kv0, &kv1);
        assert(t->last_pos - t->first_pos + 1 <= job->max_span);
        kc_attn_range(t->out, t->q, t->k_blocks, t->v_blocks, job->block_size, t->first_pos,
                      t->last_pos, job->n_heads, job->n_kv_heads, job->head_dim, job->scale,
                      scratch, kv0, kv1);
    }
}

void kc_attention_batch(struct kc_pool *p, const struct kc_attn_token *tokens, int n_tokens,
                        int block_size, int n_heads, int n_kv_heads, int head_dim, float scale,
                        float *scratch, int max_span)
{
    /* whole tokens when there are enough for every thread (whole rows read);
     * else each token cut into KV-head ranges */
    const int n_threads = kc_pool_threads(p);
    int n_slices = (n_threads + n_tokens - 1) / n_tokens;
    n_slices = n_slices > n_kv_heads ? n_kv_heads : n_slices;
    struct kc_attn_job job = {
        .tokens = tokens,
        .n_tokens = n_tokens,
        .block_size = block_size,
        .n_heads = n_heads,
        .n_kv_heads = n_kv_heads,
        .head_dim = head_dim,
        .scale = scale,
        .scratch = scratch,
        .max_span = max_span,
        .n_slices = n_slices,
    };
    atomic_init(&job.next, 0);
    kc_pool_run(p, kc_attn_thread, &job);
}
