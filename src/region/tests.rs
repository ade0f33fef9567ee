//! Model tests: random operation sequences against a shadow model, `check()` after every step, fill
//! patterns verified before every free; error cases; pages flowing back to the pool; threads.

use super::*;
use crate::config::{REGION_POOL_KEEP_HIGH, REGION_POOL_KEEP_LOW};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy)]
struct Block {
    p: usize,
    size: usize,
    fill: u8,
}

fn fill(b: &Block) {
    // SAFETY: the block is live with at least `size` bytes.
    let s = unsafe { core::slice::from_raw_parts_mut(b.p as *mut u8, b.size) };
    if b.size <= 4096 {
        for (i, x) in s.iter_mut().enumerate() {
            *x = b.fill.wrapping_add(i as u8);
        }
    } else {
        for i in (0..64).chain(b.size - 64..b.size) {
            s[i] = b.fill.wrapping_add(i as u8);
        }
    }
}

fn verify(b: &Block, upto: usize) {
    let n = b.size.min(upto);
    // SAFETY: the block is live with at least `size` bytes.
    let s = unsafe { core::slice::from_raw_parts(b.p as *const u8, n) };
    let check = |i: usize| assert_eq!(s[i], b.fill.wrapping_add(i as u8), "block {:#x} byte {i} of {}", b.p, b.size);
    if b.size <= 4096 {
        (0..n).for_each(check);
    } else {
        (0..64.min(n)).for_each(check);
        if n == b.size {
            (b.size - 64..b.size).for_each(check);
        }
    }
}

fn new_region() -> &'static mut Region {
    let r = Region::create().expect("region_create");
    // SAFETY: just created, used by this thread only.
    unsafe { &mut *r.as_ptr() }
}

fn destroy(r: &mut Region) {
    // SAFETY: r is live and not used afterwards.
    unsafe { Region::destroy(r) };
}

fn size_for(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=79 => 1 + rng.below(256),
        80..=92 => rng.below(2048),
        93..=97 => 2048 + rng.below(SMALL_MAX),
        _ => SMALL_MAX - 16 + rng.below(70_000),
    }
}

fn model_run(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let r = new_region();
    let mut live: Vec<Block> = Vec::new();
    for step in 0..steps {
        let op = rng.below(100);
        if op < 45 || live.is_empty() {
            let size = size_for(&mut rng);
            let b = if rng.below(10) == 0 {
                let align = 1usize << (4 + rng.below(19));
                let p = r.alloc_aligned(size, align).expect("alloc_aligned").as_ptr() as usize;
                assert_eq!(p % align, 0, "alignment {align}");
                Block { p, size, fill: rng.next() as u8 }
            } else {
                let p = r.alloc(size).expect("alloc").as_ptr() as usize;
                assert_eq!(p % 16, 0);
                Block { p, size, fill: rng.next() as u8 }
            };
            assert!(Region::usable_size(b.p).unwrap() >= size);
            assert!(r.contains(b.p) && r.contains(b.p + size.max(1) - 1));
            assert_eq!(at_offset(offset_of(b.p).unwrap()), Some(b.p));
            fill(&b);
            live.push(b);
        } else if op < 85 {
            // Free: sometimes the newest (LIFO), sometimes the oldest (FIFO), else random.
            let i = match rng.below(3) {
                0 => live.len() - 1,
                1 => 0,
                _ => rng.below(live.len()),
            };
            let b = live.remove(i);
            verify(&b, usize::MAX);
            r.free(b.p).expect("free of a live block");
        } else if op < 97 {
            let i = rng.below(live.len());
            let old = live[i];
            verify(&old, usize::MAX);
            let size = if rng.below(2) == 0 { old.size / 2 + rng.below(64) } else { size_for(&mut rng) };
            let p = r.realloc(old.p, size).expect("realloc of a live block").expect("memory").as_ptr() as usize;
            verify(&Block { p, ..old }, size);
            let nb = Block { p, size, fill: old.fill };
            fill(&nb);
            live[i] = nb;
        } else if op < 98 && rng.below(8) == 0 {
            r.reset();
            live.clear();
        } else {
            // A double free or an interior pointer is refused, and changes nothing.
            let b = live[rng.below(live.len())];
            if b.size > 16 {
                assert!(r.free(b.p + 16).is_err(), "interior pointer refused");
            }
        }
        r.check();
        if step % 128 == 0 {
            pool::lock().check();
        }
        let st = r.stats();
        assert_eq!(st.live_objects, live.len(), "step {step}");
        assert!(st.live_bytes >= live.iter().map(|b| b.size).sum::<usize>());
    }
    for b in live.drain(..) {
        verify(&b, usize::MAX);
        r.free(b.p).unwrap();
        r.check();
    }
    assert_eq!(r.stats().live_bytes, 0);
    destroy(r);
}

