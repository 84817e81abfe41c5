/*
 * tokenizer: SentencePiece BPE encoding and decoding (see tokenizer.h).
 *
 * At creation every piece is copied into one blob, its decoded form
 * (▁ -> ' ', byte token -> its byte, control -> nothing) into another, and
 * the pieces a merge may produce go into an open-addressing hash table; the
 * encoder's per-call state (the escaped text, the symbol list, the bigram
 * heap) is allocated by tok_encode and freed before it returns.
 */
#include "worker/tokenizer.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/gguf.h"

#define TOK_SPACE     "\xe2\x96\x81" /* U+2581, what ' ' becomes */
#define TOK_SPACE_LEN 3
#define TOK_FFFD      "\xef\xbf\xbd" /* U+FFFD REPLACEMENT CHARACTER */

struct tokenizer {
    size_t n;
    char *blob;        /* the raw pieces, each NUL-terminated */
    size_t *off, *len; /* (n) into blob */
    char *dec;         /* the decoded pieces */
    size_t *dec_off, *dec_len;
    size_t max_dec_len;
    float *scores;  /* (n) */
    int8_t *types;  /* (n) */
    int32_t *table; /* (mask + 1) ids of mergeable pieces, -1 empty */
    size_t mask;
    int32_t byte_id[256]; /* the token each byte falls back to */
    int32_t *user;        /* USER_DEFINED ids, longest piece first */
    size_t n_user;
    int has_unused;
    int bos, eos, unk, pad;
    int add_space_prefix, add_bos, add_eos;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- the piece table ---- */

static uint32_t hash_bytes(const char *p, size_t len)
{
    uint32_t h = 2166136261u; // FNV-1a

    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)p[i];
        h *= 16777619u;
    }
    return h;
}

static int mergeable(int type)
{
    return type == TOK_TYPE_UNDEFINED || type == TOK_TYPE_NORMAL || type == TOK_TYPE_USER_DEFINED ||
           type == TOK_TYPE_UNUSED;
}

/* The id of the mergeable piece p[0..len), or -1. */
static int lookup(const struct tokenizer *t, const char *p, size_t len)
{
    size_t i = hash_bytes(p, len) & t->mask;

    for (;; i = (i + 1) & t->mask) {
        int32_t id = t->table[i];
        if (id < 0)
            return -1;
        if (t->len[id] == len && memcmp(t->blob + t->off[id], p, len) == 0)
            return id;
    }
}

/* Insert id; a later piece with the same text replaces an earlier one (as
 * llama.cpp's token_to_id map does). */
