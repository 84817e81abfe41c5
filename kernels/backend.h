/*
 * backend: the one interface through which the engine runs a model, whatever
 * computes it (kernels/cpu now; kernels/cuda with issue #6), chosen at run
 * time by name (`--device cpu|cuda`). Headers seen by C code expose no CUDA
 * types.
 *
 * A backend owns the weights' working copy (the CPU one reads the mapped
 * file in place), its scratch buffers, and the KV cache: a pool of fixed-size
 * blocks allocated once at creation. Which blocks belong to which sequence is
 * not its business: each forward call carries, per sequence, the block table
 * that maps positions to blocks (position p lives in block
 * table[p / block_size], row p % block_size). So the scheduler can batch any
 * mix of sequences, and sequences can share prompt blocks.
 *
 * One forward call runs one step over a batch of tokens from any number of
 * sequences: the next token of sequences that are decoding and chunks of the
 * prompts of sequences that are starting. The K and V of every token of the
 * batch are written into the cache before attention, so tokens of one
 * sequence that are in the same batch see each other (causally, by position).
 */
#pragma once

#include <stddef.h>

struct model;

struct backend_opts {
    int n_threads;        /* CPU threads (0: all cores) */
    int kv_blocks;        /* blocks in the KV cache pool */
    int block_size;       /* positions per block */
    int max_batch_tokens; /* most tokens one forward call may carry */
    int max_logits;       /* most logit rows one forward call may ask for */
};

struct backend_batch {
    int n_tokens;
    const int *tokens;              /* (n_tokens) token ids */
    const int *pos;                 /* (n_tokens) position of each token in its sequence */
    const int *seq;                 /* (n_tokens) sequence index: block_tables[seq[i]] */
    const int *const *block_tables; /* per sequence: its blocks, covering every position used */
    int n_logits;
    const int *logit_rows; /* (n_logits) indexes into the batch whose logits are wanted */
};

struct backend;

struct backend_ops {
    const char *name;
    /*
     * Make a backend for model m (borrowed: must outlive the backend). Allocates
     * everything the steps need (KV pool, scratch for max_batch_tokens). Returns
     * 0, or -1 with a message in err.
     */
    int (*create)(struct backend **out, const struct model *m, const struct backend_opts *o,
                  char *err, size_t errlen);
    /*
     * Run one step: logits (n_logits rows of vocab_size floats) of the rows
     * asked for. Returns 0, or -1 with a message in err (then the KV rows this
     * call wrote are garbage; the sequences must be dropped).
     */
    int (*forward)(struct backend *b, const struct backend_batch *batch, float *logits, char *err,
                   size_t errlen);
    /* Copy whole KV blocks src[i] -> dst[i] (copy-on-write of shared prompt
     * blocks). Returns 0 or -1. */
    int (*copy_blocks)(struct backend *b, const int *src, const int *dst, int n, char *err,
                       size_t errlen);
    void (*destroy)(struct backend *b);
};

/* The backend called name ("cpu", "cuda"), or NULL when it is not built in. */
const struct backend_ops *backend_find(const char *name);

/* The CPU backend (kernels/cpu/forward.c). */
extern const struct backend_ops backend_cpu;
