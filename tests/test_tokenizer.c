/*
 * Tests for worker/tokenizer.c: llama.cpp's 46 SPM test vectors and the
 * oracle prompts (../shared, skipped visibly when absent); BOS/EOS; the
 * round trip decode(encode(s)) == s over a UTF-8 corpus (emoji with ZWJ and
 * flags, CJK, combining marks, RTL, control characters, runs of spaces);
 * streaming that never splits a character; U+FFFD for broken sequences; the
 * merge order on hand-made vocabularies; loading errors; and the generated
 * test vocabulary of worker/vocab_gen.c (written to GGUF and read back).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "worker/gguf.h"
#include "worker/gguf_write.h"
#include "worker/tokenizer.h"
#include "worker/vocab_gen.h"

#define VEC_GGUF   "../shared/tokenizer-vectors/ggml-vocab-llama-spm.gguf"
#define VEC_INP    VEC_GGUF ".inp"
#define VEC_OUT    VEC_GGUF ".out"
#define ORACLE_DIR "../shared/oracle/"
#define MODELS_DIR "../shared/models/"
#define VEC_SEP    "\n__ggml_vocab_test__\n"

#define MAX_IDS 4096

/* The Llama vocabulary, loaded once for the group; NULL when ../shared is
 * absent. gen_tok: the generated 32000-piece vocabulary, always there (it has the
 * Llama layout: <unk> <s> </s>, byte tokens at 3 + byte, "▁" at 259). */
static struct tokenizer *llama, *gen_tok;

#define REQUIRE_LLAMA()                                                                            \
    do {                                                                                           \
        if (!llama) {                                                                              \
            print_message("skipped: %s not found (../shared is absent)\n", VEC_GGUF);              \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

/* ---- helpers ---- */

static struct tokenizer *load_path(const char *path)
{
    struct gguf_file *f = NULL;
    struct tokenizer *t = NULL;
    char err[256];

    if (access(path, R_OK) != 0)
        return NULL;
    if (gguf_open(&f, path, err, sizeof err) != 0)
        fail_msg("gguf_open %s: %s", path, err);
    if (tok_load_gguf(&t, f, err, sizeof err) != 0)
        fail_msg("tok_load_gguf %s: %s", path, err);
    gguf_close(f);
    return t;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    char *buf;
    long n;

    if (!fp)
        return NULL;
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    n = ftell(fp);
    assert_true(n >= 0);
    rewind(fp);
    buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
    buf[n] = '\0';
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

static size_t encode(const struct tokenizer *t, const char *s, size_t len, int add_special,
                     int *ids)
{
    size_t n = 0;

    assert_int_equal(tok_encode(t, s, len, add_special, ids, MAX_IDS, &n), 0);
    return n;
}

/* Decode into a new string (free it); *len its length. */
static char *decode(const struct tokenizer *t, const int *ids, size_t n, int skip_space,
                    size_t *len)
{
    size_t need = 0;
    char *out;

    assert_int_equal(tok_decode(t, ids, n, NULL, 0, &need, skip_space), TOK_ERR_SPACE);
    out = malloc(need + 1);
    assert_non_null(out);
    assert_int_equal(tok_decode(t, ids, n, out, need + 1, len, skip_space), 0);
    assert_int_equal(*len, need);
    assert_int_equal(out[need], '\0');
    return out;
}

static void format_ids(char *buf, size_t cap, const int *ids, size_t n)
{
    size_t k = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < n && k + 16 < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, " %d", ids[i]);
}

/* 1 when s[0..len) is valid UTF-8 (no overlongs, surrogates, > U+10FFFF). */
static int utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    while (i < len) {
        unsigned c = p[i], need, lo = 0x80, hi = 0xbf;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            lo = c == 0xe0 ? 0xa0 : 0x80;
            hi = c == 0xed ? 0x9f : 0xbf;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            lo = c == 0xf0 ? 0x90 : 0x80;
            hi = c == 0xf4 ? 0x8f : 0xbf;
        } else {
            return 0;
        }
        if (len - i - 1 < need)
            return 0;
        for (unsigned k = 1; k <= need; k++) {
            if (p[i + k] < lo || p[i + k] > hi)
                return 0;
            lo = 0x80;
            hi = 0xbf;
        }
        i += need + 1;
    }
    return 1;
}

/* The round-trip corpus: valid UTF-8, NULs allowed (lengths are explicit). */
struct sample {
    const char *s;
    size_t len;
};
#define S(lit)                                                                                     \
    {                                                                                              \
        lit, sizeof(lit) - 1                                                                       \
    }

