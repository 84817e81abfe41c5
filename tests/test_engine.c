/*
 * The engine on models the project makes itself (no ../shared needed):
 * make-model is deterministic; every weight type loads and generates; the
 * KV cache, RoPE and attention give the same logits, bit for bit, whether a
 * sequence is run in one batch, in chunks, token by token or interleaved
 * with another sequence in shared steps; the sliding window really
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
#include "tests/support/fixture.h"
#include "worker/engine.h"
#include "kernels/cpu/cpu.h"
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
    make("small", KC_TYPE_Q8_0, "small-q8_0", 1); /* dim 256: Q8_0_R8 where there is VNNI */
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* kv_blocks 0: the default (one sequence of the full context) */
static struct engine *open_engine_with(const char *name, int max_batch, int kv_blocks,
                                       int n_threads)
{
    char path[128], err[512];
    struct engine *e = NULL;
    struct engine_opts o = {.model_path = model_path(name, path, sizeof(path)),
                            .n_threads = n_threads,
                            .kv_blocks = kv_blocks,
                            .max_batch_tokens = max_batch};
    if (engine_create(&e, &o, err, sizeof(err)) < 0)
        fail_msg("%s: %s", name, err);
    return e;
}

static struct engine *open_engine(const char *name, int max_batch)
{
    return open_engine_with(name, max_batch, 0, 2);
}

