/*
 * gguf: the GGUF reader (see gguf.h for the contract).
 *
 * Layout: "GGUF", uint32 version, uint64 n_tensors, uint64 n_kv; n_kv
 * key/values (string key, uint32 value type, value); n_tensors infos
 * (string name, uint32 n_dims, uint64 ne[n_dims], uint32 type, uint64
 * offset); padding to general.alignment; the data section. A string is a
 * uint64 length and that many bytes.
 *
 * parse() walks the header twice with the same code: the first pass
 * (c->fill == 0) checks the structure and counts the string-array items, so
 * that the second pass (c->fill == 1) allocates exactly what the file
 * holds; the second also looks for duplicates and checks each tensor's data
 * against the end of the file and against the other tensors.
 */
#include "worker/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/jsonscan.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "worker/gguf.c reads little-endian GGUF on little-endian hosts only"
#endif

#define HEADER_BYTES     24 /* magic, version, n_tensors, n_kv */
#define KV_MIN_BYTES     13 /* key length, value type, a 1-byte value */
#define TENSOR_MIN_BYTES 32 /* name length, n_dims, one dim, type, offset */
#define NAME_SHOW        64 /* bytes of a key or tensor name quoted in errors */

struct gguf_file {
    const uint8_t *base; /* the image: our mapping or the caller's buffer */
    size_t size;
    size_t map_len; /* nonzero when base is our mapping */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    size_t n_kv;
    struct gguf_kv *kv; /* (n_kv) */
    size_t n_tensors;
    struct gguf_tensor *tensors; /* (n_tensors) */
    size_t n_strs;
    struct gguf_str *strs; /* (n_strs) the items of every string array */
    size_t kv_cap;         /* slots of kv_index, a power of two */
    size_t *kv_index;      /* open addressing on the key: i + 1, 0 when empty */
    size_t t_cap;
    size_t *t_index; /* the same on tensor names */
};

struct cursor {
    const uint8_t *p;
    size_t size;
    size_t off;
    int fill;       /* second pass: store, index, look for duplicates */
    size_t n_strs;  /* string-array items so far */
    char where[96]; /* "key NAME", "tensor NAME", ... for messages */
    char *err;
    size_t errlen;
};

static const char *const tensor_type_names[GGUF_TENSOR_COUNT] = {
    "F32",   "F16",        "Q4_0",       "Q4_1",       "Q4_2",     "Q4_3",     "Q5_0",
    "Q5_1",  "Q8_0",       "Q8_1",       "Q2_K",       "Q3_K",     "Q4_K",     "Q5_K",
    "Q6_K",  "Q8_K",       "IQ2_XXS",    "IQ2_XS",     "IQ3_XXS",  "IQ1_S",    "IQ4_NL",
    "IQ3_S", "IQ2_S",      "IQ4_XS",     "I8",         "I16",      "I32",      "I64",
    "F64",   "IQ1_M",      "BF16",       "Q4_0_4_4",   "Q4_0_4_8", "Q4_0_8_8", "TQ1_0",
    "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8", "MXFP4",
};

static const char *const value_type_names[GGUF_TYPE_COUNT] = {
    "UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32",   "FLOAT32",
    "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64",
};

static const uint8_t value_sizes[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

/* ---- errors ---- */

static int set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        jsonscan_utf8_trim(err);
    }
    return -1;
}

#define fail(c, ...) set_err((c)->err, (c)->errlen, __VA_ARGS__)

