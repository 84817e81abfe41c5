/*
 * make_model: deterministic random-weight models (see make_model.h).
 */
#include "worker/make_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/dtype.h"
#include "worker/gguf.h"
#include "worker/gguf_write.h"
#include "worker/vocab_gen.h"

static const struct mkmodel_preset presets[] = {
    {"tiny", 64, 2, 4, 2, 172, 32000, 512, 0, 1e6f, 1e-5f,
     "the shape of ../shared/models/synth-tiny (tests)"},
    {"tiny-swa", 64, 2, 4, 2, 172, 32000, 512, 16, 1e6f, 1e-5f,
     "tiny with a 16-token sliding window (tests)"},
    {"small", 256, 4, 8, 4, 704, 32000, 1024, 0, 1e6f, 1e-5f, "a quick model for the stack tests"},
    {"bench-768", 768, 12, 12, 4, 2048, 32000, 2048, 0, 1e6f, 1e-5f,
     "the CPU benchmark shape: dim 768, 12 layers, 12 heads, 4 KV heads, FFN 2048"},
    {"mistral-7b", 4096, 32, 32, 8, 14336, 32000, 32768, 0, 1e6f, 1e-5f,
     "the shape of Mistral-7B v0.2 (14.5 GB in F16)"},
};

const struct mkmodel_preset *mkmodel_find_preset(const char *name)
{
    for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++)
        if (strcmp(presets[i].name, name) == 0)
            return &presets[i];
    return NULL;
}

const struct mkmodel_preset *mkmodel_presets(size_t *n)
{
    *n = sizeof(presets) / sizeof(presets[0]);
    return presets;
}

/* ---- random numbers ---------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* One stream of N(0, std^2) values (Box-Muller, both halves used). */
struct normal_stream {
    uint64_t state;
    float std, mean;
    int have_spare;
    double spare;
};

