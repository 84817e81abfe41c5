/*
 * The engine on models the project makes itself (no ../shared needed):
 * make-model is deterministic; every weight type loads and generates; the
 * KV cache, RoPE and attention give the same logits whether a sequence is
 * run in one batch, in chunks or token by token; the sliding window really
 * limits what a token sees; stop strings, EOS ids, max_input_tokens and
 * seeds behave as the contract says; bad model files are clear errors.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "kernels/cpu/dtype.h"
#include "worker/engine.h"
#include "worker/make_model.h"
#include "worker/model.h"

static char dir[64];

static const char *model_path(const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s.gguf", dir, name);
    return buf;
}

static void make(const char *preset, uint32_t type, const char *name, uint64_t seed)
{
    char path[128], err[512];
    if (mkmodel_write(model_path(name, path, sizeof(path)), mkmodel_find_preset(preset), type, seed,
                      NULL, err, sizeof(err)) < 0)
        fail_msg("make-model %s: %s", name, err);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/millrace-test-engine-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    make("tiny", KC_TYPE_F32, "tiny-f32", 1);
    make("tiny", KC_TYPE_F16, "tiny-f16", 1);
    make("tiny", KC_TYPE_BF16, "tiny-bf16", 1);
    make("tiny", KC_TYPE_Q8_0, "tiny-q8_0", 1);
    make("tiny-swa", KC_TYPE_F32, "tiny-swa", 1);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static struct engine *open_engine(const char *name, int max_batch)
{
    char path[128], err[512];
    struct engine *e = NULL;
    struct engine_opts o = {.model_path = model_path(name, path, sizeof(path)),
                            .n_threads = 2,
                            .max_batch_tokens = max_batch};
    if (engine_create(&e, &o, err, sizeof(err)) < 0)
        fail_msg("%s: %s", name, err);
    return e;
}

static struct job_request *request(const char *json)
{
    struct job_request *r = NULL;
    struct job_error je;
    if (job_request_parse(&r, json, strlen(json), NULL, &je, NULL) != 0)
        fail_msg("bad request %s: %s", json, je.message);
    return r;
}

/* Greedy generation of n tokens from prompt; s must be seq_fini'd. */
static void generate(struct engine *e, const char *json, struct seq *s)
{
    struct job_request *req = request(json);
    struct engine_stats st;
    char err[512];
    if (engine_generate(e, req, s, &st, NULL, NULL, err, sizeof(err)) < 0)
        fail_msg("generate: %s", err);
    /* the request must outlive nothing the seq keeps after finishing */
    job_request_destroy(req);
}

static void test_make_model_is_deterministic(void **state)
{
    (void)state;
    char a[128], b[128], c[128], cmd[400];
    make("tiny", KC_TYPE_Q8_0, "again", 1);
    make("tiny", KC_TYPE_Q8_0, "other-seed", 2);
    snprintf(cmd, sizeof(cmd), "cmp -s '%s' '%s'", model_path("tiny-q8_0", a, sizeof(a)),
             model_path("again", b, sizeof(b)));
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof(cmd), "cmp -s '%s' '%s'", a, model_path("other-seed", c, sizeof(c)));
    assert_true(system(cmd) != 0);
}

static void test_every_weight_type_loads_and_generates(void **state)
{
    (void)state;
    const char *names[] = {"tiny-f32", "tiny-f16", "tiny-bf16", "tiny-q8_0"};
    const char *types[] = {"F32", "F16", "BF16", "Q8_0"};
    int first[4];
    for (int i = 0; i < 4; i++) {
        struct engine *e = open_engine(names[i], 64);
        assert_string_equal(model_weight_type_name(e->model), types[i]);
        assert_int_equal(e->model->cfg.dim, 64);
        assert_int_equal(e->model->cfg.n_kv_heads, 2);
        struct seq s;
        generate(e, "{\"text\": \"Once upon a time\", \"max_tokens\": 16, \"temperature\": 0}", &s);
        assert_int_equal(s.n_new, 16);
        assert_int_equal(s.finish, JOB_FINISH_LENGTH);
        first[i] = s.tokens[s.n_prompt];
        seq_fini(&s);
        engine_destroy(e);
    }
    /* the same weights rounded four ways still agree on the first token */
    assert_int_equal(first[1], first[0]);
    assert_int_equal(first[2], first[0]);
}

