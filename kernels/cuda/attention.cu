/*
 * attention (CUDA): grouped-query attention over the paged fp16 KV cache.
 *
 * The cache of one layer is (blocks, n_kv_heads, block_size, head_dim): a
 * position's row of one KV head is head_dim contiguous halves, and position
 * p of a sequence lives in block flat[tab + p / block_size], row p %
 * block_size. Position p attends to max(0, p - window + 1) .. p.
 *
 * Key decisions:
 * - Decode (one query token of a sequence): a block per (token, KV head,
 *   piece of the context); the KV head's rows are read once for all the
 *   query heads of its group (G of them, in registers). Lanes read 16 bytes
 *   each, D/8 lanes per position, so a warp covers 32*8/D positions per step
 *   and the dot products need only log2(D/8) shuffles. Each warp keeps an
 *   online softmax (running max and sum) per head; the block merges its
 *   warps, and when the context is cut into pieces (flash-decoding: few
 *   tokens, too few blocks to fill the GPU otherwise) a second kernel
 *   merges the pieces. The piece count depends only on the number of decode
 *   tokens, so a decode step has one shape per batch size (CUDA graphs).
 * - Prefill (consecutive tokens of one sequence): flash-attention style on
 *   CUDA cores. A block holds up to 64 query rows (tokens x the group's
 *   heads, 32 for head_dim 256) and walks the keys in tiles of 32 staged in
 *   shared memory as f32, so each K/V row is read once per tile of queries
 *   instead of once per query; causal and sliding-window masks per row;
 *   online softmax per row. Tensor cores would be faster; at a 512-token
 *   prompt this is a small part of the time to first token next to the
 *   projections (7.3 TFLOP of GEMM against ~0.07 of attention).
 * - Scores, softmax and sums are f32 (q is not rounded to fp16), as
 *   kernels/cpu; results differ from it by the order of the sums only.
 */
#include "kernels/cuda/kcu.cuh"

#include <math.h>

#define ATT_NW 4  /* warps per block */
#define ATT_KT 32 /* keys per prefill tile */

static __device__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

static __device__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ void halves8(uint4 u, float *f)
{
    const __half2 *h = (const __half2 *)&u;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 x = __half22float2(h[k]);
        f[2 * k] = x.x;
        f[2 * k + 1] = x.y;
    }
}

static __device__ void store_out(const kcu_attn &a, size_t at, float v)
{
    if (a.out_f)
        a.out_f[at] = v;
    if (a.out_h)
        a.out_h[at] = __float2half_rn(v);
}

/* Offset of (position pp, KV head kvh) in the layer's cache, in halves. */
static __device__ size_t kv_at(const kcu_attn &a, const int *table, int pp, int kvh)
{
    const size_t blk = (size_t)table[pp / a.block_size];
    const int r = pp % a.block_size;
    return ((blk * a.n_kv_heads + kvh) * a.block_size + r) * (size_t)a.head_dim;
}

/* ---- decode ---- */

/* One position for one lane: the G dot products (reduced over the LPP
 * lanes of the position), then the online-softmax update. */
template <int D, int G>
static __device__ void decode_step(const kcu_attn &a, int g, bool valid, uint4 kraw, uint4 vraw,
                                   const float (&qr)[G][8], float (&m)[G], float (&l)[G],
                                   float (&acc)[G][8])
{
    constexpr int LPP = D / 8;
    float kf[8], vf[8];
    halves8(kraw, kf);
    halves8(vraw, vf);
#pragma unroll
    for (int h = 0; h < G; h++) {
        float d = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++)
            d = fmaf(qr[h][e], kf[e], d);
#pragma unroll
        for (int o = LPP / 2; o > 0; o >>= 1)
            d += __shfl_xor_sync(0xffffffffu, d, o);
        if (valid && h < g) {
            const float s = d * a.scale;
            const float mn = fmaxf(m[h], s);
            const float c = expf(m[h] - mn), pe = expf(s - mn);
            l[h] = fmaf(l[h], c, pe);
#pragma unroll
            for (int e = 0; e < 8; e++)
                acc[h][e] = fmaf(acc[h][e], c, pe * vf[e]);
            m[h] = mn;
        }
    }
}

