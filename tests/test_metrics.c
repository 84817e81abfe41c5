/*
 * Tests for api/metrics.c: request counters by route and status code, the
 * histograms (cumulative buckets, inclusive bounds, exact sums), exact totals
 * under concurrent recording with a scrape racing it, the queue snapshot
 * (present, absent when Redis is down), and the text exposition format,
 * checked line by line by a small checker that is itself tested.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api/metrics.h"

/* ---- helpers ---- */

static struct metrics *new_metrics(void)
{
    struct metrics *m = NULL;

    assert_int_equal(metrics_create(&m), 0);
    assert_non_null(m);
    return m;
}

/* Render; the caller frees. Checks that len is the string's length. */
static char *render(struct metrics *m, const struct queue_stats *st)
{
    char *text = NULL;
    size_t len = 0;

    assert_int_equal(metrics_render(m, st, &text, &len), 0);
    assert_non_null(text);
    assert_int_equal(len, strlen(text));
    return text;
}

/* The value of the sample line that starts with `series` and a space, copied
 * into out; NULL when there is no such line. */
static const char *find_value(const char *text, const char *series, char *out, size_t outlen)
{
    size_t sl = strlen(series);

    for (const char *line = text; *line; line = strchr(line, '\n') + 1) {
        const char *end = strchr(line, '\n');
        if (!end)
            end = line + strlen(line);
        if ((size_t)(end - line) > sl && strncmp(line, series, sl) == 0 && line[sl] == ' ') {
            snprintf(out, outlen, "%.*s", (int)(end - line - sl - 1), line + sl + 1);
            return out;
        }
        if (!*end)
            break;
    }
    return NULL;
}

/* The value of `series` as a number; fails the test when it is missing. */
static double value_of(const char *text, const char *series)
{
    char v[64];

    if (!find_value(text, series, v, sizeof v))
        fail_msg("no sample %s in:\n%s", series, text);
    return strtod(v, NULL);
}

static void assert_value(const char *text, const char *series, double want)
{
    double got = value_of(text, series);

    if (got != want)
        fail_msg("%s is %.17g, want %.17g", series, got, want);
}

static void assert_value_str(const char *text, const char *series, const char *want)
{
    char v[64];

    if (!find_value(text, series, v, sizeof v))
        fail_msg("no sample %s in:\n%s", series, text);
    assert_string_equal(v, want);
}

static void assert_no_series(const char *text, const char *series)
{
    char v[64];

    if (find_value(text, series, v, sizeof v))
        fail_msg("unexpected sample %s %s", series, v);
}

static void assert_contains(const char *text, const char *needle)
{
    if (!strstr(text, needle))
        fail_msg("output does not contain \"%s\":\n%s", needle, text);
}

static void assert_not_contains(const char *text, const char *needle)
{
    if (strstr(text, needle))
        fail_msg("output contains \"%s\":\n%s", needle, text);
}

/* ---- a tiny exposition format checker ---- */

static int is_name_start(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}

static int is_name_char(char c)
{
    return is_name_start(c) || (c >= '0' && c <= '9');
}

/* Length of the metric (or label) name at s, 0 if none. */
static size_t name_len(const char *s, const char *end)
{
    size_t n = 0;

    if (s >= end || !is_name_start(s[0]))
        return 0;
    while (s + n < end && is_name_char(s[n]))
        n++;
    return n;
}

#define MAX_FAMILIES 32

struct fam {
    char name[96];
    char type[16];
    int helps, types;
};

static struct fam *fam_get(struct fam *f, int *n, const char *name, size_t len)
{
    for (int i = 0; i < *n; i++)
        if (strlen(f[i].name) == len && strncmp(f[i].name, name, len) == 0)
            return &f[i];
    if (*n == MAX_FAMILIES || len >= sizeof f[0].name)
        return NULL;
    memset(&f[*n], 0, sizeof f[*n]);
    memcpy(f[*n].name, name, len);
    return &f[(*n)++];
}

