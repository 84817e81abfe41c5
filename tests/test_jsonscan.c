/*
 * Tests for common/jsonscan.c: the raw-text locator (members with nested
 * containers, escaped keys, broken or truncated text, whether the offset is
 * in the key); the locator at work, naming the member that holds the offset
 * jansson reports when it refuses a request body (through
 * job_request_parse, since that offset is what the locator is for); and the
 * UTF-8 helpers that keep cut strings valid.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/job.h"
#include "common/jsonscan.h"

/* ---- helpers ---- */

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle))
        fail_msg("\"%s\" does not contain \"%s\"", haystack, needle);
}

static int parse_lim(const char *body, size_t len, const struct job_limits *lim,
                     struct job_request **r, struct job_error *err, struct job_unknown *unk)
{
    memset(err, 0x55, sizeof *err); // the parser must overwrite both strings
    return job_request_parse(r, body, len, lim, err, unk);
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

/* ---- jsonscan_locate ---- */

static void test_locate_field_finds_member(void **state)
{
    (void)state;
    const char *b = "{ \"a\" : [1, {\"x\": \"]}\"}], \"b\\u00e9\\\"\": \"v\" , \"c\": 12 }";
    char f[64];

    assert_int_equal(jsonscan_locate(b, strlen(b), 2, f, sizeof f, NULL), 0);
    assert_string_equal(f, "a");
    assert_int_equal(jsonscan_locate(b, strlen(b), 20, f, sizeof f, NULL), 0); // inside "]}"
    assert_string_equal(f, "a");
    size_t vpos = (size_t)(strstr(b, "\"v\"") - b);
    assert_int_equal(jsonscan_locate(b, strlen(b), vpos + 3, f, sizeof f, NULL), 0); // one past
    assert_string_equal(f, "b\xc3\xa9\"");
    size_t cpos = (size_t)(strstr(b, "12") - b);
    assert_int_equal(jsonscan_locate(b, strlen(b), cpos + 1, f, sizeof f, NULL), 0);
    assert_string_equal(f, "c");
    // between members and outside the object: no field
    assert_int_equal(jsonscan_locate(b, strlen(b), vpos + 4, f, sizeof f, NULL), -1);
    assert_string_equal(f, "");
    assert_int_equal(jsonscan_locate(b, strlen(b), 0, f, sizeof f, NULL), -1);
    assert_int_equal(jsonscan_locate(b, strlen(b), strlen(b) - 1, f, sizeof f, NULL), -1);
}

static void test_locate_field_handles_broken_input(void **state)
{
    (void)state;
    char f[8];

    assert_int_equal(jsonscan_locate("[1, 2]", 6, 2, f, sizeof f, NULL), -1);
    assert_int_equal(jsonscan_locate("", 0, 0, f, sizeof f, NULL), -1);
    assert_int_equal(jsonscan_locate(NULL, 0, 0, f, sizeof f, NULL), -1);
    // unterminated string value runs to the end
    assert_int_equal(jsonscan_locate("{\"k\": \"abc", 10, 9, f, sizeof f, NULL), 0);
    assert_string_equal(f, "k");
    // a surrogate pair escape in the key; cap cuts at a character boundary
    assert_int_equal(jsonscan_locate("{\"ab\\ud83d\\ude00\": 1}", 21, 19, f, 4, NULL), 0);
    assert_string_equal(f, "ab");
    assert_int_equal(jsonscan_locate("{\"ab\\ud83d\\ude00\": 1}", 21, 19, f, sizeof f, NULL), 0);
    assert_string_equal(f, "ab\xf0\x9f\x98\x80");
    // a lone surrogate or a \u0000 in the key: no usable name
    assert_int_equal(jsonscan_locate("{\"\\ud83d\": 1}", 13, 11, f, sizeof f, NULL), -1);
    assert_int_equal(jsonscan_locate("{\"\\u0000\": 1}", 13, 11, f, sizeof f, NULL), -1);
    // the scanner only reads len bytes
    assert_int_equal(jsonscan_locate("{\"k\": 1}", 3, 2, f, sizeof f, NULL), 0);
    assert_string_equal(f, "k");
}

static void test_locate_field_says_whether_offset_is_in_key(void **state)
{
    (void)state;
    const char *b = "{\"ab\": [1], \"c\": 2}";
    char f[8];
    int in_key = -1;

    // the key from its opening quote to one past its closing quote
    assert_int_equal(jsonscan_locate(b, strlen(b), 1, f, sizeof f, &in_key), 0);
    assert_string_equal(f, "ab");
    assert_int_equal(in_key, 1);
    assert_int_equal(jsonscan_locate(b, strlen(b), 5, f, sizeof f, &in_key), 0);
    assert_int_equal(in_key, 1);
    assert_int_equal(jsonscan_locate(b, strlen(b), 7, f, sizeof f, &in_key), 0);
    assert_string_equal(f, "ab");
    assert_int_equal(in_key, 0);
    assert_int_equal(jsonscan_locate(b, strlen(b), strlen(b) - 2, f, sizeof f, &in_key), 0);
    assert_string_equal(f, "c");
    assert_int_equal(in_key, 0);
    // no member: in_key is left as it was
    in_key = -1;
    assert_int_equal(jsonscan_locate(b, strlen(b), 0, f, sizeof f, &in_key), -1);
    assert_int_equal(in_key, -1);
    assert_int_equal(jsonscan_locate("{\"\\u0000\": 1}", 13, 2, f, sizeof f, &in_key), -1);
    assert_int_equal(in_key, -1);
    assert_string_equal(f, "");
}

/* ---- the locator at work: naming the member jansson refused ---- */

static void test_invalid_utf8_in_key_names_no_field(void **state)
{
    (void)state;
    expect_error("{\"te\xffxt\": \"a\", \"max_tokens\": 5}", "", "the body must be valid UTF-8",
                 "offset 4");
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

static void test_syntax_error_in_member_names_it(void **state)
{
    (void)state;
    expect_error("{\"text\": \"a\", \"max_tokens\": tru}", "max_tokens",
                 "max_tokens is not valid JSON", "line 1");
    expect_error("{\"text\": \"a\",}", "", "the body is not valid JSON");
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

/* ---- UTF-8 ---- */

static void test_utf8_valid_rejects_bad_sequences(void **state)
{
    (void)state;
    assert_true(jsonscan_utf8_valid("", 0));
    assert_true(jsonscan_utf8_valid(NULL, 0));
    assert_true(jsonscan_utf8_valid("a\0b", 3)); // NUL counts as valid
    assert_true(jsonscan_utf8_valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf", 13));
    assert_false(jsonscan_utf8_valid("\xff", 1));
    assert_false(jsonscan_utf8_valid("\x80", 1));             // a lone continuation byte
    assert_false(jsonscan_utf8_valid("\xc3", 1));             // truncated
    assert_false(jsonscan_utf8_valid("\xc0\xaf", 2));         // overlong '/'
    assert_false(jsonscan_utf8_valid("\xe0\x80\xaf", 3));     // overlong '/'
    assert_false(jsonscan_utf8_valid("\xed\xa0\x80", 3));     // surrogate U+D800
    assert_false(jsonscan_utf8_valid("\xf4\x90\x80\x80", 4)); // above U+10FFFF
    assert_false(jsonscan_utf8_valid("\xc3\xa9", 1));         // only n bytes are read
}

static void test_utf8_trim_drops_incomplete_tail(void **state)
{
    (void)state;
    char a[] = "ab\xe2\x82", b[] = "ab\xe2\x82\xac", c[] = "a\xf0\x9f\x98", d[] = "abc";

    jsonscan_utf8_trim(a);
    assert_string_equal(a, "ab");
    jsonscan_utf8_trim(b);
    assert_string_equal(b, "ab\xe2\x82\xac");
    jsonscan_utf8_trim(c);
    assert_string_equal(c, "a");
    jsonscan_utf8_trim(d);
    assert_string_equal(d, "abc");
}

static void test_utf8_sanitize_replaces_bad_bytes(void **state)
{
    (void)state;
    char s[] = "a\xff\xc3\xa9\xe2\x82 \x80z";

    jsonscan_utf8_sanitize(s);
    assert_string_equal(s, "a?\xc3\xa9?? ?z");
    assert_true(jsonscan_utf8_valid(s, strlen(s)));
}

static void test_copy_cut_stops_at_char_boundary(void **state)
{
    (void)state;
    char buf[5];

    memset(buf, 'x', sizeof buf);
    jsonscan_copy_cut(buf, 0, "abc", 3); // writes nothing
    assert_int_equal(buf[0], 'x');
    jsonscan_copy_cut(buf, sizeof buf, "abc", 3);
    assert_string_equal(buf, "abc");
    jsonscan_copy_cut(buf, sizeof buf, "abcdef", 6);
    assert_string_equal(buf, "abcd");
    jsonscan_copy_cut(buf, sizeof buf, "ab\xe2\x82\xac", 5); // the 3-byte '€' does not fit
    assert_string_equal(buf, "ab");
    jsonscan_copy_cut(buf, sizeof buf, "a\xc3\xa9z", 4); // copies only n bytes
    assert_string_equal(buf, "a\xc3\xa9z");
    jsonscan_copy_cut(buf, 1, "abc", 3);
    assert_string_equal(buf, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_locate_field_finds_member),
        cmocka_unit_test(test_locate_field_handles_broken_input),
        cmocka_unit_test(test_locate_field_says_whether_offset_is_in_key),
        cmocka_unit_test(test_invalid_utf8_in_key_names_no_field),
        cmocka_unit_test(test_huge_integer_names_field),
        cmocka_unit_test(test_duplicate_key_names_field),
        cmocka_unit_test(test_duplicate_key_in_nested_object_names_member),
        cmocka_unit_test(test_long_unicode_key_cut_at_char_boundary),
        cmocka_unit_test(test_syntax_error_in_member_names_it),
        cmocka_unit_test(test_deep_nesting_rejected_cleanly),
        cmocka_unit_test(test_utf8_valid_rejects_bad_sequences),
        cmocka_unit_test(test_utf8_trim_drops_incomplete_tail),
        cmocka_unit_test(test_utf8_sanitize_replaces_bad_bytes),
        cmocka_unit_test(test_copy_cut_stops_at_char_boundary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
