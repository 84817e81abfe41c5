/*
 * status: a snapshot of the queue's counts and of the live runners,
 * refreshed by one thread (see status.h).
 *
 * Key decision: the runners' info JSON is parsed once per refresh, here,
 * into a ready array and its totals; a request deep-copies the array under
 * the lock, so no jansson value is ever shared between threads.
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
    json_t *runners; /* the array /stats shows (owned) */
    struct metrics_fleet fleet;
    int64_t ok_ms; /* when Redis last answered, 0: never */
    char why[256]; /* the last failure */
};

/* A number field of a runner's info, or 0. */
static double info_number(json_t *info, const char *key)
{
    json_t *v = json_object_get(info, key);
    return json_is_number(v) ? json_number_value(v) : 0.0;
}

/* The runners as /stats shows them (new array, or NULL when out of memory),
 * and their totals into *fleet. */
static json_t *runners_json(const struct queue_runner *r, int n, struct metrics_fleet *fleet)
{
    json_t *arr = json_array();
    memset(fleet, 0, sizeof(*fleet));
    for (int i = 0; arr && i < n; i++) {
        json_t *o =
            json_pack("{s:s, s:I}", "id", r[i].wid, "beat_age_ms", (json_int_t)r[i].beat_age_ms);
        json_t *info = r[i].info ? json_loads(r[i].info, 0, NULL) : NULL;
        if (o && json_is_object(info)) {
            const char *k;
            json_t *v;
            json_object_foreach(info, k, v)
            {
                if (strcmp(k, "id") != 0 && strcmp(k, "beat_age_ms") != 0)
                    json_object_set(o, k, v);
            }
            fleet->active_sequences += (long)info_number(info, "active_sequences");
            fleet->kv_blocks_used += (long)info_number(info, "kv_blocks_used");
            fleet->kv_blocks_total += (long)info_number(info, "kv_blocks_total");
            fleet->tokens_per_s += info_number(info, "tokens_per_s");
        }
        json_decref(info);
        if (!o || json_array_append_new(arr, o) < 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    return arr;
}

static void refresh(struct status *s)
{
    struct queue_stats st;
    struct queue_runner *runners = NULL;
    int n_runners = 0;
    struct metrics_fleet fleet;
    json_t *arr = NULL;
    int rc = queue_stats(s->q, &st);
    if (rc == 0)
        rc = queue_runners(s->q, STATUS_RUNNERS_MAX, &runners, &n_runners);
    if (rc == 0)
        arr = runners_json(runners, n_runners, &fleet);
    queue_runners_free(runners, n_runners);
    pthread_mutex_lock(&s->lock);
    if (rc == 0) {
        s->st = st;
        if (arr) {
            json_decref(s->runners);
            s->runners = arr;
            s->fleet = fleet;
            arr = NULL;
        }
        s->ok_ms = clock_now_ms();
        s->why[0] = '\0';
    } else {
        snprintf(s->why, sizeof(s->why), "redis unreachable: %s", queue_errstr(s->q));
    }
    pthread_mutex_unlock(&s->lock);
    json_decref(arr);
}

static void *status_main(void *arg)
{
    struct status *s = arg;
    while (!atomic_load(&s->stopping)) {
        pthread_mutex_lock(&s->lock);
        if (!atomic_load(&s->stopping))
            clock_cond_wait_ms(&s->wake, &s->lock, s->refresh_ms);
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
    clock_cond_init(&s->wake);
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

void status_get_fleet(struct status *s, struct metrics_fleet *fleet, json_t **runners)
{
    pthread_mutex_lock(&s->lock);
    if (fleet)
        *fleet = s->fleet;
    if (runners)
        *runners = s->runners ? json_deep_copy(s->runners) : json_array();
    pthread_mutex_unlock(&s->lock);
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
    json_decref(s->runners);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
