/*
 * bench_kernels: throughput of the CPU kernels, printed as tables.
 *
 *   matvec (decode, 1 token): GB/s of weights streamed, per type, 1 and 2
 *   threads, for 4096x4096 and the projections of a dim-768 model. The
 *   weights of one measurement rotate through copies totalling >= 256 MiB,
 *   so they come from DRAM and not from the 32 MiB L3, as in a real step.
 *   model step: every matmul of a decode step of the bench-768 model
 *   (dim 768, 12 layers, 4 KV heads, FFN 2048, vocab 32000; its own
 *   weights, ~100 M parameters, from DRAM) for 1 sequence and for batches of
 *   8 and 16, as tokens/s: what the forward pass can reach on this machine
 *   before attention and the element-wise ops, and how batching scales it.
 *   matmul (prefill, 128 tokens): GFLOP/s.
 *   matmul by tokens per call (2 to 512, 2 threads): GFLOP/s, the few-token
 *   steps of continuous batching and the token blocks of long prefills; on
 *   the avx512vnni path Q8_0 also on the AVX2 path ("q8_0/avx2"), row after
 *   row in the same run, for a comparison the machine's noise affects less.
 *   pool: the cost of one kc_pool_run of an empty function, with the
 *   workers spinning (back-to-back runs) and asleep (after 2 ms idle).
 *
 * Each number is the best of several repetitions (other processes share
 * this machine). MILLRACE_CPU=scalar benchmarks the scalar path; --quick
 * runs only the pool, attention and model step, --tokens only the matmul
 * by tokens per call, --step only the model step.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/dtype.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/pool.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng = 88172645463325252ull;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

/* n bytes of random weights of type, 2 MiB aligned, huge pages advised (as a
 * loader that copies weights into anonymous memory would) */
static void *alloc_weights(int type, size_t n)
{
    size_t align = 2u << 20, bytes = (n + align - 1) / align * align;
    unsigned char *w = aligned_alloc(align, bytes);
    if (!w) {
        fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    madvise(w, bytes, MADV_HUGEPAGE);
    if (type == KC_TYPE_F32) {
        float *f = (float *)w;
        for (size_t i = 0; i < n / 4; i++)
            f[i] = (float)(rnd() >> 8) / (1 << 24) - 0.5f;
    } else if (type == KC_TYPE_Q8_0) {
        for (size_t i = 0; i + 34 <= n; i += 34) {
            uint16_t d = kc_fp32_to_fp16(0.01f);
            memcpy(w + i, &d, 2);
            for (int j = 0; j < 32; j++)
                w[i + 2 + j] = (unsigned char)rnd();
        }
    } else {
        uint16_t *h = (uint16_t *)w;
        for (size_t i = 0; i < n / 2; i++) {
            float v = (float)(rnd() >> 8) / (1 << 24) - 0.5f;
            h[i] = type == KC_TYPE_F16 ? kc_fp32_to_fp16(v) : kc_fp32_to_bf16(v);
        }
    }
    return w;
}

static const int types[] = {KC_TYPE_F32, KC_TYPE_F16, KC_TYPE_BF16, KC_TYPE_Q8_0};
#define N_TYPES 4

struct shape {
    const char *name;
    int n_in, n_out;
};

/* seconds per matvec, weights rotating through >= 256 MiB of copies */
static double time_matvec(struct kc_pool *p, struct kc_scratch *s, int type, int n_in, int n_out)
{
    size_t wb = kc_type_row_size(type, n_in) * n_out;
    int copies = (int)((256u << 20) / wb) + 1;
    unsigned char *w = alloc_weights(type, wb * copies);
    float *x = malloc(n_in * sizeof *x), *y = malloc(n_out * sizeof *y);
    for (int i = 0; i < n_in; i++)
        x[i] = (float)(rnd() >> 8) / (1 << 24) - 0.5f;
    int iters = copies < 64 ? 64 : copies;
    double best = 1e9;
    for (int rep = 0; rep < 7; rep++) {
        double t0 = now();
        for (int it = 0; it < iters; it++)
            kc_matmul(p, y, x, w + (size_t)(it % copies) * wb, type, 1, n_in, n_out, s);
        double t = (now() - t0) / iters;
        best = t < best ? t : best;
    }
    free(w);
    free(x);
    free(y);
    return best;
}

static void bench_matvec(struct kc_pool *pools[2], struct kc_scratch *s)
{
    static const struct shape shapes[] = {
        {"4096x4096", 4096, 4096},
        {"768->768 (wq,wo)", 768, 768},
        {"768->2048 (ffn up)", 768, 2048},
        {"2048->768 (ffn down)", 2048, 768},
        {"768->32000 (lm head)", 768, 32000},
        {"4096->14336", 4096, 14336},
    };
    printf("\nmatvec, 1 token (decode): GB/s of weights [us per call]\n");
    printf("%-22s", "shape");
    for (int t = 0; t < N_TYPES; t++)
        printf(" | %-6s 1 thr      2 thr       ", kc_type_name(types[t]));
    printf("\n");
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        printf("%-22s", shapes[i].name);
        for (int t = 0; t < N_TYPES; t++) {
            printf(" |");
            for (int th = 0; th < 2; th++) {
                double sec = time_matvec(pools[th], s, types[t], shapes[i].n_in, shapes[i].n_out);
                double gb =
                    kc_type_row_size(types[t], shapes[i].n_in) * shapes[i].n_out / sec / 1e9;
                printf(" %5.1f [%6.0f]", gb, sec * 1e6);
            }
        }
        printf("\n");
        fflush(stdout);
    }
}

