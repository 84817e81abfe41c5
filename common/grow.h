/*
 * grow: the one growable-array helper (amortised doubling, overflow-checked),
 * for the arrays that grow with the load: the API's per-pass work lists, the
 * GGUF writer's tables, the chat template's output.
 */
#pragma once

#include <stddef.h>

/*
 * Make *p (an array of *cap elements of elem bytes, or NULL with *cap 0)
 * hold at least need elements: realloc to the next doubling of *cap (at
 * least 16). Returns 0 (then *p and *cap may have changed), or -1 when need
 * elements do not fit in a size_t or realloc fails (*p and *cap unchanged,
 * the old array still valid).
 */
int grow_array(void **p, size_t *cap, size_t need, size_t elem);
