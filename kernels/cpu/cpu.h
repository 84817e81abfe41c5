/*
 * cpu: which instruction set the CPU kernels use, chosen once at run time.
 *
 * Key decision: one binary for every x86-64 CPU. The fast paths are compiled
 * with __attribute__((target("avx2,fma,f16c"))) on the functions themselves
 * (never -mavx2 for the whole build), and each public kernel branches on
 * kc_cpu_isa() to either them or the plain scalar code, which is also the
 * reference the tests compare against. MILLRACE_CPU=scalar in the
 * environment forces the scalar path (MILLRACE_CPU=avx2 asks for AVX2 and
 * falls back to scalar where the CPU lacks it).
 */
#pragma once

enum kc_isa {
    KC_ISA_SCALAR = 0, /* portable C, the reference */
    KC_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C */
};

/*
 * The instruction set in use: the best the CPU supports, or what
 * MILLRACE_CPU asks for, decided on the first call. Thread-safe.
 */
enum kc_isa kc_cpu_isa(void);

/* Whether the CPU (and OS) support `isa`. Thread-safe. */
int kc_cpu_supports(enum kc_isa isa);

/*
 * Force `isa` (tests and benchmarks compare paths with it). Returns 0, or -1
 * when the CPU does not support it (nothing changes). Call it while no kernel
 * runs: kernels already running may see either value.
 */
int kc_cpu_set_isa(enum kc_isa isa);

/* "scalar" or "avx2". */
const char *kc_cpu_isa_name(enum kc_isa isa);
