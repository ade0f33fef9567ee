//! rmalloc's handle interface, and seed 001's benchmarking method: every malloc-style allocator is
//! wrapped so that it plugs in as a replacement for rmalloc (rmalloc -> malloc, rmlock -> the pointer,
//! rmunlock -> nothing), and the same handle workloads run through all of them.

use std::collections::VecDeque;

use crate::alloc::Alloc;
use crate::meter::{Meter, Rng};

/// The allocation failed (a budget was too small).
#[derive(Debug)]
pub struct Oom;

/// An allocator reached through relocatable handles.
///
/// # Safety
/// The methods have the contracts of rmalloc's C functions.
pub trait Handles: Sync + Send + 'static {
    /// A handle.
    type H: Copy;
    /// `rmalloc`.
    unsafe fn alloc(&self, size: usize) -> Result<Self::H, Oom>;
    /// `rmlock`: the block's address, stable until the matching unlock.
    unsafe fn lock(&self, h: Self::H) -> *mut u8;
    /// `rmunlock`.
    unsafe fn unlock(&self, h: Self::H);
    /// `rmfree`.
    unsafe fn free(&self, h: Self::H);
    /// `rmrealloc` (the handle may change only for the adapter).
    unsafe fn realloc(&self, h: &mut Self::H, size: usize) -> Result<(), Oom>;
    /// Whether this is rmalloc itself (budget search instead of peak RSS).
    const REAL: bool = false;
    /// `rmsetlimit` (real rmalloc only).
    fn set_limit(&self, _bytes: usize) {}
    /// `rmcompact(0)` (real rmalloc only).
    fn compact(&self) {}
    /// Compactions, bytes moved and longest pause in ns so far (real rmalloc only).
    fn stats(&self) -> [f64; 3] {
        [0.0; 3]
    }
}