/* Whether sample name s (len n) belongs to family f. */
static int sample_of(const struct fam *f, const char *s, size_t n)
{
    size_t fl = strlen(f->name);
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};

    if (n == fl && strncmp(s, f->name, n) == 0)
        return strcmp(f->type, "histogram") != 0;
    if (strcmp(f->type, "histogram") != 0 || n <= fl || strncmp(s, f->name, fl) != 0)
        return 0;
    for (int i = 0; i < 3; i++)
        if (n - fl == strlen(suffixes[i]) && strncmp(s + fl, suffixes[i], n - fl) == 0)
            return 1;
    return 0;
}

/*
 * NULL when text is well-formed exposition format 0.0.4 as we write it: ends
 * with a newline; no empty line; `# HELP name text` and `# TYPE name
 * counter|gauge|histogram` exactly once per family, before its samples; every
 * sample is `name{label="value",...} value` (labels optional) with a number
 * for value and belongs to the family declared last. Else what is wrong.
 */
static const char *exposition_error(const char *text)
{
    static char why[256];
    struct fam fams[MAX_FAMILIES];
    int nfams = 0;
    struct fam *cur = NULL;
    size_t tl = strlen(text);

    if (tl == 0 || text[tl - 1] != '\n')
        return "does not end with a newline";
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n'), *p = line;
        size_t n;

        if (end == line)
            return "empty line";
        if (strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0) {
            int help = line[2] == 'H';
            p = line + 7;
            n = name_len(p, end);
            if (n == 0 || p + n >= end || p[n] != ' ' || p + n + 1 == end) {
                snprintf(why, sizeof why, "bad comment: %.*s", (int)(end - line), line);
                return why;
            }
            struct fam *f = fam_get(fams, &nfams, p, n);
            if (!f)
                return "too many families";
            if (help) {
                f->helps++;
            } else {
                f->types++;
                snprintf(f->type, sizeof f->type, "%.*s", (int)(end - (p + n + 1)), p + n + 1);
                if (strcmp(f->type, "counter") && strcmp(f->type, "gauge") &&
                    strcmp(f->type, "histogram")) {
                    snprintf(why, sizeof why, "bad type: %.*s", (int)(end - line), line);
                    return why;
                }
            }
            if (f->helps > 1 || f->types > 1) {
                snprintf(why, sizeof why, "second %s for %s", help ? "HELP" : "TYPE", f->name);
                return why;
            }
            cur = f;
        } else {
            n = name_len(p, end);
            if (n == 0) {
                snprintf(why, sizeof why, "bad sample name: %.*s", (int)(end - line), line);
                return why;
            }
            if (!cur || cur->types != 1 || !sample_of(cur, p, n)) {
                snprintf(why, sizeof why, "sample outside its family: %.*s", (int)(end - line),
                         line);
                return why;
            }
            p += n;
            if (*p == '{') {
                p++;
                for (;;) {
                    size_t ln = name_len(p, end);
                    if (ln == 0 || p[ln] != '=' || p[ln + 1] != '"')
                        goto bad_labels;
                    p += ln + 2;
                    while (p < end && *p != '"' && *p != '\\')
                        p++;
                    if (p >= end || *p != '"')
                        goto bad_labels;
                    p++;
                    if (*p == ',') {
                        p++;
                        continue;
                    }
                    if (*p == '}') {
                        p++;
                        break;
                    }
                bad_labels:
                    snprintf(why, sizeof why, "bad labels: %.*s", (int)(end - line), line);
                    return why;
                }
            }
            char *vend;
            if (*p != ' ' || p + 1 == end || p[1] == ' ')
                goto bad_value;
            strtod(p + 1, &vend);
            if (vend != end) {
            bad_value:
                snprintf(why, sizeof why, "bad value: %.*s", (int)(end - line), line);
                return why;
            }
        }
        line = end + 1;
    }
    for (int i = 0; i < nfams; i++) {
        if (fams[i].helps != 1 || fams[i].types != 1) {
            snprintf(why, sizeof why, "%s has %d HELP and %d TYPE lines", fams[i].name,
                     fams[i].helps, fams[i].types);
            return why;
        }
    }
    return NULL;
}

static void assert_well_formed(const char *text)
{
    const char *why = exposition_error(text);

    if (why)
        fail_msg("%s in:\n%s", why, text);
}

