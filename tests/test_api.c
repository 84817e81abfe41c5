/*
 * Integration tests of millrace-api's routes and of its life as a process:
 * the real build/millrace-api, a private redis-server and
 * build/tests/fake_worker (the engine's test double: each sample is
 * "echo: <prompt>"; FAIL, SLOW:<ms>, HANG in the prompt steer it). The error
 * statuses are in test_api_errors.c. Run from the repository root.
 *
 * Key decision: one stack (Redis, API, one worker on the prefix "{mr}")
 * serves the whole file. A test that needs a world without workers restarts
 * the API on a fresh key prefix of its own rather than on a fresh Redis (a
 * Redis start costs a second); prompts carry a unique marker so a job can be
 * found in Redis by its text, and counters are compared before and after.
 */
#include <signal.h>
#include <sys/wait.h>

#include "tests/support/api_client.h"
#include "tests/support/api_suite.h"

static struct stack S; /* Redis, the API, the workers */
static struct api_suite suite = {.s = &S, .name = "test_api"};
static struct stack second; /* a second API instance on S's Redis, when a test starts one */

/* A key prefix no other test uses: a world with no jobs and no workers. */
static const char *fresh_prefix(char *out, size_t cap)
{
    static int n;
    snprintf(out, cap, "{t%d}", ++n);
    return out;
}

/* ---- POST /generate ----------------------------------------------------- */

API_TEST(test_generate_answers_the_flywheel_response)
{
    char mk[32], text[64], body[256], ct[64];
    snprintf(text, sizeof(text), "hello world %s", api_marker(mk, sizeof(mk)));
    struct http_response r;
    api_post(&S, "/generate", api_body(body, sizeof(body), text, 1), NULL, &r);
    api_assert_flywheel(&r, text, 1);
    assert_string_equal(api_header(&r, "Content-Type", ct, sizeof(ct)), "application/json");
    json_t *o = api_json(&r);
    assert_int_equal(api_int(o, "prompt_tokens"), 3); /* the fake counts words */
    json_decref(o);
    http_response_fini(&r);
}

API_TEST(test_generate_num_samples_3_gives_3_responses)
{
    char mk[32], body[256];
    struct http_response r;
    api_post(&S, "/generate", api_body(body, sizeof(body), api_marker(mk, sizeof(mk)), 3), NULL,
             &r);
    api_assert_flywheel(&r, mk, 3);
    http_response_fini(&r);
}

/* ---- async jobs --------------------------------------------------------- */

API_TEST(test_jobs_submit_then_poll_until_done)
{
    char mk[32], text[64], id[80];
    snprintf(text, sizeof(text), "SLOW:300 %s", api_marker(mk, sizeof(mk)));
    api_submit(&S, text, NULL, id, sizeof(id));

    json_t *o = api_job(&S, id, 0, NULL);
    const char *st = api_str(o, "status");
    assert_true(strcmp(st, "queued") == 0 || strcmp(st, "running") == 0);
    assert_null(json_object_get(o, "response"));
    json_decref(o);

    o = api_job_until(&S, id, "done", 5000);
    assert_int_equal(api_int(o, "attempts"), 1);
    double created = json_number_value(json_object_get(o, "created"));
    double started = json_number_value(json_object_get(o, "started"));
    double finished = json_number_value(json_object_get(o, "finished"));
    assert_true(created > 1.6e9 && started >= created && finished >= started + 0.25);
    json_t *resp = json_object_get(o, "response");
    assert_true(json_is_object(resp));
    assert_string_equal(api_str(resp, "prompt"), text);
    json_t *s0 = json_array_get(json_object_get(resp, "responses"), 0);
    assert_non_null(s0);
    char want[96];
    snprintf(want, sizeof(want), "echo: %s", text);
    assert_string_equal(api_str(s0, "text"), want);
    json_decref(o);
}

API_TEST(test_jobs_long_poll_returns_when_the_job_finishes)
{
    char mk[32], text[64], id[80], want[96];
    snprintf(text, sizeof(text), "SLOW:1000 %s", api_marker(mk, sizeof(mk)));
    api_submit(&S, text, NULL, id, sizeof(id));
    int64_t ms;
    json_t *o = api_job(&S, id, 5, &ms);
    assert_string_equal(api_str(o, "status"), "done");
    snprintf(want, sizeof(want), "echo: %s", text);
    json_t *s0 = json_array_get(json_object_get(json_object_get(o, "response"), "responses"), 0);
    assert_non_null(s0);
    assert_string_equal(api_str(s0, "text"), want);
    /* it waited for the job, and answered as soon as the job was done */
    assert_in_range(ms, 600, 1800); /* not the 2 s re-read: the inbox woke it */
    json_decref(o);
}

