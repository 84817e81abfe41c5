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
 * As a real worker does, it streams each sample's text to the job's stream
 * (queue_stream_append) before finishing: in FAKE_PIECES pieces (cut at
 * UTF-8 character boundaries) spread evenly over the job's duration, which
 * is --delay-ms or SLOW:<ms> but at least one --delta-ms per piece; the
 * last piece goes out just before the job is finished. It records timing
 * (queue_finish_timed: the times of its first and last piece, and the
 * sample's generated_tokens) and beats with an info JSON (model "fake",
 * device "cpu", active_sequences = jobs in hand, kv_blocks_* made up,
 * tokens_per_s over the last beat).
 * Triggers in the prompt text steer it for tests:
 *   FAIL       the job fails after all but its last piece: "fake worker: asked to fail"
 *   INVALID    the job fails at once, no piece: "invalid_request: the prompt does not fit"
 *   SLOW:<ms>  the job takes <ms> (the rest of the batch goes on meanwhile)
 *   HANG       the job streams all but its last piece and is never finished
 *              (heartbeats go on)
 *   CRASH      the process calls abort() when it takes the job on
 * Every job of a batch runs concurrently, as a batched engine would;
 * --shuffle finishes jobs that fall due together in a random order.
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
#define FAKE_PIECES        4    /* deltas per sample */
#define FAKE_KV_PER_JOB    8    /* made-up KV-cache blocks per job in hand */
#define FAKE_KV_TOTAL      4096 /* made-up KV-cache size */

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
    long long delta_ms;
    int stream; /* append the pieces to the job's stream (off: results only) */
    int shuffle;
};

/* A job in hand. */
struct fake_job {
    struct queue_claimed c;  /* id, attempt, payload (owned) */
    struct job_request *req; /* NULL when the payload did not parse */
    char **texts;            /* each sample's whole text (new; req->num_samples of them) */
    size_t *lens;
    char error[384]; /* when it is to fail: why */
    int fail;
    int64_t claimed_ms;        /* monotonic */
    int64_t due_ms;            /* monotonic; FAKE_HANG: never */
    int64_t span_ms;           /* the pieces are spread over this */
    int pieces;                /* how many pieces to stream before finishing (0..FAKE_PIECES) */
    int sent;                  /* pieces streamed so far */
    int64_t first_ms, last_ms; /* wall clock of the first and last piece (timing) */
    double created;            /* wall clock, for the response */
    int gone;                  /* finished or dropped: removed at the next compaction */
};

