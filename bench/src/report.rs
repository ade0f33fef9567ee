//! Results: medians, the terminal table, and the report in `target/bench-report/` (report.md,
//! results.csv, time.svg, memory.svg).

use std::fmt::Write as _;
use std::path::Path;

use crate::alloc;
use crate::meter::Sample;
use crate::workloads::Workload;

/// Every sample of one (allocator, workload) pair.
pub struct Cell {
    /// Allocator name.
    pub alloc: String,
    /// Index into the workload list.
    pub workload: usize,
    /// One sample per run (failed runs are left out).
    pub samples: Vec<Sample>,
    /// Why a run failed, if one did.
    pub error: Option<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians of one cell.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Median, min and max time in ms.
    pub ms: (f64, f64, f64),
    /// Million operations per second at the median time.
    pub mops: f64,
    /// Median peak RSS above the start of the timed section, MiB.
    pub peak_mib: f64,
    /// Median minor faults.
    pub faults: f64,
    /// Median of each extra.
    pub extra: Vec<(String, f64)>,
}

impl Cell {
    /// Medians (None when no run succeeded).
    pub fn summary(&self) -> Option<Summary> {
        if self.samples.is_empty() {
            return None;
        }
        let t: Vec<f64> = self.samples.iter().map(|s| s.time_ns as f64 / 1e6).collect();
        let ms = (median(t.clone()), t.iter().cloned().fold(f64::INFINITY, f64::min), t.iter().cloned().fold(0.0, f64::max));
        let ops = median(self.samples.iter().map(|s| s.ops as f64).collect());
        let mut extra = Vec::new();
        let mut keys: Vec<&String> = Vec::new();
        for s in &self.samples {
            for (k, _) in &s.extra {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        for k in keys {
            extra.push((k.clone(), median(self.samples.iter().filter_map(|s| s.get(k)).collect())));
        }
        Some(Summary {
            ms,
            mops: ops / (ms.0 * 1e3),
            peak_mib: median(self.samples.iter().map(|s| s.peak_kib as f64 / 1024.0).collect()),
            faults: median(self.samples.iter().map(|s| s.minflt as f64).collect()),
            extra,
        })
    }
}

/// The memory figure compared across allocators: peak RSS, or for rmalloc the smallest budget.
fn memory_mib(s: &Summary) -> f64 {
    match s.extra.iter().find(|(k, _)| k == "budget") {
        Some((_, b)) if *b > 0.0 => b / 1048576.0,
        _ => s.peak_mib,
    }
}

/// A finished suite.
pub struct Results<'a> {
    /// The workloads, in order.
    pub workloads: &'a [Workload],
    /// The allocators, in order.
    pub allocs: Vec<String>,
    /// Every cell that ran.
    pub cells: Vec<Cell>,
}

struct Row {
    alloc: String,
    s: Option<Summary>,
    err: Option<String>,
    x_glibc: Option<f64>,
    x_best: Option<f64>,
    mem_x_glibc: Option<f64>,
}

impl Results<'_> {
    fn rows(&self, wi: usize) -> Vec<Row> {
        let cells: Vec<&Cell> = self.allocs.iter().filter_map(|a| self.cells.iter().find(|c| c.workload == wi && &c.alloc == a)).collect();
        let sums: Vec<Option<Summary>> = cells.iter().map(|c| c.summary()).collect();
        let glibc = cells.iter().zip(&sums).find(|(c, _)| c.alloc == "glibc").and_then(|(_, s)| s.clone());
        let best = cells
            .iter()
            .zip(&sums)
            .filter(|(c, _)| alloc::is_peer(&c.alloc))
            .filter_map(|(_, s)| s.as_ref().map(|s| s.ms.0))
            .fold(f64::INFINITY, f64::min);
        cells
            .iter()
            .zip(sums)
            .map(|(c, s)| Row {
                alloc: c.alloc.clone(),
                x_glibc: s.as_ref().zip(glibc.as_ref()).map(|(s, g)| s.ms.0 / g.ms.0),
                x_best: s.as_ref().filter(|_| best.is_finite()).map(|s| s.ms.0 / best),
                mem_x_glibc: s.as_ref().zip(glibc.as_ref().filter(|g| memory_mib(g) >= 1.0)).map(|(s, g)| memory_mib(s) / memory_mib(g)),
                err: c.error.clone(),
                s,
            })
            .collect()
    }

