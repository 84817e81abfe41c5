/*
 * queue: the Redis job protocol (see queue.h for the keys and guarantees,
 * queue_lua.c for the scripts).
 *
 * Key decision: every transition is one Lua script run with EVALSHA; the SHA
 * is learnt with SCRIPT LOAD on first use, and NOSCRIPT (a restarted or
 * failed-over Redis forgets its scripts) is answered by sending the script
 * whole with EVAL, which also re-caches it. This file only builds arguments
 * and reads replies.
 */
#include "common/queue.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/queue_lua.h"

#define QUEUE_KEY_MAX  512
#define QUEUE_ARGS_MAX 16

struct queue {
    struct redis_conn *conn;
    struct queue_opts opts;
    char prefix[65];
    char sha[QUEUE_LUA_COUNT][41];
    unsigned long reloads;
    char errstr[256];
};

void queue_opts_default(struct queue_opts *o)
{
    o->prefix = "{mr}";
    o->worker_ttl_ms = 15000;
    o->reap_lease_ms = 5000;
    o->max_attempts = 3;
    o->max_runtime_ms = 0;
    o->result_ttl_s = 3600;
    o->dead_ttl_s = 7 * 24 * 3600;
    o->idem_ttl_ms = 3600 * 1000;
    o->max_backlog = 0;
    o->runner_info_ttl_s = 60;
}

static const char *const queue_state_names[] = {
    [QUEUE_QUEUED] = "queued", [QUEUE_RUNNING] = "running",     [QUEUE_DONE] = "done",
    [QUEUE_FAILED] = "failed", [QUEUE_CANCELLED] = "cancelled",
};

const char *queue_state_name(enum queue_state s)
{
    return queue_state_names[s];
}

static int queue_state_parse(const char *s, size_t len, enum queue_state *out)
{
    for (int i = 0; i <= QUEUE_CANCELLED; i++) {
        if (strlen(queue_state_names[i]) == len && memcmp(s, queue_state_names[i], len) == 0) {
            *out = (enum queue_state)i;
            return 0;
        }
    }
    return -1;
}

/* An id that may go into a key: 1..QUEUE_ID_MAX bytes, no whitespace or control. */
static int id_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > QUEUE_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == 0x7f)
            return 0;
    return 1;
}

int queue_create(struct queue **out, const struct redis_opts *ropts, const struct queue_opts *qopts,
                 const char *conn_name, char *err, size_t errlen)
{
    *out = NULL;
    const char *p = qopts->prefix;
    const char *lb = p ? strchr(p, '{') : NULL;
    const char *rb = lb ? strchr(lb, '}') : NULL;
    if (!p || strlen(p) > 64 || !lb || !rb || rb == lb + 1 || strpbrk(p, " \t\r\n")) {
        snprintf(err, errlen,
                 "queue prefix '%s' must hold a non-empty {hash tag}, at most 64 characters, no "
                 "spaces (e.g. {mr})",
                 p ? p : "");
        return QUEUE_EARG;
    }
    if (qopts->max_attempts < 1 || qopts->worker_ttl_ms < 1 || qopts->reap_lease_ms < 1 ||
        qopts->result_ttl_s < 1 || qopts->dead_ttl_s < 1 || qopts->idem_ttl_ms < 1 ||
        qopts->runner_info_ttl_s < 1 || qopts->max_runtime_ms < 0 || qopts->max_backlog < 0) {
        snprintf(err, errlen, "queue options out of range");
        return QUEUE_EARG;
    }
    struct queue *q = calloc(1, sizeof(*q));
    if (!q) {
        snprintf(err, errlen, "out of memory");
        return QUEUE_ENOMEM;
    }
    q->opts = *qopts;
    snprintf(q->prefix, sizeof(q->prefix), "%s", p);
    q->opts.prefix = q->prefix;
    int rc = redis_conn_create(&q->conn, ropts, conn_name);
    if (rc < 0) {
        if (rc == REDIS_CONN_EARG)
            snprintf(err, errlen, "bad connection name '%s' (no spaces, under 64 characters)",
                     conn_name);
        else
            snprintf(err, errlen, "out of memory");
        free(q);
        return rc == REDIS_CONN_EARG ? QUEUE_EARG : QUEUE_ENOMEM;
    }
    *out = q;
    return 0;
}

void queue_destroy(struct queue *q)
{
    if (!q)
        return;
    redis_conn_destroy(q->conn);
    free(q);
}

const char *queue_errstr(const struct queue *q)
{
    return q->errstr;
}

struct redis_conn *queue_conn(struct queue *q)
{
    return q->conn;
}

unsigned long queue_script_reloads(const struct queue *q)
{
    return q->reloads;
}

static void key(const struct queue *q, char out[QUEUE_KEY_MAX], const char *kind, const char *id)
{
    if (id)
        snprintf(out, QUEUE_KEY_MAX, "%s:%s:%s", q->prefix, kind, id);
    else
        snprintf(out, QUEUE_KEY_MAX, "%s:%s", q->prefix, kind);
}

