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
for t in "$@"; do
    [ "$t" = "--" ] && continue
    echo "== $t"
    start=$(date +%s)
    if "$t"; then
        passed=$((passed + 1))
    else
        failed+=("$t")
    fi
    echo "   ($(( $(date +%s) - start )) s)"
done
echo
echo "test programs passed: $passed, failed: ${#failed[@]}"
for f in "${failed[@]}"; do echo "  FAILED: $f"; done
[ ${#failed[@]} -eq 0 ]
