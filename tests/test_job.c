/*
 * Tests for common/job.c: one test per validation rule, each checking the
 * field the error names and what its message says; the queue payload and the
 * response round trips; bodies jansson refuses (bad UTF-8, huge numbers,
 * duplicates, deep nesting) and the scanner that names their field.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "common/job.h"

/* ---- helpers ---- */

static int parse_lim(const char *body, size_t len, const struct job_limits *lim,
                     struct job_request **r, struct job_error *err, struct job_unknown *unk)
{
    memset(err, 0x55, sizeof *err); // the parser must overwrite both strings
    return job_request_parse(r, body, len, lim, err, unk);
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle))
        fail_msg("\"%s\" does not contain \"%s\"", haystack, needle);
}

/* body must be rejected with JOB_ERR_INVALID, naming field, the message
 * containing each of the (NULL-terminated) parts. */
static void expect_error_n(const char *body, size_t len, const struct job_limits *lim,
                           const char *field, ...)
{
    struct job_request *r = (struct job_request *)1;
    struct job_error err;
    const char *part;
    va_list ap;

    assert_int_equal(parse_lim(body, len, lim, &r, &err, NULL), JOB_ERR_INVALID);
    assert_null(r);
    assert_string_equal(err.field, field);
    assert_true(strlen(err.message) > 0);
    va_start(ap, field);
    while ((part = va_arg(ap, const char *)))
        assert_contains(err.message, part);
    va_end(ap);
}

#define expect_error(body, field, ...)                                                             \
    expect_error_n(body, strlen(body), NULL, field, __VA_ARGS__, (const char *)NULL)
#define expect_error_lim(body, lim, field, ...)                                                    \
    expect_error_n(body, strlen(body), lim, field, __VA_ARGS__, (const char *)NULL)

/* body must parse; the caller destroys the result. */
static struct job_request *expect_ok(const char *body)
{
    struct job_request *r = NULL;
    struct job_error err;
    int rc = parse_lim(body, strlen(body), NULL, &r, &err, NULL);

    if (rc != 0)
        fail_msg("rejected %s: [%s] %s", body, err.field, err.message);
    assert_non_null(r);
    return r;
}

/* ---- defaults and the happy path ---- */

static void test_defaults_applied(void **state)
{
    (void)state;
    struct job_request *r = expect_ok("{\"text\": \"hi\", \"max_tokens\": 5}");

    assert_string_equal(r->text, "hi");
    assert_int_equal(r->text_len, 2);
    assert_int_equal(r->max_tokens, 5);
    assert_int_equal(r->n_eos_token_ids, 0);
    assert_null(r->eos_token_ids);
    assert_int_equal(r->max_input_tokens, 0);
    assert_int_equal(r->num_samples, 1);
    assert_int_equal(r->n_stop, 0);
    assert_null(r->stop);
    assert_true(r->temperature == 1.0);
    assert_int_equal(r->top_k, 50);
    assert_true(r->top_p == 1.0);
    assert_true(r->presence_penalty == 0.0);
    assert_true(r->frequency_penalty == 0.0);
    assert_false(r->has_seed);
    job_request_destroy(r);
}

static void test_all_fields_parsed(void **state)
{
    (void)state;
    struct job_request *r = expect_ok(
        "{\"text\": \"Once upon\", \"max_tokens\": 100, \"eos_token_ids\": [2, 0, 32000],"
        " \"max_input_tokens\": 4096, \"num_samples\": 4, \"stop\": [\"\\n\\n\", \"END\"],"
        " \"temperature\": 0.7, \"top_k\": 40, \"top_p\": 0.9, \"presence_penalty\": -0.5,"
        " \"frequency_penalty\": 1.25, \"seed\": 1234}");

    assert_string_equal(r->text, "Once upon");
    assert_int_equal(r->max_tokens, 100);
    assert_int_equal(r->n_eos_token_ids, 3);
    assert_int_equal(r->eos_token_ids[0], 2);
    assert_int_equal(r->eos_token_ids[1], 0);
    assert_int_equal(r->eos_token_ids[2], 32000);
    assert_int_equal(r->max_input_tokens, 4096);
    assert_int_equal(r->num_samples, 4);
    assert_int_equal(r->n_stop, 2);
    assert_string_equal(r->stop[0], "\n\n");
    assert_string_equal(r->stop[1], "END");
    assert_true(r->temperature == 0.7);
    assert_int_equal(r->top_k, 40);
    assert_true(r->top_p == 0.9);
    assert_true(r->presence_penalty == -0.5);
    assert_true(r->frequency_penalty == 1.25);
    assert_true(r->has_seed);
    assert_int_equal(r->seed, 1234);
    job_request_destroy(r);
}

static void test_null_means_default(void **state)
{
    (void)state;
    struct job_request *r = expect_ok(
        "{\"text\": \"x\", \"max_tokens\": 1, \"eos_token_ids\": null, \"max_input_tokens\": null,"
        " \"num_samples\": null, \"stop\": null, \"temperature\": null, \"top_k\": null,"
        " \"top_p\": null, \"presence_penalty\": null, \"frequency_penalty\": null,"
        " \"seed\": null}");

    assert_int_equal(r->n_eos_token_ids, 0);
    assert_int_equal(r->max_input_tokens, 0);
    assert_int_equal(r->num_samples, 1);
    assert_int_equal(r->n_stop, 0);
    assert_true(r->temperature == 1.0);
    assert_int_equal(r->top_k, 50);
    assert_true(r->top_p == 1.0);
    assert_true(r->presence_penalty == 0.0);
    assert_true(r->frequency_penalty == 0.0);
    assert_false(r->has_seed);
    job_request_destroy(r);
}