static int map_conn_error(struct queue *q, int rc, const char *what)
{
    snprintf(q->errstr, sizeof(q->errstr), "%s: %s", what, redis_conn_errstr(q->conn));
    return rc == REDIS_CONN_EIO      ? QUEUE_EDOWN
           : rc == REDIS_CONN_EREPLY ? QUEUE_EREPLY
                                     : QUEUE_ENOMEM;
}

/*
 * Run script s with nkeys keys followed by its other arguments (argv/lens
 * hold keys then args, without the prefix: it is inserted as ARGV[1]).
 * On success *out is a new reply.
 */
static int run_script(struct queue *q, enum queue_script s, int nkeys, int n, const char **argv,
                      const size_t *lens, redisReply **out)
{
    const char *av[QUEUE_ARGS_MAX + 4];
    size_t al[QUEUE_ARGS_MAX + 4];
    char numkeys[8];
    const char *src = queue_lua_source(s);
    redisReply *r = NULL;
    int rc;

    *out = NULL;
    if (n > QUEUE_ARGS_MAX)
        return QUEUE_EARG;
    if (!q->sha[s][0]) {
        const char *load[3] = {"SCRIPT", "LOAD", src};
        rc = redis_conn_call(q->conn, &r, 3, load, NULL);
        if (rc < 0)
            return map_conn_error(q, rc, queue_lua_name(s));
        if (r->type != REDIS_REPLY_STRING || r->len != 40) {
            freeReplyObject(r);
            snprintf(q->errstr, sizeof(q->errstr), "%s: SCRIPT LOAD gave no SHA",
                     queue_lua_name(s));
            return QUEUE_EPROTO;
        }
        memcpy(q->sha[s], r->str, 40);
        q->sha[s][40] = '\0';
        freeReplyObject(r);
    }
    snprintf(numkeys, sizeof(numkeys), "%d", nkeys);
    av[0] = "EVALSHA";
    av[1] = q->sha[s];
    av[2] = numkeys;
    al[0] = 7;
    al[1] = 40;
    al[2] = strlen(numkeys);
    int k = 3;
    for (int i = 0; i < n; i++) {
        if (i == nkeys) {
            av[k] = q->prefix;
            al[k++] = strlen(q->prefix);
        }
        av[k] = argv[i];
        al[k++] = lens ? lens[i] : strlen(argv[i]);
    }
    if (n == nkeys) {
        av[k] = q->prefix;
        al[k++] = strlen(q->prefix);
    }
    rc = redis_conn_call(q->conn, &r, k, av, al);
    if (rc == REDIS_CONN_EREPLY && strncmp(redis_conn_errstr(q->conn), "NOSCRIPT", 8) == 0) {
        /* Redis restarted or failed over and forgot the script: send it whole. */
        q->reloads++;
        log_info("queue: Redis forgot the %s script (restart?); sending it again",
                 queue_lua_name(s));
        av[0] = "EVAL";
        al[0] = 4;
        av[1] = src;
        al[1] = strlen(src);
        rc = redis_conn_call(q->conn, &r, k, av, al);
    }
    if (rc < 0)
        return map_conn_error(q, rc, queue_lua_name(s));
    *out = r;
    return 0;
}

static int proto_error(struct queue *q, redisReply *r, const char *what)
{
    snprintf(q->errstr, sizeof(q->errstr), "%s: unexpected reply (type %d)", what,
             r ? r->type : -1);
    freeReplyObject(r);
    return QUEUE_EPROTO;
}

static int copy_str(char *dst, size_t cap, const redisReply *r)
{
    if (r->type != REDIS_REPLY_STRING || r->len >= cap)
        return -1;
    memcpy(dst, r->str, r->len);
    dst[r->len] = '\0';
    return 0;
}

/* Integer from an integer or numeric string reply. */
static long long reply_ll(const redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    if (r->type == REDIS_REPLY_STRING)
        return strtoll(r->str, NULL, 10);
    return 0;
}

/* ---- API side -------------------------------------------------------- */

