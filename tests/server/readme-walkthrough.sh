#!/bin/sh
# Run README.md's curl walkthrough against a real curvd on a free loopback
# port with a fresh database, so the README stays true. Usage:
#   tests/server/readme-walkthrough.sh build/curvd
set -eu
curvd=$(realpath "$1")
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
"$curvd" --port 0 --db "$work/curvd.db" --log-format json 2> daemon.log &
pid=$!
port=""
for _ in $(seq 100); do
    port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' daemon.log)
    [ -n "$port" ] && break
    sleep 0.05
done
[ -n "$port" ] || { cat daemon.log; echo "readme-walkthrough: daemon did not start"; exit 1; }
awk '/^```sh$/{n++} n==2 && /^```$/{exit} n==2 && !/^```sh$/' "$OLDPWD/README.md" |
    sed "s|^CURVD=.*|CURVD=http://127.0.0.1:$port|" > walkthrough.sh
if ! sh -e walkthrough.sh > out.txt 2>&1; then
    cat out.txt daemon.log
    echo "readme-walkthrough: the README's commands failed"
    exit 1
fi
grep -q '"update"' out.txt && grep -q 'SHAPE_MISMATCH' out.txt &&
    grep -q '"kind":"curvature_product"' out.txt && grep -q '"kind":"loss"' out.txt &&
    grep -q '"update":\[{"name":"w","shape":\[2\],"datatype":"FP64","data":\[0.5,-1\]}' out.txt || {
    cat out.txt
    echo "readme-walkthrough: unexpected output"
    exit 1
}
kill -TERM "$pid"
wait "$pid"
echo "readme-walkthrough: $(grep -c '^curl' walkthrough.sh) curl commands ran against a live daemon"
