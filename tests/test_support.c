/*
 * Tests of the test support itself: tests/support/proc.c (starting and
 * stopping programs), tests/support/http.c (the libcurl client and the raw
 * socket helpers, against a tiny HTTP server this file runs in a thread),
 * and tests/fake_worker.c (the engine's test double) against a private
 * redis-server. Run from the repository root: the fake worker is
 * build/tests/fake_worker.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/clock.h"
#include "common/ids.h"
#include "common/job.h"
#include "common/job_response.h"
#include "common/log.h"
#include "common/queue.h"
#include "tests/support/http.h"
#include "tests/support/proc.h"
#include "tests/support/redis_server.h"

#define FAKE_WORKER "build/tests/fake_worker"
#define API_ID      "api-test-support"

static struct test_redis srv;
static char tmpdir[128];

/* A whole file as a new string ("" when missing). */
static char *slurp(const char *path)
{
    FILE *fp = fopen(path, "rb");
    char *s = NULL;
    size_t len = 0;
    if (fp) {
        fseek(fp, 0, SEEK_END);
        long n = ftell(fp);
        fseek(fp, 0, SEEK_SET);
        s = malloc(n > 0 ? (size_t)n + 1 : 1);
        if (s)
            len = fread(s, 1, n > 0 ? (size_t)n : 0, fp);
        fclose(fp);
    } else {
        s = malloc(1);
    }
    assert_non_null(s);
    s[len] = '\0';
    return s;
}

static void tmp_path(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", tmpdir, name);
}

/* ---- a tiny HTTP server ------------------------------------------------------ */

/*
 * One thread, one poll loop. A request is complete at its blank line plus
 * Content-Length bytes; the answer echoes the request bytes as its body and
 * closes. With gate > 1 it answers only once that many complete requests are
 * waiting (which proves they were sent concurrently); with max_request it
 * answers 431 and closes once a connection has sent that many bytes without
 * completing a request.
 */
#define TINY_CONNS 64
#define TINY_BUF   16384

struct tiny_conn {
    int fd;
    size_t len;
    int complete;
    char buf[TINY_BUF];
};

struct tiny {
    int lfd, port, wake[2];
    pthread_t th;
    int gate;
    size_t max_request;
    int max_open; /* most connections open at once (read after tiny_stop) */
    int served;
    struct tiny_conn conns[TINY_CONNS];
};

static int request_complete(const char *buf, size_t len)
{
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (!end)
        return 0;
    size_t head = (size_t)(end - buf) + 4;
    size_t body = 0;
    for (const char *p = buf; p < end; p++) {
        if ((p == buf || p[-1] == '\n') && strncasecmp(p, "Content-Length:", 15) == 0)
            body = strtoul(p + 15, NULL, 10);
    }
    return len >= head + body;
}

static void write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        p += n;
        len -= (size_t)n;
    }
}

static void tiny_answer(struct tiny *t, struct tiny_conn *c)
{
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 200 OK\r\n"
                     "Content-Type: text/plain\r\n"
                     "x-lower-case:   spaced value  \r\n"
                     "X-Long: 0123456789abcdefghij\r\n"
                     "Content-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     c->len);
    write_all(c->fd, head, (size_t)n);
    write_all(c->fd, c->buf, c->len);
    close(c->fd);
    c->fd = -1;
    t->served++;
}

