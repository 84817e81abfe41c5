/*
 * ops (CUDA): the element-wise kernels of the forward pass: embedding
 * gather, RMSNorm (with the residual add fused), RoPE with the KV store,
 * SwiGLU, activation preparation for the projections, and the weight
 * conversions done once at load.
 *
 * Key decision: each computes what kernels/cpu computes in the same order
 * where the order decides the rounding, with the _rn intrinsics wherever
 * nvcc would otherwise contract a*b+c into an FMA: RMSNorm (squares summed
 * in double), RoPE, the embedding and the Q8_0 quantization of activations
 * are bit for bit the CPU's (tests/test_cuda.c checks it); SwiGLU differs by
 * expf's last bit. These kernels are a few percent of a step: one block per
 * row, plain loops; the projections and attention are where the time goes.
 */
#include "kernels/cuda/kcu.cuh"

#include <math.h>
#include <stdio.h>

extern "C" {
#include "common/log.h"
}

int kcu_fail(char *err, size_t errlen, const char *file, int line, const char *what,
             const char *why)
{
    if (err && errlen > 0)
        snprintf(err, errlen, "%s:%d: %s: %s", file, line, what, why);
    log_error("cuda: %s:%d: %s: %s", file, line, what, why);
    return -1;
}

size_t kcu_matrix_bytes(int type, int n_in, int n_out)
{
    size_t n = (size_t)n_in * (size_t)n_out;
    return type == KCU_T_Q8_0 ? n + n / KCU_QK * 2 : n * 2;
}

/* ---- helpers ---- */

template <typename T> static __device__ T warp_sum(T v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32); every thread gets it. */
template <typename T> static __device__ T block_sum(T v, T *sh)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); // sh may still be read from an earlier call
    if (lane == 0)
        sh[warp] = v;
    __syncthreads();
    T t = lane < nw ? sh[lane] : (T)0;
    return warp_sum(t);
}

static __device__ float half_bits_to_float(uint16_t b)
{
    return __half2float(__ushort_as_half(b));
}

/*
 * Write row r of n values val(i) in out's mode. Q8: one thread per block of
 * 32, exactly kernels/cpu's quantize_row_q8_0_ref: d = amax / 127, q =
 * roundf(x / d) (half away from zero), d kept as fp16.
 */
template <class F> static __device__ void emit_row(const kcu_act &out, int r, int n, F val)
{
    if (out.mode == KCU_ACT_Q8) {
        const int nb = n / KCU_QK;
        for (int b = threadIdx.x; b < nb; b += blockDim.x) {
            float v[KCU_QK];
            float amax = 0.0f;
#pragma unroll
            for (int j = 0; j < KCU_QK; j++) {
                v[j] = val(b * KCU_QK + j);
                const float a = fabsf(v[j]);
                amax = amax > a ? amax : a;
            }
            const float d = amax / 127.0f;
            const float id = d != 0.0f ? 1.0f / d : 0.0f;
            int packed[KCU_QK / 4];
#pragma unroll
            for (int j = 0; j < KCU_QK / 4; j++) {
                int w = 0;
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int q = (int)roundf(__fmul_rn(v[4 * j + e], id));
                    w |= (q & 0xff) << (8 * e);
                }
                packed[j] = w;
            }
            int4 *dst = (int4 *)(out.q + (size_t)r * n + (size_t)b * KCU_QK);
            dst[0] = make_int4(packed[0], packed[1], packed[2], packed[3]);
            dst[1] = make_int4(packed[4], packed[5], packed[6], packed[7]);
            out.d[(size_t)r * nb + b] = __half2float(__float2half_rn(d));
        }
    } else if (out.mode == KCU_ACT_F16) {
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            out.h[(size_t)r * n + i] = __float2half_rn(val(i));
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            out.f[(size_t)r * n + i] = val(i);
    }
}

/* ---- embedding ---- */

