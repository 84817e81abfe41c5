/*
 * Tests of the Redis job protocol (common/queue.c) against a real
 * redis-server that this program starts on a free loopback port.
 *
 * "Workers" here are queue handles with a runner id; a worker "dies" by
 * no longer beating, exactly what a crashed or frozen process looks like
 * from Redis. Timers are shortened (ttl 300 ms) so recovery takes moments.
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/clock.h"
#include "common/ids.h"
#include "common/log.h"
#include "common/queue.h"
#include "tests/support/redis_server.h"

#define TTL_MS 300

static struct test_redis srv;

static void make_opts(struct redis_opts *ro, struct queue_opts *qo)
{
    char err[256];
    redis_opts_default(ro);
    assert_int_equal(redis_url_parse(srv.url, &ro->target, err, sizeof(err)), 0);
    ro->retry_ms = 3000;
    queue_opts_default(qo);
    qo->prefix = "{t}";
    qo->worker_ttl_ms = TTL_MS;
    qo->reap_lease_ms = 1; /* every reap call runs */
}

static struct queue *open_queue_with(const struct queue_opts *qo, const char *name)
{
    struct redis_opts ro;
    struct queue_opts unused;
    make_opts(&ro, &unused);
    struct queue *q = NULL;
    char err[256];
    assert_int_equal(queue_create(&q, &ro, qo, name, err, sizeof(err)), 0);
    return q;
}

static struct queue *open_queue(const char *name)
{
    struct redis_opts ro;
    struct queue_opts qo;
    make_opts(&ro, &qo);
    return open_queue_with(&qo, name);
}

static int group_setup(void **state)
{
    (void)state;
    log_setup(LOG_WARN, "test_queue");
    return test_redis_start(&srv);
}

static int group_teardown(void **state)
{
    (void)state;
    test_redis_destroy(&srv);
    return 0;
}

static int flush(void **state)
{
    (void)state;
    if (srv.pid == 0 && test_redis_restart(&srv) < 0)
        return -1;
    redisReply *r = test_redis_cmd(&srv, "FLUSHALL");
    int ok = r && r->type == REDIS_REPLY_STATUS;
    if (r)
        freeReplyObject(r);
    return ok ? 0 : -1;
}

/* Enqueue a job with a fresh id and payload "job-<n>"; returns the id in id. */
static void enqueue(struct queue *q, int n, const char *reply_to, char id[QUEUE_ID_MAX + 1])
{
    char payload[64], got[QUEUE_ID_MAX + 1];
    enum queue_enqueue_outcome oc;
    assert_int_equal(ids_job_id(id), 0);
    snprintf(payload, sizeof(payload), "{\"n\":%d}", n);
    assert_int_equal(queue_enqueue(q, id, payload, strlen(payload), reply_to, NULL, got, &oc), 0);
    assert_int_equal(oc, QUEUE_ENQUEUED_NEW);
    assert_string_equal(got, id);
}

/* An integer (or numeric string) reply to one command. */
static long long redis_int(const char *fmt, ...)
{
    redisContext *c = test_redis_connect(&srv);
    assert_non_null(c);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    assert_true(r->type == REDIS_REPLY_INTEGER || r->type == REDIS_REPLY_STRING);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : strtoll(r->str, NULL, 10);
    freeReplyObject(r);
    redisFree(c);
    return v;
}

