/*
 * Tests for worker/gguf.c (the reader) and worker/gguf_write.c (the writer):
 * a round trip of every value type and every tensor type millrace reads;
 * streaming tensors through fill functions to a file; the getters'
 * conversions; the shared models (skipped visibly without ../shared); and
 * the corrupt-file matrix, one test per problem, each checking that the
 * open fails with a message naming it. Hand-made files come from a small
 * byte builder, not the writer, since the writer refuses to write them.
 *
 * With GGUF_WRITE_SEEDS=1 in the environment, test_fuzz_seeds_open first
 * (re)writes the fuzzer's seeds in tests/fuzz-seeds/fuzz_gguf.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/jsonscan.h"
#include "worker/gguf.h"
#include "worker/gguf_write.h"

#define SHARED_MODELS "../shared/models/"
#define SHARED_VOCAB  "../shared/tokenizer-vectors/ggml-vocab-llama-spm.gguf"
#define SEEDS_DIR     "tests/fuzz-seeds/fuzz_gguf"

/* ---- helpers ---- */

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle))
        fail_msg("\"%s\" does not contain \"%s\"", haystack, needle);
}

/* A byte builder for hand-made (mostly broken) files. */
struct buf {
    uint8_t *p;
    size_t len, cap;
};

static void b_put(struct buf *b, const void *src, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static void b_u32(struct buf *b, uint32_t v)
{
    b_put(b, &v, 4);
}

static void b_u64(struct buf *b, uint64_t v)
{
    b_put(b, &v, 8);
}

static void b_str(struct buf *b, const char *s)
{
    b_u64(b, strlen(s));
    b_put(b, s, strlen(s));
}

static void b_zeros(struct buf *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        b_put(b, "", 1);
}

static void b_pad(struct buf *b, size_t align)
{
    b_zeros(b, (align - b->len % align) % align);
}

static void b_hdr(struct buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    b_put(b, "GGUF", 4);
    b_u32(b, version);
    b_u64(b, n_tensors);
    b_u64(b, n_kv);
}

static void b_kv_u32(struct buf *b, const char *key, uint32_t v)
{
    b_str(b, key);
    b_u32(b, GGUF_TYPE_UINT32);
    b_u32(b, v);
}

static void b_kv_str(struct buf *b, const char *key, const char *v)
{
    b_str(b, key);
    b_u32(b, GGUF_TYPE_STRING);
    b_str(b, v);
}

/* A tensor info with up to 4 dimensions (n_dims of ne are written). */
static void b_tensor(struct buf *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                     uint32_t type, uint64_t offset)
{
    b_str(b, name);
    b_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        b_u64(b, ne[d]);
    b_u32(b, type);
    b_u64(b, offset);
}

/* Open a copy of data[0..len) in a buffer of exactly len bytes, so that the
 * sanitizers see any read past its end. The file borrows the copy: on
 * success *copy is it (free it after gguf_close), on failure NULL. */
static int open_exact(struct gguf_file **f, const void *data, size_t len, char *err, size_t n,
                      void **copy)
{
    void *p = malloc(len ? len : 1);
    int rc;

    assert_non_null(p);
    if (len)
        memcpy(p, data, len);
    rc = gguf_open_mem(f, p, len, err, n);
    if (rc != 0) {
        free(p);
        p = NULL;
    }
    *copy = p;
    return rc;
}

/* The open of b must fail, the message containing each (NULL-terminated) part. */
static void expect_fail_n(const struct buf *b, ...)
{
    struct gguf_file *f = (struct gguf_file *)1;
    char err[256];
    const char *part;
    void *copy;
    va_list ap;

    memset(err, 0x55, sizeof err);
    assert_int_equal(open_exact(&f, b->p, b->len, err, sizeof err, &copy), -1);
    assert_null(f);
    assert_true(err[0] != '\0');
    assert_null(strchr(err, '\n'));
    assert_true(jsonscan_utf8_valid(err, strlen(err)));
    va_start(ap, b);
    while ((part = va_arg(ap, const char *)))
        assert_contains(err, part);
    va_end(ap);
}

#define expect_fail(b, ...) expect_fail_n(b, __VA_ARGS__, (const char *)NULL)

/* The writer's file in memory (free *out). */
static void write_mem(struct gguf_writer *w, uint8_t **out, size_t *len)
{
    char *p = NULL;
    FILE *fp = open_memstream(&p, len);

    assert_non_null(fp);
    if (gguf_writer_write_stream(w, fp) != 0)
        fail_msg("write: %s", gguf_writer_error(w));
    assert_int_equal(fclose(fp), 0);
    *out = (uint8_t *)p;
}

static int str_is(struct gguf_str s, const char *c)
{
    return gguf_str_eq(s, c);
}

/* ---- the round trip ---- */

static const float f32_data[6] = {1.0f, -2.5f, 3.25f, 0.0f, 1e-7f, -1e7f};
static const uint16_t f16_data[5] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000};
static const uint16_t bf16_data[4] = {0x3f80, 0xc020, 0x7f7f, 0x0000};
static uint8_t q8_data[4 * 34]; /* {64, 2}: 4 blocks */
static const char *const tokens[] = {"<unk>", "<s>", "</s>", "", "\xe2\x96\x81the", "a\0b"};

static void fill_q8(void)
{
    for (size_t i = 0; i < sizeof q8_data; i++)
        q8_data[i] = (uint8_t)(i * 7 + 3);
}

/* A writer with every value type and a tensor of each type. */
static struct gguf_writer *every_type_writer(uint32_t alignment)
{
    struct gguf_writer *w;
    uint8_t u8 = 200, b1 = 1;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    uint64_t u64 = 1ull << 60;
    int64_t i64 = -(1ll << 60);
    double f64 = 3.141592653589793;
    const uint8_t a_u8[3] = {1, 2, 255};
    const int8_t a_i8[2] = {-1, 1};
    const uint16_t a_u16[2] = {1, 65535};
    const int16_t a_i16[2] = {-32768, 32767};
    const uint32_t a_u32[2] = {7, 4000000000u};
    const int32_t a_i32[4] = {-1, 0, 1, 2147483647};
    const float a_f32[3] = {0.5f, -0.25f, 1e30f};
    const uint8_t a_bool[2] = {1, 0};
    const uint64_t a_u64[1] = {UINT64_MAX};
    const int64_t a_i64[2] = {INT64_MIN, INT64_MAX};
    const double a_f64[2] = {1e-300, -1e300};
    const uint64_t ne_f32[2] = {3, 2}, ne_f16[1] = {5}, ne_bf16[2] = {2, 2}, ne_q8[2] = {64, 2};

