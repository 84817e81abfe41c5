/*
 * Tests for worker/fetch.c (model download) and worker/sha256.c, against a
 * file server on 127.0.0.1 (tests/support/file_server.c) that serves a
 * project-made GGUF: the download equals the file byte for byte and opens;
 * the cache answers without a request; an interrupted download keeps its
 * .part and resumes with a Range request; a server that ignores ranges, a
 * .part that is complete or longer than the file; sha256 checks; HF_TOKEN
 * only to the Hugging Face endpoint, never to a redirect target or another
 * host; the messages for 401, 404, refused connections, stalls, unwritable
 * cache directories and failed writes; cancelling; two threads fetching one
 * file; the progress bar and log lines. No test talks to anything but 127.0.0.1.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/clock.h"
#include "tests/support/file_server.h"
#include "worker/fetch.h"
#include "worker/gguf.h"
#include "worker/make_model.h"
#include "worker/sha256.h"

#define MODEL_PATH "/models/tiny.gguf"
#define MIB        (1024 * 1024)

/* the sizes of a download's names (model_download) */
#define URL_CAP   256
#define CACHE_CAP 128
#define FILE_CAP  1024
#define PART_CAP  1100

static char tmp[64];     /* the test's temporary directory */
static char *model;      /* the served bytes: a "tiny" GGUF */
static size_t model_len; /* bytes in model */
static char model_sha[SHA256_HEX_LEN + 1];
static int n_cache; /* cache directories handed out */

/* ---- helpers ---- */

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle))
        fail_msg("\"%s\" does not contain \"%s\"", haystack, needle);
}

static void assert_not_contains(const char *haystack, const char *needle)
{
    if (strstr(haystack, needle))
        fail_msg("\"%s\" contains \"%s\"", haystack, needle);
}

