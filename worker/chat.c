/*
 * chat: the Mistral instruct template (see chat.h).
 *
 * Key decision: one walk over the messages produces a sequence of control
 * ids and text parts, and two sinks consume it: the encoder (each text part
 * through tok_encode, ids as they are) and the renderer (ids as their piece's
 * text). So the ids and the text the response shows cannot disagree.
 */
#include "worker/chat.h"

#include <stdlib.h>
#include <string.h>

#include "common/grow.h"
#include "common/job.h"
#include "worker/tokenizer.h"

struct chat_out {
    const struct tokenizer *t;
    int render;      /* build text (chat_render), else ids (chat_encode) */
    char *buf;       /* (cap) render: the whole text; encode: the current part */
    size_t len, cap; /* bytes in buf, its room */
    size_t part_len; /* bytes of the current text part */
    int after_text;  /* the last thing put was a non-empty text part */
    int *ids;        /* (cap_ids) encode: the ids so far */
    size_t n_ids, cap_ids;
    int failed; /* CHAT_ERR_NOMEM happened */
};

static void put_bytes(struct chat_out *o, const char *s, size_t n)
{
    if (o->failed || n == 0)
        return;
    if (grow_array((void **)&o->buf, &o->cap, o->len + n + 1, 1) < 0) {
        o->failed = 1;
        return;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

static void put_ids(struct chat_out *o, const int *ids, size_t n)
{
    if (o->failed || n == 0)
        return;
    if (grow_array((void **)&o->ids, &o->cap_ids, o->n_ids + n, sizeof(*o->ids)) < 0) {
        o->failed = 1;
        return;
    }
    memcpy(o->ids + o->n_ids, ids, n * sizeof(*ids));
    o->n_ids += n;
}

/* The current text part is complete: encode it (encoder) or just note it. */
static void end_part(struct chat_out *o)
{
    if (o->part_len == 0)
        return;
    o->after_text = 1;
    o->part_len = 0;
    if (o->render || o->failed)
        return;
    size_t cap = TOK_ENCODE_BOUND(o->len), got = 0;
    int *tmp = malloc(cap * sizeof(*tmp));
    if (!tmp || tok_encode(o->t, o->buf, o->len, 0, tmp, cap, &got) != 0)
        o->failed = 1;
    else
        put_ids(o, tmp, got);
    free(tmp);
    o->len = 0;
}

/* Part of the current text part. Two text parts in a row are one space apart
 * in the text: the leading space the encoder gives the second. */
static void put_text(struct chat_out *o, const char *s, size_t n)
{
    if (n == 0)
        return;
    if (o->render && o->part_len == 0 && o->after_text)
        put_bytes(o, " ", 1);
    put_bytes(o, s, n);
    o->part_len += n;
}

static void put_id(struct chat_out *o, int id)
{
    end_part(o);
    o->after_text = 0;
    if (o->render) {
        size_t n = 0;
        const char *piece = tok_piece(o->t, id, &n);
        put_bytes(o, piece ? piece : "", piece ? n : 0);
    } else {
        put_ids(o, &id, 1);
    }
}

/* The id of the CONTROL or USER_DEFINED piece spelled s, or -1. */
static int special_piece(const struct tokenizer *t, const char *s)
{
    size_t n = tok_n_vocab(t), want = strlen(s);
    for (size_t id = 0; id < n; id++) {
        int type = tok_type(t, (int)id);
        if (type != TOK_TYPE_CONTROL && type != TOK_TYPE_USER_DEFINED)
            continue;
        size_t len;
        const char *p = tok_piece(t, (int)id, &len);
        if (len == want && memcmp(p, s, len) == 0)
            return (int)id;
    }
    return -1;
}

#define PUT_LIT(o, s) put_text((o), (s), sizeof(s) - 1)

/* The template over messages[0..n) into o (see chat.h for the rules). */
static int walk(struct chat_out *o, const struct job_message *m, size_t n)
{
    if (n == 0 || m[n - 1].role != JOB_ROLE_USER)
        return CHAT_ERR_INVALID;
    const struct tokenizer *t = o->t;
    int bos = tok_bos_id(t), eos = tok_eos_id(t);
    int inst = special_piece(t, "[INST]"), inst_end = special_piece(t, "[/INST]");
    int control = inst >= 0 && inst_end >= 0;
    const struct job_message *sys = m[0].role == JOB_ROLE_SYSTEM ? &m[0] : NULL;

    if (bos >= 0)
        put_id(o, bos);
    for (size_t i = sys ? 1 : 0; i < n; i++) {
        if (m[i].role == JOB_ROLE_USER) {
            if (control)
                put_id(o, inst);
            else
                PUT_LIT(o, "[INST] ");
            if (sys) {
                put_text(o, sys->content, sys->content_len);
                PUT_LIT(o, "\n\n");
                sys = NULL;
            }
            put_text(o, m[i].content, m[i].content_len);
            if (control)
                put_id(o, inst_end);
            else
                PUT_LIT(o, " [/INST]");
            end_part(o);
        } else if (m[i].role == JOB_ROLE_ASSISTANT) {
            put_text(o, m[i].content, m[i].content_len);
            end_part(o);
            if (eos >= 0)
                put_id(o, eos);
        }
    }
    end_part(o);
    return o->failed ? CHAT_ERR_NOMEM : 0;
}

int chat_encode(const struct tokenizer *t, const struct job_message *messages, size_t n, int **ids,
                size_t *n_ids)
{
    struct chat_out o = {.t = t};
    int rc = walk(&o, messages, n);
    free(o.buf);
    if (rc == 0 && !o.ids) /* a vocabulary without BOS, and empty turns */
        o.ids = malloc(sizeof(*o.ids));
    if (rc == 0 && !o.ids)
        rc = CHAT_ERR_NOMEM;
    if (rc < 0) {
        free(o.ids);
        o.ids = NULL;
        o.n_ids = 0;
    }
    *ids = o.ids;
    *n_ids = o.n_ids;
    return rc;
}

int chat_render(const struct tokenizer *t, const struct job_message *messages, size_t n,
                char **text, size_t *len)
{
    struct chat_out o = {.t = t, .render = 1};
    int rc = walk(&o, messages, n);
    if (rc == 0 && !o.buf)
        o.buf = calloc(1, 1);
    if (rc == 0 && !o.buf)
        rc = CHAT_ERR_NOMEM;
    if (rc < 0) {
        free(o.buf);
        o.buf = NULL;
        o.len = 0;
    }
    *text = o.buf;
    *len = o.len;
    return rc;
}
