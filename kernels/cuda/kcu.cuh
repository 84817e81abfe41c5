/*
 * kcu: what the CUDA modules share (CUDA C++ only; C code sees
 * kernels/backend.h and kernels/cuda/check.h, never this).
 *
 * - Errors: every CUDA and cuBLAS call is checked; a failure becomes -1 with
 *   "file:line: call: reason" in the caller's err buffer and one log line
 *   (KCU_CK, KCU_BLAS, KCU_LAUNCHED). Nothing aborts.
 * - Weights on the device (struct kcu_matrix): FP16 rows, or Q8_0 split in
 *   two arrays (the int8 values row-major, then one fp16 scale per block of
 *   32), so that a warp reads 16-byte runs of either.
 * - Activations that feed a projection are "prepared" by whoever produces
 *   them (struct kcu_act): fp16 for cuBLAS and the FP16 GEMV, or Q8_0 blocks
 *   (int8 + f32 scale per 32, exactly as kernels/cpu quantizes them) for the
 *   Q8_0 GEMV, or f32 (tests).
 * - KV cache layout, per layer: (blocks, n_kv_heads, block_size, head_dim)
 *   fp16, so one head's rows of one block are one contiguous run.
 * - Every launcher enqueues on the stream it is given and never syncs.
 */
#pragma once

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/backend.h"

/* ggml type ids of the weights (kernels/cpu/dtype.h, which is C only) */
enum {
    KCU_T_F32 = 0,
    KCU_T_F16 = 1,
    KCU_T_Q8_0 = 8,
    KCU_T_BF16 = 30,
};

#define KCU_QK            32  /* values per Q8_0 block */
#define KCU_GEMV_MAX      8   /* tokens up to which our own GEMV kernels run */
#define KCU_ATT_THREADS   128 /* threads of the attention kernels */
#define KCU_MAX_SPLITS    32  /* most pieces a decode token's context is cut into */
#define KCU_MIN_SPLIT_LEN 32  /* fewest positions per piece */

/* ---- errors ---- */

/* Write "file:line: what: why" into err, log it, return -1. */
int kcu_fail(char *err, size_t errlen, const char *file, int line, const char *what,
             const char *why);

