/*
 * ops: element-wise kernels (see ops.h). The *_ref functions are the
 * scalar references and the fallback; the AVX2 versions use the same
 * operations in the same order (so RMSNorm, RoPE and add agree bit for bit,
 * up to the order of a double-precision sum), except exp: kc_exp8 is a
 * Cephes-style polynomial (Cody-Waite reduction, degree 6) instead of libm's
 * expf. That exp is what makes the AVX2 softmax worth having: attention at
 * a 4096-token context takes 4096 exps per head, and a softmax of 4096
 * values takes 17.7 us with glibc's expf against 3.2 us with kc_exp8
 * (tests/bench_kernels.c); 32 heads of it would be a third of the 1.9 ms the
 * whole attention of such a layer takes.
 */
#include "kernels/cpu/ops.h"

#include <math.h>

#include "kernels/cpu/cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KC_X86         1
#define KC_AVX2        __attribute__((target("avx2,fma,f16c")))
#define KC_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline
#endif

static int kc_avx2(void)
{
#ifdef KC_X86
    return kc_cpu_isa() >= KC_ISA_AVX2;
#else
    return 0;
#endif
}

/* ---- scalar references ---- */

void kc_rmsnorm_ref(float *out, const float *x, const float *w, int n, float eps)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int i = 0; i < n; i++)
        out[i] = (x[i] * scale) * w[i];
}

void kc_rope_row(float *cs, int pos, int head_dim, float base)
{
    /* ggml_rope_cache_init: theta_i = pos * theta_scale^i by repeated
     * multiplication in f32 */
    const float theta_scale = powf(base, -2.0f / (float)head_dim);
    float theta = (float)pos;
    for (int i = 0; i < head_dim / 2; i++) {
        cs[2 * i] = cosf(theta);
        cs[2 * i + 1] = sinf(theta);
        theta *= theta_scale;
    }
}

void kc_rope_table(float *cs, int n_pos, int head_dim, float base)
{
    for (int p = 0; p < n_pos; p++)
        kc_rope_row(cs + (size_t)p * head_dim, p, head_dim, base);
}

void kc_rope_ref(float *x, int n_heads, int head_dim, const float *cs)
{
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (size_t)h * head_dim;
        for (int i = 0; i < head_dim; i += 2) {
            const float c = cs[i], s = cs[i + 1];
            const float x0 = xh[i], x1 = xh[i + 1];
            xh[i] = x0 * c - x1 * s;
            xh[i + 1] = x0 * s + x1 * c;
        }
    }
}

void kc_swiglu_ref(float *out, const float *gate, const float *up, int n)
{
    for (int i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void kc_softmax_ref(float *x, int n)
{
    float max = x[0];
    for (int i = 1; i < n; i++)
        max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    const float scale = (float)(1.0 / sum);
    for (int i = 0; i < n; i++)
        x[i] *= scale;
}

void kc_add_ref(float *out, const float *a, const float *b, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

/* ---- AVX2 ---- */

#ifdef KC_X86
/* exp(x) for 8 lanes: within 2 ulp of expf for results >= FLT_MIN; inf above
 * ln(FLT_MAX), 0 below ln(FLT_MIN) (expf would give a subnormal there). */
static KC_AVX2_INLINE __m256 kc_exp8(__m256 x)
{
    const __m256 hi = _mm256_set1_ps(88.72283905f), lo = _mm256_set1_ps(-87.33654475f);
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504089f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* r = x - n ln2 in two steps, ln2 = hi + lo with hi exact in 16 bits */
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* p * 2^n with n in [-126, 128]: two factors so each exponent is normal */
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256i bias = _mm256_set1_epi32(127);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    __m256 e = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
    e = _mm256_blendv_ps(e, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    e = _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), e);
    /* NaN in, NaN out */
    return _mm256_blendv_ps(e, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

static KC_AVX2_INLINE float kc_hmax(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static KC_AVX2_INLINE double kc_hsum_pd(__m256d v)
{
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
    return _mm_cvtsd_f64(s);
}

KC_AVX2 static void kc_exp_row_avx2(float *out, const float *x, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, kc_exp8(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float buf[8] = {0};
        for (int j = i; j < n; j++)
            buf[j - i] = x[j];
        _mm256_storeu_ps(buf, kc_exp8(_mm256_loadu_ps(buf)));
        for (int j = i; j < n; j++)
            out[j] = buf[j - i];
    }
}

KC_AVX2 static void kc_rmsnorm_avx2(float *out, const float *x, const float *w, int n, float eps)
{
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 sq = _mm256_mul_ps(v, v); /* rounded to f32 as x*x is in the reference */
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(sq, 1)));
    }
    double sum = kc_hsum_pd(_mm256_add_pd(s0, s1));
    for (; i < n; i++)
        sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    const __m256 vs = _mm256_set1_ps(scale);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs),
                                                _mm256_loadu_ps(w + i)));
    for (; i < n; i++)
        out[i] = (x[i] * scale) * w[i];
}