static void test_null_limits_mean_defaults(void **state)
{
    (void)state;
    struct job_limits def = job_limits_default();

    assert_int_equal(def.max_num_samples, 16);
    assert_int_equal(def.max_tokens_limit, 32768);
    assert_int_equal(def.max_stop, 16);
    assert_int_equal(def.max_stop_len, 256);
    assert_int_equal(def.max_eos_ids, 64);
    assert_int_equal(def.max_text_bytes, 1048576);
    expect_error("{\"text\": \"\", \"max_tokens\": 32769}", "max_tokens", "at most 32768");
}

/* ---- text ---- */

static void test_missing_text_names_text(void **state)
{
    (void)state;
    expect_error("{\"max_tokens\": 5}", "text", "text is required");
}

static void test_null_text_names_text(void **state)
{
    (void)state;
    expect_error("{\"text\": null, \"max_tokens\": 5}", "text", "text is required", "null");
}

static void test_empty_text_allowed(void **state)
{
    (void)state;
    struct job_request *r = expect_ok("{\"text\": \"\", \"max_tokens\": 5}");

    assert_string_equal(r->text, "");
    assert_int_equal(r->text_len, 0);
    job_request_destroy(r);
}

static void test_text_above_max_bytes_rejected(void **state)
{
    (void)state;
    struct job_limits lim = JOB_LIMITS_DEFAULT;
    struct job_request *r = NULL;
    struct job_error err;

    lim.max_text_bytes = 4;
    // "héllo" is 6 bytes of UTF-8; the limit counts bytes, not characters
    expect_error_lim("{\"text\": \"h\xc3\xa9llo\", \"max_tokens\": 5}", &lim, "text",
                     "at most 4 bytes (the configured maximum)", "got 6");
    const char *ok = "{\"text\": \"h\xc3\xa9l\", \"max_tokens\": 5}";
    assert_int_equal(parse_lim(ok, strlen(ok), &lim, &r, &err, NULL), 0);
    assert_int_equal(r->text_len, 4);
    job_request_destroy(r);
}

static void test_nul_escape_in_text_names_text(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\\u0000b\", \"max_tokens\": 5}", "text",
                 "text must not contain \\u0000");
}

static void test_invalid_utf8_in_text_names_text(void **state)
{
    (void)state;
    expect_error("{\"text\": \"\xff\", \"max_tokens\": 5}", "text",
                 "text must be valid UTF-8 (invalid byte at offset 10)");
    // a lead byte followed by a non-continuation byte
    expect_error("{\"max_tokens\": 5, \"text\": \"ab\xc3\x28\"}", "text", "must be valid UTF-8",
                 "offset 29");
    // an overlong encoding of '/'
    expect_error("{\"text\": \"\xc0\xaf\", \"max_tokens\": 5}", "text", "must be valid UTF-8");
}

static void test_invalid_utf8_in_key_names_no_field(void **state)
{
    (void)state;
    expect_error("{\"te\xffxt\": \"a\", \"max_tokens\": 5}", "", "the body must be valid UTF-8",
                 "offset 4");
}

static void test_lone_surrogate_in_text_names_text(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\\ud800b\", \"max_tokens\": 5}", "text", "text is not valid JSON",
                 "invalid Unicode");
}

static void test_raw_newline_in_text_names_text(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\nb\", \"max_tokens\": 5}", "text", "text is not valid JSON",
                 "line 1");
}

static void test_quoted_input_in_message_stays_valid_utf8(void **state)
{
    (void)state;
    // jansson quotes the input near an error and cuts this 2-byte character in half
    const char *body = "{\"text\": \"\\u0\xd0\x8b\", \"max_tokens\": 5}";
    struct job_request *r = NULL;
    struct job_error err;
    json_t *j;

    assert_int_equal(parse_lim(body, strlen(body), NULL, &r, &err, NULL), JOB_ERR_INVALID);
    assert_string_equal(err.field, "text");
    assert_contains(err.message, "invalid escape");
    j = json_string(err.message); // NULL unless valid UTF-8
    assert_non_null(j);
    json_decref(j);
}

/* ---- max_tokens ---- */

static void test_missing_max_tokens_names_max_tokens(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\"}", "max_tokens", "max_tokens is required");
    expect_error("{\"text\": \"a\", \"max_tokens\": null}", "max_tokens", "max_tokens is required");
}

static void test_max_tokens_zero_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 0}", "max_tokens",
                 "max_tokens must be an integer >= 1, got 0");
}

static void test_max_tokens_above_limit_rejected(void **state)
{
    (void)state;
    struct job_limits lim = JOB_LIMITS_DEFAULT;

    lim.max_tokens_limit = 100;
    expect_error_lim("{\"text\": \"a\", \"max_tokens\": 101}", &lim, "max_tokens",
                     "max_tokens must be at most 100 (the configured maximum), got 101");
}

