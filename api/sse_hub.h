/*
 * sse_hub: what sse.c (the streams' HTTP side) and sse_pump.c (the threads
 * that feed them) share. Private to those two files.
 *
 * The fields below a "guarded" comment are guarded by the hub's lock; the
 * others are set before a client or the hub is shared. Only the pump
 * unlinks and frees clients, so it may hold a client pointer unlocked;
 * libmicrohttpd's side only ever marks a client closed.
 */
#pragma once

#include <pthread.h>
#include <stdint.h>

#include "api/sse.h"

#define SSE_HUB_KEY_MAX 160

struct sse_client {
    struct sse *hub;
    char job[QUEUE_ID_MAX + 1];
    char key[SSE_HUB_KEY_MAX]; /* the job's stream */
    struct MHD_Connection *conn;
    int fd;
    int cancel_on_close;
    int deltas;      /* send the stream's deltas (0: Last-Event-ID was "done") */
    struct waiter w; /* WAITER_WATCH: outcome and info are read once finished is set */
    /* guarded by the hub's lock */
    struct sse_client *next, *prev; /* the hub's list */
    struct sse_wire_buf out;
    struct sse_wire_id last; /* the last stream entry appended */
    long attempt;            /* of the last delta appended, 0: none yet */
    int64_t sent_ms;         /* when something was last appended (pings) */
    int finished;            /* w is resolved: read the stream to its end, then the final event */
    int final_queued;        /* the final event is in out: end once out is sent */
    int ended;               /* the reader returned end of stream */
    int gone;                /* the client hung up while suspended */
    int closed;              /* nobody will read out again: the pump frees it */
    int suspended;           /* the reader suspended conn; whoever clears this resumes it */
};

struct sse {
    char prefix[65];
    char api_id[QUEUE_ID_MAX + 1];
    struct waiters *ws;
    int block_ms, ping_ms;
    size_t buffer_max;
    struct queue *q;             /* the pump's */
    int failing;                 /* the pump's last Redis call failed (logged once) */
    struct redis_conn *waker_rc; /* the waker's */
    pthread_t pump, waker;
    int pump_started, waker_started;
    pthread_mutex_t lock;
    pthread_cond_t pump_cond, waker_cond;
    /* guarded by lock */
    struct sse_client *clients;
    long count;
    int poked;          /* something changed since the pump last looked: do not block */
    int blocking;       /* the pump is in a blocking XREAD */
    long long pump_cid; /* the pump connection's CLIENT ID, 0 unknown */
    int unblock;        /* the waker should interrupt the pump's XREAD */
    int stopping;
    int released; /* sse_release_all ran */
};

/* Connections to resume once the lock is released. */
struct sse_hub_resumes {
    struct MHD_Connection **v;
    size_t n, cap;
};

/* Wake the pump: at once if it waits on its condition, through the waker if
 * it is blocked in Redis. Locked. */
void sse_hub_poke_locked(struct sse *h);

/* Clear c's suspension mark; returns the connection to resume, or NULL. Locked. */
struct MHD_Connection *sse_hub_unsuspend_locked(struct sse_client *c);

/* Events were appended to c at `now`: as sse_hub_unsuspend_locked. Locked. */
struct MHD_Connection *sse_hub_appended_locked(struct sse_client *c, int64_t now);

/* Remember c (may be NULL) to resume; resume them all (unlocked). */
void sse_hub_resumes_add(struct sse_hub_resumes *r, struct MHD_Connection *c);
void sse_hub_resumes_run(struct sse_hub_resumes *r);

/* Append c's final event from its waiter's outcome and mark it queued. Locked. */
void sse_hub_append_final_locked(struct sse_client *c);

/* Take c off the hub's list. Locked. */
void sse_hub_unlink_locked(struct sse *h, struct sse_client *c);

/* Forget c's waiter and free c (off the list, unlocked). */
void sse_hub_client_free(struct sse *h, struct sse_client *c);

/* The threads (sse_pump.c); arg is the hub. */
void *sse_pump_main(void *arg);
void *sse_pump_waker_main(void *arg);
