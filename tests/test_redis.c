/*
 * Tests of common/redis.c: URL parsing (no sockets), and the connection's
 * behaviour against a real redis-server: lazy connect, fast failure while
 * Redis is down, reconnection by itself after a restart or a killed
 * connection, blocking calls longer than the command timeout, AUTH, SELECT,
 * CLIENT SETNAME, and the log lines for loss and recovery.
 */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/redis.h"
#include "tests/support/redis_server.h"

static struct test_redis srv;

/* ---- URL parsing ----------------------------------------------------- */

static void parse_ok(const char *url, struct redis_target *t)
{
    char err[256] = "";
    int rc = redis_url_parse(url, t, err, sizeof(err));
    if (rc != 0)
        fail_msg("'%s' rejected: %s", url, err);
}

static void parse_bad(const char *url, const char *want_in_err)
{
    struct redis_target t;
    char err[256] = "";
    assert_int_equal(redis_url_parse(url, &t, err, sizeof(err)), REDIS_CONN_EARG);
    if (!strstr(err, want_in_err))
        fail_msg("'%s': error '%s' does not mention '%s'", url, err, want_in_err);
}

static void test_url_host_port_db(void **state)
{
    (void)state;
    struct redis_target t;
    parse_ok("redis://example.com:6380/2", &t);
    assert_string_equal(t.host, "example.com");
    assert_int_equal(t.port, 6380);
    assert_int_equal(t.db, 2);
    assert_string_equal(t.password, "");
    assert_string_equal(t.unix_path, "");
    parse_ok("redis://localhost", &t);
    assert_string_equal(t.host, "localhost");
    assert_int_equal(t.port, 6379);
    assert_int_equal(t.db, 0);
}

static void test_url_password_forms(void **state)
{
    (void)state;
    struct redis_target t;
    parse_ok("redis://:s3cret@10.0.0.1:7000", &t);
    assert_string_equal(t.password, "s3cret");
    assert_string_equal(t.username, "");
    assert_string_equal(t.host, "10.0.0.1");
    parse_ok("redis://alice:p%40ss%3Aword@h", &t);
    assert_string_equal(t.username, "alice");
    assert_string_equal(t.password, "p@ss:word");
    parse_ok("redis://onlypass@h", &t);
    assert_string_equal(t.password, "onlypass");
    assert_string_equal(t.username, "");
}

static void test_url_ipv6_and_unix(void **state)
{
    (void)state;
    struct redis_target t;
    parse_ok("redis://[::1]:6390", &t);
    assert_string_equal(t.host, "::1");
    assert_int_equal(t.port, 6390);
    char d[300];
    redis_target_describe(&t, d, sizeof(d));
    assert_string_equal(d, "[::1]:6390");
    parse_ok("unix:///run/redis.sock?db=3", &t);
    assert_string_equal(t.unix_path, "/run/redis.sock");
    assert_int_equal(t.db, 3);
    parse_ok("/tmp/r.sock", &t);
    assert_string_equal(t.unix_path, "/tmp/r.sock");
}

static void test_url_errors_say_what_is_wrong(void **state)
{
    (void)state;
    parse_bad("http://h:1", "expected redis://");
    parse_bad("redis://h:0", "port must be 1 to 65535");
    parse_bad("redis://h:99999", "port must be 1 to 65535");
    parse_bad("redis://h:abc", "port must be 1 to 65535");
    parse_bad("redis://h/x", "database");
    parse_bad("redis://", "host");
    parse_bad("redis://:pw%4@h", "password");
    parse_bad("unix://relative", "absolute path");
    parse_bad("redis://[::1", "unclosed");
}

/* ---- against a server ------------------------------------------------ */

static struct redis_conn *open_conn(const char *name, int retry_ms)
{
    struct redis_opts o;
    char err[256];
    redis_opts_default(&o);
    assert_int_equal(redis_url_parse(srv.url, &o.target, err, sizeof(err)), 0);
    o.retry_ms = retry_ms;
    o.command_timeout_ms = 500;
    struct redis_conn *c = NULL;
    assert_int_equal(redis_conn_create(&c, &o, name), 0);
    return c;
}

static void ping(struct redis_conn *c)
{
    redisReply *r = NULL;
    assert_int_equal(redis_conn_cmd(c, &r, "PING"), 0);
    assert_string_equal(r->str, "PONG");
    freeReplyObject(r);
}