#[test]
fn model_random_sequences() {
    for seed in 1..=6u64 {
        model_run(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, 3000);
    }
}

#[test]
fn fifo_recycles_pages_and_keeps_footprint() {
    let r = new_region();
    let mut q = std::collections::VecDeque::new();
    let mut rng = Rng(7);
    for i in 0..200_000 {
        let size = 16 + rng.below(241);
        let p = r.alloc(size).unwrap().as_ptr() as usize;
        // SAFETY: fresh block of `size` bytes.
        unsafe { *(p as *mut u64) = i };
        q.push_back((p, i));
        if q.len() > 1000 {
            let (p, v) = q.pop_front().unwrap();
            // SAFETY: live block.
            assert_eq!(unsafe { *(p as *const u64) }, v);
            r.free(p).unwrap();
        }
    }
    r.check();
    let st = r.stats();
    // 1,000 blocks of at most 272 bytes need at most 17 pages; recycling keeps it near that.
    assert!(st.pages_in_use <= 24, "pages in use {}", st.pages_in_use);
    assert!(st.pages_in_use * REGION_PAGE <= 2 * st.peak_bytes + 2 * REGION_PAGE);
    destroy(r);
}

#[test]
fn random_order_footprint_stays_bounded() {
    for live_target in [1000, 5000] {
        let r = new_region();
        let mut rng = Rng(11);
        let mut live: Vec<usize> = Vec::new();
        for step in 0..300_000 {
            if live.len() < live_target || rng.below(2) == 0 {
                live.push(r.alloc(16 + rng.below(241)).unwrap().as_ptr() as usize);
            }
            if live.len() > live_target {
                let i = rng.below(live.len());
                r.free(live.swap_remove(i)).unwrap();
            }
            if step % 500 == 0 && step > 10 * live_target {
                let st = r.stats();
                let footprint = (st.pages_in_use + st.pages_cached) * REGION_PAGE;
                assert!(footprint <= 2 * st.live_bytes, "{live_target} live, step {step}: footprint {footprint} for {} live bytes", st.live_bytes);
            }
        }
        r.check();
        destroy(r);
    }
}

#[test]
fn lifo_frees_give_space_back_to_the_hole() {
    let r = new_region();
    let a = r.alloc(100).unwrap().as_ptr() as usize;
    let b = r.alloc(100).unwrap().as_ptr() as usize;
    r.free(b).unwrap();
    let c = r.alloc(100).unwrap().as_ptr() as usize;
    assert_eq!(b, c, "the freed last block is reused at once");
    // Realloc of the last block grows in place.
    let d = r.realloc(c, 1000).unwrap().unwrap().as_ptr() as usize;
    assert_eq!(d, c);
    r.check();
    r.free(a).unwrap();
    r.free(d).unwrap();
    r.check();
    destroy(r);
}

