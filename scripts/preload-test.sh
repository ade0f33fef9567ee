#!/usr/bin/env bash
# Real programs under LD_PRELOAD=librallocs.so give the same output as without it (make preload-test,
# part of make test). Each program runs twice in the same fresh directory, once plain and once preloaded;
# stdout, stderr and the exit status must be identical:
#   - python3: 8 threads building large dicts, lists and strings, results hashed;
#   - git: init, add, commit (twice), log --stat, gc, fsck in a temporary repository (fixed names/dates);
#   - gcc: compiles (-O2) a generated C file of a few hundred functions and the stress test of this
#     repository to assembly, links the first and runs it;
#   - sort: a file of a million lines, plain, numeric with temporary files and two threads, unique.
# First it checks that the preload really takes effect: in a preloaded python3, malloc is rallocs' malloc
# and rallocs_stats_get (called through ctypes) has counted mallocs; the maps of a preloaded process show
# the library; git, gcc (with cc1) and python3 print rallocs statistics at exit under
# RALLOCS_SHOW_STATS=1.
#
# usage: scripts/preload-test.sh BUILD_DIR   (holds librallocs.so)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:?usage: preload-test.sh BUILD_DIR}" && pwd)
lib="$build/librallocs.so"
[ -e "$lib" ] || { echo "preload-test: $lib missing" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/rallocs-preload.XXXXXX")
export root tmp
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0

ok() { passed=$((passed + 1)); printf '  ok    %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf '  FAIL  %s\n' "$1"; shift; for l in "$@"; do printf '        | %s\n' "$l"; done; }

# 1. The preload takes effect.
check_py='
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])            # the already preloaded library
glob = ctypes.CDLL(None)                  # what the process resolves malloc to
same = ctypes.cast(glob.malloc, ctypes.c_void_p).value == ctypes.cast(lib.malloc, ctypes.c_void_p).value
x = [str(i) * 50 for i in range(100000)]  # some allocation
st = (ctypes.c_uint64 * 13)()             # rallocs_stats_t: 9 size_t + 4 uint64_t (LP64)
lib.rallocs_stats_get(st)
print(int(same), st[9], st[10], st[0])
'
if out=$(LD_PRELOAD="$lib" python3 -c "$check_py" "$lib" 2>&1); then
    read -r same mallocs frees live <<<"$out"
    if [ "$same" = 1 ] && [ "$mallocs" -gt 1000 ] && [ "$live" -gt 0 ]; then
        ok "preload takes effect (python3: malloc is rallocs', $mallocs mallocs, $frees frees, $live live bytes)"
    else
        fail "preload takes effect" "$out"
    fi
else
    fail "preload takes effect (python3 failed)" "$out"
fi
maps=$(LD_PRELOAD="$lib" cat /proc/self/maps) # (not piped into grep -q: cat could die of SIGPIPE)
if grep -q "librallocs\.so" <<<"$maps"; then ok "preloaded process maps librallocs.so"
else fail "preloaded process maps librallocs.so"; fi
# The programs of part 2 (and the compiler proper, cc1, that gcc runs) allocate through rallocs: with
# RALLOCS_SHOW_STATS=1 every preloaded process prints its statistics at exit. (sort closes stderr
# before exiting, as every coreutils program does: it only has to be dynamically linked, not setuid.)
for cmd in "git --version" "gcc -O2 -S -o /dev/null -x c /dev/null" "python3 -c pass"; do
    # shellcheck disable=SC2086
    n=$(RALLOCS_SHOW_STATS=1 LD_PRELOAD="$lib" $cmd 2>&1 >/dev/null | grep -c 'mallocs' || true)
    if [ "$n" -ge 1 ]; then ok "preloaded '$cmd' allocates through rallocs ($n processes print rallocs statistics)"
    else fail "preloaded '$cmd' allocates through rallocs (no statistics printed at exit)"; fi
done
sort_bin=$(command -v sort)
sort_libs=$(ldd "$sort_bin" 2>/dev/null || true)
if grep -q 'libc\.so' <<<"$sort_libs" && [ ! -u "$sort_bin" ]; then ok "sort is dynamically linked (LD_PRELOAD applies)"
else fail "sort is dynamically linked (LD_PRELOAD applies)"; fi

# 2. Real programs. compare NAME FUNCTION: runs FUNCTION in $tmp/work twice (plain, then preloaded).
compare() {
    local name=$1 fn=$2 mode
    local t0=$SECONDS
    for mode in plain preload; do
        rm -rf "$tmp/work" "$tmp/home"
        mkdir -p "$tmp/work" "$tmp/home"
        local status=0
        # A separate bash with errexit (inside `... || status=$?` this shell would ignore a failing step).
        local script
        script="$(declare -f "$fn"); $fn"
        if [ $mode = plain ]; then
            (cd "$tmp/work" && bash -euo pipefail -c "$script") >"$tmp/$name.$mode.out" 2>"$tmp/$name.$mode.err" ||
                status=$?
        else
            (cd "$tmp/work" && LD_PRELOAD="$lib" bash -euo pipefail -c "$script") >"$tmp/$name.$mode.out" \
                2>"$tmp/$name.$mode.err" || status=$?
        fi
        echo "exit status $status" >>"$tmp/$name.$mode.out"
    done
    if [ "$(tail -n 1 "$tmp/$name.plain.out")" != "exit status 0" ]; then
        fail "$name (fails even without the preload)" "$(tail -n 5 "$tmp/$name.plain.err")"
    elif cmp -s "$tmp/$name.plain.out" "$tmp/$name.preload.out" && cmp -s "$tmp/$name.plain.err" "$tmp/$name.preload.err"; then
        ok "$name: identical output with LD_PRELOAD ($(wc -l <"$tmp/$name.plain.out") lines, $((SECONDS - t0)) s for both runs)"
    else
        fail "$name: output differs under LD_PRELOAD" \
            "$(diff "$tmp/$name.plain.out" "$tmp/$name.preload.out" | head -n 10)" \
            "$(diff "$tmp/$name.plain.err" "$tmp/$name.preload.err" | head -n 10)"
    fi
}

