/*
 * routes: what each endpoint of millrace-api does (see routes.h).
 *
 * Key decision: register before looking. A request that will wait for a job
 * is parked (waiters.c) before the job is enqueued, or before a long poll's
 * first read of its state (which also registers this instance as a watcher
 * in Redis), so a job that finishes at any moment wakes it.
 */
#include "api/routes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <microhttpd.h>

#include "api/server.h"
#include "api/sse.h"
#include "api/status.h"
#include "common/clock.h"
#include "common/ids.h"
#include "common/log.h"

/* ---- classify --------------------------------------------------------- */

static int method_is(const char *m, const char *want)
{
    return strcmp(m, want) == 0;
}

static int not_allowed(struct api_request *r, const char *allow)
{
    struct api_header h = {"Allow", allow};
    char msg[128];
    snprintf(msg, sizeof(msg), "%s is not allowed here; allowed: %s", r->method, allow);
    server_error(r, 405, "method_not_allowed", msg, NULL, NULL, &h, 1);
    return -1;
}

/* The id in /jobs/{id}, or NULL when url is not of that shape. */
static const char *job_id_of(const char *url)
{
    if (strncmp(url, "/jobs/", 6) != 0)
        return NULL;
    return url + 6;
}

/* The id in /jobs/{id}/stream into out, or NULL when url is not of that shape. */
static const char *stream_id_of(const char *url, char out[QUEUE_ID_MAX + 1])
{
    const char *id = job_id_of(url);
    const char *slash = id ? strchr(id, '/') : NULL;
    if (!slash || strcmp(slash, "/stream") != 0 || (size_t)(slash - id) > QUEUE_ID_MAX)
        return NULL;
    memcpy(out, id, (size_t)(slash - id));
    out[slash - id] = '\0';
    return ids_job_id_valid(out) ? out : NULL;
}

int routes_classify(struct api_request *r, const char *url, const char *method)
{
    int get = method_is(method, "GET") || method_is(method, "HEAD");
    if (strcmp(url, "/generate") == 0) {
        r->route = METRICS_ROUTE_GENERATE;
        return method_is(method, "POST") ? ROUTES_NEED_BODY | ROUTES_NEED_AUTH
                                         : not_allowed(r, "POST");
    }
    if (strcmp(url, "/jobs") == 0) {
        r->route = METRICS_ROUTE_JOBS_SUBMIT;
        return method_is(method, "POST") ? ROUTES_NEED_BODY | ROUTES_NEED_AUTH
                                         : not_allowed(r, "POST");
    }
    char sid[QUEUE_ID_MAX + 1];
    if (stream_id_of(url, sid)) {
        r->route = METRICS_ROUTE_JOBS_STREAM;
        return method_is(method, "GET") ? ROUTES_NEED_AUTH : not_allowed(r, "GET");
    }
    const char *id = job_id_of(url);
    if (id && ids_job_id_valid(id)) {
        if (get) {
            r->route = METRICS_ROUTE_JOBS_GET;
            return ROUTES_NEED_AUTH;
        }
        if (method_is(method, "DELETE")) {
            r->route = METRICS_ROUTE_JOBS_DELETE;
            return ROUTES_NEED_AUTH;
        }
        return not_allowed(r, "GET, HEAD, DELETE");
    }
    if (strcmp(url, "/health") == 0 || strcmp(url, "/stats") == 0 || strcmp(url, "/metrics") == 0) {
        r->route = url[1] == 'h'   ? METRICS_ROUTE_HEALTH
                   : url[1] == 's' ? METRICS_ROUTE_STATS
                                   : METRICS_ROUTE_METRICS;
        if (!get)
            return not_allowed(r, "GET, HEAD");
        return r->route == METRICS_ROUTE_STATS ? ROUTES_NEED_AUTH : ROUTES_NEED_NONE;
    }
    char msg[200];
    snprintf(msg, sizeof(msg), "no such endpoint: %.120s", url);
    server_error(r, 404, "not_found", msg, NULL, NULL, NULL, 0);
    return -1;
}