static const struct sample corpus[] = {
    S(""),
    S(" "),
    S("  "),
    S("   "),
    S("Hello world"),
    S(" leading space"),
    S("trailing space "),
    S("  two leading, two trailing  "),
    S("multiple   spaces    inside     words"),
    S("\t tab\n newline\r\n crlf \x01 ctrl \x7f del \x1b[0m"),
    S("\n\n\n"),
    S("a\0b\0"),
    S("\xf0\x9f\x91\x8d thumbs up, \xf0\x9f\xa6\x99 llama"),
    /* family: man ZWJ woman ZWJ girl ZWJ boy */
    S("\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7\xe2\x80\x8d\xf0"
      "\x9f\x91\xa6"),
    /* flags FR JP, waving hand with a skin tone */
    S("\xf0\x9f\x87\xab\xf0\x9f\x87\xb7\xf0\x9f\x87\xaf\xf0\x9f\x87\xb5 "
      "\xf0\x9f\x91\x8b\xf0\x9f\x8f\xbd"),
    S("\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c"), /* 你好，世界 */
    S("\xe3\x81\x93\xe3\x82\x93\xe3\x81\xab\xe3\x81\xa1\xe3\x81\xaf"), /* こんにちは */
    S("\xec\x95\x88\xeb\x85\x95\xed\x95\x98\xec\x84\xb8\xec\x9a\x94"), /* 안녕하세요 */
    S("e\xcc\x81 n\xcc\x83 Z\xcc\xa4\xcd\x94\xcd\xa7\xcc\x91"
      "a\xcc\x88\xcd\x96"),                                                 /* combining */
    S("\xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d \xd7\xa2\xd7\x95\xd7\x9c\xd7\x9d"), /* שלום עולם */
    S("\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7 \xe2\x80\x8f!"),            /* مرحبا, RLM */
    S("F\xc3\xbchrer \xd0\xbd\xd0\xb5\xd1\x89\xd0\xbe"),
    S("\xf0\x9d\x94\x98\xf0\x9d\x94\xab\xf0\x9d\x94\xa6 \xf4\x8f\xbf\xbf"), /* math, U+10FFFF */
    S("<s> </s> <unk> <0x0A> [INST] literal specials"),
    S("3333333333 1,000,000.00 $%^&*()"),
    S("The quick brown fox jumps over the lazy dog. Once upon a time..."),
};
#define N_CORPUS (sizeof corpus / sizeof corpus[0])

/* Every corpus sample round-trips through t, with and without BOS, and
 * streaming one id at a time gives whole characters adding up to the same. */
static void check_round_trips(const struct tokenizer *t)
{
    static int ids[MAX_IDS];
    char chunk[1024];

    assert_true(tok_stream_bound(t) <= sizeof chunk);
    for (size_t c = 0; c < N_CORPUS; c++) {
        for (int bos = 0; bos <= 1; bos++) {
            size_t n = encode(t, corpus[c].s, corpus[c].len, bos, ids), len, got = 0;
            char *text = decode(t, ids, n, 1, &len);
            char *streamed = malloc(len + 1);
            struct tok_stream st;

            if (len != corpus[c].len || memcmp(text, corpus[c].s, len) != 0)
                fail_msg("sample %zu (bos %d) decodes to \"%s\"", c, bos, text);
            for (size_t i = 0; i < n; i++)
                assert_true(bos && i == 0 ? ids[i] == tok_bos_id(t)
                                          : tok_type(t, ids[i]) != TOK_TYPE_CONTROL);
            assert_non_null(streamed);
            tok_stream_init(&st, t, 1);
            for (size_t i = 0; i <= n; i++) {
                size_t k;
                if (i < n)
                    assert_int_equal(tok_stream_push(&st, ids[i], chunk, sizeof chunk, &k), 0);
                else
                    assert_int_equal(tok_stream_flush(&st, chunk, sizeof chunk, &k), 0);
                if (!utf8_valid(chunk, k))
                    fail_msg("sample %zu: the chunk of id %d is not whole UTF-8", c, ids[i]);
                assert_true(got + k <= len);
                memcpy(streamed + got, chunk, k);
                got += k;
            }
            assert_int_equal(got, len);
            assert_memory_equal(streamed, text, len);
            free(streamed);
            free(text);
        }
    }
}

/* A tokenizer from a literal list of pieces; scores and types may be NULL. */
static struct tokenizer *hand_vocab(const char *const *pieces, size_t n, const float *scores,
                                    const int32_t *types, int space_prefix)
{
    struct tok_vocab v;
    struct tokenizer *t = NULL;
    char err[256];

    tok_vocab_defaults(&v);
    v.n = n;
    v.pieces = pieces;
    v.scores = scores;
    v.types = types;
    v.add_space_prefix = space_prefix;
    v.bos_id = 1;
    v.eos_id = 2;
    v.unk_id = 0;
    if (tok_create(&t, &v, err, sizeof err) != 0)
        fail_msg("tok_create: %s", err);
    return t;
}

/* Encode text with t and compare with the expected ids. */
static void expect_ids(const struct tokenizer *t, const char *text, const int *want, size_t n_want)
{
    int ids[64];
    size_t n = 0;
    char a[256], b[256];

    assert_int_equal(tok_encode(t, text, strlen(text), 0, ids, 64, &n), 0);
    if (n != n_want || memcmp(ids, want, n * sizeof *ids) != 0) {
        format_ids(a, sizeof a, ids, n);
        format_ids(b, sizeof b, want, n_want);
        fail_msg("\"%s\": got [%s ], want [%s ]", text, a, b);
    }
}
#define EXPECT_IDS(t, text, ...)                                                                   \
    do {                                                                                           \
        const int want_[] = {__VA_ARGS__};                                                         \
        expect_ids(t, text, want_, sizeof want_ / sizeof want_[0]);                                \
    } while (0)

/* ---- llama.cpp's vectors ---- */

