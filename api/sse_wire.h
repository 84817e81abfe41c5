/*
 * sse_wire: the bytes of millrace's Server-Sent Events, and the ids that
 * resume them. No I/O and no locks: sse.c calls these under its own lock.
 *
 * The events of one stream, in order (data is one line of JSON):
 *
 *   id: job                 event: job     data: {"id":"<job id>"}
 *   id: <stream entry id>   event: delta   data: {"sample":N,"text":"..."}   (one per entry)
 *   id: done                event: done    data: <the job's Flywheel response, verbatim>
 *   id: done                event: error   data: {"error":{"type","message","field":null},"id"}
 *   : ping                  (a comment, after 15 s of silence)
 *
 * A stream ends with done or error. An error that does not end the job
 * (the API instance shutting down) carries no id, so a client that resumes
 * with its Last-Event-ID gets what came after its last delta.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Errors (negative). */
#define SSE_WIRE_ENOMEM (-1)
#define SSE_WIRE_EINVAL (-2)

/* Bytes waiting to be sent: p[off, len) is unsent. */
struct sse_wire_buf {
    char *p;
    size_t len, off, cap;
};

/* Unsent bytes in b. */
static inline size_t sse_wire_pending(const struct sse_wire_buf *b)
{
    return b->len - b->off;
}

/* Take n unsent bytes (n <= pending) as sent; an emptied buffer starts over
 * at the front (and gives back a large allocation). */
void sse_wire_consume(struct sse_wire_buf *b, size_t n);

/* Free what b holds and empty it. */
void sse_wire_buf_fini(struct sse_wire_buf *b);

/* A stream entry id, <ms>-<seq>; {0, 0} is "before the first entry". */
struct sse_wire_id {
    uint64_t ms, seq;
};

/* Parse "<ms>-<seq>" or "<ms>" (decimal, each fitting 64 bits). Returns 0 or
 * SSE_WIRE_EINVAL. */
int sse_wire_id_parse(const char *s, size_t len, struct sse_wire_id *out);

/* "<ms>-<seq>" into out (at least SSE_WIRE_ID_MAX bytes). */
#define SSE_WIRE_ID_MAX 48
void sse_wire_id_format(const struct sse_wire_id *id, char *out);

/* <0, 0, >0 as a is before, equal to or after b. */
int sse_wire_id_cmp(const struct sse_wire_id *a, const struct sse_wire_id *b);

/*
 * Append one event to b. Each returns 0 or SSE_WIRE_ENOMEM (b unchanged).
 * Strings are borrowed. text may hold any bytes (len of them): it is written
 * as a JSON string, control characters and NULs escaped.
 */
int sse_wire_job(struct sse_wire_buf *b, const char *job_id);
/* A delta; attempt > 1 (a re-run after a lost worker) is carried in its data. */
int sse_wire_delta(struct sse_wire_buf *b, const struct sse_wire_id *id, long attempt, int sample,
                   const char *text, size_t len);
/* "event: reset" with the new attempt: the text so far is void, it starts over. */
int sse_wire_reset(struct sse_wire_buf *b, long attempt);
/* result: the Flywheel JSON; a line break in it (there is none in compact
 * JSON) would start another data: line, which SSE joins back with "\n". */
int sse_wire_done(struct sse_wire_buf *b, const char *result);
/* final: 1 for an error that ends the job (id: done), 0 for one that does not. */
int sse_wire_error(struct sse_wire_buf *b, int final, const char *type, const char *message,
                   const char *job_id);
int sse_wire_ping(struct sse_wire_buf *b);