/* A fresh, empty cache directory path (not created). */
static const char *new_cache(char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/cache-%d", tmp, ++n_cache);
    return buf;
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    if (p)
        p[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return p;
}

static void write_all(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void assert_file_is_model(const char *path)
{
    size_t n = 0;
    char *p = read_all(path, &n);
    assert_non_null(p);
    assert_int_equal(n, model_len);
    assert_memory_equal(p, model, model_len);
    free(p);
    struct gguf_file *g = NULL;
    char err[512];
    if (gguf_open(&g, path, err, sizeof(err)) < 0)
        fail_msg("gguf_open(%s): %s", path, err);
    gguf_close(g);
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

static struct file_server *serve(struct file_server_opts o)
{
    if (!o.data) {
        o.data = model;
        o.len = model_len;
    }
    if (!o.path)
        o.path = MODEL_PATH;
    struct file_server *s = NULL;
    assert_int_equal(file_server_start(&s, &o), 0);
    return s;
}

static void url_of(const struct file_server *s, const char *path, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%s", file_server_base(s), path);
}

/* The cache path fetch uses for a URL. */
static void cached_path(const char *url, const char *cache, char *buf, size_t cap)
{
    char err[256];
    if (fetch_cache_path(url, cache, buf, cap, err, sizeof(err)) < 0)
        fail_msg("%s", err);
}

static struct fetch_opts quiet(const char *cache)
{
    return (struct fetch_opts){.cache_dir = cache, .progress = FETCH_PROGRESS_NONE};
}

/* Where a download of the model on s goes: its URL, a fresh cache (and quiet
 * options for it, returned), the cached file's path and its .part's. */
static struct fetch_opts model_download(const struct file_server *s, char url[static URL_CAP],
                                        char cache[static CACHE_CAP], char file[static FILE_CAP],
                                        char part[static PART_CAP])
{
    url_of(s, MODEL_PATH, url, URL_CAP);
    struct fetch_opts o = quiet(new_cache(cache, CACHE_CAP));
    cached_path(url, cache, file, FILE_CAP);
    snprintf(part, PART_CAP, "%s.part", file);
    return o;
}

/* stderr into a file between begin and end; end returns what was written (new). */
static int saved_stderr = -1;
static char capture_path[128];

static void capture_begin(void)
{
    snprintf(capture_path, sizeof(capture_path), "%s/stderr-%d.txt", tmp, ++n_cache);
    fflush(stderr);
    saved_stderr = dup(STDERR_FILENO);
    int fd = open(capture_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0 && saved_stderr >= 0);
    dup2(fd, STDERR_FILENO);
    close(fd);
}

static char *capture_end(void)
{
    fflush(stderr);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    saved_stderr = -1;
    size_t n;
    char *p = read_all(capture_path, &n);
    assert_non_null(p);
    fputs(p, stderr); /* keep it visible in the test's output */
    return p;
}

/* ---- setup ---- */

static int group_setup(void **state)
{
    (void)state;
    /* only loopback, whatever the environment says */
    setenv("no_proxy", "*", 1);
    setenv("NO_PROXY", "*", 1);
    unsetenv("HF_TOKEN");
    unsetenv("HUGGING_FACE_HUB_TOKEN");
    unsetenv("HF_ENDPOINT");
    snprintf(tmp, sizeof(tmp), "/tmp/millrace-test-fetch-XXXXXX");
    if (!mkdtemp(tmp))
        return -1;
    char path[128], err[512];
    snprintf(path, sizeof(path), "%s/tiny.gguf", tmp);
    if (mkmodel_write(path, mkmodel_find_preset("tiny"), GGUF_TENSOR_F32, 7, NULL, err,
                      sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    model = read_all(path, &model_len);
    if (!model || model_len < 4 * MIB) {
        fprintf(stderr, "the tiny model should be a few MB, is %zu bytes\n", model_len);
        return -1;
    }
    sha256_hex_of(model, model_len, model_sha);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    free(model);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "chmod -R u+rwx '%s'; rm -rf '%s'", tmp, tmp);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- sha256 ---- */

static void test_sha256_nist_vectors(void **state)
{
    (void)state;
    char hex[SHA256_HEX_LEN + 1];
    sha256_hex_of("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sha256_hex_of("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    assert_int_equal(strlen(m448), 56);
    sha256_hex_of(m448, strlen(m448), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");

    /* a million 'a's, fed in pieces of awkward sizes (the partial-block path) */
    static char a[1000000];
    memset(a, 'a', sizeof(a));
    const char *million = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    struct sha256_ctx c;
    uint8_t d[SHA256_DIGEST_LEN];
    sha256_init(&c);
    for (size_t off = 0, step = 1; off < sizeof(a); off += step, step = step * 3 % 997 + 1)
        sha256_update(&c, a + off, off + step <= sizeof(a) ? step : sizeof(a) - off);
    sha256_final(&c, d);
    sha256_hex(d, hex);
    assert_string_equal(hex, million);

    /* the same from a file */
    char path[128], err[256];
    snprintf(path, sizeof(path), "%s/million-a", tmp);
    write_all(path, a, sizeof(a));
    assert_int_equal(sha256_file(path, hex, err, sizeof(err)), 0);
    assert_string_equal(hex, million);
    unlink(path);
    assert_int_equal(sha256_file(path, hex, err, sizeof(err)), -1);
    assert_contains(err, path);
    assert_contains(err, "No such file");
}

/* ---- specs and cache paths (no network) ---- */

static void test_hf_spec_builds_resolve_urls(void **state)
{
    (void)state;
    char url[512], err[256];
    assert_int_equal(
        fetch_hf_url("hf:owner/repo/file.gguf", NULL, url, sizeof(url), err, sizeof(err)), 0);
    assert_string_equal(url, "https://huggingface.co/owner/repo/resolve/main/file.gguf");
    assert_int_equal(fetch_hf_url("hf:TheBloke/Mistral-7B-Instruct-v0.2-GGUF/"
                                  "mistral-7b-instruct-v0.2.Q8_0.gguf@v1.0",
                                  NULL, url, sizeof(url), err, sizeof(err)),
                     0);
    assert_string_equal(url, "https://huggingface.co/TheBloke/Mistral-7B-Instruct-v0.2-GGUF/"
                             "resolve/v1.0/mistral-7b-instruct-v0.2.Q8_0.gguf");
    /* files in folders, revisions with slashes, characters to encode */
    assert_int_equal(
        fetch_hf_url("hf:o/r/sub dir/f.gguf@refs/pr/1", NULL, url, sizeof(url), err, sizeof(err)),
        0);
    assert_string_equal(url, "https://huggingface.co/o/r/resolve/refs%2Fpr%2F1/sub%20dir/f.gguf");
    /* another endpoint (a mirror), with or without a trailing slash */
    assert_int_equal(
        fetch_hf_url("hf:o/r/f.gguf", "http://127.0.0.1:9/", url, sizeof(url), err, sizeof(err)),
        0);
    assert_string_equal(url, "http://127.0.0.1:9/o/r/resolve/main/f.gguf");
    setenv("HF_ENDPOINT", "https://hf-mirror.example", 1);
    assert_int_equal(fetch_hf_url("hf:o/r/f.gguf", NULL, url, sizeof(url), err, sizeof(err)), 0);
    unsetenv("HF_ENDPOINT");
    assert_string_equal(url, "https://hf-mirror.example/o/r/resolve/main/f.gguf");

    const char *bad[] = {"hf:",
                         "hf:owner",
                         "hf:owner/repo",
                         "hf:owner/repo/",
                         "hf:o/r/f.gguf@",
                         "hf:o/r/../f.gguf",
                         "hf:o/r//f.gguf",
                         "hf:o w/r/f.gguf",
                         "hf:../r/f",
                         "hf:o/r/a\tb"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (fetch_hf_url(bad[i], NULL, url, sizeof(url), err, sizeof(err)) != FETCH_ESPEC)
            fail_msg("'%s' was accepted as %s", bad[i], url);
        assert_contains(err, "hf:owner/repo/file.gguf");
    }
    assert_true(fetch_is_remote("hf:o/r/f"));
    assert_true(fetch_is_remote("https://x/y"));
    assert_true(fetch_is_remote("HTTP://x/y"));
    assert_false(fetch_is_remote("/models/x.gguf"));
    assert_false(fetch_is_remote("models/hf:x.gguf"));
}

static void test_cache_path_mirrors_the_url(void **state)
{
    (void)state;
    char p[1024], q[1024], err[256];
    assert_int_equal(fetch_cache_path("https://huggingface.co/o/r/resolve/main/f.gguf", "/c", p,
                                      sizeof(p), err, sizeof(err)),
                     0);
    assert_string_equal(p, "/c/huggingface.co/o/r/resolve/main/f.gguf");
    assert_int_equal(
        fetch_cache_path("http://127.0.0.1:8080/a/b/m.gguf", "/c", p, sizeof(p), err, sizeof(err)),
        0);
    assert_string_equal(p, "/c/127.0.0.1_8080/a/b/m.gguf");
    /* hosts are case-insensitive; dot segments are resolved (never escape); odd characters
     * and leading dots are replaced */
    assert_int_equal(fetch_cache_path("http://EXAMPLE.com/x/../.hidden/a%20b.gguf", "/c", p,
                                      sizeof(p), err, sizeof(err)),
                     0);
    assert_string_equal(p, "/c/example.com/_hidden/a_b.gguf");
    /* a query string is hashed into the name, before the extension */
    assert_int_equal(fetch_cache_path("http://h/m.gguf?a=1", "/c", p, sizeof(p), err, sizeof(err)),
                     0);
    assert_int_equal(fetch_cache_path("http://h/m.gguf?a=2", "/c", q, sizeof(q), err, sizeof(err)),
                     0);
    assert_string_not_equal(p, q);
    assert_int_equal(strncmp(p, "/c/h/m-", 7), 0);
    assert_int_equal(strcmp(p + strlen(p) - 5, ".gguf"), 0);
    /* the same URL, the same file */
    assert_int_equal(fetch_cache_path("http://h/m.gguf?a=1", "/c", q, sizeof(q), err, sizeof(err)),
                     0);
    assert_string_equal(p, q);
    /* no file name */
    assert_int_equal(fetch_cache_path("http://h/dir/", "/c", p, sizeof(p), err, sizeof(err)),
                     FETCH_ESPEC);
    assert_contains(err, "names no file");
    assert_int_equal(fetch_cache_path("http://h", "/c", p, sizeof(p), err, sizeof(err)),
                     FETCH_ESPEC);
}

static void test_default_cache_dir_follows_the_environment(void **state)
{
    (void)state;
    const char *names[] = {"MILLRACE_CACHE", "XDG_CACHE_HOME", "HOME"};
    char saved[3][512];
    int had[3];
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(names[i]);
        had[i] = v != NULL;
        snprintf(saved[i], sizeof(saved[i]), "%s", v ? v : "");
    }
    char d[512], err[256];
    setenv("MILLRACE_CACHE", "/mc", 1);
    setenv("XDG_CACHE_HOME", "/xdg", 1);
    setenv("HOME", "/home/u", 1);
    assert_int_equal(fetch_default_cache_dir(d, sizeof(d), err, sizeof(err)), 0);
    assert_string_equal(d, "/mc");
    unsetenv("MILLRACE_CACHE");
    assert_int_equal(fetch_default_cache_dir(d, sizeof(d), err, sizeof(err)), 0);
    assert_string_equal(d, "/xdg/millrace");
    unsetenv("XDG_CACHE_HOME");
    assert_int_equal(fetch_default_cache_dir(d, sizeof(d), err, sizeof(err)), 0);
    assert_string_equal(d, "/home/u/.cache/millrace");
    unsetenv("HOME");
    assert_int_equal(fetch_default_cache_dir(d, sizeof(d), err, sizeof(err)), FETCH_EIO);
    assert_contains(err, "MILLRACE_CACHE");
    for (int i = 0; i < 3; i++)
        if (had[i])
            setenv(names[i], saved[i], 1);
}

static void test_local_path_passes_through(void **state)
{
    (void)state;
    char local[128], out[512], err[512];
    snprintf(local, sizeof(local), "%s/tiny.gguf", tmp);
    assert_int_equal(fetch_resolve_model(local, NULL, out, sizeof(out), err, sizeof(err)), 0);
    assert_string_equal(out, local);

    snprintf(local, sizeof(local), "%s/no-such-model.gguf", tmp);
    assert_int_equal(fetch_resolve_model(local, NULL, out, sizeof(out), err, sizeof(err)),
                     FETCH_ESPEC);
    assert_contains(err, local);
    assert_contains(err, "No such file or directory");
    assert_int_equal(fetch_resolve_model(tmp, NULL, out, sizeof(out), err, sizeof(err)),
                     FETCH_ESPEC);
    assert_contains(err, "is a directory");
}

/* ---- downloads ---- */

static void test_download_equals_the_file_and_the_cache_needs_no_request(void **state)
{
    (void)state;
    struct file_server *s = serve((struct file_server_opts){0});
    char url[256], cache[128], out[1024], err[1024], want[1024];
    url_of(s, MODEL_PATH, url, sizeof(url));
    struct fetch_opts o = quiet(new_cache(cache, sizeof(cache)));
    o.token = "hf_never_sent"; /* not the Hugging Face endpoint: must not be sent */
    if (fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)) != 0)
        fail_msg("%s", err);
    cached_path(url, cache, want, sizeof(want));
    assert_string_equal(out, want);
    assert_file_is_model(out);
    char part[1100];
    snprintf(part, sizeof(part), "%s.part", out);
    assert_false(exists(part));

    struct file_server_request r[4];
    assert_int_equal(file_server_requests(s, r, 4), 1);
    assert_string_equal(r[0].method, "GET");
    assert_string_equal(r[0].path, MODEL_PATH);
    assert_string_equal(r[0].range, "");
    assert_string_equal(r[0].authorization, "");
    assert_int_equal(r[0].status, 200);

    /* again: from the cache, no request at all */
    char out2[1024];
    assert_int_equal(fetch_resolve_model(url, &o, out2, sizeof(out2), err, sizeof(err)), 0);
    assert_string_equal(out2, out);
    assert_int_equal(file_server_requests(s, r, 4), 1);

    /* force: downloaded again */
    o.force = 1;
    assert_int_equal(fetch_resolve_model(url, &o, out2, sizeof(out2), err, sizeof(err)), 0);
    assert_int_equal(file_server_requests(s, r, 4), 2);
    assert_string_equal(r[1].range, "");
    assert_file_is_model(out2);
    file_server_stop(s);
}

static void test_interrupted_download_keeps_the_part_and_resumes(void **state)
{
    (void)state;
    struct file_server *s = serve((struct file_server_opts){.drop_after = MIB});
    char url[URL_CAP], cache[CACHE_CAP], out[1024], err[1024], file[FILE_CAP], part[PART_CAP];
    struct fetch_opts o = model_download(s, url, cache, file, part);

    assert_int_equal(fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)),
                     FETCH_EPARTIAL);
    assert_contains(err, "interrupted");
    assert_contains(err, "a retry will resume");
    assert_contains(err, part);
    assert_false(exists(file));
    off_t have = file_size(part);
    assert_int_equal(have, MIB);
    size_t n;
    char *p = read_all(part, &n);
    assert_memory_equal(p, model, n);
    free(p);

    if (fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_string_equal(out, file);
    assert_file_is_model(out);
    assert_false(exists(part));
    struct file_server_request r[4];
    assert_int_equal(file_server_requests(s, r, 4), 2);
    char range[64];
    snprintf(range, sizeof(range), "bytes=%lld-", (long long)have);
    assert_string_equal(r[1].range, range);
    assert_int_equal(r[1].status, 206);
    file_server_stop(s);
}

static void test_retries_resume_within_one_call(void **state)
{
    (void)state;
    struct file_server *s = serve((struct file_server_opts){.drop_after = 3 * MIB});
    char url[256], cache[128], out[1024], err[1024];
    url_of(s, MODEL_PATH, url, sizeof(url));
    struct fetch_opts o = quiet(new_cache(cache, sizeof(cache)));
    o.retries = 2;
    if (fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_file_is_model(out);
    struct file_server_request r[4];
    assert_int_equal(file_server_requests(s, r, 4), 2);
    assert_string_equal(r[1].range, "bytes=3145728-");
    file_server_stop(s);
}

static void test_server_ignoring_the_range_starts_over(void **state)
{
    (void)state;
    struct file_server *s = serve((struct file_server_opts){.ignore_range = 1});
    char url[URL_CAP], cache[CACHE_CAP], out[1024], err[1024], file[FILE_CAP], part[PART_CAP];
    struct fetch_opts o = model_download(s, url, cache, file, part);
    /* a .part that would corrupt the file if it were kept */
    char cmd[2400];
    snprintf(cmd, sizeof(cmd), "mkdir -p \"$(dirname '%s')\"", part);
    assert_int_equal(system(cmd), 0);
    write_all(part, "garbage garbage garbage", 23);

    if (fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_file_is_model(out);
    struct file_server_request r[4];
    assert_int_equal(file_server_requests(s, r, 4), 1);
    assert_string_equal(r[0].range, "bytes=23-");
    assert_int_equal(r[0].status, 200);
    file_server_stop(s);
}

/* An interrupted download resumes only while the file on the server is the
 * one the .part began with (If-Range with its ETag); once it changed, the
 * server's 200 starts the file over: never half of each version. */
static void test_resume_sends_if_range_and_a_changed_file_starts_over(void **state)
{
    (void)state;
    char *v2 = malloc(model_len);
    assert_non_null(v2);
    for (size_t i = 0; i < model_len; i++)
        v2[i] = (char)(model[i] ^ 0x5a);
    for (int changed = 0; changed < 2; changed++) {
        struct file_server *s =
            serve((struct file_server_opts){.drop_after = MIB, .etag = "\"v1\""});
        char url[URL_CAP], cache[CACHE_CAP], out[1024], err[1024], file[FILE_CAP], part[PART_CAP],
            vfile[1200];
        struct fetch_opts o = model_download(s, url, cache, file, part);
        snprintf(vfile, sizeof(vfile), "%s.validator", part);

        assert_int_equal(fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)),
                         FETCH_EPARTIAL);
        assert_int_equal(file_size(part), MIB);
        size_t n;
        char *v = read_all(vfile, &n);
        assert_string_equal(v, "\"v1\"\n");
        free(v);
        if (changed)
            file_server_replace(s, v2, model_len, "\"v2\"");

        if (fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)) != 0)
            fail_msg("%s", err);
        struct file_server_request r[4];
        assert_int_equal(file_server_requests(s, r, 4), 2);
        assert_string_equal(r[1].if_range, "\"v1\"");
        assert_string_equal(r[1].range, "bytes=1048576-");
        assert_int_equal(r[1].status, changed ? 200 : 206);
        char *got = read_all(out, &n);
        assert_int_equal(n, model_len);
        assert_memory_equal(got, changed ? v2 : model, model_len);
        free(got);
        assert_false(exists(vfile));
        assert_false(exists(part));
        file_server_stop(s);
    }
    free(v2);
}

static void test_complete_part_is_finished_by_a_416(void **state)
{
    (void)state;
    struct file_server *s = serve((struct file_server_opts){0});
    char url[URL_CAP], cache[CACHE_CAP], out[1024], err[1024], file[FILE_CAP], part[PART_CAP],
        cmd[2400];
    struct fetch_opts o = model_download(s, url, cache, file, part);
    snprintf(cmd, sizeof(cmd), "mkdir -p \"$(dirname '%s')\"", part);
    assert_int_equal(system(cmd), 0);

    /* all bytes there (a crash between the last byte and the rename) */
    write_all(part, model, model_len);
    if (fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_file_is_model(out);
    struct file_server_request r[4];
    assert_int_equal(file_server_requests(s, r, 4), 1);
    assert_int_equal(r[0].status, 416);

    /* a .part longer than the file (the file changed upstream): start over */
    unlink(file);
    file_server_clear_log(s);
    write_all(part, model, model_len);
    FILE *f = fopen(part, "ab");
    fputs("extra bytes", f);
    fclose(f);
    if (fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_file_is_model(out);
    assert_int_equal(file_server_requests(s, r, 4), 2);
    assert_int_equal(r[0].status, 416);
    assert_string_equal(r[1].range, "");
    assert_int_equal(r[1].status, 200);
    file_server_stop(s);
}

static void test_sha256_match_and_mismatch(void **state)
{
    (void)state;
    struct file_server *s = serve((struct file_server_opts){0});
    char url[URL_CAP], cache[CACHE_CAP], out[1024], err[1024], file[FILE_CAP], part[PART_CAP];
    struct fetch_opts o = model_download(s, url, cache, file, part);

    /* a wrong hash: an error naming both, and nothing left behind */
    const char *wrong = "0000000000000000000000000000000000000000000000000000000000000000";
    o.sha256 = wrong;
    assert_int_equal(fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)),
                     FETCH_ECHECKSUM);
    assert_contains(err, "sha256 mismatch");
    assert_contains(err, wrong);
    assert_contains(err, model_sha);
    assert_false(exists(file));
    assert_false(exists(part));

    /* the right one (in capitals too) */
    char upper[SHA256_HEX_LEN + 1];
    for (int i = 0; i <= SHA256_HEX_LEN; i++)
        upper[i] =
            (char)(model_sha[i] >= 'a' && model_sha[i] <= 'f' ? model_sha[i] - 32 : model_sha[i]);
    o.sha256 = upper;
    if (fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_file_is_model(out);
    /* cached and checked again: no request */
    struct file_server_request r[4];
    int before = file_server_requests(s, r, 4);
    o.sha256 = model_sha;
    assert_int_equal(fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)), 0);
    assert_int_equal(file_server_requests(s, r, 4), before);

    /* a cached file that went bad (same size, other bytes) is fetched again */
    char *bad = malloc(model_len);
    memcpy(bad, model, model_len);
    bad[model_len / 2] ^= 1;
    clock_sleep_ms(10); /* a new mtime */
    write_all(file, bad, model_len);
    free(bad);
    assert_int_equal(fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)), 0);
    assert_file_is_model(out);
    assert_int_equal(file_server_requests(s, r, 4), before + 1);

    /* not a hash at all */
    o.sha256 = "abc";
    assert_int_equal(fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)), FETCH_ESPEC);
    assert_contains(err, "64 hex digits");
    file_server_stop(s);
}