static void test_max_tokens_real_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5.0}", "max_tokens",
                 "must be an integer >= 1, got 5.0");
    expect_error("{\"text\": \"a\", \"max_tokens\": 2.5}", "max_tokens", "got 2.5");
}

static void test_huge_integer_names_field(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 99999999999999999999999}", "max_tokens",
                 "max_tokens is out of range");
    expect_error("{\"max_tokens\": 99999999999999999999999, \"text\": \"a\"}", "max_tokens",
                 "max_tokens is out of range");
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"seed\": -99999999999999999999999}", "seed",
                 "seed is out of range");
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"eos_token_ids\": [1, 1e99999]}",
                 "eos_token_ids", "eos_token_ids is out of range");
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"temperature\": 1e400}", "temperature",
                 "temperature is out of range");
}

/* ---- eos_token_ids ---- */

static void test_eos_ids_non_integer_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"eos_token_ids\": [1, 2, 2.5]}",
                 "eos_token_ids", "eos_token_ids[2] must be an integer", "got 2.5");
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"eos_token_ids\": [\"3\"]}",
                 "eos_token_ids", "eos_token_ids[0] must be an integer", "got string");
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"eos_token_ids\": [0, true]}",
                 "eos_token_ids", "eos_token_ids[1] must be an integer", "got true");
}

static void test_eos_ids_negative_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"eos_token_ids\": [-1]}", "eos_token_ids",
                 "eos_token_ids[0] must be an integer in [0, 2147483647], got -1");
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"eos_token_ids\": [2147483648]}",
                 "eos_token_ids", "got 2147483648");
}

static void test_eos_ids_above_max_count_rejected(void **state)
{
    (void)state;
    struct job_limits lim = JOB_LIMITS_DEFAULT;

    lim.max_eos_ids = 2;
    expect_error_lim("{\"text\": \"a\", \"max_tokens\": 5, \"eos_token_ids\": [1, 2, 3]}", &lim,
                     "eos_token_ids", "at most 2 entries (the configured maximum), got 3");
}

/* ---- max_input_tokens, num_samples ---- */

static void test_negative_max_input_tokens_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"max_input_tokens\": -1}",
                 "max_input_tokens", "max_input_tokens must be an integer in [0, 2147483647]",
                 "got -1");
}

static void test_num_samples_zero_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"num_samples\": 0}", "num_samples",
                 "num_samples must be an integer >= 1, got 0");
}

static void test_num_samples_above_max_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"num_samples\": 40}", "num_samples",
                 "num_samples must be at most 16 (the configured maximum), got 40");
}

/* ---- stop ---- */

static void test_stop_single_string_is_one_element_list(void **state)
{
    (void)state;
    struct job_request *r = expect_ok("{\"text\": \"a\", \"max_tokens\": 5, \"stop\": \"\\n\"}");

    assert_int_equal(r->n_stop, 1);
    assert_string_equal(r->stop[0], "\n");
    job_request_destroy(r);
}

static void test_stop_empty_string_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"stop\": [\"x\", \"\"]}", "stop",
                 "stop[1] must not be empty");
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"stop\": \"\"}", "stop",
                 "stop must not be empty");
}

static void test_stop_too_long_rejected(void **state)
{
    (void)state;
    struct job_limits lim = JOB_LIMITS_DEFAULT;

    lim.max_stop_len = 3;
    expect_error_lim("{\"text\": \"a\", \"max_tokens\": 5, \"stop\": [\"abc\", \"abcd\"]}", &lim,
                     "stop", "stop[1] must be at most 3 bytes (the configured maximum), got 4");
}

static void test_stop_too_many_rejected(void **state)
{
    (void)state;
    struct job_limits lim = JOB_LIMITS_DEFAULT;

    lim.max_stop = 1;
    expect_error_lim("{\"text\": \"a\", \"max_tokens\": 5, \"stop\": [\"a\", \"b\"]}", &lim, "stop",
                     "stop must have at most 1 entries (the configured maximum), got 2");
}

static void test_stop_non_string_element_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"stop\": [\"a\", 7]}", "stop",
                 "stop[1] must be a string, got 7");
}

/* ---- sampling numbers ---- */

static void test_negative_temperature_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"temperature\": -0.1}", "temperature",
                 "temperature must be a number >= 0 (0: greedy), got -0.1");
}

static void test_temperature_zero_and_integers_accepted(void **state)
{
    (void)state;
    struct job_request *r = expect_ok("{\"text\": \"a\", \"max_tokens\": 5, \"temperature\": 0,"
                                      " \"top_p\": 1, \"presence_penalty\": -2,"
                                      " \"frequency_penalty\": 2}");

    assert_true(r->temperature == 0.0);
    assert_true(r->top_p == 1.0);
    assert_true(r->presence_penalty == -2.0);
    assert_true(r->frequency_penalty == 2.0);
    job_request_destroy(r);
}

static void test_top_k_zero_or_negative_accepted(void **state)
{
    (void)state;
    struct job_request *r = expect_ok("{\"text\": \"a\", \"max_tokens\": 5, \"top_k\": -1}");

    assert_int_equal(r->top_k, -1);
    job_request_destroy(r);
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"top_k\": 1.5}", "top_k",
                 "top_k must be an integer", "(<= 0 disables)", "got 1.5");
}

static void test_top_p_zero_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"top_p\": 0}", "top_p",
                 "top_p must be a number in (0, 1], got 0");
}

