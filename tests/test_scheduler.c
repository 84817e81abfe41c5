/*
 * The scheduler without Redis: jobs batched together give what each gives
 * alone; samples of one job share their prompt's KV blocks; admission waits
 * for blocks and lets nobody overtake; every block comes back; deltas add up
 * to each sample's text; cancel frees at once; what can never fit is refused
 * with a reason. Also the KV block bookkeeping on its own.
 */
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
#include "worker/kvcache.h"
#include "worker/make_model.h"
#include "worker/model.h"
#include "worker/scheduler.h"

static char dir[64], path[128];
static struct model *model;

static int group_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/millrace-test-sched-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof(path), "%s/tiny.gguf", dir);
    char err[512];
    if (mkmodel_write(path, mkmodel_find_preset("tiny"), KC_TYPE_F32, 7, NULL, err, sizeof(err)) <
            0 ||
        model_load(&model, path, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    model_free(model);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static struct job_request *request(const char *json)
{
    struct job_request *r = NULL;
    struct job_error je;
    if (job_request_parse(&r, json, strlen(json), NULL, &je, NULL) != 0)
        fail_msg("%s: %s", json, je.message);
    return r;
}

static struct sched *make_sched_sampling(int kv_blocks, int max_seqs, int host_sampling)
{
    struct sched_opts o = {.device = "cpu",
                           .n_threads = 1,
                           .max_seqs = max_seqs,
                           .max_batch_tokens = 64,
                           .block_size = 16,
                           .kv_blocks = kv_blocks,
                           .host_sampling = host_sampling};
    struct sched *s = NULL;
    char err[512];
    if (sched_create(&s, model, &o, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    return s;
}

static struct sched *make_sched(int kv_blocks, int max_seqs)
{
    return make_sched_sampling(kv_blocks, max_seqs, 0);
}

struct outcome {
    char id[QUEUE_ID_MAX + 1];
    char *result;      /* the Flywheel JSON */
    char text[4][512]; /* from the deltas */
};

/* Step until every job finished; results by id into outs[]. Returns steps. */
static int run_all(struct sched *s, struct outcome *outs, int n, int *max_used)
{
    int steps = 0, finished = 0;
    while (sched_busy(s)) {
        struct sched_delta *d;
        struct sched_job **done;
        int nd, nf;
        char err[512];
        if (sched_step(s, &d, &nd, &done, &nf, err, sizeof(err)) < 0)
            fail_msg("step: %s", err);
        struct sched_stats st;
        sched_stats(s, &st);
        if (max_used && st.kv_blocks_used > *max_used)
            *max_used = st.kv_blocks_used;
        for (int i = 0; i < nd; i++)
            for (int k = 0; k < n; k++)
                if (strcmp(outs[k].id, d[i].job->id) == 0)
                    strncat(outs[k].text[d[i].sample], d[i].text, d[i].len);
        for (int i = 0; i < nf; i++) {
            for (int k = 0; k < n; k++)
                if (strcmp(outs[k].id, done[i]->id) == 0)
                    outs[k].result = strdup(done[i]->result);
            sched_job_free(done[i]);
            finished++;
        }
        steps++;
        assert_true(steps < 100000);
    }
    assert_int_equal(finished, n);
    return steps;
}

static const char *sample_text(json_t *o, int i)
{
    return json_string_value(
        json_object_get(json_array_get(json_object_get(o, "responses"), (size_t)i), "text"));
}

static void submit(struct sched *s, struct outcome *o, const char *id, const char *json)
{
    char err[512];
    memset(o, 0, sizeof(*o));
    snprintf(o->id, sizeof(o->id), "%s", id);
    assert_int_equal(sched_submit_take(s, id, 1, 1.7e9, request(json), err, sizeof(err)), 0);
}

static void test_batched_jobs_equal_each_job_alone(void **state)
{
    (void)state;
    static const char *reqs[] = {
        "{\"text\": \"Once upon a time\", \"max_tokens\": 20, \"temperature\": 0}",
        "{\"text\": \"The capital of France is\", \"max_tokens\": 7, \"temperature\": 0}",
        "{\"text\": \"Hello\", \"max_tokens\": 30, \"temperature\": 0.8, \"seed\": 5}",
        "{\"text\": \"a much longer prompt than the others, so that its prefill is cut into "
        "chunks across several steps while the others decode\", \"max_tokens\": 12, "
        "\"temperature\": 0}",
    };
    enum { N = 4 };
    struct outcome alone[N], together[N];
    for (int i = 0; i < N; i++) {
        struct sched *s = make_sched(256, 8);
        submit(s, &alone[i], "solo", reqs[i]);
        run_all(s, &alone[i], 1, NULL);
        sched_destroy(s);
    }
    struct sched *s = make_sched(256, 8);
    for (int i = 0; i < N; i++) {
        char id[8];
        snprintf(id, sizeof(id), "j%d", i);
        submit(s, &together[i], id, reqs[i]);
    }
    run_all(s, together, N, NULL);
    for (int i = 0; i < N; i++) {
        json_t *a = json_loads(alone[i].result, 0, NULL),
               *t = json_loads(together[i].result, 0, NULL);
        assert_string_equal(sample_text(a, 0), sample_text(t, 0));
        /* the deltas add up to the final text */
        assert_string_equal(together[i].text[0], sample_text(t, 0));
        json_decref(a);
        json_decref(t);
        free(alone[i].result);
        free(together[i].result);
    }
    struct sched_stats st;
    sched_stats(s, &st);
    assert_int_equal(st.kv_blocks_used, 0); /* every block came back */
    assert_int_equal(st.active_sequences, 0);
    sched_destroy(s);
}

static void test_samples_share_the_prompt_blocks(void **state)
{
    (void)state;
    /* 40-token prompt: 2 full blocks + 1 partial; 4 greedy samples of 5 tokens */
    char prompt[400] = "";
    for (int i = 0; i < 40; i++)
        strcat(prompt, " x");
    char json[600];
    snprintf(json, sizeof(json),
             "{\"text\": \"%s\", \"max_tokens\": 5, \"num_samples\": 4, \"temperature\": 0}",
             prompt);
    struct sched *s = make_sched(256, 8);
    struct outcome o;
    submit(s, &o, "fork", json);
    int max_used = 0;
    run_all(s, &o, 1, &max_used);
    json_t *r = json_loads(o.result, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(r, "num_samples")), 4);
    for (int i = 1; i < 4; i++) /* greedy: every sample the same */
        assert_string_equal(sample_text(r, i), sample_text(r, 0));
    for (int i = 0; i < 4; i++)
        assert_string_equal(o.text[i], sample_text(r, i));
    int prompt_tokens = (int)json_integer_value(json_object_get(r, "prompt_tokens"));
    int full = prompt_tokens / 16, each = (prompt_tokens + 5 + 15) / 16;
    printf("%d prompt tokens: at most %d blocks held for 4 samples (unshared: %d)\n", prompt_tokens,
           max_used, 4 * each);
    assert_true(max_used <= full + 4 * (each - full));
    assert_true(max_used < 4 * each);
    json_decref(r);
    free(o.result);
    sched_destroy(s);
}

/* The backend's `sample` (where the logits are: the GPU's path, here the CPU
 * backend's) gives every sample exactly what choosing on the host gives:
 * the same draws from each sample's RNG, penalties over its own tokens in a
 * slot of its own, a slot reset when a later job takes it over. */
static void test_backend_sampling_equals_host_sampling(void **state)
{
    (void)state;
    static const char *reqs[] = {
        "{\"text\": \"Once upon a time\", \"max_tokens\": 24, \"num_samples\": 4, "
        "\"temperature\": 0.9, \"top_k\": 40, \"top_p\": 0.9, \"seed\": 11, "
        "\"presence_penalty\": 0.6, \"frequency_penalty\": 0.9}",
        "{\"text\": \"The capital of France is\", \"max_tokens\": 20, \"temperature\": 0, "
        "\"frequency_penalty\": 1.5}",
        "{\"text\": \"Hello\", \"max_tokens\": 20, \"temperature\": 1.2, \"top_p\": 0.8, "
        "\"seed\": 3}",
        "{\"text\": \"a b c\", \"max_tokens\": 20, \"temperature\": 0.7, \"top_k\": 5, "
        "\"seed\": 9, \"presence_penalty\": -0.5, \"stop\": [\"zz\"]}",
    };
    enum { N = 4 };
    struct outcome host[N], dev[N];
    struct sched *h = make_sched_sampling(256, 8, 1), *d = make_sched_sampling(256, 8, 0);
    for (int round = 0; round < 2; round++) { /* the second reuses the first's slots */
        for (int i = 0; i < N; i++) {
            char id[8];
            snprintf(id, sizeof(id), "j%d", i);
            submit(h, &host[i], id, reqs[i]);
            submit(d, &dev[i], id, reqs[i]);
        }
        run_all(h, host, N, NULL);
        run_all(d, dev, N, NULL);
        int differ = 0;
        for (int i = 0; i < N; i++) {
            json_t *a = json_loads(host[i].result, 0, NULL),
                   *b = json_loads(dev[i].result, 0, NULL);
            int n = (int)json_integer_value(json_object_get(a, "num_samples"));
            for (int k = 0; k < n; k++) {
                assert_string_equal(sample_text(b, k), sample_text(a, k));
                assert_string_equal(dev[i].text[k], sample_text(b, k));
                differ += k > 0 && strcmp(sample_text(a, k), sample_text(a, 0)) != 0;
            }
            json_decref(a);
            json_decref(b);
            free(host[i].result);
            free(dev[i].result);
        }
        assert_true(differ > 0); /* the seeded samples are not all one */
    }
    struct sched_stats st;
    sched_stats(d, &st);
    assert_int_equal(st.kv_blocks_used, 0);
    sched_destroy(h);
    sched_destroy(d);
}

static void test_admission_waits_for_blocks_first_come_first_served(void **state)
{
    (void)state;
    /* each job needs (prompt + 40 tokens) -> 3 blocks; a pool of 5 runs one at a time */
    struct sched *s = make_sched(5, 8);
    struct outcome o[3];
    const char *json = "{\"text\": \"Once upon a time\", \"max_tokens\": 40, \"temperature\": 0}";
    submit(s, &o[0], "a", json);
    submit(s, &o[1], "b", json);
    submit(s, &o[2], "c", json);
    assert_false(sched_has_room(s)); /* something waits: claim nothing more */
    struct sched_delta *d;
    struct sched_job **done;
    int nd, nf;
    char err[256];
    assert_int_equal(sched_step(s, &d, &nd, &done, &nf, err, sizeof(err)), 0);
    struct sched_stats st;
    sched_stats(s, &st);
    assert_int_equal(st.active_sequences, 1);
    run_all(s, o, 3, NULL);
    json_t *first = json_loads(o[0].result, 0, NULL);
    for (int i = 1; i < 3; i++) { /* the same request: the same greedy text, waited or not */
        json_t *r = json_loads(o[i].result, 0, NULL);
        assert_string_equal(sample_text(r, 0), sample_text(first, 0));
        json_decref(r);
    }
    json_decref(first);
    for (int i = 0; i < 3; i++)
        free(o[i].result);
    sched_stats(s, &st);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_true(sched_has_room(s));
    sched_destroy(s);
}

static void test_cancel_frees_the_blocks_at_once(void **state)
{
    (void)state;
    struct sched *s = make_sched(64, 8);
    struct outcome o;
    submit(s, &o, "long", "{\"text\": \"Once\", \"max_tokens\": 400, \"temperature\": 0}");
    struct sched_delta *d;
    struct sched_job **done;
    int nd, nf;
    char err[256];
    for (int i = 0; i < 5; i++)
        assert_int_equal(sched_step(s, &d, &nd, &done, &nf, err, sizeof(err)), 0);
    struct sched_stats st;
    sched_stats(s, &st);
    assert_true(st.kv_blocks_used > 0);
    assert_int_equal(sched_cancel(s, "long"), 1);
    assert_int_equal(sched_cancel(s, "long"), 0);
    sched_stats(s, &st);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_int_equal(st.active_sequences, 0);
    assert_false(sched_busy(s));
    sched_destroy(s);
}

static void test_what_can_never_fit_is_refused_with_a_reason(void **state)
{
    (void)state;
    struct sched *s = make_sched(4, 2);
    char err[512];
    assert_int_equal(sched_submit_take(s, "big", 1, 0,
                                       request("{\"text\": \"x\", \"max_tokens\": 500}"), err,
                                       sizeof(err)),
                     -1);
    assert_true(strncmp(err, "invalid_request: ", 17) == 0);
    assert_non_null(strstr(err, "KV blocks"));
    assert_int_equal(sched_submit_take(s, "many", 1, 0,
                                       request("{\"text\": \"x\", \"max_tokens\": 2, "
                                               "\"num_samples\": 3}"),
                                       err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "num_samples"));
    assert_false(sched_busy(s));
    sched_destroy(s);
}

static void test_kv_pool_bookkeeping(void **state)
{
    (void)state;
    struct kv_pool p;
    assert_int_equal(kv_pool_init(&p, 10, 4), 0);
    assert_int_equal(kv_available(&p), 10);
    assert_int_equal(kv_reserve(&p, 6), 0);
    assert_int_equal(kv_reserve(&p, 5), -1); /* only 4 left unpromised */
    assert_int_equal(kv_available(&p), 4);
    struct kv_table a = {0}, b = {0};
    int mine = 6;
    assert_int_equal(kv_table_grow(&p, &a, 9, &mine), 0); /* 9 positions: 3 blocks */
    assert_int_equal(a.n, 3);
    assert_int_equal(mine, 3);
    assert_int_equal(kv_used(&p), 3);
    assert_int_equal(kv_table_share(&p, &b, &a, 2), 0);
    assert_int_equal(kv_used(&p), 3); /* shared, not copied */
    kv_table_release(&p, &a);
    assert_int_equal(kv_used(&p), 2); /* b still holds two */
    kv_table_release(&p, &b);
    assert_int_equal(kv_used(&p), 0);
    kv_unreserve(&p, mine);
    assert_int_equal(kv_available(&p), 10);
    int none = 0;
    assert_int_equal(kv_table_grow(&p, &a, 1, &none), -1); /* no reservation, no block */
    kv_table_release(&p, &a);
    kv_pool_fini(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batched_jobs_equal_each_job_alone),
        cmocka_unit_test(test_samples_share_the_prompt_blocks),
        cmocka_unit_test(test_backend_sampling_equals_host_sampling),
        cmocka_unit_test(test_admission_waits_for_blocks_first_come_first_served),
        cmocka_unit_test(test_cancel_frees_the_blocks_at_once),
        cmocka_unit_test(test_what_can_never_fit_is_refused_with_a_reason),
        cmocka_unit_test(test_kv_pool_bookkeeping),
    };
    return cmocka_run_group_tests_name("scheduler", tests, group_setup, group_teardown);
}