static void *tiny_main(void *arg)
{
    struct tiny *t = arg;
    for (;;) {
        struct pollfd pfd[TINY_CONNS + 2];
        int map[TINY_CONNS + 2], n = 0, open_now = 0;
        pfd[n++] = (struct pollfd){.fd = t->wake[0], .events = POLLIN};
        pfd[n++] = (struct pollfd){.fd = t->lfd, .events = POLLIN};
        for (int i = 0; i < TINY_CONNS; i++) {
            if (t->conns[i].fd < 0)
                continue;
            open_now++;
            if (!t->conns[i].complete) {
                map[n] = i;
                pfd[n++] = (struct pollfd){.fd = t->conns[i].fd, .events = POLLIN};
            }
        }
        if (open_now > t->max_open)
            t->max_open = open_now;
        if (poll(pfd, (nfds_t)n, -1) < 0)
            continue;
        if (pfd[0].revents)
            break;
        if (pfd[1].revents & POLLIN) {
            int fd = accept(t->lfd, NULL, NULL);
            for (int i = 0; fd >= 0 && i < TINY_CONNS; i++) {
                if (t->conns[i].fd < 0) {
                    t->conns[i].fd = fd;
                    t->conns[i].len = 0;
                    t->conns[i].complete = 0;
                    fd = -1;
                }
            }
            if (fd >= 0)
                close(fd);
        }
        for (int k = 2; k < n; k++) {
            if (!pfd[k].revents)
                continue;
            struct tiny_conn *c = &t->conns[map[k]];
            ssize_t got = recv(c->fd, c->buf + c->len, TINY_BUF - c->len, 0);
            if (got <= 0) {
                close(c->fd);
                c->fd = -1;
                continue;
            }
            c->len += (size_t)got;
            if (request_complete(c->buf, c->len)) {
                c->complete = 1;
            } else if ((t->max_request && c->len >= t->max_request) || c->len == TINY_BUF) {
                const char *r = "HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                "Content-Length: 0\r\nConnection: close\r\n\r\n";
                write_all(c->fd, r, strlen(r));
                close(c->fd);
                c->fd = -1;
            }
        }
        int waiting = 0;
        for (int i = 0; i < TINY_CONNS; i++)
            waiting += t->conns[i].fd >= 0 && t->conns[i].complete;
        if (waiting > 0 && waiting >= t->gate)
            for (int i = 0; i < TINY_CONNS; i++)
                if (t->conns[i].fd >= 0 && t->conns[i].complete)
                    tiny_answer(t, &t->conns[i]);
    }
    return NULL;
}