int queue_enqueue(struct queue *q, const char *id, const char *payload, size_t payload_len,
                  const char *reply_to, const char *idem_key, char out_id[QUEUE_ID_MAX + 1],
                  enum queue_enqueue_outcome *outcome)
{
    char jk[QUEUE_KEY_MAX], qk[QUEUE_KEY_MAX], ttl[24], att[16], backlog[24], runtime[16];
    if (!id_ok(id) || (reply_to && *reply_to && !id_ok(reply_to)) ||
        (idem_key && strlen(idem_key) > 256)) {
        snprintf(q->errstr, sizeof(q->errstr), "enqueue: bad id, reply_to or idempotency key");
        return QUEUE_EARG;
    }
    key(q, jk, "job", id);
    key(q, qk, "queue", NULL);
    snprintf(ttl, sizeof(ttl), "%d", q->opts.idem_ttl_ms);
    snprintf(att, sizeof(att), "%d", q->opts.max_attempts);
    snprintf(backlog, sizeof(backlog), "%ld", q->opts.max_backlog);
    snprintf(runtime, sizeof(runtime), "%d", q->opts.max_runtime_ms);
    const char *argv[] = {
        jk,  qk,  id,      payload, reply_to ? reply_to : "", idem_key ? idem_key : "",
        ttl, att, backlog, runtime};
    size_t lens[10];
    for (int i = 0; i < 10; i++)
        lens[i] = strlen(argv[i]);
    lens[3] = payload_len;
    redisReply *r;
    int rc = run_script(q, QUEUE_LUA_ENQUEUE, 2, 10, argv, lens, &r);
    if (rc < 0)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER ||
        copy_str(out_id, QUEUE_ID_MAX + 1, r->element[1]) < 0)
        return proto_error(q, r, "enqueue");
    long long v = r->element[0]->integer;
    *outcome = v == 1 ? QUEUE_ENQUEUED_NEW : v == 0 ? QUEUE_ENQUEUED_EXISTING : QUEUE_ENQUEUE_FULL;
    freeReplyObject(r);
    return 0;
}

void queue_job_info_fini(struct queue_job_info *info)
{
    free(info->result);
    free(info->error);
    free(info->timing);
    info->result = info->error = info->timing = NULL;
}

static char *dup_reply(const redisReply *r)
{
    if (r->type != REDIS_REPLY_STRING || r->len == 0)
        return NULL;
    char *s = malloc(r->len + 1);
    if (s) {
        memcpy(s, r->str, r->len);
        s[r->len] = '\0';
    }
    return s;
}

/* Fill out (but position) from the 10 fields state, attempts, result, error,
 * created_ms, started_ms, finished_ms, worker, dead, timing. Returns 0 or -1. */
static int parse_info(struct queue_job_info *out, redisReply **e)
{
    if (e[0]->type != REDIS_REPLY_STRING ||
        queue_state_parse(e[0]->str, e[0]->len, &out->state) < 0)
        return -1;
    out->attempts = (long)reply_ll(e[1]);
    out->result = dup_reply(e[2]);
    out->error = dup_reply(e[3]);
    out->created = (double)reply_ll(e[4]) / 1e3;
    out->started = (double)reply_ll(e[5]) / 1e3;
    out->finished = (double)reply_ll(e[6]) / 1e3;
    if (copy_str(out->worker, sizeof(out->worker), e[7]) < 0)
        out->worker[0] = '\0';
    out->dead = e[8]->type == REDIS_REPLY_STRING && e[8]->len == 1 && e[8]->str[0] == '1';
    out->timing = dup_reply(e[9]);
    return 0;
}

int queue_job_get(struct queue *q, const char *id, const char *watcher, int watch_ttl_s,
                  struct queue_job_info *out)
{
    char jk[QUEUE_KEY_MAX], qk[QUEUE_KEY_MAX], ttl[16];
    memset(out, 0, sizeof(*out));
    if (!id_ok(id) || (watcher && *watcher && !id_ok(watcher)))
        return QUEUE_EARG;
    key(q, jk, "job", id);
    key(q, qk, "queue", NULL);
    snprintf(ttl, sizeof(ttl), "%d", watch_ttl_s > 0 ? watch_ttl_s : 1);
    const char *argv[] = {jk, qk, id, watcher ? watcher : "", ttl};
    redisReply *r;
    int rc = run_script(q, QUEUE_LUA_INFO, 2, 5, argv, NULL, &r);
    if (rc < 0)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY)
        return proto_error(q, r, "info");
    if (r->elements == 0) {
        freeReplyObject(r);
        snprintf(q->errstr, sizeof(q->errstr), "no job %s", id);
        return QUEUE_ENOJOB;
    }
    if (r->elements != 11 || parse_info(out, r->element) < 0)
        return proto_error(q, r, "info");
    out->position = (long)reply_ll(r->element[10]);
    freeReplyObject(r);
    if (out->state == QUEUE_DONE && !out->result) {
        queue_job_info_fini(out);
        snprintf(q->errstr, sizeof(q->errstr), "out of memory reading job %s", id);
        return QUEUE_ENOMEM;
    }
    return 0;
}

