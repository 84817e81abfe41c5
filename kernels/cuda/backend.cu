/*
 * backend (CUDA): the Mistral forward pass on one NVIDIA GPU, behind
 * kernels/backend.h (`--device cuda`). It computes what kernels/cpu/forward.c
 * computes, in the same order: embed; per layer RMSNorm -> fused QKV
 * projection -> RoPE + K/V into the paged cache -> attention (decode tokens
 * and prefill tiles) -> output projection + residual -> RMSNorm -> fused
 * gate|up projection -> SwiGLU -> down projection + residual; final RMSNorm
 * and the LM head for the rows asked for.
 *
 * Key decisions:
 * - Weights are uploaded once at creation: matrices as FP16 (F32 and BF16
 *   converted, so BF16 values beyond fp16's range would saturate; real
 *   checkpoints stay far inside it) or, when the file has Q8_0, kept as
 *   Q8_0; Q, K and V are one (q_dim + 2 kv_dim, dim) matrix, gate and up one
 *   (2 ffn, dim) matrix, so a step reads each layer in four projections. The
 *   token embedding stays in the file's type (only one row per token is
 *   read). A synthetic model (model_synthetic) gets random weights made on
 *   the GPU instead.
 * - Everything is allocated at creation: weights, the KV pool (kv_blocks, or
 *   what free memory allows when kv_blocks <= 0), activations for
 *   max_batch_tokens, the cuBLAS workspace, pinned staging for the step's
 *   metadata. A step never allocates and never waits for the GPU until its
 *   last copy: the token ids, positions, block tables and the
 *   decode/prefill plan go up in one pinned copy, the logits (or with
 *   `sample`, the token ids) come back at the end.
 * - Decode steps (one token per sequence, logits for each) have one shape per
 *   batch size, so each is captured once as a CUDA graph and replayed: a
 *   step is ~300 kernels, and launching them one by one costs a few us each
 *   (MILLRACE_CUDA_GRAPHS=0 turns graphs off; gpu-check.sh measures both).
 * - All work goes to one non-blocking stream; cuBLAS is bound to it.
 */
#include "kernels/cuda/kcu.cuh"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "common/log.h"
#include "kernels/cpu/ops.h"
#include "worker/model.h"
}

#define KCU_STAGING_BYTES (64u << 20) /* weight upload staging */
#define KCU_BLAS_WS_BYTES (32u << 20) /* cuBLAS workspace */

struct kcu_layer {
    float *attn_norm; /* (dim) */
    float *ffn_norm;  /* (dim) */
    kcu_matrix qkv;   /* (q_dim + 2 kv_dim, dim) */
    kcu_matrix wo;    /* (dim, q_dim) */
    kcu_matrix gu;    /* (2 ffn, dim): gate rows, then up rows */
    kcu_matrix down;  /* (dim, ffn) */
};

struct kcu_backend {
    struct backend_opts o;
    const struct model *m;
    int q_dim, kv_dim, qkv_dim, group, max_in, max_out;
    int sm_count, kv_blocks, bps; /* bps: blocks a sequence of the whole context needs */
    char device[128];
    double bandwidth;
    size_t total_mem, weight_bytes;
    int use_graphs, own_gemv;

    cudaStream_t st;
    cublasHandle_t blas;
    void *blas_ws;
    cudaEvent_t meta_done;

    void *embd; /* (vocab, dim) in the file's type */
    int embd_type;
    float *out_norm;           /* (dim) */
    kcu_matrix output;         /* (vocab, dim) */
    kcu_layer *layers;         /* host array of n_layers */
    __half *wscratch;          /* the largest Q8_0 matrix in fp16, or NULL */
    float *rope;               /* (context_len, head_dim) */
    __half *k_cache, *v_cache; /* (n_layers, kv_blocks, n_kv_heads, block_size, head_dim) */
    size_t layer_elems;

    float *x;      /* (T, dim) the residual stream */
    float *y;      /* (T, max_out) projection outputs */
    float *q;      /* (T, q_dim) rotated queries */
    float *att;    /* (T, q_dim) attention output when it must be quantized */
    __half *ah;    /* (T, max_in) prepared fp16 input */
    int8_t *aq;    /* (T, max_in) prepared Q8_0 input */
    float *ad;     /* (T, max_in / 32) */
    float *logits; /* (max_logits, vocab) */
    float *part_o, *part_ml;
    int part_cap;

    /* the step's metadata: pinned host and device copies, fixed regions */
    int *h_meta, *d_meta;
    int off_pos, off_tab, off_dec, off_tiles, off_rows, off_flat;
    const int **tabs; /* (T) distinct block tables of a step */
    int *tab_need, *tab_off, *tok_tab;
    int n_logits_last;

    uint32_t *counts; /* (max_logits, vocab) sampling slots */
    backend_sample *h_rows, *d_rows;
    int *h_ids, *d_ids;

    cudaGraphExec_t *graphs; /* (T + 1): decode step of n tokens */
};

static kcu_backend *cu(struct backend *b)
{
    return (kcu_backend *)b;
}

/* ---- device ---- */

