/*
 * sse_pump: the threads that feed the event streams (see sse.h).
 *
 * The pump loops: sort the clients out under the lock (closed ones to free,
 * finished ones to drain, the rest to read; pings appended), then unlocked:
 * free the closed (cancelling a POST /generate's job when its client left
 * early), poll suspended sockets for hang-ups, read each finished job's
 * stream to its end and append its final event, and one XREAD over every
 * other stream, each client from its own last entry (clients of one job
 * share a read from the earliest of them). The XREAD blocks up to block_ms
 * unless something is already waiting; the waker interrupts it (CLIENT
 * UNBLOCK) when a job finishes or a stream opens or closes.
 *
 * Key decision: a client's position only moves when its events are in its
 * buffer, and entries at or before it are skipped, so whatever the
 * interleaving of XREAD, the final drain and a resumed Last-Event-ID, each
 * delta goes out exactly once and in order.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "api/sse_hub.h"
#include "common/clock.h"
#include "common/grow.h"
#include "common/log.h"

#define SSE_PUMP_XREAD_MAX 128 /* entries per stream per XREAD */
#define SSE_PUMP_DRAIN_MAX 512 /* entries per XRANGE when draining a finished job */

/* A client the pump works on outside the lock, with what it knew then. */
struct job_ref {
    struct sse_client *c;
    struct sse_wire_id last;
};

/* Clients reading the same stream: reads[first, first + n), from `from`. */
struct group {
    size_t first, n;
    struct sse_wire_id from; /* the earliest position among them */
    char from_s[SSE_WIRE_ID_MAX];
};

/* The pump's work lists, kept from pass to pass. */
struct pump_work {
    struct sse_client **reap;
    size_t n_reap, cap_reap;
    struct job_ref *finals, *reads;
    size_t n_finals, cap_finals, n_reads, cap_reads;
    struct pollfd *fds;
    struct sse_client **polled;
    size_t n_poll, cap_poll;
    struct group *groups; /* of reads, for one XREAD */
    size_t cap_groups;
    const char **argv; /* the XREAD */
    size_t cap_argv;
    struct sse_hub_resumes resumes;
};

/* A Redis call of the pump failed: log it once per outage (the next pass
 * tries again). */
static void redis_trouble(struct sse *h, const char *why)
{
    if (!h->failing)
        log_warn("streams: cannot read the job streams: %s (retrying)", why);
    h->failing = 1;
}

/* Sort out every client (locked): closed ones are unlinked for reaping,
 * finished ones drained, the others read; pings are appended here. Returns
 * -1 when out of memory (the pass is skipped). */
static int collect_locked(struct sse *h, struct pump_work *wk)
{
    size_t need = (size_t)h->count;
    wk->n_reap = wk->n_finals = wk->n_reads = wk->n_poll = 0;
    size_t cap_fds = wk->cap_poll, cap_polled = wk->cap_poll;
    if (grow_array((void **)&wk->reap, &wk->cap_reap, need, sizeof(*wk->reap)) < 0 ||
        grow_array((void **)&wk->finals, &wk->cap_finals, need, sizeof(*wk->finals)) < 0 ||
        grow_array((void **)&wk->reads, &wk->cap_reads, need, sizeof(*wk->reads)) < 0 ||
        grow_array((void **)&wk->fds, &cap_fds, need, sizeof(*wk->fds)) < 0 ||
        grow_array((void **)&wk->polled, &cap_polled, need, sizeof(*wk->polled)) < 0)
        return -1;
    wk->cap_poll = cap_fds < cap_polled ? cap_fds : cap_polled;
    int64_t now = clock_now_ms();
    struct sse_client *c = h->clients;
    while (c) {
        struct sse_client *next = c->next;
        if (c->closed) {
            sse_hub_unlink_locked(h, c);
            wk->reap[wk->n_reap++] = c;
            c = next;
            continue;
        }
        if (c->suspended && c->fd >= 0) {
            wk->fds[wk->n_poll] = (struct pollfd){.fd = c->fd, .events = POLLRDHUP};
            wk->polled[wk->n_poll++] = c;
        }
        if (!c->final_queued && !c->gone) {
            int room = sse_wire_pending(&c->out) < h->buffer_max;
            if (c->finished && room)
                wk->finals[wk->n_finals++] = (struct job_ref){c, c->last};
            else if (!c->finished && c->deltas && room)
                wk->reads[wk->n_reads++] = (struct job_ref){c, c->last};
            if (!c->finished && sse_wire_pending(&c->out) == 0 && now - c->sent_ms >= h->ping_ms &&
                sse_wire_ping(&c->out) == 0)
                sse_hub_resumes_add(&wk->resumes, sse_hub_appended_locked(c, now));
        }
        c = next;
    }
    return 0;
}

