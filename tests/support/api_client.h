/*
 * api_client: what the HTTP API's integration tests (test_api.c,
 * test_api_errors.c) share: requests against a struct stack, JSON bodies and
 * the error shape asserted field by field, /stats counters, a request run in
 * the background, and jobs found in Redis by a marker in their prompt (a
 * synchronous /generate does not tell its id until it answers).
 *
 * Key decision: header-only (static inline), because a .c file in tests/ that is not
 * a tests/test_*.c is built as a program of its own, and tests/support/ is
 * linked into every test. Every helper asserts with cmocka, so a test reads
 * as the sequence of requests it makes.
 *
 * Not thread-safe except api_bg_*, whose thread only calls http_request.
 */
#pragma once

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "common/clock.h"
#include "tests/support/http.h"
#include "tests/support/redis_server.h"
#include "tests/support/stack.h"

#define API_TIMEOUT_MS 10000 /* any single request of these tests */
#define API_JSON       "Content-Type: application/json"

/* A prompt marker unique in this run ("mk<pid>n<k>"), free of the fake
 * worker's triggers. */
static inline const char *api_marker(char *out, size_t cap)
{
    static int n;
    snprintf(out, cap, "mk%dn%d", (int)getpid(), ++n);
    return out;
}

/* "{"text": text, "max_tokens": 8, "num_samples": n}" into out (text must
 * need no JSON escaping). */
static inline const char *api_body(char *out, size_t cap, const char *text, int num_samples)
{
    int len = snprintf(out, cap, "{\"text\":\"%s\",\"max_tokens\":8,\"num_samples\":%d}", text,
                       num_samples);
    assert_true(len > 0 && (size_t)len < cap);
    return out;
}

/* One request to s's API; out is filled whatever happens (a failed transfer
 * has status 0). headers: NULL-terminated, borrowed. */
static inline void api_request(const struct stack *s, const char *method, const char *path,
                               const char *const *headers, const char *body, long timeout_ms,
                               struct http_response *out)
{
    char url[256];
    stack_url(s, path, url, sizeof(url));
    http_request(method, url, headers, body, body ? strlen(body) : 0, timeout_ms, out);
}

/* GET or DELETE with no body and no extra header. */
static inline void api_call(const struct stack *s, const char *method, const char *path,
                            struct http_response *out)
{
    api_request(s, method, path, NULL, NULL, API_TIMEOUT_MS, out);
}

/* POST a JSON body, with one extra header line (or NULL). */
static inline void api_post(const struct stack *s, const char *path, const char *body,
                            const char *extra, struct http_response *out)
{
    const char *headers[] = {API_JSON, "Expect:", extra, NULL};
    api_request(s, "POST", path, headers, body, API_TIMEOUT_MS, out);
}

/* The body as JSON (new); fails the test when it is not an object. */
static inline json_t *api_json(const struct http_response *r)
{
    json_error_t je;
    json_t *o = r->body ? json_loads(r->body, 0, &je) : NULL;
    if (!o || !json_is_object(o))
        fail_msg("status %ld, body is not a JSON object: %.300s", r->status,
                 r->body ? r->body : "(none)");
    return o;
}

/* o's string member `key` (borrowed); fails when missing or not a string. */
static inline const char *api_str(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        fail_msg("\"%s\" is missing or not a string", key);
    return json_string_value(v);
}

/* o's integer member `key`; fails when missing or not an integer. */
static inline long api_int(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        fail_msg("\"%s\" is missing or not an integer", key);
    return (long)json_integer_value(v);
}

/* The value of response header `name` into out, asserting it is there. */
static inline const char *api_header(const struct http_response *r, const char *name, char *out,
                                     size_t cap)
{
    if (http_header(r, name, out, cap) < 0)
        fail_msg("no %s header in:\n%s", name, r->headers ? r->headers : "");
    return out;
}

/*
 * Assert that r is `status` with the error body {"error": {"type": type,
 * "message": <non-empty>, "field": field or null}} (field NULL: null) and a
 * JSON Content-Type. Returns the body (new) for further checks.
 */