/* s as printable, valid UTF-8 text for a message, cut at NAME_SHOW bytes. */
static const char *show(char *buf, size_t cap, struct gguf_str s)
{
    size_t n = s.len < NAME_SHOW ? (size_t)s.len : NAME_SHOW;

    if (s.len == 0) {
        snprintf(buf, cap, "(empty name)");
        return buf;
    }
    if (n > cap - 4)
        n = cap - 4;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        buf[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    buf[n] = '\0';
    jsonscan_utf8_sanitize(buf);
    if (n < s.len)
        memcpy(buf + n, "...", 4);
    return buf;
}

static void set_where(struct cursor *c, const char *what, struct gguf_str name)
{
    char shown[NAME_SHOW + 8];

    snprintf(c->where, sizeof c->where, "%s %s", what, show(shown, sizeof shown, name));
}

/* ---- reading ---- */

static int need(struct cursor *c, uint64_t n, const char *what)
{
    if (n > c->size - c->off)
        return fail(c, "truncated header: %s of %s at byte %zu runs past end of file (%zu bytes)",
                    what, c->where, c->off, c->size);
    return 0;
}

static int rd_u32(struct cursor *c, uint32_t *v, const char *what)
{
    if (need(c, 4, what))
        return -1;
    memcpy(v, c->p + c->off, 4);
    c->off += 4;
    return 0;
}

static int rd_u64(struct cursor *c, uint64_t *v, const char *what)
{
    if (need(c, 8, what))
        return -1;
    memcpy(v, c->p + c->off, 8);
    c->off += 8;
    return 0;
}

static int rd_str(struct cursor *c, struct gguf_str *s, const char *what)
{
    uint64_t len;

    if (rd_u64(c, &len, what))
        return -1;
    if (len > c->size - c->off)
        return fail(c,
                    "string length %llu (%s of %s) at byte %zu runs past end of file (%zu bytes)",
                    (unsigned long long)len, what, c->where, c->off - 8, c->size);
    s->ptr = (const char *)c->p + c->off;
    s->len = len;
    c->off += len;
    return 0;
}

static int is_signed(uint32_t type)
{
    return type == GGUF_TYPE_INT8 || type == GGUF_TYPE_INT16 || type == GGUF_TYPE_INT32 ||
           type == GGUF_TYPE_INT64;
}

/* A scalar of a number or bool type at p into kv->v. */
static void decode(struct gguf_kv *kv, const uint8_t *p)
{
    size_t sz = value_sizes[kv->type];
    uint64_t u = 0, sign = 1ull << (8 * sz - 1);
    float f32;

    memcpy(&u, p, sz); // little-endian file on a little-endian host
    if (kv->type == GGUF_TYPE_FLOAT32) {
        memcpy(&f32, p, 4);
        kv->v.f = f32;
    } else if (kv->type == GGUF_TYPE_FLOAT64) {
        memcpy(&kv->v.f, p, 8);
    } else if (is_signed(kv->type)) {
        kv->v.i = sz == 8 ? (int64_t)u : (int64_t)(u ^ sign) - (int64_t)sign; // sign-extend
    } else {
        kv->v.u = kv->type == GGUF_TYPE_BOOL ? u != 0 : u;
    }
}

/* The value of kv (its type already read) into kv; string-array items go to
 * strs (NULL in the first pass). */
static int rd_value(struct cursor *c, struct gguf_kv *kv, struct gguf_str *strs)
{
    uint32_t et;
    uint64_t n;
    size_t sz;

    if (kv->type == GGUF_TYPE_STRING)
        return rd_str(c, &kv->v.s, "value");
    if (kv->type != GGUF_TYPE_ARRAY) {
        if (kv->type >= GGUF_TYPE_COUNT)
            return fail(c, "%s: unknown value type %u", c->where, kv->type);
        if (need(c, value_sizes[kv->type], "value"))
            return -1;
        decode(kv, c->p + c->off);
        c->off += value_sizes[kv->type];
        return 0;
    }
    if (rd_u32(c, &et, "array element type") || rd_u64(c, &n, "array count"))
        return -1;
    if (et == GGUF_TYPE_ARRAY)
        return fail(c, "%s: nested arrays (arrays of arrays) are not supported", c->where);
    if (et >= GGUF_TYPE_COUNT)
        return fail(c, "%s: unknown array element type %u", c->where, et);
    kv->elem_type = et;
    kv->n = n;
    sz = et == GGUF_TYPE_STRING ? 8 : value_sizes[et]; // a string takes 8 bytes at least
    if (n > (c->size - c->off) / sz)
        return fail(c, "%s: array count %llu runs past end of file (%zu bytes)", c->where,
                    (unsigned long long)n, c->size);
    if (et != GGUF_TYPE_STRING) {
        kv->data = c->p + c->off;
        c->off += n * sz;
        return 0;
    }
    if (strs)
        kv->strs = strs + c->n_strs;
    for (uint64_t i = 0; i < n; i++) {
        struct gguf_str s;
        if (rd_str(c, &s, "array item"))
            return -1;
        if (strs)
            strs[c->n_strs] = s;
        c->n_strs++;
    }
    return 0;
}

/* ---- lookup ---- */

static uint64_t hash(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull; // FNV-1a

    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/* The slot of name in an index (tensors or keys): the one holding it, or the
 * empty one where it would go. */
static size_t slot_of(const struct gguf_file *f, int tensors, const char *s, size_t len)
{
    const size_t *index = tensors ? f->t_index : f->kv_index;
    size_t mask = (tensors ? f->t_cap : f->kv_cap) - 1;
    size_t h = (size_t)hash(s, len) & mask;

    for (;; h = (h + 1) & mask) {
        struct gguf_str n;
        if (index[h] == 0)
            return h;
        n = tensors ? f->tensors[index[h] - 1].name : f->kv[index[h] - 1].key;
        if (n.len == len && memcmp(n.ptr, s, len) == 0)
            return h;
    }
}

static size_t find(const struct gguf_file *f, int tensors, const char *name)
{
    const size_t *index = tensors ? f->t_index : f->kv_index;

    if (!f || !name || !index)
        return 0;
    return index[slot_of(f, tensors, name, strlen(name))];
}

/* Room for n names at most half full. */
static size_t index_cap(size_t n)
{
    size_t cap = 8;

    while (cap / 2 < n)
        cap *= 2;
    return cap;
}

/* ---- parsing ---- */

static int check_alignment(struct cursor *c, struct gguf_file *f, const struct gguf_kv *kv)
{
    if (kv->type != GGUF_TYPE_UINT32)
        return fail(c, "general.alignment has type %s; it must be UINT32",
                    gguf_value_type_name(kv->type));
    if (kv->v.u == 0)
        return fail(c, "general.alignment is 0; it must be a nonzero power of two");
    if (kv->v.u & (kv->v.u - 1))
        return fail(c, "general.alignment %llu is not a power of two", (unsigned long long)kv->v.u);
    f->alignment = (uint32_t)kv->v.u;
    return 0;
}

static int rd_kv(struct cursor *c, struct gguf_file *f, size_t i)
{
    struct gguf_kv tmp, *kv = c->fill ? &f->kv[i] : &tmp;

    memset(kv, 0, sizeof *kv);
    snprintf(c->where, sizeof c->where, "key %zu", i);
    if (rd_str(c, &kv->key, "name"))
        return -1;
    set_where(c, "key", kv->key);
    if (rd_u32(c, &kv->type, "value type"))
        return -1;
    kv->elem_type = kv->type;
    kv->n = 1;
    if (rd_value(c, kv, c->fill ? f->strs : NULL))
        return -1;
    if (gguf_str_eq(kv->key, "general.alignment") && check_alignment(c, f, kv))
        return -1;
    if (c->fill) {
        size_t s = slot_of(f, 0, kv->key.ptr, kv->key.len);
        if (f->kv_index[s])
            return fail(c, "duplicate %s", c->where);
        f->kv_index[s] = i + 1;
    }
    return 0;
}

/* The tensor's shape and type: its size into t->nbytes. */
static int check_shape(struct cursor *c, const struct gguf_file *f, struct gguf_tensor *t)
{
    uint32_t be, bb;
    uint64_t nel = 1;

    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (t->ne[d] == 0)
            return fail(c, "%s: dimension %u is 0", c->where, d);
        if (__builtin_mul_overflow(nel, t->ne[d], &nel) || nel > INT64_MAX)
            return fail(c, "%s: element count overflows", c->where);
    }
    if (gguf_type_block(t->type, &be, &bb) != 0)
        return fail(c, "%s: unsupported type %s (%u); millrace reads F32, F16, BF16 and Q8_0",
                    c->where, gguf_type_name(t->type), t->type);
    if (t->ne[0] % be != 0)
        return fail(c, "%s: row of %llu elements is not a multiple of the %s block size %u",
                    c->where, (unsigned long long)t->ne[0], gguf_type_name(t->type), be);
    if (__builtin_mul_overflow(nel / be, (uint64_t)bb, &t->nbytes))
        return fail(c, "%s: size in bytes overflows", c->where);
    if (t->offset % f->alignment != 0)
        return fail(c, "%s: offset %llu is not a multiple of the alignment %u", c->where,
                    (unsigned long long)t->offset, f->alignment);
    return 0;
}

static int rd_tensor(struct cursor *c, struct gguf_file *f, size_t i)
{
    struct gguf_tensor tmp, *t = c->fill ? &f->tensors[i] : &tmp;
    char name[NAME_SHOW + 8];

    memset(t, 0, sizeof *t);
    snprintf(c->where, sizeof c->where, "tensor %zu", i);
    if (rd_str(c, &t->name, "name"))
        return -1;
    set_where(c, "tensor", t->name);
    if (rd_u32(c, &t->n_dims, "n_dims"))
        return -1;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return fail(c, "%s: n_dims %u out of range 1..%d", c->where, t->n_dims, GGUF_MAX_DIMS);
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
        if (d < t->n_dims && rd_u64(c, &t->ne[d], "dimension"))
            return -1;
    }
    if (rd_u32(c, &t->type, "type") || rd_u64(c, &t->offset, "offset"))
        return -1;
    if (check_shape(c, f, t))
        return -1;
    if (c->fill) {
        size_t s = slot_of(f, 1, t->name.ptr, t->name.len);
        if (f->t_index[s])
            return fail(c, "duplicate tensor name %s", show(name, sizeof name, t->name));
        f->t_index[s] = i + 1;
    }
    return 0;
}

