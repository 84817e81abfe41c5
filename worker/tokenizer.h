/*
 * tokenizer: the SentencePiece BPE tokenizer of Llama and Mistral models
 * ("tokenizer.ggml.model" = "llama" in GGUF), encoding as llama.cpp's
 * llm_tokenizer_spm does and decoding as its token_to_piece / detokenize do.
 *
 * Encoding a user text (special tokens written in the text are never turned
 * into control tokens):
 *   1. pieces of type USER_DEFINED found in the text are split out first
 *      (longest match at the leftmost position) and become their ids;
 *   2. each remaining fragment gets a leading space when add_space_prefix
 *      (and it is the first fragment or follows a user-defined piece), and
 *      every ' ' becomes U+2581 "▁";
 *   3. the fragment is split into UTF-8 characters by the lead byte (as
 *      llama.cpp does: a stray continuation byte is one symbol, a truncated
 *      sequence at the end is one symbol);
 *   4. adjacent symbols whose concatenation is a vocabulary piece are merged,
 *      the highest score first, ties to the leftmost pair (a priority queue
 *      and a doubly linked list of symbols; after each merge the pairs with
 *      the new neighbours are queued);
 *   5. each final symbol becomes its piece's id; a symbol that is no piece
 *      (a single character outside the vocabulary) becomes one byte token
 *      "<0xXX>" per byte.
 *
 * Key decision: the merge lookup holds only NORMAL, USER_DEFINED and UNUSED
 * pieces, as in SentencePiece; llama.cpp looks up every piece, so a text
 * that spells a control or byte piece out ("</s>", "<0x0A>") could become that
 * token there if the vocabulary held all the intermediate pieces (the Llama
 * vocabulary does not: "<s" and "<0" are no pieces, so both agree on it). An
 * UNUSED piece formed by a merge is re-segmented along the merge that made it
 * (SentencePiece's resegment). Encoding allocates its scratch per call
 * (about 70 bytes per input byte, freed before it returns); a tokenizer is
 * immutable after creation and shared read-only between threads.
 *
 * Decoding: NORMAL pieces with "▁" turned back into ' ', byte tokens as their
 * byte, USER_DEFINED pieces verbatim, CONTROL, UNKNOWN and UNUSED tokens as
 * nothing (llama.cpp's token_to_piece with special = false; older llama.cpp
 * wrote U+2585 for <unk>, SentencePiece " ⁇ "). The output is always valid
 * UTF-8: a byte sequence that cannot complete a character becomes U+FFFD.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct gguf_file;
struct tokenizer;

#define TOK_ERR_INVALID     (-1) /* bad argument, vocabulary or model file; err says why */
#define TOK_ERR_NOMEM       (-2) /* out of memory */
#define TOK_ERR_SPACE       (-3) /* the output buffer is too small; *n_out says what is needed */
#define TOK_ERR_UNSUPPORTED (-4) /* a tokenizer other than SentencePiece BPE ("llama") */

/* tokenizer.ggml.token_type values. */
#define TOK_TYPE_UNDEFINED    0 /* treated as NORMAL */
#define TOK_TYPE_NORMAL       1
#define TOK_TYPE_UNKNOWN      2
#define TOK_TYPE_CONTROL      3
#define TOK_TYPE_USER_DEFINED 4
#define TOK_TYPE_UNUSED       5
#define TOK_TYPE_BYTE         6 /* the piece is "<0xXX>" */

/*
 * A vocabulary as plain arrays, every pointer borrowed for the duration of
 * tok_create only. Ids are indices; -1 means "none".
 */
struct tok_vocab {
    size_t n;                  /* number of pieces, 1..INT32_MAX */
    const char *const *pieces; /* (n) piece bytes */
    const size_t *lens;        /* (n) piece lengths; NULL: the pieces are NUL-terminated */
    const float *scores;       /* (n) merge priority, higher first; NULL: all 0 */
    const int32_t *types;      /* (n) TOK_TYPE_*; NULL: all NORMAL */
    int32_t bos_id, eos_id, unk_id, pad_id;
    int add_space_prefix; /* prefix a text with ' ' before encoding */
    int add_bos, add_eos; /* what tok_encode's add_special adds */
};

/* llama.cpp's defaults for a "llama" vocabulary: BOS 1, EOS 2, UNK 0, no PAD,
 * add_space_prefix, add_bos, no add_eos; pieces, lens, scores, types NULL, n 0. */
void tok_vocab_defaults(struct tok_vocab *v);

/*
 * Build a tokenizer from v (borrowed; everything is copied). *out is new
 * (tok_destroy). Returns 0, TOK_ERR_INVALID (an id out of range, a type
 * outside 0..6, a BYTE piece not spelled "<0xXX>", a byte with neither a byte
 * token, a one-byte piece nor an UNK to fall back on; err says which) or
 * TOK_ERR_NOMEM. *out is NULL on failure.
 */
int tok_create(struct tokenizer **out, const struct tok_vocab *v, char *err, size_t errlen);

