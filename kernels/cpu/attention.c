/*
 * attention: GQA attention of one query token over a paged fp16 KV cache
 * (see attention.h).
 *
 * Per KV head, three passes: scores (each K row converted once and dotted
 * with up to 4 query heads in registers, 4 sums reduced together), softmax
 * per query head (ops.h, with the AVX2 exp), then the weighted sum of V in
 * column strips of 32 values (one 64-byte line of fp16) for 2 query heads at
 * a time: 8 accumulators stay in registers and every strip of a V row is a
 * fresh cache line, so V is read from memory once.
 */
#include "kernels/cpu/attention.h"

#include <assert.h>
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
    const int n_rep = n_heads / n_kv_heads, span = last_pos - first_pos + 1;
    for (int kv = 0; kv < n_kv_heads; kv++)
        kc_attn_kv_ref(out, q, k_blocks, v_blocks, block_size, first_pos, last_pos, n_heads,
                       n_kv_heads, head_dim, scale, scratch + (size_t)kv * n_rep * span, kv);
}

#ifdef KC_X86
/* Positions first..last are walked block by block: in block b, n rows
 * `row` values apart from the position's row at column off. */
static inline int kc_run_len(int p, int last, int block_size)
{
    int n = block_size - p % block_size;
    return n < last - p + 1 ? n : last - p + 1;
}

static KC_AVX2_INLINE float kc_hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* s[j*span + i] = scale * q_j . K_i for nh (1, 2 or 4) query heads q_j */
static KC_AVX2_INLINE void kc_attn_scores(int nh, const float *q, int head_dim,
                                          const uint16_t *const *k_blocks, int block_size,
                                          int first, int last, int row, int off, float scale,
                                          float *s, int span)
{
    for (int p = first, i = 0; p <= last;) {
        const int n = kc_run_len(p, last, block_size);
        const uint16_t *k = kc_kv_row(k_blocks, block_size, p, row, off);
        for (int e = 0; e < n; e++, i++, k += row) {
            __m256 acc[4];
#pragma GCC unroll 4
            for (int j = 0; j < nh; j++)
                acc[j] = _mm256_setzero_ps();
            for (int d = 0; d < head_dim; d += 8) {
                __m256 kv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d)));
#pragma GCC unroll 4
                for (int j = 0; j < nh; j++)
                    acc[j] =
                        _mm256_fmadd_ps(_mm256_loadu_ps(q + (size_t)j * head_dim + d), kv, acc[j]);
            }
            if (nh == 4) {
                __m256 t =
                    _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
                __m128 r = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
                float f[4];
                _mm_storeu_ps(f, _mm_mul_ps(r, _mm_set1_ps(scale)));
                for (int j = 0; j < 4; j++)
                    s[(size_t)j * span + i] = f[j];
            } else {
                for (int j = 0; j < nh; j++)
                    s[(size_t)j * span + i] = kc_hsum8(acc[j]) * scale;
            }
        }
        p += n;
    }
}

/* out_j[0 .. 8*nv) = sum_i s[j*span + i] * V_i[off .. off + 8*nv) for nh (1 or
 * 2) heads, out_j = out + j*head_dim */
static KC_AVX2_INLINE void kc_attn_values(int nv, int nh, float *out, int head_dim,
                                          const uint16_t *const *v_blocks, int block_size,
                                          int first, int last, int row, int off, const float *s,
                                          int span)
{
    __m256 acc[2][4];
#pragma GCC unroll 2
    for (int j = 0; j < nh; j++)
#pragma GCC unroll 4
        for (int c = 0; c < nv; c++)
            acc[j][c] = _mm256_setzero_ps();
    for (int p = first, i = 0; p <= last;) {
        const int n = kc_run_len(p, last, block_size);
        const uint16_t *v = kc_kv_row(v_blocks, block_size, p, row, off);
        for (int e = 0; e < n; e++, i++, v += row) {
            __m256 vv[4];
#pragma GCC unroll 4
            for (int c = 0; c < nv; c++)
                vv[c] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + 8 * c)));
#pragma GCC unroll 2
            for (int j = 0; j < nh; j++) {
                __m256 w = _mm256_broadcast_ss(s + (size_t)j * span + i);
#pragma GCC unroll 4
                for (int c = 0; c < nv; c++)
                    acc[j][c] = _mm256_fmadd_ps(w, vv[c], acc[j][c]);
            }
        }
        p += n;
    }
#pragma GCC unroll 2
    for (int j = 0; j < nh; j++)
#pragma GCC unroll 4
        for (int c = 0; c < nv; c++)
            _mm256_storeu_ps(out + (size_t)j * head_dim + 8 * c, acc[j][c]);
}

