/*
 * dtype: GGUF weight formats, conversions and Q8_0 quantization (see
 * dtype.h). The scalar code is the reference; the AVX2/F16C versions below
 * it must produce the same bits (tests/test_kernels.c checks all 65536
 * halves and the Q8_0 bytes).
 */
#include "kernels/cpu/dtype.h"

#include <assert.h>
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KC_X86  1
#define KC_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

int kc_type_supported(int type)
{
    return type == KC_TYPE_F32 || type == KC_TYPE_F16 || type == KC_TYPE_Q8_0 ||
           type == KC_TYPE_BF16;
}

const char *kc_type_name(int type)
{
    switch (type) {
    case KC_TYPE_F32:
        return "f32";
    case KC_TYPE_F16:
        return "f16";
    case KC_TYPE_Q8_0:
        return "q8_0";
    case KC_TYPE_BF16:
        return "bf16";
    case KC_TYPE_Q8_0_R8:
        return "q8_0_r8";
    }
    return "?";
}

size_t kc_type_row_size(int type, int64_t n)
{
    if (n < 0)
        return 0;
    switch (type) {
    case KC_TYPE_F32:
        return (size_t)n * 4;
    case KC_TYPE_F16:
    case KC_TYPE_BF16:
        return (size_t)n * 2;
    case KC_TYPE_Q8_0:
        return n % KC_QK8_0 ? 0 : (size_t)(n / KC_QK8_0) * sizeof(struct kc_block_q8_0);
    case KC_TYPE_Q8_0_R8:
        return n % (8 * KC_QK8_0) ? 0 : (size_t)(n / KC_QK8_0) * sizeof(struct kc_block_q8_0);
    }
    return 0;
}

static inline uint32_t kc_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float kc_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* binary16 -> binary32 is exact; a NaN gets the quiet bit, as VCVTPH2PS does. */
float kc_fp16_to_fp32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f) /* inf, NaN */
        return kc_bits_f32(sign | 0x7f800000 | (m ? 0x400000 | (m << 13) : 0));
    if (e == 0) {
        if (m == 0)
            return kc_bits_f32(sign);
        /* subnormal m * 2^-24: normalize */
        e = 113;
        while (!(m & 0x400)) {
            m <<= 1;
            e--;
        }
        return kc_bits_f32(sign | (e << 23) | ((m & 0x3ff) << 13));
    }
    return kc_bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

/* binary32 -> binary16, round to nearest even, overflow to inf; a NaN keeps
 * the top 10 payload bits and becomes quiet (the results of VCVTPS2PH). */
uint16_t kc_fp32_to_fp16(float f)
{
    uint32_t x = kc_f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffff;
    if (ax > 0x7f800000) /* NaN */
        return sign | 0x7e00 | ((ax >> 13) & 0x3ff);
    if (ax >= 0x477ff000) /* >= 65520, halfway above the largest half: inf */
        return sign | 0x7c00;
    if (ax >= 0x38800000) { /* >= 2^-14: a normal half; rebias 127 -> 15 */
        uint32_t r = ax - 0x38000000;
        r += 0xfff + ((r >> 13) & 1); /* a carry into the exponent is right */
        return sign | (uint16_t)(r >> 13);
    }
    if (ax < 0x33000000) /* < 2^-25: below half the smallest subnormal */
        return sign;
    /* subnormal half: m * 2^-24 with m = mant * 2^(e - 126) */
    uint32_t e = ax >> 23, mant = (ax & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t m = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (m & 1)))
        m++;
    return sign | (uint16_t)m;
}

float kc_bf16_to_fp32(uint16_t h)
{
    return kc_bits_f32((uint32_t)h << 16);
}

