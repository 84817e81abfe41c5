/*
 * Integration tests of millrace-api's event streams ("stream": true on POST
 * /generate, GET /jobs/{id}/stream), of what the runners report in /stats
 * and /metrics, and of a worker's invalid_request failures: the real
 * build/millrace-api, a private redis-server and build/tests/fake_worker,
 * which streams each sample's "echo: <prompt>" in 4 pieces, at least
 * --delta-ms (10) apart and spread over SLOW:<ms>. Run from the repository
 * root.
 *
 * Key decision: a stream is checked the way a client would use it: its
 * events parsed as SSE, each sample's deltas concatenated and compared with
 * the job's final text, the done event compared byte for byte with the
 * result in the job hash, and event ids compared as stream ids (strictly
 * increasing: nothing sent twice, nothing out of order).
 */
#include <inttypes.h>
#include <signal.h>
#include <sys/wait.h>

#include "common/queue.h"
#include "tests/support/api_client.h"
#include "tests/support/api_suite.h"

#define STREAM_TIMEOUT_MS 8000

static struct stack S;
static struct api_suite suite = {.s = &S, .name = "test_api_stream"};

/* {"text": text, "max_tokens": 8, "num_samples": n, "stream": true} */
static const char *stream_body(char *out, size_t cap, const char *text, int n)
{
    int len = snprintf(
        out, cap, "{\"text\":\"%s\",\"max_tokens\":8,\"num_samples\":%d,\"stream\":true}", text, n);
    assert_true(len > 0 && (size_t)len < cap);
    return out;
}

/* POST /jobs with n samples; the id into out. */
static void submit(const char *text, int n, char *out, size_t cap)
{
    char body[512];
    struct http_response r;
    api_post(&S, "/jobs", api_body(body, sizeof(body), text, n), NULL, &r);
    if (r.status != 202)
        fail_msg("POST /jobs: %ld %s", r.status, r.body ? r.body : r.err);
    json_t *o = api_json(&r);
    snprintf(out, cap, "%s", api_str(o, "id"));
    json_decref(o);
    http_response_fini(&r);
}

static void cancel(const char *id)
{
    char path[128];
    struct http_response r;
    snprintf(path, sizeof(path), "/jobs/%s", id);
    api_call(&S, "DELETE", path, &r);
    http_response_fini(&r);
}

/* A stream event id as (ms, seq); fails on anything else. */
static void parse_eid(const char *s, uint64_t *ms, uint64_t *seq)
{
    char *end;
    *ms = strtoull(s, &end, 10);
    *seq = 0;
    if (*end == '-')
        *seq = strtoull(end + 1, &end, 10);
    if (end == s || *end)
        fail_msg("\"%s\" is not a stream entry id", s);
}

/* Assert the delta events of s have strictly increasing ids, all after
 * (ms0, seq0); returns the last one's into *ms, *seq. */
static void assert_deltas_in_order(const struct api_sse *s, uint64_t *ms, uint64_t *seq)
{
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->ev[i].event, "delta") != 0)
            continue;
        uint64_t m, q;
        parse_eid(s->ev[i].id, &m, &q);
        if (m < *ms || (m == *ms && q <= *seq))
            fail_msg("delta %s does not come after %" PRIu64 "-%" PRIu64, s->ev[i].id, *ms, *seq);
        *ms = m;
        *seq = q;
    }
}

/* The job's result as stored in its hash (new). */
static char *stored_result(const char *id)
{
    redisReply *r = test_redis_cmd(&S.redis, "HGET {mr}:job:%s result", id);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    char *s = strdup(r->str);
    freeReplyObject(r);
    return s;
}

/* Sample i's final text for prompt `text`. */
static const char *want_text(char *out, size_t cap, const char *text, int i)
{
    if (i == 0)
        snprintf(out, cap, "echo: %s", text);
    else
        snprintf(out, cap, "echo[%d]: %s", i, text);
    return out;
}

