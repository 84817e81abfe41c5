/*
 * sample (CUDA): choose the next token of each sample on the GPU, so that
 * only token ids cross to the host.
 *
 * Semantics are worker/sampler.c's, step for step (see sampler.h): the
 * penalties over the slot's counts (in place on the logits, f32, no FMA, as
 * the CPU), greedy (argmax, ties to the lowest id, NaN never wins), the
 * temperature inside the softmax as (l - max) / T, top-k (ties to the lower
 * id), top-p as the smallest prefix by probability whose mass reaches top_p
 * times the total, and one draw u * mass against running sums. The draw u is
 * the caller's (struct backend_sample), from the sample's own RNG stream.
 *
 * One block of 1024 threads per row. Every id has a 64-bit key, the
 * order-preserving bits of its logit above (~id) below, so "larger key"
 * is exactly the CPU's order (larger value, then lower id) and all keys
 * differ. A radix select (8 bits a pass from the top; stopping as soon as
 * the bin decides) finds the k-th key or the key where the probability
 * mass crosses a target without sorting the vocabulary.
 *
 * - top-k with k <= 1024 (the default k is 50): the k candidates are
 *   gathered and bitonic-sorted in shared memory, and everything after is
 *   the CPU's order: the same candidates, the same cut, the same walk. The
 *   sums are a parallel scan in double instead of a sequential one, and
 *   expf may differ in the last bit from glibc's, so with the same u the
 *   chosen id is the CPU's except when u lands within rounding of a
 *   boundary between two candidates.
 * - No truncation at all: the walk is in id order, as the CPU's.
 * - top-p without top-k (or k > 1024): the same candidate set as the CPU's
 *   (up to rounding at the boundary), but the draw walks it in id order,
 *   while the CPU walks its nucleus in the order its bucketed selection
 *   leaves (sampler.c, nucleus_all). Same distribution, so with the same u
 *   a different id may come out: seeded outputs of such requests are
 *   reproducible on one backend, not across backends.
 */
#include "kernels/cuda/kcu.cuh"

#include <limits.h>
#include <math.h>

#define SMP_THREADS 1024
#define SMP_KMAX    1024 /* largest top-k sorted in shared memory (= SMP_THREADS) */

struct smp_shared {
    unsigned long long keys[SMP_KMAX];
    float prob[SMP_KMAX];
    double cum[SMP_KMAX];
    unsigned int hist[256];
    double hmass[256];
    double red_d[32];
    float red_f[32];
    int red_i[32];
    unsigned long long sel;
    double need;
    int done;
    int cnt;
};

static __device__ unsigned int value_key(float v)
{
    if (isnan(v))
        return 0; // below everything
    if (v == 0.0f)
        v = 0.0f; // -0 ties with +0, as in the CPU's comparisons
    const unsigned int u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static __device__ unsigned long long key_of(float v, int id)
{
    return ((unsigned long long)value_key(v) << 32) |
           (unsigned int)(0xffffffffu - (unsigned int)id);
}

static __device__ int id_of(unsigned long long key)
{
    return (int)(0xffffffffu - (unsigned int)(key & 0xffffffffu));
}

/* ---- block reductions (blockDim.x == SMP_THREADS) ---- */

/* v reduced by op over the block (every thread gets it); red: 32 shared
 * slots. The same order of operations in every run. */
template <typename T, typename Op> static __device__ T block_reduce(T v, T *red, Op op)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1)
        v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    v = red[lane];
    for (int o = 16; o > 0; o >>= 1)
        v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

struct op_add_d {
    __device__ double operator()(double a, double b) const
    {
        return a + b;
    }
};
struct op_min_i {
    __device__ int operator()(int a, int b) const
    {
        return min(a, b);
    }
};

static __device__ double block_sum_d(double v, smp_shared &sh)
{
    return block_reduce(v, sh.red_d, op_add_d());
}

static __device__ int block_min_i(int v, smp_shared &sh)
{
    return block_reduce(v, sh.red_i, op_min_i());
}

static __device__ int block_max_i(int v, smp_shared &sh)
{
    return -block_min_i(-v, sh);
}

/* The argmax (ties to the lowest id, NaN never wins; INT_MAX: no number)
 * and the largest value (NaN ignored; -inf when there is none). */
static __device__ int block_argmax(const float *l, int vocab, float *max_out, smp_shared &sh)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = l[i];
        if (v > bv || (v == bv && i < bi)) {
            bv = v;
            bi = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    __syncthreads();
    if (lane == 0) {
        sh.red_f[warp] = bv;
        sh.red_i[warp] = bi;
    }
    __syncthreads();
    bv = sh.red_f[lane];
    bi = sh.red_i[lane];
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    *max_out = bv;
    return bi;
}