static void test_llama_spm_vectors_match_llama_cpp(void **state)
{
    (void)state;
    static int ids[MAX_IDS], want[MAX_IDS];
    size_t inp_len = 0, out_len = 0, cases = 0, failed = 0;
    char *inp, *out, *p, *line, *save = NULL;

    REQUIRE_LLAMA();
    inp = read_file(VEC_INP, &inp_len);
    out = read_file(VEC_OUT, &out_len);
    assert_non_null(inp);
    assert_non_null(out);
    // As llama.cpp's test-tokenizer-0: the file is split on the marker line,
    // which also ends the last case; the ids file has one line per case.
    p = inp;
    line = strtok_r(out, "\n", &save);
    for (char *end; (end = strstr(p, VEC_SEP)); p = end + strlen(VEC_SEP)) {
        size_t len = (size_t)(end - p), n, n_want = 0;
        char *tok, *save2 = NULL;

        cases++;
        // an empty case has an empty ids line, which strtok_r skips: take it
        // as empty when the text is
        if (len == 0) {
            n = encode(llama, p, len, 0, ids);
            if (n != 0) {
                print_message("case %zu (empty text) gives %zu ids\n", cases, n);
                failed++;
            }
            continue;
        }
        assert_non_null(line);
        for (tok = strtok_r(line, " ", &save2); tok; tok = strtok_r(NULL, " ", &save2))
            want[n_want++] = atoi(tok);
        line = strtok_r(NULL, "\n", &save);
        n = encode(llama, p, len, 0, ids);
        if (n != n_want || memcmp(ids, want, n * sizeof *ids) != 0) {
            static char a[16384], b[16384];
            format_ids(a, sizeof a, ids, n);
            format_ids(b, sizeof b, want, n_want);
            print_message("case %zu \"%.*s\"\n  got [%s ]\n want [%s ]\n", cases, (int)len, p, a,
                          b);
            failed++;
        }
    }
    assert_null(line);
    print_message("llama.cpp SPM vectors: %zu/%zu match\n", cases - failed, cases);
    assert_int_equal(cases, 46);
    assert_int_equal(failed, 0);
    free(inp);
    free(out);
}

static void test_llama_vocab_facts_from_gguf(void **state)
{
    (void)state;
    size_t len;

    REQUIRE_LLAMA();
    assert_int_equal(tok_n_vocab(llama), 32000);
    assert_int_equal(tok_bos_id(llama), 1);
    assert_int_equal(tok_eos_id(llama), 2);
    assert_int_equal(tok_unk_id(llama), 0);
    assert_int_equal(tok_pad_id(llama), -1);
    assert_true(tok_add_bos(llama));
    assert_string_equal(tok_piece(llama, 15043, &len), "\xe2\x96\x81Hello");
    assert_int_equal(len, 8);
    assert_string_equal(tok_piece(llama, 3 + 0x0a, NULL), "<0x0A>");
    assert_int_equal(tok_type(llama, 1), TOK_TYPE_CONTROL);
    assert_int_equal(tok_type(llama, 0), TOK_TYPE_UNKNOWN);
    assert_int_equal(tok_type(llama, 3), TOK_TYPE_BYTE);
    assert_int_equal(tok_type(llama, 15043), TOK_TYPE_NORMAL);
    assert_int_equal(tok_type(llama, 32000), -1);
    assert_null(tok_piece(llama, 32000, NULL));
    assert_null(tok_piece(llama, -1, NULL));
}

static void test_bos_added_when_asked(void **state)
{
    (void)state;
    int ids[8];
    size_t n;

    REQUIRE_LLAMA();
    n = encode(llama, "Hello world", 11, 1, ids);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 15043);
    assert_int_equal(ids[2], 3186);
    n = encode(llama, "Hello world", 11, 0, ids);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 15043);
    n = encode(llama, NULL, 0, 1, ids);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 1);
    assert_int_equal(encode(llama, NULL, 0, 0, ids), 0);
}

static void test_encode_reports_needed_space(void **state)
{
    (void)state;
    int ids[4];
    size_t n = 0;
    const char *text = "Hello, world! How are you?";

    REQUIRE_LLAMA();
    assert_int_equal(tok_encode(llama, text, strlen(text), 1, ids, 4, &n), TOK_ERR_SPACE);
    assert_int_equal(n, 9); // BOS + the 8 ids of " Hello, world! How are you?"
    assert_int_equal(ids[0], 1);
    assert_int_equal(tok_encode(llama, text, strlen(text), 1, NULL, 0, &n), TOK_ERR_SPACE);
    assert_int_equal(n, 9);
    assert_true(n <= TOK_ENCODE_BOUND(strlen(text)));
}

/* The prompts and generations of ../shared/oracle: prompt ids from
 * llama-server's /tokenize, generated text from its /completion. */
static void check_oracle(const char *name, int *checked)
{
    char path[512];
    json_t *root, *cases;
    json_error_t jerr;
    struct tokenizer *t;
    static int ids[MAX_IDS];
    size_t i;

    snprintf(path, sizeof path, ORACLE_DIR "%s.json", name);
    root = json_load_file(path, 0, &jerr);
    if (!root) {
        print_message("skipped: %s not found or unreadable (%s)\n", path, jerr.text);
        return;
    }
    assert_non_null(json_string_value(json_object_get(root, "model")));
    snprintf(path, sizeof path, MODELS_DIR "%s", json_string_value(json_object_get(root, "model")));
    t = load_path(path);
    if (!t) {
        print_message("skipped: %s not found\n", path);
        json_decref(root);
        return;
    }
    cases = json_object_get(root, "cases");
    assert_true(json_array_size(cases) > 0);
    for (i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i), *want = json_object_get(c, "prompt_ids");
        json_t *gen = json_object_get(c, "generated_ids"), *pieces;
        const char *prompt = json_string_value(json_object_get(c, "prompt"));
        const char *gen_text = json_string_value(json_object_get(c, "generated_text"));
        size_t n = encode(t, prompt, strlen(prompt), 1, ids), len;
        char *text;

        if (n != json_array_size(want))
            fail_msg("%s case %zu: %zu prompt ids, the oracle has %zu", name, i, n,
                     json_array_size(want));
        for (size_t k = 0; k < n; k++)
            if (ids[k] != json_integer_value(json_array_get(want, k)))
                fail_msg("%s case %zu: prompt id %zu is %d, the oracle's %d", name, i, k, ids[k],
                         (int)json_integer_value(json_array_get(want, k)));
        pieces = json_object_get(c, "prompt_pieces");
        for (size_t k = 1; k < json_array_size(pieces); k++) { // [0] is <s>, rendered with special
            char *piece = decode(t, &ids[k], 1, 0, &len);
            assert_string_equal(piece, json_string_value(json_array_get(pieces, k)));
            free(piece);
        }
        text = decode(t, ids, n, 1, &len);
        assert_string_equal(text, prompt);
        free(text);

        n = json_array_size(gen);
        for (size_t k = 0; k < n; k++)
            ids[k] = (int)json_integer_value(json_array_get(gen, k));
        text = decode(t, ids, n, 0, &len); // a continuation keeps its first space
        if (strcmp(text, gen_text) != 0)
            fail_msg("%s case %zu: generated ids decode to\n\"%s\"\nthe oracle says\n\"%s\"", name,
                     i, text, gen_text);
        free(text);
        (*checked)++;
    }
    tok_destroy(t);
    json_decref(root);
}

