#!/bin/sh
# Build one libFuzzer target with clang (fuzzer + ASan + UBSan) and run it.
#
#   tests/fuzz/run.sh TARGET SECONDS [libFuzzer options...]
#   tests/fuzz/run.sh --build-only TARGET
#   tests/fuzz/run.sh --replay TARGET FILE...   # run inputs once (no fuzzing)
#   tests/fuzz/run.sh --seeds                   # regenerate tests/fuzz/corpus
#   tests/fuzz/run.sh --coverage TARGET         # line coverage of the working corpus
#
# TARGET is fuzz_step_body, fuzz_state_blob or fuzz_step_extremes. The library and codec
# sources are compiled here, by clang with the sanitizers, into
# $BUILD/fuzz/ (default build/fuzz/), never taken from the gcc archives.
# The committed seeds (tests/fuzz/corpus/TARGET) are copied into a working
# corpus ($BUILD/fuzz/corpus/TARGET) that grows from run to run, and the
# known-bug reproducers in tests/fuzz/crashes/TARGET are replayed first
# (set FUZZ_SKIP_CRASHES=1 to skip them). Exit status: 0 when nothing was
# found, non-zero on a crash, a leak, a timeout or a failed build; the
# reproducer is then in $BUILD/fuzz/artifacts/TARGET/.
#
# Environment: CLANG (default clang), BUILD (default build), FUZZ_JOBS
# (parallel compiles, default: number of CPUs), FUZZ_MAX_LEN (overrides the
# target's -max_len), FUZZ_ALLOC_CAP_MB / FUZZ_STRICT_ALLOC (below),
# FUZZ_SKIP_CRASHES; the targets read FUZZ_VERBOSE and their own switches
# (tests/fuzz/README.md).
set -eu