/* ---- the token ---- */

static void test_token_is_required_and_sent_to_the_endpoint(void **state)
{
    (void)state;
    struct file_server *s =
        serve((struct file_server_opts){.token = "hf_secret", .path = "/o/r/resolve/main/m.gguf"});
    char cache[128], out[1024], err[1024];
    struct fetch_opts o = quiet(new_cache(cache, sizeof(cache)));
    o.hf_endpoint = file_server_base(s);

    /* no token: 401 and what to do */
    assert_int_equal(fetch_resolve_model("hf:o/r/m.gguf", &o, out, sizeof(out), err, sizeof(err)),
                     FETCH_EHTTP);
    assert_contains(err, "access denied");
    assert_contains(err, "401");
    assert_contains(err, "gated or private repository? set HF_TOKEN");
    assert_contains(err, "Access to this test file is restricted."); /* X-Error-Message */

    /* a wrong token: said so, and the token never shows */
    o.token = "hf_wrong_token";
    capture_begin();
    int rc = fetch_resolve_model("hf:o/r/m.gguf", &o, out, sizeof(out), err, sizeof(err));
    char *log = capture_end();
    assert_int_equal(rc, FETCH_EHTTP);
    assert_contains(err, "even with HF_TOKEN");
    assert_not_contains(err, "hf_wrong_token");
    assert_not_contains(log, "hf_wrong_token");
    free(log);

    /* the right one, from the environment */
    o.token = NULL;
    setenv("HF_TOKEN", "hf_secret", 1);
    o.progress = FETCH_PROGRESS_LOG;
    capture_begin();
    rc = fetch_resolve_model("hf:o/r/m.gguf", &o, out, sizeof(out), err, sizeof(err));
    log = capture_end();
    unsetenv("HF_TOKEN");
    if (rc != 0)
        fail_msg("%s", err);
    assert_file_is_model(out);
    assert_not_contains(log, "hf_secret");
    free(log);
    struct file_server_request r[4];
    assert_int_equal(file_server_requests(s, r, 4), 3);
    assert_string_equal(r[0].authorization, "");
    assert_string_equal(r[1].authorization, "Bearer hf_wrong_token");
    assert_string_equal(r[2].authorization, "Bearer hf_secret");
    assert_int_equal(r[2].status, 200);
    file_server_stop(s);
}