static void test_top_p_above_one_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"top_p\": 1.5}", "top_p",
                 "top_p must be a number in (0, 1], got 1.5");
}

static void test_presence_penalty_out_of_range_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"presence_penalty\": 2.01}",
                 "presence_penalty", "presence_penalty must be a number in [-2, 2], got 2.01");
}

static void test_frequency_penalty_out_of_range_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"frequency_penalty\": -3}",
                 "frequency_penalty", "frequency_penalty must be a number in [-2, 2], got -3");
}

static void test_negative_seed_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"seed\": -1}", "seed",
                 "seed must be an integer >= 0, got -1");
}

static void test_largest_seed_accepted(void **state)
{
    (void)state;
    struct job_request *r =
        expect_ok("{\"text\": \"a\", \"max_tokens\": 5, \"seed\": 9223372036854775807}");

    assert_true(r->has_seed);
    assert_true(r->seed == 9223372036854775807ULL);
    job_request_destroy(r);
}

/* ---- types ---- */

static void test_wrong_type_for_each_field(void **state)
{
    (void)state;
    static const struct {
        const char *field, *value, *message;
    } cases[] = {
        {"text", "5", "text must be a string, got 5"},
        {"text", "[\"a\"]", "text must be a string, got array"},
        {"max_tokens", "\"5\"", "max_tokens must be an integer >= 1, got string"},
        {"max_tokens", "true", "max_tokens must be an integer >= 1, got true"},
        {"eos_token_ids", "2", "eos_token_ids must be an array of integers, got 2"},
        {"eos_token_ids", "{}", "eos_token_ids must be an array of integers, got object"},
        {"max_input_tokens", "\"0\"", "max_input_tokens must be an integer in"},
        {"num_samples", "[1]", "num_samples must be an integer >= 1, got array"},
        {"stop", "5", "stop must be a string or an array of strings, got 5"},
        {"stop", "{\"a\": 1}", "stop must be a string or an array of strings, got object"},
        {"temperature", "\"hot\"", "temperature must be a number >= 0 (0: greedy), got string"},
        {"temperature", "false", "temperature must be a number >= 0 (0: greedy), got false"},
        {"top_k", "\"50\"", "top_k must be an integer in"},
        {"top_p", "[]", "top_p must be a number in (0, 1], got array"},
        {"presence_penalty", "\"0\"", "presence_penalty must be a number in [-2, 2], got string"},
        {"frequency_penalty", "{}", "frequency_penalty must be a number in [-2, 2], got object"},
        {"seed", "1.5", "seed must be an integer >= 0, got 1.5"},
        {"seed", "\"7\"", "seed must be an integer >= 0, got string"},
    };
    char body[256];

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (strcmp(cases[i].field, "text") == 0)
            snprintf(body, sizeof body, "{\"text\": %s, \"max_tokens\": 5}", cases[i].value);
        else if (strcmp(cases[i].field, "max_tokens") == 0)
            snprintf(body, sizeof body, "{\"text\": \"a\", \"max_tokens\": %s}", cases[i].value);
        else
            snprintf(body, sizeof body, "{\"text\": \"a\", \"max_tokens\": 5, \"%s\": %s}",
                     cases[i].field, cases[i].value);
        expect_error(body, cases[i].field, cases[i].message);
    }
}

/* ---- keys ---- */

static void test_duplicate_key_names_field(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"max_tokens\": 6}", "max_tokens",
                 "duplicate key \"max_tokens\"");
    expect_error("{\"text\": \"a\", \"te\\u0078t\": \"b\", \"max_tokens\": 5}", "text",
                 "duplicate key \"text\"");
}

static void test_duplicate_key_in_nested_object_names_member(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"meta\": {\"k\": 1, \"k\": 2}}", "meta",
                 "meta holds an object with a duplicate key");
}

static void test_unknown_fields_counted(void **state)
{
    (void)state;
    const char *body = "{\"text\": \"a\", \"foo\": 1, \"max_tokens\": 5, \"bar\": {\"x\": [1]},"
                       " \"u1\": 0, \"u2\": 0, \"u3\": 0, \"u4\": 0, \"u5\": 0, \"u6\": 0,"
                       " \"u7\": 0}";
    struct job_request *r = NULL;
    struct job_error err;
    struct job_unknown unk;
    char line[128];

    assert_int_equal(parse_lim(body, strlen(body), NULL, &r, &err, &unk), 0);
    assert_int_equal(unk.count, 9);
    assert_int_equal(unk.n_names, 8);
    assert_string_equal(unk.names[0], "foo");
    assert_string_equal(unk.names[1], "bar");
    assert_string_equal(unk.names[7], "u6");
    job_unknown_format(&unk, line, sizeof line);
    assert_string_equal(line, "foo, bar, u1, u2, u3, u4, u5, u6, ...");
    job_request_destroy(r);

    body = "{\"text\": \"a\", \"max_tokens\": 5}";
    assert_int_equal(parse_lim(body, strlen(body), NULL, &r, &err, &unk), 0);
    assert_int_equal(unk.count, 0);
    job_unknown_format(&unk, line, sizeof line);
    assert_string_equal(line, "");
    job_request_destroy(r);
}

