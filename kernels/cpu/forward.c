/*
 * forward (CPU): the Mistral forward pass over a batch of tokens, behind the
 * backend interface (kernels/backend.h).
 *
 * Reads top to bottom like the model: embed, then per layer RMSNorm ->
 * Q/K/V projections -> RoPE -> K/V into the paged cache -> grouped-query
 * attention (sliding window when the model has one) -> output projection +
 * residual -> RMSNorm -> SwiGLU FFN + residual; final RMSNorm and the LM head
 * for the rows whose logits are wanted.
 *
 * Key decisions:
 * - Weights are used in place from the mapped GGUF file; every projection
 *   is one matmul over all the batch's tokens, so a weight row is read from
 *   memory once per step whatever the batch size (kernels/cpu/matmul.c).
 *   The exception: on a CPU with AVX512VNNI, Q8_0 projections whose rows
 *   are whole groups of 8 blocks are repacked once, at creation, into
 *   Q8_0_R8 (matmul.h), which that kernel reads about twice as fast with a
 *   few tokens per step; the repacked copy is memory of the process's own
 *   (as many bytes as the rows in the file), and the file's pages of those
 *   rows are let go.
 * - The KV cache is fp16, like the reference implementation's default, in
 *   one pool allocated at creation: (layers, blocks, block_size, kv_dim) for
 *   K and again for V.
 * - Everything a step needs is allocated at creation for max_batch_tokens;
 *   the step itself never allocates (but for the first step whose logits
 *   stay here for `sample`, and the first use of a sampling slot).
 * - `sample` is worker/sampler.c itself, with one sampler per slot for the
 *   penalties' counts, so the scheduler's one path (sample where the logits
 *   are) runs here exactly as it runs on a GPU, and gives what the host
 *   sampler gives.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kernels/backend.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/dtype.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/pool.h"
#include "worker/model.h"
#include "worker/sampler.h"

struct cpu_backend {
    struct backend_opts o;
    const struct model *m;
    /* the model's layers and LM head as the kernels read them: the file's,
     * or Q8_0_R8 copies in `packed` */
    struct model_layer *layers;
    struct model_weight output;
    void *packed;
    struct kc_pool *pool;
    struct kc_scratch *mm;
    int q_dim, kv_dim;
    size_t layer_stride; /* uint16s between one layer's pool and the next */
    uint16_t *k_cache;   /* (n_layers, kv_blocks, block_size, kv_dim) fp16 */
    uint16_t *v_cache;   /* same */
    float *rope;         /* (context_len, head_dim): cos/sin pairs per position */
    /* activations, (max_batch_tokens, width) each */
    float *x, *xb, *q, *k, *v, *att, *gate, *up;
    float *attn_scratch;
    int max_span;
    struct kc_attn_token *attn;    /* (max_batch_tokens) */
    const uint16_t **kptr, **vptr; /* (max_seqs, blocks_per_seq) */
    int blocks_per_seq;
    int *seq_blocks; /* (max_batch_tokens): blocks used per sequence */
    /* the last forward's logits, for `sample` */
    float *last_logits; /* the caller's buffer, or own_logits */
    int last_n_logits;
    float *own_logits;         /* (max_logits, vocab), made on first use */
    float *sample_row;         /* (vocab) a row that penalties will change */
    struct sampler **slots;    /* (max_logits) per slot, made on first use */
    struct sampler *no_counts; /* for rows with slot -1 */
};

static struct cpu_backend *cpu(struct backend *b)
{
    return (struct cpu_backend *)b;
}

static void cpu_destroy(struct backend *b)
{
    struct cpu_backend *c = cpu(b);
    if (!c)
        return;
    kc_pool_destroy(c->pool);
    kc_scratch_destroy(c->mm);
    free(c->layers);
    free(c->packed);
    free(c->k_cache);
    free(c->v_cache);
    free(c->rope);
    free(c->x);
    free(c->xb);
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->att);
    free(c->gate);
    free(c->up);
    free(c->attn_scratch);
    free(c->attn);
    free(c->kptr);
    free(c->vptr);
    free(c->seq_blocks);
    free(c->own_logits);
    free(c->sample_row);
    for (int i = 0; c->slots && i < c->o.max_logits; i++)
        sampler_destroy(c->slots[i]);
    free(c->slots);
    sampler_destroy(c->no_counts);
    free(c);
}