static void test_token_is_not_forwarded_to_a_redirect_target(void **state)
{
    (void)state;
    /* b: the "CDN", another port; a: the endpoint, which wants the token and redirects */
    struct file_server *b = serve((struct file_server_opts){.path = "/cdn/blob"});
    char target[256];
    url_of(b, "/cdn/blob?signature=xyz", target, sizeof(target));
    struct file_server *a = serve((struct file_server_opts){
        .token = "hf_secret", .redirect_to = target, .path = "/o/r/resolve/main/m.gguf"});
    char cache[128], out[1024], err[1024];
    struct fetch_opts o = quiet(new_cache(cache, sizeof(cache)));
    o.hf_endpoint = file_server_base(a);
    o.token = "hf_secret";
    if (fetch_resolve_model("hf:o/r/m.gguf", &o, out, sizeof(out), err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_file_is_model(out);
    /* cached under the URL asked for, not the redirect target */
    char want[1024];
    char url[256];
    url_of(a, "/o/r/resolve/main/m.gguf", url, sizeof(url));
    cached_path(url, cache, want, sizeof(want));
    assert_string_equal(out, want);

    struct file_server_request ra[4], rb[4];
    assert_int_equal(file_server_requests(a, ra, 4), 1);
    assert_string_equal(ra[0].authorization, "Bearer hf_secret");
    assert_int_equal(ra[0].status, 302);
    assert_int_equal(file_server_requests(b, rb, 4), 1);
    assert_string_equal(rb[0].path, "/cdn/blob");
    assert_string_equal(rb[0].authorization, "");
    file_server_stop(a);
    file_server_stop(b);
}

static void test_redirected_resume_sends_the_range_not_the_token(void **state)
{
    (void)state;
    struct file_server *b =
        serve((struct file_server_opts){.path = "/cdn/blob", .drop_after = 2 * MIB});
    char target[256];
    url_of(b, "/cdn/blob", target, sizeof(target));
    struct file_server *a = serve((struct file_server_opts){
        .token = "hf_secret", .redirect_to = target, .path = "/o/r/resolve/main/m.gguf"});
    char cache[128], out[1024], err[1024];
    struct fetch_opts o = quiet(new_cache(cache, sizeof(cache)));
    o.hf_endpoint = file_server_base(a);
    o.token = "hf_secret";
    assert_int_equal(fetch_resolve_model("hf:o/r/m.gguf", &o, out, sizeof(out), err, sizeof(err)),
                     FETCH_EPARTIAL);
    assert_contains(err, "a retry will resume");
    if (fetch_resolve_model("hf:o/r/m.gguf", &o, out, sizeof(out), err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_file_is_model(out);
    struct file_server_request ra[4], rb[4];
    assert_int_equal(file_server_requests(a, ra, 4), 2);
    assert_string_equal(ra[1].authorization, "Bearer hf_secret");
    assert_string_equal(ra[1].range, "bytes=2097152-");
    assert_int_equal(file_server_requests(b, rb, 4), 2);
    assert_string_equal(rb[1].range, "bytes=2097152-");
    assert_string_equal(rb[0].authorization, "");
    assert_string_equal(rb[1].authorization, "");
    assert_int_equal(rb[1].status, 206);
    file_server_stop(a);
    file_server_stop(b);
}

/* ---- errors ---- */

static void test_not_found_says_check_the_url(void **state)
{
    (void)state;
    struct file_server *s = serve((struct file_server_opts){0});
    char url[256], cache[128], out[1024], err[1024];
    url_of(s, "/models/missing.gguf", url, sizeof(url));
    struct fetch_opts o = quiet(new_cache(cache, sizeof(cache)));
    assert_int_equal(fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)), FETCH_EHTTP);
    assert_contains(err, "not found");
    assert_contains(err, "404");
    assert_contains(err, "check the URL");
    assert_contains(err, url);
    /* nothing cached, and no .part left for an error page */
    char file[1024], part[1100];
    cached_path(url, cache, file, sizeof(file));
    snprintf(part, sizeof(part), "%s.part", file);
    assert_false(exists(file));
    file_server_stop(s);
}

static void test_refused_connection_is_a_network_error(void **state)
{
    (void)state;
    /* a port nobody listens on: bind one, then close it */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t sl = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd);
    char url[256], cache[128], out[1024], err[1024];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/m.gguf", ntohs(sa.sin_port));
    struct fetch_opts o = quiet(new_cache(cache, sizeof(cache)));
    assert_int_equal(fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)), FETCH_ENET);
    assert_contains(err, "cannot download");
    assert_contains(err, "onnect"); /* curl's "Failed to connect ..." / "Couldn't connect" */
}

