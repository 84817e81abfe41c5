/*
 * waiters: HTTP requests parked until their job finishes (see waiters.h).
 *
 * Key decision: never call into libmicrohttpd while holding the table's
 * lock. Parking links the waiter, then suspends, then re-checks under the
 * lock whether it was resolved meanwhile; a resolver unlinks under the lock
 * and resumes only connections already marked suspended. So every
 * connection is resumed exactly once, after it was suspended, whatever the
 * interleaving.
 */
#include "api/waiters.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <microhttpd.h>

#include "api/metrics.h"
#include "common/clock.h"
#include "common/grow.h"
#include "common/log.h"

#define WAITERS_BUCKETS     4096 /* power of two */
#define WAITERS_DRAIN_MAX   256  /* ids taken from the inbox per call */
#define WAITERS_RECHECK_MAX 256  /* job re-reads per tick */

struct waiters {
    pthread_mutex_t lock;
    struct waiter *buckets[WAITERS_BUCKETS];
    long count;

    char api_id[QUEUE_ID_MAX + 1];
    int tick_ms, recheck_ms;
    struct metrics *metrics;
    struct queue *drain_q;  /* the inbox thread's connection */
    struct queue *ticker_q; /* the ticker's connection (re-reads, cancels) */
    pthread_t drain_thread, ticker_thread;
    int drain_started, ticker_started;
    atomic_int stopping;
    int closed;             /* release_all ran: no more parking (guarded by lock) */
    atomic_int recheck_all; /* the inbox connection was re-established */
    pthread_mutex_t sleep_lock;
    pthread_cond_t sleep_cond;
};

static unsigned bucket_of(const char *id)
{
    unsigned h = 2166136261u; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h & (WAITERS_BUCKETS - 1);
}

static void link_locked(struct waiters *ws, struct waiter *w)
{
    struct waiter **head = &ws->buckets[bucket_of(w->id)];
    w->prev = NULL;
    w->next = *head;
    if (*head)
        (*head)->prev = w;
    *head = w;
    w->linked = 1;
    ws->count++;
}

static void unlink_locked(struct waiters *ws, struct waiter *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        ws->buckets[bucket_of(w->id)] = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->next = w->prev = NULL;
    w->linked = 0;
    ws->count--;
}

void waiters_park(struct waiters *ws, struct waiter *w)
{
    w->outcome = WAITER_PENDING;
    w->suspended = 0;
    w->parked_ms = w->checked_ms = clock_now_ms();
    pthread_mutex_lock(&ws->lock);
    if (ws->closed) /* shutting down: answer at once */
        w->outcome = WAITER_SHUTDOWN;
    else
        link_locked(ws, w);
    pthread_mutex_unlock(&ws->lock);

    MHD_suspend_connection(w->conn);

    pthread_mutex_lock(&ws->lock);
    int resolved_meanwhile = !w->linked;
    if (!resolved_meanwhile)
        w->suspended = 1;
    pthread_mutex_unlock(&ws->lock);
    if (resolved_meanwhile)
        MHD_resume_connection(w->conn);
}

void waiters_watch(struct waiters *ws, struct waiter *w)
{
    w->kind = WAITER_WATCH;
    w->outcome = WAITER_PENDING;
    w->suspended = 0;
    w->fd = -1;
    w->deadline_ms = INT64_MAX;
    w->parked_ms = w->checked_ms = clock_now_ms();
    pthread_mutex_lock(&ws->lock);
    if (ws->closed) { /* shutting down: tell it at once */
        w->outcome = WAITER_SHUTDOWN;
        w->notify(w->notify_arg, w);
    } else {
        link_locked(ws, w);
    }
    pthread_mutex_unlock(&ws->lock);
}

/* Unlink w and record its outcome; returns the connection to resume (or
 * NULL when w is not suspended yet: waiters_park resumes it; or when it is a
 * watcher, which is notified here). Locked. */
static struct MHD_Connection *resolve_locked(struct waiters *ws, struct waiter *w,
                                             enum waiter_outcome outcome)
{
    unlink_locked(ws, w);
    w->outcome = outcome;
    if (w->kind == WAITER_WATCH) {
        w->notify(w->notify_arg, w);
        return NULL;
    }
    return w->suspended ? w->conn : NULL;
}

int waiters_resolve(struct waiters *ws, struct waiter *w, enum waiter_outcome outcome,
                    struct queue_job_info *info)
{
    struct MHD_Connection *resume = NULL;
    int won = 0;
    pthread_mutex_lock(&ws->lock);
    if (w->linked) {
        won = 1;
        if (outcome == WAITER_FINISHED && info) {
            w->info = *info;
            memset(info, 0, sizeof(*info));
        }
        resume = resolve_locked(ws, w, outcome);
    }
    pthread_mutex_unlock(&ws->lock);
    if (info)
        queue_job_info_fini(info);
    if (resume)
        MHD_resume_connection(resume);
    return won;
}

