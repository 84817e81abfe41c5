/*
 * Tests of common/config.c: flags, environment variables, defaults, ranges,
 * and --help.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/config.h"

static const char *fake_env[][2] = {{NULL, NULL}, {NULL, NULL}, {NULL, NULL}};

static const char *env_get(const char *name)
{
    for (size_t i = 0; i < 3; i++)
        if (fake_env[i][0] && strcmp(fake_env[i][0], name) == 0)
            return fake_env[i][1];
    return NULL;
}

static void set_env(size_t slot, const char *name, const char *value)
{
    fake_env[slot][0] = name;
    fake_env[slot][1] = value;
}

static int clear_env(void **state)
{
    (void)state;
    memset(fake_env, 0, sizeof(fake_env));
    return 0;
}

struct values {
    long long port;
    const char *url;
    double ratio;
    int verbose;
};

static struct values v;

static const struct config_option options[] = {
    {"port", "T_PORT", CONFIG_INT, &v.port, "8000", 1, 65535, "PORT", "TCP port."},
    {"redis", "T_REDIS", CONFIG_STRING, &v.url, "redis://127.0.0.1:6379", 0, 0, "URL",
     "Redis URL."},
    {"ratio", "T_RATIO", CONFIG_DOUBLE, &v.ratio, "0.5", 0, 1, NULL, "A ratio."},
    {"verbose", NULL, CONFIG_BOOL, &v.verbose, "false", 0, 0, NULL, "Say more."},
};
static const struct config_spec spec = {"prog [options]", "A test program.", options, 4};

static int parse(int argc, char **argv, char *err)
{
    return config_parse(&spec, argc, argv, env_get, err, 256);
}

static void test_defaults_apply(void **state)
{
    (void)state;
    char *argv[] = {"prog"};
    char err[256];
    assert_int_equal(parse(1, argv, err), 0);
    assert_int_equal(v.port, 8000);
    assert_string_equal(v.url, "redis://127.0.0.1:6379");
    assert_true(v.ratio == 0.5);
    assert_int_equal(v.verbose, 0);
}

static void test_env_overrides_default_and_flag_overrides_env(void **state)
{
    (void)state;
    char err[256];
    set_env(0, "T_PORT", "9000");
    set_env(1, "T_REDIS", "redis://r:1");
    char *argv1[] = {"prog"};
    assert_int_equal(parse(1, argv1, err), 0);
    assert_int_equal(v.port, 9000);
    assert_string_equal(v.url, "redis://r:1");
    char *argv2[] = {"prog", "--port", "9100", "--redis=redis://x:2", "--verbose"};
    assert_int_equal(parse(5, argv2, err), 0);
    assert_int_equal(v.port, 9100);
    assert_string_equal(v.url, "redis://x:2");
    assert_int_equal(v.verbose, 1);
}

static void test_out_of_range_names_the_flag(void **state)
{
    (void)state;
    char err[256];
    char *argv[] = {"prog", "--port", "70000"};
    assert_int_equal(parse(3, argv, err), -1);
    assert_non_null(strstr(err, "--port"));
    assert_non_null(strstr(err, "1 to 65535"));
}

static void test_bad_env_value_names_the_variable(void **state)
{
    (void)state;
    char err[256];
    set_env(0, "T_RATIO", "lots");
    char *argv[] = {"prog"};
    assert_int_equal(parse(1, argv, err), -1);
    assert_non_null(strstr(err, "T_RATIO"));
    assert_non_null(strstr(err, "not a number"));
}

static void test_unknown_flag_and_missing_value(void **state)
{
    (void)state;
    char err[256];
    char *argv1[] = {"prog", "--nope"};
    assert_int_equal(parse(2, argv1, err), -1);
    assert_non_null(strstr(err, "unknown option '--nope'"));
    char *argv2[] = {"prog", "--port"};
    assert_int_equal(parse(2, argv2, err), -1);
    assert_non_null(strstr(err, "--port needs a value"));
    char *argv3[] = {"prog", "stray"};
    assert_int_equal(parse(2, argv3, err), -1);
    assert_non_null(strstr(err, "unexpected argument 'stray'"));
    char *argv4[] = {"prog", "--port", "12x"};
    assert_int_equal(parse(3, argv4, err), -1);
    assert_non_null(strstr(err, "not an integer"));
}

static void test_boolean_forms(void **state)
{
    (void)state;
    char err[256];
    char *argv1[] = {"prog", "--verbose", "false", "--port", "9"};
    assert_int_equal(parse(5, argv1, err), 0);
    assert_int_equal(v.verbose, 0);
    assert_int_equal(v.port, 9);
    char *argv2[] = {"prog", "--verbose=yes"};
    assert_int_equal(parse(2, argv2, err), 0);
    assert_int_equal(v.verbose, 1);
    char *argv3[] = {"prog", "--verbose", "--no-verbose"};
    assert_int_equal(parse(3, argv3, err), 0);
    assert_int_equal(v.verbose, 0);
    char *argv4[] = {"prog", "--no-port"};
    assert_int_equal(parse(2, argv4, err), -1); /* --no- only for booleans */
    char *argv5[] = {"prog", "--verbose=maybe"};
    assert_int_equal(parse(2, argv5, err), -1);
    assert_non_null(strstr(err, "not a boolean"));
}