cat >"$tmp/prog.py" <<'EOF'
import hashlib, threading

def work(k, out):
    d = {}
    for i in range(30000):
        key = "k%d-%d" % (k, i * 7919 % 100003)
        d[key] = [i, str(i) * (i % 13), {"n": i}]
    s = "".join(key * 3 for key in d)          # a big string
    big = [s[i:i + 1000] for i in range(0, len(s), 997)]
    for i in range(0, 30000, 3):               # grow and shrink
        del d["k%d-%d" % (k, i * 7919 % 100003)]
    h = hashlib.sha256()
    for key in sorted(d):
        h.update(key.encode()); h.update(repr(d[key]).encode())
    out[k] = (len(d), len(s), len(big), h.hexdigest())

out = {}
threads = [threading.Thread(target=work, args=(k, out)) for k in range(8)]
for t in threads: t.start()
big = {i: str(i) * 10 for i in range(150000)}
text = " ".join(big[i] for i in range(0, 150000, 2))
for t in threads: t.join()
for k in sorted(out): print(k, *out[k])
print(len(big), len(text), hashlib.sha256(text.encode()).hexdigest())
EOF
run_python() { PYTHONHASHSEED=0 python3 "$tmp/prog.py"; }

run_git() {
    export HOME="$tmp/home" GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME="R Allocs" GIT_AUTHOR_EMAIL="r@example.com"
    export GIT_COMMITTER_NAME="R Allocs" GIT_COMMITTER_EMAIL="r@example.com"
    export GIT_AUTHOR_DATE="2024-01-01T00:00:00Z" GIT_COMMITTER_DATE="2024-01-01T00:00:00Z" TZ=UTC
    git init -q -b main repo && cd repo
    for i in $(seq 1 300); do seq "$i" $((i * 40)) >"f$i.txt"; done
    mkdir -p sub/deeper && cp "$root"/c-tests/*.c sub/deeper/
    git add . && git commit -q -m "first commit"
    for i in $(seq 1 300 | awk 'NR % 7 == 0'); do echo "change $i" >>"f$i.txt"; done
    git rm -q f5.txt && git mv f6.txt moved.txt
    GIT_AUTHOR_DATE="2024-01-02T00:00:00Z" GIT_COMMITTER_DATE="2024-01-02T00:00:00Z" git commit -q -am "second commit"
    git log --stat --format='%H %an %ad %s'
    git diff --stat HEAD~1 HEAD
    git show HEAD~1:sub/deeper/malloc_stress.c | sha256sum
    git gc -q
    git fsck --no-progress 2>&1
    git count-objects -v | grep -v size
}

run_gcc() {
    awk 'BEGIN {
        print "#include <stdio.h>\n#include <string.h>\nstruct s { int a[8]; double d; char name[16]; };";
        for (f = 0; f < 150; f++) {
            printf "static int f%d(struct s *p, int x) {\n  switch (x %% 5) {\n", f;
            for (c = 0; c < 5; c++) printf "  case %d: p->a[%d] += x * %d + %d; break;\n", c, c, f + 1, c;
            print "  }";
            printf "  for (int i = 0; i < 8; i++) p->d += p->a[i] * 0.%d;\n", f + 1;
            printf "  snprintf(p->name, sizeof p->name, \"f%d-%%d\", x);\n  return p->a[x & 7] ^ %d;\n}\n", f, f;
        }
        print "int main(void) {\n  struct s st; memset(&st, 0, sizeof st); long sum = 0;";
        for (f = 0; f < 150; f++) printf "  sum += f%d(&st, %d);\n", f, f * 7;
        print "  printf(\"%ld %.3f %s\\n\", sum, st.d, st.name);\n  return 0;\n}";
    }' >big.c
    gcc -O2 -Wall -S -o - big.c | grep -v '^\s*\.ident' | sha256sum
    gcc -O2 -Wall -o big big.c && ./big
    gcc -std=c11 -O2 -Wall -Wextra -pthread -I"$root/include" -I"$root/c-tests" -S -o - "$root/c-tests/malloc_stress.c" |
        grep -v '^\s*\.ident' | sha256sum
}

awk 'BEGIN { x = 12345; for (i = 0; i < 1000000; i++) { x = (x * 1103515245 + 12345) % 2147483648;
             printf "%d %s%d\n", x % 1000003, substr("abcdefghijklmnopqrstuvwxyz", x % 26 + 1, x % 9 + 1), x % 97 } }' \
    >"$tmp/lines.txt"
run_sort() {
    export LC_ALL=C
    sort "$tmp/lines.txt" | sha256sum
    sort -n -k1,1 -k2 --parallel=2 -S 2M -T . "$tmp/lines.txt" | sha256sum
    sort -u -k2,2 "$tmp/lines.txt" | wc -l
    sort -r "$tmp/lines.txt" | sed -n 1,3p
}

compare python3 run_python
compare git run_git
compare gcc run_gcc
compare sort run_sort

echo "preload-test: $passed passed, $failed failed"
[ "$failed" = 0 ]