/* Greedy generation of n tokens from prompt; s must be seq_fini'd. */
static void generate(struct engine *e, const char *json, struct seq *s)
{
    struct job_request *req = fixture_request(json);
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

/* A test prompt of n tokens: BOS, then a spread of ids from `salt`. */
static void test_tokens(int *tokens, int n, int salt)
{
    tokens[0] = 1;
    for (int i = 1; i < n; i++)
        tokens[i] = 300 + (i * 7919 + salt * 104729) % 20000;
}

/*
 * Logits of a 40-token sequence: one batch vs chunks of 7 vs one at a time,
 * bit for bit in every weight type (2 threads; the chunks and steps on 1):
 * a token's logits must not depend on what else is in its batch, or a
 * greedy choice and a seeded sample would depend on the server's load.
 */
static void test_batch_chunks_and_steps_give_the_same_logits(void **state)
{
    (void)state;
    enum { N = 40 };
    static const char *const names[] = {"tiny-f32", "tiny-f16", "tiny-bf16", "tiny-q8_0",
                                        "small-q8_0"};
    int tokens[N];
    test_tokens(tokens, N, 0);
    for (size_t m = 0; m < sizeof(names) / sizeof(names[0]); m++) {
        struct engine *whole = open_engine(names[m], 64);
        struct engine *chunks = open_engine_with(names[m], 7, 0, 1);
        int vocab = whole->model->cfg.vocab_size;
        size_t bytes = (size_t)N * vocab * sizeof(float);
        float *a = malloc(bytes), *b = malloc(bytes), *c = malloc(bytes);
        char err[512];
        assert_int_equal(engine_run(whole, tokens, N, 0, a, err, sizeof(err)), 0);
        assert_int_equal(engine_run(chunks, tokens, N, 0, b, err, sizeof(err)), 0);
        for (int i = 0; i < N; i++) /* decode steps, each seeing the cache of the earlier ones */
            assert_int_equal(
                engine_run(chunks, tokens + i, 1, i, c + (size_t)i * vocab, err, sizeof(err)), 0);
        for (int i = 0; i < N; i++) {
            const size_t row = (size_t)i * vocab;
            if (memcmp(a + row, b + row, vocab * sizeof(float)) != 0 ||
                memcmp(a + row, c + row, vocab * sizeof(float)) != 0)
                fail_msg("%s: the logits of token %d differ between one batch, chunks of 7 "
                         "and single steps",
                         names[m], i);
        }
        free(a);
        free(b);
        free(c);
        engine_destroy(whole);
        engine_destroy(chunks);
    }
}

/*
 * On a CPU with AVX512VNNI the backend repacks the small model's Q8_0
 * projections (rows of 256 values) into Q8_0_R8, whose sums run in another
 * order: each matmul moves in the last bit (tests/test_kernels.c bounds
 * them), but every projection quantizes its input again, and where a value
 * sits on a rounding boundary one int8 moves by one step (about 1% of the
 * block's largest value) and carries on. The logits must stay as close as
 * such a step allows (within 5% of the largest logit; here about 1.3%),
 * pick the same top token wherever the top two are 0.1 apart, and differ
 * somewhere (or the repacked kernel did not run).
 */
static void test_q8_0_repacked_weights_give_the_same_logits_within_rounding(void **state)
{
    (void)state;
    if (!kc_cpu_supports(KC_ISA_AVX512VNNI)) {
        print_message("    skipped: no AVX512VNNI here, so nothing is repacked\n");
        skip();
    }
    enum { N = 24 };
    int tokens[N];
    test_tokens(tokens, N, 3);
    char err[512];
    float *l[2] = {NULL, NULL};
    int vocab = 0;
    static const enum kc_isa isas[2] = {KC_ISA_AVX2, KC_ISA_AVX512VNNI};
    const enum kc_isa was = kc_cpu_isa();
    for (int k = 0; k < 2; k++) {
        assert_int_equal(kc_cpu_set_isa(isas[k]), 0);
        struct engine *e = open_engine("small-q8_0", 64);
        vocab = e->model->cfg.vocab_size;
        l[k] = malloc((size_t)N * vocab * sizeof(float));
        assert_non_null(l[k]);
        assert_int_equal(engine_run(e, tokens, N, 0, l[k], err, sizeof(err)), 0);
        engine_destroy(e);
    }
    assert_int_equal(kc_cpu_set_isa(was), 0);
    double worst = 0, peak = 0;
    int clear = 0;
    for (int t = 0; t < N; t++) {
        const float *a = l[0] + (size_t)t * vocab, *b = l[1] + (size_t)t * vocab;
        int top = 0, second = -1;
        for (int v = 0; v < vocab; v++) {
            double d = fabs((double)a[v] - b[v]);
            worst = d > worst ? d : worst;
            peak = fabs(a[v]) > peak ? fabs(a[v]) : peak;
            if (a[v] > a[top]) {
                second = top;
                top = v;
            } else if (v != top && (second < 0 || a[v] > a[second])) {
                second = v;
            }
        }
        if (a[top] - a[second] > 0.1f) {
            clear++;
            int top_b = 0;
            for (int v = 1; v < vocab; v++)
                top_b = b[v] > b[top_b] ? v : top_b;
            assert_int_equal(top_b, top);
        }
    }
    print_message("    largest logit difference %.3g (largest logit %.3g); the same top token "
                  "at %d clear rows of %d\n",
                  worst, peak, clear, N);
    assert_true(worst > 0);
    assert_true(worst <= 0.05 * peak);
    assert_true(clear > N / 2);
    free(l[0]);
    free(l[1]);
}

/*
 * Two sequences through the backend in shared steps, as the serving worker
 * batches them: their tokens interleaved row by row, in chunks of varying
 * size (prefill chunks next to single decode tokens, a step of one token),
 * in blocks of the KV pool scattered in memory, each sequence sometimes seq
 * 0 and sometimes seq 1 of the step, on 1 thread. Each one's logits equal,
 * bit for bit, those of the sequence run alone (on 2 threads, one token by
 * token, the other in one batch).
 */
static void test_interleaved_sequences_give_the_logits_of_each_alone(void **state)
{
    (void)state;
    enum { NA = 40, NB = 30, STEPS = 9, BS = 16 };
    static const int chunk_a[STEPS] = {5, 1, 9, 1, 1, 13, 1, 0, 9};
    static const int chunk_b[STEPS] = {12, 1, 1, 6, 1, 0, 0, 2, 7};
    static const int blocks_a[] = {40, 33, 57}, blocks_b[] = {5, 62};
    static const char *const names[] = {"tiny-f32", "tiny-q8_0"};
    int tok[2][NA], n[2] = {NA, NB};
    const int *chunk[2] = {chunk_a, chunk_b}, *blocks[2] = {blocks_a, blocks_b};
    test_tokens(tok[0], NA, 1);
    test_tokens(tok[1], NB, 2);
    for (size_t m = 0; m < sizeof(names) / sizeof(names[0]); m++) {
        struct engine *alone = open_engine(names[m], 64);
        struct engine *e = open_engine_with(names[m], 64, 64, 1);
        const int vocab = alone->model->cfg.vocab_size;
        float *want[2], *got[2];
        char err[512];
        for (int s = 0; s < 2; s++) {
            want[s] = malloc((size_t)n[s] * vocab * sizeof(float));
            got[s] = malloc((size_t)n[s] * vocab * sizeof(float));
        }
        /* alone: a token by token, b in one batch */
        for (int i = 0; i < NA; i++)
            assert_int_equal(
                engine_run(alone, tok[0] + i, 1, i, want[0] + (size_t)i * vocab, err, sizeof(err)),
                0);
        assert_int_equal(engine_run(alone, tok[1], NB, 0, want[1], err, sizeof(err)), 0);
        float *logits = malloc((size_t)64 * vocab * sizeof(float));
        int done[2] = {0, 0};
        for (int step = 0; step < STEPS; step++) {
            /* rows: a, b, a, b, ... while both have tokens in this step */
            int tokens[64], pos[64], seq[64], rows[64], who[64], nt = 0;
            int left[2] = {chunk[0][step], chunk[1][step]};
            const int first = step % 2; /* sequence 0 of this step */
            const int *tables[2] = {blocks[first], blocks[1 - first]};
            for (int turn = 0; left[0] + left[1] > 0; turn ^= 1) {
                const int s = left[turn] > 0 ? turn : 1 - turn;
                const int p = done[s]++;
                left[s]--;
                tokens[nt] = tok[s][p];
                pos[nt] = p;
                seq[nt] = s == first ? 0 : 1;
                who[nt] = s;
                rows[nt] = nt;
                nt++;
            }
            struct backend_batch b = {.n_tokens = nt,
                                      .tokens = tokens,
                                      .pos = pos,
                                      .seq = seq,
                                      .block_tables = tables,
                                      .n_logits = nt,
                                      .logit_rows = rows};
            assert_int_equal(e->ops->forward(e->be, &b, logits, err, sizeof(err)), 0);
            for (int i = 0; i < nt; i++)
                memcpy(got[who[i]] + (size_t)pos[i] * vocab, logits + (size_t)i * vocab,
                       (size_t)vocab * sizeof(float));
        }
        assert_int_equal(done[0], NA);
        assert_int_equal(done[1], NB);
        for (int s = 0; s < 2; s++) {
            for (int i = 0; i < n[s]; i++)
                if (memcmp(want[s] + (size_t)i * vocab, got[s] + (size_t)i * vocab,
                           (size_t)vocab * sizeof(float)) != 0)
                    fail_msg("%s: sequence %d, token %d: the logits batched with another "
                             "sequence differ from those of the sequence alone",
                             names[m], s, i);
            free(want[s]);
            free(got[s]);
        }
        free(logits);
        engine_destroy(alone);
        engine_destroy(e);
    }
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
    struct job_request *all =
        fixture_request("{\"text\": \"one two three four five six seven eight\", "
                        "\"max_tokens\": 1}");
    struct job_request *cut =
        fixture_request("{\"text\": \"one two three four five six seven eight\", "
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
    struct job_request *req = fixture_request(json);
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
        cmocka_unit_test(test_q8_0_repacked_weights_give_the_same_logits_within_rounding),
        cmocka_unit_test(test_every_weight_type_loads_and_generates),
        cmocka_unit_test(test_batch_chunks_and_steps_give_the_same_logits),
        cmocka_unit_test(test_interleaved_sequences_give_the_logits_of_each_alone),
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