/* The job id of a stream's first event (job). */
static void job_event_id(const struct api_sse *s, char *out, size_t cap)
{
    assert_true(s->n >= 1);
    assert_string_equal(s->ev[0].event, "job");
    assert_string_equal(s->ev[0].id, "job");
    json_t *o = api_sse_json(&s->ev[0]);
    snprintf(out, cap, "%s", api_str(o, "id"));
    assert_int_equal(strlen(out), 32);
    json_decref(o);
}

/*
 * Assert s is a whole stream of a done echo job on `text` with n samples:
 * job (unless it resumed), deltas in order, done last with the stored
 * result; each sample's deltas concatenate to its text.
 */
static void assert_whole_stream(const struct api_sse *s, const char *text, int n, const char *id)
{
    assert_true(s->n >= 2);
    const struct api_sse_event *done = &s->ev[s->n - 1];
    assert_string_equal(done->event, "done");
    assert_string_equal(done->id, "done");
    char *stored = stored_result(id);
    assert_string_equal(done->data, stored); /* verbatim */
    free(stored);
    json_t *resp = api_sse_json(done);
    json_t *rs = json_object_get(resp, "responses");
    assert_int_equal(json_array_size(rs), (size_t)n);
    uint64_t ms = 0, seq = 0;
    assert_deltas_in_order(s, &ms, &seq);
    for (int i = 0; i < n; i++) {
        char got[512] = "", want[512];
        int pieces = api_sse_concat(s, i, got, sizeof(got));
        assert_in_range(pieces, 3, 4);
        assert_string_equal(got, want_text(want, sizeof(want), text, i));
        assert_string_equal(got, api_str(json_array_get(rs, (size_t)i), "text"));
    }
    json_decref(resp);
}

/* ---- POST /generate with "stream": true --------------------------------- */

API_TEST(test_generate_stream_sends_job_then_deltas_then_done)
{
    char mk[32], text[96], body[256], id[80], cc[64];
    snprintf(text, sizeof(text), "hello big world %s", api_marker(mk, sizeof(mk)));
    struct http_response r;
    api_stream(&S, stream_body(body, sizeof(body), text, 2), NULL, NULL, NULL, NULL,
               STREAM_TIMEOUT_MS, &r);
    struct api_sse s;
    api_assert_stream(&r, &s);
    assert_string_equal(api_header(&r, "Cache-Control", cc, sizeof(cc)), "no-cache");
    job_event_id(&s, id, sizeof(id));
    for (size_t i = 1; i + 1 < s.n; i++)
        assert_string_equal(s.ev[i].event, "delta");
    assert_whole_stream(&s, text, 2, id);
    json_t *o = api_job(&S, id, 0, NULL);
    assert_string_equal(api_str(o, "status"), "done");
    json_decref(o);
    api_sse_fini(&s);
    http_response_fini(&r);
}

API_TEST(test_many_streams_at_once_each_get_their_own_text)
{
    enum { N = 40 };
    static char texts[N][64], bodies[N][256], url[256];
    static struct http_spec specs[N];
    static struct http_response outs[N];
    const char *headers[] = {API_JSON, "Expect:", NULL};
    stack_url(&S, "/generate", url, sizeof(url));
    for (int i = 0; i < N; i++) {
        char mk[32];
        snprintf(texts[i], sizeof(texts[i]), "SLOW:%d many %s", 50 + 7 * i,
                 api_marker(mk, sizeof(mk)));
        stream_body(bodies[i], sizeof(bodies[i]), texts[i], 2);
        specs[i] = (struct http_spec){"POST", url, headers, bodies[i], strlen(bodies[i])};
    }
    assert_int_equal(http_many(N, specs, STREAM_TIMEOUT_MS * 2, outs), 0);
    for (int i = 0; i < N; i++) {
        struct api_sse s;
        char id[80];
        api_assert_stream(&outs[i], &s);
        job_event_id(&s, id, sizeof(id));
        assert_whole_stream(&s, texts[i], 2, id);
        api_sse_fini(&s);
        http_response_fini(&outs[i]);
    }
    json_t *o = api_stats(&S);
    assert_int_equal(api_int(o, "streams_here"), 0);
    json_decref(o);
}

