/*
 * redis: one self-healing connection to Redis (see redis.h).
 *
 * Each call formats its command once into RESP, then tries: make sure a
 * connection exists (connect if not, waiting out the backoff), send, read.
 * An I/O error frees the context and tries again while the call's retry budget
 * lasts. The first retry after a connection that was up is immediate, so a
 * Redis restart costs one reconnect, not a failed request.
 */
#include "common/redis.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "common/clock.h"
#include "common/ids.h"
#include "common/log.h"

struct redis_conn {
    redisContext *ctx; /* NULL while disconnected */
    struct redis_opts opts;
    char name[64];
    char addr[300];
    char errstr[512];
    int up;                   /* last call reached Redis */
    int ever_connected;       /* for the first log line */
    unsigned long generation; /* successful (re)connects */
    int failures;             /* consecutive failed connects */
    int64_t next_attempt_ms;  /* monotonic: no connect before this */
    int64_t down_since_ms;    /* when the current outage began, or 0 */
    int64_t last_warn_ms;     /* rate limit for "still down" lines */
    uint64_t rng;             /* xorshift state for jitter */
};

/* ---- URL parsing ------------------------------------------------------- */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Copy [s, s+n) into out with %XX decoded. Returns 0 or -1 (bad escape, too long). */
static int pct_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)s[i];
        if (ch == '%') {
            if (i + 2 >= n)
                return -1;
            int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            ch = hi * 16 + lo;
            i += 2;
        }
        if (o + 1 >= cap)
            return -1;
        out[o++] = (char)ch;
    }
    out[o] = '\0';
    return 0;
}

static int parse_db(const char *s, int *db)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < 0 || v > 1000000)
        return -1;
    *db = (int)v;
    return 0;
}

int redis_url_parse(const char *url, struct redis_target *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    out->port = 6379;

    if (url[0] == '/' || strncmp(url, "unix://", 7) == 0) {
        const char *path = url[0] == '/' ? url : url + 7;
        const char *q = strchr(path, '?');
        size_t n = q ? (size_t)(q - path) : strlen(path);
        if (n == 0 || path[0] != '/' || n >= sizeof(out->unix_path)) {
            snprintf(err, errlen, "redis URL '%s': a unix socket needs an absolute path", url);
            return REDIS_CONN_EARG;
        }
        memcpy(out->unix_path, path, n);
        out->unix_path[n] = '\0';
        if (q) {
            if (strncmp(q, "?db=", 4) != 0 || parse_db(q + 4, &out->db) < 0) {
                snprintf(err, errlen, "redis URL '%s': only '?db=N' may follow the path", url);
                return REDIS_CONN_EARG;
            }
        }
        return 0;
    }

    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen,
                 "redis URL '%s': expected redis://[:password@]host[:port][/db] or a unix socket "
                 "path",
                 url);
        return REDIS_CONN_EARG;
    }
    const char *p = url + 8;
    const char *slash = strchr(p, '/');
    const char *end = slash ? slash : p + strlen(p);
    const char *at = NULL;
    for (const char *s = p; s < end; s++)
        if (*s == '@')
            at = s; /* the last '@' ends the credentials */
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        int bad;
        if (colon) /* user:password, or :password for the default user */
            bad = pct_decode(p, (size_t)(colon - p), out->username, sizeof(out->username)) < 0 ||
                  pct_decode(colon + 1, (size_t)(at - colon - 1), out->password,
                             sizeof(out->password)) < 0;
        else /* redis://secret@host: a password alone, as redis-cli reads it */
            bad = pct_decode(p, (size_t)(at - p), out->password, sizeof(out->password)) < 0;
        if (bad) {
            snprintf(err, errlen, "redis URL: bad or too long user or password");
            return REDIS_CONN_EARG;
        }
        p = at + 1;
    }
    const char *host_end = end;
    const char *colon = NULL;
    if (*p == '[') { /* [ipv6]:port */
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb) {
            snprintf(err, errlen, "redis URL '%s': unclosed '[' in host", url);
            return REDIS_CONN_EARG;
        }
        if (rb + 1 < end && rb[1] == ':')
            colon = rb + 1;
        else if (rb + 1 != end) {
            snprintf(err, errlen, "redis URL '%s': unexpected text after ']'", url);
            return REDIS_CONN_EARG;
        }
        host_end = rb;
        p++;
    } else {
        colon = memchr(p, ':', (size_t)(end - p));
        if (colon)
            host_end = colon;
    }
    size_t hn = (size_t)(host_end - p);
    if (hn == 0 || hn >= sizeof(out->host)) {
        snprintf(err, errlen, "redis URL '%s': missing or too long host", url);
        return REDIS_CONN_EARG;
    }
    memcpy(out->host, p, hn);
    out->host[hn] = '\0';
    if (colon) {
        char portbuf[16];
        size_t pn = (size_t)(end - colon - 1);
        char *pe;
        if (pn == 0 || pn >= sizeof(portbuf)) {
            snprintf(err, errlen, "redis URL '%s': bad port", url);
            return REDIS_CONN_EARG;
        }
        memcpy(portbuf, colon + 1, pn);
        portbuf[pn] = '\0';
        long port = strtol(portbuf, &pe, 10);
        if (*pe != '\0' || port < 1 || port > 65535) {
            snprintf(err, errlen, "redis URL '%s': port must be 1 to 65535", url);
            return REDIS_CONN_EARG;
        }
        out->port = (int)port;
    }
    if (slash && slash[1] != '\0' && parse_db(slash + 1, &out->db) < 0) {
        snprintf(err, errlen, "redis URL '%s': the database after '/' must be a number", url);
        return REDIS_CONN_EARG;
    }
    return 0;
}