static void test_stalled_transfer_ends_on_the_low_speed_limit(void **state)
{
    (void)state;
    struct file_server *s =
        serve((struct file_server_opts){.stall_after = MIB / 2, .stall_ms = 10000});
    char url[256], cache[128], out[1024], err[1024];
    url_of(s, MODEL_PATH, url, sizeof(url));
    struct fetch_opts o = quiet(new_cache(cache, sizeof(cache)));
    /* libcurl averages the speed over the last few seconds: with a limit far
     * above what arrived before the stall, it drops under at once */
    o.low_speed_bytes = 10 * 1000 * 1000;
    o.low_speed_s = 1;
    int64_t t0 = clock_now_ms();
    assert_int_equal(fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)),
                     FETCH_EPARTIAL);
    int64_t took = clock_now_ms() - t0;
    if (took > 5000)
        fail_msg("the stall was noticed after %lld ms", (long long)took);
    assert_contains(err, "a retry will resume");
    o = quiet(cache);
    /* the stall is spent: the retry resumes and finishes */
    if (fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_file_is_model(out);
    struct file_server_request r[4];
    assert_int_equal(file_server_requests(s, r, 4), 2);
    assert_true(strncmp(r[1].range, "bytes=", 6) == 0);
    file_server_stop(s);
}