extern "C" int kcu_device_usable(char *why, size_t whylen)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        snprintf(why, whylen, "%s", cudaGetErrorString(e));
        cudaGetLastError();
        return 0;
    }
    if (n < 1) {
        snprintf(why, whylen, "no CUDA device");
        return 0;
    }
    return 1;
}

static int device_setup(kcu_backend *b, char *err, size_t errlen)
{
    char why[256];
    if (!kcu_device_usable(why, sizeof(why))) {
        snprintf(err, errlen, "no CUDA device: %s", why);
        log_error("cuda: %s", err);
        return -1;
    }
    int dev = 0, clock_khz = 0, bus_bits = 0;
    KCU_CK(cudaGetDevice(&dev));
    cudaDeviceProp p;
    KCU_CK(cudaGetDeviceProperties(&p, dev));
    snprintf(b->device, sizeof(b->device), "%.127s", p.name);
    b->sm_count = p.multiProcessorCount;
    b->total_mem = p.totalGlobalMem;
    KCU_CK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev));
    KCU_CK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev));
    b->bandwidth = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0); // double data rate
    KCU_CK(cudaStreamCreateWithFlags(&b->st, cudaStreamNonBlocking));
    KCU_CK(cudaEventCreateWithFlags(&b->meta_done, cudaEventDisableTiming));
    KCU_BLAS(cublasCreate(&b->blas));
    KCU_BLAS(cublasSetStream(b->blas, b->st));
    KCU_CK(cudaMalloc(&b->blas_ws, KCU_BLAS_WS_BYTES));
    KCU_BLAS(cublasSetWorkspace(b->blas, b->blas_ws, KCU_BLAS_WS_BYTES));
    return kcu_attn_init(err, errlen);
}

/* ---- weights ---- */

static size_t file_row_bytes(int type, int n)
{
    switch (type) {
    case KCU_T_F32:
        return (size_t)n * 4;
    case KCU_T_Q8_0:
        return (size_t)n / KCU_QK * 34;
    default:
        return (size_t)n * 2;
    }
}

static uint64_t seed_of(int layer, int which)
{
    return 0x5eed0000ull + (uint64_t)layer * 64 + (uint64_t)which;
}

/* Make dst from the parts stacked by rows (same n_in): Q8_0 when every part
 * is Q8_0, else FP16. */
static int upload_matrix(kcu_backend *b, kcu_matrix *dst, const model_weight *const *parts,
                         int n_parts, void *staging, uint64_t seed, char *err, size_t errlen)
{
    int all_q8 = 1;
    dst->n_in = parts[0]->n_in;
    dst->n_out = 0;
    for (int i = 0; i < n_parts; i++) {
        dst->n_out += parts[i]->n_out;
        all_q8 &= parts[i]->type == KCU_T_Q8_0;
    }
    dst->type = all_q8 ? KCU_T_Q8_0 : KCU_T_F16;
    const size_t n = (size_t)dst->n_in * dst->n_out;
    if (all_q8) {
        KCU_CK(cudaMalloc(&dst->q, n));
        KCU_CK(cudaMalloc(&dst->d, n / KCU_QK * sizeof(__half)));
    } else {
        KCU_CK(cudaMalloc(&dst->h, n * sizeof(__half)));
    }
    b->weight_bytes += kcu_matrix_bytes(dst->type, dst->n_in, dst->n_out);
    if (b->m->synthetic)
        return kcu_fill_random(b->st, dst, 1.0f / sqrtf((float)dst->n_in), seed, err, errlen);
    int row0 = 0;
    for (int i = 0; i < n_parts; i++) {
        const model_weight *w = parts[i];
        const size_t rb = file_row_bytes((int)w->type, w->n_in);
        const int chunk = (int)(KCU_STAGING_BYTES / rb);
        for (int r = 0; r < w->n_out; r += chunk) {
            const int rows = w->n_out - r < chunk ? w->n_out - r : chunk;
            KCU_CK(cudaMemcpyAsync(staging, (const char *)w->data + (size_t)r * rb,
                                   (size_t)rows * rb, cudaMemcpyHostToDevice, b->st));
            if (kcu_convert_rows(b->st, dst, row0 + r, staging, (int)w->type, rows, err, errlen) <
                0)
                return -1;
            KCU_CK(cudaStreamSynchronize(b->st)); // the staging is reused
        }
        row0 += w->n_out;
    }
    return 0;
}

static int upload_vector(kcu_backend *b, float **dst, const model_weight *w, char *err,
                         size_t errlen)
{
    KCU_CK(cudaMalloc(dst, (size_t)w->n_in * sizeof(float)));
    b->weight_bytes += (size_t)w->n_in * sizeof(float);
    if (b->m->synthetic)
        return kcu_fill_f32(b->st, *dst, (size_t)w->n_in, 1.0f, err, errlen);
    KCU_CK(cudaMemcpy(*dst, w->data, (size_t)w->n_in * sizeof(float), cudaMemcpyHostToDevice));
    return 0;
}

