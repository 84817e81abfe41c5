/*
 * server: libmicrohttpd glue for millrace-api (see server.h).
 *
 * Key decision: one epoll thread pool, and no thread ever waits for a job:
 * waiting requests are suspended and woken by waiters.c. Redis calls made
 * while handling a request (enqueue, reads) are short and use a small pool of
 * connections, one borrowed per call.
 */
#include "api/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "api/auth.h"
#include "api/routes.h"
#include "api/sse.h"
#include "api/status.h"
#include "common/clock.h"
#include "common/grow.h"
#include "common/log.h"

#define SERVER_POOL_MAX 64

struct server {
    struct api_config cfg;
    struct MHD_Daemon *daemon;
    struct waiters *waiters;
    struct sse *sse;
    struct status *status;
    struct metrics *metrics;
    atomic_int stopping;
    atomic_long inflight; /* requests started and not yet completed */

    pthread_mutex_t body_lock;
    struct api_request *bodies; /* requests whose body is arriving */
    pthread_t body_thread;
    int body_thread_started;
    atomic_int stopping_threads;

    pthread_mutex_t pool_lock;
    pthread_cond_t pool_cond;
    struct queue *pool[SERVER_POOL_MAX]; /* made at start; each connects when first used */
    int pool_free;                       /* handles in pool[0..pool_free) are idle */
};

const struct api_config *server_config(const struct server *s)
{
    return &s->cfg;
}

struct waiters *server_waiters(struct server *s)
{
    return s->waiters;
}

struct status *server_status(struct server *s)
{
    return s->status;
}

struct sse *server_sse(struct server *s)
{
    return s->sse;
}

struct metrics *server_metrics(struct server *s)
{
    return s->metrics;
}

int server_stopping(const struct server *s)
{
    return atomic_load(&s->stopping);
}

struct queue *server_queue_take(struct server *s)
{
    pthread_mutex_lock(&s->pool_lock);
    while (s->pool_free == 0)
        pthread_cond_wait(&s->pool_cond, &s->pool_lock);
    struct queue *q = s->pool[--s->pool_free];
    pthread_mutex_unlock(&s->pool_lock);
    return q;
}

void server_queue_give(struct server *s, struct queue *q)
{
    pthread_mutex_lock(&s->pool_lock);
    s->pool[s->pool_free++] = q;
    pthread_cond_signal(&s->pool_cond);
    pthread_mutex_unlock(&s->pool_lock);
}

/* ---- replies ---------------------------------------------------------- */

int server_reply_typed(struct api_request *r, int status, const char *content_type,
                       const char *body, size_t len, const struct api_header *headers, size_t n)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    for (size_t i = 0; i < n; i++)
        MHD_add_response_header(resp, headers[i].name, headers[i].value);
    if (server_stopping(r->srv))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result rc = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    if (rc == MHD_YES)
        r->status = status;
    return rc;
}

int server_reply(struct api_request *r, int status, const char *json, size_t len,
                 const struct api_header *headers, size_t n)
{
    return server_reply_typed(r, status, "application/json", json, len, headers, n);
}

void server_job_failure(const struct queue_job_info *info, int *status, const char **type,
                        const char **message)
{
    static const char prefix[] = "invalid_request: ";
    const char *e = info->error;
    if (info->state == QUEUE_CANCELLED) {
        *status = 409;
        *type = "cancelled";
        *message = e ? e : "the job was cancelled";
    } else if (e && strncmp(e, prefix, sizeof(prefix) - 1) == 0) {
        *status = 400;
        *type = "invalid_request";
        *message = e + sizeof(prefix) - 1;
    } else {
        *status = 500;
        *type = "job_failed";
        *message = e ? e : "the job failed";
    }
}

