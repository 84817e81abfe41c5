/*
 * fetch: model specs to local files, with a resumable, cached download on
 * libcurl (see fetch.h for the contract and the key decisions).
 *
 * One download is one struct xfer: the .part's descriptor (locked), how
 * many bytes it held when the current response began, what this response
 * added, and the current response's status and headers, which the header
 * callback reads as they arrive. Whether a response's body belongs in the
 * file is decided once, at the end of its headers: a 200 starts the file
 * over, a 206 must start exactly where the .part ends, anything else (a
 * redirect, an error page) is not written. Bytes go in with pwrite at their
 * offset, so starting over is an ftruncate and nothing else.
 *
 * A resume must not splice two versions of a file (hf:...@main can change
 * between attempts): the validator of the response that started the .part
 * (a strong ETag, else Last-Modified) is kept in "<file>.part.validator"
 * and sent as If-Range with every later Range request, so a server whose
 * file changed answers 200 with the whole new file, which starts over.
 */
#include "worker/fetch.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "worker/sha256.h"

#define FETCH_DEFAULT_ENDPOINT "https://huggingface.co"
#define FETCH_URL_MAX          4096
#define FETCH_MAX_REDIRECTS    10
#define FETCH_RESTART          1 /* internal: the .part is useless, start from byte 0 */

/* ---- libcurl, initialised once ---- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int curl_ready(char *err, size_t errlen)
{
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK) {
        snprintf(err, errlen, "libcurl did not initialise: %s", curl_easy_strerror(curl_init_rc));
        return FETCH_ENET;
    }
    return 0;
}

/* ---- small helpers ---- */

static int has_prefix_ci(const char *s, const char *prefix)
{
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

int fetch_is_remote(const char *spec)
{
    return has_prefix_ci(spec, "http://") || has_prefix_ci(spec, "https://") ||
           strncmp(spec, "hf:", 3) == 0;
}

/* "812.4 MB", "4.07 GB" (decimal units, like MB/s). */
static const char *fmt_size(uint64_t b, char *buf, size_t cap)
{
    if (b >= 1000000000ull)
        snprintf(buf, cap, "%.2f GB", (double)b / 1e9);
    else
        snprintf(buf, cap, "%.1f MB", (double)b / 1e6);
    return buf;
}

/* "1:02:03", "2:03", or "--:--" when unknown. */
static const char *fmt_eta(double s, char *buf, size_t cap)
{
    if (!(s >= 0) || s > 360000) {
        snprintf(buf, cap, "--:--");
        return buf;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(buf, cap, "%ld:%02ld", t / 60, t % 60);
    return buf;
}

/* Percent-encode src onto dst (cap bytes) keeping unreserved characters and
 * those in `keep`. 0, or -1 when it does not fit or src holds a control
 * character. */
static int pct_encode(char *dst, size_t cap, const char *src, const char *keep)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(dst);
    for (const unsigned char *p = (const unsigned char *)src; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            return -1;
        if (isalnum(*p) || strchr("-._~", *p) || strchr(keep, *p)) {
            if (n + 1 >= cap)
                return -1;
            dst[n++] = (char)*p;
        } else {
            if (n + 3 >= cap)
                return -1;
            dst[n++] = '%';
            dst[n++] = hex[*p >> 4];
            dst[n++] = hex[*p & 15];
        }
    }
    dst[n] = '\0';
    return 0;
}

/* Create dir and its parents (mode 0755). 0, or FETCH_EIO with a message. */
static int mkdir_p(const char *dir, char *err, size_t errlen)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof(p), "%s", dir) >= (int)sizeof(p)) {
        snprintf(err, errlen, "cache path too long: %.200s...", dir);
        return FETCH_EIO;
    }
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0755) < 0 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create the cache directory %s: %s", p, strerror(errno));
            return FETCH_EIO;
        }
        *s = c;
        if (c == '\0')
            break;
    }
    struct stat st;
    int e = stat(p, &st) < 0 ? errno : (S_ISDIR(st.st_mode) ? 0 : ENOTDIR);
    if (e) {
        snprintf(err, errlen, "cannot create the cache directory %s: %s", p, strerror(e));
        return FETCH_EIO;
    }
    return 0;
}

/* ---- specs, URLs and cache paths ---- */

static const char *hf_endpoint(const char *endpoint)
{
    if (endpoint && *endpoint)
        return endpoint;
    const char *e = getenv("HF_ENDPOINT");
    return e && *e ? e : FETCH_DEFAULT_ENDPOINT;
}

static int repo_name_ok(const char *s, size_t n)
{
    if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("-._", s[i]))
            return 0;
    return 1;
}