    fill_q8();
    assert_int_equal(gguf_writer_create(&w, alignment), 0);
    gguf_writer_add_str(w, "general.architecture", "llama");
    gguf_writer_add_scalar(w, "t.u8", GGUF_TYPE_UINT8, &u8);
    gguf_writer_add_scalar(w, "t.i8", GGUF_TYPE_INT8, &i8);
    gguf_writer_add_scalar(w, "t.u16", GGUF_TYPE_UINT16, &u16);
    gguf_writer_add_scalar(w, "t.i16", GGUF_TYPE_INT16, &i16);
    gguf_writer_add_u32(w, "t.u32", 4000000000u);
    gguf_writer_add_i32(w, "t.i32", -123456);
    gguf_writer_add_f32(w, "t.f32", 0.125f);
    gguf_writer_add_bool(w, "t.bool", 1);
    gguf_writer_add_scalar(w, "t.bool0", GGUF_TYPE_BOOL, &b1);
    gguf_writer_add_str(w, "t.str", "h\xc3\xa9llo");
    gguf_writer_add_str(w, "t.empty", "");
    gguf_writer_add_scalar(w, "t.u64", GGUF_TYPE_UINT64, &u64);
    gguf_writer_add_scalar(w, "t.i64", GGUF_TYPE_INT64, &i64);
    gguf_writer_add_scalar(w, "t.f64", GGUF_TYPE_FLOAT64, &f64);
    gguf_writer_add_arr(w, "a.u8", GGUF_TYPE_UINT8, a_u8, 3);
    gguf_writer_add_arr(w, "a.i8", GGUF_TYPE_INT8, a_i8, 2);
    gguf_writer_add_arr(w, "a.u16", GGUF_TYPE_UINT16, a_u16, 2);
    gguf_writer_add_arr(w, "a.i16", GGUF_TYPE_INT16, a_i16, 2);
    gguf_writer_add_arr(w, "a.u32", GGUF_TYPE_UINT32, a_u32, 2);
    gguf_writer_add_arr(w, "a.i32", GGUF_TYPE_INT32, a_i32, 4);
    gguf_writer_add_arr(w, "a.f32", GGUF_TYPE_FLOAT32, a_f32, 3);
    gguf_writer_add_arr(w, "a.bool", GGUF_TYPE_BOOL, a_bool, 2);
    gguf_writer_add_arr(w, "a.u64", GGUF_TYPE_UINT64, a_u64, 1);
    gguf_writer_add_arr(w, "a.i64", GGUF_TYPE_INT64, a_i64, 2);
    gguf_writer_add_arr(w, "a.f64", GGUF_TYPE_FLOAT64, a_f64, 2);
    gguf_writer_add_arr(w, "a.empty", GGUF_TYPE_INT32, NULL, 0);
    gguf_writer_add_str_arr(w, "a.str", tokens, 6);
    gguf_writer_add_str_arr(w, "a.str_empty", tokens, 0);
    gguf_writer_add_tensor(w, "w.f32", GGUF_TENSOR_F32, 2, ne_f32, f32_data);
    gguf_writer_add_tensor(w, "w.f16", GGUF_TENSOR_F16, 1, ne_f16, f16_data);
    gguf_writer_add_tensor(w, "w.bf16", GGUF_TENSOR_BF16, 2, ne_bf16, bf16_data);
    gguf_writer_add_tensor(w, "blk.0.w.q8_0", GGUF_TENSOR_Q8_0, 2, ne_q8, q8_data);
    if (gguf_writer_error(w)[0])
        fail_msg("writer: %s", gguf_writer_error(w));
    return w;
}

static void check_arr(const struct gguf_file *f, const char *key, uint32_t type, const void *want,
                      uint64_t n)
{
    uint32_t et;
    uint64_t got_n;
    const void *data;

    assert_int_equal(gguf_get_arr(f, key, &et, &got_n, &data), 0);
    assert_int_equal(et, type);
    assert_int_equal(got_n, n);
    if (n)
        assert_memory_equal(data, want, n * gguf_value_size(type));
}

static void check_tensor(const struct gguf_file *f, const uint8_t *base, const char *name,
                         uint32_t type, uint32_t n_dims, const uint64_t *ne, const void *data,
                         uint64_t nbytes)
{
    const struct gguf_tensor *t = gguf_find_tensor(f, name);
    uint32_t align = gguf_alignment(f);

    assert_non_null(t);
    assert_true(str_is(t->name, name));
    assert_int_equal(t->type, type);
    assert_int_equal(t->n_dims, n_dims);
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
        assert_int_equal(t->ne[d], d < n_dims ? ne[d] : 1);
    assert_int_equal(t->nbytes, nbytes);
    assert_int_equal(t->offset % align, 0);
    assert_ptr_equal(t->data, base + gguf_data_offset(f) + t->offset);
    assert_int_equal(((const uint8_t *)t->data - base) % align, 0);
    assert_memory_equal(t->data, data, nbytes);
}