static void test_oracle_prompts_and_generations(void **state)
{
    (void)state;
    static const char *const names[] = {
        "synth-tiny-f32",      "synth-tiny-f16",       "synth-tiny-q8_0", "synth-tiny-f32-long",
        "synth-tiny-f16-long", "synth-tiny-q8_0-long", "stories260K",
    };
    int checked = 0;

    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        check_oracle(names[i], &checked);
    if (checked == 0) {
        print_message("skipped: no oracle in " ORACLE_DIR "\n");
        skip();
    }
    print_message("oracle: %d cases match\n", checked);
}

/* ---- round trips and streaming on the Llama vocabulary ---- */

static void test_round_trip_corpus_llama(void **state)
{
    (void)state;
    REQUIRE_LLAMA();
    check_round_trips(llama);
}

static void test_first_generated_token_keeps_its_space(void **state)
{
    (void)state;
    const int ids[] = {13500, 15086}; // " importance", the oracle's first generated token
    size_t len;
    char *text;

    REQUIRE_LLAMA();
    text = decode(llama, ids, 1, 0, &len);
    assert_string_equal(text, " importance");
    free(text);
    text = decode(llama, ids, 1, 1, &len);
    assert_string_equal(text, "importance");
    free(text);
}

/* The id of the single piece text encodes to (space prefix included). */
static int one_id(const struct tokenizer *t, const char *text)
{
    int ids[8];

    assert_int_equal(encode(t, text, strlen(text), 0, ids), 1);
    return ids[0];
}

static void test_control_and_unknown_decode_to_nothing(void **state)
{
    (void)state;
    const int ids[] = {1, one_id(gen_tok, "Hello"), 0, 2, one_id(gen_tok, "world"), 2};
    size_t len;
    char *text;

    text = decode(gen_tok, ids, 6, 1, &len);
    assert_string_equal(text, "Hello world");
    free(text);
    text = decode(gen_tok, ids, 1, 1, &len);
    assert_string_equal(text, "");
    free(text);
}

/* The llama emoji arrives as four byte tokens: nothing comes out until its
 * last byte does. */
static void test_stream_holds_partial_characters(void **state)
{
    (void)state;
    int ids[16];
    size_t n, k;
    char out[256];
    struct tok_stream st;

    n = encode(gen_tok, "\xf0\x9f\xa6\x99!", 5, 0, ids);
    assert_int_equal(n, 6); // "▁" <0xF0> <0x9F> <0xA6> <0x99> "!"
    assert_int_equal(ids[1], 3 + 0xf0);
    tok_stream_init(&st, gen_tok, 0);
    assert_int_equal(tok_stream_push(&st, ids[0], out, sizeof out, &k), 0);
    assert_int_equal(k, 1);
    assert_int_equal(out[0], ' ');
    for (int i = 1; i <= 3; i++) {
        assert_int_equal(tok_stream_push(&st, ids[i], out, sizeof out, &k), 0);
        assert_int_equal(k, 0);
    }
    assert_int_equal(tok_stream_push(&st, ids[4], out, sizeof out, &k), 0);
    assert_int_equal(k, 4);
    assert_memory_equal(out, "\xf0\x9f\xa6\x99", 4);
    assert_int_equal(tok_stream_push(&st, ids[5], out, sizeof out, &k), 0);
    assert_int_equal(k, 1);
    assert_int_equal(tok_stream_flush(&st, out, sizeof out, &k), 0);
    assert_int_equal(k, 0);
}

/* Feed byte tokens (ids 3 + byte), then flush; the output must be want. */
static void expect_stream(const unsigned char *bytes, size_t n, const char *want)
{
    char out[64], all[256];
    size_t k, got = 0;
    struct tok_stream st;

    tok_stream_init(&st, gen_tok, 0);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(tok_stream_push(&st, 3 + bytes[i], out, sizeof out, &k), 0);
        assert_true(utf8_valid(out, k));
        memcpy(all + got, out, k);
        got += k;
    }
    assert_int_equal(tok_stream_flush(&st, out, sizeof out, &k), 0);
    memcpy(all + got, out, k);
    got += k;
    all[got] = '\0';
    assert_string_equal(all, want);
}
#define FFFD "\xef\xbf\xbd"

