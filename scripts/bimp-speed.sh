#!/usr/bin/env bash
# Measures bimp's fast paths against glibc from C, as a program calling the shared library sees them
# (not run by `make test`: speed is shown, never asserted). Three loops, each through function
# pointers found with dlsym, so every allocator pays the same call:
#   pairs    1000 blocks live below, then malloc(n)/write a byte/free with n cycling 16..256
#   process  the seed's process() nested 10 deep (malloc 100, malloc 200, recurse twice, free, free),
#            per malloc+free pair
#   realloc  malloc(16), then realloc by +16 bytes up to 256 KiB, then free; per realloc call
# for glibc (libc.so.6's own malloc: librallocs.so overrides malloc), bimp (BUILD/librallocs.so),
# bimp single-threaded (built here: target/bimp-speed, feature bimp-single-threaded) and empty
# functions (malloc returns a static buffer, free does nothing: the cost of the calls and the loop).
# Prints ns per operation (best of the rounds, allocators alternating) and, when valgrind is
# installed, instructions per operation (callgrind, loop included, start-up cancelled out).
# usage: scripts/bimp-speed.sh [BUILD_DIR]   (after `make lib`; env ROUNDS, SCALE)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
cargo=${CARGO:-cargo}
cc=${CC:-cc}
rounds=${ROUNDS:-11}
scale=${SCALE:-1}
out="$root/target/bimp-speed"
mkdir -p "$out"

[ -e "$build/librallocs.so" ] || { echo "bimp-speed: $build/librallocs.so missing: run make lib" >&2; exit 1; }
CARGO_TARGET_DIR="$out" $cargo rustc --release --lib -p rallocs --manifest-path "$root/Cargo.toml" \
    --features bimp-single-threaded >"$out/build.log" 2>&1 || { tail -n 20 "$out/build.log" >&2; exit 1; }
cp -f "$out/release/librallocs.so" "$out/librallocs-st.so"

cat >"$out/empty.c" <<'EOF'
#include <stddef.h>
static char buf[1 << 19];
void *empty_malloc(size_t n) { (void)n; return buf; }
void *empty_realloc(void *p, size_t n) { (void)p; (void)n; return buf; }
void empty_free(void *p) { (void)p; }
EOF

cat >"$out/speed.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void *(*malloc_fn)(size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef void (*free_fn)(void *);
struct alloc { const char *name; malloc_fn m; realloc_fn r; free_fn f; };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *must(void *p) {
    if (!p) { fprintf(stderr, "out of memory\n"); exit(1); }
    return p;
}

/* Each loop returns the number of operations it timed. */
__attribute__((noinline)) static long pairs(const struct alloc *a, long n) {
    void *below[1000];
    for (int i = 0; i < 1000; i++) *(char *)(below[i] = must(a->m(16 + i % 64))) = 1;
    size_t size = 16;
    for (long i = 0; i < n; i++) {
        char *p = must(a->m(size));
        *(volatile char *)p = (char)i;
        a->f(p);
        size = size == 256 ? 16 : size + 16;
    }
    for (int i = 999; i >= 0; i--) a->f(below[i]);
    return n;
}

static long rec(const struct alloc *a, int depth) {
    char *x = must(a->m(100)), *y = must(a->m(200));
    *(volatile char *)x = 1;
    *(volatile char *)y = 2;
    long pairs = 2;
    if (depth > 0) pairs += rec(a, depth - 1) + rec(a, depth - 1);
    a->f(x);
    a->f(y);
    return pairs;
}

__attribute__((noinline)) static long process(const struct alloc *a, long n) {
    long done = 0;
    while (done < n) done += rec(a, 10);
    return done;
}

__attribute__((noinline)) static long grow(const struct alloc *a, long n) {
    long done = 0;
    while (done < n) {
        size_t size = 16;
        char *p = must(a->m(size));
        while (size < (256 << 10)) {
            size += 16;
            p = must(a->r(p, size));
            ((volatile char *)p)[size - 1] = (char)size;
            done++;
        }
        a->f(p);
    }
    return done;
}

typedef long (*loop_fn)(const struct alloc *, long);
static const struct { const char *name; loop_fn run; long n; } loops[] = {
    {"pairs", pairs, 20000000}, {"process", process, 10000000}, {"realloc", grow, 20000000},
};