API_TEST(test_jobs_long_poll_on_a_hanging_job_answers_running_after_the_wait)
{
    char mk[32], text[64], id[80], path[128];
    snprintf(text, sizeof(text), "HANG %s", api_marker(mk, sizeof(mk)));
    api_submit(&S, text, NULL, id, sizeof(id));
    json_decref(api_job_until(&S, id, "running", 3000));
    int64_t ms;
    json_t *o = api_job(&S, id, 1, &ms);
    assert_string_equal(api_str(o, "status"), "running");
    assert_null(json_object_get(o, "response"));
    assert_in_range(ms, 950, 2500);
    json_decref(o);
    struct http_response r;
    snprintf(path, sizeof(path), "/jobs/%s", id);
    api_call(&S, "DELETE", path, &r); /* let the worker drop it */
    assert_int_equal(r.status, 200);
    http_response_fini(&r);
}

/* DELETE /jobs/{id}: 200 {id, status "cancelled"}, then GET says cancelled. */
static void cancel_and_check(const char *id)
{
    char path[128];
    snprintf(path, sizeof(path), "/jobs/%s", id);
    struct http_response r;
    api_call(&S, "DELETE", path, &r);
    assert_int_equal(r.status, 200);
    json_t *o = api_json(&r);
    assert_string_equal(api_str(o, "id"), id);
    assert_string_equal(api_str(o, "status"), "cancelled");
    json_decref(o);
    http_response_fini(&r);

    o = api_job(&S, id, 0, NULL);
    assert_string_equal(api_str(o, "status"), "cancelled");
    json_t *e = json_object_get(o, "error");
    assert_string_equal(api_str(e, "type"), "cancelled");
    assert_null(json_object_get(o, "response"));
    json_decref(o);
}

API_TEST(test_delete_of_a_queued_job_cancels_it)
{
    char prefix[16], mk[32], id[80];
    const char *args[] = {"--redis-prefix", fresh_prefix(prefix, sizeof(prefix)), NULL};
    api_suite_use_api(&suite, args); /* no worker serves this prefix: the job stays queued */
    api_submit(&S, api_marker(mk, sizeof(mk)), NULL, id, sizeof(id));
    json_t *o = api_job(&S, id, 0, NULL);
    assert_string_equal(api_str(o, "status"), "queued");
    assert_int_equal(api_int(o, "position"), 0);
    json_decref(o);
    cancel_and_check(id);
    o = api_stats(&S);
    assert_int_equal(api_int(o, "backlog"), 0);
    assert_int_equal(api_int(json_object_get(o, "jobs"), "cancelled"), 1);
    json_decref(o);
}

API_TEST(test_delete_of_a_running_job_cancels_it_and_the_worker_drops_it)
{
    char mk[32], text[64], id[80];
    snprintf(text, sizeof(text), "HANG %s", api_marker(mk, sizeof(mk)));
    api_submit(&S, text, NULL, id, sizeof(id));
    json_decref(api_job_until(&S, id, "running", 3000));
    cancel_and_check(id);
    api_wait_dropped(&S, "{mr}", id, 2000);
}

API_TEST(test_delete_of_a_done_job_is_409)
{
    char mk[32], id[80], path[128];
    api_submit(&S, api_marker(mk, sizeof(mk)), NULL, id, sizeof(id));
    json_decref(api_job_until(&S, id, "done", 5000));
    snprintf(path, sizeof(path), "/jobs/%s", id);
    struct http_response r;
    api_call(&S, "DELETE", path, &r);
    json_t *o = api_assert_error(&r, 409, "conflict", NULL);
    assert_string_equal(api_str(o, "id"), id);
    json_decref(o);
    http_response_fini(&r);
    o = api_job(&S, id, 0, NULL);
    assert_string_equal(api_str(o, "status"), "done");
    json_decref(o);
}