/* ---- helpers ---------------------------------------------------------- */

static int reply_json(struct api_request *r, int status, json_t *root,
                      const struct api_header *headers, size_t n)
{
    /* 15 digits: Unix times to the millisecond, without binary noise */
    char *text =
        root ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15))
             : NULL;
    json_decref(root);
    if (!text)
        return server_error(r, 500, "internal_error", "out of memory", NULL, NULL, NULL, 0);
    int rc = server_reply(r, status, text, strlen(text), headers, n);
    free(text);
    return rc;
}

/* Why Redis could not do what we asked (rc from a call on q), into msg; logged. */
static void redis_message(struct api_request *r, int rc, struct queue *q, char *msg, size_t len)
{
    snprintf(msg, len, "%s: %s",
             rc == QUEUE_EDOWN ? "Redis is unreachable" : "Redis refused the request",
             queue_errstr(q));
    log_warn("%s %s: %s", r->method, r->path, msg);
}

/* The answer when Redis could not do what we asked. */
static int redis_trouble(struct api_request *r, int rc, struct queue *q)
{
    char retry[16], msg[400];
    redis_message(r, rc, q, msg, sizeof(msg));
    snprintf(retry, sizeof(retry), "%d", server_config(r->srv)->retry_after_s);
    struct api_header h = {"Retry-After", retry};
    return server_error(r, 503, "unavailable", msg, NULL, NULL, &h, 1);
}

static int no_such_job(struct api_request *r, const char *id)
{
    return server_error(r, 404, "not_found", "no such job (or its result has expired)", NULL, id,
                        NULL, 0);
}

