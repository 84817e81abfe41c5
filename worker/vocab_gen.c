/*
 * vocab_gen: the deterministic test vocabulary (see vocab_gen.h).
 *
 * Pieces are appended in priority order, each once (a hash set of the texts
 * so far drops repeats), until n are there; a NORMAL piece's score is minus
 * its rank, so earlier pieces merge first.
 */
#include "worker/vocab_gen.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/gguf.h"
#include "worker/gguf_write.h"
#include "worker/tokenizer.h"

#define SPACE "\xe2\x96\x81" /* U+2581 */

/* Common English words, most frequent first. */
static const char *const vocab_gen_words[] = {
    "the",      "of",       "and",      "to",       "a",       "in",         "is",       "it",
    "you",      "that",     "he",       "was",      "for",     "on",         "are",      "with",
    "as",       "I",        "his",      "they",     "be",      "at",         "one",      "have",
    "this",     "from",     "or",       "had",      "by",      "not",        "word",     "but",
    "what",     "some",     "we",       "can",      "out",     "other",      "were",     "all",
    "there",    "when",     "up",       "use",      "your",    "how",        "said",     "an",
    "each",     "she",      "which",    "do",       "their",   "time",       "if",       "will",
    "way",      "about",    "many",     "then",     "them",    "write",      "would",    "like",
    "so",       "these",    "her",      "long",     "make",    "thing",      "see",      "him",
    "two",      "has",      "look",     "more",     "day",     "could",      "go",       "come",
    "did",      "number",   "sound",    "no",       "most",    "people",     "my",       "over",
    "know",     "water",    "than",     "call",     "first",   "who",        "may",      "down",
    "side",     "been",     "now",      "find",     "any",     "new",        "work",     "part",
    "take",     "get",      "place",    "made",     "live",    "where",      "after",    "back",
    "little",   "only",     "round",    "man",      "year",    "came",       "show",     "every",
    "good",     "me",       "give",     "our",      "under",   "name",       "very",     "through",
    "just",     "form",     "sentence", "great",    "think",   "say",        "help",     "low",
    "line",     "differ",   "turn",     "cause",    "much",    "mean",       "before",   "move",
    "right",    "boy",      "old",      "too",      "same",    "tell",       "does",     "set",
    "three",    "want",     "air",      "well",     "also",    "play",       "small",    "end",
    "put",      "home",     "read",     "hand",     "port",    "large",      "spell",    "add",
    "even",     "land",     "here",     "must",     "big",     "high",       "such",     "follow",
    "act",      "why",      "ask",      "men",      "change",  "went",       "light",    "kind",
    "off",      "need",     "house",    "picture",  "try",     "us",         "again",    "animal",
    "point",    "mother",   "world",    "near",     "build",   "self",       "earth",    "father",
    "head",     "stand",    "own",      "page",     "should",  "country",    "found",    "answer",
    "school",   "grow",     "study",    "still",    "learn",   "plant",      "cover",    "food",
    "sun",      "four",     "between",  "state",    "keep",    "eye",        "never",    "last",
    "let",      "thought",  "city",     "tree",     "cross",   "farm",       "hard",     "start",
    "might",    "story",    "saw",      "far",      "sea",     "draw",       "left",     "late",
    "run",      "while",    "press",    "close",    "night",   "real",       "life",     "few",
    "north",    "open",     "seem",     "together", "next",    "white",      "children", "begin",
    "got",      "walk",     "example",  "ease",     "paper",   "group",      "always",   "music",
    "those",    "both",     "mark",     "often",    "letter",  "until",      "mile",     "river",
    "car",      "feet",     "care",     "second",   "book",    "carry",      "took",     "science",
    "eat",      "room",     "friend",   "began",    "idea",    "fish",       "mountain", "stop",
    "once",     "base",     "hear",     "horse",    "cut",     "sure",       "watch",    "color",
    "face",     "wood",     "main",     "enough",   "plain",   "girl",       "usual",    "young",
    "ready",    "above",    "ever",     "red",      "list",    "though",     "feel",     "talk",
    "bird",     "soon",     "body",     "dog",      "family",  "direct",     "pose",     "leave",
    "song",     "measure",  "door",     "product",  "black",   "short",      "numeral",  "class",
    "wind",     "question", "happen",   "complete", "ship",    "area",       "half",     "rock",
    "order",    "fire",     "south",    "problem",  "piece",   "told",       "knew",     "pass",
    "since",    "top",      "whole",    "king",     "space",   "heard",      "best",     "hour",
    "better",   "true",     "during",   "hundred",  "five",    "remember",   "step",     "early",
    "hold",     "west",     "ground",   "interest", "reach",   "fast",       "verb",     "sing",
    "listen",   "six",      "table",    "travel",   "less",    "morning",    "ten",      "simple",
    "several",  "vowel",    "toward",   "war",      "lay",     "against",    "pattern",  "slow",
    "center",   "love",     "person",   "money",    "serve",   "appear",     "road",     "map",
    "rain",     "rule",     "govern",   "pull",     "cold",    "notice",     "voice",    "unit",
    "power",    "town",     "fine",     "certain",  "fly",     "fall",       "lead",     "cry",
    "dark",     "machine",  "note",     "wait",     "plan",    "figure",     "star",     "box",
    "noun",     "field",    "rest",     "correct",  "able",    "pound",      "done",     "beauty",
    "drive",    "stood",    "contain",  "front",    "teach",   "week",       "final",    "gave",
    "green",    "oh",       "quick",    "develop",  "ocean",   "warm",       "free",     "minute",
    "strong",   "special",  "mind",     "behind",   "clear",   "tail",       "produce",  "fact",
    "street",   "inch",     "multiply", "nothing",  "course",  "stay",       "wheel",    "full",
    "force",    "blue",     "object",   "decide",   "surface", "deep",       "moon",     "island",
    "foot",     "system",   "busy",     "test",     "record",  "boat",       "common",   "gold",
    "possible", "plane",    "stead",    "dry",      "wonder",  "laugh",      "thousand", "ago",
    "ran",      "check",    "game",     "shape",    "equate",  "hot",        "miss",     "brought",
    "heat",     "snow",     "tire",     "bring",    "yes",     "distant",    "fill",     "east",
    "paint",    "language", "among",    "upon",     "lived",   "named",      "model",    "token",
    "hello",    "capital",  "France",   "Paris",    "keeper",  "lighthouse", "Lily",     "park",
    "ball",     "happy",
};