int fetch_hf_url(const char *spec, const char *endpoint, char *url, size_t cap, char *err,
                 size_t errlen)
{
    const char *usage =
        "an hf: spec is hf:owner/repo/file.gguf or hf:owner/repo/file.gguf@revision";
    const char *s = spec;
    if (strncmp(s, "hf://", 5) == 0)
        s += 5;
    else if (strncmp(s, "hf:", 3) == 0)
        s += 3;
    else
        goto bad;
    char body[FETCH_URL_MAX], rev[512] = "main";
    if (snprintf(body, sizeof(body), "%s", s) >= (int)sizeof(body))
        goto bad;
    char *at = strrchr(body, '@');
    if (at) {
        *at = '\0';
        if (at[1] == '\0' || snprintf(rev, sizeof(rev), "%s", at + 1) >= (int)sizeof(rev))
            goto bad;
    }
    char *slash1 = strchr(body, '/');
    char *slash2 = slash1 ? strchr(slash1 + 1, '/') : NULL;
    if (!slash2 || !repo_name_ok(body, (size_t)(slash1 - body)) ||
        !repo_name_ok(slash1 + 1, (size_t)(slash2 - slash1 - 1)))
        goto bad;
    const char *file = slash2 + 1;
    /* the file: non-empty components, none "." or ".." */
    for (const char *c = file;;) {
        const char *e = strchr(c, '/');
        size_t n = e ? (size_t)(e - c) : strlen(c);
        if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.'))
            goto bad;
        if (!e)
            break;
        c = e + 1;
    }
    const char *ep = hf_endpoint(endpoint);
    size_t eplen = strlen(ep);
    while (eplen > 0 && ep[eplen - 1] == '/')
        eplen--;
    if (!has_prefix_ci(ep, "http://") && !has_prefix_ci(ep, "https://")) {
        snprintf(err, errlen, "the Hugging Face endpoint must be an http(s) URL, got '%.200s'", ep);
        return FETCH_ESPEC;
    }
    if (snprintf(url, cap, "%.*s/%.*s/resolve/", (int)eplen, ep, (int)(slash2 - body), body) >=
            (int)cap ||
        pct_encode(url, cap, rev, "") < 0 || strlen(url) + 2 >= cap)
        goto bad;
    strcat(url, "/");
    if (pct_encode(url, cap, file, "/") < 0)
        goto bad;
    return 0;
bad:
    snprintf(err, errlen, "bad model spec '%.300s': %s", spec, usage);
    return FETCH_ESPEC;
}

/* Append component c (n bytes) to path, sanitised (see fetch_cache_path);
 * `query` (or NULL) is hashed in before the extension. 0, or -1 if too long. */
static int append_component(char *path, size_t cap, const char *c, size_t n, const char *query)
{
    char comp[256];
    size_t m = 0;
    for (size_t i = 0; i < n && m < 200; i++) {
        char ch = c[i];
        int ok = isalnum((unsigned char)ch) || strchr("._+=@,-", ch);
        comp[m++] = ok && ch ? ch : '_';
    }
    comp[m] = '\0';
    if (comp[0] == '.')
        comp[0] = '_';
    char tag[32] = "";
    if (n > 200 || query) {
        /* truncated or with a query: a hash keeps different URLs apart */
        char hex[SHA256_HEX_LEN + 1], buf[FETCH_URL_MAX];
        snprintf(buf, sizeof(buf), "%.*s?%s", (int)n, c, query ? query : "");
        sha256_hex_of(buf, strlen(buf), hex);
        snprintf(tag, sizeof(tag), "-%.12s", hex);
    }
    char *dot = strrchr(comp, '.');
    if (!dot || dot == comp)
        dot = comp + m;
    size_t len = strlen(path);
    int w = snprintf(path + len, cap - len, "/%.*s%s%s", (int)(dot - comp), comp, tag, dot);
    return w < 0 || (size_t)w >= cap - len ? -1 : 0;
}

int fetch_cache_path(const char *url, const char *cache_dir, char *path, size_t cap, char *err,
                     size_t errlen)
{
    int rc = curl_ready(err, errlen);
    if (rc < 0)
        return rc;
    rc = FETCH_ESPEC;
    char *host = NULL, *port = NULL, *upath = NULL, *query = NULL;
    CURLU *u = curl_url();
    if (!u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PATH, &upath, CURLU_URLDECODE) != CURLUE_OK) {
        snprintf(err, errlen, "bad URL '%.300s'", url);
        goto out;
    }
    curl_url_get(u, CURLUPART_PORT, &port, 0); /* only when the URL names one */
    curl_url_get(u, CURLUPART_QUERY, &query, 0);
    for (char *h = host; *h; h++)
        *h = (char)tolower((unsigned char)*h);
    if (snprintf(path, cap, "%s", cache_dir) >= (int)cap)
        goto too_long;
    char hostdir[300];
    snprintf(hostdir, sizeof(hostdir), "%s%s%s", host, port ? "_" : "", port ? port : "");
    if (append_component(path, cap, hostdir, strlen(hostdir), NULL) < 0)
        goto too_long;
    /* the path's components; the last one names the file */
    const char *last = NULL;
    size_t last_n = 0;
    for (const char *c = upath;;) {
        const char *e = strchr(c, '/');
        size_t n = e ? (size_t)(e - c) : strlen(c);
        if (n > 0 && !(n == 1 && c[0] == '.') && !(n == 2 && c[0] == '.' && c[1] == '.')) {
            if (last && append_component(path, cap, last, last_n, NULL) < 0)
                goto too_long;
            last = c;
            last_n = n;
        }
        if (!e)
            break;
        c = e + 1;
    }
    size_t plen = strlen(upath);
    if (!last || (plen > 0 && upath[plen - 1] == '/')) {
        snprintf(err, errlen, "the URL '%.300s' names no file (its path ends without one)", url);
        goto out;
    }
    if (append_component(path, cap, last, last_n, query) < 0)
        goto too_long;
    rc = 0;
    goto out;
too_long:
    snprintf(err, errlen, "the cache path for '%.300s' is too long", url);
out:
    curl_free(host);
    curl_free(port);
    curl_free(upath);
    curl_free(query);
    curl_url_cleanup(u);
    return rc;
}