static int upload_weights(kcu_backend *b, char *err, size_t errlen)
{
    const model *m = b->m;
    const model_config *c = &m->cfg;
    void *staging = NULL;
    if (!m->synthetic)
        KCU_CK(cudaMalloc(&staging, KCU_STAGING_BYTES));
    int rc = -1;
    size_t q8_max = 0;
    b->layers = (kcu_layer *)calloc((size_t)c->n_layers, sizeof(kcu_layer));
    if (!b->layers) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    {
        b->embd_type = (int)m->tok_embd.type;
        const size_t eb = file_row_bytes(b->embd_type, c->dim) * (size_t)c->vocab_size;
        if (cudaMalloc(&b->embd, eb) != cudaSuccess) {
            kcu_fail(err, errlen, __FILE__, __LINE__, "cudaMalloc(token embedding)",
                     "out of device memory");
            goto out;
        }
        b->weight_bytes += eb;
        if (m->synthetic) {
            if (kcu_fill_random_f16(b->st, (__half *)b->embd, (size_t)c->vocab_size * c->dim, 1.0f,
                                    seed_of(c->n_layers, 0), err, errlen) < 0)
                goto out;
        } else if (cudaMemcpy(b->embd, m->tok_embd.data, eb, cudaMemcpyHostToDevice) !=
                   cudaSuccess) {
            kcu_fail(err, errlen, __FILE__, __LINE__, "cudaMemcpy(token embedding)",
                     cudaGetErrorString(cudaGetLastError()));
            goto out;
        }
    }
    for (int l = 0; l < c->n_layers; l++) {
        const model_layer *L = &m->layers[l];
        kcu_layer *D = &b->layers[l];
        const model_weight *qkv[3] = {&L->wq, &L->wk, &L->wv};
        const model_weight *gu[2] = {&L->w_gate, &L->w_up};
        const model_weight *wo[1] = {&L->wo}, *down[1] = {&L->w_down};
        if (upload_vector(b, &D->attn_norm, &L->attn_norm, err, errlen) < 0 ||
            upload_vector(b, &D->ffn_norm, &L->ffn_norm, err, errlen) < 0 ||
            upload_matrix(b, &D->qkv, qkv, 3, staging, seed_of(l, 1), err, errlen) < 0 ||
            upload_matrix(b, &D->wo, wo, 1, staging, seed_of(l, 2), err, errlen) < 0 ||
            upload_matrix(b, &D->gu, gu, 2, staging, seed_of(l, 3), err, errlen) < 0 ||
            upload_matrix(b, &D->down, down, 1, staging, seed_of(l, 4), err, errlen) < 0)
            goto out;
        const kcu_matrix *all[4] = {&D->qkv, &D->wo, &D->gu, &D->down};
        for (int i = 0; i < 4; i++)
            if (all[i]->type == KCU_T_Q8_0 && (size_t)all[i]->n_in * all[i]->n_out > q8_max)
                q8_max = (size_t)all[i]->n_in * all[i]->n_out;
    }
    {
        const model_weight *out[1] = {&m->output};
        if (upload_vector(b, &b->out_norm, &m->output_norm, err, errlen) < 0 ||
            upload_matrix(b, &b->output, out, 1, staging, seed_of(c->n_layers, 1), err, errlen) < 0)
            goto out;
        if (b->output.type == KCU_T_Q8_0 && (size_t)c->dim * c->vocab_size > q8_max)
            q8_max = (size_t)c->dim * c->vocab_size;
    }
    if (q8_max > 0 && cudaMalloc(&b->wscratch, q8_max * sizeof(__half)) != cudaSuccess) {
        kcu_fail(err, errlen, __FILE__, __LINE__, "cudaMalloc(Q8_0 scratch)",
                 "out of device memory");
        goto out;
    }
    if (cudaStreamSynchronize(b->st) != cudaSuccess) {
        kcu_fail(err, errlen, __FILE__, __LINE__, "weight upload",
                 cudaGetErrorString(cudaGetLastError()));
        goto out;
    }
    rc = 0;
out:
    cudaFree(staging);
    return rc;
}

/* ---- activations, KV pool, metadata ---- */