static inline json_t *api_assert_error(const struct http_response *r, long status, const char *type,
                                       const char *field)
{
    if (r->status != status)
        fail_msg("expected %ld, got %ld (%s): %.300s", status, r->status, r->err,
                 r->body ? r->body : "");
    char ct[128];
    assert_string_equal(api_header(r, "Content-Type", ct, sizeof(ct)), "application/json");
    json_t *o = api_json(r);
    json_t *e = json_object_get(o, "error");
    assert_true(json_is_object(e));
    assert_string_equal(api_str(e, "type"), type);
    assert_true(strlen(api_str(e, "message")) > 0);
    json_t *f = json_object_get(e, "field");
    if (field) {
        assert_true(json_is_string(f));
        assert_string_equal(json_string_value(f), field);
    } else {
        assert_true(json_is_null(f));
    }
    return o;
}

/* Assert r is a 200 Flywheel response to prompt `text` with n samples, each
 * "echo: <text>" (sample 0) or "echo[i]: <text>". */
static inline void api_assert_flywheel(const struct http_response *r, const char *text, int n)
{
    if (r->status != 200)
        fail_msg("expected 200, got %ld (%s): %.300s", r->status, r->err, r->body ? r->body : "");
    json_t *o = api_json(r);
    double created = json_number_value(json_object_get(o, "created"));
    double finished = json_number_value(json_object_get(o, "finished"));
    assert_true(created > 1.6e9);
    assert_true(finished >= created);
    assert_int_equal(api_int(o, "num_samples"), n);
    assert_string_equal(api_str(o, "prompt"), text);
    assert_true(api_int(o, "prompt_tokens") >= 1);
    json_t *rs = json_object_get(o, "responses");
    assert_true(json_is_array(rs));
    assert_int_equal(json_array_size(rs), (size_t)n);
    for (int i = 0; i < n; i++) {
        json_t *s = json_array_get(rs, (size_t)i);
        char want[512];
        if (i == 0)
            snprintf(want, sizeof(want), "echo: %s", text);
        else
            snprintf(want, sizeof(want), "echo[%d]: %s", i, text);
        assert_string_equal(api_str(s, "text"), want);
        assert_true(api_int(s, "generated_tokens") >= 1);
        assert_true(json_number_value(json_object_get(s, "finished")) >= created);
        assert_string_equal(api_str(s, "finish_reason"), "length");
    }
    json_decref(o);
}

/* POST /jobs with body text; asserts 202 {id, status "queued"} and a
 * Location header naming the id; the id into out. */
static inline void api_submit(const struct stack *s, const char *text, const char *extra, char *out,
                              size_t cap)
{
    char body[512], loc[128], want[128];
    struct http_response r;
    api_post(s, "/jobs", api_body(body, sizeof(body), text, 1), extra, &r);
    if (r.status != 202)
        fail_msg("POST /jobs: expected 202, got %ld (%s): %.300s", r.status, r.err,
                 r.body ? r.body : "");
    json_t *o = api_json(&r);
    snprintf(out, cap, "%s", api_str(o, "id"));
    assert_true(strlen(out) >= 16);
    assert_string_equal(api_str(o, "status"), "queued");
    snprintf(want, sizeof(want), "/jobs/%s", out);
    assert_string_equal(api_header(&r, "Location", loc, sizeof(loc)), want);
    json_decref(o);
    http_response_fini(&r);
}

/* GET /jobs/{id} (with ?wait=wait_s when > 0); asserts 200 and the id;
 * returns the body (new). *elapsed_ms (may be NULL): how long it took. */
static inline json_t *api_job(const struct stack *s, const char *id, double wait_s,
                              int64_t *elapsed_ms)
{
    char path[160];
    if (wait_s > 0)
        snprintf(path, sizeof(path), "/jobs/%s?wait=%g", id, wait_s);
    else
        snprintf(path, sizeof(path), "/jobs/%s", id);
    struct http_response r;
    int64_t t0 = clock_now_ms();
    api_call(s, "GET", path, &r);
    if (elapsed_ms)
        *elapsed_ms = clock_now_ms() - t0;
    if (r.status != 200)
        fail_msg("GET %s: expected 200, got %ld (%s): %.300s", path, r.status, r.err,
                 r.body ? r.body : "");
    json_t *o = api_json(&r);
    assert_string_equal(api_str(o, "id"), id);
    http_response_fini(&r);
    return o;
}

