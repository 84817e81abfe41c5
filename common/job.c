/*
 * job: parse and validate generation requests, serialise requests and
 * responses (see job.h).
 *
 * Key decision: jansson does the parsing (JSON_REJECT_DUPLICATES, no NUL in
 * strings, UTF-8 checked), and this module turns each of its refusals into an
 * error that names the field: when jansson fails before a value exists (too
 * big an integer, bad UTF-8, "\u0000", a duplicate key, deep nesting), a
 * small tolerant scanner over the raw text (job_locate_field) finds the
 * top-level member holding the byte offset jansson reports. Every message is
 * formatted into the caller's fixed struct job_error; the error path
 * allocates nothing of its own.
 */
#include "common/job.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- UTF-8 and fixed buffers ---- */

/* Decode one UTF-8 sequence from s[0..n) into *cp. Returns its length, or 0
 * when it is not valid (truncated, overlong, a surrogate, above U+10FFFF). */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    uint32_t c;
    size_t k;

    if (n == 0)
        return 0;
    c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        k = 2;
        c &= 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        k = 3;
        c &= 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        k = 4;
        c &= 0x07;
    } else {
        return 0;
    }
    if (n < k)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if ((k == 3 && c < 0x800) || (k == 4 && (c < 0x10000 || c > 0x10FFFF)) ||
        (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return k;
}

/* Whether s[0..n) is valid UTF-8 (NUL bytes count as valid). */
static int utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    uint32_t cp;

    while (n > 0) {
        size_t k = utf8_next(p, n, &cp);
        if (k == 0)
            return 0;
        p += k;
        n -= k;
    }
    return 1;
}

/* Encode cp (a valid scalar value) into out; returns the length. */
static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    } else if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* s (NUL-terminated) was valid UTF-8 before it was cut at its end: drop a
 * sequence left incomplete there. */
static void utf8_trim(char *s)
{
    size_t n = strlen(s), lead = n, need;
    unsigned char c;

    while (lead > 0 && n - lead < 4 && ((unsigned char)s[lead - 1] & 0xC0) == 0x80)
        lead--;
    if (lead == 0)
        return;
    c = (unsigned char)s[lead - 1];
    need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (n - (lead - 1) < need)
        s[lead - 1] = '\0';
}

/* Copy src[0..n) (valid UTF-8, no NUL) into dst[cap], cut at a character
 * boundary when it does not fit. */
static void copy_cut(char *dst, size_t cap, const char *src, size_t n)
{
    size_t m;

    if (cap == 0)
        return;
    m = n < cap - 1 ? n : cap - 1;
    memcpy(dst, src, m);
    dst[m] = '\0';
    if (m < n)
        utf8_trim(dst);
}

/* Replace each byte of s (NUL-terminated) that does not start a valid UTF-8
 * sequence with '?'. jansson's messages quote the input near an error and
 * may cut a character there ("invalid escape near '"\u0<lead byte>'"). */
static void utf8_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    size_t n = strlen(s);
    uint32_t cp;

    while (n > 0) {
        size_t k = utf8_next(p, n, &cp);
        if (k == 0) {
            *p = '?';
            k = 1;
        }
        p += k;
        n -= k;
    }
}

/* Fill err (may be NULL) and return JOB_ERR_INVALID. The message is made
 * valid UTF-8 whatever the arguments hold. */