/* The client's socket, or -1. */
static int conn_fd(struct api_request *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* {"id", "status", "position"?, "attempts", "created", "started"?, "finished"?,
 *  "response"? | "error"?} */
static json_t *job_json(const char *id, const struct queue_job_info *info)
{
    json_t *o = json_pack("{s:s, s:s}", "id", id, "status", queue_state_name(info->state));
    if (!o)
        return NULL;
    if (info->state == QUEUE_QUEUED && info->position >= 0)
        json_object_set_new(o, "position", json_integer(info->position));
    json_object_set_new(o, "attempts", json_integer(info->attempts));
    json_object_set_new(o, "created", json_real(info->created));
    if (info->started > 0)
        json_object_set_new(o, "started", json_real(info->started));
    if (info->finished > 0)
        json_object_set_new(o, "finished", json_real(info->finished));
    if (info->state == QUEUE_DONE && info->result) {
        json_t *resp = json_loads(info->result, JSON_DECODE_ANY, NULL);
        json_object_set_new(o, "response", resp ? resp : json_string(info->result));
    }
    if (info->state == QUEUE_FAILED || info->state == QUEUE_CANCELLED) {
        int status;
        const char *type, *message;
        server_job_failure(info, &status, &type, &message);
        json_object_set_new(o, "error", json_pack("{s:s, s:s}", "type", type, "message", message));
    }
    return o;
}

/* The answer to a synchronous /generate once its job has finished. */
static int reply_final(struct api_request *r, const struct queue_job_info *info)
{
    switch (info->state) {
    case QUEUE_DONE:
        if (!info->result)
            break;
        return server_reply(r, 200, info->result, strlen(info->result), NULL, 0);
    case QUEUE_FAILED:
    case QUEUE_CANCELLED: {
        int status;
        const char *type, *message;
        server_job_failure(info, &status, &type, &message);
        return server_error(r, status, type, message, NULL, r->job_id, NULL, 0);
    }
    default:
        break;
    }
    return server_error(r, 500, "internal_error", "the job finished without a result", NULL,
                        r->job_id, NULL, 0);
}

static void park(struct api_request *r, const char *id, enum waiter_kind kind, int64_t wait_ms)
{
    snprintf(r->w.id, sizeof(r->w.id), "%s", id);
    r->w.kind = kind;
    r->w.conn = r->conn;
    r->w.fd = conn_fd(r);
    r->w.deadline_ms = clock_now_ms() + wait_ms;
    r->parked = 1;
    waiters_park(server_waiters(r->srv), &r->w);
}

/* A parked request failed before it could wait: answer through resume. */
static int fail_parked(struct api_request *r, int status, const char *type, const char *msg)
{
    r->err_status = status;
    r->err_type = type;
    snprintf(r->err_message, sizeof(r->err_message), "%s", msg);
    waiters_resolve(server_waiters(r->srv), &r->w, WAITER_ERROR, NULL);
    return MHD_YES;
}

/* Read w's job once, registering this instance as its watcher for watch_s
 * seconds, and resolve w at once when the job is already over. Call after
 * registering w (register-then-check). Returns 0, QUEUE_ENOJOB or an error. */
static int look_once(struct api_request *r, struct queue *q, struct waiter *w, int watch_s)
{
    struct queue_job_info info;
    int rc = queue_job_get(q, w->id, server_config(r->srv)->api_id, watch_s, &info);
    if (rc < 0)
        return rc;
    if (info.state == QUEUE_DONE || info.state == QUEUE_FAILED || info.state == QUEUE_CANCELLED)
        waiters_resolve(server_waiters(r->srv), w, WAITER_FINISHED, &info);
    else
        queue_job_info_fini(&info);
    return 0;
}

/* look_once for a parked request: a job that is gone or a Redis failure
 * wakes it too. */
static void first_look(struct api_request *r, struct queue *q, int watch_s)
{
    int rc = look_once(r, q, &r->w, watch_s);
    if (rc == QUEUE_ENOJOB) {
        waiters_resolve(server_waiters(r->srv), &r->w, WAITER_LOST, NULL);
    } else if (rc < 0) {
        char msg[400];
        redis_message(r, rc, q, msg, sizeof(msg));
        fail_parked(r, 503, "unavailable", msg);
    }
}

/* ---- event streams ------------------------------------------------------ */

/* Open an event stream of job `id` for r (see sse_client_open). */
static int open_stream(struct api_request *r, const char *id, const struct sse_position *pos,
                       int cancel_on_close, struct sse_client **out)
{
    return sse_client_open(server_sse(r->srv), id, pos, cancel_on_close, r->conn, conn_fd(r), out);
}

/*
 * Look at a stream's job once after opening it (register-then-check, as
 * first_look): a job already over resolves the stream's waiter now. Returns
 * 0, or -1 after abandoning sc and queueing an error answer into *ret (404
 * for a job that does not exist, 503 when Redis is unreachable).
 */
static int stream_first_look(struct api_request *r, struct queue *q, struct sse_client *sc,
                             const char *id, int *ret)
{
    int rc = look_once(r, q, sse_client_waiter(sc), server_config(r->srv)->request_timeout_s + 5);
    if (rc == 0)
        return 0;
    sse_client_abandon(sc);
    *ret = rc == QUEUE_ENOJOB ? no_such_job(r, id) : redis_trouble(r, rc, q);
    return -1;
}

/* Answer r with sc's event stream. */
static int respond_stream(struct api_request *r, struct sse_client *sc)
{
    int rc = sse_client_respond(sc);
    if (rc == MHD_YES)
        r->status = 200;
    return rc;
}

/* GET /jobs/{id}/stream: the job's events from the start, or after the
 * Last-Event-ID the client got. Does not cancel the job when the client
 * leaves. */
static int handle_stream(struct api_request *r, const char *id)
{
    const char *lei = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Last-Event-ID");
    struct sse_position pos;
    snprintf(r->job_id, sizeof(r->job_id), "%s", id);
    if (sse_position_parse(lei, &pos) < 0)
        return server_error(r, 400, "invalid_request",
                            "Last-Event-ID must be the id of an event of this stream: a stream "
                            "entry id such as 1700000000000-0, \"job\" or \"done\"",
                            "Last-Event-ID", id, NULL, 0);
    struct sse_client *sc;
    if (open_stream(r, id, &pos, 0, &sc) < 0)
        return server_error(r, 500, "internal_error", "out of memory", NULL, id, NULL, 0);
    struct queue *q = server_queue_take(r->srv);
    int ret;
    if (stream_first_look(r, q, sc, id, &ret) == 0)
        ret = respond_stream(r, sc);
    server_queue_give(r->srv, q);
    return ret;
}

/* ---- POST /generate and POST /jobs -------------------------------------- */

static int idempotency_key(struct api_request *r, const char **out)
{
    const char *k = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Idempotency-Key");
    *out = NULL;
    if (!k)
        return 0;
    size_t n = strlen(k);
    int ok = n > 0 && n <= 255;
    for (size_t i = 0; ok && i < n; i++)
        ok = k[i] > ' ' && k[i] < 0x7f;
    if (!ok) {
        server_error(r, 400, "invalid_request",
                     "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces",
                     "Idempotency-Key", NULL, NULL, 0);
        return -1;
    }
    *out = k;
    return 0;
}

static int handle_submit(struct api_request *r, int sync)
{
    const struct api_config *c = server_config(r->srv);
    struct job_error je;
    struct job_unknown unk;
    struct job_request *req = NULL;
    int rc = job_request_parse(&req, r->body ? r->body : "", r->body_len, &c->limits, &je, &unk);
    if (rc == JOB_ERR_NOMEM)
        return server_error(r, 500, "internal_error", "out of memory", NULL, NULL, NULL, 0);
    if (rc < 0)
        return server_error(r, 400, "invalid_request", je.message, je.field, NULL, NULL, 0);
    if (unk.count > 0) {
        char names[400];
        job_unknown_format(&unk, names, sizeof(names));
        log_info("%s: ignored %zu unknown field(s): %s", r->path, unk.count, names);
    }
    char *payload = NULL;
    int stream = sync && req->stream;
    rc = job_request_to_json(req, &payload);
    job_request_destroy(req);
    if (rc < 0)
        return server_error(r, 500, "internal_error", "out of memory", NULL, NULL, NULL, 0);
    const char *idem;
    if (idempotency_key(r, &idem) < 0) {
        free(payload);
        return MHD_YES;
    }

    char id[QUEUE_ID_MAX + 1], got[QUEUE_ID_MAX + 1];
    if (ids_job_id(id) < 0) {
        free(payload);
        return server_error(r, 500, "internal_error", "no randomness for a job id", NULL, NULL,
                            NULL, 0);
    }
    int64_t wait_ms = (int64_t)c->request_timeout_s * 1000;
    /* without an idempotency key the id is ours: park (or open the stream)
     * first, nothing can be missed */
    struct sse_client *sc = NULL;
    static const struct sse_position from_start = {.job_event = 1, .deltas = 1};
    if (stream && !idem && open_stream(r, id, &from_start, 1, &sc) < 0) {
        free(payload);
        return server_error(r, 500, "internal_error", "out of memory", NULL, NULL, NULL, 0);
    }
    if (sync && !stream && !idem)
        park(r, id, WAITER_RESULT, wait_ms);
    struct queue *q = server_queue_take(r->srv);
    enum queue_enqueue_outcome oc;
    rc = queue_enqueue(q, id, payload, strlen(payload), sync ? c->api_id : "", idem, got, &oc);
    free(payload);
    if (rc == 0 && oc != QUEUE_ENQUEUE_FULL)
        snprintf(r->job_id, sizeof(r->job_id), "%s", got);

    int ret = MHD_YES;
    if (rc < 0 || oc == QUEUE_ENQUEUE_FULL) {
        char msg[400], retry[16];
        int status = rc < 0 ? 503 : 429;
        const char *type = rc < 0 ? "unavailable" : "queue_full";
        if (rc < 0)
            redis_message(r, rc, q, msg, sizeof(msg));
        else
            snprintf(msg, sizeof(msg), "the queue is full (%ld jobs waiting); retry after %d s",
                     c->queue.max_backlog, c->retry_after_s);
        if (sc)
            sse_client_abandon(sc);
        if (r->parked) {
            fail_parked(r, status, type, msg);
        } else {
            snprintf(retry, sizeof(retry), "%d", c->retry_after_s);
            struct api_header h = {"Retry-After", retry};
            ret = server_error(r, status, type, msg, NULL, NULL, &h, 1);
        }
    } else if (stream) {
        if (!sc) { /* enqueued first (idempotency key): open, then look */
            if (open_stream(r, got, &from_start, 1, &sc) < 0)
                ret = server_error(r, 500, "internal_error", "out of memory", NULL, got, NULL, 0);
            else if (stream_first_look(r, q, sc, got, &ret) < 0)
                sc = NULL;
        }
        if (sc)
            ret = respond_stream(r, sc);
    } else if (sync) {
        if (!r->parked) { /* enqueued first (idempotency key): park, then look */
            park(r, got, WAITER_RESULT, wait_ms);
            first_look(r, q, c->request_timeout_s + 5);
        }
    } else {
        char location[QUEUE_ID_MAX + 8];
        snprintf(location, sizeof(location), "/jobs/%s", got);
        struct api_header h = {"Location", location};
        json_t *o = json_pack("{s:s, s:s}", "id", got, "status", "queued");
        if (oc == QUEUE_ENQUEUED_EXISTING) {
            struct queue_job_info info;
            if (queue_job_get(q, got, NULL, 0, &info) == 0) {
                json_decref(o);
                o = job_json(got, &info);
                queue_job_info_fini(&info);
            }
        }
        ret = reply_json(r, 202, o, &h, 1);
    }
    server_queue_give(r->srv, q);
    return ret;
}

/* ---- /jobs/{id} --------------------------------------------------------- */

/* Answer with job `id` as it stands now (a plain GET, or a long poll that
 * timed out). */
static int reply_current(struct api_request *r, struct queue *q, const char *id)
{
    struct queue_job_info info;
    int rc = queue_job_get(q, id, NULL, 0, &info);
    if (rc == QUEUE_ENOJOB)
        return no_such_job(r, id);
    if (rc < 0)
        return redis_trouble(r, rc, q);
    int ret = reply_json(r, 200, job_json(id, &info), NULL, 0);
    queue_job_info_fini(&info);
    return ret;
}

static int handle_get(struct api_request *r, const char *id)
{
    const struct api_config *c = server_config(r->srv);
    const char *wait_s = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "wait");
    double wait = 0;
    if (wait_s) {
        char *end;
        wait = strtod(wait_s, &end);
        if (end == wait_s || *end != '\0' || !(wait >= 0) || wait > c->max_wait_s) {
            char msg[128];
            snprintf(msg, sizeof(msg), "wait must be a number of seconds from 0 to %d",
                     c->max_wait_s);
            return server_error(r, 400, "invalid_request", msg, "wait", id, NULL, 0);
        }
    }
    snprintf(r->job_id, sizeof(r->job_id), "%s", id);
    struct queue *q = server_queue_take(r->srv);
    int ret = MHD_YES;
    if (wait > 0) {
        park(r, id, WAITER_POLL, (int64_t)(wait * 1000));
        first_look(r, q, (int)wait + 5);
    } else {
        ret = reply_current(r, q, id);
    }
    server_queue_give(r->srv, q);
    return ret;
}