static void test_unwritable_cache_dir_names_the_path(void **state)
{
    (void)state;
    struct file_server *s = serve((struct file_server_opts){0});
    char url[256], cache[256], out[1024], err[1024], afile[128];
    url_of(s, MODEL_PATH, url, sizeof(url));
    /* a cache "directory" below a regular file */
    snprintf(afile, sizeof(afile), "%s/a-file", tmp);
    write_all(afile, "x", 1);
    snprintf(cache, sizeof(cache), "%s/cache", afile);
    struct fetch_opts o = quiet(cache);
    assert_int_equal(fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)), FETCH_EIO);
    assert_contains(err, "cannot create the cache directory");
    assert_contains(err, cache);
    assert_contains(err, "Not a directory");

    /* a directory without write permission (root ignores permissions) */
    if (geteuid() != 0) {
        new_cache(cache, sizeof(cache));
        mkdir(cache, 0500);
        o.cache_dir = cache;
        assert_int_equal(fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)),
                         FETCH_EIO);
        assert_contains(err, cache);
        assert_contains(err, "Permission denied");
        chmod(cache, 0700);
    }
    struct file_server_request r[4];
    assert_int_equal(file_server_requests(s, r, 4), 0);
    file_server_stop(s);
}

static void test_failed_write_names_the_part_and_keeps_it(void **state)
{
    (void)state;
    struct file_server *s = serve((struct file_server_opts){0});
    char url[URL_CAP], cache[CACHE_CAP], out[1024], err[1024], file[FILE_CAP], part[PART_CAP];
    struct fetch_opts o = model_download(s, url, cache, file, part);
    /* a full disk, as the process sees it: files may not grow past 1 MiB */
    struct rlimit saved, small;
    getrlimit(RLIMIT_FSIZE, &saved);
    small = saved;
    small.rlim_cur = MIB;
    void (*old)(int) = signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &small);
    int rc = fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err));
    setrlimit(RLIMIT_FSIZE, &saved);
    signal(SIGXFSZ, old);
    assert_int_equal(rc, FETCH_EIO);
    assert_contains(err, "cannot write");
    assert_contains(err, part);
    assert_contains(err, "File too large");
    assert_int_equal(file_size(part), MIB);
    assert_false(exists(file));
    /* with room again, it resumes */
    if (fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_file_is_model(out);
    struct file_server_request r[4];
    assert_int_equal(file_server_requests(s, r, 4), 2);
    assert_string_equal(r[1].range, "bytes=1048576-");
    file_server_stop(s);
}

