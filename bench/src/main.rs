//! `rallocs-bench`: every rallocs family against glibc, jemalloc, mimalloc and rpmalloc, each
//! (allocator, workload) run in its own child process. See `bench/README.md`.

mod alloc;
mod meter;
mod replay;
mod report;
mod rm;
mod workloads;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meter::{Meter, Sample};
use workloads::{Needs, Workload};

const USAGE: &str = "\
usage: rallocs-bench [run] [options]       the suite (default: every allocator, every workload)
       rallocs-bench replay FILE [options]  replay one trace through every allocator
       rallocs-bench trace-info FILE        the shape of a trace (calls, sizes, peak live, lifetimes)
       rallocs-bench record-cost            cost of one trace record (the recorder, to a file)
       rallocs-bench list                   allocators and workloads

options:
  --alloc A,B        allocators (default: all)
  --workload W,V     workloads, by name or name prefix (e.g. pairs, larson-t8, trace)
  --threads 1,2,8    only threaded workloads with these thread counts (single-thread ones always run)
  --runs N           runs per (allocator, workload); the median is reported (default 7)
  --smoke            tiny sizes, 1 run: checks that everything runs (make test)
  --traces DIR       directory of traces to replay (default: bench/traces)
  --out DIR          report directory (default: target/bench-report)
  --timeout S        seconds before a child run is killed (default 300)
";

/// Scale of the smoke mode relative to the default suite.
const SMOKE_SCALE: f64 = 0.002;

struct Opts {
    allocs: Option<Vec<String>>,
    workloads: Option<Vec<String>>,
    threads: Option<Vec<usize>>,
    runs: usize,
    smoke: bool,
    traces: PathBuf,
    out: PathBuf,
    timeout: u64,
    files: Vec<PathBuf>,
}

fn repo_root() -> PathBuf {
    // bench/ is a workspace member: the repository is its parent.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        allocs: None,
        workloads: None,
        threads: None,
        runs: 7,
        smoke: false,
        traces: repo_root().join("bench/traces"),
        out: repo_root().join("target/bench-report"),
        timeout: 300,
        files: Vec::new(),
    };
    let mut i = 0;
    let list = |s: &str| s.split(',').filter(|x| !x.is_empty()).map(String::from).collect::<Vec<_>>();
    while i < args.len() {
        let a = args[i].as_str();
        let mut val = || {
            i += 1;
            args.get(i).cloned().ok_or_else(|| format!("{a} needs a value"))
        };
        match a {
            "--alloc" => o.allocs = Some(list(&val()?)),
            "--workload" => o.workloads = Some(list(&val()?)),
            "--threads" => {
                o.threads = Some(list(&val()?).iter().map(|t| t.parse().map_err(|_| format!("bad thread count {t}"))).collect::<Result<_, _>>()?)
            }
            "--runs" => o.runs = val()?.parse().map_err(|_| "bad --runs")?,
            "--smoke" => o.smoke = true,
            "--traces" => o.traces = val()?.into(),
            "--out" => o.out = val()?.into(),
            "--timeout" => o.timeout = val()?.parse().map_err(|_| "bad --timeout")?,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => o.files.push(s.into()),
        }
        i += 1;
    }
    if o.smoke {
        o.runs = 1;
    }
    if o.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(o)
}

/// Trace workloads for every `*.rtrace` / `*.rtrace.gz` file in `dir` (or the given files).
fn trace_workloads(files: &[PathBuf]) -> Vec<Workload> {
    files
        .iter()
        .map(|f| {
            let stem = f.file_name().unwrap().to_string_lossy().replace(".rtrace", "").replace(".gz", "");
            let (threads, cross, desc) = match replay::load(f).map_err(|e| e.to_string()).and_then(|d| replay::records(&d)) {
                Ok(recs) => {
                    let p = replay::prepare(&recs);
                    let ops: usize = p.threads.iter().map(Vec::len).sum();
                    (p.threads.len(), p.cross_thread, format!("replay of {} ({} operations, {} threads, {} cross-thread frees)", f.display(), ops, p.threads.len(), p.cross_thread))
                }
                Err(e) => (1, 0, format!("unreadable trace {}: {e}", f.display())),
            };
            Workload {
                name: format!("trace-{stem}"),
                group: "trace replay",
                threads,
                needs: if cross > 0 { Needs::CrossThread } else { Needs::LocalFrees },
                desc,
                trace: Some(f.clone()),
            }
        })
        .collect()
}

fn trace_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| {
        let n = p.to_string_lossy();
        n.ends_with(".rtrace") || n.ends_with(".rtrace.gz")
    });
    v.sort();
    v
}