void waiters_forget(struct waiters *ws, struct waiter *w)
{
    pthread_mutex_lock(&ws->lock);
    if (w->linked)
        unlink_locked(ws, w);
    pthread_mutex_unlock(&ws->lock);
}

long waiters_count(struct waiters *ws)
{
    pthread_mutex_lock(&ws->lock);
    long n = ws->count;
    pthread_mutex_unlock(&ws->lock);
    return n;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Resolve every waiter of job `id` with `outcome`; for WAITER_FINISHED each
 * gets its own copy of info (taken). Returns how many were resolved. */
static int resolve_id(struct waiters *ws, const char *id, enum waiter_outcome outcome,
                      struct queue_job_info *info)
{
    struct MHD_Connection *resume[64];
    int n, total = 0;
    do {
        n = 0;
        pthread_mutex_lock(&ws->lock);
        struct waiter *w = ws->buckets[bucket_of(id)];
        while (w && n < 64) {
            struct waiter *next = w->next;
            if (strcmp(w->id, id) == 0) {
                if (outcome == WAITER_FINISHED) {
                    w->info = *info;
                    w->info.result = dup_or_null(info->result);
                    w->info.error = dup_or_null(info->error);
                    w->info.timing = dup_or_null(info->timing);
                }
                struct MHD_Connection *c = resolve_locked(ws, w, outcome);
                if (c)
                    resume[n++] = c;
                total++;
            }
            w = next;
        }
        pthread_mutex_unlock(&ws->lock);
        for (int i = 0; i < n; i++)
            MHD_resume_connection(resume[i]);
    } while (n == 64);
    if (info)
        queue_job_info_fini(info);
    return total;
}

static int has_waiters(struct waiters *ws, const char *id)
{
    int found = 0;
    pthread_mutex_lock(&ws->lock);
    for (struct waiter *w = ws->buckets[bucket_of(id)]; w && !found; w = w->next)
        found = strcmp(w->id, id) == 0;
    pthread_mutex_unlock(&ws->lock);
    return found;
}

static int is_final(enum queue_state s)
{
    return s == QUEUE_DONE || s == QUEUE_FAILED || s == QUEUE_CANCELLED;
}

/* Observe a done job's time to first token and inter-token latency from the
 * timing its worker recorded: {"first_token_ms", "last_token_ms", "tokens"}
 * (Unix ms, tokens of its longest sample). */
static void observe_timing(struct waiters *ws, const struct queue_job_info *info)
{
    json_t *t = json_loads(info->timing, 0, NULL);
    json_t *first = json_object_get(t, "first_token_ms"),
           *last = json_object_get(t, "last_token_ms");
    json_t *tokens = json_object_get(t, "tokens");
    if (json_is_number(first) && info->created > 0)
        metrics_observe_ttft(ws->metrics, json_number_value(first) / 1e3 - info->created);
    if (json_is_number(first) && json_is_number(last) && json_is_integer(tokens) &&
        json_integer_value(tokens) > 1)
        metrics_observe_itl(ws->metrics, (json_number_value(last) - json_number_value(first)) /
                                             1e3 / (double)(json_integer_value(tokens) - 1));
    json_decref(t);
}

/* Wake the waiters of job `id` if info (from a read that gave rc) shows it
 * finished or gone. info is consumed. */
static void settle(struct waiters *ws, const char *id, int rc, struct queue_job_info *info)
{
    if (rc == QUEUE_ENOJOB) {
        resolve_id(ws, id, WAITER_LOST, NULL);
        return;
    }
    if (rc < 0)
        return; /* Redis trouble: the next re-check tries again */
    if (!is_final(info->state)) {
        queue_job_info_fini(info);
        return;
    }
    if (info->state == QUEUE_DONE && info->started > 0 && info->created > 0)
        metrics_observe_queue_wait(ws->metrics, info->started - info->created);
    if (info->state == QUEUE_DONE && info->timing)
        observe_timing(ws, info);
    resolve_id(ws, id, WAITER_FINISHED, info);
}

/* Read the n jobs in ids[] in one round trip and wake their waiters. */
static void check_jobs(struct waiters *ws, struct queue *q, char ids[][QUEUE_ID_MAX + 1], int n)
{
    struct queue_job_info info[WAITERS_DRAIN_MAX];
    int rcs[WAITERS_DRAIN_MAX];
    if (n == 0 || queue_job_get_many(q, n, ids, info, rcs) < 0)
        return;
    for (int i = 0; i < n; i++)
        settle(ws, ids[i], rcs[i], &info[i]);
}

/* Keep only the ids that someone here waits for; returns how many. */
static int keep_awaited(struct waiters *ws, char ids[][QUEUE_ID_MAX + 1], int n)
{
    int kept = 0;
    for (int i = 0; i < n; i++)
        if (has_waiters(ws, ids[i]) && kept++ != i)
            memcpy(ids[kept - 1], ids[i], QUEUE_ID_MAX + 1);
    return kept;
}

static void *drain_main(void *arg)
{
    struct waiters *ws = arg;
    char ids[WAITERS_DRAIN_MAX][QUEUE_ID_MAX + 1];
    unsigned long gen = 0;
    while (!atomic_load(&ws->stopping)) {
        int n = 0;
        int rc = queue_inbox_wait(ws->drain_q, ws->api_id, 1000, ids, WAITERS_DRAIN_MAX, &n);
        unsigned long g = redis_conn_generation(queue_conn(ws->drain_q));
        if (g != gen) {
            if (gen != 0) /* notifications may have been lost while it was down */
                atomic_store(&ws->recheck_all, 1);
            gen = g;
        }
        if (rc < 0) {
            clock_sleep_ms(100); /* the connection logs and backs off by itself */
            continue;
        }
        check_jobs(ws, ws->drain_q, ids, keep_awaited(ws, ids, n));
    }
    return NULL;
}

static void ticker_sleep(struct waiters *ws)
{
    pthread_mutex_lock(&ws->sleep_lock);
    if (!atomic_load(&ws->stopping))
        clock_cond_wait_ms(&ws->sleep_cond, &ws->sleep_lock, ws->tick_ms);
    pthread_mutex_unlock(&ws->sleep_lock);
}

struct tick_work {
    struct MHD_Connection **resume;
    size_t n_resume, cap_resume;
    char (*cancel)[QUEUE_ID_MAX + 1];
    size_t n_cancel, cap_cancel;
    char (*recheck)[QUEUE_ID_MAX + 1];
    size_t n_recheck;
    struct pollfd *fds;
    struct waiter **polled;
    size_t cap_poll;
};

/* One pass over every parked waiter: deadlines, hang-ups, re-reads due. */
static void tick_scan(struct waiters *ws, struct tick_work *t)
{
    int64_t now = clock_now_ms();
    int all = atomic_exchange(&ws->recheck_all, 0);
    t->n_resume = t->n_cancel = t->n_recheck = 0;

    pthread_mutex_lock(&ws->lock);
    size_t need = (size_t)ws->count;
    if (grow_array((void **)&t->resume, &t->cap_resume, need, sizeof(*t->resume)) < 0 ||
        grow_array((void **)&t->cancel, &t->cap_cancel, need, sizeof(*t->cancel)) < 0) {
        pthread_mutex_unlock(&ws->lock);
        return;
    }
    size_t cap_fds = t->cap_poll, cap_polled = t->cap_poll;
    if (grow_array((void **)&t->fds, &cap_fds, need, sizeof(*t->fds)) < 0 ||
        grow_array((void **)&t->polled, &cap_polled, need, sizeof(*t->polled)) < 0) {
        pthread_mutex_unlock(&ws->lock);
        return;
    }
    t->cap_poll = cap_fds < cap_polled ? cap_fds : cap_polled;

    size_t n_poll = 0;
    for (size_t b = 0; b < WAITERS_BUCKETS; b++) {
        struct waiter *w = ws->buckets[b];
        while (w) {
            struct waiter *next = w->next;
            if (now >= w->deadline_ms) {
                struct MHD_Connection *c = resolve_locked(ws, w, WAITER_TIMEOUT);
                if (c)
                    t->resume[t->n_resume++] = c;
            } else {
                if (w->suspended && w->fd >= 0 && n_poll < t->cap_poll) {
                    t->fds[n_poll] = (struct pollfd){.fd = w->fd, .events = POLLRDHUP};
                    t->polled[n_poll++] = w;
                }
                if ((all || now - w->checked_ms >= ws->recheck_ms) &&
                    t->n_recheck < WAITERS_RECHECK_MAX) {
                    w->checked_ms = now;
                    memcpy(t->recheck[t->n_recheck++], w->id, QUEUE_ID_MAX + 1);
                }
            }
            w = next;
        }
    }
    /* A suspended socket is not read by anyone, so POLLRDHUP/POLLHUP here
     * means the client closed its side. */
    if (n_poll > 0 && poll(t->fds, n_poll, 0) > 0) {
        for (size_t i = 0; i < n_poll; i++) {
            if (!(t->fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR)))
                continue;
            struct waiter *w = t->polled[i];
            if (w->kind == WAITER_RESULT)
                memcpy(t->cancel[t->n_cancel++], w->id, QUEUE_ID_MAX + 1);
            struct MHD_Connection *c = resolve_locked(ws, w, WAITER_GONE);
            if (c)
                t->resume[t->n_resume++] = c;
        }
    }
    long parked = ws->count;
    pthread_mutex_unlock(&ws->lock);

    for (size_t i = 0; i < t->n_resume; i++)
        MHD_resume_connection(t->resume[i]);
    metrics_set_parked(ws->metrics, parked);
}

