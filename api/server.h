/*
 * server: millrace-api's HTTP server on libmicrohttpd.
 *
 * A pool of libmicrohttpd threads (epoll) accepts connections, reads each
 * request into a `struct api_request`, checks what can be checked before the
 * body arrives (route, method, API key, Content-Type, Content-Length), reads
 * the body up to its limit, and hands the complete request to routes.c.
 * Requests that wait for a job are suspended (waiters.c), and so are
 * Server-Sent Event streams between events (sse.c), so thousands can wait on
 * a few threads. Every request ends with one access-log line and one
 * metrics observation.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "api/metrics.h"
#include "api/waiters.h"
#include "common/job.h"
#include "common/queue.h"

struct auth;
struct sse;
struct status;
struct MHD_Connection;

struct api_config {
    const char *host; /* listen address: an IPv4 or IPv6 literal */
    int port;
    int threads;              /* libmicrohttpd thread pool */
    long max_body_bytes;      /* 413 beyond */
    int max_connections;      /* at once, waiting ones included */
    int connection_timeout_s; /* idle client connections are closed after this */
    int body_timeout_s;       /* a body still arriving after this gets 408 (slow clients) */
    int request_timeout_s;    /* a synchronous /generate answers 504 after this */
    int max_wait_s;           /* cap on GET /jobs/{id}?wait= */
    int retry_after_s;        /* Retry-After on 429 and 503 */
    int access_log;           /* one log line per request */
    int stats_refresh_ms;     /* how often /health and /stats re-read Redis */
    int sse_ping_ms;          /* an event stream idle this long gets a ": ping" comment */
    long sse_buffer_bytes;    /* unsent bytes per event stream before its reading pauses */
    struct job_limits limits;
    struct redis_opts redis;
    struct queue_opts queue;
    const struct auth *auth; /* NULL: no keys, everything open (borrowed) */
    char api_id[QUEUE_ID_MAX + 1];
};

struct server;

/* Everything a route handler needs about one request. */
struct api_request {
    struct server *srv;
    struct MHD_Connection *conn;
    enum metrics_route route;
    const char *method; /* borrowed from libmicrohttpd for the request's life */
    char path[128];     /* for the access log (cut) */
    int64_t start_ms;
    char *body; /* the request body so far (NUL-terminated), owned */
    size_t body_len, body_cap;
    int reads_body;   /* the route takes a body */
    int body_done;    /* all of it has arrived */
    int body_aborted; /* refused while arriving and answered on the socket (server's body lock) */
    int in_body_list; /* watched for a slow body (server's body lock) */
    struct api_request *body_next, *body_prev;
    int status;                    /* the status answered, 0 until then */
    char job_id[QUEUE_ID_MAX + 1]; /* for the access log, "" if none */
    int parked;                    /* waiting on w */
    struct waiter w;
    /* set by a handler that fails after parking (WAITER_ERROR) */
    int err_status;
    const char *err_type;
    char err_message[512];
};

/* Start listening. Returns 0, or -1 with a message in err. cfg is copied. */
int server_start(struct server **out, const struct api_config *cfg, char *err, size_t errlen);

/*
 * Graceful stop: refuse new connections and new requests, let parked
 * requests finish for up to grace_s seconds, answer the rest with 503 (their
 * jobs continue and stay pollable), then stop and free. Call once, from the
 * main thread.
 */
void server_shutdown(struct server *s, int grace_s);

/* ---- for routes.c ------------------------------------------------------ */

const struct api_config *server_config(const struct server *s);
struct waiters *server_waiters(struct server *s);
struct status *server_status(struct server *s);
struct sse *server_sse(struct server *s);
struct metrics *server_metrics(struct server *s);
int server_stopping(const struct server *s);

/* Borrow a Redis queue handle for the calling thread (waits while every one
 * is borrowed; never fails); give it back after. */
struct queue *server_queue_take(struct server *s);
void server_queue_give(struct server *s, struct queue *q);

struct api_header {
    const char *name, *value;
};

/* Queue a response with body `json` (copied) and extra headers (n may be 0).
 * Returns libmicrohttpd's MHD_YES/MHD_NO as an int. */
int server_reply(struct api_request *r, int status, const char *json, size_t len,
                 const struct api_header *headers, size_t n);

/* server_reply with another Content-Type than application/json. */
int server_reply_typed(struct api_request *r, int status, const char *content_type,
                       const char *body, size_t len, const struct api_header *headers, size_t n);

/*
 * How a failed or cancelled job answers: a worker that says the request
 * itself cannot be served (its error starts with "invalid_request: ", e.g.
 * the prompt does not fit the model's context) gives 400 invalid_request
 * with the rest as the message; a cancelled job 409 cancelled (with the
 * reason it recorded, e.g. "cancelled by request"); any other
 * failure 500 job_failed. *message is borrowed from info (or static).
 */
void server_job_failure(const struct queue_job_info *info, int *status, const char **type,
                        const char **message);

/* Queue {"error": {"type", "message", "field"}} (field null when NULL or ""),
 * plus "id" at the top level when job_id is not NULL. */
int server_error(struct api_request *r, int status, const char *type, const char *message,
                 const char *field, const char *job_id, const struct api_header *headers, size_t n);
