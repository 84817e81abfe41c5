/*
 * millrace-worker: runs Mistral-family models.
 *
 *   millrace-worker generate   --model FILE --prompt TEXT --max-tokens N [...]
 *   millrace-worker tokenize   --model FILE --text TEXT
 *   millrace-worker make-model --preset NAME --type T --out FILE
 *   millrace-worker bench      --model FILE [--threads N]
 *   millrace-worker bench      --synthetic mistral-7b --device cuda
 *   millrace-worker serve      --model FILE --redis URL [...]
 *
 * Each subcommand has its own flags and --help.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/job.h"
#include "common/log.h"
#include "kernels/cpu/dtype.h"
#include "worker/bench.h"
#include "worker/engine.h"
#include "worker/fetch.h"
#include "worker/make_model.h"
#include "worker/model.h"
#include "worker/serve.h"
#include "worker/gguf.h"
#include "worker/tokenizer.h"

static const char *env_get(const char *name)
{
    return getenv(name);
}

/* Parse argv with spec; returns 0 to go on, else the exit status to use. */
static int parse(const struct config_spec *spec, int argc, char **argv, const char *cmd)
{
    char err[512];
    int rc = config_parse(spec, argc, argv, env_get, err, sizeof(err));
    if (rc == CONFIG_HELP) {
        config_print_help(spec, stdout);
        return -1;
    }
    if (rc < 0) {
        fprintf(stderr, "millrace-worker %s: %s\n", cmd, err);
        return 2;
    }
    return 0;
}

static int exit_of(int rc)
{
    return rc < 0 ? 0 : rc;
}

#define MODEL_HELP                                                                                 \
    "GGUF model: a path, an http(s) URL or hf:owner/repo/file.gguf[@revision] (downloaded "        \
    "once into $MILLRACE_CACHE, default ~/.cache/millrace)."

/* --model as given (a path, a URL or hf:...) to a local file in buf, downloading it
 * into the cache ($MILLRACE_CACHE, as serve --cache-dir) when needed. Returns the
 * path, or NULL after printing why. */
static const char *resolve_model(const char *cmd, const char *spec, char *buf, size_t cap)
{
    char err[512];
    struct fetch_opts fo = {.retries = 3};
    if (fetch_resolve_model(spec, &fo, buf, cap, err, sizeof(err)) < 0) {
        fprintf(stderr, "millrace-worker %s: %s\n", cmd, err);
        return NULL;
    }
    return buf;
}

/* ---- generate ----------------------------------------------------------- */

static void print_text(void *ctx, const char *text, size_t len)
{
    (void)ctx;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
}

static json_t *ids_json(const int *ids, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    return a;
}

