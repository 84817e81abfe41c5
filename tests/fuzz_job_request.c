/*
 * libFuzzer target for the job protocol (common/job.c, job_response.c,
 * jsonscan.c): any bytes go to job_request_parse. A rejected body must leave
 * a non-empty, valid UTF-8 message and field (the API puts both into a JSON
 * error); an accepted one must survive job_request_to_json and parse again to
 * an equal request. jsonscan_locate runs on every input at a few offsets, and
 * the bytes are also read as a response, which must survive its own round
 * trip. Any broken invariant aborts.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/job.h"
#include "common/job_response.h"
#include "common/jsonscan.h"

/* Whether s is NUL-terminated within cap bytes and valid UTF-8 (jansson
 * refuses anything else). */
static int valid_text(const char *s, size_t cap)
{
    json_t *j;

    if (!memchr(s, '\0', cap))
        return 0;
    j = json_string(s);
    json_decref(j);
    return j != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct job_limits lim = JOB_LIMITS_DEFAULT;
    const char *body = (const char *)data;
    struct job_request *a = NULL, *b = NULL;
    struct job_error err;
    struct job_unknown unk;
    char field[64], line[128];
    char *json = NULL;
    int rc;

    lim.max_text_bytes = 4096; // keep executions fast; the limits themselves are tested
    rc = job_request_parse(&a, body, size, &lim, &err, &unk);
    if (rc != 0) {
        if (rc != JOB_ERR_INVALID || a || !valid_text(err.field, sizeof err.field) ||
            !valid_text(err.message, sizeof err.message) || err.message[0] == '\0')
            abort();
    } else {
        if (!a || unk.n_names > JOB_UNKNOWN_MAX_NAMES || unk.n_names > unk.count)
            abort();
        for (size_t i = 0; i < unk.n_names; i++)
            if (!valid_text(unk.names[i], sizeof unk.names[i]))
                abort();
        job_unknown_format(&unk, line, sizeof line);
        if (!valid_text(line, sizeof line))
            abort();
        if (job_request_to_json(a, &json) != 0)
            abort();
        if (job_request_parse(&b, json, strlen(json), &lim, &err, NULL) != 0)
            abort();
        if (!job_request_equal(a, b))
            abort();
    }

    size_t offsets[] = {0, size / 3, size / 2, size > 0 ? size - 1 : 0, size};
    for (size_t i = 0; i < sizeof offsets / sizeof offsets[0]; i++) {
        int in_key = -1;
        int found = jsonscan_locate(body, size, offsets[i], field, sizeof field, &in_key);
        if (!valid_text(field, sizeof field) || (found != 0 && field[0] != '\0') ||
            (found == 0 ? in_key != 0 && in_key != 1 : in_key != -1))
            abort();
    }

    // the same bytes as a worker's response: what parses must serialise and read back
    struct job_response *ra = NULL, *rb = NULL;
    char *rjson = NULL;
    if (job_response_parse(&ra, body, size, &err) == 0) {
        if (job_response_to_json(ra, &rjson) != 0 ||
            job_response_parse(&rb, rjson, strlen(rjson), &err) != 0 ||
            rb->num_samples != ra->num_samples || rb->prompt_len != ra->prompt_len ||
            memcmp(rb->prompt, ra->prompt, ra->prompt_len) != 0)
            abort();
        for (size_t i = 0; i < ra->num_samples; i++)
            if (rb->samples[i].text_len != ra->samples[i].text_len ||
                memcmp(rb->samples[i].text, ra->samples[i].text, ra->samples[i].text_len) != 0 ||
                rb->samples[i].finish_reason != ra->samples[i].finish_reason)
                abort();
    } else if (!valid_text(err.message, sizeof err.message)) {
        abort();
    }

    free(rjson);
    job_response_destroy(ra);
    job_response_destroy(rb);
    free(json);
    job_request_destroy(a);
    job_request_destroy(b);
    return 0;
}