/* Every key/value and tensor of every_type_writer in f (whose image is base). */
static void check_every_type(const struct gguf_file *f, const uint8_t *base)
{
    uint32_t u32;
    int32_t i32;
    uint64_t u64, n;
    float f32;
    int b;
    struct gguf_str s;
    const struct gguf_str *items;
    const struct gguf_kv *kv;
    const uint8_t a_u8[3] = {1, 2, 255};
    const int32_t a_i32[4] = {-1, 0, 1, 2147483647};
    const int64_t a_i64[2] = {INT64_MIN, INT64_MAX};
    const double a_f64[2] = {1e-300, -1e300};
    const uint64_t ne_f32[2] = {3, 2}, ne_f16[1] = {5}, ne_bf16[2] = {2, 2}, ne_q8[2] = {64, 2};

    assert_int_equal(gguf_version(f), 3);
    assert_int_equal(gguf_data_offset(f) % gguf_alignment(f), 0);
    assert_int_equal(gguf_get_str(f, "general.architecture", &s), 0);
    assert_true(str_is(s, "llama"));
    assert_int_equal(gguf_get_u32(f, "t.u8", &u32), 0);
    assert_int_equal(u32, 200);
    assert_int_equal(gguf_get_i32(f, "t.i8", &i32), 0);
    assert_int_equal(i32, -100);
    assert_int_equal(gguf_get_u32(f, "t.u16", &u32), 0);
    assert_int_equal(u32, 60000);
    assert_int_equal(gguf_get_i32(f, "t.i16", &i32), 0);
    assert_int_equal(i32, -30000);
    assert_int_equal(gguf_get_u32(f, "t.u32", &u32), 0);
    assert_int_equal(u32, 4000000000u);
    assert_int_equal(gguf_get_i32(f, "t.i32", &i32), 0);
    assert_int_equal(i32, -123456);
    assert_int_equal(gguf_get_f32(f, "t.f32", &f32), 0);
    assert_true(f32 == 0.125f);
    assert_int_equal(gguf_get_bool(f, "t.bool", &b), 0);
    assert_int_equal(b, 1);
    assert_int_equal(gguf_get_str(f, "t.str", &s), 0);
    assert_true(str_is(s, "h\xc3\xa9llo"));
    assert_int_equal(gguf_get_str(f, "t.empty", &s), 0);
    assert_int_equal(s.len, 0);
    assert_int_equal(gguf_get_u64(f, "t.u64", &u64), 0);
    assert_int_equal(u64, 1ull << 60);
    kv = gguf_find_kv(f, "t.i64");
    assert_non_null(kv);
    assert_int_equal(kv->type, GGUF_TYPE_INT64);
    assert_true(kv->v.i == -(1ll << 60));
    kv = gguf_find_kv(f, "t.f64");
    assert_non_null(kv);
    assert_int_equal(kv->type, GGUF_TYPE_FLOAT64);
    assert_true(kv->v.f == 3.141592653589793);

    check_arr(f, "a.u8", GGUF_TYPE_UINT8, a_u8, 3);
    check_arr(f, "a.i32", GGUF_TYPE_INT32, a_i32, 4);
    check_arr(f, "a.i64", GGUF_TYPE_INT64, a_i64, 2);
    check_arr(f, "a.f64", GGUF_TYPE_FLOAT64, a_f64, 2);
    check_arr(f, "a.empty", GGUF_TYPE_INT32, NULL, 0);
    const char *arr_keys[] = {"a.i8", "a.u16", "a.i16", "a.u32", "a.f32", "a.bool", "a.u64"};
    const uint32_t arr_types[] = {GGUF_TYPE_INT8,   GGUF_TYPE_UINT16,  GGUF_TYPE_INT16,
                                  GGUF_TYPE_UINT32, GGUF_TYPE_FLOAT32, GGUF_TYPE_BOOL,
                                  GGUF_TYPE_UINT64};
    const uint64_t arr_n[] = {2, 2, 2, 2, 3, 2, 1};
    for (size_t i = 0; i < sizeof arr_keys / sizeof arr_keys[0]; i++) {
        kv = gguf_find_kv(f, arr_keys[i]);
        assert_non_null(kv);
        assert_int_equal(kv->type, GGUF_TYPE_ARRAY);
        assert_int_equal(kv->elem_type, arr_types[i]);
        assert_int_equal(kv->n, arr_n[i]);
    }
    float a_f32[3];
    memcpy(a_f32, gguf_find_kv(f, "a.f32")->data, sizeof a_f32);
    assert_true(a_f32[0] == 0.5f && a_f32[1] == -0.25f && a_f32[2] == 1e30f);

    assert_int_equal(gguf_get_str_arr(f, "a.str", &items, &n), 0);
    assert_int_equal(n, 6);
    for (size_t i = 0; i < 5; i++)
        assert_true(str_is(items[i], tokens[i]));
    assert_true(str_is(items[5], "a")); // the writer takes C strings
    assert_int_equal(gguf_get_str_arr(f, "a.str_empty", &items, &n), 0);
    assert_int_equal(n, 0);

    // file order is kept for a dump; general.alignment comes first when written
    n = gguf_n_kv(f);
    assert_int_equal(n, gguf_alignment(f) == GGUF_DEFAULT_ALIGNMENT ? 29 : 30);
    assert_true(str_is(gguf_kv_at(f, n - 29)->key, "general.architecture"));
    assert_true(str_is(gguf_kv_at(f, n - 1)->key, "a.str_empty"));
    assert_null(gguf_kv_at(f, n));

    assert_int_equal(gguf_n_tensors(f), 4);
    assert_true(str_is(gguf_tensor(f, 0)->name, "w.f32"));
    assert_true(str_is(gguf_tensor(f, 3)->name, "blk.0.w.q8_0"));
    assert_null(gguf_tensor(f, 4));
    check_tensor(f, base, "w.f32", GGUF_TENSOR_F32, 2, ne_f32, f32_data, sizeof f32_data);
    check_tensor(f, base, "w.f16", GGUF_TENSOR_F16, 1, ne_f16, f16_data, sizeof f16_data);
    check_tensor(f, base, "w.bf16", GGUF_TENSOR_BF16, 2, ne_bf16, bf16_data, sizeof bf16_data);
    check_tensor(f, base, "blk.0.w.q8_0", GGUF_TENSOR_Q8_0, 2, ne_q8, q8_data, sizeof q8_data);
    assert_null(gguf_find_tensor(f, "w.f3"));
    assert_null(gguf_find_tensor(f, ""));
}

static void test_round_trip_every_type(void **state)
{
    struct gguf_writer *w = every_type_writer(0);
    struct gguf_file *f;
    uint8_t *mem;
    size_t len;
    char err[256];

    (void)state;
    write_mem(w, &mem, &len);
    if (gguf_open_mem(&f, mem, len, err, sizeof err) != 0)
        fail_msg("open: %s", err);
    assert_int_equal(gguf_alignment(f), 32);
    assert_null(gguf_find_kv(f, "general.alignment")); // the default is not written
    check_every_type(f, mem);
    gguf_close(f);
    free(mem);
    gguf_writer_destroy(w);
}

static void test_round_trip_alignment_64_through_a_file(void **state)
{
    struct gguf_writer *w = every_type_writer(64);
    char dir[] = "/tmp/test_gguf.XXXXXX", path[256], err[256];
    struct gguf_file *f;
    struct stat st;
    uint32_t u32;
    DIR *d;
    struct dirent *e;
    int entries = 0;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    if (gguf_writer_write(w, path) != 0)
        fail_msg("write: %s", gguf_writer_error(w));
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    d = opendir(dir); // no temporary file is left behind
    assert_non_null(d);
    while ((e = readdir(d)))
        entries += e->d_name[0] != '.';
    closedir(d);
    assert_int_equal(entries, 1);

    if (gguf_open(&f, path, err, sizeof err) != 0)
        fail_msg("open: %s", err);
    assert_int_equal(gguf_alignment(f), 64);
    assert_int_equal(gguf_get_u32(f, "general.alignment", &u32), 0);
    assert_int_equal(u32, 64);
    check_every_type(f, (const uint8_t *)gguf_tensor(f, 0)->data - gguf_data_offset(f));
    assert_int_equal(((uintptr_t)gguf_tensor(f, 0)->data) % 64, 0); // the mapping is aligned
    gguf_close(f);
    gguf_writer_destroy(w);
    unlink(path);
    rmdir(dir);
}

/* ---- streaming with fill functions ---- */

struct fill_ctx {
    uint64_t next; /* the offset the next call must ask for */
    uint32_t block_bytes;
    int calls;
    int fail_at_call; /* 0: never */
};

static uint8_t pattern(uint64_t off)
{
    return (uint8_t)((off * 2654435761u) >> 13);
}

static int fill(void *ctx, void *buf, uint64_t offset, size_t len)
{
    struct fill_ctx *c = ctx;

    assert_int_equal(offset, c->next);
    assert_int_equal(offset % c->block_bytes, 0);
    assert_int_equal(len % c->block_bytes, 0);
    assert_true(len > 0 && len <= (1u << 20));
    if (++c->calls == c->fail_at_call)
        return -7;
    for (size_t i = 0; i < len; i++)
        ((uint8_t *)buf)[i] = pattern(offset + i);
    c->next = offset + len;
    return 0;
}

