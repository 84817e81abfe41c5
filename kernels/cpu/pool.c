/*
 * pool: persistent fork-join thread pool (see pool.h).
 *
 * Protocol. The caller writes fn/ctx, sets `remaining` to n-1 and bumps
 * `gen`; a worker that sees a new gen runs its share and decrements
 * `remaining`. Both waits spin first and then sleep on a Linux futex on the
 * same word (gen for workers, remaining for the caller); the sleeping side
 * announces itself in a counter before it sleeps and the waking side reads
 * that counter after its own write (both seq_cst), so a wake-up is never
 * lost and no futex syscall is made while everyone is spinning.
 *
 * When there are more threads than CPUs (tests run 4 threads on 2 cores),
 * spinning only steals time from the thread being waited for, so the pool
 * then sleeps at once.
 */
#include "kernels/cpu/pool.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* How long a waiter spins before it sleeps. Between two kernels of a decode
 * step the gap is a few microseconds; between steps it can be milliseconds. */
#define KC_POOL_SPIN_NS 200000

struct kc_worker {
    struct kc_pool *pool;
    int index;
    pthread_t thread;
};

struct kc_pool {
    int n_threads;
    int spin; /* 0 when oversubscribed: sleep at once */
    kc_pool_fn fn;
    void *ctx;
    int stop;
    /* each on its own cache line: workers poll gen while they decrement
     * remaining */
    _Alignas(64) atomic_int gen;
    atomic_int n_sleeping; /* workers asleep (or about to be) on gen */
    _Alignas(64) atomic_int remaining;
    atomic_int caller_sleeping;
    struct kc_worker *workers; /* n_threads - 1 */
    int n_started;
};

static void kc_futex_wait(atomic_int *addr, int val)
{
    syscall(SYS_futex, (int *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void kc_futex_wake(atomic_int *addr, int n)
{
    syscall(SYS_futex, (int *)addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static inline void kc_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static uint64_t kc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Spin until *addr != val or the spin time is over; returns the last value
 * read (== val when it gave up). */
static int kc_spin_while_eq(const atomic_int *addr, int val, int spin)
{
    int v = atomic_load_explicit(addr, memory_order_acquire);
    if (v != val || !spin)
        return v;
    uint64_t deadline = kc_now_ns() + KC_POOL_SPIN_NS;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            kc_cpu_relax();
            v = atomic_load_explicit(addr, memory_order_acquire);
            if (v != val)
                return v;
        }
        if (kc_now_ns() > deadline)
            return v;
    }
}

static void *kc_worker_main(void *arg)
{
    struct kc_worker *w = arg;
    struct kc_pool *p = w->pool;
    int seen = 0;
    for (;;) {
        int g = kc_spin_while_eq(&p->gen, seen, p->spin);
        if (g == seen) {
            atomic_fetch_add(&p->n_sleeping, 1);
            while ((g = atomic_load(&p->gen)) == seen)
                kc_futex_wait(&p->gen, seen);
            atomic_fetch_sub(&p->n_sleeping, 1);
        }
        seen = g;
        if (p->stop)
            break;
        p->fn(p->ctx, w->index, p->n_threads);
        if (atomic_fetch_sub(&p->remaining, 1) == 1 && atomic_load(&p->caller_sleeping))
            kc_futex_wake(&p->remaining, 1);
    }
    return NULL;
}

/* Publish fn/ctx/stop to every worker and wake the sleeping ones. */
static void kc_pool_kick(struct kc_pool *p)
{
    atomic_store(&p->remaining, p->n_threads - 1);
    atomic_fetch_add(&p->gen, 1);
    if (atomic_load(&p->n_sleeping) > 0)
        kc_futex_wake(&p->gen, INT_MAX);
}

static void kc_pool_wait(struct kc_pool *p)
{
    if (p->spin) {
        uint64_t deadline = kc_now_ns() + KC_POOL_SPIN_NS;
        do {
            for (int i = 0; i < 64; i++) {
                if (atomic_load_explicit(&p->remaining, memory_order_acquire) == 0)
                    return;
                kc_cpu_relax();
            }
        } while (kc_now_ns() < deadline);
    }
    int r;
    atomic_store(&p->caller_sleeping, 1);
    while ((r = atomic_load(&p->remaining)) != 0)
        kc_futex_wait(&p->remaining, r);
    atomic_store(&p->caller_sleeping, 0);
}

static int kc_online_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int kc_pool_create(struct kc_pool **out, int n_threads)
{
    *out = NULL;
    if (n_threads < 1 || n_threads > 256)
        return -EINVAL;
    struct kc_pool *p = aligned_alloc(64, sizeof *p);
    if (!p)
        return -ENOMEM;
    *p = (struct kc_pool){.n_threads = n_threads};
    p->spin = n_threads <= kc_online_cpus();
    int rc = 0;
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->workers) {
            rc = -ENOMEM;
            goto fail;
        }
        for (int i = 0; i < n_threads - 1; i++) {
            p->workers[i] = (struct kc_worker){.pool = p, .index = i + 1};
            rc = -pthread_create(&p->workers[i].thread, NULL, kc_worker_main, &p->workers[i]);
            if (rc)
                goto fail;
            p->n_started++;
        }
    }
    *out = p;
    return 0;
fail:
    kc_pool_destroy(p);
    return rc;
}

void kc_pool_destroy(struct kc_pool *p)
{
    if (!p)
        return;
    if (p->n_started > 0) {
        p->stop = 1;
        /* only the started workers decrement; nobody waits for them here */
        kc_pool_kick(p);
        for (int i = 0; i < p->n_started; i++)
            pthread_join(p->workers[i].thread, NULL);
    }
    free(p->workers);
    free(p);
}

int kc_pool_threads(const struct kc_pool *p)
{
    return p ? p->n_threads : 1;
}

void kc_pool_run(struct kc_pool *p, kc_pool_fn fn, void *ctx)
{
    if (!p || p->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    kc_pool_kick(p);
    fn(ctx, 0, p->n_threads);
    kc_pool_wait(p);
}

void kc_pool_split(int n, int align, int parts, int i, int *lo, int *hi)
{
    int units = (n + align - 1) / align;
    int base = units / parts, extra = units % parts;
    int u0 = i * base + (i < extra ? i : extra);
    int u1 = u0 + base + (i < extra);
    *lo = u0 * align < n ? u0 * align : n;
    *hi = u1 * align < n ? u1 * align : n;
}
