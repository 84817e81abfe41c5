#!/usr/bin/env bash
# Run test programs and print a summary; exit 1 if any failed.
# Usage: run-tests.sh TEST... [-- ASAN_TEST...]
# Programs after "--" are the same tests built with AddressSanitizer and
# UndefinedBehaviorSanitizer; they run with leak checking on.
set -u
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=()
passed=0
skipped=()
for t in "$@"; do
    [ "$t" = "--" ] && continue
    echo "== $t"
    start=$(date +%s)
    log=$(mktemp)
    if "$t" 2>&1 | tee "$log"; [ "${PIPESTATUS[0]}" -eq 0 ]; then
        # A program whose every test skipped (cmocka exits 0) did not pass.
        if grep -q '^\[  SKIPPED \]' "$log" && ! grep -q '^\[       OK \]' "$log"; then
            skipped+=("$t")
        else
            passed=$((passed + 1))
        fi
    else
        failed+=("$t")
    fi
    rm -f "$log"
    echo "   ($(( $(date +%s) - start )) s)"
done
echo
echo "test programs passed: $passed, skipped: ${#skipped[@]}, failed: ${#failed[@]}"
for s in "${skipped[@]}"; do echo "  SKIPPED (not counted as passed): $s"; done
for f in "${failed[@]}"; do echo "  FAILED: $f"; done
[ ${#failed[@]} -eq 0 ]