/* kc_pack_q8_0_r8 of rows [lo, hi) on each pool thread */
struct pack_job {
    void *dst;
    const void *src;
    int n_in, n_out;
};

static void pack_thread(void *ctx, int i, int n)
{
    const struct pack_job *j = ctx;
    int lo, hi;
    kc_pool_split(j->n_out, 1, n, i, &lo, &hi);
    const size_t rb = kc_type_row_size(KC_TYPE_Q8_0, j->n_in);
    if (lo < hi)
        kc_pack_q8_0_r8((char *)j->dst + rb * lo, (const char *)j->src + rb * lo, j->n_in, hi - lo);
}

/* Let go of the whole pages of a range of the file's read-only mapping that
 * nothing reads any more: out of this process's memory, and read again from
 * the file should anything touch them. */
static void drop_pages(const void *p, size_t n)
{
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)p + page - 1) / page * page, hi = ((uintptr_t)p + n) / page * page;
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* Whether w is a Q8_0 projection of the file that kc_q8_0_r8_fits */
static int repackable(const struct model_weight *w)
{
    return w->data && w->type == KC_TYPE_Q8_0 && kc_q8_0_r8_fits(w->n_in);
}

/* The projections the kernels read: the model's, with every Q8_0 one that
 * kc_q8_0_r8_fits repacked into c->packed (and its pages of the file let
 * go). */
static int pack_weights(struct cpu_backend *c)
{
    const struct model *m = c->m;
    const int n_layers = m->cfg.n_layers;
    c->layers = malloc((size_t)n_layers * sizeof(*c->layers));
    if (!c->layers)
        return -1;
    memcpy(c->layers, m->layers, (size_t)n_layers * sizeof(*c->layers));
    c->output = m->output;
    enum { PER_LAYER = 7 };
    struct model_weight **w = malloc(((size_t)n_layers * PER_LAYER + 1) * sizeof(*w));
    if (!w)
        return -1;
    int n = 0;
    for (int l = 0; l < n_layers; l++) {
        struct model_layer *L = &c->layers[l];
        struct model_weight *lw[PER_LAYER] = {&L->wq,     &L->wk,   &L->wv,    &L->wo,
                                              &L->w_gate, &L->w_up, &L->w_down};
        memcpy(w + n, lw, sizeof(lw));
        n += PER_LAYER;
    }
    w[n++] = &c->output;
    size_t bytes = 0;
    for (int i = 0; i < n; i++)
        if (repackable(w[i]))
            bytes += kc_type_row_size(KC_TYPE_Q8_0, w[i]->n_in) * (size_t)w[i]->n_out;
    int rc = 0;
    if (bytes > 0) {
        const size_t align = (size_t)2 << 20; /* huge pages where the kernel gives them */
        c->packed = aligned_alloc(align, (bytes + align - 1) / align * align);
        if (!c->packed) {
            rc = -1;
        } else {
            madvise(c->packed, bytes, MADV_HUGEPAGE);
            char *dst = c->packed;
            for (int i = 0; i < n; i++) {
                struct model_weight *x = w[i];
                if (!repackable(x))
                    continue;
                struct pack_job job = {dst, x->data, x->n_in, x->n_out};
                kc_pool_run(c->pool, pack_thread, &job);
                if (m->file && x->data != m->tok_embd.data) /* the embedding still reads it */
                    drop_pages(x->data, kc_type_row_size(KC_TYPE_Q8_0, x->n_in) * (size_t)x->n_out);
                x->data = dst;
                x->type = KC_TYPE_Q8_0_R8;
                dst += kc_type_row_size(KC_TYPE_Q8_0, x->n_in) * (size_t)x->n_out;
            }
        }
    }
    free(w);
    return rc;
}

