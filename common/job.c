/*
 * job: parse and validate generation requests, serialise them as the queue
 * payload (see job.h); and the error helpers that job_response.c shares.
 *
 * Key decision: jansson does the parsing (JSON_REJECT_DUPLICATES, no NUL in
 * strings, UTF-8 checked), and this module turns each of its refusals into an
 * error that names the field: when jansson fails before a value exists (too
 * big an integer, bad UTF-8, "\u0000", a duplicate key, deep nesting), the
 * raw-text scanner of jsonscan.c finds the top-level member holding the byte
 * offset jansson reports. Every message is formatted into the caller's fixed
 * struct job_error; the error path allocates nothing of its own.
 */
#include "common/job.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/jsonscan.h"

/* ---- errors, shared with job_response.c (contracts in job.h) ---- */

int job_fail(struct job_error *err, const char *field, const char *fmt, ...)
{
    va_list ap;

    if (!err)
        return JOB_ERR_INVALID;
    jsonscan_copy_cut(err->field, sizeof err->field, field, strlen(field));
    va_start(ap, fmt);
    if (vsnprintf(err->message, sizeof err->message, fmt, ap) >= (int)sizeof err->message)
        jsonscan_utf8_trim(err->message);
    va_end(ap);
    jsonscan_utf8_sanitize(err->message);
    return JOB_ERR_INVALID;
}

int job_nomem(struct job_error *err)
{
    job_fail(err, "", "out of memory");
    return JOB_ERR_NOMEM;
}

char *job_dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);

    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* The shortest "%.Ng" that reads back as v, always with a '.' or an 'e' so
 * that it reads as a real ("5.0", not "5"). */
static const char *fmt_double(double v, char *buf, size_t cap)
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    if (isfinite(v) && !strpbrk(buf, ".e") && strlen(buf) + 3 <= cap)
        strcat(buf, ".0");
    return buf;
}

/* What a JSON value is, for "got ...": a number or boolean shows its value,
 * anything else its type. buf: at least 32 bytes. */