int fetch_default_cache_dir(char *out, size_t cap, char *err, size_t errlen)
{
    const char *e = getenv("MILLRACE_CACHE");
    int n;
    if (e && *e)
        n = snprintf(out, cap, "%s", e);
    else if ((e = getenv("XDG_CACHE_HOME")) && *e)
        n = snprintf(out, cap, "%s/millrace", e);
    else if ((e = getenv("HOME")) && *e)
        n = snprintf(out, cap, "%s/.cache/millrace", e);
    else {
        snprintf(err, errlen, "no cache directory: set MILLRACE_CACHE (or HOME)");
        return FETCH_EIO;
    }
    if (n < 0 || (size_t)n >= cap) {
        snprintf(err, errlen, "the cache directory path is too long");
        return FETCH_EIO;
    }
    return 0;
}

/* scheme, host and port of a URL, for comparing origins. 0 or -1. */
struct origin {
    char scheme[16];
    char host[256];
    long port;
};

static int origin_of(const char *url, struct origin *o)
{
    char *scheme = NULL, *host = NULL, *port = NULL;
    int rc = -1;
    CURLU *u = curl_url();
    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
        snprintf(o->scheme, sizeof(o->scheme), "%s", scheme);
        snprintf(o->host, sizeof(o->host), "%s", host);
        o->port = strtol(port, NULL, 10);
        rc = 0;
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return rc;
}

static int same_origin(const struct origin *a, const struct origin *b)
{
    return strcasecmp(a->scheme, b->scheme) == 0 && strcasecmp(a->host, b->host) == 0 &&
           a->port == b->port;
}

/* ---- one download ---- */

struct xfer {
    /* the download */
    const char *url;  /* borrowed: the URL asked for */
    const char *part; /* borrowed: the .part path */
    const char *name; /* borrowed: the file name, for progress */
    const atomic_int *cancel;
    int fd;           /* the .part, locked */
    uint64_t offset;  /* bytes in the .part when this response began */
    uint64_t written; /* bytes this response added */
    uint64_t total;   /* the whole file's size, 0 while unknown */
    enum fetch_progress mode;
    char validator[256]; /* If-Range for the .part's bytes: ETag or date, or "" */

    /* the current response */
    long status;
    char etag[256], last_modified[128];
    int body; /* its body goes to the file */
    int64_t content_length;
    char content_range[128];
    char server_msg[256]; /* X-Error-Message (Hugging Face), or the body's start */
    size_t server_msg_len;
    int from_header; /* server_msg came from X-Error-Message */
    int range_bad;   /* a 206 that does not continue the .part */
    int write_errno; /* a write to the .part failed */
    char space_msg[256];
    char errbuf[CURL_ERROR_SIZE];

    /* progress */
    int64_t t_start, t_sample, t_log;
    uint64_t sample_bytes, session_start;
    double speed; /* bytes/s, smoothed */
    int last_decile;
    int bar_drawn;
};

static void reset_response(struct xfer *x)
{
    x->status = 0;
    x->body = 0;
    x->content_length = -1;
    x->content_range[0] = '\0';
    x->etag[0] = '\0';
    x->last_modified[0] = '\0';
    x->server_msg[0] = '\0';
    x->server_msg_len = 0;
    x->from_header = 0;
}

/* The value of header line p (n bytes) if it is `name`, trimmed, into out. */
static int header_value(const char *p, size_t n, const char *name, char *out, size_t cap)
{
    size_t k = strlen(name);
    if (n <= k || strncasecmp(p, name, k) != 0 || p[k] != ':')
        return 0;
    const char *v = p + k + 1, *e = p + n;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' '))
        e--;
    snprintf(out, cap, "%.*s", (int)(e - v), v);
    return 1;
}

/* "<part>.validator" into out; -1 when it does not fit. */
static int validator_path(const char *part, char *out, size_t cap)
{
    return snprintf(out, cap, "%s.validator", part) < (int)cap ? 0 : -1;
}

/* A 200 starts the .part: remember what identifies its bytes (a weak ETag
 * may not be used with If-Range). */
static void validator_keep(struct xfer *x)
{
    char path[PATH_MAX + 32];
    x->validator[0] = '\0';
    if (validator_path(x->part, path, sizeof(path)) < 0)
        return;
    const char *v = x->etag[0] && strncmp(x->etag, "W/", 2) != 0 ? x->etag : x->last_modified;
    snprintf(x->validator, sizeof(x->validator), "%s", v);
    FILE *f = x->validator[0] ? fopen(path, "we") : NULL;
    if (!f || fprintf(f, "%s\n", x->validator) < 0 || fclose(f) != 0) {
        /* without it a later resume cannot tell a changed file: start over then */
        unlink(path);
        x->validator[0] = '\0';
    }
}

/* The validator of an existing .part (x->validator, "" when unknown). */
static void validator_load(struct xfer *x)
{
    char path[PATH_MAX + 32];
    x->validator[0] = '\0';
    FILE *f = validator_path(x->part, path, sizeof(path)) == 0 ? fopen(path, "re") : NULL;
    if (!f)
        return;
    if (fgets(x->validator, sizeof(x->validator), f))
        x->validator[strcspn(x->validator, "\r\n")] = '\0';
    fclose(f);
}

/* The headers are complete: decide whether the body goes into the file.
 * Returns 0, or -1 to abort the transfer. */