static void test_stream_replaces_broken_sequences(void **state)
{
    (void)state;
    expect_stream((const unsigned char *)"\xe2\x41", 2, FFFD "A");
    expect_stream((const unsigned char *)"\xf0\x9f\x98", 3, FFFD); // cut short at the end
    expect_stream((const unsigned char *)"\x80\xbf", 2, FFFD FFFD);
    expect_stream((const unsigned char *)"\xed\xa0\x80", 3, FFFD FFFD FFFD); // a surrogate
    expect_stream((const unsigned char *)"\xe0\x80\xaf", 3, FFFD FFFD FFFD); // overlong
    expect_stream((const unsigned char *)"\xc0\xaf\xff\xf5", 4, FFFD FFFD FFFD FFFD);
    expect_stream((const unsigned char *)"\xf4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD);
    expect_stream((const unsigned char *)"\xc3\xa9\xc3", 3, "\xc3\xa9" FFFD);
    expect_stream((const unsigned char *)"\xf4\x8f\xbf\xbf", 4, "\xf4\x8f\xbf\xbf");
}

static void test_stream_then_normal_token_breaks_sequence(void **state)
{
    (void)state;
    const int ids[] = {3 + 0xc3, one_id(gen_tok, "Hello")}; // <0xC3> "▁Hello"
    size_t len;
    char *text;

    text = decode(gen_tok, ids, 2, 0, &len);
    assert_string_equal(text, FFFD " Hello");
    free(text);
}

static void test_invalid_utf8_encodes_as_bytes(void **state)
{
    (void)state;
    int ids[16];
    size_t n, len;
    char *text;

    n = encode(gen_tok, "a\xff\xe2\x96", 4, 0, ids);
    // "▁a", then 0xFF 0xE2 0x96: 0xFF announces four bytes, so the three are
    // one symbol (as in llama.cpp), no piece, hence three byte tokens
    assert_int_equal(n, 4);
    assert_int_equal(ids[0], one_id(gen_tok, "a"));
    assert_int_equal(ids[1], 3 + 0xff);
    assert_int_equal(ids[2], 3 + 0xe2);
    assert_int_equal(ids[3], 3 + 0x96);
    text = decode(gen_tok, ids, n, 1, &len);
    assert_string_equal(text, "a" FFFD FFFD);
    free(text);
}

static void test_stream_checks_space_and_ids(void **state)
{
    (void)state;
    struct tok_stream st;
    char out[64];
    size_t k = 99;
    const int hello = one_id(gen_tok, "Hello"), ids[] = {hello, 32000};

    tok_stream_init(&st, gen_tok, 1);
    assert_int_equal(tok_stream_push(&st, hello, out, 3, &k), TOK_ERR_SPACE);
    assert_int_equal(k, 0);
    assert_int_equal(tok_stream_push(&st, -1, out, sizeof out, &k), TOK_ERR_INVALID);
    assert_int_equal(tok_stream_push(&st, 32000, out, sizeof out, &k), TOK_ERR_INVALID);
    assert_int_equal(tok_stream_push(&st, hello, out, sizeof out, &k), 0);
    assert_int_equal(k, 5); // the skipped space survived the refusals
    assert_memory_equal(out, "Hello", 5);
    assert_int_equal(tok_decode(gen_tok, ids, 2, out, sizeof out, &k, 0), TOK_ERR_INVALID);
    assert_int_equal(tok_decode(gen_tok, ids, 1, out, 6, &k, 0), TOK_ERR_SPACE);
    assert_int_equal(k, 6);
    assert_int_equal(tok_decode(gen_tok, ids, 1, out, 7, &k, 0), 0);
    assert_string_equal(out, " Hello");
}

/* ---- hand-made vocabularies: the merge order ---- */

static const char *const abc_pieces[] = {"<unk>", "<s>", "</s>", "a", "b", "c", "ab", "bc", "abc"};
static const int32_t abc_types[] = {2, 3, 3, 1, 1, 1, 1, 1, 1};

static void test_merge_highest_score_first(void **state)
{
    (void)state;
    const float ab_wins[] = {0, 0, 0, -1, -1, -1, -2, -3, -9};
    const float bc_wins[] = {0, 0, 0, -1, -1, -1, -3, -2, -9};
    struct tokenizer *t;

    t = hand_vocab(abc_pieces, 9, ab_wins, abc_types, 0);
    EXPECT_IDS(t, "abc", 8); // "ab" then "ab"+"c" = "abc": the new neighbour is queued
    EXPECT_IDS(t, "abcb", 8, 4);
    EXPECT_IDS(t, "cabc", 5, 8);
    tok_destroy(t);

    t = hand_vocab(abc_pieces, 8, bc_wins, abc_types, 0); // without "abc"
    EXPECT_IDS(t, "abc", 3, 7);                           // "bc" first; "a"+"bc" is no piece
    EXPECT_IDS(t, "abab", 6, 6);
    tok_destroy(t);
}

static void test_merge_ties_go_leftmost(void **state)
{
    (void)state;
    const char *const pieces[] = {"<unk>", "<s>", "</s>", "a", "aa", "b", "ab", "ba"};
    const int32_t types[] = {2, 3, 3, 1, 1, 1, 1, 1};
    const float scores[] = {0, 0, 0, -1, -5, -1, -5, -5};
    struct tokenizer *t = hand_vocab(pieces, 8, scores, types, 0);

    EXPECT_IDS(t, "aaa", 4, 3);
    EXPECT_IDS(t, "aaaaa", 4, 4, 3);
    EXPECT_IDS(t, "aba", 6, 3);
    EXPECT_IDS(t, "bab", 7, 5);
    tok_destroy(t);
}

static void test_unknown_characters_fall_back(void **state)
{
    (void)state;
    // <0x41> only: 'A' becomes its byte token, 'Z' (no byte token) the UNK
    const char *const pieces[] = {"<unk>", "<s>",          "</s>",         "<0x41>",
                                  "a",     "\xe2\x96\x81", "\342\226\201a"};
    const int32_t types[] = {2, 3, 3, 6, 1, 1, 1};
    struct tokenizer *t = hand_vocab(pieces, 7, NULL, types, 1);

    EXPECT_IDS(t, "a", 6);
    EXPECT_IDS(t, "AZ a", 5, 3, 0, 6);
    tok_destroy(t);
}

static void test_control_pieces_never_come_from_text(void **state)
{
    (void)state;
    const char *const pieces[] = {"<unk>", "<s>", "</s>", "<", "s", ">", "<s", "/", "</"};
    const int32_t types[] = {2, 3, 3, 1, 1, 1, 1, 1, 1};
    struct tokenizer *t = hand_vocab(pieces, 9, NULL, types, 0);

    EXPECT_IDS(t, "<s>", 6, 5);
    EXPECT_IDS(t, "</s>", 8, 4, 5);
    tok_destroy(t);
}

static void test_user_defined_pieces_split_first(void **state)
{
    (void)state;
    const char *const pieces[] = {
        "<unk>",         "<s>", "</s>", "x", "y", "<|im|>", "<|i", "\xe2\x96\x81",
        "\342\226\201y", "<",   "|",    "i", "m", ">",      "<|im"};
    const int32_t types[] = {2, 3, 3, 1, 1, 4, 1, 1, 1, 1, 1, 1, 1, 1, 4};
    struct tokenizer *t = hand_vocab(pieces, 15, NULL, types, 1);
    int ids[8];
    size_t n, len;
    char *text;

    // the longest user-defined piece wins; the text after it gets the space
    // prefix again, as in llama.cpp
    EXPECT_IDS(t, "x<|im|>y", 7, 3, 5, 8);
    EXPECT_IDS(t, "<|imy", 14, 8);
    n = encode(t, "x<|im|>y", 8, 0, ids);
    text = decode(t, ids, n, 1, &len);
    assert_string_equal(text, "x<|im|> y");
    free(text);
    tok_destroy(t);
}

static void test_unused_pieces_are_resegmented(void **state)
{
    (void)state;
    const char *const pieces[] = {"<unk>", "<s>", "</s>", "a", "b", "c", "ab", "abc"};
    const int32_t types[] = {2, 3, 3, 1, 1, 1, 5, 1};
    const float scores[] = {0, 0, 0, 0, 0, 0, -1, -2};
    struct tokenizer *t = hand_vocab(pieces, 8, scores, types, 0);

    EXPECT_IDS(t, "ab", 3, 4);
    EXPECT_IDS(t, "abc", 7);
    EXPECT_IDS(t, "abab", 3, 4, 3, 4);
    tok_destroy(t);
}

static void test_duplicate_pieces_last_wins(void **state)
{
    (void)state;
    const char *const pieces[] = {"<unk>", "<s>", "</s>", "a", "b", "ab", "ab"};
    struct tokenizer *t = hand_vocab(pieces, 7, NULL, NULL, 0);

    EXPECT_IDS(t, "ab", 6);
    tok_destroy(t);
}

/* ---- creation and loading errors ---- */

static void expect_create_error(struct tok_vocab *v, const char *needle)
{
    struct tokenizer *t = (struct tokenizer *)1;
    char err[256] = "";

    assert_int_equal(tok_create(&t, v, err, sizeof err), TOK_ERR_INVALID);
    assert_null(t);
    if (!strstr(err, needle))
        fail_msg("error \"%s\" does not contain \"%s\"", err, needle);
}

static void test_create_rejects_bad_vocabularies(void **state)
{
    (void)state;
    const char *const pieces[] = {"<unk>", "<s>", "</s>", "<0x4G>", "a"};
    int32_t types[] = {2, 3, 3, 1, 1};
    struct tok_vocab v;

    tok_vocab_defaults(&v);
    expect_create_error(&v, "empty");
    v.n = 5;
    v.pieces = pieces;
    v.types = types;
    v.bos_id = 5;
    expect_create_error(&v, "BOS id 5");
    v.bos_id = 1;
    v.unk_id = -1;
    expect_create_error(&v, "cannot encode byte 0x00");
    v.unk_id = 0;
    types[4] = 9;
    expect_create_error(&v, "token 4 has type 9");
    types[4] = 1;
    types[3] = TOK_TYPE_BYTE;
    expect_create_error(&v, "token 3 is a byte token");
    types[3] = 1;
    v.add_bos = 1;
    v.bos_id = -1;
    expect_create_error(&v, "no BOS");
}

/* Parse a GGUF image built in memory by w; the image is returned for freeing. */
static struct gguf_file *gguf_from_writer(struct gguf_writer *w, char **image)
{
    size_t size = 0;
    FILE *fp = open_memstream(image, &size);
    struct gguf_file *f = NULL;
    char err[256];

    assert_non_null(fp);
    if (gguf_writer_write_stream(w, fp) != 0)
        fail_msg("gguf_writer: %s", gguf_writer_error(w));
    fclose(fp);
    if (gguf_open_mem(&f, *image, size, err, sizeof err) != 0)
        fail_msg("gguf_open_mem: %s", err);
    return f;
}

static void expect_load_error(struct gguf_writer *w, int rc_want, const char *needle)
{
    char *image = NULL, err[256] = "";
    struct gguf_file *f = gguf_from_writer(w, &image);
    struct tokenizer *t = (struct tokenizer *)1;

    assert_int_equal(tok_load_gguf(&t, f, err, sizeof err), rc_want);
    assert_null(t);
    if (!strstr(err, needle))
        fail_msg("error \"%s\" does not contain \"%s\"", err, needle);
    gguf_close(f);
    free(image);
    gguf_writer_destroy(w);
}

static struct gguf_writer *new_writer(const char *model)
{
    struct gguf_writer *w = NULL;

    assert_int_equal(gguf_writer_create(&w, 0), 0);
    if (model)
        gguf_writer_add_str(w, "tokenizer.ggml.model", model);
    return w;
}

static void test_load_refuses_other_tokenizers_and_bad_keys(void **state)
{
    (void)state;
    const char *const tokens[] = {"<unk>", "<s>", "</s>", "a"};
    const float scores[] = {0, 0, 0};
    const int32_t types[] = {2, 3, 3, 1};
    struct gguf_writer *w;

    expect_load_error(new_writer("gpt2"), TOK_ERR_UNSUPPORTED, "unsupported tokenizer \"gpt2\"");
    expect_load_error(new_writer(NULL), TOK_ERR_INVALID, "tokenizer.ggml.model");
    expect_load_error(new_writer("llama"), TOK_ERR_INVALID, "tokenizer.ggml.tokens");

    w = new_writer("llama");
    gguf_writer_add_str_arr(w, "tokenizer.ggml.tokens", tokens, 4);
    gguf_writer_add_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, 3);
    expect_load_error(w, TOK_ERR_INVALID, "tokenizer.ggml.scores must be 4 FLOAT32");

    w = new_writer("llama");
    gguf_writer_add_str_arr(w, "tokenizer.ggml.tokens", tokens, 4);
    gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_FLOAT32, scores, 3);
    expect_load_error(w, TOK_ERR_INVALID, "tokenizer.ggml.token_type");

    w = new_writer("llama");
    gguf_writer_add_str_arr(w, "tokenizer.ggml.tokens", tokens, 4);
    gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, 4);
    gguf_writer_add_str(w, "tokenizer.ggml.bos_token_id", "1");
    expect_load_error(w, TOK_ERR_INVALID, "tokenizer.ggml.bos_token_id");

    w = new_writer("llama");
    gguf_writer_add_str_arr(w, "tokenizer.ggml.tokens", tokens, 4);
    gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, 4);
    gguf_writer_add_u32(w, "tokenizer.ggml.add_bos_token", 1);
    expect_load_error(w, TOK_ERR_INVALID, "tokenizer.ggml.add_bos_token is not a bool");
}

