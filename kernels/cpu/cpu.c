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
    case KC_ISA_AVX512VNNI:
#if defined(__x86_64__) || defined(__i386__)
        /* the AVX-512 bits too are only set where XCR0 has the opmask and
         * zmm state enabled */
        return kc_cpu_supports(KC_ISA_AVX2) && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vnni");
#else
        return 0;
#endif
    }
    return 0;
}

/* the best path the CPU has, up to `want` */
static enum kc_isa kc_cpu_best(enum kc_isa want)
{
    for (int isa = (int)want; isa > KC_ISA_SCALAR; isa--)
        if (kc_cpu_supports((enum kc_isa)isa))
            return (enum kc_isa)isa;
    return KC_ISA_SCALAR;
}

static enum kc_isa kc_cpu_detect(void)
{
    const char *env = getenv("MILLRACE_CPU");
    if (env && strcmp(env, "scalar") == 0)
        return KC_ISA_SCALAR;
    if (env && strcmp(env, "avx2") == 0)
        return kc_cpu_best(KC_ISA_AVX2);
    return kc_cpu_best(KC_ISA_AVX512VNNI);
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
    switch (isa) {
    case KC_ISA_SCALAR:
        return "scalar";
    case KC_ISA_AVX2:
        return "avx2";
    case KC_ISA_AVX512VNNI:
        return "avx512vnni";
    }
    return "?";
}
