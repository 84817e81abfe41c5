/*
 * ids: random identifiers (job ids, runner ids, API instance ids).
 *
 * Job ids are 128 random bits from the kernel (getrandom), written as 32
 * lowercase hex characters. The API makes the id before it enqueues, so a
 * retried submit whose reply was lost is idempotent.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define IDS_JOB_ID_LEN 32 /* hex characters, without the NUL */

/* Fill buf with n random bytes from getrandom(2). Returns 0 or -1. Thread-safe. */
int ids_random_bytes(void *buf, size_t n);

/* Write a new 32-hex-character id and a NUL into out (33 bytes). Returns 0 or -1. */
int ids_job_id(char out[IDS_JOB_ID_LEN + 1]);

/* Whether s is a well-formed job id: 1 to 64 characters of [0-9A-Za-z_-]. Ids
 * come back from users in URLs, so everything else is rejected before it can
 * reach a Redis key. */
int ids_job_id_valid(const char *s);

/* A 64-bit random seed (for jitter and the like). Never fails: falls back to
 * the clock and the pid. */
uint64_t ids_seed(void);