    /// The table for the terminal and the markdown report (the same text, in markdown table syntax).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut group = "";
        for (wi, w) in self.workloads.iter().enumerate() {
            let rows = self.rows(wi);
            if rows.is_empty() {
                continue;
            }
            if w.group != group {
                group = w.group;
                let _ = writeln!(out, "\n### {group}\n");
                let extra = if group.starts_with("rmalloc") {
                    " lock+unlock ns | memory needed MiB | x live peak | at that budget: time, compactions, moved, longest pause |"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "| workload | allocator | time ms (min-max) | Mops/s | peak RSS MiB | faults | time x glibc | time x best peer | mem x glibc |{extra}"
                );
                let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|{}", if extra.is_empty() { "" } else { "---|---|---|---|" });
            }
            for r in rows {
                let f = |v: Option<f64>| v.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into());
                match &r.s {
                    Some(s) => {
                        let _ = write!(
                            out,
                            "| {} | {} | {:.1} ({:.1}-{:.1}) | {:.1} | {:.1} | {:.0} | {} | {} | {} |",
                            w.name, r.alloc, s.ms.0, s.ms.1, s.ms.2, s.mops, s.peak_mib, s.faults,
                            f(r.x_glibc), f(r.x_best), f(r.mem_x_glibc)
                        );
                        if w.group.starts_with("rmalloc") {
                            let get = |k: &str| s.extra.iter().find(|(n, _)| n == k).map(|(_, v)| *v).unwrap_or(f64::NAN);
                            let live = get("live_peak") / 1048576.0;
                            let mem = memory_mib(s);
                            let _ = write!(out, " {:.1} | {:.1} | {:.2}x |", get("lock_ns"), mem, mem / live);
                            if get("budget_ms").is_finite() {
                                let _ = write!(
                                    out,
                                    " {:.0} ms, {:.0}, {:.1} MiB, {:.0} us |",
                                    get("budget_ms"), get("compactions"), get("moved_mib"), get("max_pause_us")
                                );
                            } else {
                                let _ = write!(out, " - |");
                            }
                        }
                        let _ = writeln!(out);
                    }
                    None => {
                        let _ = writeln!(out, "| {} | {} | failed: {} | | | | | | |", w.name, r.alloc, r.err.as_deref().unwrap_or("?"));
                    }
                }
            }
        }
        out
    }

    /// One row per workload, one column per allocator: glibc's median (time in ms, or memory in MiB)
    /// and every other allocator's ratio to it (below 1: faster, or less memory).
    pub fn pivot(&self, memory: bool) -> String {
        let mut out = String::new();
        let unit = if memory { "MiB" } else { "ms" };
        let _ = write!(out, "| workload | glibc {unit} |");
        for a in self.allocs.iter().filter(|a| a.as_str() != "glibc") {
            let _ = write!(out, " {a} |");
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "|---|---:|{}", "---:|".repeat(self.allocs.len().saturating_sub(1)));
        for (wi, w) in self.workloads.iter().enumerate() {
            let rows = self.rows(wi);
            let val = |s: &Summary| if memory { memory_mib(s) } else { s.ms.0 };
            let Some(g) = rows.iter().find(|r| r.alloc == "glibc").and_then(|r| r.s.as_ref()).map(val) else { continue };
            let _ = write!(out, "| {} | {:.1} |", w.name, g);
            for a in self.allocs.iter().filter(|a| a.as_str() != "glibc") {
                let cell = match rows.iter().find(|r| &r.alloc == a) {
                    Some(Row { s: Some(s), .. }) if !memory || g >= 1.0 => format!("{:.2}x", val(s) / g),
                    Some(Row { s: Some(s), .. }) => format!("{:.1} MiB", val(s)),
                    Some(Row { err: Some(_), .. }) => "failed".into(),
                    _ => "".into(),
                };
                let _ = write!(out, " {cell} |");
            }
            let _ = writeln!(out);
        }
        out
    }

    /// Where each rallocs allocator wins and loses: geometric means of its time ratios, and its best
    /// and worst workloads against the best peer.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for a in &self.allocs {
            if alloc::is_peer(a) {
                continue;
            }
            let mut v: Vec<(String, f64, f64, Option<f64>)> = Vec::new();
            for (wi, w) in self.workloads.iter().enumerate() {
                if let Some(r) = self.rows(wi).into_iter().find(|r| &r.alloc == a) {
                    if let (Some(g), Some(b)) = (r.x_glibc, r.x_best) {
                        v.push((w.name.clone(), g, b, r.mem_x_glibc));
                    }
                }
            }
            if v.is_empty() {
                continue;
            }
            let gm = |f: &dyn Fn(&(String, f64, f64, Option<f64>)) -> f64| {
                (v.iter().map(|x| f(x).ln()).sum::<f64>() / v.len() as f64).exp()
            };
            let faster = v.iter().filter(|x| x.2 < 1.0).count();
            let _ = writeln!(
                out,
                "- **{a}** ({} workloads): time {:.2}x glibc and {:.2}x the best peer (geometric means); faster than every peer in {faster}.",
                v.len(),
                gm(&|x| x.1),
                gm(&|x| x.2)
            );
            // Against each peer: geometric mean of the time ratio and the workloads won.
            let mut per_peer = Vec::new();
            for p in self.allocs.iter().filter(|p| alloc::is_peer(p)) {
                let mut ratios = Vec::new();
                for wi in 0..self.workloads.len() {
                    let rows = self.rows(wi);
                    let t = |name: &str| rows.iter().find(|r| r.alloc == name).and_then(|r| r.s.as_ref()).map(|s| s.ms.0);
                    if let (Some(x), Some(y)) = (t(a), t(p)) {
                        ratios.push(x / y);
                    }
                }
                if !ratios.is_empty() {
                    let g = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
                    let won = ratios.iter().filter(|r| **r < 1.0).count();
                    per_peer.push(format!("{p} {g:.2}x (faster in {won}/{})", ratios.len()));
                }
            }
            let _ = writeln!(out, "  time against each peer (geometric mean): {}.", per_peer.join(", "));
            v.sort_by(|x, y| x.2.partial_cmp(&y.2).unwrap());
            let list = |xs: &[(String, f64, f64, Option<f64>)]| {
                xs.iter().map(|x| format!("{} {:.2}x", x.0, x.2)).collect::<Vec<_>>().join(", ")
            };
            let n = (v.len() / 2).clamp(1, 4);
            let _ = writeln!(out, "  best vs best peer: {}; worst: {}.", list(&v[..n]), list(&v[v.len() - n..]));
        }
        out
    }

    /// Raw samples, one line per run.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "allocator,workload,group,threads,run,time_ns,ops,peak_kib,minflt,lock_ns,live_peak,budget,budget_ms,compactions,moved_mib,max_pause_us\n",
        );
        for c in &self.cells {
            let w = &self.workloads[c.workload];
            for (i, s) in c.samples.iter().enumerate() {
                let g = |k: &str| s.get(k).map(|v| v.to_string()).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    c.alloc, w.name, w.group, w.threads, i, s.time_ns, s.ops, s.peak_kib, s.minflt,
                    g("lock_ns"), g("live_peak"), g("budget"), g("budget_ms"), g("compactions"), g("moved_mib"),
                    g("max_pause_us")
                );
            }
        }
        out
    }

    /// A horizontal grouped bar chart of `metric` relative to glibc (log2 axis, 1/8x to 8x).
    /// Workloads whose glibc figure is below `min_glibc` are left out (ratios of tiny numbers).
    pub fn svg(&self, title: &str, min_glibc: f64, metric: impl Fn(&Summary) -> f64) -> String {
        const COLORS: [&str; 10] =
            ["#777777", "#1f77b4", "#2ca02c", "#9467bd", "#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];
        let bar_h = 7.0;
        let left = 150.0;
        let plot_w = 520.0;
        let mut y = 60.0;
        let mut body = String::new();
        let x_of = |r: f64| left + plot_w / 2.0 + (r.log2().clamp(-3.0, 3.0) / 3.0) * (plot_w / 2.0);
        for (wi, w) in self.workloads.iter().enumerate() {
            let rows = self.rows(wi);
            let glibc = rows.iter().find(|r| r.alloc == "glibc").and_then(|r| r.s.as_ref().map(&metric));
            let Some(g) = glibc.filter(|g| *g > 0.0 && *g >= min_glibc) else { continue };
            let n = rows.len() as f64;
            let _ = writeln!(body, r#"<text x="{}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"#, left - 6.0, y + n * bar_h / 2.0 + 4.0, w.name);
            for r in &rows {
                let ci = self.allocs.iter().position(|a| a == &r.alloc).unwrap_or(0) % COLORS.len();
                if let Some(s) = &r.s {
                    let ratio = metric(s) / g;
                    let (x0, x1) = (x_of(1.0), x_of(ratio.max(1e-9)));
                    let _ = writeln!(
                        body,
                        r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {:.2}x glibc</title></rect>"#,
                        x0.min(x1), y, (x1 - x0).abs().max(0.5), bar_h - 1.0, COLORS[ci], w.name, r.alloc, ratio
                    );
                }
                y += bar_h;
            }
            y += 6.0;
        }
        let height = y + 30.0;
        let mut svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height:.0}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="20" font-size="14" font-weight="bold">{title}</text>
"#,
            left + plot_w + 130.0
        );
        for (i, r) in [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0].iter().enumerate() {
            let x = x_of(*r);
            let _ = writeln!(
                svg,
                r#"<line x1="{x:.1}" y1="45" x2="{x:.1}" y2="{:.0}" stroke="{}" stroke-width="{}"/><text x="{x:.1}" y="40" font-size="10" text-anchor="middle">{}</text>"#,
                y,
                if i == 3 { "#000" } else { "#ccc" },
                if i == 3 { 1.5 } else { 1.0 },
                if *r < 1.0 { format!("1/{}x", 1.0 / r) } else { format!("{r}x") }
            );
        }
        svg.push_str(&body);
        for (i, a) in self.allocs.iter().enumerate() {
            let yy = 60.0 + i as f64 * 16.0;
            let _ = writeln!(
                svg,
                r#"<rect x="{}" y="{yy}" width="10" height="10" fill="{}"/><text x="{}" y="{}" font-size="11">{a}</text>"#,
                left + plot_w + 20.0, COLORS[i % COLORS.len()], left + plot_w + 34.0, yy + 9.0
            );
        }
        let _ = writeln!(svg, r#"<text x="10" y="{:.0}" font-size="10">relative to glibc in the same run, log scale, clamped at 1/8x and 8x; shorter is better (left of the black line: less than glibc)</text>"#, height - 10.0);
        svg.push_str("</svg>\n");
        svg
    }

    /// Writes report.md, results.csv, time.svg and memory.svg into `dir`.
    pub fn write(&self, dir: &Path, header: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("results.csv"), self.csv())?;
        std::fs::write(dir.join("time.svg"), self.svg("Time per workload (median)", 0.0, |s| s.ms.0))?;
        std::fs::write(dir.join("memory.svg"), self.svg(
                "Memory per workload (peak RSS above start; rmalloc: smallest budget; workloads where glibc needs 1 MiB or more)",
                1.0,
                |s| memory_mib(s).max(0.01),
            ))?;
        let mut md = String::new();
        md.push_str(header);
        md.push_str("\n## Summary\n\n");
        md.push_str(&self.summary());
        md.push_str("\n### Time (glibc's median in ms; the others as a ratio to it, below 1 is faster)\n\n");
        md.push_str(&self.pivot(false));
        md.push_str("\n### Memory (glibc's in MiB; the others as a ratio to it; rmalloc: its smallest budget)\n\n");
        md.push_str(&self.pivot(true));
        md.push_str("\n![time](time.svg)\n\n![memory](memory.svg)\n\n## Full results\n");
        md.push_str(&self.table());
        md.push_str("\n## Workloads\n\n| workload | threads | parameters |\n|---|---|---|\n");
        for w in self.workloads {
            let _ = writeln!(md, "| {} | {} | {} |", w.name, w.threads, w.desc);
        }
        std::fs::write(dir.join("report.md"), md)
    }
}