API_TEST(test_generate_stream_error_event_for_a_failed_job)
{
    char mk[32], text[64], body[256], id[80];
    snprintf(text, sizeof(text), "FAIL %s", api_marker(mk, sizeof(mk)));
    struct http_response r;
    api_stream(&S, stream_body(body, sizeof(body), text, 1), NULL, NULL, NULL, NULL,
               STREAM_TIMEOUT_MS, &r);
    struct api_sse s;
    api_assert_stream(&r, &s);
    job_event_id(&s, id, sizeof(id));
    const struct api_sse_event *last = &s.ev[s.n - 1];
    assert_string_equal(last->event, "error");
    assert_string_equal(last->id, "done");
    assert_int_equal(api_sse_count(r.body, r.len, "delta"), 3); /* it failed before the last */
    json_t *o = api_sse_json(last);
    json_t *e = json_object_get(o, "error");
    assert_string_equal(api_str(e, "type"), "job_failed");
    assert_string_equal(api_str(e, "message"), "fake worker: asked to fail");
    assert_true(json_is_null(json_object_get(e, "field")));
    assert_string_equal(api_str(o, "id"), id);
    json_decref(o);
    api_sse_fini(&s);
    http_response_fini(&r);
}

API_TEST(test_generate_stream_disconnect_cancels_the_job)
{
    char mk[32], text[64], body[256], id[80];
    snprintf(text, sizeof(text), "HANG %s", api_marker(mk, sizeof(mk)));
    long before = api_jobs_counter(&S, "cancelled");
    size_t one = 1;
    struct http_response r;
    api_stream(&S, stream_body(body, sizeof(body), text, 1), NULL, NULL, api_sse_stop_after_deltas,
               &one, STREAM_TIMEOUT_MS, &r);
    struct api_sse s;
    api_assert_stream(&r, &s);
    job_event_id(&s, id, sizeof(id));
    api_sse_fini(&s);
    http_response_fini(&r);
    int64_t t0 = clock_now_ms();
    json_decref(api_job_until(&S, id, "cancelled", 2000));
    assert_true(clock_now_ms() - t0 < 1000);
    api_wait_dropped(&S, "{mr}", id, 2000);
    assert_int_equal(api_jobs_counter(&S, "cancelled"), before + 1);
}

/* ---- GET /jobs/{id}/stream ------------------------------------------------ */

API_TEST(test_stream_by_id_during_and_after_the_job_is_the_same)
{
    char mk[32], text[64], id[80];
    snprintf(text, sizeof(text), "SLOW:400 by id %s", api_marker(mk, sizeof(mk)));
    submit(text, 2, id, sizeof(id));
    struct http_response during, after;
    int64_t t0 = clock_now_ms();
    api_stream(&S, NULL, id, NULL, NULL, NULL, STREAM_TIMEOUT_MS, &during);
    assert_true(clock_now_ms() - t0 >= 250); /* it followed the job as it ran */
    api_stream(&S, NULL, id, NULL, NULL, NULL, STREAM_TIMEOUT_MS, &after);
    struct api_sse a, b;
    api_assert_stream(&during, &a);
    api_assert_stream(&after, &b);
    char got[80];
    job_event_id(&a, got, sizeof(got));
    assert_string_equal(got, id);
    assert_whole_stream(&a, text, 2, id);
    assert_int_equal(a.n, b.n);
    for (size_t i = 0; i < a.n; i++) {
        assert_string_equal(a.ev[i].id, b.ev[i].id);
        assert_string_equal(a.ev[i].event, b.ev[i].event);
        assert_string_equal(a.ev[i].data, b.ev[i].data);
    }
    api_sse_fini(&a);
    api_sse_fini(&b);
    http_response_fini(&during);
    http_response_fini(&after);
}

