/*
 * engine: a model on a backend, one request run alone (see engine.h).
 */
#include "worker/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "worker/model.h"

int engine_create(struct engine **out, const struct engine_opts *o, char *err, size_t errlen)
{
    *out = NULL;
    struct engine *e = calloc(1, sizeof(*e));
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    e->o = *o;
    if (!e->o.device)
        e->o.device = "cpu";
    if (e->o.block_size <= 0)
        e->o.block_size = 16;
    if (e->o.max_batch_tokens <= 0)
        e->o.max_batch_tokens = 512;
    e->ops = backend_find(e->o.device);
    if (!e->ops) {
        snprintf(err, errlen, "device '%s' is not available in this build", e->o.device);
        goto fail;
    }
    if (model_load(&e->model, o->model_path, err, errlen) < 0)
        goto fail;
    int ctx = e->model->cfg.context_len, bs = e->o.block_size;
    e->n_table = (ctx + bs - 1) / bs;
    if (e->o.kv_blocks <= 0)
        e->o.kv_blocks = e->n_table;
    if (e->n_table > e->o.kv_blocks)
        e->n_table = e->o.kv_blocks;
    size_t vocab = (size_t)e->model->cfg.vocab_size, mb = (size_t)e->o.max_batch_tokens;
    e->table = malloc((size_t)e->n_table * sizeof(*e->table));
    e->logits = malloc(mb * vocab * sizeof(*e->logits));
    e->scratch = malloc(mb * 3 * sizeof(*e->scratch));
    if (!e->table || !e->logits || !e->scratch) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < e->n_table; i++)
        e->table[i] = i;
    struct backend_opts bo = {.n_threads = e->o.n_threads,
                              .kv_blocks = e->o.kv_blocks,
                              .block_size = bs,
                              .max_batch_tokens = e->o.max_batch_tokens,
                              .max_logits = e->o.max_batch_tokens};
    if (e->ops->create(&e->be, e->model, &bo, err, errlen) < 0)
        goto fail;
    *out = e;
    return 0;
fail:
    engine_destroy(e);
    return -1;
}

void engine_destroy(struct engine *e)
{
    if (!e)
        return;
    if (e->be)
        e->ops->destroy(e->be);
    model_free(e->model);
    free(e->table);
    free(e->logits);
    free(e->scratch);
    free(e);
}

/* Run tokens[0..n) of the single sequence from position pos0; want_all:
 * logits of every row into e->logits (n <= max_batch_tokens), else of the
 * last row only. */
static int run_chunk(struct engine *e, const int *tokens, int n, int pos0, int want_all, char *err,
                     size_t errlen)
{
    if (pos0 + n > e->n_table * e->o.block_size) {
        snprintf(err, errlen, "the sequence does not fit the KV cache (%d positions)",
                 e->n_table * e->o.block_size);
        return -1;
    }
    int *pos = e->scratch, *seq = e->scratch + e->o.max_batch_tokens,
        *rows = e->scratch + 2 * e->o.max_batch_tokens;
    for (int i = 0; i < n; i++) {
        pos[i] = pos0 + i;
        seq[i] = 0;
        rows[i] = i;
    }
    const int *tables[1] = {e->table};
    struct backend_batch b = {.n_tokens = n,
                              .tokens = tokens,
                              .pos = pos,
                              .seq = seq,
                              .block_tables = tables,
                              .n_logits = want_all ? n : 1,
                              .logit_rows = want_all ? rows : rows + n - 1};
    return e->ops->forward(e->be, &b, e->logits, err, errlen);
}

int engine_generate(struct engine *e, const struct job_request *req, struct seq *s,
                    struct engine_stats *st, engine_text_fn on_text, void *ctx, char *err,
                    size_t errlen)
{
    int *prompt = NULL, n_prompt = 0;
    memset(st, 0, sizeof(*st));
    memset(s, 0, sizeof(*s));
    if (seq_tokenize_prompt(e->model, req, &prompt, &n_prompt, err, errlen) < 0)
        return -1;
    int rc = seq_init(s, e->model, req, prompt, n_prompt, 0, err, errlen);
    free(prompt);
    if (rc < 0)
        return -1;
    st->n_prompt = n_prompt;

    double t0 = clock_wall_s();
    if (engine_run(e, s->tokens, n_prompt, 0, NULL, err, errlen) < 0)
        return -1;
    double t1 = clock_wall_s();
    st->prefill_s = t1 - t0;
    while (!s->done) {
        const char *text;
        size_t len;
        seq_step(s, e->logits, &text, &len);
        if (len > 0 && on_text)
            on_text(ctx, text, len);
        if (s->done)
            break;
        if (engine_run(e, s->tokens + s->n_tokens - 1, 1, s->n_tokens - 1, NULL, err, errlen) < 0)
            return -1;
    }
    st->decode_s = clock_wall_s() - t1;
    st->n_generated = s->n_new;
    return 0;
}

int engine_run(struct engine *e, const int *tokens, int n, int pos0, float *logits, char *err,
               size_t errlen)
{
    size_t vocab = (size_t)e->model->cfg.vocab_size;
    for (int done = 0; done < n;) {
        int k = n - done;
        if (k > e->o.max_batch_tokens)
            k = e->o.max_batch_tokens;
        if (run_chunk(e, tokens + done, k, pos0 + done, logits != NULL, err, errlen) < 0)
            return -1;
        if (logits)
            memcpy(logits + (size_t)done * vocab, e->logits, (size_t)k * vocab * sizeof(float));
        done += k;
    }
    return 0;
}