static int cpu_create(struct backend **out, const struct model *m, const struct backend_opts *o,
                      char *err, size_t errlen)
{
    *out = NULL;
    const struct model_config *cfg = &m->cfg;
    struct cpu_backend *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    c->o = *o;
    c->m = m;
    if (c->o.n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->o.n_threads = n > 0 ? (int)(n > 64 ? 64 : n) : 1;
    }
    if (c->o.block_size <= 0 || c->o.kv_blocks <= 0 || c->o.max_batch_tokens <= 0) {
        snprintf(err, errlen, "bad backend sizes");
        goto fail;
    }
    if (c->o.max_logits <= 0 || c->o.max_logits > c->o.max_batch_tokens)
        c->o.max_logits = c->o.max_batch_tokens;
    int T = c->o.max_batch_tokens, hd = cfg->head_dim;
    c->q_dim = cfg->n_heads * hd;
    c->kv_dim = cfg->n_kv_heads * hd;
    int widest = cfg->dim > cfg->ffn_dim ? cfg->dim : cfg->ffn_dim;
    if (c->q_dim > widest)
        widest = c->q_dim;
    c->layer_stride = (size_t)c->o.kv_blocks * (size_t)c->o.block_size * (size_t)c->kv_dim;
    size_t kv_elems = c->layer_stride * (size_t)cfg->n_layers;
    c->blocks_per_seq = (cfg->context_len + c->o.block_size - 1) / c->o.block_size;
    c->max_span = cfg->sliding_window > 0 && cfg->sliding_window < cfg->context_len
                      ? cfg->sliding_window
                      : cfg->context_len;
    int group = cfg->n_heads / cfg->n_kv_heads;
    int rc = kc_pool_create(&c->pool, c->o.n_threads);
    if (rc == 0)
        rc = kc_scratch_create(&c->mm, T, widest);
    c->k_cache = calloc(kv_elems, sizeof(uint16_t));
    c->v_cache = calloc(kv_elems, sizeof(uint16_t));
    c->rope = malloc((size_t)cfg->context_len * (size_t)hd * sizeof(float));
    c->x = malloc((size_t)T * cfg->dim * sizeof(float));
    c->xb = malloc((size_t)T * widest * sizeof(float));
    c->q = malloc((size_t)T * c->q_dim * sizeof(float));
    c->k = malloc((size_t)T * c->kv_dim * sizeof(float));
    c->v = malloc((size_t)T * c->kv_dim * sizeof(float));
    c->att = malloc((size_t)T * c->q_dim * sizeof(float));
    c->gate = malloc((size_t)T * cfg->ffn_dim * sizeof(float));
    c->up = malloc((size_t)T * cfg->ffn_dim * sizeof(float));
    c->attn_scratch =
        malloc((size_t)c->o.n_threads * (size_t)group * (size_t)c->max_span * sizeof(float));
    c->attn = malloc((size_t)T * sizeof(*c->attn));
    c->kptr = malloc((size_t)T * (size_t)c->blocks_per_seq * sizeof(*c->kptr));
    c->vptr = malloc((size_t)T * (size_t)c->blocks_per_seq * sizeof(*c->vptr));
    c->seq_blocks = malloc((size_t)T * sizeof(*c->seq_blocks));
    c->sample_row = malloc((size_t)cfg->vocab_size * sizeof(float));
    c->slots = calloc((size_t)c->o.max_logits, sizeof(*c->slots));
    if (rc != 0 || !c->k_cache || !c->v_cache || !c->rope || !c->x || !c->xb || !c->q || !c->k ||
        !c->v || !c->att || !c->gate || !c->up || !c->attn_scratch || !c->attn || !c->kptr ||
        !c->vptr || !c->seq_blocks || !c->sample_row || !c->slots) {
        snprintf(err, errlen, "out of memory for the CPU backend (KV cache %.1f MiB)",
                 2.0 * (double)kv_elems * 2 / (1 << 20));
        goto fail;
    }
    if (pack_weights(c) < 0) {
        snprintf(err, errlen, "out of memory for the repacked Q8_0 weights");
        goto fail;
    }
    kc_rope_table(c->rope, cfg->context_len, hd, cfg->rope_base);
    *out = (struct backend *)c;
    return 0;
fail:
    cpu_destroy((struct backend *)c);
    return -1;
}