/* The matmuls of one decode step of the bench-768 model (dim 768, 12
 * layers, 4 KV heads, FFN 2048, vocab 32000), in order: Q, K, V, O, gate, up
 * and down of each layer, then the LM head; weights laid out in that order */
enum { STEP_LAYERS = 12, STEP_MATS = 7 * STEP_LAYERS + 1, STEP_MAXT = 16 };
static const int step_shapes[8][2] = {{768, 768},  {768, 256},  {768, 256},  {768, 768},
                                      {768, 2048}, {768, 2048}, {2048, 768}, {768, 32000}};

/* (n_in, n_out) of matmul i of the step */
static const int *step_shape(int i)
{
    return step_shapes[i < STEP_MATS - 1 ? i % 7 : 7];
}

static size_t step_bytes(int type, int i)
{
    return kc_type_row_size(type, step_shape(i)[0]) * step_shape(i)[1];
}

/* seconds for the step over n_tokens tokens (sequences), best of 10 */
static double time_model_step(struct kc_pool *p, struct kc_scratch *s, const unsigned char *w,
                              int type, int n_tokens, const float *x, float *y)
{
    double best = 1e9;
    for (int rep = 0; rep < 10; rep++) {
        double t0 = now();
        const unsigned char *q = w;
        for (int i = 0; i < STEP_MATS; q += step_bytes(type, i), i++)
            kc_matmul(p, y, x, q, type, n_tokens, step_shape(i)[0], step_shape(i)[1], s);
        double sec = now() - t0;
        best = sec < best ? sec : best;
    }
    return best;
}

/* the step for 1 sequence and for batches of 8 and 16, in every type, and
 * Q8_0 repacked as the CPU backend does where it does (Q8_0_R8) */