template <int D, int G>
static __global__ void __launch_bounds__(KCU_ATT_THREADS)
    k_attn_decode(kcu_attn a, const int *dec, int n_splits)
{
    constexpr int LPP = D / 8, PPW = 32 / LPP, NP = ATT_NW * PPW, STEP = ATT_NW * PPW;
    __shared__ float sm_m[NP][G], sm_l[NP][G];
    __shared__ float sm_o[NP][G][D];

    const int i = blockIdx.z, kvh = blockIdx.y, split = blockIdx.x;
    const int t = dec[i], p = a.pos[t], g = a.n_heads / a.n_kv_heads;
    const int lo = a.window > 0 ? max(0, p - a.window + 1) : 0;
    const int chunk = max((p - lo + 1 + n_splits - 1) / n_splits, KCU_MIN_SPLIT_LEN);
    const int start = lo + split * chunk, end = min(p, start + chunk - 1);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int grp = lane / LPP, sub = lane % LPP, np = warp * PPW + grp;
    const int *table = a.flat + a.tab[t];

    float qr[G][8], m[G], l[G], acc[G][8];
    const float *qt = a.q + (size_t)t * a.n_heads * D + (size_t)kvh * g * D + sub * 8;
#pragma unroll
    for (int h = 0; h < G; h++) {
        m[h] = -INFINITY;
        l[h] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            qr[h][e] = h < g ? qt[h * D + e] : 0.0f;
            acc[h][e] = 0.0f;
        }
    }

    // two positions per lane group in flight; the loop bound is per warp
    for (int p0 = start + warp * PPW; p0 <= end; p0 += 2 * STEP) {
        const int pa = p0 + grp, pb = p0 + STEP + grp;
        const bool va = pa <= end, vb = pb <= end;
        const uint4 z = make_uint4(0, 0, 0, 0);
        uint4 ka = z, vva = z, kb = z, vvb = z;
        if (va) {
            const size_t at = kv_at(a, table, pa, kvh) + sub * 8;
            ka = *(const uint4 *)(a.k + at);
            vva = *(const uint4 *)(a.v + at);
        }
        if (vb) {
            const size_t at = kv_at(a, table, pb, kvh) + sub * 8;
            kb = *(const uint4 *)(a.k + at);
            vvb = *(const uint4 *)(a.v + at);
        }
        decode_step<D, G>(a, g, va, ka, vva, qr, m, l, acc);
        decode_step<D, G>(a, g, vb, kb, vvb, qr, m, l, acc);
    }

    // merge the block's partial states
#pragma unroll
    for (int h = 0; h < G; h++) {
        if (sub == 0) {
            sm_m[np][h] = m[h];
            sm_l[np][h] = l[h];
        }
#pragma unroll
        for (int e = 0; e < 8; e++)
            sm_o[np][h][sub * 8 + e] = acc[h][e];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < g * D; idx += blockDim.x) {
        const int h = idx / D, d = idx % D, head = kvh * g + h;
        float mx = -INFINITY;
        for (int k = 0; k < NP; k++)
            mx = fmaxf(mx, sm_m[k][h]);
        float sum = 0.0f, o = 0.0f;
        if (mx != -INFINITY) {
            for (int k = 0; k < NP; k++) {
                if (sm_m[k][h] == -INFINITY)
                    continue;
                const float c = expf(sm_m[k][h] - mx);
                sum = fmaf(sm_l[k][h], c, sum);
                o = fmaf(sm_o[k][h][d], c, o);
            }
        }
        if (n_splits == 1) {
            store_out(a, ((size_t)t * a.n_heads + head) * D + d, o / sum);
        } else {
            const size_t slot = ((size_t)i * n_splits + split) * a.n_heads + head;
            a.part_o[slot * D + d] = o;
            if (d == 0) {
                a.part_ml[slot * 2] = mx;
                a.part_ml[slot * 2 + 1] = sum;
            }
        }
    }
}