static void test_load_reads_flags_and_ids(void **state)
{
    (void)state;
    const char *const tokens[] = {"<unk>", "<pad>", "<s>", "</s>", "a", "\342\226\201a"};
    const int32_t types[] = {2, 3, 3, 3, 1, 1};
    struct gguf_writer *w = new_writer("llama");
    struct tokenizer *t = NULL;
    struct gguf_file *f;
    char *image = NULL, err[256];
    int ids[8];
    size_t n;

    gguf_writer_add_str_arr(w, "tokenizer.ggml.tokens", tokens, 6);
    gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, 6);
    gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 2);
    gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 3);
    gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id", 1);
    gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 0xffffffffu); // keeps 0
    gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", 1);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", 0);
    f = gguf_from_writer(w, &image);
    if (tok_load_gguf(&t, f, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(tok_bos_id(t), 2);
    assert_int_equal(tok_eos_id(t), 3);
    assert_int_equal(tok_pad_id(t), 1);
    assert_int_equal(tok_unk_id(t), 0);
    n = encode(t, "a", 1, 1, ids); // BOS "a" EOS, no space prefix
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 4);
    assert_int_equal(ids[2], 3);
    tok_destroy(t);
    gguf_close(f);
    free(image);
    gguf_writer_destroy(w);
}