#[test]
fn bad_pointers_are_refused() {
    let r = new_region();
    let s = new_region();
    let a = r.alloc(64).unwrap().as_ptr() as usize;
    let b = s.alloc(64).unwrap().as_ptr() as usize;
    let big = r.alloc(100_000).unwrap().as_ptr() as usize;
    let local = 0u64;
    assert_eq!(r.free(&local as *const u64 as usize), Err(BadPointer::Outside));
    assert_eq!(r.free(b), Err(BadPointer::NotThisRegion));
    assert_eq!(r.free(a + 16), Err(BadPointer::NotLive));
    assert_eq!(r.free(a + 8), Err(BadPointer::NotLive));
    assert_eq!(r.free(big + REGION_PAGE), Err(BadPointer::NotLive), "inside a large block");
    assert_eq!(r.realloc(b, 10).err(), Some(BadPointer::NotThisRegion));
    r.free(a).unwrap();
    assert_eq!(r.free(a), Err(BadPointer::NotLive), "double free");
    r.free(big).unwrap();
    assert_eq!(r.free(big), Err(BadPointer::NotThisRegion), "double free of a large block");
    assert!(Region::usable_size(a).is_err());
    assert!(!r.contains(b) && s.contains(b));
    assert!(offset_of(&local as *const u64 as usize).is_err());
    assert_eq!(offset_of(0), Ok(0));
    assert_eq!(at_offset(0), Some(0));
    r.check();
    s.check();
    destroy(r);
    destroy(s);
}

#[test]
fn overflowing_sizes_fail() {
    let r = new_region();
    assert!(r.alloc(usize::MAX).is_none());
    assert!(r.alloc(usize::MAX - 8).is_none());
    assert!(r.alloc(REGION_RESERVE).is_none());
    assert!(r.alloc_aligned(usize::MAX / 2, 1 << 20).is_none());
    r.check();
    destroy(r);
}

static LOG: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

extern "C" fn record(arg: *mut core::ffi::c_void) {
    LOG.lock().unwrap().push(arg as usize);
}

#[test]
fn callbacks_run_in_reverse_on_reset_and_destroy() {
    let r = new_region();
    for i in 1..=3 {
        r.on_destroy(record, i as *mut _).unwrap();
    }
    let x = r.alloc(10).unwrap();
    r.check();
    assert_eq!(r.stats().live_objects, 1, "records are not user blocks");
    assert!(LOG.lock().unwrap().is_empty());
    r.reset();
    assert_eq!(*LOG.lock().unwrap(), vec![3, 2, 1]);
    assert!(!r.contains(x.as_ptr() as usize) || r.free(x.as_ptr() as usize).is_err(), "reset freed x");
    r.on_destroy(record, 9 as *mut _).unwrap();
    r.check();
    destroy(r);
    assert_eq!(*LOG.lock().unwrap(), vec![3, 2, 1, 9]);
}

#[test]
fn pages_go_back_to_the_pool_and_the_os() {
    alone(|| {
        // Pages other tests had when the child forked stay in use here; their free ones go away.
        pool::lock().trim(0);
        let r = new_region();
        let mut v = Vec::new();
        let n = (REGION_POOL_KEEP_HIGH + 100) * (SMALL_MAX / 1000);
        for _ in 0..n {
            v.push(r.alloc(1000).unwrap().as_ptr() as usize);
        }
        let in_use = r.stats().pages_in_use;
        assert!(in_use > REGION_POOL_KEEP_HIGH, "{in_use}");
        let cold0 = pool_stats().cold;
        for p in v {
            r.free(p).unwrap();
        }
        let st = r.stats();
        assert!(st.pages_in_use <= 2, "empty pages leave the region: {}", st.pages_in_use);
        assert!(st.pages_cached <= REGION_CACHE_PAGES);
        // The pool keeps max(KEEP_HIGH, pages in use) resident; the pages in use are mostly other
        // tests' (frozen by the fork).
        let keep = REGION_POOL_KEEP_HIGH.max(st.pool.carved - st.pool.warm - st.pool.cold);
        assert!(st.pool.warm <= keep, "the pool keeps a bounded number resident");
        assert!(st.pool.cold + keep + REGION_CACHE_PAGES + 2 >= cold0 + in_use, "the rest went back to the OS");
        r.check();
        pool::lock().check();
        destroy(r);
        assert!(pool_stats().warm >= REGION_POOL_KEEP_LOW.min(1));
    });
}