static int headers_done(struct xfer *x)
{
    if (x->status != 200 && x->status != 206)
        return 0;
    if (x->status == 200) {
        if (x->offset > 0) {
            log_info("%s: %s; starting over", x->name,
                     x->validator[0] ? "the file changed on the server (or it ignores ranges)"
                                     : "the server ignored the range request");
            if (ftruncate(x->fd, 0) < 0) {
                x->write_errno = errno;
                return -1;
            }
            x->offset = 0;
        }
        x->total = x->content_length >= 0 ? (uint64_t)x->content_length : 0;
        validator_keep(x);
    } else {
        unsigned long long a = 0, b = 0, t = 0;
        char star = 0;
        if (sscanf(x->content_range, "bytes %llu-%llu/%llu", &a, &b, &t) == 3)
            x->total = t;
        else if (sscanf(x->content_range, "bytes %llu-%llu/%c", &a, &b, &star) == 3 && star == '*')
            x->total = x->content_length >= 0 ? x->offset + (uint64_t)x->content_length : 0;
        else
            a = UINT64_MAX;
        if (a != x->offset) {
            x->range_bad = 1;
            return -1;
        }
    }
    x->body = 1;
    /* fail early, with a clear message, when the rest cannot fit */
    struct statvfs vfs;
    if (x->total > x->offset && fstatvfs(x->fd, &vfs) == 0) {
        uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize, need = x->total - x->offset;
        if (avail < need) {
            char s1[32], s2[32];
            snprintf(x->space_msg, sizeof(x->space_msg),
                     "not enough disk space for %s: %s more needed, %s free", x->part,
                     fmt_size(need, s1, sizeof(s1)), fmt_size(avail, s2, sizeof(s2)));
            return -1;
        }
    }
    return 0;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *arg)
{
    struct xfer *x = arg;
    size_t n = size * nmemb;
    char v[128];
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        reset_response(x);
        const char *sp = memchr(p, ' ', n);
        x->status = sp ? strtol(sp + 1, NULL, 10) : 0;
    } else if (header_value(p, n, "Content-Length", v, sizeof(v))) {
        x->content_length = strtoll(v, NULL, 10);
    } else if (header_value(p, n, "Content-Range", x->content_range, sizeof(x->content_range))) {
    } else if (header_value(p, n, "ETag", x->etag, sizeof(x->etag))) {
    } else if (header_value(p, n, "Last-Modified", x->last_modified, sizeof(x->last_modified))) {
    } else if (header_value(p, n, "X-Error-Message", x->server_msg, sizeof(x->server_msg))) {
        x->from_header = 1;
    } else if (n <= 2 && (p[0] == '\r' || p[0] == '\n')) {
        if (headers_done(x) < 0)
            return 0;
    }
    return n;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *arg)
{
    struct xfer *x = arg;
    size_t n = size * nmemb;
    if (!x->body) {
        /* an error page: keep its start for the message */
        if (!x->from_header) {
            size_t room = sizeof(x->server_msg) - 1 - x->server_msg_len;
            size_t k = n < room ? n : room;
            for (size_t i = 0; i < k; i++) {
                char c = p[i];
                x->server_msg[x->server_msg_len++] = c >= 0x20 && c < 0x7f ? c : ' ';
            }
            x->server_msg[x->server_msg_len] = '\0';
        }
        return n;
    }
    for (size_t done = 0; done < n;) {
        ssize_t w = pwrite(x->fd, p + done, n - done, (off_t)(x->offset + x->written));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            x->write_errno = w < 0 ? errno : ENOSPC;
            return 0;
        }
        done += (size_t)w;
        x->written += (uint64_t)w;
    }
    return n;
}

/* Draw the bar, at most 4 times a second (every time when final), or write
 * a log line at each tenth of the file and every 10 s. */
static void progress(struct xfer *x, int final)
{
    if (x->mode == FETCH_PROGRESS_NONE || !x->body)
        return;
    int64_t now = clock_now_ms();
    uint64_t done = x->offset + x->written;
    const int decile = x->total ? (int)(done * 10 / x->total) : 0;
    if (x->t_start == 0) {
        x->t_start = x->t_sample = x->t_log = now;
        x->sample_bytes = x->session_start = done;
        x->last_decile = decile;
        return;
    }
    /* a log line is due at each tenth, however soon after the last sample (a
     * fast end after a slow start crosses several between samples) */
    const int log_due = final || decile > x->last_decile || now - x->t_log >= 10000;
    if (!final && now - x->t_sample < 250 && (x->mode == FETCH_PROGRESS_BAR || !log_due))
        return;
    if (now > x->t_sample) {
        double inst = (double)(done - x->sample_bytes) * 1000.0 / (double)(now - x->t_sample);
        x->speed = x->speed > 0 ? 0.7 * x->speed + 0.3 * inst : inst;
        x->t_sample = now;
        x->sample_bytes = done;
    }
    char s1[32], s2[32], eta[40];
    double left = x->total > done && x->speed > 0 ? (double)(x->total - done) / x->speed : -1;
    int pct = x->total ? (int)(done * 100 / x->total) : 0;
    double speed = x->speed;
    if (final && now > x->t_start) {
        /* the end: the average speed and the time it took */
        speed = (double)(done - x->session_start) * 1000.0 / (double)(now - x->t_start);
        snprintf(eta, sizeof(eta), "in ");
        fmt_eta((double)(now - x->t_start) / 1000.0, eta + 3, sizeof(eta) - 3);
    } else {
        snprintf(eta, sizeof(eta), "ETA ");
        fmt_eta(left, eta + 4, sizeof(eta) - 4);
    }
    if (x->mode == FETCH_PROGRESS_BAR) {
        char line[200], bar[26];
        int n;
        if (x->total) {
            int fill = pct * 24 / 100;
            for (int i = 0; i < 24; i++)
                bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
            bar[24] = '\0';
            n = snprintf(line, sizeof(line), "\r%-24.24s %3d%% [%s] %s / %s  %6.1f MB/s  %-12s",
                         x->name, pct, bar, fmt_size(done, s1, sizeof(s1)),
                         fmt_size(x->total, s2, sizeof(s2)), speed / 1e6, eta);
        } else {
            n = snprintf(line, sizeof(line), "\r%-24.24s %s  %6.1f MB/s ", x->name,
                         fmt_size(done, s1, sizeof(s1)), speed / 1e6);
        }
        if (n > 0 && write(STDERR_FILENO, line, (size_t)n) < 0) {
            /* a progress bar is best effort */
        }
        x->bar_drawn = 1;
        return;
    }
    if (log_due) {
        x->last_decile = decile;
        x->t_log = now;
        if (x->total)
            log_info("downloading %s: %d%% (%s of %s, %.1f MB/s, %s)", x->name, pct,
                     fmt_size(done, s1, sizeof(s1)), fmt_size(x->total, s2, sizeof(s2)),
                     speed / 1e6, eta);
        else
            log_info("downloading %s: %s so far (%.1f MB/s)", x->name,
                     fmt_size(done, s1, sizeof(s1)), speed / 1e6);
    }
}

