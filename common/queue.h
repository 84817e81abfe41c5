/*
 * queue: the Redis job protocol shared by the API and the workers.
 *
 * Every job lives in Redis from submit to result, so no crash of an API
 * process or a worker can lose it (design and sources:
 * ../shared/research/redis-queue.md). Keys, all under one hash tag so that
 * every script and blocking move stays in one Cluster slot (P is the
 * configured prefix, "{mr}" by default):
 *
 *   P:queue              LIST   ids waiting; LPUSH to enqueue, taken from the right
 *   P:wake               ZSET   the doorbell an idle worker blocks on (BZPOPMIN)
 *   P:processing:<wid>   LIST   ids a worker has claimed (moved here by LMOVE)
 *   P:running            ZSET   id -> max-runtime deadline (ms) of running jobs
 *   P:runners            ZSET   wid -> last heartbeat (Redis server clock, ms)
 *   P:runner:<wid>       HASH   beat_ms, info JSON; expires
 *   P:job:<id>           HASH   the job: the source of truth; expires once finished
 *   P:job:<id>:w         SET    API instances watching the job besides the submitter
 *   P:inbox:<api>        LIST   ids of finished jobs, one list per API instance
 *   P:idem:<key>         STRING Idempotency-Key -> job id
 *   P:dead               LIST   ids of jobs given up after max_attempts (last 10,000)
 *   P:reaper             STRING the reaper's lease
 *   P:stats              HASH   counters: enqueued, done, failed, cancelled, dead, ...
 *
 * Guarantees: at-least-once execution and at most one recorded result per
 * job. Every transition is one Lua script; finishing is fenced on (worker,
 * attempt) so a worker that was declared dead cannot overwrite the result of
 * the attempt that replaced it. Liveness uses the Redis server clock.
 *
 * A `struct queue` owns one Redis connection and is not thread-safe: give
 * each thread its own (a worker has one for its main loop and one for its
 * heartbeat thread). Calls retry through connection loss as redis.h
 * describes; every script is safe to repeat when a reply was lost.
 */
#pragma once

#include <stddef.h>

#include "common/redis.h"

#define QUEUE_ID_MAX 64 /* job ids, runner ids, API instance ids */

/* Errors (negative). */
#define QUEUE_EDOWN  (-1) /* Redis unreachable within the retry time */
#define QUEUE_EREPLY (-2) /* Redis refused (out of memory, ...): see queue_errstr */
#define QUEUE_EPROTO (-3) /* an unexpected reply */
#define QUEUE_EARG   (-4) /* bad argument (id too long, bad prefix, ...) */
#define QUEUE_ELOST  (-5) /* this runner was declared dead: re-register with a new id */
#define QUEUE_ENOJOB (-6) /* no such job (never existed, or its result expired) */
#define QUEUE_ENOMEM (-7)

enum queue_state {
    QUEUE_QUEUED,
    QUEUE_RUNNING,
    QUEUE_DONE,
    QUEUE_FAILED,
    QUEUE_CANCELLED,
};

struct queue_opts {
    const char *prefix;    /* must contain a {hash tag}; copied */
    int worker_ttl_ms;     /* a runner silent this long is dead */
    int reap_lease_ms;     /* the reaper runs at most once per this, fleet-wide */
    int max_attempts;      /* claims before a job that keeps losing its worker is buried */
    int max_runtime_ms;    /* 0: none; else a running job older than this is recovered */
    int result_ttl_s;      /* finished jobs stay readable this long */
    int dead_ttl_s;        /* dead jobs stay readable this long */
    int idem_ttl_ms;       /* an Idempotency-Key maps to its job this long */
    long max_backlog;      /* 0: unbounded; else enqueue refuses beyond this many queued */
    int runner_info_ttl_s; /* the runner hash expires after this */
};

/* Defaults: prefix "{mr}", ttl 15 s, lease 5 s, 3 attempts, no max runtime,
 * results 1 h, dead 7 days, idempotency 1 h, unbounded backlog. */
void queue_opts_default(struct queue_opts *o);

struct queue;

/*
 * Make a queue handle with its own connection, named `conn_name` (CLIENT
 * SETNAME; e.g. "mr:api:<id>"). Options are copied. Connecting is lazy.
 * Returns 0, or QUEUE_EARG (bad prefix or name) or QUEUE_ENOMEM, each with a
 * message in err.
 */
int queue_create(struct queue **out, const struct redis_opts *ropts, const struct queue_opts *qopts,
                 const char *conn_name, char *err, size_t errlen);
void queue_destroy(struct queue *q);

/* The last error's text (borrowed; valid until the next call on q). */
const char *queue_errstr(const struct queue *q);

/* The handle's connection (borrowed), e.g. to tune its retry time. */
struct redis_conn *queue_conn(struct queue *q);

/* How many times a script had to be sent again after NOSCRIPT (tests). */
unsigned long queue_script_reloads(const struct queue *q);