static int alloc_buffers(kcu_backend *b, char *err, size_t errlen)
{
    const model_config *c = &b->m->cfg;
    const size_t T = (size_t)b->o.max_batch_tokens, L = (size_t)b->o.max_logits;
    const size_t vocab = (size_t)c->vocab_size;

    // RoPE table exactly as the CPU's
    const size_t rope_n = (size_t)c->context_len * c->head_dim;
    float *rope = (float *)malloc(rope_n * sizeof(float));
    if (!rope) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    kc_rope_table(rope, c->context_len, c->head_dim, c->rope_base);
    cudaError_t e = cudaMalloc(&b->rope, rope_n * sizeof(float));
    if (e == cudaSuccess)
        e = cudaMemcpy(b->rope, rope, rope_n * sizeof(float), cudaMemcpyHostToDevice);
    free(rope);
    KCU_CK(e);

    KCU_CK(cudaMalloc(&b->x, T * c->dim * sizeof(float)));
    KCU_CK(cudaMalloc(&b->y, T * b->max_out * sizeof(float)));
    KCU_CK(cudaMalloc(&b->q, T * b->q_dim * sizeof(float)));
    KCU_CK(cudaMalloc(&b->att, T * b->q_dim * sizeof(float)));
    KCU_CK(cudaMalloc(&b->ah, T * b->max_in * sizeof(__half)));
    KCU_CK(cudaMalloc(&b->aq, T * b->max_in));
    KCU_CK(cudaMalloc(&b->ad, T * (b->max_in / KCU_QK + 1) * sizeof(float)));
    KCU_CK(cudaMalloc(&b->logits, (L > 0 ? L : 1) * vocab * sizeof(float)));
    b->part_cap = 2 * b->sm_count + 64;
    KCU_CK(cudaMalloc(&b->part_o, (size_t)b->part_cap * b->q_dim * sizeof(float)));
    KCU_CK(cudaMalloc(&b->part_ml, (size_t)b->part_cap * c->n_heads * 2 * sizeof(float)));

    // metadata: fixed regions, so that captured graphs read the current step
    b->bps = (c->context_len + b->o.block_size - 1) / b->o.block_size;
    b->off_pos = (int)T;
    b->off_tab = 2 * (int)T;
    b->off_dec = 3 * (int)T;
    b->off_tiles = 4 * (int)T;
    b->off_rows = 8 * (int)T;
    b->off_flat = 8 * (int)T + (int)L;
    const size_t meta = (size_t)b->off_flat + T * b->bps;
    KCU_CK(cudaMallocHost(&b->h_meta, meta * sizeof(int)));
    KCU_CK(cudaMalloc(&b->d_meta, meta * sizeof(int)));
    b->tabs = (const int **)malloc(T * sizeof(*b->tabs));
    b->tab_need = (int *)malloc(T * sizeof(int));
    b->tab_off = (int *)malloc(T * sizeof(int));
    b->tok_tab = (int *)malloc(T * sizeof(int));
    b->graphs = (cudaGraphExec_t *)calloc(T + 1, sizeof(cudaGraphExec_t));
    if (!b->tabs || !b->tab_need || !b->tab_off || !b->tok_tab || !b->graphs) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }

    // sampling
    KCU_CK(cudaMalloc(&b->counts, (L > 0 ? L : 1) * vocab * sizeof(uint32_t)));
    KCU_CK(cudaMemsetAsync(b->counts, 0, (L > 0 ? L : 1) * vocab * sizeof(uint32_t), b->st));
    KCU_CK(cudaMallocHost(&b->h_rows, (L > 0 ? L : 1) * sizeof(backend_sample)));
    KCU_CK(cudaMalloc(&b->d_rows, (L > 0 ? L : 1) * sizeof(backend_sample)));
    KCU_CK(cudaMallocHost(&b->h_ids, (L > 0 ? L : 1) * sizeof(int)));
    KCU_CK(cudaMalloc(&b->d_ids, (L > 0 ? L : 1) * sizeof(int)));

    // the KV pool: what was asked for, or what free memory allows
    const size_t block_elems = (size_t)b->o.block_size * b->kv_dim;
    const size_t per_block = 2 * block_elems * sizeof(__half) * c->n_layers;
    if (b->o.kv_blocks > 0) {
        b->kv_blocks = b->o.kv_blocks;
    } else {
        size_t free_b = 0, total_b = 0;
        KCU_CK(cudaMemGetInfo(&free_b, &total_b));
        const size_t keep = (size_t)1 << 30; // for cuBLAS, graphs and the driver
        // clamped before the cast: a small model's blocks can outnumber INT_MAX
        size_t n = free_b > keep ? (free_b - keep) / 10 * 9 / per_block : 0;
        if (n > (1u << 30) / 2)
            n = (1u << 30) / 2;
        b->kv_blocks = (int)n;
        if (b->kv_blocks < 1) {
            snprintf(err, errlen, "no device memory left for the KV cache (%zu MiB free)",
                     free_b >> 20);
            log_error("cuda: %s", err);
            return -1;
        }
    }
    b->layer_elems = (size_t)b->kv_blocks * block_elems;
    const size_t kv_bytes = b->layer_elems * c->n_layers * sizeof(__half);
    cudaError_t ek = cudaMalloc(&b->k_cache, kv_bytes);
    if (ek == cudaSuccess)
        ek = cudaMalloc(&b->v_cache, kv_bytes);
    if (ek != cudaSuccess) {
        cudaGetLastError();
        char why[160];
        snprintf(why, sizeof(why), "%s (KV cache of %d blocks: 2 x %.2f GiB)",
                 cudaGetErrorString(ek), b->kv_blocks, (double)kv_bytes / (1u << 30));
        return kcu_fail(err, errlen, __FILE__, __LINE__, "cudaMalloc(KV cache)", why);
    }
    if (b->m->synthetic) { // any finite values: what attention reads does not change its speed
        if (kcu_fill_random_f16(b->st, b->k_cache, b->layer_elems * c->n_layers, 1.0f, 11, err,
                                errlen) < 0 ||
            kcu_fill_random_f16(b->st, b->v_cache, b->layer_elems * c->n_layers, 1.0f, 12, err,
                                errlen) < 0)
            return -1;
    } else {
        KCU_CK(cudaMemsetAsync(b->k_cache, 0, kv_bytes, b->st));
        KCU_CK(cudaMemsetAsync(b->v_cache, 0, kv_bytes, b->st));
    }
    KCU_CK(cudaEventRecord(b->meta_done, b->st));
    KCU_CK(cudaStreamSynchronize(b->st));
    return 0;
}