static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    struct xfer *x = arg;
    progress(x, 0);
    return x->cancel && atomic_load(x->cancel) ? 1 : 0; /* non-zero aborts the transfer */
}

static void end_bar(struct xfer *x)
{
    if (x->bar_drawn && write(STDERR_FILENO, "\n", 1) < 0) {
        /* best effort */
    }
    x->bar_drawn = 0;
}

/* The configuration of one call, defaults applied. */
struct cfg {
    char cache_dir[PATH_MAX];
    const char *sha256;
    const char *token;
    struct origin auth_origin; /* where the token may go */
    int force, retries;
    enum fetch_progress progress;
    long connect_timeout_s, low_speed_bytes, low_speed_s;
    const atomic_int *cancel;
};

/*
 * One request for the rest of the file, following redirects. Returns 0 when
 * the .part holds the whole file (x->total set when known), FETCH_RESTART
 * when the .part must be dropped, or an error code with a message; *status
 * gets the last HTTP status (0: none).
 */
static int transfer(struct xfer *x, const struct cfg *c, long *status, char *err, size_t errlen)
{
    char url[FETCH_URL_MAX], authz[1024] = "", range[64], if_range[300];
    snprintf(url, sizeof(url), "%s", x->url);
    if (c->token && *c->token)
        snprintf(authz, sizeof(authz), "Authorization: Bearer %s", c->token);
    CURL *h = curl_easy_init();
    if (!h) {
        snprintf(err, errlen, "libcurl: cannot create a transfer");
        return FETCH_ENET;
    }
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L); /* by hand: see the file comment */
    curl_easy_setopt(h, CURLOPT_USERAGENT, "millrace/1");
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, c->connect_timeout_s);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, c->low_speed_bytes);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, c->low_speed_s);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    /* a proxy's "200 Connection established" must not look like the file's 200 */
    curl_easy_setopt(h, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 256L * 1024);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, x);

    int rc = 0, sent_token = 0;
    CURLcode cc = CURLE_OK;
    struct origin hop_origin = {{0}, {0}, 0};
    for (int hop = 0;; hop++) {
        if (hop > FETCH_MAX_REDIRECTS) {
            snprintf(err, errlen, "too many redirects for %.300s", x->url);
            rc = FETCH_EHTTP;
            goto out;
        }
        reset_response(x);
        x->written = 0;
        x->range_bad = 0;
        x->write_errno = 0;
        x->space_msg[0] = '\0';
        x->errbuf[0] = '\0';
        struct curl_slist *hdrs = NULL, *tmp;
        int give_token = authz[0] && origin_of(url, &hop_origin) == 0 &&
                         same_origin(&hop_origin, &c->auth_origin);
        if (give_token && (tmp = curl_slist_append(hdrs, authz)))
            hdrs = tmp;
        if (x->offset > 0) {
            snprintf(range, sizeof(range), "Range: bytes=%" PRIu64 "-", x->offset);
            if ((tmp = curl_slist_append(hdrs, range)))
                hdrs = tmp;
            snprintf(if_range, sizeof(if_range), "If-Range: %s", x->validator);
            if (x->validator[0] && (tmp = curl_slist_append(hdrs, if_range)))
                hdrs = tmp;
        }
        sent_token |= give_token;
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
        cc = curl_easy_perform(h);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
        curl_slist_free_all(hdrs);
        *status = x->status;
        if (cc != CURLE_OK || x->status < 300 || x->status >= 400 || x->status == 304)
            break;
        char *next = NULL;
        curl_easy_getinfo(h, CURLINFO_REDIRECT_URL, &next);
        if (!next || snprintf(url, sizeof(url), "%s", next) >= (int)sizeof(url)) {
            snprintf(err, errlen, "HTTP %ld without a usable Location from %.300s", x->status,
                     x->url);
            rc = FETCH_EHTTP;
            goto out;
        }
        struct origin o;
        if (origin_of(url, &o) == 0)
            log_debug("%s: redirected to %s", x->name, o.host); /* not the URL: it may be signed */
    }
    end_bar(x);

    /* where the failure happened, when a redirect took us elsewhere */
    char where[400] = "";
    struct origin first;
    if (origin_of(x->url, &first) == 0 && origin_of(url, &hop_origin) == 0 &&
        strcasecmp(first.host, hop_origin.host) != 0)
        snprintf(where, sizeof(where), " (redirected to %s)", hop_origin.host);
    char s1[32], s2[32];
    if (cc != CURLE_OK) {
        if (cc == CURLE_ABORTED_BY_CALLBACK) {
            snprintf(err, errlen, "download of %.300s cancelled; the partial file %s is kept",
                     x->url, x->part);
            rc = FETCH_ECANCELLED;
        } else if (x->space_msg[0]) {
            snprintf(err, errlen, "%s", x->space_msg);
            rc = FETCH_EIO;
        } else if (x->write_errno) {
            snprintf(err, errlen, "cannot write %s: %s%s", x->part, strerror(x->write_errno),
                     x->write_errno == ENOSPC ? " (free some space, then run again to resume)"
                                              : "");
            rc = FETCH_EIO;
        } else if (x->range_bad) {
            log_warn("%s: the server answered range '%s' for bytes %" PRIu64 "-; starting over",
                     x->name, x->content_range, x->offset);
            rc = FETCH_RESTART;
        } else if (x->body) {
            uint64_t have = x->offset + x->written;
            snprintf(err, errlen,
                     "download of %.300s interrupted at %s of %s: %s; the partial file %s is "
                     "kept: a retry will resume it",
                     x->url, fmt_size(have, s1, sizeof(s1)),
                     x->total ? fmt_size(x->total, s2, sizeof(s2)) : "?",
                     x->errbuf[0] ? x->errbuf : curl_easy_strerror(cc), x->part);
            rc = FETCH_EPARTIAL;
        } else {
            snprintf(err, errlen, "cannot download %.300s%s: %s", x->url, where,
                     x->errbuf[0] ? x->errbuf : curl_easy_strerror(cc));
            rc = FETCH_ENET;
        }
        goto out;
    }
    if (x->status == 200 || x->status == 206) {
        uint64_t have = x->offset + x->written;
        if (x->total && have != x->total) {
            snprintf(err, errlen,
                     "download of %.300s ended at %s of %s; the partial file %s is kept: a "
                     "retry will resume it",
                     x->url, fmt_size(have, s1, sizeof(s1)), fmt_size(x->total, s2, sizeof(s2)),
                     x->part);
            rc = FETCH_EPARTIAL;
            goto out;
        }
        x->total = have;
        if (x->mode == FETCH_PROGRESS_BAR)
            progress(x, 1);
        rc = 0;
        goto out;
    }
    if (x->status == 416) {
        /* the .part reaches the end already, or is longer than the file */
        unsigned long long t = 0;
        if (sscanf(x->content_range, "bytes */%llu", &t) == 1 && t == x->offset) {
            x->total = t;
            rc = 0;
        } else {
            log_warn("%s: the partial file (%" PRIu64 " bytes) does not fit the file on the "
                     "server; starting over",
                     x->name, x->offset);
            rc = FETCH_RESTART;
        }
        goto out;
    }
    char said[300] = "";
    if (x->server_msg[0])
        snprintf(said, sizeof(said), "; the server says: %.250s", x->server_msg);
    rc = FETCH_EHTTP;
    if (x->status == 401 || x->status == 403) {
        if (hop_origin.host[0] && !same_origin(&hop_origin, &c->auth_origin))
            snprintf(err, errlen,
                     "access denied (HTTP %ld) for %.300s%s: the server wants credentials; "
                     "HF_TOKEN is sent only to %s%s",
                     x->status, x->url, where, c->auth_origin.host, said);
        else if (sent_token)
            snprintf(err, errlen,
                     "access denied (HTTP %ld) for %.300s even with HF_TOKEN: does the token "
                     "have access to this gated or private repository?%s",
                     x->status, x->url, said);
        else
            snprintf(err, errlen,
                     "access denied (HTTP %ld) for %.300s: gated or private repository? set "
                     "HF_TOKEN%s",
                     x->status, x->url, said);
    } else if (x->status == 404) {
        snprintf(err, errlen, "not found (HTTP 404): check the URL %.300s%s%s", x->url, where,
                 said);
    } else {
        snprintf(err, errlen, "HTTP %ld from %.300s%s%s%s", x->status, x->url, where,
                 x->status >= 500 || x->status == 429 ? " (try again later)" : "", said);
    }