API_TEST(test_stream_resumes_after_last_event_id_without_loss_or_repeat)
{
    char mk[32], text[64], id[80];
    snprintf(text, sizeof(text), "SLOW:600 resume me %s", api_marker(mk, sizeof(mk)));
    submit(text, 2, id, sizeof(id));
    size_t two = 2;
    struct http_response first, rest;
    api_stream(&S, NULL, id, NULL, api_sse_stop_after_deltas, &two, STREAM_TIMEOUT_MS, &first);
    struct api_sse a, b;
    api_assert_stream(&first, &a);
    assert_true(a.n >= 3);
    const char *last_id = a.ev[a.n - 1].id; /* the last complete delta */
    assert_string_equal(a.ev[a.n - 1].event, "delta");
    json_t *o = api_job(&S, id, 0, NULL);
    assert_string_equal(api_str(o, "status"), "running"); /* a GET stream owns nothing */
    json_decref(o);

    api_stream(&S, NULL, id, last_id, NULL, NULL, STREAM_TIMEOUT_MS, &rest);
    api_assert_stream(&rest, &b);
    assert_true(b.n >= 2);
    assert_string_not_equal(b.ev[0].event, "job");
    uint64_t ms = 0, seq = 0;
    assert_deltas_in_order(&a, &ms, &seq);
    assert_deltas_in_order(&b, &ms, &seq); /* after the last one of the first part */
    assert_string_equal(b.ev[b.n - 1].event, "done");
    for (int i = 0; i < 2; i++) {
        char got[512] = "", want[512];
        int n = api_sse_concat(&a, i, got, sizeof(got));
        n += api_sse_concat(&b, i, got, sizeof(got));
        assert_int_equal(n, 4);
        assert_string_equal(got, want_text(want, sizeof(want), text, i));
    }
    api_sse_fini(&a);
    api_sse_fini(&b);
    http_response_fini(&first);
    http_response_fini(&rest);
}

API_TEST(test_last_event_id_done_and_job_resume_a_finished_job)
{
    char mk[32], text[64], id[80];
    snprintf(text, sizeof(text), "finished %s", api_marker(mk, sizeof(mk)));
    submit(text, 1, id, sizeof(id));
    json_decref(api_job_until(&S, id, "done", 5000));
    struct http_response r;
    struct api_sse s;
    api_stream(&S, NULL, id, "done", NULL, NULL, STREAM_TIMEOUT_MS, &r);
    api_assert_stream(&r, &s);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.ev[0].event, "done");
    char *stored = stored_result(id);
    assert_string_equal(s.ev[0].data, stored);
    free(stored);
    api_sse_fini(&s);
    http_response_fini(&r);

    api_stream(&S, NULL, id, "job", NULL, NULL, STREAM_TIMEOUT_MS, &r);
    api_assert_stream(&r, &s);
    assert_string_equal(s.ev[0].event, "delta"); /* no job event again */
    assert_whole_stream(&s, text, 1, id);
    api_sse_fini(&s);
    http_response_fini(&r);
}

API_TEST(test_bad_last_event_id_is_400)
{
    char mk[32], id[80], path[128];
    submit(api_marker(mk, sizeof(mk)), 1, id, sizeof(id));
    const char *bad[] = {"abc", "12-", "-1", "1-2-3", "1 2", "99999999999999999999999-0"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct http_response r;
        api_stream(&S, NULL, id, bad[i], NULL, NULL, STREAM_TIMEOUT_MS, &r);
        json_t *o = api_assert_error(&r, 400, "invalid_request", "Last-Event-ID");
        assert_string_equal(api_str(o, "id"), id);
        json_decref(o);
        http_response_fini(&r);
    }
    struct http_response r;
    api_stream(&S, NULL, "0123456789abcdef0123456789abcdef", NULL, NULL, NULL, STREAM_TIMEOUT_MS,
               &r);
    json_decref(api_assert_error(&r, 404, "not_found", NULL));
    http_response_fini(&r);
    snprintf(path, sizeof(path), "/jobs/%s/stream", id);
    api_call(&S, "DELETE", path, &r);
    json_decref(api_assert_error(&r, 405, "method_not_allowed", NULL));
    http_response_fini(&r);
}

