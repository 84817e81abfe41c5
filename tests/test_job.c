/*
 * Tests for common/job.c, the request half of the job protocol: one test per
 * validation rule, each checking the field the error names and what its
 * message says; bodies jansson refuses (bad UTF-8, NULs, truncated, not an
 * object); the chat field "messages", each of its rules naming it; the queue
 * payload round trip, with text and with messages. Which member the raw-text scanner
 * names for a refused body is tested in test_jsonscan.c; responses in
 * test_job_response.c.
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

/* ---- messages (a chat instead of text) ---- */

#define USER_HI "{\"role\": \"user\", \"content\": \"hi\"}"

static void test_messages_parsed(void **state)
{
    (void)state;
    struct job_request *r = expect_ok(
        "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, " USER_HI
        ", {\"role\": \"assistant\", \"content\": \"Hello!\", \"name\": \"x\"}, "
        "{\"content\": \"h\u00e9\", \"role\": \"user\"}], \"max_tokens\": 5, \"text\": null}");

    assert_null(r->text);
    assert_int_equal(r->n_messages, 4);
    assert_int_equal(r->messages[0].role, JOB_ROLE_SYSTEM);
    assert_string_equal(r->messages[0].content, "Be brief.");
    assert_int_equal(r->messages[1].role, JOB_ROLE_USER);
    assert_int_equal(r->messages[2].role, JOB_ROLE_ASSISTANT);
    assert_string_equal(r->messages[2].content, "Hello!");
    assert_string_equal(r->messages[3].content, "h\xc3\xa9");
    assert_int_equal(r->messages[3].content_len, 3);
    assert_string_equal(job_role_name(r->messages[2].role), "assistant");
    job_request_destroy(r);

    r = expect_ok("{\"messages\": [{\"role\": \"user\", \"content\": \"\"}], \"max_tokens\": 1}");
    assert_int_equal(r->n_messages, 1);
    assert_int_equal(r->messages[0].content_len, 0);
    job_request_destroy(r);
}

static void test_text_and_messages_both_rejected(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"messages\": [" USER_HI "], \"max_tokens\": 5}", "messages",
                 "either text or messages, not both");
}

static void test_neither_text_nor_messages_names_text(void **state)
{
    (void)state;
    expect_error("{\"max_tokens\": 5, \"messages\": null}", "text", "text is required",
                 "or messages");
}

static void test_messages_empty_or_not_a_list_rejected(void **state)
{
    (void)state;
    expect_error("{\"messages\": [], \"max_tokens\": 5}", "messages", "must not be empty");
    expect_error("{\"messages\": \"hi\", \"max_tokens\": 5}", "messages",
                 "messages must be an array", "got string");
    expect_error("{\"messages\": [\"hi\"], \"max_tokens\": 5}", "messages",
                 "messages[0] must be an object with role and content, got string");
}

static void test_messages_bad_role_rejected(void **state)
{
    (void)state;
    expect_error("{\"messages\": [{\"role\": \"bot\", \"content\": \"hi\"}], \"max_tokens\": 5}",
                 "messages", "messages[0].role must be \"system\", \"user\" or \"assistant\"",
                 "got \"bot\"");
    expect_error("{\"messages\": [{\"role\": 5, \"content\": \"hi\"}], \"max_tokens\": 5}",
                 "messages", "messages[0].role must be", "got 5");
    expect_error("{\"messages\": [" USER_HI ", {\"content\": \"x\"}], \"max_tokens\": 5}",
                 "messages", "messages[1].role is required");
}

static void test_messages_non_string_content_rejected(void **state)
{
    (void)state;
    expect_error("{\"messages\": [{\"role\": \"user\", \"content\": 5}], \"max_tokens\": 5}",
                 "messages", "messages[0].content must be a string, got 5");
    expect_error("{\"messages\": [{\"role\": \"user\", \"content\": null}], \"max_tokens\": 5}",
                 "messages", "messages[0].content must be a string, got null");
    expect_error("{\"messages\": [{\"role\": \"user\", \"content\": [\"a\"]}], \"max_tokens\": 5}",
                 "messages", "got array");
    expect_error("{\"messages\": [{\"role\": \"user\"}], \"max_tokens\": 5}", "messages",
                 "messages[0].content must be a string, got nothing");
}

