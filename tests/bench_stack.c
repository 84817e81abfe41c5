/*
 * bench_stack: generated tokens per second through the whole stack
 * (HTTP -> Redis -> millrace-worker serve -> Redis -> HTTP) with 1, 4, 8 and
 * 16 concurrent clients, on the CPU benchmark model (dim 768, 12 layers) in
 * F32 and Q8_0. Each client sends /generate requests for 64 greedy tokens,
 * one after the other; a figure is all generated tokens over the wall time.
 * The reference server with 8 parallel slots reaches 272-311 tok/s (F32) and
 * 384-442 (Q8_0) for 8 clients x 64 tokens on this class of machine; 8
 * clients should get at least 3x the aggregate of one.
 *
 * One measurement lasts about a second, and on a shared machine the speed
 * of memory moves for longer than that (one client, bound by memory
 * bandwidth, gave anything from 198 to 325 tok/s on the same build). So the
 * client counts are measured in SWEEPS interleaved sweeps (1, 4, 8, 16, 1,
 * 4, ...); each count's figure is the median of its sweeps, and "vs 1" is
 * the ratio of the medians, followed by the range of the ratios that each
 * sweep gives on its own.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "common/clock.h"
#include "tests/support/http.h"
#include "tests/support/proc.h"
#include "tests/support/redis_server.h"

#define ROUNDS 3
#define SWEEPS 5

static const char *prompts[] = {
    "Once upon a time there was a little girl who lived in a village near the forest.",
    "The capital of France is a city famous for its museums, its food and its river.",
    "In the beginning the universe was created. This has made a lot of people very angry.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
};

/* Run `clients` concurrent /generate requests ROUNDS times; tokens/s. */
static double measure(const char *url, int clients)
{
    struct http_spec *specs = calloc((size_t)clients, sizeof(*specs));
    struct http_response *outs = calloc((size_t)clients, sizeof(*outs));
    char **bodies = calloc((size_t)clients, sizeof(*bodies));
    const char *headers[] = {"Content-Type: application/json", "Expect:", NULL};
    for (int i = 0; i < clients; i++) {
        json_t *b = json_pack("{s:s, s:i, s:f}", "text", prompts[i % 4], "max_tokens", 64,
                              "temperature", 0.0);
        bodies[i] = json_dumps(b, 0);
        json_decref(b);
        specs[i] = (struct http_spec){"POST", url, headers, bodies[i], strlen(bodies[i])};
    }
    long tokens = 0;
    double t0 = clock_wall_s();
    for (int round = 0; round < ROUNDS; round++) {
        if (http_many((size_t)clients, specs, 600000, outs) != 0)
            fprintf(stderr, "bench_stack: some requests failed\n");
        for (int i = 0; i < clients; i++) {
            json_t *o = outs[i].body ? json_loads(outs[i].body, 0, NULL) : NULL;
            json_t *rs = json_object_get(o, "responses");
            for (size_t k = 0; k < json_array_size(rs); k++)
                tokens +=
                    json_integer_value(json_object_get(json_array_get(rs, k), "generated_tokens"));
            json_decref(o);
            http_response_fini(&outs[i]);
        }
    }
    double rate = (double)tokens / (clock_wall_s() - t0);
    for (int i = 0; i < clients; i++)
        free(bodies[i]);
    free(bodies);
    free(specs);
    free(outs);
    return rate;
}

static int make_model(const char *type, char *path, size_t cap)
{
    struct stat st;
    snprintf(path, cap, "build/models/bench-768-%s.gguf", type);
    if (stat(path, &st) == 0)
        return 0;
    mkdir("build/models", 0755);
    char cmd[300];
    snprintf(cmd, sizeof(cmd),
             "build/millrace-worker make-model --preset bench-768 --type %s --out %s", type, path);
    return system(cmd) == 0 ? 0 : -1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v)
{
    double s[SWEEPS];
    memcpy(s, v, sizeof(s));
    qsort(s, SWEEPS, sizeof(double), cmp_double);
    return s[SWEEPS / 2];
}

int main(void)
{
    static const char *types[] = {"f32", "q8_0"};
    enum { N_COUNTS = 4 };
    static const int clients[N_COUNTS] = {1, 4, 8, 16};
    http_global_init();
    printf("whole stack, bench-768 model, 64 greedy tokens per request, %d rounds per "
           "measurement,\nmedian of %d interleaved sweeps (vs 1: ratio of medians, then the range "
           "of the sweeps' own ratios)\n",
           ROUNDS, SWEEPS);
    printf("  %-5s %8s %14s %10s\n", "type", "clients", "tokens/s", "vs 1");
    for (size_t t = 0; t < 2; t++) {
        char model[128];
        if (make_model(types[t], model, sizeof(model)) < 0)
            return 1;
        struct test_redis redis;
        if (test_redis_start_fsync(&redis, "everysec") < 0)
            return 1;
        int port = proc_free_port();
        char portstr[16], url[128];
        snprintf(portstr, sizeof(portstr), "%d", port);
        char *api_argv[] = {
            "build/millrace-api", "--host", "127.0.0.1",   "--port", portstr, "--redis", redis.url,
            "--access-log",       "false",  "--log-level", "warn",   NULL};
        char *worker_argv[] = {"build/millrace-worker",
                               "serve",
                               "--model",
                               model,
                               "--redis",
                               redis.url,
                               "--threads",
                               "2",
                               "--max-batch",
                               "16",
                               "--log-level",
                               "warn",
                               NULL};
        struct proc api, worker;
        if (proc_start(&api, api_argv, NULL, NULL) < 0 || proc_wait_port(port, 10000) < 0 ||
            proc_start(&worker, worker_argv, NULL, NULL) < 0) {
            fprintf(stderr, "bench_stack: cannot start the stack\n");
            return 1;
        }
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/generate", port);
        measure(url, 1); /* warm up: the weights paged in */
        double rate[N_COUNTS][SWEEPS];
        for (int k = 0; k < SWEEPS; k++)
            for (int c = 0; c < N_COUNTS; c++)
                rate[c][k] = measure(url, clients[c]);
        const double one = median(rate[0]);
        for (int c = 0; c < N_COUNTS; c++) {
            double lo = 1e9, hi = 0;
            for (int k = 0; k < SWEEPS; k++) {
                double x = rate[c][k] / rate[0][k];
                lo = x < lo ? x : lo;
                hi = x > hi ? x : hi;
            }
            printf("  %-5s %8d %14.1f %9.2fx  (%.2f-%.2fx)%s\n", types[t], clients[c],
                   median(rate[c]), median(rate[c]) / one, lo, hi,
                   clients[c] == 8
                       ? (t == 0 ? "   (reference: 272-311)" : "   (reference: 384-442)")
                       : "");
        }
        fflush(stdout);
        proc_stop(&worker, SIGTERM, 20000);
        proc_stop(&api, SIGTERM, 10000);
        test_redis_destroy(&redis);
    }
    return 0;
}
