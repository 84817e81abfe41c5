/*
 * file_server: a small HTTP file server on 127.0.0.1 for the model fetch
 * tests (libmicrohttpd, one thread per connection, a free port).
 *
 * It serves one byte buffer at one path, with Content-Length and single
 * range requests (206, 416), and can misbehave on purpose: require a bearer
 * token (401 otherwise), answer every request with a redirect, ignore Range
 * (200 with the whole body), close the connection after N bytes of the first
 * body it sends, or stall for a while after N bytes. With an ETag it honours
 * If-Range (a range only while the client's validator is current), and the
 * file can change under the client (file_server_replace). Every request is
 * recorded (method, path, Range and Authorization headers, the status
 * answered) so that a test can assert what the client sent, or that it sent
 * nothing at all.
 *
 * Thread-safety: the server answers on its own threads; file_server_requests
 * and file_server_clear_log may be called from any thread while it runs.
 */
#pragma once

#include <stddef.h>

struct file_server_opts {
    const void *data;        /* borrowed: the body; must outlive the server */
    size_t len;              /* bytes in data */
    const char *path;        /* the path served, e.g. "/m/tiny.gguf"; any other: 404 */
    const char *token;       /* non-NULL: require "Authorization: Bearer <token>", else 401 */
    const char *redirect_to; /* non-NULL: answer requests for path 302 to this URL */
    size_t drop_after;       /* > 0: the first body sent ends after this many bytes
                                and the connection is closed */
    size_t stall_after;      /* > 0: the first body sent pauses after this many bytes ... */
    int stall_ms;            /* ... for this long, then carries on */
    int ignore_range;        /* answer 200 with the whole body even to a Range request */
    const char *etag;        /* non-NULL: sent as ETag; an If-Range that differs gets 200 */
};

/* One request as the server saw it. */
struct file_server_request {
    char method[16];
    char path[256];
    char range[128];         /* the Range header, or "" */
    char authorization[256]; /* the Authorization header, or "" */
    char if_range[128];      /* the If-Range header, or "" */
    int status;              /* the status answered */
};

#define FILE_SERVER_LOG_MAX 64 /* requests recorded; later ones are counted only */

struct file_server;

/*
 * Start a server on 127.0.0.1 on a free port. o is copied, its strings too
 * (data stays borrowed). Returns 0 with *out set (stop with file_server_stop),
 * or -1 with a message on stderr.
 */
int file_server_start(struct file_server **out, const struct file_server_opts *o);

/* Serve other bytes (borrowed, as data) with another ETag (copied; NULL: none)
 * from the next request on: the file changed on the server. */
void file_server_replace(struct file_server *s, const void *data, size_t len, const char *etag);

/* The server's port, and its base URL "http://127.0.0.1:<port>" (owned by s). */
int file_server_port(const struct file_server *s);
const char *file_server_base(const struct file_server *s);

/*
 * Copy up to max recorded requests into out (oldest first) and return how
 * many requests were made in all (which may exceed max).
 */
int file_server_requests(struct file_server *s, struct file_server_request *out, int max);

/* Forget the recorded requests (the "first body" of drop_after/stall_after
 * stays spent). */
void file_server_clear_log(struct file_server *s);

/* Stop the server and free it. NULL is a no-op. */
void file_server_stop(struct file_server *s);