#[test]
fn reset_keeps_one_page() {
    let r = new_region();
    for _ in 0..10_000 {
        r.alloc(200).unwrap();
    }
    r.alloc(1 << 20).unwrap();
    assert!(r.stats().pages_in_use > 100);
    r.reset();
    r.check();
    let st = r.stats();
    assert_eq!((st.pages_in_use, st.live_bytes, st.live_objects), (1, 0, 0));
    assert!(st.peak_bytes > 2_000_000);
    let p = r.alloc(10).unwrap().as_ptr() as usize;
    assert!(r.contains(p));
    destroy(r);
}

#[test]
fn threads_use_their_own_regions_while_others_come_and_go() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 50 {
                let r = new_region();
                for i in 0..50 {
                    r.alloc(i * 100).unwrap();
                }
                destroy(r);
                n += 1;
            }
            n
        })
    };
    let workers: Vec<_> = (0..2u64)
        .map(|t| std::thread::spawn(move || model_run(0x1234_5678 + t, 2000)))
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(churn.join().unwrap() >= 50);
    pool::lock().check();
}

#[test]
fn isolated_holes_in_sparse_pages_are_reused_by_size() {
    let r = new_region();
    let v: Vec<usize> = (0..2000).map(|_| r.alloc(100).unwrap().as_ptr() as usize).collect();
    // Free every other block of the first pages: isolated holes, pages become sparse.
    let freed: std::collections::HashSet<usize> = v[..600].iter().step_by(2).copied().collect();
    for &p in &freed {
        r.free(p).unwrap();
    }
    let pages_before = r.stats().pages_in_use;
    // Same-size requests land in the freed places (hints or swept holes), not in fresh pages.
    let again: Vec<usize> = (0..freed.len()).map(|_| r.alloc(100).unwrap().as_ptr() as usize).collect();
    // Each lands in a freed place or in the rest of the current page (the open hole comes first).
    let last_page = v[v.len() - 1] & !PAGE_MASK;
    let reused = again.iter().filter(|p| freed.contains(p)).count();
    let in_current = again.iter().filter(|&&p| p & !PAGE_MASK == last_page).count();
    assert_eq!(reused + in_current, freed.len(), "{reused} reused, {in_current} in the current page");
    assert!(reused > 0);
    assert_eq!(r.stats().pages_in_use, pages_before, "no fresh page");
    r.check();
    destroy(r);
}

#[test]
fn fifo_frees_leave_no_listed_chunks_and_pages_recycle_whole() {
    // Several generators: the bound below must hold for any sequence, not one.
    for seed in [3u64, 0x9e37_79b9_7f4a_7c15, 12345, 0xdead_beef] {
        fifo_recycles_whole(seed);
    }
}

