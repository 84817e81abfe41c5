/*
 * job_response: serialise and read back a finished job's response (see
 * job_response.h).
 *
 * Key decision: jansson in both directions. Writing checks every value first
 * (UTF-8, finite times, counts, finish reasons), so that what it writes
 * always reads back; reading accepts NULs inside strings (JSON_ALLOW_NUL,
 * kept with their lengths) and reports errors through job.c's helpers, so a
 * refused response names its field as a refused request does.
 */
#include "common/job_response.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/jsonscan.h"

/* ---- finish reasons ---- */

static const char *const job_finish_names[] = {"length", "eos", "stop"};

const char *job_finish_reason_name(enum job_finish_reason reason)
{
    if ((unsigned)reason >= sizeof job_finish_names / sizeof job_finish_names[0])
        return NULL;
    return job_finish_names[reason];
}

int job_finish_reason_parse(const char *name, enum job_finish_reason *out)
{
    for (unsigned i = 0; i < sizeof job_finish_names / sizeof job_finish_names[0]; i++) {
        if (strcmp(name, job_finish_names[i]) == 0) {
            *out = (enum job_finish_reason)i;
            return 0;
        }
    }
    return JOB_ERR_INVALID;
}

/* ---- writing ---- */

static json_t *sample_to_json(const struct job_sample *s)
{
    json_t *o = json_object();
    int bad = !o;

    if (bad)
        return NULL;
    bad |= json_object_set_new(o, "text", json_stringn(s->text ? s->text : "", s->text_len));
    bad |= json_object_set_new(o, "generated_tokens", json_integer(s->generated_tokens));
    bad |= json_object_set_new(o, "finished", json_real(s->finished));
    bad |= json_object_set_new(o, "finish_reason",
                               json_string(job_finish_reason_name(s->finish_reason)));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int job_response_to_json(const struct job_response *r, char **out)
{
    json_t *root = NULL, *arr = NULL;
    int bad = 0;

    *out = NULL;
    if ((!r->prompt && r->prompt_len) || !jsonscan_utf8_valid(r->prompt, r->prompt_len) ||
        !isfinite(r->created) || !isfinite(r->finished) || r->prompt_tokens < 0 ||
        (r->num_samples && !r->samples) || r->num_samples > (size_t)LLONG_MAX)
        return JOB_ERR_INVALID;
    for (size_t i = 0; i < r->num_samples; i++) {
        const struct job_sample *s = &r->samples[i];
        if ((!s->text && s->text_len) || !jsonscan_utf8_valid(s->text, s->text_len) ||
            s->generated_tokens < 0 || !isfinite(s->finished) ||
            !job_finish_reason_name(s->finish_reason))
            return JOB_ERR_INVALID;
    }

    root = json_object();
    arr = json_array();
    if (!root || !arr) {
        bad = 1;
        goto out;
    }
    for (size_t i = 0; i < r->num_samples; i++)
        bad |= json_array_append_new(arr, sample_to_json(&r->samples[i]));
    bad |= json_object_set_new(root, "created", json_real(r->created));
    bad |= json_object_set_new(root, "finished", json_real(r->finished));
    bad |= json_object_set_new(root, "num_samples", json_integer((json_int_t)r->num_samples));
    bad |= json_object_set_new(root, "prompt",
                               json_stringn(r->prompt ? r->prompt : "", r->prompt_len));
    bad |= json_object_set_new(root, "prompt_tokens", json_integer(r->prompt_tokens));
    bad |= json_object_set_new(root, "responses", arr);
    arr = NULL; // taken by root, even on failure
    if (!bad)
        *out = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(16));
out:
    json_decref(arr);
    json_decref(root);
    return *out ? 0 : JOB_ERR_NOMEM;
}

/* ---- reading ---- */

/* A required member of o (borrowed) with the given type, or an error naming
 * field and label. */
static const json_t *need(const json_t *o, const char *key, json_type type, const char *field,
                          const char *label, const char *rule, struct job_error *err)
{
    const json_t *v = json_object_get(o, key);
    char buf[32];

    if (v && (json_typeof(v) == type || (type == JSON_REAL && json_is_number(v))))
        return v;
    if (!v)
        job_fail(err, field, "%s is required", label);
    else
        job_fail(err, field, "%s must be %s, got %s", label, rule,
                 job_describe(v, buf, sizeof buf));
    return NULL;
}

static int count_value(const json_t *v, const char *field, const char *label, int *out,
                       struct job_error *err)
{
    long long x = json_integer_value(v);

    if (x < 0 || x > INT_MAX)
        return job_fail(err, field, "%s must be an integer in [0, 2147483647], got %lld", label, x);
    *out = (int)x;
    return 0;
}