static int server_up(void **state)
{
    (void)state;
    return srv.pid == 0 ? test_redis_restart(&srv) : 0;
}

static void test_down_at_start_fails_fast_then_connects(void **state)
{
    (void)state;
    struct redis_conn *c = open_conn("t-down", 200);
    test_redis_stop(&srv, SIGTERM);
    redisReply *r = NULL;
    int64_t t0 = clock_now_ms();
    assert_int_equal(redis_conn_cmd(c, &r, "PING"), REDIS_CONN_EIO);
    assert_true(clock_now_ms() - t0 < 1500);
    assert_null(r);
    assert_int_equal(redis_conn_is_up(c), 0);
    assert_true(strlen(redis_conn_errstr(c)) > 0);
    assert_int_equal(test_redis_restart(&srv), 0);
    redis_conn_set_retry(c, 3000);
    ping(c);
    assert_int_equal(redis_conn_is_up(c), 1);
    redis_conn_destroy(c);
}

/* Ping from a thread while the main thread restarts the server (servers are
 * started from the main thread: they die with the thread that forked them). */
static void *ping_thread(void *arg)
{
    ping(arg);
    return NULL;
}

static void test_reconnects_after_restart_and_logs_both(void **state)
{
    (void)state;
    struct redis_conn *c = open_conn("t-restart", 8000);
    ping(c);
    unsigned long gen = redis_conn_generation(c);

    /* capture the log lines on stderr */
    char path[] = "/tmp/millrace-test-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    log_setup(LOG_INFO, "test_redis");

    test_redis_stop(&srv, SIGKILL);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, ping_thread, c), 0);
    clock_sleep_ms(300);
    assert_int_equal(test_redis_restart(&srv), 0);
    pthread_join(t, NULL); /* the ping retried with backoff until the server was back */

    dup2(saved, STDERR_FILENO);
    close(saved);
    log_setup(LOG_WARN, "test_redis");
    assert_int_equal(redis_conn_generation(c), gen + 1);

    char buf[8192] = "";
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    assert_true(n > 0);
    close(fd);
    unlink(path);
    if (!strstr(buf, "connection to 127.0.0.1:") || !strstr(buf, "lost") ||
        !strstr(buf, "reconnected to 127.0.0.1:"))
        fail_msg("log lacks the loss or the recovery:\n%s", buf);
    redis_conn_destroy(c);
}

static void test_killed_connection_is_replaced(void **state)
{
    (void)state;
    struct redis_conn *c = open_conn("t-victim", 2000);
    ping(c);
    unsigned long gen = redis_conn_generation(c);
    redisReply *k = test_redis_cmd(&srv, "CLIENT KILL USER default SKIPME no");
    assert_non_null(k);
    freeReplyObject(k);
    ping(c); /* the first try meets a closed socket; the retry is immediate */
    assert_int_equal(redis_conn_generation(c), gen + 1);
    redis_conn_destroy(c);
}