static void kcu_destroy(struct backend *be)
{
    kcu_backend *b = cu(be);
    if (!b)
        return;
    if (b->st)
        cudaStreamSynchronize(b->st);
    for (int i = 0; b->graphs && i <= b->o.max_batch_tokens; i++)
        if (b->graphs[i])
            cudaGraphExecDestroy(b->graphs[i]);
    free(b->graphs);
    for (int l = 0; b->layers && l < b->m->cfg.n_layers; l++) {
        kcu_layer *L = &b->layers[l];
        kcu_matrix *all[4] = {&L->qkv, &L->wo, &L->gu, &L->down};
        for (int i = 0; i < 4; i++) {
            cudaFree(all[i]->h);
            cudaFree(all[i]->q);
            cudaFree(all[i]->d);
        }
        cudaFree(L->attn_norm);
        cudaFree(L->ffn_norm);
    }
    free(b->layers);
    cudaFree(b->output.h);
    cudaFree(b->output.q);
    cudaFree(b->output.d);
    cudaFree(b->out_norm);
    cudaFree(b->embd);
    cudaFree(b->wscratch);
    cudaFree(b->rope);
    cudaFree(b->k_cache);
    cudaFree(b->v_cache);
    cudaFree(b->x);
    cudaFree(b->y);
    cudaFree(b->q);
    cudaFree(b->att);
    cudaFree(b->ah);
    cudaFree(b->aq);
    cudaFree(b->ad);
    cudaFree(b->logits);
    cudaFree(b->part_o);
    cudaFree(b->part_ml);
    cudaFreeHost(b->h_meta);
    cudaFree(b->d_meta);
    cudaFree(b->counts);
    cudaFreeHost(b->h_rows);
    cudaFree(b->d_rows);
    cudaFreeHost(b->h_ids);
    cudaFree(b->d_ids);
    free(b->tabs);
    free(b->tab_need);
    free(b->tab_off);
    free(b->tok_tab);
    if (b->blas)
        cublasDestroy(b->blas);
    cudaFree(b->blas_ws);
    if (b->meta_done)
        cudaEventDestroy(b->meta_done);
    if (b->st)
        cudaStreamDestroy(b->st);
    cudaGetLastError(); // leave no error behind for the next backend
    free(b);
}

static int env_flag(const char *name, int def)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return def;
    return strcmp(v, "0") != 0 && strcmp(v, "off") != 0 && strcmp(v, "false") != 0;
}

static int kcu_create(struct backend **out, const struct model *m, const struct backend_opts *o,
                      char *err, size_t errlen)
{
    *out = NULL;
    const model_config *c = &m->cfg;
    kcu_backend *b = (kcu_backend *)calloc(1, sizeof(*b));
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    b->o = *o;
    b->m = m;
    if (b->o.max_logits <= 0 || b->o.max_logits > b->o.max_batch_tokens)
        b->o.max_logits = b->o.max_batch_tokens;
    b->q_dim = c->n_heads * c->head_dim;
    b->kv_dim = c->n_kv_heads * c->head_dim;
    b->qkv_dim = b->q_dim + 2 * b->kv_dim;
    b->group = c->n_heads / c->n_kv_heads;
    b->max_in = c->dim > b->q_dim ? c->dim : b->q_dim;
    if (c->ffn_dim > b->max_in)
        b->max_in = c->ffn_dim;
    b->max_out = b->qkv_dim > 2 * c->ffn_dim ? b->qkv_dim : 2 * c->ffn_dim;
    if (c->dim > b->max_out)
        b->max_out = c->dim;
    const char *gemv = getenv("MILLRACE_CUDA_GEMV");
    b->own_gemv = gemv && strcmp(gemv, "own") == 0;
    b->use_graphs = env_flag("MILLRACE_CUDA_GRAPHS", 1);
    if (b->o.block_size <= 0 || b->o.max_batch_tokens <= 0) {
        snprintf(err, errlen, "bad backend sizes");
        goto fail;
    }
    if (!kcu_attn_supported(c->head_dim, b->group)) {
        snprintf(err, errlen,
                 "the CUDA backend runs head sizes 16, 32, 64, 128 and 256 with up to 8 query "
                 "heads per KV head; this model has head size %d and %d",
                 c->head_dim, b->group);
        goto fail;
    }
    if (device_setup(b, err, errlen) < 0 || upload_weights(b, err, errlen) < 0 ||
        alloc_buffers(b, err, errlen) < 0)
        goto fail;
    {
        // the uploads went through the legacy stream, where a cudaMemcpy from
        // pageable memory may return before its DMA lands, and the steps run on
        // a non-blocking stream that does not wait for it
        cudaError_t e = cudaDeviceSynchronize();
        if (e != cudaSuccess) {
            kcu_fail(err, errlen, __FILE__, __LINE__, "cudaDeviceSynchronize(after the uploads)",
                     cudaGetErrorString(e));
            goto fail;
        }
    }
    log_info("cuda: %s, %d SMs, %.0f GB/s peak; %s weights %.2f GB on the device; KV pool %d "
             "blocks of %d (%.2f GB); graphs %s, FP16 GEMV %s",
             b->device, b->sm_count, b->bandwidth / 1e9, m->synthetic ? "synthetic" : "model",
             (double)b->weight_bytes / 1e9, b->kv_blocks, b->o.block_size,
             2.0 * (double)b->layer_elems * c->n_layers * 2 / 1e9, b->use_graphs ? "on" : "off",
             b->own_gemv ? "own" : "cuBLAS");
    *out = (struct backend *)b;
    return 0;
fail:
    kcu_destroy((struct backend *)b);
    return -1;
}

