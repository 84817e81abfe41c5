/*
 * job_response: the response half of the job protocol, what a worker hands
 * back for a finished job (the request half is job.h).
 *
 * The worker's result is a struct job_response, serialised with
 * job_response_to_json() in the shape of MK1 Flywheel's response and read
 * back with job_response_parse(). Names keep the protocol's job_ prefix;
 * errors are job.h's codes and struct job_error.
 *
 * Key decision: a sample's text and the prompt carry their length, so that
 * whatever the model produced (NULs included) survives the round trip, and
 * times are written with 16 significant digits so that microseconds do too.
 */
#pragma once

#include <stddef.h>

#include "common/job.h"

/* Why a sample ended. */
enum job_finish_reason {
    JOB_FINISH_LENGTH = 0, /* max_tokens reached */
    JOB_FINISH_EOS = 1,    /* an EOS token */
    JOB_FINISH_STOP = 2,   /* a stop string */
};

/* "length", "eos" or "stop" (static strings); NULL for any other value. */
const char *job_finish_reason_name(enum job_finish_reason reason);

/* Parse one of the names above into *out. Returns 0, or JOB_ERR_INVALID. */
int job_finish_reason_parse(const char *name, enum job_finish_reason *out);

struct job_sample {
    char *text; /* valid UTF-8, NUL-terminated; may hold NULs (text_len says) */
    size_t text_len;
    int generated_tokens; /* >= 0 */
    double finished;      /* Unix seconds */
    enum job_finish_reason finish_reason;
};

/*
 * A finished job. When built by the worker the pointers may be borrowed
 * (job_response_to_json only reads them); when it comes from
 * job_response_parse everything is new and owned, freed by
 * job_response_destroy.
 */
struct job_response {
    double created;  /* Unix seconds */
    double finished; /* Unix seconds */
    char *prompt;    /* valid UTF-8, NUL-terminated; may hold NULs (prompt_len says) */
    size_t prompt_len;
    int prompt_tokens;          /* >= 0 */
    struct job_sample *samples; /* num_samples of them */
    size_t num_samples;
};

/*
 * Serialise r (borrowed) as
 * {"created":..,"finished":..,"num_samples":N,"prompt":"..","prompt_tokens":N,
 *  "responses":[{"text":"..","generated_tokens":N,"finished":..,"finish_reason":"eos"}]}
 * in that key order, compact, times with 16 significant digits (microseconds).
 * out: receives a new NUL-terminated string (free with free()). Returns 0,
 * JOB_ERR_INVALID (a string is not valid UTF-8, a time is not finite, a count
 * is negative, a finish_reason is out of range) or JOB_ERR_NOMEM.
 * Thread-safe.
 */
int job_response_to_json(const struct job_response *r, char **out);

/*
 * Read a response written by job_response_to_json (unknown keys are ignored;
 * num_samples must equal the length of responses). out: receives a new
 * response (free with job_response_destroy), NULL on error. err: borrowed,
 * filled on error (may be NULL). Returns 0, JOB_ERR_INVALID or JOB_ERR_NOMEM.
 * Thread-safe.
 */
int job_response_parse(struct job_response **out, const char *json, size_t len,
                       struct job_error *err);

/* Free r, its prompt, its samples and their texts (all must come from malloc,
 * as job_response_parse makes them). NULL is a no-op. */
void job_response_destroy(struct job_response *r);
