#!/usr/bin/env bash
# Checks the built library as a C programmer receives it (run by `make test`):
#  - librallocs.so.MAJOR.MINOR.PATCH is a real file with SONAME librallocs.so.MAJOR, and the symlinks
#    librallocs.so.MAJOR and librallocs.so point at it;
#  - the dynamic symbol table exports only documented C names: each one is declared in rallocs.h or is
#    a standard allocator name of the `override` feature (README, "Replacing malloc"); no Rust-mangled
#    (_ZN) or internal symbols;
#  - the library does not import __tls_get_addr (a malloc replacement must not reach TLS through it);
#  - the header's RALLOCS_VERSION_* macros match Cargo.toml.
# usage: scripts/check-lib.sh BUILD_DIR VERSION
set -u
build=${1:?usage: check-lib.sh BUILD_DIR VERSION}
version=${2:?usage: check-lib.sh BUILD_DIR VERSION}
root=$(cd "$(dirname "$0")/.." && pwd)
header="$root/include/rallocs.h"
major=${version%%.*}
fail=0
bad() { echo "check-lib: $*" >&2; fail=1; }

real="$build/librallocs.so.$version"
[ -f "$real" ] && [ ! -L "$real" ] || bad "$real is not a regular file"
[ "$(readlink "$build/librallocs.so.$major")" = "librallocs.so.$version" ] || bad "librallocs.so.$major does not point at librallocs.so.$version"
[ "$(readlink "$build/librallocs.so")" = "librallocs.so.$major" ] || bad "librallocs.so does not point at librallocs.so.$major"
soname=$(readelf -d "$real" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
[ "$soname" = "librallocs.so.$major" ] || bad "SONAME is '$soname', want librallocs.so.$major"

# The standard names that the `override` feature exports (documented in README.md).
override_names=" malloc free calloc realloc reallocarray aligned_alloc posix_memalign memalign valloc pvalloc"
override_names+=" malloc_usable_size cfree free_sized free_aligned_sized malloc_trim mallinfo2 malloc_stats"
override_names+=" __libc_malloc __libc_free __libc_calloc __libc_realloc __libc_memalign __libc_valloc __libc_pvalloc "
exports=$(nm -D --defined-only "$real" | awk 'NF == 3 { print $3 }' | sed 's/@.*//' | sort -u)
[ -n "$exports" ] || bad "no exported symbols"
for sym in $exports; do
    case "$sym" in
        _ZN*|_R*) bad "exports a Rust symbol: $sym"; continue ;;
    esac
    if grep -Eq "[ *]$sym\(" "$header"; then continue; fi
    case "$override_names" in *" $sym "*) continue ;; esac
    bad "exports $sym, which rallocs.h does not declare"
done
if nm -D --undefined-only "$real" | grep -q '__tls_get_addr'; then
    bad "imports __tls_get_addr"
fi
if nm -D --undefined-only "$real" | grep -q 'rust_'; then
    bad "has an undefined Rust symbol: $(nm -D --undefined-only "$real" | grep rust_)"
fi

for part in MAJOR MINOR PATCH; do
    case $part in MAJOR) want=$(echo "$version" | cut -d. -f1) ;; MINOR) want=$(echo "$version" | cut -d. -f2) ;; PATCH) want=$(echo "$version" | cut -d. -f3) ;; esac
    got=$(sed -n "s/^#define RALLOCS_VERSION_$part \([0-9]*\)$/\1/p" "$header")
    [ "$got" = "$want" ] || bad "RALLOCS_VERSION_$part is '$got' in rallocs.h, Cargo.toml says $want"
done

n=$(echo "$exports" | wc -w)
if [ $fail = 0 ]; then echo "check-lib: ok ($n exported symbols, SONAME $soname, version $version)"; fi
exit $fail
