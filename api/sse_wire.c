/*
 * sse_wire: the bytes of millrace's Server-Sent Events (see sse_wire.h).
 *
 * Key decision: events are written straight into the client's buffer with a
 * small JSON string escaper, not built as jansson values: a delta is a few
 * bytes and there are many of them, and the text is passed through byte for
 * byte (only '"', '\\' and control characters are escaped), so the
 * concatenation of a sample's deltas is exactly what the worker wrote.
 */
#include "api/sse_wire.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/grow.h"

#define SSE_WIRE_KEEP_CAP 16384 /* an emptied buffer larger than this is freed */

void sse_wire_consume(struct sse_wire_buf *b, size_t n)
{
    b->off += n;
    if (b->off < b->len)
        return;
    b->off = b->len = 0;
    if (b->cap > SSE_WIRE_KEEP_CAP) {
        free(b->p);
        b->p = NULL;
        b->cap = 0;
    }
}

void sse_wire_buf_fini(struct sse_wire_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* Make room for n more bytes. 0 or SSE_WIRE_ENOMEM. */
static int reserve(struct sse_wire_buf *b, size_t n)
{
    if (b->len + n <= b->cap)
        return 0;
    if (b->off > 0) { /* slide the unsent bytes to the front first */
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + n <= b->cap)
            return 0;
    }
    return grow_array((void **)&b->p, &b->cap, b->len + n, 1) < 0 ? SSE_WIRE_ENOMEM : 0;
}