static int by_offset(const void *a, const void *b)
{
    const struct gguf_tensor *x = *(const struct gguf_tensor *const *)a;
    const struct gguf_tensor *y = *(const struct gguf_tensor *const *)b;

    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Second pass only: each tensor's data inside the file, none overlapping. */
static int place_tensors(struct cursor *c, struct gguf_file *f)
{
    uint64_t avail = f->data_offset <= f->size ? f->size - f->data_offset : 0;
    const struct gguf_tensor **order = NULL;
    char a[NAME_SHOW + 8], b[NAME_SHOW + 8];
    int rc = -1;

    for (size_t i = 0; i < f->n_tensors; i++) {
        struct gguf_tensor *t = &f->tensors[i];
        if (t->offset > avail || t->nbytes > avail - t->offset)
            return fail(c, "tensor %s: data ends past end of file", show(a, sizeof a, t->name));
        t->data = f->base + f->data_offset + t->offset;
    }
    if (f->n_tensors < 2)
        return 0;
    order = malloc(f->n_tensors * sizeof *order);
    if (!order)
        return fail(c, "out of memory");
    for (size_t i = 0; i < f->n_tensors; i++)
        order[i] = &f->tensors[i];
    qsort(order, f->n_tensors, sizeof *order, by_offset);
    for (size_t i = 0; i + 1 < f->n_tensors; i++) {
        if (order[i]->offset + order[i]->nbytes > order[i + 1]->offset) {
            fail(c, "tensors %s and %s overlap", show(a, sizeof a, order[i]->name),
                 show(b, sizeof b, order[i + 1]->name));
            goto out;
        }
    }
    rc = 0;
out:
    free(order);
    return rc;
}

static int parse(struct cursor *c, struct gguf_file *f)
{
    c->off = HEADER_BYTES;
    c->n_strs = 0;
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (size_t i = 0; i < f->n_kv; i++)
        if (rd_kv(c, f, i))
            return -1;
    for (size_t i = 0; i < f->n_tensors; i++)
        if (rd_tensor(c, f, i))
            return -1;
    f->data_offset = (c->off + f->alignment - 1) / f->alignment * (uint64_t)f->alignment;
    return c->fill ? place_tensors(c, f) : 0;
}

static int rd_header(struct cursor *c, struct gguf_file *f)
{
    uint64_t n_tensors, n_kv, room;

    if (c->size < 4)
        return fail(c, "truncated header: %zu bytes, a GGUF header needs %d", c->size,
                    HEADER_BYTES);
    if (memcmp(c->p, "GGUF", 4) != 0)
        return fail(c, "bad magic: not a GGUF file (it starts %02x %02x %02x %02x, not \"GGUF\")",
                    c->p[0], c->p[1], c->p[2], c->p[3]);
    if (c->size < 8)
        return fail(c, "truncated header: %zu bytes, a GGUF header needs %d", c->size,
                    HEADER_BYTES);
    memcpy(&f->version, c->p + 4, 4);
    if (f->version != 2 && f->version != 3)
        return fail(c, "unsupported GGUF version %u (millrace reads versions 2 and 3)%s",
                    f->version, (f->version & 0xffff) == 0 ? "; is it a big-endian file?" : "");
    if (c->size < HEADER_BYTES)
        return fail(c, "truncated header: %zu bytes, a GGUF header needs %d", c->size,
                    HEADER_BYTES);
    memcpy(&n_tensors, c->p + 8, 8);
    memcpy(&n_kv, c->p + 16, 8);
    room = c->size - HEADER_BYTES;
    if (n_kv > room / KV_MIN_BYTES)
        return fail(c, "n_kv %llu cannot fit in a %zu-byte file", (unsigned long long)n_kv,
                    c->size);
    room -= n_kv * KV_MIN_BYTES;
    if (n_tensors > room / TENSOR_MIN_BYTES)
        return fail(c, "n_tensors %llu cannot fit in a %zu-byte file",
                    (unsigned long long)n_tensors, c->size);
    f->n_kv = n_kv;
    f->n_tensors = n_tensors;
    return 0;
}

int gguf_open_mem(struct gguf_file **out, const void *data, size_t len, char *err, size_t errlen)
{
    struct cursor c = {.p = data, .size = data ? len : 0, .err = err, .errlen = errlen};
    struct gguf_file *f;

    *out = NULL;
    if (errlen > 0)
        err[0] = '\0';
    f = calloc(1, sizeof *f);
    if (!f)
        return set_err(err, errlen, "out of memory");
    f->base = c.p;
    f->size = c.size;
    if (rd_header(&c, f) || parse(&c, f))
        goto fail;
    // every count is now backed by bytes of the file: allocate and fill
    f->n_strs = c.n_strs;
    f->kv_cap = index_cap(f->n_kv);
    f->t_cap = index_cap(f->n_tensors);
    f->kv = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kv);
    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    f->strs = calloc(f->n_strs ? f->n_strs : 1, sizeof *f->strs);
    f->kv_index = calloc(f->kv_cap, sizeof *f->kv_index);
    f->t_index = calloc(f->t_cap, sizeof *f->t_index);
    if (!f->kv || !f->tensors || !f->strs || !f->kv_index || !f->t_index) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    c.fill = 1;
    if (parse(&c, f))
        goto fail;
    *out = f;
    return 0;
fail:
    gguf_close(f);
    return -1;
}