int queue_job_get_many(struct queue *q, int n, char ids[][QUEUE_ID_MAX + 1],
                       struct queue_job_info *out, int *rcs)
{
    static const char *const fields[] = {"HMGET",       "",       "state",      "attempts",
                                         "result",      "error",  "created_ms", "started_ms",
                                         "finished_ms", "worker", "dead",       "timing"};
    enum { NF = sizeof(fields) / sizeof(fields[0]) };
    int rc = QUEUE_ENOMEM;
    char(*keys)[QUEUE_KEY_MAX] = malloc((size_t)n * sizeof(*keys));
    const char *(*argv)[NF] = malloc((size_t)n * sizeof(*argv));
    const char *const **argvs = malloc((size_t)n * sizeof(*argvs));
    int *argcs = calloc((size_t)n, sizeof(*argcs));
    redisReply **replies = calloc((size_t)n, sizeof(*replies));
    if (!keys || !argv || !argvs || !argcs || !replies)
        goto out;
    for (int i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof(out[i]));
        out[i].position = -1;
        rcs[i] = QUEUE_EARG;
        key(q, keys[i], "job", id_ok(ids[i]) ? ids[i] : "-");
        memcpy(argv[i], fields, sizeof(fields));
        argv[i][1] = keys[i];
        argvs[i] = argv[i];
        argcs[i] = NF;
    }
    rc = redis_conn_pipeline(q->conn, n, argcs, argvs, NULL, replies);
    if (rc < 0) {
        rc = map_conn_error(q, rc, "read jobs");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        redisReply *r = replies[i];
        if (!id_ok(ids[i]))
            continue;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != NF - 2)
            rcs[i] = QUEUE_EPROTO;
        else if (r->element[0]->type == REDIS_REPLY_NIL)
            rcs[i] = QUEUE_ENOJOB;
        else if (parse_info(&out[i], r->element) < 0)
            rcs[i] = QUEUE_EPROTO;
        else if (out[i].state == QUEUE_DONE && !out[i].result)
            rcs[i] = QUEUE_ENOMEM;
        else
            rcs[i] = 0;
        if (rcs[i] < 0)
            queue_job_info_fini(&out[i]);
    }
    rc = 0;
out:
    for (int i = 0; replies && i < n; i++)
        if (replies[i])
            freeReplyObject(replies[i]);
    free(replies);
    free(argcs);
    free(argvs);
    free(argv);
    free(keys);
    return rc;
}

int queue_cancel(struct queue *q, const char *id, enum queue_state *before)
{
    char jk[QUEUE_KEY_MAX], qk[QUEUE_KEY_MAX], ttl[16];
    if (!id_ok(id))
        return QUEUE_EARG;
    key(q, jk, "job", id);
    key(q, qk, "queue", NULL);
    snprintf(ttl, sizeof(ttl), "%d", q->opts.result_ttl_s);
    const char *argv[] = {jk, qk, id, ttl};
    redisReply *r;
    int rc = run_script(q, QUEUE_LUA_CANCEL, 2, 4, argv, NULL, &r);
    if (rc < 0)
        return rc;
    if (r->type != REDIS_REPLY_STRING)
        return proto_error(q, r, "cancel");
    if (strcmp(r->str, "missing") == 0) {
        freeReplyObject(r);
        snprintf(q->errstr, sizeof(q->errstr), "no job %s", id);
        return QUEUE_ENOJOB;
    }
    if (queue_state_parse(r->str, r->len, before) < 0)
        return proto_error(q, r, "cancel");
    freeReplyObject(r);
    return 0;
}

int queue_inbox_wait(struct queue *q, const char *api_id, int block_ms,
                     char ids[][QUEUE_ID_MAX + 1], int max, int *n)
{
    char ik[QUEUE_KEY_MAX], timeout[24], count[16];
    *n = 0;
    if (!id_ok(api_id) || max < 1)
        return QUEUE_EARG;
    key(q, ik, "inbox", api_id);
    snprintf(timeout, sizeof(timeout), "%.3f", block_ms / 1000.0);
    snprintf(count, sizeof(count), "%d", max);
    const char *argv[] = {"BLMPOP", timeout, "1", ik, "RIGHT", "COUNT", count};
    redisReply *r;
    int rc = redis_conn_call_blocking(q->conn, block_ms, &r, 7, argv, NULL);
    if (rc < 0)
        return map_conn_error(q, rc, "inbox");
    if (r->type == REDIS_REPLY_NIL) {
        freeReplyObject(r);
        return 0;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[1]->type != REDIS_REPLY_ARRAY)
        return proto_error(q, r, "inbox");
    redisReply *list = r->element[1];
    for (size_t i = 0; i < list->elements && *n < max; i++)
        if (copy_str(ids[*n], QUEUE_ID_MAX + 1, list->element[i]) == 0)
            (*n)++;
    freeReplyObject(r);
    return 0;
}

