/*
 * cpu: which instruction set the CPU kernels use, chosen once at run time.
 *
 * Key decision: one binary for every x86-64 CPU. The fast paths are compiled
 * with __attribute__((target("avx2,fma,f16c"))) (and for VNNI
 * "...,avx512f,avx512vl,avx512bw,avx512vnni") on the functions themselves
 * (never -mavx2 or -mavx512* for the whole build), and each public kernel
 * branches on kc_cpu_isa() to either them or the plain scalar code, which is
 * also the reference the tests compare against.
 *
 * The values are ordered: each one includes the ones before it, so a kernel
 * with an AVX2 path takes it when kc_cpu_isa() >= KC_ISA_AVX2. Only the
 * Q8_0 matmul has a KC_ISA_AVX512VNNI path of its own, bit for bit equal to
 * its AVX2 path (see matmul.c); everything else runs its AVX2 code there.
 *
 * MILLRACE_CPU in the environment forces a path: "scalar", "avx2" (the
 * AVX2 kernels without VNNI) or "avx512vnni"; a path the CPU lacks falls
 * back to the best one below it, and an unknown value is ignored.
 */
#pragma once

enum kc_isa {
    KC_ISA_SCALAR = 0,     /* portable C, the reference */
    KC_ISA_AVX2 = 1,       /* AVX2 + FMA + F16C */
    KC_ISA_AVX512VNNI = 2, /* AVX2 + AVX512F/VL/BW + AVX512_VNNI (Q8_0 dot products) */
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

/* "scalar", "avx2" or "avx512vnni". */
const char *kc_cpu_isa_name(enum kc_isa isa);
