/*
 * bench_engine: prefill and decode speed of the CPU engine on the issue's
 * benchmark shape (dim 768, 12 layers, 12 heads, 4 KV heads, FFN 2048, vocab
 * 32000, context 2048) in F32, F16 and Q8_0, with 1 and 2 threads, next to
 * the reference implementation's figures on this class of 2-core machine.
 *
 * The models are made once with `millrace-worker make-model --preset
 * bench-768` into build/models/ and reused. Each figure is the best of three
 * runs of `millrace-worker bench` (128-token prompt, 64 decoded tokens).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct ref {
    const char *type;
    const char *decode; /* reference decode tok/s, 2 threads */
    const char *prefill;
};

static const struct ref refs[] = {
    {"f32", "75-90", "755-917"},
    {"f16", "160-171", "-"},
    {"q8_0", "205-259", "-"},
};

static int run(const char *cmd, double *prefill, double *decode)
{
    FILE *f = popen(cmd, "r");
    if (!f)
        return -1;
    char line[1024];
    int ok = 0;
    while (fgets(line, sizeof(line), f)) {
        const char *p = strstr(line, "\"prefill_tokens_per_s\":");
        const char *d = strstr(line, "\"decode_tokens_per_s\":");
        if (p && d) {
            *prefill = strtod(p + 23, NULL);
            *decode = strtod(d + 22, NULL);
            ok = 1;
        }
    }
    return pclose(f) == 0 && ok ? 0 : -1;
}

int main(void)
{
    mkdir("build/models", 0755);
    printf("CPU engine, bench-768 model, 128-token prompt, 64 decoded tokens (best of 3)\n");
    printf("  %-5s %-8s %14s %14s   %s\n", "type", "threads", "prefill tok/s", "decode tok/s",
           "reference (2 threads): decode / prefill");
    for (size_t i = 0; i < sizeof(refs) / sizeof(refs[0]); i++) {
        char path[128], cmd[512];
        snprintf(path, sizeof(path), "build/models/bench-768-%s.gguf", refs[i].type);
        struct stat st;
        if (stat(path, &st) != 0) {
            snprintf(cmd, sizeof(cmd),
                     "build/millrace-worker make-model --preset bench-768 --type %s --out %s",
                     refs[i].type, path);
            if (system(cmd) != 0) {
                fprintf(stderr, "bench_engine: cannot make %s\n", path);
                return 1;
            }
        }
        for (int threads = 1; threads <= 2; threads++) {
            double best_p = 0, best_d = 0;
            for (int rep = 0; rep < 3; rep++) {
                double p, d;
                snprintf(cmd, sizeof(cmd),
                         "build/millrace-worker bench --model %s --threads %d --json", path,
                         threads);
                if (run(cmd, &p, &d) < 0) {
                    fprintf(stderr, "bench_engine: '%s' failed\n", cmd);
                    return 1;
                }
                best_p = p > best_p ? p : best_p;
                best_d = d > best_d ? d : best_d;
            }
            printf("  %-5s %-8d %14.1f %14.1f   %s\n", refs[i].type, threads, best_p, best_d,
                   threads == 2 ? refs[i].decode : "");
            if (threads == 2 && strcmp(refs[i].prefill, "-") != 0)
                printf("  %-5s %-8s %14s %14s   prefill %s\n", "", "", "", "", refs[i].prefill);
        }
    }
    return 0;
}