int queue_stats(struct queue *q, struct queue_stats *out)
{
    char qk[QUEUE_KEY_MAX], ttl[16];
    memset(out, 0, sizeof(*out));
    key(q, qk, "queue", NULL);
    snprintf(ttl, sizeof(ttl), "%d", q->opts.worker_ttl_ms);
    const char *argv[] = {qk, ttl};
    redisReply *r;
    int rc = run_script(q, QUEUE_LUA_STATS, 1, 2, argv, NULL, &r);
    if (rc < 0)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 5 || (r->elements - 5) % 2 != 0)
        return proto_error(q, r, "stats");
    out->backlog = (long)reply_ll(r->element[0]);
    out->running = (long)reply_ll(r->element[1]);
    out->runners = (long)reply_ll(r->element[2]);
    out->dead = (long)reply_ll(r->element[3]);
    long long oldest = reply_ll(r->element[4]);
    out->oldest_queued_s = oldest < 0 ? -1.0 : (double)oldest / 1e3;
    static const struct {
        const char *name;
        size_t off;
    } counters[] = {
        {"enqueued", offsetof(struct queue_stats, enqueued)},
        {"done", offsetof(struct queue_stats, done)},
        {"failed", offsetof(struct queue_stats, failed)},
        {"cancelled", offsetof(struct queue_stats, cancelled)},
        {"requeued", offsetof(struct queue_stats, requeued)},
        {"retried", offsetof(struct queue_stats, retried)},
        {"released", offsetof(struct queue_stats, released)},
        {"dead", offsetof(struct queue_stats, dead_total)},
    };
    for (size_t i = 5; i + 1 < r->elements; i += 2) {
        const redisReply *name = r->element[i];
        if (name->type != REDIS_REPLY_STRING)
            continue;
        for (size_t c = 0; c < sizeof(counters) / sizeof(counters[0]); c++)
            if (strcmp(name->str, counters[c].name) == 0)
                *(long *)((char *)out + counters[c].off) = (long)reply_ll(r->element[i + 1]);
    }
    freeReplyObject(r);
    return 0;
}

/* ---- worker side ----------------------------------------------------- */

void queue_claimed_fini(struct queue_claimed *jobs, int n)
{
    for (int i = 0; i < n; i++) {
        free(jobs[i].payload);
        jobs[i].payload = NULL;
    }
}

static int beat(struct queue *q, const char *wid, const char *mode, const char *info_json,
                struct queue_owned **owned, int *n)
{
    char rk[QUEUE_KEY_MAX], wk[QUEUE_KEY_MAX], pk[QUEUE_KEY_MAX], ttl[16];
    if (owned)
        *owned = NULL;
    if (n)
        *n = 0;
    if (!id_ok(wid))
        return QUEUE_EARG;
    key(q, rk, "runners", NULL);
    key(q, wk, "runner", wid);
    key(q, pk, "processing", wid);
    snprintf(ttl, sizeof(ttl), "%d", q->opts.runner_info_ttl_s);
    const char *argv[] = {rk, wk, pk, wid, mode, ttl, info_json ? info_json : "{}"};
    redisReply *r;
    int rc = run_script(q, QUEUE_LUA_HEARTBEAT, 3, 7, argv, NULL, &r);
    if (rc < 0)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->elements % 2 != 1 ||
        r->element[0]->type != REDIS_REPLY_INTEGER)
        return proto_error(q, r, "heartbeat");
    if (r->element[0]->integer < 0) {
        freeReplyObject(r);
        snprintf(q->errstr, sizeof(q->errstr), "runner %s was declared dead", wid);
        return QUEUE_ELOST;
    }
    int count = (int)(r->elements / 2);
    if (owned && count > 0) {
        struct queue_owned *o = calloc((size_t)count, sizeof(*o));
        if (!o) {
            freeReplyObject(r);
            return QUEUE_ENOMEM;
        }
        for (int i = 0; i < count; i++) {
            const redisReply *idr = r->element[1 + 2 * i], *ar = r->element[2 + 2 * i];
            copy_str(o[i].id, sizeof(o[i].id), idr);
            o[i].abort = ar->type == REDIS_REPLY_STRING && strcmp(ar->str, "abort") == 0;
            o[i].attempt = o[i].abort ? 0 : (long)reply_ll(ar);
        }
        *owned = o;
        *n = count;
    }
    freeReplyObject(r);
    return 0;
}

int queue_register(struct queue *q, const char *wid, const char *info_json)
{
    return beat(q, wid, "register", info_json, NULL, NULL);
}

int queue_heartbeat(struct queue *q, const char *wid, const char *info_json,
                    struct queue_owned **owned, int *n)
{
    return beat(q, wid, "beat", info_json, owned, n);
}

static int claim_once(struct queue *q, const char *wid, int max_n, struct queue_claimed *jobs,
                      int *n)
{
    char pk[QUEUE_KEY_MAX], qk[QUEUE_KEY_MAX], count[16];
    key(q, pk, "processing", wid);
    key(q, qk, "queue", NULL);
    snprintf(count, sizeof(count), "%d", max_n);
    const char *argv[] = {pk, qk, wid, count};
    redisReply *r;
    int rc = run_script(q, QUEUE_LUA_CLAIM, 2, 4, argv, NULL, &r);
    if (rc < 0)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || (r->elements - 1) % 4 != 0 ||
        (int)((r->elements - 1) / 4) > max_n)
        return proto_error(q, r, "claim");
    if (r->element[0]->integer < 0) {
        freeReplyObject(r);
        snprintf(q->errstr, sizeof(q->errstr), "runner %s is not registered", wid);
        return QUEUE_ELOST;
    }
    int got = (int)((r->elements - 1) / 4);
    for (int i = 0; i < got; i++) {
        struct queue_claimed *j = &jobs[i];
        const redisReply *pr = r->element[3 + 4 * i];
        copy_str(j->id, sizeof(j->id), r->element[1 + 4 * i]);
        j->attempt = (long)reply_ll(r->element[2 + 4 * i]);
        j->created = (double)reply_ll(r->element[4 + 4 * i]) / 1e3;
        j->payload_len = pr->type == REDIS_REPLY_STRING ? pr->len : 0;
        j->payload = malloc(j->payload_len + 1);
        if (!j->payload) {
            /* The jobs stay in our processing list: the heartbeat shows them
             * and a release or the reaper sends them back. */
            queue_claimed_fini(jobs, i);
            freeReplyObject(r);
            return QUEUE_ENOMEM;
        }
        memcpy(j->payload, pr->str, j->payload_len);
        j->payload[j->payload_len] = '\0';
    }
    *n = got;
    freeReplyObject(r);
    return 0;
}