static void bench_model_step(struct kc_pool *pools[2], struct kc_scratch *s)
{
    printf("\ndecode step of the bench-768 model (dim 768, 12 layers, 4 KV heads, FFN 2048, "
           "vocab 32000; matmuls only), tokens/s\n");
    printf("%-7s %9s %12s %12s %12s %12s\n", "type", "weights", "1 seq 1 thr", "1 seq 2 thr",
           "8 seqs 2 thr", "16 seqs 2 thr");
    float *x = malloc((size_t)STEP_MAXT * 2048 * sizeof *x),
          *y = malloc((size_t)STEP_MAXT * 32000 * sizeof *y);
    for (int i = 0; i < STEP_MAXT * 2048; i++)
        x[i] = (float)(rnd() >> 8) / (1 << 24) - 0.5f;
    for (int t = 0; t <= N_TYPES; t++) {
        const int type = t < N_TYPES ? types[t] : KC_TYPE_Q8_0_R8;
        if (type == KC_TYPE_Q8_0_R8 && !kc_q8_0_r8_fits(768))
            break;
        const int wtype = type == KC_TYPE_Q8_0_R8 ? KC_TYPE_Q8_0 : type;
        size_t total = 0;
        for (int i = 0; i < STEP_MATS; i++)
            total += step_bytes(wtype, i);
        unsigned char *w = alloc_weights(wtype, total);
        if (type == KC_TYPE_Q8_0_R8) { /* every shape fits */
            unsigned char *q = alloc_weights(wtype, total);
            size_t off = 0;
            for (int i = 0; i < STEP_MATS; off += step_bytes(wtype, i), i++)
                kc_pack_q8_0_r8(w + off, q + off, step_shape(i)[0], step_shape(i)[1]);
            free(q);
        }
        printf("%-7s %6.0f MB", kc_type_name(type), total / 1e6);
        printf(" %12.1f", 1 / time_model_step(pools[0], s, w, type, 1, x, y));
        static const int batch[] = {1, 8, STEP_MAXT};
        for (int b = 0; b < 3; b++)
            printf(" %12.1f", batch[b] / time_model_step(pools[1], s, w, type, batch[b], x, y));
        printf("\n");
        fflush(stdout);
        free(w);
    }
    free(x);
    free(y);
}

static void bench_matmul(struct kc_pool *pools[2], struct kc_scratch *s)
{
    static const struct shape shapes[] = {
        {"4096x4096", 4096, 4096},
        {"768->2048", 768, 2048},
        {"2048->768", 2048, 768},
        {"768->32000", 768, 32000},
    };
    enum { NT = 128 };
    printf("\nmatmul, %d tokens (prefill): GFLOP/s\n", NT);
    printf("%-12s", "shape");
    for (int t = 0; t < N_TYPES; t++)
        printf(" | %-5s 1 thr  2 thr", kc_type_name(types[t]));
    printf("\n");
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const int n_in = shapes[i].n_in, n_out = shapes[i].n_out;
        float *x = malloc((size_t)NT * n_in * sizeof *x);
        float *y = malloc((size_t)NT * n_out * sizeof *y);
        for (size_t j = 0; j < (size_t)NT * n_in; j++)
            x[j] = (float)(rnd() >> 8) / (1 << 24) - 0.5f;
        printf("%-12s", shapes[i].name);
        for (int t = 0; t < N_TYPES; t++) {
            unsigned char *w = alloc_weights(types[t], kc_type_row_size(types[t], n_in) * n_out);
            printf(" |");
            for (int th = 0; th < 2; th++) {
                double best = 1e9;
                for (int rep = 0; rep < 5; rep++) {
                    double t0 = now();
                    kc_matmul(pools[th], y, x, w, types[t], NT, n_in, n_out, s);
                    double sec = now() - t0;
                    best = sec < best ? sec : best;
                }
                printf(" %6.1f", 2.0 * NT * n_in * n_out / best / 1e9);
            }
            free(w);
        }
        printf("\n");
        fflush(stdout);
        free(x);
        free(y);
    }
}

/* GFLOP/s of one shape against the batch size, 2 threads: the decode-like
 * few-token products, the 128-token prefill step and token blocks past it */