out:
    end_bar(x);
    curl_easy_cleanup(h);
    return rc;
}

/* ---- the cache ---- */

/* The sidecar "<file>.sha256" records a checked hash with the file's size
 * and mtime, so that a cached multi-gigabyte file is hashed once, not at
 * every start (sha256.c hashes 300 MB/s: a 7.7 GB Q8_0 Mistral-7B would
 * cost 26 s per worker start). */
static void sidecar_path(const char *file, char *out, size_t cap)
{
    snprintf(out, cap, "%s.sha256", file);
}

static int sidecar_vouches(const char *file, const char *want)
{
    char sp[PATH_MAX + 8], line[200], hex[SHA256_HEX_LEN + 1];
    struct stat st;
    sidecar_path(file, sp, sizeof(sp));
    FILE *f = fopen(sp, "re");
    if (!f)
        return 0;
    int ok = 0;
    unsigned long long size, sec, nsec;
    if (fgets(line, sizeof(line), f) &&
        sscanf(line, "%64s %llu %llu.%llu", hex, &size, &sec, &nsec) == 4 && stat(file, &st) == 0 &&
        strcasecmp(hex, want) == 0 && size == (uint64_t)st.st_size &&
        sec == (uint64_t)st.st_mtim.tv_sec && nsec == (uint64_t)st.st_mtim.tv_nsec)
        ok = 1;
    fclose(f);
    return ok;
}