/* GGML_FP32_TO_BF16: nearest even, NaN forced quiet, subnormals kept. */
uint16_t kc_fp32_to_bf16(float f)
{
    uint32_t u = kc_f32_bits(f);
    if ((u & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

/* quantize_row_q8_0_ref for one block of 32 */
static inline void kc_quant_block(const float *x, int8_t *q, uint16_t *d16)
{
    float amax = 0.0f;
    for (int j = 0; j < KC_QK8_0; j++) {
        float a = fabsf(x[j]);
        amax = amax > a ? amax : a;
    }
    const float d = amax / ((1 << 7) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    *d16 = kc_fp32_to_fp16(d);
    for (int j = 0; j < KC_QK8_0; j++)
        q[j] = (int8_t)roundf(x[j] * id);
}

#ifdef KC_X86
KC_AVX2 static void kc_fp32_to_fp16_row_avx2(uint16_t *out, const float *x, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(out + i), h);
    }
    for (; i < n; i++)
        out[i] = kc_fp32_to_fp16(x[i]);
}

KC_AVX2 static void kc_fp16_to_fp32_row_avx2(float *out, const uint16_t *h, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++)
        out[i] = kc_fp16_to_fp32(h[i]);
}

KC_AVX2 static void kc_round_fp16_row_avx2(float *out, const float *x, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++)
        out[i] = kc_fp16_to_fp32(kc_fp32_to_fp16(x[i]));
}

KC_AVX2 static void kc_round_bf16_row_avx2(float *out, const float *x, int n)
{
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000), quiet = _mm256_set1_epi32(0x400000);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i u = _mm256_castps_si256(_mm256_loadu_ps(x + i));
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
        __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
        __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(bias, odd));
        __m256i qn = _mm256_or_si256(u, quiet);
        r = _mm256_and_si256(_mm256_blendv_epi8(r, qn, nan), hi);
        _mm256_storeu_ps(out + i, _mm256_castsi256_ps(r));
    }
    for (; i < n; i++)
        out[i] = kc_bf16_to_fp32(kc_fp32_to_bf16(x[i]));
}

/* One block: the same operations as kc_quant_block, in the same order, so
 * the bytes agree (roundf is rebuilt from truncation: exact for |v| <= 127). */
KC_AVX2 static inline void kc_quant_block_avx2(const float *x, int8_t *q, uint16_t *d16)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4];
    for (int j = 0; j < 4; j++)
        v[j] = _mm256_loadu_ps(x + 8 * j);
    __m256 m =
        _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                      _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float d = amax / ((1 << 7) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    *d16 = kc_fp32_to_fp16(d);
    const __m256 vid = _mm256_set1_ps(id), half = _mm256_set1_ps(0.5f), onev = _mm256_set1_ps(1.0f);
    __m256i qi[4];
    for (int j = 0; j < 4; j++) {
        __m256 s = _mm256_mul_ps(v[j], vid);
        __m256 t = _mm256_round_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(s, t));
        __m256 step = _mm256_and_ps(_mm256_cmp_ps(frac, half, _CMP_GE_OQ), onev);
        t = _mm256_add_ps(t, _mm256_or_ps(step, _mm256_and_ps(s, sign)));
        qi[j] = _mm256_cvtps_epi32(t);
    }
    /* pack 4x8 int32 -> 32 int8; packs works per 128-bit lane, so fix the order */
    __m256i p =
        _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p);
}

KC_AVX2 static void kc_quantize_q8_0_row_avx2(struct kc_block_q8_0 *out, const float *x, int n)
{
    for (int b = 0; b < n / KC_QK8_0; b++) {
        uint16_t d16;
        kc_quant_block_avx2(x + b * KC_QK8_0, out[b].qs, &d16);
        out[b].d = d16;
    }
}

KC_AVX2 static void kc_quantize_q8_0_split_avx2(int8_t *qs, float *d, const float *x, int n)
{
    for (int b = 0; b < n / KC_QK8_0; b++) {
        uint16_t d16;
        kc_quant_block_avx2(x + b * KC_QK8_0, qs + b * KC_QK8_0, &d16);
        d[b] = _cvtsh_ss(d16);
    }
}

KC_AVX2 static void kc_dequant_q8_0_avx2(float *out, const struct kc_block_q8_0 *b, int n)
{
    for (int i = 0; i < n / KC_QK8_0; i++) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[i].d));
        for (int j = 0; j < 4; j++) {
            __m128i q8 = _mm_loadl_epi64((const __m128i *)(b[i].qs + 8 * j));
            __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
            _mm256_storeu_ps(out + i * KC_QK8_0 + 8 * j, _mm256_mul_ps(q, d));
        }
    }
}
#endif

