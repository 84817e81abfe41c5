/*
 * metrics: the API's Prometheus metrics, served by GET /metrics.
 *
 * Requests are recorded from every thread of libmicrohttpd's pool; the queue
 * and fleet gauges come from the status snapshot (queue_stats, and what the
 * runners report with their heartbeats) handed to metrics_render_fleet(), so
 * they are fleet-wide while the request counters and histograms (latency,
 * queue wait, time to first token, inter-token latency) are this API
 * instance's own.
 *
 * Key decision: no lock anywhere. Every series is a fixed slot of C11 atomic
 * counters allocated once in metrics_create() (routes and status codes are
 * enums and fixed tables, "other" catching the rest), updated with relaxed
 * atomic adds. A histogram keeps one counter per bucket (not cumulative) and
 * its sum in integer microseconds, so an add is exact and the sum of many
 * threads' observations does not depend on their order; rendering cumulates
 * the buckets and takes _count from them, so a scrape racing with recording
 * still shows +Inf == _count and non-decreasing buckets.
 *
 * Output is the text exposition format 0.0.4: one # HELP and one # TYPE per
 * family, then its samples; a counter series is rendered once it is non-zero.
 */
#pragma once

#include <stddef.h>

#include "common/queue.h"

/* The Content-Type of metrics_render()'s output. */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Errors (negative). */
#define METRICS_ENOMEM (-1)

/* The API's routes, as the route="..." label. */
enum metrics_route {
    METRICS_ROUTE_GENERATE,    /* POST /generate */
    METRICS_ROUTE_JOBS_SUBMIT, /* POST /jobs */
    METRICS_ROUTE_JOBS_GET,    /* GET /jobs/<id> */
    METRICS_ROUTE_JOBS_DELETE, /* DELETE /jobs/<id> */
    METRICS_ROUTE_JOBS_STREAM, /* GET /jobs/<id>/stream */
    METRICS_ROUTE_HEALTH,      /* GET /health */
    METRICS_ROUTE_STATS,       /* GET /stats */
    METRICS_ROUTE_METRICS,     /* GET /metrics */
    METRICS_ROUTE_OTHER,       /* anything else (404s, wrong methods, ...) */
    METRICS_ROUTE_COUNT,
};

/*
 * The label value of a route: "generate", "jobs_submit", "jobs_get",
 * "jobs_delete", "jobs_stream", "health", "stats", "metrics", "other".
 * Static string; a value out of range gives "other". Thread-safe.
 */
const char *metrics_route_name(enum metrics_route r);

struct metrics;

/*
 * Make an empty set of metrics (every counter zero). Returns 0 with *out new
 * (release with metrics_destroy), or METRICS_ENOMEM.
 */
int metrics_create(struct metrics **out);

/* Free m. NULL is a no-op. No other thread may still be using m. */
void metrics_destroy(struct metrics *m);

/*
 * Count one finished request on `route` answered with `http_status`, which
 * took `seconds` (receipt to response queued). A status outside the tracked
 * table (200, 202, 204, 400, 401, 404, 405, 408, 409, 413, 415, 429, 500, 503,
 * 504) is counted as code="other"; a route out of range as "other"; a negative
 * or NaN duration as 0. Lock-free; safe from any thread, concurrently with
 * every other call but metrics_destroy.
 */
void metrics_observe_request(struct metrics *m, enum metrics_route route, int http_status,
                             double seconds);

/*
 * Record how long a job waited from creation to being claimed by a worker.
 * Negative or NaN counts as 0. Lock-free; thread-safe as above.
 */
void metrics_observe_queue_wait(struct metrics *m, double seconds);

/*
 * Record a finished job's time to first token (its first token's time minus
 * its creation time) and its mean inter-token latency. Negative or NaN
 * counts as 0. Lock-free; thread-safe as above.
 */
void metrics_observe_ttft(struct metrics *m, double seconds);
void metrics_observe_itl(struct metrics *m, double seconds);

/*
 * Set the number of connections this API instance holds open waiting for a
 * job to finish. Lock-free; thread-safe as above (the last store wins).
 */
void metrics_set_parked(struct metrics *m, long n);

/*
 * Render every metric in the text exposition format 0.0.4. `st` (borrowed) is
 * the queue snapshot read for this scrape, or NULL when Redis is unreachable:
 * then millrace_redis_up is 0 and the queue families (waiting, running,
 * runners, dead, oldest queued, jobs_total) are left out entirely.
 * On success returns 0 with *out new (free() it), NUL-terminated, ending with
 * a newline, and *len its length without the NUL; on METRICS_ENOMEM *out is
 * NULL. Thread-safe: any number of scrapes may run while requests are recorded.
 */
int metrics_render(struct metrics *m, const struct queue_stats *st, char **out, size_t *len);

/* What the live runners say about themselves, summed over them (read with the
 * queue snapshot, see status.h). */
struct metrics_fleet {
    long active_sequences; /* sequences being generated */
    long kv_blocks_used, kv_blocks_total;
    double tokens_per_s;
};

/*
 * metrics_render, plus the fleet gauges (millrace_num_active_sequences,
 * millrace_kv_cache_blocks_used, millrace_kv_cache_blocks_total,
 * millrace_kv_cache_usage_ratio, millrace_generation_tokens_per_second) when
 * both st and fleet (borrowed) are given. Same contract otherwise.
 */
int metrics_render_fleet(struct metrics *m, const struct queue_stats *st,
                         const struct metrics_fleet *fleet, char **out, size_t *len);
