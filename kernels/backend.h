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
 *
 * Two operations are optional (NULL where a backend has none): `sample`,
 * which chooses tokens from the last step's logits where they were computed,
 * so that only token ids cross to the host (the CUDA backend; the CPU one has
 * it too, as worker/sampler.c itself, so the scheduler has one path), and
 * `info`, which describes the device (CUDA only). Callers that use neither
 * never notice.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

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

/*
 * One row to sample (the `sample` operation): worker/sampler.c's semantics
 * and order (penalties, greedy, temperature, top-k, softmax, top-p, draw),
 * with the uniform draw u made by the caller from the sample's own RNG
 * (one 53-bit double per non-greedy draw, as sampler.c draws it), so a
 * seeded sample is reproducible whatever computes it.
 */
struct backend_sample {
    int row;                /* which of the last forward's logit rows (0..n_logits-1) */
    int slot;               /* the sample's token counts for the penalties: 0..max_logits-1,
                             * or -1: no counts (penalties then do nothing) */
    int reset;              /* clear the slot's counts first (a new sample) */
    int top_k;              /* <= 0: off */
    float temperature;      /* 0: greedy (as is top_k 1) */
    float top_p;            /* (0, 1]; 1: off */
    float presence_penalty; /* OpenAI semantics, over the slot's counts */
    float frequency_penalty;
    double u; /* uniform in [0, 1); unused when greedy */
};

/* What a backend runs on (the `info` operation). */
struct backend_info {
    char device[128];      /* "NVIDIA H100 80GB HBM3" */
    int kv_blocks;         /* blocks in the KV pool */
    int sm_count;          /* multiprocessors (0: not a GPU) */
    double mem_bandwidth;  /* peak memory bandwidth, bytes/s (0: unknown) */
    uint64_t memory_bytes; /* device memory in all */
    uint64_t weight_bytes; /* what the weights take there */
    int graphs;            /* decode steps replay CUDA graphs */
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
     * call wrote are garbage; the sequences must be dropped). A backend with
     * `sample` also takes logits NULL: they stay on its device for `sample`.
     */
    int (*forward)(struct backend *b, const struct backend_batch *batch, float *logits, char *err,
                   size_t errlen);
    /* Copy whole KV blocks src[i] -> dst[i] (copy-on-write of shared prompt
     * blocks). Returns 0 or -1. */
    int (*copy_blocks)(struct backend *b, const int *src, const int *dst, int n, char *err,
                       size_t errlen);
    void (*destroy)(struct backend *b);
    /*
     * Optional. Choose one token for each of rows[0..n) from the logits of
     * the last forward call (which may then have passed logits NULL: they
     * stay where they were computed), into ids[0..n), and count each chosen
     * id in its row's slot. rows and ids borrowed. Returns 0, or -1 with err.
     */
    int (*sample)(struct backend *b, const struct backend_sample *rows, int n, int *ids, char *err,
                  size_t errlen);
    /* Optional. Describe the device into *out. Returns 0 or -1. */
    int (*info)(struct backend *b, struct backend_info *out);
};

/*
 * The backend called name ("cpu", "cuda"), or NULL when it is not built in.
 * "auto" is "cuda" when it is built in and a CUDA device is present, else
 * "cpu"; NULL is "cpu".
 */
const struct backend_ops *backend_find(const char *name);

/* The CPU backend (kernels/cpu/forward.c). */
extern const struct backend_ops backend_cpu;

#ifdef MILLRACE_CUDA
/* The CUDA backend (kernels/cuda/backend.cu), in builds with CUDA. */
extern const struct backend_ops backend_cuda;
/* Whether a CUDA device can be used (1) or not (0, with the reason in why). */
int kcu_device_usable(char *why, size_t whylen);
#endif

#ifdef __cplusplus
}
#endif