static int cmd_generate(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL, *device = NULL;
    long long max_tokens, top_k, seed, threads, max_input;
    double temperature, top_p, presence, frequency;
    int json_out;
    struct config_list stops;
    const struct config_option options[] = {
        {"model", "MILLRACE_MODEL", CONFIG_STRING, &model, NULL, 0, 0, "MODEL", MODEL_HELP},
        {"prompt", NULL, CONFIG_STRING, &prompt, NULL, 0, 0, "TEXT", "The prompt."},
        {"max-tokens", NULL, CONFIG_INT, &max_tokens, "32", 1, 10000000, "N",
         "Tokens to generate at most."},
        {"temperature", NULL, CONFIG_DOUBLE, &temperature, "1.0", 0, 1000, "T", "0 is greedy."},
        {"top-k", NULL, CONFIG_INT, &top_k, "50", -1, 10000000, "K", "<= 0 disables."},
        {"top-p", NULL, CONFIG_DOUBLE, &top_p, "1.0", 1e-9, 1, "P", "Nucleus sampling."},
        {"presence-penalty", NULL, CONFIG_DOUBLE, &presence, "0", -2, 2, "X", "OpenAI semantics."},
        {"frequency-penalty", NULL, CONFIG_DOUBLE, &frequency, "0", -2, 2, "X",
         "OpenAI semantics."},
        {"seed", NULL, CONFIG_INT, &seed, "-1", -1, 9223372036854775807.0, "S",
         "Reproducible sampling (-1: random)."},
        {"stop", NULL, CONFIG_LIST, &stops, NULL, 0, 0, "STR", "Stop string."},
        {"max-input-tokens", NULL, CONFIG_INT, &max_input, "0", 0, 10000000, "N",
         "Keep only the last N prompt tokens (0: all)."},
        {"threads", "MILLRACE_THREADS", CONFIG_INT, &threads, "0", 0, 256, "N",
         "CPU threads (0: all cores)."},
        {"device", "MILLRACE_DEVICE", CONFIG_STRING, &device, "cpu", 0, 0, "DEV",
         "cpu, cuda (builds with CUDA) or auto."},
        {"json", NULL, CONFIG_BOOL, &json_out, "false", 0, 0, NULL,
         "Print one JSON object: prompt_tokens, tokens, text, finish_reason, speeds."},
    };
    const struct config_spec spec = {
        "millrace-worker generate --model FILE --prompt TEXT [options]",
        "Generate a continuation of one prompt, on this machine.", options,
        sizeof(options) / sizeof(options[0])};
    int rc = parse(&spec, argc, argv, "generate");
    if (rc)
        return exit_of(rc);
    if (!model || !prompt) {
        fprintf(stderr, "millrace-worker generate: --model and --prompt are required\n");
        return 2;
    }

    /* the request goes through the same validation as an HTTP one */
    json_t *body =
        json_pack("{s:s, s:I, s:f, s:I, s:f, s:f, s:f, s:I}", "text", prompt, "max_tokens",
                  (json_int_t)max_tokens, "temperature", temperature, "top_k", (json_int_t)top_k,
                  "top_p", top_p, "presence_penalty", presence, "frequency_penalty", frequency,
                  "max_input_tokens", (json_int_t)max_input);
    if (seed >= 0)
        json_object_set_new(body, "seed", json_integer(seed));
    json_t *stop = json_array();
    for (int i = 0; i < stops.n; i++)
        json_array_append_new(stop, json_string(stops.items[i]));
    json_object_set_new(body, "stop", stop);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    struct job_limits lim = job_limits_default();
    lim.max_tokens_limit = 10000000;
    struct job_request *req = NULL;
    struct job_error je;
    rc = text ? job_request_parse(&req, text, strlen(text), &lim, &je, NULL) : JOB_ERR_NOMEM;
    free(text);
    if (rc != 0) {
        fprintf(stderr, "millrace-worker generate: %s\n",
                rc == JOB_ERR_NOMEM ? "out of memory" : je.message);
        return 2;
    }

    char err[512], file[PATH_MAX];
    struct engine *e = NULL;
    struct engine_opts eo = {.device = device, .n_threads = (int)threads};
    if (!(eo.model_path = resolve_model("generate", model, file, sizeof(file))) ||
        engine_create(&e, &eo, err, sizeof(err)) < 0) {
        if (eo.model_path)
            fprintf(stderr, "millrace-worker generate: %s\n", err);
        job_request_destroy(req);
        return 1;
    }
    struct seq s;
    struct engine_stats st;
    rc = engine_generate(e, req, &s, &st, json_out ? NULL : print_text, NULL, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "millrace-worker generate: %s\n", err);
    } else if (json_out) {
        size_t len;
        const char *out = seq_text(&s, &len);
        json_t *o = json_object();
        json_object_set_new(o, "prompt_tokens", ids_json(s.tokens, s.n_prompt));
        json_object_set_new(o, "tokens", ids_json(s.tokens + s.n_prompt, s.n_new));
        json_object_set_new(o, "text", json_stringn(out, len));
        json_object_set_new(o, "finish_reason", json_string(job_finish_reason_name(s.finish)));
        json_object_set_new(o, "prefill_tokens_per_s",
                            json_real(st.prefill_s > 0 ? st.n_prompt / st.prefill_s : 0));
        json_object_set_new(o, "decode_tokens_per_s",
                            json_real(st.decode_s > 0 && st.n_generated > 1
                                          ? (st.n_generated - 1) / st.decode_s
                                          : 0));
        char *dump = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
        json_decref(o);
        if (dump)
            printf("%s\n", dump);
        free(dump);
    } else {
        printf("\n");
        fprintf(
            stderr,
            "[%d prompt tokens, %d generated, finish: %s; prefill %.1f tok/s, decode %.1f tok/s]\n",
            st.n_prompt, st.n_generated, job_finish_reason_name(s.finish),
            st.prefill_s > 0 ? st.n_prompt / st.prefill_s : 0,
            st.decode_s > 0 && st.n_generated > 1 ? (st.n_generated - 1) / st.decode_s : 0);
    }
    seq_fini(&s);
    engine_destroy(e);
    job_request_destroy(req);
    return rc < 0 ? 1 : 0;
}

/* ---- tokenize ----------------------------------------------------------- */

