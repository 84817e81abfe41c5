/*
 * serve: the worker's Redis loop (see serve.h).
 *
 * Key decisions:
 * - Two Redis connections: the main loop's (claim, finish, stream) and the
 *   heartbeat thread's (beat, reap), so a long step never delays a beat and
 *   the runner is never presumed dead while it works. The beat's answer
 *   (which of our jobs are no longer ours) is handed to the main loop, which
 *   alone touches the scheduler.
 * - Every finish (a result, a failure, an engine failure's hand-back) is
 *   kept until Redis has recorded it: one that fails (Redis down) is retried
 *   every loop, so no job is left in our processing list while we live. The
 *   fence makes a retry after a lost reply harmless. Room for the results a
 *   step can produce is made before the step, so none is ever dropped.
 * - SIGTERM stops a model download too (the .part is kept for a resume).
 */
#include "worker/serve.h"

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/grow.h"
#include "common/ids.h"
#include "common/job.h"
#include "common/log.h"
#include "common/queue.h"
#include "worker/fetch.h"
#include "worker/model.h"
#include "worker/scheduler.h"

#define SERVE_CLAIM_MAX 8

static atomic_int stop_signal;

static void on_signal(int sig)
{
    atomic_store(&stop_signal, sig);
}

static const char *env_get(const char *name)
{
    return getenv(name);
}

/* A finish Redis has not recorded yet. */
struct serve_finish {
    struct sched_job *job; /* outcome DONE: the finished job (taken), else NULL */
    char id[QUEUE_ID_MAX + 1];
    long attempt;
    enum queue_outcome outcome;
    char why[300]; /* the value when not DONE */
};

struct serve {
    struct queue *q;  /* main loop */
    struct queue *hq; /* heartbeat thread */
    struct sched *sched;
    const struct model *model;
    char wid[QUEUE_ID_MAX + 1];
    int heartbeat_ms;
    int max_seqs;
    const char *device;

    pthread_mutex_t lock; /* guards the fields below, shared with the beat thread */
    char info[512];       /* what the next beat sends */
    char (*abort_ids)[QUEUE_ID_MAX + 1];
    size_t n_abort, cap_abort;
    int lost; /* the runner was declared dead */
    int beat_stop;

    struct serve_finish *pending; /* not recorded yet, in order */
    size_t n_pending, cap_pending;
    struct queue_delta *qd; /* one step's deltas for Redis (reused) */
    size_t cap_qd;
};

static void make_wid(char out[QUEUE_ID_MAX + 1])
{
    char host[48] = "host", rnd[QUEUE_ID_MAX + 1];
    gethostname(host, sizeof(host) - 1);
    ids_job_id(rnd);
    snprintf(out, QUEUE_ID_MAX + 1, "w-%.24s-%d-%.8s", host, (int)getpid(), rnd);
    for (char *p = out; *p; p++)
        if (*p <= ' ' || *p == 0x7f)
            *p = '_';
}

static void *beat_main(void *arg)
{
    struct serve *sv = arg;
    for (;;) {
        char info[512], wid[QUEUE_ID_MAX + 1];
        pthread_mutex_lock(&sv->lock);
        int stop = sv->beat_stop;
        memcpy(info, sv->info, sizeof(info));
        memcpy(wid, sv->wid, sizeof(wid));
        pthread_mutex_unlock(&sv->lock);
        if (stop)
            break;
        struct queue_owned *owned = NULL;
        int n = 0;
        int rc = queue_heartbeat(sv->hq, wid, info, &owned, &n);
        pthread_mutex_lock(&sv->lock);
        int current = strcmp(wid, sv->wid) == 0; /* not a beat for a runner id given up */
        if (rc == QUEUE_ELOST && current) {
            sv->lost = 1;
        } else if (rc == 0 && current) {
            /* out of memory: the next beat reports the rest again */
            for (int i = 0; i < n; i++) {
                if (!owned[i].abort)
                    continue;
                if (grow_array((void **)&sv->abort_ids, &sv->cap_abort, sv->n_abort + 1,
                               sizeof(*sv->abort_ids)) < 0)
                    break;
                memcpy(sv->abort_ids[sv->n_abort++], owned[i].id, QUEUE_ID_MAX + 1);
            }
        } else if (rc < 0) {
            log_warn("heartbeat failed: %s", queue_errstr(sv->hq));
        }
        pthread_mutex_unlock(&sv->lock);
        free(owned);
        struct queue_reap_result rr;
        queue_reap(sv->hq, &rr); /* the lease makes one runner do it per period */
        int64_t until = clock_now_ms() + sv->heartbeat_ms;
        while (clock_now_ms() < until) {
            pthread_mutex_lock(&sv->lock);
            stop = sv->beat_stop;
            pthread_mutex_unlock(&sv->lock);
            if (stop)
                break;
            clock_sleep_ms(20);
        }
    }
    return NULL;
}

