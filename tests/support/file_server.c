/*
 * file_server: see file_server.h. One connection, one thread
 * (MHD_USE_THREAD_PER_CONNECTION), so that a body may stall in its reader
 * callback without holding up other connections.
 */
#include "tests/support/file_server.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct file_server {
    struct MHD_Daemon *daemon;
    const char *data;
    size_t len;
    char *path, *token, *redirect_to;
    char *etag; /* with data and len: changed by file_server_replace, under lock */
    size_t drop_after, stall_after;
    int stall_ms, ignore_range;
    int port;
    char base[64];
    atomic_int stopping;

    pthread_mutex_t lock; /* guards what follows */
    int first_body_spent;
    int n_requests;
    struct file_server_request log[FILE_SERVER_LOG_MAX];
};

/* One body being sent: data[start, start + len) of the file as it was when
 * the request came. */
struct body {
    struct file_server *s;
    const char *data;
    size_t start, len;
    size_t drop_after, stall_after; /* 0: none (relative to this body) */
    int stall_ms;
    int stalled;
};

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static ssize_t read_body(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct body *b = cls;
    if (pos >= b->len)
        return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = b->len - (size_t)pos < max ? b->len - (size_t)pos : max;
    if (b->drop_after) {
        if (pos >= b->drop_after)
            return MHD_CONTENT_READER_END_WITH_ERROR; /* closes the connection */
        if (n > b->drop_after - pos)
            n = b->drop_after - (size_t)pos;
    }
    if (b->stall_after && !b->stalled) {
        if (pos >= b->stall_after) {
            b->stalled = 1;
            for (int t = 0; t < b->stall_ms && !atomic_load(&b->s->stopping); t += 10)
                sleep_ms(10);
        } else if (n > b->stall_after - pos) {
            n = b->stall_after - (size_t)pos;
        }
    }
    memcpy(buf, b->data + b->start + pos, n);
    return (ssize_t)n;
}

static void free_body(void *cls)
{
    free(cls);
}

