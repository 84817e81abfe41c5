/*
 * http: a small HTTP client for tests (see http.h).
 *
 * Key decision: http_request and http_many share one set-up of a curl easy
 * handle (struct xfer), so a single request and a burst of concurrent ones
 * send exactly the same bytes. The raw helpers use a non-blocking socket and
 * poll(2), so no write or read can outlast the caller's timeout.
 */
#include "tests/support/http.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/clock.h"

/* ---- growable buffer ---------------------------------------------------- */

struct buf {
    char *p;
    size_t len, cap;
};

/* Append n bytes, keeping a NUL after them. 0, or -1 when out of memory. */
static int buf_add(struct buf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* Hand the bytes over as a new NUL-terminated string ("" when empty); the
 * buffer is left empty. NULL only when out of memory. */
static char *buf_take(struct buf *b, size_t *len)
{
    if (!b->p && buf_add(b, "", 0) < 0)
        return NULL;
    char *p = b->p;
    *len = b->len;
    memset(b, 0, sizeof(*b));
    return p;
}

/* ---- curl ----------------------------------------------------------------- */

static pthread_once_t http_once = PTHREAD_ONCE_INIT;
static CURLcode http_init_rc = CURLE_FAILED_INIT;

static void http_init_once(void)
{
    http_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int http_global_init(void)
{
    pthread_once(&http_once, http_init_once);
    return http_init_rc == CURLE_OK ? 0 : HTTP_EIO;
}

/* One transfer: its handle, what it sends and what it receives. */
struct xfer {
    CURL *easy;
    struct curl_slist *headers;
    struct buf body, hdr;
    int oom;
    http_stop_fn stop; /* NULL: read to the end */
    void *stop_arg;
    int stopped; /* stop said so: the write error that ended the transfer is ours */
    char errbuf[CURL_ERROR_SIZE];
};

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    struct xfer *x = arg;
    if (buf_add(&x->body, data, size * nmemb) < 0) {
        x->oom = 1;
        return 0;
    }
    if (x->stop && x->stop(x->body.p, x->body.len, x->stop_arg)) {
        x->stopped = 1;
        return 0; /* a write error: curl ends the transfer and closes the connection */
    }
    return size * nmemb;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    struct xfer *x = arg;
    size_t n = size * nmemb;
    /* a status line starts a new response (after "100 Continue", say): keep
     * only the headers of the last one */
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0)
        x->hdr.len = 0;
    if (buf_add(&x->hdr, data, n) < 0) {
        x->oom = 1;
        return 0;
    }
    return n;
}

static void response_empty(struct http_response *out)
{
    memset(out, 0, sizeof(*out));
}

static void xfer_fini(struct xfer *x)
{
    if (x->easy)
        curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->headers);
    free(x->body.p);
    free(x->hdr.p);
    memset(x, 0, sizeof(*x));
}

/* Make x's easy handle for one request. Returns 0 or HTTP_EIO (x is then
 * finished with xfer_fini by the caller). */
static int xfer_setup(struct xfer *x, const char *method, const char *url,
                      const char *const *headers, const char *body, size_t body_len,
                      long timeout_ms)
{
    memset(x, 0, sizeof(*x));
    if (http_global_init() < 0 || !(x->easy = curl_easy_init()))
        return HTTP_EIO;
    for (size_t i = 0; headers && headers[i]; i++) {
        struct curl_slist *l = curl_slist_append(x->headers, headers[i]);
        if (!l)
            return HTTP_EIO;
        x->headers = l;
    }
    CURL *e = x->easy;
    int bad = 0;
    bad |= curl_easy_setopt(e, CURLOPT_URL, url) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_NOPROXY, "*") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, x) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HEADERDATA, x) != CURLE_OK;
    if (x->headers)
        bad |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers) != CURLE_OK;
    if (strcmp(method, "HEAD") == 0) {
        bad |= curl_easy_setopt(e, CURLOPT_NOBODY, 1L) != CURLE_OK;
    } else if (body || strcmp(method, "POST") == 0) {
        /* POSTFIELDS sends the body with a Content-Length; the verb is then
         * replaced when it is not POST */
        bad |= curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                                (curl_off_t)(body ? body_len : 0)) != CURLE_OK;
        bad |= curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "") != CURLE_OK;
        if (strcmp(method, "POST") != 0)
            bad |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method) != CURLE_OK;
    } else if (strcmp(method, "GET") != 0) {
        bad |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method) != CURLE_OK;
    }
    return bad ? HTTP_EIO : 0;
}

/* Move the outcome of a finished transfer (code) into out. Returns 0,
 * HTTP_ETIMEOUT or HTTP_EIO as http_request does. */
