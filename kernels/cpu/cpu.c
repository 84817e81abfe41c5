/*
 * cpu: run-time choice of the kernels' instruction set (see cpu.h).
 *
 * The choice is one relaxed atomic int: written on first use (or by
 * kc_cpu_set_isa before threads start), read by every kernel call; a
 * relaxed load costs nothing next to a kernel.
 */
#include "kernels/cpu/cpu.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_int kc_isa_chosen = -1; /* -1: not decided yet */

int kc_cpu_supports(enum kc_isa isa)
{
    switch (isa) {
    case KC_ISA_SCALAR:
        return 1;
    case KC_ISA_AVX2:
#if defined(__x86_64__) || defined(__i386__)
        /* libgcc checks XCR0 too, so this is false where the OS does not save
         * the AVX registers */
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
#else
        return 0;
#endif
    }
    return 0;
}

static enum kc_isa kc_cpu_detect(void)
{
    const char *env = getenv("MILLRACE_CPU");
    if (env && strcmp(env, "scalar") == 0)
        return KC_ISA_SCALAR;
    return kc_cpu_supports(KC_ISA_AVX2) ? KC_ISA_AVX2 : KC_ISA_SCALAR;
}

enum kc_isa kc_cpu_isa(void)
{
    int isa = atomic_load_explicit(&kc_isa_chosen, memory_order_relaxed);
    if (isa < 0) {
        isa = (int)kc_cpu_detect(); /* the same answer on every thread */
        atomic_store_explicit(&kc_isa_chosen, isa, memory_order_relaxed);
    }
    return (enum kc_isa)isa;
}

int kc_cpu_set_isa(enum kc_isa isa)
{
    if (!kc_cpu_supports(isa))
        return -1;
    atomic_store_explicit(&kc_isa_chosen, (int)isa, memory_order_relaxed);
    return 0;
}

const char *kc_cpu_isa_name(enum kc_isa isa)
{
    return isa == KC_ISA_AVX2 ? "avx2" : "scalar";
}
