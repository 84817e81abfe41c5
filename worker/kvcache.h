/*
 * kvcache: which blocks of the backend's paged KV cache belong to whom.
 *
 * The backend holds one pool of fixed-size blocks (positions 0..block_size-1
 * of some sequence each); this module only does the bookkeeping: a free
 * list, a reference count per block (samples of one job share the blocks of
 * their common prompt), and reservations. A job is admitted only when the
 * blocks it can ever need (prompt plus max_tokens, for every sample) can be
 * reserved, so a running sequence never finds the pool empty and nothing is
 * ever preempted; blocks are then taken from the reservation as positions
 * are written, and what a sample did not use goes back when it finishes.
 * Not thread-safe: the scheduler's thread owns it.
 */
#pragma once

struct kv_pool {
    int n_blocks;
    int block_size;
    int *refs;      /* (n_blocks) holders of each block; 0: free */
    int *free_list; /* (n_blocks) stack of free block ids */
    int n_free;
    int reserved; /* free blocks promised to admitted sequences */
};

/* A sequence's block table: position p lives in blocks[p / block_size]. */
struct kv_table {
    int *blocks;
    int n, cap;
};

/* Returns 0, or -1 (sizes < 1, out of memory). */
int kv_pool_init(struct kv_pool *p, int n_blocks, int block_size);
void kv_pool_fini(struct kv_pool *p);

/* Blocks neither in use nor reserved. */
int kv_available(const struct kv_pool *p);

/* Blocks in use (held by some table). */
int kv_used(const struct kv_pool *p);

/* Promise n free blocks. Returns 0, or -1 when fewer are available. */
int kv_reserve(struct kv_pool *p, int n);

/* Give back n promised blocks that will not be used. */
void kv_unreserve(struct kv_pool *p, int n);

/* Blocks a table needs to hold positions 0..n_positions-1. */
int kv_blocks_for(const struct kv_pool *p, int n_positions);

/*
 * Make t cover positions 0..n_positions-1, taking new blocks out of the
 * reservation (*reserved is decremented for each). Returns 0, or -1 when the
 * reservation is exhausted (a bookkeeping bug: the caller reserved too few).
 */
int kv_table_grow(struct kv_pool *p, struct kv_table *t, int n_positions, int *reserved);

/* Share src's first n blocks with dst (dst must be empty): both hold them. */
int kv_table_share(struct kv_pool *p, struct kv_table *dst, const struct kv_table *src, int n);

/* Drop every block of t (each freed when its last holder lets go). */
void kv_table_release(struct kv_pool *p, struct kv_table *t);