/* Poll GET /jobs/{id} until its status is `want` (within timeout_ms);
 * returns the body (new). */
static inline json_t *api_job_until(const struct stack *s, const char *id, const char *want,
                                    long timeout_ms)
{
    int64_t deadline = clock_now_ms() + timeout_ms;
    for (;;) {
        json_t *o = api_job(s, id, 0, NULL);
        const char *st = api_str(o, "status");
        if (strcmp(st, want) == 0)
            return o;
        if (clock_now_ms() > deadline)
            fail_msg("job %s is still %s after %ld ms, want %s", id, st, timeout_ms, want);
        json_decref(o);
        clock_sleep_ms(20);
    }
}

/* GET /stats after the API's snapshot has refreshed (it re-reads Redis every
 * 50 ms); asserts 200 and returns the body (new). */
static inline json_t *api_stats(const struct stack *s)
{
    clock_sleep_ms(150);
    struct http_response r;
    api_call(s, "GET", "/stats", &r);
    if (r.status != 200)
        fail_msg("GET /stats: %ld (%s): %.300s", r.status, r.err, r.body ? r.body : "");
    json_t *o = api_json(&r);
    http_response_fini(&r);
    return o;
}

/* /stats jobs.<counter> now. */
static inline long api_jobs_counter(const struct stack *s, const char *counter)
{
    json_t *o = api_stats(s);
    long v = api_int(json_object_get(o, "jobs"), counter);
    json_decref(o);
    return v;
}

/*
 * Find the job whose prompt holds `marker` among the keys under `prefix`
 * ("{mr}") in the stack's Redis, waiting up to timeout_ms for it to appear.
 * Its id into id (cap bytes). Fails the test when none appears.
 */