/* ---- the generated vocabulary ---- */

static void test_vocab_gen_layout_and_determinism(void **state)
{
    (void)state;
    struct vocab_gen *a = NULL, *b = NULL;
    char err[128];

    assert_int_equal(vocab_gen_create(&a, 32000, err, sizeof err), 0);
    assert_int_equal(vocab_gen_create(&b, 32000, err, sizeof err), 0);
    assert_int_equal(a->n, 32000);
    for (size_t i = 0; i < a->n; i++) {
        assert_string_equal(a->pieces[i], b->pieces[i]);
        assert_true(a->scores[i] == b->scores[i]);
        assert_int_equal(a->types[i], b->types[i]);
    }
    assert_string_equal(a->pieces[0], "<unk>");
    assert_int_equal(a->types[0], TOK_TYPE_UNKNOWN);
    assert_string_equal(a->pieces[1], "<s>");
    assert_int_equal(a->types[1], TOK_TYPE_CONTROL);
    assert_string_equal(a->pieces[2], "</s>");
    assert_string_equal(a->pieces[3], "<0x00>");
    assert_string_equal(a->pieces[3 + 0x0a], "<0x0A>");
    assert_string_equal(a->pieces[258], "<0xFF>");
    assert_int_equal(a->types[258], TOK_TYPE_BYTE);
    assert_string_equal(a->pieces[259], "\xe2\x96\x81");
    for (size_t i = 260; i < a->n; i++) {
        assert_int_equal(a->types[i], TOK_TYPE_NORMAL);
        assert_true(a->scores[i] < a->scores[i - 1]);
    }
    vocab_gen_destroy(a);
    vocab_gen_destroy(b);
    assert_int_equal(vocab_gen_create(&a, VOCAB_GEN_MIN - 1, err, sizeof err), -1);
    assert_null(a);
    assert_non_null(strstr(err, "259"));
}