static int kc_use_avx2(void)
{
#ifdef KC_X86
    return kc_cpu_isa() >= KC_ISA_AVX2;
#else
    return 0;
#endif
}

void kc_fp32_to_fp16_row(uint16_t *out, const float *x, int n)
{
#ifdef KC_X86
    if (kc_use_avx2()) {
        kc_fp32_to_fp16_row_avx2(out, x, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++)
        out[i] = kc_fp32_to_fp16(x[i]);
}

void kc_fp16_to_fp32_row(float *out, const uint16_t *h, int n)
{
#ifdef KC_X86
    if (kc_use_avx2()) {
        kc_fp16_to_fp32_row_avx2(out, h, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++)
        out[i] = kc_fp16_to_fp32(h[i]);
}

void kc_round_fp16_row(float *out, const float *x, int n)
{
#ifdef KC_X86
    if (kc_use_avx2()) {
        kc_round_fp16_row_avx2(out, x, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++)
        out[i] = kc_fp16_to_fp32(kc_fp32_to_fp16(x[i]));
}

void kc_round_bf16_row(float *out, const float *x, int n)
{
#ifdef KC_X86
    if (kc_use_avx2()) {
        kc_round_bf16_row_avx2(out, x, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++)
        out[i] = kc_bf16_to_fp32(kc_fp32_to_bf16(x[i]));
}

void kc_quantize_q8_0_row(struct kc_block_q8_0 *out, const float *x, int n)
{
    assert(n % KC_QK8_0 == 0);
#ifdef KC_X86
    if (kc_use_avx2()) {
        kc_quantize_q8_0_row_avx2(out, x, n);
        return;
    }
#endif
    for (int b = 0; b < n / KC_QK8_0; b++) {
        uint16_t d16;
        kc_quant_block(x + b * KC_QK8_0, out[b].qs, &d16);
        out[b].d = d16;
    }
}

void kc_quantize_q8_0_split(int8_t *qs, float *d, const float *x, int n)
{
    assert(n % KC_QK8_0 == 0);
#ifdef KC_X86
    if (kc_use_avx2()) {
        kc_quantize_q8_0_split_avx2(qs, d, x, n);
        return;
    }
#endif
    for (int b = 0; b < n / KC_QK8_0; b++) {
        uint16_t d16;
        kc_quant_block(x + b * KC_QK8_0, qs + b * KC_QK8_0, &d16);
        d[b] = kc_fp16_to_fp32(d16);
    }
}

void kc_dequant_row(float *out, const void *row, int type, int n)
{
    assert(kc_type_row_size(type, n) > 0 || n == 0);
    switch (type) {
    case KC_TYPE_F32:
        memcpy(out, row, (size_t)n * sizeof(float));
        return;
    case KC_TYPE_F16: {
        /* the row may be unaligned: the AVX2 path uses unaligned loads, the
         * scalar one copies each half */
        const unsigned char *p = row;
#ifdef KC_X86
        if (kc_use_avx2() && ((uintptr_t)p & 1) == 0) {
            kc_fp16_to_fp32_row_avx2(out, (const uint16_t *)p, n);
            return;
        }
#endif
        for (int i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = kc_fp16_to_fp32(h);
        }
        return;
    }
    case KC_TYPE_BF16: {
        const unsigned char *p = row;
        for (int i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = kc_bf16_to_fp32(h);
        }
        return;
    }
    case KC_TYPE_Q8_0: {
        const unsigned char *p = row;
#ifdef KC_X86
        if (kc_use_avx2() && ((uintptr_t)p & 1) == 0) {
            kc_dequant_q8_0_avx2(out, (const struct kc_block_q8_0 *)p, n);
            return;
        }
#endif
        for (int b = 0; b < n / KC_QK8_0; b++) {
            struct kc_block_q8_0 blk;
            memcpy(&blk, p + b * sizeof blk, sizeof blk);
            const float d = kc_fp16_to_fp32(blk.d);
            for (int j = 0; j < KC_QK8_0; j++)
                out[b * KC_QK8_0 + j] = blk.qs[j] * d;
        }
        return;
    }
    }
    assert(!"kc_dequant_row: unsupported type");
}