/* {"error": {"type", "message", "field"}, "id"?} as new text, or NULL. */
static char *error_json(const char *type, const char *message, const char *field,
                        const char *job_id)
{
    json_t *err = json_pack("{s:s, s:s, s:o}", "type", type, "message", message, "field",
                            field && *field ? json_string(field) : json_null());
    json_t *root = err ? json_pack("{s:o}", "error", err) : NULL;
    if (root && job_id && *job_id)
        json_object_set_new(root, "id", json_string(job_id));
    char *text = root ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    return text;
}

int server_error(struct api_request *r, int status, const char *type, const char *message,
                 const char *field, const char *job_id, const struct api_header *headers, size_t n)
{
    char *text = error_json(type, message, field, job_id);
    static const char fallback[] =
        "{\"error\":{\"type\":\"internal_error\",\"message\":\"out of memory\",\"field\":null}}";
    int rc = text ? server_reply(r, status, text, strlen(text), headers, n)
                  : server_reply(r, 500, fallback, sizeof(fallback) - 1, NULL, 0);
    free(text);
    return rc;
}

/*
 * Refuse a body that is still arriving (too large, too slow) and hang up.
 * libmicrohttpd 0.9.75 queues no response in the middle of a body, so the
 * answer is written straight to the socket, which is then shut down both
 * ways: the client reads a complete HTTP answer, and libmicrohttpd, seeing
 * the socket closed, ends the connection. Once per request (r->body_aborted,
 * under the body lock). Returns 1 when this call answered.
 */
static int abort_body_locked(struct api_request *r, int status, const char *type, const char *msg)
{
    if (r->body_aborted)
        return 0;
    r->body_aborted = 1;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    char *json = error_json(type, msg, NULL, NULL);
    char head[256];
    int hn = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: "
                      "%zu\r\nConnection: close\r\n\r\n",
                      status, MHD_get_reason_phrase_for((unsigned)status), json ? strlen(json) : 0);
    if (ci && hn > 0 && (size_t)hn < sizeof(head)) {
        /* small enough for an empty socket buffer: one non-blocking send each */
        ssize_t w = send(ci->connect_fd, head, (size_t)hn, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w == hn && json)
            w = send(ci->connect_fd, json, strlen(json), MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
        shutdown(ci->connect_fd, SHUT_RDWR);
    }
    free(json);
    r->status = status;
    return 1;
}

static void body_list_remove_locked(struct server *s, struct api_request *r)
{
    if (!r->in_body_list)
        return;
    if (r->body_prev)
        r->body_prev->body_next = r->body_next;
    else
        s->bodies = r->body_next;
    if (r->body_next)
        r->body_next->body_prev = r->body_prev;
    r->body_next = r->body_prev = NULL;
    r->in_body_list = 0;
}

/* The body watchdog: a body that has not arrived within --body-timeout-s gets
 * 408, whether it trickles (checked in take_body too) or has stalled, which
 * no libmicrohttpd callback would notice before the idle timeout. */
static void *body_watchdog(void *arg)
{
    struct server *s = arg;
    while (!atomic_load(&s->stopping_threads)) {
        clock_sleep_ms(250);
        int64_t limit = clock_now_ms() - (int64_t)s->cfg.body_timeout_s * 1000;
        char msg[128];
        snprintf(msg, sizeof(msg), "the body took longer than %d s to arrive",
                 s->cfg.body_timeout_s);
        pthread_mutex_lock(&s->body_lock);
        struct api_request *r = s->bodies;
        while (r) {
            struct api_request *next = r->body_next;
            if (r->start_ms < limit) {
                abort_body_locked(r, 408, "request_timeout", msg);
                body_list_remove_locked(s, r);
            }
            r = next;
        }
        pthread_mutex_unlock(&s->body_lock);
    }
    return NULL;
}

/* ---- request life ----------------------------------------------------- */