API_TEST(test_unknown_job_is_404_for_get_wait_and_delete)
{
    const char *id = "0123456789abcdef0123456789abcdef";
    const char *methods[] = {"GET", "GET", "DELETE"};
    const char *paths[] = {"/jobs/0123456789abcdef0123456789abcdef",
                           "/jobs/0123456789abcdef0123456789abcdef?wait=1",
                           "/jobs/0123456789abcdef0123456789abcdef"};
    for (int i = 0; i < 3; i++) {
        struct http_response r;
        api_call(&S, methods[i], paths[i], &r);
        json_t *o = api_assert_error(&r, 404, "not_found", NULL);
        assert_string_equal(api_str(o, "id"), id);
        assert_true(r.total_s < 0.5); /* the long poll does not wait for a job that is not */
        json_decref(o);
        http_response_fini(&r);
    }
}

/* ---- /health, /stats, /metrics ------------------------------------------ */

API_TEST(test_health_is_503_without_workers_and_200_once_one_beats)
{
    char prefix[16];
    const char *args[] = {"--redis-prefix", fresh_prefix(prefix, sizeof(prefix)), NULL};
    api_suite_use_api(&suite, args);
    struct http_response r;
    api_call(&S, "GET", "/health", &r);
    assert_int_equal(r.status, 503);
    json_t *o = api_json(&r);
    assert_string_equal(api_str(o, "status"), "unavailable");
    assert_non_null(strstr(api_str(o, "reason"), "no live runners"));
    json_decref(o);
    http_response_fini(&r);

    const char *wargs[] = {"--prefix", prefix, NULL};
    assert_true(stack_start_worker(&S, wargs) >= 0);
    assert_int_equal(stack_wait_health(&S, 200, 5000), 0);
    api_call(&S, "GET", "/health", &r);
    assert_int_equal(r.status, 200);
    o = api_json(&r);
    assert_string_equal(api_str(o, "status"), "ok");
    assert_int_equal(api_int(o, "runners"), 1);
    json_decref(o);
    http_response_fini(&r);
}

API_TEST(test_stats_counts_the_backlog_without_workers_and_the_runners_after)
{
    char prefix[16], mk[32], ids[3][80];
    const char *args[] = {"--redis-prefix", fresh_prefix(prefix, sizeof(prefix)), NULL};
    api_suite_use_api(&suite, args);
    for (int i = 0; i < 3; i++)
        api_submit(&S, api_marker(mk, sizeof(mk)), NULL, ids[i], sizeof(ids[i]));
    json_t *o = api_stats(&S);
    assert_int_equal(api_int(o, "backlog"), 3);
    assert_int_equal(api_int(o, "num_total_runners"), 0);
    assert_int_equal(api_int(o, "running"), 0);
    assert_true(json_number_value(json_object_get(o, "oldest_queued_s")) >= 0);
    assert_int_equal(api_int(json_object_get(o, "jobs"), "enqueued"), 3);
    json_decref(o);

    const char *wargs[] = {"--prefix", prefix, NULL};
    assert_true(stack_start_worker(&S, wargs) >= 0);
    for (int i = 0; i < 3; i++)
        json_decref(api_job_until(&S, ids[i], "done", 5000));
    o = api_stats(&S);
    assert_int_equal(api_int(o, "backlog"), 0);
    assert_int_equal(api_int(o, "num_total_runners"), 1);
    assert_int_equal(api_int(json_object_get(o, "jobs"), "done"), 3);
    json_decref(o);
}

API_TEST(test_metrics_count_requests_and_waiting_jobs)
{
    char prefix[16], mk[32], id[80], ct[80];
    const char *args[] = {"--redis-prefix", fresh_prefix(prefix, sizeof(prefix)), NULL};
    api_suite_use_api(&suite, args); /* a new process (counters at 0), no worker: jobs wait */
    api_submit(&S, api_marker(mk, sizeof(mk)), NULL, id, sizeof(id));
    api_submit(&S, api_marker(mk, sizeof(mk)), NULL, id, sizeof(id));
    struct http_response r;
    api_post(&S, "/generate", "{}", NULL, &r);
    assert_int_equal(r.status, 400);
    http_response_fini(&r);

    /* a request is counted once it has completed, a moment after its client
     * has the answer: poll */
    const char *want[] = {
        "# TYPE millrace_http_requests_total counter\n",
        "\nmillrace_http_requests_total{route=\"jobs_submit\",code=\"202\"} 2\n",
        "\nmillrace_http_requests_total{route=\"generate\",code=\"400\"} 1\n",
        "# TYPE millrace_num_requests_waiting gauge\n",
        "\nmillrace_num_requests_waiting 2\n",
    };
    int64_t deadline = clock_now_ms() + 2000;
    for (;;) {
        api_call(&S, "GET", "/metrics", &r);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(api_header(&r, "Content-Type", ct, sizeof(ct)), "text/plain"));
        size_t found = 0;
        while (found < sizeof(want) / sizeof(want[0]) && strstr(r.body, want[found]))
            found++;
        if (found == sizeof(want) / sizeof(want[0]))
            break;
        if (clock_now_ms() > deadline)
            fail_msg("/metrics lacks %s in:\n%s", want[found], r.body);
        http_response_fini(&r);
        clock_sleep_ms(50);
    }
    http_response_fini(&r);
}