static __global__ void k_embed(float *x, const int *ids, const uint8_t *table, int type, int dim)
{
    const int t = blockIdx.x;
    const size_t id = (size_t)ids[t];
    float *o = x + (size_t)t * dim;
    if (type == KCU_T_F32) {
        const float *row = (const float *)table + id * dim;
        for (int i = threadIdx.x; i < dim; i += blockDim.x)
            o[i] = row[i];
    } else if (type == KCU_T_F16 || type == KCU_T_BF16) {
        const uint16_t *row = (const uint16_t *)table + id * dim;
        for (int i = threadIdx.x; i < dim; i += blockDim.x)
            o[i] = type == KCU_T_F16 ? half_bits_to_float(row[i])
                                     : __uint_as_float((uint32_t)row[i] << 16);
    } else { // Q8_0: blocks of 34 bytes, 2-byte aligned
        const uint8_t *row = table + id * (size_t)(dim / KCU_QK) * 34;
        for (int i = threadIdx.x; i < dim; i += blockDim.x) {
            const uint8_t *blk = row + (size_t)(i / KCU_QK) * 34;
            const float d = half_bits_to_float((uint16_t)(blk[0] | blk[1] << 8));
            o[i] = __fmul_rn(d, (float)(int8_t)blk[2 + i % KCU_QK]);
        }
    }
}

int kcu_embed(cudaStream_t st, float *x, const int *ids, int n, const void *table, int type,
              int dim, char *err, size_t errlen)
{
    if (n <= 0)
        return 0;
    k_embed<<<n, 128, 0, st>>>(x, ids, (const uint8_t *)table, type, dim);
    KCU_LAUNCHED("k_embed");
    return 0;
}

/* ---- RMSNorm ---- */

static __global__ void __launch_bounds__(256)
    k_rmsnorm(const float *x, const float *y, float *x_out, const int *rows,
              const float *__restrict__ w, int dim, float eps, kcu_act out)
{
    __shared__ double red[32];
    const int r = blockIdx.x;
    const size_t src = (size_t)(rows ? rows[r] : r) * dim;
    double ss = 0.0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = x[src + i];
        if (y)
            v = __fadd_rn(v, y[src + i]);
        if (x_out)
            x_out[src + i] = v;
        ss += (double)__fmul_rn(v, v);
    }
    ss = block_sum(ss, red); // its barriers also publish x_out to the block
    const float mean = (float)(ss / dim);
    const float scale = 1.0f / sqrtf(__fadd_rn(mean, eps));
    emit_row(out, r, dim, [&](int i) {
        float v;
        if (x_out)
            v = x_out[src + i];
        else
            v = y ? __fadd_rn(x[src + i], y[src + i]) : x[src + i];
        return __fmul_rn(__fmul_rn(v, scale), w[i]);
    });
}

int kcu_rmsnorm(cudaStream_t st, const float *x, const float *y, float *x_out, const int *rows,
                int n, const float *w, int dim, float eps, const struct kcu_act *out, char *err,
                size_t errlen)
{
    if (n <= 0)
        return 0;
    k_rmsnorm<<<n, 256, 0, st>>>(x, y, x_out, rows, w, dim, eps, *out);
    KCU_LAUNCHED("k_rmsnorm");
    return 0;
}

/* ---- RoPE + KV store ---- */