int gguf_open(struct gguf_file **out, const char *path, char *err, size_t errlen)
{
    char eb[128];
    struct stat st;
    void *map = MAP_FAILED;
    int fd, rc;

    *out = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return set_err(err, errlen, "open: %s", strerror_r(errno, eb, sizeof eb));
    if (fstat(fd, &st) != 0) {
        rc = set_err(err, errlen, "stat: %s", strerror_r(errno, eb, sizeof eb));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = set_err(err, errlen, "not a regular file");
        goto out;
    }
    if (st.st_size == 0) {
        rc = gguf_open_mem(out, NULL, 0, err, errlen);
        goto out;
    }
    map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        rc = set_err(err, errlen, "mmap: %s", strerror_r(errno, eb, sizeof eb));
        goto out;
    }
    rc = gguf_open_mem(out, map, (size_t)st.st_size, err, errlen);
    if (rc == 0) {
        (*out)->map_len = (size_t)st.st_size;
        map = MAP_FAILED; // the file owns it now
    }
out:
    if (map != MAP_FAILED)
        munmap(map, (size_t)st.st_size);
    close(fd);
    return rc;
}

void gguf_close(struct gguf_file *f)
{
    if (!f)
        return;
    if (f->map_len)
        munmap((void *)f->base, f->map_len);
    free(f->kv);
    free(f->tensors);
    free(f->strs);
    free(f->kv_index);
    free(f->t_index);
    free(f);
}

