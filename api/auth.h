/*
 * auth: API keys for the HTTP API.
 *
 * Keys come from --api-keys (comma-separated) and/or --api-keys-file (one
 * per line, blank lines and # comments ignored). A request is allowed when
 * its `Authorization: Bearer <key>` matches one of them. The comparison
 * takes the same time whatever the key's content, so response timing does
 * not leak how much of a guess was right.
 */
#pragma once

#include <stddef.h>

struct auth;

/* Load keys from a comma list (may be NULL) and a file (may be NULL). *out is
 * NULL when neither gives a key (auth off). Returns 0, or -1 with a message
 * in err (unreadable file, a key with spaces or control characters). */
int auth_create(struct auth **out, const char *list, const char *file, char *err, size_t errlen);
void auth_destroy(struct auth *a);

/* How many keys are loaded. */
size_t auth_count(const struct auth *a);

/* Whether an Authorization header value (may be NULL) carries a valid key.
 * Thread-safe (read-only). */
int auth_check(const struct auth *a, const char *authorization);