/* Forget, cancel when its client left a POST /generate early, and free. */
static void reap(struct sse *h, struct pump_work *wk)
{
    for (size_t i = 0; i < wk->n_reap; i++) {
        struct sse_client *c = wk->reap[i];
        if (c->cancel_on_close && !c->ended) {
            enum queue_state before;
            if (queue_cancel(h->q, c->job, &before) == 0 &&
                (before == QUEUE_QUEUED || before == QUEUE_RUNNING))
                log_info("stream client disconnected: cancelled job %s (it was %s)", c->job,
                         queue_state_name(before));
        }
        sse_hub_client_free(h, c);
    }
}

/* A suspended socket is read by nobody, so a hang-up shows as POLLRDHUP. */
static void poll_hangups(struct sse *h, struct pump_work *wk)
{
    if (wk->n_poll == 0 || poll(wk->fds, wk->n_poll, 0) <= 0)
        return;
    pthread_mutex_lock(&h->lock);
    for (size_t i = 0; i < wk->n_poll; i++) {
        if (!(wk->fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR)))
            continue;
        struct sse_client *c = wk->polled[i];
        if (c->closed)
            continue;
        c->gone = 1;
        sse_hub_resumes_add(&wk->resumes, sse_hub_unsuspend_locked(c));
    }
    pthread_mutex_unlock(&h->lock);
    sse_hub_resumes_run(&wk->resumes);
}

/* Append stream entry `eid` (eid_len bytes) to c as a delta, preceded by a
 * reset event when a new attempt (a re-run after a lost worker) starts over,
 * unless it is at or before c->last. Locked. Returns 1 when appended, 0 when
 * skipped, -1 when out of memory. */
static int append_entry_locked(struct sse_client *c, const char *eid, size_t eid_len, long attempt,
                               int sample, const char *text, size_t len)
{
    struct sse_wire_id id;
    if (sse_wire_id_parse(eid, eid_len, &id) < 0 || sse_wire_id_cmp(&id, &c->last) <= 0)
        return 0;
    if (c->attempt != 0 && attempt != c->attempt && sse_wire_reset(&c->out, attempt) < 0)
        return -1;
    if (sse_wire_delta(&c->out, &id, attempt, sample, text, len) < 0)
        return -1;
    c->attempt = attempt;
    c->last = id;
    return 1;
}

/* Append the entries after c->last to c (locked); returns how many. */
static size_t append_entries_locked(struct sse_client *c, const struct queue_stream_entry *e, int n)
{
    size_t added = 0;
    for (int i = 0; i < n; i++) {
        int rc = append_entry_locked(c, e[i].event_id, strlen(e[i].event_id), e[i].attempt,
                                     e[i].sample, e[i].text, e[i].len);
        if (rc < 0)
            break; /* no memory: read it again later */
        added += (size_t)rc;
    }
    return added;
}

/* Read the rest of each finished job's stream, then its final event. */
static void drain_finals(struct sse *h, struct pump_work *wk)
{
    for (size_t i = 0; i < wk->n_finals; i++) {
        struct sse_client *c = wk->finals[i].c;
        struct queue_stream_entry *e = NULL;
        int n = 0, complete = 1;
        /* only a job that ended has all its deltas; a shutdown ends at once */
        if (c->deltas && (c->w.outcome == WAITER_FINISHED || c->w.outcome == WAITER_LOST)) {
            char after[SSE_WIRE_ID_MAX];
            sse_wire_id_format(&wk->finals[i].last, after);
            if (queue_stream_read(h->q, c->job, after, SSE_PUMP_DRAIN_MAX, &e, &n) < 0) {
                redis_trouble(h, queue_errstr(h->q));
                continue;
            }
            complete = n < SSE_PUMP_DRAIN_MAX;
        }
        pthread_mutex_lock(&h->lock);
        int64_t now = clock_now_ms();
        if (!c->closed && !c->final_queued) {
            size_t added = append_entries_locked(c, e, n);
            if (complete)
                sse_hub_append_final_locked(c);
            if (added || complete)
                sse_hub_resumes_add(&wk->resumes, sse_hub_appended_locked(c, now));
            if (!complete)
                h->poked = 1; /* more to read: do not block */
        }
        pthread_mutex_unlock(&h->lock);
        queue_stream_entries_free(e, n);
    }
    sse_hub_resumes_run(&wk->resumes);
}

/* ---- XREAD ---------------------------------------------------------------- */

static int cmp_ref_key(const void *a, const void *b)
{
    const struct job_ref *x = a, *y = b;
    return strcmp(x->c->key, y->c->key);
}