static struct queue_stats sample_stats(void)
{
    return (struct queue_stats){
        .backlog = 17,
        .running = 5,
        .runners = 3,
        .dead = 2,
        .oldest_queued_s = 12.5,
        .enqueued = 1001,
        .done = 950,
        .failed = 11,
        .cancelled = 7,
        .requeued = 4,
        .retried = 6,
        .released = 9,
        .dead_total = 13,
    };
}

/* ---- request counters ---- */

static void test_requests_counted_by_route_and_code(void **state)
{
    (void)state;
    struct metrics *m = new_metrics();

    for (int i = 0; i < 3; i++)
        metrics_observe_request(m, METRICS_ROUTE_GENERATE, 200, 0.01);
    metrics_observe_request(m, METRICS_ROUTE_GENERATE, 429, 0.001);
    metrics_observe_request(m, METRICS_ROUTE_JOBS_GET, 404, 0.001);
    metrics_observe_request(m, METRICS_ROUTE_JOBS_GET, 404, 0.001);
    metrics_observe_request(m, METRICS_ROUTE_JOBS_SUBMIT, 202, 0.001);

    char *t = render(m, NULL);
    assert_value(t, "millrace_http_requests_total{route=\"generate\",code=\"200\"}", 3);
    assert_value(t, "millrace_http_requests_total{route=\"generate\",code=\"429\"}", 1);
    assert_value(t, "millrace_http_requests_total{route=\"jobs_get\",code=\"404\"}", 2);
    assert_value(t, "millrace_http_requests_total{route=\"jobs_submit\",code=\"202\"}", 1);
    assert_no_series(t, "millrace_http_requests_total{route=\"jobs_get\",code=\"200\"}");
    assert_no_series(t, "millrace_http_requests_total{route=\"health\",code=\"200\"}");
    free(t);
    metrics_destroy(m);
}

static void test_unknown_status_counted_as_other(void **state)
{
    (void)state;
    struct metrics *m = new_metrics();

    metrics_observe_request(m, METRICS_ROUTE_HEALTH, 418, 0.001);
    metrics_observe_request(m, METRICS_ROUTE_HEALTH, 302, 0.001);
    metrics_observe_request(m, METRICS_ROUTE_HEALTH, -1, 0.001);

    char *t = render(m, NULL);
    assert_value(t, "millrace_http_requests_total{route=\"health\",code=\"other\"}", 3);
    assert_not_contains(t, "code=\"418\"");
    assert_not_contains(t, "code=\"302\"");
    free(t);
    metrics_destroy(m);
}

static void test_every_tracked_status_has_its_own_series(void **state)
{
    (void)state;
    static const int codes[] = {200, 202, 204, 400, 401, 404, 405, 408,
                                409, 413, 415, 429, 500, 503, 504};
    struct metrics *m = new_metrics();
    char series[128];

    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        for (size_t k = 0; k <= i; k++)
            metrics_observe_request(m, METRICS_ROUTE_STATS, codes[i], 0.001);

    char *t = render(m, NULL);
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        snprintf(series, sizeof series, "millrace_http_requests_total{route=\"stats\",code=\"%d\"}",
                 codes[i]);
        assert_value(t, series, (double)(i + 1));
    }
    assert_no_series(t, "millrace_http_requests_total{route=\"stats\",code=\"other\"}");
    free(t);
    metrics_destroy(m);
}

static void test_out_of_range_route_counts_as_other(void **state)
{
    (void)state;
    struct metrics *m = new_metrics();

    metrics_observe_request(m, (enum metrics_route)99, 200, 0.001);
    metrics_observe_request(m, METRICS_ROUTE_COUNT, 200, 0.001);

    char *t = render(m, NULL);
    assert_value(t, "millrace_http_requests_total{route=\"other\",code=\"200\"}", 2);
    assert_value(t, "millrace_request_duration_seconds_count{route=\"other\"}", 2);
    free(t);
    metrics_destroy(m);
}

static void test_route_names_are_distinct_labels(void **state)
{
    (void)state;
    static const char *const want[METRICS_ROUTE_COUNT] = {
        "generate", "jobs_submit", "jobs_get", "jobs_delete", "jobs_stream",
        "health",   "stats",       "metrics",  "other",
    };

    for (int r = 0; r < METRICS_ROUTE_COUNT; r++)
        assert_string_equal(metrics_route_name((enum metrics_route)r), want[r]);
    assert_string_equal(metrics_route_name((enum metrics_route) - 1), "other");
    assert_string_equal(metrics_route_name(METRICS_ROUTE_COUNT), "other");
}

