/*
 * kvcache: block bookkeeping for the paged KV cache (see kvcache.h).
 */
#include "worker/kvcache.h"

#include <stdlib.h>
#include <string.h>

int kv_pool_init(struct kv_pool *p, int n_blocks, int block_size)
{
    memset(p, 0, sizeof(*p));
    if (n_blocks < 1 || block_size < 1)
        return -1;
    p->refs = calloc((size_t)n_blocks, sizeof(*p->refs));
    p->free_list = malloc((size_t)n_blocks * sizeof(*p->free_list));
    if (!p->refs || !p->free_list) {
        kv_pool_fini(p);
        return -1;
    }
    p->n_blocks = n_blocks;
    p->block_size = block_size;
    /* hand out low ids first: a fresh pool gives a lone sequence 0, 1, 2 ... */
    for (int i = 0; i < n_blocks; i++)
        p->free_list[i] = n_blocks - 1 - i;
    p->n_free = n_blocks;
    return 0;
}

void kv_pool_fini(struct kv_pool *p)
{
    free(p->refs);
    free(p->free_list);
    memset(p, 0, sizeof(*p));
}

int kv_available(const struct kv_pool *p)
{
    return p->n_free - p->reserved;
}

int kv_used(const struct kv_pool *p)
{
    return p->n_blocks - p->n_free;
}

int kv_reserve(struct kv_pool *p, int n)
{
    if (n < 0 || n > kv_available(p))
        return -1;
    p->reserved += n;
    return 0;
}

void kv_unreserve(struct kv_pool *p, int n)
{
    p->reserved -= n;
    if (p->reserved < 0)
        p->reserved = 0;
}

int kv_blocks_for(const struct kv_pool *p, int n_positions)
{
    return (n_positions + p->block_size - 1) / p->block_size;
}

static int table_fit(struct kv_table *t, int n)
{
    if (n <= t->cap)
        return 0;
    int cap = t->cap ? t->cap : 8;
    while (cap < n)
        cap *= 2;
    int *b = realloc(t->blocks, (size_t)cap * sizeof(*b));
    if (!b)
        return -1;
    t->blocks = b;
    t->cap = cap;
    return 0;
}

int kv_table_grow(struct kv_pool *p, struct kv_table *t, int n_positions, int *reserved)
{
    int need = kv_blocks_for(p, n_positions);
    if (need <= t->n)
        return 0;
    if (table_fit(t, need) < 0)
        return -1;
    while (t->n < need) {
        if (*reserved <= 0 || p->n_free == 0)
            return -1;
        int b = p->free_list[--p->n_free];
        p->refs[b] = 1;
        p->reserved--;
        (*reserved)--;
        t->blocks[t->n++] = b;
    }
    return 0;
}

int kv_table_share(struct kv_pool *p, struct kv_table *dst, const struct kv_table *src, int n)
{
    if (n > src->n || table_fit(dst, n) < 0)
        return -1;
    for (int i = 0; i < n; i++) {
        dst->blocks[i] = src->blocks[i];
        p->refs[src->blocks[i]]++;
    }
    dst->n = n;
    return 0;
}

void kv_table_release(struct kv_pool *p, struct kv_table *t)
{
    for (int i = 0; i < t->n; i++) {
        int b = t->blocks[i];
        if (--p->refs[b] == 0)
            p->free_list[p->n_free++] = b;
    }
    free(t->blocks);
    memset(t, 0, sizeof(*t));
}
