/*
 * sse: Server-Sent Events over libmicrohttpd and Redis Streams (see sse.h):
 * the HTTP side (opening a stream, its content reader, its release) and the
 * hub's life; the threads that feed the streams are in sse_pump.c.
 *
 * Key decision: every client's state lives under the hub's one lock, and
 * only the pump thread unlinks and frees clients, so the pump can do its
 * Redis I/O unlocked while holding plain pointers. Suspension follows
 * waiters.c's rule: a connection is resumed only after it was suspended and
 * marked so under the lock, by whoever clears the mark; the content reader
 * re-checks after suspending and resumes itself when events arrived
 * meanwhile. Lock order: the waiters' table lock, then the hub's (notify
 * runs under the first); the hub never calls waiters.c while holding its
 * lock.
 */
#include "api/sse.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "api/server.h"
#include "api/sse_hub.h"
#include "common/clock.h"
#include "common/grow.h"
#include "common/log.h"

#define SSE_BLOCK_MAX 16384 /* bytes libmicrohttpd asks the reader for at most */

/* ---- shared with the pump ------------------------------------------------- */

void sse_hub_poke_locked(struct sse *h)
{
    h->poked = 1;
    pthread_cond_signal(&h->pump_cond);
    if (h->blocking && !h->unblock) {
        h->unblock = 1;
        pthread_cond_signal(&h->waker_cond);
    }
}

/* Clear c's suspension mark; returns the connection to resume, or NULL. Locked. */
struct MHD_Connection *sse_hub_unsuspend_locked(struct sse_client *c)
{
    if (!c->suspended)
        return NULL;
    c->suspended = 0;
    return c->conn;
}

/* Events were appended to c. Locked. */
struct MHD_Connection *sse_hub_appended_locked(struct sse_client *c, int64_t now)
{
    c->sent_ms = now;
    return sse_hub_unsuspend_locked(c);
}

void sse_hub_resumes_add(struct sse_hub_resumes *r, struct MHD_Connection *c)
{
    if (!c)
        return;
    if (grow_array((void **)&r->v, &r->cap, r->n + 1, sizeof(*r->v)) < 0) {
        MHD_resume_connection(c); /* no memory to defer it: resume now, locked */
        return;
    }
    r->v[r->n++] = c;
}

void sse_hub_resumes_run(struct sse_hub_resumes *r)
{
    for (size_t i = 0; i < r->n; i++)
        MHD_resume_connection(r->v[i]);
    r->n = 0;
}

/* ---- the final event ------------------------------------------------------ */

/* Append c's final event from its waiter's outcome. Locked. */
void sse_hub_append_final_locked(struct sse_client *c)
{
    const struct queue_job_info *info = &c->w.info;
    int rc = 0;
    if (c->w.outcome == WAITER_FINISHED && info->state == QUEUE_DONE && info->result) {
        rc = sse_wire_done(&c->out, info->result);
    } else if (c->w.outcome == WAITER_FINISHED) {
        int status;
        const char *type, *message;
        server_job_failure(info, &status, &type, &message);
        rc = sse_wire_error(&c->out, 1, type, message, c->job);
    } else if (c->w.outcome == WAITER_LOST) {
        rc = sse_wire_error(&c->out, 1, "not_found", "no such job (or its result has expired)",
                            c->job);
    } else {
        rc = sse_wire_error(&c->out, 0, "shutting_down",
                            "this API instance is shutting down; the job goes on: resume with "
                            "Last-Event-ID on GET /jobs/{id}/stream",
                            c->job);
    }
    if (rc < 0) /* no memory for the event: end the stream without it */
        log_error("stream of job %s: out of memory for its final event", c->job);
    c->final_queued = 1;
}

void sse_hub_unlink_locked(struct sse *h, struct sse_client *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        h->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    h->count--;
}

void sse_hub_client_free(struct sse *h, struct sse_client *c)
{
    waiters_forget(h->ws, &c->w);
    queue_job_info_fini(&c->w.info);
    sse_wire_buf_fini(&c->out);
    free(c);
}

/* ---- the content reader ----------------------------------------------------- */