/* Merge the pieces of each (decode token, head): blockDim.x = head_dim. */
static __global__ void k_attn_combine(kcu_attn a, const int *dec, int n_splits)
{
    const int i = blockIdx.x, head = blockIdx.y, d = threadIdx.x, D = a.head_dim;
    const size_t slot0 = (size_t)i * n_splits * a.n_heads + head;
    float mx = -INFINITY;
    for (int s = 0; s < n_splits; s++)
        mx = fmaxf(mx, a.part_ml[(slot0 + (size_t)s * a.n_heads) * 2]);
    float sum = 0.0f, o = 0.0f;
    for (int s = 0; s < n_splits; s++) {
        const size_t slot = slot0 + (size_t)s * a.n_heads;
        const float ms = a.part_ml[slot * 2];
        if (ms == -INFINITY)
            continue;
        const float c = expf(ms - mx);
        sum = fmaf(a.part_ml[slot * 2 + 1], c, sum);
        o = fmaf(a.part_o[slot * D + d], c, o);
    }
    store_out(a, ((size_t)dec[i] * a.n_heads + head) * D + d, o / sum);
}

/* ---- prefill ---- */

template <int D> struct prefill_shape {
    static constexpr int RPW = D <= 128 ? 16 : 8; /* query rows per warp */
    static constexpr int ROWS = RPW * ATT_NW;
    static constexpr int KS = D + 4; /* padded K row: conflict-free 16-byte reads */
    static constexpr int EPL = (D + 31) / 32;
    static constexpr size_t SMEM = (size_t)(ROWS * D + ATT_KT * KS + ATT_KT * D) * sizeof(float);
};

template <int D>
static __global__ void __launch_bounds__(KCU_ATT_THREADS)
    k_attn_prefill(kcu_attn a, const int *tiles)
{
    typedef prefill_shape<D> S;
    constexpr int RPW = S::RPW, ROWS = S::ROWS, KS = S::KS, EPL = S::EPL, CPP = D / 8;
    extern __shared__ float4 smem4[];
    float *qs = (float *)smem4;   // (ROWS, D)
    float *ks = qs + ROWS * D;    // (ATT_KT, KS)
    float *vs = ks + ATT_KT * KS; // (ATT_KT, D)

    const int *tile = tiles + 4 * blockIdx.x;
    const int tok0 = tile[0], n = tile[1], pos0 = tile[2];
    const int *table = a.flat + tile[3];
    const int kvh = blockIdx.y, g = a.n_heads / a.n_kv_heads, R = n * g;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int w = a.window;

    for (int idx = threadIdx.x; idx < ROWS * D; idx += blockDim.x) {
        const int r = idx / D, d = idx % D;
        qs[idx] =
            r < R ? a.q[(size_t)(tok0 + r / g) * a.n_heads * D + (size_t)(kvh * g + r % g) * D + d]
                  : 0.0f;
    }
    float m[RPW], l[RPW], s[RPW], o[RPW][EPL];
#pragma unroll
    for (int k = 0; k < RPW; k++) {
        m[k] = -INFINITY;
        l[k] = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; e++)
            o[k][e] = 0.0f;
    }
    const int hi = pos0 + n - 1, lo = w > 0 ? max(0, pos0 - w + 1) : 0;
    __syncthreads();

    for (int kt0 = lo; kt0 <= hi; kt0 += ATT_KT) {
        const int nk = min(ATT_KT, hi - kt0 + 1);
        for (int c = threadIdx.x; c < ATT_KT * CPP; c += blockDim.x) {
            const int j = c / CPP, dc = c % CPP;
            float kf[8], vf[8];
            if (j < nk) {
                const size_t at = kv_at(a, table, kt0 + j, kvh) + dc * 8;
                halves8(*(const uint4 *)(a.k + at), kf);
                halves8(*(const uint4 *)(a.v + at), vf);
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++)
                    kf[e] = vf[e] = 0.0f;
            }
            float4 *kd = (float4 *)(ks + j * KS + dc * 8), *vd = (float4 *)(vs + j * D + dc * 8);
            kd[0] = make_float4(kf[0], kf[1], kf[2], kf[3]);
            kd[1] = make_float4(kf[4], kf[5], kf[6], kf[7]);
            vd[0] = make_float4(vf[0], vf[1], vf[2], vf[3]);
            vd[1] = make_float4(vf[4], vf[5], vf[6], vf[7]);
        }
        __syncthreads();

        // scores: lane = key, the warp's rows warp, warp + 4, ...