/* ---- idempotency ---------------------------------------------------------- */

API_TEST(test_idempotency_key_on_jobs_gives_one_job)
{
    char prefix[16], mk[32], key[64], id1[80], id2[80];
    const char *args[] = {"--redis-prefix", fresh_prefix(prefix, sizeof(prefix)), NULL};
    api_suite_use_api(&suite, args); /* no worker: both answers say queued */
    snprintf(key, sizeof(key), "Idempotency-Key: %s", api_marker(mk, sizeof(mk)));
    api_submit(&S, mk, key, id1, sizeof(id1));
    api_submit(&S, mk, key, id2, sizeof(id2));
    assert_string_equal(id1, id2);
    json_t *o = api_stats(&S);
    assert_int_equal(api_int(json_object_get(o, "jobs"), "enqueued"), 1);
    assert_int_equal(api_int(o, "backlog"), 1);
    json_decref(o);
}

API_TEST(test_idempotency_key_on_generate_gives_one_job)
{
    char mk[32], key[64], body[256];
    snprintf(key, sizeof(key), "Idempotency-Key: %s", api_marker(mk, sizeof(mk)));
    api_body(body, sizeof(body), mk, 1);
    long before = api_jobs_counter(&S, "enqueued");
    struct http_response a, b;
    api_post(&S, "/generate", body, key, &a);
    api_post(&S, "/generate", body, key, &b);
    api_assert_flywheel(&a, mk, 1);
    api_assert_flywheel(&b, mk, 1);
    assert_string_equal(a.body, b.body); /* the same job's result, timestamps and all */
    assert_int_equal(api_jobs_counter(&S, "enqueued"), before + 1);
    http_response_fini(&a);
    http_response_fini(&b);

    /* two at once, while the job runs: both wait for the one job */
    char text[64], url[256];
    snprintf(text, sizeof(text), "SLOW:300 %s", api_marker(mk, sizeof(mk)));
    snprintf(key, sizeof(key), "Idempotency-Key: %s", mk);
    api_body(body, sizeof(body), text, 1);
    const char *headers[] = {API_JSON, key, NULL};
    stack_url(&S, "/generate", url, sizeof(url));
    struct http_spec spec = {"POST", url, headers, body, strlen(body)};
    struct http_spec specs[2] = {spec, spec};
    struct http_response outs[2];
    assert_int_equal(http_many(2, specs, API_TIMEOUT_MS, outs), 0);
    api_assert_flywheel(&outs[0], text, 1);
    api_assert_flywheel(&outs[1], text, 1);
    assert_string_equal(outs[0].body, outs[1].body);
    assert_int_equal(api_jobs_counter(&S, "enqueued"), before + 2);
    http_response_fini(&outs[0]);
    http_response_fini(&outs[1]);
}

/* ---- clients, restarts, shutdown -------------------------------------- */

API_TEST(test_a_kept_alive_connection_serves_again_after_a_parked_request)
{
    char mk[32], text[64], body[256], req[1024];
    snprintf(text, sizeof(text), "SLOW:200 %s", api_marker(mk, sizeof(mk)));
    api_body(body, sizeof(body), text, 1);
    /* two requests written at once on one connection: the first parks */
    snprintf(req, sizeof(req),
             "POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s"
             "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
             strlen(body), body);
    char *resp = NULL;
    size_t len = 0;
    assert_int_equal(http_raw(S.api_port, req, strlen(req), 5000, &resp, &len), 0);
    const char *first = strstr(resp, "HTTP/1.1 200");
    assert_ptr_equal(first, resp);
    char want[96];
    snprintf(want, sizeof(want), "\"text\":\"echo: %s\"", text);
    const char *echo = strstr(resp, want);
    assert_non_null(echo);
    const char *second_resp = strstr(echo, "HTTP/1.1 200");
    assert_non_null(second_resp);
    assert_non_null(strstr(second_resp, "\"status\":\"ok\""));
    free(resp);
}