static int content_type_is_json(const char *ct)
{
    if (!ct)
        return 0;
    while (*ct == ' ')
        ct++;
    size_t n = strlen("application/json");
    return strncasecmp(ct, "application/json", n) == 0 &&
           (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

/* Checks made as soon as the headers are in. Returns 1 to go on reading the
 * body, 0 when an answer was queued. */
static int check_headers(struct api_request *r, const char *url)
{
    struct server *s = r->srv;
    if (server_stopping(s)) {
        server_error(r, 503, "shutting_down", "the server is shutting down", NULL, NULL, NULL, 0);
        return 0;
    }
    int need = routes_classify(r, url, r->method);
    if (need < 0)
        return 0;
    if ((need & ROUTES_NEED_AUTH) && s->cfg.auth) {
        const char *authz =
            MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        if (!auth_check(s->cfg.auth, authz)) {
            static const struct api_header h = {"WWW-Authenticate", "Bearer"};
            server_error(r, 401, "unauthorized",
                         authz ? "the API key is not valid"
                               : "an API key is required: send 'Authorization: Bearer <key>'",
                         NULL, NULL, &h, 1);
            return 0;
        }
    }
    if (need & ROUTES_NEED_BODY) {
        r->reads_body = 1;
        const char *ct =
            MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        if (!content_type_is_json(ct)) {
            char msg[200];
            snprintf(msg, sizeof(msg), "Content-Type must be application/json, got %.100s",
                     ct ? ct : "none");
            server_error(r, 415, "unsupported_media_type", msg, NULL, NULL, NULL, 0);
            return 0;
        }
        const char *cl =
            MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > (unsigned long long)s->cfg.max_body_bytes) {
            char msg[128];
            snprintf(msg, sizeof(msg), "the body is larger than the limit of %ld bytes",
                     s->cfg.max_body_bytes);
            server_error(r, 413, "payload_too_large", msg, NULL, NULL, NULL, 0);
            return 0;
        }
    }
    return 1;
}

/* Refuse the body now (see abort_body_locked). */
static void abort_body(struct api_request *r, int status, const char *type, const char *msg)
{
    pthread_mutex_lock(&r->srv->body_lock);
    abort_body_locked(r, status, type, msg);
    body_list_remove_locked(r->srv, r);
    pthread_mutex_unlock(&r->srv->body_lock);
}

/* Take a chunk of body. Returns 1 to go on, 0 when the body was refused. */
static int take_body(struct api_request *r, const char *data, size_t len)
{
    const struct api_config *c = &r->srv->cfg;
    if (r->body_len + len > (size_t)c->max_body_bytes) {
        char msg[128];
        snprintf(msg, sizeof(msg), "the body is larger than the limit of %ld bytes",
                 c->max_body_bytes);
        abort_body(r, 413, "payload_too_large", msg);
        return 0;
    }
    if (clock_now_ms() - r->start_ms > (int64_t)c->body_timeout_s * 1000) {
        char msg[128];
        snprintf(msg, sizeof(msg), "the body took longer than %d s to arrive", c->body_timeout_s);
        abort_body(r, 408, "request_timeout", msg);
        return 0;
    }
    if (grow_array((void **)&r->body, &r->body_cap, r->body_len + len + 1, 1) < 0) {
        abort_body(r, 500, "internal_error", "out of memory");
        return 0;
    }
    memcpy(r->body + r->body_len, data, len);
    r->body_len += len;
    r->body[r->body_len] = '\0';
    return 1;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    (void)version;
    struct server *s = cls;
    struct api_request *r = *req_cls;

    if (!r) { /* headers are in */
        r = calloc(1, sizeof(*r));
        if (!r)
            return MHD_NO;
        r->srv = s;
        r->conn = conn;
        r->method = method;
        r->route = METRICS_ROUTE_OTHER;
        r->start_ms = clock_now_ms();
        r->w.fd = -1;
        snprintf(r->path, sizeof(r->path), "%s", url);
        atomic_fetch_add(&s->inflight, 1);
        *req_cls = r;
        if (check_headers(r, url) && r->reads_body) {
            pthread_mutex_lock(&s->body_lock);
            r->body_next = s->bodies;
            if (s->bodies)
                s->bodies->body_prev = r;
            s->bodies = r;
            r->in_body_list = 1;
            pthread_mutex_unlock(&s->body_lock);
        }
        return MHD_YES;
    }
    if (r->status) { /* answered early (at the headers, or body refused): drop the rest */
        *upload_data_size = 0;
        return r->body_aborted ? MHD_NO : MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t len = *upload_data_size;
        *upload_data_size = 0;
        return take_body(r, upload_data, len) ? MHD_YES : MHD_NO;
    }
    if (r->parked) {
        r->parked = 0;
        return (enum MHD_Result)routes_resume(r);
    }
    if (r->body_done) /* a spurious call while parked: stay parked */
        return MHD_YES;
    r->body_done = 1;
    pthread_mutex_lock(&s->body_lock);
    body_list_remove_locked(s, r);
    int aborted = r->body_aborted; /* the watchdog was first */
    pthread_mutex_unlock(&s->body_lock);
    if (aborted)
        return MHD_NO;
    return (enum MHD_Result)routes_handle(r, url);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    struct server *s = cls;
    struct api_request *r = *req_cls;
    if (!r)
        return;
    *req_cls = NULL;
    pthread_mutex_lock(&s->body_lock);
    body_list_remove_locked(s, r);
    pthread_mutex_unlock(&s->body_lock);
    waiters_forget(s->waiters, &r->w);
    int status = r->status ? r->status : 499; /* 499: the client went away first */
    double secs = (double)(clock_now_ms() - r->start_ms) / 1e3;
    metrics_observe_request(s->metrics, r->route, status, secs);
    if (s->cfg.access_log)
        log_info("%s %s %d %s %.1f ms%s", r->method, r->path, status,
                 r->job_id[0] ? r->job_id : "-", secs * 1e3,
                 toe == MHD_REQUEST_TERMINATED_COMPLETED_OK      ? ""
                 : toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? " (timed out)"
                 : toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT    ? " (client closed)"
                                                                 : " (aborted)");
    queue_job_info_fini(&r->w.info);
    free(r->body);
    free(r);
    atomic_fetch_sub(&s->inflight, 1);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char buf[512];
    vsnprintf(buf, sizeof(buf), fmt, ap);
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    log_warn("http: %s", buf);
}

/* ---- start and stop --------------------------------------------------- */

int server_start(struct server **out, const struct api_config *cfg, char *err, size_t errlen)
{
    *out = NULL;
    struct server *s = calloc(1, sizeof(*s));
    struct addrinfo *ai = NULL;
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->cfg = *cfg;
    pthread_mutex_init(&s->pool_lock, NULL);
    pthread_cond_init(&s->pool_cond, NULL);
    pthread_mutex_init(&s->body_lock, NULL);

    if (metrics_create(&s->metrics) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* every handle now (connecting is lazy), so that taking one never fails */
    char name[64];
    snprintf(name, sizeof(name), "mr:api:%.48s", cfg->api_id);
    int pool_n = cfg->threads * 2 + 4 < SERVER_POOL_MAX ? cfg->threads * 2 + 4 : SERVER_POOL_MAX;
    for (; s->pool_free < pool_n; s->pool_free++) {
        if (queue_create(&s->pool[s->pool_free], &cfg->redis, &cfg->queue, name, err, errlen) < 0)
            goto fail;
    }
    if (status_start(&s->status, &cfg->redis, &cfg->queue, cfg->stats_refresh_ms, err, errlen) < 0)
        goto fail;
    struct waiters_opts wo = {.redis = &cfg->redis,
                              .queue = &cfg->queue,
                              .api_id = cfg->api_id,
                              .tick_ms = 100,
                              .recheck_ms = 2000,
                              .metrics = s->metrics};
    if (waiters_start(&s->waiters, &wo, err, errlen) < 0)
        goto fail;
    struct sse_opts so = {.redis = &cfg->redis,
                          .queue = &cfg->queue,
                          .api_id = cfg->api_id,
                          .waiters = s->waiters,
                          .block_ms = 100,
                          .ping_ms = cfg->sse_ping_ms,
                          .buffer_max = cfg->sse_buffer_bytes};
    if (sse_start(&s->sse, &so, err, errlen) < 0)
        goto fail;

    char port[16];
    snprintf(port, sizeof(port), "%d", cfg->port);
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV,
                             .ai_socktype = SOCK_STREAM};
    int gai = getaddrinfo(cfg->host, port, &hints, &ai);
    if (gai != 0) {
        snprintf(err, errlen, "bad listen address '%s': %s (use an IP literal such as 0.0.0.0)",
                 cfg->host, gai_strerror(gai));
        goto fail;
    }
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    s->daemon = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_log, NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)cfg->threads, MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->connection_timeout_s,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u, MHD_OPTION_END);
    if (!s->daemon) {
        snprintf(err, errlen, "cannot listen on %s port %d: %s", cfg->host, cfg->port,
                 errno ? strerror(errno) : "libmicrohttpd refused to start");
        goto fail;
    }
    freeaddrinfo(ai);
    ai = NULL;
    if (pthread_create(&s->body_thread, NULL, body_watchdog, s) != 0) {
        snprintf(err, errlen, "cannot start the body watchdog thread");
        MHD_stop_daemon(s->daemon);
        goto fail;
    }
    s->body_thread_started = 1;
    *out = s;
    return 0;