static void sidecar_write(const char *file, const char *hex)
{
    char sp[PATH_MAX + 8];
    struct stat st;
    sidecar_path(file, sp, sizeof(sp));
    if (stat(file, &st) < 0)
        return;
    FILE *f = fopen(sp, "we");
    if (!f)
        return; /* only an optimisation */
    fprintf(f, "%s %llu %llu.%09llu\n", hex, (unsigned long long)st.st_size,
            (unsigned long long)st.st_mtim.tv_sec, (unsigned long long)st.st_mtim.tv_nsec);
    fclose(f);
}

/* Check file against the expected hash. 0 when it matches, FETCH_ECHECKSUM
 * with got filled, FETCH_EIO when it cannot be read. */
static int check_sha(const char *file, const char *want, char got[SHA256_HEX_LEN + 1], char *err,
                     size_t errlen)
{
    if (sidecar_vouches(file, want)) {
        snprintf(got, SHA256_HEX_LEN + 1, "%s", want);
        return 0;
    }
    log_info("checking the sha256 of %s", file);
    if (sha256_file(file, got, err, errlen) < 0)
        return FETCH_EIO;
    if (strcasecmp(got, want) != 0)
        return FETCH_ECHECKSUM;
    return 0;
}

static int is_hex64(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!isxdigit((unsigned char)s[n]))
            return 0;
    return n == SHA256_HEX_LEN;
}

/*
 * Make `final` hold url's bytes: use it when there already (no network),
 * else download through "<final>.part" (locked). 0 or an error code.
 */
static int download(const char *url, const char *final, const struct cfg *c, char *err,
                    size_t errlen)
{
    char part[PATH_MAX + 8], dir[PATH_MAX], got[SHA256_HEX_LEN + 1];
    const char *name = strrchr(final, '/') ? strrchr(final, '/') + 1 : final;
    snprintf(part, sizeof(part), "%s.part", final);
    snprintf(dir, sizeof(dir), "%s", final);
    *strrchr(dir, '/') = '\0';
    int rc, fd = -1, force = c->force;

    if (!force && access(final, F_OK) == 0) {
        if (!c->sha256)
            goto cached;
        rc = check_sha(final, c->sha256, got, err, errlen);
        if (rc == 0)
            goto cached;
        if (rc != FETCH_ECHECKSUM)
            return rc;
        log_warn("%s: the cached file's sha256 is %s, not %s; downloading it again", final, got,
                 c->sha256);
        force = 1;
    }
    if ((rc = mkdir_p(dir, err, errlen)) < 0)
        return rc;
    /* lock the .part; when another process held it, it may have finished */
    for (;;) {
        fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            snprintf(err, errlen,
                     "cannot write to the cache: %s: %s (set MILLRACE_CACHE to use "
                     "another directory)",
                     part, strerror(errno));
            return FETCH_EIO;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
            log_info("%s: another process is downloading it; waiting", name);
            while (flock(fd, LOCK_EX) < 0 && errno == EINTR) {
            }
            if (!force && access(final, F_OK) == 0) {
                close(fd);
                if (c->sha256 && (rc = check_sha(final, c->sha256, got, err, errlen)) != 0) {
                    if (rc == FETCH_ECHECKSUM)
                        snprintf(err, errlen, "sha256 mismatch for %.300s: expected %s, got %s",
                                 final, c->sha256, got);
                    return rc;
                }
                goto cached;
            }
        }
        struct stat a, b;
        if (fstat(fd, &a) == 0 && stat(part, &b) == 0 && a.st_ino == b.st_ino &&
            a.st_dev == b.st_dev)
            break;
        close(fd); /* renamed or removed while we waited: take the new one */
    }

    struct stat st;
    if (force && ftruncate(fd, 0) < 0) {
        snprintf(err, errlen, "cannot truncate %s: %s", part, strerror(errno));
        rc = FETCH_EIO;
        goto out;
    }
    fstat(fd, &st);
    struct xfer x = {
        .url = url, .part = part, .name = name, .cancel = c->cancel, .fd = fd, .mode = c->progress};
    x.offset = (uint64_t)st.st_size;
    if (x.offset > 0)
        validator_load(&x);
    char s1[32];
    if (x.offset > 0)
        log_info("resuming %s at %s (%s)", url, fmt_size(x.offset, s1, sizeof(s1)), part);
    else
        log_info("downloading %s to %s", url, final);
    int64_t t0 = clock_now_ms();
    int restarted = 0;
    for (int attempt = 0;; attempt++) {
        long status = 0;
        rc = transfer(&x, c, &status, err, errlen);
        if (rc == FETCH_RESTART && !restarted) {
            restarted = 1;
            if (ftruncate(fd, 0) < 0) {
                snprintf(err, errlen, "cannot truncate %s: %s", part, strerror(errno));
                rc = FETCH_EIO;
                goto out;
            }
            x.offset = 0;
            continue;
        }
        if (rc == FETCH_RESTART) {
            snprintf(err, errlen, "the server keeps answering ranges that do not fit %.300s", url);
            rc = FETCH_EHTTP;
        }
        int retryable = rc == FETCH_EPARTIAL || rc == FETCH_ENET ||
                        (rc == FETCH_EHTTP && (status >= 500 || status == 429));
        if (!retryable || attempt >= c->retries)
            break;
        int64_t wait = 1000ll << (attempt < 5 ? attempt : 5);
        log_warn("%s; retrying in %lld s", err, (long long)(wait / 1000));
        for (int64_t t = 0; t < wait && !(c->cancel && atomic_load(c->cancel)); t += 100)
            clock_sleep_ms(100);
        if (c->cancel && atomic_load(c->cancel)) {
            snprintf(err, errlen, "download of %.300s cancelled; the partial file %s is kept", url,
                     part);
            rc = FETCH_ECANCELLED;
            break;
        }
        fstat(fd, &st); /* what the broken transfer left */
        x.offset = (uint64_t)st.st_size;
        x.t_start = 0;
    }
    if (rc < 0)
        goto out;
    if (fsync(fd) < 0) {
        snprintf(err, errlen, "cannot write %s: %s", part, strerror(errno));
        rc = FETCH_EIO;
        goto out;
    }
    double secs = (double)(clock_now_ms() - t0) / 1000.0;
    log_info("downloaded %s: %s in %.1f s", name, fmt_size(x.total, s1, sizeof(s1)), secs);
    if (c->sha256) {
        rc = check_sha(part, c->sha256, got, err, errlen);
        if (rc == FETCH_ECHECKSUM) {
            unlink(part);
            snprintf(err, errlen,
                     "sha256 mismatch for %.300s: expected %s, got %s; the download was deleted",
                     url, c->sha256, got);
        }
        if (rc < 0)
            goto out;
    }
    /* the final name only now, while still holding the lock */
    char sidecar[PATH_MAX + 8];
    sidecar_path(final, sidecar, sizeof(sidecar));
    unlink(sidecar); /* it spoke of the file being replaced */
    if (rename(part, final) < 0) {
        snprintf(err, errlen, "cannot rename %s to %s: %s", part, final, strerror(errno));
        rc = FETCH_EIO;
        goto out;
    }
    char vpath[PATH_MAX + 32];
    if (validator_path(part, vpath, sizeof(vpath)) == 0)
        unlink(vpath);
    if (c->sha256)
        sidecar_write(final, got);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    rc = 0;
