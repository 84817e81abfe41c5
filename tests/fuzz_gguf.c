/*
 * libFuzzer target for the GGUF reader (worker/gguf.c): any bytes go to
 * gguf_open_mem. A refused file must leave a one-line, non-empty, valid
 * UTF-8 message and no file. An accepted one is walked end to end: every
 * key, every scalar, every array element (string-array items included) and
 * every byte of every tensor's data is read, so that the sanitizers see any
 * pointer the reader hands out that leaves the input; each key and tensor
 * name must also be found again by lookup. Any broken invariant aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/jsonscan.h"
#include "worker/gguf.h"

static uint64_t sum_bytes(const void *p, uint64_t n)
{
    const uint8_t *b = p;
    uint64_t s = 0;

    for (uint64_t i = 0; i < n; i++)
        s += b[i];
    return s;
}

/* A NUL-terminated copy of s when it holds no NUL (to look it up), else NULL. */
static char *c_copy(struct gguf_str s)
{
    char *c;

    if (memchr(s.ptr, '\0', (size_t)s.len))
        return NULL;
    c = malloc((size_t)s.len + 1);
    if (!c)
        abort();
    memcpy(c, s.ptr, (size_t)s.len);
    c[s.len] = '\0';
    return c;
}

static int inside(const uint8_t *data, size_t size, const void *p, uint64_t n)
{
    const uint8_t *q = p;

    return q >= data && q <= data + size && n <= (uint64_t)(data + size - q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    volatile uint64_t sum = 0;
    struct gguf_file *f = (struct gguf_file *)1;
    char err[256];

    if (gguf_open_mem(&f, data, size, err, sizeof err) != 0) {
        if (f || err[0] == '\0' || strchr(err, '\n') || !jsonscan_utf8_valid(err, strlen(err)))
            abort();
        return 0;
    }
    if (gguf_version(f) != 2 && gguf_version(f) != 3)
        abort();
    for (size_t i = 0; i < gguf_n_kv(f); i++) {
        const struct gguf_kv *kv = gguf_kv_at(f, i);
        char *key;
        if (!inside(data, size, kv->key.ptr, kv->key.len))
            abort();
        sum += sum_bytes(kv->key.ptr, kv->key.len);
        if (kv->type == GGUF_TYPE_STRING) {
            if (!inside(data, size, kv->v.s.ptr, kv->v.s.len))
                abort();
            sum += sum_bytes(kv->v.s.ptr, kv->v.s.len);
        } else if (kv->type == GGUF_TYPE_ARRAY && kv->elem_type == GGUF_TYPE_STRING) {
            for (uint64_t j = 0; j < kv->n; j++) {
                if (!inside(data, size, kv->strs[j].ptr, kv->strs[j].len))
                    abort();
                sum += sum_bytes(kv->strs[j].ptr, kv->strs[j].len);
            }
        } else if (kv->type == GGUF_TYPE_ARRAY) {
            uint64_t n = kv->n * gguf_value_size(kv->elem_type);
            if (!inside(data, size, kv->data, n))
                abort();
            sum += sum_bytes(kv->data, n);
        } else if (kv->type >= GGUF_TYPE_COUNT || kv->n != 1) {
            abort();
        } else {
            sum += kv->v.u;
        }
        key = c_copy(kv->key);
        if (key && gguf_find_kv(f, key) != kv)
            abort();
        free(key);
    }
    for (size_t i = 0; i < gguf_n_tensors(f); i++) {
        const struct gguf_tensor *t = gguf_tensor(f, i);
        uint32_t be, bb;
        char *name;
        if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS || gguf_type_block(t->type, &be, &bb) ||
            t->nbytes == 0 || t->offset % gguf_alignment(f) != 0 ||
            (const uint8_t *)t->data != data + gguf_data_offset(f) + t->offset ||
            !inside(data, size, t->data, t->nbytes) ||
            !inside(data, size, t->name.ptr, t->name.len))
            abort();
        sum += sum_bytes(t->data, t->nbytes);
        name = c_copy(t->name);
        if (name && gguf_find_tensor(f, name) != t)
            abort();
        free(name);
    }
    (void)sum;
    gguf_close(f);
    return 0;
}
