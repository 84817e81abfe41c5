/*
 * status: a snapshot of the queue's counts, refreshed by one thread (see
 * status.h).
 */
#include "api/status.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"

struct status {
    struct queue *q;
    int refresh_ms;
    pthread_t thread;
    int started;
    atomic_int stopping;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    /* guarded by lock */
    struct queue_stats st;
    int64_t ok_ms; /* when Redis last answered, 0: never */
    char why[256]; /* the last failure */
};

static void refresh(struct status *s)
{
    struct queue_stats st;
    int rc = queue_stats(s->q, &st);
    pthread_mutex_lock(&s->lock);
    if (rc == 0) {
        s->st = st;
        s->ok_ms = clock_now_ms();
        s->why[0] = '\0';
    } else {
        snprintf(s->why, sizeof(s->why), "redis unreachable: %s", queue_errstr(s->q));
    }
    pthread_mutex_unlock(&s->lock);
}

static void *status_main(void *arg)
{
    struct status *s = arg;
    while (!atomic_load(&s->stopping)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)s->refresh_ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_mutex_lock(&s->lock);
        if (!atomic_load(&s->stopping))
            pthread_cond_timedwait(&s->wake, &s->lock, &ts);
        pthread_mutex_unlock(&s->lock);
        if (!atomic_load(&s->stopping))
            refresh(s);
    }
    return NULL;
}

int status_start(struct status **out, const struct redis_opts *ro, const struct queue_opts *qo,
                 int refresh_ms, char *err, size_t errlen)
{
    *out = NULL;
    struct status *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->refresh_ms = refresh_ms > 0 ? refresh_ms : 250;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->wake, NULL);
    struct redis_opts r = *ro;
    r.retry_ms = 0; /* a snapshot must not lag behind an outage */
    if (queue_create(&s->q, &r, qo, "mr:api-status", err, errlen) < 0)
        goto fail;
    refresh(s);
    if (pthread_create(&s->thread, NULL, status_main, s) != 0) {
        snprintf(err, errlen, "cannot start the status thread");
        goto fail;
    }
    s->started = 1;
    *out = s;
    return 0;
fail:
    status_stop(s);
    return -1;
}

int status_get(struct status *s, struct queue_stats *st, char *why, size_t whylen)
{
    int64_t fresh = 3 * (int64_t)s->refresh_ms;
    if (fresh < 2000)
        fresh = 2000;
    pthread_mutex_lock(&s->lock);
    *st = s->st;
    int ok = s->ok_ms > 0 && clock_now_ms() - s->ok_ms <= fresh;
    if (!ok)
        snprintf(why, whylen, "%s", s->why[0] ? s->why : "redis unreachable: no answer lately");
    pthread_mutex_unlock(&s->lock);
    return ok;
}

void status_stop(struct status *s)
{
    if (!s)
        return;
    atomic_store(&s->stopping, 1);
    pthread_mutex_lock(&s->lock);
    pthread_cond_broadcast(&s->wake);
    pthread_mutex_unlock(&s->lock);
    if (s->started)
        pthread_join(s->thread, NULL);
    queue_destroy(s->q);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
