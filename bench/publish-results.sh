#!/usr/bin/env bash
# Copies the last `make bench` report into bench/results/ and its summary tables into README.md
# (between the bench-table markers). Run after `make bench`, then commit.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rep=$root/target/bench-report
mkdir -p "$root/bench/results"
cp "$rep/report.md" "$rep/results.csv" "$rep/time.svg" "$rep/memory.svg" "$root/bench/results/"
python3 - "$root/README.md" "$rep/report.md" <<'PY'
import re, sys
readme, report = sys.argv[1], sys.argv[2]
r = open(report).read()
head = [l for l in r.splitlines() if l.startswith("- date:") or l.startswith("- machine:") or l.startswith("- command:")]
summary = r[r.index("## Summary"):r.index("![time]")].replace("## Summary\n", "").replace("### ", "#### ")
block = ("From the last `make bench` run (" + "; ".join(h[2:] for h in head) + "). Full table, charts and "
         "every workload's parameters: [bench/results/report.md](bench/results/report.md).\n\n" + summary.strip() + "\n")
s = open(readme).read()
s = re.sub(r"(<!-- bench-table-start -->\n).*?(<!-- bench-table-end -->)", lambda m: m.group(1) + block + m.group(2), s, flags=re.S)
open(readme, "w").write(s)
PY
echo "bench/results/ and README.md updated"