static void *ticker_main(void *arg)
{
    struct waiters *ws = arg;
    struct tick_work t;
    memset(&t, 0, sizeof(t));
    t.recheck = calloc(WAITERS_RECHECK_MAX, sizeof(*t.recheck));
    while (t.recheck && !atomic_load(&ws->stopping)) {
        ticker_sleep(ws);
        tick_scan(ws, &t);
        for (size_t i = 0; i < t.n_cancel; i++) {
            enum queue_state before;
            if (queue_cancel(ws->ticker_q, t.cancel[i], &before) == 0 &&
                (before == QUEUE_QUEUED || before == QUEUE_RUNNING))
                log_info("client disconnected: cancelled job %s (it was %s)", t.cancel[i],
                         queue_state_name(before));
        }
        check_jobs(ws, ws->ticker_q, t.recheck, keep_awaited(ws, t.recheck, (int)t.n_recheck));
    }
    free(t.resume);
    free(t.cancel);
    free(t.recheck);
    free(t.fds);
    free(t.polled);
    return NULL;
}

void waiters_release_all(struct waiters *ws)
{
    struct MHD_Connection *resume[64];
    size_t n;
    do { /* 64 connections at a time; a pass that resumes fewer saw them all */
        n = 0;
        pthread_mutex_lock(&ws->lock);
        ws->closed = 1;
        for (size_t b = 0; b < WAITERS_BUCKETS && n < 64; b++) {
            struct waiter *w = ws->buckets[b];
            while (w && n < 64) {
                struct waiter *next = w->next;
                struct MHD_Connection *c = resolve_locked(ws, w, WAITER_SHUTDOWN);
                if (c)
                    resume[n++] = c;
                w = next;
            }
        }
        pthread_mutex_unlock(&ws->lock);
        for (size_t i = 0; i < n; i++)
            MHD_resume_connection(resume[i]);
    } while (n == 64);
}

