/*
 * check (CUDA): the kernels one at a time on host data, for the tests (see
 * check.h). Each function keeps its device buffers in a small arena freed at
 * the end, whatever happened.
 */
#include "kernels/cuda/check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/kcu.cuh"

extern "C" {
#include "kernels/cpu/ops.h"
}

#define ARENA_MAX 24

struct arena {
    void *p[ARENA_MAX];
    int n;
};

static int dalloc(arena *a, void *out, size_t bytes, char *err, size_t errlen)
{
    void *p = NULL;
    if (a->n == ARENA_MAX)
        return kcu_fail(err, errlen, __FILE__, __LINE__, "dalloc", "arena full");
    KCU_CK(cudaMalloc(&p, bytes > 0 ? bytes : 1));
    a->p[a->n++] = p;
    *(void **)out = p;
    return 0;
}

/* Copy n bytes in to a new device buffer. */
static int dupload(arena *a, void *out, const void *src, size_t bytes, char *err, size_t errlen)
{
    if (dalloc(a, out, bytes, err, errlen) < 0)
        return -1;
    KCU_CK(cudaMemcpy(*(void **)out, src, bytes, cudaMemcpyHostToDevice));
    return 0;
}

static void arena_free(arena *a)
{
    for (int i = 0; i < a->n; i++)
        cudaFree(a->p[i]);
    a->n = 0;
}

static int available(char *err, size_t errlen)
{
    char why[200];
    if (kcu_device_usable(why, sizeof(why)))
        return 0;
    snprintf(err, errlen, "no CUDA device: %s", why);
    return -1;
}

static size_t row_bytes(int type, int n)
{
    return type == KCU_T_F32 ? (size_t)n * 4 : type == KCU_T_Q8_0 ? (size_t)n / 32 * 34 : n * 2u;
}

static int finish(char *err, size_t errlen)
{
    KCU_CK(cudaDeviceSynchronize());
    return 0;
}

/* ---- element-wise ---- */