void redis_target_describe(const struct redis_target *t, char *out, size_t cap)
{
    if (t->unix_path[0])
        snprintf(out, cap, "%s", t->unix_path);
    else if (strchr(t->host, ':'))
        snprintf(out, cap, "[%s]:%d", t->host, t->port);
    else
        snprintf(out, cap, "%s:%d", t->host, t->port);
}

/* ---- connection -------------------------------------------------------- */

void redis_opts_default(struct redis_opts *o)
{
    memset(o, 0, sizeof(*o));
    snprintf(o->target.host, sizeof(o->target.host), "127.0.0.1");
    o->target.port = 6379;
    o->connect_timeout_ms = 1000;
    o->command_timeout_ms = 2000;
    o->backoff_min_ms = 50;
    o->backoff_max_ms = 2000;
    o->retry_ms = 1000;
}

int redis_conn_create(struct redis_conn **out, const struct redis_opts *opts, const char *name)
{
    *out = NULL;
    if (strchr(name, ' ') || strlen(name) >= sizeof(((struct redis_conn *)0)->name))
        return REDIS_CONN_EARG;
    struct redis_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return -1;
    c->opts = *opts;
    snprintf(c->name, sizeof(c->name), "%s", name);
    redis_target_describe(&opts->target, c->addr, sizeof(c->addr));
    c->rng = ids_seed() | 1;
    *out = c;
    return 0;
}

static void conn_drop(struct redis_conn *c)
{
    if (c->ctx) {
        redisFree(c->ctx);
        c->ctx = NULL;
    }
}

void redis_conn_destroy(struct redis_conn *c)
{
    if (!c)
        return;
    conn_drop(c);
    free(c);
}

void redis_conn_reset(struct redis_conn *c)
{
    conn_drop(c);
}

void redis_conn_set_retry(struct redis_conn *c, int retry_ms)
{
    c->opts.retry_ms = retry_ms;
}

const char *redis_conn_errstr(const struct redis_conn *c)
{
    return c->errstr;
}

int redis_conn_is_up(const struct redis_conn *c)
{
    return c->up;
}

unsigned long redis_conn_generation(const struct redis_conn *c)
{
    return c->generation;
}

static struct timeval tv_ms(int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

static uint64_t conn_rand(struct redis_conn *c)
{
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return c->rng;
}

/* Backoff after `failures` failed attempts: exponential, capped, with "equal
 * jitter" (half fixed, half random) so a fleet does not reconnect in step. */
static int64_t conn_backoff_ms(struct redis_conn *c)
{
    int64_t d = c->opts.backoff_min_ms;
    for (int i = 1; i < c->failures && d < c->opts.backoff_max_ms; i++)
        d *= 2;
    if (d > c->opts.backoff_max_ms)
        d = c->opts.backoff_max_ms;
    if (d < 2)
        return d;
    return d / 2 + (int64_t)(conn_rand(c) % (uint64_t)(d / 2 + 1));
}

/* Send a command on a fresh context during set-up; 0 or -1 (errstr set). */
static int conn_setup_cmd(struct redis_conn *c, int argc, const char **argv)
{
    redisReply *r = redisCommandArgv(c->ctx, argc, argv, NULL);
    if (!r) {
        snprintf(c->errstr, sizeof(c->errstr), "%s during %s", c->ctx->errstr, argv[0]);
        return -1;
    }
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(c->errstr, sizeof(c->errstr), "%s failed: %s", argv[0], r->str);
        rc = -1;
    }
    freeReplyObject(r);
    return rc;
}