/* Word endings, pieces without the "▁". */
static const char *const vocab_gen_suffixes[] = {
    "ing", "ed", "er", "es", "ly", "tion", "ers", "est", "ment", "ness", "able", "ful", "less",
};

/* Letters by their frequency in English. */
static const char vocab_gen_letters[] = "etaoinshrdlcumwfgypbvkjxqz";

struct gen {
    struct vocab_gen *g;
    size_t cap;  /* the n asked for */
    size_t *set; /* (mask + 1) indices + 1 into g->pieces; 0 empty */
    size_t mask;
    size_t normals; /* NORMAL pieces so far, for the scores */
};

static uint32_t gen_hash(const char *s)
{
    uint32_t h = 2166136261u; // FNV-1a

    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

/* Append piece unless it is there already. Returns 1 when the vocabulary is
 * full, 0 to go on, -2 out of memory. */
static int gen_add(struct gen *s, const char *piece, int32_t type)
{
    struct vocab_gen *g = s->g;
    size_t i = gen_hash(piece) & s->mask;

    if (g->n >= s->cap)
        return 1;
    for (; s->set[i]; i = (i + 1) & s->mask)
        if (strcmp(g->pieces[s->set[i] - 1], piece) == 0)
            return 0;
    g->pieces[g->n] = strdup(piece);
    if (!g->pieces[g->n])
        return -2;
    g->types[g->n] = type;
    g->scores[g->n] = 0.0f;
    if (type == TOK_TYPE_NORMAL)
        g->scores[g->n] = -(float)++s->normals;
    s->set[i] = ++g->n;
    return g->n >= s->cap;
}

/* Every prefix of "▁word" (of "word" without space) of two characters or
 * more, shortest first. */
static int gen_word(struct gen *s, const char *word, int space)
{
    char buf[64];
    size_t len = strlen(word);
    int rc = 0;

    if (len + sizeof SPACE > sizeof buf)
        return 0;
    for (size_t k = space ? 1 : 2; k <= len && rc == 0; k++) {
        snprintf(buf, sizeof buf, "%s%.*s", space ? SPACE : "", (int)k, word);
        rc = gen_add(s, buf, TOK_TYPE_NORMAL);
    }
    return rc;
}

/* The L-grams of letter ranks summing to rem from position pos on, in
 * lexicographic order of the ranks; each bare and after "▁". */
static int gen_ngrams(struct gen *s, char *gram, int pos, int len, int rem)
{
    int rc = 0;

    if (pos == len) {
        char buf[32];
        gram[len] = '\0';
        rc = gen_add(s, gram, TOK_TYPE_NORMAL);
        if (rc == 0) {
            snprintf(buf, sizeof buf, SPACE "%s", gram);
            rc = gen_add(s, buf, TOK_TYPE_NORMAL);
        }
        return rc;
    }
    for (int r = 0; r < 26 && r <= rem && rc == 0; r++) {
        if (rem - r > 25 * (len - pos - 1))
            continue;
        gram[pos] = vocab_gen_letters[r];
        rc = gen_ngrams(s, gram, pos + 1, len, rem - r);
    }
    return rc;
}

static int gen_fill(struct gen *s)
{
    const size_t n_words = sizeof vocab_gen_words / sizeof vocab_gen_words[0];
    const size_t n_suffixes = sizeof vocab_gen_suffixes / sizeof vocab_gen_suffixes[0];
    char buf[80];
    int rc;

    rc = gen_add(s, "<unk>", TOK_TYPE_UNKNOWN);
    if (!rc)
        rc = gen_add(s, "<s>", TOK_TYPE_CONTROL);
    if (!rc)
        rc = gen_add(s, "</s>", TOK_TYPE_CONTROL);
    for (int b = 0; b < 256 && !rc; b++) {
        snprintf(buf, sizeof buf, "<0x%02X>", b);
        rc = gen_add(s, buf, TOK_TYPE_BYTE);
    }
    if (!rc)
        rc = gen_add(s, SPACE, TOK_TYPE_NORMAL);
    for (int c = 0x21; c < 0x7f && !rc; c++) {
        buf[0] = (char)c;
        buf[1] = '\0';
        rc = gen_add(s, buf, TOK_TYPE_NORMAL);
    }
    for (size_t w = 0; w < n_words && !rc; w++)
        rc = gen_word(s, vocab_gen_words[w], 1);
    for (size_t w = 0; w < n_suffixes && !rc; w++)
        rc = gen_word(s, vocab_gen_suffixes[w], 0);
    for (size_t w = 0; w < n_words && !rc; w++) {
        char cap[64];
        snprintf(cap, sizeof cap, "%s", vocab_gen_words[w]);
        if (cap[0] >= 'a' && cap[0] <= 'z')
            cap[0] = (char)(cap[0] - 'a' + 'A');
        rc = gen_word(s, cap, 1);
    }
    for (int run = 2; run <= 16 && !rc; run++) {
        buf[0] = '\0';
        for (int k = 0; k < run; k++)
            strcat(buf, SPACE);
        rc = gen_add(s, buf, TOK_TYPE_NORMAL);
    }
    for (int len = 2; len <= 4 && !rc; len++) {
        char gram[8];
        for (int sum = 0; sum <= 25 * len && !rc; sum++)
            rc = gen_ngrams(s, gram, 0, len, sum);
    }
    return rc;
}

int vocab_gen_create(struct vocab_gen **out, size_t n, char *err, size_t errlen)
{
    struct gen s = {NULL, n, NULL, 0, 0};
    size_t size;
    int rc = -2;

    *out = NULL;
    if (n < VOCAB_GEN_MIN || n > VOCAB_GEN_MAX) {
        if (err && errlen)
            snprintf(err, errlen, "a generated vocabulary has %d..%d pieces, not %zu",
                     VOCAB_GEN_MIN, VOCAB_GEN_MAX, n);
        return -1;
    }
    s.g = calloc(1, sizeof *s.g);
    if (!s.g)
        goto fail;
    s.g->pieces = calloc(n, sizeof *s.g->pieces);
    s.g->scores = malloc(n * sizeof *s.g->scores);
    s.g->types = malloc(n * sizeof *s.g->types);
    for (size = 16; size < 2 * n; size *= 2)
        ;
    s.set = calloc(size, sizeof *s.set);
    s.mask = size - 1;
    if (!s.g->pieces || !s.g->scores || !s.g->types || !s.set)
        goto fail;
    rc = gen_fill(&s);
    if (rc < 0)
        goto fail;
    if (s.g->n < n) { // cannot happen below VOCAB_GEN_MAX
        if (err && errlen)
            snprintf(err, errlen, "only %zu pieces could be generated", s.g->n);
        rc = -1;
        goto fail;
    }
    free(s.set);
    *out = s.g;
    return 0;

fail:
    if (rc == -2 && err && errlen)
        snprintf(err, errlen, "out of memory generating %zu pieces", n);
    free(s.set);
    vocab_gen_destroy(s.g);
    return rc;
}

void vocab_gen_destroy(struct vocab_gen *g)
{
    if (!g)
        return;
    if (g->pieces)
        for (size_t i = 0; i < g->n; i++)
            free(g->pieces[i]);
    free(g->pieces);
    free(g->scores);
    free(g->types);
    free(g);
}

void vocab_gen_describe(const struct vocab_gen *g, struct tok_vocab *v)
{
    tok_vocab_defaults(v);
    v->n = g->n;
    v->pieces = (const char *const *)g->pieces;
    v->scores = g->scores;
    v->types = g->types;
}

int vocab_gen_add_to_gguf(const struct vocab_gen *g, struct gguf_writer *w)
{
    gguf_writer_add_str(w, "tokenizer.ggml.model", "llama");
    gguf_writer_add_str_arr(w, "tokenizer.ggml.tokens", (const char *const *)g->pieces, g->n);
    gguf_writer_add_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, g->scores, g->n);
    gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, g->types, g->n);
    gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1);
    gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2);
    gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", 1);
    gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", 0);
    return gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", 1);
}