static void bench_matmul_tokens(struct kc_pool *pool, struct kc_scratch *s, int max_tokens)
{
    static const struct shape shapes[] = {
        {"4096x4096", 4096, 4096},
        {"768->2048", 768, 2048},
        {"2048->768", 2048, 768},
    };
    static const int counts[] = {2, 7, 16, 17, 64, 128, 129, 256, 512};
    printf("\nmatmul by tokens per call, 2 threads: GFLOP/s\n");
    const int vnni = kc_cpu_isa() == KC_ISA_AVX512VNNI;
    printf("%-12s %-9s", "shape", "type");
    for (size_t c = 0; c < sizeof counts / sizeof *counts; c++)
        printf(" %6d", counts[c]);
    printf("\n");
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const int n_in = shapes[i].n_in, n_out = shapes[i].n_out;
        float *x = malloc((size_t)max_tokens * n_in * sizeof *x);
        float *y = malloc((size_t)max_tokens * n_out * sizeof *y);
        for (size_t j = 0; j < (size_t)max_tokens * n_in; j++)
            x[j] = (float)(rnd() >> 8) / (1 << 24) - 0.5f;
        for (int t = 0; t < N_TYPES; t++) {
            unsigned char *w = alloc_weights(types[t], kc_type_row_size(types[t], n_in) * n_out);
            const int n_paths = types[t] == KC_TYPE_Q8_0 && vnni ? 2 : 1;
            for (int path = 0; path < n_paths; path++) {
                if (path == 1)
                    kc_cpu_set_isa(KC_ISA_AVX2);
                printf("%-12s %-9s", shapes[i].name,
                       path == 1 ? "q8_0/avx2" : kc_type_name(types[t]));
                for (size_t c = 0; c < sizeof counts / sizeof *counts; c++) {
                    const int nt = counts[c];
                    double best = 1e9;
                    for (int rep = 0; rep < 5; rep++) {
                        double t0 = now();
                        kc_matmul(pool, y, x, w, types[t], nt, n_in, n_out, s);
                        double sec = now() - t0;
                        best = sec < best ? sec : best;
                    }
                    printf(" %6.1f", 2.0 * nt * n_in * n_out / best / 1e9);
                }
                printf("\n");
                fflush(stdout);
                if (path == 1)
                    kc_cpu_set_isa(KC_ISA_AVX512VNNI);
            }
            free(w);
        }
        free(x);
        free(y);
    }
}

/* one query token of a Mistral-7B-shaped layer (32 heads, 8 KV heads of
 * 128) over ctx positions of a paged fp16 cache; one thread */
static void bench_attention(void)
{
    enum { NH = 32, NKV = 8, HD = 128, BS = 16, MAXCTX = 4096 };
    const int row = NKV * HD, n_blocks = MAXCTX / BS;
    uint16_t *k = malloc((size_t)MAXCTX * row * 2), *v = malloc((size_t)MAXCTX * row * 2);
    const uint16_t **kb = malloc(n_blocks * sizeof *kb), **vb = malloc(n_blocks * sizeof *vb);
    float *q = malloc(NH * HD * sizeof *q), *out = malloc(NH * HD * sizeof *out);
    float *scratch = malloc((size_t)NH * MAXCTX * sizeof *scratch);
    for (size_t i = 0; i < (size_t)MAXCTX * row; i++) {
        k[i] = kc_fp32_to_fp16((float)(rnd() >> 8) / (1 << 24) - 0.5f);
        v[i] = kc_fp32_to_fp16((float)(rnd() >> 8) / (1 << 24) - 0.5f);
    }
    for (int b = 0; b < n_blocks; b++) { /* every other block: not contiguous */
        int slot = (b * 2) % n_blocks + (b * 2 >= n_blocks);
        kb[b] = k + (size_t)slot * BS * row;
        vb[b] = v + (size_t)slot * BS * row;
    }
    for (int i = 0; i < NH * HD; i++)
        q[i] = (float)(rnd() >> 8) / (1 << 24) - 0.5f;
    printf("\nattention, 1 query token, 32 heads / 8 KV heads x 128, fp16 KV, 1 thread\n");
    printf("%-8s %12s %12s\n", "context", "us", "KV GB/s");
    static const int ctxs[] = {128, 512, 4096};
    for (size_t c = 0; c < sizeof ctxs / sizeof *ctxs; c++) {
        double best = 1e9;
        for (int rep = 0; rep < 20; rep++) {
            double t0 = now();
            kc_attention(out, q, kb, vb, BS, 0, ctxs[c] - 1, NH, NKV, HD, 0.0884f, scratch);
            double t = now() - t0;
            best = t < best ? t : best;
        }
        printf("%-8d %12.1f %12.1f\n", ctxs[c], best * 1e6, 2.0 * ctxs[c] * row * 2 / best / 1e9);
    }
    float *sm = malloc(4096 * sizeof *sm);
    double best_ref = 1e9, best = 1e9;
    for (int rep = 0; rep < 200; rep++) {
        for (int i = 0; i < 4096; i++)
            sm[i] = (float)(rnd() >> 8) / (1 << 20);
        double t0 = now();
        kc_softmax_ref(sm, 4096);
        double t1 = now();
        kc_softmax(sm, 4096);
        double t2 = now();
        best_ref = t1 - t0 < best_ref ? t1 - t0 : best_ref;
        best = t2 - t1 < best ? t2 - t1 : best;
    }
    printf("softmax of 4096: reference (expf) %.1f us, kc_softmax %.1f us\n", best_ref * 1e6,
           best * 1e6);
    free(sm);
    free(k);
    free(v);
    free(kb);
    free(vb);
    free(q);
    free(out);
    free(scratch);
}