static void *open_lib(const char *path, int flags) {
    void *h = dlopen(path, flags);
    if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); exit(1); }
    return h;
}

static void *sym(void *h, const char *name) {
    void *p = dlsym(h, name);
    if (!p) { fprintf(stderr, "dlsym %s: %s\n", name, dlerror()); exit(1); }
    return p;
}

/* usage: speed BIMP_SO BIMP_ST_SO EMPTY_SO ROUNDS SCALE [ALLOC LOOP]: with ALLOC and LOOP, runs that
 * one loop once (for callgrind); else times every loop for every allocator. */
int main(int argc, char **argv) {
    if (argc < 6) return 2;
    void *libc = open_lib("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    void *b = open_lib(argv[1], RTLD_NOW | RTLD_LOCAL), *st = open_lib(argv[2], RTLD_NOW | RTLD_LOCAL);
    void *e = open_lib(argv[3], RTLD_NOW | RTLD_LOCAL);
    int rounds = atoi(argv[4]);
    double scale = atof(argv[5]);
    struct alloc al[4] = {
        {"glibc", sym(libc, "malloc"), sym(libc, "realloc"), sym(libc, "free")},
        {"bimp", sym(b, "bimp_malloc"), sym(b, "bimp_realloc"), sym(b, "bimp_free")},
        {"bimp-st", sym(st, "bimp_malloc"), sym(st, "bimp_realloc"), sym(st, "bimp_free")},
        {"empty", sym(e, "empty_malloc"), sym(e, "empty_realloc"), sym(e, "empty_free")},
    };
    if (argc == 8) {
        for (int i = 0; i < 4; i++)
            for (int l = 0; l < 3; l++)
                if (!strcmp(argv[6], al[i].name) && !strcmp(argv[7], loops[l].name))
                    return printf("%ld\n", loops[l].run(&al[i], (long)(loops[l].n * scale))) < 0;
        return 2;
    }
    printf("%-8s %10s %10s %10s %10s   (ns per operation, best of %d)\n", "loop", "glibc", "bimp", "bimp-st",
           "empty", rounds);
    for (int l = 0; l < 3; l++) {
        double best[4] = {1e30, 1e30, 1e30, 1e30};
        for (int r = 0; r < rounds; r++)
            for (int i = 0; i < 4; i++) {
                double t = now();
                long ops = loops[l].run(&al[i], (long)(loops[l].n * scale / 10));
                t = (now() - t) / ops * 1e9;
                if (t < best[i]) best[i] = t;
            }
        printf("%-8s %10.2f %10.2f %10.2f %10.2f   glibc/bimp %.2fx, glibc/bimp-st %.2fx, glibc/empty %.2fx\n",
               loops[l].name, best[0], best[1], best[2], best[3], best[0] / best[1], best[0] / best[2],
               best[0] / best[3]);
    }
    return 0;
}
EOF

$cc -O2 -shared -fPIC "$out/empty.c" -o "$out/libempty.so"
$cc -std=c11 -O2 -fno-builtin -Wall -Wextra -Werror "$out/speed.c" -o "$out/speed" -ldl
args=("$build/librallocs.so" "$out/librallocs-st.so" "$out/libempty.so")
"$out/speed" "${args[@]}" "$rounds" "$scale"

command -v valgrind >/dev/null || { echo "(valgrind not installed: no instruction counts)"; exit 0; }
# Instructions of the loop run at 1/100 and 2/100 of its size: the difference is n/100 operations'
# worth, with the start-up (dlopen, first commits) cancelled out.
irefs() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$out/speed" "${args[@]}" 1 "$1" "$2" "$3" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
printf "%-8s %10s %10s %10s %10s   (instructions per operation, loop included)\n" loop glibc bimp bimp-st empty
for loop in pairs process realloc; do
    line=$(printf "%-8s" $loop)
    for a in glibc bimp bimp-st empty; do
        ops1=$("$out/speed" "${args[@]}" 1 0.01 $a $loop)
        ops2=$("$out/speed" "${args[@]}" 1 0.02 $a $loop)
        i1=$(irefs 0.01 $a $loop)
        i2=$(irefs 0.02 $a $loop)
        line+=$(awk -v a="$i1" -v b="$i2" -v n="$((ops2 - ops1))" 'BEGIN { printf " %10.1f", (b - a) / n }')
    done
    echo "$line"
done