API_TEST(test_stream_error_event_for_a_cancelled_job)
{
    static struct api_bg bg;
    char mk[32], text[64], id[80], path[160];
    snprintf(text, sizeof(text), "HANG %s", api_marker(mk, sizeof(mk)));
    submit(text, 1, id, sizeof(id));
    json_decref(api_job_until(&S, id, "running", 3000));
    snprintf(path, sizeof(path), "/jobs/%s/stream", id);
    api_bg_start(&bg, &S, "GET", path, NULL, NULL, STREAM_TIMEOUT_MS);
    clock_sleep_ms(200);
    cancel(id);
    api_bg_join(&bg);
    struct api_sse s;
    api_assert_stream(&bg.resp, &s);
    const struct api_sse_event *last = &s.ev[s.n - 1];
    assert_string_equal(last->event, "error");
    json_t *o = api_sse_json(last);
    assert_string_equal(api_str(json_object_get(o, "error"), "type"), "cancelled");
    assert_string_equal(api_str(o, "id"), id);
    json_decref(o);
    assert_true(bg.end_ms - bg.start_ms < 2000);
    api_sse_fini(&s);
    http_response_fini(&bg.resp);
}

API_TEST(test_get_stream_disconnect_leaves_the_job_running)
{
    char mk[32], text[64], id[80];
    snprintf(text, sizeof(text), "HANG %s", api_marker(mk, sizeof(mk)));
    submit(text, 1, id, sizeof(id));
    size_t one = 1;
    struct http_response r;
    api_stream(&S, NULL, id, NULL, api_sse_stop_after_deltas, &one, STREAM_TIMEOUT_MS, &r);
    assert_int_equal(r.status, 200);
    http_response_fini(&r);
    clock_sleep_ms(400); /* the API has seen the hang-up */
    json_t *o = api_job(&S, id, 0, NULL);
    assert_string_equal(api_str(o, "status"), "running");
    json_decref(o);
    o = api_stats(&S);
    assert_int_equal(api_int(o, "streams_here"), 0); /* and let the stream go */
    json_decref(o);
    cancel(id);
}

API_TEST(test_idle_stream_gets_pings)
{
    const char *args[] = {"--stream-ping-s", "1", NULL};
    api_suite_use_api(&suite, args);
    char mk[32], text[64], id[80];
    snprintf(text, sizeof(text), "HANG %s", api_marker(mk, sizeof(mk)));
    submit(text, 1, id, sizeof(id));
    struct http_response r;
    /* 3 pieces, then silence: read for 2.5 s */
    api_stream(&S, NULL, id, NULL, NULL, NULL, 2500, &r);
    struct api_sse s;
    api_sse_parse(r.body, r.len, &s);
    assert_int_equal(api_sse_count(r.body, r.len, "delta"), 3);
    assert_in_range(s.comments, 2, 3);
    assert_non_null(strstr(r.body, "\n: ping\n\n"));
    api_sse_fini(&s);
    http_response_fini(&r);
    cancel(id);
}

API_TEST(test_sigterm_ends_a_stream_with_an_error_to_resume_from)
{
    static struct api_bg bg;
    char mk[32], text[64], id[80], path[160];
    snprintf(text, sizeof(text), "HANG %s", api_marker(mk, sizeof(mk)));
    submit(text, 1, id, sizeof(id));
    json_decref(api_job_until(&S, id, "running", 3000));
    snprintf(path, sizeof(path), "/jobs/%s/stream", id);
    api_bg_start(&bg, &S, "GET", path, NULL, NULL, STREAM_TIMEOUT_MS);
    clock_sleep_ms(300);
    assert_int_equal(stack_stop_api(&S, SIGTERM), 0); /* within its 2 s grace, exit 0 */
    api_bg_join(&bg);
    struct api_sse s;
    api_assert_stream(&bg.resp, &s);
    const struct api_sse_event *last = &s.ev[s.n - 1];
    assert_string_equal(last->event, "error");
    assert_string_equal(last->id, ""); /* the client keeps its last delta's id */
    json_t *o = api_sse_json(last);
    assert_string_equal(api_str(json_object_get(o, "error"), "type"), "shutting_down");
    json_decref(o);
    api_sse_fini(&s);
    http_response_fini(&bg.resp);
    assert_int_equal(stack_start_api(&S, NULL), 0);
    o = api_job(&S, id, 0, NULL);
    assert_string_equal(api_str(o, "status"), "running"); /* the job went on */
    json_decref(o);
    cancel(id);
}