/* Name of a state ("queued", "running", "done", "failed", "cancelled"). */
const char *queue_state_name(enum queue_state s);

/* ---- API side -------------------------------------------------------- */

enum queue_enqueue_outcome {
    QUEUE_ENQUEUED_NEW,      /* a new job */
    QUEUE_ENQUEUED_EXISTING, /* the id, or the idempotency key, already had a job */
    QUEUE_ENQUEUE_FULL,      /* the backlog is at max_backlog; nothing was written */
};

/*
 * Submit a job. `id` comes from ids_job_id() (made before the call, so a retry
 * after a lost reply is harmless). `reply_to` is the API instance to notify
 * when the job finishes ("" for none). `idem_key` is the client's
 * Idempotency-Key or NULL: a second submit with the same key returns the
 * first job's id in out_id and outcome EXISTING. All pointers borrowed.
 * Returns 0 with *outcome and out_id set, or an error.
 */
int queue_enqueue(struct queue *q, const char *id, const char *payload, size_t payload_len,
                  const char *reply_to, const char *idem_key, char out_id[QUEUE_ID_MAX + 1],
                  enum queue_enqueue_outcome *outcome);

struct queue_job_info {
    enum queue_state state;
    long attempts;
    long position;                     /* place in line while queued (0 = next), else -1 */
    int dead;                          /* failed because it used up max_attempts */
    double created, started, finished; /* Unix seconds (Redis clock); 0 when not yet */
    char worker[QUEUE_ID_MAX + 1];     /* last runner that claimed it, or "" */
    char *result;                      /* new: the result JSON when done, else NULL */
    char *error;  /* new: the error when failed/cancelled (or the last requeue reason), or NULL */
    char *timing; /* new: the worker's timing JSON when done (queue_finish_timed), or NULL */
};

/* Free the strings inside (not the struct itself). */
void queue_job_info_fini(struct queue_job_info *info);

/*
 * Read a job. When `watcher` is an API instance id (not NULL or "") and the
 * job is not finished yet, that instance is registered to be notified through
 * its inbox when it finishes, atomically with the read (register-then-check:
 * no finish can slip between). Returns 0, QUEUE_ENOJOB, or an error.
 */
int queue_job_get(struct queue *q, const char *id, const char *watcher, int watch_ttl_s,
                  struct queue_job_info *out);

/*
 * Read n jobs in one round trip (plain reads: no watcher, position -1).
 * rcs[i] is 0 (out[i] filled; free with queue_job_info_fini), QUEUE_ENOJOB,
 * or another error for that job. Returns 0, or an error for the whole batch
 * (then nothing in out needs freeing).
 */
int queue_job_get_many(struct queue *q, int n, char ids[][QUEUE_ID_MAX + 1],
                       struct queue_job_info *out, int *rcs);

/*
 * Cancel a job that is queued or running. It becomes `cancelled` at once and
 * its waiters are notified; a running job's worker learns it from its next
 * heartbeat and its finish is refused. *before is the state the job had
 * (queued or running: now cancelled; done/failed/cancelled: unchanged).
 * Returns 0, QUEUE_ENOJOB or an error.
 */
int queue_cancel(struct queue *q, const char *id, enum queue_state *before);

/*
 * Wait up to block_ms for ids of finished jobs in the inbox of API instance
 * `api_id` and take up to max of them into ids[]. *n is how many (0 on
 * timeout). An id may arrive more than once (duplicates are harmless: the
 * job hash is the truth). Returns 0 or an error.
 */
int queue_inbox_wait(struct queue *q, const char *api_id, int block_ms,
                     char ids[][QUEUE_ID_MAX + 1], int max, int *n);

struct queue_stats {
    long backlog;           /* queued, not yet claimed */
    long running;           /* claimed, not finished */
    long runners;           /* runners with a fresh heartbeat */
    long dead;              /* on the dead list */
    double oldest_queued_s; /* age of the job next in line, or -1 */
    long enqueued, done, failed, cancelled, requeued, retried, released, dead_total;
};

/* Read the counts behind /stats and /health in one atomic step. */
int queue_stats(struct queue *q, struct queue_stats *out);

/* A live runner as it last described itself. */
struct queue_runner {
    char wid[QUEUE_ID_MAX + 1];
    long beat_age_ms; /* since its last heartbeat */
    char *info;       /* new: the info JSON it sent with its heartbeat */
};

/* Read up to max live runners into *out (new array of *n; free each info, then
 * the array, with queue_runners_free). */
int queue_runners(struct queue *q, int max, struct queue_runner **out, int *n);
void queue_runners_free(struct queue_runner *r, int n);

/*
 * Read a job's stream: up to max entries after event id `after` ("0" from
 * the start; an id from an earlier entry to resume). Each entry: its event
 * id (the stream's entry id), sample and text. *out is a new array of *n
 * (queue_stream_entries_free). A missing stream gives *n = 0.
 */
