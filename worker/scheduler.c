/*
 * scheduler: continuous batching over the paged KV cache (see scheduler.h).
 *
 * Key decision: reserve, then grow. Admission reserves every block a job can
 * ever use; tables take blocks from that reservation as positions are
 * written; a sample that stops early gives back what it did not use. So the
 * step loop never waits for memory and never preempts, and the only queue is
 * the FIFO of jobs not yet admitted.
 */
#include "worker/scheduler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/grow.h"
#include "common/job_response.h"
#include "kernels/backend.h"
#include "worker/chat.h"
#include "worker/kvcache.h"
#include "worker/model.h"
#include "worker/sequence.h"

enum { JOB_WAITING, JOB_PREFILL, JOB_DECODE };

struct sample {
    struct seq s;
    struct kv_table table;
    int own_blocks; /* blocks past the shared prompt it may use (its reservation share) */
    int finished;   /* counted in the job's n_finished */
    int slot;       /* the backend's sampling slot (its penalty counts), or -1 */
};

struct job {
    struct sched_job pub; /* first: sched_job pointers are job pointers */
    struct job_request *req;
    int *prompt;
    int n_prompt;
    int phase;
    int prefilled; /* prompt positions in the cache */
    int n_samples;
    struct sample *samples; /* samples[0] carries the prompt's prefill */
    int need;               /* blocks reserved at admission */
    int reserved;           /* of those, still unused */
    int shared;             /* full prompt blocks shared by all samples */
    int n_finished;
    double first_token_ms, last_token_ms;
};

struct sched {
    const struct model *m;
    struct sched_opts o;
    const struct backend_ops *ops;
    struct backend *be;
    struct kv_pool kv;
    struct job **jobs; /* in arrival order */
    int n_jobs, cap_jobs;
    int active_seqs; /* samples admitted and not finished */

    /* one step's batch */
    int *tokens, *pos, *seq, *rows;
    const int **tables;
    struct {
        struct job *j;
        int sample; /* -1: the prompt's last row (fork) */
    } * row_owner;
    float *logits, *tmp; /* host sampling only */
    /* sampling where the logits are (the backend's `sample`), one entry per
     * sample that takes a token; every entry is a distinct live sample, so
     * max_seqs of each */
    int host_sampling;
    struct backend_sample *srows;
    int *sids;
    struct {
        struct job *j;
        int sample;
    } * sown;
    int *free_slots; /* (max_seqs) slots no sample holds */
    long steps;      /* forward steps run, for fail_after_steps */
    int n_free_slots;
    struct sched_delta *deltas;
    int n_deltas, cap_deltas;
    struct sched_job **done;
    int n_done;
    size_t cap_done;

    /* tokens/s over a sliding window */
    double rate_t0;
    long rate_tokens;
    double rate;
};

/* The sample no longer needs its penalty counts. */
static void slot_release(struct sched *s, struct sample *sm)
{
    if (s && sm->slot >= 0)
        s->free_slots[s->n_free_slots++] = sm->slot;
    sm->slot = -1;
}

static void job_free(struct sched *s, struct job *j)
{
    for (int i = 0; j->samples && i < j->n_samples; i++) {
        seq_fini(&j->samples[i].s);
        slot_release(s, &j->samples[i]);
        if (s)
            kv_table_release(&s->kv, &j->samples[i].table);
    }
    if (s && j->reserved > 0)
        kv_unreserve(&s->kv, j->reserved);
    free(j->samples);
    free(j->prompt);
    job_request_destroy(j->req);
    free(j->pub.result);
    free(j);
}

void sched_job_free(struct sched_job *pub)
{
    if (pub)
        job_free(NULL, (struct job *)pub);
}

void sched_destroy(struct sched *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n_jobs; i++)
        job_free(s, s->jobs[i]);
    free(s->jobs);
    if (s->be)
        s->ops->destroy(s->be);
    kv_pool_fini(&s->kv);
    free(s->tokens);
    free(s->pos);
    free(s->seq);
    free(s->rows);
    free(s->tables);
    free(s->row_owner);
    free(s->logits);
    free(s->tmp);
    free(s->srows);
    free(s->sids);
    free(s->sown);
    free(s->free_slots);
    free(s->deltas);
    free(s->done);
    free(s);
}