static void test_fill_functions_stream_large_tensors(void **state)
{
    // 1.3 MB and 1.2 MB: more than one 1 MiB piece each
    const uint64_t ne_q8[2] = {32 * 1024, 40}, ne_f32[2] = {1000, 300};
    struct fill_ctx cq = {0, 34, 0, 0}, cf = {0, 4, 0, 0};
    char dir[] = "/tmp/test_gguf.XXXXXX", path[256], err[256];
    struct gguf_writer *w;
    struct gguf_file *f;
    const struct gguf_tensor *t;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/big.gguf", dir);
    assert_int_equal(gguf_writer_create(&w, 0), 0);
    gguf_writer_add_tensor_fn(w, "q", GGUF_TENSOR_Q8_0, 2, ne_q8, fill, &cq);
    gguf_writer_add_tensor_fn(w, "f", GGUF_TENSOR_F32, 2, ne_f32, fill, &cf);
    if (gguf_writer_write(w, path) != 0)
        fail_msg("write: %s", gguf_writer_error(w));
    assert_int_equal(cq.next, 32 * 1024 / 32 * 34 * 40);
    assert_true(cq.calls >= 2);
    assert_int_equal(cf.next, 1000 * 300 * 4);
    assert_true(cf.calls >= 2);

    if (gguf_open(&f, path, err, sizeof err) != 0)
        fail_msg("open: %s", err);
    for (size_t i = 0; i < 2; i++) {
        t = gguf_tensor(f, i);
        for (uint64_t b = 0; b < t->nbytes; b++)
            if (((const uint8_t *)t->data)[b] != pattern(b))
                fail_msg("tensor %zu byte %llu", i, (unsigned long long)b);
    }
    gguf_close(f);

    // a failing fill function fails the write and leaves the old file
    cq = (struct fill_ctx){0, 34, 0, 2};
    cf = (struct fill_ctx){0, 4, 0, 0};
    assert_int_equal(gguf_writer_write(w, path), -1);
    assert_contains(gguf_writer_error(w), "tensor q: the fill function failed (-7)");
    if (gguf_open(&f, path, err, sizeof err) != 0)
        fail_msg("open after a failed write: %s", err);
    gguf_close(f);
    gguf_writer_destroy(w);
    unlink(path);
    assert_int_equal(rmdir(dir), 0); // the temporary file was removed
}

/* ---- writer refusals ---- */

static void expect_writer_error(struct gguf_writer *w, const char *part)
{
    assert_contains(gguf_writer_error(w), part);
    assert_int_equal(gguf_writer_write_stream(w, stdout), -1); // sticky
    assert_int_equal(gguf_writer_add_u32(w, "later", 1), -1);
    gguf_writer_destroy(w);
}

static void test_writer_refuses_bad_input(void **state)
{
    const uint64_t ne[5] = {33, 1, 1, 1, 1}, ne32[1] = {32};
    struct gguf_writer *w;
    float data[64] = {0};

    (void)state;
    assert_int_equal(gguf_writer_create(&w, 3), -1);
    assert_null(w);

    assert_int_equal(gguf_writer_create(&w, 0), 0);
    assert_int_equal(gguf_writer_add_u32(w, "k", 1), 0);
    assert_int_equal(gguf_writer_add_f32(w, "k", 1), -1);
    expect_writer_error(w, "duplicate key k");

    assert_int_equal(gguf_writer_create(&w, 0), 0);
    assert_int_equal(gguf_writer_add_u32(w, "general.alignment", 64), -1);
    expect_writer_error(w, "general.alignment is set by");

    assert_int_equal(gguf_writer_create(&w, 0), 0);
    assert_int_equal(gguf_writer_add_tensor(w, "t", GGUF_TENSOR_F32, 1, ne32, data), 0);
    assert_int_equal(gguf_writer_add_tensor(w, "t", GGUF_TENSOR_F32, 1, ne32, data), -1);
    expect_writer_error(w, "duplicate tensor name t");

    assert_int_equal(gguf_writer_create(&w, 0), 0);
    assert_int_equal(gguf_writer_add_tensor(w, "t", GGUF_TENSOR_F32, 5, ne, data), -1);
    expect_writer_error(w, "n_dims 5 out of range");

    assert_int_equal(gguf_writer_create(&w, 0), 0);
    assert_int_equal(gguf_writer_add_tensor(w, "t", GGUF_TENSOR_Q8_0, 1, ne, data), -1);
    expect_writer_error(w, "row of 33 elements is not a multiple of the Q8_0 block size 32");

    assert_int_equal(gguf_writer_create(&w, 0), 0);
    assert_int_equal(gguf_writer_add_tensor(w, "t", 12, 1, ne32, data), -1);
    expect_writer_error(w, "unsupported type Q4_K (12)");

    assert_int_equal(gguf_writer_create(&w, 0), 0);
    assert_int_equal(gguf_writer_add_scalar(w, "s", GGUF_TYPE_STRING, "x"), -1);
    expect_writer_error(w, "STRING is not a number or bool type");
}

/* ---- getters ---- */

static void test_getters_convert_integers_and_refuse_other_types(void **state)
{
    struct gguf_writer *w;
    struct gguf_file *f;
    uint8_t *mem;
    size_t len;
    char err[256];
    uint32_t u32 = 7;
    int32_t i32 = 7;
    uint64_t u64 = 7;
    float f32 = 7;
    int b = 7;
    struct gguf_str s = {NULL, 7};
    const struct gguf_str *items = NULL;
    uint32_t et;
    const void *data;
    int64_t neg = -5, big64 = 1ll << 40;
    uint64_t huge = UINT64_MAX;
    double d = 0.5;

    (void)state;
    assert_int_equal(gguf_writer_create(&w, 0), 0);
    gguf_writer_add_scalar(w, "neg", GGUF_TYPE_INT64, &neg);
    gguf_writer_add_scalar(w, "big", GGUF_TYPE_INT64, &big64);
    gguf_writer_add_scalar(w, "huge", GGUF_TYPE_UINT64, &huge);
    gguf_writer_add_scalar(w, "d", GGUF_TYPE_FLOAT64, &d);
    gguf_writer_add_u32(w, "u", 3000000000u);
    gguf_writer_add_bool(w, "b", 0);
    gguf_writer_add_str(w, "s", "x");
    gguf_writer_add_str_arr(w, "sa", tokens, 2);
    write_mem(w, &mem, &len);
    assert_int_equal(gguf_open_mem(&f, mem, len, err, sizeof err), 0);

    assert_int_equal(gguf_get_u32(f, "absent", &u32), GGUF_EABSENT);
    assert_int_equal(gguf_get_u32(f, "neg", &u32), GGUF_ERANGE);
    assert_int_equal(gguf_get_u64(f, "neg", &u64), GGUF_ERANGE);
    assert_int_equal(gguf_get_i32(f, "neg", &i32), 0);
    assert_int_equal(i32, -5);
    assert_int_equal(gguf_get_i32(f, "big", &i32), GGUF_ERANGE);
    assert_int_equal(gguf_get_u32(f, "big", &u32), GGUF_ERANGE);
    assert_int_equal(gguf_get_u64(f, "big", &u64), 0);
    assert_int_equal(u64, 1ull << 40);
    assert_int_equal(gguf_get_u64(f, "huge", &u64), 0);
    assert_int_equal(u64, UINT64_MAX);
    assert_int_equal(gguf_get_i32(f, "u", &i32), GGUF_ERANGE);
    assert_int_equal(gguf_get_u32(f, "u", &u32), 0);
    assert_int_equal(u32, 3000000000u);
    assert_int_equal(gguf_get_f32(f, "d", &f32), 0);
    assert_true(f32 == 0.5f);
    assert_int_equal(gguf_get_f32(f, "u", &f32), GGUF_ETYPE);
    assert_int_equal(gguf_get_u32(f, "d", &u32), GGUF_ETYPE);
    assert_int_equal(gguf_get_u32(f, "b", &u32), GGUF_ETYPE);
    assert_int_equal(gguf_get_bool(f, "b", &b), 0);
    assert_int_equal(b, 0);
    assert_int_equal(gguf_get_bool(f, "u", &b), GGUF_ETYPE);
    assert_int_equal(gguf_get_str(f, "u", &s), GGUF_ETYPE);
    assert_int_equal(gguf_get_str(f, "sa", &s), GGUF_ETYPE);
    assert_int_equal(gguf_get_arr(f, "sa", &et, &u64, &data), GGUF_ETYPE);
    assert_int_equal(gguf_get_arr(f, "s", &et, &u64, &data), GGUF_ETYPE);
    assert_int_equal(gguf_get_str_arr(f, "s", &items, &u64), GGUF_ETYPE);
    assert_int_equal(gguf_get_str_arr(f, "sa", &items, &u64), 0);
    assert_int_equal(u64, 2);
    assert_null(gguf_find_kv(f, "ab"));
    // untouched on failure
    assert_int_equal(i32, -5);
    assert_int_equal(b, 0);

    assert_string_equal(gguf_type_name(GGUF_TENSOR_Q8_0), "Q8_0");
    assert_string_equal(gguf_type_name(12), "Q4_K");
    assert_string_equal(gguf_type_name(39), "MXFP4");
    assert_string_equal(gguf_type_name(40), "unknown");
    assert_string_equal(gguf_value_type_name(GGUF_TYPE_FLOAT64), "FLOAT64");
    assert_string_equal(gguf_value_type_name(13), "unknown");

    gguf_close(f);
    gguf_close(NULL);
    free(mem);
    gguf_writer_destroy(w);
}

