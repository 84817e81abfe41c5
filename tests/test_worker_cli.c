/*
 * millrace-worker's command line, run as users run it: make-model, then
 * generate (--json: prompt_tokens, tokens, text, finish_reason, speeds) and
 * tokenize on the model it made; bad invocations fail with a message and
 * exit status 2.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "tests/support/stack.h"

static char dir[64], model[128];

/* Run cmd; its stdout into out (new). Returns the exit status. */
static int run(const char *cmd, char **out)
{
    char full[1024];
    snprintf(full, sizeof(full), "%s 2>&1", cmd);
    FILE *f = popen(full, "r");
    assert_non_null(f);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0)
        len += n;
    buf[len] = '\0';
    int status = pclose(f);
    *out = buf;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static const char *bin(void)
{
    return stack_sanitized() ? "build/asan/millrace-worker" : "build/millrace-worker";
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/millrace-test-cli-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(model, sizeof(model), "%s/tiny.gguf", dir);
    char cmd[512], *out;
    snprintf(cmd, sizeof(cmd), "%s make-model --preset tiny --type f16 --out %s", bin(), model);
    int rc = run(cmd, &out);
    if (rc != 0)
        fprintf(stderr, "make-model failed: %s\n", out);
    free(out);
    return rc == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_generate_json_has_every_field(void **state)
{
    (void)state;
    char cmd[512], *out;
    snprintf(cmd, sizeof(cmd),
             "%s generate --model %s --prompt 'Once upon a time' --max-tokens 12 "
             "--temperature 0 --threads 1 --json",
             bin(), model);
    assert_int_equal(run(cmd, &out), 0);
    json_error_t je;
    json_t *o = json_loads(out, 0, &je);
    if (!o)
        fail_msg("not JSON: %s (%s)", out, je.text);
    json_t *pt = json_object_get(o, "prompt_tokens"), *tk = json_object_get(o, "tokens");
    assert_true(json_is_array(pt) && json_array_size(pt) >= 2);
    assert_int_equal(json_integer_value(json_array_get(pt, 0)), 1); /* BOS */
    assert_int_equal(json_array_size(tk), 12);
    assert_true(json_is_string(json_object_get(o, "text")));
    assert_string_equal(json_string_value(json_object_get(o, "finish_reason")), "length");
    assert_true(json_real_value(json_object_get(o, "prefill_tokens_per_s")) > 0);
    assert_true(json_real_value(json_object_get(o, "decode_tokens_per_s")) > 0);
    json_decref(o);
    free(out);
}

static void test_plain_generate_prints_the_text_and_a_summary(void **state)
{
    (void)state;
    char cmd[512], *out;
    snprintf(cmd, sizeof(cmd),
             "%s generate --model %s --prompt Hello --max-tokens 5 --temperature 0 --threads 1",
             bin(), model);
    assert_int_equal(run(cmd, &out), 0);
    assert_non_null(strstr(out, "5 generated, finish: length"));
    free(out);
}

static void test_tokenize_prints_the_ids(void **state)
{
    (void)state;
    char cmd[512], *out;
    snprintf(cmd, sizeof(cmd), "%s tokenize --model %s --text 'hello world'", bin(), model);
    assert_int_equal(run(cmd, &out), 0);
    assert_true(strncmp(out, "1 ", 2) == 0); /* BOS first */
    char *end;
    int n = 0;
    for (const char *p = out; *p && *p != '\n'; p = end, n++) {
        strtol(p, &end, 10);
        if (end == p)
            fail_msg("not a list of ids: %s", out);
    }
    assert_true(n >= 2);
    free(out);
}

static void test_bad_invocations_exit_2_with_a_message(void **state)
{
    (void)state;
    char cmd[512], *out;
    snprintf(cmd, sizeof(cmd), "%s generate --prompt x", bin());
    assert_int_equal(run(cmd, &out), 2);
    assert_non_null(strstr(out, "--model and --prompt are required"));
    free(out);
    snprintf(cmd, sizeof(cmd), "%s generate --model %s --prompt x --top-p 2", bin(), model);
    assert_int_equal(run(cmd, &out), 2);
    assert_non_null(strstr(out, "--top-p"));
    free(out);
    snprintf(cmd, sizeof(cmd), "%s make-model --preset nope --out /tmp/x", bin());
    assert_int_equal(run(cmd, &out), 2);
    assert_non_null(strstr(out, "mistral-7b")); /* it lists the presets */
    free(out);
    snprintf(cmd, sizeof(cmd), "%s frobnicate", bin());
    assert_int_equal(run(cmd, &out), 2);
    assert_non_null(strstr(out, "Usage: millrace-worker"));
    free(out);
    snprintf(cmd, sizeof(cmd), "%s generate --model %s/missing.gguf --prompt x", bin(), dir);
    assert_int_equal(run(cmd, &out), 1);
    assert_non_null(strstr(out, "missing.gguf"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generate_json_has_every_field),
        cmocka_unit_test(test_plain_generate_prints_the_text_and_a_summary),
        cmocka_unit_test(test_tokenize_prints_the_ids),
        cmocka_unit_test(test_bad_invocations_exit_2_with_a_message),
    };
    return cmocka_run_group_tests_name("worker_cli", tests, group_setup, group_teardown);
}
