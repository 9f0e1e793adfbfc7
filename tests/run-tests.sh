#!/bin/sh
# Run each cmocka test binary, echo its output, and close with one line
# "N passed, N failed" summed over all of them. Exit 1 if any failed.
# One BLAS thread: deterministic sums, so bit-identity checks are meaningful.
export OPENBLAS_NUM_THREADS=1
passed=0
failed=0
bad_bins=""
for bin in "$@"; do
    out=$(CMOCKA_MESSAGE_OUTPUT=stdout "$bin" 2>&1)
    rc=$?
    printf '%s\n' "$out"
    p=$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -n 1)
    f=$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | tail -n 1)
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0}))
    if [ "$rc" -ne 0 ]; then
        [ -z "$f" ] && failed=$((failed + 1))
        bad_bins="$bad_bins $(basename "$bin")"
    fi
done
[ -n "$bad_bins" ] && echo "failing binaries:$bad_bins"
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ -z "$bad_bins" ]
