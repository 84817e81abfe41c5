/*
 * gguf_write: writing GGUF v3 files (model files for `millrace-worker
 * make-model`, and the files of the tests).
 *
 * Key decision: tensor data is never held by the writer. A tensor is either
 * a borrowed pointer, read when the file is written, or a fill function
 * called piecewise while writing, so that a 14 GB model streams to disk
 * through one 1 MiB buffer. Key/values are serialized as they are added.
 * A file is written to a temporary name beside its path and renamed into
 * place, so that a reader never sees half a file.
 *
 * Errors are sticky, in the manner of hiredis: the first failing call
 * leaves a message in the writer (gguf_writer_error), and every later call,
 * gguf_writer_write included, fails with it; a caller may add everything
 * and check once. A writer is not thread-safe.
 */
#pragma once

#include <stdint.h>
#include <stdio.h>

struct gguf_writer;

/*
 * Produce bytes [offset, offset + len) of a tensor's data into buf. offset
 * and len are multiples of the tensor type's block size in bytes (34 for
 * Q8_0), and the calls come in order from offset 0. Return 0, or nonzero to
 * fail the write.
 */
typedef int (*gguf_fill_fn)(void *ctx, void *buf, uint64_t offset, size_t len);

/*
 * A new, empty writer (release with gguf_writer_destroy). alignment: of the
 * data section and of each tensor, a power of two; 0 means
 * GGUF_DEFAULT_ALIGNMENT (32). Any other alignment is written as the
 * general.alignment key. Returns 0, or -1 (out of memory or a bad
 * alignment) with *out NULL.
 */
int gguf_writer_create(struct gguf_writer **out, uint32_t alignment);

/* Release w; NULL is a no-op. Borrowed tensor data is not touched. */
void gguf_writer_destroy(struct gguf_writer *w);

/* The first error, or "" when there was none. Borrowed from w. */
const char *gguf_writer_error(const struct gguf_writer *w);

/*
 * Key/values, written in the order added. key (NUL-terminated) and the
 * values are copied. Returns 0, or -1 (a duplicate key, general.alignment,
 * which the alignment argument of gguf_writer_create sets, a bad type, out
 * of memory, or an earlier error).
 */
int gguf_writer_add_u32(struct gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_add_i32(struct gguf_writer *w, const char *key, int32_t v);
int gguf_writer_add_f32(struct gguf_writer *w, const char *key, float v);
int gguf_writer_add_bool(struct gguf_writer *w, const char *key, int v);
int gguf_writer_add_str(struct gguf_writer *w, const char *key, const char *v);

/* A scalar of any number or bool type (enum gguf_type): value points to one
 * element in host (little-endian) order. */
int gguf_writer_add_scalar(struct gguf_writer *w, const char *key, uint32_t type,
                           const void *value);

/* An array of n numbers or bools of elem_type, data in host order. */
int gguf_writer_add_arr(struct gguf_writer *w, const char *key, uint32_t elem_type,
                        const void *data, uint64_t n);

/* An array of n NUL-terminated strings. */
int gguf_writer_add_str_arr(struct gguf_writer *w, const char *key, const char *const *items,
                            uint64_t n);

/*
 * A tensor of a type millrace reads (F32, F16, BF16, Q8_0) with n_dims (1..4)
 * dimensions ne (ne[0] the row, a multiple of the type's block). name is
 * copied; data (gguf_writer_add_tensor: the tensor's bytes, borrowed until
 * the file is written) or fill and ctx (gguf_writer_add_tensor_fn) produce
 * the bytes. Tensors are laid out in the order added. Returns 0, or -1 (a
 * duplicate name, a bad shape or type, out of memory, an earlier error).
 */
int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                           const uint64_t *ne, const void *data);
int gguf_writer_add_tensor_fn(struct gguf_writer *w, const char *name, uint32_t type,
                              uint32_t n_dims, const uint64_t *ne, gguf_fill_fn fill, void *ctx);

/*
 * Write the file to path: to "path.tmp.XXXXXX" first (mode 0644), synced,
 * then renamed over path; on failure the temporary file is removed and path
 * is untouched. May be called more than once. Returns 0 or -1.
 */
int gguf_writer_write(struct gguf_writer *w, const char *path);

/* Write the file to fp (not closed or flushed). Returns 0 or -1. */
int gguf_writer_write_stream(struct gguf_writer *w, FILE *fp);