/* y = x W^T for the batch, with W of any weight type. */
static void matmul(struct cpu_backend *c, float *y, const float *x, const struct model_weight *w,
                   int n_tokens)
{
    kc_matmul(c->pool, y, x, w->data, (int)w->type, n_tokens, w->n_in, w->n_out, c->mm);
}

/* Several weights times the same x: convert x once per weight type. */
static void matmul_shared(struct cpu_backend *c, const float *x, int n_tokens,
                          const struct model_weight *const *w, float *const *y, int n)
{
    int prepared = -1;
    for (int i = 0; i < n; i++) {
        if ((int)w[i]->type != prepared) {
            kc_matmul_prepare(c->pool, c->mm, x, (int)w[i]->type, n_tokens, w[i]->n_in);
            prepared = (int)w[i]->type;
        }
        kc_matmul_prepared(c->pool, y[i], w[i]->data, w[i]->n_out, c->mm);
    }
}

static int check_batch(struct cpu_backend *c, const struct backend_batch *b, int *n_seqs, char *err,
                       size_t errlen)
{
    const struct model_config *cfg = &c->m->cfg;
    *n_seqs = 0;
    if (b->n_tokens < 1 || b->n_tokens > c->o.max_batch_tokens || b->n_logits < 0 ||
        b->n_logits > b->n_tokens || b->n_logits > c->o.max_logits) {
        snprintf(err, errlen, "batch of %d tokens, %d logits: outside 1..%d, 0..%d", b->n_tokens,
                 b->n_logits, c->o.max_batch_tokens, c->o.max_logits);
        return -1;
    }
    for (int i = 0; i < b->n_tokens; i++) {
        if (b->tokens[i] < 0 || b->tokens[i] >= cfg->vocab_size || b->pos[i] < 0 ||
            b->pos[i] >= cfg->context_len || b->seq[i] < 0 || b->seq[i] >= b->n_tokens) {
            snprintf(err, errlen,
                     "batch row %d: token %d at position %d of sequence %d is out of range", i,
                     b->tokens[i], b->pos[i], b->seq[i]);
            return -1;
        }
        if (b->seq[i] + 1 > *n_seqs)
            *n_seqs = b->seq[i] + 1;
    }
    for (int i = 0; i < b->n_logits; i++)
        if (b->logit_rows[i] < 0 || b->logit_rows[i] >= b->n_tokens) {
            snprintf(err, errlen, "logit row %d is not in the batch", b->logit_rows[i]);
            return -1;
        }
    return 0;
}

