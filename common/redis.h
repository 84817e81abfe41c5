/*
 * redis: one self-healing connection to Redis, on top of hiredis.
 *
 * A `struct redis_conn` is one hiredis context plus what it takes to keep it
 * alive: where to connect (from a redis:// URL or a unix socket path), the
 * connect and command timeouts, and reconnection with exponential backoff and
 * jitter. Every loss and every recovery is logged once. hiredis contexts are
 * not thread-safe, and neither is a redis_conn: give each thread its own.
 *
 * Key decision: a context that returned an I/O error is never reused (hiredis
 * says it cannot be); it is freed and a new one is made, which also re-applies
 * the socket timeouts, AUTH, SELECT and CLIENT SETNAME. Every call is bounded
 * in time: there is no wait without a timeout, and a blocking command's socket
 * timeout is its block time plus the command timeout.
 */
#pragma once

#include <hiredis/hiredis.h>
#include <stddef.h>

/* Errors returned by this module (negative, like every fallible call here). */
#define REDIS_CONN_EIO    (-1) /* could not connect, or the connection broke */
#define REDIS_CONN_EREPLY (-2) /* Redis answered with an error reply (text in errstr) */
#define REDIS_CONN_EARG   (-3) /* bad URL or option */

struct redis_target {
    char host[256];      /* "" when unix_path is set */
    int port;            /* 6379 by default */
    char unix_path[108]; /* unix socket path, or "" */
    char username[128];  /* ACL user, or "" for the default user */
    char password[256];  /* "" for none */
    int db;              /* SELECT index, 0 by default */
};

/*
 * Parse `redis://[[user]:password@]host[:port][/db]`, `unix:///path[?db=N]`
 * or a bare absolute socket path. Percent-escapes in the user and password are
 * decoded. Returns 0, or REDIS_CONN_EARG with a message in err.
 */
int redis_url_parse(const char *url, struct redis_target *out, char *err, size_t errlen);

/* "host:port" or the socket path, for log lines (no password). */
void redis_target_describe(const struct redis_target *t, char *out, size_t cap);

struct redis_opts {
    struct redis_target target;
    int connect_timeout_ms; /* per connection attempt */
    int command_timeout_ms; /* socket read/write timeout for ordinary commands */
    int backoff_min_ms;     /* first reconnect delay; doubles up to backoff_max_ms */
    int backoff_max_ms;
    int retry_ms; /* how long one call keeps trying to reconnect before it gives up */
};

/* Defaults: 1 s connect, 2 s command, backoff 50 ms to 2 s, retry for 1 s. */
void redis_opts_default(struct redis_opts *o);

struct redis_conn;

/*
 * Make a connection handle (it connects lazily, at the first call, so a Redis
 * that is down at start-up is not an error). `name` is copied; it becomes the
 * CLIENT SETNAME of every connection (no spaces) and appears in log lines.
 * Returns 0, or REDIS_CONN_EARG / -1 on allocation failure.
 */
int redis_conn_create(struct redis_conn **out, const struct redis_opts *opts, const char *name);

/* Close and free. NULL is a no-op. */
void redis_conn_destroy(struct redis_conn *c);

/*
 * Run one command given as binary-safe arguments (lens may be NULL for C
 * strings). On success returns 0 and *out is a new reply the caller frees with
 * freeReplyObject. An error reply gives REDIS_CONN_EREPLY with its text in
 * redis_conn_errstr() and *out NULL. A broken connection is replaced and the
 * command sent again, with backoff, for up to the configured retry time:
 * use this only for commands that are safe to repeat when a reply is lost
 * (every queue script is). LOADING and BUSY replies are retried the same way.
 * Then REDIS_CONN_EIO.
 */
int redis_conn_call(struct redis_conn *c, redisReply **out, int argc, const char **argv,
                    const size_t *lens);

/*
 * As redis_conn_call, for a command that blocks in Redis for up to block_ms
 * (BZPOPMIN, BLMPOP, ...): the socket timeout for this call is block_ms plus
 * the command timeout, so hiredis never times out before Redis answers.
 */
int redis_conn_call_blocking(struct redis_conn *c, int block_ms, redisReply **out, int argc,
                             const char **argv, const size_t *lens);

/*
 * Send n commands in one round trip (argcs[i] arguments argvs[i], with
 * lengths lens[i], or lens NULL for C strings) and read their n replies into
 * out[] (new; the caller frees each). Error replies come back as replies of
 * type REDIS_REPLY_ERROR. On a broken connection the whole batch is sent
 * again, so use it only for commands that are safe to repeat. Returns 0,
 * REDIS_CONN_EIO, REDIS_CONN_EREPLY (Redis kept saying LOADING/BUSY) or -1.
 */
int redis_conn_pipeline(struct redis_conn *c, int n, const int *argcs, const char *const *argvs[],
                        const size_t *const lens[], redisReply **out);

/* printf-style convenience for commands without binary arguments (hiredis
 * format: %s, %b, %d, %lld ...). Same semantics as redis_conn_call. */
int redis_conn_cmd(struct redis_conn *c, redisReply **out, const char *fmt, ...);

/* Set how long a call keeps trying to reconnect (0: one immediate retry only). */
void redis_conn_set_retry(struct redis_conn *c, int retry_ms);

/* The last error's text (borrowed; valid until the next call). */
const char *redis_conn_errstr(const struct redis_conn *c);

/* Whether the last call found Redis reachable. */
int redis_conn_is_up(const struct redis_conn *c);

/* How many times this handle has (re)connected; tests and "re-check everything
 * after a reconnect" logic compare it before and after a call. */
unsigned long redis_conn_generation(const struct redis_conn *c);

/* Drop the current connection (the next call reconnects). For tests and for
 * callers that saw a protocol-level surprise. */
void redis_conn_reset(struct redis_conn *c);
