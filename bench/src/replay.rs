//! Trace replay (`rallocs-bench replay FILE`) and trace shape (`rallocs-bench trace-info FILE`).
//!
//! A trace (format: `bench/TRACE_FORMAT.md`, reader: `rallocs::trace::Decoder`) records addresses;
//! replay needs object identities. [`prepare`] walks the records in file order (one global order),
//! gives each allocation a fresh object number, and splits the operations into one stream per traced
//! thread. Replay runs each stream on its own thread; an operation on an object that another thread
//! allocated waits until that allocation has happened (its slot is filled), so cross-thread frees are
//! kept and never run early.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use rallocs::trace::{Decoder, Op, Record};

use crate::alloc::Alloc;
use crate::meter::Meter;

/// Reads a trace file, gunzipping it when it is gzip-compressed.
pub fn load(path: &Path) -> std::io::Result<Vec<u8>> {
    let raw = std::fs::read(path)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..]).read_to_end(&mut out)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Decodes every record, or says why the file is not a trace.
pub fn records(data: &[u8]) -> Result<Vec<Record>, String> {
    let mut dec = Decoder::new(data).map_err(|e| format!("not a rallocs trace: {e:?}"))?;
    let v: Vec<Record> = dec.by_ref().collect();
    if let Some(e) = dec.error() {
        return Err(format!("corrupt trace after {} records: {e:?}", v.len()));
    }
    Ok(v)
}

/// One replayed operation on object numbers.
#[derive(Clone, Copy, Debug)]
pub enum ROp {
    /// Allocate object `obj` (`align` 0: malloc; `zero`: calloc).
    Alloc { obj: u32, size: usize, align: usize, zero: bool },
    /// Free object `obj`.
    Free { obj: u32 },
    /// Reallocate object `old` into object `new`.
    Realloc { old: u32, new: u32, size: usize },
}

/// A trace ready to replay.
pub struct Prepared {
    /// One stream per traced thread, in the order the threads first appear.
    pub threads: Vec<Vec<ROp>>,
    /// Objects in all.
    pub objects: usize,
    /// The stream that allocates each object (frees of objects still live at the end run there, since
    /// some allocators, such as regions, want blocks back on the thread that allocated them).
    pub owner: Vec<u32>,
    /// Frees or reallocs of objects another thread allocated.
    pub cross_thread: usize,
    /// Records that could not be matched (frees of blocks allocated before tracing started, an
    /// allocation at an address still live because its free was not seen): dropped or leaked.
    pub unmatched: usize,
}

/// Turns records into per-thread streams of object operations.
pub fn prepare(recs: &[Record]) -> Prepared {
    let mut live: HashMap<usize, (u32, u32)> = HashMap::new(); // address -> (object, owner stream)
    let mut tid: HashMap<u32, usize> = HashMap::new();
    let mut threads: Vec<Vec<ROp>> = Vec::new();
    let (mut objects, mut cross, mut unmatched) = (0u32, 0, 0);
    let mut owner: Vec<u32> = Vec::new();
    for r in recs {
        let t = *tid.entry(r.thread).or_insert_with(|| {
            threads.push(Vec::new());
            threads.len() - 1
        });
        let mut new_obj = |addr: usize, live: &mut HashMap<usize, (u32, u32)>, unmatched: &mut usize| {
            let o = objects;
            objects += 1;
            owner.push(t as u32);
            if live.insert(addr, (o, t as u32)).is_some() {
                *unmatched += 1;
            }
            o
        };
        match r.op {
            Op::Malloc | Op::Calloc | Op::Memalign => {
                if r.result != 0 {
                    let obj = new_obj(r.result, &mut live, &mut unmatched);
                    threads[t].push(ROp::Alloc { obj, size: r.size, align: r.align, zero: r.op == Op::Calloc });
                }
            }
            Op::Free => {
                if r.old == 0 {
                    continue;
                }
                match live.remove(&r.old) {
                    Some((obj, owner)) => {
                        cross += (owner as usize != t) as usize;
                        threads[t].push(ROp::Free { obj });
                    }
                    None => unmatched += 1,
                }
            }
            Op::Realloc => {
                let old = if r.old == 0 { None } else { live.get(&r.old).copied() };
                if r.old != 0 && old.is_none() {
                    unmatched += 1;
                }
                match (old, r.result) {
                    (Some((o, owner)), 0) if r.size == 0 => {
                        live.remove(&r.old);
                        cross += (owner as usize != t) as usize;
                        threads[t].push(ROp::Free { obj: o });
                    }
                    (_, 0) => {} // failed: nothing changed
                    (Some((o, owner)), res) => {
                        live.remove(&r.old);
                        cross += (owner as usize != t) as usize;
                        let obj = new_obj(res, &mut live, &mut unmatched);
                        threads[t].push(ROp::Realloc { old: o, new: obj, size: r.size });
                    }
                    (None, res) => {
                        let obj = new_obj(res, &mut live, &mut unmatched);
                        threads[t].push(ROp::Alloc { obj, size: r.size, align: 0, zero: false });
                    }
                }
            }
        }
    }
    Prepared { threads, objects: objects as usize, owner, cross_thread: cross, unmatched }
}