/* ---- a worker's invalid_request ------------------------------------------- */

API_TEST(test_invalid_request_from_the_worker_is_400)
{
    char mk[32], text[64], body[256], id[80];
    snprintf(text, sizeof(text), "INVALID %s", api_marker(mk, sizeof(mk)));
    struct http_response r;
    api_post(&S, "/generate", api_body(body, sizeof(body), text, 1), NULL, &r);
    json_t *o = api_assert_error(&r, 400, "invalid_request", NULL);
    assert_string_equal(api_str(json_object_get(o, "error"), "message"), "the prompt does not fit");
    snprintf(id, sizeof(id), "%s", api_str(o, "id"));
    json_decref(o);
    http_response_fini(&r);
    o = api_job(&S, id, 0, NULL);
    assert_string_equal(api_str(o, "status"), "failed");
    json_t *e = json_object_get(o, "error");
    assert_string_equal(api_str(e, "type"), "invalid_request");
    assert_string_equal(api_str(e, "message"), "the prompt does not fit");
    json_decref(o);

    struct api_sse s;
    api_stream(&S, stream_body(body, sizeof(body), text, 1), NULL, NULL, NULL, NULL,
               STREAM_TIMEOUT_MS, &r);
    api_assert_stream(&r, &s);
    assert_int_equal(api_sse_count(r.body, r.len, "delta"), 0);
    o = api_sse_json(&s.ev[s.n - 1]);
    assert_string_equal(s.ev[s.n - 1].event, "error");
    assert_string_equal(api_str(json_object_get(o, "error"), "type"), "invalid_request");
    json_decref(o);
    api_sse_fini(&s);
    http_response_fini(&r);
}

/* ---- /stats and /metrics ------------------------------------------------------ */

API_TEST(test_stats_lists_the_runners_and_their_totals)
{
    char mk[32], text[64], id[80];
    snprintf(text, sizeof(text), "HANG %s", api_marker(mk, sizeof(mk)));
    submit(text, 1, id, sizeof(id));
    json_decref(api_job_until(&S, id, "running", 3000));
    clock_sleep_ms(250); /* a heartbeat or two since */
    json_t *o = api_stats(&S);
    json_t *runners = json_object_get(o, "runners");
    assert_int_equal(json_array_size(runners), 1);
    json_t *w = json_array_get(runners, 0);
    assert_int_equal(strncmp(api_str(w, "id"), "fake-", 5), 0);
    assert_in_range(api_int(w, "beat_age_ms"), 0, 1000);
    assert_string_equal(api_str(w, "model"), "fake");
    assert_string_equal(api_str(w, "device"), "cpu");
    long active = api_int(w, "active_sequences");
    assert_true(active >= 1);
    assert_int_equal(api_int(w, "kv_blocks_total"), 4096);
    assert_int_equal(api_int(o, "active_sequences"), active);
    assert_int_equal(api_int(o, "kv_blocks_used"), api_int(w, "kv_blocks_used"));
    assert_int_equal(api_int(o, "kv_blocks_total"), 4096);
    assert_true(json_is_number(json_object_get(o, "tokens_per_s")));
    json_decref(o);
    cancel(id);
}

/* The value of the sample line `series` in a /metrics text, or -1. */
static double metric(const char *text, const char *series)
{
    char needle[200];
    snprintf(needle, sizeof(needle), "\n%s ", series);
    const char *p = strstr(text, needle);
    return p ? strtod(p + strlen(needle), NULL) : -1;
}