/* ---- the shared models ---- */

static int shared_present(void)
{
    if (access(SHARED_MODELS "synth-tiny-f32.gguf", R_OK) == 0)
        return 1;
    print_message("skipped: ../shared not found\n");
    return 0;
}

static struct gguf_file *open_shared(const char *path)
{
    struct gguf_file *f = NULL;
    char err[256];

    if (gguf_open(&f, path, err, sizeof err) != 0)
        fail_msg("%s: %s", path, err);
    return f;
}

/* A llama model with dim 64: the keys, the vocabulary and every tensor's data. */
static void check_model(const char *path, uint32_t blocks, uint64_t vocab, uint32_t embd_type,
                        size_t n_tensors)
{
    struct gguf_file *f = open_shared(path);
    struct gguf_str s;
    const struct gguf_str *items;
    const struct gguf_tensor *t;
    uint64_t n;
    uint32_t u32;

    assert_int_equal(gguf_get_str(f, "general.architecture", &s), 0);
    assert_true(str_is(s, "llama"));
    assert_int_equal(gguf_get_u32(f, "llama.embedding_length", &u32), 0);
    assert_int_equal(u32, 64);
    assert_int_equal(gguf_get_u32(f, "llama.block_count", &u32), 0);
    assert_int_equal(u32, blocks);
    assert_int_equal(gguf_get_str_arr(f, "tokenizer.ggml.tokens", &items, &n), 0);
    assert_int_equal(n, vocab);
    assert_true(str_is(items[0], "<unk>") && str_is(items[1], "<s>") && str_is(items[2], "</s>"));
    t = gguf_find_tensor(f, "token_embd.weight");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 64);
    assert_int_equal(t->ne[1], vocab);
    assert_int_equal(t->type, embd_type);
    assert_int_equal(gguf_n_tensors(f), n_tensors);
    assert_non_null(gguf_find_tensor(f, "output_norm.weight"));
    char name[64];
    snprintf(name, sizeof name, "blk.%u.ffn_down.weight", blocks - 1);
    assert_non_null(gguf_find_tensor(f, name));
    for (size_t i = 0; i < gguf_n_tensors(f); i++) { // every byte is readable
        const uint8_t *p = gguf_tensor(f, i)->data;
        volatile uint8_t sum = 0;
        for (uint64_t b = 0; b < gguf_tensor(f, i)->nbytes; b += 4096)
            sum += p[b];
        sum += p[gguf_tensor(f, i)->nbytes - 1];
        (void)sum;
    }
    gguf_close(f);
}

static void test_shared_synth_tiny_f32(void **state)
{
    (void)state;
    if (!shared_present())
        skip();
    check_model(SHARED_MODELS "synth-tiny-f32.gguf", 2, 32000, GGUF_TENSOR_F32, 21);
}

static void test_shared_synth_tiny_f16(void **state)
{
    (void)state;
    if (!shared_present())
        skip();
    check_model(SHARED_MODELS "synth-tiny-f16.gguf", 2, 32000, GGUF_TENSOR_F16, 21);
}

static void test_shared_synth_tiny_q8_0(void **state)
{
    struct gguf_file *f;
    size_t q8 = 0;

    (void)state;
    if (!shared_present())
        skip();
    check_model(SHARED_MODELS "synth-tiny-q8_0.gguf", 2, 32000, GGUF_TENSOR_Q8_0, 21);
    f = open_shared(SHARED_MODELS "synth-tiny-q8_0.gguf");
    for (size_t i = 0; i < gguf_n_tensors(f); i++)
        q8 += gguf_tensor(f, i)->type == GGUF_TENSOR_Q8_0;
    assert_true(q8 >= 10);
    assert_int_equal(gguf_find_tensor(f, "blk.0.ffn_down.weight")->type, GGUF_TENSOR_F16);
    assert_int_equal(gguf_find_tensor(f, "blk.0.attn_q.weight")->nbytes, 64 * 64 / 32 * 34);
    gguf_close(f);
}

static void test_shared_stories260k(void **state)
{
    (void)state;
    if (!shared_present())
        skip();
    check_model(SHARED_MODELS "stories260K.gguf", 5, 512, GGUF_TENSOR_F32, 48);
}

static void test_shared_vocab_only_file(void **state)
{
    struct gguf_file *f;
    const struct gguf_str *items;
    const void *scores;
    uint32_t et;
    uint64_t n;

    (void)state;
    if (!shared_present())
        skip();
    f = open_shared(SHARED_VOCAB);
    assert_int_equal(gguf_n_tensors(f), 0);
    assert_int_equal(gguf_get_str_arr(f, "tokenizer.ggml.tokens", &items, &n), 0);
    assert_int_equal(n, 32000);
    assert_int_equal(gguf_get_arr(f, "tokenizer.ggml.scores", &et, &n, &scores), 0);
    assert_int_equal(et, GGUF_TYPE_FLOAT32);
    assert_int_equal(n, 32000);
    gguf_close(f);
}

/* ---- opening files ---- */