fn fifo_recycles_whole(seed: u64) {
    let r = new_region();
    let home = r.home as usize;
    let mut q = std::collections::VecDeque::new();
    let mut rng = Rng(seed);
    let mut window = 0; // bytes of the live chunks (headers included)
    let mut alloc = |r: &mut Region, window: &mut usize| {
        let size = 16 + rng.below(241);
        *window += granules(size) * REGION_GRANULE;
        (r.alloc(size).unwrap().as_ptr() as usize, granules(size) * REGION_GRANULE)
    };
    for _ in 0..3000 {
        q.push_back(alloc(r, &mut window));
    }
    let (mut max_window, mut max_pages, mut home_again) = (0, 0, false);
    for i in 0..100_000 {
        let (p, c) = q.pop_front().unwrap();
        r.free(p).unwrap();
        window -= c;
        let (p, c) = alloc(r, &mut window);
        q.push_back((p, c));
        home_again |= i >= 3000 && p & !PAGE_MASK == home;
        max_window = max_window.max(window);
        max_pages = max_pages.max(r.stats().pages_in_use);
    }
    r.check();
    // Frees in allocation order make dead chunks, never listed ones: every allocation bumps, and the
    // pages that empty come back whole (from the region's cache) as the next page to carve.
    assert!(r.free.iter().all(|&h| h == 0), "no chunk listed");
    // The live blocks are one window of consecutive chunks: every page but the oldest (partly dead) and
    // the current one (partly carved) is carved full of live chunks, up to a tail smaller than the
    // largest chunk (272 bytes). So the pages in use never exceed floor(window / that) + 2.
    let full = REGION_PAGE - page::HEADER_SIZE - 272;
    assert!(max_pages <= max_window / full + 2, "pages in use {max_pages} for {max_window} bytes of chunks");
    assert!(home_again, "the home page is carved again once its blocks died");
    let st = r.stats();
    assert!(st.pages_cached <= 2, "emptied pages are taken again at once: {} cached", st.pages_cached);
    for (p, _) in q {
        r.free(p).unwrap();
    }
    r.check();
    destroy(r);
}

#[test]
fn dead_chunks_are_listed_when_frees_move_on() {
    let r = new_region();
    let v: Vec<usize> = (0..3000).map(|_| r.alloc(100).unwrap().as_ptr() as usize).collect();
    // Free in address order but keep every tenth block: the first pages drain like a FIFO and stop.
    let mut freed = std::collections::HashSet::new();
    for (i, &p) in v[..1500].iter().enumerate() {
        if i % 10 != 0 {
            r.free(p).unwrap();
            freed.insert(p);
        }
    }
    // Frees move on to another page: the drained pages' dead chunks are listed and reused.
    r.free(v[2999]).unwrap();
    r.check();
    let pages = r.stats().pages_in_use;
    let current = v[2999] & !PAGE_MASK;
    let again: Vec<usize> = (0..freed.len()).map(|_| r.alloc(100).unwrap().as_ptr() as usize).collect();
    // The rest of the current page is carved first, then (no empty page to carve) the freed places.
    assert!(again.iter().all(|p| freed.contains(p) || p & !PAGE_MASK == current), "freed places reused");
    assert!(again.iter().filter(|p| freed.contains(p)).count() >= freed.len() - REGION_PAGE / 112);
    assert_eq!(r.stats().pages_in_use, pages, "no fresh page");
    r.check();
    destroy(r);
}

#[test]
fn stale_and_foreign_headers_are_refused() {
    let r = new_region();
    let a = r.alloc(40).unwrap().as_ptr() as usize;
    let b = r.alloc(40).unwrap().as_ptr() as usize;
    // A copy of a's header placed in b's payload does not make b + 16 a block: the tag names the address.
    // SAFETY: both blocks are live with 40 bytes.
    unsafe { *((b + 8) as *mut u64) = *((a - 8) as *const u64) };
    assert_eq!(r.free(b + 16), Err(BadPointer::NotLive));
    // After a reset, the old pointers are stale even where the page is reused.
    r.reset();
    assert_eq!(r.free(a), Err(BadPointer::NotLive), "block from before the reset");
    let c = r.alloc(40).unwrap().as_ptr() as usize;
    assert_eq!(c, a, "the home page is carved again from its start");
    assert_eq!(r.free(b), Err(BadPointer::NotLive), "uncarved place with an old header");
    r.free(c).unwrap();
    r.check();
    destroy(r);
}