/* ---- concurrency and progress ---- */

static atomic_int cancel_flag;

static void *cancel_soon(void *arg)
{
    (void)arg;
    clock_sleep_ms(300);
    atomic_store(&cancel_flag, 1);
    return NULL;
}

static void test_cancel_flag_stops_a_download_and_keeps_the_part(void **state)
{
    (void)state;
    struct file_server *s = serve((struct file_server_opts){.stall_after = MIB, .stall_ms = 10000});
    char url[URL_CAP], cache[CACHE_CAP], out[1024], err[1024], file[FILE_CAP], part[PART_CAP];
    struct fetch_opts o = model_download(s, url, cache, file, part);
    o.cancel = &cancel_flag;
    atomic_store(&cancel_flag, 0);
    pthread_t t;
    pthread_create(&t, NULL, cancel_soon, NULL);
    int64_t t0 = clock_now_ms();
    int rc = fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err));
    int64_t took = clock_now_ms() - t0;
    pthread_join(t, NULL);
    assert_int_equal(rc, FETCH_ECANCELLED);
    assert_contains(err, "cancelled");
    assert_contains(err, part);
    if (took > 3000)
        fail_msg("the cancel took %lld ms", (long long)took);
    assert_int_equal(file_size(part), MIB);
    /* and a later call resumes */
    atomic_store(&cancel_flag, 0);
    if (fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err)) != 0)
        fail_msg("%s", err);
    assert_file_is_model(out);
    file_server_stop(s);
}

