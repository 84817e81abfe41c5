/*
 * Tests of api/auth.c: loading API keys from a list and a file, and checking
 * Authorization headers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "api/auth.h"

static void test_no_keys_means_open(void **state)
{
    (void)state;
    struct auth *a = (struct auth *)1;
    char err[256];
    assert_int_equal(auth_create(&a, NULL, NULL, err, sizeof(err)), 0);
    assert_null(a);
    assert_int_equal(auth_check(NULL, NULL), 1);
    assert_int_equal(auth_create(&a, " , ,", NULL, err, sizeof(err)), 0);
    assert_null(a);
}

static void test_list_keys_accept_only_exact_bearer(void **state)
{
    (void)state;
    struct auth *a = NULL;
    char err[256];
    assert_int_equal(auth_create(&a, "alpha, beta2 ,gamma", NULL, err, sizeof(err)), 0);
    assert_non_null(a);
    assert_int_equal(auth_count(a), 3);
    assert_int_equal(auth_check(a, "Bearer alpha"), 1);
    assert_int_equal(auth_check(a, "Bearer beta2"), 1);
    assert_int_equal(auth_check(a, "bearer gamma"), 1); /* the scheme is case-insensitive */
    assert_int_equal(auth_check(a, "Bearer alph"), 0);  /* a prefix is not the key */
    assert_int_equal(auth_check(a, "Bearer alphaa"), 0);
    assert_int_equal(auth_check(a, "Bearer ALPHA"), 0);
    assert_int_equal(auth_check(a, "Basic alpha"), 0);
    assert_int_equal(auth_check(a, "alpha"), 0);
    assert_int_equal(auth_check(a, "Bearer "), 0);
    assert_int_equal(auth_check(a, NULL), 0);
    auth_destroy(a);
}

static void test_file_keys_skip_comments_and_blank_lines(void **state)
{
    (void)state;
    char path[] = "/tmp/millrace-keys-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "# team keys\n\nfile-key-1\n  file-key-2  \r\n# old-key\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    struct auth *a = NULL;
    char err[256];
    assert_int_equal(auth_create(&a, "list-key", path, err, sizeof(err)), 0);
    unlink(path);
    assert_int_equal(auth_count(a), 3);
    assert_int_equal(auth_check(a, "Bearer file-key-1"), 1);
    assert_int_equal(auth_check(a, "Bearer file-key-2"), 1);
    assert_int_equal(auth_check(a, "Bearer list-key"), 1);
    assert_int_equal(auth_check(a, "Bearer old-key"), 0);
    assert_int_equal(auth_check(a, "Bearer # team keys"), 0);
    auth_destroy(a);
}

static void test_bad_keys_and_missing_file_are_errors(void **state)
{
    (void)state;
    struct auth *a = NULL;
    char err[256];
    assert_int_equal(auth_create(&a, NULL, "/nonexistent/keys", err, sizeof(err)), -1);
    assert_null(a);
    assert_non_null(strstr(err, "/nonexistent/keys"));
    char ctl[] = "good,ba\x01d";
    assert_int_equal(auth_create(&a, ctl, NULL, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "control"));
    char big[400];
    memset(big, 'k', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(auth_create(&a, big, NULL, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "longer"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_keys_means_open),
        cmocka_unit_test(test_list_keys_accept_only_exact_bearer),
        cmocka_unit_test(test_file_keys_skip_comments_and_blank_lines),
        cmocka_unit_test(test_bad_keys_and_missing_file_are_errors),
    };
    return cmocka_run_group_tests_name("auth", tests, NULL, NULL);
}