static void test_open_reports_missing_empty_and_odd_files(void **state)
{
    char dir[] = "/tmp/test_gguf.XXXXXX", path[256], err[256];
    struct gguf_file *f = (struct gguf_file *)1;
    FILE *fp;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/missing.gguf", dir);
    assert_int_equal(gguf_open(&f, path, err, sizeof err), -1);
    assert_null(f);
    assert_contains(err, "open: No such file or directory");
    assert_int_equal(gguf_open(&f, dir, err, sizeof err), -1);
    assert_contains(err, "not a regular file");
    snprintf(path, sizeof path, "%s/empty.gguf", dir);
    fp = fopen(path, "w");
    assert_non_null(fp);
    fclose(fp);
    assert_int_equal(gguf_open(&f, path, err, sizeof err), -1);
    assert_contains(err, "truncated header");
    unlink(path);
    rmdir(dir);
}

/* ---- the corrupt-file matrix ---- */

static void test_bad_magic(void **state)
{
    struct buf b = {0};

    (void)state;
    b_put(&b, "GGML", 4);
    b_u32(&b, 3);
    b_u64(&b, 0);
    b_u64(&b, 0);
    expect_fail(&b, "bad magic");
    free(b.p);
}

static void test_version_1(void **state)
{
    struct buf b = {0};

    (void)state;
    b_hdr(&b, 1, 0, 0);
    expect_fail(&b, "unsupported GGUF version 1 ", "2 and 3");
    free(b.p);
}

static void test_version_99(void **state)
{
    struct buf b = {0};

    (void)state;
    b_hdr(&b, 99, 0, 0);
    expect_fail(&b, "unsupported GGUF version 99 ");
    free(b.p);
}

static void test_version_2_reads(void **state)
{
    struct buf b = {0};
    struct gguf_file *f;
    char err[256];
    void *copy;

    (void)state;
    b_hdr(&b, 2, 0, 1);
    b_kv_str(&b, "general.architecture", "llama");
    assert_int_equal(open_exact(&f, b.p, b.len, err, sizeof err, &copy), 0);
    assert_int_equal(gguf_version(f), 2);
    gguf_close(f);
    free(copy);
    free(b.p);
}

static void test_truncated_header(void **state)
{
    struct buf b = {0};

    (void)state;
    b_hdr(&b, 3, 0, 0);
    b.len = 10;
    expect_fail(&b, "truncated header");
    b.len = 2;
    expect_fail(&b, "truncated header");
    free(b.p);
}

/* Every prefix of a valid file fails cleanly until the last tensor's data is
 * complete; from there on (padding only) it opens. */
static void test_truncated_at_every_byte(void **state)
{
    struct gguf_writer *w = every_type_writer(0);
    struct gguf_file *f;
    uint8_t *mem;
    size_t len, end = 0;
    char err[256];

    (void)state;
    write_mem(w, &mem, &len);
    assert_int_equal(gguf_open_mem(&f, mem, len, err, sizeof err), 0);
    for (size_t i = 0; i < gguf_n_tensors(f); i++) {
        const struct gguf_tensor *t = gguf_tensor(f, i);
        size_t e = (size_t)(gguf_data_offset(f) + t->offset + t->nbytes);
        end = e > end ? e : end;
    }
    gguf_close(f);
    assert_true(end < len); // the writer pads after the last tensor
    for (size_t cut = 0; cut <= len; cut++) {
        struct gguf_file *g = (struct gguf_file *)1;
        void *copy;
        int rc = open_exact(&g, mem, cut, err, sizeof err, &copy);
        if (cut < end) {
            if (rc != -1 || g != NULL)
                fail_msg("a %zu-byte prefix of %zu opened", cut, len);
            assert_true(err[0] != '\0');
            assert_null(strchr(err, '\n'));
            if (cut >= 4 && cut < 24)
                assert_contains(err, "truncated header");
        } else {
            if (rc != 0)
                fail_msg("a %zu-byte prefix of %zu: %s", cut, len, err);
            gguf_close(g);
            free(copy);
        }
    }
    free(mem);
    gguf_writer_destroy(w);
}

static void test_huge_n_kv(void **state)
{
    struct buf b = {0};

    (void)state;
    b_hdr(&b, 3, 0, 1ull << 60);
    b_kv_u32(&b, "a", 1);
    expect_fail(&b, "n_kv 1152921504606846976 cannot fit");
    free(b.p);
}

static void test_huge_n_tensors(void **state)
{
    struct buf b = {0};

    (void)state;
    b_hdr(&b, 3, 1ull << 60, 0);
    b_zeros(&b, 100);
    expect_fail(&b, "n_tensors 1152921504606846976 cannot fit");
    free(b.p);
}

static void test_huge_string_length(void **state)
{
    struct buf b = {0};

    (void)state;
    b_hdr(&b, 3, 0, 1);
    b_u64(&b, 1ull << 60); // the key's length
    b_put(&b, "general.name", 12);
    b_u32(&b, GGUF_TYPE_UINT32);
    b_u32(&b, 1);
    expect_fail(&b, "string length 1152921504606846976", "past end of file");
    free(b.p);

    memset(&b, 0, sizeof b); // the value's length
    b_hdr(&b, 3, 0, 1);
    b_str(&b, "general.name");
    b_u32(&b, GGUF_TYPE_STRING);
    b_u64(&b, 1000);
    b_put(&b, "llama", 5);
    expect_fail(&b, "string length 1000", "key general.name", "past end of file");
    free(b.p);
}

static void test_unknown_value_type(void **state)
{
    struct buf b = {0};

    (void)state;
    b_hdr(&b, 3, 0, 1);
    b_str(&b, "general.name");
    b_u32(&b, 13);
    b_u64(&b, 0);
    expect_fail(&b, "key general.name: unknown value type 13");
    free(b.p);
}

static void test_array_count_past_end(void **state)
{
    struct buf b = {0};

    (void)state;
    b_hdr(&b, 3, 0, 1);
    b_str(&b, "tokenizer.ggml.scores");
    b_u32(&b, GGUF_TYPE_ARRAY);
    b_u32(&b, GGUF_TYPE_FLOAT32);
    b_u64(&b, 1000);
    b_zeros(&b, 16);
    expect_fail(&b, "key tokenizer.ggml.scores: array count 1000 runs past end of file");
    free(b.p);

    memset(&b, 0, sizeof b); // strings
    b_hdr(&b, 3, 0, 1);
    b_str(&b, "tokenizer.ggml.tokens");
    b_u32(&b, GGUF_TYPE_ARRAY);
    b_u32(&b, GGUF_TYPE_STRING);
    b_u64(&b, 1ull << 61);
    b_str(&b, "a");
    expect_fail(&b, "key tokenizer.ggml.tokens: array count 2305843009213693952 runs past end");
    free(b.p);
}

static void test_nested_array(void **state)
{
    struct buf b = {0};

    (void)state;
    b_hdr(&b, 3, 0, 1);
    b_str(&b, "merges");
    b_u32(&b, GGUF_TYPE_ARRAY);
    b_u32(&b, GGUF_TYPE_ARRAY);
    b_u64(&b, 1);
    b_u32(&b, GGUF_TYPE_UINT8);
    b_u64(&b, 1);
    b_zeros(&b, 1);
    expect_fail(&b, "key merges: nested arrays");
    free(b.p);
}