#pragma unroll
        for (int k = 0; k < RPW; k++)
            s[k] = 0.0f;
        for (int d = 0; d < D; d += 4) {
            const float4 kk = *(const float4 *)(ks + lane * KS + d);
#pragma unroll
            for (int k = 0; k < RPW; k++) {
                const float4 qq = *(const float4 *)(qs + (warp + ATT_NW * k) * D + d);
                s[k] = fmaf(qq.x, kk.x, s[k]);
                s[k] = fmaf(qq.y, kk.y, s[k]);
                s[k] = fmaf(qq.z, kk.z, s[k]);
                s[k] = fmaf(qq.w, kk.w, s[k]);
            }
        }
        const int kp = kt0 + lane;
#pragma unroll
        for (int k = 0; k < RPW; k++) {
            const int r = warp + ATT_NW * k;
            const int rp = pos0 + r / g, rlo = w > 0 ? max(0, rp - w + 1) : 0;
            const bool ok = r < R && lane < nk && kp <= rp && kp >= rlo;
            const float sc = ok ? s[k] * a.scale : -INFINITY;
            const float mn = fmaxf(m[k], warp_max(sc));
            float pe = 0.0f, c = 1.0f;
            if (mn != -INFINITY) {
                pe = ok ? expf(sc - mn) : 0.0f;
                c = expf(m[k] - mn);
            }
            l[k] = fmaf(l[k], c, warp_sum(pe));
            m[k] = mn;
#pragma unroll
            for (int e = 0; e < EPL; e++)
                o[k][e] *= c;
            s[k] = pe;
        }
        for (int j = 0; j < nk; j++) {
            float vv[EPL];
#pragma unroll
            for (int e = 0; e < EPL; e++)
                vv[e] = lane + 32 * e < D ? vs[j * D + lane + 32 * e] : 0.0f;
#pragma unroll
            for (int k = 0; k < RPW; k++) {
                const float pj = __shfl_sync(0xffffffffu, s[k], j);
#pragma unroll
                for (int e = 0; e < EPL; e++)
                    o[k][e] = fmaf(pj, vv[e], o[k][e]);
            }
        }
        __syncthreads(); // before the next tile overwrites ks and vs
    }

#pragma unroll
    for (int k = 0; k < RPW; k++) {
        const int r = warp + ATT_NW * k;
        if (r >= R)
            continue;
        const size_t row = ((size_t)(tok0 + r / g) * a.n_heads + kvh * g + r % g) * D;
#pragma unroll
        for (int e = 0; e < EPL; e++)
            if (lane + 32 * e < D)
                store_out(a, row + lane + 32 * e, o[k][e] / l[k]);
    }
}

/* ---- dispatch ---- */

void kcu_attn_plan(const int *pos, const int *tab, int n, int qt, int *dec, int *n_dec, int *tiles,
                   int *n_tiles)
{
    *n_dec = 0;
    *n_tiles = 0;
    for (int i = 0; i < n;) {
        int j = i + 1;
        while (j < n && tab[j] == tab[i] && pos[j] == pos[j - 1] + 1)
            j++;
        if (j - i == 1) {
            dec[(*n_dec)++] = i;
        } else {
            for (int s = i; s < j; s += qt) {
                int *t = tiles + 4 * (*n_tiles)++;
                t[0] = s;
                t[1] = j - s < qt ? j - s : qt;
                t[2] = pos[s];
                t[3] = tab[s];
            }
        }
        i = j;
    }
}

int kcu_attn_supported(int head_dim, int group)
{
    const int d = head_dim;
    return (d == 16 || d == 32 || d == 64 || d == 128 || d == 256) && group >= 1 && group <= 8;
}

static int prefill_rows(int head_dim)
{
    return head_dim <= 128 ? prefill_shape<128>::ROWS : prefill_shape<256>::ROWS;
}

int kcu_attn_tile_tokens(int head_dim, int group)
{
    return prefill_rows(head_dim) / group;
}

