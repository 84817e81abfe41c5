/*
 * http: a small HTTP client for tests, on libcurl, plus raw-socket helpers
 * for what a well-behaved client would never send (malformed requests,
 * requests trickled a few bytes at a time).
 *
 * Key decision: the client is strict about time and lenient about content.
 * Every call has a timeout; a transfer that fails (refused, reset, timed out)
 * is not an error of the test helper but a result: status 0 and the reason in
 * err. No proxy from the environment is ever used (tests talk to loopback).
 *
 * Thread-safety: libcurl's global initialisation (curl_global_init) is done
 * once, by http_global_init() or by the first call of any http_ function,
 * under pthread_once. curl_global_init itself is not thread-safe with respect
 * to other libraries that initialise OpenSSL at the same moment, so call
 * http_global_init() from the main thread before starting threads when a test
 * uses these helpers from several threads. After that every function here is
 * thread-safe (each call uses its own curl handles and sockets).
 */
#pragma once

#include <stddef.h>

#define HTTP_EIO      (-1) /* could not connect, write or set up a transfer */
#define HTTP_ETIMEOUT (-2) /* the timeout passed first (raw helpers: what arrived is kept) */

struct http_response {
    long status;        /* HTTP status, or 0 when the transfer failed */
    char *body;         /* new: the body, NUL-terminated (NULL only when set-up failed) */
    size_t len;         /* bytes in body, without the terminator */
    char *headers;      /* new: the final response's header lines, NUL-terminated */
    size_t headers_len; /* bytes in headers */
    char err[256];      /* why the transfer failed, or "" */
    double total_s;     /* how long the transfer took */
};

/* A request for http_many; every pointer borrowed. */
struct http_spec {
    const char *method; /* "GET", "POST", "DELETE", "HEAD", ... */
    const char *url;
    const char *const *headers; /* NULL, or NULL-terminated "Name: value" list */
    const char *body;           /* NULL for none */
    size_t body_len;
};

/* Initialise libcurl once (see the file comment). Returns 0 or HTTP_EIO. */
int http_global_init(void);

/*
 * Make one request and wait up to timeout_ms for the whole response.
 * method: "GET", "HEAD", "POST", or any other verb (sent as is). headers:
 * NULL or a NULL-terminated list of "Name: value" lines added to the request
 * ("Name:" with nothing after it removes a header curl would add, e.g.
 * "Expect:"). body: body_len bytes sent as the request body, or NULL. All
 * borrowed. Redirects are not followed.
 * out is always filled (free with http_response_fini). Returns 0 when a
 * response arrived (whatever its status), or HTTP_EIO / HTTP_ETIMEOUT with
 * out->status 0 and out->err set.
 */
int http_request(const char *method, const char *url, const char *const *headers, const char *body,
                 size_t body_len, long timeout_ms, struct http_response *out);

/* Decides, from the body received so far, whether to stop reading (non-zero). */
typedef int (*http_stop_fn)(const char *body, size_t len, void *arg);

/*
 * As http_request, but stop(body so far, its length, arg) is called after
 * each piece of the body arrives, and when it returns non-zero the transfer
 * ends there and the connection is closed: the client hangs up in the
 * middle of a response (a stream, say). out->body holds what arrived.
 * Returns 0 when the response ended or was stopped (out->status is the
 * response's status), else as http_request.
 */
int http_request_until(const char *method, const char *url, const char *const *headers,
                       const char *body, size_t body_len, long timeout_ms, http_stop_fn stop,
                       void *arg, struct http_response *out);

/*
 * Run n requests at once, each on its own new connection (no connection
 * limit, no reuse), and wait until all have finished or timeout_ms has passed
 * for them. outs: n responses, all filled (free each with
 * http_response_fini); a failed transfer has status 0 and err set. Returns
 * how many transfers failed (0: all got a response), or HTTP_EIO when the
 * transfers could not be set up (outs are then empty responses).
 */
int http_many(size_t n, const struct http_spec *specs, long timeout_ms, struct http_response *outs);

/*
 * The value of the first response header called `name` (case-insensitive),
 * without surrounding blanks, into out (cap bytes, always NUL-terminated when
 * cap > 0, cut to fit). Returns the value's full length (>= cap means it was
 * cut), or -1 when there is no such header.
 */
int http_header(const struct http_response *r, const char *name, char *out, size_t cap);

/* Free what r holds (not r itself) and empty it. Safe to call twice. */
void http_response_fini(struct http_response *r);

/*
 * Connect to 127.0.0.1:port, write len bytes (in one go: as few write calls
 * as the kernel allows), then read until the server closes the connection or
 * timeout_ms (counted from the start) passes. *response: new, NUL-terminated,
 * everything that arrived (even on timeout); *resp_len its length.
 * Returns 0 when the server closed (or reset) the connection, HTTP_ETIMEOUT
 * when the time ran out first, HTTP_EIO when it could not connect
 * (*response is then NULL).
 */
int http_raw(int port, const void *bytes, size_t len, long timeout_ms, char **response,
             size_t *resp_len);

/*
 * As http_raw, but write the bytes `chunk` at a time, one chunk every
 * interval_ms, reading whatever the server sends meanwhile; stop writing as
 * soon as the server closes. *sent (may be NULL): how many bytes were
 * written before the end. timeout_ms covers the whole exchange.
 */
int http_raw_slow(int port, const void *bytes, size_t len, size_t chunk, long interval_ms,
                  long timeout_ms, char **response, size_t *resp_len, size_t *sent);