int queue_claim(struct queue *q, const char *wid, int max_n, int block_ms,
                struct queue_claimed *jobs, int *n)
{
    *n = 0;
    if (!id_ok(wid) || max_n < 1)
        return QUEUE_EARG;
    int rc = claim_once(q, wid, max_n, jobs, n);
    if (rc < 0 || *n > 0 || block_ms <= 0)
        return rc;
    char wk[QUEUE_KEY_MAX], timeout[24];
    key(q, wk, "wake", NULL);
    snprintf(timeout, sizeof(timeout), "%.3f", block_ms / 1000.0);
    const char *argv[] = {"BZPOPMIN", wk, timeout};
    redisReply *r;
    rc = redis_conn_call_blocking(q->conn, block_ms, &r, 3, argv, NULL);
    if (rc < 0)
        return map_conn_error(q, rc, "wait for work");
    int rang = r->type == REDIS_REPLY_ARRAY;
    freeReplyObject(r);
    if (!rang)
        return 0;
    return claim_once(q, wid, max_n, jobs, n);
}

int queue_finish_timed(struct queue *q, const char *wid, const char *id, long attempt,
                       enum queue_outcome outcome, const char *value, size_t value_len,
                       const char *timing, int *recorded)
{
    static const char *const names[] = {"done", "failed", "retry", "release"};
    char jk[QUEUE_KEY_MAX], pk[QUEUE_KEY_MAX], att[24], rttl[16], dttl[16];
    *recorded = 0;
    if (!id_ok(wid) || !id_ok(id))
        return QUEUE_EARG;
    key(q, jk, "job", id);
    key(q, pk, "processing", wid);
    snprintf(att, sizeof(att), "%ld", attempt);
    snprintf(rttl, sizeof(rttl), "%d", q->opts.result_ttl_s);
    snprintf(dttl, sizeof(dttl), "%d", q->opts.dead_ttl_s);
    if (!value) {
        value = "";
        value_len = 0;
    }
    const char *argv[] = {
        jk, pk, id, wid, att, names[outcome], value, rttl, dttl, timing ? timing : ""};
    size_t lens[10];
    for (int i = 0; i < 10; i++)
        lens[i] = i == 6 ? value_len : strlen(argv[i]);
    redisReply *r;
    int rc = run_script(q, QUEUE_LUA_FINISH, 2, 10, argv, lens, &r);
    if (rc < 0)
        return rc;
    if (r->type != REDIS_REPLY_INTEGER)
        return proto_error(q, r, "finish");
    *recorded = r->integer != 0;
    freeReplyObject(r);
    return 0;
}

int queue_finish(struct queue *q, const char *wid, const char *id, long attempt,
                 enum queue_outcome outcome, const char *value, size_t value_len, int *recorded)
{
    return queue_finish_timed(q, wid, id, attempt, outcome, value, value_len, NULL, recorded);
}

