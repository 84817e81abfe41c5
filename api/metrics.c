/*
 * metrics: the API's Prometheus metrics (see metrics.h).
 *
 * Every series is a slot of relaxed C11 atomics in one calloc'd struct;
 * recording is one or two atomic adds and never allocates or locks. Rendering
 * reads each slot once into locals and writes the text into a growing buffer.
 */
#include "api/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/grow.h"

/* The "no lock" promise of metrics.h holds only where these are lock-free. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "metrics needs lock-free 64-bit atomics");
_Static_assert(ATOMIC_LONG_LOCK_FREE == 2, "metrics needs lock-free long atomics");

/* ---- fixed tables ---------------------------------------------------- */

static const char *const route_names[METRICS_ROUTE_COUNT] = {
    [METRICS_ROUTE_GENERATE] = "generate",
    [METRICS_ROUTE_JOBS_SUBMIT] = "jobs_submit",
    [METRICS_ROUTE_JOBS_GET] = "jobs_get",
    [METRICS_ROUTE_JOBS_DELETE] = "jobs_delete",
    [METRICS_ROUTE_JOBS_STREAM] = "jobs_stream",
    [METRICS_ROUTE_HEALTH] = "health",
    [METRICS_ROUTE_STATS] = "stats",
    [METRICS_ROUTE_METRICS] = "metrics",
    [METRICS_ROUTE_OTHER] = "other",
};

/* The status codes the API answers with; one more slot counts the rest. */
static const int tracked_codes[] = {200, 202, 204, 400, 401, 404, 405, 408,
                                    409, 413, 415, 429, 500, 503, 504};
#define N_TRACKED  ((int)(sizeof tracked_codes / sizeof tracked_codes[0]))
#define CODE_OTHER N_TRACKED
#define N_CODES    (N_TRACKED + 1)

/* A histogram's upper bounds in microseconds, and the same bounds as written
 * in the le label; +Inf is implied after the last. */
struct bucket_set {
    int n; /* finite bounds */
    const unsigned long long *us;
    const char *const *le;
};

#define N_BUCKETS_MAX 24 /* finite bounds of the longest set, plus +Inf */

/* Request durations and queue waits: 5 ms to 2 min. */
static const unsigned long long wait_us[] = {
    5000,    10000,   25000,   50000,    100000,   250000,   500000,
    1000000, 2500000, 5000000, 10000000, 30000000, 60000000, 120000000,
};
static const char *const wait_le[] = {
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
    "1",     "2.5",  "5",     "10",   "30",  "60",   "120",
};
_Static_assert(sizeof wait_le / sizeof wait_le[0] == sizeof wait_us / sizeof wait_us[0],
               "one le per bound");
static const struct bucket_set wait_buckets = {(int)(sizeof wait_us / sizeof wait_us[0]), wait_us,
                                               wait_le};

/* Time to first token: 10 ms to 60 s (the range of vLLM's buckets that a
 * served model lands in: tens of ms unloaded, seconds behind a long queue). */
static const unsigned long long ttft_us[] = {
    10000,  25000,   50000,   75000,   100000,  150000,   200000,   300000,   400000,   500000,
    750000, 1000000, 2500000, 5000000, 7500000, 10000000, 20000000, 40000000, 60000000,
};
static const char *const ttft_le[] = {
    "0.01", "0.025", "0.05", "0.075", "0.1", "0.15", "0.2", "0.3", "0.4", "0.5",
    "0.75", "1",     "2.5",  "5",     "7.5", "10",   "20",  "40",  "60",
};
_Static_assert(sizeof ttft_le / sizeof ttft_le[0] == sizeof ttft_us / sizeof ttft_us[0],
               "one le per bound");
static const struct bucket_set ttft_buckets = {(int)(sizeof ttft_us / sizeof ttft_us[0]), ttft_us,
                                               ttft_le};

/* Inter-token latency: 1 ms (a small model, batch 1) to 2.5 s (a big batch
 * on a CPU). */
static const unsigned long long itl_us[] = {
    1000,  2500,   5000,   7500,   10000,  15000,  20000,  25000,  30000,   40000,   50000,
    75000, 100000, 150000, 200000, 300000, 400000, 500000, 750000, 1000000, 2500000,
};
static const char *const itl_le[] = {
    "0.001", "0.0025", "0.005", "0.0075", "0.01", "0.015", "0.02", "0.025", "0.03", "0.04", "0.05",
    "0.075", "0.1",    "0.15",  "0.2",    "0.3",  "0.4",   "0.5",  "0.75",  "1",    "2.5",
};
_Static_assert(sizeof itl_le / sizeof itl_le[0] == sizeof itl_us / sizeof itl_us[0],
               "one le per bound");
