/*
 * ops: the element-wise kernels of the forward pass (RMSNorm, RoPE,
 * SwiGLU, softmax, residual add) on f32 vectors.
 *
 * Key decision: each computes what the reference implementation (ggml's CPU
 * ops) computes, in the same order where the order matters for rounding:
 * RMSNorm sums squares in double; softmax sums in double and multiplies by
 * 1/sum; RoPE angles are pos * base^(-2i/d) built by repeated f32
 * multiplication as ggml's rope cache does. Each has a scalar reference
 * (the *_ref functions, also the fallback) and an AVX2 path; exp in the
 * AVX2 softmax/SwiGLU is a polynomial within 2 ulp of expf (tests).
 *
 * All pointers are borrowed; single-threaded and thread-safe (the caller
 * splits rows across the pool).
 */
#pragma once

/* out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]; out may equal x. */
void kc_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
void kc_rmsnorm_ref(float *out, const float *x, const float *w, int n, float eps);

/*
 * One row of the RoPE table for position pos: cs[2i] = cos(pos * theta_i),
 * cs[2i+1] = sin(pos * theta_i), theta_i = base^(-2i/head_dim), for i <
 * head_dim/2 (head_dim even). kc_rope_table fills rows 0..n_pos-1 of cs
 * (n_pos, head_dim).
 */
void kc_rope_row(float *cs, int pos, int head_dim, float base);
void kc_rope_table(float *cs, int n_pos, int head_dim, float base);

/*
 * Rotate the adjacent pairs (x[2i], x[2i+1]) of each of n_heads heads of x
 * (n_heads, head_dim) in place by the angles of one table row cs
 * (head_dim): llama "normal" RoPE as ggml applies it to GGUF llama models.
 */
void kc_rope(float *x, int n_heads, int head_dim, const float *cs);
void kc_rope_ref(float *x, int n_heads, int head_dim, const float *cs);

/* out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)); out may
 * equal gate or up. out[i] depends on gate[i] and up[i] alone, not on i or
 * n (the forward pass calls it on a whole batch). */
void kc_swiglu(float *out, const float *gate, const float *up, int n);
void kc_swiglu_ref(float *out, const float *gate, const float *up, int n);

/* x = exp(x - max x) / sum, in place; n >= 1. */
void kc_softmax(float *x, int n);
void kc_softmax_ref(float *x, int n);

/* out[i] = a[i] + b[i]; out may equal a or b (out = a: the residual add). */
void kc_add(float *out, const float *a, const float *b, int n);
void kc_add_ref(float *out, const float *a, const float *b, int n);

/* out[i] = exp(x[i]) with the AVX2 polynomial where available (expf
 * otherwise); exposed for its accuracy test. */
void kc_exp_row(float *out, const float *x, int n);