static ssize_t client_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct sse_client *c = cls;
    struct sse *h = c->hub;
    (void)pos;
    pthread_mutex_lock(&h->lock);
    size_t pending = sse_wire_pending(&c->out);
    if (c->gone) {
        pthread_mutex_unlock(&h->lock);
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    if (pending > 0) {
        size_t n = pending < max ? pending : max;
        memcpy(buf, c->out.p + c->out.off, n);
        sse_wire_consume(&c->out, n);
        if (pending >= h->buffer_max && pending - n < h->buffer_max)
            sse_hub_poke_locked(h); /* its stream may be read again */
        pthread_mutex_unlock(&h->lock);
        return (ssize_t)n;
    }
    if (c->final_queued) {
        c->ended = 1;
        pthread_mutex_unlock(&h->lock);
        return MHD_CONTENT_READER_END_OF_STREAM;
    }
    pthread_mutex_unlock(&h->lock);

    MHD_suspend_connection(c->conn);

    pthread_mutex_lock(&h->lock);
    int meanwhile = sse_wire_pending(&c->out) > 0 || c->final_queued || c->gone;
    if (!meanwhile)
        c->suspended = 1;
    pthread_mutex_unlock(&h->lock);
    if (meanwhile)
        MHD_resume_connection(c->conn);
    return 0;
}

/* libmicrohttpd released the response: the pump frees the client. */
static void client_release(void *cls)
{
    struct sse_client *c = cls;
    struct sse *h = c->hub;
    pthread_mutex_lock(&h->lock);
    c->closed = 1;
    c->suspended = 0; /* a released connection is never resumed */
    sse_hub_poke_locked(h);
    pthread_mutex_unlock(&h->lock);
}

/* The waiter resolved (under the waiters' lock). */
static void client_notify(void *arg, struct waiter *w)
{
    struct sse_client *c = arg;
    struct sse *h = c->hub;
    (void)w;
    pthread_mutex_lock(&h->lock);
    c->finished = 1;
    sse_hub_poke_locked(h);
    pthread_mutex_unlock(&h->lock);
}

/* ---- opening and closing ------------------------------------------------- */

int sse_position_parse(const char *v, struct sse_position *out)
{
    memset(out, 0, sizeof(*out));
    out->deltas = 1;
    if (!v) {
        out->job_event = 1;
        return 0;
    }
    if (strcmp(v, "job") == 0)
        return 0;
    if (strcmp(v, "done") == 0) {
        out->deltas = 0;
        return 0;
    }
    return sse_wire_id_parse(v, strlen(v), &out->after) == 0 ? 0 : -1;
}

int sse_client_open(struct sse *h, const char *job_id, const struct sse_position *pos,
                    int cancel_on_close, struct MHD_Connection *conn, int fd,
                    struct sse_client **out)
{
    *out = NULL;
    struct sse_client *c = calloc(1, sizeof(*c));
    if (!c)
        return -1;
    c->hub = h;
    snprintf(c->job, sizeof(c->job), "%s", job_id);
    snprintf(c->key, sizeof(c->key), "%s:stream:%s", h->prefix, job_id);
    c->conn = conn;
    c->fd = fd;
    c->cancel_on_close = cancel_on_close;
    c->deltas = pos->deltas;
    c->last = pos->after;
    c->sent_ms = clock_now_ms();
    if (pos->job_event && sse_wire_job(&c->out, job_id) < 0) {
        free(c);
        return -1;
    }
    snprintf(c->w.id, sizeof(c->w.id), "%s", job_id);
    c->w.conn = conn;
    c->w.notify = client_notify;
    c->w.notify_arg = c;

    pthread_mutex_lock(&h->lock);
    c->next = h->clients;
    if (h->clients)
        h->clients->prev = c;
    h->clients = c;
    h->count++;
    if (h->released) /* shutting down: end it at once */
        sse_hub_append_final_locked(c);
    sse_hub_poke_locked(h);
    pthread_mutex_unlock(&h->lock);

    waiters_watch(h->ws, &c->w);
    *out = c;
    return 0;
}

struct waiter *sse_client_waiter(struct sse_client *c)
{
    return &c->w;
}