static int handle_delete(struct api_request *r, const char *id)
{
    snprintf(r->job_id, sizeof(r->job_id), "%s", id);
    struct queue *q = server_queue_take(r->srv);
    enum queue_state before;
    int rc = queue_cancel(q, id, &before), ret;
    if (rc == QUEUE_ENOJOB)
        ret = no_such_job(r, id);
    else if (rc < 0)
        ret = redis_trouble(r, rc, q);
    else if (before == QUEUE_DONE || before == QUEUE_FAILED)
        ret = server_error(r, 409, "conflict",
                           before == QUEUE_DONE ? "the job has already finished"
                                                : "the job has already failed",
                           NULL, id, NULL, 0);
    else
        ret = reply_json(r, 200, json_pack("{s:s, s:s}", "id", id, "status", "cancelled"), NULL, 0);
    if (rc == 0 && (before == QUEUE_QUEUED || before == QUEUE_RUNNING))
        log_info("job %s cancelled by request (it was %s)", id, queue_state_name(before));
    server_queue_give(r->srv, q);
    return ret;
}

/* ---- /health, /stats, /metrics ----------------------------------------- */

static int handle_health(struct api_request *r)
{
    struct queue_stats st;
    char why[300];
    int ok = status_get(server_status(r->srv), &st, why, sizeof(why));
    if (ok && st.runners > 0)
        return reply_json(r, 200,
                          json_pack("{s:s, s:I, s:I}", "status", "ok", "runners",
                                    (json_int_t)st.runners, "backlog", (json_int_t)st.backlog),
                          NULL, 0);
    if (ok)
        snprintf(why, sizeof(why), "no live runners: no worker has sent a heartbeat lately");
    return reply_json(r, 503, json_pack("{s:s, s:s}", "status", "unavailable", "reason", why), NULL,
                      0);
}