static int job_fail(struct job_error *err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int job_fail(struct job_error *err, const char *field, const char *fmt, ...)
{
    va_list ap;

    if (!err)
        return JOB_ERR_INVALID;
    copy_cut(err->field, sizeof err->field, field, strlen(field));
    va_start(ap, fmt);
    if (vsnprintf(err->message, sizeof err->message, fmt, ap) >= (int)sizeof err->message)
        utf8_trim(err->message);
    va_end(ap);
    utf8_sanitize(err->message);
    return JOB_ERR_INVALID;
}

static int job_nomem(struct job_error *err)
{
    job_fail(err, "", "out of memory");
    return JOB_ERR_NOMEM;
}

static char *dup_n(const char *s, size_t n)
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
static const char *describe(const json_t *v, char *buf, size_t cap)
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

/* ---- locating a field in raw JSON ---- */

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static size_t skip_ws(const char *s, size_t len, size_t i)
{
    while (i < len && is_ws(s[i]))
        i++;
    return i;
}

/* s[i] is '"': one past the closing quote, or len when there is none. */
static size_t scan_string(const char *s, size_t len, size_t i)
{
    for (i++; i < len; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return len;
}

/* One past the end of the value starting at s[i]: a string, a container up
 * to its matching close (counted, not recursed), or a scalar token up to the
 * next delimiter (possibly empty). */
static size_t scan_value(const char *s, size_t len, size_t i)
{
    size_t depth = 0;

    if (i >= len)
        return len;
    if (s[i] == '"')
        return scan_string(s, len, i);
    if (s[i] == '{' || s[i] == '[') {
        while (i < len) {
            char c = s[i];
            if (c == '"') {
                i = scan_string(s, len, i);
                continue;
            }
            if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                if (--depth == 0)
                    return i + 1;
            }
            i++;
        }
        return len;
    }
    while (i < len && !is_ws(s[i]) && !memchr(",:{}[]\"", s[i], 7))
        i++;
    return i;
}

static int hex4(const char *s, size_t len, size_t i, uint32_t *out)
{
    uint32_t v = 0;

    if (len < 4 || i > len - 4)
        return -1;
    for (size_t k = 0; k < 4; k++) {
        char c = s[i + k];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Decode the key whose opening quote is s[i] into out[cap] (cut at a
 * character boundary). -1 when it is not valid UTF-8, holds a NUL or a bad
 * escape. */
static int decode_key(const char *s, size_t len, size_t i, char *out, size_t cap)
{
    size_t n = 0;
    int full = cap == 0;

    for (i++; i < len && s[i] != '"';) {
        uint32_t cp, lo;
        char tmp[4];
        size_t k;

        if (s[i] == '\\') {
            if (i + 1 >= len)
                return -1;
            switch (s[i + 1]) {
            case '"':
            case '\\':
            case '/':
                cp = (unsigned char)s[i + 1];
                break;
            case 'b':
                cp = '\b';
                break;
            case 'f':
                cp = '\f';
                break;
            case 'n':
                cp = '\n';
                break;
            case 'r':
                cp = '\r';
                break;
            case 't':
                cp = '\t';
                break;
            case 'u':
                if (hex4(s, len, i + 2, &cp) < 0)
                    return -1;
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    return -1;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (i + 7 >= len || s[i + 6] != '\\' || s[i + 7] != 'u' ||
                        hex4(s, len, i + 8, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
                        return -1;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
                i += 4;
                break;
            default:
                return -1;
            }
            i += 2;
        } else {
            k = utf8_next((const unsigned char *)s + i, len - i, &cp);
            if (k == 0)
                return -1;
            i += k;
        }
        if (cp == 0)
            return -1;
        k = utf8_put(cp, tmp);
        if (!full && n + k < cap) {
            memcpy(out + n, tmp, k);
            n += k;
        } else {
            full = 1;
        }
    }
    if (cap > 0)
        out[n] = '\0';
    return 0;
}

/* job_locate_field, also saying whether offset lies in the key itself. */
static int locate(const char *s, size_t len, size_t offset, char *out, size_t cap, int *in_key)
{
    size_t i, key_start, key_end, value_end;

    if (cap > 0)
        out[0] = '\0';
    i = skip_ws(s, len, 0);
    if (i >= len || s[i] != '{')
        return -1;
    i++;
    for (;;) {
        i = skip_ws(s, len, i);
        if (i >= len || s[i] == '}')
            return -1;
        if (s[i] == ',') {
            i++;
            continue;
        }
        if (s[i] != '"')
            return -1; // not a key: too broken to tell
        key_start = i;
        key_end = scan_string(s, len, i);
        i = skip_ws(s, len, key_end);
        if (i < len && s[i] == ':')
            i = skip_ws(s, len, i + 1);
        value_end = scan_value(s, len, i);
        if (offset >= key_start && offset <= value_end) {
            *in_key = offset <= key_end;
            if (decode_key(s, len, key_start, out, cap) < 0) {
                if (cap > 0)
                    out[0] = '\0';
                return -1;
            }
            return 0;
        }
        i = value_end; // never stuck: an empty value is followed by ',' or a give-up
    }
}

int job_locate_field(const char *body, size_t len, size_t offset, char *field_out, size_t cap)
{
    int in_key;

    return locate(body ? body : "", body ? len : 0, offset, field_out, cap, &in_key);
}

/* Turn jansson's refusal of body into err, naming a field where one holds
 * the offset jansson reports. */
static int load_error(const char *body, size_t len, const json_error_t *je, struct job_error *err)
{
    enum json_error_code code = json_error_code(je);
    size_t pos = je->position > 0 ? (size_t)je->position : 0;
    char field[64] = "";
    int in_key = 0, found = 0;
    const char *what;

    if (code == json_error_out_of_memory)
        return job_nomem(err);
    if (code != json_error_premature_end_of_input && code != json_error_end_of_input_expected)
        found = locate(body, len, pos, field, sizeof field, &in_key) == 0;
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
};

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
                        describe(v, buf, sizeof buf));
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
                        describe(v, buf, sizeof buf));
    x = json_number_value(v);
    if (!isfinite(x) || (lo_open ? x <= lo : x < lo) || x > hi)
        return job_fail(err, field, "%s must be %s, got %s", field, rule,
                        describe(v, buf, sizeof buf));
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
        return job_fail(err, "text", "text is required");
    if (json_is_null(v))
        return job_fail(err, "text", "text is required, got null");
    if (!json_is_string(v))
        return job_fail(err, "text", "text must be a string, got %s", describe(v, buf, sizeof buf));
    n = json_string_length(v);
    if ((long long)n > lim->max_text_bytes)
        return job_fail(err, "text",
                        "text must be at most %lld bytes (the configured maximum), got %zu",
                        lim->max_text_bytes, n);
    if (memchr(json_string_value(v), '\0', n))
        return job_fail(err, "text", "text must not contain \\u0000");
    r->text = dup_n(json_string_value(v), n);
    if (!r->text)
        return job_nomem(err);
    r->text_len = n;
    return 0;
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
                        describe(v, buf, sizeof buf));
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
                        describe(v, buf, sizeof buf));
    n = json_string_length(v);
    if (n == 0)
        return job_fail(err, "stop", "%s must not be empty", label);
    if ((long long)n > lim->max_stop_len)
        return job_fail(err, "stop",
                        "%s must be at most %lld bytes (the configured maximum), got %zu", label,
                        lim->max_stop_len, n);
    if (memchr(json_string_value(v), '\0', n))
        return job_fail(err, "stop", "%s must not contain \\u0000", label);
    r->stop[r->n_stop] = dup_n(json_string_value(v), n);
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
                        describe(v, buf, sizeof buf));
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
            copy_cut(unknown->names[unknown->n_names], sizeof unknown->names[0], key, strlen(key));
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

    rc = parse_text(r, root, lim, err);
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
        return load_error(body, len, &je, err);
    if (!json_is_object(root)) {
        rc = job_fail(err, "", "the body must be a JSON object, got %s",
                      describe(root, buf, sizeof buf));
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
    free(r->eos_token_ids);
    if (r->stop) {
        for (size_t i = 0; i < r->n_stop; i++)
            free(r->stop[i]);
        free(r->stop);
    }
    free(r);
}