#[inline(always)]
fn wait_for(slot: &AtomicUsize) -> usize {
    loop {
        // Acquire pairs with the Release store of the thread that allocated the object.
        let p = slot.load(Ordering::Acquire);
        if p != 0 {
            return p;
        }
        std::thread::yield_now();
    }
}

/// Replays `prep` through `a`, timed by `m`. Objects still live at the end are freed untimed.
pub fn replay<A: Alloc>(a: &'static A, prep: &Prepared, m: &mut Meter) {
    let slots: Vec<AtomicUsize> = (0..prep.objects).map(|_| AtomicUsize::new(0)).collect();
    let freed: Vec<AtomicUsize> = (0..prep.objects).map(|_| AtomicUsize::new(0)).collect();
    let ops: usize = prep.threads.iter().map(Vec::len).sum();
    let barrier = std::sync::Barrier::new(prep.threads.len());
    let end = std::sync::Mutex::new(None);
    // The slot arrays are the harness's (16 bytes per object): memory is counted from here on.
    m.begin();
    m.start();
    std::thread::scope(|s| {
        for (me, stream) in prep.threads.iter().enumerate() {
            let (slots, freed, barrier, end) = (&slots, &freed, &barrier, &end);
            s.spawn(move || unsafe {
                a.thread_start();
                barrier.wait();
                for op in stream {
                    match *op {
                        ROp::Alloc { obj, size, align, zero } => {
                            let p = if align > 16 {
                                a.aligned(align, size.div_ceil(align).max(1) * align)
                            } else if zero {
                                a.calloc(1, size)
                            } else {
                                a.malloc(size)
                            };
                            if !p.is_null() && size > 0 {
                                std::ptr::write_volatile(p, 1);
                            }
                            // Release pairs with `wait_for`. A failed allocation (NULL) is stored as 1 so
                            // that waiters go on; it is never freed.
                            slots[obj as usize].store(if p.is_null() { 1 } else { p as usize }, Ordering::Release);
                        }
                        ROp::Free { obj } => {
                            let p = wait_for(&slots[obj as usize]);
                            if p != 1 {
                                a.free(p as *mut u8);
                            }
                            freed[obj as usize].store(1, Ordering::Relaxed);
                        }
                        ROp::Realloc { old, new, size } => {
                            let p = wait_for(&slots[old as usize]);
                            let q = if p == 1 { a.malloc(size) } else { a.realloc(p as *mut u8, size) };
                            freed[old as usize].store(1, Ordering::Relaxed);
                            if !q.is_null() && size > 0 {
                                std::ptr::write_volatile(q.add(size - 1), 1);
                            }
                            // Release pairs with `wait_for`.
                            slots[new as usize].store(if q.is_null() { 1 } else { q as usize }, Ordering::Release);
                        }
                    }
                }
                // The clock stops when every stream is done; then each thread frees the objects it
                // allocated that are still live (untimed), before its allocator's thread end.
                if barrier.wait().is_leader() {
                    *end.lock().unwrap() = Some(std::time::Instant::now());
                }
                for (obj, (s, f)) in slots.iter().zip(freed).enumerate() {
                    // Relaxed: the barrier ordered every thread's stores before these loads.
                    let p = s.load(Ordering::Relaxed);
                    if prep.owner[obj] as usize == me && p > 1 && f.load(Ordering::Relaxed) == 0 {
                        a.free(p as *mut u8);
                    }
                }
                a.thread_end();
            });
        }
    });
    m.stop_at(ops as u64, end.into_inner().unwrap().expect("replay end time"));
}

