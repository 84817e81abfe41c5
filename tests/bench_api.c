/*
 * bench_api: HTTP throughput of millrace-api with wrk.
 *
 * Starts a private redis-server (AOF, fsync every second), millrace-api with
 * its access log off, and two fake workers (the engine's test double, which
 * answers at once and, here, writes no stream: the figure is the API's and
 * the queue's round trip), then runs wrk (64 connections, 2 threads, 10 s) on
 * GET /health and on POST /generate, and prints requests/s with the p50 and
 * p99 latencies. Targets on the 2-core CI machine: >= 20,000 req/s on
 * /health, >= 5,000 round trips/s through Redis on /generate. Everything
 * shares the machine's cores with wrk, so these are conservative.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/proc.h"
#include "tests/support/redis_server.h"

static struct test_redis redis;

struct wrk_result {
    double rps, p50_ms, p99_ms;
    long errors; /* non-2xx answers and socket errors */
};

static double to_ms(const char *v)
{
    char *end;
    double x = strtod(v, &end);
    if (strncmp(end, "us", 2) == 0)
        return x / 1000;
    if (strncmp(end, "ms", 2) == 0)
        return x;
    if (*end == 's')
        return x * 1000;
    return x;
}

static int run_wrk(const char *url, const char *script, struct wrk_result *out)
{
    char cmd[600], line[512];
    snprintf(cmd, sizeof(cmd), "wrk -t2 -c64 -d10s --latency %s%s %s 2>&1", script ? "-s " : "",
             script ? script : "", url);
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    memset(out, 0, sizeof(*out));
    while (fgets(line, sizeof(line), f)) {
        char v[64];
        long a, b, c, d;
        if (sscanf(line, " Requests/sec: %lf", &out->rps) == 1)
            continue;
        if (sscanf(line, " 50%% %63s", v) == 1)
            out->p50_ms = to_ms(v);
        else if (sscanf(line, " 99%% %63s", v) == 1)
            out->p99_ms = to_ms(v);
        else if (sscanf(line, " Non-2xx or 3xx responses: %ld", &a) == 1)
            out->errors += a;
        else if (sscanf(line, " Socket errors: connect %ld, read %ld, write %ld, timeout %ld", &a,
                        &b, &c, &d) == 4)
            out->errors += a + b + c + d;
    }
    return pclose(f) == 0 ? 0 : -1;
}

int main(void)
{
    if (system("command -v wrk >/dev/null") != 0) {
        fprintf(stderr, "bench_api: wrk is not installed (apt-get install wrk)\n");
        return 1;
    }
    if (test_redis_start_fsync(&redis, "everysec") < 0)
        return 1;
    int port = proc_free_port();
    char portstr[16], url[128], script[320];
    snprintf(portstr, sizeof(portstr), "%d", port);
    char *api_argv[] = {
        "build/millrace-api", "--host", "127.0.0.1",   "--port", portstr, "--redis", redis.url,
        "--access-log",       "false",  "--log-level", "warn",   NULL};
    char *worker_argv[] = {"build/tests/fake_worker",
                           "--redis",
                           redis.url,
                           "--batch",
                           "64",
                           "--delta-ms",
                           "0",
                           "--stream",
                           "false",
                           "--log-level",
                           "warn",
                           NULL};
    struct proc api, w1, w2;
    if (proc_start(&api, api_argv, NULL, NULL) < 0 || proc_wait_port(port, 10000) < 0 ||
        proc_start(&w1, worker_argv, NULL, NULL) < 0 ||
        proc_start(&w2, worker_argv, NULL, NULL) < 0) {
        fprintf(stderr, "bench_api: cannot start the stack\n");
        return 1;
    }
    /* wait until the API sees a live runner, so /health answers 200 throughout */
    char probe[200];
    snprintf(probe, sizeof(probe),
             "for i in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:%d/health && exit 0; "
             "sleep 0.1; done; exit 1",
             port);
    if (system(probe) != 0) {
        fprintf(stderr, "bench_api: /health never became 200\n");
        return 1;
    }
    snprintf(script, sizeof(script), "%s/generate.lua", redis.dir);
    FILE *s = fopen(script, "w");
    if (!s)
        return 1;
    fputs("wrk.method = \"POST\"\n"
          "wrk.body = '{\"text\": \"Once upon a time\", \"max_tokens\": 16}'\n"
          "wrk.headers[\"Content-Type\"] = \"application/json\"\n",
          s);
    fclose(s);

    struct wrk_result health, gen;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/health", port);
    int rc = run_wrk(url, NULL, &health);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/generate", port);
    rc |= run_wrk(url, script, &gen);

    printf("millrace-api under wrk (64 connections, 2 threads, 10 s), fake workers, loopback\n");
    printf("  %-34s %9.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %ld  (target 20000)\n",
           "GET /health:", health.rps, health.p50_ms, health.p99_ms, health.errors);
    printf("  %-34s %9.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %ld  (target 5000)\n",
           "POST /generate (through Redis):", gen.rps, gen.p50_ms, gen.p99_ms, gen.errors);

    proc_stop(&w1, SIGTERM, 5000);
    proc_stop(&w2, SIGTERM, 5000);
    proc_stop(&api, SIGTERM, 10000);
    test_redis_destroy(&redis);
    return rc == 0 ? 0 : 1;
}
