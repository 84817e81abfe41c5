/*
 * pool: a persistent thread pool for the CPU kernels.
 *
 * Key decision: fork-join on every thread at once, no task queue. A run hands
 * the same function to the caller (thread 0) and the n-1 workers, each of
 * which picks its share from its index; kc_pool_run returns when all have
 * finished. A decode step makes a few hundred such runs of ~10-100 us each,
 * so workers spin on a generation counter for a while (KC_POOL_SPIN_NS)
 * before they sleep on a futex, and the caller spins for the last worker the
 * same way. An empty run on 2 threads (tests/bench_kernels.c, this 2-core
 * EPYC): 0.06-0.15 us back to back with the worker spinning, 21-47 us
 * (mean 39-217) when it has gone to sleep and must be woken by the futex.
 */
#pragma once

struct kc_pool;

/* fn(ctx, thread_index, n_threads) runs once on each of n_threads threads. */
typedef void (*kc_pool_fn)(void *ctx, int thread_index, int n_threads);

/*
 * Start a pool of n_threads threads (the caller of kc_pool_run counts as
 * one; n_threads - 1 workers are started). n_threads = 1 starts nothing and
 * runs everything inline. Returns 0, -EINVAL for n_threads < 1 or > 256,
 * -ENOMEM, or the error of pthread_create; *out is NULL on failure.
 */
int kc_pool_create(struct kc_pool **out, int n_threads);

/* Stop and join the workers, free the pool. NULL is a no-op. */
void kc_pool_destroy(struct kc_pool *p);

/* The pool's thread count; 1 for a NULL pool. */
int kc_pool_threads(const struct kc_pool *p);

/*
 * Run fn(ctx, i, n) for every i in 0..n-1 (i = 0 on the calling thread) and
 * return when all calls have returned; the calls' writes are visible to the
 * caller afterwards. A NULL pool runs fn(ctx, 0, 1). Not reentrant: one
 * caller at a time, and fn must not call kc_pool_run on the same pool.
 */
void kc_pool_run(struct kc_pool *p, kc_pool_fn fn, void *ctx);

/* Split n items into `parts` contiguous ranges whose starts are multiples of
 * `align` (except the end, n); part i is [*lo, *hi). */
void kc_pool_split(int n, int align, int parts, int i, int *lo, int *hi);