static int handle_stats(struct api_request *r)
{
    struct queue_stats st;
    struct metrics_fleet fleet;
    json_t *runners = NULL;
    char why[300];
    if (!status_get(server_status(r->srv), &st, why, sizeof(why)))
        return server_error(r, 503, "unavailable", why, NULL, NULL, NULL, 0);
    status_get_fleet(server_status(r->srv), &fleet, &runners);
    json_t *o = json_pack(
        "{s:I, s:I, s:I, s:I, s:f, s:I, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}}", "backlog",
        (json_int_t)st.backlog, "num_total_runners", (json_int_t)st.runners, "running",
        (json_int_t)st.running, "dead", (json_int_t)st.dead, "oldest_queued_s", st.oldest_queued_s,
        "parked_here", (json_int_t)waiters_count(server_waiters(r->srv)), "jobs", "enqueued",
        (json_int_t)st.enqueued, "done", (json_int_t)st.done, "failed", (json_int_t)st.failed,
        "cancelled", (json_int_t)st.cancelled, "requeued", (json_int_t)st.requeued, "retried",
        (json_int_t)st.retried, "released", (json_int_t)st.released, "dead",
        (json_int_t)st.dead_total);
    if (o) {
        json_object_set_new(o, "streams_here", json_integer(sse_count(server_sse(r->srv))));
        json_object_set_new(o, "runners", runners ? runners : json_array());
        runners = NULL;
        json_object_set_new(o, "active_sequences", json_integer(fleet.active_sequences));
        json_object_set_new(o, "kv_blocks_used", json_integer(fleet.kv_blocks_used));
        json_object_set_new(o, "kv_blocks_total", json_integer(fleet.kv_blocks_total));
        json_object_set_new(o, "tokens_per_s", json_real(fleet.tokens_per_s));
    }
    json_decref(runners);
    return reply_json(r, 200, o, NULL, 0);
}