static void test_empty_families_render_only_help_and_type(void **state)
{
    (void)state;
    struct metrics *m = new_metrics();
    char *t = render(m, NULL);

    assert_contains(t, "# HELP millrace_http_requests_total ");
    assert_contains(t, "# TYPE millrace_http_requests_total counter\n");
    assert_not_contains(t, "millrace_http_requests_total{");
    assert_contains(t, "# TYPE millrace_request_duration_seconds histogram\n");
    assert_not_contains(t, "millrace_request_duration_seconds_");
    // the unlabelled histogram is always there, all zero
    assert_value(t, "millrace_request_queue_time_seconds_bucket{le=\"+Inf\"}", 0);
    assert_value_str(t, "millrace_request_queue_time_seconds_sum", "0");
    assert_value(t, "millrace_request_queue_time_seconds_count", 0);
    free(t);
    metrics_destroy(m);
}

/* ---- histograms ---- */

static void test_request_histogram_buckets_cumulative(void **state)
{
    (void)state;
    struct metrics *m = new_metrics();

    metrics_observe_request(m, METRICS_ROUTE_GENERATE, 200, 0.003);
    metrics_observe_request(m, METRICS_ROUTE_GENERATE, 200, 0.2);
    metrics_observe_request(m, METRICS_ROUTE_GENERATE, 200, 7);

    char *t = render(m, NULL);
#define B(le) "millrace_request_duration_seconds_bucket{route=\"generate\",le=\"" le "\"}"
    assert_value(t, B("0.005"), 1);
    assert_value(t, B("0.01"), 1);
    assert_value(t, B("0.1"), 1);
    assert_value(t, B("0.25"), 2);
    assert_value(t, B("5"), 2);
    assert_value(t, B("10"), 3);
    assert_value(t, B("120"), 3);
    assert_value(t, B("+Inf"), 3);
#undef B
    assert_value_str(t, "millrace_request_duration_seconds_sum{route=\"generate\"}", "7.203");
    assert_value(t, "millrace_request_duration_seconds_count{route=\"generate\"}", 3);
    free(t);
    metrics_destroy(m);
}

static void test_bucket_order_and_bounds_as_written(void **state)
{
    (void)state;
    static const char *const les[] = {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
                                      "2.5",   "5",    "10",    "30",   "60",  "120",  "+Inf"};
    struct metrics *m = new_metrics();
    char needle[128];
    const char *at;

    metrics_observe_queue_wait(m, 1);
    char *t = render(m, NULL);
    at = t;
    for (size_t i = 0; i < sizeof les / sizeof les[0]; i++) {
        snprintf(needle, sizeof needle, "millrace_request_queue_time_seconds_bucket{le=\"%s\"} ",
                 les[i]);
        at = strstr(at, needle);
        if (!at)
            fail_msg("le=\"%s\" missing or out of order in:\n%s", les[i], t);
    }
    free(t);
    metrics_destroy(m);
}

static void test_histogram_renders_only_observed_routes(void **state)
{
    (void)state;
    struct metrics *m = new_metrics();

    metrics_observe_request(m, METRICS_ROUTE_JOBS_STREAM, 200, 30);

    char *t = render(m, NULL);
    assert_value(t, "millrace_request_duration_seconds_count{route=\"jobs_stream\"}", 1);
    assert_not_contains(t, "millrace_request_duration_seconds_bucket{route=\"generate\"");
    assert_not_contains(t, "millrace_request_duration_seconds_count{route=\"health\"");
    free(t);
    metrics_destroy(m);
}

static void test_queue_time_histogram(void **state)
{
    (void)state;
    struct metrics *m = new_metrics();

    metrics_observe_queue_wait(m, 0.003);
    metrics_observe_queue_wait(m, 0.2);
    metrics_observe_queue_wait(m, 7);

    char *t = render(m, NULL);
    assert_value(t, "millrace_request_queue_time_seconds_bucket{le=\"0.005\"}", 1);
    assert_value(t, "millrace_request_queue_time_seconds_bucket{le=\"0.25\"}", 2);
    assert_value(t, "millrace_request_queue_time_seconds_bucket{le=\"10\"}", 3);
    assert_value(t, "millrace_request_queue_time_seconds_bucket{le=\"+Inf\"}", 3);
    assert_value_str(t, "millrace_request_queue_time_seconds_sum", "7.203");
    assert_value(t, "millrace_request_queue_time_seconds_count", 3);
    // queue waits are not requests
    assert_not_contains(t, "millrace_request_duration_seconds_bucket");
    free(t);
    metrics_destroy(m);
}

