/*
 * Tests for common/job_response.c, the response half of the job protocol:
 * finish reason names, the exact serialised shape, round trips that keep any
 * text (NULs, escapes, emoji) and microsecond times, and the errors of
 * job_response_parse, each naming its field.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/job_response.h"

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle))
        fail_msg("\"%s\" does not contain \"%s\"", haystack, needle);
}

/* ---- finish reasons ---- */

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

/* ---- serialising and reading back ---- */

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

/* ---- errors ---- */

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

static void test_response_destroy_null_is_noop(void **state)
{
    (void)state;
    job_response_destroy(NULL);
    assert_null(job_finish_reason_name((enum job_finish_reason)7));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_finish_reason_names),
        cmocka_unit_test(test_response_serialised_exactly),
        cmocka_unit_test(test_response_round_trip_keeps_any_text),
        cmocka_unit_test(test_response_with_no_samples_round_trips),
        cmocka_unit_test(test_response_to_json_rejects_bad_input),
        cmocka_unit_test(test_response_parse_rejects_bad_shape),
        cmocka_unit_test(test_response_destroy_null_is_noop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
