#!/usr/bin/env bash
# Installs rallocs into a staging directory the way a packager does (make install PREFIX=... DESTDIR=...),
# then builds a C program with pkg-config against the installed copy, dynamically and statically, runs
# both, and uninstalls again, checking that nothing is left behind. Run by `make test`.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
prefix=/opt/rallocs-test
fail=0
bad() { echo "install-test: $*" >&2; fail=1; }
m() { make -s -C "$root" "$@"; }

m install PREFIX=$prefix DESTDIR="$stage" >/dev/null || { echo "install-test: make install failed" >&2; exit 1; }
for f in lib/librallocs.so lib/librallocs.so.0 lib/librallocs.a include/rallocs.h include/rallocs.hpp lib/pkgconfig/rallocs.pc; do
    [ -e "$stage$prefix/$f" ] || bad "make install did not install $prefix/$f"
done
grep -q "^prefix=$prefix\$" "$stage$prefix/lib/pkgconfig/rallocs.pc" || bad "rallocs.pc does not say prefix=$prefix"
printf '#include <rallocs.hpp>\nint main() { rallocs::region r; return r.get() == nullptr; }\n' |
    ${CXX:-g++} -std=c++11 -Wall -Wextra -Werror -fsyntax-only -I"$stage$prefix/include" -x c++ - 2>"$stage/hpp.log" \
    || { cat "$stage/hpp.log" >&2; bad "the installed rallocs.hpp does not compile"; }

cat >"$stage/app.c" <<'APP'
#include <rallocs.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    printf("rallocs %s\n", rallocs_version());
    return strcmp(rallocs_version(), RALLOCS_VERSION_STRING) != 0;
}
APP
export PKG_CONFIG_PATH="$stage$prefix/lib/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$stage"
want="rallocs $(pkg-config --modversion rallocs)"
if cc "$stage/app.c" $(pkg-config --cflags --libs rallocs) -o "$stage/app-dyn" 2>"$stage/dyn.log"; then
    got=$(LD_LIBRARY_PATH="$stage$prefix/lib" "$stage/app-dyn") || bad "dynamic app failed"
    [ "$got" = "$want" ] || bad "dynamic app printed '$got', want '$want'"
    LD_LIBRARY_PATH="$stage$prefix/lib" ldd "$stage/app-dyn" | grep -q "$stage$prefix/lib/librallocs.so.0" \
        || bad "dynamic app is not linked against the installed librallocs.so.0"
else
    cat "$stage/dyn.log" >&2; bad "cc app.c \$(pkg-config --cflags --libs rallocs) failed"
fi
if cc "$stage/app.c" $(pkg-config --static --cflags --libs rallocs) -o "$stage/app-static" 2>"$stage/static.log"; then
    got=$("$stage/app-static") || bad "static app failed"
    [ "$got" = "$want" ] || bad "static app printed '$got', want '$want'"
    if ldd "$stage/app-static" 2>/dev/null | grep -q librallocs; then bad "static app still needs librallocs.so"; fi
else
    cat "$stage/static.log" >&2; bad "cc app.c \$(pkg-config --static --cflags --libs rallocs) failed"
fi

m uninstall PREFIX=$prefix DESTDIR="$stage" >/dev/null || bad "make uninstall failed"
left=$(find "$stage$prefix" -type f -o -type l 2>/dev/null)
[ -z "$left" ] || bad "make uninstall left: $left"
[ $fail = 0 ] && echo "install-test: ok (install, pkg-config dynamic and static links, uninstall)"
exit $fail
