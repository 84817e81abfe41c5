/*
 * matmul: y = x W^T for the projections, in every weight type of dtype.h.
 *
 * Shapes: x (n_tokens, n_in) f32, W (n_out, n_in) row-major as GGUF stores a
 * ggml tensor with ne = {n_in, n_out}, y (n_tokens, n_out) f32:
 * y[t*n_out + o] = sum_i x[t*n_in + i] * W[o][i].
 *
 * Key decisions:
 * - Rounding as the reference (llama.cpp CPU): x is first converted to the
 *   weight's "dot type": rounded to fp16 for F16 weights, to bf16 for BF16
 *   weights, quantized to Q8_0 per block of 32 for Q8_0 weights (f32 stays
 *   f32); products and sums are f32 (Q8_0: int32 per block, times the f32
 *   product of the two fp16 scales). The converted x lives in a
 *   kc_scratch allocated once, so a step never allocates.
 * - Decode (n_tokens = 1) is memory-bound: each weight row is streamed once,
 *   four rows at a time, rows split across the pool's threads.
 * - Prefill (n_tokens > 1) is compute-bound: tiles of 4 weight rows x 3
 *   tokens of register accumulators, the reduction dimension cut into
 *   chunks so the chunk of x for all tokens stays in L2 and the 4 rows'
 *   chunk in L1; every weight byte is read from memory once per call (per
 *   block of 128 tokens).
 * - Batch invariance: y[t] depends on x[t] and W alone, bit for bit, not on
 *   n_tokens, t, the thread count or which kernel ran (each ISA path has one
 *   reduction order per n_in; matmul.c describes it). The scalar and AVX2
 *   paths differ from each other in the last bits; the AVX512VNNI path
 *   (its own Q8_0 kernel, the AVX2 code otherwise) equals the AVX2 path
 *   bit for bit.
 */
#pragma once

#include <stddef.h>

struct kc_pool;
struct kc_scratch;

/*
 * Allocate scratch for matmuls of up to max_tokens tokens and n_in up to
 * max_n_in. Returns 0, -EINVAL (sizes < 1) or -ENOMEM; *out is NULL on
 * failure. One scratch per thread calling kc_matmul.
 */
int kc_scratch_create(struct kc_scratch **out, int max_tokens, int max_n_in);
void kc_scratch_destroy(struct kc_scratch *s); /* NULL is a no-op */

/*
 * y (n_tokens, n_out) = x (n_tokens, n_in) times W^T, W (n_out, n_in) of
 * type wtype (KC_TYPE_F32/F16/BF16/Q8_0/Q8_0_R8; Q8_0 needs n_in % 32 ==
 * 0, Q8_0_R8 n_in % 256 == 0). All pointers borrowed; y must not overlap x
 * or w; w needs no alignment beyond its type's (2 bytes for F16/BF16/Q8_0/
 * Q8_0_R8, 4 for F32). Runs on the pool's
 * threads (p may be NULL: one thread) and uses s for the converted x, so the
 * scratch must be at least n_tokens x n_in. Not thread-safe per scratch/pool.
 * Bad sizes or types are programmer errors (assert).
 */
void kc_matmul(struct kc_pool *p, float *y, const float *x, const void *w, int wtype, int n_tokens,
               int n_in, int n_out, struct kc_scratch *s);

/*
 * Q8_0_R8: Q8_0 rows repacked for the VNNI kernel (it reads them about twice
 * as fast with few tokens; matmul.c has the numbers). Each row is n_in / 256
 * groups of 8 blocks, 272 bytes each, as many bytes as the 8 blocks: their 8
 * fp16 scales, then the 8 blocks' values in 8 columns of 4 (values 4k..4k+3
 * of blocks 0..7, then 4k+4.., ...) plus 128, as unsigned bytes. A row's
 * results follow a reduction order of their own, different in the last bits
 * from Q8_0's (each path reads it with the same order: the scalar reference
 * and the AVX512VNNI kernel give the same bits; AVX2 runs the scalar code).
 *
 * kc_q8_0_r8_fits: whether a Q8_0 matrix of rows of n_in values can be
 * repacked (n_in % 256 == 0) and is worth it (kc_cpu_isa() is AVX512VNNI).
 * kc_pack_q8_0_r8: dst (n_out rows of kc_type_row_size(KC_TYPE_Q8_0_R8,
 * n_in) bytes) = src (n_out Q8_0 rows) repacked; dst must not overlap src.
 */
int kc_q8_0_r8_fits(int n_in);
void kc_pack_q8_0_r8(void *dst, const void *src, int n_in, int n_out);

/*
 * The two halves of kc_matmul, for several weights that multiply the same x
 * (Q, K and V; gate and up): kc_matmul_prepare converts x for wtype into s
 * (for F32 it only remembers x, which must then stay unchanged);
 * kc_matmul_prepared then multiplies by any W of that type and n_in.
 */
void kc_matmul_prepare(struct kc_pool *p, struct kc_scratch *s, const float *x, int wtype,
                       int n_tokens, int n_in);
void kc_matmul_prepared(struct kc_pool *p, float *y, const void *w, int n_out,
                        const struct kc_scratch *s);
