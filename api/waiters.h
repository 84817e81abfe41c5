/*
 * waiters: HTTP requests parked until their job finishes.
 *
 * A request that waits for a job (POST /generate, GET /jobs/{id}?wait=S) is
 * suspended in libmicrohttpd, so no thread is held per waiting client, and
 * registered here under its job id. A watcher (an SSE stream, sse.c) is
 * registered the same way but not suspended: it is told through a callback.
 * Four things wake a waiter, whichever comes first, exactly once:
 *   - the job finished: this instance's inbox list in Redis names the id
 *     (one blocking BLMPOP thread drains it for the whole instance);
 *   - its deadline passed;
 *   - the client hung up (libmicrohttpd does not watch suspended sockets, so
 *     a ticker polls them for POLLRDHUP) — a synchronous job is then
 *     cancelled;
 *   - the server is shutting down.
 * The job hash is the source of truth: the ticker re-reads the state of
 * jobs whose waiters have waited a while, and of every waiter after the
 * inbox connection was re-established, so a lost notification costs
 * latency, never the answer.
 *
 * Ownership: a struct waiter is embedded in its request context and owned
 * by the request. While linked it may be resolved by any thread, under the
 * table's lock; the resolver unlinks it, stores the outcome and resumes the
 * connection, after which only the connection's thread touches it again.
 */
#pragma once

#include <stdint.h>

#include "common/queue.h"

struct MHD_Connection;
struct metrics;

enum waiter_kind {
    WAITER_RESULT, /* a synchronous /generate: timeout is 504, hang-up cancels the job */
    WAITER_POLL,   /* a long poll on /jobs/{id}: timeout answers with the current state */
    WAITER_WATCH,  /* not a suspended request: notify() is called (SSE streams); no deadline */
};

enum waiter_outcome {
    WAITER_PENDING,  /* still waiting */
    WAITER_FINISHED, /* the job reached a final state: info holds it */
    WAITER_TIMEOUT,  /* the deadline passed */
    WAITER_GONE,     /* the client disconnected */
    WAITER_SHUTDOWN, /* the server is stopping */
    WAITER_ERROR,    /* the request failed before it could wait (resolved by its handler) */
    WAITER_LOST,     /* the job no longer exists in Redis (expired, or Redis lost it) */
};

struct waiter;

/*
 * How a WAITER_WATCH waiter learns its outcome: called once, by the resolving
 * thread, with the table's lock held, after w->outcome (and w->info) are set.
 * It must be quick and must call nothing of this module.
 */
typedef void (*waiter_notify_fn)(void *arg, struct waiter *w);

struct waiter {
    char id[QUEUE_ID_MAX + 1];
    enum waiter_kind kind;
    struct MHD_Connection *conn;
    int fd;              /* the client socket, watched for hang-up while parked */
    int64_t parked_ms;   /* monotonic */
    int64_t deadline_ms; /* monotonic */
    int64_t checked_ms;  /* last time the ticker re-read the job */
    enum waiter_outcome outcome;
    struct queue_job_info info; /* valid when outcome is WAITER_FINISHED (owned) */
    waiter_notify_fn notify;    /* WAITER_WATCH only */
    void *notify_arg;
    /* guarded by the table's lock */
    int linked;    /* in the table: nobody has resolved it yet */
    int suspended; /* its connection is suspended: the resolver must resume it */
    struct waiter *next, *prev;
};

struct waiters;

struct waiters_opts {
    const struct redis_opts *redis;
    const struct queue_opts *queue;
    const char *api_id;      /* this instance's inbox name (no spaces); copied */
    int tick_ms;             /* how often deadlines and sockets are checked (100) */
    int recheck_ms;          /* a waiter older than this has its job re-read (2000) */
    struct metrics *metrics; /* borrowed; queue-wait, time-to-first-token and inter-token
                                observations, parked gauge */
};

/* Make the table and start its two threads (inbox drain, ticker). Returns 0,
 * or -1 with a message in err. */
int waiters_start(struct waiters **out, const struct waiters_opts *o, char *err, size_t errlen);

/*
 * Register w (kind, id, conn, fd and deadline_ms set by the caller) and
 * suspend its connection. Call from the access handler, before anything
 * that lets the job finish (enqueue) or that reads its state (a long poll's
 * first look), so no finish can be missed. A resolution that races with the
 * suspension is handed over: the connection is resumed either way.
 * Thread-safe.
 */
void waiters_park(struct waiters *ws, struct waiter *w);

/*
 * Register a WAITER_WATCH waiter (id, notify and notify_arg set by the
 * caller) without suspending anything: notify is called when the job
 * finishes, disappears, or the server shuts down (at once when it already
 * is). Same ordering rule as waiters_park. Unlink it with waiters_forget
 * before freeing it. Thread-safe.
 */
void waiters_watch(struct waiters *ws, struct waiter *w);

/*
 * Resolve w with `outcome` (and, for WAITER_FINISHED, info, taken even when
 * this call loses) if nobody has yet, then resume its connection. Returns 1
 * when this call resolved it, 0 when it was already resolved. Thread-safe.
 */
int waiters_resolve(struct waiters *ws, struct waiter *w, enum waiter_outcome outcome,
                    struct queue_job_info *info);

/* Unlink w without resuming (its request is being torn down). Thread-safe. */
void waiters_forget(struct waiters *ws, struct waiter *w);

/* How many requests are parked. Thread-safe. */
long waiters_count(struct waiters *ws);

/* Resolve every parked request with WAITER_SHUTDOWN (they answer at once);
 * a request parked after this is answered the same way at once. */
void waiters_release_all(struct waiters *ws);

/* Stop the threads and free the table. Every waiter must be resolved first. */
void waiters_stop(struct waiters *ws);