const char *job_describe(const json_t *v, char *buf, size_t cap)
{
    switch (json_typeof(v)) {
    case JSON_INTEGER:
        snprintf(buf, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    case JSON_REAL:
        return fmt_double(json_real_value(v), buf, cap);
    case JSON_TRUE:
        return "true";
    case JSON_FALSE:
        return "false";
    case JSON_NULL:
        return "null";
    case JSON_STRING:
        return "string";
    case JSON_ARRAY:
        return "array";
    case JSON_OBJECT:
        return "object";
    }
    return "unknown";
}

/* Turn jansson's refusal of body into err, naming a field where one holds
 * the offset jansson reports. */
int job_load_error(const char *body, size_t len, const json_error_t *je, struct job_error *err)
{
    enum json_error_code code = json_error_code(je);
    size_t pos = je->position > 0 ? (size_t)je->position : 0;
    char field[64] = "";
    int in_key = 0, found = 0;
    const char *what;

    if (code == json_error_out_of_memory)
        return job_nomem(err);
    if (code != json_error_premature_end_of_input && code != json_error_end_of_input_expected)
        found = jsonscan_locate(body, len, pos, field, sizeof field, &in_key) == 0;
    what = found ? field : "the body";
    switch (code) {
    case json_error_invalid_utf8:
        return job_fail(err, field, "%s must be valid UTF-8 (invalid byte at offset %zu)", what,
                        pos);
    case json_error_null_character:
        return job_fail(err, field, "%s must not contain \\u0000 (line %d, column %d)", what,
                        je->line, je->column);
    case json_error_numeric_overflow:
        return job_fail(err, field, "%s is out of range (a number too large to represent)", what);
    case json_error_duplicate_key:
        if (found && in_key)
            return job_fail(err, field, "duplicate key \"%s\": each field may appear only once",
                            field);
        return job_fail(err, field, "%s holds an object with a duplicate key (line %d, column %d)",
                        what, je->line, je->column);
    case json_error_stack_overflow:
        return job_fail(err, field, "%s is nested too deeply (at most %d levels)", what,
                        JSON_PARSER_MAX_DEPTH);
    default:
        return job_fail(err, field, "%s is not valid JSON: %s (line %d, column %d)", what, je->text,
                        je->line, je->column);
    }
}

/* ---- requests ---- */

struct job_limits job_limits_default(void)
{
    struct job_limits lim = JOB_LIMITS_DEFAULT;
    return lim;
}

static const char *const job_fields[] = {
    "text",        "max_tokens", "eos_token_ids", "max_input_tokens", "num_samples",       "stop",
    "temperature", "top_k",      "top_p",         "presence_penalty", "frequency_penalty", "seed",
    "stream",      "messages",
};

static const char *const job_roles[] = {"system", "user", "assistant"};

const char *job_role_name(enum job_role role)
{
    return (unsigned)role < 3 ? job_roles[role] : "unknown";
}

/* v (borrowed, not NULL or null) must be an integer in [min, max]. Below min,
 * or above max when max_note is NULL: "<label> must be <rule>, got <v>";
 * above max otherwise: "<label> must be at most <max> <max_note>, got <v>". */
static int want_int(struct job_error *err, const char *field, const char *label, const json_t *v,
                    const char *rule, long long min, long long max, const char *max_note,
                    long long *out)
{
    char buf[32];
    long long x;

    if (!json_is_integer(v))
        return job_fail(err, field, "%s must be %s, got %s", label, rule,
                        job_describe(v, buf, sizeof buf));
    x = json_integer_value(v);
    if (x < min || (x > max && !max_note))
        return job_fail(err, field, "%s must be %s, got %lld", label, rule, x);
    if (x > max)
        return job_fail(err, field, "%s must be at most %lld %s, got %lld", label, max, max_note,
                        x);
    *out = x;
    return 0;
}

/* v (borrowed, not NULL or null) must be a finite number (an integer counts)
 * with lo < v (lo_open) or lo <= v, and v <= hi. */
static int want_num(struct job_error *err, const char *field, const json_t *v, const char *rule,
                    double lo, int lo_open, double hi, double *out)
{
    char buf[32];
    double x;

    if (!json_is_number(v))
        return job_fail(err, field, "%s must be %s, got %s", field, rule,
                        job_describe(v, buf, sizeof buf));
    x = json_number_value(v);
    if (!isfinite(x) || (lo_open ? x <= lo : x < lo) || x > hi)
        return job_fail(err, field, "%s must be %s, got %s", field, rule,
                        job_describe(v, buf, sizeof buf));
    *out = x;
    return 0;
}

/* The value of an optional field, or NULL when absent or null. */
static const json_t *opt(const json_t *root, const char *key)
{
    const json_t *v = json_object_get(root, key);
    return json_is_null(v) ? NULL : v;
}

static int parse_text(struct job_request *r, const json_t *root, const struct job_limits *lim,
                      struct job_error *err)
{
    const json_t *v = json_object_get(root, "text");
    char buf[32];
    size_t n;

    if (!v)
        return job_fail(err, "text", "text is required (or messages, a chat)");
    if (json_is_null(v))
        return job_fail(err, "text", "text is required (or messages, a chat), got null");
    if (!json_is_string(v))
        return job_fail(err, "text", "text must be a string, got %s",
                        job_describe(v, buf, sizeof buf));
    n = json_string_length(v);
    if ((long long)n > lim->max_text_bytes)
        return job_fail(err, "text",
                        "text must be at most %lld bytes (the configured maximum), got %zu",
                        lim->max_text_bytes, n);
    if (memchr(json_string_value(v), '\0', n))
        return job_fail(err, "text", "text must not contain \\u0000");
    r->text = job_dup_n(json_string_value(v), n);
    if (!r->text)
        return job_nomem(err);
    r->text_len = n;
    return 0;
}

/* The role of messages[i] (v borrowed, an object) into *out. */
static int parse_role(const json_t *v, size_t i, enum job_role *out, struct job_error *err)
{
    const json_t *role = json_object_get(v, "role");
    char buf[32];

    if (json_is_string(role))
        for (int k = 0; k < 3; k++)
            if (strcmp(json_string_value(role), job_roles[k]) == 0) {
                *out = (enum job_role)k;
                return 0;
            }
    if (!role)
        return job_fail(err, "messages", "messages[%zu].role is required", i);
    if (json_is_string(role))
        return job_fail(err, "messages",
                        "messages[%zu].role must be \"system\", \"user\" or \"assistant\", "
                        "got \"%.32s\"",
                        i, json_string_value(role));
    return job_fail(err, "messages",
                    "messages[%zu].role must be \"system\", \"user\" or \"assistant\", got %s", i,
                    job_describe(role, buf, sizeof buf));
}

/* Whether messages[i] may have this role after prev (the role before it): a
 * system message only first, then user, assistant, user, ... */
static int check_turn(size_t i, enum job_role role, enum job_role prev, struct job_error *err)
{
    if (role == JOB_ROLE_SYSTEM && i > 0)
        return job_fail(err, "messages",
                        "messages[%zu] is a system message: only the first message may be one", i);
    if (role == JOB_ROLE_SYSTEM)
        return 0;
    enum job_role want = i == 0 || prev != JOB_ROLE_USER ? JOB_ROLE_USER : JOB_ROLE_ASSISTANT;
    if (role != want)
        return job_fail(err, "messages",
                        "messages[%zu].role must be \"%s\", got \"%s\": after an optional "
                        "system message, turns alternate user, assistant, user, ...",
                        i, job_roles[want], job_roles[role]);
    return 0;
}

/* messages: the chat that stands instead of text (see job.h). */
static int parse_messages(struct job_request *r, const json_t *v, const struct job_limits *lim,
                          struct job_error *err)
{
    enum job_role prev = JOB_ROLE_SYSTEM;
    size_t n, total = 0;
    char buf[32];
    int rc;

    if (!json_is_array(v))
        return job_fail(err, "messages",
                        "messages must be an array of {\"role\", \"content\"} objects, got %s",
                        job_describe(v, buf, sizeof buf));
    n = json_array_size(v);
    if (n == 0)
        return job_fail(err, "messages",
                        "messages must not be empty: the last one, from the "
                        "user, is what the model answers");
    r->messages = calloc(n, sizeof *r->messages);
    if (!r->messages)
        return job_nomem(err);
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(v, i), *content;
        struct job_message *out = &r->messages[i];
        size_t len;

        if (!json_is_object(m))
            return job_fail(err, "messages",
                            "messages[%zu] must be an object with role and content, got %s", i,
                            job_describe(m, buf, sizeof buf));
        rc = parse_role(m, i, &out->role, err);
        if (rc == 0)
            rc = check_turn(i, out->role, prev, err);
        if (rc < 0)
            return rc;
        prev = out->role;
        content = json_object_get(m, "content");
        if (!json_is_string(content))
            return job_fail(err, "messages", "messages[%zu].content must be a string, got %s", i,
                            content ? job_describe(content, buf, sizeof buf) : "nothing");
        len = json_string_length(content);
        total += len;
        if ((long long)total > lim->max_text_bytes)
            return job_fail(err, "messages",
                            "messages must hold at most %lld bytes of content (the configured "
                            "maximum), got more at messages[%zu]",
                            lim->max_text_bytes, i);
        if (memchr(json_string_value(content), '\0', len))
            return job_fail(err, "messages", "messages[%zu].content must not contain \\u0000", i);
        out->content = job_dup_n(json_string_value(content), len);
        if (!out->content)
            return job_nomem(err);
        out->content_len = len;
        r->n_messages = i + 1;
    }
    if (prev != JOB_ROLE_USER)
        return job_fail(err, "messages",
                        "the last message must be from the user (the model answers it), got "
                        "\"%s\"",
                        job_roles[prev]);
    return 0;
}