/// Whether allocator `a` can run workload `w`.
fn eligible(a: &str, w: &Workload) -> bool {
    use alloc::Kind;
    let Some(k) = alloc::kind(a) else { return false };
    match (k, w.needs) {
        (Kind::Handles, n) => n == Needs::Handles,
        (_, Needs::Handles) => k == Kind::Peer || a == "rallocs",
        (Kind::RallocsLocal, Needs::CrossThread) => false,
        (Kind::Stack, _) => w.group != "threads",
        _ => true,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.first().map(String::as_str) {
        Some(c @ ("run" | "replay" | "trace-info" | "record-cost" | "list" | "__child")) => (c.to_string(), &args[1..]),
        _ => ("run".to_string(), &args[..]),
    };
    if cmd == "__child" {
        child(rest);
        return;
    }
    let opts = match parse(rest) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("rallocs-bench: {e}");
            }
            eprint!("{USAGE}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    match cmd.as_str() {
        "trace-info" => {
            if opts.files.is_empty() {
                eprintln!("rallocs-bench trace-info FILE...");
                std::process::exit(2);
            }
            for f in &opts.files {
                match replay::info(f) {
                    Ok(s) => print!("{s}"),
                    Err(e) => {
                        eprintln!("rallocs-bench: {e}");
                        std::process::exit(1);
                    }
                }
            }
        }
        "record-cost" => record_cost(),
        "list" => {
            for (a, k) in alloc::ALLOCATORS {
                println!("allocator {a} ({k:?})");
            }
            let mut ws = workloads::builtin();
            ws.extend(rm::workloads());
            ws.extend(trace_workloads(&trace_files(&opts.traces)));
            for w in ws {
                println!("workload {} [{}]: {}", w.name, w.group, w.desc);
            }
        }
        "replay" => {
            if opts.files.is_empty() {
                eprintln!("rallocs-bench replay FILE...");
                std::process::exit(2);
            }
            let ws = trace_workloads(&opts.files);
            suite(&opts, ws);
        }
        _ => {
            let mut ws = workloads::builtin();
            ws.extend(rm::workloads());
            ws.extend(trace_workloads(&trace_files(&opts.traces)));
            suite(&opts, ws);
        }
    }
}