KC_AVX2 static void kc_attn_kv_avx2(float *out, const float *q, const uint16_t *const *k_blocks,
                                    const uint16_t *const *v_blocks, int block_size, int first_pos,
                                    int last_pos, int n_heads, int n_kv_heads, int head_dim,
                                    float scale, float *scratch, int kv)
{
    const int n_rep = n_heads / n_kv_heads, span = last_pos - first_pos + 1;
    const int row = n_kv_heads * head_dim, off = kv * head_dim;
    const float *qg = q + (size_t)kv * n_rep * head_dim;
    float *og = out + (size_t)kv * n_rep * head_dim;
    for (int j = 0; j < n_rep;) {
        const float *qj = qg + (size_t)j * head_dim;
        float *sj = scratch + (size_t)j * span;
        if (n_rep - j >= 4) {
            kc_attn_scores(4, qj, head_dim, k_blocks, block_size, first_pos, last_pos, row, off,
                           scale, sj, span);
            j += 4;
        } else if (n_rep - j >= 2) {
            kc_attn_scores(2, qj, head_dim, k_blocks, block_size, first_pos, last_pos, row, off,
                           scale, sj, span);
            j += 2;
        } else {
            kc_attn_scores(1, qj, head_dim, k_blocks, block_size, first_pos, last_pos, row, off,
                           scale, sj, span);
            j += 1;
        }
    }
    for (int j = 0; j < n_rep; j++)
        kc_softmax(scratch + (size_t)j * span, span);
    for (int j = 0; j < n_rep; j += 2) {
        const int two = n_rep - j >= 2;
        const float *sj = scratch + (size_t)j * span;
        float *oj = og + (size_t)j * head_dim;
        int d = 0;
        for (; d + 32 <= head_dim; d += 32) {
            if (two)
                kc_attn_values(4, 2, oj + d, head_dim, v_blocks, block_size, first_pos, last_pos,
                               row, off + d, sj, span);
            else
                kc_attn_values(4, 1, oj + d, head_dim, v_blocks, block_size, first_pos, last_pos,
                               row, off + d, sj, span);
        }
        for (; d < head_dim; d += 8) {
            if (two)
                kc_attn_values(1, 2, oj + d, head_dim, v_blocks, block_size, first_pos, last_pos,
                               row, off + d, sj, span);
            else
                kc_attn_values(1, 1, oj + d, head_dim, v_blocks, block_size, first_pos, last_pos,
                               row, off + d, sj, span);
        }
    }
}
#endif /* KC_X86 */

void kc_attention_kv(float *out, const float *q, const uint16_t *const *k_blocks,
                     const uint16_t *const *v_blocks, int block_size, int first_pos, int last_pos,
                     int n_heads, int n_kv_heads, int head_dim, float scale, float *scratch, int kv)
{
    assert(first_pos >= 0 && first_pos <= last_pos && block_size >= 1);
    assert(n_kv_heads >= 1 && n_heads % n_kv_heads == 0 && kv >= 0 && kv < n_kv_heads);
#ifdef KC_X86
    if (kc_cpu_isa() == KC_ISA_AVX2 && head_dim % 8 == 0) {
        kc_attn_kv_avx2(out, q, k_blocks, v_blocks, block_size, first_pos, last_pos, n_heads,
                        n_kv_heads, head_dim, scale, scratch, kv);
        return;
    }
#endif
    kc_attn_kv_ref(out, q, k_blocks, v_blocks, block_size, first_pos, last_pos, n_heads, n_kv_heads,
                   head_dim, scale, scratch, kv);
}

void kc_attention(float *out, const float *q, const uint16_t *const *k_blocks,
                  const uint16_t *const *v_blocks, int block_size, int first_pos, int last_pos,
                  int n_heads, int n_kv_heads, int head_dim, float scale, float *scratch)
{
    const int n_rep = n_heads / n_kv_heads, span = last_pos - first_pos + 1;
    for (int kv = 0; kv < n_kv_heads; kv++)
        kc_attention_kv(out, q, k_blocks, v_blocks, block_size, first_pos, last_pos, n_heads,
                        n_kv_heads, head_dim, scale, scratch + (size_t)kv * n_rep * span, kv);
}

struct kc_attn_job {
    const struct kc_attn_token *tokens;
    int n_tokens, block_size, n_heads, n_kv_heads, head_dim;
    float scale;
    float *scratch;
    int max_span;
    atomic_int next; /* next work item: token * n_kv_heads + kv */
};

static void kc_attn_thread(void *ctx, int ti, int n)
{
    (void)n;
    struct kc_attn_job *job = ctx;
    const int n_rep = job->n_heads / job->n_kv_heads;
    float *scratch = job->scratch + (size_t)ti * n_rep * job->max_span;
    const int items = job->n_tokens * job->n_kv_heads;
    for (;;) {
        int item = atomic_fetch_add_explicit(&job->next, 1, memory_order_relaxed);
        if (item >= items)
            return;
        const struct kc_attn_token *t = &job->tokens[item / job->n_kv_heads];
        assert(t->last_pos - t->first_pos + 1 <= job->max_span);
        kc_attention_kv(t->out, t->q, t->k_blocks, t->v_blocks, job->block_size, t->first_pos,
                        t->last_pos, job->n_heads, job->n_kv_heads, job->head_dim, job->scale,
                        scratch, item % job->n_kv_heads);
    }
}

void kc_attention_batch(struct kc_pool *p, const struct kc_attn_token *tokens, int n_tokens,
                        int block_size, int n_heads, int n_kv_heads, int head_dim, float scale,
                        float *scratch, int max_span)
{
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
    };
    atomic_init(&job.next, 0);
    kc_pool_run(p, kc_attn_thread, &job);
}