/* Append the XREAD entries of one stream (an array of [id, [field, value,
 * ...]]) to c after its last id. Locked. Returns how many. */
static size_t append_reply_locked(struct sse_client *c, const redisReply *entries)
{
    size_t added = 0;
    for (size_t i = 0; i < entries->elements; i++) {
        const redisReply *ent = entries->element[i];
        if (ent->type != REDIS_REPLY_ARRAY || ent->elements != 2 ||
            ent->element[0]->type != REDIS_REPLY_STRING)
            continue;
        const redisReply *f = ent->element[1];
        int sample = 0;
        long attempt = 1;
        const char *text = "";
        size_t len = 0;
        for (size_t k = 0; f->type == REDIS_REPLY_ARRAY && k + 1 < f->elements; k += 2) {
            const redisReply *name = f->element[k], *val = f->element[k + 1];
            if (name->type != REDIS_REPLY_STRING || val->type != REDIS_REPLY_STRING)
                continue;
            if (strcmp(name->str, "sample") == 0)
                sample = atoi(val->str);
            else if (strcmp(name->str, "attempt") == 0)
                attempt = atol(val->str);
            else if (strcmp(name->str, "text") == 0) {
                text = val->str;
                len = val->len;
            }
        }
        int rc = append_entry_locked(c, ent->element[0]->str, ent->element[0]->len, attempt, sample,
                                     text, len);
        if (rc < 0)
            break; /* no memory: read it again later */
        added += (size_t)rc;
    }
    return added;
}

/* Learn the pump connection's CLIENT ID when it (re)connected, so the waker
 * can interrupt its XREAD. */
static void refresh_client_id(struct sse *h, unsigned long *gen)
{
    struct redis_conn *rc = queue_conn(h->q);
    if (*gen != 0 && *gen == redis_conn_generation(rc))
        return;
    redisReply *r;
    if (redis_conn_cmd(rc, &r, "CLIENT ID") < 0)
        return;
    long long cid = r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
    freeReplyObject(r);
    *gen = redis_conn_generation(rc);
    pthread_mutex_lock(&h->lock);
    h->pump_cid = cid;
    pthread_mutex_unlock(&h->lock);
}

/* Hand one XREAD reply to the clients of the streams it names. */
static void deliver(struct sse *h, struct pump_work *wk, const struct group *g, size_t ng,
                    const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY)
        return; /* nil: the block timed out */
    int64_t now = clock_now_ms();
    pthread_mutex_lock(&h->lock);
    for (size_t s = 0; s < r->elements; s++) {
        const redisReply *st = r->element[s];
        if (st->type != REDIS_REPLY_ARRAY || st->elements != 2 ||
            st->element[0]->type != REDIS_REPLY_STRING || st->element[1]->type != REDIS_REPLY_ARRAY)
            continue;
        size_t lo = 0, hi = ng; /* groups are sorted by key */
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            int d = strcmp(wk->reads[g[mid].first].c->key, st->element[0]->str);
            if (d == 0) {
                lo = mid;
                break;
            }
            if (d < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo >= ng || strcmp(wk->reads[g[lo].first].c->key, st->element[0]->str) != 0)
            continue;
        for (size_t i = g[lo].first; i < g[lo].first + g[lo].n; i++) {
            struct sse_client *c = wk->reads[i].c;
            if (c->closed || c->final_queued || c->gone)
                continue;
            if (append_reply_locked(c, st->element[1]) > 0)
                sse_hub_resumes_add(&wk->resumes, sse_hub_appended_locked(c, now));
        }
    }
    pthread_mutex_unlock(&h->lock);
    sse_hub_resumes_run(&wk->resumes);
}

/* One XREAD over every stream that has a reader, blocking up to block_ms
 * unless something is already waiting to be done. */
