/*
 * matmul (CUDA): y = x W^T for the projections.
 *
 * Shapes as kernels/cpu/matmul.h: x (n_tokens, n_in), W (n_out, n_in)
 * row-major, y (n_tokens, n_out) f32.
 *
 * Key decisions:
 * - FP16 weights: cuBLAS (cublasGemmEx, tensor cores, fp16 in, f32
 *   accumulate and out) at every batch size by default; published H100
 *   figures put cuBLAS at 86-92 % of memory bandwidth already at M = 1 for
 *   matrices of this size (../shared/research/gpu-performance.md 3.1). Our
 *   own GEMV (k_gemv_f16: a warp per row, 16-byte loads, up to 8 tokens) is
 *   the alternative, MILLRACE_CUDA_GEMV=own; scripts/gpu-check.sh measures
 *   both at batch 1.
 * - Q8_0 weights up to KCU_GEMV_MAX tokens: k_gemv_q8 reads the int8 values
 *   and scales as stored (1.06 bytes per weight, half of FP16) and takes x
 *   quantized to Q8_0 exactly as kernels/cpu does, so each block's dot
 *   product is the same exact int32 (dp4a) times the same two scales; only
 *   the order of the f32 sum over blocks differs from the CPU's.
 * - Q8_0 above that: the matrix is dequantised to fp16 into a scratch
 *   (read 1.06 + write 2 + read 2 bytes per weight) and goes through cuBLAS;
 *   that is compute-bound territory anyway.
 */
#include "kernels/cuda/kcu.cuh"

#define GEMV_WARPS 8 /* rows (one per warp) per block */

template <typename T> static __device__ T warp_sum(T v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* acc[t] += dot of 8 fp16 weights w and 8 fp16 x values */
static __device__ float dot8_f16(uint4 w, uint4 x, float acc)
{
    const __half2 *wh = (const __half2 *)&w, *xh = (const __half2 *)&x;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 a = __half22float2(wh[k]), b = __half22float2(xh[k]);
        acc = fmaf(a.x, b.x, acc);
        acc = fmaf(a.y, b.y, acc);
    }
    return acc;
}

/* One warp per output row; each lane reads 8 weights (16 bytes) at a time. */
template <int NT>
static __global__ void __launch_bounds__(GEMV_WARPS * 32)
    k_gemv_f16(float *__restrict__ y, const __half *__restrict__ x, const __half *__restrict__ w,
               int n_in, int n_out, int nt)
{
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= n_out)
        return;
    const uint4 *wr = (const uint4 *)(w + (size_t)row * n_in);
    const int n8 = n_in / 8;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
#pragma unroll 4
    for (int c = lane; c < n8; c += 32) {
        const uint4 wv = __ldg(wr + c);
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (t < nt)
                acc[t] = dot8_f16(wv, __ldg((const uint4 *)(x + (size_t)t * n_in) + c), acc[t]);
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        const float s = warp_sum(acc[t]);
        if (lane == 0 && t < nt)
            y[(size_t)t * n_out + row] = s;
    }
}

/*
 * One warp per output row over Q8_0: lane pairs share a block of 32 (16
 * bytes each), a warp reads 512 contiguous bytes of the row per step.
 * Per block: int32 = sum of the 32 products (4 dp4a per lane, then the
 * pair's two halves), times (weight scale * x scale) in f32, as kernels/cpu.
 */
template <int NT>
static __global__ void __launch_bounds__(GEMV_WARPS * 32)
    k_gemv_q8(float *__restrict__ y, const int8_t *__restrict__ xq, const float *__restrict__ xd,
              const int8_t *__restrict__ wq, const __half *__restrict__ wd, int n_in, int n_out,
              int nt)
{
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= n_out)
        return;
    const int nb = n_in / KCU_QK, n16 = n_in / 16; // n16 is even
    const int4 *wr = (const int4 *)(wq + (size_t)row * n_in);
    const __half *wdr = wd + (size_t)row * nb;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
#pragma unroll 4
    for (int base = 0; base < n16; base += 32) { // uniform across the warp
        const int c = base + lane, b = c >> 1;
        const bool ok = c < n16;
        const int4 wv = ok ? __ldg(wr + c) : make_int4(0, 0, 0, 0);
        const float dw = ok ? __half2float(wdr[b]) : 0.0f;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t >= nt)
                continue;
            int s = 0;
            float dx = 0.0f;
            if (ok) {
                const int4 xv = __ldg((const int4 *)(xq + (size_t)t * n_in) + c);
                s = __dp4a(wv.x, xv.x, s);
                s = __dp4a(wv.y, xv.y, s);
                s = __dp4a(wv.z, xv.z, s);
                s = __dp4a(wv.w, xv.w, s);
                dx = xd[(size_t)t * nb + b];
            }
            s += __shfl_xor_sync(0xffffffffu, s, 1);
            if (ok && (lane & 1) == 0)
                acc[t] = fmaf((float)s, __fmul_rn(dw, dx), acc[t]);
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        const float s = warp_sum(acc[t]);
        if (lane == 0 && t < nt)
            y[(size_t)t * n_out + row] = s;
    }
}

