/*
 * bench: a backend on a synthetic model of a real shape (see bench.h).
 *
 * Drives the backend directly (no engine, no tokenizer: the model has
 * neither file nor vocabulary), one step at a time as the scheduler does:
 * build the batch, forward, choose each row's token. Times are wall-clock
 * around whole steps, each of which ends with the ids on the host, so they
 * include everything a serving step pays.
 */
#include "worker/bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/backend.h"
#include "worker/gguf.h"
#include "worker/make_model.h"
#include "worker/model.h"

#define BENCH_BLOCK    16 /* KV positions per block */
#define BENCH_WARM     3  /* untimed steps before each measurement (graph capture) */
#define BENCH_TTFT_RUN 5

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct bench {
    const struct backend_ops *ops;
    struct backend *be;
    const struct model *m;
    int max_tokens;
    int *tokens, *pos, *seq, *rows, *ids;
    const int **tables;
    int *blocks; /* (n_tables, bps) each sequence's own blocks */
    int bps;
    float *logits; /* host logits, for backends without `sample` */
    struct backend_sample *smp;
};

/* One step over b: forward, then the greedy token of each logit row. */
static int step(struct bench *B, const struct backend_batch *b, char *err, size_t errlen)
{
    if (B->ops->sample) {
        if (B->ops->forward(B->be, b, NULL, err, errlen) < 0)
            return -1;
        for (int i = 0; i < b->n_logits; i++)
            B->smp[i] = (struct backend_sample){.row = i, .slot = -1, .top_p = 1.0f};
        return B->ops->sample(B->be, B->smp, b->n_logits, B->ids, err, errlen);
    }
    if (B->ops->forward(B->be, b, B->logits, err, errlen) < 0)
        return -1;
    const int vocab = B->m->cfg.vocab_size;
    for (int i = 0; i < b->n_logits; i++) {
        const float *l = B->logits + (size_t)i * vocab;
        int best = 0;
        for (int v = 1; v < vocab; v++)
            if (l[v] > l[best])
                best = v;
        B->ids[i] = best;
    }
    return 0;
}