static int cpu_forward(struct backend *be, const struct backend_batch *b, float *logits, char *err,
                       size_t errlen)
{
    struct cpu_backend *c = cpu(be);
    const struct model *m = c->m;
    const struct model_config *cfg = &m->cfg;
    const int T = b->n_tokens, dim = cfg->dim, hd = cfg->head_dim, bs = c->o.block_size;
    int n_seqs;
    if (check_batch(c, b, &n_seqs, err, errlen) < 0)
        return -1;
    if (!logits) { /* they stay here for `sample` */
        if (!c->own_logits)
            c->own_logits =
                malloc((size_t)c->o.max_logits * (size_t)cfg->vocab_size * sizeof(float));
        if (!c->own_logits) {
            snprintf(err, errlen, "out of memory for the logits");
            return -1;
        }
        logits = c->own_logits;
    }
    c->last_logits = logits;
    c->last_n_logits = b->n_logits;

    /* blocks each sequence uses in this step (up to its last position) */
    for (int s = 0; s < n_seqs; s++)
        c->seq_blocks[s] = 0;
    for (int t = 0; t < T; t++) {
        int need = b->pos[t] / bs + 1;
        if (need > c->seq_blocks[b->seq[t]])
            c->seq_blocks[b->seq[t]] = need;
    }
    for (int s = 0; s < n_seqs; s++)
        for (int j = 0; j < c->seq_blocks[s]; j++) {
            int blk = b->block_tables[s][j];
            if (blk < 0 || blk >= c->o.kv_blocks) {
                snprintf(err, errlen, "sequence %d: block %d is not in the pool of %d", s, blk,
                         c->o.kv_blocks);
                return -1;
            }
        }

    /* embed: x (T, dim) */
    for (int t = 0; t < T; t++)
        kc_dequant_row(c->x + (size_t)t * dim,
                       (const char *)m->tok_embd.data +
                           kc_type_row_size((int)m->tok_embd.type, dim) * (size_t)b->tokens[t],
                       (int)m->tok_embd.type, dim);

    const float scale = 1.0f / sqrtf((float)hd);
    for (int l = 0; l < cfg->n_layers; l++) {
        const struct model_layer *L = &c->layers[l];
        uint16_t *kc = c->k_cache + (size_t)l * c->layer_stride;
        uint16_t *vc = c->v_cache + (size_t)l * c->layer_stride;
        size_t block_elems = (size_t)bs * (size_t)c->kv_dim;

        /* attention: xb = rmsnorm(x); q, k, v = xb Wq, xb Wk, xb Wv */
        for (int t = 0; t < T; t++)
            kc_rmsnorm(c->xb + (size_t)t * dim, c->x + (size_t)t * dim, L->attn_norm.data, dim,
                       cfg->rms_eps);
        const struct model_weight *qkv[3] = {&L->wq, &L->wk, &L->wv};
        float *const qkv_out[3] = {c->q, c->k, c->v};
        matmul_shared(c, c->xb, T, qkv, qkv_out, 3);

        /* RoPE, then K and V of every token into the cache at its position */
        for (int t = 0; t < T; t++) {
            const float *cs = c->rope + (size_t)b->pos[t] * hd;
            float *k = c->k + (size_t)t * c->kv_dim;
            kc_rope(c->q + (size_t)t * c->q_dim, cfg->n_heads, hd, cs);
            kc_rope(k, cfg->n_kv_heads, hd, cs);
            int blk = b->block_tables[b->seq[t]][b->pos[t] / bs];
            size_t row = (size_t)blk * block_elems + (size_t)(b->pos[t] % bs) * c->kv_dim;
            kc_kv_store(kc + row, k, c->kv_dim);
            kc_kv_store(vc + row, c->v + (size_t)t * c->kv_dim, c->kv_dim);
        }

        /* each token attends to its sequence's positions up to its own */
        for (int s = 0; s < n_seqs; s++) {
            const uint16_t **kp = c->kptr + (size_t)s * c->blocks_per_seq;
            const uint16_t **vp = c->vptr + (size_t)s * c->blocks_per_seq;
            for (int j = 0; j < c->seq_blocks[s]; j++) {
                kp[j] = kc + (size_t)b->block_tables[s][j] * block_elems;
                vp[j] = vc + (size_t)b->block_tables[s][j] * block_elems;
            }
        }
        for (int t = 0; t < T; t++) {
            int pos = b->pos[t], first = 0;
            if (cfg->sliding_window > 0 && pos - cfg->sliding_window + 1 > 0)
                first = pos - cfg->sliding_window + 1;
            c->attn[t] = (struct kc_attn_token){
                .out = c->att + (size_t)t * c->q_dim,
                .q = c->q + (size_t)t * c->q_dim,
                .k_blocks = c->kptr + (size_t)b->seq[t] * c->blocks_per_seq,
                .v_blocks = c->vptr + (size_t)b->seq[t] * c->blocks_per_seq,
                .first_pos = first,
                .last_pos = pos,
            };
        }
        kc_attention_batch(c->pool, c->attn, T, bs, cfg->n_heads, cfg->n_kv_heads, hd, scale,
                           c->attn_scratch, c->max_span);

        /* x += att Wo */
        matmul(c, c->xb, c->att, &L->wo, T);
        kc_add(c->x, c->x, c->xb, T * dim);

        /* FFN: x += (silu(xb Wgate) * (xb Wup)) Wdown, xb = rmsnorm(x) */
        for (int t = 0; t < T; t++)
            kc_rmsnorm(c->xb + (size_t)t * dim, c->x + (size_t)t * dim, L->ffn_norm.data, dim,
                       cfg->rms_eps);
        const struct model_weight *gu[2] = {&L->w_gate, &L->w_up};
        float *const gu_out[2] = {c->gate, c->up};
        matmul_shared(c, c->xb, T, gu, gu_out, 2);
        kc_swiglu(c->gate, c->gate, c->up, T * cfg->ffn_dim);
        matmul(c, c->xb, c->gate, &L->w_down, T);
        kc_add(c->x, c->x, c->xb, T * dim);
    }

    /* the LM head, for the rows asked for */
    for (int i = 0; i < b->n_logits; i++)
        kc_rmsnorm(c->xb + (size_t)i * dim, c->x + (size_t)b->logit_rows[i] * dim,
                   m->output_norm.data, dim, cfg->rms_eps);
    if (b->n_logits > 0)
        matmul(c, logits, c->xb, &c->output, b->n_logits);
    return 0;
}