/* ---- accessors ---- */

uint32_t gguf_version(const struct gguf_file *f)
{
    return f->version;
}

uint32_t gguf_alignment(const struct gguf_file *f)
{
    return f->alignment;
}

uint64_t gguf_data_offset(const struct gguf_file *f)
{
    return f->data_offset;
}

size_t gguf_n_kv(const struct gguf_file *f)
{
    return f->n_kv;
}

const struct gguf_kv *gguf_kv_at(const struct gguf_file *f, size_t i)
{
    return i < f->n_kv ? &f->kv[i] : NULL;
}

const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key)
{
    size_t e = find(f, 0, key);

    return e ? &f->kv[e - 1] : NULL;
}

static int is_int(uint32_t type)
{
    return type <= GGUF_TYPE_INT32 || type == GGUF_TYPE_UINT64 || type == GGUF_TYPE_INT64;
}

/* An integer key in [lo, hi] into *out. */
static int get_int(const struct gguf_file *f, const char *key, int64_t lo, uint64_t hi,
                   int64_t *s_out, uint64_t *u_out)
{
    const struct gguf_kv *kv = gguf_find_kv(f, key);

    if (!kv)
        return GGUF_EABSENT;
    if (!is_int(kv->type))
        return GGUF_ETYPE;
    if (is_signed(kv->type)) {
        if (kv->v.i < lo || (kv->v.i >= 0 && (uint64_t)kv->v.i > hi))
            return GGUF_ERANGE;
        *s_out = kv->v.i;
        *u_out = (uint64_t)kv->v.i;
    } else {
        if (kv->v.u > hi)
            return GGUF_ERANGE;
        *s_out = (int64_t)kv->v.u;
        *u_out = kv->v.u;
    }
    return 0;
}

