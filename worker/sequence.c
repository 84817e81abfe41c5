/*
 * sequence: one sample from prompt to finish (see sequence.h).
 *
 * Key decision: a token's text goes detokenizer -> stop matcher -> output,
 * so text is only ever released in whole characters and never shows a
 * prefix of a stop string that later completes.
 */
#include "worker/sequence.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "worker/chat.h"
#include "worker/model.h"
#include "worker/sampler.h"

/* The ids of req's prompt before max_input_tokens: text with BOS, or the chat
 * template of its messages. *out new (free()). */
static int encode_prompt(const struct model *m, const struct job_request *req, int **out,
                         size_t *got, char *err, size_t errlen)
{
    if (req->n_messages > 0) {
        int rc = chat_encode(m->tok, req->messages, req->n_messages, out, got);
        if (rc != 0)
            snprintf(err, errlen, "%s",
                     rc == CHAT_ERR_NOMEM ? "out of memory tokenizing the chat"
                                          : "the messages could not be "
                                            "tokenized");
        return rc != 0 ? -1 : 0;
    }
    size_t cap = TOK_ENCODE_BOUND(req->text_len);
    *out = malloc(cap * sizeof(**out));
    if (!*out) {
        snprintf(err, errlen, "out of memory tokenizing the prompt");
        return -1;
    }
    if (tok_encode(m->tok, req->text, req->text_len, 1, *out, cap, got) != 0) {
        free(*out);
        *out = NULL;
        snprintf(err, errlen, "the prompt could not be tokenized");
        return -1;
    }
    return 0;
}

int seq_tokenize_prompt(const struct model *m, const struct job_request *req, int **ids, int *n,
                        char *err, size_t errlen)
{
    int *out = NULL;
    size_t got = 0;
    if (encode_prompt(m, req, &out, &got, err, errlen) < 0)
        return -1;
    int bos = tok_bos_id(m->tok);
    if (req->max_input_tokens > 0 && got > (size_t)req->max_input_tokens) {
        size_t keep = (size_t)req->max_input_tokens, from = got - keep;
        int had_bos = got > 0 && out[0] == bos;
        memmove(out, out + from, keep * sizeof(*out));
        if (had_bos)
            out[0] = bos;
        got = keep;
    }
    if (got + 1 > (size_t)m->cfg.context_len) {
        free(out);
        snprintf(err, errlen,
                 "the prompt is %zu tokens and the model's context is %d: shorten it or set "
                 "max_input_tokens",
                 got, m->cfg.context_len);
        return -1;
    }
    *ids = out;
    *n = (int)got;
    return 0;
}

int seq_init(struct seq *s, const struct model *m, const struct job_request *req, const int *prompt,
             int n_prompt, int index, char *err, size_t errlen)
{
    memset(s, 0, sizeof(*s));
    long cap = (long)n_prompt + req->max_tokens;
    if (cap > m->cfg.context_len)
        cap = m->cfg.context_len;
    s->cap = (int)cap;
    s->max_new = s->cap - n_prompt;
    s->tokens = malloc((size_t)s->cap * sizeof(*s->tokens));
    s->piece_cap = tok_stream_bound(m->tok) + 8;
    s->piece = malloc(s->piece_cap);
    if (!s->tokens || !s->piece)
        goto oom;
    memcpy(s->tokens, prompt, (size_t)n_prompt * sizeof(*prompt));
    s->n_prompt = s->n_tokens = n_prompt;
    struct sampler_params sp = {
        .temperature = (float)req->temperature,
        .top_k = req->top_k,
        .top_p = (float)req->top_p,
        .presence_penalty = (float)req->presence_penalty,
        .frequency_penalty = (float)req->frequency_penalty,
        .has_seed = req->has_seed,
        .seed = req->seed,
    };
    int rc = sampler_create(&s->sampler, &sp, m->cfg.vocab_size, (uint64_t)index);
    if (rc != 0) {
        snprintf(err, errlen, "bad sampling parameters");
        seq_fini(s);
        return -1;
    }
    size_t lens[64];
    int n_stop = (int)req->n_stop;
    if (n_stop > 64)
        n_stop = 64;
    for (int i = 0; i < n_stop; i++)
        lens[i] = strlen(req->stop[i]);
    if (stopper_init(&s->stop, (const char *const *)req->stop, lens, n_stop) != 0) {
        snprintf(err, errlen, "bad stop strings");
        seq_fini(s);
        return -1;
    }
    tok_stream_init(&s->stream, m->tok, 0);
    s->eos_ids = req->eos_token_ids;
    s->n_eos = (int)req->n_eos_token_ids;
    s->model_eos = tok_eos_id(m->tok);
    if (s->max_new <= 0) { /* the prompt fills the context: nothing to generate */
        s->done = 1;
        s->finish = JOB_FINISH_LENGTH;
        s->finished_at = clock_wall_s();
    }
    return 0;
oom:
    seq_fini(s);
    snprintf(err, errlen, "out of memory");
    return -1;
}