static void tiny_start(struct tiny *t, int gate, size_t max_request)
{
    memset(t, 0, sizeof(*t));
    for (int i = 0; i < TINY_CONNS; i++)
        t->conns[i].fd = -1;
    t->gate = gate;
    t->max_request = max_request;
    t->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(t->lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof(a);
    assert_int_equal(bind(t->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(t->lfd, 128), 0);
    assert_int_equal(getsockname(t->lfd, (struct sockaddr *)&a, &alen), 0);
    t->port = ntohs(a.sin_port);
    assert_int_equal(pipe(t->wake), 0);
    assert_int_equal(pthread_create(&t->th, NULL, tiny_main, t), 0);
}

static void tiny_stop(struct tiny *t)
{
    assert_int_equal(write(t->wake[1], "x", 1), 1);
    pthread_join(t->th, NULL);
    for (int i = 0; i < TINY_CONNS; i++)
        if (t->conns[i].fd >= 0)
            close(t->conns[i].fd);
    close(t->lfd);
    close(t->wake[0]);
    close(t->wake[1]);
}

/* ---- proc ------------------------------------------------------------------ */

static void test_free_port_is_bindable(void **state)
{
    (void)state;
    int port = proc_free_port();
    assert_true(port > 0 && port < 65536);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    close(fd);
}

static void test_proc_runs_program_with_env_and_log(void **state)
{
    (void)state;
    char log[256];
    tmp_path(log, sizeof(log), "sh.log");
    char *argv[] = {"sh", "-c", "echo out=$SUPPORT_X; echo err >&2; exit 3", NULL};
    char *env[] = {"SUPPORT_X=forty-two", NULL};
    struct proc p;
    assert_int_equal(proc_start(&p, argv, env, log), 0);
    int status = -1;
    assert_int_equal(proc_wait(&p, 5000, &status), 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 3);
    assert_int_equal(proc_alive(&p), 0);
    char *text = slurp(log);
    assert_non_null(strstr(text, "out=forty-two\n"));
    assert_non_null(strstr(text, "err\n"));
    free(text);
}

static void test_proc_start_of_missing_program_fails(void **state)
{
    (void)state;
    char *argv[] = {"/nonexistent/millrace-no-such-program", NULL};
    struct proc p;
    assert_int_equal(proc_start(&p, argv, NULL, NULL), -1);
    assert_int_equal(p.pid, 0);
}

static void test_proc_stop_reports_signal_and_escalates(void **state)
{
    (void)state;
    char *sleeper[] = {"sleep", "30", NULL};
    struct proc p;
    assert_int_equal(proc_start(&p, sleeper, NULL, NULL), 0);
    assert_int_equal(proc_alive(&p), 1);
    assert_int_equal(proc_wait(&p, 50, NULL), -1);
    int status = proc_stop(&p, SIGTERM, 5000);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGTERM);

    /* an ignored SIGTERM survives exec: proc_stop must fall back to SIGKILL */
    char *stubborn[] = {"sh", "-c", "trap '' TERM; exec sleep 30", NULL};
    assert_int_equal(proc_start(&p, stubborn, NULL, NULL), 0);
    clock_sleep_ms(100);
    int64_t t0 = clock_now_ms();
    assert_int_equal(proc_stop(&p, SIGTERM, 200), -1);
    assert_true(clock_now_ms() - t0 < 3000);
    assert_int_equal(proc_alive(&p), 0);
}

static void test_proc_wait_port(void **state)
{
    (void)state;
    struct tiny t;
    tiny_start(&t, 1, 0);
    assert_int_equal(proc_wait_port(t.port, 1000), 0);
    tiny_stop(&t);
    int closed = proc_free_port();
    int64_t t0 = clock_now_ms();
    assert_int_equal(proc_wait_port(closed, 100), -1);
    assert_true(clock_now_ms() - t0 >= 100);
}

/* ---- http ------------------------------------------------------------------ */

static void test_http_request_sends_and_parses_headers(void **state)
{
    (void)state;
    struct tiny t;
    tiny_start(&t, 1, 0);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/generate", t.port);
    const char *headers[] = {"X-Req: yes", "Content-Type: application/json", NULL};
    const char *body = "{\"text\":\"hi\"}";
    struct http_response r;
    assert_int_equal(http_request("POST", url, headers, body, strlen(body), 2000, &r), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.err, "");
    assert_non_null(strstr(r.body, "POST /generate HTTP/1.1\r\n"));
    assert_non_null(strstr(r.body, "X-Req: yes\r\n"));
    assert_non_null(strstr(r.body, "\r\n\r\n{\"text\":\"hi\"}"));
    assert_int_equal(strlen(r.body), r.len);

    char v[64];
    assert_int_equal(http_header(&r, "X-LOWER-CASE", v, sizeof(v)), 12);
    assert_string_equal(v, "spaced value");
    assert_int_equal(http_header(&r, "content-type", v, sizeof(v)), 10);
    assert_string_equal(v, "text/plain");
    char small[5];
    assert_int_equal(http_header(&r, "x-long", small, sizeof(small)), 20);
    assert_string_equal(small, "0123");
    assert_int_equal(http_header(&r, "X-Missing", v, sizeof(v)), -1);
    assert_string_equal(v, "");
    assert_int_equal(http_header(&r, "X-Lon", v, sizeof(v)), -1); /* a prefix is not a match */
    http_response_fini(&r);

    /* a GET has no body; a custom verb is sent as is */
    assert_int_equal(http_request("GET", url, NULL, NULL, 0, 2000, &r), 0);
    assert_non_null(strstr(r.body, "GET /generate HTTP/1.1\r\n"));
    http_response_fini(&r);
    assert_int_equal(http_request("DELETE", url, NULL, NULL, 0, 2000, &r), 0);
    assert_non_null(strstr(r.body, "DELETE /generate HTTP/1.1\r\n"));
    http_response_fini(&r);
    http_response_fini(&r); /* twice is harmless */
    tiny_stop(&t);
}

static void test_http_request_failure_gives_status_0(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", proc_free_port());
    struct http_response r;
    assert_int_equal(http_request("GET", url, NULL, NULL, 0, 1000, &r), HTTP_EIO);
    assert_int_equal(r.status, 0);
    assert_true(r.err[0] != '\0');
    http_response_fini(&r);

    /* a server that never answers: the timeout */
    struct tiny t;
    tiny_start(&t, 2, 0); /* waits for a second request that never comes */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", t.port);
    int64_t t0 = clock_now_ms();
    assert_int_equal(http_request("GET", url, NULL, NULL, 0, 200, &r), HTTP_ETIMEOUT);
    assert_true(clock_now_ms() - t0 < 2000);
    assert_int_equal(r.status, 0);
    http_response_fini(&r);
    tiny_stop(&t);
}

static void test_http_many_runs_requests_concurrently(void **state)
{
    (void)state;
    enum { N = 8 };
    struct tiny t;
    tiny_start(&t, N, 0); /* answers only once all N requests are in */
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", t.port);
    struct http_spec specs[N];
    char bodies[N][24];
    for (int i = 0; i < N; i++) {
        snprintf(bodies[i], sizeof(bodies[i]), "body-%d", i);
        specs[i] = (struct http_spec){"POST", url, NULL, bodies[i], strlen(bodies[i])};
    }
    struct http_response outs[N];
    assert_int_equal(http_many(N, specs, 5000, outs), 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(outs[i].status, 200);
        char want[32];
        snprintf(want, sizeof(want), "\r\n\r\nbody-%d", i);
        assert_non_null(strstr(outs[i].body, want));
        http_response_fini(&outs[i]);
    }
    tiny_stop(&t);
    assert_int_equal(t.served, N);
    assert_true(t.max_open >= N);

    /* one short of the gate: nobody is answered, every transfer times out */
    tiny_start(&t, N + 1, 0);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", t.port);
    int64_t t0 = clock_now_ms();
    assert_int_equal(http_many(N, specs, 300, outs), N);
    assert_true(clock_now_ms() - t0 < 3000);
    for (int i = 0; i < N; i++) {
        assert_int_equal(outs[i].status, 0);
        assert_true(outs[i].err[0] != '\0');
        http_response_fini(&outs[i]);
    }
    tiny_stop(&t);
}

static void test_http_raw_reads_until_close(void **state)
{
    (void)state;
    struct tiny t;
    tiny_start(&t, 1, 0);
    const char *req = "GET /raw HTTP/1.1\r\nHost: x\r\n\r\n";
    char *resp = NULL;
    size_t len = 0;
    assert_int_equal(http_raw(t.port, req, strlen(req), 2000, &resp, &len), 0);
    assert_non_null(resp);
    assert_int_equal(strlen(resp), len);
    assert_true(strncmp(resp, "HTTP/1.1 200 OK\r\n", 17) == 0);
    assert_non_null(strstr(resp, "GET /raw HTTP/1.1"));
    free(resp);

    /* an unfinished request: the server waits, the helper times out */
    const char *partial = "GET /raw HTTP/1.1\r\nHost:";
    int64_t t0 = clock_now_ms();
    assert_int_equal(http_raw(t.port, partial, strlen(partial), 200, &resp, &len), HTTP_ETIMEOUT);
    assert_true(clock_now_ms() - t0 >= 200);
    assert_int_equal(len, 0);
    assert_string_equal(resp, "");
    free(resp);
    tiny_stop(&t);

    assert_int_equal(http_raw(proc_free_port(), req, strlen(req), 200, &resp, &len), HTTP_EIO);
    assert_null(resp);
}

static void test_http_raw_slow_trickles_and_stops_at_close(void **state)
{
    (void)state;
    struct tiny t;
    tiny_start(&t, 1, 200);
    const char *req = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n";
    char *resp = NULL;
    size_t len = 0, sent = 0;
    int64_t t0 = clock_now_ms();
    assert_int_equal(http_raw_slow(t.port, req, strlen(req), 4, 10, 5000, &resp, &len, &sent), 0);
    /* 8 chunks, 7 pauses of 10 ms */
    assert_true(clock_now_ms() - t0 >= 70);
    assert_int_equal(sent, strlen(req));
    assert_non_null(strstr(resp, "200 OK"));
    assert_non_null(strstr(resp, "GET /slow HTTP/1.1"));
    free(resp);

    /* an endless header: the server gives up at 200 bytes and closes */
    char big[2000];
    int n = snprintf(big, sizeof(big), "GET / HTTP/1.1\r\n");
    while (n < (int)sizeof(big) - 20)
        n += snprintf(big + n, sizeof(big) - (size_t)n, "X-Pad: aaaaaaaaaa\r\n");
    assert_int_equal(http_raw_slow(t.port, big, (size_t)n, 50, 20, 5000, &resp, &len, &sent), 0);
    assert_true(sent < (size_t)n);
    assert_true(sent >= 200);
    assert_non_null(strstr(resp, "431"));
    free(resp);
    tiny_stop(&t);
}

/* ---- the fake worker ------------------------------------------------------- */

struct fw {
    struct proc p;
    char prefix[32];
    char log[256];
    char wid[QUEUE_ID_MAX + 1];
};

static struct fw fw; /* the fake worker of the running test */
static int fw_count;

static int fake_setup(void **state)
{
    (void)state;
    memset(&fw, 0, sizeof(fw));
    snprintf(fw.prefix, sizeof(fw.prefix), "{fs%d}", ++fw_count);
    snprintf(fw.log, sizeof(fw.log), "%s/fake_worker-%d.log", tmpdir, fw_count);
    return 0;
}

static int fake_teardown(void **state)
{
    (void)state;
    if (fw.p.pid > 0)
        proc_stop(&fw.p, SIGKILL, 5000);
    return 0;
}

static void dump_log(void)
{
    char *text = slurp(fw.log);
    fprintf(stderr, "---- %s\n%s----\n", fw.log, text);
    free(text);
}

/* The first runner registered under fw.prefix, into wid; 0 or -1 after
 * timeout_ms. */
static int runner_id(char wid[QUEUE_ID_MAX + 1], long timeout_ms)
{
    int64_t deadline = clock_now_ms() + timeout_ms;
    do {
        redisReply *r = test_redis_cmd(&srv, "ZRANGE %s:runners 0 -1", fw.prefix);
        int ok = r && r->type == REDIS_REPLY_ARRAY && r->elements > 0;
        if (ok)
            snprintf(wid, QUEUE_ID_MAX + 1, "%s", r->element[0]->str);
        if (r)
            freeReplyObject(r);
        if (ok)
            return 0;
        clock_sleep_ms(10);
    } while (clock_now_ms() < deadline);
    return -1;
}

/* Start the fake worker on fw.prefix with short timers and the given extra
 * options (NULL-terminated, may be NULL); wait until it has registered. */
static void fw_start(const char *const *extra)
{
    char *argv[32];
    int n = 0;
    argv[n++] = FAKE_WORKER;
    argv[n++] = "--redis";
    argv[n++] = srv.url;
    argv[n++] = "--prefix";
    argv[n++] = fw.prefix;
    argv[n++] = "--heartbeat-ms";
    argv[n++] = "50";
    argv[n++] = "--worker-ttl-ms";
    argv[n++] = "2000";
    argv[n++] = "--log-level";
    argv[n++] = "debug";
    for (int i = 0; extra && extra[i] && n < 31; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    assert_int_equal(proc_start(&fw.p, argv, NULL, fw.log), 0);
    if (runner_id(fw.wid, 5000) < 0) {
        dump_log();
        fail_msg("the fake worker did not register within 5 s");
    }
    assert_true(strncmp(fw.wid, "fake-", 5) == 0);
}

static struct queue *open_queue(void)
{
    struct redis_opts ro;
    struct queue_opts qo;
    char err[256];
    redis_opts_default(&ro);
    assert_int_equal(redis_url_parse(srv.url, &ro.target, err, sizeof(err)), 0);
    ro.retry_ms = 3000;
    queue_opts_default(&qo);
    qo.prefix = fw.prefix;
    qo.worker_ttl_ms = 300; /* for the reap in the crash test */
    qo.reap_lease_ms = 1;
    struct queue *q = NULL;
    assert_int_equal(queue_create(&q, &ro, &qo, "t:support", err, sizeof(err)), 0);
    return q;
}

/* Enqueue a canonical request for `text` (reply to API_ID); the id into id. */
static void enqueue(struct queue *q, const char *text, int num_samples, int max_tokens,
                    char id[QUEUE_ID_MAX + 1])
{
    char body[512], got[QUEUE_ID_MAX + 1], *payload = NULL;
    snprintf(body, sizeof(body), "{\"text\":\"%s\",\"max_tokens\":%d,\"num_samples\":%d}", text,
             max_tokens, num_samples);
    struct job_request *req = NULL;
    assert_int_equal(job_request_parse(&req, body, strlen(body), NULL, NULL, NULL), 0);
    assert_int_equal(job_request_to_json(req, &payload), 0);
    job_request_destroy(req);
    enum queue_enqueue_outcome oc;
    assert_int_equal(ids_job_id(id), 0);
    assert_int_equal(queue_enqueue(q, id, payload, strlen(payload), API_ID, NULL, got, &oc), 0);
    assert_int_equal(oc, QUEUE_ENQUEUED_NEW);
    free(payload);
}

/* Wait for n distinct ids to arrive in API_ID's inbox (any order); their
 * arrival order into order[] (may be NULL). Fails after timeout_ms. */
static void wait_results(struct queue *q, char ids[][QUEUE_ID_MAX + 1], int n, int *order,
                         long timeout_ms)
{
    int seen[64] = {0}, got_n = 0;
    assert_true(n <= 64);
    int64_t deadline = clock_now_ms() + timeout_ms;
    while (got_n < n) {
        if (clock_now_ms() > deadline) {
            dump_log();
            fail_msg("only %d of %d results within %ld ms", got_n, n, timeout_ms);
        }
        char in[16][QUEUE_ID_MAX + 1];
        int k = 0;
        assert_int_equal(queue_inbox_wait(q, API_ID, 200, in, 16, &k), 0);
        for (int a = 0; a < k; a++)
            for (int i = 0; i < n; i++)
                if (!seen[i] && strcmp(in[a], ids[i]) == 0) {
                    seen[i] = 1;
                    if (order)
                        order[got_n] = i;
                    got_n++;
                }
    }
}

static void get_job(struct queue *q, const char *id, struct queue_job_info *info)
{
    assert_int_equal(queue_job_get(q, id, NULL, 0, info), 0);
}

/* Wait until job id is in state want. */
static void wait_state(struct queue *q, const char *id, enum queue_state want, long timeout_ms)
{
    int64_t deadline = clock_now_ms() + timeout_ms;
    for (;;) {
        struct queue_job_info info;
        get_job(q, id, &info);
        enum queue_state st = info.state;
        queue_job_info_fini(&info);
        if (st == want)
            return;
        if (clock_now_ms() > deadline) {
            dump_log();
            fail_msg("job %s is %s, not %s, after %ld ms", id, queue_state_name(st),
                     queue_state_name(want), timeout_ms);
        }
        clock_sleep_ms(10);
    }
}

static void test_fake_worker_help_names_flags_and_env(void **state)
{
    (void)state;
    char *argv[] = {FAKE_WORKER, "--help", NULL};
    assert_int_equal(proc_start(&fw.p, argv, NULL, fw.log), 0);
    int status = -1;
    assert_int_equal(proc_wait(&fw.p, 5000, &status), 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    char *text = slurp(fw.log);
    assert_non_null(strstr(text, "TEST DOUBLE"));
    assert_non_null(strstr(text, "--delay-ms"));
    assert_non_null(strstr(text, "MILLRACE_FAKE_DELAY_MS"));
    assert_non_null(strstr(text, "--shuffle"));
    free(text);
}

static void test_fake_worker_echoes_each_job(void **state)
{
    (void)state;
    enum { N = 10 };
    const char *extra[] = {"--batch", "4", "--shuffle", NULL};
    fw_start(extra);
    struct queue *q = open_queue();
    char ids[N][QUEUE_ID_MAX + 1];
    char texts[N][64];
    for (int i = 0; i < N; i++) {
        snprintf(texts[i], sizeof(texts[i]), "hello  big\\tworld %d", i);
        enqueue(q, texts[i], 2, 3, ids[i]);
    }
    wait_results(q, ids, N, NULL, 10000);
    for (int i = 0; i < N; i++) {
        char prompt[64], want0[80], want1[80];
        snprintf(prompt, sizeof(prompt), "hello  big\tworld %d", i);
        snprintf(want0, sizeof(want0), "echo: %s", prompt);
        snprintf(want1, sizeof(want1), "echo[1]: %s", prompt);
        struct queue_job_info info;
        get_job(q, ids[i], &info);
        assert_int_equal(info.state, QUEUE_DONE);
        assert_int_equal(strncmp(info.worker, "fake-", 5), 0);
        assert_non_null(info.result);
        struct job_response *resp = NULL;
        assert_int_equal(job_response_parse(&resp, info.result, strlen(info.result), NULL), 0);
        assert_string_equal(resp->prompt, prompt);
        assert_int_equal(resp->prompt_tokens, 4);
        assert_int_equal(resp->num_samples, 2);
        assert_string_equal(resp->samples[0].text, want0);
        assert_string_equal(resp->samples[1].text, want1);
        assert_int_equal(resp->samples[0].generated_tokens, 3); /* min(max_tokens 3, 4 words) */
        assert_int_equal(resp->samples[0].finish_reason, JOB_FINISH_LENGTH);
        assert_true(resp->created > 1.7e9 && resp->finished >= resp->created);
        job_response_destroy(resp);
        queue_job_info_fini(&info);
    }
    queue_destroy(q);
    assert_int_equal(proc_stop(&fw.p, SIGTERM, 5000), 0);
}

static void test_fake_worker_fail_trigger_fails_the_job(void **state)
{
    (void)state;
    fw_start(NULL);
    struct queue *q = open_queue();
    char ids[1][QUEUE_ID_MAX + 1];
    enqueue(q, "please FAIL now", 1, 8, ids[0]);
    wait_results(q, ids, 1, NULL, 5000);
    struct queue_job_info info;
    get_job(q, ids[0], &info);
    assert_int_equal(info.state, QUEUE_FAILED);
    assert_string_equal(info.error, "fake worker: asked to fail");
    assert_null(info.result);
    queue_job_info_fini(&info);
    queue_destroy(q);
    assert_int_equal(proc_stop(&fw.p, SIGTERM, 5000), 0);
}

static void test_fake_worker_slow_job_does_not_hold_the_batch(void **state)
{
    (void)state;
    fw_start(NULL);
    struct queue *q = open_queue();
    char ids[2][QUEUE_ID_MAX + 1];
    int64_t t0 = clock_now_ms();
    enqueue(q, "SLOW:600 first in", 1, 8, ids[0]);
    enqueue(q, "quick second", 1, 8, ids[1]);
    int order[2];
    wait_results(q, ids, 2, order, 5000);
    assert_int_equal(order[0], 1);
    assert_int_equal(order[1], 0);
    assert_true(clock_now_ms() - t0 >= 600);
    struct queue_job_info info;
    get_job(q, ids[0], &info);
    assert_int_equal(info.state, QUEUE_DONE);
    assert_true(info.finished - info.started >= 0.5);
    queue_job_info_fini(&info);
    queue_destroy(q);
    assert_int_equal(proc_stop(&fw.p, SIGTERM, 5000), 0);
}

static long long llen_processing(void)
{
    redisReply *r = test_redis_cmd(&srv, "LLEN %s:processing:%s", fw.prefix, fw.wid);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long n = r->integer;
    freeReplyObject(r);
    return n;
}

static void test_fake_worker_drops_a_cancelled_hang_job(void **state)
{
    (void)state;
    fw_start(NULL);
    struct queue *q = open_queue();
    char ids[2][QUEUE_ID_MAX + 1];
    enqueue(q, "HANG forever", 1, 8, ids[0]);
    wait_state(q, ids[0], QUEUE_RUNNING, 5000);
    assert_int_equal(llen_processing(), 1);
    enum queue_state before;
    assert_int_equal(queue_cancel(q, ids[0], &before), 0);
    assert_int_equal(before, QUEUE_RUNNING);
    /* the next beat says abort; the worker drops the job off its list */
    int64_t deadline = clock_now_ms() + 5000;
    while (llen_processing() > 0) {
        if (clock_now_ms() > deadline) {
            dump_log();
            fail_msg("the cancelled job is still in the worker's processing list");
        }
        clock_sleep_ms(10);
    }
    struct queue_job_info info;
    get_job(q, ids[0], &info);
    assert_int_equal(info.state, QUEUE_CANCELLED);
    assert_string_equal(info.error, "cancelled by request");
    queue_job_info_fini(&info);
    char *text = slurp(fw.log);
    assert_non_null(strstr(text, "dropped"));
    free(text);

    /* and it goes on serving */
    enqueue(q, "after the cancel", 1, 8, ids[1]);
    wait_results(q, ids + 1, 1, NULL, 5000);
    wait_state(q, ids[1], QUEUE_DONE, 1000);
    queue_destroy(q);
    assert_int_equal(proc_stop(&fw.p, SIGTERM, 5000), 0);
}

static void test_fake_worker_sigterm_hands_back_a_hang_job(void **state)
{
    (void)state;
    fw_start(NULL);
    struct queue *q = open_queue();
    char id[QUEUE_ID_MAX + 1];
    enqueue(q, "HANG until stopped", 1, 8, id);
    wait_state(q, id, QUEUE_RUNNING, 5000);
    int64_t t0 = clock_now_ms();
    int status = proc_stop(&fw.p, SIGTERM, 5000);
    if (status != 0)
        dump_log();
    assert_int_equal(status, 0);
    assert_true(clock_now_ms() - t0 < 3000);
    struct queue_job_info info;
    get_job(q, id, &info);
    assert_int_equal(info.state, QUEUE_QUEUED);
    assert_int_equal(info.attempts, 0);
    assert_int_equal(info.position, 0);
    queue_job_info_fini(&info);
    struct queue_stats st;
    assert_int_equal(queue_stats(q, &st), 0);
    assert_int_equal(st.released, 1);
    assert_int_equal(st.backlog, 1);
    assert_int_equal(st.running, 0);
    assert_int_equal(st.runners, 0);
    char *text = slurp(fw.log);
    assert_non_null(strstr(text, "1 job(s) handed back"));
    free(text);
    queue_destroy(q);
}

static void test_fake_worker_crash_leaves_the_job_to_the_reaper(void **state)
{
    (void)state;
    fw_start(NULL);
    struct queue *q = open_queue();
    char id[QUEUE_ID_MAX + 1];
    enqueue(q, "CRASH here", 1, 8, id);
    int status = -1;
    assert_int_equal(proc_wait(&fw.p, 5000, &status), 0);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
    struct queue_job_info info;
    get_job(q, id, &info);
    assert_int_equal(info.state, QUEUE_RUNNING);
    assert_string_equal(info.worker, fw.wid);
    queue_job_info_fini(&info);

    clock_sleep_ms(400); /* past this handle's 300 ms ttl */
    struct queue_reap_result rr;
    assert_int_equal(queue_reap(q, &rr), 0);
    assert_int_equal(rr.ran, 1);
    assert_int_equal(rr.runners, 1);
    assert_int_equal(rr.requeued, 1);
    get_job(q, id, &info);
    assert_int_equal(info.state, QUEUE_QUEUED);
    assert_non_null(info.error);
    assert_non_null(strstr(info.error, "stopped heartbeating"));
    queue_job_info_fini(&info);
    queue_destroy(q);
}

/* ---- main ------------------------------------------------------------------ */

static int group_setup(void **state)
{
    (void)state;
    log_setup(LOG_WARN, "test_support");
    signal(SIGPIPE, SIG_IGN);
    if (http_global_init() < 0)
        return -1;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/millrace-test-support-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    if (access(FAKE_WORKER, X_OK) != 0) {
        fprintf(stderr,
                "test_support: %s is missing: run from the repository root after "
                "building it (make)\n",
                FAKE_WORKER);
        return -1;
    }
    return test_redis_start(&srv);
}

static int group_teardown(void **state)
{
    (void)state;
    test_redis_destroy(&srv);
    if (tmpdir[0] && !getenv("MILLRACE_TEST_KEEP")) {
        char cmd[200];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "test_support: could not remove %s\n", tmpdir);
    }
    return 0;
}

#define FAKE_TEST(f) cmocka_unit_test_setup_teardown(f, fake_setup, fake_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_free_port_is_bindable),
        cmocka_unit_test(test_proc_runs_program_with_env_and_log),
        cmocka_unit_test(test_proc_start_of_missing_program_fails),
        cmocka_unit_test(test_proc_stop_reports_signal_and_escalates),
        cmocka_unit_test(test_proc_wait_port),
        cmocka_unit_test(test_http_request_sends_and_parses_headers),
        cmocka_unit_test(test_http_request_failure_gives_status_0),
        cmocka_unit_test(test_http_many_runs_requests_concurrently),
        cmocka_unit_test(test_http_raw_reads_until_close),
        cmocka_unit_test(test_http_raw_slow_trickles_and_stops_at_close),
        FAKE_TEST(test_fake_worker_help_names_flags_and_env),
        FAKE_TEST(test_fake_worker_echoes_each_job),
        FAKE_TEST(test_fake_worker_fail_trigger_fails_the_job),
        FAKE_TEST(test_fake_worker_slow_job_does_not_hold_the_batch),
        FAKE_TEST(test_fake_worker_drops_a_cancelled_hang_job),
        FAKE_TEST(test_fake_worker_sigterm_hands_back_a_hang_job),
        FAKE_TEST(test_fake_worker_crash_leaves_the_job_to_the_reaper),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