struct fake {
    struct fake_opts o;
    struct queue *q;    /* the main loop's handle */
    struct queue *hb_q; /* the heartbeat thread's handle */
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
    int in_hand;            /* jobs in hand, for the info JSON */
    long long tokens;       /* tokens "generated" so far, for tokens_per_s */
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

/* The runner info JSON into out, as a real worker describes itself
 * (made-up KV-cache numbers). */
static void make_info(const struct fake *f, char *out, size_t cap, int in_hand, double tokens_per_s)
{
    snprintf(out, cap,
             "{\"model\":\"fake\",\"device\":\"cpu\",\"fake\":true,\"batch\":%lld,"
             "\"max_batch\":%lld,\"pid\":%ld,\"active_sequences\":%d,\"kv_blocks_used\":%d,"
             "\"kv_blocks_total\":%d,\"tokens_per_s\":%.1f}",
             f->o.batch, f->o.batch, (long)getpid(), in_hand, in_hand * FAKE_KV_PER_JOB,
             FAKE_KV_TOTAL, tokens_per_s);
}

static void *heartbeat_main(void *arg)
{
    struct fake *f = arg;
    char wid[QUEUE_ID_MAX + 1];
    long long last_tokens = 0;
    int64_t last_ms = clock_now_ms();
    pthread_mutex_lock(&f->mu);
    while (!f->stopping) {
        snprintf(wid, sizeof(wid), "%s", f->wid);
        int in_hand = f->in_hand;
        long long tokens = f->tokens;
        pthread_mutex_unlock(&f->mu);

        int64_t start = clock_now_ms();
        double rate = start > last_ms
                          ? (double)(tokens - last_tokens) * 1e3 / (double)(start - last_ms)
                          : 0.0;
        last_tokens = tokens;
        last_ms = start;
        char info[512];
        make_info(f, info, sizeof(info), in_hand, rate);
        struct queue_owned *owned = NULL;
        int n = 0;
        int rc = queue_heartbeat(f->hb_q, wid, info, &owned, &n);
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

static size_t count_words(const char *s);

/* Tokens each sample "generates": min(max_tokens, words in the prompt). */
static int gen_tokens(const struct fake_job *j)
{
    size_t words = count_words(j->req->text);
    return words < (size_t)j->req->max_tokens ? (int)words : j->req->max_tokens;
}

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

/* Build each sample's text: "echo: <prompt>" (sample 0) or "echo[i]: <prompt>".
 * Returns 0 or -1 (out of memory). */
static int make_texts(struct fake_job *j)
{
    const struct job_request *r = j->req;
    size_t n = (size_t)r->num_samples;
    j->texts = calloc(n, sizeof(*j->texts));
    j->lens = calloc(n, sizeof(*j->lens));
    if (!j->texts || !j->lens)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char prefix[32];
        if (i == 0)
            snprintf(prefix, sizeof(prefix), "echo: ");
        else
            snprintf(prefix, sizeof(prefix), "echo[%zu]: ", i);
        size_t plen = strlen(prefix);
        j->texts[i] = malloc(plen + r->text_len + 1);
        if (!j->texts[i])
            return -1;
        memcpy(j->texts[i], prefix, plen);
        memcpy(j->texts[i] + plen, r->text, r->text_len + 1);
        j->lens[i] = plen + r->text_len;
    }
    return 0;
}

static void free_texts(struct fake_job *j)
{
    for (int i = 0; j->texts && j->req && i < j->req->num_samples; i++)
        free(j->texts[i]);
    free(j->texts);
    free(j->lens);
    j->texts = NULL;
    j->lens = NULL;
}

/* Where piece k of a len-byte text begins (k = FAKE_PIECES: its end): an
 * even cut moved forward to a UTF-8 character boundary. */
static size_t piece_start(const char *text, size_t len, int k)
{
    size_t pos = len * (size_t)k / FAKE_PIECES;
    while (pos < len && ((unsigned char)text[pos] & 0xC0) == 0x80)
        pos++;
    return pos;
}

/* When piece k of j falls due (monotonic ms). */
static int64_t piece_due(const struct fake_job *j, int k)
{
    return j->claimed_ms + j->span_ms * (k + 1) / FAKE_PIECES;
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
    if (!j->req->text) { /* a chat: the fake's prompt is its last message, from the user */
        const struct job_message *last = &j->req->messages[j->req->n_messages - 1];
        j->req->text = job_dup_n(last->content, last->content_len);
        j->req->text_len = last->content_len;
        if (!j->req->text) {
            j->fail = 1;
            snprintf(j->error, sizeof(j->error), "fake worker: out of memory");
            return;
        }
    }
    const char *text = j->req->text;
    if (strstr(text, "CRASH")) {
        log_error("job %s asks for a crash: abort()", j->c.id);
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core); /* no core file from a test */
        abort();
    }
    if (strstr(text, "INVALID")) { /* refused before generating anything */
        j->fail = 1;
        j->due_ms = j->claimed_ms;
        snprintf(j->error, sizeof(j->error), "invalid_request: the prompt does not fit");
        log_debug("job %s attempt %ld: %s", j->c.id, j->c.attempt, j->error);
        return;
    }
    if (make_texts(j) < 0) {
        j->fail = 1;
        snprintf(j->error, sizeof(j->error), "fake worker: out of memory");
        return;
    }
    int64_t dur = f->o.delay_ms;
    const char *slow = strstr(text, "SLOW:");
    if (slow)
        dur = strtoll(slow + 5, NULL, 10);
    j->span_ms = dur > FAKE_PIECES * f->o.delta_ms ? dur : FAKE_PIECES * f->o.delta_ms;
    j->due_ms = j->claimed_ms + j->span_ms;
    j->pieces = FAKE_PIECES;
    if (strstr(text, "HANG")) {
        j->due_ms = FAKE_HANG;
        j->pieces = FAKE_PIECES - 1;
    }
    if (strstr(text, "FAIL")) {
        j->fail = 1;
        j->pieces = FAKE_PIECES - 1;
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
        struct job_sample *s = &samples[i];
        s->text = j->texts[i]; /* borrowed */
        s->text_len = j->lens[i];
        s->generated_tokens = gen_tokens(j);
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
    free(samples);
    return json;
}

/* Stream every piece that is due by `now`, of every job in hand, in one
 * round trip. A job's first and last append also set its stream's TTL. */
static void emit_due(struct fake *f, int64_t now)
{
    size_t n = 0, cap = 0;
    for (int i = 0; i < f->n_jobs; i++) {
        const struct fake_job *j = &f->jobs[i];
        for (int k = j->sent; !j->gone && k < j->pieces && piece_due(j, k) <= now; k++)
            cap += (size_t)j->req->num_samples;
    }
    if (cap == 0)
        return;
    struct queue_delta *d = calloc(cap, sizeof(*d));
    int *upto = calloc((size_t)f->n_jobs, sizeof(*upto));
    if (!d || !upto) {
        free(d);
        free(upto);
        return;
    }
    for (int i = 0; i < f->n_jobs; i++) {
        const struct fake_job *j = &f->jobs[i];
        int k = j->sent;
        for (; !j->gone && k < j->pieces && piece_due(j, k) <= now; k++) {
            for (int s = 0; s < j->req->num_samples; s++) {
                size_t a = piece_start(j->texts[s], j->lens[s], k);
                size_t b = piece_start(j->texts[s], j->lens[s], k + 1);
                int last = k == FAKE_PIECES - 1 && s == j->req->num_samples - 1;
                d[n++] = (struct queue_delta){.id = j->c.id,
                                              .attempt = j->c.attempt,
                                              .sample = s,
                                              .text = j->texts[s] + a,
                                              .len = b - a,
                                              .expire = (k == 0 && s == 0) || last};
            }
        }
        upto[i] = k;
    }
    if (!f->o.stream || queue_stream_append(f->q, d, (int)n) == 0) {
        int64_t wall = (int64_t)(clock_wall_s() * 1e3);
        for (int i = 0; i < f->n_jobs; i++) {
            struct fake_job *j = &f->jobs[i];
            if (upto[i] == j->sent)
                continue;
            if (j->sent == 0)
                j->first_ms = wall;
            j->last_ms = wall;
            j->sent = upto[i];
        }
    } else {
        log_warn("streaming deltas failed (will retry): %s", queue_errstr(f->q));
        clock_sleep_ms(FAKE_RETRY_MS);
    }
    free(d);
    free(upto);
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
    char timing[160];
    snprintf(timing, sizeof(timing),
             "{\"first_token_ms\":%lld,\"last_token_ms\":%lld,\"tokens\":%d}",
             (long long)j->first_ms, (long long)j->last_ms, result ? gen_tokens(j) : 0);
    int rc = queue_finish_timed(f->q, f->wid, j->c.id, j->c.attempt, oc, value, strlen(value),
                                result && j->sent > 0 ? timing : NULL, &recorded);
    if (rc == 0 && result) {
        pthread_mutex_lock(&f->mu);
        f->tokens += (long long)gen_tokens(j) * j->req->num_samples;
        pthread_mutex_unlock(&f->mu);
    }
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
            free_texts(j);
            job_request_destroy(j->req);
            queue_claimed_fini(&j->c, 1);
        } else {
            f->jobs[k++] = *j;
        }
    }
    f->n_jobs = k;
    pthread_mutex_lock(&f->mu);
    f->in_hand = k;
    pthread_mutex_unlock(&f->mu);
}

