//! The malloc-style workloads, each generic over [`Alloc`] so that it is compiled once per allocator.
//! Sizes are scaled by `scale` (1.0 for the default suite, tiny for `--smoke`); the parameters below
//! are those of the default suite and are printed in the report.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Condvar, Mutex};

use crate::alloc::Alloc;
use crate::meter::{Meter, Rng};

/// What a workload needs from an allocator.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Needs {
    /// Blocks are freed by the thread that allocated them: every malloc-style allocator and region.
    LocalFrees,
    /// Blocks move between threads: not region.
    CrossThread,
    /// Handle workload (rmalloc and the handle adapter).
    Handles,
}

/// One workload of the suite.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Unique name, e.g. `larson-t8`.
    pub name: String,
    /// The table section it belongs to.
    pub group: &'static str,
    /// Threads it runs.
    pub threads: usize,
    /// Its parameters, in words, for the report.
    pub desc: String,
    /// What it needs from an allocator.
    pub needs: Needs,
    /// The trace file it replays, for trace workloads.
    pub trace: Option<std::path::PathBuf>,
}

/// Threads of the threaded workloads: 1, 2 (the cores of this machine type) and 4x the cores.
pub const THREADS: [usize; 3] = [1, 2, 8];
/// Block sizes of the pair workloads.
pub const PAIR_SIZES: [usize; 5] = [16, 64, 256, 1024, 4096];
/// Live objects under the pair workloads.
pub const PAIR_LIVE: usize = 10_000;
/// Pairs per pair workload.
pub const PAIR_OPS: usize = 10_000_000;
/// Live-object counts of the FIFO/LIFO/random workloads.
pub const PATTERN_LIVE: [usize; 2] = [1_000, 1_000_000];
/// Alloc/free pairs per FIFO/LIFO/random workload.
pub const PATTERN_OPS: usize = 4_000_000;

fn w(name: String, group: &'static str, threads: usize, needs: Needs, desc: String) -> Workload {
    Workload { name, group, threads, desc, needs, trace: None }
}

/// Every built-in workload (trace workloads are added by the caller).
pub fn builtin() -> Vec<Workload> {
    let mut v = Vec::new();
    for s in PAIR_SIZES {
        v.push(w(
            format!("pairs-{s}"),
            "single-thread pairs",
            1,
            Needs::LocalFrees,
            format!("{PAIR_OPS} malloc({s})+write+free pairs over {PAIR_LIVE} live {s}-byte objects; ops = pairs"),
        ));
    }
    for n in PATTERN_LIVE {
        let k = if n >= 1_000_000 { "1m".to_string() } else { format!("{}k", n / 1000) };
        v.push(w(format!("fifo-{k}"), "patterns", 1, Needs::LocalFrees, format!(
            "FIFO queue of {n} live objects of 16-256 B: allocate one, free the oldest; {PATTERN_OPS} pairs")));
        v.push(w(format!("lifo-{k}"), "patterns", 1, Needs::LocalFrees, format!(
            "LIFO stack: push up to {n} objects of 16-256 B then pop them all, repeated; {PATTERN_OPS} pairs")));
        v.push(w(format!("random-{k}"), "patterns", 1, Needs::LocalFrees, format!(
            "{n} live objects of 16-256 B, free a random one and allocate in its place; {PATTERN_OPS} pairs")));
    }
    v.push(w("process".into(), "patterns", 1, Needs::LocalFrees,
        "bimp seed's process(): a=malloc(100); b=malloc(200); recurse twice (depth 10); free(a); free(b) \
         (a before b); 2,000 trees; ops = mallocs+frees".into()));
    v.push(w("realloc-grow".into(), "patterns", 1, Needs::LocalFrees,
        "grow a buffer from 16 B to 64 KiB by 32-byte realloc steps (a string being built), 2,000 buffers, \
         1,000 small live objects below; ops = reallocs".into()));
    for t in THREADS {
        v.push(w(format!("threadtest-t{t}"), "threads", t, Needs::LocalFrees, format!(
            "{t} threads; 10,000 rounds split among them of: allocate 1,000 x 64 B, write, free all; ops = mallocs+frees")));
    }
    for t in THREADS {
        v.push(w(format!("larson-t{t}"), "threads", t, Needs::CrossThread, format!(
            "{t} threads, 2,000 slots each, sizes 16-512 B, replace a random slot; every 1/10 of the run the \
             slot sets rotate between threads (frees of other threads' blocks); 8,000,000 replacements in all")));
    }
    for t in THREADS {
        v.push(w(format!("cache-scratch-t{t}"), "threads", t, Needs::CrossThread, format!(
            "{t} threads; main thread allocates {t} adjacent 8-byte objects, each thread frees one, then 200,000 \
             times in all: malloc(8), 1,000 writes to it, free; time includes the writes (passive false sharing)")));
    }
    for t in THREADS {
        v.push(w(format!("cache-thrash-t{t}"), "threads", t, Needs::LocalFrees, format!(
            "{t} threads; 200,000 times in all: malloc(8), 1,000 writes to it, free (active false sharing)")));
    }
    for t in [2, 8] {
        v.push(w(format!("xmalloc-t{t}"), "threads", t, Needs::CrossThread, format!(
            "{} producers allocate 4,000,000 blocks of 16-256 B in all, in batches of 256, {} consumers free them",
            t / 2, t / 2)));
    }
    for t in THREADS {
        v.push(w(format!("mixed-t{t}"), "threads", t, Needs::LocalFrees, format!(
            "{t} threads, 2,000 slots each, random replacement, sizes 80% 16-256 B, 15% 256 B-8 KiB, \
             4% 8-128 KiB, 1% 128 KiB-1 MiB, every page of a block touched; 400,000 replacements in all")));
    }
    v
}