int job_request_to_json(const struct job_request *r, char **out)
{
    json_t *root = NULL, *eos = NULL, *stop = NULL;
    int bad = 0;

    *out = NULL;
    if (!r->text || memchr(r->text, '\0', r->text_len) || !utf8_valid(r->text, r->text_len) ||
        (r->n_eos_token_ids && !r->eos_token_ids) || (r->n_stop && !r->stop) ||
        !isfinite(r->temperature) || !isfinite(r->top_p) || !isfinite(r->presence_penalty) ||
        !isfinite(r->frequency_penalty) || (r->has_seed && r->seed > (uint64_t)LLONG_MAX))
        return JOB_ERR_INVALID;
    for (size_t i = 0; i < r->n_stop; i++)
        if (!r->stop[i] || !utf8_valid(r->stop[i], strlen(r->stop[i])))
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
    if (a->text_len != b->text_len || memcmp(a->text, b->text, a->text_len) != 0 ||
        a->max_tokens != b->max_tokens || a->n_eos_token_ids != b->n_eos_token_ids ||
        a->max_input_tokens != b->max_input_tokens || a->num_samples != b->num_samples ||
        a->n_stop != b->n_stop || a->temperature != b->temperature || a->top_k != b->top_k ||
        a->top_p != b->top_p || a->presence_penalty != b->presence_penalty ||
        a->frequency_penalty != b->frequency_penalty || a->has_seed != b->has_seed ||
        (a->has_seed && a->seed != b->seed))
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
    copy_cut(buf + n, cap - n, sep, strlen(sep));
    n += strlen(buf + n);
    copy_cut(buf + n, cap - n, s, strlen(s));
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

/* ---- responses ---- */

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
    if ((!r->prompt && r->prompt_len) || !utf8_valid(r->prompt, r->prompt_len) ||
        !isfinite(r->created) || !isfinite(r->finished) || r->prompt_tokens < 0 ||
        (r->num_samples && !r->samples) || r->num_samples > (size_t)LLONG_MAX)
        return JOB_ERR_INVALID;
    for (size_t i = 0; i < r->num_samples; i++) {
        const struct job_sample *s = &r->samples[i];
        if ((!s->text && s->text_len) || !utf8_valid(s->text, s->text_len) ||
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
        job_fail(err, field, "%s must be %s, got %s", label, rule, describe(v, buf, sizeof buf));
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
                        describe(o, buf, sizeof buf));
    if (!(v = need(o, "text", JSON_STRING, "responses", LABEL("text"), "a string", err)))
        return JOB_ERR_INVALID;
    s->text_len = json_string_length(v);
    if (!(s->text = dup_n(json_string_value(v), s->text_len)))
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
    r->prompt = dup_n(json_string_value(prompt), r->prompt_len);
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
        return load_error(json, len, &je, err);
    if (!json_is_object(root)) {
        rc = job_fail(err, "", "a response must be a JSON object, got %s",
                      describe(root, buf, sizeof buf));
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