static void test_duplicate_key(void **state)
{
    struct buf b = {0};

    (void)state;
    b_hdr(&b, 3, 0, 3);
    b_kv_str(&b, "general.name", "a");
    b_kv_u32(&b, "llama.block_count", 2);
    b_kv_str(&b, "general.name", "b");
    expect_fail(&b, "duplicate key general.name");
    free(b.p);
}

/* A file with one F32 tensor of shape ne and the given offset, and enough
 * data after it for shapes of up to 64 bytes. */
static void one_tensor(struct buf *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                       uint32_t type, uint64_t offset)
{
    memset(b, 0, sizeof *b);
    b_hdr(b, 3, 1, 0);
    b_tensor(b, name, n_dims, ne, type, offset);
    b_pad(b, 32);
    b_zeros(b, 64);
}

static void test_duplicate_tensor_name(void **state)
{
    const uint64_t ne[1] = {8};
    struct buf b = {0};

    (void)state;
    b_hdr(&b, 3, 2, 0);
    b_tensor(&b, "blk.0.attn_q.weight", 1, ne, GGUF_TENSOR_F32, 0);
    b_tensor(&b, "blk.0.attn_q.weight", 1, ne, GGUF_TENSOR_F32, 32);
    b_pad(&b, 32);
    b_zeros(&b, 64);
    expect_fail(&b, "duplicate tensor name blk.0.attn_q.weight");
    free(b.p);
}

static void test_n_dims_0(void **state)
{
    const uint64_t ne[1] = {8};
    struct buf b;

    (void)state;
    one_tensor(&b, "t", 0, ne, GGUF_TENSOR_F32, 0);
    expect_fail(&b, "tensor t: n_dims 0 out of range 1..4");
    free(b.p);
}

static void test_n_dims_5(void **state)
{
    const uint64_t ne[5] = {1, 1, 1, 1, 1};
    struct buf b;

    (void)state;
    one_tensor(&b, "t", 5, ne, GGUF_TENSOR_F32, 0);
    expect_fail(&b, "tensor t: n_dims 5 out of range 1..4");
    free(b.p);
}

static void test_zero_dim(void **state)
{
    const uint64_t ne[2] = {8, 0};
    struct buf b;

    (void)state;
    one_tensor(&b, "t", 2, ne, GGUF_TENSOR_F32, 0);
    expect_fail(&b, "tensor t: dimension 1 is 0");
    free(b.p);
}

static void test_dim_product_overflow(void **state)
{
    const uint64_t ne[3] = {1ull << 32, 1ull << 32, 2};
    const uint64_t ne_bytes[1] = {1ull << 62}; // elements fit, bytes do not
    struct buf b;

    (void)state;
    one_tensor(&b, "t", 3, ne, GGUF_TENSOR_F32, 0);
    expect_fail(&b, "tensor t: element count overflows");
    free(b.p);
    one_tensor(&b, "t", 1, ne_bytes, GGUF_TENSOR_F32, 0);
    expect_fail(&b, "tensor t: size in bytes overflows");
    free(b.p);
}

static void test_q8_0_row_not_multiple_of_32(void **state)
{
    const uint64_t ne[2] = {48, 2};
    struct buf b;

    (void)state;
    one_tensor(&b, "blk.0.ffn_down.weight", 2, ne, GGUF_TENSOR_Q8_0, 0);
    expect_fail(&b, "tensor blk.0.ffn_down.weight: row of 48 elements is not a multiple of the "
                    "Q8_0 block size 32");
    free(b.p);
}

static void test_data_past_end_of_file(void **state)
{
    const uint64_t ne[1] = {8}; // 32 bytes
    struct buf b;

    (void)state;
    one_tensor(&b, "blk.3.attn_q.weight", 1, ne, GGUF_TENSOR_F32, 64);
    expect_fail(&b, "tensor blk.3.attn_q.weight: data ends past end of file");
    free(b.p);
    one_tensor(&b, "blk.3.attn_q.weight", 1, ne, GGUF_TENSOR_F32, 32);
    b.len -= 1; // the last byte is missing
    expect_fail(&b, "tensor blk.3.attn_q.weight: data ends past end of file");
    free(b.p);
    one_tensor(&b, "t", 1, ne, GGUF_TENSOR_F32, 0xffffffffffffffe0ull); // offset + size wraps
    expect_fail(&b, "tensor t: data ends past end of file");
    free(b.p);
}

static void test_overlapping_tensors(void **state)
{
    const uint64_t ne16[1] = {16}, ne8[1] = {8};
    struct buf b = {0};

    (void)state;
    b_hdr(&b, 3, 3, 0);
    b_tensor(&b, "c", 1, ne8, GGUF_TENSOR_F32, 96);
    b_tensor(&b, "b", 1, ne8, GGUF_TENSOR_F32, 32); // inside a
    b_tensor(&b, "a", 1, ne16, GGUF_TENSOR_F32, 0); // 64 bytes
    b_pad(&b, 32);
    b_zeros(&b, 128);
    expect_fail(&b, "tensors a and b overlap");
    free(b.p);
}

static void test_misaligned_offset(void **state)
{
    const uint64_t ne[1] = {4};
    struct buf b;

    (void)state;
    one_tensor(&b, "t", 1, ne, GGUF_TENSOR_F32, 4);
    expect_fail(&b, "tensor t: offset 4 is not a multiple of the alignment 32");
    free(b.p);
}

static void with_alignment(struct buf *b, uint32_t type, uint32_t value)
{
    const uint64_t ne[1] = {4};

    memset(b, 0, sizeof *b);
    b_hdr(b, 3, 1, 1);
    b_str(b, "general.alignment");
    b_u32(b, type);
    b_u32(b, value);
    b_tensor(b, "t", 1, ne, GGUF_TENSOR_F32, 0);
    b_pad(b, 64);
    b_zeros(b, 64);
}

static void test_alignment_0(void **state)
{
    struct buf b;

    (void)state;
    with_alignment(&b, GGUF_TYPE_UINT32, 0);
    expect_fail(&b, "general.alignment is 0");
    free(b.p);
}

static void test_alignment_3(void **state)
{
    struct buf b;

    (void)state;
    with_alignment(&b, GGUF_TYPE_UINT32, 3);
    expect_fail(&b, "general.alignment 3 is not a power of two");
    free(b.p);
}

static void test_alignment_of_another_type(void **state)
{
    struct buf b;

    (void)state;
    with_alignment(&b, GGUF_TYPE_INT32, 64);
    expect_fail(&b, "general.alignment has type INT32; it must be UINT32");
    free(b.p);
}

static void test_alignment_64_reads(void **state)
{
    struct buf b;
    struct gguf_file *f;
    char err[256];
    void *copy;

    (void)state;
    with_alignment(&b, GGUF_TYPE_UINT32, 64);
    assert_int_equal(open_exact(&f, b.p, b.len, err, sizeof err, &copy), 0);
    assert_int_equal(gguf_alignment(f), 64);
    assert_int_equal(gguf_data_offset(f), 128);
    gguf_close(f);
    free(copy);
    free(b.p);
}

