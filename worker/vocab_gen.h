/*
 * vocab_gen: a deterministic SentencePiece-style vocabulary for the test
 * models millrace makes itself, built from nothing but what is embedded here.
 *
 * Layout, the Llama one: <unk> = 0 (UNKNOWN), <s> = 1, </s> = 2 (CONTROL),
 * the 256 byte tokens <0x00>..<0xFF> (BYTE) at 3..258, then NORMAL pieces
 * with scores -1, -2, -3, ... in this order: "▁", the printable ASCII
 * characters, every prefix of "▁word" for an embedded list of common English
 * words (most frequent first), a few word endings ("ing", "tion"), the words
 * again capitalised, runs of 2..16 "▁", then
 * letter n-grams (2, 3, 4 letters, bare and after "▁", ordered by English
 * letter frequency) until n pieces are reached.
 *
 * Key decision: every piece's prefixes come before it, so the merges that
 * form "▁the" exist ("▁t", "▁th") and common words encode as one piece;
 * every byte has a byte token, so any text round-trips.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct gguf_writer;
struct tok_vocab;

#define VOCAB_GEN_MIN 260     /* specials, bytes and "▁" */
#define VOCAB_GEN_MAX 1000000 /* more than the n-grams can fill */

struct vocab_gen {
    size_t n;
    char **pieces;  /* (n) NUL-terminated, owned */
    float *scores;  /* (n) */
    int32_t *types; /* (n) TOK_TYPE_* */
};

/*
 * Generate a vocabulary of n pieces (VOCAB_GEN_MIN..VOCAB_GEN_MAX; 32000 for
 * the Mistral-shape presets). The same n always gives the same vocabulary.
 * *out is new (vocab_gen_destroy). Returns 0, -1 (n out of range, err says)
 * or -2 (out of memory).
 */
int vocab_gen_create(struct vocab_gen **out, size_t n, char *err, size_t errlen);

/* Release g; NULL is a no-op. */
void vocab_gen_destroy(struct vocab_gen *g);

/* Describe g (borrowed by v; g must outlive v's use) for tok_create, with the
 * Llama defaults: BOS 1, EOS 2, UNK 0, add_bos, add_space_prefix. */
void vocab_gen_describe(const struct vocab_gen *g, struct tok_vocab *v);

/*
 * Add the tokenizer.ggml.* keys for g to w: model "llama", tokens, scores,
 * token_type, bos/eos/unknown ids, add_bos_token true, add_eos_token false,
 * add_space_prefix true. Returns 0 or -1 (gguf_writer_error(w) says why).
 */
int vocab_gen_add_to_gguf(const struct vocab_gen *g, struct gguf_writer *w);
