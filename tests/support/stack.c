/*
 * stack: the whole millrace stack for an integration test (see stack.h).
 */
#include "tests/support/stack.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "tests/support/http.h"

#define STACK_MAX_ARGS 48

/* "build/asan" when this test program is the sanitizer build (its programs
 * are then the sanitizer builds too), else "build". */
static const char *bin_dir(void)
{
    static char dir[16];
    if (!dir[0]) {
        char self[512];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        self[n > 0 ? n : 0] = '\0';
        snprintf(dir, sizeof(dir), "%s", strstr(self, "/build/asan/") ? "build/asan" : "build");
    }
    return dir;
}

static void add_args(const char **argv, int *n, const char *const *extra)
{
    for (int i = 0; extra && extra[i] && *n < STACK_MAX_ARGS - 1; i++)
        argv[(*n)++] = extra[i];
    argv[*n] = NULL;
}

int stack_sanitized(void)
{
    return strcmp(bin_dir(), "build/asan") == 0;
}

int stack_start_redis(struct stack *s)
{
    memset(s, 0, sizeof(*s));
    http_global_init();
    return test_redis_start(&s->redis);
}

int stack_start_api(struct stack *s, const char *const *extra_args)
{
    if (s->api_port == 0)
        s->api_port = proc_free_port();
    char port[16];
    snprintf(port, sizeof(port), "%d", s->api_port);
    snprintf(s->base, sizeof(s->base), "http://127.0.0.1:%d", s->api_port);
    snprintf(s->api_log, sizeof(s->api_log), "%s/api-%d.log", s->redis.dir, s->api_starts++);
    const char *argv[STACK_MAX_ARGS];
    int n = 0;
    char api[64];
    snprintf(api, sizeof(api), "%s/millrace-api", bin_dir());
    const char *fixed[] = {api,          "--host",
                           "127.0.0.1",  "--port",
                           port,         "--redis",
                           s->redis.url, "--worker-ttl-ms",
                           "1000",       "--stats-refresh-ms",
                           "50",         "--shutdown-grace-s",
                           "2",          NULL};
    add_args(argv, &n, fixed);
    add_args(argv, &n, extra_args);
    if (proc_start(&s->api, (char *const *)argv, NULL, s->api_log) < 0)
        return -1;
    if (proc_wait_port(s->api_port, 10000) < 0) {
        stack_dump_logs(s);
        return -1;
    }
    return 0;
}

int stack_start_worker(struct stack *s, const char *const *extra_args)
{
    if (s->n_workers >= STACK_MAX_WORKERS)
        return -1;
    int i = s->n_workers;
    char log[320];
    snprintf(log, sizeof(log), "%s/worker-%d.log", s->redis.dir, i);
    const char *argv[STACK_MAX_ARGS];
    int n = 0;
    char worker[64];
    snprintf(worker, sizeof(worker), "%s/tests/fake_worker", bin_dir());
    const char *fixed[] = {worker, "--redis",         s->redis.url, "--heartbeat-ms",
                           "100",  "--worker-ttl-ms", "1000",       NULL};
    add_args(argv, &n, fixed);
    add_args(argv, &n, extra_args);
    if (proc_start(&s->workers[i], (char *const *)argv, NULL, log) < 0)
        return -1;
    s->n_workers++;
    return i;
}

static int exit_code(int status)
{
    return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int stack_stop_api(struct stack *s, int sig)
{
    return exit_code(proc_stop(&s->api, sig, 10000));
}

int stack_stop_worker(struct stack *s, int i, int sig)
{
    return exit_code(proc_stop(&s->workers[i], sig, 10000));
}

void stack_stop(struct stack *s)
{
    for (int i = 0; i < s->n_workers; i++)
        proc_stop(&s->workers[i], SIGKILL, 5000);
    proc_stop(&s->api, SIGKILL, 5000);
    test_redis_destroy(&s->redis);
}

const char *stack_url(const struct stack *s, const char *path, char *out, size_t cap)
{
    snprintf(out, cap, "%s%s", s->base, path);
    return out;
}

int stack_wait_health(struct stack *s, long want_status, long timeout_ms)
{
    char url[128];
    stack_url(s, "/health", url, sizeof(url));
    int64_t deadline = clock_now_ms() + timeout_ms;
    do {
        struct http_response r;
        long got = -1;
        if (http_request("GET", url, NULL, NULL, 0, 2000, &r) == 0)
            got = r.status;
        http_response_fini(&r);
        if (got == want_status)
            return 0;
        clock_sleep_ms(50);
    } while (clock_now_ms() < deadline);
    return -1;
}

void stack_dump_logs(const struct stack *s)
{
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "tail -n 40 '%s' >&2", s->api_log);
    if (system(cmd) != 0)
        fprintf(stderr, "(no API log at %s)\n", s->api_log);
}