static void claim_one(struct queue *q, const char *wid, const char *want_id, long want_attempt)
{
    struct queue_claimed job;
    int n = 0;
    assert_int_equal(queue_claim(q, wid, 1, 0, &job, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(job.id, want_id);
    assert_int_equal(job.attempt, want_attempt);
    queue_claimed_fini(&job, 1);
}

static void expect_state(struct queue *q, const char *id, enum queue_state want)
{
    struct queue_job_info info;
    assert_int_equal(queue_job_get(q, id, NULL, 0, &info), 0);
    assert_string_equal(queue_state_name(info.state), queue_state_name(want));
    queue_job_info_fini(&info);
}

/* ---- the happy path ------------------------------------------------- */

static void test_enqueue_claim_complete_notifies_waiter(void **state)
{
    (void)state;
    struct queue *api = open_queue("t:api"), *wk = open_queue("t:worker");
    char id[QUEUE_ID_MAX + 1];
    enqueue(api, 7, "api1", id);

    assert_int_equal(queue_register(wk, "w1", "{\"model\":\"test\"}"), 0);
    struct queue_claimed job;
    int n = 0;
    assert_int_equal(queue_claim(wk, "w1", 4, 0, &job, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(job.id, id);
    assert_int_equal(job.attempt, 1);
    assert_string_equal(job.payload, "{\"n\":7}");
    assert_int_equal(job.payload_len, 7);
    expect_state(api, id, QUEUE_RUNNING);

    int recorded = 0;
    const char *result = "{\"text\":\"hi\"}";
    assert_int_equal(
        queue_finish(wk, "w1", job.id, 1, QUEUE_OUTCOME_DONE, result, strlen(result), &recorded),
        0);
    assert_int_equal(recorded, 1);

    char ids[8][QUEUE_ID_MAX + 1];
    int got = 0;
    assert_int_equal(queue_inbox_wait(api, "api1", 1000, ids, 8, &got), 0);
    assert_int_equal(got, 1);
    assert_string_equal(ids[0], id);

    struct queue_job_info info;
    assert_int_equal(queue_job_get(api, id, NULL, 0, &info), 0);
    assert_int_equal(info.state, QUEUE_DONE);
    assert_string_equal(info.result, result);
    assert_string_equal(info.worker, "w1");
    assert_true(info.finished >= info.started && info.started >= info.created);
    assert_true(info.created > 1.7e9);
    queue_job_info_fini(&info);

    struct queue_stats st;
    assert_int_equal(queue_stats(api, &st), 0);
    assert_int_equal(st.backlog, 0);
    assert_int_equal(st.running, 0);
    assert_int_equal(st.runners, 1);
    assert_int_equal(st.enqueued, 1);
    assert_int_equal(st.done, 1);
    /* a finished job expires; a queued one never does */
    assert_true(redis_int("TTL {t}:job:%s", id) > 0);
    queue_claimed_fini(&job, 1);
    queue_destroy(api);
    queue_destroy(wk);
}

struct delayed_enqueue {
    struct queue *q;
    int delay_ms;
    char id[QUEUE_ID_MAX + 1];
};

static void *enqueue_later(void *arg)
{
    struct delayed_enqueue *d = arg;
    clock_sleep_ms(d->delay_ms);
    enqueue(d->q, 1, "", d->id);
    return NULL;
}

static void test_idle_claim_blocks_until_a_job_arrives(void **state)
{
    (void)state;
    struct queue *wk = open_queue("t:worker");
    struct delayed_enqueue d = {.q = open_queue("t:api"), .delay_ms = 300};
    assert_int_equal(queue_register(wk, "w1", NULL), 0);
    pthread_t t;
    int64_t start = clock_now_ms();
    assert_int_equal(pthread_create(&t, NULL, enqueue_later, &d), 0);
    struct queue_claimed job;
    int n = 0;
    assert_int_equal(queue_claim(wk, "w1", 1, 5000, &job, &n), 0);
    int64_t took = clock_now_ms() - start;
    pthread_join(t, NULL);
    assert_int_equal(n, 1);
    assert_string_equal(job.id, d.id);
    assert_true(took >= 250 && took < 4000); /* woken by the doorbell, not the timeout */
    queue_claimed_fini(&job, 1);

    /* with nothing queued, the wait ends at its timeout with no job */
    start = clock_now_ms();
    assert_int_equal(queue_claim(wk, "w1", 1, 200, &job, &n), 0);
    assert_int_equal(n, 0);
    assert_true(clock_now_ms() - start >= 150);
    queue_destroy(d.q);
    queue_destroy(wk);
}

static void test_claim_takes_up_to_n_oldest_first(void **state)
{
    (void)state;
    struct queue *q = open_queue("t:q");
    char ids[5][QUEUE_ID_MAX + 1];
    for (int i = 0; i < 5; i++)
        enqueue(q, i, "", ids[i]);
    assert_int_equal(queue_register(q, "w1", NULL), 0);
    struct queue_claimed jobs[3];
    int n = 0;
    assert_int_equal(queue_claim(q, "w1", 3, 0, jobs, &n), 0);
    assert_int_equal(n, 3);
    for (int i = 0; i < 3; i++)
        assert_string_equal(jobs[i].id, ids[i]);
    queue_claimed_fini(jobs, n);
    struct queue_stats st;
    assert_int_equal(queue_stats(q, &st), 0);
    assert_int_equal(st.backlog, 2);
    assert_int_equal(st.running, 3);
    assert_true(st.oldest_queued_s >= 0 && st.oldest_queued_s < 60);
    queue_destroy(q);
}

static void test_unregistered_runner_cannot_claim(void **state)
{
    (void)state;
    struct queue *q = open_queue("t:q");
    char id[QUEUE_ID_MAX + 1];
    enqueue(q, 1, "", id);
    struct queue_claimed job;
    int n = 0;
    assert_int_equal(queue_claim(q, "ghost", 1, 0, &job, &n), QUEUE_ELOST);
    assert_int_equal(n, 0);
    expect_state(q, id, QUEUE_QUEUED);
    queue_destroy(q);
}

/* ---- crashes, zombies and poison ------------------------------------- */

static void test_dead_worker_jobs_requeued_and_completed_once(void **state)
{
    (void)state;
    struct queue *api = open_queue("t:api"), *a = open_queue("t:a"), *b = open_queue("t:b");
    char id[QUEUE_ID_MAX + 1];
    enqueue(api, 1, "api1", id);
    assert_int_equal(queue_register(a, "wa", NULL), 0);
    claim_one(a, "wa", id, 1);

    /* a dies: no more beats. b is alive and reaps. */
    clock_sleep_ms(TTL_MS + 100);
    assert_int_equal(queue_register(b, "wb", NULL), 0);
    struct queue_reap_result rr;
    assert_int_equal(queue_reap(b, &rr), 0);
    assert_int_equal(rr.ran, 1);
    assert_int_equal(rr.skipped_liveness, 0);
    assert_int_equal(rr.runners, 1);
    assert_int_equal(rr.requeued, 1);
    assert_int_equal(rr.buried, 0);
    expect_state(api, id, QUEUE_QUEUED);

    claim_one(b, "wb", id, 2);
    int recorded = 0;
    assert_int_equal(queue_finish(b, "wb", id, 2, QUEUE_OUTCOME_DONE, "B", 1, &recorded), 0);
    assert_int_equal(recorded, 1);
    /* the same finish again (a lost reply retried): no second record */
    assert_int_equal(queue_finish(b, "wb", id, 2, QUEUE_OUTCOME_DONE, "B2", 2, &recorded), 0);
    assert_int_equal(recorded, 0);

    struct queue_job_info info;
    assert_int_equal(queue_job_get(api, id, NULL, 0, &info), 0);
    assert_int_equal(info.state, QUEUE_DONE);
    assert_string_equal(info.result, "B");
    assert_int_equal(info.attempts, 2);
    queue_job_info_fini(&info);
    assert_int_equal(redis_int("HGET {t}:job:%s crashes", id), 1);
    assert_int_equal(redis_int("LLEN {t}:inbox:api1"), 1); /* notified once */
    struct queue_stats st;
    assert_int_equal(queue_stats(api, &st), 0);
    assert_int_equal(st.done, 1);
    assert_int_equal(st.requeued, 1);
    assert_int_equal(st.runners, 1);
    queue_destroy(api);
    queue_destroy(a);
    queue_destroy(b);
}

static void test_zombie_late_complete_is_rejected(void **state)
{
    (void)state;
    struct queue *a = open_queue("t:a"), *b = open_queue("t:b");
    char id[QUEUE_ID_MAX + 1];
    enqueue(a, 1, "", id);
    assert_int_equal(queue_register(a, "wa", NULL), 0);
    claim_one(a, "wa", id, 1);
    clock_sleep_ms(TTL_MS + 100); /* a freezes (think SIGSTOP) past its ttl */
    assert_int_equal(queue_register(b, "wb", NULL), 0);
    struct queue_reap_result rr;
    assert_int_equal(queue_reap(b, &rr), 0);
    assert_int_equal(rr.requeued, 1);
    claim_one(b, "wb", id, 2);

    /* a wakes up and tries to record its stale attempt, before b finishes */
    int recorded = 1;
    assert_int_equal(queue_finish(a, "wa", id, 1, QUEUE_OUTCOME_DONE, "A", 1, &recorded), 0);
    assert_int_equal(recorded, 0);
    /* its heartbeat tells it that it was declared dead */
    struct queue_owned *owned = NULL;
    int n = 0;
    assert_int_equal(queue_heartbeat(a, "wa", NULL, &owned, &n), QUEUE_ELOST);
    assert_null(owned);
    expect_state(b, id, QUEUE_RUNNING);

    assert_int_equal(queue_finish(b, "wb", id, 2, QUEUE_OUTCOME_DONE, "B", 1, &recorded), 0);
    assert_int_equal(recorded, 1);
    struct queue_job_info info;
    assert_int_equal(queue_job_get(b, id, NULL, 0, &info), 0);
    assert_string_equal(info.result, "B");
    queue_job_info_fini(&info);
    queue_destroy(a);
    queue_destroy(b);
}

static void test_job_that_kills_its_worker_is_buried_after_max_attempts(void **state)
{
    (void)state;
    struct queue *api = open_queue("t:api"), *reaper = open_queue("t:reaper");
    char id[QUEUE_ID_MAX + 1];
    enqueue(api, 666, "api1", id);
    assert_int_equal(queue_register(reaper, "reaper", NULL), 0);
    for (int attempt = 1; attempt <= 3; attempt++) {
        char wid[32];
        snprintf(wid, sizeof(wid), "victim%d", attempt);
        struct queue *w = open_queue("t:victim");
        assert_int_equal(queue_register(w, wid, NULL), 0);
        claim_one(w, wid, id, attempt);
        queue_destroy(w); /* and it dies */
        clock_sleep_ms(TTL_MS + 100);
        assert_int_equal(queue_register(reaper, "reaper", NULL), 0);
        struct queue_reap_result rr;
        assert_int_equal(queue_reap(reaper, &rr), 0);
        assert_int_equal(rr.runners, 1);
        assert_int_equal(rr.requeued, attempt < 3 ? 1 : 0);
        assert_int_equal(rr.buried, attempt < 3 ? 0 : 1);
    }
    struct queue_job_info info;
    assert_int_equal(queue_job_get(api, id, NULL, 0, &info), 0);
    assert_int_equal(info.state, QUEUE_FAILED);
    assert_int_equal(info.dead, 1);
    assert_int_equal(info.attempts, 3);
    assert_non_null(info.error);
    assert_non_null(strstr(info.error, "stopped heartbeating"));
    assert_non_null(strstr(info.error, "attempt 3 of 3"));
    queue_job_info_fini(&info);

    struct queue_stats st;
    assert_int_equal(queue_stats(api, &st), 0);
    assert_int_equal(st.dead, 1);
    assert_int_equal(st.dead_total, 1);
    assert_int_equal(st.backlog, 0);
    assert_int_equal(st.running, 0);
    redisReply *r = test_redis_cmd(&srv, "LINDEX {t}:dead 0");
    assert_non_null(r);
    assert_string_equal(r->str, id);
    freeReplyObject(r);
    /* the waiting API instance hears about the failure */
    char ids[4][QUEUE_ID_MAX + 1];
    int got = 0;
    assert_int_equal(queue_inbox_wait(api, "api1", 500, ids, 4, &got), 0);
    assert_int_equal(got, 1);
    assert_string_equal(ids[0], id);
    queue_destroy(api);
    queue_destroy(reaper);
}

static void test_live_worker_is_not_reaped(void **state)
{
    (void)state;
    struct queue *w = open_queue("t:w"), *reaper = open_queue("t:r");
    char id[QUEUE_ID_MAX + 1];
    enqueue(w, 1, "", id);
    assert_int_equal(queue_register(w, "w1", NULL), 0);
    claim_one(w, "w1", id, 1);
    for (int i = 0; i < 6; i++) { /* 6 x 100 ms: twice the ttl, beating throughout */
        clock_sleep_ms(100);
        struct queue_owned *owned = NULL;
        int n = 0;
        assert_int_equal(queue_heartbeat(w, "w1", NULL, &owned, &n), 0);
        assert_int_equal(n, 1);
        assert_string_equal(owned[0].id, id);
        assert_int_equal(owned[0].abort, 0);
        assert_int_equal(owned[0].attempt, 1);
        free(owned);
        struct queue_reap_result rr;
        assert_int_equal(queue_reap(reaper, &rr), 0);
        assert_int_equal(rr.runners, 0);
    }
    expect_state(w, id, QUEUE_RUNNING);
    queue_destroy(w);
    queue_destroy(reaper);
}

static void test_reaper_lease_runs_once_per_period(void **state)
{
    (void)state;
    struct queue_opts qo;
    struct redis_opts ro;
    make_opts(&ro, &qo);
    qo.reap_lease_ms = 5000;
    struct queue *a = open_queue_with(&qo, "t:a"), *b = open_queue_with(&qo, "t:b");
    struct queue_reap_result ra, rb;
    assert_int_equal(queue_reap(a, &ra), 0);
    assert_int_equal(queue_reap(b, &rb), 0);
    assert_int_equal(ra.ran, 1);
    assert_int_equal(rb.ran, 0);
    queue_destroy(a);
    queue_destroy(b);
}

static void test_max_runtime_recovers_a_wedged_job(void **state)
{
    (void)state;
    struct queue_opts qo;
    struct redis_opts ro;
    make_opts(&ro, &qo);
    qo.max_runtime_ms = 200;
    qo.worker_ttl_ms = 60000;
    struct queue *w = open_queue_with(&qo, "t:w");
    char id[QUEUE_ID_MAX + 1];
    enqueue(w, 1, "", id);
    assert_int_equal(queue_register(w, "w1", NULL), 0);
    claim_one(w, "w1", id, 1);
    clock_sleep_ms(300);
    struct queue_reap_result rr;
    assert_int_equal(queue_reap(w, &rr), 0);
    assert_int_equal(rr.runners, 0);
    assert_int_equal(rr.requeued, 1);
    struct queue_owned *owned = NULL;
    int n = 0;
    assert_int_equal(queue_heartbeat(w, "w1", NULL, &owned, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(owned[0].abort, 1); /* the wedged owner is told to drop it */
    free(owned);
    struct queue_job_info info;
    assert_int_equal(queue_job_get(w, id, NULL, 0, &info), 0);
    assert_int_equal(info.state, QUEUE_QUEUED);
    assert_non_null(strstr(info.error, "max runtime"));
    queue_job_info_fini(&info);
    queue_destroy(w);
}

/* ---- worker-initiated outcomes -------------------------------------- */

static void test_release_hands_a_job_back_uncharged(void **state)
{
    (void)state;
    struct queue *q = open_queue("t:q");
    char id[QUEUE_ID_MAX + 1], other[QUEUE_ID_MAX + 1];
    enqueue(q, 1, "", id);
    assert_int_equal(queue_register(q, "w1", NULL), 0);
    claim_one(q, "w1", id, 1);
    enqueue(q, 2, "", other);
    int recorded = 0;
    assert_int_equal(queue_finish(q, "w1", id, 1, QUEUE_OUTCOME_RELEASE, NULL, 0, &recorded), 0);
    assert_int_equal(recorded, 1);
    /* back at the front of the line, ahead of the newer job, attempt not charged */
    claim_one(q, "w1", id, 1);
    queue_destroy(q);
}

static void test_retry_requeues_then_buries_past_max_attempts(void **state)
{
    (void)state;
    struct queue *q = open_queue("t:q");
    char id[QUEUE_ID_MAX + 1];
    enqueue(q, 1, "", id);
    assert_int_equal(queue_register(q, "w1", NULL), 0);
    for (long attempt = 1; attempt <= 3; attempt++) {
        claim_one(q, "w1", id, attempt);
        int recorded = 0;
        const char *why = "CUDA out of memory";
        assert_int_equal(
            queue_finish(q, "w1", id, attempt, QUEUE_OUTCOME_RETRY, why, strlen(why), &recorded),
            0);
        assert_int_equal(recorded, 1);
    }
    struct queue_job_info info;
    assert_int_equal(queue_job_get(q, id, NULL, 0, &info), 0);
    assert_int_equal(info.state, QUEUE_FAILED);
    assert_int_equal(info.dead, 1);
    assert_non_null(strstr(info.error, "CUDA out of memory (attempt 3 of 3)"));
    queue_job_info_fini(&info);
    queue_destroy(q);
}

static void test_failed_job_records_its_error_without_retry(void **state)
{
    (void)state;
    struct queue *q = open_queue("t:q");
    char id[QUEUE_ID_MAX + 1];
    enqueue(q, 1, "", id);
    assert_int_equal(queue_register(q, "w1", NULL), 0);
    claim_one(q, "w1", id, 1);
    int recorded = 0;
    const char *why = "prompt longer than the context";
    assert_int_equal(
        queue_finish(q, "w1", id, 1, QUEUE_OUTCOME_FAILED, why, strlen(why), &recorded), 0);
    assert_int_equal(recorded, 1);
    struct queue_job_info info;
    assert_int_equal(queue_job_get(q, id, NULL, 0, &info), 0);
    assert_int_equal(info.state, QUEUE_FAILED);
    assert_int_equal(info.dead, 0);
    assert_string_equal(info.error, why);
    queue_job_info_fini(&info);
    queue_destroy(q);
}

static void test_deregister_hands_back_everything_it_holds(void **state)
{
    (void)state;
    struct queue *q = open_queue("t:q");
    char ids[3][QUEUE_ID_MAX + 1];
    for (int i = 0; i < 3; i++)
        enqueue(q, i, "", ids[i]);
    assert_int_equal(queue_register(q, "w1", NULL), 0);
    struct queue_claimed jobs[3];
    int n = 0;
    assert_int_equal(queue_claim(q, "w1", 3, 0, jobs, &n), 0);
    assert_int_equal(n, 3);
    queue_claimed_fini(jobs, n);
    int released = 0;
    assert_int_equal(queue_deregister(q, "w1", &released), 0);
    assert_int_equal(released, 3);
    struct queue_stats st;
    assert_int_equal(queue_stats(q, &st), 0);
    assert_int_equal(st.backlog, 3);
    assert_int_equal(st.running, 0);
    assert_int_equal(st.runners, 0);
    assert_int_equal(redis_int("EXISTS {t}:processing:w1"), 0);
    /* the next worker gets them in the original order, attempt 1 again */
    assert_int_equal(queue_register(q, "w2", NULL), 0);
    assert_int_equal(queue_claim(q, "w2", 3, 0, jobs, &n), 0);
    assert_int_equal(n, 3);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(jobs[i].id, ids[i]);
        assert_int_equal(jobs[i].attempt, 1);
    }
    queue_claimed_fini(jobs, n);
    queue_destroy(q);
}

/* ---- cancel --------------------------------------------------------- */

static void test_cancel_while_queued(void **state)
{
    (void)state;
    struct queue *api = open_queue("t:api"), *w = open_queue("t:w");
    char id[QUEUE_ID_MAX + 1];
    enqueue(api, 1, "api1", id);
    enum queue_state before;
    assert_int_equal(queue_cancel(api, id, &before), 0);
    assert_int_equal(before, QUEUE_QUEUED);
    expect_state(api, id, QUEUE_CANCELLED);
    struct queue_stats st;
    assert_int_equal(queue_stats(api, &st), 0);
    assert_int_equal(st.backlog, 0);
    assert_int_equal(st.cancelled, 1);
    assert_int_equal(queue_register(w, "w1", NULL), 0);
    struct queue_claimed job;
    int n = 1;
    assert_int_equal(queue_claim(w, "w1", 1, 0, &job, &n), 0);
    assert_int_equal(n, 0); /* never runs */
    char ids[4][QUEUE_ID_MAX + 1];
    assert_int_equal(queue_inbox_wait(api, "api1", 500, ids, 4, &n), 0);
    assert_int_equal(n, 1);
    /* cancelling again changes nothing */
    assert_int_equal(queue_cancel(api, id, &before), 0);
    assert_int_equal(before, QUEUE_CANCELLED);
    queue_destroy(api);
    queue_destroy(w);
}

static void test_cancel_while_running(void **state)
{
    (void)state;
    struct queue *api = open_queue("t:api"), *w = open_queue("t:w");
    char id[QUEUE_ID_MAX + 1];
    enqueue(api, 1, "api1", id);
    assert_int_equal(queue_register(w, "w1", NULL), 0);
    claim_one(w, "w1", id, 1);
    enum queue_state before;
    assert_int_equal(queue_cancel(api, id, &before), 0);
    assert_int_equal(before, QUEUE_RUNNING);
    expect_state(api, id, QUEUE_CANCELLED);

    struct queue_owned *owned = NULL;
    int n = 0;
    assert_int_equal(queue_heartbeat(w, "w1", NULL, &owned, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(owned[0].id, id);
    assert_int_equal(owned[0].abort, 1);
    free(owned);
    int recorded = 1;
    assert_int_equal(queue_finish(w, "w1", id, 1, QUEUE_OUTCOME_DONE, "late", 4, &recorded), 0);
    assert_int_equal(recorded, 0);
    expect_state(api, id, QUEUE_CANCELLED);
    struct queue_stats st;
    assert_int_equal(queue_stats(api, &st), 0);
    assert_int_equal(st.running, 0);
    assert_int_equal(redis_int("LLEN {t}:processing:w1"), 0);
    queue_destroy(api);
    queue_destroy(w);
}

static void test_cancel_unknown_or_finished_job(void **state)
{
    (void)state;
    struct queue *q = open_queue("t:q");
    enum queue_state before;
    assert_int_equal(queue_cancel(q, "nosuchjob", &before), QUEUE_ENOJOB);
    char id[QUEUE_ID_MAX + 1];
    enqueue(q, 1, "", id);
    assert_int_equal(queue_register(q, "w1", NULL), 0);
    claim_one(q, "w1", id, 1);
    int recorded;
    assert_int_equal(queue_finish(q, "w1", id, 1, QUEUE_OUTCOME_DONE, "r", 1, &recorded), 0);
    assert_int_equal(queue_cancel(q, id, &before), 0);
    assert_int_equal(before, QUEUE_DONE);
    expect_state(q, id, QUEUE_DONE);
    queue_destroy(q);
}

/* ---- submit-side rules ---------------------------------------------- */

static void test_idempotency_key_gives_one_job(void **state)
{
    (void)state;
    struct queue *q = open_queue("t:q");
    char id1[QUEUE_ID_MAX + 1], id2[QUEUE_ID_MAX + 1], got[QUEUE_ID_MAX + 1];
    enum queue_enqueue_outcome oc;
    ids_job_id(id1);
    ids_job_id(id2);
    assert_int_equal(queue_enqueue(q, id1, "{}", 2, "", "order-42", got, &oc), 0);
    assert_int_equal(oc, QUEUE_ENQUEUED_NEW);
    assert_string_equal(got, id1);
    assert_int_equal(queue_enqueue(q, id2, "{}", 2, "", "order-42", got, &oc), 0);
    assert_int_equal(oc, QUEUE_ENQUEUED_EXISTING);
    assert_string_equal(got, id1);
    assert_int_equal(redis_int("EXISTS {t}:job:%s", id2), 0);
    struct queue_stats st;
    assert_int_equal(queue_stats(q, &st), 0);
    assert_int_equal(st.backlog, 1);
    assert_int_equal(st.enqueued, 1);
    /* the same id again (a submit retried after a lost reply) is one job too */
    assert_int_equal(queue_enqueue(q, id1, "{}", 2, "", NULL, got, &oc), 0);
    assert_int_equal(oc, QUEUE_ENQUEUED_EXISTING);
    assert_int_equal(queue_stats(q, &st), 0);
    assert_int_equal(st.backlog, 1);
    queue_destroy(q);
}

static void test_full_backlog_refuses_without_writing(void **state)
{
    (void)state;
    struct queue_opts qo;
    struct redis_opts ro;
    make_opts(&ro, &qo);
    qo.max_backlog = 2;
    struct queue *q = open_queue_with(&qo, "t:q");
    char id[QUEUE_ID_MAX + 1], got[QUEUE_ID_MAX + 1];
    enqueue(q, 1, "", id);
    enqueue(q, 2, "", id);
    enum queue_enqueue_outcome oc;
    ids_job_id(id);
    assert_int_equal(queue_enqueue(q, id, "{}", 2, "", "k", got, &oc), 0);
    assert_int_equal(oc, QUEUE_ENQUEUE_FULL);
    assert_int_equal(redis_int("EXISTS {t}:job:%s", id), 0);
    assert_int_equal(redis_int("EXISTS {t}:idem:k"), 0);
    assert_int_equal(redis_int("LLEN {t}:queue"), 2);
    queue_destroy(q);
}

static void test_position_in_queue(void **state)
{
    (void)state;
    struct queue *q = open_queue("t:q");
    char ids[3][QUEUE_ID_MAX + 1];
    for (int i = 0; i < 3; i++)
        enqueue(q, i, "", ids[i]);
    for (int i = 0; i < 3; i++) {
        struct queue_job_info info;
        assert_int_equal(queue_job_get(q, ids[i], NULL, 0, &info), 0);
        assert_int_equal(info.position, i);
        queue_job_info_fini(&info);
    }
    struct queue_job_info info;
    assert_int_equal(queue_job_get(q, "nosuchjob", NULL, 0, &info), QUEUE_ENOJOB);
    queue_destroy(q);
}

static void test_get_many_reads_several_jobs_in_one_go(void **state)
{
    (void)state;
    struct queue *q = open_queue("t:q");
    char ids[4][QUEUE_ID_MAX + 1];
    enqueue(q, 1, "", ids[0]);
    enqueue(q, 2, "", ids[1]);
    snprintf(ids[2], sizeof(ids[2]), "nosuchjob");
    snprintf(ids[3], sizeof(ids[3]), "bad id");
    assert_int_equal(queue_register(q, "w1", NULL), 0);
    claim_one(q, "w1", ids[0], 1);
    int recorded;
    assert_int_equal(queue_finish(q, "w1", ids[0], 1, QUEUE_OUTCOME_DONE, "R1", 2, &recorded), 0);
    struct queue_job_info info[4];
    int rcs[4];
    assert_int_equal(queue_job_get_many(q, 4, ids, info, rcs), 0);
    assert_int_equal(rcs[0], 0);
    assert_int_equal(info[0].state, QUEUE_DONE);
    assert_string_equal(info[0].result, "R1");
    assert_string_equal(info[0].worker, "w1");
    assert_int_equal(rcs[1], 0);
    assert_int_equal(info[1].state, QUEUE_QUEUED);
    assert_null(info[1].result);
    assert_int_equal(rcs[2], QUEUE_ENOJOB);
    assert_int_equal(rcs[3], QUEUE_EARG);
    queue_job_info_fini(&info[0]);
    queue_job_info_fini(&info[1]);
    queue_destroy(q);
}

static void test_stream_deltas_are_read_back_in_order_and_resumable(void **state)
{
    (void)state;
    struct queue *q = open_queue("t:q");
    char id[QUEUE_ID_MAX + 1];
    ids_job_id(id);
    struct queue_delta d[3] = {
        {id, 1, 0, "Once", 4, 1}, {id, 1, 1, " upon", 5, 0}, {id, 2, 0, "\xc3\xa9", 2, 0}};
    assert_int_equal(queue_stream_append(q, d, 3), 0);
    assert_true(redis_int("TTL {t}:stream:%s", id) > 0);
    struct queue_stream_entry *e;
    int n;
    assert_int_equal(queue_stream_read(q, id, "0", 10, &e, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(e[0].text, "Once");
    assert_int_equal(e[1].sample, 1);
    assert_int_equal(e[1].attempt, 1);
    assert_string_equal(e[2].text, "\xc3\xa9");
    assert_int_equal(e[2].attempt, 2); /* a re-run's deltas say so */
    char resume[48];
    snprintf(resume, sizeof(resume), "%s", e[0].event_id);
    queue_stream_entries_free(e, n);
    /* resuming after the first event gives the other two */
    assert_int_equal(queue_stream_read(q, id, resume, 10, &e, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(e[0].text, " upon");
    queue_stream_entries_free(e, n);
    assert_int_equal(queue_stream_read(q, "nostream", "0", 10, &e, &n), 0);
    assert_int_equal(n, 0);
    queue_stream_entries_free(e, n);
    assert_int_equal(queue_stream_read(q, id, "not-an-id", 10, &e, &n), QUEUE_EARG);
    queue_destroy(q);
}

static void test_finish_keeps_timing_and_claim_gives_created(void **state)
{
    (void)state;
    struct queue *q = open_queue("t:q");
    char id[QUEUE_ID_MAX + 1];
    enqueue(q, 1, "", id);
    assert_int_equal(queue_register(q, "w1", "{\"model\":\"m\"}"), 0);
    struct queue_claimed job;
    int n = 0, recorded = 0;
    assert_int_equal(queue_claim(q, "w1", 1, 0, &job, &n), 0);
    assert_int_equal(n, 1);
    assert_true(job.created > 1.7e9);
    queue_claimed_fini(&job, 1);
    assert_int_equal(queue_finish_timed(q, "w1", id, 1, QUEUE_OUTCOME_DONE, "R", 1,
                                        "{\"first_token_ms\":5}", &recorded),
                     0);
    assert_int_equal(recorded, 1);
    struct queue_job_info info;
    assert_int_equal(queue_job_get(q, id, NULL, 0, &info), 0);
    assert_string_equal(info.timing, "{\"first_token_ms\":5}");
    queue_job_info_fini(&info);
    struct queue_runner *r;
    assert_int_equal(queue_runners(q, 10, &r, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(r[0].wid, "w1");
    assert_string_equal(r[0].info, "{\"model\":\"m\"}");
    assert_true(r[0].beat_age_ms >= 0 && r[0].beat_age_ms < 5000);
    queue_runners_free(r, n);
    queue_destroy(q);
}

static void test_watcher_on_another_instance_is_notified(void **state)
{
    (void)state;
    struct queue *a = open_queue("t:a"), *b = open_queue("t:b"), *w = open_queue("t:w");
    char id[QUEUE_ID_MAX + 1];
    enqueue(a, 1, "apiA", id);
    struct queue_job_info info;
    assert_int_equal(queue_job_get(b, id, "apiB", 30, &info), 0);
    assert_int_equal(info.state, QUEUE_QUEUED);
    queue_job_info_fini(&info);
    assert_int_equal(queue_register(w, "w1", NULL), 0);
    claim_one(w, "w1", id, 1);
    int recorded;
    assert_int_equal(queue_finish(w, "w1", id, 1, QUEUE_OUTCOME_DONE, "r", 1, &recorded), 0);
    char ids[4][QUEUE_ID_MAX + 1];
    int n = 0;
    assert_int_equal(queue_inbox_wait(b, "apiB", 1000, ids, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(ids[0], id);
    assert_int_equal(queue_inbox_wait(a, "apiA", 1000, ids, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(redis_int("EXISTS {t}:job:%s:w", id), 0);
    queue_destroy(a);
    queue_destroy(b);
    queue_destroy(w);
}

static void test_runner_count_drops_after_ttl(void **state)
{
    (void)state;
    struct queue *q = open_queue("t:q");
    struct queue_stats st;
    assert_int_equal(queue_register(q, "w1", NULL), 0);
    assert_int_equal(queue_register(q, "w2", NULL), 0);
    assert_int_equal(queue_stats(q, &st), 0);
    assert_int_equal(st.runners, 2);
    clock_sleep_ms(TTL_MS + 100);
    assert_int_equal(queue_heartbeat(q, "w2", NULL, NULL, NULL), 0);
    assert_int_equal(queue_stats(q, &st), 0);
    assert_int_equal(st.runners, 1); /* w1 no longer counts, reaped or not */
    queue_destroy(q);
}

static void test_every_key_carries_the_hash_tag(void **state)
{
    (void)state;
    struct queue *q = open_queue("t:q");
    char id[QUEUE_ID_MAX + 1], got[QUEUE_ID_MAX + 1];
    enum queue_enqueue_outcome oc;
    ids_job_id(id);
    assert_int_equal(queue_enqueue(q, id, "{}", 2, "api1", "key1", got, &oc), 0);
    assert_int_equal(queue_register(q, "w1", NULL), 0);
    struct queue_job_info info;
    assert_int_equal(queue_job_get(q, id, "api2", 30, &info), 0);
    queue_job_info_fini(&info);
    claim_one(q, "w1", id, 1);
    int recorded;
    assert_int_equal(queue_finish(q, "w1", id, 1, QUEUE_OUTCOME_DONE, "r", 1, &recorded), 0);
    struct queue_reap_result rr;
    assert_int_equal(queue_reap(q, &rr), 0);
    redisReply *r = test_redis_cmd(&srv, "KEYS *");
    assert_non_null(r);
    assert_true(r->elements >= 6);
    for (size_t i = 0; i < r->elements; i++) {
        const char *k = r->element[i]->str;
        /* the first {...} of the key decides its Cluster slot: it must be ours */
        const char *lb = strchr(k, '{'), *rb = lb ? strchr(lb, '}') : NULL;
        assert_non_null(rb);
        assert_true(rb - lb == 2 && lb[1] == 't');
    }
    freeReplyObject(r);
    queue_destroy(q);
}

static void test_bad_prefix_and_ids_are_rejected(void **state)
{
    (void)state;
    struct queue_opts qo;
    struct redis_opts ro;
    make_opts(&ro, &qo);
    struct queue *q = NULL;
    char err[256];
    qo.prefix = "mr";
    assert_int_equal(queue_create(&q, &ro, &qo, "t:q", err, sizeof(err)), QUEUE_EARG);
    assert_non_null(strstr(err, "hash tag"));
    qo.prefix = "{}";
    assert_int_equal(queue_create(&q, &ro, &qo, "t:q", err, sizeof(err)), QUEUE_EARG);
    assert_null(q);
    q = open_queue("t:q");
    char got[QUEUE_ID_MAX + 1];
    enum queue_enqueue_outcome oc;
    assert_int_equal(queue_enqueue(q, "has space", "{}", 2, "", NULL, got, &oc), QUEUE_EARG);
    assert_int_equal(queue_enqueue(q, "", "{}", 2, "", NULL, got, &oc), QUEUE_EARG);
    queue_destroy(q);
}

/* ---- Redis restarts ------------------------------------------------- */

static void restart_keeps_job(int sig)
{
    struct queue *api = open_queue("t:api"), *w = open_queue("t:w");
    char id[QUEUE_ID_MAX + 1];
    assert_int_equal(queue_register(w, "w1", NULL), 0);
    /* load the scripts into this Redis so the restart empties a real cache */
    struct queue_claimed job;
    int n = 0;
    assert_int_equal(queue_claim(w, "w1", 1, 0, &job, &n), 0);
    enqueue(api, 42, "api1", id);
    unsigned long gen = redis_conn_generation(queue_conn(w));

    test_redis_stop(&srv, sig);
    /* while Redis is down, a call with a short retry budget fails fast and clearly */
    redis_conn_set_retry(queue_conn(api), 100);
    struct queue_stats st;
    int64_t t0 = clock_now_ms();
    assert_int_equal(queue_stats(api, &st), QUEUE_EDOWN);
    assert_true(clock_now_ms() - t0 < 2000);
    assert_non_null(strstr(queue_errstr(api), "stats"));
    redis_conn_set_retry(queue_conn(api), 3000);
    assert_int_equal(test_redis_restart(&srv), 0);

    /* the same handles reconnect by themselves and find the job */
    assert_int_equal(queue_register(w, "w1", NULL), 0);
    assert_int_equal(queue_claim(w, "w1", 1, 0, &job, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(job.id, id);
    assert_string_equal(job.payload, "{\"n\":42}");
    queue_claimed_fini(&job, 1);
    assert_true(redis_conn_generation(queue_conn(w)) > gen);
    assert_true(queue_script_reloads(w) >= 1); /* NOSCRIPT was answered with EVAL */
    int recorded;
    assert_int_equal(queue_finish(w, "w1", id, 1, QUEUE_OUTCOME_DONE, "ok", 2, &recorded), 0);
    assert_int_equal(recorded, 1);
    expect_state(api, id, QUEUE_DONE);
    queue_destroy(api);
    queue_destroy(w);
}

static void test_job_survives_redis_sigterm_restart(void **state)
{
    (void)state;
    restart_keeps_job(SIGTERM);
}

static void test_job_survives_redis_sigkill_with_appendonly(void **state)
{
    (void)state;
    restart_keeps_job(SIGKILL);
}

static void test_no_mass_reap_right_after_a_redis_restart(void **state)
{
    (void)state;
    struct queue_opts qo;
    struct redis_opts ro;
    make_opts(&ro, &qo);
    qo.worker_ttl_ms = 5000; /* longer than the restart takes */
    struct queue *q = open_queue_with(&qo, "t:q");
    char id[QUEUE_ID_MAX + 1];
    enqueue(q, 1, "", id);
    assert_int_equal(queue_register(q, "w1", NULL), 0);
    claim_one(q, "w1", id, 1);
    /* its last beat looks ancient, as after a long Redis outage */
    assert_int_equal(redis_int("ZADD {t}:runners XX CH 1 w1"), 1);
    assert_int_equal(test_redis_restart(&srv), 0);
    struct queue_reap_result rr;
    assert_int_equal(queue_reap(q, &rr), 0);
    assert_int_equal(rr.skipped_liveness, 1);
    assert_int_equal(rr.runners, 0);
    expect_state(q, id, QUEUE_RUNNING);
    queue_destroy(q);
}

/* ---- many producers and consumers ------------------------------------ */

#define PRODUCERS    8
#define CONSUMERS    4
#define PER_PRODUCER 250
#define TOTAL        (PRODUCERS * PER_PRODUCER)

struct drain {
    int index;
    int done;       /* jobs this consumer finished */
    int bad_finish; /* finishes that were not recorded */
    char (*claimed)[QUEUE_ID_MAX + 1];
    int n_claimed;
    volatile int *stop;
};

static void *producer(void *arg)
{
    struct queue *q = open_queue("t:producer");
    int base = *(int *)arg;
    for (int i = 0; i < PER_PRODUCER; i++) {
        char id[QUEUE_ID_MAX + 1];
        enqueue(q, base + i, "", id);
    }
    queue_destroy(q);
    return NULL;
}

static void *consumer(void *arg)
{
    struct drain *d = arg;
    char wid[32];
    snprintf(wid, sizeof(wid), "c%d", d->index);
    struct queue *q = open_queue("t:consumer");
    assert_int_equal(queue_register(q, wid, NULL), 0);
    while (!*d->stop) {
        struct queue_claimed jobs[16];
        int n = 0;
        if (queue_claim(q, wid, 16, 100, jobs, &n) < 0)
            break;
        for (int i = 0; i < n; i++) {
            int recorded = 0;
            memcpy(d->claimed[d->n_claimed++], jobs[i].id, QUEUE_ID_MAX + 1);
            if (queue_finish(q, wid, jobs[i].id, jobs[i].attempt, QUEUE_OUTCOME_DONE,
                             jobs[i].payload, jobs[i].payload_len, &recorded) < 0 ||
                !recorded)
                d->bad_finish++;
            else
                d->done++;
        }
        queue_claimed_fini(jobs, n);
    }
    queue_destroy(q);
    return NULL;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_many_producers_and_consumers_exactly_once(void **state)
{
    (void)state;
    pthread_t prod[PRODUCERS], cons[CONSUMERS];
    int bases[PRODUCERS];
    struct drain d[CONSUMERS];
    volatile int stop = 0;
    char(*all)[QUEUE_ID_MAX + 1] = calloc(TOTAL * 2, QUEUE_ID_MAX + 1);
    assert_non_null(all);
    for (int i = 0; i < CONSUMERS; i++) {
        d[i] = (struct drain){.index = i, .stop = &stop};
        d[i].claimed = calloc(TOTAL, QUEUE_ID_MAX + 1);
        assert_int_equal(pthread_create(&cons[i], NULL, consumer, &d[i]), 0);
    }
    for (int i = 0; i < PRODUCERS; i++) {
        bases[i] = i * PER_PRODUCER;
        assert_int_equal(pthread_create(&prod[i], NULL, producer, &bases[i]), 0);
    }
    for (int i = 0; i < PRODUCERS; i++)
        pthread_join(prod[i], NULL);
    struct queue *q = open_queue("t:check");
    struct queue_stats st;
    int64_t deadline = clock_now_ms() + 60000;
    do {
        clock_sleep_ms(50);
        assert_int_equal(queue_stats(q, &st), 0);
    } while (st.done < TOTAL && clock_now_ms() < deadline);
    stop = 1;
    int total = 0, done = 0, bad = 0;
    for (int i = 0; i < CONSUMERS; i++) {
        pthread_join(cons[i], NULL);
        memcpy(all[total], d[i].claimed, (size_t)d[i].n_claimed * (QUEUE_ID_MAX + 1));
        total += d[i].n_claimed;
        done += d[i].done;
        bad += d[i].bad_finish;
        free(d[i].claimed);
    }
    assert_int_equal(st.enqueued, TOTAL);
    assert_int_equal(st.done, TOTAL);
    assert_int_equal(st.backlog, 0);
    assert_int_equal(st.running, 0);
    assert_int_equal(total, TOTAL); /* every job claimed once ... */
    assert_int_equal(done, TOTAL);  /* ... and finished once */
    assert_int_equal(bad, 0);
    qsort(all, (size_t)total, QUEUE_ID_MAX + 1, cmp_id);
    for (int i = 1; i < total; i++)
        assert_true(strcmp(all[i - 1], all[i]) != 0); /* no id twice */
    free(all);
    queue_destroy(q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_enqueue_claim_complete_notifies_waiter, flush),
        cmocka_unit_test_setup(test_idle_claim_blocks_until_a_job_arrives, flush),
        cmocka_unit_test_setup(test_claim_takes_up_to_n_oldest_first, flush),
        cmocka_unit_test_setup(test_unregistered_runner_cannot_claim, flush),
        cmocka_unit_test_setup(test_dead_worker_jobs_requeued_and_completed_once, flush),
        cmocka_unit_test_setup(test_zombie_late_complete_is_rejected, flush),
        cmocka_unit_test_setup(test_job_that_kills_its_worker_is_buried_after_max_attempts, flush),
        cmocka_unit_test_setup(test_live_worker_is_not_reaped, flush),
        cmocka_unit_test_setup(test_reaper_lease_runs_once_per_period, flush),
        cmocka_unit_test_setup(test_max_runtime_recovers_a_wedged_job, flush),
        cmocka_unit_test_setup(test_release_hands_a_job_back_uncharged, flush),
        cmocka_unit_test_setup(test_retry_requeues_then_buries_past_max_attempts, flush),
        cmocka_unit_test_setup(test_failed_job_records_its_error_without_retry, flush),
        cmocka_unit_test_setup(test_deregister_hands_back_everything_it_holds, flush),
        cmocka_unit_test_setup(test_cancel_while_queued, flush),
        cmocka_unit_test_setup(test_cancel_while_running, flush),
        cmocka_unit_test_setup(test_cancel_unknown_or_finished_job, flush),
        cmocka_unit_test_setup(test_idempotency_key_gives_one_job, flush),
        cmocka_unit_test_setup(test_full_backlog_refuses_without_writing, flush),
        cmocka_unit_test_setup(test_position_in_queue, flush),
        cmocka_unit_test_setup(test_get_many_reads_several_jobs_in_one_go, flush),
        cmocka_unit_test_setup(test_stream_deltas_are_read_back_in_order_and_resumable, flush),
        cmocka_unit_test_setup(test_finish_keeps_timing_and_claim_gives_created, flush),
        cmocka_unit_test_setup(test_watcher_on_another_instance_is_notified, flush),
        cmocka_unit_test_setup(test_runner_count_drops_after_ttl, flush),
        cmocka_unit_test_setup(test_every_key_carries_the_hash_tag, flush),
        cmocka_unit_test_setup(test_bad_prefix_and_ids_are_rejected, flush),
        cmocka_unit_test_setup(test_job_survives_redis_sigterm_restart, flush),
        cmocka_unit_test_setup(test_job_survives_redis_sigkill_with_appendonly, flush),
        cmocka_unit_test_setup(test_no_mass_reap_right_after_a_redis_restart, flush),
        cmocka_unit_test_setup(test_many_producers_and_consumers_exactly_once, flush),
    };
    return cmocka_run_group_tests_name("queue", tests, group_setup, group_teardown);
}