static inline void api_find_job(const struct stack *s, const char *prefix, const char *marker,
                                char *id, size_t cap, long timeout_ms)
{
    char pattern[64];
    snprintf(pattern, sizeof(pattern), "%s:job:*", prefix);
    size_t plen = strlen(prefix) + 5;
    int64_t deadline = clock_now_ms() + timeout_ms;
    do {
        char cursor[32] = "0";
        do {
            redisReply *r =
                test_redis_cmd(&s->redis, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
            assert_non_null(r);
            assert_int_equal(r->type, REDIS_REPLY_ARRAY);
            snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
            redisReply *keys = r->element[1];
            for (size_t i = 0; i < keys->elements; i++) {
                const char *k = keys->element[i]->str;
                if (strchr(k + plen, ':'))
                    continue; /* P:job:<id>:w */
                redisReply *p = test_redis_cmd(&s->redis, "HGET %s payload", k);
                int hit = p && p->type == REDIS_REPLY_STRING && strstr(p->str, marker);
                if (p)
                    freeReplyObject(p);
                if (hit) {
                    snprintf(id, cap, "%s", k + plen);
                    freeReplyObject(r);
                    return;
                }
            }
            freeReplyObject(r);
        } while (strcmp(cursor, "0") != 0);
        clock_sleep_ms(20);
    } while (clock_now_ms() < deadline);
    fail_msg("no job with %s in its prompt under %s", marker, prefix);
}

/* A request made from a thread of its own, to be joined later. */
struct api_bg {
    pthread_t thread;
    char method[16], url[256], body[1024];
    const char *headers[4];
    long timeout_ms;
    struct http_response resp;
    int64_t start_ms, end_ms;
};

static inline void *api_bg_main(void *arg)
{
    struct api_bg *b = arg;
    http_request(b->method, b->url, b->headers, b->body[0] ? b->body : NULL, strlen(b->body),
                 b->timeout_ms, &b->resp);
    b->end_ms = clock_now_ms();
    return NULL;
}

/* Start `method path` (body: JSON, or NULL) with one extra header (or NULL)
 * on its own thread. http_global_init() must have run (stack_start_redis
 * does it). */
static inline void api_bg_start(struct api_bg *b, const struct stack *s, const char *method,
                                const char *path, const char *body, const char *extra,
                                long timeout_ms)
{
    memset(b, 0, sizeof(*b));
    snprintf(b->method, sizeof(b->method), "%s", method);
    stack_url(s, path, b->url, sizeof(b->url));
    snprintf(b->body, sizeof(b->body), "%s", body ? body : "");
    b->headers[0] = API_JSON;
    b->headers[1] = "Expect:";
    b->headers[2] = extra;
    b->timeout_ms = timeout_ms;
    b->start_ms = clock_now_ms();
    assert_int_equal(pthread_create(&b->thread, NULL, api_bg_main, b), 0);
}

/* Wait for the request; its response is in b->resp (free it). */
static inline void api_bg_join(struct api_bg *b)
{
    pthread_join(b->thread, NULL);
}

/* Wait up to timeout_ms until job `id` (under `prefix`) is off its worker's
 * processing list: the worker has dropped (or finished) it. Fails the test
 * otherwise. */
static inline void api_wait_dropped(const struct stack *s, const char *prefix, const char *id,
                                    long timeout_ms)
{
    redisReply *w = test_redis_cmd(&s->redis, "HGET %s:job:%s worker", prefix, id);
    assert_non_null(w);
    if (w->type != REDIS_REPLY_STRING)
        fail_msg("job %s was never claimed by a worker", id);
    char list[160];
    snprintf(list, sizeof(list), "%s:processing:%s", prefix, w->str);
    freeReplyObject(w);
    int64_t deadline = clock_now_ms() + timeout_ms;
    for (;;) {
        redisReply *p = test_redis_cmd(&s->redis, "LPOS %s %s", list, id);
        assert_non_null(p);
        int held = p->type == REDIS_REPLY_INTEGER;
        freeReplyObject(p);
        if (!held)
            return;
        if (clock_now_ms() > deadline)
            fail_msg("job %s is still on %s after %ld ms", id, list, timeout_ms);
        clock_sleep_ms(20);
    }
}

/* ---- Server-Sent Events --------------------------------------------------- */

/* One event of a text/event-stream body. */
struct api_sse_event {
    char id[64];    /* its id: field, "" when it had none */
    char event[32]; /* its event: field */
    char *data;     /* new: its data: lines joined with "\n" */
};

/* The complete events of a body (an event cut off at the end is left out). */
struct api_sse {
    struct api_sse_event *ev;
    size_t n;
    int comments; /* lines starting with ':' (pings) */
};

/* Parse the complete events of body[0, len) into out (free with
 * api_sse_fini). Lines end with "\n" (millrace sends no "\r"). */
static inline void api_sse_parse(const char *body, size_t len, struct api_sse *out)
{
    memset(out, 0, sizeof(*out));
    struct api_sse_event cur;
    memset(&cur, 0, sizeof(cur));
    int has_fields = 0;
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break; /* an incomplete line: the rest is not an event yet */
        size_t n = (size_t)(nl - p);
        if (n == 0) { /* a blank line ends the event */
            if (has_fields) {
                out->ev = realloc(out->ev, (out->n + 1) * sizeof(*out->ev));
                assert_non_null(out->ev);
                if (!cur.data)
                    cur.data = strdup("");
                out->ev[out->n++] = cur;
            }
            memset(&cur, 0, sizeof(cur));
            has_fields = 0;
        } else if (p[0] == ':') {
            out->comments++;
        } else {
            const char *colon = memchr(p, ':', n);
            size_t fl = colon ? (size_t)(colon - p) : n;
            const char *v = colon ? colon + 1 : nl;
            if (v < nl && *v == ' ')
                v++;
            size_t vl = (size_t)(nl - v);
            has_fields = 1;
            if (fl == 2 && memcmp(p, "id", 2) == 0) {
                snprintf(cur.id, sizeof(cur.id), "%.*s", (int)vl, v);
            } else if (fl == 5 && memcmp(p, "event", 5) == 0) {
                snprintf(cur.event, sizeof(cur.event), "%.*s", (int)vl, v);
            } else if (fl == 4 && memcmp(p, "data", 4) == 0) {
                size_t old = cur.data ? strlen(cur.data) : 0;
                cur.data = realloc(cur.data, old + vl + 2);
                assert_non_null(cur.data);
                if (old)
                    cur.data[old++] = '\n';
                memcpy(cur.data + old, v, vl);
                cur.data[old + vl] = '\0';
            }
        }
        p = nl + 1;
    }
    free(cur.data);
}