static int sample_parse(struct job_sample *s, const json_t *o, size_t i, struct job_error *err)
{
    const json_t *v;
    char label[64], buf[32];
    int rc;

#define LABEL(key) (snprintf(label, sizeof label, "responses[%zu].%s", i, key), label)
    if (!json_is_object(o))
        return job_fail(err, "responses", "responses[%zu] must be an object, got %s", i,
                        job_describe(o, buf, sizeof buf));
    if (!(v = need(o, "text", JSON_STRING, "responses", LABEL("text"), "a string", err)))
        return JOB_ERR_INVALID;
    s->text_len = json_string_length(v);
    if (!(s->text = job_dup_n(json_string_value(v), s->text_len)))
        return job_nomem(err);
    if (!(v = need(o, "generated_tokens", JSON_INTEGER, "responses", LABEL("generated_tokens"),
                   "an integer", err)))
        return JOB_ERR_INVALID;
    if ((rc = count_value(v, "responses", label, &s->generated_tokens, err)) < 0)
        return rc;
    if (!(v = need(o, "finished", JSON_REAL, "responses", LABEL("finished"), "a number", err)))
        return JOB_ERR_INVALID;
    s->finished = json_number_value(v);
    if (!(v = need(o, "finish_reason", JSON_STRING, "responses", LABEL("finish_reason"), "a string",
                   err)))
        return JOB_ERR_INVALID;
    if (job_finish_reason_parse(json_string_value(v), &s->finish_reason) < 0)
        return job_fail(err, "responses", "%s must be \"length\", \"eos\" or \"stop\"", label);
#undef LABEL
    return 0;
}

/* The members of a response object (borrowed) into r (zeroed). */
static int response_fields(struct job_response *r, const json_t *root, struct job_error *err)
{
    const json_t *created, *finished, *num, *prompt, *tokens, *arr;
    size_t n;
    int rc;

    if (!(created = need(root, "created", JSON_REAL, "created", "created", "a number", err)) ||
        !(finished = need(root, "finished", JSON_REAL, "finished", "finished", "a number", err)) ||
        !(num = need(root, "num_samples", JSON_INTEGER, "num_samples", "num_samples", "an integer",
                     err)) ||
        !(prompt = need(root, "prompt", JSON_STRING, "prompt", "prompt", "a string", err)) ||
        !(tokens = need(root, "prompt_tokens", JSON_INTEGER, "prompt_tokens", "prompt_tokens",
                        "an integer", err)) ||
        !(arr = need(root, "responses", JSON_ARRAY, "responses", "responses", "an array", err)))
        return JOB_ERR_INVALID;
    r->created = json_number_value(created);
    r->finished = json_number_value(finished);
    rc = count_value(tokens, "prompt_tokens", "prompt_tokens", &r->prompt_tokens, err);
    if (rc < 0)
        return rc;
    n = json_array_size(arr);
    if (json_integer_value(num) != (json_int_t)n)
        return job_fail(err, "num_samples",
                        "num_samples must equal the number of responses (%zu), got %lld", n,
                        (long long)json_integer_value(num));
    r->prompt_len = json_string_length(prompt);
    r->prompt = job_dup_n(json_string_value(prompt), r->prompt_len);
    if (!r->prompt)
        return job_nomem(err);
    if (n > 0 && !(r->samples = calloc(n, sizeof *r->samples)))
        return job_nomem(err);
    for (size_t i = 0; i < n; i++) {
        r->num_samples = i + 1; // so that destroy frees what is filled
        rc = sample_parse(&r->samples[i], json_array_get(arr, i), i, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int job_response_parse(struct job_response **out, const char *json, size_t len,
                       struct job_error *err)
{
    struct job_response *r = NULL;
    json_t *root;
    json_error_t je;
    char buf[32];
    int rc;

    *out = NULL;
    if (err)
        err->field[0] = err->message[0] = '\0';
    if (!json) {
        json = "";
        len = 0;
    }
    root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!root)
        return job_load_error(json, len, &je, err);
    if (!json_is_object(root)) {
        rc = job_fail(err, "", "a response must be a JSON object, got %s",
                      job_describe(root, buf, sizeof buf));
        goto out;
    }
    r = calloc(1, sizeof *r);
    if (!r) {
        rc = job_nomem(err);
        goto out;
    }
    rc = response_fields(r, root, err);
    if (rc == 0) {
        *out = r;
        r = NULL;
    }
out:
    job_response_destroy(r);
    json_decref(root);
    return rc;
}

void job_response_destroy(struct job_response *r)
{
    if (!r)
        return;
    free(r->prompt);
    for (size_t i = 0; i < r->num_samples; i++)
        free(r->samples[i].text);
    free(r->samples);
    free(r);
}