static void test_bucket_upper_bound_is_inclusive(void **state)
{
    (void)state;
    struct metrics *m = new_metrics();

    metrics_observe_queue_wait(m, 0.005);
    metrics_observe_queue_wait(m, 0.0050004); // rounds to 5000 us
    metrics_observe_queue_wait(m, 0.006);
    metrics_observe_queue_wait(m, 120);

    char *t = render(m, NULL);
    assert_value(t, "millrace_request_queue_time_seconds_bucket{le=\"0.005\"}", 2);
    assert_value(t, "millrace_request_queue_time_seconds_bucket{le=\"0.01\"}", 3);
    assert_value(t, "millrace_request_queue_time_seconds_bucket{le=\"60\"}", 3);
    assert_value(t, "millrace_request_queue_time_seconds_bucket{le=\"120\"}", 4);
    free(t);
    metrics_destroy(m);
}

static void test_bad_durations_count_as_zero(void **state)
{
    (void)state;
    struct metrics *m = new_metrics();

    metrics_observe_queue_wait(m, -3);
    metrics_observe_queue_wait(m, NAN);
    metrics_observe_queue_wait(m, 1e300); // clamped, lands in +Inf only

    char *t = render(m, NULL);
    assert_value(t, "millrace_request_queue_time_seconds_bucket{le=\"0.005\"}", 2);
    assert_value(t, "millrace_request_queue_time_seconds_bucket{le=\"120\"}", 2);
    assert_value(t, "millrace_request_queue_time_seconds_bucket{le=\"+Inf\"}", 3);
    assert_value(t, "millrace_request_queue_time_seconds_count", 3);
    assert_value_str(t, "millrace_request_queue_time_seconds_sum", "1000000000");
    free(t);
    metrics_destroy(m);
}

/* ---- concurrency ---- */

#define N_THREADS   4
#define PER_THREAD  100000
#define FAST_US     2000   /* 0.002 s */
#define SLOW_US     300000 /* 0.3 s */
#define GEN_BUCKETS "millrace_request_duration_seconds_bucket{route=\"generate\",le=\""

struct race {
    struct metrics *m;
    atomic_int go; /* set once every thread exists, so that they overlap */
    atomic_int writers_done;
    atomic_int bad_scrapes; /* a scrape where +Inf != _count or buckets decreased */
    int scrapes;
};

static void *observer(void *arg)
{
    struct race *r = arg;

    while (!atomic_load(&r->go))
        ;
    for (int i = 0; i < PER_THREAD; i++) {
        int slow = i & 1;
        metrics_observe_request(r->m, METRICS_ROUTE_GENERATE, slow ? 200 : 999,
                                slow ? SLOW_US / 1e6 : FAST_US / 1e6);
        metrics_observe_queue_wait(r->m, slow ? SLOW_US / 1e6 : FAST_US / 1e6);
    }
    atomic_fetch_add(&r->writers_done, 1);
    return NULL;
}

/* Whether one scrape is consistent: generate's buckets never decrease and its
 * +Inf bucket equals its _count. Uses no cmocka assertion (not the main thread). */
static int scrape_consistent(const char *t)
{
    const char *p = t;
    double prev = 0, inf = -1, count = -2;
    char v[64];

    while ((p = strstr(p, GEN_BUCKETS))) {
        const char *q = strchr(p, '}');
        double x = strtod(q + 2, NULL);
        if (x < prev)
            return 0;
        prev = x;
        if (strncmp(p + strlen(GEN_BUCKETS), "+Inf", 4) == 0)
            inf = x;
        p = q;
    }
    if (prev == 0) // nothing observed yet
        return 1;
    if (find_value(t, "millrace_request_duration_seconds_count{route=\"generate\"}", v, sizeof v))
        count = strtod(v, NULL);
    return inf == count && exposition_error(t) == NULL;
}