/* A batch of n sequences (tables 0..n-1), one token each at position p. */
static struct backend_batch decode_batch(struct bench *B, int n, int p)
{
    for (int s = 0; s < n; s++) {
        B->pos[s] = p;
        B->seq[s] = s;
        B->rows[s] = s;
    }
    return (struct backend_batch){.n_tokens = n,
                                  .tokens = B->tokens,
                                  .pos = B->pos,
                                  .seq = B->seq,
                                  .block_tables = B->tables,
                                  .n_logits = n,
                                  .logit_rows = B->rows};
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void bench_free(struct bench *B)
{
    if (B->be)
        B->ops->destroy(B->be);
    free(B->tokens);
    free(B->pos);
    free(B->seq);
    free(B->rows);
    free(B->ids);
    free(B->tables);
    free(B->blocks);
    free(B->logits);
    free(B->smp);
}

int bench_synthetic(const struct bench_opts *o, char *err, size_t errlen)
{
    struct bench B = {0};
    struct model *m = NULL;
    int rc = -1, max_b = 1;
    const struct mkmodel_preset *p = mkmodel_find_preset(o->preset);
    if (!p) {
        snprintf(err, errlen, "no preset '%s' (make-model --help lists them)", o->preset);
        return -1;
    }
    B.ops = backend_find(o->device);
    if (!B.ops || strcmp(B.ops->name, "cuda") != 0) {
        snprintf(err, errlen,
                 "--synthetic needs --device cuda in a build with CUDA: only the CUDA backend "
                 "makes weights of its own (the CPU backend reads them from a file)");
        return -1;
    }
    for (int i = 0; i < o->n_batches; i++)
        if (o->batches[i] > max_b)
            max_b = o->batches[i];
    struct model_config cfg = {0};
    snprintf(cfg.name, sizeof(cfg.name), "%s (synthetic)", p->name);
    cfg.dim = p->dim;
    cfg.n_layers = p->n_layers;
    cfg.n_heads = p->n_heads;
    cfg.n_kv_heads = p->n_kv_heads;
    cfg.ffn_dim = p->ffn_dim;
    cfg.vocab_size = p->vocab_size;
    cfg.context_len = p->context_len;
    cfg.sliding_window = p->sliding_window;
    cfg.rope_base = p->rope_base;
    cfg.rms_eps = p->rms_eps;
    const int P = o->prompt_tokens, N = o->decode_tokens, S = o->steps;
    if (P < 1 || N < 1 || S < 1 || P + BENCH_WARM + (N > S ? N : S) + 1 > cfg.context_len) {
        snprintf(err, errlen, "%d prompt tokens and %d decode steps do not fit the context of %d",
                 P, N > S ? N : S, cfg.context_len);
        return -1;
    }
    if (model_synthetic(&m, &cfg, o->type, err, errlen) < 0)
        return -1;
    const struct model_config *c = &m->cfg;

    // one table for the single sequence, one per sequence of the largest batch
    B.m = m;
    B.max_tokens = P > max_b ? P : max_b;
    B.bps = (P + BENCH_WARM + (N > S ? N : S) + BENCH_BLOCK) / BENCH_BLOCK;
    const int n_tables = max_b + 1;
    B.tokens = malloc((size_t)B.max_tokens * sizeof(int));
    B.pos = malloc((size_t)B.max_tokens * sizeof(int));
    B.seq = malloc((size_t)B.max_tokens * sizeof(int));
    B.rows = malloc((size_t)B.max_tokens * sizeof(int));
    B.ids = malloc((size_t)B.max_tokens * sizeof(int));
    B.tables = malloc((size_t)n_tables * sizeof(*B.tables));
    B.blocks = malloc((size_t)n_tables * B.bps * sizeof(int));
    B.smp = malloc((size_t)B.max_tokens * sizeof(*B.smp));
    B.logits = B.ops->sample ? NULL : malloc((size_t)max_b * c->vocab_size * sizeof(float));
    if (!B.tokens || !B.pos || !B.seq || !B.rows || !B.ids || !B.tables || !B.blocks || !B.smp ||
        (!B.ops->sample && !B.logits)) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (int i = 0; i < n_tables * B.bps; i++)
        B.blocks[i] = i;
    const struct backend_opts bo = {.kv_blocks = n_tables * B.bps,
                                    .block_size = BENCH_BLOCK,
                                    .max_batch_tokens = B.max_tokens,
                                    .max_logits = max_b};
    double t_create = now_s();
    if (B.ops->create(&B.be, m, &bo, err, errlen) < 0)
        goto out;
    t_create = now_s() - t_create;
    struct backend_info info = {0};
    if (B.ops->info)
        B.ops->info(B.be, &info);

    // the prompt: table n_tables - 1, positions 0..P-1, the last row's logits
    const int single = n_tables - 1;
    uint64_t rng = 12345;
    for (int i = 0; i < P; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        B.tokens[i] = i == 0 ? 1 : 3 + (int)((rng >> 33) % (uint64_t)(c->vocab_size - 3));
        B.pos[i] = i;
        B.seq[i] = 0;
    }
    B.rows[0] = P - 1;
    B.tables[0] = B.blocks + (size_t)single * B.bps;
    struct backend_batch pb = {.n_tokens = P,
                               .tokens = B.tokens,
                               .pos = B.pos,
                               .seq = B.seq,
                               .block_tables = B.tables,
                               .n_logits = 1,
                               .logit_rows = B.rows};
    double ttft[BENCH_TTFT_RUN];
    for (int r = 0; r < 2 + BENCH_TTFT_RUN; r++) {
        double t0 = now_s();
        if (step(&B, &pb, err, errlen) < 0)
            goto out;
        if (r >= 2)
            ttft[r - 2] = now_s() - t0;
    }
    qsort(ttft, BENCH_TTFT_RUN, sizeof(double), cmp_double);

    // batch-1 decode after the prompt
    B.tokens[0] = B.ids[0];
    double t0 = 0;
    for (int i = 0; i < BENCH_WARM + N; i++) {
        if (i == BENCH_WARM)
            t0 = now_s();
        struct backend_batch db = decode_batch(&B, 1, P + i);
        if (step(&B, &db, err, errlen) < 0)
            goto out;
        B.tokens[0] = B.ids[0];
    }
    const double t_dec = now_s() - t0;

    // bytes a decode token must read: every weight but the embedding, and its
    // KV cache (K and V, every layer) up to its position
    const double kv_per_pos = 2.0 * c->n_layers * c->n_kv_heads * c->head_dim * 2;
    const double ctx1 = P + BENCH_WARM + N / 2.0;
    const double bytes1 = (double)m->weight_bytes + ctx1 * kv_per_pos;
    const double tps1 = N / t_dec;
    const double ceil1 = info.mem_bandwidth > 0 ? info.mem_bandwidth / bytes1 : 0;
    const double flops_tok =
        2.0 * c->n_layers *
        ((double)c->dim * (c->n_heads + 2 * c->n_kv_heads) * c->head_dim +
         (double)c->n_heads * c->head_dim * c->dim + 3.0 * c->dim * c->ffn_dim);

    double *tps = calloc((size_t)(o->n_batches > 0 ? o->n_batches : 1), sizeof(double));
    double *mss = calloc((size_t)(o->n_batches > 0 ? o->n_batches : 1), sizeof(double));
    double *pct = calloc((size_t)(o->n_batches > 0 ? o->n_batches : 1), sizeof(double));
    if (!tps || !mss || !pct) {
        free(tps);
        free(mss);
        free(pct);
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (int k = 0; k < o->n_batches; k++) {
        const int nb = o->batches[k];
        for (int s = 0; s < nb; s++) {
            B.tables[s] = B.blocks + (size_t)s * B.bps;
            B.tokens[s] = 100 + s;
        }
        for (int i = 0; i < BENCH_WARM + S; i++) {
            if (i == BENCH_WARM)
                t0 = now_s();
            struct backend_batch db = decode_batch(&B, nb, P + i);
            if (step(&B, &db, err, errlen) < 0) {
                free(tps);
                free(mss);
                free(pct);
                goto out;
            }
            memcpy(B.tokens, B.ids, (size_t)nb * sizeof(int));
        }
        const double t = now_s() - t0;
        tps[k] = (double)nb * S / t;
        mss[k] = t / S * 1e3;
        const double bytes = (double)m->weight_bytes + nb * (P + BENCH_WARM + S / 2.0) * kv_per_pos;
        pct[k] = info.mem_bandwidth > 0 ? 100.0 * bytes / (t / S) / info.mem_bandwidth : 0;
    }

    const char *tname = gguf_type_name(o->type);
    const char *gemv = getenv("MILLRACE_CUDA_GEMV");
    gemv = gemv && strcmp(gemv, "own") == 0 ? "own" : "cublas";
    if (o->json) {
        printf("{\"model\":\"%s\",\"weights\":\"%s\",\"device\":\"%s\",\"sm_count\":%d,"
               "\"bandwidth_gb_s\":%.1f,\"graphs\":%s,\"gemv\":\"%s\",\"weight_gb\":%.3f,"
               "\"setup_s\":%.2f,",
               c->name, tname, info.device, info.sm_count, info.mem_bandwidth / 1e9,
               info.graphs ? "true" : "false", gemv, (double)m->weight_bytes / 1e9, t_create);
        printf("\"decode_batch1\":{\"context\":%d,\"tokens\":%d,\"tokens_per_s\":%.2f,"
               "\"ms_per_token\":%.3f,\"ceiling_tokens_per_s\":%.1f,\"bandwidth_pct\":%.1f},",
               P, N, tps1, 1e3 / tps1, ceil1, ceil1 > 0 ? 100.0 * tps1 / ceil1 : 0.0);
        printf("\"ttft_ms\":{\"prompt_tokens\":%d,\"best\":%.3f,\"median\":%.3f,"
               "\"prefill_tflops\":%.1f},",
               P, ttft[0] * 1e3, ttft[BENCH_TTFT_RUN / 2] * 1e3, flops_tok * P / ttft[0] / 1e12);
        printf("\"batched\":[");
        for (int k = 0; k < o->n_batches; k++)
            printf("%s{\"sequences\":%d,\"context\":%d,\"steps\":%d,\"tokens_per_s\":%.1f,"
                   "\"ms_per_step\":%.3f,\"bandwidth_pct\":%.1f}",
                   k ? "," : "", o->batches[k], P, S, tps[k], mss[k], pct[k]);
        printf("]}\n");
        fflush(stdout);
    }
    FILE *t = o->json ? stderr : stdout;
    fprintf(t,
            "%s, %s weights (%.2f GB), on %s (%d SMs, %.0f GB/s peak); CUDA graphs %s, "
            "FP16 GEMV %s; set-up %.1f s\n",
            c->name, tname, (double)m->weight_bytes / 1e9, info.device, info.sm_count,
            info.mem_bandwidth / 1e9, info.graphs ? "on" : "off", gemv, t_create);
    fprintf(t, "  batch-1 decode, context %d..%d: %.1f tokens/s, %.2f ms/token", P,
            P + BENCH_WARM + N, tps1, 1e3 / tps1);
    if (ceil1 > 0)
        fprintf(t, " (%.1f %% of the %.0f tokens/s bandwidth ceiling)", 100.0 * tps1 / ceil1,
                ceil1);
    fprintf(t,
            "\n  time to first token, %d-token prompt: %.2f ms best, %.2f ms median "
            "(%.0f TFLOP/s)\n",
            P, ttft[0] * 1e3, ttft[BENCH_TTFT_RUN / 2] * 1e3, flops_tok * P / ttft[0] / 1e12);
    fprintf(t, "  %10s %10s %12s %10s %14s\n", "sequences", "context", "tokens/s", "ms/step",
            "% bandwidth");
    for (int k = 0; k < o->n_batches; k++)
        fprintf(t, "  %10d %10d %12.1f %10.2f %14.1f\n", o->batches[k], P, tps[k], mss[k], pct[k]);
    free(tps);
    free(mss);
    free(pct);
    rc = 0;
out:
    bench_free(&B);
    model_free(m);
    return rc;
}
