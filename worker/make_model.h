/*
 * make_model: deterministic random-weight Mistral-architecture models, so
 * that tests and benchmarks run on a fresh clone without downloading
 * anything (`millrace-worker make-model --preset NAME --type T --out FILE`).
 *
 * Weights are drawn from a normal distribution with standard deviation
 * 1/sqrt(fan-in) (the token embedding: 1.0), so activations keep their scale
 * through the layers and attention, not just the last token, decides the
 * output: a bug anywhere changes the greedy tokens. Every tensor has its own
 * random stream keyed by (seed, tensor name): the same preset, type and seed
 * always give the same bytes. The tokenizer is the project's own generated
 * SentencePiece-style vocabulary (worker/vocab_gen.c), or one copied from
 * another GGUF file (--vocab).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct mkmodel_preset {
    const char *name;
    int dim, n_layers, n_heads, n_kv_heads, ffn_dim, vocab_size, context_len, sliding_window;
    float rope_base, rms_eps;
    const char *about;
};

/* The preset called name, or NULL. */
const struct mkmodel_preset *mkmodel_find_preset(const char *name);

/* All presets, for --help: *n of them. */
const struct mkmodel_preset *mkmodel_presets(size_t *n);

/* Bytes the model's weights take in `type` (F32, F16, BF16, Q8_0 ggml ids). */
uint64_t mkmodel_weight_bytes(const struct mkmodel_preset *p, uint32_t type);

/*
 * Write the model to path (through a temporary file, renamed at the end).
 * type: the ggml type of the weight matrices (norms stay F32; a matrix whose
 * rows cannot be split into Q8_0 blocks of 32 is written F16, as llama.cpp's
 * quantizer does). vocab_path: a GGUF file whose tokenizer.ggml.* keys are
 * copied (its vocabulary size then wins over the preset's), or NULL for the
 * generated vocabulary. Returns 0, or -1 with a message in err.
 */
int mkmodel_write(const char *path, const struct mkmodel_preset *p, uint32_t type, uint64_t seed,
                  const char *vocab_path, char *err, size_t errlen);
