/*
 * model: Mistral-family hyper-parameters and weights from a GGUF file (see
 * model.h).
 *
 * Key decision: check everything once here, with errors that name the tensor
 * and what was expected, so that a bad or unsupported file is a clear message
 * at start-up and the forward pass never meets a surprise.
 */
#include "worker/model.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/gguf.h"
#include "worker/tokenizer.h"

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* A required positive integer key. */
static int get_int(const struct gguf_file *f, const char *key, int *out, int required, int def,
                   char *err, size_t errlen)
{
    uint32_t v;
    int rc = gguf_get_u32(f, key, &v);
    if (rc == GGUF_EABSENT && !required) {
        *out = def;
        return 0;
    }
    if (rc != 0)
        return fail(err, errlen, "%s: %s", key,
                    rc == GGUF_EABSENT ? "missing" : "not a non-negative integer that fits");
    if (v > (1u << 30))
        return fail(err, errlen, "%s: %u is implausibly large", key, v);
    *out = (int)v;
    return 0;
}

static int get_float(const struct gguf_file *f, const char *key, float *out, float def, char *err,
                     size_t errlen)
{
    int rc = gguf_get_f32(f, key, out);
    if (rc == GGUF_EABSENT) {
        *out = def;
        return 0;
    }
    if (rc != 0 || !isfinite(*out) || *out <= 0)
        return fail(err, errlen, "%s: not a positive number", key);
    return 0;
}

static int weight_type_ok(uint32_t t)
{
    return t == GGUF_TENSOR_F32 || t == GGUF_TENSOR_F16 || t == GGUF_TENSOR_BF16 ||
           t == GGUF_TENSOR_Q8_0;
}

/* Find tensor `name` and check it is (n_out rows of n_in): GGUF ne = {n_in,
 * n_out}. Vectors have n_out = 1 and one dimension. f32_only for norms. */
static int find_weight(const struct gguf_file *f, const char *name, int n_in, int n_out,
                       int f32_only, struct model_weight *w, char *err, size_t errlen)
{
    const struct gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t)
        return fail(err, errlen, "tensor %s is missing", name);
    int dims = n_out == 1 ? 1 : 2;
    int shape_ok = (int)t->n_dims == dims && t->ne[0] == (uint64_t)n_in &&
                   (dims == 1 || t->ne[1] == (uint64_t)n_out);
    if (!shape_ok)
        return fail(err, errlen, "tensor %s: shape %llux%llu (%u dims), expected %dx%d", name,
                    (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], t->n_dims, n_in,
                    n_out);
    if (f32_only ? t->type != GGUF_TENSOR_F32 : !weight_type_ok(t->type))
        return fail(err, errlen, "tensor %s: type %s is not supported here (%s)", name,
                    gguf_type_name(t->type),
                    f32_only ? "norm weights must be F32" : "millrace runs F32, F16, BF16, Q8_0");
    w->data = t->data;
    w->type = t->type;
    w->n_in = n_in;
    w->n_out = n_out;
    return 0;
}

static uint64_t weight_bytes(const struct model_weight *w)
{
    uint64_t n = (uint64_t)w->n_in * (uint64_t)w->n_out;
    switch (w->type) {
    case GGUF_TENSOR_F32:
        return n * 4;
    case GGUF_TENSOR_Q8_0:
        return n / 32 * 34;
    default:
        return n * 2;
    }
}