API_TEST(test_metrics_time_to_first_token_and_inter_token_latency)
{
    struct http_response r;
    api_call(&S, "GET", "/metrics", &r);
    double ttft0 = metric(r.body, "millrace_time_to_first_token_seconds_count");
    double itl0 = metric(r.body, "millrace_inter_token_latency_seconds_count");
    assert_true(ttft0 >= 0 && itl0 >= 0);
    http_response_fini(&r);
    for (int i = 0; i < 3; i++) {
        char mk[32], text[64], body[256];
        snprintf(text, sizeof(text), "three words %s", api_marker(mk, sizeof(mk)));
        api_post(&S, "/generate", api_body(body, sizeof(body), text, 1), NULL, &r);
        api_assert_flywheel(&r, text, 1);
        http_response_fini(&r);
    }
    api_call(&S, "GET", "/metrics", &r);
    assert_true(metric(r.body, "millrace_time_to_first_token_seconds_count") >= ttft0 + 3);
    assert_true(metric(r.body, "millrace_inter_token_latency_seconds_count") >= itl0 + 3);
    assert_true(metric(r.body, "millrace_time_to_first_token_seconds_sum") > 0);
    assert_true(metric(r.body, "millrace_inter_token_latency_seconds_sum") > 0);
    assert_true(metric(r.body, "millrace_time_to_first_token_seconds_bucket{le=\"0.01\"}") >= 0);
    assert_true(metric(r.body, "millrace_time_to_first_token_seconds_bucket{le=\"60\"}") >= 3);
    assert_true(metric(r.body, "millrace_inter_token_latency_seconds_bucket{le=\"0.001\"}") >= 0);
    assert_true(metric(r.body, "millrace_inter_token_latency_seconds_bucket{le=\"2.5\"}") >= 3);
    assert_non_null(strstr(r.body, "# TYPE millrace_time_to_first_token_seconds histogram\n"));
    assert_true(metric(r.body, "millrace_kv_cache_blocks_total") == 4096);
    assert_true(metric(r.body, "millrace_num_active_sequences") >= 0);
    assert_true(metric(r.body, "millrace_kv_cache_blocks_used") >= 0);
    double ratio = metric(r.body, "millrace_kv_cache_usage_ratio");
    assert_true(ratio >= 0 && ratio <= 1);
    assert_true(metric(r.body, "millrace_generation_tokens_per_second") >= 0);
    http_response_fini(&r);
}

/* Last: the API that served most of the streams above exits 0 on SIGTERM (in
 * the sanitizer build that is also LeakSanitizer's verdict). */
API_TEST(test_api_exits_cleanly_after_the_streams)
{
    assert_int_equal(stack_stop_api(&S, SIGTERM), 0);
}

/* ---- main ------------------------------------------------------------------- */

/* A job re-run after its worker was lost: the stream carries both attempts'
 * deltas; a reader gets a reset event where the second begins, and the text
 * after it is the final text. Driven by hand through common/queue on a
 * prefix no fake worker serves. */