static int do_embed(arena *A, float *out, const void *table, int type, int vocab, int dim,
                    const int *ids, int n, char *err, size_t errlen)
{
    void *dt = NULL;
    int *di = NULL;
    float *dout = NULL;
    if (dupload(A, &dt, table, row_bytes(type, dim) * vocab, err, errlen) < 0 ||
        dupload(A, &di, ids, (size_t)n * sizeof(int), err, errlen) < 0 ||
        dalloc(A, &dout, (size_t)n * dim * sizeof(float), err, errlen) < 0 ||
        kcu_embed(0, dout, di, n, dt, type, dim, err, errlen) < 0 || finish(err, errlen) < 0)
        return -1;
    KCU_CK(cudaMemcpy(out, dout, (size_t)n * dim * sizeof(float), cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int kcu_check_embed(float *out, const void *table, int type, int vocab, int dim,
                               const int *ids, int n, char *err, size_t errlen)
{
    if (available(err, errlen) < 0)
        return -1;
    arena A = {};
    int rc = do_embed(&A, out, table, type, vocab, dim, ids, n, err, errlen);
    arena_free(&A);
    return rc;
}

/* Run `launch` once in F32 mode into out, and once in Q8 mode when q_out. */
template <class F>
static int run_modes(arena *A, float *out, int8_t *q_out, float *d_out, int rows, int n, F launch,
                     char *err, size_t errlen)
{
    kcu_act act = {};
    act.mode = KCU_ACT_F32;
    if (dalloc(A, &act.f, (size_t)rows * n * sizeof(float), err, errlen) < 0 || launch(&act) < 0 ||
        finish(err, errlen) < 0)
        return -1;
    KCU_CK(cudaMemcpy(out, act.f, (size_t)rows * n * sizeof(float), cudaMemcpyDeviceToHost));
    if (!q_out)
        return 0;
    act.mode = KCU_ACT_Q8;
    if (dalloc(A, &act.q, (size_t)rows * n, err, errlen) < 0 ||
        dalloc(A, &act.d, (size_t)rows * (n / 32) * sizeof(float), err, errlen) < 0 ||
        launch(&act) < 0 || finish(err, errlen) < 0)
        return -1;
    KCU_CK(cudaMemcpy(q_out, act.q, (size_t)rows * n, cudaMemcpyDeviceToHost));
    KCU_CK(
        cudaMemcpy(d_out, act.d, (size_t)rows * (n / 32) * sizeof(float), cudaMemcpyDeviceToHost));
    return 0;
}

static int do_rmsnorm(arena *A, float *out, float *x_out, int8_t *q_out, float *d_out,
                      const float *x, const float *y, const float *w, int rows, int dim, float eps,
                      char *err, size_t errlen)
{
    const size_t bytes = (size_t)rows * dim * sizeof(float);
    float *dx = NULL, *dy = NULL, *dw = NULL, *dxo = NULL;
    if (dupload(A, &dx, x, bytes, err, errlen) < 0 ||
        (y && dupload(A, &dy, y, bytes, err, errlen) < 0) ||
        dupload(A, &dw, w, (size_t)dim * sizeof(float), err, errlen) < 0 ||
        dalloc(A, &dxo, bytes, err, errlen) < 0)
        return -1;
    // x_out is written once, in the f32 run (the q8 run reads x + y again)
    int first = 1;
    auto launch = [&](const kcu_act *act) {
        int rc =
            kcu_rmsnorm(0, dx, dy, first ? dxo : NULL, NULL, rows, dw, dim, eps, act, err, errlen);
        first = 0;
        return rc;
    };
    if (run_modes(A, out, q_out, d_out, rows, dim, launch, err, errlen) < 0)
        return -1;
    if (x_out)
        KCU_CK(cudaMemcpy(x_out, dxo, bytes, cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int kcu_check_rmsnorm(float *out, float *x_out, int8_t *q_out, float *d_out,
                                 const float *x, const float *y, const float *w, int rows, int dim,
                                 float eps, char *err, size_t errlen)
{
    if (available(err, errlen) < 0)
        return -1;
    arena A = {};
    int rc = do_rmsnorm(&A, out, x_out, q_out, d_out, x, y, w, rows, dim, eps, err, errlen);
    arena_free(&A);
    return rc;
}

static int do_rope(arena *A, float *q_out, uint16_t *k_out, uint16_t *v_out, const float *qkv,
                   const int *pos, int n, int n_heads, int n_kv, int hd, int context, float base,
                   char *err, size_t errlen)
{
    const int q_dim = n_heads * hd, kv_dim = n_kv * hd;
    float *rope = (float *)malloc((size_t)context * hd * sizeof(float));
    int *ident = (int *)malloc((size_t)n * sizeof(int));
    if (!rope || !ident) {
        free(rope);
        free(ident);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    kc_rope_table(rope, context, hd, base);
    for (int i = 0; i < n; i++)
        ident[i] = i; // token i's position lives in block i (blocks of context positions)
    // one block per token, block_size = context: position p at row p of its block
    int *dpos = NULL, *dtab = NULL, *dflat = NULL;
    float *dqkv = NULL, *drope = NULL, *dq = NULL;
    __half *dk = NULL, *dv = NULL;
    int rc = -1;
    const size_t cache = (size_t)n * context * kv_dim * sizeof(__half);
    if (dupload(A, &drope, rope, (size_t)context * hd * sizeof(float), err, errlen) < 0 ||
        dupload(A, &dpos, pos, (size_t)n * sizeof(int), err, errlen) < 0 ||
        dupload(A, &dtab, ident, (size_t)n * sizeof(int), err, errlen) < 0 ||
        dupload(A, &dflat, ident, (size_t)n * sizeof(int), err, errlen) < 0 ||
        dupload(A, &dqkv, qkv, (size_t)n * (q_dim + 2 * kv_dim) * sizeof(float), err, errlen) < 0 ||
        dalloc(A, &dq, (size_t)n * q_dim * sizeof(float), err, errlen) < 0 ||
        dalloc(A, &dk, cache, err, errlen) < 0 || dalloc(A, &dv, cache, err, errlen) < 0)
        goto out;
    // tab[t] = t and flat[t] = t: token t's table is [t], so its block is t
    if (kcu_rope_store(0, dq, dk, dv, dqkv, dpos, dtab, dflat, n, drope, n_heads, n_kv, hd, context,
                       err, errlen) < 0 ||
        finish(err, errlen) < 0)
        goto out;
    if (cudaMemcpy(q_out, dq, (size_t)n * q_dim * sizeof(float), cudaMemcpyDeviceToHost) !=
        cudaSuccess) {
        kcu_fail(err, errlen, __FILE__, __LINE__, "cudaMemcpy", "q");
        goto out;
    }
    for (int t = 0; t < n; t++)
        for (int h = 0; h < n_kv; h++) {
            // device layout (block t, head h, row pos[t], hd)
            const size_t at = (((size_t)t * n_kv + h) * context + pos[t]) * hd;
            if (cudaMemcpy(k_out + (size_t)t * kv_dim + h * hd, dk + at, hd * sizeof(__half),
                           cudaMemcpyDeviceToHost) != cudaSuccess ||
                cudaMemcpy(v_out + (size_t)t * kv_dim + h * hd, dv + at, hd * sizeof(__half),
                           cudaMemcpyDeviceToHost) != cudaSuccess) {
                kcu_fail(err, errlen, __FILE__, __LINE__, "cudaMemcpy", "k/v");
                goto out;
            }
        }
    rc = 0;
out:
    free(rope);
    free(ident);
    return rc;
}

extern "C" int kcu_check_rope_store(float *q_out, uint16_t *k_out, uint16_t *v_out,
                                    const float *qkv, const int *pos, int n, int n_heads,
                                    int n_kv_heads, int head_dim, int context_len, float base,
                                    char *err, size_t errlen)
{
    if (available(err, errlen) < 0)
        return -1;
    arena A = {};
    int rc = do_rope(&A, q_out, k_out, v_out, qkv, pos, n, n_heads, n_kv_heads, head_dim,
                     context_len, base, err, errlen);
    arena_free(&A);
    return rc;
}

static int do_swiglu(arena *A, float *out, int8_t *q_out, float *d_out, const float *gate,
                     const float *up, int rows, int ffn, char *err, size_t errlen)
{
    float *gu = (float *)malloc((size_t)rows * 2 * ffn * sizeof(float)), *dgu = NULL;
    if (!gu) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int r = 0; r < rows; r++) {
        memcpy(gu + (size_t)r * 2 * ffn, gate + (size_t)r * ffn, (size_t)ffn * sizeof(float));
        memcpy(gu + (size_t)r * 2 * ffn + ffn, up + (size_t)r * ffn, (size_t)ffn * sizeof(float));
    }
    int rc = dupload(A, &dgu, gu, (size_t)rows * 2 * ffn * sizeof(float), err, errlen);
    free(gu);
    if (rc < 0)
        return -1;
    auto launch = [&](const kcu_act *act) {
        return kcu_swiglu(0, dgu, rows, ffn, act, err, errlen);
    };
    return run_modes(A, out, q_out, d_out, rows, ffn, launch, err, errlen);
}

extern "C" int kcu_check_swiglu(float *out, int8_t *q_out, float *d_out, const float *gate,
                                const float *up, int rows, int ffn, char *err, size_t errlen)
{
    if (available(err, errlen) < 0)
        return -1;
    arena A = {};
    int rc = do_swiglu(&A, out, q_out, d_out, gate, up, rows, ffn, err, errlen);
    arena_free(&A);
    return rc;
}

/* ---- projections ---- */

static int do_matmul(arena *A, float *y, const float *x, const void *w, int wtype, int nt, int n_in,
                     int n_out, int own_f16, char *err, size_t errlen)
{
    kcu_matrix m = {};
    m.type = wtype == KCU_T_Q8_0 ? KCU_T_Q8_0 : KCU_T_F16;
    m.n_in = n_in;
    m.n_out = n_out;
    const size_t n = (size_t)n_in * n_out;
    void *raw = NULL;
    float *dx = NULL, *dy = NULL;
    __half *scratch = NULL;
    cublasHandle_t blas = NULL;
    int rc = -1;
    if (m.type == KCU_T_Q8_0) {
        if (dalloc(A, &m.q, n, err, errlen) < 0 ||
            dalloc(A, &m.d, n / 32 * sizeof(__half), err, errlen) < 0 ||
            dalloc(A, &scratch, n * sizeof(__half), err, errlen) < 0)
            return -1;
    } else if (dalloc(A, &m.h, n * sizeof(__half), err, errlen) < 0) {
        return -1;
    }
    kcu_act act = {};
    act.mode = kcu_act_mode_for(&m, nt);
    if (dupload(A, &raw, w, row_bytes(wtype, n_in) * n_out, err, errlen) < 0 ||
        kcu_convert_rows(0, &m, 0, raw, wtype, n_out, err, errlen) < 0 ||
        dupload(A, &dx, x, (size_t)nt * n_in * sizeof(float), err, errlen) < 0 ||
        dalloc(A, &dy, (size_t)nt * n_out * sizeof(float), err, errlen) < 0 ||
        dalloc(A, &act.h, (size_t)nt * n_in * sizeof(__half), err, errlen) < 0 ||
        dalloc(A, &act.q, (size_t)nt * n_in, err, errlen) < 0 ||
        dalloc(A, &act.d, (size_t)nt * (n_in / 32 + 1) * sizeof(float), err, errlen) < 0 ||
        kcu_prepare(0, dx, nt, n_in, &act, err, errlen) < 0)
        return -1;
    if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS)
        return kcu_fail(err, errlen, __FILE__, __LINE__, "cublasCreate", "failed");
    if (kcu_matmul(0, blas, dy, &act, &m, nt, scratch, own_f16, err, errlen) == 0 &&
        finish(err, errlen) == 0) {
        if (cudaMemcpy(y, dy, (size_t)nt * n_out * sizeof(float), cudaMemcpyDeviceToHost) ==
            cudaSuccess)
            rc = 0;
        else
            kcu_fail(err, errlen, __FILE__, __LINE__, "cudaMemcpy", "y");
    }
    cublasDestroy(blas);
    return rc;
}

extern "C" int kcu_check_matmul(float *y, const float *x, const void *w, int wtype, int n_tokens,
                                int n_in, int n_out, int own_f16, char *err, size_t errlen)
{
    if (available(err, errlen) < 0)
        return -1;
    arena A = {};
    int rc = do_matmul(&A, y, x, w, wtype, n_tokens, n_in, n_out, own_f16, err, errlen);
    arena_free(&A);
    return rc;
}

/* ---- attention ---- */

struct attn_host {
    int *meta; /* tab (n) | dec (n) | tiles (4n) | flat */
    uint16_t *k, *v;
};

static int do_attention(arena *A, attn_host *H, float *out, const float *q, const uint16_t *kc,
                        const uint16_t *vc, int n_blocks, int bs, int n_heads, int n_kv, int hd,
                        int window, const int *pos, const int *seq, const int *const *tables, int n,
                        int decode_only, int n_splits, char *err, size_t errlen)
{
    const int kv_dim = n_kv * hd, q_dim = n_heads * hd;
    // the cache in the device layout: (blocks, heads, rows, hd)
    const size_t cache = (size_t)n_blocks * bs * kv_dim;
    H->k = (uint16_t *)malloc(cache * sizeof(uint16_t));
    H->v = (uint16_t *)malloc(cache * sizeof(uint16_t));
    // metadata: tab, dec, tiles, then each sequence's blocks
    int n_seqs = 0, n_flat = 0;
    for (int t = 0; t < n; t++)
        n_seqs = seq[t] + 1 > n_seqs ? seq[t] + 1 : n_seqs;
    int *need = (int *)calloc((size_t)n_seqs + 1, sizeof(int));
    for (int t = 0; need && t < n; t++)
        if (pos[t] / bs + 1 > need[seq[t]])
            need[seq[t]] = pos[t] / bs + 1;
    for (int s = 0; need && s < n_seqs; s++)
        n_flat += need[s];
    H->meta = (int *)malloc(((size_t)6 * n + n_flat + 1) * sizeof(int));
    if (!H->k || !H->v || !need || !H->meta) {
        free(need);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t b = 0; b < (size_t)n_blocks; b++)
        for (int r = 0; r < bs; r++)
            for (int h = 0; h < n_kv; h++)
                for (int d = 0; d < hd; d++) {
                    const size_t from = (b * bs + r) * kv_dim + (size_t)h * hd + d;
                    const size_t to = ((b * n_kv + h) * bs + r) * hd + d;
                    H->k[to] = kc[from];
                    H->v[to] = vc[from];
                }
    int *tab = H->meta, *dec = tab + n, *tiles = dec + n, *flat = tiles + 4 * n;
    int *off = (int *)malloc(((size_t)n_seqs + 1) * sizeof(int));
    if (!off) {
        free(need);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int s = 0, f = 0; s < n_seqs; s++) {
        off[s] = f;
        for (int j = 0; j < need[s]; j++)
            flat[f++] = tables[s][j];
    }
    for (int t = 0; t < n; t++)
        tab[t] = off[seq[t]];
    free(off);
    free(need);
    int n_dec = 0, n_tiles = 0;
    const int g = n_heads / n_kv;
    if (decode_only) {
        for (int t = 0; t < n; t++)
            dec[n_dec++] = t;
    } else {
        kcu_attn_plan(pos, tab, n, kcu_attn_tile_tokens(hd, g), dec, &n_dec, tiles, &n_tiles);
    }
    int sm = 0;
    KCU_CK(cudaDeviceGetAttribute(&sm, cudaDevAttrMultiProcessorCount, 0));
    if (n_splits <= 0)
        n_splits = kcu_attn_splits(n_dec, n_kv, sm, 1 << 20);
    if (n_splits > KCU_MAX_SPLITS)
        n_splits = KCU_MAX_SPLITS;

    int *dpos = NULL, *dmeta = NULL;
    float *dq = NULL, *dout = NULL, *part_o = NULL, *part_ml = NULL;
    __half *dk = NULL, *dv = NULL;
    const size_t parts = (size_t)(n_dec > 0 ? n_dec : 1) * n_splits * n_heads;
    if (kcu_attn_init(err, errlen) < 0 ||
        dupload(A, &dk, H->k, cache * sizeof(uint16_t), err, errlen) < 0 ||
        dupload(A, &dv, H->v, cache * sizeof(uint16_t), err, errlen) < 0 ||
        dupload(A, &dpos, pos, (size_t)n * sizeof(int), err, errlen) < 0 ||
        dupload(A, &dmeta, H->meta, ((size_t)6 * n + n_flat + 1) * sizeof(int), err, errlen) < 0 ||
        dupload(A, &dq, q, (size_t)n * q_dim * sizeof(float), err, errlen) < 0 ||
        dalloc(A, &dout, (size_t)n * q_dim * sizeof(float), err, errlen) < 0 ||
        dalloc(A, &part_o, parts * hd * sizeof(float), err, errlen) < 0 ||
        dalloc(A, &part_ml, parts * 2 * sizeof(float), err, errlen) < 0)
        return -1;
    KCU_CK(cudaMemset(dout, 0xff, (size_t)n * q_dim * sizeof(float))); // NaN: unwritten shows
    kcu_attn a = {};
    a.q = dq;
    a.out_f = dout;
    a.k = dk;
    a.v = dv;
    a.pos = dpos;
    a.tab = dmeta;
    a.flat = dmeta + 6 * n;
    a.part_o = part_o;
    a.part_ml = part_ml;
    a.block_size = bs;
    a.n_heads = n_heads;
    a.n_kv_heads = n_kv;
    a.head_dim = hd;
    a.window = window;
    a.scale = 1.0f / sqrtf((float)hd);
    if (kcu_attn_decode(0, &a, dmeta + n, n_dec, n_splits, err, errlen) < 0 ||
        kcu_attn_prefill(0, &a, dmeta + 2 * n, n_tiles, err, errlen) < 0 || finish(err, errlen) < 0)
        return -1;
    KCU_CK(cudaMemcpy(out, dout, (size_t)n * q_dim * sizeof(float), cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int kcu_check_attention(float *out, const float *q, const uint16_t *k_cache,
                                   const uint16_t *v_cache, int n_blocks, int block_size,
                                   int n_heads, int n_kv_heads, int head_dim, int window,
                                   const int *pos, const int *seq, const int *const *tables, int n,
                                   int decode_only, int n_splits, char *err, size_t errlen)
{
    if (available(err, errlen) < 0)
        return -1;
    if (!kcu_attn_supported(head_dim, n_heads / n_kv_heads)) {
        snprintf(err, errlen, "shape not supported");
        return -1;
    }
    arena A = {};
    attn_host H = {};
    int rc =
        do_attention(&A, &H, out, q, k_cache, v_cache, n_blocks, block_size, n_heads, n_kv_heads,
                     head_dim, window, pos, seq, tables, n, decode_only, n_splits, err, errlen);
    arena_free(&A);
    free(H.meta);
    free(H.k);
    free(H.v);
    return rc;
}

/* ---- sampling ---- */

static int do_sample(arena *A, int *ids, float *logits, int n_rows, int vocab, uint32_t *counts,
                     int n_slots, const backend_sample *rows, int n, char *err, size_t errlen)
{
    float *dl = NULL;
    uint32_t *dc = NULL;
    backend_sample *dr = NULL;
    int *di = NULL;
    const size_t lb = (size_t)n_rows * vocab * sizeof(float);
    if (dupload(A, &dl, logits, lb, err, errlen) < 0 ||
        (counts &&
         dupload(A, &dc, counts, (size_t)n_slots * vocab * sizeof(uint32_t), err, errlen) < 0) ||
        dupload(A, &dr, rows, (size_t)n * sizeof(*rows), err, errlen) < 0 ||
        dalloc(A, &di, (size_t)n * sizeof(int), err, errlen) < 0 ||
        kcu_sample(0, di, dl, vocab, dc, dr, n, err, errlen) < 0 || finish(err, errlen) < 0)
        return -1;
    KCU_CK(cudaMemcpy(ids, di, (size_t)n * sizeof(int), cudaMemcpyDeviceToHost));
    KCU_CK(cudaMemcpy(logits, dl, lb, cudaMemcpyDeviceToHost));
    if (counts)
        KCU_CK(cudaMemcpy(counts, dc, (size_t)n_slots * vocab * sizeof(uint32_t),
                          cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int kcu_check_sample(int *ids, float *logits, int n_rows, int vocab, uint32_t *counts,
                                int n_slots, const struct backend_sample *rows, int n, char *err,
                                size_t errlen)
{
    if (available(err, errlen) < 0)
        return -1;
    for (int i = 0; i < n; i++)
        if (rows[i].row < 0 || rows[i].row >= n_rows || rows[i].slot >= n_slots ||
            (rows[i].slot >= 0 && !counts)) {
            snprintf(err, errlen, "sample row %d: bad row or slot", i);
            return -1;
        }
    arena A = {};
    int rc = do_sample(&A, ids, logits, n_rows, vocab, counts, n_slots, rows, n, err, errlen);
    arena_free(&A);
    return rc;
}