static inline void api_sse_fini(struct api_sse *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->ev[i].data);
    free(s->ev);
    memset(s, 0, sizeof(*s));
}

/* How many complete events named `event` body[0, len) holds. */
static inline size_t api_sse_count(const char *body, size_t len, const char *event)
{
    struct api_sse s;
    api_sse_parse(body, len, &s);
    size_t n = 0;
    for (size_t i = 0; i < s.n; i++)
        n += strcmp(s.ev[i].event, event) == 0;
    api_sse_fini(&s);
    return n;
}

/* An http_stop_fn: stop once *(size_t *)arg delta events are complete. */
static inline int api_sse_stop_after_deltas(const char *body, size_t len, void *arg)
{
    return api_sse_count(body, len, "delta") >= *(const size_t *)arg;
}

/*
 * Open an event stream and read it until it ends or stop says so (stop may
 * be NULL): POST /generate with `body` when job_id is NULL, else GET
 * /jobs/{job_id}/stream, with "Last-Event-ID: <last_event_id>" when that is
 * not NULL. out is filled whatever happens.
 */
static inline void api_stream(const struct stack *s, const char *body, const char *job_id,
                              const char *last_event_id, http_stop_fn stop, void *arg,
                              long timeout_ms, struct http_response *out)
{
    char url[256], path[160], lei[128];
    const char *headers[] = {API_JSON, "Expect:", "Accept: text/event-stream", NULL, NULL};
    if (last_event_id) {
        snprintf(lei, sizeof(lei), "Last-Event-ID: %s", last_event_id);
        headers[3] = lei;
    }
    if (job_id)
        snprintf(path, sizeof(path), "/jobs/%s/stream", job_id);
    stack_url(s, job_id ? path : "/generate", url, sizeof(url));
    http_request_until(job_id ? "GET" : "POST", url, headers, job_id ? NULL : body,
                       job_id ? 0 : strlen(body), timeout_ms, stop, arg, out);
}

/* Assert r is a 200 text/event-stream answer; returns its complete events. */
static inline void api_assert_stream(const struct http_response *r, struct api_sse *out)
{
    char ct[128];
    if (r->status != 200)
        fail_msg("expected a 200 stream, got %ld (%s): %.300s", r->status, r->err,
                 r->body ? r->body : "");
    assert_string_equal(api_header(r, "Content-Type", ct, sizeof(ct)), "text/event-stream");
    api_sse_parse(r->body, r->len, out);
}

/* The data of event ev as a JSON object (new). */
static inline json_t *api_sse_json(const struct api_sse_event *ev)
{
    json_error_t je;
    json_t *o = json_loads(ev->data, 0, &je);
    if (!json_is_object(o))
        fail_msg("event %s data is not a JSON object: %.300s", ev->event, ev->data);
    return o;
}

/* Append the text of every delta event of sample `sample` in s to out (cap
 * bytes, NUL-terminated). Returns how many deltas it took. */
static inline int api_sse_concat(const struct api_sse *s, int sample, char *out, size_t cap)
{
    int n = 0;
    size_t len = strlen(out);
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->ev[i].event, "delta") != 0)
            continue;
        json_t *o = api_sse_json(&s->ev[i]);
        if (api_int(o, "sample") == sample) {
            const char *t = api_str(o, "text");
            size_t tl = strlen(t);
            assert_true(len + tl < cap);
            memcpy(out + len, t, tl + 1);
            len += tl;
            n++;
        }
        json_decref(o);
    }
    return n;
}
