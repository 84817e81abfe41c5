/*
 * model: a Mistral-family model as a GGUF file describes it.
 *
 * Reads the hyper-parameters from the file's metadata (general.architecture
 * "llama", which Mistral models carry) and finds every weight tensor, checking
 * each one's shape and type against them, so that the forward pass can trust
 * what it gets. Weights stay in the read-only mapping of the file; nothing is
 * copied. Shapes below are (rows, columns) of the row-major matrix a matmul
 * multiplies by: a weight of n_out rows of n_in values, i.e. GGUF ne = {n_in,
 * n_out}.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct gguf_file;
struct tokenizer;

struct model_config {
    char name[128];     /* general.name, or the file's base name */
    int dim;            /* llama.embedding_length */
    int n_layers;       /* llama.block_count */
    int n_heads;        /* llama.attention.head_count */
    int n_kv_heads;     /* llama.attention.head_count_kv (GQA), = n_heads when absent */
    int head_dim;       /* dim / n_heads (llama.rope.dimension_count must agree) */
    int ffn_dim;        /* llama.feed_forward_length */
    int vocab_size;     /* rows of token_embd.weight */
    int context_len;    /* llama.context_length */
    int sliding_window; /* llama.attention.sliding_window, 0: none (attend to all) */
    float rope_base;    /* llama.rope.freq_base, 10000 when absent */
    float rms_eps;      /* llama.attention.layer_norm_rms_epsilon */
};

/* One weight matrix or vector in the mapping. */
struct model_weight {
    const void *data; /* in the mapped file */
    uint32_t type;    /* ggml type: F32, F16, BF16 or Q8_0 */
    int n_in;         /* values per row */
    int n_out;        /* rows (1 for a vector) */
};

struct model_layer {
    struct model_weight attn_norm; /* (dim) F32 */
    struct model_weight wq;        /* (n_heads*head_dim, dim) */
    struct model_weight wk;        /* (n_kv_heads*head_dim, dim) */
    struct model_weight wv;        /* (n_kv_heads*head_dim, dim) */
    struct model_weight wo;        /* (dim, n_heads*head_dim) */
    struct model_weight ffn_norm;  /* (dim) F32 */
    struct model_weight w_gate;    /* (ffn_dim, dim) */
    struct model_weight w_up;      /* (ffn_dim, dim) */
    struct model_weight w_down;    /* (dim, ffn_dim) */
};

struct model {
    struct model_config cfg;
    struct model_weight tok_embd;    /* (vocab, dim) */
    struct model_weight output_norm; /* (dim) F32 */
    struct model_weight output;      /* (vocab, dim): token_embd when the file ties them */
    struct model_layer *layers;      /* n_layers */
    struct gguf_file *file;          /* owned: the mapping everything points into */
    struct tokenizer *tok;           /* owned */
    uint64_t weight_bytes;           /* bytes of all weights (what a decode step reads) */
    int synthetic;                   /* model_synthetic(): no file, every data NULL */
};

/*
 * Open a GGUF model file and check it fully: metadata, every tensor's
 * presence, shape and type, and the tokenizer. Returns 0 with a new model
 * (model_free), or -1 with a one-line reason in err
 * ("blk.3.attn_q.weight: shape 64x48, expected 64x64").
 */
int model_load(struct model **out, const char *path, char *err, size_t errlen);

/*
 * A model of cfg's shapes with no weights at all (every data NULL, no file,
 * no tokenizer; synthetic set), for benchmarks on a backend that makes random
 * weights of these shapes on its device: only kernels/cuda does (`bench
 * --synthetic`); no other backend may be given one. cfg: borrowed (copied;
 * head_dim is derived). type: the ggml type of the weight matrices, F16 or
 * Q8_0 (a matrix whose rows are not whole Q8_0 blocks is F16); norms are F32.
 * Returns 0 with a new model (model_free), or -1 with err.
 */
int model_synthetic(struct model **out, const struct model_config *cfg, uint32_t type, char *err,
                    size_t errlen);

/* Release the model and its mapping. NULL is a no-op. */
void model_free(struct model *m);

/* "F32", "F16", "BF16", "Q8_0": the type most weight matrices have. */
const char *model_weight_type_name(const struct model *m);