static int read_config(const struct gguf_file *f, const char *path, struct model_config *c,
                       char *err, size_t errlen)
{
    struct gguf_str s;
    if (gguf_get_str(f, "general.architecture", &s) != 0)
        return fail(err, errlen, "general.architecture: missing (not a model file?)");
    if (s.len != 5 || memcmp(s.ptr, "llama", 5) != 0)
        return fail(err, errlen,
                    "general.architecture is '%.*s': millrace runs Mistral/Llama models "
                    "('llama')",
                    (int)(s.len > 64 ? 64 : s.len), s.ptr);
    if (gguf_get_str(f, "general.name", &s) == 0)
        snprintf(c->name, sizeof(c->name), "%.*s", (int)(s.len > 127 ? 127 : s.len), s.ptr);
    else {
        const char *base = strrchr(path, '/');
        snprintf(c->name, sizeof(c->name), "%s", base ? base + 1 : path);
    }
    if (get_int(f, "llama.embedding_length", &c->dim, 1, 0, err, errlen) < 0 ||
        get_int(f, "llama.block_count", &c->n_layers, 1, 0, err, errlen) < 0 ||
        get_int(f, "llama.attention.head_count", &c->n_heads, 1, 0, err, errlen) < 0 ||
        get_int(f, "llama.feed_forward_length", &c->ffn_dim, 1, 0, err, errlen) < 0 ||
        get_int(f, "llama.context_length", &c->context_len, 0, 2048, err, errlen) < 0 ||
        get_int(f, "llama.attention.head_count_kv", &c->n_kv_heads, 0, c->n_heads, err, errlen) <
            0 ||
        get_int(f, "llama.attention.sliding_window", &c->sliding_window, 0, 0, err, errlen) < 0)
        return -1;
    if (get_float(f, "llama.rope.freq_base", &c->rope_base, 10000.0f, err, errlen) < 0 ||
        get_float(f, "llama.attention.layer_norm_rms_epsilon", &c->rms_eps, 1e-5f, err, errlen) < 0)
        return -1;
    if (c->dim < 1 || c->n_layers < 1 || c->n_heads < 1 || c->ffn_dim < 1 || c->context_len < 1)
        return fail(err, errlen, "model dimensions must be positive");
    if (c->dim % c->n_heads != 0)
        return fail(err, errlen, "embedding length %d is not a multiple of %d heads", c->dim,
                    c->n_heads);
    c->head_dim = c->dim / c->n_heads;
    if (c->head_dim % 2 != 0)
        return fail(err, errlen, "head size %d is odd: RoPE rotates pairs", c->head_dim);
    int rope_dims;
    if (get_int(f, "llama.rope.dimension_count", &rope_dims, 0, c->head_dim, err, errlen) < 0)
        return -1;
    if (rope_dims != c->head_dim)
        return fail(err, errlen,
                    "llama.rope.dimension_count %d differs from the head size %d (partial "
                    "RoPE is not supported)",
                    rope_dims, c->head_dim);
    if (c->n_kv_heads < 1 || c->n_heads % c->n_kv_heads != 0)
        return fail(err, errlen, "%d heads cannot be grouped over %d KV heads", c->n_heads,
                    c->n_kv_heads);
    return 0;
}

int model_load(struct model **out, const char *path, char *err, size_t errlen)
{
    *out = NULL;
    struct model *m = calloc(1, sizeof(*m));
    if (!m)
        return fail(err, errlen, "out of memory");
    char why[400];
    if (gguf_open(&m->file, path, why, sizeof(why)) < 0) {
        fail(err, errlen, "%s: %s", path, why);
        goto fail;
    }
    struct model_config *c = &m->cfg;
    if (read_config(m->file, path, c, err, errlen) < 0)
        goto fail;

    const struct gguf_tensor *emb = gguf_find_tensor(m->file, "token_embd.weight");
    if (!emb || emb->n_dims != 2 || emb->ne[0] != (uint64_t)c->dim || emb->ne[1] < 3 ||
        emb->ne[1] > 10000000) {
        fail(err, errlen, "tensor token_embd.weight: missing or not (vocab, %d)", c->dim);
        goto fail;
    }
    c->vocab_size = (int)emb->ne[1];
    int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    if (find_weight(m->file, "token_embd.weight", c->dim, c->vocab_size, 0, &m->tok_embd, err,
                    errlen) < 0 ||
        find_weight(m->file, "output_norm.weight", c->dim, 1, 1, &m->output_norm, err, errlen) < 0)
        goto fail;
    if (gguf_find_tensor(m->file, "output.weight")) {
        if (find_weight(m->file, "output.weight", c->dim, c->vocab_size, 0, &m->output, err,
                        errlen) < 0)
            goto fail;
    } else {
        m->output = m->tok_embd; /* tied embeddings */
    }
    m->layers = calloc((size_t)c->n_layers, sizeof(*m->layers));
    if (!m->layers) {
        fail(err, errlen, "out of memory");
        goto fail;
    }
    for (int l = 0; l < c->n_layers; l++) {
        struct model_layer *L = &m->layers[l];
        const struct {
            const char *name;
            int n_in, n_out, f32_only;
            struct model_weight *w;
        } want[] = {
            {"attn_norm", c->dim, 1, 1, &L->attn_norm},
            {"attn_q", c->dim, q_dim, 0, &L->wq},
            {"attn_k", c->dim, kv_dim, 0, &L->wk},
            {"attn_v", c->dim, kv_dim, 0, &L->wv},
            {"attn_output", q_dim, c->dim, 0, &L->wo},
            {"ffn_norm", c->dim, 1, 1, &L->ffn_norm},
            {"ffn_gate", c->dim, c->ffn_dim, 0, &L->w_gate},
            {"ffn_up", c->dim, c->ffn_dim, 0, &L->w_up},
            {"ffn_down", c->ffn_dim, c->dim, 0, &L->w_down},
        };
        for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
            char name[64];
            snprintf(name, sizeof(name), "blk.%d.%s.weight", l, want[i].name);
            if (find_weight(m->file, name, want[i].n_in, want[i].n_out, want[i].f32_only, want[i].w,
                            err, errlen) < 0)
                goto fail;
            m->weight_bytes += weight_bytes(want[i].w);
        }
    }
    m->weight_bytes += weight_bytes(&m->output) + weight_bytes(&m->output_norm);
    if (tok_load_gguf(&m->tok, m->file, why, sizeof(why)) < 0) {
        fail(err, errlen, "tokenizer: %s", why);
        goto fail;
    }
    if ((int)tok_n_vocab(m->tok) != c->vocab_size) {
        fail(err, errlen, "the tokenizer has %zu pieces but token_embd.weight has %d rows",
             tok_n_vocab(m->tok), c->vocab_size);
        goto fail;
    }
    *out = m;
    return 0;