template <int D> static int prefill_init(char *err, size_t errlen)
{
    KCU_CK(cudaFuncSetAttribute(k_attn_prefill<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)prefill_shape<D>::SMEM));
    return 0;
}

int kcu_attn_init(char *err, size_t errlen)
{
    if (prefill_init<16>(err, errlen) < 0 || prefill_init<32>(err, errlen) < 0 ||
        prefill_init<64>(err, errlen) < 0 || prefill_init<128>(err, errlen) < 0 ||
        prefill_init<256>(err, errlen) < 0)
        return -1;
    return 0;
}

int kcu_attn_splits(int n_dec, int n_kv_heads, int sm_count, int part_cap)
{
    if (n_dec <= 0)
        return 1;
    const int blocks = n_dec * n_kv_heads;
    int s = (2 * sm_count + blocks - 1) / blocks;
    if (s > KCU_MAX_SPLITS)
        s = KCU_MAX_SPLITS;
    while (s > 1 && n_dec * s > part_cap)
        s--;
    return s < 1 ? 1 : s;
}

template <int D, int G>
static void launch_decode(cudaStream_t st, const kcu_attn *a, const int *dec, int n_dec,
                          int n_splits)
{
    const dim3 grid(n_splits, a->n_kv_heads, n_dec);
    k_attn_decode<D, G><<<grid, KCU_ATT_THREADS, 0, st>>>(*a, dec, n_splits);
}

template <int D>
static void launch_decode_d(cudaStream_t st, const kcu_attn *a, const int *dec, int n_dec,
                            int n_splits, int g)
{
    if (g == 1)
        launch_decode<D, 1>(st, a, dec, n_dec, n_splits);
    else if (g == 2)
        launch_decode<D, 2>(st, a, dec, n_dec, n_splits);
    else if (g <= 4)
        launch_decode<D, 4>(st, a, dec, n_dec, n_splits);
    else
        launch_decode<D, 8>(st, a, dec, n_dec, n_splits);
}

int kcu_attn_decode(cudaStream_t st, const struct kcu_attn *a, const int *dec, int n_dec,
                    int n_splits, char *err, size_t errlen)
{
    if (n_dec <= 0)
        return 0;
    const int g = a->n_heads / a->n_kv_heads;
    switch (a->head_dim) {
    case 16:
        launch_decode_d<16>(st, a, dec, n_dec, n_splits, g);
        break;
    case 32:
        launch_decode_d<32>(st, a, dec, n_dec, n_splits, g);
        break;
    case 64:
        launch_decode_d<64>(st, a, dec, n_dec, n_splits, g);
        break;
    case 128:
        launch_decode_d<128>(st, a, dec, n_dec, n_splits, g);
        break;
    default:
        launch_decode_d<256>(st, a, dec, n_dec, n_splits, g);
        break;
    }
    KCU_LAUNCHED("k_attn_decode");
    if (n_splits > 1) {
        k_attn_combine<<<dim3(n_dec, a->n_heads), a->head_dim, 0, st>>>(*a, dec, n_splits);
        KCU_LAUNCHED("k_attn_combine");
    }
    return 0;
}

template <int D>
static void launch_prefill(cudaStream_t st, const kcu_attn *a, const int *tiles, int n_tiles)
{
    k_attn_prefill<D>
        <<<dim3(n_tiles, a->n_kv_heads), KCU_ATT_THREADS, prefill_shape<D>::SMEM, st>>>(*a, tiles);
}

int kcu_attn_prefill(cudaStream_t st, const struct kcu_attn *a, const int *tiles, int n_tiles,
                     char *err, size_t errlen)
{
    if (n_tiles <= 0)
        return 0;
    switch (a->head_dim) {
    case 16:
        launch_prefill<16>(st, a, tiles, n_tiles);
        break;
    case 32:
        launch_prefill<32>(st, a, tiles, n_tiles);
        break;
    case 64:
        launch_prefill<64>(st, a, tiles, n_tiles);
        break;
    case 128:
        launch_prefill<128>(st, a, tiles, n_tiles);
        break;
    default:
        launch_prefill<256>(st, a, tiles, n_tiles);
        break;
    }
    KCU_LAUNCHED("k_attn_prefill");
    return 0;
}