API_TEST(test_client_disconnect_cancels_its_generate_job)
{
    char mk[32], body[256], req[512], id[80];
    char text[64];
    snprintf(text, sizeof(text), "HANG %s", api_marker(mk, sizeof(mk)));
    api_body(body, sizeof(body), text, 1);
    snprintf(req, sizeof(req),
             "POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    long before = api_jobs_counter(&S, "cancelled");
    char *resp = NULL;
    size_t len = 0;
    /* wait 500 ms for an answer that cannot come, then hang up */
    assert_int_equal(http_raw(S.api_port, req, strlen(req), 500, &resp, &len), HTTP_ETIMEOUT);
    assert_int_equal(len, 0);
    free(resp);
    int64_t t0 = clock_now_ms();
    api_find_job(&S, "{mr}", mk, id, sizeof(id), 1000);
    json_decref(api_job_until(&S, id, "cancelled", 1000));
    assert_true(clock_now_ms() - t0 < 1000);
    api_wait_dropped(&S, "{mr}", id, 2000);
    assert_int_equal(api_jobs_counter(&S, "cancelled"), before + 1);
}

API_TEST(test_async_job_survives_an_api_restart)
{
    char mk[32], text[64], id[80];
    snprintf(text, sizeof(text), "SLOW:1200 %s", api_marker(mk, sizeof(mk)));
    api_submit(&S, text, NULL, id, sizeof(id));
    int port = S.api_port;
    assert_int_equal(stack_stop_api(&S, SIGKILL), -1); /* killed, not exited */
    assert_int_equal(stack_start_api(&S, NULL), 0);
    assert_int_equal(S.api_port, port);
    int64_t ms;
    json_t *o = api_job(&S, id, 5, &ms);
    assert_string_equal(api_str(o, "status"), "done");
    assert_string_equal(api_str(json_object_get(o, "response"), "prompt"), text);
    assert_true(ms < 1700); /* the new process was notified: no 2 s re-read */
    json_decref(o);
}

API_TEST(test_long_poll_on_a_second_instance_sees_a_job_of_the_first)
{
    second.redis = S.redis; /* same Redis; its own port and log */
    second.api_starts = 100;
    assert_int_equal(stack_start_api(&second, NULL), 0);
    char mk[32], text[64], id[80];
    snprintf(text, sizeof(text), "SLOW:800 %s", api_marker(mk, sizeof(mk)));
    api_submit(&S, text, NULL, id, sizeof(id));
    int64_t ms;
    json_t *o = api_job(&second, id, 5, &ms);
    assert_string_equal(api_str(o, "status"), "done");
    assert_string_equal(api_str(json_object_get(o, "response"), "prompt"), text);
    assert_in_range(ms, 300, 1700); /* woken by its inbox, not by a re-read 2 s on */
    json_decref(o);
}

API_TEST(test_long_poll_disconnect_does_not_cancel_the_job)
{
    char mk[32], text[64], id[80], req[256], path[128];
    snprintf(text, sizeof(text), "HANG %s", api_marker(mk, sizeof(mk)));
    api_submit(&S, text, NULL, id, sizeof(id));
    json_decref(api_job_until(&S, id, "running", 3000));
    snprintf(req, sizeof(req), "GET /jobs/%s?wait=5 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id);
    char *resp = NULL;
    size_t len = 0;
    assert_int_equal(http_raw(S.api_port, req, strlen(req), 300, &resp, &len), HTTP_ETIMEOUT);
    free(resp);
    clock_sleep_ms(400); /* the API has seen the hang-up by now */
    json_t *o = api_job(&S, id, 0, NULL);
    assert_string_equal(api_str(o, "status"), "running"); /* only a /generate owns its job */
    json_decref(o);
    o = api_stats(&S);
    assert_int_equal(api_int(o, "parked_here"), 0);
    json_decref(o);
    struct http_response r;
    snprintf(path, sizeof(path), "/jobs/%s", id);
    api_call(&S, "DELETE", path, &r);
    assert_int_equal(r.status, 200);
    http_response_fini(&r);
}

API_TEST(test_sigterm_lets_a_request_in_flight_finish_then_exits_0)
{
    /* static: they outlive this frame if an assertion fails */
    static struct api_bg slow, hang;
    char mk_slow[32], mk_hang[32], slow_text[64], hang_text[64], body[256], id[80], retry[16],
        path[128];
    snprintf(slow_text, sizeof(slow_text), "SLOW:800 %s", api_marker(mk_slow, sizeof(mk_slow)));
    snprintf(hang_text, sizeof(hang_text), "HANG %s", api_marker(mk_hang, sizeof(mk_hang)));
    api_bg_start(&slow, &S, "POST", "/generate", api_body(body, sizeof(body), slow_text, 1), NULL,
                 API_TIMEOUT_MS);
    api_bg_start(&hang, &S, "POST", "/generate", api_body(body, sizeof(body), hang_text, 1), NULL,
                 API_TIMEOUT_MS);
    api_find_job(&S, "{mr}", mk_hang, id, sizeof(id), 2000);
    clock_sleep_ms(300); /* both parked, their jobs running */
    int64_t t0 = clock_now_ms();
    assert_int_equal(proc_signal(&S.api, SIGTERM), 0);
    clock_sleep_ms(200);
    /* still serving what it has, but new connections are refused at once */
    assert_int_equal(proc_alive(&S.api), 1);
    struct http_response r;
    api_call(&S, "GET", "/health", &r);
    assert_int_equal(r.status, 0);
    http_response_fini(&r);
    int status = -1;
    assert_int_equal(proc_wait(&S.api, 10000, &status), 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_in_range(clock_now_ms() - t0, 1500, 5000); /* it gave the HANG job its 2 s grace */
    api_bg_join(&slow);
    api_assert_flywheel(&slow.resp, slow_text, 1);
    assert_true(slow.end_ms - slow.start_ms >= 750);
    http_response_fini(&slow.resp);
    /* past the grace period: 503, and the job goes on */
    api_bg_join(&hang);
    json_t *o = api_assert_error(&hang.resp, 503, "shutting_down", NULL);
    assert_string_equal(api_str(o, "id"), id);
    assert_string_equal(api_header(&hang.resp, "Retry-After", retry, sizeof(retry)), "1");
    json_decref(o);
    http_response_fini(&hang.resp);

    assert_int_equal(proc_wait_port(S.api_port, 100), -1); /* nobody listens any more */

    assert_int_equal(stack_start_api(&S, NULL), 0);
    o = api_job(&S, id, 0, NULL);
    assert_string_equal(api_str(o, "status"), "running");
    json_decref(o);
    snprintf(path, sizeof(path), "/jobs/%s", id);
    api_call(&S, "DELETE", path, &r);
    assert_int_equal(r.status, 200);
    http_response_fini(&r);
}

/* ---- main --------------------------------------------------------------- */

/* A second API instance a test left running goes first. */
static int teardown(void **state)
{
    if (second.api.pid > 0)
        proc_stop(&second.api, SIGKILL, 5000);
    return api_suite_teardown(state);
}

static int group_setup(void **state)
{
    return api_suite_group_setup(state, &suite);
}

#define T(f) cmocka_unit_test_setup_teardown(f, api_suite_setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_generate_answers_the_flywheel_response),
        T(test_generate_num_samples_3_gives_3_responses),
        T(test_jobs_submit_then_poll_until_done),
        T(test_jobs_long_poll_returns_when_the_job_finishes),
        T(test_jobs_long_poll_on_a_hanging_job_answers_running_after_the_wait),
        T(test_delete_of_a_queued_job_cancels_it),
        T(test_delete_of_a_running_job_cancels_it_and_the_worker_drops_it),
        T(test_delete_of_a_done_job_is_409),
        T(test_unknown_job_is_404_for_get_wait_and_delete),
        T(test_health_is_503_without_workers_and_200_once_one_beats),
        T(test_stats_counts_the_backlog_without_workers_and_the_runners_after),
        T(test_metrics_count_requests_and_waiting_jobs),
        T(test_idempotency_key_on_jobs_gives_one_job),
        T(test_idempotency_key_on_generate_gives_one_job),
        T(test_a_kept_alive_connection_serves_again_after_a_parked_request),
        T(test_client_disconnect_cancels_its_generate_job),
        T(test_async_job_survives_an_api_restart),
        T(test_long_poll_on_a_second_instance_sees_a_job_of_the_first),
        T(test_long_poll_disconnect_does_not_cancel_the_job),
        T(test_sigterm_lets_a_request_in_flight_finish_then_exits_0),
    };
    return cmocka_run_group_tests_name("api", tests, group_setup, api_suite_group_teardown);
}