static int is_eos(const struct seq *s, int id)
{
    if (id == s->model_eos)
        return 1;
    for (int i = 0; i < s->n_eos; i++)
        if (s->eos_ids[i] == id)
            return 1;
    return 0;
}

static void finish(struct seq *s, enum job_finish_reason why)
{
    s->done = 1;
    s->finish = why;
    s->finished_at = clock_wall_s();
}

/* Push n bytes of decoded text through the stop matcher. */
static int feed(struct seq *s, size_t n)
{
    const char *e;
    size_t elen;
    int stopped = 0;
    if (n > 0)
        stopper_feed(&s->stop, s->piece, n, &e, &elen, &stopped);
    return stopped;
}

/* The sample ends without a stop string: release what was held back. */
static void drain(struct seq *s)
{
    size_t tail = 0;
    const char *e;
    size_t elen;
    tok_stream_flush(&s->stream, s->piece, s->piece_cap, &tail);
    if (feed(s, tail)) {
        finish(s, JOB_FINISH_STOP);
        return;
    }
    stopper_flush(&s->stop, &e, &elen);
}

int seq_step(struct seq *s, float *logits, const char **emit, size_t *emit_len)
{
    return seq_take(s, sampler_sample(s->sampler, logits), emit, emit_len);
}

void seq_sample_row(struct seq *s, struct backend_sample *out)
{
    const struct sampler_params *p = sampler_params_of(s->sampler);
    out->top_k = p->top_k;
    out->temperature = p->temperature;
    out->top_p = p->top_p;
    out->presence_penalty = p->presence_penalty;
    out->frequency_penalty = p->frequency_penalty;
    out->u = sampler_draw(s->sampler);
}

int seq_penalised(const struct seq *s)
{
    const struct sampler_params *p = sampler_params_of(s->sampler);
    return p->presence_penalty != 0 || p->frequency_penalty != 0;
}

int seq_take(struct seq *s, int id, const char **emit, size_t *emit_len)
{
    sampler_accept(s->sampler, id);
    s->tokens[s->n_tokens++] = id;
    s->n_new++;
    if (is_eos(s, id)) {
        drain(s);
        if (!s->done)
            finish(s, JOB_FINISH_EOS);
    } else {
        size_t n = 0;
        if (tok_stream_push(&s->stream, id, s->piece, s->piece_cap, &n) != 0)
            n = 0;
        if (feed(s, n)) {
            finish(s, JOB_FINISH_STOP);
        } else if (s->n_new >= s->max_new) {
            drain(s);
            if (!s->done)
                finish(s, JOB_FINISH_LENGTH);
        }
    }
    /* the stop matcher's text is every release so far: report what is new */
    size_t len;
    const char *all = stopper_text(&s->stop, &len);
    *emit = all + s->emitted;
    *emit_len = len - s->emitted;
    s->emitted = len;
    return id;
}

const char *seq_text(const struct seq *s, size_t *len)
{
    return stopper_text(&s->stop, len);
}

void seq_fini(struct seq *s)
{
    sampler_destroy(s->sampler);
    stopper_fini(&s->stop);
    free(s->tokens);
    free(s->piece);
    memset(s, 0, sizeof(*s));
}