static int cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *text = NULL;
    int no_bos;
    const struct config_option options[] = {
        {"model", "MILLRACE_MODEL", CONFIG_STRING, &model, NULL, 0, 0, "MODEL", MODEL_HELP},
        {"text", NULL, CONFIG_STRING, &text, NULL, 0, 0, "TEXT", "Text to tokenize."},
        {"no-bos", NULL, CONFIG_BOOL, &no_bos, "false", 0, 0, NULL, "Do not add BOS."},
    };
    const struct config_spec spec = {"millrace-worker tokenize --model FILE --text TEXT",
                                     "Print the token ids of a text, space-separated.", options,
                                     sizeof(options) / sizeof(options[0])};
    int rc = parse(&spec, argc, argv, "tokenize");
    if (rc)
        return exit_of(rc);
    if (!model || !text) {
        fprintf(stderr, "millrace-worker tokenize: --model and --text are required\n");
        return 2;
    }
    char err[512], file[PATH_MAX];
    struct gguf_file *f = NULL;
    struct tokenizer *t = NULL;
    if (!(model = resolve_model("tokenize", model, file, sizeof(file))))
        return 1;
    if (gguf_open(&f, model, err, sizeof(err)) < 0 || tok_load_gguf(&t, f, err, sizeof(err)) < 0) {
        fprintf(stderr, "millrace-worker tokenize: %s: %s\n", model, err);
        gguf_close(f);
        return 1;
    }
    size_t len = strlen(text), n = 0, cap = TOK_ENCODE_BOUND(len);
    int *ids = malloc(cap * sizeof(*ids));
    rc = ids ? tok_encode(t, text, len, !no_bos, ids, cap, &n) : -1;
    if (rc == 0) {
        for (size_t i = 0; i < n; i++)
            printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
    } else {
        fprintf(stderr, "millrace-worker tokenize: cannot tokenize\n");
    }
    free(ids);
    tok_destroy(t);
    gguf_close(f);
    return rc == 0 ? 0 : 1;
}

/* ---- make-model --------------------------------------------------------- */

static int type_from_name(const char *name, uint32_t *out)
{
    static const struct {
        const char *name;
        uint32_t type;
    } types[] = {
        {"f32", KC_TYPE_F32}, {"f16", KC_TYPE_F16}, {"bf16", KC_TYPE_BF16}, {"q8_0", KC_TYPE_Q8_0}};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (strcasecmp(name, types[i].name) == 0) {
            *out = types[i].type;
            return 0;
        }
    return -1;
}

static int cmd_make_model(int argc, char **argv)
{
    const char *preset = NULL, *type = NULL, *out = NULL, *vocab = NULL;
    long long seed;
    const struct config_option options[] = {
        {"preset", NULL, CONFIG_STRING, &preset, NULL, 0, 0, "NAME",
         "tiny, tiny-swa, small, bench-768 or mistral-7b."},
        {"type", NULL, CONFIG_STRING, &type, "f16", 0, 0, "T", "f32, f16, bf16 or q8_0."},
        {"out", NULL, CONFIG_STRING, &out, NULL, 0, 0, "FILE", "Where to write the GGUF file."},
        {"seed", NULL, CONFIG_INT, &seed, "1", 0, 9223372036854775807.0, "S",
         "Random seed: the same preset, type and seed give the same file."},
        {"vocab", NULL, CONFIG_STRING, &vocab, NULL, 0, 0, "FILE",
         "Copy the tokenizer of this GGUF file instead of generating one."},
    };
    const struct config_spec spec = {
        "millrace-worker make-model --preset NAME --type T --out FILE",
        "Write a Mistral-architecture model with deterministic random weights\n"
        "(std 1/sqrt(fan-in), embeddings std 1) and a generated tokenizer.",
        options, sizeof(options) / sizeof(options[0])};
    int rc = parse(&spec, argc, argv, "make-model");
    if (rc)
        return exit_of(rc);
    const struct mkmodel_preset *p = preset ? mkmodel_find_preset(preset) : NULL;
    uint32_t t;
    if (!p || !out || type_from_name(type, &t) < 0) {
        size_t n;
        const struct mkmodel_preset *all = mkmodel_presets(&n);
        fprintf(stderr, "millrace-worker make-model: need --preset, --type and --out; presets:\n");
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, "  %-12s %s\n", all[i].name, all[i].about);
        return 2;
    }
    char err[512];
    double t0 = clock_wall_s();
    if (mkmodel_write(out, p, t, (uint64_t)seed, vocab, err, sizeof(err)) < 0) {
        fprintf(stderr, "millrace-worker make-model: %s\n", err);
        return 1;
    }
    fprintf(stderr, "wrote %s: preset %s, %s, %.1f MB of weights, in %.1f s\n", out, p->name,
            kc_type_name((int)t), (double)mkmodel_weight_bytes(p, t) / 1e6, clock_wall_s() - t0);
    return 0;
}