static float next_normal(struct normal_stream *n)
{
    if (n->have_spare) {
        n->have_spare = 0;
        return n->mean + n->std * (float)n->spare;
    }
    double u1 = ((double)(splitmix64(&n->state) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = (double)(splitmix64(&n->state) >> 11) / 9007199254740992.0;
    double r = sqrt(-2.0 * log(u1));
    n->spare = r * sin(2.0 * M_PI * u2);
    n->have_spare = 1;
    return n->mean + n->std * (float)(r * cos(2.0 * M_PI * u2));
}

/* ---- tensors ----------------------------------------------------------- */

struct tensor_fill {
    struct normal_stream rng;
    uint32_t type;
    float *tmp; /* one block's or one chunk's values */
    size_t tmp_cap;
};

static size_t elem_bytes(uint32_t type)
{
    return type == GGUF_TENSOR_F32 ? 4 : 2;
}

static int fill_tensor(void *ctx, void *buf, uint64_t offset, size_t len)
{
    (void)offset; /* calls come in order: the stream just goes on */
    struct tensor_fill *t = ctx;
    if (t->type == GGUF_TENSOR_Q8_0) {
        size_t blocks = len / sizeof(struct kc_block_q8_0);
        float x[KC_QK8_0];
        for (size_t b = 0; b < blocks; b++) {
            for (int i = 0; i < KC_QK8_0; i++)
                x[i] = next_normal(&t->rng);
            kc_quantize_q8_0_row((struct kc_block_q8_0 *)buf + b, x, KC_QK8_0);
        }
        return 0;
    }
    size_t n = len / elem_bytes(t->type);
    for (size_t i = 0; i < n; i++) {
        float v = next_normal(&t->rng);
        if (t->type == GGUF_TENSOR_F32)
            ((float *)buf)[i] = v;
        else if (t->type == GGUF_TENSOR_F16)
            ((uint16_t *)buf)[i] = kc_fp32_to_fp16(v);
        else
            ((uint16_t *)buf)[i] = kc_fp32_to_bf16(v);
    }
    return 0;
}

struct build {
    struct gguf_writer *w;
    struct tensor_fill *fills;
    size_t n_fills, cap_fills;
    uint64_t seed;
};

static int add_tensor(struct build *b, const char *name, uint32_t type, int n_in, int n_out,
                      float std, float mean)
{
    if (type == GGUF_TENSOR_Q8_0 && n_in % KC_QK8_0 != 0)
        type = GGUF_TENSOR_F16; /* as llama.cpp's quantizer does for such rows */
    struct tensor_fill *t = &b->fills[b->n_fills++];
    memset(t, 0, sizeof(*t));
    t->type = type;
    t->rng.state = b->seed ^ hash_name(name);
    t->rng.std = std;
    t->rng.mean = mean;
    uint64_t ne[2] = {(uint64_t)n_in, (uint64_t)n_out};
    return gguf_writer_add_tensor_fn(b->w, name, type, n_out == 1 ? 1 : 2, ne, fill_tensor, t);
}

uint64_t mkmodel_weight_bytes(const struct mkmodel_preset *p, uint32_t type)
{
    int hd = p->dim / p->n_heads;
    uint64_t per_layer = (uint64_t)p->dim * (uint64_t)(2 * p->dim + 2 * p->n_kv_heads * hd) +
                         3ull * (uint64_t)p->dim * (uint64_t)p->ffn_dim;
    uint64_t n = per_layer * (uint64_t)p->n_layers + 2ull * p->dim * (uint64_t)p->vocab_size;
    return type == GGUF_TENSOR_F32 ? n * 4 : type == GGUF_TENSOR_Q8_0 ? n / 32 * 34 : n * 2;
}

/* Copy every tokenizer.* key of the GGUF file at path into w. */
static int copy_vocab(struct gguf_writer *w, const char *path, int *vocab_size, char *err,
                      size_t errlen)
{
    struct gguf_file *f = NULL;
    char why[300];
    if (gguf_open(&f, path, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "--vocab %s: %s", path, why);
        return -1;
    }
    int rc = 0, found = 0;
    for (size_t i = 0; i < gguf_n_kv(f) && rc == 0; i++) {
        const struct gguf_kv *kv = gguf_kv_at(f, i);
        char key[128];
        if (kv->key.len >= sizeof(key) || kv->key.len < 10 ||
            memcmp(kv->key.ptr, "tokenizer.", 10) != 0)
            continue;
        memcpy(key, kv->key.ptr, kv->key.len);
        key[kv->key.len] = '\0';
        if (kv->type == GGUF_TYPE_ARRAY && kv->elem_type == GGUF_TYPE_STRING) {
            const char **items = malloc((size_t)kv->n * sizeof(*items));
            char *arena = NULL;
            size_t total = 0;
            for (uint64_t j = 0; j < kv->n; j++)
                total += kv->strs[j].len + 1;
            arena = malloc(total ? total : 1);
            if (!items || !arena) {
                free(items);
                free(arena);
                snprintf(err, errlen, "out of memory");
                rc = -1;
                break;
            }
            char *p = arena;
            for (uint64_t j = 0; j < kv->n; j++) {
                memcpy(p, kv->strs[j].ptr, kv->strs[j].len);
                p[kv->strs[j].len] = '\0';
                items[j] = p;
                p += kv->strs[j].len + 1;
            }
            rc = gguf_writer_add_str_arr(w, key, items, kv->n);
            free(items);
            free(arena);
            if (strcmp(key, "tokenizer.ggml.tokens") == 0) {
                *vocab_size = (int)kv->n;
                found = 1;
            }
        } else if (kv->type == GGUF_TYPE_ARRAY) {
            rc = gguf_writer_add_arr(w, key, kv->elem_type, kv->data, kv->n);
        } else if (kv->type == GGUF_TYPE_STRING) {
            char *s = strndup(kv->v.s.ptr, kv->v.s.len);
            rc = s ? gguf_writer_add_str(w, key, s) : -1;
            free(s);
        } else {
            rc = gguf_writer_add_scalar(w, key, kv->type, kv->data);
        }
    }
    gguf_close(f);
    if (rc == 0 && !found) {
        snprintf(err, errlen, "--vocab %s: no tokenizer.ggml.tokens in it", path);
        return -1;
    }
    if (rc < 0 && !err[0])
        snprintf(err, errlen, "copying the vocabulary: %s", gguf_writer_error(w));
    return rc;
}

int mkmodel_write(const char *path, const struct mkmodel_preset *p, uint32_t type, uint64_t seed,
                  const char *vocab_path, char *err, size_t errlen)
{
    struct build b = {.seed = seed};
    struct vocab_gen *vg = NULL;
    int rc = -1, vocab = p->vocab_size;
    err[0] = '\0';
    if (!kc_type_supported((int)type)) {
        snprintf(err, errlen, "weight type %u is not one of F32, F16, BF16, Q8_0", type);
        return -1;
    }
    b.cap_fills = 3 + 9 * (size_t)p->n_layers;
    b.fills = calloc(b.cap_fills, sizeof(*b.fills));
    if (!b.fills || gguf_writer_create(&b.w, 0) < 0) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    char name[96];
    snprintf(name, sizeof(name), "millrace %s (random weights, seed %llu)", p->name,
             (unsigned long long)seed);
    int hd = p->dim / p->n_heads;
    gguf_writer_add_str(b.w, "general.architecture", "llama");
    gguf_writer_add_str(b.w, "general.name", name);
    gguf_writer_add_u32(b.w, "llama.context_length", (uint32_t)p->context_len);
    gguf_writer_add_u32(b.w, "llama.embedding_length", (uint32_t)p->dim);
    gguf_writer_add_u32(b.w, "llama.block_count", (uint32_t)p->n_layers);
    gguf_writer_add_u32(b.w, "llama.feed_forward_length", (uint32_t)p->ffn_dim);
    gguf_writer_add_u32(b.w, "llama.rope.dimension_count", (uint32_t)hd);
    gguf_writer_add_u32(b.w, "llama.attention.head_count", (uint32_t)p->n_heads);
    gguf_writer_add_u32(b.w, "llama.attention.head_count_kv", (uint32_t)p->n_kv_heads);
    gguf_writer_add_f32(b.w, "llama.rope.freq_base", p->rope_base);
    gguf_writer_add_f32(b.w, "llama.attention.layer_norm_rms_epsilon", p->rms_eps);
    if (p->sliding_window > 0)
        gguf_writer_add_u32(b.w, "llama.attention.sliding_window", (uint32_t)p->sliding_window);
    if (vocab_path) {
        if (copy_vocab(b.w, vocab_path, &vocab, err, errlen) < 0)
            goto out;
    } else {
        char why[256];
        if (vocab_gen_create(&vg, (size_t)p->vocab_size, why, sizeof(why)) != 0) {
            snprintf(err, errlen, "generating the vocabulary: %s", why);
            goto out;
        }
        if (vocab_gen_add_to_gguf(vg, b.w) < 0)
            goto out;
    }
    gguf_writer_add_u32(b.w, "llama.vocab_size", (uint32_t)vocab);

    int kv = p->n_kv_heads * hd;
    float s_dim = 1.0f / sqrtf((float)p->dim), s_ffn = 1.0f / sqrtf((float)p->ffn_dim);
    add_tensor(&b, "token_embd.weight", type, p->dim, vocab, 1.0f, 0.0f);
    add_tensor(&b, "output_norm.weight", GGUF_TENSOR_F32, p->dim, 1, 0.05f, 1.0f);
    add_tensor(&b, "output.weight", type, p->dim, vocab, s_dim, 0.0f);
    for (int l = 0; l < p->n_layers; l++) {
        const struct {
            const char *what;
            uint32_t t;
            int n_in, n_out;
            float std, mean;
        } ts[] = {
            {"attn_norm", GGUF_TENSOR_F32, p->dim, 1, 0.05f, 1.0f},
            {"attn_q", type, p->dim, p->dim, s_dim, 0},
            {"attn_k", type, p->dim, kv, s_dim, 0},
            {"attn_v", type, p->dim, kv, s_dim, 0},
            {"attn_output", type, p->dim, p->dim, s_dim, 0},
            {"ffn_norm", GGUF_TENSOR_F32, p->dim, 1, 0.05f, 1.0f},
            {"ffn_gate", type, p->dim, p->ffn_dim, s_dim, 0},
            {"ffn_up", type, p->dim, p->ffn_dim, s_dim, 0},
            {"ffn_down", type, p->ffn_dim, p->dim, s_ffn, 0},
        };
        for (size_t i = 0; i < sizeof(ts) / sizeof(ts[0]); i++) {
            snprintf(name, sizeof(name), "blk.%d.%s.weight", l, ts[i].what);
            add_tensor(&b, name, ts[i].t, ts[i].n_in, ts[i].n_out, ts[i].std, ts[i].mean);
        }
    }
    if (gguf_writer_write(b.w, path) < 0)
        goto out;
    rc = 0;
out:
    if (rc < 0 && !err[0] && b.w)
        snprintf(err, errlen, "%s: %s", path, gguf_writer_error(b.w));
    gguf_writer_destroy(b.w);
    vocab_gen_destroy(vg);
    free(b.fills);
    return rc;
}