int queue_stream_append(struct queue *q, const struct queue_delta *d, int n)
{
    enum { XADD_ARGS = 12, EXPIRE_ARGS = 3 };
    int rc = QUEUE_ENOMEM, n_cmd = 0;
    char ttl[16];
    snprintf(ttl, sizeof(ttl), "%d", q->opts.result_ttl_s);
    char(*keys)[QUEUE_KEY_MAX] = malloc((size_t)n * sizeof(*keys));
    char(*samples)[12] = malloc((size_t)n * sizeof(*samples));
    char(*attempts)[24] = malloc((size_t)n * sizeof(*attempts));
    const char *(*argv)[XADD_ARGS] = malloc((size_t)n * 2 * sizeof(*argv));
    size_t(*lens)[XADD_ARGS] = malloc((size_t)n * 2 * sizeof(*lens));
    const char **argvs[1]; /* silence unused warnings on empty input */
    const char *const **av = malloc((size_t)n * 2 * sizeof(*av));
    const size_t **lv = malloc((size_t)n * 2 * sizeof(*lv));
    int *argcs = calloc((size_t)n * 2 + 1, sizeof(*argcs));
    redisReply **replies = calloc((size_t)n * 2 + 1, sizeof(*replies));
    (void)argvs;
    if (!keys || !samples || !attempts || !argv || !lens || !av || !lv || !argcs || !replies)
        goto out;
    for (int i = 0; i < n; i++) {
        if (!id_ok(d[i].id)) {
            rc = QUEUE_EARG;
            goto out;
        }
        key(q, keys[i], "stream", d[i].id);
        snprintf(samples[i], sizeof(samples[i]), "%d", d[i].sample);
        snprintf(attempts[i], sizeof(attempts[i]), "%ld", d[i].attempt > 0 ? d[i].attempt : 1);
        const char *a[XADD_ARGS] = {"XADD",   keys[i],    "MAXLEN",  "~",
                                    "100000", "*",        "attempt", attempts[i],
                                    "sample", samples[i], "text",    d[i].text};
        memcpy(argv[n_cmd], a, sizeof(a));
        for (int k = 0; k < XADD_ARGS; k++)
            lens[n_cmd][k] = k == 11 ? d[i].len : strlen(a[k]);
        av[n_cmd] = argv[n_cmd];
        lv[n_cmd] = lens[n_cmd];
        argcs[n_cmd++] = XADD_ARGS;
        if (d[i].expire) {
            const char *e[EXPIRE_ARGS] = {"EXPIRE", keys[i], ttl};
            memcpy(argv[n_cmd], e, sizeof(e));
            for (int k = 0; k < EXPIRE_ARGS; k++)
                lens[n_cmd][k] = strlen(e[k]);
            av[n_cmd] = argv[n_cmd];
            lv[n_cmd] = lens[n_cmd];
            argcs[n_cmd++] = EXPIRE_ARGS;
        }
    }
    rc = redis_conn_pipeline(q->conn, n_cmd, argcs, av, lv, replies);
    if (rc < 0) {
        rc = map_conn_error(q, rc, "stream append");
        goto out;
    }
    for (int i = 0; i < n_cmd; i++)
        if (replies[i]->type == REDIS_REPLY_ERROR) {
            snprintf(q->errstr, sizeof(q->errstr), "stream append: %s", replies[i]->str);
            rc = QUEUE_EREPLY;
        }
out:
    for (int i = 0; replies && i < n_cmd; i++)
        if (replies[i])
            freeReplyObject(replies[i]);
    free(replies);
    free(argcs);
    free(lv);
    free(av);
    free(lens);
    free(argv);
    free(attempts);
    free(samples);
    free(keys);
    return rc;
}

void queue_stream_entries_free(struct queue_stream_entry *e, int n)
{
    for (int i = 0; e && i < n; i++)
        free(e[i].text);
    free(e);
}

int queue_stream_read(struct queue *q, const char *id, const char *after, int max,
                      struct queue_stream_entry **out, int *n)
{
    char sk[QUEUE_KEY_MAX], start[64], count[16];
    *out = NULL;
    *n = 0;
    if (!id_ok(id) || max < 1 || strlen(after) > 40)
        return QUEUE_EARG;
    key(q, sk, "stream", id);
    snprintf(start, sizeof(start), "(%s", after); /* exclusive: what comes after it */
    if (strcmp(after, "0") == 0)
        snprintf(start, sizeof(start), "-");
    snprintf(count, sizeof(count), "%d", max);
    const char *argv[] = {"XRANGE", sk, start, "+", "COUNT", count};
    redisReply *r;
    int rc = redis_conn_call(q->conn, &r, 6, argv, NULL);
    if (rc < 0) {
        /* a bad Last-Event-ID is the caller's mistake, not Redis trouble */
        if (rc == REDIS_CONN_EREPLY && strstr(redis_conn_errstr(q->conn), "Invalid stream ID"))
            return QUEUE_EARG;
        return map_conn_error(q, rc, "stream read");
    }
    if (r->type != REDIS_REPLY_ARRAY)
        return proto_error(q, r, "stream read");
    struct queue_stream_entry *e = calloc(r->elements + 1, sizeof(*e));
    if (!e) {
        freeReplyObject(r);
        return QUEUE_ENOMEM;
    }
    int got = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *ent = r->element[i];
        if (ent->type != REDIS_REPLY_ARRAY || ent->elements != 2 ||
            copy_str(e[got].event_id, sizeof(e[got].event_id), ent->element[0]) < 0)
            continue;
        const redisReply *f = ent->element[1];
        e[got].sample = 0;
        e[got].attempt = 1;
        for (size_t k = 0; f->type == REDIS_REPLY_ARRAY && k + 1 < f->elements; k += 2) {
            const redisReply *name = f->element[k], *val = f->element[k + 1];
            if (name->type != REDIS_REPLY_STRING || val->type != REDIS_REPLY_STRING)
                continue;
            if (strcmp(name->str, "sample") == 0)
                e[got].sample = atoi(val->str);
            else if (strcmp(name->str, "attempt") == 0)
                e[got].attempt = atol(val->str);
            else if (strcmp(name->str, "text") == 0 && !e[got].text) {
                e[got].text = malloc(val->len + 1);
                if (e[got].text) {
                    memcpy(e[got].text, val->str, val->len);
                    e[got].text[val->len] = '\0';
                    e[got].len = val->len;
                }
            }
        }
        if (!e[got].text) {
            e[got].text = calloc(1, 1);
            e[got].len = 0;
        }
        got++;
    }
    freeReplyObject(r);
    *out = e;
    *n = got;
    return 0;
}