# Everything runs from one function, so that the shell has parsed the
# whole script before the (long) fuzzing starts: editing run.sh during a
# run cannot derail its end.
main() {
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

CLANG=${CLANG:-clang}
out=${BUILD:-build}/fuzz

if [ "${1:-}" = --seeds ]; then
    # The generator links only libcurv, built without coverage instrumentation.
    mkdir -p "$out" tests/fuzz/corpus/fuzz_step_body tests/fuzz/corpus/fuzz_state_blob
    # shellcheck disable=SC2046
    "$CLANG" -std=c11 -D_POSIX_C_SOURCE=200809L -O1 -g -fsanitize=address,undefined \
        -fno-sanitize-recover=all -Wall -Wextra -Ilib/include -Ilib/src \
        $(pkg-config --cflags openblas lapacke) tests/fuzz/make_seeds.c lib/src/*.c \
        -o "$out/make_seeds" $(pkg-config --libs openblas lapacke) -lm
    OPENBLAS_NUM_THREADS=1 "$out/make_seeds" tests/fuzz/corpus
    echo "run.sh: seeds written to tests/fuzz/corpus/"
    exit 0
fi

mode=fuzz
case "${1:-}" in
--build-only) mode=build; shift ;;
--replay) mode=replay; shift ;;
--coverage) mode=coverage; shift ;;
esac
target=${1:-}
if [ -z "$target" ]; then
    echo "usage: $0 TARGET SECONDS [libFuzzer options] | --build-only TARGET | --replay TARGET FILE..." >&2
    exit 2
fi
shift
secs=
if [ "$mode" = fuzz ]; then
    secs=${1:-}
    case "$secs" in
    '' | *[!0-9]*) echo "run.sh: SECONDS must be a whole number" >&2; exit 2 ;;
    esac
    shift
fi

jobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}

case "$target" in
fuzz_step_body)
    srcs="server/wire/step_decode.c server/wire/codec.c server/wire/json_scan.c server/wire/nonfinite.c server/wire/numtext.c server/http/mem.c server/wire/out.c server/wire/tensor_bytes.c server/http/errors.c $(ls lib/src/*.c)"
    pkgs="openblas lapacke jansson"
    report="server/wire/step_decode.c server/wire/codec.c server/wire/json_scan.c server/wire/nonfinite.c server/wire/numtext.c server/http/mem.c server/wire/out.c server/wire/tensor_bytes.c server/http/errors.c lib/src/layout.c"
    max_len=4096
    ;;
fuzz_step_extremes)
    srcs=$(ls lib/src/*.c)
    pkgs="openblas lapacke"
    report=$srcs
    max_len=512
    ;;
fuzz_state_blob)
    srcs=$(ls lib/src/*.c)
    pkgs="openblas lapacke"
    report=$srcs
    max_len=16384
    ;;
*)
    echo "run.sh: unknown target '$target' (fuzz_step_body, fuzz_state_blob, fuzz_step_extremes)" >&2
    exit 2
    ;;
esac
max_len=${FUZZ_MAX_LEN:-$max_len}

if ! command -v "$CLANG" >/dev/null 2>&1; then
    echo "run.sh: $CLANG not found (scripts/install-deps installs clang and libclang-rt-14-dev)" >&2
    exit 2
fi
if ! command -v pkg-config >/dev/null 2>&1; then
    echo "run.sh: pkg-config not found (make deps)" >&2
    exit 2
fi

SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
# The same language mode and numeric flags as the Makefile; -O1 keeps the
# sanitizers fast and the stacks readable. No -Werror on the project's own
# sources: clang may warn where gcc does not, which is not a fuzzing failure.
CFLAGS="-std=c11 -D_POSIX_C_SOURCE=200809L -O1 -g -fno-math-errno $SAN -fsanitize=fuzzer-no-link \
-Ilib/include -Ilib/src -Iserver $(pkg-config --cflags $pkgs)"
TWARN="-Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wvla"
LIBS="$(pkg-config --libs $pkgs) -lm -lpthread"

mkdir -p "$out/obj" "$out/bin"

if [ "$mode" = coverage ]; then
    # Source-based coverage of what the working corpus (and the seeds)
    # reach: one plain build with the standalone driver, no sanitizers.
    cov="$out/cov/$target"
    rm -rf "$cov"
    mkdir -p "$cov"
    # The driver reads file names on stdin and runs them in turn; an input
    # that aborts (a known bug) jumps back to the loop, so that it does not
    # lose the coverage of the others.
    cat >"$cov/driver.c" <<'EOF'
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerInitialize(int *argc, char ***argv);
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    return 0;
}
static sigjmp_buf back;
static void on_abort(int sig)
{
    (void)sig;
    siglongjmp(back, 1);
}
int main(int argc, char **argv)
{
    static char name[4096];
    LLVMFuzzerInitialize(&argc, &argv);
    signal(SIGABRT, on_abort);
    while (fgets(name, sizeof name, stdin)) {
        name[strcspn(name, "\n")] = 0;
        if (sigsetjmp(back, 1))
            continue;
        FILE *f = fopen(name, "rb");
        if (!f)
            continue;
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        unsigned char *b = malloc(n > 0 ? (size_t)n : 1);
        if (b && fread(b, 1, (size_t)n, f) == (size_t)n)
            LLVMFuzzerTestOneInput(b, (size_t)n);
        free(b);
        fclose(f);
    }
    return 0;
}
EOF
    # shellcheck disable=SC2086
    "$CLANG" -std=c11 -D_DEFAULT_SOURCE -O0 -g -fprofile-instr-generate -fcoverage-mapping \
        -Ilib/include -Ilib/src -Iserver $(pkg-config --cflags $pkgs) "$cov/driver.c" $srcs \
        "tests/fuzz/$target.c" -o "$cov/bin" $LIBS
    find "tests/fuzz/corpus/$target" "$out/corpus/$target" -type f 2>/dev/null >"$cov/files"
    OPENBLAS_NUM_THREADS=1 LLVM_PROFILE_FILE="$cov/cov.profraw" "$cov/bin" <"$cov/files" \
        >/dev/null 2>&1 || true
    llvm-profdata merge -sparse "$cov"/*.profraw -o "$cov/all.profdata"
    # shellcheck disable=SC2086
    llvm-cov report "$cov/bin" -instr-profile="$cov/all.profdata" $report
    echo "run.sh: $(wc -l <"$cov/files") inputs; llvm-cov show $cov/bin -instr-profile=$cov/all.profdata FILE for lines"
    exit 0
fi

# Does the toolchain link -fsanitize=fuzzer at all? (clang without
# libclang-rt-*-dev compiles but cannot link.)
probe="$out/obj/probe"
if [ ! -x "$probe" ]; then
    printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
        'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);' \
        'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }' \
        >"$out/obj/probe.c"
    if ! "$CLANG" -fsanitize=fuzzer,address,undefined "$out/obj/probe.c" -o "$probe" 2>"$out/obj/probe.log"; then
        cat "$out/obj/probe.log" >&2
        echo "run.sh: $CLANG cannot link -fsanitize=fuzzer (install libclang-rt-14-dev)" >&2
        exit 2
    fi
fi

# An object is stale when it is missing or older than a file its .d lists.
stale() {
    obj=$1 dep=$2
    [ -f "$obj" ] && [ -f "$dep" ] || return 0
    for f in $(sed -e 's/\\$//' -e 's/^[^:]*://' "$dep"); do
        case "$f" in *:) continue ;; esac
        [ -e "$f" ] || return 0
        [ "$f" -nt "$obj" ] && return 0
    done
    return 1
}

todo=""
objs=""
for src in $srcs tests/fuzz/$target.c; do
    obj="$out/obj/$(echo "$src" | tr / _ | sed 's/\.c$/.o/')"
    objs="$objs $obj"
    if stale "$obj" "${obj%.o}.d"; then
        todo="$todo $src"
    fi
done

if [ -n "$todo" ]; then
    echo "run.sh: compiling$(echo "$todo" | wc -w | sed 's/^/ /') files for $target with $CLANG"
    # shellcheck disable=SC2086
    printf '%s\n' $todo | xargs -P "$jobs" -I{} sh -c '
        src={}; obj="$0/obj/$(echo "$src" | tr / _ | sed "s/\.c\$/.o/")"
        case "$src" in tests/fuzz/*) w="$2" ;; *) w="" ;; esac
        exec $1 $3 $w -MMD -MF "${obj%.o}.d" -c "$src" -o "$obj"
    ' "$out" "$CLANG" "$TWARN" "$CFLAGS" || {
        echo "run.sh: compile failed" >&2
        exit 1
    }
fi

bin="$out/bin/$target"
relink=0
[ -x "$bin" ] || relink=1
for obj in $objs; do
    if [ "$obj" -nt "$bin" ]; then relink=1; fi
done
if [ "$relink" = 1 ]; then
    # shellcheck disable=SC2086
    "$CLANG" -fsanitize=fuzzer $SAN $objs -o "$bin" $LIBS
fi
[ "$mode" = build ] && { echo "run.sh: built $bin"; exit 0; }

# One BLAS thread: deterministic, and no thread pool for LeakSanitizer.
export OPENBLAS_NUM_THREADS=1
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# Allocations over FUZZ_ALLOC_CAP_MB (default 64) fail with NULL, as a
# production calloc would, so the libraries' out-of-memory paths are fuzzed
# instead of every oversized request stopping the run. FUZZ_STRICT_ALLOC=1
# instead reports any allocation over libFuzzer's -malloc_limit_mb (2048):
# that finds inputs that make a small blob cost a large allocation.
if [ -n "${FUZZ_STRICT_ALLOC:-}" ]; then
    asan_default="detect_leaks=1"
else
    FUZZ_ALLOC_CAP_MB=${FUZZ_ALLOC_CAP_MB:-64}
    export FUZZ_ALLOC_CAP_MB # fuzz_state_blob checks what a small blob may cost
    asan_default="detect_leaks=1:allocator_may_return_null=1:max_allocation_size_mb=$FUZZ_ALLOC_CAP_MB"
fi
export ASAN_OPTIONS="${ASAN_OPTIONS:-$asan_default}"

if [ "$mode" = replay ]; then
    exec "$bin" "$@"
fi

arts="$out/artifacts/$target"
work="$out/corpus/$target"
mkdir -p "$arts" "$work"
if [ -d "tests/fuzz/corpus/$target" ]; then
    cp -p "tests/fuzz/corpus/$target"/* "$work"/ 2>/dev/null || true
fi

crashes="tests/fuzz/crashes/$target"
if [ -z "${FUZZ_SKIP_CRASHES:-}" ] && [ -d "$crashes" ] && [ -n "$(ls -A "$crashes")" ]; then
    echo "run.sh: replaying $(ls "$crashes" | wc -l) known reproducers from $crashes"
    "$bin" "$crashes"/* || {
        echo "run.sh: a reproducer in $crashes still fails (FUZZ_SKIP_CRASHES=1 skips them)" >&2
        exit 1
    }
fi

dict=""
[ -f "tests/fuzz/$target.dict" ] && dict="-dict=tests/fuzz/$target.dict"

echo "run.sh: fuzzing $target for ${secs}s (corpus $work, max_len $max_len)"
# The run's status goes through a file: the output is filtered (ASan warns
# on every allocation it refuses under FUZZ_ALLOC_CAP_MB).
rcfile="$out/rc.$target.$$"
echo 1 >"$rcfile"
{
    rc=0
    # shellcheck disable=SC2086
    "$bin" -max_total_time="$secs" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$arts/" $dict "$@" "$work" 2>&1 || rc=$?
    echo "$rc" >"$rcfile"
} | { grep -v 'WARNING: AddressSanitizer failed to allocate' || true; }
rc=$(cat "$rcfile")
rm -f "$rcfile"
if [ "$rc" -ne 0 ]; then
    echo "run.sh: $target FAILED (exit $rc); reproducer(s) in $arts/:" >&2
    ls -t "$arts" | head -5 | sed "s|^|  $arts/|" >&2
    exit "$rc"
fi
echo "run.sh: $target: no crash in ${secs}s"
}

main "$@"