static int handle_metrics(struct api_request *r)
{
    struct queue_stats st;
    char why[300], *text = NULL;
    size_t len = 0;
    struct metrics_fleet fleet;
    int ok = status_get(server_status(r->srv), &st, why, sizeof(why));
    status_get_fleet(server_status(r->srv), &fleet, NULL);
    if (metrics_render_fleet(server_metrics(r->srv), ok ? &st : NULL, &fleet, &text, &len) < 0)
        return server_error(r, 500, "internal_error", "out of memory", NULL, NULL, NULL, 0);
    int rc = server_reply_typed(r, 200, METRICS_CONTENT_TYPE, text, len, NULL, 0);
    free(text);
    return rc;
}

int routes_handle(struct api_request *r, const char *url)
{
    switch (r->route) {
    case METRICS_ROUTE_GENERATE:
        return handle_submit(r, 1);
    case METRICS_ROUTE_JOBS_SUBMIT:
        return handle_submit(r, 0);
    case METRICS_ROUTE_JOBS_GET:
        return handle_get(r, job_id_of(url));
    case METRICS_ROUTE_JOBS_DELETE:
        return handle_delete(r, job_id_of(url));
    case METRICS_ROUTE_JOBS_STREAM: {
        char id[QUEUE_ID_MAX + 1];
        return stream_id_of(url, id)
                   ? handle_stream(r, id)
                   : server_error(r, 404, "not_found", "no such endpoint", NULL, NULL, NULL, 0);
    }
    case METRICS_ROUTE_HEALTH:
        return handle_health(r);
    case METRICS_ROUTE_STATS:
        return handle_stats(r);
    case METRICS_ROUTE_METRICS:
        return handle_metrics(r);
    default:
        return server_error(r, 404, "not_found", "no such endpoint", NULL, NULL, NULL, 0);
    }
}

