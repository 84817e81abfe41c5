/*
 * fixture: the engine-level tests' shared helpers (see fixture.h).
 */
#include "tests/support/fixture.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

struct job_request *fixture_request(const char *json)
{
    struct job_request *r = NULL;
    struct job_error je;
    if (job_request_parse(&r, json, strlen(json), NULL, &je, NULL) != 0)
        fail_msg("bad request %s: [%s] %s", json, je.field, je.message);
    return r;
}

int fixture_oracle_present(void)
{
    if (access(FIXTURE_ORACLE_DIR "/synth-tiny-f32.json", R_OK) == 0)
        return 1;
    printf("skipped: %s not found (the reference outputs live in ../shared)\n", FIXTURE_ORACLE_DIR);
    return 0;
}