static void test_messages_last_not_from_user_rejected(void **state)
{
    (void)state;
    expect_error("{\"messages\": [" USER_HI ", {\"role\": \"assistant\", \"content\": \"x\"}],"
                 " \"max_tokens\": 5}",
                 "messages", "the last message must be from the user", "got \"assistant\"");
    expect_error("{\"messages\": [{\"role\": \"system\", \"content\": \"x\"}], \"max_tokens\": 5}",
                 "messages", "the last message must be from the user", "got \"system\"");
}

static void test_messages_must_alternate(void **state)
{
    (void)state;
    expect_error("{\"messages\": [" USER_HI ", " USER_HI "], \"max_tokens\": 5}", "messages",
                 "messages[1].role must be \"assistant\", got \"user\"", "alternate");
    expect_error("{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\"}, " USER_HI
                 "], \"max_tokens\": 5}",
                 "messages", "messages[0].role must be \"user\", got \"assistant\"");
    expect_error("{\"messages\": [" USER_HI ", {\"role\": \"system\", \"content\": \"x\"}, " USER_HI
                 "], \"max_tokens\": 5}",
                 "messages", "messages[1] is a system message: only the first message may be one");
}

static void test_messages_invalid_utf8_names_messages(void **state)
{
    (void)state;
    expect_error("{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\"}], \"max_tokens\": 5}",
                 "messages", "messages must be valid UTF-8");
    expect_error("{\"messages\": [{\"role\": \"user\", \"content\": \"a\\u0000\"}], "
                 "\"max_tokens\": 5}",
                 "messages", "must not contain \\u0000");
    expect_error("{\"messages\": [{\"role\": \"user\", \"role\": \"user\", \"content\": \"a\"}], "
                 "\"max_tokens\": 5}",
                 "messages", "duplicate key");
}

static void test_messages_over_size_limit_rejected(void **state)
{
    (void)state;
    struct job_limits lim = JOB_LIMITS_DEFAULT;
    struct job_request *r = NULL;
    struct job_error err;

    lim.max_text_bytes = 5;
    // the contents count together: 2 + 1 + 3 bytes
    expect_error_lim("{\"messages\": [" USER_HI ", {\"role\": \"assistant\", \"content\": \"x\"}, "
                     "{\"role\": \"user\", \"content\": \"abc\"}], \"max_tokens\": 5}",
                     &lim, "messages", "at most 5 bytes of content (the configured maximum)",
                     "messages[2]");
    const char *ok = "{\"messages\": [" USER_HI ", {\"role\": \"assistant\", \"content\": \"x\"}, "
                     "{\"role\": \"user\", \"content\": \"ab\"}], \"max_tokens\": 5}";
    assert_int_equal(parse_lim(ok, strlen(ok), &lim, &r, &err, NULL), 0);
    job_request_destroy(r);
}

static void test_messages_payload_round_trip(void **state)
{
    (void)state;
    struct job_request *a = expect_ok(
        "{\"max_tokens\": 5, \"messages\": [{\"role\": \"system\", \"content\": \"S \\\"q\\\"\"}, "
        "{\"role\": \"user\", \"content\": \"line\\nbreak \xf0\x9f\x98\x80\", \"x\": 1}]}");
    struct job_request *b = NULL;
    struct job_error err;
    char *json = NULL;

    assert_int_equal(job_request_to_json(a, &json), 0);
    assert_string_equal(json, "{\"messages\":[{\"role\":\"system\",\"content\":\"S \\\"q\\\"\"},"
                              "{\"role\":\"user\",\"content\":\"line\\nbreak \xf0\x9f\x98\x80\"}],"
                              "\"max_tokens\":5,\"eos_token_ids\":[],"
                              "\"max_input_tokens\":0,\"num_samples\":1,\"stop\":[],"
                              "\"temperature\":1.0,\"top_k\":50,\"top_p\":1.0,"
                              "\"presence_penalty\":0.0,\"frequency_penalty\":0.0}");
    assert_int_equal(parse_lim(json, strlen(json), NULL, &b, &err, NULL), 0);
    assert_true(job_request_equal(a, b));
    b->messages[1].content[0] = 'L';
    assert_false(job_request_equal(a, b));
    b->messages[1].content[0] = 'l';
    b->messages[0].role = JOB_ROLE_USER;
    assert_false(job_request_equal(a, b));
    free(json);
    job_request_destroy(b);

    b = expect_ok("{\"text\": \"line\\nbreak \xf0\x9f\x98\x80\", \"max_tokens\": 5}");
    assert_false(job_request_equal(a, b));
    assert_false(job_request_equal(b, a));
    job_request_destroy(a);
    job_request_destroy(b);
}