static __global__ void k_rope_store(float *q_out, __half *kc, __half *vc, const float *qkv,
                                    const int *pos, const int *tab, const int *flat,
                                    const float *rope, int n_heads, int n_kv, int hd, int bs)
{
    const int t = blockIdx.x, p = pos[t];
    const int q_dim = n_heads * hd, kv_dim = n_kv * hd, half_hd = hd / 2;
    const float *row = qkv + (size_t)t * (q_dim + 2 * kv_dim);
    const float *cs = rope + (size_t)p * hd;
    // llama "normal" RoPE: adjacent pairs, as kc_rope_ref (no FMA)
    for (int i = threadIdx.x; i < q_dim / 2; i += blockDim.x) {
        const int h = i / half_hd, j = (i % half_hd) * 2;
        const float c = cs[j], s = cs[j + 1];
        const float x0 = row[h * hd + j], x1 = row[h * hd + j + 1];
        float *o = q_out + (size_t)t * q_dim + h * hd + j;
        o[0] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        o[1] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    }
    const size_t blk = (size_t)flat[tab[t] + p / bs];
    const int r = p % bs;
    const float *k = row + q_dim, *v = row + q_dim + kv_dim;
    for (int i = threadIdx.x; i < kv_dim / 2; i += blockDim.x) {
        const int h = i / half_hd, j = (i % half_hd) * 2;
        const float c = cs[j], s = cs[j + 1];
        const float x0 = k[h * hd + j], x1 = k[h * hd + j + 1];
        const size_t at = ((blk * n_kv + h) * bs + r) * hd + j;
        kc[at] = __float2half_rn(__fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s)));
        kc[at + 1] = __float2half_rn(__fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c)));
        vc[at] = __float2half_rn(v[h * hd + j]);
        vc[at + 1] = __float2half_rn(v[h * hd + j + 1]);
    }
}

int kcu_rope_store(cudaStream_t st, float *q_out, __half *k_cache, __half *v_cache,
                   const float *qkv, const int *pos, const int *tab, const int *flat, int n,
                   const float *rope, int n_heads, int n_kv_heads, int head_dim, int block_size,
                   char *err, size_t errlen)
{
    if (n <= 0)
        return 0;
    k_rope_store<<<n, 128, 0, st>>>(q_out, k_cache, v_cache, qkv, pos, tab, flat, rope, n_heads,
                                    n_kv_heads, head_dim, block_size);
    KCU_LAUNCHED("k_rope_store");
    return 0;
}

/* ---- SwiGLU and preparation ---- */

static __global__ void __launch_bounds__(256) k_swiglu(const float *gu, int ffn, kcu_act out)
{
    const int r = blockIdx.x;
    const float *g = gu + (size_t)r * 2 * ffn, *u = g + ffn;
    emit_row(out, r, ffn, [&](int i) {
        const float x = g[i];
        return __fmul_rn(x / __fadd_rn(1.0f, expf(-x)), u[i]);
    });
}

int kcu_swiglu(cudaStream_t st, const float *gu, int n, int ffn, const struct kcu_act *out,
               char *err, size_t errlen)
{
    if (n <= 0)
        return 0;
    k_swiglu<<<n, 256, 0, st>>>(gu, ffn, *out);
    KCU_LAUNCHED("k_swiglu");
    return 0;
}

static __global__ void __launch_bounds__(256) k_prepare(const float *x, int dim, kcu_act out)
{
    const int r = blockIdx.x;
    const float *row = x + (size_t)r * dim;
    emit_row(out, r, dim, [&](int i) { return row[i]; });
}

int kcu_prepare(cudaStream_t st, const float *x, int n, int dim, const struct kcu_act *out,
                char *err, size_t errlen)
{
    if (n <= 0)
        return 0;
    k_prepare<<<n, 256, 0, st>>>(x, dim, *out);
    KCU_LAUNCHED("k_prepare");
    return 0;
}

/* ---- weight conversion at load ---- */

static __global__ void k_to_f16(__half *dst, const uint8_t *src, int type, int n_in, size_t n)
{
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x) {
        float v;
        if (type == KCU_T_F32) {
            v = ((const float *)src)[e];
        } else if (type == KCU_T_F16) {
            dst[e] = ((const __half *)src)[e];
            continue;
        } else if (type == KCU_T_BF16) {
            v = __uint_as_float((uint32_t)((const uint16_t *)src)[e] << 16);
        } else {
            const size_t r = e / n_in, i = e % n_in;
            const uint8_t *blk = src + (r * (n_in / KCU_QK) + i / KCU_QK) * 34;
            v = __fmul_rn(half_bits_to_float((uint16_t)(blk[0] | blk[1] << 8)),
                          (float)(int8_t)blk[2 + i % KCU_QK]);
        }
        dst[e] = __float2half_rn(v);
    }
}