/* The prompt: text, or messages instead (exactly one of them). */
static int parse_prompt(struct job_request *r, const json_t *root, const struct job_limits *lim,
                        struct job_error *err)
{
    const json_t *m = opt(root, "messages");

    if (!m)
        return parse_text(r, root, lim, err);
    if (opt(root, "text"))
        return job_fail(err, "messages", "give either text or messages, not both");
    return parse_messages(r, m, lim, err);
}

static int parse_eos(struct job_request *r, const json_t *root, const struct job_limits *lim,
                     struct job_error *err)
{
    const json_t *v = opt(root, "eos_token_ids");
    char buf[32], label[48];
    size_t n;
    int rc;

    if (!v)
        return 0;
    if (!json_is_array(v))
        return job_fail(err, "eos_token_ids", "eos_token_ids must be an array of integers, got %s",
                        job_describe(v, buf, sizeof buf));
    n = json_array_size(v);
    if ((long long)n > lim->max_eos_ids)
        return job_fail(err, "eos_token_ids",
                        "eos_token_ids must have at most %lld entries (the configured maximum), "
                        "got %zu",
                        lim->max_eos_ids, n);
    if (n == 0)
        return 0;
    r->eos_token_ids = calloc(n, sizeof *r->eos_token_ids);
    if (!r->eos_token_ids)
        return job_nomem(err);
    for (size_t i = 0; i < n; i++) {
        long long id;
        snprintf(label, sizeof label, "eos_token_ids[%zu]", i);
        rc = want_int(err, "eos_token_ids", label, json_array_get(v, i),
                      "an integer in [0, 2147483647]", 0, INT_MAX, NULL, &id);
        if (rc < 0)
            return rc;
        r->eos_token_ids[i] = (int)id;
        r->n_eos_token_ids = i + 1;
    }
    return 0;
}