static void update_info(struct serve *sv)
{
    struct sched_stats st;
    sched_stats(sv->sched, &st);
    /* the model name came from the file: keep the JSON valid whatever it holds */
    char name[101];
    snprintf(name, sizeof(name), "%.100s", sv->model->cfg.name);
    for (char *p = name; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < ' ')
            *p = '_';
    pthread_mutex_lock(&sv->lock);
    snprintf(sv->info, sizeof(sv->info),
             "{\"model\":\"%s\",\"device\":\"%s\",\"active_sequences\":%d,\"jobs\":%d,"
             "\"kv_blocks_used\":%d,\"kv_blocks_total\":%d,\"tokens_per_s\":%.1f,"
             "\"max_batch\":%d,\"pid\":%d}",
             name, sv->device, st.active_sequences, st.jobs, st.kv_blocks_used, st.kv_blocks_total,
             st.tokens_per_s, sv->max_seqs, (int)getpid());
    pthread_mutex_unlock(&sv->lock);
}

/* Send the finishes Redis has not recorded yet, in order; the rest wait for
 * the next call. A connection failure stops the pass: each further call
 * would wait out the retry time again. */
static void record_results(struct serve *sv)
{
    size_t kept = 0;
    int down = 0;
    for (size_t i = 0; i < sv->n_pending; i++) {
        struct serve_finish *f = &sv->pending[i];
        const char *value = f->job ? f->job->result : f->why;
        int recorded = 0;
        int rc = down
                     ? QUEUE_EDOWN
                     : queue_finish_timed(sv->q, sv->wid, f->id, f->attempt, f->outcome, value,
                                          strlen(value), f->job ? f->job->timing : NULL, &recorded);
        if (rc < 0) {
            if (!down)
                log_warn("job %s: cannot record its %s yet (%s); will retry", f->id,
                         f->job ? "result" : "failure", queue_errstr(sv->q));
            down = rc == QUEUE_EDOWN;
            sv->pending[kept++] = *f;
            continue;
        }
        if (!f->job)
            continue;
        if (!recorded)
            log_info("job %s: finished, but it was no longer ours (cancelled or re-run)", f->id);
        else
            log_debug("job %s: done", f->id);
        sched_job_free(f->job);
    }
    sv->n_pending = kept;
}

/* Queue a finish for record_results; room must have been made (make_room). */
static void finish_later(struct serve *sv, struct sched_job *job, const char *id, long attempt,
                         enum queue_outcome outcome, const char *why)
{
    struct serve_finish *f = &sv->pending[sv->n_pending++];
    f->job = job;
    snprintf(f->id, sizeof(f->id), "%s", id);
    f->attempt = attempt;
    f->outcome = outcome;
    snprintf(f->why, sizeof(f->why), "%s", why ? why : "");
}

/* Make room for n more finishes. 0, or -1 when out of memory. */
static int make_room(struct serve *sv, size_t n)
{
    return grow_array((void **)&sv->pending, &sv->cap_pending, sv->n_pending + n,
                      sizeof(*sv->pending));
}

/* Fail a job that cannot run (the request's fault, or this worker's limits),
 * or (RETRY) hand back one this worker could not finish. Without memory to
 * keep the finish, it is sent once at once. */
static void fail_job(struct serve *sv, const char *id, long attempt, enum queue_outcome outcome,
                     const char *why)
{
    log_info("job %s %s: %s", id, outcome == QUEUE_OUTCOME_RETRY ? "handed back" : "failed", why);
    if (make_room(sv, 1) == 0) {
        finish_later(sv, NULL, id, attempt, outcome, why);
        return;
    }
    int recorded;
    if (queue_finish(sv->q, sv->wid, id, attempt, outcome, why, strlen(why), &recorded) < 0)
        log_warn("job %s: cannot record its failure: %s", id, queue_errstr(sv->q));
}

