#!/usr/bin/env bash
# Builds and tests a non-default bimp configuration, as a user gets it with
# `make BIMP_ALIGN=32 BIMP_SINGLE_THREADED=1` (run by `make test`):
#  - BIMP_ALIGN=24 fails the build with a clear message;
#  - BIMP_ALIGN=32 with the feature bimp-single-threaded builds in its own cargo target directory
#    (target/bimp-variant), and c-tests/bimp.c passes against that shared and static library, which
#    report alignment 32 and single-threaded.
# usage: scripts/bimp-variant-test.sh BUILD_DIR   (holds native-static-libs from the main build)
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:?usage: bimp-variant-test.sh BUILD_DIR}" && pwd)
cargo=${CARGO:-cargo}
cc=${CC:-cc}
target="$root/target/bimp-variant"
out="$build/bimp-variant"
mkdir -p "$out"
fail=0
bad() { echo "bimp-variant-test: FAIL: $*" >&2; fail=1; }

variant() { # BIMP_ALIGN value, then cargo's output goes to the log named
    BIMP_ALIGN=$1 CARGO_TARGET_DIR="$target" $cargo rustc --release --lib -p rallocs \
        --manifest-path "$root/Cargo.toml" --features bimp-single-threaded >"$out/$2" 2>&1
}

if variant 24 bad-align.log; then
    bad "BIMP_ALIGN=24 built"
elif grep -q "BIMP_ALIGN=24 is invalid: it must be a power of two" "$out/bad-align.log"; then
    echo "  ok    BIMP_ALIGN=24 fails the build with a clear message"
else
    bad "BIMP_ALIGN=24 failed without the expected message:"; tail -n 5 "$out/bad-align.log" >&2
fi

if ! variant 32 build.log; then
    tail -n 30 "$out/build.log" >&2
    echo "bimp-variant-test: the BIMP_ALIGN=32 single-threaded build failed" >&2
    exit 1
fi
cp -f "$target/release/librallocs.so" "$out/librallocs.so.0"
ln -sf librallocs.so.0 "$out/librallocs.so"
cp -f "$target/release/librallocs.a" "$out/librallocs.a"

cflags=(-std=c11 -Wall -Wextra -Wpedantic -Werror -O2 -g -pthread -I"$root/include" -I"$root/c-tests")
# shellcheck disable=SC2046
for kind in shared static; do
    exe="$out/bimp-$kind"
    if [ $kind = shared ]; then
        link=(-L"$out" -Wl,-rpath,"$out" -Wl,--push-state,--no-as-needed -lrallocs -Wl,--pop-state)
    else
        # shellcheck disable=SC2207
        link=("$out/librallocs.a" $(cat "$build/native-static-libs"))
    fi
    if ! $cc "${cflags[@]}" "$root/c-tests/bimp.c" "${link[@]}" -o "$exe" >"$out/bimp-$kind.log" 2>&1; then
        bad "c-tests/bimp.c [$kind] does not compile"; cat "$out/bimp-$kind.log" >&2; continue
    fi
    if (cd "$out" && RALLOCS_TEST_EXE="$exe" timeout 600 "$exe") >>"$out/bimp-$kind.log" 2>&1 &&
        grep -q "^bimp: alignment 32, single-threaded" "$out/bimp-$kind.log"; then
        echo "  ok    bimp [BIMP_ALIGN=32, single-threaded, $kind]: $(tail -n 1 "$out/bimp-$kind.log")"
    else
        bad "c-tests/bimp.c [BIMP_ALIGN=32, single-threaded, $kind]"; tail -n 25 "$out/bimp-$kind.log" >&2
    fi
done
[ $fail = 0 ] && echo "bimp-variant-test: ok"
exit $fail
