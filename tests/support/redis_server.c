/*
 * redis_server: a private redis-server for tests (see redis_server.h).
 */
#include "tests/support/redis_server.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "tests/support/proc.h"

#define MAX_SERVERS 8
static struct test_redis *live[MAX_SERVERS];
static int atexit_done;

static void cleanup_all(void)
{
    for (int i = 0; i < MAX_SERVERS; i++)
        if (live[i])
            test_redis_destroy(live[i]);
}

redisContext *test_redis_connect(const struct test_redis *r)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

redisReply *test_redis_cmd(const struct test_redis *r, const char *fmt, ...)
{
    redisContext *c = test_redis_connect(r);
    if (!c)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return rep;
}

static long long uptime_s(const struct test_redis *r)
{
    redisReply *rep = test_redis_cmd(r, "INFO server");
    long long up = -1;
    if (rep && rep->type == REDIS_REPLY_STRING) {
        const char *p = strstr(rep->str, "uptime_in_seconds:");
        if (p)
            up = strtoll(p + 18, NULL, 10);
    }
    if (rep)
        freeReplyObject(rep);
    return up;
}

static int spawn(struct test_redis *r)
{
    char port[16], logfile[300];
    snprintf(port, sizeof(port), "%d", r->port);
    snprintf(logfile, sizeof(logfile), "%s/redis.log", r->dir);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--dir",
               r->dir, "--appendonly", "yes", "--appendfsync", r->appendfsync, "--save", "",
               "--daemonize", "no", "--logfile", logfile, "--maxmemory-policy", "noeviction",
               (char *)NULL);
        _exit(127);
    }
    r->pid = pid;
    int64_t deadline = clock_now_ms() + 10000;
    while (clock_now_ms() < deadline) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            r->pid = 0;
            fprintf(stderr, "test redis: redis-server exited at start (see %s)\n", logfile);
            return -1;
        }
        redisReply *rep = test_redis_cmd(r, "PING");
        int ok = rep && rep->type == REDIS_REPLY_STATUS && strcmp(rep->str, "PONG") == 0;
        if (rep)
            freeReplyObject(rep);
        if (ok) {
            while (clock_now_ms() < deadline && uptime_s(r) < 1)
                clock_sleep_ms(50);
            return 0;
        }
        clock_sleep_ms(20);
    }
    fprintf(stderr, "test redis: no PONG from port %d within 10 s\n", r->port);
    return -1;
}

int test_redis_start(struct test_redis *r)
{
    return test_redis_start_fsync(r, "always");
}

int test_redis_start_fsync(struct test_redis *r, const char *appendfsync)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->appendfsync, sizeof(r->appendfsync), "%s", appendfsync);
    snprintf(r->dir, sizeof(r->dir), "/tmp/millrace-test-redis-XXXXXX");
    if (!mkdtemp(r->dir)) {
        perror("test redis: mkdtemp");
        return -1;
    }
    if (!atexit_done) {
        atexit(cleanup_all);
        atexit_done = 1;
    }
    for (int i = 0; i < MAX_SERVERS; i++) {
        if (!live[i]) {
            live[i] = r;
            break;
        }
    }
    for (int attempt = 0; attempt < 5; attempt++) {
        r->port = proc_free_port();
        snprintf(r->url, sizeof(r->url), "redis://127.0.0.1:%d", r->port);
        if (r->port > 0 && spawn(r) == 0)
            return 0;
    }
    return -1;
}

void test_redis_stop(struct test_redis *r, int sig)
{
    if (r->pid <= 0)
        return;
    kill(r->pid, sig);
    int status;
    while (waitpid(r->pid, &status, 0) < 0 && errno == EINTR) {
    }
    r->pid = 0;
}

int test_redis_restart(struct test_redis *r)
{
    test_redis_stop(r, SIGTERM);
    return spawn(r);
}

void test_redis_destroy(struct test_redis *r)
{
    test_redis_stop(r, SIGKILL);
    if (r->dir[0]) {
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", r->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "test redis: could not remove %s\n", r->dir);
        r->dir[0] = '\0';
    }
    for (int i = 0; i < MAX_SERVERS; i++)
        if (live[i] == r)
            live[i] = NULL;
}