static void test_unsupported_type_q4_k(void **state)
{
    const uint64_t ne[2] = {256, 1};
    struct buf b;

    (void)state;
    one_tensor(&b, "blk.0.attn_q.weight", 2, ne, 12, 0);
    expect_fail(&b, "tensor blk.0.attn_q.weight: unsupported type Q4_K (12); millrace reads F32, "
                    "F16, BF16 and Q8_0");
    free(b.p);
}

static void test_unknown_tensor_type(void **state)
{
    const uint64_t ne[1] = {4};
    struct buf b;

    (void)state;
    one_tensor(&b, "t", 1, ne, 77, 0);
    expect_fail(&b, "tensor t: unsupported type unknown (77)");
    free(b.p);
}

static void test_names_in_errors_are_printable_and_cut(void **state)
{
    const uint64_t ne[1] = {4};
    char name[200];
    struct buf b;

    (void)state;
    memset(name, 'x', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    name[0] = '\n';
    name[1] = '\xff';
    name[62] = '\xe2'; // a character cut at byte 64
    name[63] = '\x96';
    name[64] = '\x81';
    one_tensor(&b, name, 1, ne, 77, 0);
    expect_fail(&b, "tensor ??xxx", "x??...: unsupported type");
    free(b.p);
}

/* ---- the fuzzer's seeds ---- */

static void write_seed(const char *name, struct gguf_writer *w, uint32_t version)
{
    char path[256];
    uint8_t *mem;
    size_t len;
    FILE *fp;

    write_mem(w, &mem, &len);
    memcpy(mem + 4, &version, 4);
    assert_true(len < 4096);
    snprintf(path, sizeof path, "%s/%s", SEEDS_DIR, name);
    fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(mem, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
    free(mem);
    gguf_writer_destroy(w);
}

static void write_seeds(void)
{
    static const float f[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    static const int32_t types[6] = {2, 3, 3, 1, 1, 6};
    const uint64_t ne1[1] = {8}, ne2[2] = {4, 2}, ne_q[2] = {32, 2};
    struct gguf_writer *w;

    fill_q8();
    mkdir("tests/fuzz-seeds", 0755);
    mkdir(SEEDS_DIR, 0755);

    assert_int_equal(gguf_writer_create(&w, 0), 0); // key/values only
    gguf_writer_add_str(w, "general.architecture", "llama");
    gguf_writer_add_u32(w, "llama.block_count", 2);
    gguf_writer_add_i32(w, "i", -1);
    gguf_writer_add_f32(w, "llama.rope.freq_base", 1e6f);
    gguf_writer_add_bool(w, "b", 1);
    gguf_writer_add_arr(w, "a", GGUF_TYPE_UINT16, types, 3);
    write_seed("kv_only.gguf", w, 3);

    assert_int_equal(gguf_writer_create(&w, 0), 0); // a vocabulary
    gguf_writer_add_str_arr(w, "tokenizer.ggml.tokens", tokens, 6);
    gguf_writer_add_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, f, 6);
    gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, 6);
    write_seed("vocab_v2.gguf", w, 2);

    assert_int_equal(gguf_writer_create(&w, 0), 0); // tensors of each type
    gguf_writer_add_str(w, "general.architecture", "llama");
    gguf_writer_add_tensor(w, "a.f32", GGUF_TENSOR_F32, 1, ne1, f);
    gguf_writer_add_tensor(w, "b.f16", GGUF_TENSOR_F16, 2, ne2, f);
    gguf_writer_add_tensor(w, "c.bf16", GGUF_TENSOR_BF16, 1, ne1, f);
    gguf_writer_add_tensor(w, "d.q8_0", GGUF_TENSOR_Q8_0, 2, ne_q, q8_data);
    write_seed("tensors.gguf", w, 3);

    assert_int_equal(gguf_writer_create(&w, 64), 0); // another alignment
    gguf_writer_add_tensor(w, "x", GGUF_TENSOR_F32, 2, ne2, f);
    gguf_writer_add_tensor(w, "y", GGUF_TENSOR_F16, 1, ne1, f);
    write_seed("align64.gguf", w, 3);
}

static void test_fuzz_seeds_open(void **state)
{
    char path[512], err[256];
    struct dirent *e;
    int n = 0;
    DIR *d;

    (void)state;
    if (getenv("GGUF_WRITE_SEEDS"))
        write_seeds();
    d = opendir(SEEDS_DIR);
    assert_non_null(d);
    while ((e = readdir(d))) {
        struct gguf_file *f;
        if (!strstr(e->d_name, ".gguf"))
            continue;
        snprintf(path, sizeof path, "%s/%s", SEEDS_DIR, e->d_name);
        if (gguf_open(&f, path, err, sizeof err) != 0)
            fail_msg("%s: %s", path, err);
        gguf_close(f);
        n++;
    }
    closedir(d);
    assert_true(n >= 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_every_type),
        cmocka_unit_test(test_round_trip_alignment_64_through_a_file),
        cmocka_unit_test(test_fill_functions_stream_large_tensors),
        cmocka_unit_test(test_writer_refuses_bad_input),
        cmocka_unit_test(test_getters_convert_integers_and_refuse_other_types),
        cmocka_unit_test(test_shared_synth_tiny_f32),
        cmocka_unit_test(test_shared_synth_tiny_f16),
        cmocka_unit_test(test_shared_synth_tiny_q8_0),
        cmocka_unit_test(test_shared_stories260k),
        cmocka_unit_test(test_shared_vocab_only_file),
        cmocka_unit_test(test_open_reports_missing_empty_and_odd_files),
        cmocka_unit_test(test_bad_magic),
        cmocka_unit_test(test_version_1),
        cmocka_unit_test(test_version_99),
        cmocka_unit_test(test_version_2_reads),
        cmocka_unit_test(test_truncated_header),
        cmocka_unit_test(test_truncated_at_every_byte),
        cmocka_unit_test(test_huge_n_kv),
        cmocka_unit_test(test_huge_n_tensors),
        cmocka_unit_test(test_huge_string_length),
        cmocka_unit_test(test_unknown_value_type),
        cmocka_unit_test(test_array_count_past_end),
        cmocka_unit_test(test_nested_array),
        cmocka_unit_test(test_duplicate_key),
        cmocka_unit_test(test_duplicate_tensor_name),
        cmocka_unit_test(test_n_dims_0),
        cmocka_unit_test(test_n_dims_5),
        cmocka_unit_test(test_zero_dim),
        cmocka_unit_test(test_dim_product_overflow),
        cmocka_unit_test(test_q8_0_row_not_multiple_of_32),
        cmocka_unit_test(test_data_past_end_of_file),
        cmocka_unit_test(test_overlapping_tensors),
        cmocka_unit_test(test_misaligned_offset),
        cmocka_unit_test(test_alignment_0),
        cmocka_unit_test(test_alignment_3),
        cmocka_unit_test(test_alignment_of_another_type),
        cmocka_unit_test(test_alignment_64_reads),
        cmocka_unit_test(test_unsupported_type_q4_k),
        cmocka_unit_test(test_unknown_tensor_type),
        cmocka_unit_test(test_names_in_errors_are_printable_and_cut),
        cmocka_unit_test(test_fuzz_seeds_open),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
