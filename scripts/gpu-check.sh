#!/usr/bin/env bash
# gpu-check: the CUDA backend's checks and benchmark in ONE prepared run on a
# GPU machine (issue #6), writing what it found to $OUT.
#
#   scripts/gpu-check.sh --prepare   on the development machine: fills .gpucheck/
#                                    (the reference models and outputs from
#                                    ../shared, and .deb files of the build's
#                                    libraries in case the GPU machine lacks them)
#   scripts/gpu-check.sh             on the GPU machine, from the repository root,
#                                    with .gpucheck carried along
#
# Steps, most important first (each one's exit status and time recorded; a
# failing step does not stop the others, so one run gives all the information):
#   env        nvidia-smi, nvcc, gcc
#   deps       the libraries the build links (from .gpucheck/debs when missing)
#   build      make -j: build/millrace-worker and build/tests/test_cuda (nvcc)
#   test_cuda  every CUDA test: each kernel vs kernels/cpu, teacher-forced
#              CPU-vs-CUDA logits on make-model models (max |diff| printed),
#              greedy ids of synth-tiny-f32 vs the reference, the scheduler on
#              CUDA vs CPU, graphs vs eager, errors as codes
#   bench      bench --synthetic mistral-7b --device cuda (FP16; then graphs off,
#              our FP16 GEMV, Q8_0 weights)
#   cli        `generate` on the reference models, --device cpu vs cuda, and
#              against the reference's greedy ids
#   memcheck   compute-sanitizer on the kernel tests and a full forward + sample
# Output in $OUT (at most 8 files): summary.json, gpu-check.log (every step's
# output), test_cuda.log, bench.jsonl. The last lines printed are a summary.
# Whole run: about 5 minutes on an H100; it stops itself at 7 (GPU_CHECK_SECONDS,
# default 420): each step and each command in it has a time limit, cut to
# what is left, and the steps run in order of importance.
set -u

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 1
CHECK=$REPO/.gpucheck

if [ "${1:-}" = "--prepare" ]; then
    # development machine: what the GPU machine cannot fetch
    set -e
    mkdir -p "$CHECK/shared/models" "$CHECK/shared/oracle" "$CHECK/debs"
    for m in synth-tiny-f32 synth-tiny-f16 synth-tiny-q8_0; do
        cp ../shared/models/$m.gguf "$CHECK/shared/models/"
        cp ../shared/oracle/$m.json ../shared/oracle/$m-long.json "$CHECK/shared/oracle/"
    done
    # hiredis, microhttpd, jansson, cmocka and curl with curl's own needs (not
    # libc): the run uses each only where the GPU machine lacks it
    (cd "$CHECK/debs" && rm -f ./*.deb && apt-get download \
        libhiredis0.14 libhiredis-dev libmicrohttpd12 libmicrohttpd-dev libjansson4 \
        libjansson-dev libcmocka0 libcmocka-dev libcurl4 libcurl4-openssl-dev libbrotli1 \
        libcom-err2 libdb5.3 libffi8 libgmp10 libgnutls30 libgssapi-krb5-2 libhogweed6 \
        libidn2-0 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 libldap-2.5-0 \
        libnettle8 libnghttp2-14 libp11-kit0 libpsl5 librtmp1 libsasl2-2 \
        libsasl2-modules-db libssh2-1 libssl3 libtasn1-6 libunistring2 libzstd1 zlib1g)
    du -sh "$CHECK"
    echo "now, with the device tool: run with carry [\".gpucheck\"] and command"
    echo "  bash scripts/gpu-check.sh"
    exit 0
fi

OUT=${OUT:-$REPO/build/gpu-check}
WORK=/tmp/mrcheck
mkdir -p "$OUT" "$WORK/logs"
LOG=$OUT/gpu-check.log
STEPS=$WORK/steps.tsv
: > "$LOG"
: > "$STEPS"
: > "$OUT/bench.jsonl"
T0=$(date +%s)
DEADLINE=$((T0 + ${GPU_CHECK_SECONDS:-420})) # the whole run, whatever happens
NPROC=$(nproc 2>/dev/null || echo 8)
STEP_END=$DEADLINE

# tmo SECONDS COMMAND...: the command under a time limit, cut to what the
# current step has left
tmo() {
    local s=$1 left=$((STEP_END - $(date +%s)))
    shift
    [ "$left" -lt "$s" ] && s=$left
    [ "$s" -lt 1 ] && { echo "(no time left for: $*)"; return 124; }
    timeout --kill-after=5 "$s" "$@"
}

# step NAME LIMIT_S FUNCTION: run it (in this shell, so what it exports
# stays), keep its output, record its exit status and time
step() {
    local name=$1 limit=$2 t0 rc
    shift 2
    t0=$(date +%s)
    STEP_END=$((t0 + limit))
    [ "$STEP_END" -gt "$DEADLINE" ] && STEP_END=$DEADLINE
    echo "== $name (at most $((STEP_END - t0)) s)" | tee -a "$LOG"
    if [ $((STEP_END - t0)) -lt 5 ]; then
        echo "   skipped: the run's time is up" | tee -a "$LOG"
        printf '%s\t%d\t%d\n' "$name" 125 0 >> "$STEPS"
        return 125
    fi
    "$@" > "$WORK/logs/$name.log" 2>&1
    rc=$?
    cat "$WORK/logs/$name.log" >> "$LOG"
    printf '%s\t%d\t%d\n' "$name" "$rc" "$(($(date +%s) - t0))" >> "$STEPS"
    echo "   -> exit $rc in $(($(date +%s) - t0)) s" | tee -a "$LOG"
    return $rc
}

env_info() {
    nvidia-smi || true
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv || true
    command -v nvcc && nvcc --version
    ls -d /usr/local/cuda*/bin/nvcc 2>/dev/null
    gcc --version | head -1
    make --version | head -1
    uname -a
    echo "nproc $NPROC"
}

