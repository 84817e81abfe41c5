/*
 * scheduler: continuous batching over the paged KV cache.
 *
 * Jobs join at the next step and leave the moment they finish. Every step is
 * one forward pass over all active sequences: the next token of every
 * sample that is generating, plus chunks of the prompts of jobs that are
 * starting, up to a token budget, so a long prompt never stalls the others
 * (decode tokens are placed first; prompts fill what is left). A job's
 * samples share its prompt's KV blocks: the prompt is run once, then forked
 * (the last, partly filled block is copied for each extra sample). A job is
 * admitted, in order of arrival, only when the KV blocks it can ever need are
 * free (prompt + max_tokens for every sample): nothing is ever preempted.
 *
 * Owns a backend of its own (the model is borrowed). Single-threaded: the
 * worker's main loop drives it.
 */
#pragma once

#include <stddef.h>

#include "common/job.h"
#include "common/queue.h"

struct model;
struct backend_ops;

struct sched_opts {
    const char *device;   /* "cpu" */
    int n_threads;        /* 0: all cores */
    int max_seqs;         /* samples generating at once */
    int max_batch_tokens; /* tokens per forward step */
    int block_size;       /* KV positions per block */
    int kv_blocks;        /* blocks in the pool */
    int host_sampling;    /* choose tokens here from copied logits even when the
                             backend can sample where they are (tests compare) */
    int fail_after_steps; /* > 0: steps after this many fail as a broken backend's
                             would (tests of the worker's hand-back); 0: never */
};

struct sched;

/* The jobs it holds, as seen from outside. */
struct sched_job {
    char id[QUEUE_ID_MAX + 1];
    long attempt;
    double created; /* submitted, Unix seconds (Redis clock) */
    int streamed;   /* a delta of it was written already */
    /* when finished (sched_step's `done` list): */
    char *result;     /* the Flywheel response JSON (owned) */
    char timing[160]; /* {"first_token_ms":..,"last_token_ms":..,"tokens":..} */
};

/* One piece of text a sample produced in the last step (borrowed until the
 * next sched_step). */
struct sched_delta {
    struct sched_job *job;
    int sample;
    const char *text;
    size_t len;
};

/* Make a scheduler over model m (borrowed). Returns 0 or -1 with err. */
int sched_create(struct sched **out, const struct model *m, const struct sched_opts *o, char *err,
                 size_t errlen);
void sched_destroy(struct sched *s);

/*
 * Take a claimed job: req (taken: freed by the scheduler in every case).
 * Returns 0 when queued (admitted when blocks allow), or -1 when this worker
 * can never run it, with a message in err that starts "invalid_request: "
 * when the request itself is at fault (a prompt that does not fit the
 * context) — the caller fails the job with it.
 */
int sched_submit_take(struct sched *s, const char *id, long attempt, double created,
                      struct job_request *req, char *err, size_t errlen);

/* Whether a new job could start now (a free sample slot and nothing waiting
 * for blocks): the worker claims only then. */
int sched_has_room(const struct sched *s);

/* Whether any job is waiting or running. */
int sched_busy(const struct sched *s);

/*
 * Run one step. On return *deltas (n_deltas) is the text produced in this
 * step, and *done (n_done) the jobs that finished (taken: sched_job_free
 * each after recording its result). Returns 0, or -1 with err when the
 * backend failed (every job in it is then lost to this worker: the caller
 * hands them back).
 */
int sched_step(struct sched *s, struct sched_delta **deltas, int *n_deltas,
               struct sched_job ***done, int *n_done, char *err, size_t errlen);

/* Drop job id (cancelled, or no longer ours): its blocks are freed at once.
 * Returns 1 when it was here. */
int sched_cancel(struct sched *s, const char *id);

/* The ids (and attempts) of every job held, for a hand-back at shutdown:
 * fills up to max; returns how many there are. */
int sched_jobs(const struct sched *s, char ids[][QUEUE_ID_MAX + 1], long *attempts, int max);

/* Free a finished job returned by sched_step. */
void sched_job_free(struct sched_job *j);

struct sched_stats {
    int active_sequences;
    int jobs;
    int kv_blocks_used, kv_blocks_total;
    double tokens_per_s; /* generated, over the last ~10 s */
};
void sched_stats(const struct sched *s, struct sched_stats *out);
