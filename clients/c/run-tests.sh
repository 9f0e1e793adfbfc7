#!/bin/sh
# Run the C client's tests, curvctl's and the example against live curvd
# daemons on free loopback ports with fresh databases (the second one wants
# a bearer token). Usage: run-tests.sh CURVD BUILD
set -eu
curvd=$(realpath "$1")
build=$(realpath "$2")
work=$(mktemp -d)
pids=""
trap 'for p in $pids; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# start_daemon NAME ARGS...: start curvd; its URL into $url.
start_daemon() {
    name=$1
    shift
    "$curvd" --port 0 --db "$work/$name.db" "$@" 2> "$work/$name.log" &
    pids="$pids $!"
    port=""
    for _ in $(seq 100); do
        port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/$name.log")
        [ -n "$port" ] && break
        sleep 0.05
    done
    [ -n "$port" ] || { cat "$work/$name.log"; echo "run-tests: $name did not start"; exit 1; }
    url="http://127.0.0.1:$port"
}

printf '# token tenant\ncurvctl-test-token-0123456789 tenant-a\n' > "$work/tokens"
start_daemon curvd
CURVD_URL=$url
start_daemon auth --token-file "$work/tokens"
CURVD_AUTH_URL=$url
export CURVD_URL CURVD_AUTH_URL CURVD_AUTH_TOKENS="$work/tokens" CURVCTL="$build/curvctl"
"$build/test_curvc"
"$build/test_retry"
"$build/test_curvctl"
"$build/mlp_kfac" "$CURVD_URL" hf 15
if ! "$build/mlp_kfac" "$CURVD_URL" kfac 40 > "$work/kfac.out" 2> "$work/kfac.err"; then
    cat "$work/kfac.out" "$work/kfac.err"
    exit 1
fi
cat "$work/kfac.out"
# The example sends its batch: K-FAC's reports carry a noise share above 0.
grep -Eq '"noise_share": ?(0\.[0-9]*[1-9]|[1-9])' "$work/kfac.out" ||
    { echo "mlp_kfac kfac: no report with noise_share > 0"; exit 1; }