static void take_claimed(struct serve *sv, struct queue_claimed *c)
{
    struct job_limits lim = job_limits_default();
    lim.max_tokens_limit = 100000000;
    lim.max_num_samples = 100000;
    lim.max_text_bytes = 1 << 30;
    lim.max_stop = 1000;
    lim.max_stop_len = 1 << 20;
    lim.max_eos_ids = 100000;
    struct job_request *req = NULL;
    struct job_error je;
    char err[600];
    if (job_request_parse(&req, c->payload, c->payload_len, &lim, &je, NULL) != 0) {
        snprintf(err, sizeof(err), "invalid_request: %s", je.message);
        fail_job(sv, c->id, c->attempt, QUEUE_OUTCOME_FAILED, err);
        return;
    }
    if (sched_submit_take(sv->sched, c->id, c->attempt, c->created, req, err, sizeof(err)) < 0)
        fail_job(sv, c->id, c->attempt, QUEUE_OUTCOME_FAILED, err);
}

/* Drop what the heartbeat said is no longer ours, and take it off our
 * processing list (fenced; one that fails is reported again next beat). */
static void apply_aborts(struct serve *sv)
{
    pthread_mutex_lock(&sv->lock);
    char(*ids)[QUEUE_ID_MAX + 1] = sv->abort_ids;
    size_t n = sv->n_abort;
    sv->abort_ids = NULL;
    sv->n_abort = sv->cap_abort = 0;
    pthread_mutex_unlock(&sv->lock);
    for (size_t i = 0; i < n; i++) {
        int rec;
        if (sched_cancel(sv->sched, ids[i]))
            log_info("job %s: cancelled or taken over; dropped", ids[i]);
        queue_finish(sv->q, sv->wid, ids[i], 0, QUEUE_OUTCOME_RELEASE, NULL, 0, &rec);
    }
    free(ids);
}

/*
 * Drop every job the scheduler holds. why NULL: Redis gets them back another
 * way (the reaper, or queue_deregister); else each is handed back now,
 * charged (RETRY, so a job that keeps breaking workers is buried).
 */
static void drop_all(struct serve *sv, const char *why)
{
    char ids[256][QUEUE_ID_MAX + 1];
    long attempts[256];
    int n;
    while ((n = sched_jobs(sv->sched, ids, attempts, 256)) > 0)
        for (int i = 0; i < n && i < 256; i++) {
            if (why)
                fail_job(sv, ids[i], attempts[i], QUEUE_OUTCOME_RETRY, why);
            sched_cancel(sv->sched, ids[i]);
        }
}

/* One step's text to the jobs' streams, in one round trip. A job's first
 * append and its last (it is in done) (re)set the stream's TTL. */
static void stream_deltas(struct serve *sv, struct sched_delta *d, int n, struct sched_job **done,
                          int n_done)
{
    if (n == 0)
        return;
    if (grow_array((void **)&sv->qd, &sv->cap_qd, (size_t)n, sizeof(*sv->qd)) < 0) {
        log_warn("streaming %d delta(s) failed: out of memory", n);
        return;
    }
    for (int i = 0; i < n; i++) {
        struct sched_job *j = d[i].job;
        int last = 0;
        for (int k = 0; k < n_done && !last; k++)
            last = done[k] == j;
        sv->qd[i] = (struct queue_delta){j->id,     j->attempt, d[i].sample,
                                         d[i].text, d[i].len,   !j->streamed || last};
    }
    if (queue_stream_append(sv->q, sv->qd, n) < 0) {
        log_warn("streaming %d delta(s) failed: %s", n, queue_errstr(sv->q));
        return; /* a first append is tried again, for its TTL */
    }
    for (int i = 0; i < n; i++)
        d[i].job->streamed = 1;
}