struct queue_stream_entry {
    char event_id[48];
    long attempt; /* of the run that wrote it (1 when absent) */
    int sample;
    char *text; /* new */
    size_t len;
};
int queue_stream_read(struct queue *q, const char *id, const char *after, int max,
                      struct queue_stream_entry **out, int *n);
void queue_stream_entries_free(struct queue_stream_entry *e, int n);

/* ---- worker side ----------------------------------------------------- */

struct queue_claimed {
    char id[QUEUE_ID_MAX + 1];
    long attempt;  /* 1 for the first run; pass it back to queue_finish */
    char *payload; /* new: the request JSON as submitted */
    size_t payload_len;
    double created; /* when it was submitted, Unix seconds (Redis clock) */
};

/* Free the payloads of n claimed jobs (not the array). */
void queue_claimed_fini(struct queue_claimed *jobs, int n);

/*
 * Register (or re-register) runner `wid` with its info JSON (model, slots,
 * ...); borrowed. A runner must be registered before it can claim.
 */
int queue_register(struct queue *q, const char *wid, const char *info_json);

struct queue_owned {
    char id[QUEUE_ID_MAX + 1];
    long attempt; /* the attempt Redis holds, or 0 when abort is set */
    int abort;    /* the job is no longer this runner's: drop it */
};

/*
 * Beat for runner `wid` and learn the state of what it holds: on success
 * *owned is a new array of *n entries (free() it), one per id in its
 * processing list. Returns QUEUE_ELOST when the runner was declared dead
 * meanwhile (drop all work, register under a new id).
 */
int queue_heartbeat(struct queue *q, const char *wid, const char *info_json,
                    struct queue_owned **owned, int *n);

/*
 * Claim up to max_n jobs for runner `wid` into jobs[] (*n set). When none is
 * waiting and block_ms > 0, wait on the doorbell up to block_ms for one to
 * arrive, then try once more. Returns 0 (possibly *n == 0), QUEUE_ELOST when
 * wid is not registered, or an error.
 */
int queue_claim(struct queue *q, const char *wid, int max_n, int block_ms,
                struct queue_claimed *jobs, int *n);

enum queue_outcome {
    QUEUE_OUTCOME_DONE,    /* value: the result JSON */
    QUEUE_OUTCOME_FAILED,  /* value: why the job itself cannot succeed (not retried) */
    QUEUE_OUTCOME_RETRY,   /* value: a worker-side error; requeue, or bury past max_attempts */
    QUEUE_OUTCOME_RELEASE, /* hand back uncharged (shutdown); value ignored */
};

/*
 * Finish attempt `attempt` of job `id` held by runner `wid`. Fenced: *recorded
 * is 1 when this call changed the job, 0 when the job was no longer this
 * runner's attempt (cancelled, reaped and re-run, or already finished): a
 * result is recorded at most once. Safe to repeat after a lost reply.
 */
int queue_finish(struct queue *q, const char *wid, const char *id, long attempt,
                 enum queue_outcome outcome, const char *value, size_t value_len, int *recorded);

/* queue_finish, and for a done job also `timing` (a small JSON object, e.g.
 * when the first token came; NULL for none) kept in the job hash. */
int queue_finish_timed(struct queue *q, const char *wid, const char *id, long attempt,
                       enum queue_outcome outcome, const char *value, size_t value_len,
                       const char *timing, int *recorded);

/*
 * Streaming: append text deltas to jobs' streams ({prefix}:stream:<id>, a
 * Redis Stream capped at about 100,000 entries, each entry the fields
 * `attempt`, `sample` and `text`), all in one round trip. A job re-run after
 * its worker was lost appends the new attempt's deltas after the old ones:
 * readers start the text over when the attempt changes. `expire` asks to (re)set the
 * stream's TTL to the result TTL (the first append of a job, and its last).
 * Entries (borrowed) are written in order. Returns 0 or an error.
 */
struct queue_delta {
    const char *id;
    long attempt; /* the claim's attempt: a re-run after a lost worker starts over */
    int sample;
    const char *text;
    size_t len;
    int expire;
};
int queue_stream_append(struct queue *q, const struct queue_delta *d, int n);

/* Graceful exit: hand back every job runner `wid` still holds (uncharged) and
 * remove it. *released (may be NULL) is how many went back. */
int queue_deregister(struct queue *q, const char *wid, int *released);

struct queue_reap_result {
    int ran;              /* this call held the lease (else another runner reaped recently) */
    int skipped_liveness; /* Redis restarted less than a ttl ago: runners not judged */
    long runners;         /* runners declared dead */
    long requeued;        /* their jobs sent back to the queue */
    long buried;          /* jobs that used up max_attempts, now dead */
};

/*
 * Recover the work of dead runners (and of jobs past max runtime). Any runner
 * may call this as often as it likes; a lease makes it run once per
 * reap_lease_ms fleet-wide. Right after a Redis restart (uptime below the
 * ttl) runners are not judged, since their beats could not arrive while Redis
 * was down.
 */
int queue_reap(struct queue *q, struct queue_reap_result *out);