/* ---- a step ---- */

/* Check the batch as the CPU backend does and lay it out in h_meta. */
static int plan_step(kcu_backend *b, const struct backend_batch *bt, int *n_dec, int *n_tiles,
                     int *n_flat, char *err, size_t errlen)
{
    const model_config *c = &b->m->cfg;
    const int T = bt->n_tokens, bs = b->o.block_size;
    if (T < 1 || T > b->o.max_batch_tokens || bt->n_logits < 0 || bt->n_logits > T ||
        bt->n_logits > b->o.max_logits) {
        snprintf(err, errlen, "batch of %d tokens, %d logits: outside 1..%d", T, bt->n_logits,
                 b->o.max_batch_tokens);
        return -1;
    }
    KCU_CK(cudaEventSynchronize(b->meta_done)); // the last step's copy has left h_meta
    int *tok = b->h_meta, *pos = b->h_meta + b->off_pos, *tab = b->h_meta + b->off_tab;
    int *flat = b->h_meta + b->off_flat;
    int n_tabs = 0;
    for (int t = 0; t < T; t++) {
        if (bt->tokens[t] < 0 || bt->tokens[t] >= c->vocab_size || bt->pos[t] < 0 ||
            bt->pos[t] >= c->context_len || bt->seq[t] < 0 || bt->seq[t] >= T) {
            snprintf(err, errlen,
                     "batch row %d: token %d at position %d of sequence %d is out of range", t,
                     bt->tokens[t], bt->pos[t], bt->seq[t]);
            return -1;
        }
        const int *tp = bt->block_tables[bt->seq[t]];
        int k;
        if (t > 0 && tp == b->tabs[b->tok_tab[t - 1]]) {
            k = b->tok_tab[t - 1];
        } else {
            for (k = 0; k < n_tabs && b->tabs[k] != tp; k++)
                ;
            if (k == n_tabs) {
                b->tabs[n_tabs] = tp;
                b->tab_need[n_tabs++] = 0;
            }
        }
        b->tok_tab[t] = k;
        if (bt->pos[t] / bs + 1 > b->tab_need[k])
            b->tab_need[k] = bt->pos[t] / bs + 1;
        tok[t] = bt->tokens[t];
        pos[t] = bt->pos[t];
    }
    int nf = 0;
    for (int k = 0; k < n_tabs; k++) {
        b->tab_off[k] = nf;
        for (int j = 0; j < b->tab_need[k]; j++) {
            const int blk = b->tabs[k][j];
            if (blk < 0 || blk >= b->kv_blocks) {
                snprintf(err, errlen, "sequence %d: block %d is not in the pool of %d", k, blk,
                         b->kv_blocks);
                return -1;
            }
            flat[nf++] = blk;
        }
    }
    for (int t = 0; t < T; t++)
        tab[t] = b->tab_off[b->tok_tab[t]];
    for (int i = 0; i < bt->n_logits; i++) {
        if (bt->logit_rows[i] < 0 || bt->logit_rows[i] >= T) {
            snprintf(err, errlen, "logit row %d is not in the batch", bt->logit_rows[i]);
            return -1;
        }
        b->h_meta[b->off_rows + i] = bt->logit_rows[i];
    }
    kcu_attn_plan(pos, tab, T, kcu_attn_tile_tokens(c->head_dim, b->group), b->h_meta + b->off_dec,
                  n_dec, b->h_meta + b->off_tiles, n_tiles);
    *n_flat = nf;
    return 0;
}

static kcu_act act_for(const kcu_backend *b, const kcu_matrix *w, int n)
{
    kcu_act a;
    a.mode = kcu_act_mode_for(w, n);
    a.h = b->ah;
    a.q = b->aq;
    a.d = b->ad;
    a.f = NULL;
    return a;
}

/* The whole forward pass of T tokens (n_dec decode tokens, n_tiles prefill
 * tiles, L logit rows), enqueued on b->st; no sync, so it can be captured. */