static void put(struct sse_wire_buf *b, const char *s, size_t n)
{
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void puts_(struct sse_wire_buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* The most bytes put_json_string writes for n input bytes. */
static size_t json_string_max(size_t n)
{
    return 2 + 6 * n;
}

/* s as a JSON string, quotes included. */
static void put_json_string(struct sse_wire_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char *o = b->p + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            *o++ = '\\';
            *o++ = (char)ch;
        } else if (ch == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else if (ch == '\r') {
            *o++ = '\\';
            *o++ = 'r';
        } else if (ch == '\t') {
            *o++ = '\\';
            *o++ = 't';
        } else if (ch < 0x20) {
            memcpy(o, "\\u00", 4);
            o[4] = hex[ch >> 4];
            o[5] = hex[ch & 15];
            o += 6;
        } else {
            *o++ = (char)ch;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
}

int sse_wire_id_parse(const char *s, size_t len, struct sse_wire_id *out)
{
    uint64_t part[2] = {0, 0};
    int k = 0, digits = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '-' && k == 0 && digits > 0) {
            k = 1;
            digits = 0;
            continue;
        }
        if (c < '0' || c > '9' || digits >= 20)
            return SSE_WIRE_EINVAL;
        uint64_t d = (uint64_t)(c - '0');
        if (part[k] > (UINT64_MAX - d) / 10)
            return SSE_WIRE_EINVAL;
        part[k] = part[k] * 10 + d;
        digits++;
    }
    if (digits == 0)
        return SSE_WIRE_EINVAL;
    out->ms = part[0];
    out->seq = part[1];
    return 0;
}

void sse_wire_id_format(const struct sse_wire_id *id, char *out)
{
    snprintf(out, SSE_WIRE_ID_MAX, "%" PRIu64 "-%" PRIu64, id->ms, id->seq);
}

int sse_wire_id_cmp(const struct sse_wire_id *a, const struct sse_wire_id *b)
{
    if (a->ms != b->ms)
        return a->ms < b->ms ? -1 : 1;
    if (a->seq != b->seq)
        return a->seq < b->seq ? -1 : 1;
    return 0;
}

int sse_wire_job(struct sse_wire_buf *b, const char *job_id)
{
    size_t n = strlen(job_id);
    if (reserve(b, 64 + json_string_max(n)) < 0)
        return SSE_WIRE_ENOMEM;
    puts_(b, "id: job\nevent: job\ndata: {\"id\":");
    put_json_string(b, job_id, n);
    puts_(b, "}\n\n");
    return 0;
}

int sse_wire_reset(struct sse_wire_buf *b, long attempt)
{
    char ev[96];
    int n = snprintf(ev, sizeof(ev), "event: reset\ndata: {\"attempt\":%ld}\n\n", attempt);
    if (n < 0 || (size_t)n >= sizeof(ev) || reserve(b, (size_t)n))
        return SSE_WIRE_ENOMEM;
    put(b, ev, (size_t)n);
    return 0;
}

int sse_wire_delta(struct sse_wire_buf *b, const struct sse_wire_id *id, long attempt, int sample,
                   const char *text, size_t len)
{
    char head[128], tail[48];
    char eid[SSE_WIRE_ID_MAX];
    sse_wire_id_format(id, eid);
    int hn = snprintf(head, sizeof(head),
                      "id: %s\nevent: delta\ndata: {\"sample\":%d,\"text\":", eid, sample);
    /* a re-run carries its attempt; only then, so first runs keep the plain shape */
    int tn = attempt > 1 ? snprintf(tail, sizeof(tail), ",\"attempt\":%ld}\n\n", attempt)
                         : snprintf(tail, sizeof(tail), "}\n\n");
    if (hn < 0 || (size_t)hn >= sizeof(head) || tn < 0 || (size_t)tn >= sizeof(tail) ||
        reserve(b, (size_t)hn + json_string_max(len) + (size_t)tn) < 0)
        return SSE_WIRE_ENOMEM;
    put(b, head, (size_t)hn);
    put_json_string(b, text, len);
    put(b, tail, (size_t)tn);
    return 0;
}

/* The bytes put_data writes for text (n bytes). */
static size_t data_size(const char *text, size_t n)
{
    size_t lines = 1;
    for (size_t i = 0; i < n; i++)
        lines += text[i] == '\n' || text[i] == '\r';
    return n + lines * 7 + 1;
}

/* "data: " lines for text (split at line breaks), then the blank line.
 * Room must have been reserved (data_size). */
static void put_data(struct sse_wire_buf *b, const char *text, size_t n)
{
    const char *p = text, *end = text + n;
    for (;;) {
        const char *e = p;
        while (e < end && *e != '\n' && *e != '\r')
            e++;
        puts_(b, "data: ");
        put(b, p, (size_t)(e - p));
        puts_(b, "\n");
        if (e == end)
            break;
        p = e + (e[0] == '\r' && e + 1 < end && e[1] == '\n' ? 2 : 1);
    }
    puts_(b, "\n");
}

int sse_wire_done(struct sse_wire_buf *b, const char *result)
{
    static const char head[] = "id: done\nevent: done\n";
    size_t n = strlen(result);
    if (reserve(b, sizeof(head) - 1 + data_size(result, n)) < 0)
        return SSE_WIRE_ENOMEM;
    puts_(b, head);
    put_data(b, result, n);
    return 0;
}

int sse_wire_error(struct sse_wire_buf *b, int final, const char *type, const char *message,
                   const char *job_id)
{
    size_t tn = strlen(type), mn = strlen(message), jn = strlen(job_id);
    if (reserve(b, 96 + json_string_max(tn) + json_string_max(mn) + json_string_max(jn)) < 0)
        return SSE_WIRE_ENOMEM;
    puts_(b, final ? "id: done\nevent: error\ndata: {\"error\":{\"type\":"
                   : "event: error\ndata: {\"error\":{\"type\":");
    put_json_string(b, type, tn);
    puts_(b, ",\"message\":");
    put_json_string(b, message, mn);
    puts_(b, ",\"field\":null},\"id\":");
    put_json_string(b, job_id, jn);
    puts_(b, "}\n\n");
    return 0;
}

int sse_wire_ping(struct sse_wire_buf *b)
{
    if (reserve(b, 8) < 0)
        return SSE_WIRE_ENOMEM;
    puts_(b, ": ping\n\n");
    return 0;
}
