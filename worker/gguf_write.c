/*
 * gguf_write: the GGUF v3 writer (see gguf_write.h for the contract).
 *
 * Key/values go straight into a byte buffer as they are added; tensors are
 * kept as (name, shape, type, source) and laid out at write time, each at
 * the next multiple of the alignment, with zero padding after each one (as
 * llama.cpp writes them).
 */
#include "worker/gguf_write.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/grow.h"
#include "worker/gguf.h"

#define FILL_CHUNK (1u << 20) /* bytes asked of a fill function at a time, at most */

struct wtensor {
    char *name;
    uint32_t type;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    uint64_t nbytes;
    const void *data; /* borrowed, or NULL when fill produces the bytes */
    gguf_fill_fn fill;
    void *ctx;
};

struct gguf_writer {
    uint32_t alignment;
    uint8_t *kv; /* the serialized key/values */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    char **keys; /* (n_kv) copies, for the duplicate check */
    size_t keys_cap;
    struct wtensor *t;
    size_t n_t, t_cap;
    char errstr[256];
};

static int werr(struct gguf_writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int werr(struct gguf_writer *w, const char *fmt, ...)
{
    va_list ap;

    if (w->errstr[0] == '\0') {
        va_start(ap, fmt);
        vsnprintf(w->errstr, sizeof w->errstr, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* Room for n more elements of size sz in *p (holding len of cap). */
static int grow(void **p, size_t *cap, size_t len, size_t n, size_t sz)
{
    return n > SIZE_MAX - len ? -1 : grow_array(p, cap, len + n, sz);
}

static int put(struct gguf_writer *w, const void *src, size_t n)
{
    if (grow((void **)&w->kv, &w->kv_cap, w->kv_len, n, 1))
        return werr(w, "out of memory");
    memcpy(w->kv + w->kv_len, src, n);
    w->kv_len += n;
    return 0;
}

static int put_u32(struct gguf_writer *w, uint32_t v)
{
    return put(w, &v, 4);
}

static int put_str(struct gguf_writer *w, const char *s)
{
    uint64_t n = strlen(s);

    return put(w, &n, 8) || put(w, s, (size_t)n) ? -1 : 0;
}

/* Start a key/value: check the key, write it and the value type. */
static int begin_kv(struct gguf_writer *w, const char *key, uint32_t type, int internal)
{
    char *copy;

    if (w->errstr[0])
        return -1;
    if (!key)
        return werr(w, "a key is NULL");
    if (!internal && strcmp(key, "general.alignment") == 0)
        return werr(w, "general.alignment is set by gguf_writer_create's alignment");
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return werr(w, "duplicate key %s", key);
    if (grow((void **)&w->keys, &w->keys_cap, (size_t)w->n_kv, 1, sizeof *w->keys) ||
        !(copy = strdup(key)))
        return werr(w, "out of memory");
    w->keys[w->n_kv++] = copy;
    return put_str(w, key) || put_u32(w, type) ? -1 : 0;
}

int gguf_writer_create(struct gguf_writer **out, uint32_t alignment)
{
    struct gguf_writer *w;

    *out = NULL;
    if (alignment == 0)
        alignment = GGUF_DEFAULT_ALIGNMENT;
    if (alignment & (alignment - 1))
        return -1;
    w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    w->alignment = alignment;
    if (alignment != GGUF_DEFAULT_ALIGNMENT &&
        (begin_kv(w, "general.alignment", GGUF_TYPE_UINT32, 1) || put_u32(w, alignment))) {
        gguf_writer_destroy(w);
        return -1;
    }
    *out = w;
    return 0;
}

void gguf_writer_destroy(struct gguf_writer *w)
{
    if (!w)
        return;
    for (uint64_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    for (size_t i = 0; i < w->n_t; i++)
        free(w->t[i].name);
    free(w->keys);
    free(w->t);
    free(w->kv);
    free(w);
}

const char *gguf_writer_error(const struct gguf_writer *w)
{
    return w->errstr;
}

int gguf_writer_add_scalar(struct gguf_writer *w, const char *key, uint32_t type, const void *value)
{
    size_t sz = gguf_value_size(type);

    if (w->errstr[0])
        return -1;
    if (sz == 0)
        return werr(w, "key %s: %s is not a number or bool type", key ? key : "(null)",
                    gguf_value_type_name(type));
    return begin_kv(w, key, type, 0) || put(w, value, sz) ? -1 : 0;
}

int gguf_writer_add_u32(struct gguf_writer *w, const char *key, uint32_t v)
{
    return gguf_writer_add_scalar(w, key, GGUF_TYPE_UINT32, &v);
}

int gguf_writer_add_i32(struct gguf_writer *w, const char *key, int32_t v)
{
    return gguf_writer_add_scalar(w, key, GGUF_TYPE_INT32, &v);
}

int gguf_writer_add_f32(struct gguf_writer *w, const char *key, float v)
{
    return gguf_writer_add_scalar(w, key, GGUF_TYPE_FLOAT32, &v);
}

int gguf_writer_add_bool(struct gguf_writer *w, const char *key, int v)
{
    uint8_t b = v != 0;

    return gguf_writer_add_scalar(w, key, GGUF_TYPE_BOOL, &b);
}

int gguf_writer_add_str(struct gguf_writer *w, const char *key, const char *v)
{
    if (w->errstr[0])
        return -1;
    if (!v)
        return werr(w, "key %s: the string is NULL", key ? key : "(null)");
    return begin_kv(w, key, GGUF_TYPE_STRING, 0) || put_str(w, v) ? -1 : 0;
}

int gguf_writer_add_arr(struct gguf_writer *w, const char *key, uint32_t elem_type,
                        const void *data, uint64_t n)
{
    size_t sz = gguf_value_size(elem_type);

    if (w->errstr[0])
        return -1;
    if (sz == 0)
        return werr(w, "key %s: %s is not a number or bool type", key ? key : "(null)",
                    gguf_value_type_name(elem_type));
    if (n > SIZE_MAX / sz)
        return werr(w, "key %s: array of %llu elements is too large", key ? key : "(null)",
                    (unsigned long long)n);
    if (begin_kv(w, key, GGUF_TYPE_ARRAY, 0) || put_u32(w, elem_type) || put(w, &n, 8))
        return -1;
    return n ? put(w, data, (size_t)n * sz) : 0;
}

int gguf_writer_add_str_arr(struct gguf_writer *w, const char *key, const char *const *items,
                            uint64_t n)
{
    if (begin_kv(w, key, GGUF_TYPE_ARRAY, 0) || put_u32(w, GGUF_TYPE_STRING) || put(w, &n, 8))
        return -1;
    for (uint64_t i = 0; i < n; i++) {
        if (!items[i])
            return werr(w, "key %s: item %llu is NULL", key, (unsigned long long)i);
        if (put_str(w, items[i]))
            return -1;
    }
    return 0;
}

static int add_tensor(struct gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                      const uint64_t *ne, const void *data, gguf_fill_fn fill, void *ctx)
{
    struct wtensor t = {.type = type, .n_dims = n_dims, .data = data, .fill = fill, .ctx = ctx};
    uint32_t be, bb;
    uint64_t nel = 1;

    if (w->errstr[0])
        return -1;
    if (!name)
        return werr(w, "a tensor name is NULL");
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return werr(w, "duplicate tensor name %s", name);
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return werr(w, "tensor %s: n_dims %u out of range 1..%d", name, n_dims, GGUF_MAX_DIMS);
    if (gguf_type_block(type, &be, &bb) != 0)
        return werr(w, "tensor %s: unsupported type %s (%u)", name, gguf_type_name(type), type);
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        t.ne[d] = d < n_dims ? ne[d] : 1;
        if (t.ne[d] == 0)
            return werr(w, "tensor %s: dimension %u is 0", name, d);
        if (__builtin_mul_overflow(nel, t.ne[d], &nel) || nel > INT64_MAX)
            return werr(w, "tensor %s: element count overflows", name);
    }
    if (t.ne[0] % be != 0)
        return werr(w, "tensor %s: row of %llu elements is not a multiple of the %s block size %u",
                    name, (unsigned long long)t.ne[0], gguf_type_name(type), be);
    if (__builtin_mul_overflow(nel / be, (uint64_t)bb, &t.nbytes))
        return werr(w, "tensor %s: size in bytes overflows", name);
    if (!data && !fill)
        return werr(w, "tensor %s: no data", name);
    if (grow((void **)&w->t, &w->t_cap, w->n_t, 1, sizeof *w->t) || !(t.name = strdup(name)))
        return werr(w, "out of memory");
    w->t[w->n_t++] = t;
    return 0;
}

int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                           const uint64_t *ne, const void *data)
{
    return add_tensor(w, name, type, n_dims, ne, data, NULL, NULL);
}

int gguf_writer_add_tensor_fn(struct gguf_writer *w, const char *name, uint32_t type,
                              uint32_t n_dims, const uint64_t *ne, gguf_fill_fn fill, void *ctx)
{
    return add_tensor(w, name, type, n_dims, ne, NULL, fill, ctx);
}

/* ---- writing ---- */

static uint64_t pad_up(uint64_t n, uint32_t alignment)
{
    return (n + alignment - 1) / alignment * alignment;
}

static int out(struct gguf_writer *w, FILE *fp, const void *p, size_t n)
{
    if (n && fwrite(p, 1, n, fp) != n)
        return werr(w, "write: %s", strerror(errno));
    return 0;
}

static int out_zeros(struct gguf_writer *w, FILE *fp, uint64_t n)
{
    static const uint8_t zeros[4096];

    for (; n > 0; n -= n < sizeof zeros ? n : sizeof zeros)
        if (out(w, fp, zeros, n < sizeof zeros ? (size_t)n : sizeof zeros))
            return -1;
    return 0;
}

static int out_tensor_data(struct gguf_writer *w, FILE *fp, const struct wtensor *t, uint8_t **buf)
{
    uint32_t be, bb;
    size_t chunk;

    if (t->data)
        return out(w, fp, t->data, (size_t)t->nbytes);
    gguf_type_block(t->type, &be, &bb);
    chunk = FILL_CHUNK / bb * bb; // at most FILL_CHUNK, whatever the type
    if (!*buf && !(*buf = malloc(FILL_CHUNK)))
        return werr(w, "out of memory");
    for (uint64_t off = 0; off < t->nbytes; off += chunk) {
        size_t n = t->nbytes - off < chunk ? (size_t)(t->nbytes - off) : chunk;
        int rc = t->fill(t->ctx, *buf, off, n);
        if (rc != 0)
            return werr(w, "tensor %s: the fill function failed (%d) at byte %llu", t->name, rc,
                        (unsigned long long)off);
        if (out(w, fp, *buf, n))
            return -1;
    }
    return 0;
}

int gguf_writer_write_stream(struct gguf_writer *w, FILE *fp)
{
    uint32_t version = 3;
    uint64_t n_t = w->n_t, pos = 0, offset = 0;
    uint8_t *buf = NULL;
    int rc = -1;

    if (w->errstr[0])
        return -1;
    if (out(w, fp, "GGUF", 4) || out(w, fp, &version, 4) || out(w, fp, &n_t, 8) ||
        out(w, fp, &w->n_kv, 8) || out(w, fp, w->kv, w->kv_len))
        goto done;
    pos = 24 + w->kv_len;
    for (size_t i = 0; i < w->n_t; i++) {
        const struct wtensor *t = &w->t[i];
        uint64_t len = strlen(t->name);
        if (out(w, fp, &len, 8) || out(w, fp, t->name, (size_t)len) || out(w, fp, &t->n_dims, 4) ||
            out(w, fp, t->ne, t->n_dims * sizeof t->ne[0]) || out(w, fp, &t->type, 4) ||
            out(w, fp, &offset, 8))
            goto done;
        pos += 8 + len + 4 + t->n_dims * 8 + 4 + 8;
        offset = pad_up(offset + t->nbytes, w->alignment);
    }
    if (out_zeros(w, fp, pad_up(pos, w->alignment) - pos))
        goto done;
    for (size_t i = 0; i < w->n_t; i++) {
        const struct wtensor *t = &w->t[i];
        if (out_tensor_data(w, fp, t, &buf) ||
            out_zeros(w, fp, pad_up(t->nbytes, w->alignment) - t->nbytes))
            goto done;
    }
    rc = 0;
done:
    free(buf);
    return rc;
}

int gguf_writer_write(struct gguf_writer *w, const char *path)
{
    char tmp[4096];
    FILE *fp = NULL;
    int fd = -1, rc = -1;

    if (w->errstr[0])
        return -1;
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) >= sizeof tmp)
        return werr(w, "%s: path too long", path);
    fd = mkstemp(tmp);
    if (fd < 0)
        return werr(w, "%s: %s", tmp, strerror(errno));
    if (fchmod(fd, 0644) != 0 || !(fp = fdopen(fd, "wb"))) {
        werr(w, "%s: %s", tmp, strerror(errno));
        goto done;
    }
    fd = -1; // fp owns it
    if (gguf_writer_write_stream(w, fp))
        goto done;
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) {
        werr(w, "%s: %s", tmp, strerror(errno));
        goto done;
    }
    if (fclose(fp) != 0) {
        fp = NULL;
        werr(w, "%s: %s", tmp, strerror(errno));
        goto done;
    }
    fp = NULL;
    if (rename(tmp, path) != 0) {
        werr(w, "rename to %s: %s", path, strerror(errno));
        goto done;
    }
    rc = 0;
done:
    if (fp)
        fclose(fp);
    if (fd >= 0)
        close(fd);
    if (rc != 0)
        unlink(tmp);
    return rc;
}