static void *scraper(void *arg)
{
    struct race *r = arg;

    while (atomic_load(&r->writers_done) < N_THREADS) {
        char *t = NULL;
        size_t len;
        if (metrics_render(r->m, NULL, &t, &len) != 0 || !scrape_consistent(t))
            atomic_fetch_add(&r->bad_scrapes, 1);
        free(t);
        r->scrapes++;
    }
    return NULL;
}

static void test_concurrent_observations_exact(void **state)
{
    (void)state;
    struct race r = {.m = new_metrics()};
    pthread_t th[N_THREADS], scr;

    atomic_init(&r.go, 0);
    atomic_init(&r.writers_done, 0);
    atomic_init(&r.bad_scrapes, 0);
    assert_int_equal(pthread_create(&scr, NULL, scraper, &r), 0);
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, observer, &r), 0);
    atomic_store(&r.go, 1);
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(pthread_join(scr, NULL), 0);

    assert_int_equal(atomic_load(&r.bad_scrapes), 0);
    assert_true(r.scrapes > 0);

    const double total = (double)N_THREADS * PER_THREAD, half = total / 2;
    // every thread: PER_THREAD/2 fast and PER_THREAD/2 slow, in microseconds
    unsigned long long sum_us =
        (unsigned long long)N_THREADS * (PER_THREAD / 2) * (FAST_US + SLOW_US);
    char want_sum[32];
    snprintf(want_sum, sizeof want_sum, "%llu", sum_us / 1000000); // 60400 s: whole seconds
    assert_int_equal(sum_us % 1000000, 0);

    char *t = render(r.m, NULL);
    assert_value(t, "millrace_http_requests_total{route=\"generate\",code=\"200\"}", half);
    assert_value(t, "millrace_http_requests_total{route=\"generate\",code=\"other\"}", half);
    assert_value(t, GEN_BUCKETS "0.005\"}", half);
    assert_value(t, GEN_BUCKETS "0.25\"}", half);
    assert_value(t, GEN_BUCKETS "0.5\"}", total);
    assert_value(t, GEN_BUCKETS "+Inf\"}", total);
    assert_value(t, "millrace_request_duration_seconds_count{route=\"generate\"}", total);
    assert_value_str(t, "millrace_request_duration_seconds_sum{route=\"generate\"}", want_sum);
    assert_value(t, "millrace_request_queue_time_seconds_bucket{le=\"0.005\"}", half);
    assert_value(t, "millrace_request_queue_time_seconds_count", total);
    assert_value_str(t, "millrace_request_queue_time_seconds_sum", want_sum);
    free(t);
    metrics_destroy(r.m);
}

/* ---- gauges and the queue snapshot ---- */

static void test_null_snapshot_means_redis_down(void **state)
{
    (void)state;
    struct metrics *m = new_metrics();
    char *t = render(m, NULL);

    assert_value(t, "millrace_redis_up", 0);
    assert_not_contains(t, "millrace_num_requests_waiting");
    assert_not_contains(t, "millrace_num_requests_running");
    assert_not_contains(t, "millrace_num_runners");
    assert_not_contains(t, "millrace_dead_jobs");
    assert_not_contains(t, "millrace_oldest_queued_seconds");
    assert_not_contains(t, "millrace_jobs_total");
    // this instance's own metrics are still there
    assert_contains(t, "# TYPE millrace_parked_connections gauge\n");
    free(t);
    metrics_destroy(m);
}

static void test_snapshot_values_rendered(void **state)
{
    (void)state;
    struct metrics *m = new_metrics();
    struct queue_stats st = sample_stats();
    char *t = render(m, &st);

    assert_value(t, "millrace_redis_up", 1);
    assert_value(t, "millrace_num_requests_waiting", 17);
    assert_value(t, "millrace_num_requests_running", 5);
    assert_value(t, "millrace_num_runners", 3);
    assert_value(t, "millrace_dead_jobs", 2);
    assert_value_str(t, "millrace_oldest_queued_seconds", "12.5");
    assert_value(t, "millrace_jobs_total{outcome=\"enqueued\"}", 1001);
    assert_value(t, "millrace_jobs_total{outcome=\"done\"}", 950);
    assert_value(t, "millrace_jobs_total{outcome=\"failed\"}", 11);
    assert_value(t, "millrace_jobs_total{outcome=\"cancelled\"}", 7);
    assert_value(t, "millrace_jobs_total{outcome=\"requeued\"}", 4);
    assert_value(t, "millrace_jobs_total{outcome=\"retried\"}", 6);
    assert_value(t, "millrace_jobs_total{outcome=\"released\"}", 9);
    assert_value(t, "millrace_jobs_total{outcome=\"dead\"}", 13);
    assert_contains(t, "# TYPE millrace_jobs_total counter\n");
    assert_contains(t, "# TYPE millrace_num_requests_waiting gauge\n");
    free(t);
    metrics_destroy(m);
}