/// Seed 001's adapter: a malloc-style allocator behind the handle interface.
pub struct Wrap<A: Alloc>(pub &'static A);

impl<A: Alloc> Handles for Wrap<A> {
    type H = *mut u8;
    #[inline(always)]
    unsafe fn alloc(&self, size: usize) -> Result<*mut u8, Oom> {
        let p = self.0.malloc(size);
        if p.is_null() {
            Err(Oom)
        } else {
            Ok(p)
        }
    }
    #[inline(always)]
    unsafe fn lock(&self, h: *mut u8) -> *mut u8 {
        h
    }
    #[inline(always)]
    unsafe fn unlock(&self, _h: *mut u8) {}
    #[inline(always)]
    unsafe fn free(&self, h: *mut u8) {
        self.0.free(h)
    }
    #[inline(always)]
    unsafe fn realloc(&self, h: &mut *mut u8, size: usize) -> Result<(), Oom> {
        let p = self.0.realloc(*h, size);
        if p.is_null() {
            return Err(Oom);
        }
        *h = p;
        Ok(())
    }
}

extern "C" {
    fn rmalloc(handle: *mut *mut std::ffi::c_void, size: usize) -> i32;
    fn rmlock(h: *mut std::ffi::c_void, ptr: *mut *mut std::ffi::c_void) -> i32;
    fn rmunlock(h: *mut std::ffi::c_void) -> i32;
    fn rmfree(h: *mut std::ffi::c_void) -> i32;
    fn rmrealloc(h: *mut std::ffi::c_void, size: usize) -> i32;
    fn rmcompact(budget_us: u64) -> i32;
    fn rmsetlimit(bytes: usize) -> i32;
    fn rm_stats_get(out: *mut RmStats);
}

/// `rm_stats_t` (rallocs.h).
#[repr(C)]
#[derive(Default)]
struct RmStats {
    capacity: usize,
    used: usize,
    free: usize,
    largest_free: usize,
    fragmentation: f64,
    handles: usize,
    compactions: u64,
    bytes_moved: u64,
    longest_pause_ns: u64,
    purges: u64,
}

/// `RM_OK`.
const RM_OK: i32 = 0;

/// rmalloc itself.
pub struct Rmalloc;

#[cold]
fn rm_failed(what: &str, status: i32) -> ! {
    eprintln!("{what} failed with status {status}");
    std::process::exit(3)
}

impl Handles for Rmalloc {
    type H = *mut std::ffi::c_void;
    const REAL: bool = true;
    #[inline(always)]
    unsafe fn alloc(&self, size: usize) -> Result<Self::H, Oom> {
        let mut h = std::ptr::null_mut();
        match rmalloc(&mut h, size) {
            RM_OK => Ok(h),
            _ => Err(Oom),
        }
    }
    #[inline(always)]
    unsafe fn lock(&self, h: Self::H) -> *mut u8 {
        let mut p = std::ptr::null_mut();
        let st = rmlock(h, &mut p);
        if st != RM_OK {
            rm_failed("rmlock", st);
        }
        p.cast()
    }
    #[inline(always)]
    unsafe fn unlock(&self, h: Self::H) {
        let st = rmunlock(h);
        if st != RM_OK {
            rm_failed("rmunlock", st);
        }
    }
    #[inline(always)]
    unsafe fn free(&self, h: Self::H) {
        let st = rmfree(h);
        if st != RM_OK {
            rm_failed("rmfree", st);
        }
    }
    #[inline(always)]
    unsafe fn realloc(&self, h: &mut Self::H, size: usize) -> Result<(), Oom> {
        match rmrealloc(*h, size) {
            RM_OK => Ok(()),
            _ => Err(Oom),
        }
    }
    fn set_limit(&self, bytes: usize) {
        // SAFETY: no preconditions; a limit below the current use is refused with a status we ignore
        // (the budget search starts from an empty heap).
        unsafe { rmsetlimit(bytes) };
    }
    fn compact(&self) {
        // SAFETY: no preconditions.
        unsafe { rmcompact(0) };
    }
    fn stats(&self) -> [f64; 3] {
        let mut st = RmStats::default();
        // SAFETY: a valid out-parameter of the C layout.
        unsafe { rm_stats_get(&mut st) };
        [st.compactions as f64, st.bytes_moved as f64, st.longest_pause_ns as f64]
    }
}

// RALLOCS-RMALLOC (the real rmalloc's Handles impl is added here when its family lands)

/// The handle workloads and their parameters.
pub fn workloads() -> Vec<crate::workloads::Workload> {
    use crate::workloads::{Needs, Workload};
    vec![
        Workload {
            name: "rm-fragment".into(),
            group: "rmalloc (handles)",
            threads: 1,
            needs: Needs::Handles,
            trace: None,
            desc: "100,000 handles of 16-256 B (each locked, written, unlocked); 4 rounds of: free a random half, \
                   allocate 8-64 KiB blocks until as many bytes as were freed, free those, refill the small ones; \
                   then 1,000,000 lock+unlock pairs on random live handles (timed apart)"
                .into(),
        },
        Workload {
            name: "rm-browser".into(),
            group: "rmalloc (handles)",
            threads: 1,
            needs: Needs::Handles,
            trace: None,
            desc: "200 pages opened, each a burst of 2,000 objects (99% 32-256 B, 1% 4-64 KiB images), 1,000 \
                   lock+unlock accesses per page; at most 8 pages open (the oldest is closed: all its objects \
                   freed), 5% of objects survive in a cache of at most 5,000, every 20th object of a page grows to twice its size (rmrealloc); then 1,000,000 lock+unlock pairs"
                .into(),
        },
    ]
}

struct Live<H> {
    handles: Vec<(H, usize)>,
    bytes: usize,
    peak: usize,
}

impl<H: Copy> Live<H> {
    fn add(&mut self, h: H, size: usize) {
        self.handles.push((h, size));
        self.bytes += size;
        self.peak = self.peak.max(self.bytes);
    }
}

unsafe fn new_block<R: Handles>(r: &R, size: usize, tag: u8) -> Result<R::H, Oom> {
    let h = r.alloc(size)?;
    let p = r.lock(h);
    // Write every page of the block, as a program filling it would (so peak RSS counts it whole).
    let mut off = 0;
    while off < size {
        std::ptr::write_volatile(p.add(off), tag);
        off += 4096;
    }
    std::ptr::write_volatile(p.add(size - 1), tag);
    r.unlock(h);
    Ok(h)
}

/// Frees every handle in `hs` (used on the way out, also after an out-of-memory).
unsafe fn free_all<R: Handles>(r: &R, hs: impl IntoIterator<Item = R::H>) {
    for h in hs {
        r.free(h);
    }
}

/// Runs one handle workload. Returns the number of operations and the peak of live requested bytes;
/// on `Oom` every handle has been freed. `lock_ns` receives the lock+unlock cost when asked for.
unsafe fn run_once<R: Handles>(r: &R, name: &str, scale: f64, lock_ns: Option<&mut f64>) -> Result<(u64, usize), Oom> {
    let mut rng = Rng::new(1234);
    let mut live = Live { handles: Vec::new(), bytes: 0, peak: 0 };
    let mut ops = 0u64;
    let mut extra: Vec<R::H> = Vec::new();
    // Handles of the browser workload: open pages and the cache (freed on the way out either way).
    let mut pages: VecDeque<Vec<(R::H, usize)>> = VecDeque::new();
    let mut cache: VecDeque<(R::H, usize)> = VecDeque::new();
    let result = (|| -> Result<(), Oom> {
        if name == "rm-fragment" {
            let n = ((100_000.0 * scale) as usize).max(100);
            for i in 0..n {
                let s = rng.range(16, 256);
                live.add(new_block(r, s, i as u8)?, s);
                ops += 1;
            }
            for round in 0..4 {
                let mut freed = 0;
                let mut keep = Vec::with_capacity(n);
                for &(h, s) in &live.handles {
                    if rng.next() & 1 == 0 {
                        r.free(h);
                        freed += s;
                        ops += 1;
                    } else {
                        keep.push((h, s));
                    }
                }
                live.handles = keep;
                live.bytes -= freed;
                let mut big = 0;
                while big < freed {
                    let s = rng.range(8 << 10, 64 << 10);
                    extra.push(new_block(r, s, round as u8)?);
                    big += s;
                    live.bytes += s;
                    live.peak = live.peak.max(live.bytes);
                    ops += 1;
                }
                live.bytes -= big;
                let e = std::mem::take(&mut extra);
                ops += e.len() as u64;
                free_all(r, e);
                while live.handles.len() < n {
                    let s = rng.range(16, 256);
                    live.add(new_block(r, s, 3)?, s);
                    ops += 1;
                }
            }
        } else {
            let pages_total = ((200.0 * scale) as usize).max(10);
            let per_page = ((2000.0 * scale.sqrt()) as usize).max(50);
            for page in 0..pages_total {
                pages.push_back(Vec::with_capacity(per_page));
                let objs = pages.back_mut().unwrap();
                for _ in 0..per_page {
                    let s = if rng.below(100) == 0 { rng.range(4 << 10, 64 << 10) } else { rng.range(32, 256) };
                    let h = new_block(r, s, page as u8)?;
                    ops += 1;
                    live.bytes += s;
                    live.peak = live.peak.max(live.bytes);
                    if rng.below(20) == 0 {
                        cache.push_back((h, s));
                        if cache.len() > 5000 {
                            let (h, s) = cache.pop_front().unwrap();
                            r.free(h);
                            live.bytes -= s;
                            ops += 1;
                        }
                    } else {
                        objs.push((h, s));
                    }
                }
                // Layout: every 20th object of the page grows to twice its size (rmrealloc).
                for k in (0..objs.len()).step_by(20) {
                    let (mut h, s) = objs[k];
                    r.realloc(&mut h, 2 * s)?;
                    let p = r.lock(h);
                    std::ptr::write_volatile(p.add(2 * s - 1), 9);
                    r.unlock(h);
                    objs[k] = (h, 2 * s);
                    live.bytes += s;
                    live.peak = live.peak.max(live.bytes);
                    ops += 1;
                }
                // Render: touch random objects of the open pages.
                for _ in 0..1000 {
                    let (h, _) = objs[rng.below(objs.len())];
                    let p = r.lock(h);
                    std::ptr::write_volatile(p, 7);
                    r.unlock(h);
                }
                if pages.len() > 8 {
                    for (h, s) in pages.pop_front().unwrap() {
                        r.free(h);
                        live.bytes -= s;
                        ops += 1;
                    }
                }
            }
            for objs in pages.drain(..) {
                live.handles.extend(objs);
            }
            live.handles.extend(cache.drain(..));
        }
        Ok(())
    })();
    for objs in pages {
        live.handles.extend(objs);
    }
    live.handles.extend(cache);
    if result.is_err() {
        free_all(r, extra);
        free_all(r, live.handles.iter().map(|&(h, _)| h));
        return Err(Oom);
    }
    if let Some(out) = lock_ns {
        let n = live.handles.len();
        let idx: Vec<usize> = (0..1_000_000usize.min(((1_000_000.0 * scale) as usize).max(1000))).map(|_| rng.below(n)).collect();
        let t0 = std::time::Instant::now();
        for &i in &idx {
            let h = live.handles[i].0;
            let p = r.lock(h);
            std::ptr::read_volatile(p);
            r.unlock(h);
        }
        *out = t0.elapsed().as_nanos() as f64 / idx.len() as f64;
    }
    ops += live.handles.len() as u64;
    free_all(r, live.handles.iter().map(|&(h, _)| h));
    Ok((ops, live.peak))
}

/// Runs the handle workload `name` through `r`: timed (no budget), then, for the real rmalloc, the
/// smallest budget (peak live bytes grown in 5% steps) in which it completes.
pub fn run<R: Handles>(r: &R, name: &str, scale: f64, m: &mut Meter) {
    let mut lock_ns = 0.0;
    m.start();
    // SAFETY: the workloads use only handles they allocated and have not freed.
    let (ops, peak) = unsafe { run_once(r, name, scale, None) }.unwrap_or_else(|_| {
        eprintln!("{name}: out of memory without a budget");
        std::process::exit(3)
    });
    m.stop(ops);
    // SAFETY: as above.
    let _ = unsafe { run_once(r, name, scale, Some(&mut lock_ns)) };
    m.extra("lock_ns", lock_ns);
    m.extra("live_peak", peak as f64);
    // The budget search is deterministic (same workload, same seeds): the parent asks for it in the
    // first run only.
    if R::REAL && std::env::var_os("RALLOCS_BENCH_BUDGET").is_some() {
        let mut found = 0.0;
        for step in 0..=60 {
            let limit = (peak as f64 * (1.0 + 0.05 * step as f64)) as usize;
            r.compact();
            r.set_limit(limit);
            // SAFETY: as above.
            if unsafe { run_once(r, name, scale, None) }.is_ok() {
                found = limit as f64;
                break;
            }
        }
        if found > 0.0 {
            // Once more at that budget, to see what compaction costs there.
            r.compact();
            r.set_limit(found as usize);
            let s0 = r.stats();
            let t0 = std::time::Instant::now();
            // SAFETY: as above.
            let ok = unsafe { run_once(r, name, scale, None) }.is_ok();
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            let s1 = r.stats();
            if ok {
                m.extra("budget_ms", ms);
                m.extra("compactions", s1[0] - s0[0]);
                m.extra("moved_mib", (s1[1] - s0[1]) / 1048576.0);
                m.extra("max_pause_us", s1[2] / 1e3);
            }
        }
        r.set_limit(0);
        m.extra("budget", found);
    }
}