fn scaled(n: usize, scale: f64) -> usize {
    ((n as f64 * scale) as usize).max(1)
}

#[inline(always)]
unsafe fn touch(p: *mut u8, v: u8) {
    std::ptr::write_volatile(p, v);
}

#[inline(always)]
unsafe fn must<T>(p: *mut T) -> *mut T {
    if p.is_null() {
        oom()
    }
    p
}

#[cold]
fn oom() -> ! {
    eprintln!("allocation failed");
    std::process::exit(3)
}

/// Runs `f(thread index)` on `n` threads started together; the allocator's per-thread hooks run on
/// each.
fn on_threads<A: Alloc>(a: &'static A, n: usize, f: impl Fn(usize) + Sync) {
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        for t in 0..n {
            let (f, barrier) = (&f, &barrier);
            s.spawn(move || {
                a.thread_start();
                barrier.wait();
                f(t);
                a.thread_end();
            });
        }
    });
}

/// Runs the built-in workload `w` through `a`, timing it with `m`.
pub fn run<A: Alloc>(a: &'static A, w: &Workload, scale: f64, m: &mut Meter) {
    let name = w.name.as_str();
    let t = w.threads;
    unsafe {
        if let Some(s) = name.strip_prefix("pairs-") {
            pairs(a, s.parse().unwrap(), scale, m)
        } else if name.starts_with("fifo-") || name.starts_with("lifo-") || name.starts_with("random-") {
            let live = if name.ends_with("1m") { PATTERN_LIVE[1] } else { PATTERN_LIVE[0] };
            pattern(a, &name[..4], scaled(live, scale.sqrt()), scale, m)
        } else if name == "process" {
            process(a, scale, m)
        } else if name == "realloc-grow" {
            realloc_grow(a, scale, m)
        } else if name.starts_with("threadtest-") {
            threadtest(a, t, scale, m)
        } else if name.starts_with("larson-") {
            larson(a, t, scale, m)
        } else if name.starts_with("cache-scratch-") {
            cache(a, t, true, scale, m)
        } else if name.starts_with("cache-thrash-") {
            cache(a, t, false, scale, m)
        } else if name.starts_with("xmalloc-") {
            xmalloc(a, t, scale, m)
        } else if name.starts_with("mixed-") {
            mixed(a, t, scale, m)
        } else {
            panic!("unknown workload {name}")
        }
    }
}

unsafe fn pairs<A: Alloc>(a: &'static A, size: usize, scale: f64, m: &mut Meter) {
    let live: Vec<*mut u8> = (0..scaled(PAIR_LIVE, scale)).map(|_| must(a.malloc(size))).collect();
    for &p in &live {
        touch(p, 1);
    }
    let n = scaled(PAIR_OPS, scale);
    m.start();
    for i in 0..n {
        let p = must(a.malloc(size));
        touch(p, i as u8);
        a.free(p);
    }
    m.stop(n as u64);
    for p in live {
        a.free(p);
    }
}