static const struct bucket_set itl_buckets = {(int)(sizeof itl_us / sizeof itl_us[0]), itl_us,
                                              itl_le};

_Static_assert(sizeof wait_us / sizeof wait_us[0] < N_BUCKETS_MAX &&
                   sizeof ttft_us / sizeof ttft_us[0] < N_BUCKETS_MAX &&
                   sizeof itl_us / sizeof itl_us[0] < N_BUCKETS_MAX,
               "N_BUCKETS_MAX holds every set and its +Inf");

/* Durations are clamped to this (about 31 years) so that sums cannot wrap. */
#define MAX_SECONDS 1e9

/* ---- the counters ---------------------------------------------------- */

struct histogram {
    const struct bucket_set *set;
    atomic_ullong bucket[N_BUCKETS_MAX]; /* observations in (previous bound, bound], then
                                            +Inf at set->n; not cumulative */
    atomic_ullong sum_us;                /* sum of observations, microseconds */
};

struct metrics {
    atomic_ullong requests[METRICS_ROUTE_COUNT][N_CODES];
    struct histogram duration[METRICS_ROUTE_COUNT];
    struct histogram queue_wait;
    struct histogram ttft, itl;
    atomic_long parked;
};

static void histogram_init(struct histogram *h, const struct bucket_set *set)
{
    h->set = set;
    for (int i = 0; i < N_BUCKETS_MAX; i++)
        atomic_init(&h->bucket[i], 0);
    atomic_init(&h->sum_us, 0);
}

/* Seconds to whole microseconds, rounded; negative, NaN -> 0. */
static unsigned long long to_us(double seconds)
{
    if (!(seconds > 0)) // also NaN
        return 0;
    if (seconds > MAX_SECONDS)
        seconds = MAX_SECONDS;
    return (unsigned long long)(seconds * 1e6 + 0.5);
}

static void histogram_observe(struct histogram *h, double seconds)
{
    unsigned long long us = to_us(seconds);
    int i = 0;

    while (i < h->set->n && us > h->set->us[i])
        i++;
    atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, us, memory_order_relaxed);
}

static int code_slot(int status)
{
    for (int i = 0; i < N_TRACKED; i++)
        if (tracked_codes[i] == status)
            return i;
    return CODE_OTHER;
}

const char *metrics_route_name(enum metrics_route r)
{
    if ((unsigned)r >= METRICS_ROUTE_COUNT)
        r = METRICS_ROUTE_OTHER;
    return route_names[r];
}

int metrics_create(struct metrics **out)
{
    struct metrics *m = malloc(sizeof *m);

    *out = NULL;
    if (!m)
        return METRICS_ENOMEM;
    for (int r = 0; r < METRICS_ROUTE_COUNT; r++) {
        for (int c = 0; c < N_CODES; c++)
            atomic_init(&m->requests[r][c], 0);
        histogram_init(&m->duration[r], &wait_buckets);
    }
    histogram_init(&m->queue_wait, &wait_buckets);
    histogram_init(&m->ttft, &ttft_buckets);
    histogram_init(&m->itl, &itl_buckets);
    atomic_init(&m->parked, 0);
    *out = m;
    return 0;
}

void metrics_destroy(struct metrics *m)
{
    free(m);
}

void metrics_observe_request(struct metrics *m, enum metrics_route route, int http_status,
                             double seconds)
{
    if ((unsigned)route >= METRICS_ROUTE_COUNT)
        route = METRICS_ROUTE_OTHER;
    atomic_fetch_add_explicit(&m->requests[route][code_slot(http_status)], 1, memory_order_relaxed);
    histogram_observe(&m->duration[route], seconds);
}

void metrics_observe_queue_wait(struct metrics *m, double seconds)
{
    histogram_observe(&m->queue_wait, seconds);
}

void metrics_observe_ttft(struct metrics *m, double seconds)
{
    histogram_observe(&m->ttft, seconds);
}

void metrics_observe_itl(struct metrics *m, double seconds)
{
    histogram_observe(&m->itl, seconds);
}

void metrics_set_parked(struct metrics *m, long n)
{
    atomic_store_explicit(&m->parked, n, memory_order_relaxed);
}

/* ---- rendering ------------------------------------------------------- */

/* A growing text buffer; the first failure sticks and later appends do nothing. */
struct buf {
    char *p;
    size_t len, cap;
    int err;
};

