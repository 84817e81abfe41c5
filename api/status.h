/*
 * status: the fleet's state as /health, /stats and /metrics report it.
 *
 * One thread reads the queue's counts and the live runners (with the info
 * each sends with its heartbeat: model, active sequences, KV-cache blocks,
 * tokens/s) from Redis every refresh period and keeps the latest snapshot;
 * the endpoints answer from it. Load balancers
 * and monitoring poll these endpoints hard, and this way 20,000 health
 * checks a second cost Redis four calls a second. A snapshot older than a
 * few periods (Redis hanging) counts as Redis being unreachable.
 */
#pragma once

#include <stdint.h>

#include <jansson.h>

#include "api/metrics.h"
#include "common/queue.h"

#define STATUS_RUNNERS_MAX 1024 /* runners listed in a snapshot */

struct status;

/* Start the refresher with its own connection; the first read happens before
 * this returns. Returns 0, or -1 with a message in err. */
int status_start(struct status **out, const struct redis_opts *ro, const struct queue_opts *qo,
                 int refresh_ms, char *err, size_t errlen);

/*
 * Copy the latest snapshot into *st. Returns 1 when Redis answered recently
 * (within three refresh periods, at least 2 s), else 0 with the reason in
 * why. Thread-safe.
 */
int status_get(struct status *s, struct queue_stats *st, char *why, size_t whylen);

/*
 * The live runners of the latest snapshot: *runners (may be NULL) receives a
 * new JSON array (json_decref it) of {"id", "beat_age_ms", ...the fields of
 * the runner's info object}, and *fleet (may be NULL) the sums over them of
 * active_sequences, kv_blocks_used, kv_blocks_total and tokens_per_s (a field
 * a runner does not report counts 0). *runners is NULL when out of memory.
 * Thread-safe.
 */
void status_get_fleet(struct status *s, struct metrics_fleet *fleet, json_t **runners);

/* Stop the thread and free. NULL is a no-op. */
void status_stop(struct status *s);
