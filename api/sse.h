/*
 * sse: Server-Sent Events, a job's text as it is generated.
 *
 * POST /generate with "stream": true and GET /jobs/{id}/stream answer
 * text/event-stream (the events: sse_wire.h). Workers append each sample's
 * text deltas to the job's Redis Stream ({prefix}:stream:<id>) before they
 * finish the job, so the stream of a finished job is complete; the final
 * response lives in the job hash.
 *
 * How it holds many streams on few threads: a stream's response is a
 * libmicrohttpd content reader that hands out buffered event bytes and, when
 * there are none, suspends its connection. One pump thread per API instance
 * reads every open stream with one XREAD BLOCK (each client from its own
 * last entry id), appends the events to the clients' buffers and resumes
 * their connections; it also sends pings, notices clients that hung up
 * while suspended, and cancels the job of a POST /generate whose client went
 * away before the end. Completion comes from waiters.c (a WAITER_WATCH
 * waiter per stream: the inbox notification, the ticker's re-reads, or
 * shutdown): the pump then reads the stream to its end, appends the final
 * event, and the response ends once the buffer is sent. A second small
 * thread interrupts the pump's blocking XREAD (CLIENT UNBLOCK) when a job
 * finishes or a stream opens or closes, so nothing waits for the block to
 * time out.
 *
 * Memory: a client's unsent bytes are bounded: past buffer_max its stream is
 * not read again until the client has taken some (the final event is
 * appended whole).
 */
#pragma once

#include <stddef.h>

#include "api/sse_wire.h"
#include "api/waiters.h"
#include "common/queue.h"

struct MHD_Connection;
struct sse;
struct sse_client;

struct sse_opts {
    const struct redis_opts *redis;
    const struct queue_opts *queue; /* the key prefix */
    const char *api_id;             /* for connection names; copied */
    struct waiters *waiters;        /* borrowed: job completion */
    int block_ms;                   /* longest XREAD BLOCK (100) */
    int ping_ms;                    /* a ping after this much silence (15000) */
    size_t buffer_max;              /* unsent bytes per client before its stream pauses (65536) */
};

/* Start the pump and its waker, each with its own Redis connection. Returns
 * 0, or -1 with a message in err. */
int sse_start(struct sse **out, const struct sse_opts *o, char *err, size_t errlen);

/*
 * Stop the threads and free everything. libmicrohttpd must be stopped first
 * (every response released). Jobs are not cancelled. NULL is a no-op.
 */
void sse_stop(struct sse *h);

/* Streams open on this instance. Thread-safe. */
long sse_count(struct sse *h);

/*
 * Shutdown: end every open stream now with an error event that does not end
 * the job (type shutting_down, no id: the client resumes elsewhere with its
 * Last-Event-ID); their jobs go on. Streams opened later end the same way.
 * Touches no Redis. Thread-safe.
 */
void sse_release_all(struct sse *h);

/* Where a stream starts, from the request's Last-Event-ID header. */
struct sse_position {
    struct sse_wire_id after; /* deltas after this entry ({0, 0}: all) */
    int job_event;            /* begin with the job event (no Last-Event-ID) */
    int deltas;               /* send deltas at all (0: Last-Event-ID "done") */
};

/*
 * Parse a Last-Event-ID header value (NULL when absent): absent: everything,
 * job event first; "job": every delta; "done": only the final event; a
 * stream entry id: the deltas after it. Returns 0, or -1 when the value is
 * none of these.
 */
int sse_position_parse(const char *last_event_id, struct sse_position *out);

/*
 * Open a stream of job `job_id` for the request on conn (fd: its socket,
 * watched for hang-ups while suspended, or -1): the client is linked to the
 * pump and registered with the waiters, so call this before whatever lets
 * the job finish (enqueue) or reads its state. cancel_on_close: a client that
 * goes away before the final event cancels the job (POST /generate).
 * Returns 0 with *out set (owned by the caller until sse_client_respond or
 * sse_client_abandon), or -1 when out of memory. Thread-safe.
 */
int sse_client_open(struct sse *h, const char *job_id, const struct sse_position *pos,
                    int cancel_on_close, struct MHD_Connection *conn, int fd,
                    struct sse_client **out);

/* The client's waiter, to resolve it with what a first look at the job found
 * (waiters_resolve). Borrowed. */
struct waiter *sse_client_waiter(struct sse_client *c);

/* Give up on c before responding (the job could not be enqueued, or does not
 * exist): it is unregistered and freed by the pump; its job is not
 * cancelled. */
void sse_client_abandon(struct sse_client *c);

/*
 * Queue the 200 text/event-stream response on c's connection; c then belongs
 * to the response and the pump. Call from the access handler. Returns
 * MHD_YES or MHD_NO (then c is released as if the client had gone).
 */
int sse_client_respond(struct sse_client *c);