# The build's libraries: the machine's own where it has them, else the
# carried .deb files unpacked under $WORK/deps (never over /).
MAKE_ARGS=()
deps() {
    cat > "$WORK/probe.c" <<'EOF'
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <curl/curl.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <microhttpd.h>
int main(void) { return json_object() == NULL && curl_version() == NULL; }
EOF
    # to try these paths: GPU_CHECK_DEPS=unpack unpacks the carried ones even
    # so, =carried also uses them where the machine has its own
    if [ -z "${GPU_CHECK_DEPS:-}" ] &&
        cc $(pkg-config --cflags hiredis libmicrohttpd jansson libcurl 2>/dev/null) \
            "$WORK/probe.c" -o "$WORK/probe" -lhiredis -lmicrohttpd -ljansson -lcmocka -lcurl; then
        echo "the machine has every library the build needs"
        # the Makefile asks pkg-config for the flags: without it (or the .pc
        # files) it would link with none of them
        pkg-config --exists hiredis libmicrohttpd jansson libcurl 2> /dev/null ||
            MAKE_ARGS=(PKG_CFLAGS= PKG_LIBS="-lhiredis -lmicrohttpd -ljansson -lcurl")
        return 0
    fi
    if ! ls "$CHECK"/debs/*.deb > /dev/null 2>&1; then
        echo "libraries missing and no .gpucheck/debs carried (scripts/gpu-check.sh --prepare)"
        return 1
    fi
    local D=$WORK/deps L=$WORK/deps/usr/lib/x86_64-linux-gnu f
    rm -rf "$D"
    for f in "$CHECK"/debs/*.deb; do dpkg -x "$f" "$D" || return 1; done
    # keep a carried library only where the machine has no library of that soname
    for f in "$L"/lib*.so.*; do
        [ -L "$f" ] && continue
        local so
        so=$(objdump -p "$f" 2>/dev/null | awk '/SONAME/ {print $2}')
        local sys
        sys=$(ldconfig -p | awk -v s="$so" '$1 == s && /x86-64/ {print $NF; exit}')
        if [ -n "$so" ] && [ -n "$sys" ] && [ "${GPU_CHECK_DEPS:-}" != carried ]; then
            local dev
            for dev in "$L"/*.so; do
                if [ "$(readlink "$dev")" = "$(basename "$f")" ] ||
                    [ "$(readlink "$dev")" = "$so" ]; then
                    ln -sf "$sys" "$dev"
                fi
            done
            rm -f "$f" "$L/$so"
            echo "uses the machine's $sys"
        else
            echo "uses the carried $(basename "$f")"
        fi
    done
    export CPATH="$D/usr/include:$D/usr/include/x86_64-linux-gnu${CPATH:+:$CPATH}"
    export LIBRARY_PATH="$L${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export LD_LIBRARY_PATH="$L${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    MAKE_ARGS=(PKG_CFLAGS="-I$D/usr/include/hiredis"
        PKG_LIBS="-lhiredis -lmicrohttpd -ljansson -lcurl")
    cc -I"$D/usr/include" -I"$D/usr/include/x86_64-linux-gnu" "$WORK/probe.c" -o "$WORK/probe" \
        -L"$L" -lhiredis -lmicrohttpd -ljansson -lcmocka -lcurl && "$WORK/probe"; echo "probe $?"
}

build() {
    local targets=(build/millrace-worker build/tests/test_cuda)
    if ! tmo 240 make -j"$NPROC" ${MAKE_ARGS[@]+"${MAKE_ARGS[@]}"} "${targets[@]}"; then
        # another compiler may warn where gcc 12 does not: say so, and go on
        echo "BUILD WITH WARNINGS AS ERRORS FAILED; again without -Werror"
        tmo 240 make -j"$NPROC" ${MAKE_ARGS[@]+"${MAKE_ARGS[@]}"} WARN="-Wall -Wextra -Wshadow" \
            CUDA_WARN="-Xcompiler -Wall,-Wextra" "${targets[@]}" || return
        ldd build/tests/test_cuda | grep -E "cuda|cublas|not found"
        return 2
    fi
    ldd build/tests/test_cuda | grep -E "cuda|cublas|not found"
    return 0
}

# the tests read ../shared: give them the real one, or the carried copy
SHARED=$REPO/../shared
if [ ! -f "$SHARED/oracle/synth-tiny-f32.json" ] && [ -d "$CHECK/shared" ]; then
    SHARED=$CHECK/shared
fi
mkdir -p "$WORK/run"
ln -sfn "$SHARED" "$WORK/shared"

test_cuda() {
    (cd "$WORK/run" && tmo 200 "$REPO/build/tests/test_cuda")
}

memcheck() {
    local cs rc=0 p
    cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null |
        head -1)
    [ -z "$cs" ] && { echo "no compute-sanitizer"; return 0; }
    for p in 'test_sample_after*' 'test_attention*' 'test_sampling*' 'test_every_projection*'; do
        echo "-- memcheck $p"
        (cd "$WORK/run" && tmo 50 "$cs" --tool memcheck --error-exitcode 99 \
            "$REPO/build/tests/test_cuda" "$p") > "$WORK/memcheck.out" 2>&1
        local r=$?
        grep -E "ERROR SUMMARY|Invalid|PASSED|FAILED|SKIPPED  \]|rror" "$WORK/memcheck.out" | head -20
        echo "   exit $r"
        [ $r -eq 124 ] && echo "   timed out: no verdict (not a memory error)"
        [ $r -ne 0 ] && rc=1
    done
    return $rc
}

# generate on the reference models: CPU vs CUDA, and vs the reference's ids
cli() {
    tmo 100 python3 - "$REPO/build/millrace-worker" "$SHARED" <<'EOF'
import json, subprocess, sys
worker, shared = sys.argv[1], sys.argv[2]
bad = 0
for m in ["synth-tiny-f32", "synth-tiny-f16", "synth-tiny-q8_0"]:
    try:
        oracle = json.load(open(f"{shared}/oracle/{m}.json"))
    except OSError:
        print(f"{m}: no reference outputs"); continue
    for i, case in enumerate(oracle["cases"]):
        want = case["generated_ids"]
        got = {}
        for dev in ["cpu", "cuda"]:
            r = subprocess.run([worker, "generate", "--model", f"{shared}/models/{m}.gguf",
                                "--prompt", case["prompt"], "--max-tokens", str(len(want)),
                                "--temperature", "0", "--json", "--device", dev],
                               capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                print(f"{m} case {i} {dev}: exit {r.returncode}: {r.stderr.strip()[-300:]}")
                bad += 1; got[dev] = []; continue
            got[dev] = json.loads(r.stdout)["tokens"]
        agree = lambda a, b: next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        print(f"{m} case {i}: cuda=cpu {agree(got['cuda'], got['cpu'])}/{len(want)} tokens, "
              f"cuda=reference {agree(got['cuda'], want)}/{len(want)}, cpu=reference {agree(got['cpu'], want)}/{len(want)}")
        if m == "synth-tiny-f32" and got["cuda"] != want:
            bad += 1
sys.exit(1 if bad else 0)
EOF
}

bench_one() { # NAME ENV... -- ARGS...
    local name=$1
    shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    echo "-- $name: ${envs[*]} bench $*"
    local line
    line=$(tmo 75 env "${envs[@]}" "$REPO/build/millrace-worker" bench --synthetic mistral-7b \
        --device cuda --json "$@") || { echo "$name failed"; return 1; }
    echo "$line"
    python3 -c 'import json,sys; o=json.loads(sys.argv[2]); o["variant"]=sys.argv[1]; print(json.dumps(o))' \
        "$name" "$line" >> "$OUT/bench.jsonl"
}

bench() {
    local rc=0
    bench_one fp16 MILLRACE_CUDA_GRAPHS=1 -- --decode-tokens 128 || rc=1
    bench_one fp16-no-graphs MILLRACE_CUDA_GRAPHS=0 -- --decode-tokens 128 --seqs 16,64 || rc=1
    bench_one fp16-own-gemv MILLRACE_CUDA_GEMV=own -- --decode-tokens 128 --seqs 16 || rc=1
    bench_one q8_0 MILLRACE_CUDA_GRAPHS=1 -- --weights q8_0 --decode-tokens 128 --seqs 16,64,256 ||
        rc=1
    return $rc
}

# most important first: a run cut short still says the most it can
step env 20 env_info
step deps 60 deps
step build 240 build
step test_cuda 200 test_cuda
cp "$WORK/logs/test_cuda.log" "$OUT/test_cuda.log" 2>/dev/null || : > "$OUT/test_cuda.log"
step bench 160 bench
step cli 60 cli
step memcheck 120 memcheck

TOTAL=$(($(date +%s) - T0))
python3 - "$STEPS" "$OUT" "$TOTAL" <<'EOF' | tee -a "$LOG"
import json, re, sys
steps_f, out, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
steps = []
for line in open(steps_f):
    n, rc, s = line.rstrip("\n").split("\t")
    steps.append({"step": n, "exit": int(rc), "seconds": int(s)})
t = open(f"{out}/test_cuda.log", errors="replace").read() if steps else ""
def count(word):
    m = re.search(r"\[ *%s *\] (\d+) test" % word, t)
    return int(m.group(1)) if m else 0
summary = {
    "total_seconds": total,
    "steps": steps,
    "tests": {"passed": count("PASSED"), "failed": count("FAILED"), "skipped": count("SKIPPED")},
    "failed_tests": re.findall(r"\[  FAILED  \] (test_\w+)", t),
    "teacher_forced": re.findall(r"^(\S+ +teacher-forced.*)$", t, re.M),
    "oracle": re.findall(r"^(synth-tiny.*on the GPU.*)$", t, re.M),
    "kernels": re.findall(r"^((?:embedding|rmsnorm|rope|swiglu|matmul|attention|sampling|penalties|decode steps|sample after).*)$", t, re.M),
    "bench": [json.loads(l) for l in open(f"{out}/bench.jsonl") if l.strip()],
}
try:
    summary["gpu"] = re.search(r"^name, memory.*\n(.*)$", open(f"{out}/gpu-check.log").read(), re.M).group(1)
except Exception:
    summary["gpu"] = None
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
print("\n==== gpu-check summary (%s)" % summary["gpu"])
for s in steps:
    print("  %-10s exit %3d  %4d s" % (s["step"], s["exit"], s["seconds"]))
print("  tests: %(passed)d passed, %(failed)d failed, %(skipped)d skipped" % summary["tests"], summary["failed_tests"])
for l in summary["teacher_forced"] + summary["oracle"]:
    print("  " + l[:150])
for b in summary["bench"]:
    d = b["decode_batch1"]; f = b["ttft_ms"]
    print("  bench %-15s batch-1 %.1f tok/s (%.1f %% of BW), TTFT %.2f ms, " % (b["variant"], d["tokens_per_s"], d["bandwidth_pct"], f["best"])
          + ", ".join("B=%d %.0f tok/s" % (x["sequences"], x["tokens_per_s"]) for x in b["batched"]))
print("  total %d s; files in %s" % (total, out))
EOF