static void test_unknown_format_cut_to_buffer(void **state)
{
    (void)state;
    struct job_unknown unk = {.count = 2, .n_names = 2, .names = {"foo", "b\xc3\xa9r"}};
    char line[8];

    job_unknown_format(&unk, line, sizeof line);
    // "foo, b" fits 6 bytes; the 2-byte 'é' would need 8 with the NUL, so it is dropped whole
    assert_string_equal(line, "foo, b");
}

static void test_long_unicode_key_cut_at_char_boundary(void **state)
{
    (void)state;
    char body[512], key[128] = "";
    struct job_request *r = NULL;
    struct job_error err;

    for (int i = 0; i < 40; i++)
        strcat(key, "\xc3\xa9"); // 80 bytes of 'é'
    snprintf(body, sizeof body, "{\"text\": \"a\", \"max_tokens\": 5, \"%s\": 1e999}", key);
    assert_int_equal(parse_lim(body, strlen(body), NULL, &r, &err, NULL), JOB_ERR_INVALID);
    assert_int_equal(strlen(err.field), 62); // 31 whole characters in 63 bytes
    assert_memory_equal(err.field, key, 62);
    assert_contains(err.message, "is out of range");
}

/* ---- bodies that are not a request object ---- */

static void test_truncated_json_names_no_field(void **state)
{
    (void)state;
    expect_error("{\"text\": \"abc", "", "the body is not valid JSON", "line 1, column 13");
    expect_error("{\"text\": \"abc\", \"max_tokens\": 5", "", "not valid JSON");
}

static void test_syntax_error_in_member_names_it(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": tru}", "max_tokens",
                 "max_tokens is not valid JSON", "line 1");
    expect_error("{\"text\": \"a\",}", "", "the body is not valid JSON");
}

static void test_not_an_object_rejected(void **state)
{
    (void)state;
    expect_error("[1, 2]", "", "the body must be a JSON object, got array");
    expect_error("\"text\"", "", "the body must be a JSON object, got string");
    expect_error("42", "", "the body must be a JSON object, got 42");
    expect_error("null", "", "the body must be a JSON object, got null");
}

static void test_trailing_garbage_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5} x", "", "the body is not valid JSON");
}

static void test_empty_body_rejected(void **state)
{
    (void)state;
    expect_error_n("", 0, NULL, "", "the body is not valid JSON", (const char *)NULL);
    expect_error_n(NULL, 0, NULL, "", "the body is not valid JSON", (const char *)NULL);
    expect_error("   \n", "", "the body is not valid JSON");
}

static void test_body_need_not_be_nul_terminated(void **state)
{
    (void)state;
    const char body[] = "{\"text\": \"a\", \"max_tokens\": 5}garbage";
    struct job_request *r = NULL;
    struct job_error err;

    assert_int_equal(parse_lim(body, strlen(body) - 7, NULL, &r, &err, NULL), 0);
    assert_int_equal(r->max_tokens, 5);
    job_request_destroy(r);
}

static void test_raw_nul_byte_rejected(void **state)
{
    (void)state;
    const char body[] = "{\"text\": \"a\0b\", \"max_tokens\": 5}";

    expect_error_n(body, sizeof body - 1, NULL, "text", "not valid JSON", (const char *)NULL);
}

static void test_deep_nesting_rejected_cleanly(void **state)
{
    (void)state;
    size_t n = 100000;
    char *body = malloc(n + 64);

    assert_non_null(body);
    memset(body, '[', n);
    expect_error_n(body, n, NULL, "", "the body is nested too deeply", (const char *)NULL);

    strcpy(body, "{\"text\": \"a\", \"max_tokens\": 5, \"deep\": ");
    size_t pre = strlen(body);
    memset(body + pre, '[', n);
    expect_error_n(body, pre + n, NULL, "deep", "deep is nested too deeply", (const char *)NULL);

    memset(body, '{', n);
    expect_error_n(body, n, NULL, "", "not valid JSON", (const char *)NULL);
    free(body);
}

/* ---- job_locate_field ---- */

static void test_locate_field_finds_member(void **state)
{
    (void)state;
    const char *b = "{ \"a\" : [1, {\"x\": \"]}\"}], \"b\\u00e9\\\"\": \"v\" , \"c\": 12 }";
    char f[64];

    assert_int_equal(job_locate_field(b, strlen(b), 2, f, sizeof f), 0);
    assert_string_equal(f, "a");
    assert_int_equal(job_locate_field(b, strlen(b), 20, f, sizeof f), 0); // inside "]}"
    assert_string_equal(f, "a");
    size_t vpos = (size_t)(strstr(b, "\"v\"") - b);
    assert_int_equal(job_locate_field(b, strlen(b), vpos + 3, f, sizeof f), 0); // one past
    assert_string_equal(f, "b\xc3\xa9\"");
    size_t cpos = (size_t)(strstr(b, "12") - b);
    assert_int_equal(job_locate_field(b, strlen(b), cpos + 1, f, sizeof f), 0);
    assert_string_equal(f, "c");
    // between members and outside the object: no field
    assert_int_equal(job_locate_field(b, strlen(b), vpos + 4, f, sizeof f), -1);
    assert_string_equal(f, "");
    assert_int_equal(job_locate_field(b, strlen(b), 0, f, sizeof f), -1);
    assert_int_equal(job_locate_field(b, strlen(b), strlen(b) - 1, f, sizeof f), -1);
}