static void test_a_rerun_after_a_lost_worker_resets_the_stream(void **state)
{
    const char *args[] = {"--redis-prefix", "{rs}", NULL};
    api_suite_use_api(&suite, args);
    char id[64];
    struct http_response r;
    api_post(&S, "/jobs", "{\"text\": \"again\", \"max_tokens\": 4}", NULL, &r);
    assert_int_equal(r.status, 202);
    json_t *o = api_json(&r);
    snprintf(id, sizeof(id), "%s", api_str(o, "id"));
    json_decref(o);
    http_response_fini(&r);

    struct redis_opts ro;
    struct queue_opts qo;
    char err[256];
    redis_opts_default(&ro);
    assert_int_equal(redis_url_parse(S.redis.url, &ro.target, err, sizeof(err)), 0);
    queue_opts_default(&qo);
    qo.prefix = "{rs}";
    struct queue *q = NULL;
    assert_int_equal(queue_create(&q, &ro, &qo, "t:rerun", err, sizeof(err)), 0);
    assert_int_equal(queue_register(q, "r1", NULL), 0);
    struct queue_claimed c;
    int n, rec;
    assert_int_equal(queue_claim(q, "r1", 1, 0, &c, &n), 0);
    assert_int_equal(n, 1);
    queue_claimed_fini(&c, 1);
    struct queue_delta d1 = {id, 1, 0, "lost ", 5, 1};
    assert_int_equal(queue_stream_append(q, &d1, 1), 0);
    /* the worker fails: the job goes back and runs again */
    assert_int_equal(queue_finish(q, "r1", id, 1, QUEUE_OUTCOME_RETRY, "lost", 4, &rec), 0);
    assert_int_equal(queue_claim(q, "r1", 1, 0, &c, &n), 0);
    assert_int_equal(c.attempt, 2);
    queue_claimed_fini(&c, 1);
    struct queue_delta d2[2] = {{id, 2, 0, "kept ", 5, 0}, {id, 2, 0, "text", 4, 1}};
    assert_int_equal(queue_stream_append(q, d2, 2), 0);
    const char *result = "{\"created\":1.0,\"finished\":2.0,\"num_samples\":1,\"prompt\":"
                         "\"again\",\"prompt_tokens\":2,\"responses\":[{\"text\":\"kept text\","
                         "\"generated_tokens\":2,\"finished\":2.0,\"finish_reason\":\"length\"}]}";
    assert_int_equal(queue_finish(q, "r1", id, 2, QUEUE_OUTCOME_DONE, result, strlen(result), &rec),
                     0);
    assert_int_equal(rec, 1);
    queue_destroy(q);

    char path[128];
    snprintf(path, sizeof(path), "/jobs/%s/stream", id);
    api_call(&S, "GET", path, &r);
    assert_int_equal(r.status, 200);
    struct api_sse sse;
    api_sse_parse(r.body, r.len, &sse);
    char after_reset[64] = "";
    int resets = 0;
    for (size_t i = 0; i < sse.n; i++) {
        if (strcmp(sse.ev[i].event, "reset") == 0) {
            resets++;
            after_reset[0] = '\0';
        } else if (strcmp(sse.ev[i].event, "delta") == 0) {
            json_t *dj = api_sse_json(&sse.ev[i]);
            strncat(after_reset, api_str(dj, "text"),
                    sizeof(after_reset) - strlen(after_reset) - 1);
            json_decref(dj);
        }
    }
    assert_int_equal(resets, 1);
    assert_string_equal(after_reset, "kept text");
    assert_string_equal(sse.ev[sse.n - 1].event, "done");
    api_sse_fini(&sse);
    http_response_fini(&r);
    api_suite_finished(state);
}

static int group_setup(void **state)
{
    return api_suite_group_setup(state, &suite);
}

#define T(f) cmocka_unit_test_setup_teardown(f, api_suite_setup, api_suite_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* these two restart the API; the rest share one process, checked last */
        T(test_idle_stream_gets_pings),
        T(test_sigterm_ends_a_stream_with_an_error_to_resume_from),
        T(test_generate_stream_sends_job_then_deltas_then_done),
        T(test_many_streams_at_once_each_get_their_own_text),
        T(test_generate_stream_error_event_for_a_failed_job),
        T(test_generate_stream_disconnect_cancels_the_job),
        T(test_stream_by_id_during_and_after_the_job_is_the_same),
        T(test_stream_resumes_after_last_event_id_without_loss_or_repeat),
        T(test_last_event_id_done_and_job_resume_a_finished_job),
        T(test_bad_last_event_id_is_400),
        T(test_stream_error_event_for_a_cancelled_job),
        T(test_get_stream_disconnect_leaves_the_job_running),
        T(test_a_rerun_after_a_lost_worker_resets_the_stream),
        T(test_invalid_request_from_the_worker_is_400),
        T(test_stats_lists_the_runners_and_their_totals),
        T(test_metrics_time_to_first_token_and_inter_token_latency),
        T(test_api_exits_cleanly_after_the_streams),
    };
    return cmocka_run_group_tests_name("api_stream", tests, group_setup, api_suite_group_teardown);
}