/* ---- waking up ---------------------------------------------------------- */

int routes_resume(struct api_request *r)
{
    const struct api_config *c = server_config(r->srv);
    struct waiter *w = &r->w;
    int poll = w->kind == WAITER_POLL;
    char retry[16];
    snprintf(retry, sizeof(retry), "%d", c->retry_after_s);

    switch (w->outcome) {
    case WAITER_FINISHED:
        return poll ? reply_json(r, 200, job_json(w->id, &w->info), NULL, 0)
                    : reply_final(r, &w->info);
    case WAITER_TIMEOUT:
        if (poll) {
            struct queue *q = server_queue_take(r->srv);
            int ret = reply_current(r, q, w->id);
            server_queue_give(r->srv, q);
            return ret;
        } else {
            char msg[200], location[QUEUE_ID_MAX + 8];
            snprintf(msg, sizeof(msg),
                     "the job did not finish within %d s; it goes on: poll GET /jobs/%s",
                     c->request_timeout_s, w->id);
            snprintf(location, sizeof(location), "/jobs/%s", w->id);
            struct api_header h = {"Location", location};
            return server_error(r, 504, "timeout", msg, NULL, w->id, &h, 1);
        }
    case WAITER_GONE:
        return MHD_NO; /* nobody to answer: close */
    case WAITER_SHUTDOWN: {
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "this API instance is shutting down; the job goes on: poll GET /jobs/%s", w->id);
        struct api_header h = {"Retry-After", retry};
        return server_error(r, 503, "shutting_down", msg, NULL, w->id, &h, 1);
    }
    case WAITER_LOST:
        return poll ? no_such_job(r, w->id)
                    : server_error(r, 500, "internal_error",
                                   "the job disappeared from Redis before it finished", NULL, w->id,
                                   NULL, 0);
    case WAITER_ERROR: {
        struct api_header h = {"Retry-After", retry};
        return server_error(r, r->err_status, r->err_type, r->err_message, NULL,
                            r->job_id[0] ? r->job_id : NULL, &h,
                            r->err_status == 429 || r->err_status == 503);
    }
    case WAITER_PENDING:
        break;
    }
    return server_error(r, 500, "internal_error", "woken without an outcome", NULL, NULL, NULL, 0);
}
