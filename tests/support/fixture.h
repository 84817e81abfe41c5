/*
 * fixture: what the engine-level tests (test_engine.c, test_chat.c,
 * test_cuda.c, test_oracle.c) share: a job request from JSON text, and
 * whether ../shared holds the reference outputs.
 *
 * Key decision: each helper fails the running cmocka test itself, so a test
 * reads as what it does. Not thread-safe (cmocka's main thread only).
 */
#pragma once

#include "common/job.h"

/* Where the reference outputs of the forward pass live, seen from the
 * repository root. */
#define FIXTURE_ORACLE_DIR "../shared/oracle"

/* The request json (NUL-terminated, borrowed) describes, parsed (new: free
 * with job_request_destroy); fails the test with the parser's field and message
 * when it is not a valid request. */
struct job_request *fixture_request(const char *json);

/* 1 when FIXTURE_ORACLE_DIR holds the reference outputs; else 0, after
 * printing the "skipped:" line. */
int fixture_oracle_present(void);