static void test_oldest_queued_omitted_when_queue_empty(void **state)
{
    (void)state;
    struct metrics *m = new_metrics();
    struct queue_stats st = sample_stats();

    st.oldest_queued_s = -1;
    char *t = render(m, &st);
    assert_not_contains(t, "millrace_oldest_queued_seconds");
    assert_value(t, "millrace_num_requests_waiting", 17);
    free(t);

    st.oldest_queued_s = 0;
    t = render(m, &st);
    assert_value_str(t, "millrace_oldest_queued_seconds", "0");
    free(t);
    metrics_destroy(m);
}

static void test_float_gauge_shortest_round_trip(void **state)
{
    (void)state;
    struct metrics *m = new_metrics();
    struct queue_stats st = sample_stats();
    char v[64];

    st.oldest_queued_s = 0.1;
    char *t = render(m, &st);
    assert_value_str(t, "millrace_oldest_queued_seconds", "0.1");
    free(t);

    st.oldest_queued_s = 1.0 / 3.0;
    t = render(m, &st);
    assert_non_null(find_value(t, "millrace_oldest_queued_seconds", v, sizeof v));
    assert_true(strtod(v, NULL) == 1.0 / 3.0);
    free(t);
    metrics_destroy(m);
}

static void test_parked_gauge_holds_last_value(void **state)
{
    (void)state;
    struct metrics *m = new_metrics();

    char *t = render(m, NULL);
    assert_value(t, "millrace_parked_connections", 0);
    free(t);

    metrics_set_parked(m, 7);
    metrics_set_parked(m, 3);
    t = render(m, NULL);
    assert_value(t, "millrace_parked_connections", 3);
    free(t);
    metrics_destroy(m);
}

/* ---- the exposition format ---- */

static struct metrics *busy_metrics(void)
{
    struct metrics *m = new_metrics();

    for (int r = 0; r < METRICS_ROUTE_COUNT; r++) {
        metrics_observe_request(m, (enum metrics_route)r, 200, 0.01 * r);
        metrics_observe_request(m, (enum metrics_route)r, 777, 1.5);
    }
    metrics_observe_queue_wait(m, 0.42);
    metrics_set_parked(m, 12);
    return m;
}

static void test_exposition_well_formed(void **state)
{
    (void)state;
    struct metrics *m = busy_metrics();
    struct queue_stats st = sample_stats();

    char *t = render(m, &st);
    assert_well_formed(t);
    free(t);
    t = render(m, NULL);
    assert_well_formed(t);
    free(t);
    metrics_destroy(m);

    m = new_metrics();
    t = render(m, NULL);
    assert_well_formed(t);
    free(t);
    metrics_destroy(m);
}

static void test_every_family_declared_once(void **state)
{
    (void)state;
    static const char *const families[] = {
        "millrace_http_requests_total",
        "millrace_request_duration_seconds",
        "millrace_request_queue_time_seconds",
        "millrace_parked_connections",
        "millrace_redis_up",
        "millrace_num_requests_waiting",
        "millrace_num_requests_running",
        "millrace_num_runners",
        "millrace_dead_jobs",
        "millrace_oldest_queued_seconds",
        "millrace_jobs_total",
    };
    struct metrics *m = busy_metrics();
    struct queue_stats st = sample_stats();
    char *t = render(m, &st);
    char needle[128];

    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        for (int k = 0; k < 2; k++) {
            int n = 0;
            snprintf(needle, sizeof needle, "# %s %s ", k ? "TYPE" : "HELP", families[i]);
            for (const char *p = t; (p = strstr(p, needle)); p++)
                n++;
            if (n != 1)
                fail_msg("%d lines \"%s\"", n, needle);
        }
    }
    free(t);
    metrics_destroy(m);
}