#[test]
fn fork_handlers_leave_the_pool_usable_in_both_processes() {
    // Another thread takes the pool lock over and over while this one forks: without the handlers a
    // child forked while that thread held the lock would block for ever (the alarm then kills it).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s = new_region();
                s.alloc(100_000).unwrap();
                destroy(s);
            }
        })
    };
    let r = new_region();
    for _ in 0..30 {
        // SAFETY: the child only uses regions and libc (no allocation through std) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: plain libc calls in the child.
            unsafe { libc::alarm(10) };
            let ok = Region::create().map(|s| {
                // SAFETY: just created, used by this process alone.
                let s = unsafe { &mut *s.as_ptr() };
                let ok = (0..100).all(|_| s.alloc(1000).is_some() && s.alloc(50_000).is_some());
                // SAFETY: s is live and not used afterwards.
                unsafe { Region::destroy(s) };
                ok
            });
            // SAFETY: leaving the child without running the parent's exit handlers.
            unsafe { libc::_exit(if ok == Some(true) { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: pid is our child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status}");
        assert!(r.alloc(100).is_some());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
    pool::lock().check();
    destroy(r);
}

#[test]
fn lifo_bursts_across_a_page_change_stay_pure_bumps() {
    let r = new_region();
    let mut rng = Rng(5);
    let mut base: Vec<usize> = (0..1000).map(|_| r.alloc(16 + rng.below(241)).unwrap().as_ptr() as usize).collect();
    // Leave less room in the current page than a burst needs: every burst crosses into the next page.
    while r.limit - r.bump > 2000 {
        base.push(r.alloc(100).unwrap().as_ptr() as usize);
    }
    let pages = r.stats().pages_in_use;
    for round in 0..200 {
        let burst: Vec<usize> = (0..64).map(|_| r.alloc(16 + rng.below(241)).unwrap().as_ptr() as usize).collect();
        for &p in burst.iter().rev() {
            r.free(p).unwrap();
        }
        // The first burst crossed into a new page; its chunks in the page left behind gave their space
        // back to that page's tail instead of going on the lists.
        assert!(r.free.iter().all(|&h| h == 0), "round {round}: no chunk listed");
        assert!(r.stats().pages_in_use <= pages + 2, "round {round}");
    }
    r.check();
    for p in base {
        r.free(p).unwrap();
    }
    r.check();
    destroy(r);
}

/// Runs `f` in a forked child, where no other test shares the pool, and asserts that it succeeded.
fn alone(f: fn()) {
    // SAFETY: the child runs `f` (regions, and std on the system allocator, which survives fork) and
    // leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: plain libc call in the child.
        unsafe { libc::alarm(20) };
        // The test harness captures the output of this thread: write the failure to fd 2 itself.
        std::panic::set_hook(Box::new(|info| {
            let m = format!("child: {info}\n");
            // SAFETY: writing a live buffer to stderr.
            unsafe { libc::write(2, m.as_ptr().cast(), m.len()) };
        }));
        let ok = std::panic::catch_unwind(f).is_ok();
        // SAFETY: leaving the child without running the parent's exit handlers.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: pid is our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child failed, status {status}");
}

#[test]
fn freed_runs_stay_resident_and_runs_resize_in_place() {
    alone(|| {
        // Pages other tests had when the child forked stay in use here; their free ones go away.
        pool::lock().trim(0);
        let r = new_region();
        // A range of 40 spare pages, the only one: the runs below go there.
        let big = r.alloc(39 * REGION_PAGE).unwrap().as_ptr() as usize;
        r.free(big).unwrap();
        let a = r.alloc(5 * REGION_PAGE).unwrap().as_ptr() as usize;
        assert_eq!(a & !PAGE_MASK, big & !PAGE_MASK, "a run goes to resident free pages");
        let before = pool_stats();
        r.free(a).unwrap();
        let st = pool_stats();
        assert_eq!(st.cold, before.cold, "a freed run is not given back to the OS at once");
        assert_eq!(st.warm, before.warm + 6, "its pages stay resident");
        let b = r.alloc(5 * REGION_PAGE).unwrap().as_ptr() as usize;
        assert_eq!(b, a, "the resident pages are taken again");
        // SAFETY: b is live with 5 pages.
        unsafe { core::ptr::write_bytes(b as *mut u8, 0x5a, 5 * REGION_PAGE) };
        let pages = r.stats().pages_in_use;
        let base = pool::base();
        let after = (b & !PAGE_MASK) - base + 6 * REGION_PAGE;
        // SAFETY: base is set; the indexes are inside the reservation.
        let free_after = (0..4).all(|d| unsafe { table_entry(base, after / REGION_PAGE + d) } == pool::T_FREE);
        assert!(free_after, "the spare range continues after the run");
        let c = r.realloc(b, 9 * REGION_PAGE).unwrap().unwrap().as_ptr() as usize;
        assert_eq!(c, b, "grows in place over the pages after it");
        assert!(Region::usable_size(c).unwrap() >= 9 * REGION_PAGE);
        assert_eq!(r.stats().pages_in_use, pages + 4);
        // SAFETY: c is live with 9 pages.
        unsafe {
            assert!((0..5 * REGION_PAGE).all(|i| *((c + i) as *const u8) == 0x5a), "contents kept");
            core::ptr::write_bytes(c as *mut u8, 0x33, 9 * REGION_PAGE);
        }
        r.check();
        pool::lock().check();
        let warm = pool_stats().warm;
        let d = r.realloc(c, 2 * REGION_PAGE).unwrap().unwrap().as_ptr() as usize;
        assert_eq!(d, c, "shrinks in place");
        assert!(Region::usable_size(d).unwrap() < 3 * REGION_PAGE);
        assert_eq!(pool_stats().warm, warm + 7, "the pages beyond the new end are spare");
        // An obstacle after the run: growth moves it.
        let e = r.alloc(REGION_PAGE).unwrap().as_ptr() as usize;
        let f = r.realloc(d, 20 * REGION_PAGE).unwrap().unwrap().as_ptr() as usize;
        assert!(f != d || e < d, "grows in place only over free pages");
        r.check();
        pool::lock().check();
        r.free(e).unwrap();
        r.free(f).unwrap();
        destroy(r);
    });
}

#[test]
fn the_pool_gives_resident_free_pages_back_with_hysteresis() {
    alone(|| {
        // Pages other tests had when the child forked stay in use here; their free ones go away.
        pool::lock().trim(0);
        let r = new_region();
        let n = 2 * REGION_POOL_KEEP_HIGH;
        // Runs of 4 pages; only their headers are touched.
        let v: Vec<usize> = (0..n).map(|_| r.alloc(3 * REGION_PAGE).unwrap().as_ptr() as usize).collect();
        let used = |st: &pool::PoolStats| st.carved - st.warm - st.cold;
        let (mut trims, mut prev) = (0, pool_stats());
        for &p in &v {
            r.free(p).unwrap();
            let st = pool_stats();
            let limit = REGION_POOL_KEEP_HIGH.max(used(&st));
            assert!(st.warm <= limit, "resident free pages {} for {} in use", st.warm, used(&st));
            if prev.warm + 4 <= limit {
                assert_eq!((st.warm, st.cold), (prev.warm + 4, prev.cold), "nothing given back below the threshold");
            } else {
                trims += 1;
                assert!(st.warm >= REGION_POOL_KEEP_LOW.max(used(&st) - used(&st) / 8), "trimmed to the low mark only");
            }
            prev = st;
        }
        assert!(trims > 0 && trims < n / 4, "{trims} trims");
        pool::lock().check();
        destroy(r);
    });
}



#[test]
fn a_queue_with_one_late_block_still_recycles_pages_whole() {
    // Slots replaced in the order 1, 2, ..., n-1, 0, 1, ...: the first block dies after the rest of its
    // page, whose chunks are listed then. Those must not be reused while pages keep emptying (that would
    // scatter new blocks over old pages, and every later free would be listed as well).
    let r = new_region();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let live = 1000;
    let mut slots: Vec<usize> = (0..live).map(|_| r.alloc(16 + rng.below(241)).unwrap().as_ptr() as usize).collect();
    let (mut i, mut listed_frees) = (0, 0);
    for step in 0..50 * live {
        i = (i + 1) % live;
        let p = slots[i];
        r.free(p).unwrap();
        // SAFETY: the reservation's carved pages stay mapped and readable, whoever has them now.
        if step >= 5 * live && unsafe { read_header(p, page_gen(p)).1 } == MAGIC_FREED {
            listed_frees += 1;
        }
        slots[i] = r.alloc(16 + rng.below(241)).unwrap().as_ptr() as usize;
    }
    r.check();
    assert_eq!(listed_frees, 0, "after the first rounds, every free is in allocation order");
    assert!(r.free.iter().all(|&h| h == 0), "no chunk listed");
    assert!(r.stats().pages_in_use <= 13, "pages in use {}", r.stats().pages_in_use);
    for p in slots {
        r.free(p).unwrap();
    }
    destroy(r);
}

#[test]
fn deep_lifo_stacks_unwind_page_by_page_without_lists() {
    let r = new_region();
    let mut rng = Rng(17);
    let below = r.alloc(100).unwrap().as_ptr() as usize;
    for round in 0..5 {
        // A stack over ~30 pages, popped entirely: every page gives its chunks back to its carved part
        // (the page opened before the one that emptied is next), none is listed.
        let stack: Vec<usize> = (0..3000).map(|_| r.alloc(16 + rng.below(241)).unwrap().as_ptr() as usize).collect();
        assert!(r.stats().pages_in_use > 25);
        for (i, &p) in stack.iter().enumerate().rev() {
            r.free(p).unwrap();
            if i % 500 == 0 {
                r.check();
            }
        }
        assert!(r.free.iter().all(|&h| h == 0), "round {round}: no chunk listed");
        assert!(r.stats().pages_in_use <= 2, "round {round}: pages {}", r.stats().pages_in_use);
    }
    r.free(below).unwrap();
    r.check();
    destroy(r);
}

#[test]
fn a_queue_mixed_with_random_deaths_keeps_the_footprint_bounded() {
    // Pages empty regularly (the queue's), so the region carves rather than reuses; the holes the
    // random deaths leave must still be reused once they are a fair share of the memory.
    for (qn, bn, burst, qshare) in [(1000, 3000, 100, 1), (3000, 1000, 100, 3), (5000, 500, 110, 3), (2000, 2000, 300, 2)] {
        let r = new_region();
        let mut rng = Rng(99);
        let mut q = std::collections::VecDeque::new();
        let mut b: Vec<usize> = Vec::new();
        for step in 0..200_000 {
            // Bursts of each kind, so that pages hold mostly one.
            if (step / burst) % 4 < qshare {
                q.push_back(r.alloc(16 + rng.below(241)).unwrap().as_ptr() as usize);
                if q.len() > qn {
                    r.free(q.pop_front().unwrap()).unwrap();
                }
            } else {
                b.push(r.alloc(16 + rng.below(241)).unwrap().as_ptr() as usize);
                if b.len() > bn {
                    let i = rng.below(b.len());
                    r.free(b.swap_remove(i)).unwrap();
                }
            }
            if step % 1000 == 0 && step > 50_000 {
                let st = r.stats();
                let footprint = (st.pages_in_use + st.pages_cached) * REGION_PAGE;
                assert!(footprint <= 2 * st.live_bytes, "{qn}/{bn}/{burst}/{qshare} step {step}: footprint {footprint} for {} live bytes", st.live_bytes);
            }
        }
        r.check();
        destroy(r);
    }
}