static __global__ void k_q8_split(int8_t *q, __half *d, const uint8_t *src, size_t n_blocks)
{
    for (size_t b = blockIdx.x * (size_t)blockDim.x + threadIdx.x; b < n_blocks;
         b += (size_t)gridDim.x * blockDim.x) {
        const uint8_t *blk = src + b * 34;
        d[b] = __ushort_as_half((uint16_t)(blk[0] | blk[1] << 8));
        for (int j = 0; j < KCU_QK; j++)
            q[b * KCU_QK + j] = (int8_t)blk[2 + j];
    }
}

static int grid_for(size_t n, int threads)
{
    size_t g = (n + threads - 1) / threads;
    return g > 65536 ? 65536 : (int)(g > 0 ? g : 1);
}

int kcu_convert_rows(cudaStream_t st, const struct kcu_matrix *dst, int row0, const void *src,
                     int src_type, int n_rows, char *err, size_t errlen)
{
    const size_t n = (size_t)n_rows * dst->n_in;
    if (dst->type == KCU_T_Q8_0) {
        if (src_type != KCU_T_Q8_0)
            return kcu_fail(err, errlen, __FILE__, __LINE__, "kcu_convert_rows",
                            "only Q8_0 converts to Q8_0");
        const size_t nb = n / KCU_QK;
        k_q8_split<<<grid_for(nb, 256), 256, 0, st>>>(dst->q + (size_t)row0 * dst->n_in,
                                                      dst->d + (size_t)row0 * (dst->n_in / KCU_QK),
                                                      (const uint8_t *)src, nb);
        KCU_LAUNCHED("k_q8_split");
        return 0;
    }
    k_to_f16<<<grid_for(n, 256), 256, 0, st>>>(dst->h + (size_t)row0 * dst->n_in,
                                               (const uint8_t *)src, src_type, dst->n_in, n);
    KCU_LAUNCHED("k_to_f16");
    return 0;
}

/* ---- random weights (synthetic models) ---- */

static __device__ uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in [-1, 1) for element e of stream seed */
static __device__ float uniform_pm1(uint64_t seed, size_t e)
{
    const uint64_t z = mix64(seed + 0x9e3779b97f4a7c15ull * (e + 1));
    return (float)(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

static __global__ void k_fill_f16(__half *p, size_t n, float a, uint64_t seed)
{
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x)
        p[e] = __float2half_rn(a * uniform_pm1(seed, e));
}

static __global__ void k_fill_q8(int8_t *q, __half *d, size_t n, float a, uint64_t seed)
{
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x) {
        q[e] = (int8_t)rintf(127.0f * uniform_pm1(seed, e));
        if (e % KCU_QK == 0)
            d[e / KCU_QK] = __float2half_rn(a / 127.0f);
    }
}

static __global__ void k_fill_f32(float *p, size_t n, float v)
{
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x)
        p[e] = v;
}

int kcu_fill_random_f16(cudaStream_t st, __half *p, size_t n, float std, uint64_t seed, char *err,
                        size_t errlen)
{
    // uniform on [-a, a) has standard deviation a / sqrt(3)
    k_fill_f16<<<grid_for(n, 256), 256, 0, st>>>(p, n, std * 1.7320508f, seed);
    KCU_LAUNCHED("k_fill_f16");
    return 0;
}

int kcu_fill_random(cudaStream_t st, const struct kcu_matrix *m, float std, uint64_t seed,
                    char *err, size_t errlen)
{
    const size_t n = (size_t)m->n_in * m->n_out;
    if (m->type == KCU_T_F16)
        return kcu_fill_random_f16(st, m->h, n, std, seed, err, errlen);
    k_fill_q8<<<grid_for(n, 256), 256, 0, st>>>(m->q, m->d, n, std * 1.7320508f, seed);
    KCU_LAUNCHED("k_fill_q8");
    return 0;
}

int kcu_fill_f32(cudaStream_t st, float *p, size_t n, float v, char *err, size_t errlen)
{
    k_fill_f32<<<grid_for(n, 256), 256, 0, st>>>(p, n, v);
    KCU_LAUNCHED("k_fill_f32");
    return 0;
}