fn human(b: f64) -> String {
    if b >= 1048576.0 {
        format!("{:.1} MiB", b / 1048576.0)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// `rallocs-bench trace-info FILE`: the shape of a trace.
pub fn info(path: &Path) -> Result<String, String> {
    let data = load(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let recs = records(&data)?;
    let pid = Decoder::new(&data).map(|d| d.pid).unwrap_or(0);
    let mut out = String::new();
    let mut counts = [0usize; 6];
    for r in &recs {
        counts[r.op as usize] += 1;
    }
    let prep = prepare(&recs);
    out += &format!("trace {} ({} bytes, pid {pid})\n", path.display(), data.len());
    out += &format!(
        "records {}: malloc {}, calloc {}, realloc {}, free {}, aligned {}\n",
        recs.len(), counts[1], counts[2], counts[3], counts[4], counts[5]
    );
    out += &format!(
        "threads {}; objects {}; cross-thread frees {}; unmatched records {}\n",
        prep.threads.len(), prep.objects, prep.cross_thread, prep.unmatched
    );
    // Sizes, peak live, lifetimes in allocation-clock ticks (allocations made in between), from the
    // records in file order (the global order).
    let mut hist = [0usize; 24];
    let mut life_hist = [0usize; 8];
    let mut live: HashMap<usize, (usize, u64)> = HashMap::new(); // address -> (size, birth)
    let (mut live_bytes, mut peak_bytes, mut peak_objs, mut clock, mut total) = (0usize, 0usize, 0usize, 0u64, 0usize);
    let bucket = |s: usize| (usize::BITS - s.leading_zeros()).min(23) as usize;
    let died = |born: u64, clock: u64, life_hist: &mut [usize; 8]| {
        let b = match clock - born {
            0..=1 => 0,
            2..=10 => 1,
            11..=100 => 2,
            101..=1000 => 3,
            1001..=10000 => 4,
            10001..=100000 => 5,
            100001..=1000000 => 6,
            _ => 7,
        };
        life_hist[b] += 1;
    };
    for r in &recs {
        let freed = match r.op {
            Op::Free => r.old,
            Op::Realloc if r.result != 0 || r.size == 0 => r.old,
            _ => 0,
        };
        if freed != 0 {
            if let Some((size, born)) = live.remove(&freed) {
                live_bytes -= size;
                died(born, clock, &mut life_hist);
            }
        }
        if r.op != Op::Free && r.result != 0 {
            clock += 1;
            hist[bucket(r.size)] += 1;
            total += r.size;
            if let Some((size, _)) = live.insert(r.result, (r.size, clock)) {
                live_bytes -= size;
            }
            live_bytes += r.size;
        }
        peak_bytes = peak_bytes.max(live_bytes);
        peak_objs = peak_objs.max(live.len());
    }
    let live_objs = live.len();
    out += &format!(
        "bytes requested {}; peak live {} in {} objects; live at end {} in {} objects\n",
        human(total as f64), human(peak_bytes as f64), peak_objs, human(live_bytes as f64), live_objs
    );
    out += "size histogram (requests, including realloc targets):\n";
    for (i, &n) in hist.iter().enumerate() {
        if n > 0 {
            let lo = if i == 0 { 0 } else { 1usize << (i - 1) };
            let hi = (1usize << i) - 1;
            let bar = "#".repeat(((n as f64 / recs.len().max(1) as f64) * 60.0).ceil() as usize);
            out += &format!("  {:>9} - {:<9} {:>9}  {}\n", human(lo as f64), human(hi as f64), n, bar);
        }
    }
    out += "lifetimes (allocations made while the object was live, freed objects only):\n";
    let labels = ["<=1", "2-10", "11-100", "101-1k", "1k-10k", "10k-100k", "100k-1M", ">1M"];
    for (l, n) in labels.iter().zip(life_hist) {
        out += &format!("  {l:>9} {n:>9}\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: Op, thread: u32, result: usize, old: usize, size: usize) -> Record {
        Record { op, thread, result, old, size, align: 0 }
    }

    /// Three threads; blocks move between them; addresses are reused after frees; a realloc chain; a
    /// free of a block allocated before tracing began; a failed realloc.
    fn synthetic() -> Vec<Record> {
        let mut v = Vec::new();
        for i in 0..300usize {
            let a = 0x1000 + 0x40 * (i % 50); // addresses reused every 50 allocations
            let t = (i % 3) as u32;
            v.push(rec(Op::Malloc, t, a, 0, 16 + i));
            match i % 4 {
                0 => v.push(rec(Op::Free, (t + 1) % 3, 0, a, 0)), // cross-thread free
                1 => {
                    v.push(rec(Op::Realloc, t, 0x9000 + i * 0x100, a, 100 + i));
                    v.push(rec(Op::Realloc, t, 0, 0x9000 + i * 0x100, usize::MAX / 2)); // failed
                    v.push(rec(Op::Free, (t + 2) % 3, 0, 0x9000 + i * 0x100, 0));
                }
                _ => v.push(rec(Op::Free, t, 0, a, 0)),
            }
        }
        v.push(rec(Op::Free, 0, 0, 0xdead_0000, 0)); // never allocated in the trace
        v.push(rec(Op::Calloc, 1, 0x5000, 0, 64)); // still live at the end
        v
    }

    #[test]
    fn prepare_gives_fresh_objects_and_counts_cross_thread_and_unmatched() {
        let p = prepare(&synthetic());
        assert_eq!(p.threads.len(), 3);
        assert_eq!(p.objects, 300 + 75 + 1, "one per malloc, one per successful realloc, the calloc");
        assert_eq!(p.cross_thread, 75 + 75);
        assert_eq!(p.unmatched, 1);
        let ops: usize = p.threads.iter().map(Vec::len).sum();
        assert_eq!(ops, 300 + 75 * 2 + 75 + 150 + 1);
    }

    #[test]
    fn replay_keeps_cross_thread_frees_in_order_through_every_allocator() {
        let p = prepare(&synthetic());
        // rallocs aborts on a free of a pointer it did not hand out, so a finished replay through it
        // means every free and realloc got the right block.
        let mut m = Meter::default();
        replay(&crate::alloc::Rallocs, &p, &mut m);
        assert_eq!(m.sample.ops, p.threads.iter().map(|t| t.len() as u64).sum::<u64>());
        let mut m = Meter::default();
        replay(crate::alloc::Glibc::get(), &p, &mut m);
        assert!(m.sample.time_ns > 0);
    }

    #[test]
    fn shipped_traces_decode_completely() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("traces");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if !path.to_string_lossy().contains(".rtrace") {
                continue;
            }
            let data = load(&path).unwrap();
            let recs = records(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(recs.len() > 1000, "{} is too small to be a real trace", path.display());
            let p = prepare(&recs);
            assert_eq!(p.unmatched, 0, "{}: records that match no allocation", path.display());
            assert!(info(&path).unwrap().contains("peak live"));
            n += 1;
        }
        assert!(n >= 3, "three traces are shipped");
    }
}