/* One connection attempt. 0 on success; -1 with errstr set. */
static int conn_open(struct redis_conn *c)
{
    const struct redis_target *t = &c->opts.target;
    struct timeval ct = tv_ms(c->opts.connect_timeout_ms);
    c->ctx = t->unix_path[0] ? redisConnectUnixWithTimeout(t->unix_path, ct)
                             : redisConnectWithTimeout(t->host, t->port, ct);
    if (!c->ctx) {
        snprintf(c->errstr, sizeof(c->errstr), "out of memory");
        return -1;
    }
    if (c->ctx->err) {
        snprintf(c->errstr, sizeof(c->errstr), "%s", c->ctx->errstr);
        goto fail;
    }
    if (redisSetTimeout(c->ctx, tv_ms(c->opts.command_timeout_ms)) != REDIS_OK) {
        snprintf(c->errstr, sizeof(c->errstr), "cannot set socket timeout");
        goto fail;
    }
    if (!t->unix_path[0])
        redisEnableKeepAlive(c->ctx);
    if (t->password[0]) {
        const char *auth[3] = {"AUTH", t->username[0] ? t->username : t->password, t->password};
        if (conn_setup_cmd(c, t->username[0] ? 3 : 2, auth) < 0)
            goto fail;
    }
    if (t->db != 0) {
        char db[16];
        snprintf(db, sizeof(db), "%d", t->db);
        const char *sel[2] = {"SELECT", db};
        if (conn_setup_cmd(c, 2, sel) < 0)
            goto fail;
    }
    const char *setname[3] = {"CLIENT", "SETNAME", c->name};
    if (conn_setup_cmd(c, 3, setname) < 0)
        goto fail;
    return 0;
fail:
    conn_drop(c);
    return -1;
}

/* Make sure c->ctx is a live connection, trying until `deadline_ms`. */
static int conn_ensure(struct redis_conn *c, int64_t deadline_ms)
{
    for (;;) {
        if (c->ctx)
            return 0;
        int64_t now = clock_now_ms();
        if (now < c->next_attempt_ms) {
            if (c->next_attempt_ms > deadline_ms) {
                if (!c->errstr[0])
                    snprintf(c->errstr, sizeof(c->errstr), "Redis at %s unreachable", c->addr);
                return REDIS_CONN_EIO;
            }
            clock_sleep_ms(c->next_attempt_ms - now);
        }
        if (conn_open(c) == 0) {
            c->generation++;
            if (c->down_since_ms) {
                log_info("redis %s: reconnected to %s after %d failed attempts (%.1f s)", c->name,
                         c->addr, c->failures, (double)(clock_now_ms() - c->down_since_ms) / 1e3);
            } else if (!c->ever_connected) {
                log_debug("redis %s: connected to %s", c->name, c->addr);
            }
            c->ever_connected = 1;
            c->failures = 0;
            c->down_since_ms = 0;
            c->next_attempt_ms = 0;
            c->errstr[0] = '\0';
            return 0;
        }
        now = clock_now_ms();
        c->failures++;
        if (!c->down_since_ms) {
            c->down_since_ms = now;
            c->last_warn_ms = now;
            log_warn("redis %s: cannot connect to %s: %s; retrying with backoff", c->name, c->addr,
                     c->errstr);
        } else if (now - c->last_warn_ms >= 10000) {
            c->last_warn_ms = now;
            log_warn("redis %s: still cannot connect to %s after %d attempts (%.0f s): %s", c->name,
                     c->addr, c->failures, (double)(now - c->down_since_ms) / 1e3, c->errstr);
        }
        c->next_attempt_ms = now + conn_backoff_ms(c);
    }
}

/* Replies that mean "Redis is busy or starting; ask again shortly". */
static int reply_is_transient(const redisReply *r)
{
    return r->type == REDIS_REPLY_ERROR &&
           (strncmp(r->str, "LOADING", 7) == 0 || strncmp(r->str, "BUSY ", 5) == 0 ||
            strncmp(r->str, "TRYAGAIN", 8) == 0 || strncmp(r->str, "MASTERDOWN", 10) == 0);
}

/*
 * Send n commands already formatted back to back in cmd (one round trip) and
 * read their n replies into out[] (error replies included). Reconnects and
 * sends them all again on an I/O error, within the retry budget. Returns 0,
 * REDIS_CONN_EIO, or REDIS_CONN_EREPLY when Redis kept answering LOADING/BUSY.
 */