void queue_runners_free(struct queue_runner *r, int n)
{
    for (int i = 0; r && i < n; i++)
        free(r[i].info);
    free(r);
}

int queue_runners(struct queue *q, int max, struct queue_runner **out, int *n)
{
    char rk[QUEUE_KEY_MAX], ttl[16], lim[16];
    *out = NULL;
    *n = 0;
    key(q, rk, "runners", NULL);
    snprintf(ttl, sizeof(ttl), "%d", q->opts.worker_ttl_ms);
    snprintf(lim, sizeof(lim), "%d", max > 0 ? max : 1);
    const char *argv[] = {rk, ttl, lim};
    redisReply *r;
    int rc = run_script(q, QUEUE_LUA_RUNNERS, 1, 3, argv, NULL, &r);
    if (rc < 0)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 3 != 0)
        return proto_error(q, r, "runners");
    int count = (int)(r->elements / 3);
    struct queue_runner *v = calloc((size_t)count + 1, sizeof(*v));
    if (!v) {
        freeReplyObject(r);
        return QUEUE_ENOMEM;
    }
    for (int i = 0; i < count; i++) {
        copy_str(v[i].wid, sizeof(v[i].wid), r->element[3 * i]);
        v[i].beat_age_ms = (long)reply_ll(r->element[3 * i + 1]);
        v[i].info = dup_reply(r->element[3 * i + 2]);
    }
    freeReplyObject(r);
    *out = v;
    *n = count;
    return 0;
}

int queue_deregister(struct queue *q, const char *wid, int *released)
{
    char rk[QUEUE_KEY_MAX], pk[QUEUE_KEY_MAX];
    if (released)
        *released = 0;
    if (!id_ok(wid))
        return QUEUE_EARG;
    key(q, rk, "runners", NULL);
    key(q, pk, "processing", wid);
    const char *argv[] = {rk, pk, wid};
    redisReply *r;
    int rc = run_script(q, QUEUE_LUA_DEREGISTER, 2, 3, argv, NULL, &r);
    if (rc < 0)
        return rc;
    if (r->type != REDIS_REPLY_INTEGER)
        return proto_error(q, r, "deregister");
    if (released)
        *released = (int)r->integer;
    freeReplyObject(r);
    return 0;
}

/* Redis's uptime in ms from INFO server, or -1. */
static long long redis_uptime_ms(struct queue *q)
{
    redisReply *r;
    if (redis_conn_cmd(q->conn, &r, "INFO server") < 0)
        return -1;
    long long up = -1;
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) {
        const char *p = strstr(r->str, "uptime_in_seconds:");
        if (p)
            up = strtoll(p + 18, NULL, 10) * 1000;
    }
    freeReplyObject(r);
    return up;
}

int queue_reap(struct queue *q, struct queue_reap_result *out)
{
    char rk[QUEUE_KEY_MAX], lk[QUEUE_KEY_MAX], ttl[16], lease[16], rttl[16], dttl[16];
    memset(out, 0, sizeof(*out));
    long long up = redis_uptime_ms(q);
    out->skipped_liveness = up >= 0 && up < q->opts.worker_ttl_ms;
    key(q, rk, "runners", NULL);
    key(q, lk, "reaper", NULL);
    snprintf(ttl, sizeof(ttl), "%d", q->opts.worker_ttl_ms);
    snprintf(lease, sizeof(lease), "%d", q->opts.reap_lease_ms);
    snprintf(rttl, sizeof(rttl), "%d", q->opts.result_ttl_s);
    snprintf(dttl, sizeof(dttl), "%d", q->opts.dead_ttl_s);
    const char *argv[] = {rk, lk, ttl, lease, rttl, dttl, out->skipped_liveness ? "1" : "0", "100"};
    redisReply *r;
    int rc = run_script(q, QUEUE_LUA_REAP, 2, 8, argv, NULL, &r);
    if (rc < 0)
        return rc;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4)
        return proto_error(q, r, "reap");
    out->ran = reply_ll(r->element[0]) == 1;
    out->runners = (long)reply_ll(r->element[1]);
    out->requeued = (long)reply_ll(r->element[2]);
    out->buried = (long)reply_ll(r->element[3]);
    freeReplyObject(r);
    if (out->runners || out->requeued || out->buried)
        log_warn("queue: reaper found %ld dead runner(s): %ld job(s) requeued, %ld buried after "
                 "max attempts",
                 out->runners, out->requeued, out->buried);
    return 0;
}