static int enqueue_forward(kcu_backend *b, int T, int n_dec, int n_tiles, int L, char *err,
                           size_t errlen)
{
    const model_config *c = &b->m->cfg;
    cudaStream_t st = b->st;
    const int *tok = b->d_meta, *pos = b->d_meta + b->off_pos, *tab = b->d_meta + b->off_tab;
    const int *dec = b->d_meta + b->off_dec, *tiles = b->d_meta + b->off_tiles;
    const int *rows = b->d_meta + b->off_rows, *flat = b->d_meta + b->off_flat;
    const int n_splits = kcu_attn_splits(n_dec, c->n_kv_heads, b->sm_count, b->part_cap);
    const int dim = c->dim;
    const float eps = c->rms_eps;

    if (kcu_embed(st, b->x, tok, T, b->embd, b->embd_type, dim, err, errlen) < 0)
        return -1;
    kcu_act a = act_for(b, &b->layers[0].qkv, T);
    if (kcu_rmsnorm(st, b->x, NULL, NULL, NULL, T, b->layers[0].attn_norm, dim, eps, &a, err,
                    errlen) < 0)
        return -1;
    for (int l = 0; l < c->n_layers; l++) {
        const kcu_layer *Ly = &b->layers[l];
        __half *kc = b->k_cache + (size_t)l * b->layer_elems;
        __half *vc = b->v_cache + (size_t)l * b->layer_elems;

        // q, k, v = rmsnorm(x) Wqkv; RoPE; K, V into the cache
        if (kcu_matmul(st, b->blas, b->y, &a, &Ly->qkv, T, b->wscratch, b->own_gemv, err, errlen) <
                0 ||
            kcu_rope_store(st, b->q, kc, vc, b->y, pos, tab, flat, T, b->rope, c->n_heads,
                           c->n_kv_heads, c->head_dim, b->o.block_size, err, errlen) < 0)
            return -1;

        // attention, written straight in the output projection's input
        a = act_for(b, &Ly->wo, T);
        kcu_attn at;
        at.q = b->q;
        at.out_f = a.mode == KCU_ACT_F16 ? NULL : b->att;
        at.out_h = a.mode == KCU_ACT_F16 ? b->ah : NULL;
        at.k = kc;
        at.v = vc;
        at.pos = pos;
        at.tab = tab;
        at.flat = flat;
        at.part_o = b->part_o;
        at.part_ml = b->part_ml;
        at.block_size = b->o.block_size;
        at.n_heads = c->n_heads;
        at.n_kv_heads = c->n_kv_heads;
        at.head_dim = c->head_dim;
        at.window = c->sliding_window;
        at.scale = 1.0f / sqrtf((float)c->head_dim);
        if (kcu_attn_decode(st, &at, dec, n_dec, n_splits, err, errlen) < 0 ||
            kcu_attn_prefill(st, &at, tiles, n_tiles, err, errlen) < 0)
            return -1;
        if (a.mode != KCU_ACT_F16 && kcu_prepare(st, b->att, T, b->q_dim, &a, err, errlen) < 0)
            return -1;

        // x += att Wo; then the FFN: x += (silu(xb Wgate) * (xb Wup)) Wdown
        if (kcu_matmul(st, b->blas, b->y, &a, &Ly->wo, T, b->wscratch, b->own_gemv, err, errlen) <
            0)
            return -1;
        a = act_for(b, &Ly->gu, T);
        if (kcu_rmsnorm(st, b->x, b->y, b->x, NULL, T, Ly->ffn_norm, dim, eps, &a, err, errlen) <
                0 ||
            kcu_matmul(st, b->blas, b->y, &a, &Ly->gu, T, b->wscratch, b->own_gemv, err, errlen) <
                0)
            return -1;
        a = act_for(b, &Ly->down, T);
        if (kcu_swiglu(st, b->y, T, c->ffn_dim, &a, err, errlen) < 0 ||
            kcu_matmul(st, b->blas, b->y, &a, &Ly->down, T, b->wscratch, b->own_gemv, err, errlen) <
                0)
            return -1;
        if (l + 1 < c->n_layers) { // the residual add, fused with the next layer's norm
            a = act_for(b, &b->layers[l + 1].qkv, T);
            if (kcu_rmsnorm(st, b->x, b->y, b->x, NULL, T, b->layers[l + 1].attn_norm, dim, eps, &a,
                            err, errlen) < 0)
                return -1;
        }
    }
    if (L > 0) { // the last residual add only for the rows asked for, then the LM head
        a = act_for(b, &b->output, L);
        if (kcu_rmsnorm(st, b->x, b->y, NULL, rows, L, b->out_norm, dim, eps, &a, err, errlen) <
                0 ||
            kcu_matmul(st, b->blas, b->logits, &a, &b->output, L, b->wscratch, b->own_gemv, err,
                       errlen) < 0)
            return -1;
    }
    return 0;
}

/* A decode step of T tokens from its graph, captured on first use. */
static int run_graph(kcu_backend *b, int T, char *err, size_t errlen)
{
    if (!b->graphs[T]) {
        cudaGraph_t g = NULL;
        KCU_CK(cudaStreamBeginCapture(b->st, cudaStreamCaptureModeThreadLocal));
        const int rc = enqueue_forward(b, T, T, 0, T, err, errlen);
        cudaError_t e = cudaStreamEndCapture(b->st, &g);
        if (rc == 0 && e == cudaSuccess)
            e = cudaGraphInstantiate(&b->graphs[T], g, 0);
        if (g)
            cudaGraphDestroy(g);
        if (rc < 0 || e != cudaSuccess) {
            const char *why = rc < 0 ? err : cudaGetErrorString(e);
            log_warn("cuda: capturing a decode step of %d tokens failed (%s); CUDA graphs off", T,
                     why);
            cudaGetLastError();
            b->graphs[T] = NULL;
            b->use_graphs = 0;
            return enqueue_forward(b, T, T, 0, T, err, errlen);
        }
    }
    KCU_CK(cudaGraphLaunch(b->graphs[T], b->st));
    return 0;
}