static int open_queue(const struct waiters_opts *o, const char *role, struct queue **out, char *err,
                      size_t errlen)
{
    char name[64];
    snprintf(name, sizeof(name), "mr:api-%s:%.40s", role, o->api_id);
    return queue_create(out, o->redis, o->queue, name, err, errlen);
}

int waiters_start(struct waiters **out, const struct waiters_opts *o, char *err, size_t errlen)
{
    *out = NULL;
    struct waiters *ws = calloc(1, sizeof(*ws));
    if (!ws) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pthread_mutex_init(&ws->lock, NULL);
    pthread_mutex_init(&ws->sleep_lock, NULL);
    clock_cond_init(&ws->sleep_cond);
    snprintf(ws->api_id, sizeof(ws->api_id), "%s", o->api_id);
    ws->tick_ms = o->tick_ms > 0 ? o->tick_ms : 100;
    ws->recheck_ms = o->recheck_ms > 0 ? o->recheck_ms : 2000;
    ws->metrics = o->metrics;
    if (open_queue(o, "inbox", &ws->drain_q, err, errlen) < 0 ||
        open_queue(o, "ticker", &ws->ticker_q, err, errlen) < 0)
        goto fail;
    if (pthread_create(&ws->drain_thread, NULL, drain_main, ws) != 0)
        goto fail_thread;
    ws->drain_started = 1;
    if (pthread_create(&ws->ticker_thread, NULL, ticker_main, ws) != 0)
        goto fail_thread;
    ws->ticker_started = 1;
    *out = ws;
    return 0;
fail_thread:
    snprintf(err, errlen, "cannot start threads: %s", strerror(errno));
fail:
    waiters_stop(ws);
    return -1;
}

void waiters_stop(struct waiters *ws)
{
    if (!ws)
        return;
    atomic_store(&ws->stopping, 1);
    pthread_mutex_lock(&ws->sleep_lock);
    pthread_cond_broadcast(&ws->sleep_cond);
    pthread_mutex_unlock(&ws->sleep_lock);
    if (ws->drain_started)
        pthread_join(ws->drain_thread, NULL);
    if (ws->ticker_started)
        pthread_join(ws->ticker_thread, NULL);
    queue_destroy(ws->drain_q);
    queue_destroy(ws->ticker_q);
    pthread_cond_destroy(&ws->sleep_cond);
    pthread_mutex_destroy(&ws->sleep_lock);
    pthread_mutex_destroy(&ws->lock);
    free(ws);
}
