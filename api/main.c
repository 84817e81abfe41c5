/*
 * millrace-api: the HTTP front end of millrace.
 *
 * Reads its configuration (flags and MILLRACE_* environment variables),
 * starts the server (server.c) and waits for SIGTERM or SIGINT, then stops
 * gracefully: no new connections, waiting requests get up to
 * --shutdown-grace-s to finish, exit status 0.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/auth.h"
#include "api/server.h"
#include "common/config.h"
#include "common/ids.h"
#include "common/log.h"

static const char *env_get(const char *name)
{
    return getenv(name);
}

int main(int argc, char **argv)
{
    struct api_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.limits = job_limits_default();
    redis_opts_default(&cfg.redis);
    queue_opts_default(&cfg.queue);

    const char *redis_url = NULL, *prefix = NULL, *keys = NULL, *keys_file = NULL;
    const char *log_level = NULL;
    long long port, threads, max_body, max_conn, conn_timeout, body_timeout, req_timeout, max_wait,
        retry_after, grace, refresh, max_backlog, worker_ttl, result_ttl, idem_ttl, max_attempts,
        redis_timeout, stream_ping, stream_buffer;
    int access_log;
    const struct config_option options[] = {
        {"host", "MILLRACE_HOST", CONFIG_STRING, &cfg.host, "0.0.0.0", 0, 0, "ADDR",
         "Address to listen on (an IPv4 or IPv6 literal)."},
        {"port", "MILLRACE_PORT", CONFIG_INT, &port, "8000", 1, 65535, "PORT",
         "TCP port to listen on."},
        {"redis", "MILLRACE_REDIS", CONFIG_STRING, &redis_url, "redis://127.0.0.1:6379", 0, 0,
         "URL", "Redis: redis://[[user]:password@]host[:port][/db] or a unix socket path."},
        {"redis-prefix", "MILLRACE_REDIS_PREFIX", CONFIG_STRING, &prefix, "{mr}", 0, 0, "PREFIX",
         "Prefix of every Redis key; must hold a {hash tag}. Same on APIs and workers."},
        {"redis-timeout-ms", "MILLRACE_REDIS_TIMEOUT_MS", CONFIG_INT, &redis_timeout, "2000", 10,
         600000, "MS", "Timeout of one Redis command."},
        {"api-keys", "MILLRACE_API_KEYS", CONFIG_STRING, &keys, NULL, 0, 0, "K1,K2",
         "API keys (comma-separated); when set, requests need 'Authorization: Bearer <key>' "
         "(/health and /metrics stay open)."},
        {"api-keys-file", "MILLRACE_API_KEYS_FILE", CONFIG_STRING, &keys_file, NULL, 0, 0, "FILE",
         "File with one API key per line (# comments allowed)."},
        {"threads", "MILLRACE_API_THREADS", CONFIG_INT, &threads, "2", 1, 64, "N",
         "HTTP threads (each serves many connections)."},
        {"max-body-bytes", "MILLRACE_MAX_BODY_BYTES", CONFIG_INT, &max_body, "1048576", 64,
         1073741824, "N", "Largest request body; larger ones get 413."},
        {"max-connections", "MILLRACE_MAX_CONNECTIONS", CONFIG_INT, &max_conn, "10000", 16, 1000000,
         "N", "Connections at once, waiting ones included."},
        {"connection-timeout-s", "MILLRACE_CONNECTION_TIMEOUT_S", CONFIG_INT, &conn_timeout, "30",
         1, 86400, "S", "Close client connections idle this long."},
        {"body-timeout-s", "MILLRACE_BODY_TIMEOUT_S", CONFIG_INT, &body_timeout, "30", 1, 86400,
         "S", "A request body still arriving after this gets 408."},
        {"request-timeout-s", "MILLRACE_REQUEST_TIMEOUT_S", CONFIG_INT, &req_timeout, "600", 1,
         86400, "S", "POST /generate answers 504 (with the job id) after waiting this long."},
        {"max-wait-s", "MILLRACE_MAX_WAIT_S", CONFIG_INT, &max_wait, "60", 1, 3600, "S",
         "Longest GET /jobs/{id}?wait= allowed."},
        {"max-backlog", "MILLRACE_MAX_BACKLOG", CONFIG_INT, &max_backlog, "0", 0, 100000000, "N",
         "Queued jobs at most (0: unbounded); beyond it submits get 429."},
        {"retry-after-s", "MILLRACE_RETRY_AFTER_S", CONFIG_INT, &retry_after, "1", 0, 3600, "S",
         "Retry-After sent with 429 and 503."},
        {"max-num-samples", "MILLRACE_MAX_NUM_SAMPLES", CONFIG_INT, &cfg.limits.max_num_samples,
         "16", 1, 1024, "N", "Largest num_samples accepted."},
        {"max-tokens-limit", "MILLRACE_MAX_TOKENS_LIMIT", CONFIG_INT, &cfg.limits.max_tokens_limit,
         "32768", 1, 10000000, "N", "Largest max_tokens accepted."},
        {"worker-ttl-ms", "MILLRACE_WORKER_TTL_MS", CONFIG_INT, &worker_ttl, "15000", 100, 3600000,
         "MS", "A worker silent this long is dead (same value on workers)."},
        {"max-attempts", "MILLRACE_MAX_ATTEMPTS", CONFIG_INT, &max_attempts, "3", 1, 100, "N",
         "Runs a job gets when its worker keeps dying, before it fails as dead."},
        {"result-ttl-s", "MILLRACE_RESULT_TTL_S", CONFIG_INT, &result_ttl, "3600", 1, 31536000, "S",
         "Finished jobs stay readable (GET /jobs/{id}) this long."},
        {"idempotency-ttl-s", "MILLRACE_IDEMPOTENCY_TTL_S", CONFIG_INT, &idem_ttl, "3600", 1,
         31536000, "S", "An Idempotency-Key maps to its job this long."},
        {"stats-refresh-ms", "MILLRACE_STATS_REFRESH_MS", CONFIG_INT, &refresh, "250", 10, 60000,
         "MS", "/health, /stats and /metrics read Redis this often."},
        {"stream-ping-s", "MILLRACE_STREAM_PING_S", CONFIG_INT, &stream_ping, "15", 1, 3600, "S",
         "An event stream (\"stream\": true, GET /jobs/{id}/stream) silent this long gets a "
         "': ping' comment, so proxies keep it open."},
        {"stream-buffer-bytes", "MILLRACE_STREAM_BUFFER_BYTES", CONFIG_INT, &stream_buffer, "65536",
         1024, 1073741824, "N",
         "Unsent bytes an event stream may hold before its job's stream is no longer read for it "
         "(a slow client)."},
        {"shutdown-grace-s", "MILLRACE_SHUTDOWN_GRACE_S", CONFIG_INT, &grace, "30", 0, 3600, "S",
         "On SIGTERM, how long waiting requests may still finish."},
        {"access-log", "MILLRACE_ACCESS_LOG", CONFIG_BOOL, &access_log, "true", 0, 0, NULL,
         "Log one line per request."},
        {"log-level", "MILLRACE_LOG_LEVEL", CONFIG_STRING, &log_level, "info", 0, 0, "LEVEL",
         "debug, info, warn or error."},
    };
    const struct config_spec spec = {
        "millrace-api [options]",
        "The millrace HTTP API: POST /generate (Flywheel-compatible, or Server-Sent Events with\n"
        "\"stream\": true), async /jobs and GET /jobs/{id}/stream, /health, /stats and /metrics,\n"
        "over a Redis job queue served by millrace-worker processes.",
        options, sizeof(options) / sizeof(options[0])};

    char err[512];
    int rc = config_parse(&spec, argc, argv, env_get, err, sizeof(err));
    if (rc == CONFIG_HELP) {
        config_print_help(&spec, stdout);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "millrace-api: %s\n", err);
        return 2;
    }
    enum log_level level;
    if (log_level_parse(log_level, &level) < 0) {
        fprintf(stderr, "millrace-api: --log-level: '%s' is not debug, info, warn or error\n",
                log_level);
        return 2;
    }
    log_setup(level, "api");
    if (redis_url_parse(redis_url, &cfg.redis.target, err, sizeof(err)) < 0) {
        fprintf(stderr, "millrace-api: --redis: %s\n", err);
        return 2;
    }
    struct auth *auth = NULL;
    if (auth_create(&auth, keys, keys_file, err, sizeof(err)) < 0) {
        fprintf(stderr, "millrace-api: %s\n", err);
        return 2;
    }
    cfg.auth = auth;
    cfg.port = (int)port;
    cfg.threads = (int)threads;
    cfg.max_body_bytes = (long)max_body;
    cfg.max_connections = (int)max_conn;
    cfg.connection_timeout_s = (int)conn_timeout;
    cfg.body_timeout_s = (int)body_timeout;
    cfg.request_timeout_s = (int)req_timeout;
    cfg.max_wait_s = (int)max_wait;
    cfg.retry_after_s = (int)retry_after;
    cfg.access_log = access_log;
    cfg.stats_refresh_ms = (int)refresh;
    cfg.sse_ping_ms = (int)stream_ping * 1000;
    cfg.sse_buffer_bytes = (long)stream_buffer;
    cfg.redis.command_timeout_ms = (int)redis_timeout;
    cfg.redis.retry_ms = 500; /* fail a request fast rather than queue it in memory */
    cfg.queue.prefix = prefix;
    cfg.queue.max_backlog = (long)max_backlog;
    cfg.queue.worker_ttl_ms = (int)worker_ttl;
    cfg.queue.max_attempts = (int)max_attempts;
    cfg.queue.result_ttl_s = (int)result_ttl;
    cfg.queue.idem_ttl_ms = (int)(idem_ttl * 1000 > 2000000000 ? 2000000000 : idem_ttl * 1000);

    char host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    char rnd[QUEUE_ID_MAX + 1];
    if (ids_job_id(rnd) < 0) {
        fprintf(stderr, "millrace-api: no randomness available\n");
        return 1;
    }
    snprintf(cfg.api_id, sizeof(cfg.api_id), "api-%.20s-%d-%.8s", host, (int)getpid(), rnd);
    for (char *p = cfg.api_id; *p; p++)
        if (*p <= ' ' || *p == 0x7f)
            *p = '_';

    /* Signals go to sigwait() below, never to a server thread. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct server *srv = NULL;
    if (server_start(&srv, &cfg, err, sizeof(err)) < 0) {
        log_error("cannot start: %s", err);
        auth_destroy(auth);
        return 1;
    }
    char where[300];
    redis_target_describe(&cfg.redis.target, where, sizeof(where));
    log_info("listening on %s port %d (%d threads); Redis %s, prefix %s; API keys: %s; id %s",
             cfg.host, cfg.port, cfg.threads, where, cfg.queue.prefix, auth ? "required" : "off",
             cfg.api_id);

    int sig = 0;
    sigwait(&sigs, &sig);
    log_info("%s received", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    server_shutdown(srv, (int)grace);
    auth_destroy(auth);
    return 0;
}
