/*
 * check: each CUDA kernel run once on host data, for tests/test_cuda.c,
 * which compares it with its kernels/cpu reference (plain C; no CUDA types).
 *
 * Every function allocates device memory, copies its inputs in, runs the
 * kernel on the default stream, copies the outputs back and frees; returns
 * 0, or -1 with a message in err (no device, a CUDA error). Pointers are
 * borrowed. Slow by design: these are for correctness, not speed. Only in
 * builds with CUDA (MILLRACE_CUDA).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct backend_sample;

/* out (n, dim) = rows ids[0..n) of table (vocab, dim) of ggml type `type`
 * (F32, F16, BF16, Q8_0; as GGUF stores it). */
int kcu_check_embed(float *out, const void *table, int type, int vocab, int dim, const int *ids,
                    int n, char *err, size_t errlen);

/*
 * out (rows, dim) = rmsnorm(x + y) * w (y may be NULL), f32; x_out (may be
 * NULL) receives x + y. With q_out and d_out: the same rows as the kernel
 * quantizes them for a Q8_0 projection (dim % 32 == 0): q_out (rows, dim),
 * d_out (rows, dim / 32).
 */
int kcu_check_rmsnorm(float *out, float *x_out, int8_t *q_out, float *d_out, const float *x,
                      const float *y, const float *w, int rows, int dim, float eps, char *err,
                      size_t errlen);

/*
 * RoPE and the KV store: qkv (n, (n_heads + 2 n_kv_heads) * head_dim) as the
 * fused projection writes it; q_out (n, n_heads * head_dim) the rotated
 * queries; k_out, v_out (n, n_kv_heads * head_dim) fp16 bits of what went
 * into the cache (K rotated). Angles from kc_rope_table(context_len, base).
 */
int kcu_check_rope_store(float *q_out, uint16_t *k_out, uint16_t *v_out, const float *qkv,
                         const int *pos, int n, int n_heads, int n_kv_heads, int head_dim,
                         int context_len, float base, char *err, size_t errlen);

/* out (rows, ffn) = silu(gate) * up, f32; with q_out/d_out also quantized
 * to Q8_0 as for the down projection (ffn % 32 == 0). */
int kcu_check_swiglu(float *out, int8_t *q_out, float *d_out, const float *gate, const float *up,
                     int rows, int ffn, char *err, size_t errlen);

/*
 * y (n_tokens, n_out) = x (n_tokens, n_in) W^T with W (n_out, n_in) of ggml
 * type wtype as GGUF stores it, through the backend's path: W as FP16 (or
 * Q8_0), x prepared as the backend prepares it (fp16; Q8_0 for Q8_0 weights
 * up to 8 tokens). own_f16: our FP16 GEMV instead of cuBLAS (up to 8 tokens,
 * n_in % 8 == 0).
 */
int kcu_check_matmul(float *y, const float *x, const void *w, int wtype, int n_tokens, int n_in,
                     int n_out, int own_f16, char *err, size_t errlen);

/*
 * Attention of n query tokens q (n, n_heads * head_dim) into out (same
 * shape) over a KV cache in kernels/cpu's layout: k_cache, v_cache
 * (n_blocks, block_size, n_kv_heads * head_dim) fp16 bits; token t is at
 * pos[t] of sequence seq[t], whose blocks are tables[seq[t]]. The batch is
 * planned as the backend plans it (runs of consecutive positions of one
 * sequence go to the prefill kernel), or decode_only: every token to the
 * decode kernel. n_splits: pieces per decode context (0: as the backend).
 */
int kcu_check_attention(float *out, const float *q, const uint16_t *k_cache,
                        const uint16_t *v_cache, int n_blocks, int block_size, int n_heads,
                        int n_kv_heads, int head_dim, int window, const int *pos, const int *seq,
                        const int *const *tables, int n, int decode_only, int n_splits, char *err,
                        size_t errlen);

/*
 * The sampling kernel on logits (n_rows, vocab): rows[i].row picks the row;
 * logits get the penalties applied in place (copied back); counts (n_slots,
 * vocab), may be NULL when no row has a slot, are updated as the kernel
 * updates them. ids (n).
 */
int kcu_check_sample(int *ids, float *logits, int n_rows, int vocab, uint32_t *counts, int n_slots,
                     const struct backend_sample *rows, int n, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
