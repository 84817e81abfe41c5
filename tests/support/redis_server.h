/*
 * redis_server: a private redis-server for tests.
 *
 * Each test program starts its own redis-server on 127.0.0.1 on a free port
 * (found by binding port 0), in a fresh temporary directory, with AOF on and
 * fsync at every write, so a SIGKILL loses nothing that was acknowledged.
 * The server dies with the test process (PR_SET_PDEATHSIG) and its directory
 * is removed at exit, whatever happens to the test. Start and restart servers
 * from the main thread: PR_SET_PDEATHSIG fires when the thread that forked
 * the server ends.
 */
#pragma once

#include <hiredis/hiredis.h>
#include <sys/types.h>

struct test_redis {
    pid_t pid; /* 0 while stopped */
    int port;
    char dir[256];
    char url[64];         /* redis://127.0.0.1:<port> */
    char appendfsync[16]; /* "always" (tests) or "everysec" (benchmarks) */
};

/* Start a server; 0 or -1 (a message on stderr). Waits until it answers PING
 * and has been up for at least one second (INFO uptime has whole-second
 * resolution, and the reaper judges restarts by it). */
int test_redis_start(struct test_redis *r);

/* The same with AOF fsync policy `appendfsync` ("always", "everysec"). */
int test_redis_start_fsync(struct test_redis *r, const char *appendfsync);

/* Stop with `sig` (SIGTERM: a clean shutdown; SIGKILL: a crash) and wait. */
void test_redis_stop(struct test_redis *r, int sig);

/* Start again on the same port and directory (the AOF is reloaded). */
int test_redis_restart(struct test_redis *r);

/* Stop (SIGKILL) and remove the directory. */
void test_redis_destroy(struct test_redis *r);

/* A direct hiredis connection for assertions (redisFree it), or NULL. */
redisContext *test_redis_connect(const struct test_redis *r);

/* Run one command on a fresh connection and return its reply (new), or NULL. */
redisReply *test_redis_cmd(const struct test_redis *r, const char *fmt, ...);
