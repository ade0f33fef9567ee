#!/usr/bin/env bash
# The C test runner, called by `make test` (make c-tests): checks that rallocs.h compiles as C99 and
# C++11 before and after <stdlib.h>, then compiles every c-tests/*.c (C11) and *.cpp (C++11, or what the
# file's first line asks for) with strict
# warnings against the header, links each against the shared library and against the static library,
# runs it, prints one line per program, and ends with "c-tests: N passed, M failed".
#
# usage: c-tests/run.sh BUILD_DIR   (holds librallocs.so, librallocs.a, native-static-libs)
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:?usage: run.sh BUILD_DIR}" && pwd)
cc=${CC:-cc}
cxx=${CXX:-g++}
out="$build/c-tests"
mkdir -p "$out"
static_libs=$(cat "$build/native-static-libs")
cflags=(-std=c11 -Wall -Wextra -Wpedantic -Werror -O2 -g -pthread -I"$root/include" -I"$root/c-tests")
cxxflags=(-std=c++11 -Wall -Wextra -Wpedantic -Werror -O2 -g -pthread -I"$root/include" -I"$root/c-tests")
passed=0
failed=0

report() { # name status logfile
    if [ "$2" = 0 ]; then
        passed=$((passed + 1))
        printf '  ok    %s\n' "$1"
    else
        failed=$((failed + 1))
        printf '  FAIL  %s (exit %s; log %s)\n' "$1" "$2" "$3"
        sed 's/^/        | /' "$3" | tail -n 25
    fi
}

# 1. The header alone, as C99 and C++11, included before and after <stdlib.h>.
for order in before after; do
    if [ $order = before ]; then src='#include <rallocs.h>
#include <stdlib.h>'; else src='#include <stdlib.h>
#include <rallocs.h>'; fi
    src="$src
int main(void) { return rallocs_version() == 0; }"
    log="$out/header-c99-$order.log"
    printf '%s\n' "$src" | $cc -std=c99 -Wall -Wextra -Wpedantic -Werror -I"$root/include" -x c -fsyntax-only - >"$log" 2>&1
    report "header as C99, $order <stdlib.h>" $? "$log"
    log="$out/header-cxx11-$order.log"
    printf '%s\n' "$src" | $cxx -std=c++11 -Wall -Wextra -Wpedantic -Werror -I"$root/include" -x c++ -fsyntax-only - >"$log" 2>&1
    report "header as C++11, $order <stdlib.h>" $? "$log"
done

# 2. Every test program, against the shared and the static library.
run_one() { # compiler-and-flags... -- source name
    local src=$1 name=$2 kind=$3; shift 3
    local exe="$out/$name-$kind" log="$out/$name-$kind.log"
    local link
    if [ "$kind" = shared ]; then
        link=(-L"$build" -Wl,-rpath,"$build" -Wl,--push-state,--no-as-needed -lrallocs -Wl,--pop-state)
    else
        # shellcheck disable=SC2206
        link=("$build/librallocs.a" $static_libs)
    fi
    if ! "$@" "$src" "${link[@]}" -o "$exe" >"$log" 2>&1; then
        report "$name [$kind] (compile)" 1 "$log"
        return
    fi
    if [ "$kind" = shared ] && ! ldd "$exe" | grep -q 'librallocs.so.0 => '"$build"; then
        echo "not linked against $build/librallocs.so.0" >>"$log"
        report "$name [$kind]" 1 "$log"
        return
    fi
    if [ "$kind" = static ] && ldd "$exe" 2>/dev/null | grep -q librallocs; then
        echo "static build still needs librallocs.so" >>"$log"
        report "$name [$kind]" 1 "$log"
        return
    fi
    (cd "$out" && RALLOCS_TEST_EXE="$exe" timeout 600 "$exe") >>"$log" 2>&1
    report "$name [$kind]" $? "$log"
}

for src in "$root"/c-tests/*.c; do
    name=$(basename "$src" .c)
    for kind in shared static; do run_one "$src" "$name" "$kind" $cc "${cflags[@]}"; done
done
# A first line "// c-tests: FLAGS" adds FLAGS for that one file (e.g. -std=c++17; the last -std wins).
for src in "$root"/c-tests/*.cpp; do
    [ -e "$src" ] || continue
    name=$(basename "$src" .cpp)
    extra=$(sed -n '1s|^// c-tests: ||p' "$src")
    # shellcheck disable=SC2086
    for kind in shared static; do run_one "$src" "$name" "$kind" $cxx "${cxxflags[@]}" $extra; done
done

echo "c-tests: $passed passed, $failed failed"
[ "$failed" = 0 ]
