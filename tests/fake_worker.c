/*
 * fake_worker: a TEST DOUBLE FOR THE ENGINE. It answers jobs without any
 * model, so that the API (and the queue around it) can be tested end to end
 * on a machine with no weights and no GPU. It is not shipped and must never
 * serve users.
 *
 * Towards Redis it behaves like a real worker, through common/queue.c: it
 * registers a runner id (fake-<host>-<pid>-<rand>), beats from a heartbeat
 * thread with its own queue handle (and reaps dead runners on every beat),
 * claims up to --batch jobs (blocking up to 500 ms when idle), and finishes
 * each with the fenced queue_finish. A job whose heartbeat entry says
 * "abort" (cancelled, or reaped and given to another runner) is dropped
 * silently. On SIGTERM/SIGINT it stops claiming, finishes what falls due in
 * the next 2 s, hands the rest back with queue_deregister and exits 0.
 *
 * The "generation": the payload is the canonical request JSON; the result is
 * a Flywheel response whose sample i is "echo: <text>" (i = 0) or
 * "echo[i]: <text>", with prompt_tokens = the number of whitespace-separated
 * words, generated_tokens = min(max_tokens, words), finish_reason "length".
 * Triggers in the prompt text steer it for tests:
 *   FAIL       the job fails: "fake worker: asked to fail"
 *   SLOW:<ms>  the job takes <ms> (the rest of the batch goes on meanwhile)
 *   HANG       the job is never finished (heartbeats go on)
 *   CRASH      the process calls abort() when it takes the job on
 * Otherwise every job takes --delay-ms, all of a batch concurrently, as a
 * batched engine would; --shuffle finishes jobs that fall due together in a
 * random order.
 *
 * Key decision: every job in hand carries its own due time, and the main loop
 * finishes whatever is due, claims while there is room, and otherwise waits
 * for the next due time; the heartbeat thread only reports (aborts, a lost
 * registration) through a mutex-guarded mailbox that the main loop reads.
 */
#include <ctype.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/ids.h"
#include "common/job.h"
#include "common/job_response.h"
#include "common/log.h"
#include "common/queue.h"
#include "common/redis.h"

#define FAKE_IDLE_BLOCK_MS 500  /* longest a claim waits for work */
#define FAKE_DRAIN_MS      2000 /* after SIGTERM: how long to finish what is due */
#define FAKE_RETRY_MS      200  /* wait before retrying a finish that Redis refused */
#define FAKE_HANG          INT64_MAX

static volatile sig_atomic_t fake_stop;

static void on_signal(int sig)
{
    (void)sig;
    fake_stop = 1;
}

struct fake_opts {
    const char *redis_url;
    const char *prefix;
    const char *log_level;
    long long batch;
    long long heartbeat_ms;
    long long worker_ttl_ms;
    long long delay_ms;
    int shuffle;
};

/* A job in hand. */
struct fake_job {
    struct queue_claimed c;  /* id, attempt, payload (owned) */
    struct job_request *req; /* NULL when the payload did not parse */
    char error[384];         /* when it is to fail: why */
    int fail;
    int64_t claimed_ms; /* monotonic */
    int64_t due_ms;     /* monotonic; FAKE_HANG: never */
    double created;     /* wall clock, for the response */
    int gone;           /* finished or dropped: removed at the next compaction */
};

struct fake {
    struct fake_opts o;
    struct queue *q;    /* the main loop's handle */
    struct queue *hb_q; /* the heartbeat thread's handle */
    char info[256];     /* runner info JSON */
    uint64_t rng;

    struct fake_job *jobs; /* o.batch slots */
    int n_jobs;

    /* shared with the heartbeat thread, guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char wid[QUEUE_ID_MAX + 1];
    int stopping;               /* the heartbeat thread should end */
    int lost;                   /* a beat found this runner declared dead */
    struct queue_owned *aborts; /* from the last beat: ids to drop (new) */
    int n_aborts;
    int64_t aborts_beat_ms; /* when that beat started (monotonic) */
};

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