static void copy(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

/* Parse "bytes=a-" or "bytes=a-b" (a single range). 0, or -1 for anything else. */
static int parse_range(const char *h, size_t *a, size_t *b, int *open_end)
{
    unsigned long long x, y;
    int n = 0;
    if (sscanf(h, "bytes=%llu-%n", &x, &n) != 1 || n == 0)
        return -1;
    *a = (size_t)x;
    if (h[n] == '\0') {
        *open_end = 1;
        return 0;
    }
    int m = 0;
    if (sscanf(h + n, "%llu%n", &y, &m) != 1 || h[n + m] != '\0' || y < x)
        return -1;
    *b = (size_t)y;
    *open_end = 0;
    return 0;
}

static enum MHD_Result answer(struct MHD_Connection *c, int status, struct MHD_Response *r)
{
    enum MHD_Result rc = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    (void)version;
    (void)upload;
    (void)upload_size;
    static int marker;
    struct file_server *s = cls;
    if (*con_cls == NULL) {
        *con_cls = &marker;
        return MHD_YES;
    }
    const char *range = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range");
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    const char *if_range = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "If-Range");

    pthread_mutex_lock(&s->lock);
    int idx = s->n_requests++;
    struct file_server_request *rec = idx < FILE_SERVER_LOG_MAX ? &s->log[idx] : NULL;
    if (rec) {
        memset(rec, 0, sizeof(*rec));
        copy(rec->method, sizeof(rec->method), method);
        copy(rec->path, sizeof(rec->path), url);
        copy(rec->range, sizeof(rec->range), range);
        copy(rec->authorization, sizeof(rec->authorization), auth);
        copy(rec->if_range, sizeof(rec->if_range), if_range);
    }
    /* the file as it is now (file_server_replace may change it) */
    const char *data = s->data;
    size_t len = s->len;
    char etag[128] = "";
    if (s->etag)
        copy(etag, sizeof(etag), s->etag);
    pthread_mutex_unlock(&s->lock);

    int status;
    struct MHD_Response *r = NULL;
    char hdr[128];
    if (strcmp(url, s->path) != 0) {
        status = 404;
        static const char msg[] = "not found\n";
        r = MHD_create_response_from_buffer(sizeof(msg) - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
    } else if (s->token &&
               (!auth || strncmp(auth, "Bearer ", 7) != 0 || strcmp(auth + 7, s->token) != 0)) {
        status = 401;
        static const char msg[] = "unauthorized\n";
        r = MHD_create_response_from_buffer(sizeof(msg) - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
        MHD_add_response_header(r, "X-Error-Message", "Access to this test file is restricted.");
    } else if (s->redirect_to) {
        status = 302;
        r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
        MHD_add_response_header(r, "Location", s->redirect_to);
    } else {
        size_t a = 0, b = len ? len - 1 : 0;
        /* If-Range: the range only while the client's copy is the current file */
        int current = !if_range || (etag[0] && strcmp(if_range, etag) == 0);
        int open_end = 1, ranged = range && !s->ignore_range && current &&
                                   parse_range(range, &a, &b, &open_end) == 0;
        if (ranged && a >= len) {
            status = 416;
            r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
            snprintf(hdr, sizeof(hdr), "bytes */%zu", len);
            MHD_add_response_header(r, "Content-Range", hdr);
        } else {
            if (!ranged || open_end || b >= len)
                b = len ? len - 1 : 0;
            if (!ranged)
                a = 0;
            struct body *bd = calloc(1, sizeof(*bd));
            if (!bd)
                return MHD_NO;
            bd->s = s;
            bd->data = data;
            bd->start = a;
            bd->len = len ? b - a + 1 : 0;
            pthread_mutex_lock(&s->lock);
            if (!s->first_body_spent) {
                s->first_body_spent = 1;
                bd->drop_after = s->drop_after;
                bd->stall_after = s->stall_after;
                bd->stall_ms = s->stall_ms;
            }
            pthread_mutex_unlock(&s->lock);
            status = ranged ? 206 : 200;
            r = MHD_create_response_from_callback(bd->len, 64 * 1024, read_body, bd, free_body);
            if (!r) {
                free(bd);
                return MHD_NO;
            }
            if (ranged) {
                snprintf(hdr, sizeof(hdr), "bytes %zu-%zu/%zu", a, b, len);
                MHD_add_response_header(r, "Content-Range", hdr);
            }
            if (etag[0])
                MHD_add_response_header(r, "ETag", etag);
            MHD_add_response_header(r, "Accept-Ranges", "bytes");
            MHD_add_response_header(r, "Content-Type", "application/octet-stream");
        }
    }
    if (!r)
        return MHD_NO;
    if (rec) {
        pthread_mutex_lock(&s->lock);
        rec->status = status;
        pthread_mutex_unlock(&s->lock);
    }
    return answer(c, status, r);
}

static char *dup_or_null(const char *p)
{
    return p ? strdup(p) : NULL;
}

static void free_server(struct file_server *s)
{
    free(s->path);
    free(s->token);
    free(s->redirect_to);
    free(s->etag);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

int file_server_start(struct file_server **out, const struct file_server_opts *o)
{
    struct file_server *s = calloc(1, sizeof(*s));
    if (!s)
        return -1;
    pthread_mutex_init(&s->lock, NULL);
    s->data = o->data;
    s->len = o->len;
    s->path = strdup(o->path ? o->path : "/");
    s->token = dup_or_null(o->token);
    s->redirect_to = dup_or_null(o->redirect_to);
    s->drop_after = o->drop_after;
    s->stall_after = o->stall_after;
    s->stall_ms = o->stall_ms;
    s->ignore_range = o->ignore_range;
    s->etag = dup_or_null(o->etag);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->daemon = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                                     MHD_USE_ERROR_LOG,
                                 0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, &sa,
                                 MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_END);
    if (!s->daemon) {
        fprintf(stderr, "file_server: libmicrohttpd did not start\n");
        free_server(s);
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : 0;
    if (s->port == 0) {
        fprintf(stderr, "file_server: no port\n");
        MHD_stop_daemon(s->daemon);
        free_server(s);
        return -1;
    }
    snprintf(s->base, sizeof(s->base), "http://127.0.0.1:%d", s->port);
    *out = s;
    return 0;
}

void file_server_replace(struct file_server *s, const void *data, size_t len, const char *etag)
{
    char *e = dup_or_null(etag);
    pthread_mutex_lock(&s->lock);
    s->data = data;
    s->len = len;
    free(s->etag);
    s->etag = e;
    pthread_mutex_unlock(&s->lock);
}

int file_server_port(const struct file_server *s)
{
    return s->port;
}

const char *file_server_base(const struct file_server *s)
{
    return s->base;
}

int file_server_requests(struct file_server *s, struct file_server_request *out, int max)
{
    pthread_mutex_lock(&s->lock);
    int n = s->n_requests;
    for (int i = 0; i < n && i < max && i < FILE_SERVER_LOG_MAX; i++)
        out[i] = s->log[i];
    pthread_mutex_unlock(&s->lock);
    return n;
}

void file_server_clear_log(struct file_server *s)
{
    pthread_mutex_lock(&s->lock);
    s->n_requests = 0;
    pthread_mutex_unlock(&s->lock);
}

void file_server_stop(struct file_server *s)
{
    if (!s)
        return;
    atomic_store(&s->stopping, 1);
    MHD_stop_daemon(s->daemon);
    free_server(s);
}
