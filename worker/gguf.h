/*
 * gguf: reading GGUF model files (llama.cpp's format, versions 2 and 3).
 *
 * A file is mapped read-only and parsed once at open: every key/value, every
 * tensor info and every tensor's extent is checked against the file before
 * anything is returned, so that afterwards each pointer handed out (key
 * names, string values, array data, tensor data) lies inside the mapping and
 * can be used without further checks. A bad file is a one-line error naming
 * the problem (and the key or tensor at fault), never a crash.
 *
 * Key decisions: nothing is copied out of the mapping (strings are borrowed
 * `struct gguf_str`, not NUL-terminated); the header is walked twice, first
 * to check its structure and count what must be allocated, then to fill, so
 * that no allocation depends on a count the file has not backed with bytes;
 * keys and tensor names are indexed in hash tables, and string arrays (the
 * vocabulary) get an index of pointers at open. Tensors of a type millrace
 * cannot compute with (anything but F32, F16, BF16 and Q8_0) fail the open.
 * The host must be little-endian, like the files.
 *
 * A struct gguf_file is immutable after open: every function below is
 * thread-safe on an open file.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Value types of the key/value section. */
enum gguf_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT = 13,
};

/* Tensor (ggml) types millrace reads; gguf_type_name() knows the others. */
enum gguf_tensor_type {
    GGUF_TENSOR_F32 = 0,
    GGUF_TENSOR_F16 = 1,
    GGUF_TENSOR_Q8_0 = 8, /* blocks of 32: fp16 scale, then 32 int8 (34 bytes) */
    GGUF_TENSOR_BF16 = 30,
    GGUF_TENSOR_COUNT = 40, /* ids known by name */
};

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS          4

/* Getter results besides 0. */
#define GGUF_EABSENT -1 /* no such key */
#define GGUF_ETYPE   -2 /* the key holds another type */
#define GGUF_ERANGE  -3 /* an integer of the right kind whose value does not fit */

/* A string borrowed from the mapping: len bytes, not NUL-terminated. */
struct gguf_str {
    const char *ptr;
    uint64_t len;
};

struct gguf_tensor {
    struct gguf_str name;
    uint32_t n_dims;            /* 1..GGUF_MAX_DIMS */
    uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the row (fastest-varying); unused dims are 1 */
    uint32_t type;              /* enum gguf_tensor_type */
    uint64_t offset;            /* from the start of the data section */
    uint64_t nbytes;            /* size of the data */
    const void *data;           /* nbytes in the mapping, aligned as the file says */
};

/*
 * One key/value. Scalars are decoded: unsigned integers and BOOL in v.u,
 * signed integers in v.i, FLOAT32/FLOAT64 in v.f, STRING in v.s. Arrays have
 * type GGUF_TYPE_ARRAY, elem_type and n; numbers and bools in `data` (n raw
 * little-endian elements in the mapping, possibly unaligned: memcpy them),
 * strings in `strs` (n items, owned by the file). Arrays of arrays are
 * refused at open.
 */
struct gguf_kv {
    struct gguf_str key;
    uint32_t type;      /* enum gguf_type */
    uint32_t elem_type; /* arrays: the element type; otherwise equal to type */
    uint64_t n;         /* arrays: the element count; otherwise 1 */
    union {
        uint64_t u;
        int64_t i;
        double f;
        struct gguf_str s;
    } v;
    const void *data;
    const struct gguf_str *strs;
};

struct gguf_file;

/*
 * Map the file at path (read-only, MAP_PRIVATE) and parse it. On success
 * *out is a new file (release with gguf_close) and 0 is returned; every
 * pointer it hands out stays valid until then. On failure returns -1, sets
 * *out to NULL and writes a one-line message to err[errlen] (which may name
 * a key or a tensor, never the path). Thread-safe.
 */
int gguf_open(struct gguf_file **out, const char *path, char *err, size_t errlen);

/*
 * Parse the GGUF image in data[0..len) (borrowed: it must outlive the file
 * and stay unchanged). Otherwise as gguf_open. For tests and the fuzzer.
 */
int gguf_open_mem(struct gguf_file **out, const void *data, size_t len, char *err, size_t errlen);

/* Release f and unmap the file; NULL is a no-op. */
void gguf_close(struct gguf_file *f);

/* The file's version (2 or 3), its alignment and its data section's offset. */
uint32_t gguf_version(const struct gguf_file *f);
uint32_t gguf_alignment(const struct gguf_file *f);
uint64_t gguf_data_offset(const struct gguf_file *f);

/* Key/values in file order (for a dump); i < gguf_n_kv(f). */
size_t gguf_n_kv(const struct gguf_file *f);
const struct gguf_kv *gguf_kv_at(const struct gguf_file *f, size_t i);

/* The key/value named key (NUL-terminated), or NULL. */
const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key);

/*
 * Typed getters: 0 and *out set, or GGUF_EABSENT, GGUF_ETYPE (*out
 * untouched). The integer getters accept a key of any integer type (not
 * BOOL) and return GGUF_ERANGE when its value does not fit *out. gguf_get_f32
 * accepts FLOAT32 and FLOAT64. gguf_get_str's result is borrowed from f.
 */
int gguf_get_u32(const struct gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i32(const struct gguf_file *f, const char *key, int32_t *out);
int gguf_get_u64(const struct gguf_file *f, const char *key, uint64_t *out);
int gguf_get_f32(const struct gguf_file *f, const char *key, float *out);
int gguf_get_bool(const struct gguf_file *f, const char *key, int *out);
int gguf_get_str(const struct gguf_file *f, const char *key, struct gguf_str *out);

/*
 * An array of numbers or bools: its element type, count and raw elements
 * (borrowed, little-endian, possibly unaligned). GGUF_ETYPE when key is not
 * an array or is an array of strings (use gguf_get_str_arr).
 */
int gguf_get_arr(const struct gguf_file *f, const char *key, uint32_t *elem_type, uint64_t *n,
                 const void **data);

/* An array of strings: *items (n of them, borrowed from f). GGUF_ETYPE when
 * key is anything else. */
int gguf_get_str_arr(const struct gguf_file *f, const char *key, const struct gguf_str **items,
                     uint64_t *n);

/* Tensors in file order; i < gguf_n_tensors(f). */
size_t gguf_n_tensors(const struct gguf_file *f);
const struct gguf_tensor *gguf_tensor(const struct gguf_file *f, size_t i);

/* The tensor named name (NUL-terminated), or NULL. */
const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *f, const char *name);

/* 1 when s equals the NUL-terminated c, else 0. */
int gguf_str_eq(struct gguf_str s, const char *c);

/* "F32", "Q8_0", "Q4_K", ... for a tensor type; "unknown" past the table. */
const char *gguf_type_name(uint32_t tensor_type);

/* "UINT32", "STRING", ... for a value type; "unknown" past the table. */
const char *gguf_value_type_name(uint32_t value_type);

/* Bytes of one element of a number or bool value type; 0 for STRING, ARRAY
 * and unknown types. */
size_t gguf_value_size(uint32_t value_type);

/*
 * A tensor type millrace reads: its block (elements per block, bytes per
 * block; 1 and 4 for F32, 32 and 34 for Q8_0) and 0; -1 for any other type.
 */
int gguf_type_block(uint32_t tensor_type, uint32_t *block_elems, uint32_t *block_bytes);