/* One stop string: v borrowed, label "stop" or "stop[i]". */
static int parse_stop_one(struct job_request *r, const json_t *v, const char *label,
                          const struct job_limits *lim, struct job_error *err)
{
    char buf[32];
    size_t n;

    if (!json_is_string(v))
        return job_fail(err, "stop", "%s must be a string, got %s", label,
                        job_describe(v, buf, sizeof buf));
    n = json_string_length(v);
    if (n == 0)
        return job_fail(err, "stop", "%s must not be empty", label);
    if ((long long)n > lim->max_stop_len)
        return job_fail(err, "stop",
                        "%s must be at most %lld bytes (the configured maximum), got %zu", label,
                        lim->max_stop_len, n);
    if (memchr(json_string_value(v), '\0', n))
        return job_fail(err, "stop", "%s must not contain \\u0000", label);
    r->stop[r->n_stop] = job_dup_n(json_string_value(v), n);
    if (!r->stop[r->n_stop])
        return job_nomem(err);
    r->n_stop++;
    return 0;
}

/* stop: an array of strings, or one string read as a one-element array. */
static int parse_stop(struct job_request *r, const json_t *root, const struct job_limits *lim,
                      struct job_error *err)
{
    const json_t *v = opt(root, "stop");
    char buf[32], label[32];
    size_t n;
    int rc;