static int xfer_finish(struct xfer *x, CURLcode code, struct http_response *out)
{
    response_empty(out);
    int rc = 0;
    if (code == CURLE_WRITE_ERROR && x->stopped)
        code = CURLE_OK;
    if (code == CURLE_OK && !x->oom) {
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &out->status);
    } else {
        out->status = 0;
        snprintf(out->err, sizeof(out->err), "%s",
                 x->oom ? "out of memory" : (x->errbuf[0] ? x->errbuf : curl_easy_strerror(code)));
        rc = code == CURLE_OPERATION_TIMEDOUT ? HTTP_ETIMEOUT : HTTP_EIO;
    }
    curl_easy_getinfo(x->easy, CURLINFO_TOTAL_TIME, &out->total_s);
    out->body = buf_take(&x->body, &out->len);
    out->headers = buf_take(&x->hdr, &out->headers_len);
    if (!out->body || !out->headers) {
        http_response_fini(out);
        snprintf(out->err, sizeof(out->err), "out of memory");
        return HTTP_EIO;
    }
    return rc;
}

int http_request(const char *method, const char *url, const char *const *headers, const char *body,
                 size_t body_len, long timeout_ms, struct http_response *out)
{
    struct xfer x;
    int rc = xfer_setup(&x, method, url, headers, body, body_len, timeout_ms);
    if (rc < 0) {
        response_empty(out);
        snprintf(out->err, sizeof(out->err), "could not set up the transfer");
        xfer_fini(&x);
        return rc;
    }
    rc = xfer_finish(&x, curl_easy_perform(x.easy), out);
    xfer_fini(&x);
    return rc;
}

int http_request_until(const char *method, const char *url, const char *const *headers,
                       const char *body, size_t body_len, long timeout_ms, http_stop_fn stop,
                       void *arg, struct http_response *out)
{
    struct xfer x;
    int rc = xfer_setup(&x, method, url, headers, body, body_len, timeout_ms);
    if (rc < 0) {
        response_empty(out);
        snprintf(out->err, sizeof(out->err), "could not set up the transfer");
        xfer_fini(&x);
        return rc;
    }
    x.stop = stop;
    x.stop_arg = arg;
    curl_easy_setopt(x.easy, CURLOPT_FORBID_REUSE, 1L);
    rc = xfer_finish(&x, curl_easy_perform(x.easy), out);
    xfer_fini(&x);
    return rc;
}

int http_many(size_t n, const struct http_spec *specs, long timeout_ms, struct http_response *outs)
{
    int rc = HTTP_EIO;
    CURLM *m = NULL;
    struct xfer *xs = calloc(n ? n : 1, sizeof(*xs));
    for (size_t i = 0; i < n; i++)
        response_empty(&outs[i]);
    if (!xs || http_global_init() < 0 || !(m = curl_multi_init()))
        goto out;
    /* as many connections at once as there are requests, none reused */
    curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, 0L);
    curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)n);
    curl_multi_setopt(m, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
    for (size_t i = 0; i < n; i++) {
        const struct http_spec *s = &specs[i];
        if (xfer_setup(&xs[i], s->method, s->url, s->headers, s->body, s->body_len, timeout_ms) <
                0 ||
            curl_easy_setopt(xs[i].easy, CURLOPT_FRESH_CONNECT, 1L) != CURLE_OK ||
            curl_easy_setopt(xs[i].easy, CURLOPT_FORBID_REUSE, 1L) != CURLE_OK ||
            curl_easy_setopt(xs[i].easy, CURLOPT_PRIVATE, (void *)&xs[i]) != CURLE_OK)
            goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (curl_multi_add_handle(m, xs[i].easy) != CURLM_OK)
            goto out;
    int running = 1;
    while (running) {
        if (curl_multi_perform(m, &running) != CURLM_OK)
            goto out;
        if (running && curl_multi_poll(m, NULL, 0, 100, NULL) != CURLM_OK)
            goto out;
    }
    rc = 0;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        struct xfer *x = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        size_t i = (size_t)(x - xs);
        if (xfer_finish(x, msg->data.result, &outs[i]) < 0)
            rc++;
    }
out:
    if (rc < 0)
        for (size_t i = 0; i < n; i++)
            snprintf(outs[i].err, sizeof(outs[i].err), "could not set up the transfers");
    for (size_t i = 0; xs && i < n; i++) {
        if (m && xs[i].easy)
            curl_multi_remove_handle(m, xs[i].easy);
        xfer_fini(&xs[i]);
    }
    if (m)
        curl_multi_cleanup(m);
    free(xs);
    return rc;
}