static void test_vocab_gen_common_words_are_one_piece(void **state)
{
    (void)state;
    struct vocab_gen *g = NULL;
    struct tokenizer *t = NULL;
    struct tok_vocab v;
    char err[128];
    int ids[64];
    const char *text = "Once upon a time there was a little girl who lived in the water";

    assert_int_equal(vocab_gen_create(&g, 32000, err, sizeof err), 0);
    vocab_gen_describe(g, &v);
    assert_int_equal(tok_create(&t, &v, err, sizeof err), 0);
    assert_int_equal(encode(t, text, strlen(text), 0, ids), 14); // one per word
    assert_string_equal(tok_piece(t, ids[0], NULL), "\xe2\x96\x81Once");
    assert_string_equal(tok_piece(t, ids[13], NULL), "\xe2\x96\x81water");
    tok_destroy(t);
    vocab_gen_destroy(g);
}

/* Generated vocabularies of several sizes round-trip the corpus, both built
 * directly and written to GGUF and read back (which must encode alike). */
static void test_vocab_gen_round_trips(void **state)
{
    (void)state;
    const size_t sizes[] = {VOCAB_GEN_MIN, 512, 4096, 32000, 32768};
    static int ids[MAX_IDS], ids2[MAX_IDS];

    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        struct vocab_gen *g = NULL;
        struct tokenizer *t = NULL, *t2 = NULL;
        struct gguf_writer *w = new_writer(NULL);
        struct gguf_file *f;
        struct tok_vocab v;
        char err[256], *image = NULL;

        assert_int_equal(vocab_gen_create(&g, sizes[s], err, sizeof err), 0);
        vocab_gen_describe(g, &v);
        assert_int_equal(tok_create(&t, &v, err, sizeof err), 0);
        check_round_trips(t);

        assert_int_equal(vocab_gen_add_to_gguf(g, w), 0);
        f = gguf_from_writer(w, &image);
        if (tok_load_gguf(&t2, f, err, sizeof err) != 0)
            fail_msg("%s", err);
        assert_int_equal(tok_n_vocab(t2), sizes[s]);
        for (size_t c = 0; c < N_CORPUS; c++) {
            size_t n = encode(t, corpus[c].s, corpus[c].len, 1, ids);
            assert_int_equal(encode(t2, corpus[c].s, corpus[c].len, 1, ids2), n);
            assert_memory_equal(ids, ids2, n * sizeof *ids);
        }
        tok_destroy(t2);
        gguf_close(f);
        free(image);
        gguf_writer_destroy(w);
        tok_destroy(t);
        vocab_gen_destroy(g);
    }
}

static int group_setup(void **state)
{
    struct vocab_gen *g = NULL;
    struct tok_vocab v;
    char err[256];

    (void)state;
    if (vocab_gen_create(&g, 32000, err, sizeof err) != 0)
        return -1;
    vocab_gen_describe(g, &v);
    if (tok_create(&gen_tok, &v, err, sizeof err) != 0) {
        vocab_gen_destroy(g);
        return -1;
    }
    vocab_gen_destroy(g);
    llama = load_path(VEC_GGUF);
    if (!llama)
        print_message("note: %s not found: the tests that need it will skip\n", VEC_GGUF);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    tok_destroy(llama);
    tok_destroy(gen_tok);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_spm_vectors_match_llama_cpp),
        cmocka_unit_test(test_llama_vocab_facts_from_gguf),
        cmocka_unit_test(test_bos_added_when_asked),
        cmocka_unit_test(test_encode_reports_needed_space),
        cmocka_unit_test(test_oracle_prompts_and_generations),
        cmocka_unit_test(test_round_trip_corpus_llama),
        cmocka_unit_test(test_first_generated_token_keeps_its_space),
        cmocka_unit_test(test_control_and_unknown_decode_to_nothing),
        cmocka_unit_test(test_stream_holds_partial_characters),
        cmocka_unit_test(test_stream_replaces_broken_sequences),
        cmocka_unit_test(test_stream_then_normal_token_breaks_sequence),
        cmocka_unit_test(test_invalid_utf8_encodes_as_bytes),
        cmocka_unit_test(test_stream_checks_space_and_ids),
        cmocka_unit_test(test_merge_highest_score_first),
        cmocka_unit_test(test_merge_ties_go_leftmost),
        cmocka_unit_test(test_unknown_characters_fall_back),
        cmocka_unit_test(test_control_pieces_never_come_from_text),
        cmocka_unit_test(test_user_defined_pieces_split_first),
        cmocka_unit_test(test_unused_pieces_are_resegmented),
        cmocka_unit_test(test_duplicate_pieces_last_wins),
        cmocka_unit_test(test_create_rejects_bad_vocabularies),
        cmocka_unit_test(test_load_refuses_other_tokenizers_and_bad_keys),
        cmocka_unit_test(test_load_reads_flags_and_ids),
        cmocka_unit_test(test_vocab_gen_layout_and_determinism),
        cmocka_unit_test(test_vocab_gen_common_words_are_one_piece),
        cmocka_unit_test(test_vocab_gen_round_trips),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