static void read_streams(struct sse *h, struct pump_work *wk, unsigned long *cid_gen)
{
    size_t nr = wk->n_reads;
    if (nr == 0) {
        pthread_mutex_lock(&h->lock);
        if (!h->poked && !h->stopping)
            clock_cond_wait_ms(&h->pump_cond, &h->lock, h->block_ms);
        pthread_mutex_unlock(&h->lock);
        return;
    }
    qsort(wk->reads, nr, sizeof(*wk->reads), cmp_ref_key);
    if (grow_array((void **)&wk->groups, &wk->cap_groups, nr, sizeof(*wk->groups)) < 0 ||
        grow_array((void **)&wk->argv, &wk->cap_argv, 7 + 2 * nr, sizeof(*wk->argv)) < 0) {
        clock_sleep_ms(h->block_ms); /* out of memory: try again later */
        return;
    }
    struct group *g = wk->groups;
    const char **argv = wk->argv;
    size_t ng = 0;
    for (size_t i = 0; i < nr; i++) {
        if (ng > 0 && strcmp(wk->reads[g[ng - 1].first].c->key, wk->reads[i].c->key) == 0) {
            g[ng - 1].n++;
            if (sse_wire_id_cmp(&wk->reads[i].last, &g[ng - 1].from) < 0)
                g[ng - 1].from = wk->reads[i].last;
            continue;
        }
        g[ng++] = (struct group){.first = i, .n = 1, .from = wk->reads[i].last};
    }
    refresh_client_id(h, cid_gen);

    char count[16], block[16];
    snprintf(count, sizeof(count), "%d", SSE_PUMP_XREAD_MAX);
    snprintf(block, sizeof(block), "%d", h->block_ms);
    pthread_mutex_lock(&h->lock);
    int blocking = !h->poked && !h->stopping;
    h->blocking = blocking;
    pthread_mutex_unlock(&h->lock);
    int argc = 0;
    argv[argc++] = "XREAD";
    argv[argc++] = "COUNT";
    argv[argc++] = count;
    if (blocking) {
        argv[argc++] = "BLOCK";
        argv[argc++] = block;
    }
    argv[argc++] = "STREAMS";
    for (size_t i = 0; i < ng; i++)
        argv[argc++] = wk->reads[g[i].first].c->key;
    for (size_t i = 0; i < ng; i++) {
        sse_wire_id_format(&g[i].from, g[i].from_s);
        argv[argc++] = g[i].from_s;
    }
    redisReply *r = NULL;
    struct redis_conn *rc = queue_conn(h->q);
    int err = blocking ? redis_conn_call_blocking(rc, h->block_ms, &r, argc, argv, NULL)
                       : redis_conn_call(rc, &r, argc, argv, NULL);
    pthread_mutex_lock(&h->lock);
    h->blocking = 0;
    pthread_mutex_unlock(&h->lock);
    if (err < 0) {
        redis_trouble(h, redis_conn_errstr(rc));
        clock_sleep_ms(h->block_ms); /* the connection backs off by itself too */
    } else {
        if (h->failing)
            log_info("streams: Redis answers again");
        h->failing = 0;
        deliver(h, wk, g, ng, r);
        freeReplyObject(r);
    }
}

void *sse_pump_main(void *arg)
{
    struct sse *h = arg;
    struct pump_work wk;
    unsigned long cid_gen = 0;
    memset(&wk, 0, sizeof(wk));
    pthread_mutex_lock(&h->lock);
    while (!h->stopping) {
        if (!h->clients) {
            pthread_cond_wait(&h->pump_cond, &h->lock);
            continue;
        }
        h->poked = 0;
        int ok = collect_locked(h, &wk) == 0;
        pthread_mutex_unlock(&h->lock);
        sse_hub_resumes_run(&wk.resumes);
        if (ok) {
            reap(h, &wk);
            poll_hangups(h, &wk);
            drain_finals(h, &wk);
            read_streams(h, &wk, &cid_gen);
        } else {
            clock_sleep_ms(h->block_ms); /* out of memory: try again later */
        }
        pthread_mutex_lock(&h->lock);
    }
    pthread_mutex_unlock(&h->lock);
    free(wk.reap);
    free(wk.finals);
    free(wk.reads);
    free(wk.fds);
    free(wk.polled);
    free(wk.groups);
    free(wk.argv);
    free(wk.resumes.v);
    return NULL;
}

/* Interrupts the pump's blocking XREAD when it has something to do. The
 * XREAD may not have reached Redis yet when asked (CLIENT UNBLOCK answers
 * 0): try again for a few ms, then let the block time out. */
void *sse_pump_waker_main(void *arg)
{
    struct sse *h = arg;
    pthread_mutex_lock(&h->lock);
    while (!h->stopping) {
        if (!h->unblock) {
            pthread_cond_wait(&h->waker_cond, &h->lock);
            continue;
        }
        h->unblock = 0;
        for (int tries = 0; tries < 20 && h->blocking && !h->stopping && h->pump_cid > 0; tries++) {
            long long cid = h->pump_cid;
            pthread_mutex_unlock(&h->lock);
            redisReply *r;
            int done = 0;
            if (redis_conn_cmd(h->waker_rc, &r, "CLIENT UNBLOCK %lld", cid) == 0) {
                done = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
                freeReplyObject(r);
            }
            if (!done)
                clock_sleep_ms(1);
            pthread_mutex_lock(&h->lock);
            if (done)
                break;
        }
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}
