#!/usr/bin/env bash
# Runs programs with bimp as their whole malloc family (LD_PRELOAD=librallocs-bimp.so) and checks that
# each one behaves exactly as it does with glibc's malloc (run by `make test`):
#  - the preload library exports the malloc family and declares no rallocs.h SONAME;
#  - `ls -l /usr/bin`, `git --version`, a python3 workload and a C program (threads, realloc growth,
#    aligned allocations, fork) print the same output, and exit with the same status, with and without it;
#  - the allocations really went to bimp: under the preload, bimp_stats_get() sees the program's blocks.
# usage: scripts/bimp-preload-test.sh BUILD_DIR   (holds librallocs-bimp.so)
set -u
build=$(cd "${1:?usage: bimp-preload-test.sh BUILD_DIR}" && pwd)
lib="$build/librallocs-bimp.so"
cc=${CC:-cc}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0
passed=0
bad() { echo "bimp-preload-test: FAIL: $*" >&2; fail=1; }
ok() { passed=$((passed + 1)); }

[ -f "$lib" ] || { echo "bimp-preload-test: $lib missing (make bimp-preload)" >&2; exit 1; }
exports=$(nm -D --defined-only "$lib" | awk 'NF == 3 { print $3 }' | sed 's/@.*//')
for sym in malloc free calloc realloc reallocarray aligned_alloc posix_memalign memalign valloc pvalloc \
           malloc_usable_size bimp_malloc bimp_stats_get; do
    if grep -qx "$sym" <<<"$exports"; then ok; else bad "$lib does not export $sym"; fi
done
soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
if [ "$soname" = librallocs-bimp.so ]; then ok; else bad "SONAME is '$soname', want librallocs-bimp.so"; fi

# same NAME CMD...: output and exit status with and without the preload must match.
same() {
    local name=$1; shift
    "$@" >"$work/$name.plain" 2>&1; local s1=$?
    LD_PRELOAD="$lib" "$@" >"$work/$name.bimp" 2>&1; local s2=$?
    if [ $s1 = $s2 ] && cmp -s "$work/$name.plain" "$work/$name.bimp"; then
        ok; echo "  ok    $name (same output, exit $s1)"
    else
        bad "$name: exit $s1 without, $s2 with the preload"
        diff "$work/$name.plain" "$work/$name.bimp" | head -n 20 >&2
    fi
}

same ls-usr-bin ls -l /usr/bin
same git-version git --version
if command -v python3 >/dev/null; then
    py='import json, hashlib, collections
words = ["w%d" % (i * 7919 % 5003) for i in range(60000)]
c = collections.Counter(words)
d = {k: [v] * (v % 7) for k, v in c.items()}
s = json.dumps(sorted(d.items())[:2000])
big = bytearray()
for i in range(3000):
    big += bytes(str(i), "ascii") * 10
print(len(c), len(s), hashlib.sha256(s.encode() + bytes(big)).hexdigest(), sum(len(v) for v in d.values()))'
    same python3-workload python3 -c "$py"
    # The python3 interpreter's blocks are on the bimp heap (ctypes finds bimp_stats_get in the process).
    probe='import ctypes
class S(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("top", "live", "live_blocks", "free", "free_blocks", "committed", "peak", "reserved")]
s = S()
ctypes.CDLL(None).bimp_stats_get(ctypes.byref(s))
print("live_blocks>1000" if s.live_blocks > 1000 else "live_blocks=%d" % s.live_blocks)'
    out=$(LD_PRELOAD="$lib" python3 -c "$probe" 2>&1)
    if [ "$out" = "live_blocks>1000" ]; then ok; echo "  ok    python3 allocates from bimp"; else bad "python3 under the preload: $out"; fi
else
    bad "python3 not found"
fi

cat >"$work/prog.c" <<'PROG'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void *worker(void *arg) {
    unsigned long sum = 0;
    for (int i = 0; i < 20000; i++) {
        char *s = malloc(16 + (size_t)(i % 200));
        snprintf(s, 16, "%d-%d", (int)(intptr_t)arg, i);
        sum += strlen(s);
        char *t = strdup(s);
        free(s);
        sum += (unsigned char)t[0];
        free(t);
    }
    return (void *)(uintptr_t)sum;
}

int main(void) {
    enum { N = 5000 };
    char **v = calloc(N, sizeof *v);
    for (int i = 0; i < N; i++) {
        char buf[32];
        snprintf(buf, sizeof buf, "s%07d", (i * 7919) % N);
        v[i] = strdup(buf);
    }
    qsort(v, N, sizeof *v, cmp);
    unsigned long h = 5381;
    for (int i = 0; i < N; i++)
        for (char *c = v[i]; *c; c++) h = h * 33 + (unsigned char)*c;
    for (int i = N - 1; i >= 0; i -= 2) free(v[i]);
    for (int i = N - 2; i >= 0; i -= 2) free(v[i]);
    free(v);
    char *g = NULL;
    size_t len = 0;
    for (int i = 0; i < 100000; i++) {
        g = realloc(g, len + 8);
        memcpy(g + len, "abcdefgh", 8);
        len += 8;
    }
    h ^= len * 31 + (unsigned char)g[len - 1];
    free(g);
    void *al = NULL;
    int r = posix_memalign(&al, 256, 1000);
    void *aa = aligned_alloc(4096, 4096);
    printf("aligned %d %d %d\n", r, (int)((uintptr_t)al % 256), (int)((uintptr_t)aa % 4096));
    free(aa);
    free(al);
    pthread_t th[4];
    unsigned long tsum = 0;
    for (int t = 0; t < 4; t++) pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
    for (int t = 0; t < 4; t++) {
        void *res;
        pthread_join(th[t], &res);
        tsum += (unsigned long)(uintptr_t)res;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        char *c = malloc(100);
        strcpy(c, "child");
        _exit(c[0] == 'c' ? 7 : 1);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    printf("hash %lu threads %lu child %d\n", h, tsum, WEXITSTATUS(st));
    void (*stats)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "bimp_stats_get");
    if (stats) {
        size_t s[8];
        void *probe = malloc(10);
        stats(s);
        free(probe);
        fprintf(stderr, "bimp-serves-malloc %s\n", s[2] >= 1 ? "yes" : "no");
    }
    return 0;
}
PROG
if $cc -std=c11 -O2 -Wall -Wextra -Werror -pthread "$work/prog.c" -o "$work/prog" -ldl 2>"$work/prog.log"; then
    "$work/prog" >"$work/prog.plain" 2>&1; s1=$?
    LD_PRELOAD="$lib" "$work/prog" >"$work/prog.bimp" 2>"$work/prog.err"; s2=$?
    if [ $s1 = 0 ] && [ $s2 = 0 ] && cmp -s "$work/prog.plain" "$work/prog.bimp"; then
        ok; echo "  ok    C program (same output, exit 0)"
    else
        bad "C program: exit $s1 / $s2"; diff "$work/prog.plain" "$work/prog.bimp" >&2; cat "$work/prog.err" >&2
    fi
    if grep -qx "bimp-serves-malloc yes" "$work/prog.err"; then ok; else bad "C program: malloc not served by bimp"; cat "$work/prog.err" >&2; fi
else
    bad "C program does not compile"; cat "$work/prog.log" >&2
fi

echo "bimp-preload-test: $passed passed, $([ $fail = 0 ] && echo 0 || echo some) failed"
exit $fail
