#!/usr/bin/env bash
# Re-records the shipped traces in bench/traces/ with the release library (make lib first).
# Needs python3, gcc and git; the C source and the git repository come from crates that the
# harness build already downloaded (rpmalloc-sys, tikv-jemalloc-sys).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
lib=$root/build/librallocs.so
out=${TRACE_OUT:-$root/bench/traces}   # where the .rtrace.gz files go
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
reg=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ | head -n 1)
rp=$(ls -d "$reg"rpmalloc-sys-0.2.3*/rpmalloc/rpmalloc | head -n 1)
je=$(ls -d "$reg"tikv-jemalloc-sys-0.6.1*/jemalloc | head -n 1)

RALLOCS_TRACE=$work/py PYTHONMALLOC=malloc LD_PRELOAD=$lib /usr/bin/python3 "$root/bench/traces/py-workload.py" >/dev/null
gzip -9c "$work/py" > "$out/python3-json.rtrace.gz"

RALLOCS_TRACE=$work/gcc LD_PRELOAD=$lib gcc -O2 -c "$rp/rpmalloc.c" -o "$work/x.o"
# The driver writes $work/gcc, cc1 and as write $work/gcc.<pid>: keep the largest (cc1).
gzip -9c "$(ls -S "$work"/gcc.* | head -n 1)" > "$out/gcc-cc1.rtrace.gz"

cp -r "$je" "$work/jerepo"
git -C "$work/jerepo" init -q
git -C "$work/jerepo" add -A
git -C "$work/jerepo" -c user.name=bench -c user.email=bench@localhost commit -qm import
RALLOCS_TRACE=$work/git LD_PRELOAD=$lib git -C "$work/jerepo" grep --threads=4 -n -e malloc -e free HEAD >/dev/null
gzip -9c "$work/git" > "$out/git-grep.rtrace.gz"
ls -l "$out"