static void test_locate_field_handles_broken_input(void **state)
{
    (void)state;
    char f[8];

    assert_int_equal(job_locate_field("[1, 2]", 6, 2, f, sizeof f), -1);
    assert_int_equal(job_locate_field("", 0, 0, f, sizeof f), -1);
    assert_int_equal(job_locate_field(NULL, 0, 0, f, sizeof f), -1);
    // unterminated string value runs to the end
    assert_int_equal(job_locate_field("{\"k\": \"abc", 10, 9, f, sizeof f), 0);
    assert_string_equal(f, "k");
    // a surrogate pair escape in the key; cap cuts at a character boundary
    assert_int_equal(job_locate_field("{\"ab\\ud83d\\ude00\": 1}", 21, 19, f, 4), 0);
    assert_string_equal(f, "ab");
    assert_int_equal(job_locate_field("{\"ab\\ud83d\\ude00\": 1}", 21, 19, f, sizeof f), 0);
    assert_string_equal(f, "ab\xf0\x9f\x98\x80");
    // a lone surrogate or a \u0000 in the key: no usable name
    assert_int_equal(job_locate_field("{\"\\ud83d\": 1}", 13, 11, f, sizeof f), -1);
    assert_int_equal(job_locate_field("{\"\\u0000\": 1}", 13, 11, f, sizeof f), -1);
    // the scanner only reads len bytes
    assert_int_equal(job_locate_field("{\"k\": 1}", 3, 2, f, sizeof f), 0);
    assert_string_equal(f, "k");
}

/* ---- the queue payload ---- */

static void test_request_payload_has_every_field(void **state)
{
    (void)state;
    struct job_request *r = expect_ok("{\"max_tokens\": 5, \"text\": \"hi\", \"junk\": 1}");
    char *json = NULL;

    assert_int_equal(job_request_to_json(r, &json), 0);
    assert_string_equal(json, "{\"text\":\"hi\",\"max_tokens\":5,\"eos_token_ids\":[],"
                              "\"max_input_tokens\":0,\"num_samples\":1,\"stop\":[],"
                              "\"temperature\":1.0,\"top_k\":50,\"top_p\":1.0,"
                              "\"presence_penalty\":0.0,\"frequency_penalty\":0.0}");
    free(json);
    job_request_destroy(r);
}

static void test_request_payload_round_trip(void **state)
{
    (void)state;
    struct job_request *a =
        expect_ok("{\"text\": \"Quote \\\" nl \\n tab \\t emoji \xf0\x9f\x98\x80 \\ud83d\\ude00\","
                  " \"max_tokens\": 32768, \"eos_token_ids\": [2, 2147483647],"
                  " \"max_input_tokens\": 7, \"num_samples\": 16, \"stop\": \"</s>\","
                  " \"temperature\": 0.1, \"top_k\": -2147483648, \"top_p\": 0.30000000000000004,"
                  " \"presence_penalty\": -1.9999999999999998, \"frequency_penalty\": 1e-300,"
                  " \"seed\": 0}");
    struct job_request *b = NULL;
    struct job_error err;
    char *json = NULL;

    assert_int_equal(job_request_to_json(a, &json), 0);
    assert_contains(json, "\"seed\":0");
    assert_int_equal(parse_lim(json, strlen(json), NULL, &b, &err, NULL), 0);
    assert_true(job_request_equal(a, b));
    b->top_p = 0.3;
    assert_false(job_request_equal(a, b));
    free(json);
    job_request_destroy(a);
    job_request_destroy(b);
}

static void test_request_to_json_rejects_invalid_utf8(void **state)
{
    (void)state;
    struct job_request r = {.text = "\xff", .text_len = 1, .max_tokens = 1, .num_samples = 1};
    char *json = (char *)1;

    assert_int_equal(job_request_to_json(&r, &json), JOB_ERR_INVALID);
    assert_null(json);
}

static void test_destroy_null_is_noop(void **state)
{
    (void)state;
    job_request_destroy(NULL);
    job_response_destroy(NULL);
    assert_null(job_finish_reason_name((enum job_finish_reason)7));
}

/* ---- responses ---- */

static void test_finish_reason_names(void **state)
{
    (void)state;
    enum job_finish_reason r;

    assert_string_equal(job_finish_reason_name(JOB_FINISH_LENGTH), "length");
    assert_string_equal(job_finish_reason_name(JOB_FINISH_EOS), "eos");
    assert_string_equal(job_finish_reason_name(JOB_FINISH_STOP), "stop");
    assert_int_equal(job_finish_reason_parse("stop", &r), 0);
    assert_int_equal(r, JOB_FINISH_STOP);
    assert_int_equal(job_finish_reason_parse("eos", &r), 0);
    assert_int_equal(r, JOB_FINISH_EOS);
    assert_int_equal(job_finish_reason_parse("EOS", &r), JOB_ERR_INVALID);
    assert_int_equal(job_finish_reason_parse("", &r), JOB_ERR_INVALID);
}