static void test_list_option_collects_every_use(void **state)
{
    (void)state;
    struct config_list stops;
    long long n = 0;
    const struct config_option opts[] = {
        {"stop", NULL, CONFIG_LIST, &stops, NULL, 0, 0, NULL, "Stop string."},
        {"n", NULL, CONFIG_INT, &n, "1", 0, 0, NULL, "A number."},
    };
    const struct config_spec sp = {"prog", "Lists.", opts, 2};
    char err[256];
    char *argv[] = {"prog", "--stop", "a b", "--n", "3", "--stop=\\n", "--stop", ""};
    assert_int_equal(config_parse(&sp, 8, argv, env_get, err, sizeof(err)), 0);
    assert_int_equal(stops.n, 3);
    assert_string_equal(stops.items[0], "a b");
    assert_string_equal(stops.items[1], "\\n");
    assert_string_equal(stops.items[2], "");
    assert_int_equal(n, 3);
    char *none[] = {"prog"};
    assert_int_equal(config_parse(&sp, 1, none, env_get, err, sizeof(err)), 0);
    assert_int_equal(stops.n, 0);
}

static void test_help_lists_flags_and_env_vars(void **state)
{
    (void)state;
    char err[256];
    char *argv[] = {"prog", "--port", "bad", "--help"};
    assert_int_equal(parse(4, argv, err), CONFIG_HELP);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    config_print_help(&spec, f);
    fclose(f);
    assert_non_null(strstr(buf, "Usage: prog [options]"));
    assert_non_null(strstr(buf, "--port PORT"));
    assert_non_null(strstr(buf, "T_PORT"));
    assert_non_null(strstr(buf, "--redis URL"));
    assert_non_null(strstr(buf, "T_REDIS"));
    assert_non_null(strstr(buf, "(default: 8000)"));
    assert_non_null(strstr(buf, "--verbose"));
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults_apply, clear_env),
        cmocka_unit_test_setup(test_env_overrides_default_and_flag_overrides_env, clear_env),
        cmocka_unit_test_setup(test_out_of_range_names_the_flag, clear_env),
        cmocka_unit_test_setup(test_bad_env_value_names_the_variable, clear_env),
        cmocka_unit_test_setup(test_unknown_flag_and_missing_value, clear_env),
        cmocka_unit_test_setup(test_boolean_forms, clear_env),
        cmocka_unit_test_setup(test_list_option_collects_every_use, clear_env),
        cmocka_unit_test_setup(test_help_lists_flags_and_env_vars, clear_env),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
