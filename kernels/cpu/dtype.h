/*
 * dtype: the weight formats of GGUF files and conversions between them.
 *
 * Types are ggml's, with ggml's type ids: F32 (0), F16 (1, IEEE binary16),
 * Q8_0 (8: blocks of 32 values, an fp16 scale d and 32 int8 q, value d*q)
 * and BF16 (30). Key decision: every conversion rounds exactly as the
 * reference implementation (llama.cpp's ggml) does, because the forward
 * pass is compared with its outputs: f32->f16 rounds to nearest even (as
 * F16C does; NaNs stay NaN), f32->bf16 is GGML_FP32_TO_BF16 (nearest even,
 * subnormals kept, NaN made quiet) and f32->Q8_0 is quantize_row_q8_0_ref
 * (d = max|x|/127, q = roundf(x/d), half away from zero; note that
 * ggml's own AVX2 quantize_row_q8_0, which llama.cpp uses on x86, scales by
 * 127/max|x| and rounds halves to even, so a q can differ by 1 from it in
 * rare ties). The scalar
 * functions are exact reimplementations and the references of the tests;
 * the row functions use F16C/AVX2 where kc_cpu_isa() allows and give
 * bit-identical results.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

enum kc_type {
    KC_TYPE_F32 = 0,
    KC_TYPE_F16 = 1,
    KC_TYPE_Q8_0 = 8,
    KC_TYPE_BF16 = 30,
    /* not a GGUF type: Q8_0 rows repacked for the matmul kernels
     * (kc_pack_q8_0_r8 in matmul.h), the same bytes per row */
    KC_TYPE_Q8_0_R8 = 0x10008,
};

#define KC_QK8_0 32 /* values per Q8_0 block */

/* One Q8_0 block exactly as GGUF stores it (34 bytes, 2-byte aligned). */
struct kc_block_q8_0 {
    uint16_t d;          /* scale, IEEE half */
    int8_t qs[KC_QK8_0]; /* value i is d * qs[i] */
};
_Static_assert(sizeof(struct kc_block_q8_0) == 34, "Q8_0 block is 34 bytes in GGUF");

/* Whether `type` is one of the GGUF types above. */
int kc_type_supported(int type);

/* "f32", "f16", "q8_0", "bf16", "q8_0_r8", or "?" */
const char *kc_type_name(int type);

/* Bytes of a row of n values of `type`; 0 when the type is unsupported or n
 * is not a whole number of blocks (Q8_0 needs n % 32 == 0, Q8_0_R8 n % 256
 * == 0) or n < 0. */
size_t kc_type_row_size(int type, int64_t n);

/* Scalar conversions, exact (see above). */
float kc_fp16_to_fp32(uint16_t h);
uint16_t kc_fp32_to_fp16(float f);
float kc_bf16_to_fp32(uint16_t h);
uint16_t kc_fp32_to_bf16(float f);

/* Row conversions (F16C/AVX2 where available, bit-identical to the scalar
 * ones). Pointers are borrowed; out may not overlap the input except where
 * noted. Thread-safe. */
void kc_fp32_to_fp16_row(uint16_t *out, const float *x, int n);
void kc_fp16_to_fp32_row(float *out, const uint16_t *h, int n);
/* out[i] = x[i] rounded to fp16 (resp. bf16) and back; out may equal x. */
void kc_round_fp16_row(float *out, const float *x, int n);
void kc_round_bf16_row(float *out, const float *x, int n);

/* Quantize n values (n % 32 == 0) to n/32 Q8_0 blocks, byte-identical to
 * ggml's quantize_row_q8_0_ref. */
void kc_quantize_q8_0_row(struct kc_block_q8_0 *out, const float *x, int n);

/* The same split in two arrays, the layout the matmul kernels read: qs
 * (n int8) and d (n/32 floats, each the fp16 scale converted back to f32). */
void kc_quantize_q8_0_split(int8_t *qs, float *d, const float *x, int n);

/* out[0..n) = row of n values of `type` as f32 (the token-embedding lookup).
 * `row` is borrowed and needs no alignment. The type must be supported and n
 * valid for it (kc_type_row_size(type, n) > 0). */
void kc_dequant_row(float *out, const void *row, int type, int n);