out:
    close(fd);
    return rc;
cached:
    log_info("using the cached %s", final);
    return 0;
}

/* ---- the entry point ---- */

int fetch_resolve_model(const char *spec, const struct fetch_opts *o, char *path_out, size_t cap,
                        char *err, size_t errlen)
{
    static const struct fetch_opts none;
    if (!o)
        o = &none;
    err[0] = '\0';
    if (!fetch_is_remote(spec)) {
        struct stat st;
        if (stat(spec, &st) < 0) {
            snprintf(err, errlen,
                     "model file %.300s: %s (a model to download is an http(s):// URL or "
                     "hf:owner/repo/file.gguf)",
                     spec, strerror(errno));
            return FETCH_ESPEC;
        }
        if (S_ISDIR(st.st_mode)) {
            snprintf(err, errlen, "model file %.300s is a directory", spec);
            return FETCH_ESPEC;
        }
        if (snprintf(path_out, cap, "%s", spec) >= (int)cap) {
            snprintf(err, errlen, "model path too long");
            return FETCH_ESPEC;
        }
        return 0;
    }

    int rc = curl_ready(err, errlen);
    if (rc < 0)
        return rc;
    struct cfg c = {.sha256 = o->sha256,
                    .token = o->token,
                    .force = o->force,
                    .retries = o->retries > 0 ? o->retries : 0,
                    .progress = o->progress,
                    .connect_timeout_s = o->connect_timeout_s > 0 ? o->connect_timeout_s : 30,
                    .low_speed_bytes = o->low_speed_bytes > 0 ? o->low_speed_bytes : 1024,
                    .low_speed_s = o->low_speed_s > 0 ? o->low_speed_s : 60,
                    .cancel = o->cancel};
    if (c.sha256 && !*c.sha256)
        c.sha256 = NULL;
    if (c.sha256 && !is_hex64(c.sha256)) {
        snprintf(err, errlen, "the expected sha256 must be 64 hex digits, got '%.80s'", c.sha256);
        return FETCH_ESPEC;
    }
    if (!c.token)
        c.token = getenv("HF_TOKEN");
    if (!c.token || !*c.token)
        c.token = getenv("HUGGING_FACE_HUB_TOKEN");
    if (c.progress == FETCH_PROGRESS_AUTO)
        c.progress = isatty(STDERR_FILENO) ? FETCH_PROGRESS_BAR : FETCH_PROGRESS_LOG;
    const char *endpoint = hf_endpoint(o->hf_endpoint);
    if (origin_of(endpoint, &c.auth_origin) < 0) {
        snprintf(err, errlen, "bad Hugging Face endpoint '%.300s'", endpoint);
        return FETCH_ESPEC;
    }
    if (o->cache_dir && *o->cache_dir) {
        if (snprintf(c.cache_dir, sizeof(c.cache_dir), "%s", o->cache_dir) >=
            (int)sizeof(c.cache_dir)) {
            snprintf(err, errlen, "cache directory path too long");
            return FETCH_EIO;
        }
    } else if ((rc = fetch_default_cache_dir(c.cache_dir, sizeof(c.cache_dir), err, errlen)) < 0) {
        return rc;
    }

    char url[FETCH_URL_MAX], file[PATH_MAX];
    if (strncmp(spec, "hf:", 3) == 0)
        rc = fetch_hf_url(spec, endpoint, url, sizeof(url), err, errlen);
    else if (snprintf(url, sizeof(url), "%s", spec) >= (int)sizeof(url)) {
        snprintf(err, errlen, "URL too long");
        rc = FETCH_ESPEC;
    }
    if (rc < 0)
        return rc;
    if ((rc = fetch_cache_path(url, c.cache_dir, file, sizeof(file), err, errlen)) < 0)
        return rc;
    if ((rc = download(url, file, &c, err, errlen)) < 0)
        return rc;
    if (snprintf(path_out, cap, "%s", file) >= (int)cap) {
        snprintf(err, errlen, "model path too long for the caller's buffer");
        return FETCH_EIO;
    }
    return 0;
}