static void test_messages_to_json_rejects_what_parse_refuses(void **state)
{
    (void)state;
    struct job_message bad_utf8[] = {{JOB_ROLE_USER, "\xff", 1}};
    struct job_message last_assistant[] = {{JOB_ROLE_USER, "a", 1}, {JOB_ROLE_ASSISTANT, "b", 1}};
    struct job_message ok[] = {{JOB_ROLE_USER, "a", 1}};
    struct job_request r = {.max_tokens = 1, .num_samples = 1};
    char *json = (char *)1;

    r.messages = bad_utf8;
    r.n_messages = 1;
    assert_int_equal(job_request_to_json(&r, &json), JOB_ERR_INVALID);
    assert_null(json);
    r.messages = last_assistant;
    r.n_messages = 2;
    assert_int_equal(job_request_to_json(&r, &json), JOB_ERR_INVALID);
    r.messages = ok;
    r.n_messages = 1;
    r.text = "a"; // both
    assert_int_equal(job_request_to_json(&r, &json), JOB_ERR_INVALID);
    r.text = NULL;
    assert_int_equal(job_request_to_json(&r, &json), 0);
    free(json);
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

static void test_stream_must_be_a_boolean(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": 5, \"stream\": 1}", "stream",
                 "stream must be true or false");
    struct job_request *r = expect_ok("{\"text\": \"a\", \"max_tokens\": 5, \"stream\": true}");
    assert_true(r->stream);
    char *payload = NULL;
    assert_int_equal(job_request_to_json(r, &payload), 0);
    assert_non_null(strstr(payload, "\"stream\":true"));
    free(payload);
    job_request_destroy(r);
    r = expect_ok("{\"text\": \"a\", \"max_tokens\": 5}");
    assert_false(r->stream);
    job_request_destroy(r);
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

/* ---- bodies that are not a request object ---- */

static void test_truncated_json_names_no_field(void **state)
{
    (void)state;
    expect_error("{\"text\": \"abc", "", "the body is not valid JSON", "line 1, column 13");
    expect_error("{\"text\": \"abc\", \"max_tokens\": 5", "", "not valid JSON");
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
        cmocka_unit_test(test_lone_surrogate_in_text_names_text),
        cmocka_unit_test(test_raw_newline_in_text_names_text),
        cmocka_unit_test(test_quoted_input_in_message_stays_valid_utf8),
        cmocka_unit_test(test_messages_parsed),
        cmocka_unit_test(test_text_and_messages_both_rejected),
        cmocka_unit_test(test_neither_text_nor_messages_names_text),
        cmocka_unit_test(test_messages_empty_or_not_a_list_rejected),
        cmocka_unit_test(test_messages_bad_role_rejected),
        cmocka_unit_test(test_messages_non_string_content_rejected),
        cmocka_unit_test(test_messages_last_not_from_user_rejected),
        cmocka_unit_test(test_messages_must_alternate),
        cmocka_unit_test(test_messages_invalid_utf8_names_messages),
        cmocka_unit_test(test_messages_over_size_limit_rejected),
        cmocka_unit_test(test_messages_payload_round_trip),
        cmocka_unit_test(test_messages_to_json_rejects_what_parse_refuses),
        cmocka_unit_test(test_missing_max_tokens_names_max_tokens),
        cmocka_unit_test(test_max_tokens_zero_rejected),
        cmocka_unit_test(test_max_tokens_above_limit_rejected),
        cmocka_unit_test(test_max_tokens_real_rejected),
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
        cmocka_unit_test(test_stream_must_be_a_boolean),
        cmocka_unit_test(test_largest_seed_accepted),
        cmocka_unit_test(test_wrong_type_for_each_field),
        cmocka_unit_test(test_unknown_fields_counted),
        cmocka_unit_test(test_unknown_format_cut_to_buffer),
        cmocka_unit_test(test_truncated_json_names_no_field),
        cmocka_unit_test(test_not_an_object_rejected),
        cmocka_unit_test(test_trailing_garbage_rejected),
        cmocka_unit_test(test_empty_body_rejected),
        cmocka_unit_test(test_body_need_not_be_nul_terminated),
        cmocka_unit_test(test_raw_nul_byte_rejected),
        cmocka_unit_test(test_request_payload_has_every_field),
        cmocka_unit_test(test_request_payload_round_trip),
        cmocka_unit_test(test_request_to_json_rejects_invalid_utf8),
        cmocka_unit_test(test_destroy_null_is_noop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