static void test_response_serialised_exactly(void **state)
{
    (void)state;
    struct job_sample samples[2] = {
        {.text = " world",
         .text_len = 6,
         .generated_tokens = 2,
         .finished = 1700000001.25,
         .finish_reason = JOB_FINISH_EOS},
        {.text = "!",
         .text_len = 1,
         .generated_tokens = 16,
         .finished = 1700000002.0,
         .finish_reason = JOB_FINISH_LENGTH},
    };
    struct job_response r = {.created = 1700000000.5,
                             .finished = 1700000002.123,
                             .prompt = "Hello",
                             .prompt_len = 5,
                             .prompt_tokens = 3,
                             .samples = samples,
                             .num_samples = 2};
    char *json = NULL;

    assert_int_equal(job_response_to_json(&r, &json), 0);
    assert_string_equal(json, "{\"created\":1700000000.5,\"finished\":1700000002.123,"
                              "\"num_samples\":2,\"prompt\":\"Hello\",\"prompt_tokens\":3,"
                              "\"responses\":[{\"text\":\" world\",\"generated_tokens\":2,"
                              "\"finished\":1700000001.25,\"finish_reason\":\"eos\"},"
                              "{\"text\":\"!\",\"generated_tokens\":16,"
                              "\"finished\":1700000002.0,\"finish_reason\":\"length\"}]}");
    free(json);
}

static void test_response_round_trip_keeps_any_text(void **state)
{
    (void)state;
    static const char text[] = "say \"hi\"\\\n\ttab\r\x01 \xf0\x9f\x98\x80 \xe2\x82\xac\0after nul";
    struct job_sample s = {.text = (char *)text,
                           .text_len = sizeof text - 1,
                           .generated_tokens = 9,
                           .finished = 1732700000.123456,
                           .finish_reason = JOB_FINISH_STOP};
    struct job_response r = {.created = 1732699999.000001,
                             .finished = 1732700000.5,
                             .prompt = "p\n\xc3\xa9",
                             .prompt_len = 4,
                             .prompt_tokens = 2,
                             .samples = &s,
                             .num_samples = 1};
    struct job_response *back = NULL;
    struct job_error err;
    char *json = NULL;

    assert_int_equal(job_response_to_json(&r, &json), 0);
    assert_int_equal(job_response_parse(&back, json, strlen(json), &err), 0);
    assert_non_null(back);
    assert_int_equal(back->num_samples, 1);
    assert_int_equal(back->prompt_len, 4);
    assert_string_equal(back->prompt, "p\n\xc3\xa9");
    assert_int_equal(back->prompt_tokens, 2);
    assert_int_equal(back->samples[0].text_len, sizeof text - 1);
    assert_memory_equal(back->samples[0].text, text, sizeof text - 1);
    assert_int_equal(back->samples[0].generated_tokens, 9);
    assert_int_equal(back->samples[0].finish_reason, JOB_FINISH_STOP);
    // 16 significant digits: microseconds survive
    assert_true(back->samples[0].finished > 1732700000.123455 &&
                back->samples[0].finished < 1732700000.123457);
    assert_true(back->created > 1732699999.0000005 && back->created < 1732699999.0000015);
    assert_true(back->finished == 1732700000.5);
    job_response_destroy(back);
    free(json);
}

static void test_response_with_no_samples_round_trips(void **state)
{
    (void)state;
    struct job_response r = {.created = 1, .finished = 2, .prompt = NULL, .prompt_len = 0};
    struct job_response *back = NULL;
    struct job_error err;
    char *json = NULL;

    assert_int_equal(job_response_to_json(&r, &json), 0);
    assert_string_equal(json, "{\"created\":1.0,\"finished\":2.0,\"num_samples\":0,\"prompt\":\"\","
                              "\"prompt_tokens\":0,\"responses\":[]}");
    assert_int_equal(job_response_parse(&back, json, strlen(json), &err), 0);
    assert_int_equal(back->num_samples, 0);
    assert_string_equal(back->prompt, "");
    job_response_destroy(back);
    free(json);
}

static void test_response_to_json_rejects_bad_input(void **state)
{
    (void)state;
    struct job_sample s = {.text = "a\xc3", .text_len = 2, .finish_reason = JOB_FINISH_EOS};
    struct job_response r = {.prompt = "p", .prompt_len = 1, .samples = &s, .num_samples = 1};
    char *json = (char *)1;

    assert_int_equal(job_response_to_json(&r, &json), JOB_ERR_INVALID);
    assert_null(json);
    s.text_len = 1;
    s.finish_reason = (enum job_finish_reason)3;
    assert_int_equal(job_response_to_json(&r, &json), JOB_ERR_INVALID);
    s.finish_reason = JOB_FINISH_EOS;
    assert_int_equal(job_response_to_json(&r, &json), 0);
    free(json);
}

static void expect_response_error(const char *json, const char *field, const char *part)
{
    struct job_response *r = (struct job_response *)1;
    struct job_error err;

    assert_int_equal(job_response_parse(&r, json, strlen(json), &err), JOB_ERR_INVALID);
    assert_null(r);
    assert_string_equal(err.field, field);
    assert_contains(err.message, part);
}