int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out)
{
    int64_t s;
    uint64_t u;
    int rc = get_int(f, key, 0, UINT32_MAX, &s, &u);

    if (rc == 0)
        *out = (uint32_t)u;
    return rc;
}

int gguf_get_i32(const struct gguf_file *f, const char *key, int32_t *out)
{
    int64_t s;
    uint64_t u;
    int rc = get_int(f, key, INT32_MIN, INT32_MAX, &s, &u);

    if (rc == 0)
        *out = (int32_t)s;
    return rc;
}

int gguf_get_u64(const struct gguf_file *f, const char *key, uint64_t *out)
{
    int64_t s;
    uint64_t u;
    int rc = get_int(f, key, 0, UINT64_MAX, &s, &u);

    if (rc == 0)
        *out = u;
    return rc;
}

int gguf_get_f32(const struct gguf_file *f, const char *key, float *out)
{
    const struct gguf_kv *kv = gguf_find_kv(f, key);

    if (!kv)
        return GGUF_EABSENT;
    if (kv->type != GGUF_TYPE_FLOAT32 && kv->type != GGUF_TYPE_FLOAT64)
        return GGUF_ETYPE;
    *out = (float)kv->v.f;
    return 0;
}

int gguf_get_bool(const struct gguf_file *f, const char *key, int *out)
{
    const struct gguf_kv *kv = gguf_find_kv(f, key);

    if (!kv)
        return GGUF_EABSENT;
    if (kv->type != GGUF_TYPE_BOOL)
        return GGUF_ETYPE;
    *out = (int)kv->v.u;
    return 0;
}