/// `__child ALLOC WORKLOAD SCALE [TRACE]`: one measured run, printed as one RESULT line.
fn child(args: &[String]) {
    let (a, wname, scale) = (args[0].as_str(), args[1].as_str(), args[2].parse::<f64>().unwrap());
    let mut m = Meter::default();
    let begin = |m: &mut Meter| m.begin();
    if let Some(path) = args.get(3) {
        let data = replay::load(Path::new(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        let recs = replay::records(&data).unwrap_or_else(|e| panic!("{path}: {e}"));
        let prep = replay::prepare(&recs);
        drop(recs);
        drop(data);
        begin(&mut m);
        with_alloc!(a, al => { al.thread_start(); replay::replay(al, &prep, &mut m) }, panic!("unknown allocator {a}"));
    } else if wname.starts_with("rm-") {
        begin(&mut m);
        with_handles!(a, r => rm::run(r, wname, scale, &mut m));
    } else {
        let w = workloads::builtin().into_iter().find(|w| w.name == wname).unwrap_or_else(|| panic!("unknown workload {wname}"));
        begin(&mut m);
        with_alloc!(a, al => { al.thread_start(); workloads::run(al, &w, scale, &mut m) }, panic!("unknown allocator {a}"));
    }
    println!("{}", m.sample.to_line());
}

/// Runs `$body` with `$r` bound to the handle allocator called `$name`: rmalloc itself, or the
/// adapter over a malloc-style allocator.
#[macro_export]
macro_rules! with_handles {
    ($name:expr, $r:ident => $body:expr) => {{
        // RALLOCS-RMALLOC-DISPATCH
        if $name == "rmalloc" {
            let $r = &$crate::rm::Rmalloc;
            $body
        } else {
            with_alloc!($name, al => { al.thread_start(); let $r = &$crate::rm::Wrap(al); $body }, panic!("unknown allocator {}", $name))
        }
    }};
}

fn run_child(exe: &Path, a: &str, w: &Workload, scale: f64, timeout: u64, first: bool) -> Result<Sample, String> {
    let mut cmd = Command::new(exe);
    if first {
        cmd.env("RALLOCS_BENCH_BUDGET", "1");
    } else {
        cmd.env_remove("RALLOCS_BENCH_BUDGET");
    }
    cmd.arg("__child").arg(a).arg(&w.name).arg(scale.to_string());
    if let Some(t) = &w.trace {
        cmd.arg(t);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(_) => break,
            None if t0.elapsed() > Duration::from_secs(timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {timeout} s"));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().find_map(Sample::from_line) {
        Some(s) if out.status.success() => Ok(s),
        _ => {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!("{} {}", out.status, err.lines().last().unwrap_or("")).trim().to_string())
        }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // SAFETY: gnu_get_libc_version returns a static string.
    let glibc = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) }.to_string_lossy().into_owned();
    format!("{cpu}, {n} vCPU, glibc {glibc}")
}

extern "C" {
    fn gnu_get_libc_version() -> *const libc::c_char;
    fn mi_version() -> libc::c_int;
}

fn mimalloc_version() -> String {
    // SAFETY: mi_version has no preconditions.
    let v = unsafe { mi_version() };
    format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
}

fn now_utc() -> String {
    Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

fn suite(opts: &Opts, all: Vec<Workload>) {
    let matches = |w: &Workload| {
        let by_name = opts.workloads.as_ref().map_or(true, |ws| ws.iter().any(|p| w.name == *p || w.name.starts_with(p.as_str())));
        let by_threads = opts.threads.as_ref().map_or(true, |ts| w.group != "threads" || ts.contains(&w.threads));
        by_name && by_threads
    };
    let workloads: Vec<Workload> = all.into_iter().filter(matches).collect();
    let allocs: Vec<String> = match &opts.allocs {
        Some(v) => {
            for a in v {
                if alloc::kind(a).is_none() {
                    eprintln!("rallocs-bench: unknown allocator {a} (see `rallocs-bench list`)");
                    std::process::exit(2);
                }
            }
            v.clone()
        }
        None => alloc::ALLOCATORS.iter().map(|(a, _)| a.to_string()).collect(),
    };
    let scale = if opts.smoke { SMOKE_SCALE } else { 1.0 };
    let mut cells: Vec<report::Cell> = Vec::new();
    for (wi, w) in workloads.iter().enumerate() {
        for a in &allocs {
            if eligible(a, w) {
                cells.push(report::Cell { alloc: a.clone(), workload: wi, samples: Vec::new(), error: None });
            }
        }
    }
    if cells.is_empty() {
        eprintln!("rallocs-bench: nothing to run (check --alloc, --workload and --threads)");
        std::process::exit(2);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let total = cells.len() * opts.runs;
    let t0 = Instant::now();
    let mut done = 0;
    // Run r of every cell before run r+1 of any, so that slow drifts of the machine spread over all.
    for run in 0..opts.runs {
        for c in cells.iter_mut() {
            let w = &workloads[c.workload];
            progress(done, total, t0, &c.alloc, &w.name);
            match run_child(&exe, &c.alloc, w, scale, opts.timeout, run == 0) {
                Ok(s) => c.samples.push(s),
                Err(e) => c.error = Some(e),
            }
            done += 1;
        }
    }
    progress(done, total, t0, "", "done");
    eprintln!();
    let results = report::Results { workloads: &workloads, allocs, cells };
    let table = results.table();
    println!("{table}");
    println!("{}", results.summary());
    let header = format!(
        "# rallocs benchmark report\n\n- date: {}\n- machine: {}\n- command: `{}\n- runs per cell: {} (median shown, min-max in parentheses); every run in its own process\n- peers: glibc (dlsym on libc.so.6), jemalloc 5.3 (tikv-jemalloc-sys, `_rjem_` prefix), mimalloc {} (libmimalloc-sys), rpmalloc 1.4 (rpmalloc-sys 0.2.3)\n- peak RSS: the kernel's peak resident set (VmHWM, reset when the workload starts, before its set-up) minus the resident set at that point: the workload's live objects, the allocator's overheads and the harness's own arrays (the same for every allocator); rmalloc's memory figure is instead the smallest budget in which it completes; faults: minor page faults in the timed section\n- time x glibc / x best peer: median time divided by glibc's / by the fastest of glibc, jemalloc, mimalloc, rpmalloc (below 1 is faster)\n",
        now_utc(),
        machine(),
        {
            let a = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
            if a.is_empty() { "rallocs-bench` (the default suite, as `make bench` runs it)".to_string() } else { format!("rallocs-bench {a}`") }
        },
        opts.runs,
        mimalloc_version()
    );
    match results.write(&opts.out, &header) {
        Ok(()) => eprintln!("report: {}/report.md (results.csv, time.svg, memory.svg)", opts.out.display()),
        Err(e) => eprintln!("rallocs-bench: cannot write the report in {}: {e}", opts.out.display()),
    }
    let failed: Vec<String> = results.cells.iter().filter(|c| c.error.is_some()).map(|c| format!("{} {}: {}", c.alloc, results.workloads[c.workload].name, c.error.as_deref().unwrap())).collect();
    if !failed.is_empty() {
        eprintln!("rallocs-bench: {} failed run(s):", failed.len());
        for f in &failed {
            eprintln!("  {f}");
        }
        std::process::exit(1);
    }
}

fn progress(done: usize, total: usize, t0: Instant, a: &str, w: &str) {
    let width = 30;
    let filled = done * width / total.max(1);
    let el = t0.elapsed().as_secs_f64();
    let eta = if done > 0 { el / done as f64 * (total - done) as f64 } else { 0.0 };
    let mut e = std::io::stderr().lock();
    if !std::io::IsTerminal::is_terminal(&e) {
        // In a log: one line every tenth of the way.
        if done == total || done * 10 / total.max(1) != (done + 1) * 10 / total.max(1) {
            let _ = writeln!(e, "{done}/{total} runs, {el:.0} s");
        }
        return;
    }
    let _ = write!(
        e,
        "\r[{}{}] {done}/{total} {:>4.0}s eta {:>4.0}s  {a:<9} {w:<24}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        el,
        eta
    );
    let _ = e.flush();
}

/// Measures what one trace record costs (the recorder writing to a file in the temp directory), and
/// what a call costs when tracing is off.
fn record_cost() {
    use rallocs::trace;
    let n = 10_000_000usize;
    let t = Instant::now();
    let mut on = 0usize;
    for _ in 0..n {
        on += trace::enabled() as usize;
        std::hint::black_box(&on);
    }
    let off_ns = t.elapsed().as_nanos() as f64 / n as f64;
    let path = std::env::temp_dir().join(format!("rallocs-record-cost-{}.rtrace", std::process::id()));
    let _ = std::fs::remove_file(&path);
    assert!(trace::start(path.as_os_str().as_encoded_bytes()), "cannot trace to {}", path.display());
    let t = Instant::now();
    for i in 0..n {
        let p = (0x5555_0000_0000usize + (i % 4096) * 48) as *mut u8;
        if i % 2 == 0 {
            trace::record(trace::Op::Malloc, p, std::ptr::null_mut(), 16 + i % 200, 0);
        } else {
            trace::record(trace::Op::Free, std::ptr::null_mut(), p, 0, 0);
        }
    }
    let written = trace::stop();
    let on_ns = t.elapsed().as_nanos() as f64 / n as f64;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&path);
    println!("tracing off: {off_ns:.2} ns per check (one relaxed load)");
    println!("tracing on:  {on_ns:.1} ns per record, {:.2} bytes per record ({written} records, writes included)", size as f64 / written.max(1) as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_malloc_style_allocator_runs_every_builtin_workload_and_only_those_wrap_into_handles() {
        let ws = workloads::builtin();
        let rm = rm::workloads();
        for (a, k) in alloc::ALLOCATORS {
            for w in &ws {
                let expect = match k {
                    alloc::Kind::Handles => false,
                    alloc::Kind::RallocsLocal => w.needs != Needs::CrossThread,
                    alloc::Kind::Stack => w.threads == 1 && !w.name.contains("-t"),
                    _ => true,
                };
                assert_eq!(eligible(a, w), expect, "{a} {}", w.name);
            }
            for w in &rm {
                let expect = *k == alloc::Kind::Peer || *a == "rallocs" || *k == alloc::Kind::Handles;
                assert_eq!(eligible(a, w), expect, "{a} {}", w.name);
            }
        }
        assert!(!eligible("no-such-allocator", &ws[0]));
    }

    #[test]
    fn options_parse_and_bad_ones_are_refused() {
        let args: Vec<String> = ["--alloc", "glibc,rallocs", "--runs", "5", "--threads", "2,8", "x.rtrace"].iter().map(|s| s.to_string()).collect();
        let o = parse(&args).unwrap();
        assert_eq!(o.allocs.unwrap(), ["glibc", "rallocs"]);
        assert_eq!((o.runs, o.threads.unwrap()), (5, vec![2, 8]));
        assert_eq!(o.files, [PathBuf::from("x.rtrace")]);
        assert!(parse(&["--runs".into(), "0".into()]).is_err());
        assert!(parse(&["--bogus".into()]).is_err());
        assert!(parse(&["--runs".into()]).is_err());
        assert_eq!(parse(&["--smoke".into(), "--runs".into(), "4".into()]).unwrap().runs, 1);
    }

    #[test]
    fn workload_names_are_unique() {
        let mut names: Vec<String> = workloads::builtin().into_iter().chain(rm::workloads()).map(|w| w.name).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