/* Finish every job due by `now`, in random order with --shuffle. */
static int finish_due(struct fake *f, int64_t now)
{
    int idx[f->o.batch], n = 0, rc = 0;
    for (int i = 0; i < f->n_jobs; i++)
        if (f->jobs[i].due_ms <= now && f->jobs[i].sent == f->jobs[i].pieces)
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
        char info[512];
        pthread_mutex_lock(&f->mu);
        int in_hand = f->in_hand;
        pthread_mutex_unlock(&f->mu);
        make_info(f, info, sizeof(info), in_hand, 0.0);
        if (queue_register(f->q, f->wid, info) == 0)
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
    for (int i = 0; i < f->n_jobs; i++) {
        const struct fake_job *j = &f->jobs[i];
        if (j->due_ms < t)
            t = j->due_ms;
        if (j->sent < j->pieces && piece_due(j, j->sent) < t)
            t = piece_due(j, j->sent);
    }
    return t;
}

static void run(struct fake *f)
{
    struct queue_claimed claimed[f->o.batch];
    while (!fake_stop) {
        if (is_lost(f) && recover_lost(f) < 0)
            break;
        apply_aborts(f);
        emit_due(f, clock_now_ms());
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
        /* Redis times a blocked client out with 100 ms granularity (hz 10):
         * a short wait is slept here, so pieces go out when they fall due */
        int precise = wait < FAKE_IDLE_BLOCK_MS / 2;
        int rc = queue_claim(f->q, f->wid, room, precise ? 0 : (int)wait, claimed, &n);
        if (rc == 0 && n == 0 && precise)
            clock_sleep_ms(wait);
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
        pthread_mutex_lock(&f->mu);
        f->in_hand = f->n_jobs;
        pthread_mutex_unlock(&f->mu);
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
        emit_due(f, clock_now_ms());
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
        {"delta-ms", "MILLRACE_FAKE_DELTA_MS", CONFIG_INT, &f.o.delta_ms, "10", 0, 600000, "MS",
         "Shortest time between two streamed pieces of a job (each sample's text goes out in "
         "4 pieces; 0: all at once)."},
        {"stream", "MILLRACE_FAKE_STREAM", CONFIG_BOOL, &f.o.stream, "true", 0, 0, NULL,
         "Write the pieces to the jobs' streams (false: results only, for benchmarks)."},
        {"shuffle", "MILLRACE_FAKE_SHUFFLE", CONFIG_BOOL, &f.o.shuffle, "false", 0, 0, NULL,
         "Finish the jobs that fall due together in a random order."},
        {"log-level", "MILLRACE_FAKE_LOG_LEVEL", CONFIG_STRING, &f.o.log_level, "info", 0, 0,
         "LEVEL", "debug, info, warn or error."},
    };
    const struct config_spec spec = {
        "fake_worker [options]",
        "A TEST DOUBLE for millrace-worker: answers jobs without any model (each sample echoes "
        "the prompt, streamed in pieces) so that the API can be tested. Prompt triggers: FAIL, "
        "INVALID, SLOW:<ms>, HANG, CRASH.",
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
             "delay %lld ms, delta %lld ms%s",
             f.wid, where, f.o.prefix, f.o.batch, f.o.delay_ms, f.o.delta_ms,
             f.o.shuffle ? ", shuffled" : "");
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