/* ---- bench -------------------------------------------------------------- */

/* "16,64,256" into out (at most cap); returns the count, or -1. */
static int parse_sizes(const char *s, int *out, int cap)
{
    int n = 0;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 100000 || n == cap || (*end && *end != ','))
            return -1;
        out[n++] = (int)v;
        s = *end ? end + 1 : end;
    }
    return n;
}

/* bench --synthetic: a preset's shape with weights made on the device. */
static int bench_synth(const char *preset, const char *device, const char *weights, int n_prompt,
                       int n_decode, int steps, const char *seqs, int json_out)
{
    int sizes[16], n_sizes = parse_sizes(seqs, sizes, 16);
    uint32_t t;
    if (n_sizes < 0) {
        fprintf(stderr, "millrace-worker bench: --seqs wants sizes like 16,64,256\n");
        return 2;
    }
    if (type_from_name(weights, &t) < 0 || (t != KC_TYPE_F16 && t != KC_TYPE_Q8_0)) {
        fprintf(stderr, "millrace-worker bench: --weights is f16 or q8_0\n");
        return 2;
    }
    struct bench_opts bo = {.preset = preset,
                            .device = device,
                            .type = t,
                            .prompt_tokens = n_prompt,
                            .decode_tokens = n_decode,
                            .steps = steps,
                            .batches = sizes,
                            .n_batches = n_sizes,
                            .json = json_out};
    char err[512];
    if (bench_synthetic(&bo, err, sizeof(err)) < 0) {
        fprintf(stderr, "millrace-worker bench: %s\n", err);
        return 1;
    }
    return 0;
}