int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out)
{
    const struct gguf_kv *kv = gguf_find_kv(f, key);

    if (!kv)
        return GGUF_EABSENT;
    if (kv->type != GGUF_TYPE_STRING)
        return GGUF_ETYPE;
    *out = kv->v.s;
    return 0;
}

int gguf_get_arr(const struct gguf_file *f, const char *key, uint32_t *elem_type, uint64_t *n,
                 const void **data)
{
    const struct gguf_kv *kv = gguf_find_kv(f, key);

    if (!kv)
        return GGUF_EABSENT;
    if (kv->type != GGUF_TYPE_ARRAY || kv->elem_type == GGUF_TYPE_STRING)
        return GGUF_ETYPE;
    *elem_type = kv->elem_type;
    *n = kv->n;
    *data = kv->data;
    return 0;
}

int gguf_get_str_arr(const struct gguf_file *f, const char *key, const struct gguf_str **items,
                     uint64_t *n)
{
    const struct gguf_kv *kv = gguf_find_kv(f, key);

    if (!kv)
        return GGUF_EABSENT;
    if (kv->type != GGUF_TYPE_ARRAY || kv->elem_type != GGUF_TYPE_STRING)
        return GGUF_ETYPE;
    *items = kv->strs;
    *n = kv->n;
    return 0;
}

size_t gguf_n_tensors(const struct gguf_file *f)
{
    return f->n_tensors;
}

const struct gguf_tensor *gguf_tensor(const struct gguf_file *f, size_t i)
{
    return i < f->n_tensors ? &f->tensors[i] : NULL;
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name)
{
    size_t e = find(f, 1, name);

    return e ? &f->tensors[e - 1] : NULL;
}

int gguf_str_eq(struct gguf_str s, const char *c)
{
    size_t n = strlen(c);

    return s.len == n && memcmp(s.ptr, c, n) == 0;
}

const char *gguf_type_name(uint32_t tensor_type)
{
    return tensor_type < GGUF_TENSOR_COUNT ? tensor_type_names[tensor_type] : "unknown";
}

const char *gguf_value_type_name(uint32_t value_type)
{
    return value_type < GGUF_TYPE_COUNT ? value_type_names[value_type] : "unknown";
}

size_t gguf_value_size(uint32_t value_type)
{
    return value_type < GGUF_TYPE_COUNT ? value_sizes[value_type] : 0;
}

int gguf_type_block(uint32_t tensor_type, uint32_t *block_elems, uint32_t *block_bytes)
{
    switch (tensor_type) {
    case GGUF_TENSOR_F32:
        *block_elems = 1, *block_bytes = 4;
        return 0;
    case GGUF_TENSOR_F16:
    case GGUF_TENSOR_BF16:
        *block_elems = 1, *block_bytes = 2;
        return 0;
    case GGUF_TENSOR_Q8_0:
        *block_elems = 32, *block_bytes = 34;
        return 0;
    default:
        return -1;
    }
}
