/*
 * The Mistral instruct template (worker/chat.c) and "messages" from the
 * request to the generated text:
 *
 * - the exact ids of a three-turn conversation with a system message on the
 *   real Llama SPM vocabulary (../shared, skipped visibly when absent), equal
 *   to ids written out by hand and to ids derived from the rules (BOS 1, each
 *   text part through tok_encode without BOS, EOS 2 after the assistant);
 * - the rendered text, tokenized the way llama.cpp tokenizes a chat
 *   template's output (special tokens parsed, a leading space after each),
 *   gives the same ids;
 * - a vocabulary with "[INST]"/"[/INST]" pieces (CONTROL or USER_DEFINED, as
 *   in Mistral v0.3) gets them as ids;
 * - max_input_tokens keeps BOS first;
 * - greedy generation with messages through the engine equals greedy
 *   generation on the hand-derived ids; the scheduler's response shows the
 *   rendered template as its prompt; and the real API + worker answer a
 *   chat over HTTP (and name the field of a bad one).
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "common/job.h"
#include "kernels/cpu/dtype.h"
#include "tests/support/api_client.h"
#include "tests/support/fixture.h"
#include "tests/support/proc.h"
#include "tests/support/stack.h"
#include "worker/chat.h"
#include "worker/engine.h"
#include "worker/gguf.h"
#include "worker/make_model.h"
#include "worker/model.h"
#include "worker/scheduler.h"
#include "worker/sequence.h"
#include "worker/tokenizer.h"

#define LLAMA_VOCAB "../shared/tokenizer-vectors/ggml-vocab-llama-spm.gguf"

static char dir[64], model_path[128];
static struct engine *engine;   /* the project's tiny model */
static struct tokenizer *llama; /* NULL without ../shared */

/* ---- helpers ---- */

/* The conversation of these tests: a system message and three turns. */
static const char *const CHAT_JSON =
    "[{\"role\": \"system\", \"content\": \"You are terse.\"},"
    " {\"role\": \"user\", \"content\": \"What is the capital of France?\"},"
    " {\"role\": \"assistant\", \"content\": \"Paris.\"},"
    " {\"role\": \"user\", \"content\": \"And of Italy?\"}]";

static struct job_request *chat_request(const char *extra)
{
    char body[1024];
    snprintf(body, sizeof(body), "{\"messages\": %s, \"max_tokens\": 12%s}", CHAT_JSON, extra);
    return fixture_request(body);
}

/* Append tok_encode(text) without BOS to ids[*n]. */
static void encode_part(const struct tokenizer *t, const char *text, int *ids, size_t *n,
                        size_t cap)
{
    size_t got = 0;
    assert_int_equal(tok_encode(t, text, strlen(text), 0, ids + *n, cap - *n, &got), 0);
    *n += got;
}

/* The template's ids derived by hand from the rules: BOS, "[INST] sys\n\nu1
 * [/INST]", "a1", EOS, "[INST] u2 [/INST]", each text part encoded alone. */
static size_t derive_ids(const struct tokenizer *t, int *ids, size_t cap)
{
    size_t n = 0;
    ids[n++] = tok_bos_id(t);
    encode_part(t, "[INST] You are terse.\n\nWhat is the capital of France? [/INST]", ids, &n, cap);
    encode_part(t, "Paris.", ids, &n, cap);
    ids[n++] = tok_eos_id(t);
    encode_part(t, "[INST] And of Italy? [/INST]", ids, &n, cap);
    return n;
}

static void assert_ids_equal(const int *a, size_t na, const int *b, size_t nb)
{
    for (size_t i = 0; i < na && i < nb; i++)
        if (a[i] != b[i])
            fail_msg("ids differ at %zu: %d vs %d", i, a[i], b[i]);
    assert_int_equal(na, nb);
}

/* llama.cpp's reading of a chat template's text (llama_tokenize with
 * parse_special): "<s>" and "</s>" become BOS and EOS, and each stretch of
 * text between them is encoded with the leading space. */