static __global__ void k_dequant_q8(__half *dst, const int8_t *q, const __half *d, size_t n)
{
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x)
        dst[e] = __float2half_rn(__half2float(d[e / KCU_QK]) * (float)q[e]);
}

static int gemm_f16(cudaStream_t st, cublasHandle_t blas, float *y, const __half *x,
                    const __half *w, int n_tokens, int n_in, int n_out, char *err, size_t errlen)
{
    (void)st; // the handle is bound to the stream at creation
    const float one = 1.0f, zero = 0.0f;
    // column-major view: y^T (n_out x T) = W (n_in x n_out)^T . x^T (n_in x T)
    KCU_BLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, n_out, n_tokens, n_in, &one, w,
                          CUDA_R_16F, n_in, x, CUDA_R_16F, n_in, &zero, y, CUDA_R_32F, n_out,
                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

template <int NT>
static void launch_gemv_f16(cudaStream_t st, float *y, const __half *x, const __half *w, int n_in,
                            int n_out, int nt)
{
    k_gemv_f16<NT><<<(n_out + GEMV_WARPS - 1) / GEMV_WARPS, GEMV_WARPS * 32, 0, st>>>(y, x, w, n_in,
                                                                                      n_out, nt);
}

template <int NT>
static void launch_gemv_q8(cudaStream_t st, float *y, const struct kcu_act *x,
                           const struct kcu_matrix *w, int nt)
{
    k_gemv_q8<NT><<<(w->n_out + GEMV_WARPS - 1) / GEMV_WARPS, GEMV_WARPS * 32, 0, st>>>(
        y, x->q, x->d, w->q, w->d, w->n_in, w->n_out, nt);
}

int kcu_matmul(cudaStream_t st, cublasHandle_t blas, float *y, const struct kcu_act *x,
               const struct kcu_matrix *w, int n_tokens, __half *scratch, int own_f16, char *err,
               size_t errlen)
{
    if (n_tokens <= 0)
        return 0;
    if (x->mode != kcu_act_mode_for(w, n_tokens))
        return kcu_fail(err, errlen, __FILE__, __LINE__, "kcu_matmul",
                        "input prepared in the wrong mode");
    const int nt = n_tokens;
    if (w->type == KCU_T_Q8_0 && nt <= KCU_GEMV_MAX) {
        if (nt == 1)
            launch_gemv_q8<1>(st, y, x, w, nt);
        else if (nt == 2)
            launch_gemv_q8<2>(st, y, x, w, nt);
        else if (nt <= 4)
            launch_gemv_q8<4>(st, y, x, w, nt);
        else
            launch_gemv_q8<8>(st, y, x, w, nt);
        KCU_LAUNCHED("k_gemv_q8");
        return 0;
    }
    if (w->type == KCU_T_Q8_0) {
        if (!scratch)
            return kcu_fail(err, errlen, __FILE__, __LINE__, "kcu_matmul",
                            "no scratch to dequantise a Q8_0 matrix into");
        const size_t n = (size_t)w->n_in * w->n_out;
        const size_t g = (n + 255) / 256;
        const int blocks = g > 65536 ? 65536 : (int)g;
        k_dequant_q8<<<blocks, 256, 0, st>>>(scratch, w->q, w->d, n);
        KCU_LAUNCHED("k_dequant_q8");
        return gemm_f16(st, blas, y, x->h, scratch, nt, w->n_in, w->n_out, err, errlen);
    }
    if (own_f16 && nt <= KCU_GEMV_MAX && w->n_in % 8 == 0) {
        if (nt == 1)
            launch_gemv_f16<1>(st, y, x->h, w->h, w->n_in, w->n_out, nt);
        else if (nt == 2)
            launch_gemv_f16<2>(st, y, x->h, w->h, w->n_in, w->n_out, nt);
        else if (nt <= 4)
            launch_gemv_f16<4>(st, y, x->h, w->h, w->n_in, w->n_out, nt);
        else
            launch_gemv_f16<8>(st, y, x->h, w->h, w->n_in, w->n_out, nt);
        KCU_LAUNCHED("k_gemv_f16");
        return 0;
    }
    return gemm_f16(st, blas, y, x->h, w->h, nt, w->n_in, w->n_out, err, errlen);
}