unsafe fn pattern<A: Alloc>(a: &'static A, kind: &str, live: usize, scale: f64, m: &mut Meter) {
    let mut rng = Rng::new(7);
    let n = scaled(PATTERN_OPS, scale);
    let mut slots: Vec<*mut u8> = Vec::with_capacity(live);
    match kind {
        "fifo" | "rand" => {
            for _ in 0..live {
                let p = must(a.malloc(rng.range(16, 256)));
                touch(p, 1);
                slots.push(p);
            }
            m.start();
            let mut i = 0;
            for _ in 0..n {
                let j = if kind == "fifo" {
                    i += 1;
                    if i == live {
                        i = 0;
                    }
                    i
                } else {
                    rng.below(live)
                };
                a.free(slots[j]);
                let p = must(a.malloc(rng.range(16, 256)));
                touch(p, j as u8);
                slots[j] = p;
            }
            m.stop(n as u64);
            for p in slots {
                a.free(p);
            }
        }
        "lifo" => {
            m.start();
            let mut done = 0;
            while done < n {
                let k = live.min(n - done);
                for i in 0..k {
                    let p = must(a.malloc(rng.range(16, 256)));
                    touch(p, i as u8);
                    slots.push(p);
                }
                while let Some(p) = slots.pop() {
                    a.free(p);
                }
                done += k;
            }
            m.stop(n as u64);
        }
        _ => unreachable!(),
    }
}

unsafe fn process<A: Alloc>(a: &'static A, scale: f64, m: &mut Meter) {
    unsafe fn rec<A: Alloc>(a: &A, depth: u32) -> u64 {
        let x = must(a.malloc(100));
        let y = must(a.malloc(200));
        touch(x, 1);
        touch(y, 2);
        let mut ops = 4;
        if depth > 0 {
            ops += rec(a, depth - 1);
            ops += rec(a, depth - 1);
        }
        a.free(x);
        a.free(y);
        ops
    }
    let trees = scaled(2_000, scale);
    m.start();
    let mut ops = 0;
    for _ in 0..trees {
        ops += rec(a, 10);
    }
    m.stop(ops);
}

unsafe fn realloc_grow<A: Alloc>(a: &'static A, scale: f64, m: &mut Meter) {
    let below: Vec<*mut u8> = (0..1000).map(|i| must(a.malloc(16 + i % 64))).collect();
    let bufs = scaled(2_000, scale);
    m.start();
    let mut ops = 0u64;
    for _ in 0..bufs {
        let mut size = 16;
        let mut p = must(a.malloc(size));
        touch(p, 0);
        while size < 64 * 1024 {
            size += 32;
            p = must(a.realloc(p, size));
            touch(p.add(size - 1), size as u8);
            ops += 1;
        }
        a.free(p);
    }
    m.stop(ops);
    for p in below {
        a.free(p);
    }
}

unsafe fn threadtest<A: Alloc>(a: &'static A, threads: usize, scale: f64, m: &mut Meter) {
    let rounds = scaled(10_000, scale) / threads;
    m.start();
    on_threads(a, threads, |_| {
        let mut v: Vec<usize> = Vec::with_capacity(1000);
        for _ in 0..rounds {
            for i in 0..1000 {
                let p = must(a.malloc(64));
                touch(p, i as u8);
                v.push(p as usize);
            }
            for p in v.drain(..) {
                a.free(p as *mut u8);
            }
        }
    });
    m.stop((rounds * threads * 2000) as u64);
}

unsafe fn larson<A: Alloc>(a: &'static A, threads: usize, scale: f64, m: &mut Meter) {
    const SLOTS: usize = 2000;
    const EPOCHS: usize = 10;
    let total = scaled(8_000_000, scale);
    let per_epoch = total / threads / EPOCHS;
    // One slot set per thread; in epoch e thread t works on set (t + e) % threads, so from the second
    // epoch on it frees blocks another thread allocated.
    let sets: Vec<Vec<AtomicUsize>> = (0..threads)
        .map(|s| {
            let mut rng = Rng::new(100 + s as u64);
            (0..SLOTS).map(|_| AtomicUsize::new(must(a.malloc(rng.range(16, 512))) as usize)).collect()
        })
        .collect();
    let barrier = Barrier::new(threads);
    m.start();
    on_threads(a, threads, |t| {
        let mut rng = Rng::new(t as u64 + 1);
        for e in 0..EPOCHS {
            let set = &sets[(t + e) % threads];
            for _ in 0..per_epoch {
                let j = rng.below(SLOTS);
                // Relaxed: the set is used by one thread per epoch; the barrier orders the hand-over.
                let old = set[j].load(Ordering::Relaxed) as *mut u8;
                a.free(old);
                let p = must(a.malloc(rng.range(16, 512)));
                touch(p, j as u8);
                set[j].store(p as usize, Ordering::Relaxed);
            }
            barrier.wait();
        }
    });
    m.stop((per_epoch * EPOCHS * threads * 2) as u64);
    for set in sets {
        for p in set {
            a.free(p.into_inner() as *mut u8);
        }
    }
}