/* A new runner id "fake-<host>-<pid>-<8 hex>" into wid. */
static void make_wid(char wid[QUEUE_ID_MAX + 1])
{
    char host[65] = "host";
    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "host");
    host[32] = '\0'; /* the id must fit QUEUE_ID_MAX */
    for (char *p = host; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-')
            *p = '_';
    uint32_t r = (uint32_t)ids_seed();
    ids_random_bytes(&r, sizeof(r));
    snprintf(wid, QUEUE_ID_MAX + 1, "fake-%.32s-%ld-%08x", host, (long)getpid(), (unsigned)r);
}

/* ---- heartbeat thread ---------------------------------------------------- */

static void *heartbeat_main(void *arg)
{
    struct fake *f = arg;
    char wid[QUEUE_ID_MAX + 1];
    pthread_mutex_lock(&f->mu);
    while (!f->stopping) {
        snprintf(wid, sizeof(wid), "%s", f->wid);
        pthread_mutex_unlock(&f->mu);

        int64_t start = clock_now_ms();
        struct queue_owned *owned = NULL;
        int n = 0;
        int rc = queue_heartbeat(f->hb_q, wid, f->info, &owned, &n);
        struct queue_owned *aborts = NULL;
        int n_aborts = 0;
        if (rc == 0 && n > 0) {
            aborts = calloc((size_t)n, sizeof(*aborts));
            for (int i = 0; aborts && i < n; i++)
                if (owned[i].abort)
                    aborts[n_aborts++] = owned[i];
        } else if (rc < 0 && rc != QUEUE_ELOST) {
            log_warn("heartbeat of %s failed: %s", wid, queue_errstr(f->hb_q));
        }
        free(owned);
        struct queue_reap_result rr;
        if (queue_reap(f->hb_q, &rr) == 0 && rr.ran && (rr.runners || rr.requeued || rr.buried))
            log_info("reaped %ld dead runner(s): %ld job(s) requeued, %ld buried", rr.runners,
                     rr.requeued, rr.buried);

        pthread_mutex_lock(&f->mu);
        if (strcmp(wid, f->wid) == 0) { /* still the same registration */
            if (rc == QUEUE_ELOST)
                f->lost = 1;
            if (n_aborts > 0) {
                free(f->aborts);
                f->aborts = aborts;
                f->n_aborts = n_aborts;
                f->aborts_beat_ms = start;
                aborts = NULL;
            }
        }
        free(aborts);
        int64_t wake = start + f->o.heartbeat_ms;
        struct timespec ts = {.tv_sec = wake / 1000, .tv_nsec = (wake % 1000) * 1000000};
        while (!f->stopping && clock_now_ms() < wake)
            pthread_cond_timedwait(&f->cv, &f->mu, &ts);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

/* ---- jobs ------------------------------------------------------------------ */

static size_t count_words(const char *s)
{
    size_t n = 0;
    int in_word = 0;
    for (; *s; s++) {
        int space = isspace((unsigned char)*s);
        if (!space && !in_word)
            n++;
        in_word = !space;
    }
    return n;
}

/* Take a claimed job on (c's payload is taken). Decides its outcome and due
 * time from the triggers in its text; CRASH aborts the process here. */
static void take_on(struct fake *f, struct queue_claimed *c)
{
    struct fake_job *j = &f->jobs[f->n_jobs++];
    memset(j, 0, sizeof(*j));
    j->c = *c;
    memset(c, 0, sizeof(*c));
    j->claimed_ms = clock_now_ms();
    j->created = clock_wall_s();
    j->due_ms = j->claimed_ms + f->o.delay_ms;

    /* the API's limits may be raised by configuration: accept anything here */
    struct job_limits lim = {.max_num_samples = INT_MAX,
                             .max_tokens_limit = INT_MAX,
                             .max_stop = INT_MAX,
                             .max_stop_len = INT_MAX,
                             .max_eos_ids = INT_MAX,
                             .max_text_bytes = LLONG_MAX};
    struct job_error err;
    if (job_request_parse(&j->req, j->c.payload, j->c.payload_len, &lim, &err, NULL) != 0) {
        j->fail = 1;
        snprintf(j->error, sizeof(j->error), "fake worker: bad payload: %s%s%s", err.field,
                 err.field[0] ? ": " : "", err.message);
        log_debug("job %s attempt %ld: %s", j->c.id, j->c.attempt, j->error);
        return;
    }
    const char *text = j->req->text;
    if (strstr(text, "CRASH")) {
        log_error("job %s asks for a crash: abort()", j->c.id);
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core); /* no core file from a test */
        abort();
    }
    const char *slow = strstr(text, "SLOW:");
    if (strstr(text, "HANG"))
        j->due_ms = FAKE_HANG;
    else if (slow)
        j->due_ms = j->claimed_ms + strtoll(slow + 5, NULL, 10);
    if (strstr(text, "FAIL")) {
        j->fail = 1;
        snprintf(j->error, sizeof(j->error), "fake worker: asked to fail");
    }
    log_debug("job %s attempt %ld taken on (%zu bytes, %s)", j->c.id, j->c.attempt,
              j->c.payload_len,
              j->due_ms == FAKE_HANG ? "hangs"
              : j->fail              ? "will fail"
                                     : "will echo");
}

/* The response JSON for j (new, free()), or NULL (a message in err). */
static char *echo_result(const struct fake_job *j, char *err, size_t errlen)
{
    const struct job_request *r = j->req;
    size_t words = count_words(r->text);
    size_t n = (size_t)r->num_samples;
    struct job_sample *samples = calloc(n, sizeof(*samples));
    char *json = NULL;
    double now = clock_wall_s();
    int rc = JOB_ERR_NOMEM;
    if (!samples)
        goto out;
    for (size_t i = 0; i < n; i++) {
        char prefix[32];
        if (i == 0)
            snprintf(prefix, sizeof(prefix), "echo: ");
        else
            snprintf(prefix, sizeof(prefix), "echo[%zu]: ", i);
        size_t plen = strlen(prefix);
        struct job_sample *s = &samples[i];
        s->text = malloc(plen + r->text_len + 1);
        if (!s->text)
            goto out;
        memcpy(s->text, prefix, plen);
        memcpy(s->text + plen, r->text, r->text_len + 1);
        s->text_len = plen + r->text_len;
        s->generated_tokens = words < (size_t)r->max_tokens ? (int)words : r->max_tokens;
        s->finished = now;
        s->finish_reason = JOB_FINISH_LENGTH;
    }
    struct job_response resp = {
        .created = j->created,
        .finished = now,
        .prompt = r->text,
        .prompt_len = r->text_len,
        .prompt_tokens = words > INT_MAX ? INT_MAX : (int)words,
        .samples = samples,
        .num_samples = n,
    };
    rc = job_response_to_json(&resp, &json);
out:
    if (rc != 0)
        snprintf(err, errlen, "fake worker: cannot build the response (%d)", rc);
    for (size_t i = 0; samples && i < n; i++)
        free(samples[i].text);
    free(samples);
    return json;
}

/* Finish one due job. Returns 0 (done with it, or retry later), or
 * QUEUE_ELOST. */
static int finish_one(struct fake *f, struct fake_job *j)
{
    char err[256];
    char *result = NULL;
    enum queue_outcome oc = QUEUE_OUTCOME_DONE;
    const char *value;
    if (j->fail) {
        oc = QUEUE_OUTCOME_FAILED;
        value = j->error;
    } else if ((result = echo_result(j, err, sizeof(err)))) {
        value = result;
    } else {
        oc = QUEUE_OUTCOME_FAILED;
        value = err;
    }
    int recorded = 0;
    int rc = queue_finish(f->q, f->wid, j->c.id, j->c.attempt, oc, value, strlen(value), &recorded);
    free(result);
    if (rc == QUEUE_ELOST)
        return rc;
    if (rc < 0) {
        log_warn("finishing job %s failed (will retry): %s", j->c.id, queue_errstr(f->q));
        j->due_ms = clock_now_ms() + FAKE_RETRY_MS;
        return 0;
    }
    log_debug("job %s attempt %ld %s%s", j->c.id, j->c.attempt,
              oc == QUEUE_OUTCOME_DONE ? "done" : "failed",
              recorded ? "" : " (not recorded: no longer ours)");
    j->gone = 1;
    return 0;
}

/* Free the jobs marked gone and close the gaps. */
static void compact(struct fake *f)
{
    int k = 0;
    for (int i = 0; i < f->n_jobs; i++) {
        struct fake_job *j = &f->jobs[i];
        if (j->gone) {
            job_request_destroy(j->req);
            queue_claimed_fini(&j->c, 1);
        } else {
            f->jobs[k++] = *j;
        }
    }
    f->n_jobs = k;
}

/* Finish every job due by `now`, in random order with --shuffle. */
static int finish_due(struct fake *f, int64_t now)
{
    int idx[f->o.batch], n = 0, rc = 0;
    for (int i = 0; i < f->n_jobs; i++)
        if (f->jobs[i].due_ms <= now)
            idx[n++] = i;
    if (f->o.shuffle)
        for (int i = n - 1; i > 0; i--) {
            int k = (int)(rng_next(&f->rng) % (uint64_t)(i + 1));
            int t = idx[i];
            idx[i] = idx[k];
            idx[k] = t;
        }
    for (int i = 0; i < n && rc == 0; i++)
        rc = finish_one(f, &f->jobs[idx[i]]);
    compact(f);
    return rc;
}

/* Drop the jobs the last heartbeat said are no longer ours. Their finish is
 * still sent, with their own attempt, only to take them off this runner's
 * processing list: it is fenced, so it records nothing. */
static void apply_aborts(struct fake *f)
{
    pthread_mutex_lock(&f->mu);
    struct queue_owned *aborts = f->aborts;
    int n = f->n_aborts;
    int64_t beat_ms = f->aborts_beat_ms;
    f->aborts = NULL;
    f->n_aborts = 0;
    pthread_mutex_unlock(&f->mu);
    for (int a = 0; a < n; a++) {
        for (int i = 0; i < f->n_jobs; i++) {
            struct fake_job *j = &f->jobs[i];
            /* a job claimed after that beat began may be a new attempt */
            if (j->gone || j->claimed_ms >= beat_ms || strcmp(j->c.id, aborts[a].id) != 0)
                continue;
            const char *why = "fake worker: dropped";
            int recorded = 0;
            queue_finish(f->q, f->wid, j->c.id, j->c.attempt, QUEUE_OUTCOME_FAILED, why,
                         strlen(why), &recorded);
            log_debug("job %s attempt %ld dropped: no longer ours (cancelled or reaped)", j->c.id,
                      j->c.attempt);
            j->gone = 1;
        }
    }
    free(aborts);
    compact(f);
}

/* Drop everything in hand without finishing it (the registration is lost:
 * nothing we hold is ours any more). */
static void drop_all(struct fake *f)
{
    for (int i = 0; i < f->n_jobs; i++)
        f->jobs[i].gone = 1;
    compact(f);
}

/* Register under f->wid, retrying until it works or a stop is asked for.
 * Returns 0 or -1 (stopped). */
static int register_runner(struct fake *f)
{
    int64_t backoff = 100;
    for (;;) {
        if (queue_register(f->q, f->wid, f->info) == 0)
            return 0;
        log_warn("cannot register runner %s: %s", f->wid, queue_errstr(f->q));
        if (fake_stop)
            return -1;
        clock_sleep_ms(backoff);
        backoff = backoff < 2000 ? backoff * 2 : 2000;
    }
}

/* After QUEUE_ELOST: drop all work and come back under a new id. */
static int recover_lost(struct fake *f)
{
    log_warn("runner %s was declared dead: dropping %d job(s), registering again", f->wid,
             f->n_jobs);
    drop_all(f);
    char wid[QUEUE_ID_MAX + 1];
    make_wid(wid);
    pthread_mutex_lock(&f->mu);
    snprintf(f->wid, sizeof(f->wid), "%s", wid);
    f->lost = 0;
    free(f->aborts);
    f->aborts = NULL;
    f->n_aborts = 0;
    pthread_mutex_unlock(&f->mu);
    if (register_runner(f) < 0)
        return -1;
    log_info("registered again as %s", f->wid);
    return 0;
}

static int is_lost(struct fake *f)
{
    pthread_mutex_lock(&f->mu);
    int lost = f->lost;
    pthread_mutex_unlock(&f->mu);
    return lost;
}

/* Monotonic time the next job falls due, or FAKE_HANG when none will. */
static int64_t next_due(const struct fake *f)
{
    int64_t t = FAKE_HANG;
    for (int i = 0; i < f->n_jobs; i++)
        if (f->jobs[i].due_ms < t)
            t = f->jobs[i].due_ms;
    return t;
}

static void run(struct fake *f)
{
    struct queue_claimed claimed[f->o.batch];
    while (!fake_stop) {
        if (is_lost(f) && recover_lost(f) < 0)
            break;
        apply_aborts(f);
        if (finish_due(f, clock_now_ms()) == QUEUE_ELOST) {
            pthread_mutex_lock(&f->mu);
            f->lost = 1;
            pthread_mutex_unlock(&f->mu);
            continue;
        }
        int64_t now = clock_now_ms(), due = next_due(f);
        int64_t wait = due == FAKE_HANG ? FAKE_IDLE_BLOCK_MS : due - now;
        if (f->n_jobs > 0 && wait > f->o.heartbeat_ms)
            wait = f->o.heartbeat_ms; /* look at aborts at least once a beat */
        if (wait > FAKE_IDLE_BLOCK_MS)
            wait = FAKE_IDLE_BLOCK_MS;
        if (wait <= 0)
            continue;
        int room = (int)f->o.batch - f->n_jobs;
        if (room <= 0) {
            clock_sleep_ms(wait < 50 ? wait : 50);
            continue;
        }
        int n = 0;
        int rc = queue_claim(f->q, f->wid, room, (int)wait, claimed, &n);
        if (rc == QUEUE_ELOST) {
            pthread_mutex_lock(&f->mu);
            f->lost = 1;
            pthread_mutex_unlock(&f->mu);
            continue;
        }
        if (rc < 0) {
            log_warn("claim failed: %s", queue_errstr(f->q));
            clock_sleep_ms(FAKE_RETRY_MS);
            continue;
        }
        for (int i = 0; i < n; i++)
            take_on(f, &claimed[i]);
    }
}

/* After a stop signal: finish what falls due within FAKE_DRAIN_MS. */
static void drain(struct fake *f)
{
    int64_t deadline = clock_now_ms() + FAKE_DRAIN_MS;
    log_info("stopping: finishing what is due within %d ms (%d job(s) in hand)", FAKE_DRAIN_MS,
             f->n_jobs);
    while (!is_lost(f)) {
        apply_aborts(f);
        if (finish_due(f, clock_now_ms()) == QUEUE_ELOST)
            break;
        int64_t now = clock_now_ms(), due = next_due(f);
        if (due > deadline || now >= deadline)
            break;
        clock_sleep_ms(due - now < 10 ? due - now : 10);
    }
}

static const char *env_get(const char *name)
{
    return getenv(name);
}

int main(int argc, char **argv)
{
    struct fake f;
    memset(&f, 0, sizeof(f));
    const struct config_option options[] = {
        {"redis", "MILLRACE_FAKE_REDIS", CONFIG_STRING, &f.o.redis_url, "redis://127.0.0.1:6379", 0,
         0, "URL", "Redis to use: redis://[:password@]host[:port][/db] or a unix socket path."},
        {"prefix", "MILLRACE_FAKE_PREFIX", CONFIG_STRING, &f.o.prefix, "{mr}", 0, 0, "PREFIX",
         "Key prefix of the queue; must hold a {hash tag}."},
        {"batch", "MILLRACE_FAKE_BATCH", CONFIG_INT, &f.o.batch, "16", 1, 4096, "N",
         "Most jobs in hand at once."},
        {"heartbeat-ms", "MILLRACE_FAKE_HEARTBEAT_MS", CONFIG_INT, &f.o.heartbeat_ms, "1000", 10,
         600000, "MS", "Time between heartbeats (each also runs the reaper)."},
        {"worker-ttl-ms", "MILLRACE_FAKE_WORKER_TTL_MS", CONFIG_INT, &f.o.worker_ttl_ms, "5000", 50,
         3600000, "MS", "A runner silent this long is dead (when this one reaps)."},
        {"delay-ms", "MILLRACE_FAKE_DELAY_MS", CONFIG_INT, &f.o.delay_ms, "0", 0, 3600000, "MS",
         "Time to \"generate\" each job."},
        {"shuffle", "MILLRACE_FAKE_SHUFFLE", CONFIG_BOOL, &f.o.shuffle, "false", 0, 0, NULL,
         "Finish the jobs that fall due together in a random order."},
        {"log-level", "MILLRACE_FAKE_LOG_LEVEL", CONFIG_STRING, &f.o.log_level, "info", 0, 0,
         "LEVEL", "debug, info, warn or error."},
    };
    const struct config_spec spec = {
        "fake_worker [options]",
        "A TEST DOUBLE for millrace-worker: answers jobs without any model (each sample echoes "
        "the prompt) so that the API can be tested. Prompt triggers: FAIL, SLOW:<ms>, HANG, "
        "CRASH.",
        options, sizeof(options) / sizeof(options[0])};
    char err[256];
    int rc = config_parse(&spec, argc, argv, env_get, err, sizeof(err));
    if (rc == CONFIG_HELP) {
        config_print_help(&spec, stdout);
        return 0;
    }
    enum log_level level;
    if (rc == 0 && log_level_parse(f.o.log_level, &level) < 0) {
        snprintf(err, sizeof(err), "--log-level: unknown level \"%s\"", f.o.log_level);
        rc = -1;
    }
    if (rc < 0) {
        fprintf(stderr, "fake_worker: %s\n", err);
        return 2;
    }
    log_setup(level, "fake_worker");

    struct redis_opts ro;
    redis_opts_default(&ro);
    if (redis_url_parse(f.o.redis_url, &ro.target, err, sizeof(err)) < 0) {
        fprintf(stderr, "fake_worker: --redis: %s\n", err);
        return 2;
    }
    struct queue_opts qo;
    queue_opts_default(&qo);
    qo.prefix = f.o.prefix;
    qo.worker_ttl_ms = (int)f.o.worker_ttl_ms;
    qo.reap_lease_ms = (int)f.o.heartbeat_ms;

    int exit_code = 1, thread_started = 0;
    pthread_t hb;
    pthread_mutex_init(&f.mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&f.cv, &ca);
    pthread_condattr_destroy(&ca);
    f.rng = ids_seed() | 1;
    make_wid(f.wid);
    snprintf(f.info, sizeof(f.info),
             "{\"model\":\"fake\",\"fake\":true,\"batch\":%lld,\"pid\":%ld}", f.o.batch,
             (long)getpid());
    f.jobs = calloc((size_t)f.o.batch, sizeof(*f.jobs));
    char name[QUEUE_ID_MAX + 16];
    snprintf(name, sizeof(name), "mr:fake:%s", f.wid);
    if (!f.jobs || queue_create(&f.q, &ro, &qo, name, err, sizeof(err)) < 0) {
        fprintf(stderr, "fake_worker: %s\n", f.jobs ? err : "out of memory");
        goto out;
    }
    snprintf(name, sizeof(name), "mr:fake-hb:%s", f.wid);
    if (queue_create(&f.hb_q, &ro, &qo, name, err, sizeof(err)) < 0) {
        fprintf(stderr, "fake_worker: %s\n", err);
        goto out;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    if (register_runner(&f) < 0) {
        exit_code = 0; /* stopped before it ever registered */
        goto out;
    }
    char where[300];
    redis_target_describe(&ro.target, where, sizeof(where)); /* no password */
    log_info("fake worker %s: TEST DOUBLE, no model; redis %s, prefix %s, batch %lld, "
             "delay %lld ms%s",
             f.wid, where, f.o.prefix, f.o.batch, f.o.delay_ms, f.o.shuffle ? ", shuffled" : "");
    if (pthread_create(&hb, NULL, heartbeat_main, &f) != 0) {
        fprintf(stderr, "fake_worker: cannot start the heartbeat thread\n");
        goto out;
    }
    thread_started = 1;

    run(&f);
    drain(&f);
    exit_code = 0;
out:
    if (thread_started) {
        pthread_mutex_lock(&f.mu);
        f.stopping = 1;
        pthread_cond_signal(&f.cv);
        pthread_mutex_unlock(&f.mu);
        pthread_join(hb, NULL);
    }
    if (f.q && exit_code == 0 && !f.lost) {
        int released = 0;
        if (queue_deregister(f.q, f.wid, &released) == 0)
            log_info("fake worker %s stopped: %d job(s) handed back", f.wid, released);
        else
            log_warn("fake worker %s: deregister failed: %s", f.wid, queue_errstr(f.q));
    }
    drop_all(&f);
    free(f.jobs);
    free(f.aborts);
    queue_destroy(f.q);
    queue_destroy(f.hb_q);
    pthread_cond_destroy(&f.cv);
    pthread_mutex_destroy(&f.mu);
    return exit_code;
}
