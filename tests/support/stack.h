/*
 * stack: the whole millrace stack for an integration test.
 *
 * A private redis-server, build/millrace-api on a free loopback port, and
 * any number of build/tests/fake_worker processes (the test double for the
 * engine), all with short timers, all started from the calling (main)
 * thread and all stopped by stack_stop() or at exit. Logs go to files in the
 * stack's directory, shown on stderr when a test fails (stack_dump_logs).
 */
#pragma once

#include "tests/support/proc.h"
#include "tests/support/redis_server.h"

#define STACK_MAX_WORKERS 8

struct stack {
    struct test_redis redis;
    struct proc api;
    int api_port;
    char base[64]; /* http://127.0.0.1:<port> */
    struct proc workers[STACK_MAX_WORKERS];
    int n_workers;
    char api_log[300];
    int api_starts;
};

/* Whether the stack runs the sanitizer builds of the programs (because this
 * test program is one: build/asan/tests/...). Their memory use is not
 * comparable, and LeakSanitizer checks them for leaks at exit instead. */
int stack_sanitized(void);

/* Start redis only. Returns 0 or -1. */
int stack_start_redis(struct stack *s);

/*
 * Start millrace-api against the stack's redis with these extra arguments
 * (NULL-terminated, may be NULL), on a new free port unless one was used
 * before (a restart keeps the port). Waits until it accepts connections.
 * Returns 0 or -1.
 */
int stack_start_api(struct stack *s, const char *const *extra_args);

/* Start one fake worker with extra arguments (NULL-terminated, may be NULL).
 * Returns its index, or -1. */
int stack_start_worker(struct stack *s, const char *const *extra_args);

/* Stop the API with `sig` and return its exit status (as from waitpid's
 * WEXITSTATUS, or -1 when it had to be killed or died of a signal). */
int stack_stop_api(struct stack *s, int sig);

/* Stop worker i with SIGTERM (or kill it with SIGKILL). */
int stack_stop_worker(struct stack *s, int i, int sig);

/* Stop everything and remove the files. */
void stack_stop(struct stack *s);

/* Wait up to timeout_ms until GET /health answers `status`. Returns 0 or -1. */
int stack_wait_health(struct stack *s, long want_status, long timeout_ms);

/* "<base><path>" into out. */
const char *stack_url(const struct stack *s, const char *path, char *out, size_t cap);

/* Print the last lines of the API's log on stderr. */
void stack_dump_logs(const struct stack *s);