fail:
    if (ai)
        freeaddrinfo(ai);
    sse_stop(s->sse);
    waiters_stop(s->waiters);
    status_stop(s->status);
    metrics_destroy(s->metrics);
    for (int i = 0; i < s->pool_free; i++)
        queue_destroy(s->pool[i]);
    pthread_cond_destroy(&s->pool_cond);
    pthread_mutex_destroy(&s->pool_lock);
    pthread_mutex_destroy(&s->body_lock);
    free(s);
    return -1;
}

void server_shutdown(struct server *s, int grace_s)
{
    atomic_store(&s->stopping, 1);
    MHD_socket lfd = MHD_quiesce_daemon(s->daemon);
    if (lfd != MHD_INVALID_SOCKET)
        close(lfd);
    long parked = waiters_count(s->waiters);
    log_info("shutting down: no new connections; %ld request(s) waiting for jobs, up to %d s",
             parked, grace_s);
    int64_t deadline = clock_now_ms() + (int64_t)grace_s * 1000;
    while (waiters_count(s->waiters) > 0 && clock_now_ms() < deadline)
        clock_sleep_ms(50);
    long left = waiters_count(s->waiters);
    if (left > 0)
        log_warn("grace period over: answering %ld waiting request(s) with 503; their jobs go on",
                 left);
    sse_release_all(s->sse);
    waiters_release_all(s->waiters);
    /* let answers in flight reach their clients */
    deadline = clock_now_ms() + 2000;
    while (atomic_load(&s->inflight) > 0 && clock_now_ms() < deadline)
        clock_sleep_ms(20);
    MHD_stop_daemon(s->daemon);
    atomic_store(&s->stopping_threads, 1);
    if (s->body_thread_started)
        pthread_join(s->body_thread, NULL);
    sse_stop(s->sse);
    waiters_stop(s->waiters);
    status_stop(s->status);
    metrics_destroy(s->metrics);
    for (int i = 0; i < s->pool_free; i++)
        queue_destroy(s->pool[i]);
    pthread_cond_destroy(&s->pool_cond);
    pthread_mutex_destroy(&s->pool_lock);
    pthread_mutex_destroy(&s->body_lock);
    free(s);
    log_info("stopped");
}