static void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (b->err)
        return;
    for (;;) {
        size_t room = b->cap - b->len;
        va_start(ap, fmt);
        n = vsnprintf(b->p + b->len, room, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->err = METRICS_ENOMEM; // only on an encoding error; nothing better to say
            return;
        }
        if ((size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        if (grow_array((void **)&b->p, &b->cap, b->len + (size_t)n + 1, 1) < 0) {
            b->err = METRICS_ENOMEM;
            return;
        }
    }
}

static void family(struct buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A float value, in the shortest form that reads back as the same double. */
static void put_double(struct buf *b, double v)
{
    char s[32];

    if (isnan(v)) {
        buf_printf(b, "NaN");
        return;
    }
    if (isinf(v)) {
        buf_printf(b, "%sInf", v > 0 ? "+" : "-");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(s, sizeof s, "%.*g", prec, v);
        if (strtod(s, NULL) == v)
            break;
    }
    buf_printf(b, "%s", s);
}

/* Microseconds as exact decimal seconds: 7203000 -> "7.203". */
static void put_us_as_seconds(struct buf *b, unsigned long long us)
{
    char frac[8];
    int n;

    if (us % 1000000 == 0) {
        buf_printf(b, "%llu", us / 1000000);
        return;
    }
    snprintf(frac, sizeof frac, "%06llu", us % 1000000);
    for (n = 6; frac[n - 1] == '0'; n--)
        ;
    buf_printf(b, "%llu.%.*s", us / 1000000, n, frac);
}

/*
 * One histogram's samples. `labels` is "" or `key="value",` (with the comma),
 * put before le in the buckets and alone in _sum and _count. Buckets are read
 * once and cumulated, and _count is their total. Renders nothing when the
 * histogram is empty and skip_empty is set.
 */
static void put_histogram(struct buf *b, const char *name, const char *labels, struct histogram *h,
                          int skip_empty)
{
    unsigned long long counts[N_BUCKETS_MAX], total = 0, sum_us;
    size_t ll = strlen(labels);
    int nb = h->set->n + 1; /* with +Inf */

    for (int i = 0; i < nb; i++) {
        counts[i] = atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        total += counts[i];
    }
    if (total == 0 && skip_empty)
        return;
    sum_us = atomic_load_explicit(&h->sum_us, memory_order_relaxed);

    unsigned long long cum = 0;
    for (int i = 0; i < nb; i++) {
        cum += counts[i];
        buf_printf(b, "%s_bucket{%sle=\"%s\"} %llu\n", name, labels,
                   i < h->set->n ? h->set->le[i] : "+Inf", cum);
    }
    // labels without the trailing comma for _sum and _count
    if (ll > 0) {
        buf_printf(b, "%s_sum{%.*s} ", name, (int)(ll - 1), labels);
        put_us_as_seconds(b, sum_us);
        buf_printf(b, "\n%s_count{%.*s} %llu\n", name, (int)(ll - 1), labels, total);
    } else {
        buf_printf(b, "%s_sum ", name);
        put_us_as_seconds(b, sum_us);
        buf_printf(b, "\n%s_count %llu\n", name, total);
    }
}

static void put_gauge(struct buf *b, const char *name, const char *help, long v)
{
    family(b, name, "gauge", help);
    buf_printf(b, "%s %ld\n", name, v);
}

static void put_queue(struct buf *b, const struct queue_stats *st)
{
    const struct {
        const char *outcome;
        long v;
    } jobs[] = {
        {"enqueued", st->enqueued},   {"done", st->done},         {"failed", st->failed},
        {"cancelled", st->cancelled}, {"requeued", st->requeued}, {"retried", st->retried},
        {"released", st->released},   {"dead", st->dead_total},
    };

    put_gauge(b, "millrace_num_requests_waiting",
              "Jobs queued and not yet claimed by a worker, fleet-wide.", st->backlog);
    put_gauge(b, "millrace_num_requests_running",
              "Jobs claimed by a worker and not yet finished, fleet-wide.", st->running);
    put_gauge(b, "millrace_num_runners", "Runners with a fresh heartbeat.", st->runners);
    put_gauge(b, "millrace_dead_jobs", "Jobs on the dead list, given up after max attempts.",
              st->dead);
    if (st->oldest_queued_s >= 0) {
        family(b, "millrace_oldest_queued_seconds", "gauge",
               "Age of the job next in line; absent when the queue is empty.");
        buf_printf(b, "millrace_oldest_queued_seconds ");
        put_double(b, st->oldest_queued_s);
        buf_printf(b, "\n");
    }
    family(b, "millrace_jobs_total", "counter",
           "Job transitions recorded in Redis, fleet-wide, by outcome.");
    for (size_t i = 0; i < sizeof jobs / sizeof jobs[0]; i++)
        buf_printf(b, "millrace_jobs_total{outcome=\"%s\"} %ld\n", jobs[i].outcome, jobs[i].v);
}

static void put_double_gauge(struct buf *b, const char *name, const char *help, double v)
{
    family(b, name, "gauge", help);
    buf_printf(b, "%s ", name);
    put_double(b, v);
    buf_printf(b, "\n");
}

static void put_fleet(struct buf *b, const struct metrics_fleet *f)
{
    put_gauge(b, "millrace_num_active_sequences",
              "Sequences being generated by the live runners, fleet-wide.", f->active_sequences);
    put_gauge(b, "millrace_kv_cache_blocks_used",
              "KV-cache blocks in use on the live runners, fleet-wide.", f->kv_blocks_used);
    put_gauge(b, "millrace_kv_cache_blocks_total",
              "KV-cache blocks the live runners have, fleet-wide.", f->kv_blocks_total);
    put_double_gauge(b, "millrace_kv_cache_usage_ratio",
                     "Fraction of the fleet's KV-cache blocks in use (0 to 1).",
                     f->kv_blocks_total > 0 ? (double)f->kv_blocks_used / (double)f->kv_blocks_total
                                            : 0.0);
    put_double_gauge(b, "millrace_generation_tokens_per_second",
                     "Tokens generated per second by the live runners, as they report it.",
                     f->tokens_per_s);
}

int metrics_render(struct metrics *m, const struct queue_stats *st, char **out, size_t *len)
{
    return metrics_render_fleet(m, st, NULL, out, len);
}

int metrics_render_fleet(struct metrics *m, const struct queue_stats *st,
                         const struct metrics_fleet *fleet, char **out, size_t *len)
{
    struct buf b = {.p = malloc(8192), .len = 0, .cap = 8192, .err = 0};
    char labels[64];

    *out = NULL;
    *len = 0;
    if (!b.p)
        return METRICS_ENOMEM;

    family(&b, "millrace_http_requests_total", "counter",
           "HTTP requests answered by this API instance, by route and status code.");
    for (int r = 0; r < METRICS_ROUTE_COUNT; r++) {
        for (int c = 0; c < N_CODES; c++) {
            unsigned long long n = atomic_load_explicit(&m->requests[r][c], memory_order_relaxed);
            if (n == 0)
                continue;
            if (c == CODE_OTHER)
                buf_printf(&b, "millrace_http_requests_total{route=\"%s\",code=\"other\"} %llu\n",
                           route_names[r], n);
            else
                buf_printf(&b, "millrace_http_requests_total{route=\"%s\",code=\"%d\"} %llu\n",
                           route_names[r], tracked_codes[c], n);
        }
    }

    family(&b, "millrace_request_duration_seconds", "histogram",
           "Time from receiving a request to queueing its response, by route.");
    for (int r = 0; r < METRICS_ROUTE_COUNT; r++) {
        snprintf(labels, sizeof labels, "route=\"%s\",", route_names[r]);
        put_histogram(&b, "millrace_request_duration_seconds", labels, &m->duration[r], 1);
    }

    family(&b, "millrace_request_queue_time_seconds", "histogram",
           "Time jobs waited from creation until a worker claimed them.");
    put_histogram(&b, "millrace_request_queue_time_seconds", "", &m->queue_wait, 0);

    family(&b, "millrace_time_to_first_token_seconds", "histogram",
           "Time from a job's creation to its first generated token, for the jobs this API "
           "instance saw finish.");
    put_histogram(&b, "millrace_time_to_first_token_seconds", "", &m->ttft, 0);

    family(&b, "millrace_inter_token_latency_seconds", "histogram",
           "Mean time between two generated tokens of a job, for the jobs this API instance "
           "saw finish.");
    put_histogram(&b, "millrace_inter_token_latency_seconds", "", &m->itl, 0);

    put_gauge(&b, "millrace_parked_connections",
              "Connections this API instance holds open waiting for a job to finish.",
              atomic_load_explicit(&m->parked, memory_order_relaxed));
    put_gauge(&b, "millrace_redis_up", "Whether Redis answered this scrape's queue snapshot.",
              st != NULL);
    if (st)
        put_queue(&b, st);
    if (st && fleet)
        put_fleet(&b, fleet);

    if (b.err) {
        free(b.p);
        return b.err;
    }
    *out = b.p;
    *len = b.len;
    return 0;
}