int http_header(const struct http_response *r, const char *name, char *out, size_t cap)
{
    if (cap > 0)
        out[0] = '\0';
    size_t name_len = strlen(name);
    const char *line = r->headers;
    while (line && *line) {
        const char *end = strchr(line, '\n');
        const char *next = end ? end + 1 : line + strlen(line);
        if (!end)
            end = next;
        if ((size_t)(end - line) > name_len && strncasecmp(line, name, name_len) == 0 &&
            line[name_len] == ':') {
            const char *v = line + name_len + 1;
            while (v < end && (*v == ' ' || *v == '\t'))
                v++;
            const char *e = end;
            while (e > v && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
                e--;
            size_t len = (size_t)(e - v);
            if (cap > 0) {
                size_t n = len < cap - 1 ? len : cap - 1;
                memcpy(out, v, n);
                out[n] = '\0';
            }
            return (int)len;
        }
        line = next;
    }
    return -1;
}

void http_response_fini(struct http_response *r)
{
    free(r->body);
    free(r->headers);
    response_empty(r);
}

/* ---- raw sockets ---------------------------------------------------------- */

/* A non-blocking socket connected to 127.0.0.1:port, or -1. */
static int raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

#define RAW_CLOSED  1
#define RAW_TIMEOUT 2

/* Wait up to wait_ms (>= 0) for bytes and append what arrives to b.
 * Returns 0 (data or nothing yet), RAW_CLOSED when the peer closed or reset
 * the connection, or -1 when out of memory. */
static int raw_read(int fd, struct buf *b, int64_t wait_ms)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int pr = poll(&pfd, 1, wait_ms > INT32_MAX ? INT32_MAX : (int)wait_ms);
    if (pr <= 0)
        return 0; /* timeout, or EINTR: the caller loops */
    char chunk[4096];
    for (;;) {
        ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
        if (n > 0) {
            if (buf_add(b, chunk, (size_t)n) < 0)
                return -1;
            continue;
        }
        if (n == 0)
            return RAW_CLOSED;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return RAW_CLOSED; /* ECONNRESET and the like */
    }
}

/* Write len bytes before the deadline; *done counts what went out.
 * Returns 0, RAW_CLOSED (the peer closed or reset) or RAW_TIMEOUT. */
static int raw_write(int fd, const char *p, size_t len, int64_t deadline, size_t *done)
{
    size_t off = 0;
    int rc = 0;
    while (off < len) {
        ssize_t n = send(fd, p + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int64_t left = deadline - clock_now_ms();
            if (left <= 0) {
                rc = RAW_TIMEOUT;
                break;
            }
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            poll(&pfd, 1, left > INT32_MAX ? INT32_MAX : (int)left);
            continue;
        }
        rc = RAW_CLOSED;
        break;
    }
    *done += off;
    return rc;
}

/* The common body of http_raw and http_raw_slow (chunk 0: all at once). */
static int raw_exchange(int port, const char *bytes, size_t len, size_t chunk, long interval_ms,
                        long timeout_ms, char **response, size_t *resp_len, size_t *sent)
{
    int64_t deadline = clock_now_ms() + timeout_ms;
    struct buf b = {0};
    size_t off = 0;
    int st = 0;
    *response = NULL;
    *resp_len = 0;
    if (sent)
        *sent = 0;
    int fd = raw_connect(port);
    if (fd < 0)
        return HTTP_EIO;
    if (chunk == 0)
        chunk = len ? len : 1;
    while (off < len && st == 0) {
        size_t n = len - off < chunk ? len - off : chunk;
        st = raw_write(fd, bytes + off, n, deadline, &off);
        if (st != 0 || off == len)
            break;
        /* wait out the interval, reading what the server says meanwhile */
        int64_t next = clock_now_ms() + interval_ms;
        if (next > deadline)
            next = deadline;
        int64_t now;
        while (st == 0 && (now = clock_now_ms()) < next)
            st = raw_read(fd, &b, next - now);
        if (st == 0 && clock_now_ms() >= deadline)
            st = RAW_TIMEOUT;
    }
    int64_t now;
    while (st == 0 && (now = clock_now_ms()) < deadline)
        st = raw_read(fd, &b, deadline - now);
    if (st == 0)
        st = RAW_TIMEOUT;
    if (st == RAW_CLOSED)
        raw_read(fd, &b, 0); /* whatever is still buffered */
    close(fd);
    if (sent)
        *sent = off;
    if (st < 0) {
        free(b.p);
        return HTTP_EIO;
    }
    *response = buf_take(&b, resp_len);
    if (!*response)
        return HTTP_EIO;
    return st == RAW_CLOSED ? 0 : HTTP_ETIMEOUT;
}

int http_raw(int port, const void *bytes, size_t len, long timeout_ms, char **response,
             size_t *resp_len)
{
    return raw_exchange(port, bytes, len, 0, 0, timeout_ms, response, resp_len, NULL);
}

int http_raw_slow(int port, const void *bytes, size_t len, size_t chunk, long interval_ms,
                  long timeout_ms, char **response, size_t *resp_len, size_t *sent)
{
    return raw_exchange(port, bytes, len, chunk, interval_ms, timeout_ms, response, resp_len, sent);
}