/* Logits of a 40-token sequence: one batch vs chunks of 7 vs one at a time. */
static void test_batch_chunks_and_steps_give_the_same_logits(void **state)
{
    (void)state;
    enum { N = 40 };
    int tokens[N];
    tokens[0] = 1;
    for (int i = 1; i < N; i++)
        tokens[i] = 300 + (i * 7919) % 20000;
    struct engine *whole = open_engine("tiny-f32", 64), *chunks = open_engine("tiny-f32", 7);
    int vocab = whole->model->cfg.vocab_size;
    float *a = malloc((size_t)N * vocab * sizeof(float));
    float *b = malloc((size_t)N * vocab * sizeof(float));
    float *c = malloc((size_t)N * vocab * sizeof(float));
    char err[512];
    assert_int_equal(engine_run(whole, tokens, N, 0, a, err, sizeof(err)), 0);
    assert_int_equal(engine_run(chunks, tokens, N, 0, b, err, sizeof(err)), 0);
    for (int i = 0; i < N; i++) /* decode steps, each seeing the cache of the earlier ones */
        assert_int_equal(
            engine_run(chunks, tokens + i, 1, i, c + (size_t)i * vocab, err, sizeof(err)), 0);
    double db = 0, dc = 0;
    for (size_t i = 0; i < (size_t)N * vocab; i++) {
        db = fmax(db, fabs(a[i] - b[i]));
        dc = fmax(dc, fabs(a[i] - c[i]));
    }
    printf("max |logit difference|: chunks %.2e, token by token %.2e\n", db, dc);
    assert_true(db < 1e-4);
    assert_true(dc < 1e-4);
    free(a);
    free(b);
    free(c);
    engine_destroy(whole);
    engine_destroy(chunks);
}

/* With a 16-token window and 2 layers, position p sees inputs back to
 * p - 2*15 at most: a token before that must not change p's logits, one
 * inside must. */
static void test_sliding_window_limits_what_a_token_sees(void **state)
{
    (void)state;
    enum { N = 60 };
    struct engine *e = open_engine("tiny-swa", 64);
    assert_int_equal(e->model->cfg.sliding_window, 16);
    int vocab = e->model->cfg.vocab_size;
    int tokens[N];
    tokens[0] = 1;
    for (int i = 1; i < N; i++)
        tokens[i] = 400 + (i * 104729) % 25000;
    float *base = malloc((size_t)N * vocab * sizeof(float));
    float *changed = malloc((size_t)N * vocab * sizeof(float));
    char err[512];
    assert_int_equal(engine_run(e, tokens, N, 0, base, err, sizeof(err)), 0);
    int far = N - 1 - 2 * 15 - 1, near = N - 1 - 10;
    int saved = tokens[far];
    tokens[far] = 777;
    assert_int_equal(engine_run(e, tokens, N, 0, changed, err, sizeof(err)), 0);
    const float *lb = base + (size_t)(N - 1) * vocab, *lc = changed + (size_t)(N - 1) * vocab;
    for (int v = 0; v < vocab; v++)
        assert_true(lb[v] == lc[v]);
    tokens[far] = saved;
    tokens[near] = 777;
    assert_int_equal(engine_run(e, tokens, N, 0, changed, err, sizeof(err)), 0);
    double d = 0;
    for (int v = 0; v < vocab; v++)
        d = fmax(d, fabs(lb[v] - lc[v]));
    assert_true(d > 1e-3);
    free(base);
    free(changed);
    engine_destroy(e);
}

static void test_stop_string_ends_the_sample_before_it(void **state)
{
    (void)state;
    struct engine *e = open_engine("tiny-f32", 64);
    struct seq s;
    generate(e, "{\"text\": \"The capital of France\", \"max_tokens\": 24, \"temperature\": 0}",
             &s);
    size_t len;
    const char *text = seq_text(&s, &len);
    assert_true(len > 12);
    /* a stop string from the middle of the free-running text, spanning tokens */
    char stop[8], prefix[256];
    size_t at = len / 2;
    while (at < len && ((unsigned char)text[at] & 0xC0) == 0x80)
        at++;
    size_t sl = 3;
    while (at + sl < len && ((unsigned char)text[at + sl] & 0xC0) == 0x80)
        sl++;
    memcpy(stop, text + at, sl);
    stop[sl] = '\0';
    const char *first = strstr(text, stop);
    memcpy(prefix, text, (size_t)(first - text));
    prefix[first - text] = '\0';
    seq_fini(&s);

    json_t *body = json_pack("{s:s, s:i, s:f, s:[s]}", "text", "The capital of France",
                             "max_tokens", 24, "temperature", 0.0, "stop", stop);
    char *json = json_dumps(body, 0);
    json_decref(body);
    generate(e, json, &s);
    free(json);
    text = seq_text(&s, &len);
    assert_int_equal(s.finish, JOB_FINISH_STOP);
    assert_int_equal(len, strlen(prefix));
    assert_memory_equal(text, prefix, len);
    seq_fini(&s);
    engine_destroy(e);
}

static void test_eos_token_ids_end_the_sample(void **state)
{
    (void)state;
    struct engine *e = open_engine("tiny-f32", 64);
    struct seq s;
    generate(e, "{\"text\": \"Hello\", \"max_tokens\": 12, \"temperature\": 0}", &s);
    int fourth = s.tokens[s.n_prompt + 3];
    int earlier = 0;
    for (int i = 0; i < 3; i++)
        earlier |= s.tokens[s.n_prompt + i] == fourth;
    seq_fini(&s);
    if (earlier)
        skip(); /* the 4th token also came earlier: pick is ambiguous */
    char json[200];
    snprintf(json, sizeof(json),
             "{\"text\": \"Hello\", \"max_tokens\": 12, \"temperature\": 0, "
             "\"eos_token_ids\": [%d]}",
             fourth);
    generate(e, json, &s);
    assert_int_equal(s.finish, JOB_FINISH_EOS);
    assert_int_equal(s.n_new, 4);
    seq_fini(&s);
    engine_destroy(e);
}