KC_AVX2 static void kc_rope_avx2(float *x, int n_heads, int head_dim, const float *cs)
{
    if (head_dim % 8) {
        kc_rope_ref(x, n_heads, head_dim, cs);
        return;
    }
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (size_t)h * head_dim;
        for (int i = 0; i < head_dim; i += 8) {
            __m256 v = _mm256_loadu_ps(xh + i);     /* x0 x1 x0 x1 ... */
            __m256 sw = _mm256_permute_ps(v, 0xb1); /* x1 x0 x1 x0 ... */
            __m256 t = _mm256_loadu_ps(cs + i);     /* c s c s ... */
            __m256 c = _mm256_moveldup_ps(t), s = _mm256_movehdup_ps(t);
            /* even: x0*c - x1*s, odd: x1*c + x0*s, as the reference rounds */
            _mm256_storeu_ps(xh + i, _mm256_addsub_ps(_mm256_mul_ps(v, c), _mm256_mul_ps(sw, s)));
        }
    }
}

static KC_AVX2_INLINE __m256 kc_swiglu8(__m256 g, __m256 u)
{
    const __m256 e = kc_exp8(_mm256_xor_ps(g, _mm256_set1_ps(-0.0f)));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}

KC_AVX2 static void kc_swiglu_avx2(float *out, const float *gate, const float *up, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, kc_swiglu8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
    if (i < n) {
        /* the tail through kc_exp8 too: a value's result must not depend on
         * where it sits in the row (the batch's size decides that) */
        float g8[8] = {0}, u8[8] = {0};
        for (int j = i; j < n; j++) {
            g8[j - i] = gate[j];
            u8[j - i] = up[j];
        }
        _mm256_storeu_ps(g8, kc_swiglu8(_mm256_loadu_ps(g8), _mm256_loadu_ps(u8)));
        for (int j = i; j < n; j++)
            out[j] = g8[j - i];
    }
}

KC_AVX2 static void kc_softmax_avx2(float *x, int n)
{
    int i = 0;
    float max = x[0];
    if (n >= 8) {
        __m256 m = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8)
            m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
        max = kc_hmax(m);
    }
    for (; i < n; i++)
        max = x[i] > max ? x[i] : max;
    const __m256 vmax = _mm256_set1_ps(max);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = kc_exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
        _mm256_storeu_ps(x + i, e);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double sum = kc_hsum_pd(_mm256_add_pd(s0, s1));
    if (i < n) {
        for (int j = i; j < n; j++)
            x[j] -= max;
        kc_exp_row_avx2(x + i, x + i, n - i);
        for (int j = i; j < n; j++)
            sum += x[j];
    }
    const float scale = (float)(1.0 / sum);
    const __m256 vs = _mm256_set1_ps(scale);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
    for (; i < n; i++)
        x[i] *= scale;
}

KC_AVX2 static void kc_add_avx2(float *out, const float *a, const float *b, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    for (; i < n; i++)
        out[i] = a[i] + b[i];
}
#endif /* KC_X86 */

/* ---- dispatch ---- */

void kc_rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
#ifdef KC_X86
    if (kc_avx2()) {
        kc_rmsnorm_avx2(out, x, w, n, eps);
        return;
    }
#endif
    kc_rmsnorm_ref(out, x, w, n, eps);
}

void kc_rope(float *x, int n_heads, int head_dim, const float *cs)
{
#ifdef KC_X86
    if (kc_avx2()) {
        kc_rope_avx2(x, n_heads, head_dim, cs);
        return;
    }
#endif
    kc_rope_ref(x, n_heads, head_dim, cs);
}

void kc_swiglu(float *out, const float *gate, const float *up, int n)
{
#ifdef KC_X86
    if (kc_avx2()) {
        kc_swiglu_avx2(out, gate, up, n);
        return;
    }
#endif
    kc_swiglu_ref(out, gate, up, n);
}

void kc_softmax(float *x, int n)
{
#ifdef KC_X86
    if (kc_avx2()) {
        kc_softmax_avx2(x, n);
        return;
    }
#endif
    kc_softmax_ref(x, n);
}

void kc_add(float *out, const float *a, const float *b, int n)
{
#ifdef KC_X86
    if (kc_avx2()) {
        kc_add_avx2(out, a, b, n);
        return;
    }
#endif
    kc_add_ref(out, a, b, n);
}

void kc_exp_row(float *out, const float *x, int n)
{
#ifdef KC_X86
    if (kc_avx2()) {
        kc_exp_row_avx2(out, x, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++)
        out[i] = expf(x[i]);
}