int sched_create(struct sched **out, const struct model *m, const struct sched_opts *o, char *err,
                 size_t errlen)
{
    *out = NULL;
    struct sched *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->m = m;
    s->o = *o;
    if (s->o.max_seqs < 1 || s->o.max_batch_tokens < s->o.max_seqs || s->o.block_size < 1 ||
        s->o.kv_blocks < 1) {
        snprintf(err, errlen,
                 "bad sizes: max-batch %d, max-batch-tokens %d (at least max-batch), block size "
                 "%d, kv blocks %d",
                 s->o.max_seqs, s->o.max_batch_tokens, s->o.block_size, s->o.kv_blocks);
        goto fail;
    }
    s->ops = backend_find(o->device);
    if (!s->ops) {
        snprintf(err, errlen, "device '%s' is not available in this build", o->device);
        goto fail;
    }
    if (kv_pool_init(&s->kv, o->kv_blocks, o->block_size) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    int T = s->o.max_batch_tokens;
    size_t vocab = (size_t)m->cfg.vocab_size;
    s->tokens = malloc((size_t)T * sizeof(int));
    s->pos = malloc((size_t)T * sizeof(int));
    s->seq = malloc((size_t)T * sizeof(int));
    s->rows = malloc((size_t)T * sizeof(int));
    s->tables = malloc((size_t)T * sizeof(*s->tables));
    s->row_owner = malloc((size_t)T * sizeof(*s->row_owner));
    s->host_sampling = o->host_sampling || !s->ops->sample;
    int ok = 1;
    if (s->host_sampling) {
        s->logits = malloc((size_t)T * vocab * sizeof(float));
        s->tmp = malloc(vocab * sizeof(float));
        ok = s->logits && s->tmp;
    } else {
        int n = s->o.max_seqs;
        s->srows = calloc((size_t)n, sizeof(*s->srows));
        s->sids = calloc((size_t)n, sizeof(*s->sids));
        s->sown = calloc((size_t)n, sizeof(*s->sown));
        s->free_slots = malloc((size_t)n * sizeof(int));
        ok = s->srows && s->sids && s->sown && s->free_slots;
        for (int i = 0; ok && i < n; i++)
            s->free_slots[s->n_free_slots++] = n - 1 - i;
    }
    if (!s->tokens || !s->pos || !s->seq || !s->rows || !s->tables || !s->row_owner || !ok) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    struct backend_opts bo = {.n_threads = o->n_threads,
                              .kv_blocks = o->kv_blocks,
                              .block_size = o->block_size,
                              .max_batch_tokens = T,
                              .max_logits = T};
    if (s->ops->create(&s->be, m, &bo, err, errlen) < 0)
        goto fail;
    s->rate_t0 = clock_wall_s();
    *out = s;
    return 0;
fail:
    sched_destroy(s);
    return -1;
}

/* ---- admission ---------------------------------------------------------- */

static int job_cap(const struct sched *s, const struct job *j)
{
    long cap = (long)j->n_prompt + j->req->max_tokens;
    return cap > s->m->cfg.context_len ? s->m->cfg.context_len : (int)cap;
}

int sched_submit_take(struct sched *s, const char *id, long attempt, double created,
                      struct job_request *req, char *err, size_t errlen)
{
    struct job *j = calloc(1, sizeof(*j));
    if (!j) {
        job_request_destroy(req);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    j->req = req;
    snprintf(j->pub.id, sizeof(j->pub.id), "%s", id);
    j->pub.attempt = attempt;
    j->pub.created = created;
    char why[400];
    if (seq_tokenize_prompt(s->m, req, &j->prompt, &j->n_prompt, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "invalid_request: %s", why);
        goto fail;
    }
    j->n_samples = req->num_samples;
    if (j->n_samples > s->o.max_seqs) {
        snprintf(err, errlen,
                 "invalid_request: num_samples %d is more than this worker runs at once (%d)",
                 j->n_samples, s->o.max_seqs);
        goto fail;
    }
    int bs = s->o.block_size, cap = job_cap(s, j);
    j->shared = j->n_samples > 1 ? j->n_prompt / bs : 0;
    int own = kv_blocks_for(&s->kv, cap) - j->shared;
    j->need = j->shared + j->n_samples * own;
    if (j->need > s->o.kv_blocks) {
        snprintf(err, errlen,
                 "invalid_request: %d prompt tokens plus max_tokens %d for %d sample(s) need %d "
                 "KV blocks; this worker has %d",
                 j->n_prompt, req->max_tokens, j->n_samples, j->need, s->o.kv_blocks);
        goto fail;
    }
    j->samples = calloc((size_t)j->n_samples, sizeof(*j->samples));
    if (!j->samples) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < j->n_samples; i++) {
        j->samples[i].own_blocks = own;
        j->samples[i].slot = -1;
    }
    if (seq_init(&j->samples[0].s, s->m, req, j->prompt, j->n_prompt, 0, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "invalid_request: %s", why);
        goto fail;
    }
    if (s->n_jobs == s->cap_jobs) {
        int cap_jobs = s->cap_jobs ? s->cap_jobs * 2 : 16;
        struct job **nj = realloc(s->jobs, (size_t)cap_jobs * sizeof(*nj));
        if (!nj) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        s->jobs = nj;
        s->cap_jobs = cap_jobs;
    }
    j->phase = JOB_WAITING;
    s->jobs[s->n_jobs++] = j;
    return 0;
fail:
    job_free(NULL, j);
    return -1;
}

/* Admit waiting jobs in arrival order while their blocks and slots are free. */
static void admit(struct sched *s)
{
    for (int i = 0; i < s->n_jobs; i++) {
        struct job *j = s->jobs[i];
        if (j->phase != JOB_WAITING)
            continue;
        if (s->active_seqs + j->n_samples > s->o.max_seqs || kv_reserve(&s->kv, j->need) < 0)
            return; /* first come, first served: nobody overtakes it */
        j->reserved = j->need;
        j->phase = JOB_PREFILL;
        s->active_seqs += j->n_samples;
    }
}

int sched_has_room(const struct sched *s)
{
    for (int i = 0; i < s->n_jobs; i++)
        if (s->jobs[i]->phase == JOB_WAITING)
            return 0;
    return s->active_seqs < s->o.max_seqs;
}

int sched_busy(const struct sched *s)
{
    return s->n_jobs > 0;
}

/* ---- a step ------------------------------------------------------------- */

static int add_delta(struct sched *s, struct job *j, int sample, const char *text, size_t len)
{
    if (len == 0)
        return 0;
    if (s->n_deltas == s->cap_deltas) {
        int cap = s->cap_deltas ? s->cap_deltas * 2 : 64;
        struct sched_delta *d = realloc(s->deltas, (size_t)cap * sizeof(*d));
        if (!d)
            return -1;
        s->deltas = d;
        s->cap_deltas = cap;
    }
    s->deltas[s->n_deltas++] = (struct sched_delta){&j->pub, sample, text, len};
    return 0;
}

/* Build the Flywheel response and the timing of a finished job. */
static int job_result(struct sched *s, struct job *j)
{
    struct job_sample *samples = calloc((size_t)j->n_samples, sizeof(*samples));
    if (!samples)
        return -1;
    double finished = 0;
    int longest = 0;
    for (int i = 0; i < j->n_samples; i++) {
        struct seq *q = &j->samples[i].s;
        size_t len;
        samples[i].text = (char *)seq_text(q, &len);
        samples[i].text_len = len;
        samples[i].generated_tokens = q->n_new;
        samples[i].finished = q->finished_at;
        samples[i].finish_reason = q->finish;
        if (q->finished_at > finished)
            finished = q->finished_at;
        if (q->n_new > longest)
            longest = q->n_new;
    }
    /* a chat's prompt is its template, as the model read it */
    char *chat = NULL;
    size_t chat_len = 0;
    if (j->req->n_messages > 0 &&
        chat_render(s->m->tok, j->req->messages, j->req->n_messages, &chat, &chat_len) != 0) {
        free(samples);
        return -1;
    }
    struct job_response r = {.created = j->pub.created > 0 ? j->pub.created : finished,
                             .finished = finished,
                             .prompt = chat ? chat : j->req->text,
                             .prompt_len = chat ? chat_len : j->req->text_len,
                             .prompt_tokens = j->n_prompt,
                             .samples = samples,
                             .num_samples = (size_t)j->n_samples};
    int rc = job_response_to_json(&r, &j->pub.result);
    free(chat);
    free(samples);
    snprintf(j->pub.timing, sizeof(j->pub.timing),
             "{\"first_token_ms\":%.0f,\"last_token_ms\":%.0f,\"tokens\":%d}", j->first_token_ms,
             j->last_token_ms, longest);
    return rc;
}

/* A sample took a token, chosen here from logits or, with logits NULL, by
 * the backend (id): note times, its text, and whether it finished. */
static int took_token(struct sched *s, struct job *j, int i, float *logits, int id)
{
    struct sample *sm = &j->samples[i];
    const char *text;
    size_t len;
    if (logits)
        seq_step(&sm->s, logits, &text, &len);
    else
        seq_take(&sm->s, id, &text, &len);
    double now_ms = clock_wall_s() * 1e3;
    if (j->first_token_ms == 0)
        j->first_token_ms = now_ms;
    j->last_token_ms = now_ms;
    s->rate_tokens++;
    if (add_delta(s, j, i, text, len) < 0)
        return -1;
    if (sm->s.done && !sm->finished) {
        sm->finished = 1;
        j->n_finished++;
        s->active_seqs--;
        slot_release(s, sm);
        /* the blocks it reserved but will never write go back */
        int used = sm->table.n - j->shared;
        int unused = sm->own_blocks - (used > 0 ? used : 0);
        if (unused > 0 && unused <= j->reserved) {
            kv_unreserve(&s->kv, unused);
            j->reserved -= unused;
        }
    }
    return 0;
}

/* The prompt is in the cache: give every extra sample the shared blocks and
 * its own copy of the partly filled last one; all then take their first
 * token from the prompt's last logits. */
static int fork_samples(struct sched *s, struct job *j, char *err, size_t errlen)
{
    struct sample *first = &j->samples[0];
    int partial = j->n_prompt % s->o.block_size != 0;
    for (int i = 1; i < j->n_samples; i++) {
        struct sample *sm = &j->samples[i];
        char why[256];
        if (seq_init(&sm->s, s->m, j->req, j->prompt, j->n_prompt, i, why, sizeof(why)) < 0 ||
            kv_table_share(&s->kv, &sm->table, &first->table, j->shared) < 0) {
            snprintf(err, errlen, "fork: %s", why);
            return -1;
        }
        if (partial) {
            if (kv_table_grow(&s->kv, &sm->table, j->n_prompt, &j->reserved) < 0) {
                snprintf(err, errlen, "fork: KV reservation exhausted");
                return -1;
            }
            int src = first->table.blocks[j->shared], dst = sm->table.blocks[j->shared];
            if (s->ops->copy_blocks(s->be, &src, &dst, 1, err, errlen) < 0)
                return -1;
        }
    }
    j->phase = JOB_DECODE;
    return 0;
}

/* Host sampling: each sample of a forked job from its own copy of the row. */
static int fork_take(struct sched *s, struct job *j, const float *row)
{
    size_t vocab = (size_t)s->m->cfg.vocab_size;
    for (int i = 0; i < j->n_samples; i++) {
        memcpy(s->tmp, row, vocab * sizeof(float));
        if (took_token(s, j, i, s->tmp, 0) < 0)
            return -1;
    }
    return 0;
}

/* Backend sampling: one row for sample i of j to choose from logit row r,
 * with its slot when its penalties need counts (reset on a new slot). */
static int sample_row(struct sched *s, int *ns, int r, struct job *j, int i, char *err,
                      size_t errlen)
{
    struct sample *sm = &j->samples[i];
    if (*ns >= s->o.max_seqs) {
        snprintf(err, errlen, "more samples in a step than max-batch %d", s->o.max_seqs);
        return -1;
    }
    struct backend_sample *row = &s->srows[*ns];
    memset(row, 0, sizeof(*row));
    row->row = r;
    row->slot = -1;
    if (seq_penalised(&sm->s)) {
        if (sm->slot < 0) {
            if (s->n_free_slots == 0) {
                snprintf(err, errlen, "no sampling slot left");
                return -1;
            }
            sm->slot = s->free_slots[--s->n_free_slots];
            row->reset = 1;
        }
        row->slot = sm->slot;
    }
    seq_sample_row(&sm->s, row);
    s->sown[*ns].j = j;
    s->sown[*ns].sample = i;
    (*ns)++;
    return 0;
}

/* The step's logits (n_logits rows) to tokens: chosen by the backend where
 * the logits are, or here from s->logits. */
static int take_tokens(struct sched *s, int n_logits, char *err, size_t errlen)
{
    if (s->host_sampling) {
        size_t vocab = (size_t)s->m->cfg.vocab_size;
        for (int r = 0; r < n_logits; r++) {
            struct job *j = s->row_owner[r].j;
            float *row = s->logits + (size_t)r * vocab;
            int k = s->row_owner[r].sample;
            if (k < 0 && fork_samples(s, j, err, errlen) < 0)
                return -1;
            if ((k < 0 ? fork_take(s, j, row) : took_token(s, j, k, row, 0)) < 0)
                goto oom;
        }
        return 0;
    }
    int ns = 0;
    for (int r = 0; r < n_logits; r++) {
        struct job *j = s->row_owner[r].j;
        int k = s->row_owner[r].sample;
        if (k < 0 && fork_samples(s, j, err, errlen) < 0)
            return -1;
        for (int i = k < 0 ? 0 : k; i < (k < 0 ? j->n_samples : k + 1); i++)
            if (sample_row(s, &ns, r, j, i, err, errlen) < 0)
                return -1;
    }
    if (ns > 0 && s->ops->sample(s->be, s->srows, ns, s->sids, err, errlen) < 0)
        return -1;
    for (int e = 0; e < ns; e++)
        if (took_token(s, s->sown[e].j, s->sown[e].sample, NULL, s->sids[e]) < 0)
            goto oom;
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

static int push_token(struct sched *s, int *n, int token, int pos, const struct kv_table *t,
                      struct job *j, int sample, int want_logits, int *n_logits)
{
    int k = (*n)++;
    s->tokens[k] = token;
    s->pos[k] = pos;
    s->seq[k] = k; /* one table pointer per row: rows of one sequence share it */
    s->tables[k] = t->blocks;
    if (want_logits) {
        s->rows[*n_logits] = k;
        s->row_owner[*n_logits].j = j;
        s->row_owner[*n_logits].sample = sample;
        (*n_logits)++;
    }
    return 0;
}

int sched_step(struct sched *s, struct sched_delta **deltas, int *n_deltas,
               struct sched_job ***done, int *n_done, char *err, size_t errlen)
{
    s->n_deltas = 0;
    s->n_done = 0;
    *deltas = NULL;
    *n_deltas = 0;
    *done = NULL;
    *n_done = 0;
    admit(s);

    int n = 0, n_logits = 0, budget = s->o.max_batch_tokens;
    /* the next token of every generating sample first */
    for (int i = 0; i < s->n_jobs && n < budget; i++) {
        struct job *j = s->jobs[i];
        if (j->phase != JOB_DECODE)
            continue;
        for (int k = 0; k < j->n_samples && n < budget; k++) {
            struct sample *sm = &j->samples[k];
            if (sm->s.done)
                continue;
            int pos = sm->s.n_tokens - 1;
            if (kv_table_grow(&s->kv, &sm->table, pos + 1, &j->reserved) < 0) {
                snprintf(err, errlen, "job %s: KV reservation exhausted", j->pub.id);
                return -1;
            }
            push_token(s, &n, sm->s.tokens[pos], pos, &sm->table, j, k, 1, &n_logits);
        }
    }
    /* then prompt chunks, in arrival order */
    for (int i = 0; i < s->n_jobs && n < budget; i++) {
        struct job *j = s->jobs[i];
        if (j->phase != JOB_PREFILL)
            continue;
        int chunk = j->n_prompt - j->prefilled;
        if (chunk > budget - n)
            chunk = budget - n;
        struct sample *sm = &j->samples[0];
        if (kv_table_grow(&s->kv, &sm->table, j->prefilled + chunk, &j->reserved) < 0) {
            snprintf(err, errlen, "job %s: KV reservation exhausted", j->pub.id);
            return -1;
        }
        for (int t = 0; t < chunk; t++) {
            int pos = j->prefilled + t;
            int last = pos == j->n_prompt - 1;
            push_token(s, &n, j->prompt[pos], pos, &sm->table, j, -1, last, &n_logits);
        }
        j->prefilled += chunk;
    }
    if (n == 0)
        return 0;

    struct backend_batch b = {.n_tokens = n,
                              .tokens = s->tokens,
                              .pos = s->pos,
                              .seq = s->seq,
                              .block_tables = s->tables,
                              .n_logits = n_logits,
                              .logit_rows = s->rows};
    if (s->o.fail_after_steps > 0 && ++s->steps > s->o.fail_after_steps) {
        snprintf(err, errlen, "injected failure after %d steps (MILLRACE_FAIL_AFTER_STEPS)",
                 s->o.fail_after_steps);
        return -1;
    }
    if (s->ops->forward(s->be, &b, s->host_sampling ? s->logits : NULL, err, errlen) < 0 ||
        take_tokens(s, n_logits, err, errlen) < 0)
        return -1;

    /* finished jobs leave at once */
    int kept = 0;
    for (int i = 0; i < s->n_jobs; i++) {
        struct job *j = s->jobs[i];
        /* out of memory for its result, a finished job stays and leaves at a
         * later step (it takes no more tokens meanwhile) */
        if (j->phase == JOB_DECODE && j->n_finished == j->n_samples &&
            grow_array((void **)&s->done, &s->cap_done, (size_t)s->n_done + 1, sizeof(*s->done)) ==
                0 &&
            job_result(s, j) == 0) {
            for (int k = 0; k < j->n_samples; k++)
                kv_table_release(&s->kv, &j->samples[k].table);
            kv_unreserve(&s->kv, j->reserved);
            j->reserved = 0;
            s->done[s->n_done++] = &j->pub;
        } else {
            s->jobs[kept++] = j;
        }
    }
    s->n_jobs = kept;

    double now = clock_wall_s();
    if (now - s->rate_t0 >= 2.0) {
        double r = (double)s->rate_tokens / (now - s->rate_t0);
        s->rate = s->rate > 0 ? 0.8 * s->rate + 0.2 * r : r;
        s->rate_t0 = now;
        s->rate_tokens = 0;
    }
    *deltas = s->deltas;
    *n_deltas = s->n_deltas;
    *done = s->done;
    *n_done = s->n_done;
    return 0;
}

int sched_cancel(struct sched *s, const char *id)
{
    for (int i = 0; i < s->n_jobs; i++) {
        struct job *j = s->jobs[i];
        if (strcmp(j->pub.id, id) != 0)
            continue;
        if (j->phase != JOB_WAITING)
            s->active_seqs -= j->n_samples - j->n_finished;
        job_free(s, j);
        memmove(&s->jobs[i], &s->jobs[i + 1], (size_t)(s->n_jobs - i - 1) * sizeof(*s->jobs));
        s->n_jobs--;
        return 1;
    }
    return 0;
}

int sched_jobs(const struct sched *s, char ids[][QUEUE_ID_MAX + 1], long *attempts, int max)
{
    for (int i = 0; i < s->n_jobs && i < max; i++) {
        memcpy(ids[i], s->jobs[i]->pub.id, QUEUE_ID_MAX + 1);
        attempts[i] = s->jobs[i]->pub.attempt;
    }
    return s->n_jobs;
}

void sched_stats(const struct sched *s, struct sched_stats *out)
{
    out->active_sequences = s->active_seqs;
    out->jobs = s->n_jobs;
    out->kv_blocks_used = kv_used(&s->kv);
    out->kv_blocks_total = s->kv.n_blocks;
    out->tokens_per_s = s->rate;
}
