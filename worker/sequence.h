/*
 * sequence: one sample being generated, from its prompt to its finish.
 *
 * Holds what a sample needs between steps: its tokens (prompt, then
 * generated), its sampler (penalties count only this sample's tokens), its
 * incremental detokenizer (never half a UTF-8 character), its stop-string
 * matcher (never the stop string itself, nothing after it), and why it
 * finished. The scheduler and the single-request engine both drive samples
 * through this module, so a sample behaves the same alone and in a batch.
 */
#pragma once

#include <stddef.h>

#include "common/job.h"
#include "common/job_response.h"
#include "kernels/backend.h"
#include "worker/stopper.h"
#include "worker/tokenizer.h"

struct model;
struct sampler;

struct seq {
    int *tokens;  /* (cap) prompt ids, then generated ids */
    int n_prompt; /* ids of the prompt (BOS included) */
    int n_tokens; /* ids so far */
    int cap;      /* room: n_prompt + max_tokens, at most the context length */
    int max_new;  /* tokens this sample may generate */
    int n_new;    /* tokens generated so far (an EOS token included) */
    int done;
    enum job_finish_reason finish;
    double finished_at; /* Unix seconds */
    struct sampler *sampler;
    struct stopper stop;
    struct tok_stream stream;
    const int *eos_ids; /* the request's extra EOS ids (borrowed from it) */
    int n_eos;
    int model_eos;
    char *piece; /* (piece_cap) a decoded token, scratch */
    size_t piece_cap;
    size_t emitted; /* bytes of the text already reported by seq_step */
};

/*
 * Tokenize req's prompt with m's tokenizer into *ids (new, free()) and *n:
 * its text with BOS, or its messages through the chat template
 * (worker/chat.h). Then max_input_tokens applies (the last N tokens are kept; when BOS falls off,
 * it takes the place of the oldest kept token, so the model still sees it
 * first). Fails (-1, err) when the prompt does not fit the context together
 * with at least one generated token.
 */
int seq_tokenize_prompt(const struct model *m, const struct job_request *req, int **ids, int *n,
                        char *err, size_t errlen);

/*
 * Start sample number `index` of req over the prompt ids (copied). req is
 * borrowed and must outlive s. Returns 0, or -1 with err.
 */
int seq_init(struct seq *s, const struct model *m, const struct job_request *req, const int *prompt,
             int n_prompt, int index, char *err, size_t errlen);

/*
 * Take the logits (vocab floats, modified) of the sample's last token: choose
 * the next token, append it, and decide whether the sample is finished.
 * *emit and *emit_len: new text that may be shown now (borrowed from s until the
 * next call). Returns the new token id.
 */
int seq_step(struct seq *s, float *logits, const char **emit, size_t *emit_len);

/*
 * seq_step with the choice made elsewhere (a backend's `sample`): fill *out's
 * sampling parameters and draw from the sample's own RNG (row, slot and
 * reset are the caller's), then hand the chosen id to seq_take, which does
 * the rest of seq_step. A seeded sample gives the same tokens either way.
 */
void seq_sample_row(struct seq *s, struct backend_sample *out);
int seq_take(struct seq *s, int id, const char **emit, size_t *emit_len);

/* Whether the sample's penalties need its token counts. */
int seq_penalised(const struct seq *s);

/* The sample's text so far (borrowed; after the finish, the whole answer). */
const char *seq_text(const struct seq *s, size_t *len);

void seq_fini(struct seq *s);