int serve_main(int argc, char **argv)
{
    const char *model_path = NULL, *cache_dir = NULL, *model_sha = NULL, *redis_url = NULL,
               *prefix = NULL, *device = NULL, *log_level = NULL;
    long long threads, max_seqs, max_tokens, kv_blocks, kv_mb, block_size, hb_ms, ttl_ms, grace;
    const struct config_option options[] = {
        {"model", "MILLRACE_MODEL", CONFIG_STRING, &model_path, NULL, 0, 0, "MODEL",
         "GGUF model: a path, an http(s) URL or hf:owner/repo/file.gguf[@revision] "
         "(downloaded once into the cache, resumed if interrupted)."},
        {"cache-dir", "MILLRACE_CACHE", CONFIG_STRING, &cache_dir, NULL, 0, 0, "DIR",
         "Where downloaded models are kept (default $XDG_CACHE_HOME/millrace or "
         "~/.cache/millrace). HF_TOKEN is sent to Hugging Face for gated models."},
        {"model-sha256", "MILLRACE_MODEL_SHA256", CONFIG_STRING, &model_sha, NULL, 0, 0, "HEX",
         "Expected sha256 of the model file, checked after a download."},
        {"redis", "MILLRACE_REDIS", CONFIG_STRING, &redis_url, "redis://127.0.0.1:6379", 0, 0,
         "URL", "Redis: redis://[[user]:password@]host[:port][/db] or a unix socket path."},
        {"redis-prefix", "MILLRACE_REDIS_PREFIX", CONFIG_STRING, &prefix, "{mr}", 0, 0, "PREFIX",
         "Prefix of every Redis key (the same on APIs and workers)."},
        {"device", "MILLRACE_DEVICE", CONFIG_STRING, &device, "cpu", 0, 0, "DEV", "cpu."},
        {"threads", "MILLRACE_THREADS", CONFIG_INT, &threads, "0", 0, 256, "N",
         "CPU threads (0: all cores)."},
        {"max-batch", "MILLRACE_MAX_BATCH", CONFIG_INT, &max_seqs, "32", 1, 4096, "N",
         "Samples generating at once."},
        {"max-batch-tokens", "MILLRACE_MAX_BATCH_TOKENS", CONFIG_INT, &max_tokens, "256", 1, 65536,
         "N", "Tokens per forward step (decode tokens plus prompt chunks)."},
        {"kv-blocks", "MILLRACE_KV_BLOCKS", CONFIG_INT, &kv_blocks, "0", 0, 100000000, "N",
         "KV cache blocks (0: from --kv-cache-mb)."},
        {"kv-cache-mb", "MILLRACE_KV_CACHE_MB", CONFIG_INT, &kv_mb, "1024", 1, 10000000, "MB",
         "KV cache size when --kv-blocks is 0."},
        {"block-size", "MILLRACE_BLOCK_SIZE", CONFIG_INT, &block_size, "16", 1, 4096, "N",
         "Positions per KV block."},
        {"heartbeat-ms", "MILLRACE_HEARTBEAT_MS", CONFIG_INT, &hb_ms, "1000", 10, 60000, "MS",
         "How often to beat (and to learn of cancelled jobs)."},
        {"worker-ttl-ms", "MILLRACE_WORKER_TTL_MS", CONFIG_INT, &ttl_ms, "15000", 100, 3600000,
         "MS", "A runner silent this long is dead (the same on every API and worker)."},
        {"shutdown-grace-s", "MILLRACE_SHUTDOWN_GRACE_S", CONFIG_INT, &grace, "30", 0, 86400, "S",
         "On SIGTERM, how long running jobs may finish before they are handed back."},
        {"log-level", "MILLRACE_LOG_LEVEL", CONFIG_STRING, &log_level, "info", 0, 0, "LEVEL",
         "debug, info, warn or error."},
    };
    const struct config_spec spec = {"millrace-worker serve --model FILE [--redis URL] [options]",
                                     "Serve jobs from the Redis queue with continuous batching.",
                                     options, sizeof(options) / sizeof(options[0])};
    char err[600];
    int rc = config_parse(&spec, argc, argv, env_get, err, sizeof(err));
    if (rc == CONFIG_HELP) {
        config_print_help(&spec, stdout);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "millrace-worker serve: %s\n", err);
        return 2;
    }
    enum log_level level;
    if (log_level_parse(log_level, &level) < 0) {
        fprintf(stderr,
                "millrace-worker serve: --log-level: '%s' is not debug, info, warn or "
                "error\n",
                log_level);
        return 2;
    }
    log_setup(level, "worker");
    if (!model_path) {
        fprintf(stderr, "millrace-worker serve: --model is required\n");
        return 2;
    }
    struct redis_opts ro;
    redis_opts_default(&ro);
    if (redis_url_parse(redis_url, &ro.target, err, sizeof(err)) < 0) {
        fprintf(stderr, "millrace-worker serve: --redis: %s\n", err);
        return 2;
    }
    ro.retry_ms = 2000;
    struct queue_opts qo;
    queue_opts_default(&qo);
    qo.prefix = prefix;
    qo.worker_ttl_ms = (int)ttl_ms;
    qo.reap_lease_ms = (int)(hb_ms > 1000 ? hb_ms : 1000);

    struct serve sv;
    memset(&sv, 0, sizeof(sv));
    pthread_mutex_init(&sv.lock, NULL);
    sv.heartbeat_ms = (int)hb_ms;
    sv.max_seqs = (int)max_seqs;
    sv.device = device;
    struct model *model = NULL;
    pthread_t beat;
    int registered = 0, beat_started = 0, status = 1;

    /* from here on SIGTERM/SIGINT stop us gracefully, a download included */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    char model_file[PATH_MAX];
    struct fetch_opts fo = {
        .cache_dir = cache_dir, .sha256 = model_sha, .retries = 3, .cancel = &stop_signal};
    rc = fetch_resolve_model(model_path, &fo, model_file, sizeof(model_file), err, sizeof(err));
    if (rc == FETCH_ECANCELLED) {
        log_info("stopped by a signal: %s", err);
        status = 0;
        goto out;
    }
    if (rc < 0) {
        log_error("%s", err);
        goto out;
    }
    if (model_load(&model, model_file, err, sizeof(err)) < 0) {
        log_error("%s", err);
        goto out;
    }
    sv.model = model;
    if (kv_blocks == 0) {
        const struct model_config *c = &model->cfg;
        double block_bytes =
            2.0 * 2.0 * c->n_layers * (double)block_size * c->n_kv_heads * c->head_dim;
        kv_blocks = (long long)((double)kv_mb * 1048576.0 / block_bytes);
        if (kv_blocks < 1)
            kv_blocks = 1;
    }
    struct sched_opts so = {.device = device,
                            .n_threads = (int)threads,
                            .max_seqs = (int)max_seqs,
                            .max_batch_tokens =
                                (int)(max_tokens < max_seqs ? max_seqs : max_tokens),
                            .block_size = (int)block_size,
                            .kv_blocks = (int)kv_blocks};
    const char *fail = getenv("MILLRACE_FAIL_AFTER_STEPS"); /* tests only: not in --help */
    if (fail && atoi(fail) > 0) {
        so.fail_after_steps = atoi(fail);
        log_warn("MILLRACE_FAIL_AFTER_STEPS=%d: every step after that many fails (a test)",
                 so.fail_after_steps);
    }
    if (sched_create(&sv.sched, model, &so, err, sizeof(err)) < 0) {
        log_error("%s", err);
        goto out;
    }
    if (atomic_load(&stop_signal)) {
        status = 0;
        goto out;
    }
    if (queue_create(&sv.q, &ro, &qo, "mr:worker", err, sizeof(err)) < 0 ||
        queue_create(&sv.hq, &ro, &qo, "mr:worker-beat", err, sizeof(err)) < 0) {
        log_error("%s", err);
        goto out;
    }
    make_wid(sv.wid);
    update_info(&sv);
    while (queue_register(sv.q, sv.wid, sv.info) < 0) { /* Redis down at start: wait for it */
        if (atomic_load(&stop_signal)) {
            status = 0;
            goto out;
        }
        clock_sleep_ms(500);
    }
    registered = 1;
    char where[300];
    redis_target_describe(&ro.target, where, sizeof(where));
    log_info("serving %s (%s, %s) as runner %s; Redis %s, prefix %s; %d samples at once, "
             "%lld KV blocks of %lld",
             model->cfg.name, model_weight_type_name(model), device, sv.wid, where, prefix,
             (int)max_seqs, kv_blocks, block_size);
    if (pthread_create(&beat, NULL, beat_main, &sv) != 0) {
        log_error("cannot start the heartbeat thread");
        goto out;
    }
    beat_started = 1;

    int64_t drain_until = 0, last_info = 0;
    for (;;) {
        int sig = atomic_load(&stop_signal);
        if (sig && !drain_until) {
            drain_until = clock_now_ms() + grace * 1000;
            log_info("%s: no new jobs; letting %d running job(s) finish for up to %lld s",
                     sig == SIGTERM ? "SIGTERM" : "SIGINT", sched_jobs(sv.sched, NULL, NULL, 0),
                     grace);
        }
        if (drain_until && (!sched_busy(sv.sched) || clock_now_ms() >= drain_until))
            break;

        pthread_mutex_lock(&sv.lock);
        int lost = sv.lost;
        sv.lost = 0;
        pthread_mutex_unlock(&sv.lock);
        if (lost) {
            log_warn("runner %s was declared dead (a pause longer than the ttl?): dropping its "
                     "jobs, registering anew",
                     sv.wid);
            drop_all(&sv, NULL); /* the reaper has requeued them */
            pthread_mutex_lock(&sv.lock);
            make_wid(sv.wid);
            pthread_mutex_unlock(&sv.lock);
            queue_register(sv.q, sv.wid, sv.info);
        }
        apply_aborts(&sv);

        if (!drain_until && sched_has_room(sv.sched)) {
            struct queue_claimed claimed[SERVE_CLAIM_MAX];
            int n = 0;
            int block = sched_busy(sv.sched) ? 0 : 500;
            rc = queue_claim(sv.q, sv.wid, SERVE_CLAIM_MAX, block, claimed, &n);
            if (rc == QUEUE_ELOST) {
                pthread_mutex_lock(&sv.lock);
                sv.lost = 1;
                pthread_mutex_unlock(&sv.lock);
            } else if (rc < 0 && !sched_busy(sv.sched)) {
                clock_sleep_ms(200); /* Redis trouble: the connection logs it */
            }
            for (int i = 0; i < n; i++) {
                log_debug("job %s: claimed (attempt %ld)", claimed[i].id, claimed[i].attempt);
                take_claimed(&sv, &claimed[i]);
            }
            queue_claimed_fini(claimed, n);
        }

        /* every job held may finish in this step: room for all their results first */
        if (sched_busy(sv.sched) &&
            make_room(&sv, (size_t)sched_jobs(sv.sched, NULL, NULL, 0)) < 0) {
            log_warn("out of memory for results; the step waits");
            clock_sleep_ms(100);
        } else if (sched_busy(sv.sched)) {
            struct sched_delta *deltas;
            struct sched_job **done;
            int n_deltas, n_done;
            if (sched_step(sv.sched, &deltas, &n_deltas, &done, &n_done, err, sizeof(err)) < 0) {
                char why[300];
                snprintf(why, sizeof(why), "worker error: %.280s", err);
                log_error("the engine failed: %s; handing every job back", err);
                drop_all(&sv, why);
                goto out; /* the backend may be broken: exit 1 */
            }
            stream_deltas(&sv, deltas, n_deltas, done, n_done);
            for (int i = 0; i < n_done; i++)
                finish_later(&sv, done[i], done[i]->id, done[i]->attempt, QUEUE_OUTCOME_DONE, NULL);
        }
        if (sv.n_pending > 0)
            record_results(&sv);
        if (clock_now_ms() - last_info >= sv.heartbeat_ms / 2) {
            update_info(&sv);
            last_info = clock_now_ms();
        }
    }
    status = 0;
out:
    if (beat_started) {
        pthread_mutex_lock(&sv.lock);
        sv.beat_stop = 1;
        pthread_mutex_unlock(&sv.lock);
        pthread_join(beat, NULL);
    }
    if (registered) {
        for (int tries = 0; sv.n_pending > 0 && tries < 20; tries++) {
            record_results(&sv);
            if (sv.n_pending > 0)
                clock_sleep_ms(250);
        }
        int released = 0;
        drop_all(&sv, NULL); /* handed back by queue_deregister */
        if (queue_deregister(sv.q, sv.wid, &released) == 0)
            log_info("runner %s deregistered; %d job(s) handed back to the queue", sv.wid,
                     released);
        else
            log_warn("could not deregister: %s (the reaper will recover our jobs)",
                     queue_errstr(sv.q));
    }
    for (size_t i = 0; i < sv.n_pending; i++)
        sched_job_free(sv.pending[i].job);
    free(sv.pending);
    free(sv.qd);
    free(sv.abort_ids);
    sched_destroy(sv.sched);
    queue_destroy(sv.q);
    queue_destroy(sv.hq);
    model_free(model);
    pthread_mutex_destroy(&sv.lock);
    return status;
}