static void test_blocking_call_outlives_command_timeout(void **state)
{
    (void)state;
    struct redis_conn *c = open_conn("t-block", 0); /* command timeout 500 ms */
    const char *argv[] = {"BLPOP", "nothing-here", "1.2"};
    redisReply *r = NULL;
    int64_t t0 = clock_now_ms();
    assert_int_equal(redis_conn_call_blocking(c, 1200, &r, 3, argv, NULL), 0);
    assert_true(clock_now_ms() - t0 >= 1100);
    assert_int_equal(r->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
    ping(c); /* the ordinary timeout is back and the connection is fine */
    redis_conn_destroy(c);
}

static void test_client_name_is_set(void **state)
{
    (void)state;
    struct redis_conn *c = open_conn("mr:test:named", 1000);
    ping(c);
    redisReply *r = test_redis_cmd(&srv, "CLIENT LIST");
    assert_non_null(r);
    assert_non_null(strstr(r->str, "name=mr:test:named"));
    freeReplyObject(r);
    redis_conn_destroy(c);
    struct redis_conn *bad = NULL;
    struct redis_opts o;
    redis_opts_default(&o);
    assert_int_equal(redis_conn_create(&bad, &o, "has space"), REDIS_CONN_EARG);
    assert_null(bad);
}

static void test_error_reply_is_reported_not_retried(void **state)
{
    (void)state;
    struct redis_conn *c = open_conn("t-err", 1000);
    redisReply *r = NULL;
    assert_int_equal(redis_conn_cmd(c, &r, "NOSUCHCOMMAND x"), REDIS_CONN_EREPLY);
    assert_null(r);
    assert_non_null(strstr(redis_conn_errstr(c), "unknown command"));
    ping(c);
    redis_conn_destroy(c);
}

static void test_pipeline_returns_every_reply_in_order(void **state)
{
    (void)state;
    struct redis_conn *c = open_conn("t-pipe", 1000);
    const char *set[] = {"SET", "pk", "41"};
    const char *incr[] = {"INCR", "pk"};
    const char *bad[] = {"NOSUCHCOMMAND"};
    const char *get[] = {"GET", "pk"};
    const char *const *argvs[] = {set, incr, bad, get};
    const int argcs[] = {3, 2, 1, 2};
    redisReply *out[4];
    assert_int_equal(redis_conn_pipeline(c, 4, argcs, argvs, NULL, out), 0);
    assert_int_equal(out[0]->type, REDIS_REPLY_STATUS);
    assert_int_equal(out[1]->type, REDIS_REPLY_INTEGER);
    assert_int_equal(out[1]->integer, 42);
    assert_int_equal(out[2]->type, REDIS_REPLY_ERROR); /* one bad command spoils nothing */
    assert_string_equal(out[3]->str, "42");
    for (int i = 0; i < 4; i++)
        freeReplyObject(out[i]);
    redis_conn_destroy(c);
}

static void test_password_and_database_from_url(void **state)
{
    (void)state;
    redisReply *r = test_redis_cmd(&srv, "CONFIG SET requirepass hunter2");
    assert_non_null(r);
    freeReplyObject(r);

    struct redis_opts o;
    char err[256], url[128];
    redis_opts_default(&o);
    o.retry_ms = 0;
    snprintf(url, sizeof(url), "redis://:hunter2@127.0.0.1:%d/5", srv.port);
    assert_int_equal(redis_url_parse(url, &o.target, err, sizeof(err)), 0);
    struct redis_conn *c = NULL;
    assert_int_equal(redis_conn_create(&c, &o, "t-auth"), 0);
    assert_int_equal(redis_conn_cmd(c, &r, "SET k v"), 0);
    freeReplyObject(r);
    assert_int_equal(redis_conn_cmd(c, &r, "CLIENT INFO"), 0);
    assert_non_null(strstr(r->str, " db=5 "));
    freeReplyObject(r);
    redis_conn_destroy(c);

    /* a wrong password is an error that says so */
    snprintf(url, sizeof(url), "redis://:wrong@127.0.0.1:%d", srv.port);
    assert_int_equal(redis_url_parse(url, &o.target, err, sizeof(err)), 0);
    assert_int_equal(redis_conn_create(&c, &o, "t-auth-bad"), 0);
    assert_int_equal(redis_conn_cmd(c, &r, "PING"), REDIS_CONN_EIO);
    assert_non_null(strstr(redis_conn_errstr(c), "AUTH"));
    redis_conn_destroy(c);

    redisContext *raw = test_redis_connect(&srv);
    assert_non_null(raw);
    r = redisCommand(raw, "AUTH hunter2");
    freeReplyObject(r);
    r = redisCommand(raw, "CONFIG SET requirepass %s", "");
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
    redisFree(raw);
}

static int group_setup(void **state)
{
    (void)state;
    log_setup(LOG_WARN, "test_redis");
    return test_redis_start(&srv);
}

static int group_teardown(void **state)
{
    (void)state;
    test_redis_destroy(&srv);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_host_port_db),
        cmocka_unit_test(test_url_password_forms),
        cmocka_unit_test(test_url_ipv6_and_unix),
        cmocka_unit_test(test_url_errors_say_what_is_wrong),
        cmocka_unit_test_setup(test_down_at_start_fails_fast_then_connects, server_up),
        cmocka_unit_test_setup(test_reconnects_after_restart_and_logs_both, server_up),
        cmocka_unit_test_setup(test_killed_connection_is_replaced, server_up),
        cmocka_unit_test_setup(test_blocking_call_outlives_command_timeout, server_up),
        cmocka_unit_test_setup(test_client_name_is_set, server_up),
        cmocka_unit_test_setup(test_error_reply_is_reported_not_retried, server_up),
        cmocka_unit_test_setup(test_pipeline_returns_every_reply_in_order, server_up),
        cmocka_unit_test_setup(test_password_and_database_from_url, server_up),
    };
    return cmocka_run_group_tests_name("redis", tests, group_setup, group_teardown);
}