static void test_response_parse_rejects_bad_shape(void **state)
{
    (void)state;
    expect_response_error("{\"created\":1,\"finished\":2,\"num_samples\":2,\"prompt\":\"\","
                          "\"prompt_tokens\":0,\"responses\":[]}",
                          "num_samples", "must equal the number of responses (0), got 2");
    expect_response_error("{\"created\":1,\"finished\":2,\"num_samples\":1,\"prompt\":\"\","
                          "\"prompt_tokens\":0,\"responses\":[{\"text\":\"a\","
                          "\"generated_tokens\":1,\"finished\":2,\"finish_reason\":\"done\"}]}",
                          "responses", "responses[0].finish_reason must be");
    expect_response_error("{\"created\":1,\"finished\":2,\"num_samples\":1,\"prompt\":\"\","
                          "\"prompt_tokens\":0,\"responses\":[{\"text\":\"a\","
                          "\"finished\":2,\"finish_reason\":\"eos\"}]}",
                          "responses", "responses[0].generated_tokens is required");
    expect_response_error("{\"finished\":2,\"num_samples\":0,\"prompt\":\"\","
                          "\"prompt_tokens\":0,\"responses\":[]}",
                          "created", "created is required");
    expect_response_error("{\"created\":\"now\",\"finished\":2}", "created",
                          "created must be a number, got string");
    expect_response_error("[]", "", "must be a JSON object");
    expect_response_error("{\"created\":", "", "not valid JSON");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_applied),
        cmocka_unit_test(test_all_fields_parsed),
        cmocka_unit_test(test_null_means_default),
        cmocka_unit_test(test_null_limits_mean_defaults),
        cmocka_unit_test(test_missing_text_names_text),
        cmocka_unit_test(test_null_text_names_text),
        cmocka_unit_test(test_empty_text_allowed),
        cmocka_unit_test(test_text_above_max_bytes_rejected),
        cmocka_unit_test(test_nul_escape_in_text_names_text),
        cmocka_unit_test(test_invalid_utf8_in_text_names_text),
        cmocka_unit_test(test_invalid_utf8_in_key_names_no_field),
        cmocka_unit_test(test_lone_surrogate_in_text_names_text),
        cmocka_unit_test(test_raw_newline_in_text_names_text),
        cmocka_unit_test(test_quoted_input_in_message_stays_valid_utf8),
        cmocka_unit_test(test_missing_max_tokens_names_max_tokens),
        cmocka_unit_test(test_max_tokens_zero_rejected),
        cmocka_unit_test(test_max_tokens_above_limit_rejected),
        cmocka_unit_test(test_max_tokens_real_rejected),
        cmocka_unit_test(test_huge_integer_names_field),
        cmocka_unit_test(test_eos_ids_non_integer_rejected),
        cmocka_unit_test(test_eos_ids_negative_rejected),
        cmocka_unit_test(test_eos_ids_above_max_count_rejected),
        cmocka_unit_test(test_negative_max_input_tokens_rejected),
        cmocka_unit_test(test_num_samples_zero_rejected),
        cmocka_unit_test(test_num_samples_above_max_rejected),
        cmocka_unit_test(test_stop_single_string_is_one_element_list),
        cmocka_unit_test(test_stop_empty_string_rejected),
        cmocka_unit_test(test_stop_too_long_rejected),
        cmocka_unit_test(test_stop_too_many_rejected),
        cmocka_unit_test(test_stop_non_string_element_rejected),
        cmocka_unit_test(test_negative_temperature_rejected),
        cmocka_unit_test(test_temperature_zero_and_integers_accepted),
        cmocka_unit_test(test_top_k_zero_or_negative_accepted),
        cmocka_unit_test(test_top_p_zero_rejected),
        cmocka_unit_test(test_top_p_above_one_rejected),
        cmocka_unit_test(test_presence_penalty_out_of_range_rejected),
        cmocka_unit_test(test_frequency_penalty_out_of_range_rejected),
        cmocka_unit_test(test_negative_seed_rejected),
        cmocka_unit_test(test_largest_seed_accepted),
        cmocka_unit_test(test_wrong_type_for_each_field),
        cmocka_unit_test(test_duplicate_key_names_field),
        cmocka_unit_test(test_duplicate_key_in_nested_object_names_member),
        cmocka_unit_test(test_unknown_fields_counted),
        cmocka_unit_test(test_unknown_format_cut_to_buffer),
        cmocka_unit_test(test_long_unicode_key_cut_at_char_boundary),
        cmocka_unit_test(test_truncated_json_names_no_field),
        cmocka_unit_test(test_syntax_error_in_member_names_it),
        cmocka_unit_test(test_not_an_object_rejected),
        cmocka_unit_test(test_trailing_garbage_rejected),
        cmocka_unit_test(test_empty_body_rejected),
        cmocka_unit_test(test_body_need_not_be_nul_terminated),
        cmocka_unit_test(test_raw_nul_byte_rejected),
        cmocka_unit_test(test_deep_nesting_rejected_cleanly),
        cmocka_unit_test(test_locate_field_finds_member),
        cmocka_unit_test(test_locate_field_handles_broken_input),
        cmocka_unit_test(test_request_payload_has_every_field),
        cmocka_unit_test(test_request_payload_round_trip),
        cmocka_unit_test(test_request_to_json_rejects_invalid_utf8),
        cmocka_unit_test(test_destroy_null_is_noop),
        cmocka_unit_test(test_finish_reason_names),
        cmocka_unit_test(test_response_serialised_exactly),
        cmocka_unit_test(test_response_round_trip_keeps_any_text),
        cmocka_unit_test(test_response_with_no_samples_round_trips),
        cmocka_unit_test(test_response_to_json_rejects_bad_input),
        cmocka_unit_test(test_response_parse_rejects_bad_shape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
