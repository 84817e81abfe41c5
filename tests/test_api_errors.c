/*
 * Integration tests of every error status millrace-api answers, each with
 * its body {"error": {"type", "message", "field"}} checked field by field:
 * 415, 400, 413 (Content-Length and chunked), 404, 405, 401, 429, 504, 409,
 * 500 and 503 (Redis down, then back). The real build/millrace-api runs
 * against a private redis-server and build/tests/fake_worker; routes that
 * succeed are in test_api.c. Run from the repository root.
 *
 * Key decision: one Redis and one worker serve the file; a test that needs
 * other API flags (limits, keys, timeouts) restarts only the API, which takes
 * milliseconds, and the teardown puts the plain one back.
 */
#include <signal.h>

#include "tests/support/api_client.h"
#include "tests/support/api_suite.h"

static struct stack S;
static struct api_suite suite = {.s = &S, .name = "test_api_errors"};

/* A key prefix no other test uses: a world with no jobs and no workers. */
static const char *fresh_prefix(char *out, size_t cap)
{
    static int n;
    snprintf(out, cap, "{e%d}", ++n);
    return out;
}

/* Parse a raw HTTP/1.1 response (Content-Length framed) into out, as
 * http_request would have filled it. */
static void raw_response(const char *raw, struct http_response *out)
{
    memset(out, 0, sizeof(*out));
    if (sscanf(raw, "HTTP/1.1 %ld", &out->status) != 1)
        fail_msg("not an HTTP response: %.200s", raw);
    const char *end = strstr(raw, "\r\n\r\n");
    assert_non_null(end);
    out->headers = strndup(raw, (size_t)(end - raw) + 2);
    out->body = strdup(end + 4);
    assert_non_null(out->headers);
    assert_non_null(out->body);
    out->len = strlen(out->body);
}

/* ---- 415, 400, 413 -------------------------------------------------------- */

API_TEST(test_415_without_or_with_another_content_type)
{
    char body[256], mk[32];
    api_body(body, sizeof(body), api_marker(mk, sizeof(mk)), 1);
    const char *none[] = {"Content-Type:", "Expect:", NULL};
    const char *text[] = {"Content-Type: text/plain", NULL};
    const char *charset[] = {"Content-Type: application/json; charset=utf-8", NULL};
    struct http_response r;

    api_request(&S, "POST", "/generate", none, body, API_TIMEOUT_MS, &r);
    json_t *o = api_assert_error(&r, 415, "unsupported_media_type", NULL);
    assert_non_null(strstr(api_str(json_object_get(o, "error"), "message"), "none"));
    json_decref(o);
    http_response_fini(&r);

    api_request(&S, "POST", "/jobs", text, body, API_TIMEOUT_MS, &r);
    o = api_assert_error(&r, 415, "unsupported_media_type", NULL);
    assert_non_null(strstr(api_str(json_object_get(o, "error"), "message"), "text/plain"));
    json_decref(o);
    http_response_fini(&r);

    api_request(&S, "POST", "/generate", charset, body, API_TIMEOUT_MS, &r);
    api_assert_flywheel(&r, mk, 1); /* parameters after the type are fine */
    http_response_fini(&r);
}