static int conn_exchange(struct redis_conn *c, int block_ms, const char *cmd, size_t len, int n,
                         redisReply **out)
{
    int64_t deadline = clock_now_ms() + c->opts.retry_ms + block_ms;
    int immediate_retry = 1;
    for (int i = 0; i < n; i++)
        out[i] = NULL;
    for (;;) {
        int was_connected = c->ctx != NULL;
        if (conn_ensure(c, deadline) < 0) {
            c->up = 0;
            return REDIS_CONN_EIO;
        }
        if (block_ms > 0)
            redisSetTimeout(c->ctx, tv_ms(c->opts.command_timeout_ms + block_ms));
        int got = 0, transient = 0;
        if (redisAppendFormattedCommand(c->ctx, cmd, len) == REDIS_OK) {
            while (got < n) {
                void *rv = NULL;
                if (redisGetReply(c->ctx, &rv) != REDIS_OK)
                    break;
                out[got] = rv;
                transient |= reply_is_transient(out[got]);
                got++;
            }
        }
        if (got == n && block_ms > 0)
            redisSetTimeout(c->ctx, tv_ms(c->opts.command_timeout_ms));
        if (got == n && !transient) {
            c->up = 1;
            return 0;
        }
        if (got == n) { /* LOADING, BUSY ...: keep the connection, wait a little */
            for (int i = 0; i < n; i++) {
                if (reply_is_transient(out[i]))
                    snprintf(c->errstr, sizeof(c->errstr), "%s", out[i]->str);
                freeReplyObject(out[i]);
                out[i] = NULL;
            }
            if (clock_now_ms() + 100 > deadline) {
                c->up = 0;
                return REDIS_CONN_EREPLY;
            }
            clock_sleep_ms(100);
            continue;
        }
        for (int i = 0; i < got; i++) {
            freeReplyObject(out[i]);
            out[i] = NULL;
        }
        snprintf(c->errstr, sizeof(c->errstr), "%s",
                 c->ctx->errstr[0] ? c->ctx->errstr : "connection lost");
        if (was_connected)
            log_warn("redis %s: connection to %s lost: %s; reconnecting", c->name, c->addr,
                     c->errstr);
        conn_drop(c);
        c->up = 0;
        if (immediate_retry && was_connected) {
            immediate_retry = 0; /* the server may simply have restarted: try at once */
            continue;
        }
        if (!c->down_since_ms) {
            c->down_since_ms = clock_now_ms();
            c->last_warn_ms = c->down_since_ms;
        }
        c->failures++;
        c->next_attempt_ms = clock_now_ms() + conn_backoff_ms(c);
        if (c->next_attempt_ms > deadline)
            return REDIS_CONN_EIO;
    }
}

/* One command: an error reply becomes REDIS_CONN_EREPLY with its text. */
static int conn_call_formatted(struct redis_conn *c, int block_ms, redisReply **out,
                               const char *cmd, size_t len)
{
    *out = NULL;
    redisReply *r = NULL;
    int rc = conn_exchange(c, block_ms, cmd, len, 1, &r);
    if (rc < 0)
        return rc;
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(c->errstr, sizeof(c->errstr), "%s", r->str);
        freeReplyObject(r);
        return REDIS_CONN_EREPLY;
    }
    *out = r;
    return 0;
}

int redis_conn_pipeline(struct redis_conn *c, int n, const int *argcs, const char *const *argvs[],
                        const size_t *const lens[], redisReply **out)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = -1;
    for (int i = 0; i < n; i++) {
        char *cmd = NULL;
        int l =
            redisFormatCommandArgv(&cmd, argcs[i], (const char **)argvs[i], lens ? lens[i] : NULL);
        if (l < 0)
            goto out;
        if (len + (size_t)l > cap) {
            size_t ncap = cap ? cap * 2 : 1024;
            while (ncap < len + (size_t)l)
                ncap *= 2;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                redisFreeCommand(cmd);
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        memcpy(buf + len, cmd, (size_t)l);
        len += (size_t)l;
        redisFreeCommand(cmd);
    }
    rc = n > 0 ? conn_exchange(c, 0, buf, len, n, out) : 0;
out:
    if (rc == -1)
        snprintf(c->errstr, sizeof(c->errstr), "out of memory formatting a pipeline");
    free(buf);
    return rc;
}

int redis_conn_call_blocking(struct redis_conn *c, int block_ms, redisReply **out, int argc,
                             const char **argv, const size_t *lens)
{
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, lens);
    if (len < 0) {
        *out = NULL;
        snprintf(c->errstr, sizeof(c->errstr), "out of memory formatting %s", argv[0]);
        return -1;
    }
    int rc = conn_call_formatted(c, block_ms, out, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return rc;
}

int redis_conn_call(struct redis_conn *c, redisReply **out, int argc, const char **argv,
                    const size_t *lens)
{
    return redis_conn_call_blocking(c, 0, out, argc, argv, lens);
}

int redis_conn_cmd(struct redis_conn *c, redisReply **out, const char *fmt, ...)
{
    char *cmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    if (len < 0) {
        *out = NULL;
        snprintf(c->errstr, sizeof(c->errstr), "cannot format command '%s'", fmt);
        return -1;
    }
    int rc = conn_call_formatted(c, 0, out, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return rc;
}