static int kcu_forward(struct backend *be, const struct backend_batch *bt, float *logits, char *err,
                       size_t errlen)
{
    kcu_backend *b = cu(be);
    const model_config *c = &b->m->cfg;
    int n_dec = 0, n_tiles = 0, n_flat = 0;
    if (plan_step(b, bt, &n_dec, &n_tiles, &n_flat, err, errlen) < 0)
        return -1;
    const int T = bt->n_tokens, L = bt->n_logits;
    KCU_CK(cudaMemcpyAsync(b->d_meta, b->h_meta, ((size_t)b->off_flat + n_flat) * sizeof(int),
                           cudaMemcpyHostToDevice, b->st));
    KCU_CK(cudaEventRecord(b->meta_done, b->st));
    b->n_logits_last = 0;
    int rc;
    if (b->use_graphs && n_tiles == 0 && L == T)
        rc = run_graph(b, T, err, errlen);
    else
        rc = enqueue_forward(b, T, n_dec, n_tiles, L, err, errlen);
    if (rc < 0)
        return -1;
    b->n_logits_last = L;
    if (!logits)
        return 0; // they stay on the device for `sample`; errors show at its sync
    if (L > 0)
        KCU_CK(cudaMemcpyAsync(logits, b->logits, (size_t)L * c->vocab_size * sizeof(float),
                               cudaMemcpyDeviceToHost, b->st));
    KCU_CK(cudaStreamSynchronize(b->st));
    return 0;
}

static int kcu_sample_op(struct backend *be, const struct backend_sample *rows, int n, int *ids,
                         char *err, size_t errlen)
{
    kcu_backend *b = cu(be);
    if (n <= 0)
        return 0;
    if (n > b->o.max_logits) {
        snprintf(err, errlen, "%d rows to sample: more than %d", n, b->o.max_logits);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const backend_sample *r = &rows[i];
        if (r->row < 0 || r->row >= b->n_logits_last || r->slot < -1 ||
            r->slot >= b->o.max_logits || !(r->temperature >= 0) || isinf(r->temperature) ||
            !(r->top_p > 0 && r->top_p <= 1) || !isfinite(r->presence_penalty) ||
            !isfinite(r->frequency_penalty) || !(r->u >= 0 && r->u < 1)) {
            snprintf(err, errlen,
                     "sample row %d: logit row %d (of %d), slot %d or parameters out "
                     "of range",
                     i, r->row, b->n_logits_last, r->slot);
            return -1;
        }
    }
    memcpy(b->h_rows, rows, (size_t)n * sizeof(*rows));
    KCU_CK(cudaMemcpyAsync(b->d_rows, b->h_rows, (size_t)n * sizeof(*rows), cudaMemcpyHostToDevice,
                           b->st));
    if (kcu_sample(b->st, b->d_ids, b->logits, b->m->cfg.vocab_size, b->counts, b->d_rows, n, err,
                   errlen) < 0)
        return -1;
    KCU_CK(cudaMemcpyAsync(b->h_ids, b->d_ids, (size_t)n * sizeof(int), cudaMemcpyDeviceToHost,
                           b->st));
    KCU_CK(cudaStreamSynchronize(b->st));
    memcpy(ids, b->h_ids, (size_t)n * sizeof(int));
    return 0;
}

static int kcu_copy_blocks(struct backend *be, const int *src, const int *dst, int n, char *err,
                           size_t errlen)
{
    kcu_backend *b = cu(be);
    const size_t bytes = (size_t)b->o.block_size * b->kv_dim * sizeof(__half);
    for (int i = 0; i < n; i++) {
        if (src[i] < 0 || src[i] >= b->kv_blocks || dst[i] < 0 || dst[i] >= b->kv_blocks) {
            snprintf(err, errlen, "copy of block %d to %d: outside the pool", src[i], dst[i]);
            return -1;
        }
        for (int l = 0; l < b->m->cfg.n_layers; l++) {
            const size_t base = (size_t)l * b->layer_elems, bl = bytes / sizeof(__half);
            KCU_CK(cudaMemcpyAsync(b->k_cache + base + (size_t)dst[i] * bl,
                                   b->k_cache + base + (size_t)src[i] * bl, bytes,
                                   cudaMemcpyDeviceToDevice, b->st));
            KCU_CK(cudaMemcpyAsync(b->v_cache + base + (size_t)dst[i] * bl,
                                   b->v_cache + base + (size_t)src[i] * bl, bytes,
                                   cudaMemcpyDeviceToDevice, b->st));
        }
    }
    return 0;
}

static int kcu_info(struct backend *be, struct backend_info *out)
{
    kcu_backend *b = cu(be);
    memset(out, 0, sizeof(*out));
    snprintf(out->device, sizeof(out->device), "%s", b->device);
    out->kv_blocks = b->kv_blocks;
    out->sm_count = b->sm_count;
    out->mem_bandwidth = b->bandwidth;
    out->memory_bytes = b->total_mem;
    out->weight_bytes = b->weight_bytes;
    out->graphs = b->use_graphs;
    return 0;
}

extern "C" const struct backend_ops backend_cuda = {
    "cuda", kcu_create, kcu_forward, kcu_copy_blocks, kcu_destroy, kcu_sample_op, kcu_info,
};
