/*
 * engine: a model on a backend, and one request run alone through it.
 *
 * This is the path of `millrace-worker generate` and of the correctness
 * tests against the reference outputs: tokenize, prefill the prompt in
 * chunks, then decode one token per step until the sample finishes. The
 * serving path (the scheduler) batches many sequences over the same model and
 * backend and the same per-sample logic (worker/sequence.c).
 */
#pragma once

#include <stddef.h>

#include "common/job.h"
#include "kernels/backend.h"
#include "worker/sequence.h"

struct model;

struct engine_opts {
    const char *model_path;
    const char *device;   /* "cpu" (default) or "cuda" */
    int n_threads;        /* 0: all cores */
    int block_size;       /* KV positions per block (16) */
    int kv_blocks;        /* 0: enough for one sequence of the full context */
    int max_batch_tokens; /* prompt tokens per forward call (512) */
};

struct engine {
    struct model *model;
    const struct backend_ops *ops;
    struct backend *be;
    struct engine_opts o;
    int *table; /* the single-request path's block table: 0, 1, 2, ... */
    int n_table;
    float *logits; /* (max_batch_tokens x vocab) */
    int *scratch;  /* (max_batch_tokens x 3): positions, sequence ids, rows */
};

/* Load the model and make its backend. Returns 0, or -1 with err. */
int engine_create(struct engine **out, const struct engine_opts *o, char *err, size_t errlen);
void engine_destroy(struct engine *e);

struct engine_stats {
    int n_prompt, n_generated;
    double prefill_s, decode_s; /* wall time of each phase */
};

typedef void (*engine_text_fn)(void *ctx, const char *text, size_t len);

/*
 * Generate sample 0 of req alone. *s is initialised here (seq_fini it): its
 * tokens, text and finish reason are the result. on_text (may be NULL) gets
 * the text as it is released. Returns 0, or -1 with err (a prompt too long
 * for the context, a backend failure).
 */
int engine_generate(struct engine *e, const struct job_request *req, struct seq *s,
                    struct engine_stats *st, engine_text_fn on_text, void *ctx, char *err,
                    size_t errlen);

/*
 * Run tokens[0..n) through the model as one sequence, at positions pos0,
 * pos0+1, ... (the KV cache must hold positions 0..pos0-1 from earlier calls).
 * With logits non-NULL, the logits of every position go there (n rows of
 * vocab floats): teacher forcing. With NULL only the last row is computed and
 * left in e->logits. Returns 0 or -1 with err.
 */
int engine_run(struct engine *e, const int *tokens, int n, int pos0, float *logits, char *err,
               size_t errlen);