#define KCU_CK(call)                                                                               \
    do {                                                                                           \
        cudaError_t kcu_e_ = (call);                                                               \
        if (kcu_e_ != cudaSuccess)                                                                 \
            return kcu_fail(err, errlen, __FILE__, __LINE__, #call, cudaGetErrorString(kcu_e_));   \
    } while (0)

#define KCU_BLAS(call)                                                                             \
    do {                                                                                           \
        cublasStatus_t kcu_s_ = (call);                                                            \
        if (kcu_s_ != CUBLAS_STATUS_SUCCESS)                                                       \
            return kcu_fail(err, errlen, __FILE__, __LINE__, #call,                                \
                            cublasGetStatusString(kcu_s_));                                        \
    } while (0)

/* After a kernel launch: a bad launch configuration shows here (no sync). */
#define KCU_LAUNCHED(name)                                                                         \
    do {                                                                                           \
        cudaError_t kcu_e_ = cudaGetLastError();                                                   \
        if (kcu_e_ != cudaSuccess)                                                                 \
            return kcu_fail(err, errlen, __FILE__, __LINE__, "launch of " name,                    \
                            cudaGetErrorString(kcu_e_));                                           \
    } while (0)

/* ---- weights ---- */

struct kcu_matrix {
    int type;  /* KCU_T_F16 or KCU_T_Q8_0 */
    int n_in;  /* values per row */
    int n_out; /* rows */
    __half *h; /* (n_out, n_in) when F16 */
    int8_t *q; /* (n_out, n_in) when Q8_0 */
    __half *d; /* (n_out, n_in / 32) scales when Q8_0 */
};

/* Device bytes of a matrix of this type and shape. */
size_t kcu_matrix_bytes(int type, int n_in, int n_out);

/* ---- prepared activations ---- */

enum kcu_act_mode {
    KCU_ACT_F16 = 0, /* h: fp16, nearest even */
    KCU_ACT_Q8 = 1,  /* q, d: Q8_0 blocks (n % 32 == 0) */
    KCU_ACT_F32 = 2, /* f: as computed */
};

struct kcu_act {
    int mode;
    __half *h; /* (rows, n) */
    int8_t *q; /* (rows, n) */
    float *d;  /* (rows, n / 32) */
    float *f;  /* (rows, n) */
};

/* The mode a projection by w wants its input of n_tokens rows in. */
static inline int kcu_act_mode_for(const struct kcu_matrix *w, int n_tokens)
{
    return w->type == KCU_T_Q8_0 && n_tokens <= KCU_GEMV_MAX ? KCU_ACT_Q8 : KCU_ACT_F16;
}

/* ---- element-wise kernels (ops.cu) ---- */

/* x (n, dim) f32 = rows ids[i] of table (vocab, dim) of ggml type `type`. */
int kcu_embed(cudaStream_t st, float *x, const int *ids, int n, const void *table, int type,
              int dim, char *err, size_t errlen);

/*
 * For each of n rows r: v = x[src] (+ y[src] when y), src = rows ? rows[r] :
 * r; x_out[src] = v when x_out (the residual add, in place when x_out == x);
 * out row r = rmsnorm(v) * w, prepared. As kernels/cpu: squares summed in
 * double, scale = 1 / sqrtf(mean + eps), (v * scale) * w.
 */
int kcu_rmsnorm(cudaStream_t st, const float *x, const float *y, float *x_out, const int *rows,
                int n, const float *w, int dim, float eps, const struct kcu_act *out, char *err,
                size_t errlen);

/*
 * RoPE and the KV store for n tokens: qkv (n, q_dim + 2 kv_dim) f32 from the
 * fused projection; q_out (n, q_dim) = q rotated; K rotated and V into the
 * layer's caches (fp16, nearest even) at each token's position.
 * rope (context, head_dim): cos/sin pairs per position (kc_rope_table).
 */
int kcu_rope_store(cudaStream_t st, float *q_out, __half *k_cache, __half *v_cache,
                   const float *qkv, const int *pos, const int *tab, const int *flat, int n,
                   const float *rope, int n_heads, int n_kv_heads, int head_dim, int block_size,
                   char *err, size_t errlen);

/* out row t = silu(gu[t][0..ffn)) * gu[t][ffn..2 ffn), prepared; n rows. */
int kcu_swiglu(cudaStream_t st, const float *gu, int n, int ffn, const struct kcu_act *out,
               char *err, size_t errlen);

/* out = x (n, dim) f32, prepared (its mode must not be F32). */
int kcu_prepare(cudaStream_t st, const float *x, int n, int dim, const struct kcu_act *out,
                char *err, size_t errlen);

/* dst rows [row0, row0 + n_rows) of a matrix from n_rows rows of n_in values of
 * ggml type src_type at src (device memory): F32/F16/BF16/Q8_0 to F16, or
 * Q8_0 to Q8_0 (split). */
int kcu_convert_rows(cudaStream_t st, const struct kcu_matrix *dst, int row0, const void *src,
                     int src_type, int n_rows, char *err, size_t errlen);

/* Fill with random values of standard deviation std (uniform, deterministic
 * in seed): the weights of synthetic models. */
int kcu_fill_random(cudaStream_t st, const struct kcu_matrix *m, float std, uint64_t seed,
                    char *err, size_t errlen);
int kcu_fill_random_f16(cudaStream_t st, __half *p, size_t n, float std, uint64_t seed, char *err,
                        size_t errlen);
int kcu_fill_f32(cudaStream_t st, float *p, size_t n, float v, char *err, size_t errlen);

/* ---- projections (matmul.cu) ---- */

/*
 * y (n_tokens, w->n_out) f32 = x W^T, x prepared in kcu_act_mode_for(w,
 * n_tokens). scratch: fp16 room for the largest Q8_0 matrix (dequantised for
 * cuBLAS above KCU_GEMV_MAX tokens), NULL when there is none. own_f16: our
 * GEMV instead of cuBLAS for FP16 weights up to KCU_GEMV_MAX tokens.
 */
int kcu_matmul(cudaStream_t st, cublasHandle_t blas, float *y, const struct kcu_act *x,
               const struct kcu_matrix *w, int n_tokens, __half *scratch, int own_f16, char *err,
               size_t errlen);

/* ---- attention (attention.cu) ---- */

struct kcu_attn {
    const float *q;              /* (T, n_heads * head_dim) rotated queries */
    float *out_f;                /* (T, n_heads * head_dim) f32, or NULL */
    __half *out_h;               /* the same in fp16, or NULL */
    const __half *k, *v;         /* the layer's caches */
    const int *pos, *tab, *flat; /* per token: position, its table in flat; block ids */
    float *part_o, *part_ml;     /* split partials: (n_dec * n_splits * n_heads) x head_dim, x 2 */
    int block_size, n_heads, n_kv_heads, head_dim, window;
    float scale;
};

/* Whether the attention kernels support this shape (head_dim 16..256, a
 * power of two; up to 8 query heads per KV head). */
int kcu_attn_supported(int head_dim, int group);

/* Query tokens one prefill tile holds for this shape. */
int kcu_attn_tile_tokens(int head_dim, int group);

/* Raise the shared-memory limit of the prefill kernels (once per device). */
int kcu_attn_init(char *err, size_t errlen);

/*
 * Cut a batch of n tokens into decode tokens and prefill tiles: a run of
 * consecutive positions with the same table (tab[t], the offset of the
 * token's block table) of two tokens or more is cut into tiles of at most qt
 * tokens (4 ints each, see kcu_attn_prefill); the others are decode tokens
 * (dec: their batch rows).
 */
void kcu_attn_plan(const int *pos, const int *tab, int n, int qt, int *dec, int *n_dec, int *tiles,
                   int *n_tiles);

/* Pieces a decode step of n_dec tokens cuts each context into. */
int kcu_attn_splits(int n_dec, int n_kv_heads, int sm_count, int part_cap);

/*
 * Decode: one query token each, dec (n_dec) their batch rows, each context
 * cut into n_splits pieces (flash-decoding), then combined. Prefill: tiles
 * (n_tiles x 4 ints: first batch row, tokens, first position, table offset)
 * of consecutive tokens of one sequence, flash-attention style. Position p
 * attends to max(0, p - window + 1) .. p (window 0: from 0).
 */
int kcu_attn_decode(cudaStream_t st, const struct kcu_attn *a, const int *dec, int n_dec,
                    int n_splits, char *err, size_t errlen);
int kcu_attn_prefill(cudaStream_t st, const struct kcu_attn *a, const int *tiles, int n_tiles,
                     char *err, size_t errlen);

/* ---- sampling (sample.cu) ---- */

/*
 * For each of n rows: sample from logits row rows[i].row (vocab floats,
 * modified in place by the penalties) into ids[i]; counts (slots, vocab)
 * hold each slot's accepted tokens and are updated.
 */
int kcu_sample(cudaStream_t st, int *ids, float *logits, int vocab, uint32_t *counts,
               const struct backend_sample *rows, int n, char *err, size_t errlen);