unsafe fn cache<A: Alloc>(a: &'static A, threads: usize, scratch: bool, scale: f64, m: &mut Meter) {
    let iters = scaled(200_000, scale) / threads;
    const WRITES: usize = 1000;
    let given: Vec<AtomicUsize> = if scratch {
        (0..threads).map(|_| AtomicUsize::new(must(a.malloc(8)) as usize)).collect()
    } else {
        Vec::new()
    };
    m.start();
    on_threads(a, threads, |t| {
        if scratch {
            // Relaxed: the thread spawn orders the main thread's store before this load.
            a.free(given[t].load(Ordering::Relaxed) as *mut u8);
        }
        for _ in 0..iters {
            let p = must(a.malloc(8));
            for k in 0..WRITES {
                touch(p.add(k & 7), k as u8);
            }
            a.free(p);
        }
    });
    m.stop((iters * threads * 2) as u64);
}

unsafe fn xmalloc<A: Alloc>(a: &'static A, threads: usize, scale: f64, m: &mut Meter) {
    const BATCH: usize = 256;
    let producers = (threads / 2).max(1);
    let consumers = (threads - producers).max(1);
    let per_producer = scaled(4_000_000, scale) / producers / BATCH;
    // A bounded queue of batches; the harness's own allocations are the same for every allocator.
    let queue: Mutex<Vec<Vec<usize>>> = Mutex::new(Vec::new());
    let (not_empty, not_full) = (Condvar::new(), Condvar::new());
    let finished = AtomicUsize::new(0);
    m.start();
    on_threads(a, producers + consumers, |t| {
        if t < producers {
            let mut rng = Rng::new(t as u64 + 9);
            for _ in 0..per_producer {
                let mut batch = Vec::with_capacity(BATCH);
                for i in 0..BATCH {
                    let p = must(a.malloc(rng.range(16, 256)));
                    touch(p, i as u8);
                    batch.push(p as usize);
                }
                let mut q = queue.lock().unwrap();
                while q.len() >= 64 {
                    q = not_full.wait(q).unwrap();
                }
                q.push(batch);
                not_empty.notify_one();
            }
            // Release pairs with the consumers' Acquire load.
            finished.fetch_add(1, Ordering::Release);
            not_empty.notify_all();
        } else {
            loop {
                let batch = {
                    let mut q = queue.lock().unwrap();
                    loop {
                        if let Some(b) = q.pop() {
                            not_full.notify_one();
                            break Some(b);
                        }
                        if finished.load(Ordering::Acquire) == producers {
                            break None;
                        }
                        q = not_empty.wait_timeout(q, std::time::Duration::from_millis(1)).unwrap().0;
                    }
                };
                let Some(batch) = batch else { break };
                for p in batch {
                    a.free(p as *mut u8);
                }
            }
        }
    });
    m.stop((per_producer * producers * BATCH * 2) as u64);
}

unsafe fn mixed<A: Alloc>(a: &'static A, threads: usize, scale: f64, m: &mut Meter) {
    const SLOTS: usize = 2000;
    let per_thread = scaled(400_000, scale) / threads;
    let size = |rng: &mut Rng| match rng.below(100) {
        0..=79 => rng.range(16, 256),
        80..=94 => rng.range(256, 8 << 10),
        95..=98 => rng.range(8 << 10, 128 << 10),
        _ => rng.range(128 << 10, 1 << 20),
    };
    let fill = |p: *mut u8, n: usize| {
        let mut off = 0;
        while off < n {
            touch(p.add(off), 1);
            off += 4096;
        }
        touch(p.add(n - 1), 2);
    };
    m.start();
    on_threads(a, threads, |t| {
        let mut rng = Rng::new(t as u64 + 77);
        let mut slots: Vec<*mut u8> = (0..SLOTS)
            .map(|_| {
                let n = size(&mut rng);
                let p = must(a.malloc(n));
                fill(p, n);
                p
            })
            .collect();
        for _ in 0..per_thread {
            let j = rng.below(SLOTS);
            a.free(slots[j]);
            let n = size(&mut rng);
            let p = must(a.malloc(n));
            fill(p, n);
            slots[j] = p;
        }
        for p in slots {
            a.free(p);
        }
    });
    m.stop((per_thread * threads * 2) as u64);
}