static void table_insert(struct tokenizer *t, int32_t id)
{
    const char *p = t->blob + t->off[id];
    size_t len = t->len[id];
    size_t i = hash_bytes(p, len) & t->mask;

    for (;; i = (i + 1) & t->mask) {
        int32_t cur = t->table[i];
        if (cur < 0 || (t->len[cur] == len && memcmp(t->blob + t->off[cur], p, len) == 0)) {
            t->table[i] = id;
            return;
        }
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* The byte a "<0xXX>" piece stands for, or -1. */
static int byte_piece_value(const char *p, size_t len)
{
    if (len != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>')
        return -1;
    if (hexval(p[3]) < 0 || hexval(p[4]) < 0)
        return -1;
    return hexval(p[3]) * 16 + hexval(p[4]);
}

static int cmp_user(const void *a, const void *b, void *arg)
{
    const struct tokenizer *t = arg;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;

    if (t->len[x] != t->len[y])
        return t->len[x] > t->len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* ---- creation ---- */

void tok_vocab_defaults(struct tok_vocab *v)
{
    memset(v, 0, sizeof *v);
    v->bos_id = 1;
    v->eos_id = 2;
    v->unk_id = 0;
    v->pad_id = -1;
    v->add_space_prefix = 1;
    v->add_bos = 1;
    v->add_eos = 0;
}

static int check_id(int32_t id, size_t n, const char *what, char *err, size_t errlen)
{
    if (id < -1 || (id >= 0 && (size_t)id >= n)) {
        set_err(err, errlen, "%s id %d is outside the vocabulary of %zu pieces", what, (int)id, n);
        return -1;
    }
    return 0;
}

/* Fill the decoded pieces: dec_len[] first pass, then the bytes. */
static int build_decoded(struct tokenizer *t, char *err, size_t errlen)
{
    size_t total = 0;

    for (size_t i = 0; i < t->n; i++) {
        const char *p = t->blob + t->off[i];
        size_t len = t->len[i], d = 0;

        switch (t->types[i]) {
        case TOK_TYPE_UNDEFINED:
        case TOK_TYPE_NORMAL:
            for (size_t k = 0; k < len; k++) {
                if (k + TOK_SPACE_LEN <= len && memcmp(p + k, TOK_SPACE, TOK_SPACE_LEN) == 0)
                    k += TOK_SPACE_LEN - 1;
                d++;
            }
            break;
        case TOK_TYPE_USER_DEFINED:
            d = len;
            break;
        case TOK_TYPE_BYTE:
            if (byte_piece_value(p, len) < 0) {
                set_err(err, errlen, "token %zu is a byte token but its piece is not <0xXX>", i);
                return TOK_ERR_INVALID;
            }
            d = 1;
            break;
        default: // control, unknown, unused: nothing
            d = 0;
        }
        t->dec_off[i] = total;
        t->dec_len[i] = d;
        total += d;
        if (d > t->max_dec_len)
            t->max_dec_len = d;
    }
    t->dec = malloc(total + 1);
    if (!t->dec)
        return TOK_ERR_NOMEM;
    for (size_t i = 0; i < t->n; i++) {
        const char *p = t->blob + t->off[i];
        char *q = t->dec + t->dec_off[i];
        size_t len = t->len[i];

        if (t->dec_len[i] == 0)
            continue;
        if (t->types[i] == TOK_TYPE_BYTE) {
            *q = (char)byte_piece_value(p, len);
        } else if (t->types[i] == TOK_TYPE_USER_DEFINED) {
            memcpy(q, p, len);
        } else {
            for (size_t k = 0; k < len; k++) {
                if (k + TOK_SPACE_LEN <= len && memcmp(p + k, TOK_SPACE, TOK_SPACE_LEN) == 0) {
                    *q++ = ' ';
                    k += TOK_SPACE_LEN - 1;
                } else {
                    *q++ = p[k];
                }
            }
        }
    }
    return 0;
}

/* byte_id[]: "<0xXX>" (upper-case hex, any type), else the one-byte piece,
 * else UNK; as llama.cpp's byte_to_token, which throws where we fail. */
static int build_byte_ids(struct tokenizer *t, char *err, size_t errlen)
{
    int32_t hex_id[256], single_id[256];
    static const char hex[] = "0123456789ABCDEF";

    for (int b = 0; b < 256; b++)
        hex_id[b] = single_id[b] = -1;
    for (size_t i = 0; i < t->n; i++) {
        const char *p = t->blob + t->off[i];
        int b;

        if (t->len[i] == 1)
            single_id[(unsigned char)p[0]] = (int32_t)i;
        b = byte_piece_value(p, t->len[i]);
        if (b >= 0 && p[3] == hex[b >> 4] && p[4] == hex[b & 15])
            hex_id[b] = (int32_t)i;
    }
    for (int b = 0; b < 256; b++) {
        t->byte_id[b] = hex_id[b] >= 0 ? hex_id[b] : single_id[b] >= 0 ? single_id[b] : t->unk;
        if (t->byte_id[b] < 0) {
            set_err(err, errlen,
                    "the vocabulary cannot encode byte 0x%02X: no <0x%02X> token, no one-byte "
                    "piece and no unknown token",
                    b, b);
            return TOK_ERR_INVALID;
        }
    }
    return 0;
}

int tok_create(struct tokenizer **out, const struct tok_vocab *v, char *err, size_t errlen)
{
    struct tokenizer *t = NULL;
    size_t total = 0, n_merge = 0, size;
    int rc = TOK_ERR_NOMEM;

    *out = NULL;
    if (v->n == 0 || v->n > INT32_MAX || !v->pieces) {
        set_err(err, errlen, "the vocabulary is empty or has over INT32_MAX pieces");
        return TOK_ERR_INVALID;
    }
    if (check_id(v->bos_id, v->n, "BOS", err, errlen) ||
        check_id(v->eos_id, v->n, "EOS", err, errlen) ||
        check_id(v->unk_id, v->n, "unknown token", err, errlen) ||
        check_id(v->pad_id, v->n, "padding token", err, errlen))
        return TOK_ERR_INVALID;
    if ((v->add_bos && v->bos_id < 0) || (v->add_eos && v->eos_id < 0)) {
        set_err(err, errlen, "add_%s is set but there is no %s token", v->add_bos ? "bos" : "eos",
                v->add_bos ? "BOS" : "EOS");
        return TOK_ERR_INVALID;
    }
    for (size_t i = 0; i < v->n; i++) {
        if (v->types && (v->types[i] < 0 || v->types[i] > TOK_TYPE_BYTE)) {
            set_err(err, errlen, "token %zu has type %d, not one of 0..6", i, (int)v->types[i]);
            return TOK_ERR_INVALID;
        }
        if (!v->pieces[i]) {
            set_err(err, errlen, "token %zu has no piece", i);
            return TOK_ERR_INVALID;
        }
    }

    t = calloc(1, sizeof *t);
    if (!t)
        goto fail;
    t->n = v->n;
    t->bos = v->bos_id;
    t->eos = v->eos_id;
    t->unk = v->unk_id;
    t->pad = v->pad_id;
    t->add_space_prefix = !!v->add_space_prefix;
    t->add_bos = !!v->add_bos;
    t->add_eos = !!v->add_eos;
    t->off = malloc(v->n * sizeof *t->off);
    t->len = malloc(v->n * sizeof *t->len);
    t->dec_off = malloc(v->n * sizeof *t->dec_off);
    t->dec_len = malloc(v->n * sizeof *t->dec_len);
    t->scores = malloc(v->n * sizeof *t->scores);
    t->types = malloc(v->n * sizeof *t->types);
    if (!t->off || !t->len || !t->dec_off || !t->dec_len || !t->scores || !t->types)
        goto fail;
    for (size_t i = 0; i < v->n; i++) {
        t->len[i] = v->lens ? v->lens[i] : strlen(v->pieces[i]);
        t->off[i] = total;
        total += t->len[i] + 1;
        t->scores[i] = v->scores ? v->scores[i] : 0.0f;
        t->types[i] = (int8_t)(v->types ? v->types[i] : TOK_TYPE_NORMAL);
        if (mergeable(t->types[i]))
            n_merge++;
        if (t->types[i] == TOK_TYPE_USER_DEFINED && t->len[i] > 0)
            t->n_user++;
        if (t->types[i] == TOK_TYPE_UNUSED)
            t->has_unused = 1;
    }
    t->blob = malloc(total);
    if (!t->blob)
        goto fail;
    for (size_t i = 0; i < v->n; i++) {
        memcpy(t->blob + t->off[i], v->pieces[i], t->len[i]);
        t->blob[t->off[i] + t->len[i]] = '\0';
    }

    for (size = 16; size < 2 * n_merge; size *= 2)
        ;
    t->table = malloc(size * sizeof *t->table);
    if (!t->table)
        goto fail;
    memset(t->table, 0xff, size * sizeof *t->table); // -1
    t->mask = size - 1;
    for (size_t i = 0; i < v->n; i++)
        if (mergeable(t->types[i]))
            table_insert(t, (int32_t)i);

    if (t->n_user) {
        size_t k = 0;
        t->user = malloc(t->n_user * sizeof *t->user);
        if (!t->user)
            goto fail;
        for (size_t i = 0; i < v->n; i++)
            if (t->types[i] == TOK_TYPE_USER_DEFINED && t->len[i] > 0)
                t->user[k++] = (int32_t)i;
        qsort_r(t->user, t->n_user, sizeof *t->user, cmp_user, t);
    }

    rc = build_decoded(t, err, errlen);
    if (rc)
        goto fail;
    rc = build_byte_ids(t, err, errlen);
    if (rc)
        goto fail;
    *out = t;
    return 0;

fail:
    if (rc == TOK_ERR_NOMEM)
        set_err(err, errlen, "out of memory building a tokenizer of %zu pieces", v->n);
    tok_destroy(t);
    return rc;
}

void tok_destroy(struct tokenizer *t)
{
    if (!t)
        return;
    free(t->blob);
    free(t->off);
    free(t->len);
    free(t->dec);
    free(t->dec_off);
    free(t->dec_len);
    free(t->scores);
    free(t->types);
    free(t->table);
    free(t->user);
    free(t);
}

/* ---- loading from GGUF ---- */

/* An optional id key. UINT32_MAX (what converters write for "none") and
 * other values past the vocabulary leave the default, as llama.cpp does. */
static int get_opt_id(const struct gguf_file *f, const char *key, uint64_t n, int32_t *id,
                      char *err, size_t errlen)
{
    uint32_t u;
    int rc = gguf_get_u32(f, key, &u);

    if (rc == GGUF_EABSENT)
        return 0;
    if (rc != 0) {
        set_err(err, errlen, "%s is not a token id (an unsigned 32-bit integer)", key);
        return TOK_ERR_INVALID;
    }
    if (u < n)
        *id = (int32_t)u;
    return 0;
}

static int get_opt_bool(const struct gguf_file *f, const char *key, int *flag, char *err,
                        size_t errlen)
{
    int rc = gguf_get_bool(f, key, flag);

    if (rc == GGUF_EABSENT)
        return 0;
    if (rc != 0) {
        set_err(err, errlen, "%s is not a bool", key);
        return TOK_ERR_INVALID;
    }
    return 0;
}

int tok_load_gguf(struct tokenizer **out, const struct gguf_file *f, char *err, size_t errlen)
{
    struct tok_vocab v;
    struct gguf_str model;
    const struct gguf_str *items;
    const void *data;
    uint32_t elem;
    uint64_t n, m;
    const char **pieces = NULL;
    size_t *lens = NULL;
    float *scores = NULL;
    int32_t *types = NULL;
    int rc;

    *out = NULL;
    tok_vocab_defaults(&v);
    if (gguf_get_str(f, "tokenizer.ggml.model", &model) != 0) {
        set_err(err, errlen, "tokenizer.ggml.model is missing or not a string");
        return TOK_ERR_INVALID;
    }
    if (!gguf_str_eq(model, "llama")) {
        set_err(err, errlen,
                "unsupported tokenizer \"%.*s\" (tokenizer.ggml.model): only \"llama\" "
                "(SentencePiece BPE) is",
                (int)(model.len > 64 ? 64 : model.len), model.ptr);
        return TOK_ERR_UNSUPPORTED;
    }
    if (gguf_get_str_arr(f, "tokenizer.ggml.tokens", &items, &n) != 0 || n == 0 || n > INT32_MAX) {
        set_err(err, errlen, "tokenizer.ggml.tokens is missing, empty or not an array of strings");
        return TOK_ERR_INVALID;
    }
    rc = TOK_ERR_NOMEM;
    pieces = malloc(n * sizeof *pieces);
    lens = malloc(n * sizeof *lens);
    if (!pieces || !lens)
        goto out;
    for (uint64_t i = 0; i < n; i++) {
        pieces[i] = items[i].ptr ? items[i].ptr : "";
        lens[i] = items[i].len;
    }

    rc = gguf_get_arr(f, "tokenizer.ggml.scores", &elem, &m, &data);
    if (rc == 0) {
        if (elem != GGUF_TYPE_FLOAT32 || m != n) {
            set_err(err, errlen, "tokenizer.ggml.scores must be %llu FLOAT32, not %llu %s",
                    (unsigned long long)n, (unsigned long long)m, gguf_value_type_name(elem));
            rc = TOK_ERR_INVALID;
            goto out;
        }
        rc = TOK_ERR_NOMEM;
        scores = malloc(n * sizeof *scores);
        if (!scores)
            goto out;
        memcpy(scores, data, n * sizeof *scores); // little-endian host, as gguf.h requires
    } else if (rc != GGUF_EABSENT) {
        set_err(err, errlen, "tokenizer.ggml.scores is not an array of FLOAT32");
        rc = TOK_ERR_INVALID;
        goto out;
    }

    rc = gguf_get_arr(f, "tokenizer.ggml.token_type", &elem, &m, &data);
    if (rc == 0) {
        if ((elem != GGUF_TYPE_INT32 && elem != GGUF_TYPE_UINT32) || m != n) {
            set_err(err, errlen, "tokenizer.ggml.token_type must be %llu INT32, not %llu %s",
                    (unsigned long long)n, (unsigned long long)m, gguf_value_type_name(elem));
            rc = TOK_ERR_INVALID;
            goto out;
        }
        rc = TOK_ERR_NOMEM;
        types = malloc(n * sizeof *types);
        if (!types)
            goto out;
        memcpy(types, data, n * sizeof *types);
    } else if (rc != GGUF_EABSENT) {
        set_err(err, errlen, "tokenizer.ggml.token_type is not an array of INT32");
        rc = TOK_ERR_INVALID;
        goto out;
    }

    rc = get_opt_id(f, "tokenizer.ggml.bos_token_id", n, &v.bos_id, err, errlen);
    if (!rc)
        rc = get_opt_id(f, "tokenizer.ggml.eos_token_id", n, &v.eos_id, err, errlen);
    if (!rc)
        rc = get_opt_id(f, "tokenizer.ggml.unknown_token_id", n, &v.unk_id, err, errlen);
    if (!rc)
        rc = get_opt_id(f, "tokenizer.ggml.padding_token_id", n, &v.pad_id, err, errlen);
    if (!rc)
        rc = get_opt_bool(f, "tokenizer.ggml.add_bos_token", &v.add_bos, err, errlen);
    if (!rc)
        rc = get_opt_bool(f, "tokenizer.ggml.add_eos_token", &v.add_eos, err, errlen);
    if (!rc)
        rc = get_opt_bool(f, "tokenizer.ggml.add_space_prefix", &v.add_space_prefix, err, errlen);
    if (rc)
        goto out;

    v.n = n;
    v.pieces = pieces;
    v.lens = lens;
    v.scores = scores;
    v.types = types;
    rc = tok_create(out, &v, err, errlen);
    goto done;
out:
    if (rc == TOK_ERR_NOMEM)
        set_err(err, errlen, "out of memory reading a vocabulary of %llu pieces",
                (unsigned long long)n);
done:
    free(pieces);
    free(lens);
    free(scores);
    free(types);
    return rc;
}

/* ---- facts ---- */

size_t tok_n_vocab(const struct tokenizer *t)
{
    return t->n;
}

int tok_bos_id(const struct tokenizer *t)
{
    return t->bos;
}

int tok_eos_id(const struct tokenizer *t)
{
    return t->eos;
}

int tok_unk_id(const struct tokenizer *t)
{
    return t->unk;
}

int tok_pad_id(const struct tokenizer *t)
{
    return t->pad;
}

int tok_add_bos(const struct tokenizer *t)
{
    return t->add_bos;
}

int tok_type(const struct tokenizer *t, int id)
{
    if (id < 0 || (size_t)id >= t->n)
        return -1;
    return t->types[id];
}

const char *tok_piece(const struct tokenizer *t, int id, size_t *len)
{
    if (id < 0 || (size_t)id >= t->n)
        return NULL;
    if (len)
        *len = t->len[id];
    return t->blob + t->off[id];
}

/* ---- encoding ---- */

/* Ids go to out while they fit and are counted regardless. */
struct ids_sink {
    int *ids;
    size_t cap, n;
};

static void push_id(struct ids_sink *k, int id)
{
    if (k->n < k->cap)
        k->ids[k->n] = id;
    k->n++;
}

struct spm_sym {
    int prev, next;  /* the neighbours in the list, -1 at the ends */
    uint32_t off, n; /* the symbol's bytes in the scratch text; n = 0 once merged away */
};

struct spm_bigram {
    int left, right;
    float score;
    uint32_t size; /* bytes of the pair when queued: a later size mismatch marks it stale */
};

struct spm_work {
    const struct tokenizer *t;
    char *text;              /* the escaped fragment */
    struct spm_sym *sym;     /* one per character */
    struct spm_bigram *heap; /* a max-heap on (score, then leftmost) */
    size_t heap_n;
    int32_t *rev; /* (n vocab) the left part's length in the last merge forming each piece;
                     only when the vocab has UNUSED pieces */
};

/* 1 when a is to be merged before b: higher score, then further left. */
static int bigram_before(const struct spm_bigram *a, const struct spm_bigram *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(struct spm_work *w, struct spm_bigram b)
{
    size_t i = w->heap_n++;

    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!bigram_before(&b, &w->heap[parent]))
            break;
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = b;
}

static struct spm_bigram heap_pop(struct spm_work *w)
{
    struct spm_bigram top = w->heap[0], last = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;

    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && bigram_before(&w->heap[c + 1], &w->heap[c]))
            c++;
        if (!bigram_before(&w->heap[c], &last))
            break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n > 0)
        w->heap[i] = last;
    return top;
}

/* Queue the pair (left, right) when their concatenation is a piece. */
static void try_add_bigram(struct spm_work *w, int left, int right)
{
    struct spm_bigram b;
    size_t size;
    int id;

    if (left < 0 || right < 0)
        return;
    size = w->sym[left].n + w->sym[right].n;
    id = lookup(w->t, w->text + w->sym[left].off, size);
    if (id < 0)
        return;
    b.left = left;
    b.right = right;
    b.score = w->t->scores[id];
    b.size = (uint32_t)size;
    heap_push(w, b);
    if (w->rev)
        w->rev[id] = (int32_t)w->sym[left].n;
}

/* The ids of the final symbol text[off..off+n). */
static void resegment(struct spm_work *w, size_t off, size_t n, struct ids_sink *k)
{
    const struct tokenizer *t = w->t;
    int id = lookup(t, w->text + off, n);

    if (id >= 0 && t->types[id] == TOK_TYPE_UNUSED && w->rev && w->rev[id] > 0 &&
        (size_t)w->rev[id] < n) {
        size_t left = (size_t)w->rev[id];
        resegment(w, off, left, k);
        resegment(w, off + left, n - left, k);
        return;
    }
    if (id >= 0) {
        push_id(k, id);
        return;
    }
    for (size_t i = 0; i < n; i++)
        push_id(k, t->byte_id[(unsigned char)w->text[off + i]]);
}

/* llama.cpp's unicode_len_utf8: the length a lead byte announces. */
static size_t utf8_len(unsigned char c)
{
    static const unsigned char lookup_len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup_len[c >> 4];
}

/* Encode one fragment of raw text (no user-defined pieces in it). */
static void spm_fragment(struct spm_work *w, const char *raw, size_t rlen, int prefix,
                         struct ids_sink *k)
{
    size_t m = 0, off = 0;
    int ns = 0;

    if (prefix) {
        memcpy(w->text, TOK_SPACE, TOK_SPACE_LEN);
        m = TOK_SPACE_LEN;
    }
    for (size_t i = 0; i < rlen; i++) {
        if (raw[i] == ' ') {
            memcpy(w->text + m, TOK_SPACE, TOK_SPACE_LEN);
            m += TOK_SPACE_LEN;
        } else {
            w->text[m++] = raw[i];
        }
    }
    if (m == 0)
        return;

    while (off < m) {
        size_t cl = utf8_len((unsigned char)w->text[off]);
        if (cl > m - off)
            cl = m - off;
        w->sym[ns].prev = ns - 1;
        w->sym[ns].next = off + cl == m ? -1 : ns + 1;
        w->sym[ns].off = (uint32_t)off; // < 3 * (INT32_MAX / 4 + 1)
        w->sym[ns].n = (uint32_t)cl;
        off += cl;
        ns++;
    }
    if (w->rev)
        memset(w->rev, 0, w->t->n * sizeof *w->rev);

    w->heap_n = 0;
    for (int i = 1; i < ns; i++)
        try_add_bigram(w, i - 1, i);
    while (w->heap_n > 0) {
        struct spm_bigram b = heap_pop(w);
        struct spm_sym *l = &w->sym[b.left], *r = &w->sym[b.right];

        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
            continue; // stale: one side has been merged since
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            w->sym[r->next].prev = b.left;
        try_add_bigram(w, l->prev, b.left);
        try_add_bigram(w, b.left, l->next);
    }
    for (int i = 0; i != -1; i = w->sym[i].next)
        resegment(w, w->sym[i].off, w->sym[i].n, k);
}

/* The USER_DEFINED piece at text[pos..len), longest first, or -1. */
static int user_at(const struct tokenizer *t, const char *text, size_t pos, size_t len)
{
    for (size_t u = 0; u < t->n_user; u++) {
        int32_t id = t->user[u];
        size_t ul = t->len[id];
        if (ul <= len - pos && memcmp(text + pos, t->blob + t->off[id], ul) == 0)
            return id;
    }
    return -1;
}

int tok_encode(const struct tokenizer *t, const char *text, size_t len, int add_special, int *out,
               size_t cap, size_t *n_out)
{
    struct ids_sink k = {out, cap, 0};
    struct spm_work w = {t, NULL, NULL, NULL, 0, NULL};
    size_t pos = 0, start = 0;
    // every fragment is the first or follows a user-defined piece, and so
    // gets the prefix (llama.cpp's is_prev_special)
    int prefix = t->add_space_prefix;
    int rc = TOK_ERR_NOMEM;

    *n_out = 0;
    if (len > INT32_MAX / 4)
        return TOK_ERR_INVALID;
    if (add_special && t->add_bos)
        push_id(&k, t->bos);
    if (len > 0) {
        w.text = malloc(TOK_SPACE_LEN * (len + 1));
        w.sym = malloc((len + 1) * sizeof *w.sym);
        w.heap = malloc(3 * (len + 1) * sizeof *w.heap);
        if (t->has_unused)
            w.rev = malloc(t->n * sizeof *w.rev);
        if (!w.text || !w.sym || !w.heap || (t->has_unused && !w.rev))
            goto out;
    }
    while (t->n_user && pos < len) {
        int id = user_at(t, text, pos, len);
        if (id < 0) {
            pos++;
            continue;
        }
        if (pos > start)
            spm_fragment(&w, text + start, pos - start, prefix, &k);
        push_id(&k, id);
        pos += t->len[id];
        start = pos;
    }
    if (len > start)
        spm_fragment(&w, text + start, len - start, prefix, &k);
    if (add_special && t->add_eos)
        push_id(&k, t->eos);
    *n_out = k.n;
    rc = k.n > cap ? TOK_ERR_SPACE : 0;
out:
    free(w.text);
    free(w.sym);
    free(w.heap);
    free(w.rev);
    return rc;
}

/* ---- decoding ---- */

/* Bytes go to buf while they fit and are counted regardless. */
struct byte_sink {
    char *buf;
    size_t cap, n;
};

static void put(struct byte_sink *k, const char *p, size_t len)
{
    if (k->n + len <= k->cap)
        memcpy(k->buf + k->n, p, len);
    k->n += len;
}

/* Run one byte through the UTF-8 check; whole characters go to k. */
static void stream_byte(struct tok_stream *s, unsigned char c, struct byte_sink *k)
{
    if (s->skip_space) {
        s->skip_space = 0;
        if (c == ' ')
            return;
    }
    if (s->need > 0) {
        if (c >= s->lo && c <= s->hi) {
            s->pend[s->n_pend++] = c;
            s->lo = 0x80;
            s->hi = 0xbf;
            if (--s->need == 0) {
                put(k, (const char *)s->pend, s->n_pend);
                s->n_pend = 0;
            }
            return;
        }
        put(k, TOK_FFFD, 3); // the maximal subpart so far can never complete
        s->n_pend = 0;
        s->need = 0;
    }
    s->lo = 0x80;
    s->hi = 0xbf;
    if (c < 0x80) {
        put(k, (const char *)&c, 1);
        return;
    } else if (c >= 0xc2 && c <= 0xdf) {
        s->need = 1;
    } else if (c >= 0xe0 && c <= 0xef) {
        s->need = 2;
        if (c == 0xe0)
            s->lo = 0xa0; // no overlong forms
        else if (c == 0xed)
            s->hi = 0x9f; // no surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
        s->need = 3;
        if (c == 0xf0)
            s->lo = 0x90;
        else if (c == 0xf4)
            s->hi = 0x8f; // nothing past U+10FFFF
    } else {
        put(k, TOK_FFFD, 3); // a continuation byte without a lead, C0, C1, F5..FF
        return;
    }
    s->pend[0] = c;
    s->n_pend = 1;
}

static void stream_id(struct tok_stream *s, int id, struct byte_sink *k)
{
    const struct tokenizer *t = s->t;
    const char *p = t->dec + t->dec_off[id];

    for (size_t i = 0; i < t->dec_len[id]; i++)
        stream_byte(s, (unsigned char)p[i], k);
}

static void stream_end(struct tok_stream *s, struct byte_sink *k)
{
    if (s->n_pend > 0)
        put(k, TOK_FFFD, 3);
    s->n_pend = 0;
    s->need = 0;
}

void tok_stream_init(struct tok_stream *s, const struct tokenizer *t, int skip_leading_space)
{
    memset(s, 0, sizeof *s);
    s->t = t;
    s->skip_space = !!skip_leading_space;
}

size_t tok_stream_bound(const struct tokenizer *t)
{
    return 3 * (t->max_dec_len + 1);
}

int tok_stream_push(struct tok_stream *s, int id, char *out, size_t cap, size_t *n_out)
{
    struct byte_sink k = {out, cap, 0};

    *n_out = 0;
    if (id < 0 || (size_t)id >= s->t->n)
        return TOK_ERR_INVALID;
    // every byte in is at most 3 bytes out (U+FFFD), plus one U+FFFD or the
    // rest of a character for the bytes already pending
    if (cap < 3 * (s->t->dec_len[id] + 1))
        return TOK_ERR_SPACE;
    stream_id(s, id, &k);
    *n_out = k.n;
    return 0;
}

int tok_stream_flush(struct tok_stream *s, char *out, size_t cap, size_t *n_out)
{
    struct byte_sink k = {out, cap, 0};

    *n_out = 0;
    if (s->n_pend > 0 && cap < 3)
        return TOK_ERR_SPACE;
    stream_end(s, &k);
    *n_out = k.n;
    return 0;
}

int tok_decode(const struct tokenizer *t, const int *ids, size_t n, char *out, size_t cap,
               size_t *n_out, int skip_leading_space)
{
    struct byte_sink k = {out, cap, 0};
    struct tok_stream s;

    *n_out = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (size_t)ids[i] >= t->n)
            return TOK_ERR_INVALID;
    tok_stream_init(&s, t, skip_leading_space);
    for (size_t i = 0; i < n; i++)
        stream_id(&s, ids[i], &k);
    stream_end(&s, &k);
    *n_out = k.n;
    if (k.n >= cap)
        return TOK_ERR_SPACE;
    out[k.n] = '\0';
    return 0;
}