API_TEST(test_400_names_the_bad_field)
{
    static const struct {
        const char *path, *body, *field; /* field NULL: the body as a whole */
    } cases[] = {
        {"/generate", "{\"text\":\"x\",\"max_tokens\":8,\"top_p\":3}", "top_p"},
        {"/generate", "{\"text\":\"x\"}", "max_tokens"},
        {"/generate", "{\"max_tokens\":8}", "text"},
        {"/jobs", "{\"text\":\"x\",\"max_tokens\":8,\"num_samples\":0}", "num_samples"},
        {"/jobs", "{\"text\":\"x\",\"max_tokens\":8,\"temperature\":\"hot\"}", "temperature"},
        {"/generate", "{\"text\":\"x\",\"max_tokens\":8,\"stop\":[1]}", "stop"},
        {"/generate", "{\"text\":\"x\",", NULL},
        {"/jobs", "[1,2]", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct http_response r;
        api_post(&S, cases[i].path, cases[i].body, NULL, &r);
        json_decref(api_assert_error(&r, 400, "invalid_request", cases[i].field));
        http_response_fini(&r);
    }

    struct http_response r;
    api_post(&S, "/jobs", "{\"text\":\"x\",\"max_tokens\":8}", "Idempotency-Key: has space", &r);
    json_decref(api_assert_error(&r, 400, "invalid_request", "Idempotency-Key"));
    http_response_fini(&r);

    api_call(&S, "GET", "/jobs/0123456789abcdef0123456789abcdef?wait=soon", &r);
    json_decref(api_assert_error(&r, 400, "invalid_request", "wait"));
    http_response_fini(&r);
    api_call(&S, "GET", "/jobs/0123456789abcdef0123456789abcdef?wait=61", &r);
    json_decref(api_assert_error(&r, 400, "invalid_request", "wait"));
    http_response_fini(&r);
}

/* {"text": "aaa...", "max_tokens": 8}, exactly `len` bytes. */
static char *body_of_size(size_t len)
{
    const char *head = "{\"text\":\"", *tail = "\",\"max_tokens\":8}";
    size_t fixed = strlen(head) + strlen(tail);
    assert_true(len > fixed);
    char *b = malloc(len + 1);
    assert_non_null(b);
    memset(b, 'a', len);
    memcpy(b, head, strlen(head));
    memcpy(b + len - strlen(tail), tail, strlen(tail));
    b[len] = '\0';
    return b;
}

API_TEST(test_413_when_the_content_length_is_over_max_body_bytes)
{
    const char *args[] = {"--max-body-bytes", "1000", NULL};
    api_suite_use_api(&suite, args);
    char *big = body_of_size(2000), *fits = body_of_size(1000);
    struct http_response r;
    api_post(&S, "/generate", big, NULL, &r);
    json_t *o = api_assert_error(&r, 413, "payload_too_large", NULL);
    assert_non_null(strstr(api_str(json_object_get(o, "error"), "message"), "1000 bytes"));
    json_decref(o);
    http_response_fini(&r);
    api_post(&S, "/generate", fits, NULL, &r);
    assert_int_equal(r.status, 200);
    http_response_fini(&r);
    free(big);
    free(fits);
}

/* POST /generate with `body` sent in chunks of 500 bytes (chunked transfer
 * encoding, no Content-Length); the response into out. */
static void post_chunked(const char *body, struct http_response *out)
{
    size_t len = strlen(body), cap = len + 1024, n = 0;
    char *req = malloc(cap);
    assert_non_null(req);
    n += (size_t)snprintf(req, cap,
                          "POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                          "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (size_t off = 0; off < len; off += 500) {
        size_t k = len - off < 500 ? len - off : 500;
        n += (size_t)snprintf(req + n, cap - n, "%zx\r\n%.*s\r\n", k, (int)k, body + off);
    }
    n += (size_t)snprintf(req + n, cap - n, "0\r\n\r\n");
    char *resp = NULL;
    size_t resp_len = 0;
    assert_int_equal(http_raw(S.api_port, req, n, 5000, &resp, &resp_len), 0);
    raw_response(resp, out);
    free(resp);
    free(req);
}

API_TEST(test_413_when_a_chunked_body_grows_over_max_body_bytes)
{
    const char *args[] = {"--max-body-bytes", "1000", NULL};
    api_suite_use_api(&suite, args);
    char *big = body_of_size(2000), *fits = body_of_size(1000);
    struct http_response r;
    post_chunked(big, &r);
    json_decref(api_assert_error(&r, 413, "payload_too_large", NULL));
    http_response_fini(&r);
    post_chunked(fits, &r);
    assert_int_equal(r.status, 200); /* a chunked body within the limit is served */
    http_response_fini(&r);
    free(big);
    free(fits);
}

/* ---- 404, 405 ---------------------------------------------------------- */

API_TEST(test_404_for_an_unknown_path)
{
    const char *paths[] = {"/nope", "/v1/generate", "/jobs/not!an!id", "/jobs/", "/generate/x"};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        struct http_response r;
        api_call(&S, "GET", paths[i], &r);
        json_t *o = api_assert_error(&r, 404, "not_found", NULL);
        assert_null(json_object_get(o, "id"));
        json_decref(o);
        http_response_fini(&r);
    }
}

API_TEST(test_405_for_a_wrong_method_names_the_allowed_ones)
{
    static const struct {
        const char *method, *path, *allow;
    } cases[] = {
        {"GET", "/generate", "POST"},
        {"PUT", "/jobs", "POST"},
        {"POST", "/health", "GET, HEAD"},
        {"DELETE", "/stats", "GET, HEAD"},
        {"POST", "/jobs/0123456789abcdef0123456789abcdef", "GET, HEAD, DELETE"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct http_response r;
        char allow[64];
        api_call(&S, cases[i].method, cases[i].path, &r);
        json_decref(api_assert_error(&r, 405, "method_not_allowed", NULL));
        assert_string_equal(api_header(&r, "Allow", allow, sizeof(allow)), cases[i].allow);
        http_response_fini(&r);
    }
}

/* ---- 401 --------------------------------------------------------------------- */

/* GET or POST path with one header (or NULL); returns the status. */
static long status_of(const char *method, const char *path, const char *header)
{
    char body[256], mk[32];
    const char *headers[] = {API_JSON, header, NULL};
    struct http_response r;
    api_request(&S, method, path, headers,
                strcmp(method, "POST") == 0 ? api_body(body, sizeof(body), api_marker(mk, 32), 1)
                                            : NULL,
                API_TIMEOUT_MS, &r);
    long st = r.status;
    if (st == 401) {
        char www[64];
        json_decref(api_assert_error(&r, 401, "unauthorized", NULL));
        assert_string_equal(api_header(&r, "WWW-Authenticate", www, sizeof(www)), "Bearer");
    }
    http_response_fini(&r);
    return st;
}

API_TEST(test_401_without_or_with_a_wrong_api_key)
{
    const char *args[] = {"--api-keys", "k1,k2", NULL};
    api_suite_use_api(&suite, args);
    const char *job = "/jobs/0123456789abcdef0123456789abcdef";
    assert_int_equal(status_of("POST", "/generate", NULL), 401);
    assert_int_equal(status_of("POST", "/generate", "Authorization: Bearer k3"), 401);
    assert_int_equal(status_of("POST", "/generate", "Authorization: k1"), 401);
    assert_int_equal(status_of("POST", "/jobs", NULL), 401);
    assert_int_equal(status_of("GET", job, NULL), 401);
    assert_int_equal(status_of("DELETE", job, "Authorization: Bearer k"), 401);
    assert_int_equal(status_of("GET", "/stats", NULL), 401);

    assert_int_equal(status_of("POST", "/generate", "Authorization: Bearer k2"), 200);
    assert_int_equal(status_of("POST", "/jobs", "Authorization: Bearer k1"), 202);
    assert_int_equal(status_of("GET", job, "Authorization: Bearer k1"), 404);
    assert_int_equal(status_of("GET", "/stats", "Authorization: Bearer k2"), 200);
    assert_int_equal(status_of("GET", "/health", NULL), 200);
    assert_int_equal(status_of("GET", "/metrics", NULL), 200);
}

API_TEST(test_401_with_keys_from_a_file)
{
    char path[320];
    snprintf(path, sizeof(path), "%s/keys.txt", S.redis.dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("# the team's keys\nfilekey1\n\n  filekey2  \n", f);
    fclose(f);
    const char *args[] = {"--api-keys-file", path, NULL};
    api_suite_use_api(&suite, args);
    assert_int_equal(status_of("GET", "/stats", NULL), 401);
    assert_int_equal(status_of("GET", "/stats", "Authorization: Bearer k1"), 401);
    assert_int_equal(status_of("GET", "/stats", "Authorization: Bearer #"), 401);
    assert_int_equal(status_of("GET", "/stats", "Authorization: Bearer filekey1"), 200);
    assert_int_equal(status_of("POST", "/generate", "Authorization: Bearer filekey2"), 200);
}

/* ---- 429, 504, 409, 500 ---------------------------------------------------- */

API_TEST(test_429_with_retry_after_when_the_backlog_is_full)
{
    char prefix[16], mk[32], id[80], body[256], retry[16];
    const char *args[] = {"--redis-prefix",
                          fresh_prefix(prefix, sizeof(prefix)),
                          "--max-backlog",
                          "2",
                          "--retry-after-s",
                          "3",
                          NULL};
    api_suite_use_api(&suite, args); /* no worker serves this prefix */
    api_submit(&S, api_marker(mk, sizeof(mk)), NULL, id, sizeof(id));
    api_submit(&S, api_marker(mk, sizeof(mk)), NULL, id, sizeof(id));

    const char *paths[] = {"/jobs", "/generate"};
    for (int i = 0; i < 2; i++) {
        struct http_response r;
        api_post(&S, paths[i], api_body(body, sizeof(body), api_marker(mk, sizeof(mk)), 1), NULL,
                 &r);
        json_t *o = api_assert_error(&r, 429, "queue_full", NULL);
        assert_string_equal(api_header(&r, "Retry-After", retry, sizeof(retry)), "3");
        assert_true(r.total_s < 1.0);
        json_decref(o);
        http_response_fini(&r);
    }
    json_t *o = api_stats(&S);
    assert_int_equal(api_int(o, "backlog"), 2);
    assert_int_equal(api_int(json_object_get(o, "jobs"), "enqueued"), 2);
    json_decref(o);
}

API_TEST(test_504_after_the_request_timeout_and_the_job_stays_pollable)
{
    const char *args[] = {"--request-timeout-s", "1", NULL};
    api_suite_use_api(&suite, args);
    char mk[32], text[64], body[256], loc[128], want[128], path[128];
    snprintf(text, sizeof(text), "HANG %s", api_marker(mk, sizeof(mk)));
    struct http_response r;
    api_post(&S, "/generate", api_body(body, sizeof(body), text, 1), NULL, &r);
    json_t *o = api_assert_error(&r, 504, "timeout", NULL);
    assert_true(r.total_s >= 0.95 && r.total_s < 2.5);
    char id[80];
    snprintf(id, sizeof(id), "%s", api_str(o, "id"));
    snprintf(want, sizeof(want), "/jobs/%s", id);
    assert_string_equal(api_header(&r, "Location", loc, sizeof(loc)), want);
    json_decref(o);
    http_response_fini(&r);

    o = api_job(&S, id, 0, NULL);
    assert_string_equal(api_str(o, "status"), "running"); /* it goes on */
    json_decref(o);
    snprintf(path, sizeof(path), "/jobs/%s", id);
    api_call(&S, "DELETE", path, &r);
    assert_int_equal(r.status, 200);
    http_response_fini(&r);
}

API_TEST(test_409_when_a_generate_job_is_cancelled_by_another_client)
{
    static struct api_bg bg; /* static: outlives this frame if an assertion fails */
    char mk[32], text[64], body[256], id[80], path[128];
    snprintf(text, sizeof(text), "HANG %s", api_marker(mk, sizeof(mk)));
    api_bg_start(&bg, &S, "POST", "/generate", api_body(body, sizeof(body), text, 1), NULL,
                 API_TIMEOUT_MS);
    api_find_job(&S, "{mr}", mk, id, sizeof(id), 2000);
    json_decref(api_job_until(&S, id, "running", 3000));
    snprintf(path, sizeof(path), "/jobs/%s", id);
    struct http_response r;
    api_call(&S, "DELETE", path, &r);
    assert_int_equal(r.status, 200);
    http_response_fini(&r);
    int64_t deleted = clock_now_ms();
    api_bg_join(&bg);
    json_t *o = api_assert_error(&bg.resp, 409, "cancelled", NULL);
    assert_string_equal(api_str(o, "id"), id);
    assert_true(bg.end_ms - deleted < 1000);
    json_decref(o);
    http_response_fini(&bg.resp);
}

API_TEST(test_500_job_failed_for_a_failing_prompt)
{
    char mk[32], text[64], body[256];
    snprintf(text, sizeof(text), "FAIL %s", api_marker(mk, sizeof(mk)));
    struct http_response r;
    api_post(&S, "/generate", api_body(body, sizeof(body), text, 1), NULL, &r);
    json_t *o = api_assert_error(&r, 500, "job_failed", NULL);
    assert_string_equal(api_str(json_object_get(o, "error"), "message"),
                        "fake worker: asked to fail");
    char id[80];
    snprintf(id, sizeof(id), "%s", api_str(o, "id"));
    json_decref(o);
    http_response_fini(&r);

    o = api_job(&S, id, 0, NULL);
    assert_string_equal(api_str(o, "status"), "failed");
    assert_string_equal(api_str(json_object_get(o, "error"), "type"), "job_failed");
    json_decref(o);
}

/* ---- 503 ---------------------------------------------------------------------- */

API_TEST(test_503_while_redis_is_down_then_serves_again)
{
    /* static: it outlives this frame if an assertion fails */
    static struct api_bg parked;
    char mk[32], body[256], retry[16], text[64], id[80];
    /* a request waits for its running job when Redis goes */
    snprintf(text, sizeof(text), "SLOW:300 %s", api_marker(mk, sizeof(mk)));
    api_bg_start(&parked, &S, "POST", "/generate", api_body(body, sizeof(body), text, 1), NULL,
                 API_TIMEOUT_MS * 2);
    api_find_job(&S, "{mr}", mk, id, sizeof(id), 2000);
    json_decref(api_job_until(&S, id, "running", 3000));
    test_redis_stop(&S.redis, SIGKILL);
    int64_t down = clock_now_ms();

    const char *paths[] = {"/generate", "/jobs"};
    for (int i = 0; i < 2; i++) {
        struct http_response r;
        api_post(&S, paths[i], api_body(body, sizeof(body), api_marker(mk, sizeof(mk)), 1), NULL,
                 &r);
        json_decref(api_assert_error(&r, 503, "unavailable", NULL));
        assert_string_equal(api_header(&r, "Retry-After", retry, sizeof(retry)), "1");
        assert_true(r.total_s < 3.0);
        http_response_fini(&r);
    }
    struct http_response r;
    api_call(&S, "GET", "/jobs/0123456789abcdef0123456789abcdef", &r);
    json_decref(api_assert_error(&r, 503, "unavailable", NULL));
    assert_true(r.total_s < 3.0);
    http_response_fini(&r);

    /* /health answers from a snapshot: it must notice within 3 s */
    assert_int_equal(stack_wait_health(&S, 503, 3000), 0);
    assert_true(clock_now_ms() - down < 3000);
    api_call(&S, "GET", "/health", &r);
    assert_int_equal(r.status, 503);
    json_t *o = api_json(&r);
    assert_string_equal(api_str(o, "status"), "unavailable");
    assert_non_null(strstr(api_str(o, "reason"), "redis"));
    json_decref(o);
    http_response_fini(&r);

    assert_int_equal(test_redis_restart(&S.redis), 0);
    assert_int_equal(stack_wait_health(&S, 200, 10000), 0);
    /* its job was finished once Redis was back, and it got the answer */
    api_bg_join(&parked);
    api_assert_flywheel(&parked.resp, text, 1);
    http_response_fini(&parked.resp);
    api_post(&S, "/generate", api_body(body, sizeof(body), api_marker(mk, sizeof(mk)), 1), NULL,
             &r);
    api_assert_flywheel(&r, mk, 1);
    http_response_fini(&r);
}

/* ---- main --------------------------------------------------------------- */

static int group_setup(void **state)
{
    return api_suite_group_setup(state, &suite);
}

#define T(f) cmocka_unit_test_setup_teardown(f, api_suite_setup, api_suite_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_415_without_or_with_another_content_type),
        T(test_400_names_the_bad_field),
        T(test_413_when_the_content_length_is_over_max_body_bytes),
        T(test_413_when_a_chunked_body_grows_over_max_body_bytes),
        T(test_404_for_an_unknown_path),
        T(test_405_for_a_wrong_method_names_the_allowed_ones),
        T(test_401_without_or_with_a_wrong_api_key),
        T(test_401_with_keys_from_a_file),
        T(test_429_with_retry_after_when_the_backlog_is_full),
        T(test_504_after_the_request_timeout_and_the_job_stays_pollable),
        T(test_409_when_a_generate_job_is_cancelled_by_another_client),
        T(test_500_job_failed_for_a_failing_prompt),
        T(test_503_while_redis_is_down_then_serves_again),
    };
    return cmocka_run_group_tests_name("api_errors", tests, group_setup, api_suite_group_teardown);
}