struct racer {
    const char *url;
    const char *cache;
    int rc;
    char out[1024], err[1024];
};

static void *race(void *arg)
{
    struct racer *r = arg;
    struct fetch_opts o = quiet(r->cache);
    r->rc = fetch_resolve_model(r->url, &o, r->out, sizeof(r->out), r->err, sizeof(r->err));
    return NULL;
}

static void test_two_callers_download_one_file_once(void **state)
{
    (void)state;
    /* the first body pauses, so that the second caller arrives while it runs */
    struct file_server *s = serve((struct file_server_opts){.stall_after = MIB, .stall_ms = 500});
    char url[256], cache[128];
    url_of(s, MODEL_PATH, url, sizeof(url));
    new_cache(cache, sizeof(cache));
    struct racer r[2] = {{.url = url, .cache = cache}, {.url = url, .cache = cache}};
    pthread_t t[2];
    pthread_create(&t[0], NULL, race, &r[0]);
    clock_sleep_ms(100);
    pthread_create(&t[1], NULL, race, &r[1]);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    for (int i = 0; i < 2; i++)
        if (r[i].rc != 0)
            fail_msg("caller %d: %s", i, r[i].err);
    assert_string_equal(r[0].out, r[1].out);
    assert_file_is_model(r[0].out);
    struct file_server_request rq[4];
    assert_int_equal(file_server_requests(s, rq, 4), 1);
    file_server_stop(s);
}

static void test_progress_bar_and_log_lines(void **state)
{
    (void)state;
    char url[256], cache[128], out[1024], err[1024];
    /* a pause in the middle, so that progress is drawn before the end */
    struct file_server *s =
        serve((struct file_server_opts){.stall_after = 2 * MIB, .stall_ms = 600});
    url_of(s, MODEL_PATH, url, sizeof(url));
    struct fetch_opts o = quiet(new_cache(cache, sizeof(cache)));
    o.progress = FETCH_PROGRESS_BAR;
    capture_begin();
    int rc = fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err));
    char *bar = capture_end();
    assert_int_equal(rc, 0);
    assert_contains(bar, "\rtiny.gguf");
    assert_contains(bar, "MB/s");
    assert_contains(bar, "ETA ");
    assert_contains(bar, " in 0:0");
    assert_contains(bar, "100% [========================]");
    free(bar);
    file_server_stop(s);

    s = serve((struct file_server_opts){.stall_after = 2 * MIB, .stall_ms = 600});
    url_of(s, MODEL_PATH, url, sizeof(url));
    o = quiet(new_cache(cache, sizeof(cache)));
    o.progress = FETCH_PROGRESS_LOG;
    capture_begin();
    rc = fetch_resolve_model(url, &o, out, sizeof(out), err, sizeof(err));
    char *log = capture_end();
    assert_int_equal(rc, 0);
    assert_not_contains(log, "\r");
    assert_contains(log, "downloading http://127.0.0.1:");
    assert_contains(log, "downloading tiny.gguf: "); /* a progress line */
    assert_contains(log, "% (");
    assert_contains(log, "downloaded tiny.gguf");
    free(log);
    file_server_stop(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_nist_vectors),
        cmocka_unit_test(test_hf_spec_builds_resolve_urls),
        cmocka_unit_test(test_cache_path_mirrors_the_url),
        cmocka_unit_test(test_default_cache_dir_follows_the_environment),
        cmocka_unit_test(test_local_path_passes_through),
        cmocka_unit_test(test_download_equals_the_file_and_the_cache_needs_no_request),
        cmocka_unit_test(test_interrupted_download_keeps_the_part_and_resumes),
        cmocka_unit_test(test_retries_resume_within_one_call),
        cmocka_unit_test(test_server_ignoring_the_range_starts_over),
        cmocka_unit_test(test_resume_sends_if_range_and_a_changed_file_starts_over),
        cmocka_unit_test(test_complete_part_is_finished_by_a_416),
        cmocka_unit_test(test_sha256_match_and_mismatch),
        cmocka_unit_test(test_token_is_required_and_sent_to_the_endpoint),
        cmocka_unit_test(test_token_is_not_forwarded_to_a_redirect_target),
        cmocka_unit_test(test_redirected_resume_sends_the_range_not_the_token),
        cmocka_unit_test(test_not_found_says_check_the_url),
        cmocka_unit_test(test_refused_connection_is_a_network_error),
        cmocka_unit_test(test_stalled_transfer_ends_on_the_low_speed_limit),
        cmocka_unit_test(test_unwritable_cache_dir_names_the_path),
        cmocka_unit_test(test_failed_write_names_the_part_and_keeps_it),
        cmocka_unit_test(test_cancel_flag_stops_a_download_and_keeps_the_part),
        cmocka_unit_test(test_two_callers_download_one_file_once),
        cmocka_unit_test(test_progress_bar_and_log_lines),
    };
    return cmocka_run_group_tests_name("fetch", tests, group_setup, group_teardown);
}
