/*
 * api_suite: the fixtures of the HTTP API's integration tests (see
 * api_suite.h).
 */
#include "tests/support/api_suite.h"

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include <cmocka.h>

int api_suite_group_setup(void **state, struct api_suite *t)
{
    *state = t;
    signal(SIGPIPE, SIG_IGN);
    if (access("build/millrace-api", X_OK) != 0 || access("build/tests/fake_worker", X_OK) != 0) {
        fprintf(stderr,
                "%s: run from the repository root after "
                "make build/millrace-api build/tests/fake_worker\n",
                t->name);
        return -1;
    }
    struct stack *s = t->s;
    if (stack_start_redis(s) < 0 || stack_start_api(s, NULL) < 0 ||
        stack_start_worker(s, NULL) < 0 || stack_wait_health(s, 200, 5000) < 0) {
        stack_dump_logs(s);
        stack_stop(s);
        return -1;
    }
    return 0;
}

int api_suite_group_teardown(void **state)
{
    struct api_suite *t = *state;
    stack_stop(t->s);
    return 0;
}

int api_suite_setup(void **state)
{
    struct api_suite *t = *state;
    t->finished = 0;
    return 0;
}

int api_suite_teardown(void **state)
{
    struct api_suite *t = *state;
    struct stack *s = t->s;
    if (!t->finished) {
        fprintf(stderr, "---- API log (%s)\n", s->api_log);
        stack_dump_logs(s);
    }
    if (s->redis.pid == 0 && test_redis_restart(&s->redis) < 0)
        return -1;
    /* the next test starts from the plain API */
    if (s->api.pid <= 0 || t->api_custom) {
        if (s->api.pid > 0)
            stack_stop_api(s, SIGKILL);
        t->api_custom = 0;
        return stack_start_api(s, NULL);
    }
    return 0;
}

void api_suite_finished(void **state)
{
    struct api_suite *t = *state;
    t->finished = 1;
}

void api_suite_use_api(struct api_suite *t, const char *const *args)
{
    if (t->s->api.pid > 0)
        stack_stop_api(t->s, SIGKILL);
    t->api_custom = 1;
    assert_int_equal(stack_start_api(t->s, args), 0);
}
