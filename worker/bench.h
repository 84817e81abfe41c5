/*
 * bench: how fast a backend runs a model of a real shape, without the model
 * file (`millrace-worker bench --synthetic mistral-7b --device cuda`).
 *
 * The model is model_synthetic() of a make-model preset's shape; the
 * backend makes random weights on its device (only kernels/cuda does). It
 * measures, each step ending with the token ids on the host (greedy, chosen
 * on the device where the backend can):
 * - time to first token: one forward over a prompt_tokens prompt plus the
 *   choice of the first token (best and median of 5, after 2 warm-ups);
 * - batch-1 decode: decode_tokens steps of one sequence after that prompt,
 *   in tokens/s and in percent of the memory-bandwidth ceiling (the device's
 *   peak bandwidth over the bytes a step must read: every weight but the
 *   token embedding, and the KV cache up to the position);
 * - aggregate decode: for each batch size B, `steps` steps of B sequences at
 *   positions from prompt_tokens on, in tokens/s (their KV cache holds the
 *   backend's random fill, not a real prefill: what attention reads does not
 *   change how long it takes, and prefilling 256 prompts would take longer
 *   than the measurement).
 * Prints a table, or with json one JSON object (and the table on stderr).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct bench_opts {
    const char *preset; /* make-model preset: the shape ("mistral-7b") */
    const char *device; /* backend ("cuda") */
    uint32_t type;      /* weight matrices: GGUF F16 or Q8_0 */
    int prompt_tokens;  /* the TTFT prompt, and where decoding starts */
    int decode_tokens;  /* batch-1 decode steps timed */
    int steps;          /* decode steps timed per batch size */
    const int *batches; /* batch sizes, n_batches of them */
    int n_batches;
    int json;
};

/* Run the measurements above. Returns 0, or -1 with err. */
int bench_synthetic(const struct bench_opts *o, char *err, size_t errlen);
