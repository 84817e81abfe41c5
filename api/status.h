/*
 * status: the fleet's state as /health, /stats and /metrics report it.
 *
 * One thread reads the queue's counts from Redis every refresh period and
 * keeps the latest snapshot; the endpoints answer from it. Load balancers
 * and monitoring poll these endpoints hard, and this way 20,000 health
 * checks a second cost Redis four calls a second. A snapshot older than a
 * few periods (Redis hanging) counts as Redis being unreachable.
 */
#pragma once

#include <stdint.h>

#include "common/queue.h"

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

/* Stop the thread and free. NULL is a no-op. */
void status_stop(struct status *s);