static size_t tokenize_like_llamacpp(const struct tokenizer *t, const char *text, int *ids,
                                     size_t cap)
{
    size_t n = 0;
    const char *p = text;
    while (*p) {
        const char *bos = strstr(p, "<s>"), *eos = strstr(p, "</s>");
        const char *next = bos && (!eos || bos < eos) ? bos : eos;
        size_t len = next ? (size_t)(next - p) : strlen(p), got = 0;
        assert_int_equal(tok_encode(t, p, len, 0, ids + n, cap - n, &got), 0);
        n += got;
        if (!next)
            break;
        ids[n++] = next == bos ? tok_bos_id(t) : tok_eos_id(t);
        p = next + (next == bos ? 3 : 4);
    }
    return n;
}

/* ---- setup ---- */

static int group_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/millrace-test-chat-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(model_path, sizeof(model_path), "%s/tiny.gguf", dir);
    char err[512];
    struct engine_opts o = {.model_path = model_path, .n_threads = 1, .max_batch_tokens = 64};
    if (mkmodel_write(model_path, mkmodel_find_preset("tiny"), KC_TYPE_F32, 3, NULL, err,
                      sizeof(err)) < 0 ||
        engine_create(&engine, &o, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    if (access(LLAMA_VOCAB, R_OK) == 0) {
        struct gguf_file *f = NULL;
        if (gguf_open(&f, LLAMA_VOCAB, err, sizeof(err)) != 0 ||
            tok_load_gguf(&llama, f, err, sizeof(err)) != 0) {
            fprintf(stderr, "%s: %s\n", LLAMA_VOCAB, err);
            gguf_close(f);
            return -1;
        }
        gguf_close(f);
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    engine_destroy(engine);
    tok_destroy(llama);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

#define REQUIRE_LLAMA()                                                                            \
    do {                                                                                           \
        if (!llama) {                                                                              \
            print_message("skipped: %s not found (../shared is absent)\n", LLAMA_VOCAB);           \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

/* ---- the template on the real vocabulary ---- */

static void test_three_turns_give_exact_ids_on_llama_vocab(void **state)
{
    (void)state;
    REQUIRE_LLAMA();
    /* written out by hand: ▁[ INST ] ▁You ▁are ▁ters e . \n \n ▁What ▁is ▁the ▁capital
     * ▁of ▁France ? ▁[ / INST ] | ▁Paris . | </s> | ▁[ INST ] ▁And ▁of ▁Italy ? ▁[ / INST ] */
    static const int want[] = {1,     518,   25580, 29962, 887,   526,   1935,  344,   29889,
                               13,    13,    5618,  338,   278,   7483,  310,   3444,  29973,
                               518,   29914, 25580, 29962, 3681,  29889, 2,     518,   25580,
                               29962, 1126,  310,   12730, 29973, 518,   29914, 25580, 29962};
    size_t n_want = sizeof(want) / sizeof(want[0]);
    int derived[256];
    size_t n_derived = derive_ids(llama, derived, 256);
    assert_ids_equal(derived, n_derived, want, n_want);

    struct job_request *r = chat_request("");
    int *ids = NULL;
    size_t n = 0;
    assert_int_equal(chat_encode(llama, r->messages, r->n_messages, &ids, &n), 0);
    assert_ids_equal(ids, n, want, n_want);
    free(ids);
    job_request_destroy(r);
}

static void test_rendered_text_tokenizes_to_the_same_ids(void **state)
{
    (void)state;
    REQUIRE_LLAMA();
    struct job_request *r = chat_request("");
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(chat_render(llama, r->messages, r->n_messages, &text, &len), 0);
    assert_string_equal(text, "<s>[INST] You are terse.\n\nWhat is the capital of France? [/INST] "
                              "Paris.</s>[INST] And of Italy? [/INST]");
    assert_int_equal(len, strlen(text));

    int *ids = NULL, again[256], spaced[256];
    size_t n = 0;
    assert_int_equal(chat_encode(llama, r->messages, r->n_messages, &ids, &n), 0);
    size_t n_again = tokenize_like_llamacpp(llama, text, again, 256);
    assert_ids_equal(again, n_again, ids, n);

    /* the cookbook's way of writing V1 ("<s> [INST] ...") reads, in llama.cpp,
     * as an extra "▁" (29871) after each control token */
    size_t n_spaced = tokenize_like_llamacpp(
        llama,
        "<s> [INST] You are terse.\n\nWhat is the capital of France? [/INST] Paris.</s> [INST] "
        "And of Italy? [/INST]",
        spaced, 256);
    assert_int_equal(n_spaced, n + 2);
    assert_int_equal(spaced[1], 29871);
    free(ids);
    free(text);
    job_request_destroy(r);
}

static void test_single_user_turn_and_empty_answer(void **state)
{
    (void)state;
    REQUIRE_LLAMA();
    struct job_request *r =
        fixture_request("{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, "
                        "{\"role\": \"assistant\", \"content\": \"\"}, {\"role\": "
                        "\"user\", \"content\": \"Hi\"}], \"max_tokens\": 1}");
    int *ids = NULL, want[64];
    size_t n = 0, n_want = 0;
    want[n_want++] = 1;
    encode_part(llama, "[INST] Hi [/INST]", want, &n_want, 64);
    want[n_want++] = 2; /* an empty answer is its EOS alone */
    encode_part(llama, "[INST] Hi [/INST]", want, &n_want, 64);
    assert_int_equal(chat_encode(llama, r->messages, r->n_messages, &ids, &n), 0);
    assert_ids_equal(ids, n, want, n_want);

    char *text = NULL;
    size_t len;
    assert_int_equal(chat_render(llama, r->messages, r->n_messages, &text, &len), 0);
    assert_string_equal(text, "<s>[INST] Hi [/INST]</s>[INST] Hi [/INST]");
    int again[64];
    assert_ids_equal(again, tokenize_like_llamacpp(llama, text, again, 64), ids, n);
    free(text);
    free(ids);
    job_request_destroy(r);
}

/* ---- a vocabulary with [INST] pieces (Mistral v0.3's extended one) ---- */

static struct tokenizer *inst_vocab(int32_t inst_type)
{
    static const char *const pieces[] = {"<unk>",
                                         "<s>",
                                         "</s>",
                                         "[INST]",
                                         "[/INST]",
                                         "\xe2\x96\x81",
                                         "h",
                                         "i",
                                         "y",
                                         "o",
                                         "\xe2\x96\x81h",
                                         "\xe2\x96\x81hi",
                                         "\xe2\x96\x81y",
                                         "\xe2\x96\x81yo",
                                         "[",
                                         "]"};
    int32_t types[16];
    for (int i = 0; i < 16; i++)
        types[i] = TOK_TYPE_NORMAL;
    types[0] = TOK_TYPE_UNKNOWN;
    types[1] = types[2] = TOK_TYPE_CONTROL;
    types[3] = types[4] = inst_type;
    struct tok_vocab v;
    tok_vocab_defaults(&v);
    v.n = 16;
    v.pieces = pieces;
    v.types = types;
    struct tokenizer *t = NULL;
    char err[256];
    if (tok_create(&t, &v, err, sizeof(err)) != 0)
        fail_msg("tok_create: %s", err);
    return t;
}

static void test_control_inst_pieces_become_ids(void **state)
{
    (void)state;
    struct job_request *r = fixture_request(
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": "
        "\"assistant\", \"content\": \"yo\"}, {\"role\": \"user\", \"content\": \"hi\"}],"
        " \"max_tokens\": 1}");
    static const int want[] = {1, 3, 11, 4, 13, 2, 3, 11, 4};
    const int32_t kinds[] = {TOK_TYPE_CONTROL, TOK_TYPE_USER_DEFINED};
    for (int k = 0; k < 2; k++) {
        struct tokenizer *t = inst_vocab(kinds[k]);
        int *ids = NULL;
        size_t n = 0;
        assert_int_equal(chat_encode(t, r->messages, r->n_messages, &ids, &n), 0);
        assert_ids_equal(ids, n, want, sizeof(want) / sizeof(want[0]));
        char *text = NULL;
        size_t len;
        assert_int_equal(chat_render(t, r->messages, r->n_messages, &text, &len), 0);
        assert_string_equal(text, "<s>[INST]hi[/INST]yo</s>[INST]hi[/INST]");
        free(text);
        free(ids);
        tok_destroy(t);
    }
    /* as NORMAL pieces they are text: "[INST] hi [/INST]" is encoded as one part */
    struct tokenizer *t = inst_vocab(TOK_TYPE_NORMAL);
    int *ids = NULL;
    size_t n = 0;
    assert_int_equal(chat_encode(t, r->messages, r->n_messages, &ids, &n), 0);
    assert_int_equal(ids[0], 1);
    for (size_t i = 1; i < n; i++)
        assert_true(ids[i] != 3 && ids[i] != 1);
    free(ids);
    tok_destroy(t);
    job_request_destroy(r);
}

static void test_invalid_message_lists_refused(void **state)
{
    (void)state;
    struct tokenizer *t = engine->model->tok;
    struct job_message m[2] = {{JOB_ROLE_USER, "a", 1}, {JOB_ROLE_ASSISTANT, "b", 1}};
    int *ids = (int *)1;
    size_t n = 7;
    char *text = (char *)1;
    assert_int_equal(chat_encode(t, m, 0, &ids, &n), CHAT_ERR_INVALID);
    assert_null(ids);
    assert_int_equal(n, 0);
    assert_int_equal(chat_encode(t, m, 2, &ids, &n), CHAT_ERR_INVALID);
    assert_int_equal(chat_render(t, m, 2, &text, &n), CHAT_ERR_INVALID);
    assert_null(text);
}

/* ---- through the engine and the scheduler (the project's tiny model) ---- */

static void test_max_input_tokens_keeps_bos_first(void **state)
{
    (void)state;
    const struct model *m = engine->model;
    int full[256];
    size_t n_full = derive_ids(m->tok, full, 256);
    struct job_request *r = chat_request(", \"max_input_tokens\": 6");
    int *ids = NULL, n = 0;
    char err[256];
    assert_int_equal(seq_tokenize_prompt(m, r, &ids, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 6);
    assert_int_equal(ids[0], tok_bos_id(m->tok));
    assert_ids_equal(ids + 1, 5, full + n_full - 5, 5);
    free(ids);
    job_request_destroy(r);
}

/* Greedy generation of up to max_new tokens from ids[0..n) with engine_run and
 * argmax (ties to the lowest id), stopping after the model's EOS. */
static size_t greedy_on_ids(const int *prompt, size_t n, int max_new, int *out)
{
    size_t vocab = (size_t)engine->model->cfg.vocab_size, got = 0;
    char err[256];
    int seq[512];
    memcpy(seq, prompt, n * sizeof(*prompt));
    if (engine_run(engine, seq, (int)n, 0, NULL, err, sizeof(err)) < 0)
        fail_msg("engine_run: %s", err);
    while ((int)got < max_new) {
        const float *l = engine->logits;
        int best = 0;
        for (size_t i = 1; i < vocab; i++)
            if (l[i] > l[best])
                best = (int)i;
        out[got++] = best;
        seq[n] = best;
        if (best == tok_eos_id(engine->model->tok))
            break;
        if (engine_run(engine, seq + n, 1, (int)n, NULL, err, sizeof(err)) < 0)
            fail_msg("engine_run: %s", err);
        n++;
    }
    return got;
}

static void test_engine_messages_equal_generation_on_ids(void **state)
{
    (void)state;
    int ids[256], want[64];
    size_t n_ids = derive_ids(engine->model->tok, ids, 256);
    size_t n_want = greedy_on_ids(ids, n_ids, 12, want);

    struct job_request *r = chat_request(", \"temperature\": 0");
    struct seq s;
    struct engine_stats st;
    char err[256];
    assert_int_equal(engine_generate(engine, r, &s, &st, NULL, NULL, err, sizeof(err)), 0);
    assert_ids_equal(s.tokens, (size_t)s.n_prompt, ids, n_ids);
    assert_ids_equal(s.tokens + s.n_prompt, (size_t)s.n_new, want, n_want);
    assert_true(s.n_new > 0);
    seq_fini(&s);
    job_request_destroy(r);
}

static void test_scheduler_response_prompt_is_the_template(void **state)
{
    (void)state;
    struct sched_opts o = {.device = "cpu",
                           .n_threads = 1,
                           .max_seqs = 4,
                           .max_batch_tokens = 64,
                           .block_size = 16,
                           .kv_blocks = 64};
    struct sched *s = NULL;
    char err[512];
    if (sched_create(&s, engine->model, &o, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    struct job_request *r = chat_request(", \"temperature\": 0");
    char *want_prompt = NULL;
    size_t want_len;
    assert_int_equal(
        chat_render(engine->model->tok, r->messages, r->n_messages, &want_prompt, &want_len), 0);
    int ids[256];
    size_t n_ids = derive_ids(engine->model->tok, ids, 256);
    assert_int_equal(sched_submit_take(s, "chat1", 1, 0, r, err, sizeof(err)), 0);

    char *result = NULL;
    while (sched_busy(s)) {
        struct sched_delta *d;
        struct sched_job **done;
        int nd, nf;
        if (sched_step(s, &d, &nd, &done, &nf, err, sizeof(err)) < 0)
            fail_msg("step: %s", err);
        for (int i = 0; i < nf; i++) {
            result = strdup(done[i]->result);
            sched_job_free(done[i]);
        }
    }
    assert_non_null(result);
    json_t *j = json_loads(result, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "prompt")), want_prompt);
    assert_int_equal(json_integer_value(json_object_get(j, "prompt_tokens")), (json_int_t)n_ids);

    /* the same text as the engine alone */
    struct job_request *alone = chat_request(", \"temperature\": 0");
    struct seq q;
    struct engine_stats st;
    assert_int_equal(engine_generate(engine, alone, &q, &st, NULL, NULL, err, sizeof(err)), 0);
    size_t len;
    const char *text = seq_text(&q, &len);
    json_t *first = json_object_get(json_array_get(json_object_get(j, "responses"), 0), "text");
    assert_int_equal(json_string_length(first), len);
    assert_memory_equal(json_string_value(first), text, len);
    seq_fini(&q);
    job_request_destroy(alone);
    json_decref(j);
    free(result);
    free(want_prompt);
    sched_destroy(s);
}

/* ---- over HTTP: the real API and worker ---- */

static void test_http_generate_with_messages(void **state)
{
    (void)state;
    struct stack st;
    struct proc worker;
    char log[200];
    snprintf(log, sizeof(log), "%s/worker.log", dir);
    assert_int_equal(stack_start_redis(&st), 0);
    assert_int_equal(stack_start_api(&st, NULL), 0);
    const char *argv[] = {stack_sanitized() ? "build/asan/millrace-worker"
                                            : "build/millrace-worker",
                          "serve",
                          "--model",
                          model_path,
                          "--redis",
                          st.redis.url,
                          "--threads",
                          "1",
                          "--kv-cache-mb",
                          "16",
                          "--heartbeat-ms",
                          "100",
                          NULL};
    assert_int_equal(proc_start(&worker, (char *const *)argv, NULL, log), 0);
    assert_int_equal(stack_wait_health(&st, 200, 30000), 0);

    char body[1024];
    snprintf(body, sizeof(body), "{\"messages\": %s, \"max_tokens\": 12, \"temperature\": 0}",
             CHAT_JSON);
    struct http_response resp;
    api_post(&st, "/generate", body, NULL, &resp);
    if (resp.status != 200) {
        stack_dump_logs(&st);
        fail_msg("/generate: %ld %.300s", resp.status, resp.body ? resp.body : resp.err);
    }
    json_t *j = api_json(&resp);
    http_response_fini(&resp);
    const char *prompt = json_string_value(json_object_get(j, "prompt"));
    assert_non_null(prompt);
    assert_true(strncmp(prompt, "<s>[INST] You are terse.\n\nWhat is", 33) == 0);
    int ids[256];
    assert_int_equal(json_integer_value(json_object_get(j, "prompt_tokens")),
                     (json_int_t)derive_ids(engine->model->tok, ids, 256));
    json_decref(j);

    /* a bad chat names the field */
    api_post(&st, "/generate",
             "{\"messages\": [{\"role\": \"assistant\", \"content\": \"hi\"}], \"max_tokens\": 4}",
             NULL, &resp);
    assert_int_equal(resp.status, 400);
    j = api_json(&resp);
    json_t *e = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(e, "field")), "messages");
    json_decref(j);
    http_response_fini(&resp);

    proc_stop(&worker, SIGTERM, 10000);
    stack_stop(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_three_turns_give_exact_ids_on_llama_vocab),
        cmocka_unit_test(test_rendered_text_tokenizes_to_the_same_ids),
        cmocka_unit_test(test_single_user_turn_and_empty_answer),
        cmocka_unit_test(test_control_inst_pieces_become_ids),
        cmocka_unit_test(test_invalid_message_lists_refused),
        cmocka_unit_test(test_max_input_tokens_keeps_bos_first),
        cmocka_unit_test(test_engine_messages_equal_generation_on_ids),
        cmocka_unit_test(test_scheduler_response_prompt_is_the_template),
        cmocka_unit_test(test_http_generate_with_messages),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