/* Inclusive scan of one double per thread over the block. */
static __device__ double block_scan_d(double v, smp_shared &sh)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 1; o < 32; o <<= 1) {
        const double u = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o)
            v += u;
    }
    __syncthreads();
    if (lane == 31)
        sh.red_d[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double t = sh.red_d[lane];
        for (int o = 1; o < 32; o <<= 1) {
            const double u = __shfl_up_sync(0xffffffffu, t, o);
            if (lane >= o)
                t += u;
        }
        sh.red_d[lane] = t; // inclusive totals of warps 0..lane
    }
    __syncthreads();
    return warp > 0 ? v + sh.red_d[warp - 1] : v;
}

/* ---- radix select ---- */

/* Probability of id (unnormalised), as the CPU: expf((l - max) / T). */
static __device__ float prob_of(float v, float vmax, float t)
{
    return expf((v - vmax) / t);
}

/*
 * Among the keys >= lb, the key B such that, by count: exactly `need` keys
 * are >= B; by mass: the keys >= B are the fewest from the top whose
 * probability reaches `need` (all of them when rounding leaves it short).
 * Digits of 8 bits from the top; a pass stops the search when the chosen
 * bin is taken whole (its lower bits then stay 0).
 */
static __device__ unsigned long long radix_select(const float *l, int vocab, unsigned long long lb,
                                                  double need, bool by_mass, float vmax, float t,
                                                  smp_shared &sh)
{
    const int lane = threadIdx.x & 31;
    unsigned long long prefix = 0;
    for (int shift = 56; shift >= 0; shift -= 8) {
        const unsigned long long hmask = shift == 56 ? 0ull : ~0ull << (shift + 8);
        for (int d = threadIdx.x; d < 256; d += blockDim.x) {
            sh.hist[d] = 0;
            sh.hmass[d] = 0.0;
        }
        __syncthreads();
        for (int base = 0; base < vocab;
             base += blockDim.x) { // uniform loop: warp-aggregated atomics
            const int i = base + threadIdx.x;
            int d = 256;
            double pm = 0.0;
            if (i < vocab) {
                const float v = l[i];
                const unsigned long long key = key_of(v, i);
                if (key >= lb && (key & hmask) == prefix) {
                    d = (int)((key >> shift) & 0xff);
                    if (by_mass)
                        pm = prob_of(v, vmax, t);
                }
            }
            const unsigned int peers = __match_any_sync(0xffffffffu, d);
            const int leader = __ffs(peers) - 1;
            double sum = 0.0;
            if (by_mass)
                for (unsigned int mk = peers; mk; mk &= mk - 1)
                    sum += __shfl_sync(peers, pm, __ffs(mk) - 1);
            if (lane == leader && d < 256) {
                atomicAdd(&sh.hist[d], (unsigned int)__popc(peers));
                if (by_mass)
                    atomicAdd(&sh.hmass[d], sum);
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            double above = 0.0;
            int chosen = -1;
            for (int d = 255; d >= 0; d--) {
                if (!sh.hist[d])
                    continue;
                const double w = by_mass ? sh.hmass[d] : (double)sh.hist[d];
                if (above + w >= need) {
                    chosen = d;
                    break;
                }
                above += w;
            }
            int whole = 0;
            if (chosen < 0) { // the mass fell short by rounding: take every key
                chosen = 0;
                while (chosen < 255 && !sh.hist[chosen])
                    chosen++;
                above = 0.0;
                for (int d = 255; d > chosen; d--)
                    above += by_mass ? sh.hmass[d] : (double)sh.hist[d];
                whole = 1;
            }
            const double rest = need - above;
            const unsigned int n_in = sh.hist[chosen];
            sh.sel = prefix | ((unsigned long long)chosen << shift);
            sh.need = rest;
            // the whole bin is in: by count when it holds exactly what is
            // still needed, by mass when it holds a single key
            sh.done = whole || (by_mass ? n_in == 1 : (double)n_in == rest);
        }
        __syncthreads();
        prefix = sh.sel;
        need = sh.need;
        if (sh.done)
            break;
    }
    return prefix;
}

/* ---- the kernel ---- */

static __global__ void __launch_bounds__(SMP_THREADS)
    k_sample(int *ids, float *logits, int vocab, uint32_t *counts, const backend_sample *rows)
{
    __shared__ smp_shared sh;
    const backend_sample P = rows[blockIdx.x];
    float *l = logits + (size_t)P.row * vocab;
    uint32_t *cnt = P.slot >= 0 ? counts + (size_t)P.slot * vocab : nullptr;
    const int tid = threadIdx.x, nt = blockDim.x;

    if (cnt && P.reset) {
        for (int i = tid; i < vocab; i += nt)
            cnt[i] = 0;
        __syncthreads();
    }
    if (cnt && (P.presence_penalty != 0.0f || P.frequency_penalty != 0.0f)) {
        for (int i = tid; i < vocab; i += nt) {
            const uint32_t c = cnt[i];
            if (c)
                l[i] = __fsub_rn(
                    l[i], __fadd_rn(__fmul_rn(P.frequency_penalty, (float)c), P.presence_penalty));
        }
        __syncthreads();
    }

    float vmax;
    int best = block_argmax(l, vocab, &vmax, sh);
    int pick;
    if (P.temperature == 0.0f || P.top_k == 1) {
        pick = best == INT_MAX ? 0 : best;
        goto chosen;
    }
    {
        const float t = P.temperature;
        const int k = P.top_k > 0 && P.top_k < vocab ? P.top_k : 0;
        unsigned long long lb = 0;
        if (k > 0)
            lb = radix_select(l, vocab, 0, (double)k, false, vmax, t, sh);

        if (k > 0 && k <= SMP_KMAX) {
            // the k candidates, sorted as the CPU sorts them
            if (tid == 0)
                sh.cnt = 0;
            __syncthreads();
            for (int i = tid; i < vocab; i += nt) {
                const unsigned long long key = key_of(l[i], i);
                if (key >= lb) {
                    const int at = atomicAdd(&sh.cnt, 1);
                    if (at < SMP_KMAX)
                        sh.keys[at] = key;
                }
            }
            __syncthreads();
            const int n = min(sh.cnt, SMP_KMAX);
            if (tid >= n)
                sh.keys[tid] = 0; // below every real key
            for (int size = 2; size <= SMP_KMAX; size <<= 1) {
                for (int stride = size >> 1; stride > 0; stride >>= 1) {
                    __syncthreads();
                    const int j = tid, o = j ^ stride;
                    if (o > j) {
                        const unsigned long long a = sh.keys[j], b = sh.keys[o];
                        const bool desc = (j & size) == 0;
                        if (desc ? a < b : a > b) {
                            sh.keys[j] = b;
                            sh.keys[o] = a;
                        }
                    }
                }
            }
            __syncthreads();
            const float top = l[id_of(sh.keys[0])];
            const float p = tid < n ? prob_of(l[id_of(sh.keys[tid])], top, t) : 0.0f;
            sh.prob[tid] = p;
            const double cum = block_scan_d((double)p, sh);
            sh.cum[tid] = cum;
            __syncthreads();
            int cut = n;
            double mass = sh.cum[n - 1];
            if (P.top_p < 1.0f) {
                const double target = (double)P.top_p * mass;
                const int first = block_min_i(tid < n && cum >= target ? tid : INT_MAX, sh);
                if (first != INT_MAX) {
                    cut = first + 1;
                    mass = sh.cum[first];
                }
            }
            const double u = P.u * mass;
            int at = block_min_i(tid < cut && p > 0.0f && u < cum ? tid : INT_MAX, sh);
            if (at == INT_MAX) { // u rounded past the end, or NaN
                at = block_max_i(tid < cut && p > 0.0f ? tid : -1, sh);
                if (at < 0)
                    at = 0;
            }
            pick = id_of(sh.keys[at]);
        } else {
            // every id, or the candidates of a large k, walked in id order
            double mass = 0.0;
            for (int i = tid; i < vocab; i += nt)
                if (key_of(l[i], i) >= lb)
                    mass += prob_of(l[i], vmax, t);
            mass = block_sum_d(mass, sh);
            if (P.top_p < 1.0f) {
                lb = radix_select(l, vocab, lb, (double)P.top_p * mass, true, vmax, t, sh);
                mass = 0.0;
                for (int i = tid; i < vocab; i += nt)
                    if (key_of(l[i], i) >= lb)
                        mass += prob_of(l[i], vmax, t);
                mass = block_sum_d(mass, sh);
            }
            const int per = (vocab + nt - 1) / nt, i0 = tid * per, i1 = min(vocab, i0 + per);
            double local = 0.0;
            for (int i = i0; i < i1; i++)
                if (key_of(l[i], i) >= lb)
                    local += prob_of(l[i], vmax, t);
            double cum = block_scan_d(local, sh) - local;
            const double u = P.u * mass;
            int found = INT_MAX, last = -1;
            for (int i = i0; i < i1; i++) {
                if (key_of(l[i], i) < lb)
                    continue;
                const float p = prob_of(l[i], vmax, t);
                if (p > 0.0f) {
                    cum += p;
                    last = i;
                    if (u < cum) {
                        found = i;
                        break;
                    }
                }
            }
            pick = block_min_i(found, sh);
            if (pick == INT_MAX) {
                pick = block_max_i(last, sh);
                if (pick < 0)
                    pick = k > 0 || P.top_p < 1.0f ? (best == INT_MAX ? 0 : best) : 0;
            }
        }
    }
chosen:
    if (tid == 0) {
        ids[blockIdx.x] = pick;
        if (cnt)
            cnt[pick]++;
    }
}

int kcu_sample(cudaStream_t st, int *ids, float *logits, int vocab, uint32_t *counts,
               const struct backend_sample *rows, int n, char *err, size_t errlen)
{
    if (n <= 0)
        return 0;
    k_sample<<<n, SMP_THREADS, 0, st>>>(ids, logits, vocab, counts, rows);
    KCU_LAUNCHED("k_sample");
    return 0;
}
