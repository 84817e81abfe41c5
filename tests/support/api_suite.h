/*
 * api_suite: the cmocka fixtures the HTTP API's integration tests
 * (test_api.c, test_api_errors.c, test_api_stream.c) share: one stack for the
 * whole file (Redis, build/millrace-api, one fake worker) and, after each
 * test, the plain stack again, with the API's log on stderr when the test did
 * not run to its end.
 *
 * Key decision: the file's struct api_suite travels as cmocka's group state
 * (api_suite_group_setup stores it), so the per-test fixtures and API_TEST
 * reach it through `state` and the file keeps its `static struct stack S`
 * for the tests' requests.
 *
 * Not thread-safe: fixtures run on cmocka's (the main) thread.
 */
#pragma once

#include "tests/support/stack.h"

struct api_suite {
    struct stack *s;  /* borrowed: the file's stack */
    const char *name; /* the test program, for messages */
    int api_custom;   /* the API runs with a test's own flags */
    int finished;     /* set when a test's body returns: else its teardown shows logs */
};

/* A test whose teardown can tell whether it ran to its end. */
#define API_TEST(name)                                                                             \
    static void name##_body(void);                                                                 \
    static void name(void **state)                                                                 \
    {                                                                                              \
        name##_body();                                                                             \
        api_suite_finished(state);                                                                 \
    }                                                                                              \
    static void name##_body(void)

/*
 * Group setup: store t (borrowed, must outlive the run) in *state, ignore
 * SIGPIPE, and start Redis, the API and one worker, waiting until /health
 * answers 200. Returns 0, or -1 (a message on stderr, nothing left running)
 * when the programs are not built or do not start. Run from the repository
 * root.
 */
int api_suite_group_setup(void **state, struct api_suite *t);

/* Group teardown: stop the whole stack. Returns 0. */
int api_suite_group_teardown(void **state);

/* Per-test setup: the test has not finished yet. Returns 0. */
int api_suite_setup(void **state);

/*
 * Per-test teardown: show the API's log when the test did not finish, restart
 * Redis when a test stopped it, and restart the plain API when it is down or
 * runs with a test's own flags. Returns 0, or -1 when a restart fails.
 */
int api_suite_teardown(void **state);

/* Mark the test of `state` (the suite) as run to its end. */
void api_suite_finished(void **state);

/* Restart the API with these extra flags (NULL-terminated, borrowed); the
 * teardown restarts the plain one. Asserts that it starts. */
void api_suite_use_api(struct api_suite *t, const char *const *args);