/*
 * Build the tokenizer of a GGUF file (borrowed; nothing of it is kept). Reads
 * tokenizer.ggml.model (must be "llama", else TOK_ERR_UNSUPPORTED), .tokens,
 * .scores (f32, optional), .token_type (i32, optional), .bos_token_id,
 * .eos_token_id, .unknown_token_id, .padding_token_id (optional, the llama
 * defaults above; an id past the vocabulary, such as the 0xFFFFFFFF
 * converters write for "none", keeps the default, as in llama.cpp),
 * .add_bos_token, .add_eos_token, .add_space_prefix (optional bools).
 * Returns as tok_create, with a one-line err naming the key.
 */
int tok_load_gguf(struct tokenizer **out, const struct gguf_file *f, char *err, size_t errlen);

/* Release t; NULL is a no-op. */
void tok_destroy(struct tokenizer *t);

/* Vocabulary facts; ids are -1 when absent. */
size_t tok_n_vocab(const struct tokenizer *t);
int tok_bos_id(const struct tokenizer *t);
int tok_eos_id(const struct tokenizer *t);
int tok_unk_id(const struct tokenizer *t);
int tok_pad_id(const struct tokenizer *t);
int tok_add_bos(const struct tokenizer *t);

/* The TOK_TYPE_* of id, or -1 when id is out of range. */
int tok_type(const struct tokenizer *t, int id);

/* The raw piece of id ("▁Hello", "<0x0A>", "<s>"): NUL-terminated, borrowed
 * from t, *len bytes (len may be NULL). NULL when id is out of range. */
const char *tok_piece(const struct tokenizer *t, int id, size_t *len);

/* The most ids tok_encode can produce for a text of len bytes: one per byte,
 * one for the space prefix, BOS and EOS. */
#define TOK_ENCODE_BOUND(len) ((len) + 3)

/*
 * Encode text[0..len) (borrowed; any bytes, NULs included; NULL allowed when
 * len is 0) into out[0..cap). When add_special, BOS goes first if the vocab
 * says add_bos and EOS last if it says add_eos. An empty text gives no ids
 * (BOS alone with add_special). Text that is not valid UTF-8 still encodes:
 * the bytes of a broken sequence become byte tokens (decoding turns them into
 * U+FFFD); the API refuses such text before it gets here.
 *
 * *n_out is the number of ids. Returns 0, TOK_ERR_SPACE (cap is too small;
 * *n_out says how many ids there are; cap >= TOK_ENCODE_BOUND(len) always
 * suffices), TOK_ERR_INVALID (len over INT32_MAX / 4) or TOK_ERR_NOMEM.
 * Allocates its scratch per call; thread-safe.
 */
int tok_encode(const struct tokenizer *t, const char *text, size_t len, int add_special, int *out,
               size_t cap, size_t *n_out);

/*
 * Decode ids[0..n) into out[0..cap) as described at the top, NUL-terminated;
 * *n_out is the length without the NUL. With skip_leading_space one ' ' at
 * the start of the text is dropped: the one add_space_prefix added, so that
 * decoding an encoded text (BOS or not) gives the text back; a generated
 * continuation is decoded without it (its first token keeps its space, as
 * llama.cpp's server returns " importance"). Equal to feeding the ids to a
 * tok_stream and flushing it.
 *
 * Returns 0, TOK_ERR_SPACE (*n_out + 1 bytes are needed), TOK_ERR_INVALID (an
 * id out of range). Allocates nothing; thread-safe.
 */
int tok_decode(const struct tokenizer *t, const int *ids, size_t n, char *out, size_t cap,
               size_t *n_out, int skip_leading_space);

/*
 * Incremental decoding for streaming: feed ids one at a time; each push
 * returns only complete UTF-8 characters. The bytes of a character split
 * over several tokens (byte-fallback tokens carry one byte each) are held
 * until it is complete; a sequence that can no longer complete becomes one
 * U+FFFD (per maximal invalid subpart, as Unicode recommends), as does one
 * left incomplete at tok_stream_flush. A plain struct: the caller owns it,
 * one per sequence; it borrows t.
 */
struct tok_stream {
    const struct tokenizer *t;
    unsigned char pend[4]; /* the bytes of an incomplete character */
    unsigned n_pend;       /* how many */
    unsigned need;         /* continuation bytes still expected */
    unsigned char lo, hi;  /* the range the next continuation byte must lie in */
    int skip_space;        /* drop a ' ' if it is the next byte */
};

/* Start a stream over t (borrowed, must outlive s). skip_leading_space as for
 * tok_decode. */
void tok_stream_init(struct tok_stream *s, const struct tokenizer *t, int skip_leading_space);

/* A cap that always suffices for one tok_stream_push or tok_stream_flush. */
size_t tok_stream_bound(const struct tokenizer *t);

/*
 * Decode one more id into out[0..cap) (not NUL-terminated); *n_out bytes were
 * written (0 while a character is incomplete or for a control token).
 * Returns 0, TOK_ERR_INVALID (id out of range; s is unchanged) or
 * TOK_ERR_SPACE (cap is below what this id may need, at most
 * tok_stream_bound(); s is unchanged, nothing is written).
 */
int tok_stream_push(struct tok_stream *s, int id, char *out, size_t cap, size_t *n_out);

/* End the stream: an incomplete character left becomes U+FFFD (3 bytes
 * written, cap >= 3), else nothing. Returns 0 or TOK_ERR_SPACE. s may be
 * pushed to again afterwards. */
int tok_stream_flush(struct tok_stream *s, char *out, size_t cap, size_t *n_out);