static void empty_fn(void *ctx, int i, int n)
{
    (void)ctx;
    (void)i;
    (void)n;
}

static void bench_pool(void)
{
    printf("\npool: one kc_pool_run of an empty function\n");
    printf("%-9s %14s %14s\n", "threads", "spinning (us)", "asleep (us)");
    for (int n = 1; n <= 2; n++) {
        struct kc_pool *p;
        if (kc_pool_create(&p, n) != 0)
            exit(1);
        double hot = 1e9, cold = 1e9;
        for (int rep = 0; rep < 10; rep++) {
            enum { N = 20000 };
            double t0 = now();
            for (int i = 0; i < N; i++)
                kc_pool_run(p, empty_fn, NULL);
            double t = (now() - t0) / N;
            hot = t < hot ? t : hot;
        }
        double sum = 0;
        for (int rep = 0; rep < 50; rep++) {
            usleep(2000); /* > the spin time: the worker sleeps on its futex */
            double t0 = now();
            kc_pool_run(p, empty_fn, NULL);
            double t = now() - t0;
            sum += t;
            cold = t < cold ? t : cold;
        }
        printf("%-9d %14.2f %7.1f (mean %.1f)\n", n, hot * 1e6, cold * 1e6, sum / 50 * 1e6);
        kc_pool_destroy(p);
    }
}

int main(int argc, char **argv)
{
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    int tokens_only = argc > 1 && strcmp(argv[1], "--tokens") == 0;
    int step_only = argc > 1 && strcmp(argv[1], "--step") == 0;
    struct kc_pool *pools[2];
    struct kc_scratch *s;
    if (kc_pool_create(&pools[0], 1) || kc_pool_create(&pools[1], 2) ||
        kc_scratch_create(&s, 512, 14336)) {
        fprintf(stderr, "bench_kernels: setup failed\n");
        return 1;
    }
    printf("kernels/cpu on %s path, %ld CPUs online\n", kc_cpu_isa_name(kc_cpu_isa()),
           sysconf(_SC_NPROCESSORS_ONLN));
    if (tokens_only) {
        bench_matmul_tokens(pools[1], s, 512);
    } else if (step_only) {
        bench_model_step(pools, s);
    } else {
        bench_pool();
        bench_attention();
        bench_model_step(pools, s);
    }
    if (!quick && !tokens_only && !step_only) {
        bench_matvec(pools, s);
        bench_matmul(pools, s);
        bench_matmul_tokens(pools[1], s, 512);
    }
    kc_scratch_destroy(s);
    kc_pool_destroy(pools[0]);
    kc_pool_destroy(pools[1]);
    return 0;
}
