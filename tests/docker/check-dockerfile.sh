#!/bin/sh
# Check the Dockerfile without a Docker engine (none runs here): run its
# build stage's steps in a clean copy of the tree (what COPY . . sees:
# tracked and untracked files, .dockerignore's patterns left out), then
# check the runtime stage against the binary they built: every shared
# library it needs comes from a package the stage installs (or the base
# image's libc6), nothing of the build tools is there, and it runs as a
# non-root user with the database in its volume.
# Usage: tests/docker/check-dockerfile.sh   (from anywhere)
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
df="$root/Dockerfile"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() {
    echo "check-dockerfile: FAILED: $*" >&2
    exit 1
}
ok() { echo "check-dockerfile: ok: $*"; }

# .dockerignore keeps build output, databases and node_modules out.
for p in build/ var/ node_modules/; do
    grep -q "^\(\*\*/\)\?$p\$" "$root/.dockerignore" || fail ".dockerignore does not leave out $p"
done
ok ".dockerignore leaves out build/, var/ and node_modules/"

# The stages: the build stage's RUN after COPY, the runtime stage's lines.
build_stage=$(awk '/^FROM .* AS build/{on=1;next} /^FROM /{on=0} on' "$df")
runtime=$(awk '/^FROM /{n++} n==2' "$df")
build_cmd=$(printf '%s\n' "$build_stage" | awk '/^COPY \. \./{c=1;next} c && /^RUN /{sub(/^RUN /,""); print; exit}')
[ -n "$build_cmd" ] || fail "no RUN after COPY . . in the build stage"
case "$build_cmd" in
*"install-deps daemon"*) ;;
*) fail "the build stage installs more than the daemon needs: $build_cmd" ;;
esac

# A clean copy, as COPY . . would see it.
(cd "$root" && git ls-files -z --cached --others --exclude-standard) |
    (cd "$root" && tar --null -T - -cf -) | (mkdir -p "$work/src" && tar -xf - -C "$work/src")
(cd "$work/src" && sed -e 's/#.*//' -e '/^$/d' "$root/.dockerignore" | while read -r pat; do
    # shellcheck disable=SC2086
    rm -rf ./$pat 2>/dev/null || true
done)
[ ! -e "$work/src/build" ] || fail "the clean copy has a build/"
echo "check-dockerfile: running the build stage's step in a clean copy: $build_cmd"
(cd "$work/src" && sh -c "$build_cmd") > "$work/build.log" 2>&1 ||
    { tail -n 30 "$work/build.log"; fail "the build stage's step failed"; }
bin="$work/src/build/curvd"
[ -x "$bin" ] || fail "the build stage's step made no build/curvd"
"$bin" --version > /dev/null || fail "the built curvd does not run"
ok "the build stage's step builds build/curvd from the sources alone"

# Every library the binary needs is in a package the runtime stage installs.
pkgs=$(printf '%s\n' "$runtime" | sed -n '/apt-get install/,/rm -rf/p' | tr ' \\' '\n\n' |
    grep -E '^[a-z0-9][a-z0-9.+-]+$' | grep -v -E '^(apt-get|update|install|rm|useradd)$' || true)
for lib in $(objdump -p "$bin" | awk '/NEEDED/{print $2}'); do
    path=$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')
    [ -n "$path" ] || fail "$lib: not found on this machine"
    pkg=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null || dpkg -S "$path" 2>/dev/null) ||
        fail "$lib: no package owns $path"
    pkg=${pkg%%:*}
    [ "$pkg" = libc6 ] && continue # in the base image
    printf '%s\n' "$pkgs" | grep -qx "$pkg" || fail "$lib ($pkg) is not installed by the runtime stage"
done
ok "the runtime stage installs every library curvd needs: $(echo $pkgs | tr '\n' ' ')"
for tool in build-essential gcc clang valgrind python3-torch python3 chromium make; do
    printf '%s\n' "$pkgs" | grep -qx "$tool" && fail "the runtime stage installs $tool"
done
ok "the runtime stage has no compiler, torch, valgrind, clang or browser"
printf '%s\n' "$runtime" | grep -q '^COPY --from=build /src/build/curvd ' ||
    fail "the runtime stage does not copy the built daemon alone"

# Non-root, the database in the volume, the port exposed.
user=$(printf '%s\n' "$runtime" | awk '/^USER /{print $2}' | tail -n 1)
[ -n "$user" ] && [ "$user" != root ] && [ "$user" != 0 ] || fail "the image runs as root"
db=$(printf '%s\n' "$runtime" | sed -n 's/.*CURVD_DB=\([^ ]*\).*/\1/p')
vol=$(printf '%s\n' "$runtime" | sed -n 's/^VOLUME \["\([^"]*\)"\]/\1/p')
[ -n "$db" ] && [ "$(dirname "$db")" = "$vol" ] || fail "CURVD_DB=$db is not in the volume $vol"
port=$(printf '%s\n' "$runtime" | sed -n 's/.*CURVD_PORT=\([0-9]*\).*/\1/p')
printf '%s\n' "$runtime" | grep -q "^EXPOSE $port\$" || fail "CURVD_PORT=$port is not exposed"
ok "it runs as $user with its database $db in the volume $vol, port $port exposed"
echo "check-dockerfile: passed"
