/*
 * bench_queue: how fast a job goes enqueue -> claim -> complete -> notify
 * through a real redis-server, next to what the same server does for plain
 * LPUSH (redis-benchmark), as a ratio.
 *
 * Two measurements:
 * - one client doing whole round trips in sequence (latency-bound), next to
 *   `redis-benchmark -c 1 -t lpush`;
 * - 8 producers, 4 workers claiming up to 16 at a time and one API inbox
 *   drain, all concurrent (throughput-bound), next to `redis-benchmark -c 50
 *   -t lpush`.
 * A round trip is 4 Redis calls at least (3 scripts + the inbox pop), so the
 * ratio to a single LPUSH shows the protocol's cost per job. Redis runs with
 * AOF and `appendfsync everysec`, the production setting.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/ids.h"
#include "common/log.h"
#include "common/queue.h"
#include "tests/support/redis_server.h"

#define SEQ_JOBS  5000
#define CONC_JOBS 40000
#define PRODUCERS 8
#define WORKERS   4
#define PAYLOAD   "{\"text\":\"Once upon a time\",\"max_tokens\":64}"

static struct test_redis srv;
static volatile int stop_workers;
static volatile long drained;

static struct queue *open_queue(const char *name)
{
    struct redis_opts ro;
    struct queue_opts qo;
    char err[256];
    redis_opts_default(&ro);
    ro.retry_ms = 5000;
    if (redis_url_parse(srv.url, &ro.target, err, sizeof(err)) < 0)
        abort();
    queue_opts_default(&qo);
    qo.prefix = "{bench}";
    struct queue *q = NULL;
    if (queue_create(&q, &ro, &qo, name, err, sizeof(err)) < 0) {
        fprintf(stderr, "bench: %s\n", err);
        exit(1);
    }
    return q;
}

static void check(int rc, struct queue *q, const char *what)
{
    if (rc < 0) {
        fprintf(stderr, "bench: %s failed: %s\n", what, queue_errstr(q));
        exit(1);
    }
}

static double sequential(void)
{
    struct queue *api = open_queue("bench:api"), *w = open_queue("bench:worker");
    check(queue_register(w, "w0", NULL), w, "register");
    int64_t t0 = clock_now_ms();
    for (int i = 0; i < SEQ_JOBS; i++) {
        char id[QUEUE_ID_MAX + 1], got[QUEUE_ID_MAX + 1], ids[4][QUEUE_ID_MAX + 1];
        enum queue_enqueue_outcome oc;
        struct queue_claimed job;
        int n = 0, rec = 0;
        ids_job_id(id);
        check(queue_enqueue(api, id, PAYLOAD, strlen(PAYLOAD), "api0", NULL, got, &oc), api,
              "enqueue");
        check(queue_claim(w, "w0", 1, 0, &job, &n), w, "claim");
        if (n != 1)
            abort();
        check(queue_finish(w, "w0", job.id, job.attempt, QUEUE_OUTCOME_DONE, "{}", 2, &rec), w,
              "finish");
        queue_claimed_fini(&job, 1);
        check(queue_inbox_wait(api, "api0", 1000, ids, 4, &n), api, "inbox");
        if (n != 1 || strcmp(ids[0], id) != 0)
            abort();
    }
    double s = (double)(clock_now_ms() - t0) / 1e3;
    queue_destroy(api);
    queue_destroy(w);
    return SEQ_JOBS / s;
}

static void *producer(void *arg)
{
    (void)arg;
    struct queue *q = open_queue("bench:producer");
    for (int i = 0; i < CONC_JOBS / PRODUCERS; i++) {
        char id[QUEUE_ID_MAX + 1], got[QUEUE_ID_MAX + 1];
        enum queue_enqueue_outcome oc;
        ids_job_id(id);
        check(queue_enqueue(q, id, PAYLOAD, strlen(PAYLOAD), "api1", NULL, got, &oc), q, "enqueue");
    }
    queue_destroy(q);
    return NULL;
}

static void *worker(void *arg)
{
    char wid[16];
    snprintf(wid, sizeof(wid), "w%d", *(int *)arg);
    struct queue *q = open_queue("bench:worker");
    check(queue_register(q, wid, NULL), q, "register");
    while (!stop_workers) {
        struct queue_claimed jobs[16];
        int n = 0;
        check(queue_claim(q, wid, 16, 50, jobs, &n), q, "claim");
        for (int i = 0; i < n; i++) {
            int rec;
            check(queue_finish(q, wid, jobs[i].id, jobs[i].attempt, QUEUE_OUTCOME_DONE, "{}", 2,
                               &rec),
                  q, "finish");
        }
        queue_claimed_fini(jobs, n);
    }
    queue_destroy(q);
    return NULL;
}

static void *drain(void *arg)
{
    (void)arg;
    struct queue *q = open_queue("bench:inbox");
    static char ids[256][QUEUE_ID_MAX + 1];
    while (drained < CONC_JOBS) {
        int n = 0;
        check(queue_inbox_wait(q, "api1", 200, ids, 256, &n), q, "inbox");
        drained += n;
    }
    queue_destroy(q);
    return NULL;
}

static double concurrent(void)
{
    pthread_t p[PRODUCERS], w[WORKERS], d;
    int idx[WORKERS];
    int64_t t0 = clock_now_ms();
    pthread_create(&d, NULL, drain, NULL);
    for (int i = 0; i < WORKERS; i++) {
        idx[i] = i;
        pthread_create(&w[i], NULL, worker, &idx[i]);
    }
    for (int i = 0; i < PRODUCERS; i++)
        pthread_create(&p[i], NULL, producer, NULL);
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(p[i], NULL);
    pthread_join(d, NULL);
    double s = (double)(clock_now_ms() - t0) / 1e3;
    stop_workers = 1;
    for (int i = 0; i < WORKERS; i++)
        pthread_join(w[i], NULL);
    return CONC_JOBS / s;
}

/* LPUSH requests/s from redis-benchmark with `clients` connections, or -1. */
static double lpush_rate(int clients)
{
    char cmd[256], line[512];
    snprintf(cmd, sizeof(cmd),
             "redis-benchmark -h 127.0.0.1 -p %d -c %d -n 200000 -t lpush -q 2>/dev/null", srv.port,
             clients);
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    double rate = -1;
    while (fgets(line, sizeof(line), f)) {
        /* "LPUSH: 123456.79 requests per second, p50=0.223 msec"; progress lines end in \r */
        char *last = strrchr(line, '\r');
        const char *p = strstr(last ? last : line, "LPUSH:");
        if (p)
            rate = strtod(p + 6, NULL);
    }
    pclose(f);
    return rate;
}

int main(void)
{
    log_setup(LOG_WARN, "bench_queue");
    if (test_redis_start_fsync(&srv, "everysec") < 0)
        return 1;
    double seq = sequential();
    double lp1 = lpush_rate(1);
    double conc = concurrent();
    double lp50 = lpush_rate(50);
    printf(
        "queue round trips (enqueue -> claim -> complete -> notify), redis-server on loopback\n");
    printf("  %-44s %10.0f jobs/s\n", "1 client, in sequence:", seq);
    printf("  %-44s %10.0f req/s   ratio %.3f\n", "redis-benchmark -c 1 -t lpush:", lp1,
           lp1 > 0 ? seq / lp1 : 0);
    printf("  %-44s %10.0f jobs/s\n", "8 producers, 4 workers (batch 16), 1 inbox:", conc);
    printf("  %-44s %10.0f req/s   ratio %.3f\n", "redis-benchmark -c 50 -t lpush:", lp50,
           lp50 > 0 ? conc / lp50 : 0);
    test_redis_destroy(&srv);
    return 0;
}