    if (!v)
        return 0;
    if (!json_is_string(v) && !json_is_array(v))
        return job_fail(err, "stop", "stop must be a string or an array of strings, got %s",
                        job_describe(v, buf, sizeof buf));
    n = json_is_string(v) ? 1 : json_array_size(v);
    if ((long long)n > lim->max_stop)
        return job_fail(err, "stop",
                        "stop must have at most %lld entries (the configured maximum), got %zu",
                        lim->max_stop, n);
    if (n == 0)
        return 0;
    r->stop = calloc(n, sizeof *r->stop);
    if (!r->stop)
        return job_nomem(err);
    if (json_is_string(v))
        return parse_stop_one(r, v, "stop", lim, err);
    for (size_t i = 0; i < n; i++) {
        snprintf(label, sizeof label, "stop[%zu]", i);
        rc = parse_stop_one(r, json_array_get(v, i), label, lim, err);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static void collect_unknown(const json_t *root, struct job_unknown *unknown)
{
    size_t nf = sizeof job_fields / sizeof job_fields[0];

    for (void *it = json_object_iter((json_t *)root); it;
         it = json_object_iter_next((json_t *)root, it)) {
        const char *key = json_object_iter_key(it);
        size_t k = 0;

        while (k < nf && strcmp(key, job_fields[k]) != 0)
            k++;
        if (k < nf)
            continue;
        if (unknown->n_names < JOB_UNKNOWN_MAX_NAMES) {
            jsonscan_copy_cut(unknown->names[unknown->n_names], sizeof unknown->names[0], key,
                              strlen(key));
            unknown->n_names++;
        }
        unknown->count++;
    }
}

/* Optional int field `key` of root (borrowed): absent or null leaves *out as
 * it is; else as want_int. */
static int opt_int(struct job_error *err, const json_t *root, const char *key, const char *rule,
                   long long min, long long max, const char *max_note, int *out)
{
    const json_t *v = opt(root, key);
    long long x;
    int rc;

    if (!v)
        return 0;
    rc = want_int(err, key, key, v, rule, min, max, max_note, &x);
    if (rc == 0)
        *out = (int)x;
    return rc;
}

/* Optional number field `key` of root (borrowed): absent or null leaves *out
 * as it is; else as want_num. */
static int opt_num(struct job_error *err, const json_t *root, const char *key, const char *rule,
                   double lo, int lo_open, double hi, double *out)
{
    const json_t *v = opt(root, key);

    return v ? want_num(err, key, v, rule, lo, lo_open, hi, out) : 0;
}

/* Every field of a request object (borrowed) into r (defaults already set),
 * in the order of the contract: the first bad field is the one reported. */
static int parse_fields(struct job_request *r, const json_t *root, const struct job_limits *lim,
                        struct job_error *err)
{
    long long max_tokens = lim->max_tokens_limit < INT_MAX ? lim->max_tokens_limit : INT_MAX;
    long long max_samples = lim->max_num_samples < INT_MAX ? lim->max_num_samples : INT_MAX;
    const char *configured = "(the configured maximum)";
    const json_t *v;
    long long seed;
    int rc;

    rc = parse_prompt(r, root, lim, err);
    if (rc < 0)
        return rc;
    v = json_object_get(root, "max_tokens");
    if (!v || json_is_null(v))
        return job_fail(err, "max_tokens", "max_tokens is required%s", v ? ", got null" : "");
    rc = opt_int(err, root, "max_tokens", "an integer >= 1", 1, max_tokens, configured,
                 &r->max_tokens);
    if (rc == 0)
        rc = parse_eos(r, root, lim, err);
    if (rc == 0)
        rc = opt_int(err, root, "max_input_tokens", "an integer in [0, 2147483647] (0: no limit)",
                     0, INT_MAX, NULL, &r->max_input_tokens);
    if (rc == 0)
        rc = opt_int(err, root, "num_samples", "an integer >= 1", 1, max_samples, configured,
                     &r->num_samples);
    if (rc == 0)
        rc = parse_stop(r, root, lim, err);
    if (rc == 0)
        rc = opt_num(err, root, "temperature", "a number >= 0 (0: greedy)", 0, 0, INFINITY,
                     &r->temperature);
    if (rc == 0)
        rc = opt_int(err, root, "top_k", "an integer in [-2147483648, 2147483647] (<= 0 disables)",
                     INT_MIN, INT_MAX, NULL, &r->top_k);
    if (rc == 0)
        rc = opt_num(err, root, "top_p", "a number in (0, 1]", 0, 1, 1, &r->top_p);
    if (rc == 0)
        rc = opt_num(err, root, "presence_penalty", "a number in [-2, 2]", -2, 0, 2,
                     &r->presence_penalty);
    if (rc == 0)
        rc = opt_num(err, root, "frequency_penalty", "a number in [-2, 2]", -2, 0, 2,
                     &r->frequency_penalty);
    if (rc == 0 && (v = opt(root, "seed"))) {
        rc = want_int(err, "seed", "seed", v, "an integer >= 0", 0, LLONG_MAX, NULL, &seed);
        r->has_seed = rc == 0;
        r->seed = rc == 0 ? (uint64_t)seed : 0;
    }
    if (rc == 0 && (v = opt(root, "stream"))) {
        if (!json_is_boolean(v)) {
            char buf[64];
            return job_fail(err, "stream", "stream must be true or false, got %s",
                            job_describe(v, buf, sizeof buf));
        }
        r->stream = json_is_true(v);
    }
    return rc;
}

int job_request_parse(struct job_request **out, const char *body, size_t len,
                      const struct job_limits *lim, struct job_error *err,
                      struct job_unknown *unknown)
{
    struct job_limits def = JOB_LIMITS_DEFAULT;
    struct job_request *r = NULL;
    json_t *root = NULL;
    json_error_t je;
    char buf[32];
    int rc;

    *out = NULL;
    if (err)
        err->field[0] = err->message[0] = '\0';
    if (unknown)
        memset(unknown, 0, sizeof *unknown);
    if (!lim)
        lim = &def;
    if (!body) {
        body = "";
        len = 0;
    }

    root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!root)
        return job_load_error(body, len, &je, err);
    if (!json_is_object(root)) {
        rc = job_fail(err, "", "the body must be a JSON object, got %s",
                      job_describe(root, buf, sizeof buf));
        goto out;
    }
    if (unknown)
        collect_unknown(root, unknown);

    r = calloc(1, sizeof *r);
    if (!r) {
        rc = job_nomem(err);
        goto out;
    }
    r->num_samples = 1;
    r->temperature = 1.0;
    r->top_k = 50;
    r->top_p = 1.0;
    rc = parse_fields(r, root, lim, err);
    if (rc == 0) {
        *out = r;
        r = NULL;
    }
out:
    job_request_destroy(r);
    json_decref(root);
    return rc;
}

void job_request_destroy(struct job_request *r)
{
    if (!r)
        return;
    free(r->text);
    for (size_t i = 0; r->messages && i < r->n_messages; i++)
        free(r->messages[i].content);
    free(r->messages);
    free(r->eos_token_ids);
    if (r->stop) {
        for (size_t i = 0; i < r->n_stop; i++)
            free(r->stop[i]);
        free(r->stop);
    }
    free(r);
}

/* Whether the messages of r are what job_request_parse() accepts. */
static int messages_valid(const struct job_request *r)
{
    enum job_role prev = JOB_ROLE_SYSTEM;

    for (size_t i = 0; i < r->n_messages; i++) {
        const struct job_message *m = &r->messages[i];
        if ((unsigned)m->role > JOB_ROLE_ASSISTANT || !m->content ||
            memchr(m->content, '\0', m->content_len) ||
            !jsonscan_utf8_valid(m->content, m->content_len) || check_turn(i, m->role, prev, NULL))
            return 0;
        prev = m->role;
    }
    return prev == JOB_ROLE_USER;
}

/* [{"role": .., "content": ..}, ...] of r (new), or NULL when out of memory. */
static json_t *messages_to_json(const struct job_request *r)
{
    json_t *a = json_array();
    int bad = !a;

    for (size_t i = 0; !bad && i < r->n_messages; i++) {
        const struct job_message *m = &r->messages[i];
        json_t *o = json_object();
        bad |= !o || json_array_append_new(a, o);
        if (!bad) {
            bad |= json_object_set_new(o, "role", json_string(job_roles[m->role]));
            bad |= json_object_set_new(o, "content", json_stringn(m->content, m->content_len));
        }
    }
    if (bad) {
        json_decref(a);
        return NULL;
    }
    return a;
}

int job_request_to_json(const struct job_request *r, char **out)
{
    json_t *root = NULL, *eos = NULL, *stop = NULL;
    int bad = 0;

    *out = NULL;
    if (r->n_messages ? r->text || !r->messages || !messages_valid(r)
                      : !r->text || memchr(r->text, '\0', r->text_len) ||
                            !jsonscan_utf8_valid(r->text, r->text_len))
        return JOB_ERR_INVALID;
    if ((r->n_eos_token_ids && !r->eos_token_ids) || (r->n_stop && !r->stop) ||
        !isfinite(r->temperature) || !isfinite(r->top_p) || !isfinite(r->presence_penalty) ||
        !isfinite(r->frequency_penalty) || (r->has_seed && r->seed > (uint64_t)LLONG_MAX))
        return JOB_ERR_INVALID;
    for (size_t i = 0; i < r->n_stop; i++)
        if (!r->stop[i] || !jsonscan_utf8_valid(r->stop[i], strlen(r->stop[i])))
            return JOB_ERR_INVALID;

    root = json_object();
    eos = json_array();
    stop = json_array();
    if (!root || !eos || !stop) {
        bad = 1;
        goto out;
    }
    for (size_t i = 0; i < r->n_eos_token_ids; i++)
        bad |= json_array_append_new(eos, json_integer(r->eos_token_ids[i]));
    for (size_t i = 0; i < r->n_stop; i++)
        bad |= json_array_append_new(stop, json_string(r->stop[i]));
    if (r->n_messages)
        bad |= json_object_set_new(root, "messages", messages_to_json(r));
    else
        bad |= json_object_set_new(root, "text", json_stringn(r->text, r->text_len));
    bad |= json_object_set_new(root, "max_tokens", json_integer(r->max_tokens));
    bad |= json_object_set_new(root, "eos_token_ids", eos);
    bad |= json_object_set_new(root, "max_input_tokens", json_integer(r->max_input_tokens));
    bad |= json_object_set_new(root, "num_samples", json_integer(r->num_samples));
    bad |= json_object_set_new(root, "stop", stop);
    eos = stop = NULL; // taken by root, even on failure
    bad |= json_object_set_new(root, "temperature", json_real(r->temperature));
    bad |= json_object_set_new(root, "top_k", json_integer(r->top_k));
    bad |= json_object_set_new(root, "top_p", json_real(r->top_p));
    bad |= json_object_set_new(root, "presence_penalty", json_real(r->presence_penalty));
    bad |= json_object_set_new(root, "frequency_penalty", json_real(r->frequency_penalty));
    if (r->has_seed)
        bad |= json_object_set_new(root, "seed", json_integer((json_int_t)r->seed));
    if (r->stream)
        bad |= json_object_set_new(root, "stream", json_true());
    if (!bad)
        *out = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
out:
    json_decref(eos);
    json_decref(stop);
    json_decref(root);
    return *out ? 0 : JOB_ERR_NOMEM;
}

int job_request_equal(const struct job_request *a, const struct job_request *b)
{
    if (!a->text != !b->text || a->text_len != b->text_len ||
        (a->text && memcmp(a->text, b->text, a->text_len) != 0) || a->n_messages != b->n_messages ||
        a->max_tokens != b->max_tokens || a->n_eos_token_ids != b->n_eos_token_ids ||
        a->max_input_tokens != b->max_input_tokens || a->num_samples != b->num_samples ||
        a->n_stop != b->n_stop || a->temperature != b->temperature || a->top_k != b->top_k ||
        a->top_p != b->top_p || a->presence_penalty != b->presence_penalty ||
        a->frequency_penalty != b->frequency_penalty || a->has_seed != b->has_seed ||
        (a->has_seed && a->seed != b->seed) || a->stream != b->stream)
        return 0;
    for (size_t i = 0; i < a->n_messages; i++)
        if (a->messages[i].role != b->messages[i].role ||
            a->messages[i].content_len != b->messages[i].content_len ||
            memcmp(a->messages[i].content, b->messages[i].content, a->messages[i].content_len))
            return 0;
    for (size_t i = 0; i < a->n_eos_token_ids; i++)
        if (a->eos_token_ids[i] != b->eos_token_ids[i])
            return 0;
    for (size_t i = 0; i < a->n_stop; i++)
        if (strcmp(a->stop[i], b->stop[i]) != 0)
            return 0;
    return 1;
}

/* Append sep and s to buf[cap] holding n bytes; returns the new length. */
static size_t append(char *buf, size_t cap, size_t n, const char *sep, const char *s)
{
    jsonscan_copy_cut(buf + n, cap - n, sep, strlen(sep));
    n += strlen(buf + n);
    jsonscan_copy_cut(buf + n, cap - n, s, strlen(s));
    return n + strlen(buf + n);
}

void job_unknown_format(const struct job_unknown *u, char *buf, size_t cap)
{
    size_t n = 0;

    if (cap == 0)
        return;
    buf[0] = '\0';
    for (size_t i = 0; i < u->n_names && i < JOB_UNKNOWN_MAX_NAMES; i++)
        n = append(buf, cap, n, i ? ", " : "", u->names[i]);
    if (u->count > u->n_names)
        append(buf, cap, n, n ? ", " : "", "...");
}