static int cpu_copy_blocks(struct backend *be, const int *src, const int *dst, int n, char *err,
                           size_t errlen)
{
    struct cpu_backend *c = cpu(be);
    size_t block_elems = (size_t)c->o.block_size * (size_t)c->kv_dim;
    for (int i = 0; i < n; i++) {
        if (src[i] < 0 || src[i] >= c->o.kv_blocks || dst[i] < 0 || dst[i] >= c->o.kv_blocks) {
            snprintf(err, errlen, "copy of block %d to %d: outside the pool", src[i], dst[i]);
            return -1;
        }
        for (int l = 0; l < c->m->cfg.n_layers; l++) {
            size_t base = (size_t)l * c->layer_stride;
            memcpy(c->k_cache + base + (size_t)dst[i] * block_elems,
                   c->k_cache + base + (size_t)src[i] * block_elems, block_elems * 2);
            memcpy(c->v_cache + base + (size_t)dst[i] * block_elems,
                   c->v_cache + base + (size_t)src[i] * block_elems, block_elems * 2);
        }
    }
    return 0;
}

/* worker/sampler.c on the last forward's logits; a slot's sampler keeps its
 * counts from one step to the next */
static int cpu_sample(struct backend *be, const struct backend_sample *rows, int n, int *ids,
                      char *err, size_t errlen)
{
    struct cpu_backend *c = cpu(be);
    const int vocab = c->m->cfg.vocab_size;
    for (int i = 0; i < n; i++) {
        const struct backend_sample *r = &rows[i];
        if (!c->last_logits || r->row < 0 || r->row >= c->last_n_logits || r->slot < -1 ||
            r->slot >= c->o.max_logits) {
            snprintf(err, errlen, "sample %d: row %d of %d, slot %d of %d", i, r->row,
                     c->last_n_logits, r->slot, c->o.max_logits);
            return -1;
        }
        const struct sampler_params p = {.temperature = r->temperature,
                                         .top_k = r->top_k,
                                         .top_p = r->top_p,
                                         .presence_penalty = r->presence_penalty,
                                         .frequency_penalty = r->frequency_penalty};
        struct sampler **sp = r->slot >= 0 ? &c->slots[r->slot] : &c->no_counts;
        int rc = *sp ? (r->reset || r->slot < 0 ? sampler_reset(*sp, &p, 0) : 0)
                     : sampler_create(sp, &p, vocab, 0);
        if (rc != 0) {
            snprintf(err, errlen, "sample %d: bad parameters or out of memory", i);
            return -1;
        }
        /* only penalties over counts change the logits they read, and only a
         * fresh sample (no counts yet) shares its row (a fork): copy the row
         * for the penalised ones alone, off the common path */
        float *row = c->last_logits + (size_t)r->row * vocab;
        if (r->slot >= 0 && !r->reset) {
            memcpy(c->sample_row, row, (size_t)vocab * sizeof(float));
            row = c->sample_row;
        }
        ids[i] = sampler_sample_with(*sp, row, r->u);
        if (r->slot >= 0)
            sampler_accept(*sp, ids[i]);
    }
    return 0;
}

const struct backend_ops backend_cpu = {
    .name = "cpu",
    .create = cpu_create,
    .forward = cpu_forward,
    .copy_blocks = cpu_copy_blocks,
    .destroy = cpu_destroy,
    .sample = cpu_sample,
};