fail:
    model_free(m);
    return -1;
}

static void synthetic_weight(struct model_weight *w, uint32_t type, int n_in, int n_out)
{
    w->data = NULL;
    w->type = n_out == 1                                   ? GGUF_TENSOR_F32
              : type == GGUF_TENSOR_Q8_0 && n_in % 32 != 0 ? GGUF_TENSOR_F16
                                                           : type;
    w->n_in = n_in;
    w->n_out = n_out;
}

int model_synthetic(struct model **out, const struct model_config *cfg, uint32_t type, char *err,
                    size_t errlen)
{
    *out = NULL;
    if (type != GGUF_TENSOR_F16 && type != GGUF_TENSOR_Q8_0)
        return fail(err, errlen, "synthetic weights are F16 or Q8_0, not %s", gguf_type_name(type));
    if (cfg->dim < 1 || cfg->n_layers < 1 || cfg->n_heads < 1 || cfg->n_kv_heads < 1 ||
        cfg->ffn_dim < 1 || cfg->vocab_size < 3 || cfg->context_len < 1 ||
        cfg->dim % cfg->n_heads != 0 || cfg->n_heads % cfg->n_kv_heads != 0 ||
        (cfg->dim / cfg->n_heads) % 2 != 0)
        return fail(err, errlen, "synthetic model: inconsistent dimensions");
    struct model *m = calloc(1, sizeof(*m));
    if (!m)
        return fail(err, errlen, "out of memory");
    m->cfg = *cfg;
    struct model_config *c = &m->cfg;
    c->head_dim = c->dim / c->n_heads;
    m->synthetic = 1;
    m->layers = calloc((size_t)c->n_layers, sizeof(*m->layers));
    if (!m->layers) {
        free(m);
        return fail(err, errlen, "out of memory");
    }
    int q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    synthetic_weight(&m->tok_embd, GGUF_TENSOR_F16, c->dim, c->vocab_size);
    synthetic_weight(&m->output_norm, type, c->dim, 1);
    synthetic_weight(&m->output, type, c->dim, c->vocab_size);
    for (int l = 0; l < c->n_layers; l++) {
        struct model_layer *L = &m->layers[l];
        synthetic_weight(&L->attn_norm, type, c->dim, 1);
        synthetic_weight(&L->wq, type, c->dim, q_dim);
        synthetic_weight(&L->wk, type, c->dim, kv_dim);
        synthetic_weight(&L->wv, type, c->dim, kv_dim);
        synthetic_weight(&L->wo, type, q_dim, c->dim);
        synthetic_weight(&L->ffn_norm, type, c->dim, 1);
        synthetic_weight(&L->w_gate, type, c->dim, c->ffn_dim);
        synthetic_weight(&L->w_up, type, c->dim, c->ffn_dim);
        synthetic_weight(&L->w_down, type, c->ffn_dim, c->dim);
        const struct model_weight *all[] = {&L->attn_norm, &L->wq,     &L->wk,   &L->wv,    &L->wo,
                                            &L->ffn_norm,  &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
            m->weight_bytes += weight_bytes(all[i]);
    }
    m->weight_bytes += weight_bytes(&m->output) + weight_bytes(&m->output_norm);
    *out = m;
    return 0;
}

void model_free(struct model *m)
{
    if (!m)
        return;
    tok_destroy(m->tok);
    free(m->layers);
    gguf_close(m->file);
    free(m);
}

const char *model_weight_type_name(const struct model *m)
{
    return gguf_type_name(m->layers ? m->layers[0].wq.type : m->tok_embd.type);
}