static void test_line_checker_rejects_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "# HELP a x\n# TYPE a gauge\na 1",                   // no newline at the end
        "# HELP a x\n# TYPE a gauge\na 1\n\n",               // empty line
        "# HELP a x\n# HELP a y\n# TYPE a gauge\na 1\n",     // two HELP
        "# HELP a x\n# TYPE a gauge\n# TYPE a gauge\na 1\n", // two TYPE
        "# TYPE a gauge\na 1\n",                             // no HELP
        "# HELP a x\n# TYPE a summary\na 1\n",               // unknown type
        "a 1\n",                                             // no family
        "# HELP a x\n# TYPE a gauge\nb 1\n",                 // other family's sample
        "# HELP a x\n# TYPE a gauge\na\n",                   // no value
        "# HELP a x\n# TYPE a gauge\na one\n",               // not a number
        "# HELP a x\n# TYPE a gauge\na 1 2\n",               // trailing junk
        "# HELP a x\n# TYPE a gauge\na{k=\"v\" 1\n",         // unclosed labels
        "# HELP a x\n# TYPE a gauge\na{k=v} 1\n",            // unquoted label value
        "# HELP a x\n# TYPE a gauge\na{=\"v\"} 1\n",         // no label name
        "# HELP a x\n# TYPE a gauge\n1a 1\n",                // bad metric name
        "# HELP h x\n# TYPE h histogram\nh 1\n",             // bare histogram name
        "# HELP h x\n# TYPE h histogram\nh_total 1\n",       // wrong suffix
    };
    static const char *const good = "# HELP a x y\n# TYPE a gauge\na 1\na{k=\"v\",l=\"w\"} +Inf\n"
                                    "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"0.5\"} 2\n"
                                    "h_sum 0.25\nh_count 2\n";

    assert_null(exposition_error(good));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (!exposition_error(bad[i]))
            fail_msg("checker accepted bad input %zu: %s", i, bad[i]);
}

static void test_render_ends_with_newline(void **state)
{
    (void)state;
    struct metrics *m = busy_metrics();
    struct queue_stats st = sample_stats();

    for (int k = 0; k < 2; k++) {
        char *t = render(m, k ? &st : NULL);
        size_t len = strlen(t);
        assert_true(len > 0);
        assert_int_equal(t[len - 1], '\n');
        free(t);
    }
    metrics_destroy(m);
}

static void test_destroy_null_is_noop(void **state)
{
    (void)state;
    metrics_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_requests_counted_by_route_and_code),
        cmocka_unit_test(test_unknown_status_counted_as_other),
        cmocka_unit_test(test_every_tracked_status_has_its_own_series),
        cmocka_unit_test(test_out_of_range_route_counts_as_other),
        cmocka_unit_test(test_route_names_are_distinct_labels),
        cmocka_unit_test(test_empty_families_render_only_help_and_type),
        cmocka_unit_test(test_request_histogram_buckets_cumulative),
        cmocka_unit_test(test_bucket_order_and_bounds_as_written),
        cmocka_unit_test(test_histogram_renders_only_observed_routes),
        cmocka_unit_test(test_queue_time_histogram),
        cmocka_unit_test(test_bucket_upper_bound_is_inclusive),
        cmocka_unit_test(test_bad_durations_count_as_zero),
        cmocka_unit_test(test_concurrent_observations_exact),
        cmocka_unit_test(test_null_snapshot_means_redis_down),
        cmocka_unit_test(test_snapshot_values_rendered),
        cmocka_unit_test(test_oldest_queued_omitted_when_queue_empty),
        cmocka_unit_test(test_float_gauge_shortest_round_trip),
        cmocka_unit_test(test_parked_gauge_holds_last_value),
        cmocka_unit_test(test_exposition_well_formed),
        cmocka_unit_test(test_every_family_declared_once),
        cmocka_unit_test(test_line_checker_rejects_malformed),
        cmocka_unit_test(test_render_ends_with_newline),
        cmocka_unit_test(test_destroy_null_is_noop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