static void test_max_input_tokens_keeps_bos_and_the_end(void **state)
{
    (void)state;
    struct engine *e = open_engine("tiny-f32", 64);
    struct job_request *all = request("{\"text\": \"one two three four five six seven eight\", "
                                      "\"max_tokens\": 1}");
    struct job_request *cut = request("{\"text\": \"one two three four five six seven eight\", "
                                      "\"max_tokens\": 1, \"max_input_tokens\": 4}");
    int *a, *c, na, nc;
    char err[256];
    assert_int_equal(seq_tokenize_prompt(e->model, all, &a, &na, err, sizeof(err)), 0);
    assert_int_equal(seq_tokenize_prompt(e->model, cut, &c, &nc, err, sizeof(err)), 0);
    assert_true(na > 4);
    assert_int_equal(nc, 4);
    assert_int_equal(c[0], 1); /* BOS stays first */
    assert_memory_equal(c + 1, a + na - 3, 3 * sizeof(int));
    free(a);
    free(c);
    job_request_destroy(all);
    job_request_destroy(cut);
    engine_destroy(e);
}

static void test_prompt_longer_than_the_context_is_a_clear_error(void **state)
{
    (void)state;
    struct engine *e = open_engine("tiny-f32", 64);
    size_t n = 4000;
    char *json = malloc(n + 100);
    strcpy(json, "{\"text\": \"");
    for (size_t i = 0; i < 1000; i++)
        strcat(json, "abc ");
    strcat(json, "\", \"max_tokens\": 4}");
    struct job_request *req = request(json);
    struct seq s;
    struct engine_stats st;
    char err[512] = "";
    assert_int_equal(engine_generate(e, req, &s, &st, NULL, NULL, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "context"));
    free(json);
    job_request_destroy(req);
    engine_destroy(e);
}

static void test_seeded_sampling_is_reproducible(void **state)
{
    (void)state;
    struct engine *e = open_engine("tiny-f32", 64);
    const char *req = "{\"text\": \"Once\", \"max_tokens\": 20, \"temperature\": 1.0, "
                      "\"top_k\": 0, \"seed\": 42}";
    struct seq a, b, c;
    generate(e, req, &a);
    generate(e, req, &b);
    generate(e,
             "{\"text\": \"Once\", \"max_tokens\": 20, \"temperature\": 1.0, "
             "\"top_k\": 0, \"seed\": 43}",
             &c);
    assert_int_equal(a.n_new, 20);
    assert_memory_equal(a.tokens, b.tokens, (size_t)a.n_tokens * sizeof(int));
    assert_true(memcmp(a.tokens, c.tokens, (size_t)a.n_tokens * sizeof(int)) != 0);
    seq_fini(&a);
    seq_fini(&b);
    seq_fini(&c);
    engine_destroy(e);
}

static void test_bad_model_files_are_clear_errors(void **state)
{
    (void)state;
    char path[128], cut[160], cmd[400], err[512];
    model_path("tiny-f16", path, sizeof(path));
    snprintf(cut, sizeof(cut), "%s/truncated.gguf", dir);
    snprintf(cmd, sizeof(cmd), "head -c 300000 '%s' > '%s'", path, cut);
    assert_int_equal(system(cmd), 0);
    struct model *m = NULL;
    assert_int_equal(model_load(&m, cut, err, sizeof(err)), -1);
    assert_null(m);
    assert_non_null(strstr(err, "past end of file"));
    assert_int_equal(model_load(&m, "/nonexistent/model.gguf", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "/nonexistent/model.gguf"));
    /* a vocabulary-only file is not a model */
    if (access("../shared/tokenizer-vectors/ggml-vocab-llama-spm.gguf", R_OK) == 0) {
        assert_int_equal(model_load(&m, "../shared/tokenizer-vectors/ggml-vocab-llama-spm.gguf",
                                    err, sizeof(err)),
                         -1);
        printf("vocab-only file: %s\n", err);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_make_model_is_deterministic),
        cmocka_unit_test(test_every_weight_type_loads_and_generates),
        cmocka_unit_test(test_batch_chunks_and_steps_give_the_same_logits),
        cmocka_unit_test(test_sliding_window_limits_what_a_token_sees),
        cmocka_unit_test(test_stop_string_ends_the_sample_before_it),
        cmocka_unit_test(test_eos_token_ids_end_the_sample),
        cmocka_unit_test(test_max_input_tokens_keeps_bos_and_the_end),
        cmocka_unit_test(test_prompt_longer_than_the_context_is_a_clear_error),
        cmocka_unit_test(test_seeded_sampling_is_reproducible),
        cmocka_unit_test(test_bad_model_files_are_clear_errors),
    };
    return cmocka_run_group_tests_name("engine", tests, group_setup, group_teardown);
}