static int cmd_bench(int argc, char **argv)
{
    const char *model = NULL, *device = NULL, *synthetic = NULL, *weights = NULL, *seqs = NULL;
    long long threads, n_prompt, n_decode, steps;
    int json_out;
    const struct config_option options[] = {
        {"model", "MILLRACE_MODEL", CONFIG_STRING, &model, NULL, 0, 0, "MODEL", MODEL_HELP},
        {"synthetic", NULL, CONFIG_STRING, &synthetic, NULL, 0, 0, "PRESET",
         "Instead of a file: random weights of a make-model preset's shape (mistral-7b) made on "
         "the device (--device cuda). Reports batch-1 decode and its share of the memory "
         "bandwidth ceiling, time to first token, and tokens/s at --seqs sequences."},
        {"weights", NULL, CONFIG_STRING, &weights, "f16", 0, 0, "T",
         "--synthetic weight type: f16 or q8_0."},
        {"seqs", NULL, CONFIG_STRING, &seqs, "16,64,256", 0, 0, "N,N,...",
         "--synthetic: batch sizes for the aggregate decode measurement."},
        {"steps", NULL, CONFIG_INT, &steps, "32", 1, 100000, "N",
         "--synthetic: decode steps timed at each batch size."},
        {"threads", "MILLRACE_THREADS", CONFIG_INT, &threads, "0", 0, 256, "N",
         "CPU threads (0: all cores)."},
        {"prompt-tokens", NULL, CONFIG_INT, &n_prompt, "0", 0, 100000, "N",
         "Prompt length for the prefill (time to first token) measurement; 0: 128, or 512 "
         "with --synthetic."},
        {"decode-tokens", NULL, CONFIG_INT, &n_decode, "64", 1, 100000, "N",
         "Tokens decoded one at a time for the decode measurement."},
        {"device", "MILLRACE_DEVICE", CONFIG_STRING, &device, "cpu", 0, 0, "DEV",
         "cpu, cuda (builds with CUDA) or auto."},
        {"json", NULL, CONFIG_BOOL, &json_out, "false", 0, 0, NULL, "Print JSON."},
    };
    const struct config_spec spec = {
        "millrace-worker bench (--model FILE | --synthetic PRESET --device cuda) [options]",
        "Measure prefill and decode speed of one sequence (and, with --synthetic, of batches).",
        options, sizeof(options) / sizeof(options[0])};
    int rc = parse(&spec, argc, argv, "bench");
    if (rc)
        return exit_of(rc);
    if (synthetic)
        return bench_synth(synthetic, device, weights, n_prompt > 0 ? (int)n_prompt : 512,
                           (int)n_decode, (int)steps, seqs, json_out);
    if (n_prompt == 0)
        n_prompt = 128;
    if (!model) {
        fprintf(stderr, "millrace-worker bench: --model or --synthetic is required\n");
        return 2;
    }
    char err[512], file[PATH_MAX];
    if (!(model = resolve_model("bench", model, file, sizeof(file))))
        return 1;
    struct engine *e = NULL;
    struct engine_opts eo = {.model_path = model,
                             .device = device,
                             .n_threads = (int)threads,
                             .max_batch_tokens = (int)(n_prompt > 512 ? 512 : n_prompt)};
    if (engine_create(&e, &eo, err, sizeof(err)) < 0) {
        fprintf(stderr, "millrace-worker bench: %s\n", err);
        return 1;
    }
    int ctx = e->model->cfg.context_len;
    if (n_prompt + n_decode > ctx) {
        fprintf(stderr, "millrace-worker bench: %lld + %lld tokens exceed the context of %d\n",
                n_prompt, n_decode, ctx);
        engine_destroy(e);
        return 2;
    }
    int total = (int)(n_prompt + n_decode);
    int *tokens = malloc((size_t)total * sizeof(*tokens));
    if (!tokens) {
        fprintf(stderr, "millrace-worker bench: out of memory\n");
        engine_destroy(e);
        return 1;
    }
    uint64_t state = 12345;
    for (int i = 0; i < total; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        tokens[i] =
            i == 0 ? 1 : 3 + (int)((state >> 33) % (uint64_t)(e->model->cfg.vocab_size - 3));
    }
    /* warm up (page the weights in), then measure */
    engine_run(e, tokens, 1, 0, NULL, err, sizeof(err));
    double t0 = clock_wall_s();
    rc = engine_run(e, tokens, (int)n_prompt, 0, NULL, err, sizeof(err));
    double t1 = clock_wall_s();
    for (int i = (int)n_prompt; rc == 0 && i < total; i++)
        rc = engine_run(e, tokens + i, 1, i, NULL, err, sizeof(err));
    double t2 = clock_wall_s();
    if (rc < 0) {
        fprintf(stderr, "millrace-worker bench: %s\n", err);
    } else {
        double pf = (double)n_prompt / (t1 - t0), dc = (double)n_decode / (t2 - t1);
        double gbs = dc * (double)e->model->weight_bytes / 1e9;
        if (json_out)
            printf("{\"model\":\"%s\",\"type\":\"%s\",\"threads\":%d,\"prefill_tokens_per_s\":%.1f,"
                   "\"decode_tokens_per_s\":%.1f,\"decode_weight_gb_per_s\":%.2f}\n",
                   e->model->cfg.name, model_weight_type_name(e->model), (int)threads, pf, dc, gbs);
        else
            printf("%s (%s), %d thread(s): prefill %lld tokens %.1f tok/s; decode %.1f tok/s "
                   "(%.1f GB/s of weights)\n",
                   e->model->cfg.name, model_weight_type_name(e->model), (int)threads, n_prompt, pf,
                   dc, gbs);
    }
    free(tokens);
    engine_destroy(e);
    return rc < 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
    log_setup(LOG_INFO, "worker");
    const char *cmd = argc > 1 ? argv[1] : "";
    if (strcmp(cmd, "generate") == 0)
        return cmd_generate(argc - 1, argv + 1);
    if (strcmp(cmd, "tokenize") == 0)
        return cmd_tokenize(argc - 1, argv + 1);
    if (strcmp(cmd, "make-model") == 0)
        return cmd_make_model(argc - 1, argv + 1);
    if (strcmp(cmd, "bench") == 0)
        return cmd_bench(argc - 1, argv + 1);
    if (strcmp(cmd, "serve") == 0)
        return serve_main(argc - 1, argv + 1);
    int help = strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0;
    fprintf(help ? stdout : stderr,
            "Usage: millrace-worker COMMAND [options]   (COMMAND --help for its options)\n\n"
            "  generate     generate a continuation of one prompt on this machine\n"
            "  tokenize     print the token ids of a text\n"
            "  make-model   write a random-weight Mistral-architecture model (tests, benchmarks)\n"
            "  bench        measure prefill and decode speed\n"
            "  serve        serve jobs from the Redis queue (continuous batching)\n");
    return help ? 0 : 2;
}
