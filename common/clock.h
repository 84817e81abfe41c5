/*
 * clock: the few time functions everything uses. Header only.
 *
 * Monotonic milliseconds for timeouts and backoff (never the wall clock, which
 * jumps); wall-clock seconds only for timestamps that users read. Liveness of
 * workers is judged by the Redis server clock, not by these (see queue.c).
 */
#pragma once

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* Monotonic time in milliseconds. */
static inline int64_t clock_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wall-clock time as Unix seconds with a fraction (for `created`/`finished`). */
static inline double clock_wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Make a condition variable whose timed waits count on the monotonic clock,
 * so that a jump of the wall clock (NTP at boot, a VM resumed) neither
 * stretches nor cuts them. Returns what pthread_cond_init returns. */
static inline int clock_cond_init(pthread_cond_t *c)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

/* Wait on c (made by clock_cond_init; m locked) until signalled or `ms`
 * milliseconds have passed. */
static inline void clock_cond_wait_ms(pthread_cond_t *c, pthread_mutex_t *m, int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(c, m, &ts);
}

/* Sleep `ms` milliseconds, resuming after signals. */
static inline void clock_sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}