void sse_client_abandon(struct sse_client *c)
{
    struct sse *h = c->hub;
    pthread_mutex_lock(&h->lock);
    c->cancel_on_close = 0;
    c->closed = 1;
    sse_hub_poke_locked(h);
    pthread_mutex_unlock(&h->lock);
}

int sse_client_respond(struct sse_client *c)
{
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, SSE_BLOCK_MAX,
                                                                  client_read, c, client_release);
    if (!resp) {
        client_release(c);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no"); /* nginx: do not buffer */
    enum MHD_Result rc = MHD_queue_response(c->conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp); /* when the queueing failed, this releases c */
    return rc;
}

long sse_count(struct sse *h)
{
    pthread_mutex_lock(&h->lock);
    long n = h->count;
    pthread_mutex_unlock(&h->lock);
    return n;
}

void sse_release_all(struct sse *h)
{
    struct sse_hub_resumes r = {0};
    pthread_mutex_lock(&h->lock);
    h->released = 1;
    for (struct sse_client *c = h->clients; c; c = c->next) {
        if (c->closed || c->final_queued)
            continue;
        c->cancel_on_close = 0;
        sse_hub_append_final_locked(c);
        sse_hub_resumes_add(&r, sse_hub_appended_locked(c, clock_now_ms()));
    }
    sse_hub_poke_locked(h);
    pthread_mutex_unlock(&h->lock);
    sse_hub_resumes_run(&r);
    free(r.v);
}

/* ---- start and stop ------------------------------------------------------- */

int sse_start(struct sse **out, const struct sse_opts *o, char *err, size_t errlen)
{
    *out = NULL;
    struct sse *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    snprintf(h->prefix, sizeof(h->prefix), "%s", o->queue->prefix);
    snprintf(h->api_id, sizeof(h->api_id), "%s", o->api_id);
    h->ws = o->waiters;
    h->block_ms = o->block_ms > 0 ? o->block_ms : 100;
    h->ping_ms = o->ping_ms > 0 ? o->ping_ms : 15000;
    h->buffer_max = o->buffer_max > 0 ? o->buffer_max : 65536;
    pthread_mutex_init(&h->lock, NULL);
    clock_cond_init(&h->pump_cond); /* timed waits in sse_pump.c */
    pthread_cond_init(&h->waker_cond, NULL);
    char name[64];
    snprintf(name, sizeof(name), "mr:api-sse:%.40s", o->api_id);
    if (queue_create(&h->q, o->redis, o->queue, name, err, errlen) < 0)
        goto fail;
    struct redis_opts wo = *o->redis;
    wo.retry_ms = 0; /* a lost wake-up costs one block, not a retry loop */
    snprintf(name, sizeof(name), "mr:api-sse-waker:%.40s", o->api_id);
    if (redis_conn_create(&h->waker_rc, &wo, name) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    int e = pthread_create(&h->pump, NULL, sse_pump_main, h);
    h->pump_started = e == 0;
    if (e == 0) {
        e = pthread_create(&h->waker, NULL, sse_pump_waker_main, h);
        h->waker_started = e == 0;
    }
    if (e != 0) {
        snprintf(err, errlen, "cannot start the stream threads: %s", strerror(e));
        goto fail;
    }
    *out = h;
    return 0;
fail:
    sse_stop(h);
    return -1;
}

void sse_stop(struct sse *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    h->stopping = 1;
    pthread_cond_broadcast(&h->pump_cond);
    pthread_cond_broadcast(&h->waker_cond);
    pthread_mutex_unlock(&h->lock);
    if (h->pump_started)
        pthread_join(h->pump, NULL);
    if (h->waker_started)
        pthread_join(h->waker, NULL);
    while (h->clients) {
        struct sse_client *c = h->clients;
        sse_hub_unlink_locked(h, c);
        sse_hub_client_free(h, c);
    }
    queue_destroy(h->q);
    redis_conn_destroy(h->waker_rc);
    pthread_cond_destroy(&h->waker_cond);
    pthread_cond_destroy(&h->pump_cond);
    pthread_mutex_destroy(&h->lock);
    free(h);
}
