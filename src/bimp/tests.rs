//! Tests of the bimp heap: a model test (random operation sequences against a shadow model, `check()`
//! after every step, fill patterns verified), the pop cascade in every order, out-of-memory paths,
//! decommit with hysteresis, pointer validation, and the process-wide heap from several threads.

use super::*;

use crate::testutil::Rng;

#[derive(Clone, Copy, Debug)]
struct Block {
    p: usize,
    req: usize,
    cap: usize,
    fill: u8,
}

fn fill(b: &Block) {
    // SAFETY: the block is live with at least `req` bytes.
    unsafe { core::ptr::write_bytes(b.p as *mut u8, b.fill, b.req) };
}

fn verify(b: &Block, n: usize) {
    // SAFETY: the block is live with at least `n <= req` bytes.
    let s = unsafe { core::slice::from_raw_parts(b.p as *const u8, n) };
    if let Some(i) = s.iter().position(|&x| x != b.fill) {
        panic!("block {:#x} byte {} is {:#x}, expected {:#x}", b.p, i, s[i], b.fill);
    }
}

/// The shadow model: live blocks, and freed blocks that the model says are still below the top.
struct Model {
    live: Vec<Block>,
    freed: Vec<(usize, usize)>,
    next_fill: u8,
}

impl Model {
    fn new() -> Model {
        Model { live: Vec::new(), freed: Vec::new(), next_fill: 1 }
    }

    fn fill_byte(&mut self) -> u8 {
        self.next_fill = self.next_fill.wrapping_add(1).max(1);
        self.next_fill
    }

    /// Index of the live block with the highest address (the top block), if any.
    fn top_index(&self) -> Option<usize> {
        (0..self.live.len()).max_by_key(|&i| self.live[i].p)
    }

    /// Checks the heap against the model: the top is the end of the highest live block, exactly the
    /// freed blocks below it remain, the counters agree, no two blocks overlap.
    fn compare(&mut self, h: &Heap) {
        let st = h.check().unwrap_or_else(|e| panic!("check failed: {e}"));
        let expected_top = self.top_index().map(|i| self.live[i].p + self.live[i].cap + FOOT).unwrap_or(h.floor());
        assert_eq!(h.top, expected_top, "top is the end of the highest live block");
        self.freed.retain(|&(p, _)| p < expected_top);
        assert_eq!(st.top_bytes, expected_top - h.floor());
        assert_eq!(st.live_blocks, self.live.len());
        assert_eq!(st.live_bytes, self.live.iter().map(|b| b.cap).sum::<usize>());
        assert_eq!(st.free_blocks, self.freed.len(), "freed blocks still below the top");
        assert_eq!(st.free_bytes, self.freed.iter().map(|f| f.1).sum::<usize>());
        let mut spans: Vec<(usize, usize)> = self.live.iter().map(|b| (b.p, b.cap)).chain(self.freed.iter().copied()).collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 + FOOT + 8 <= w[1].0, "blocks {:#x?} and {:#x?} overlap", w[0], w[1]);
        }
        for b in &self.live {
            assert_eq!(h.usable_size(NonNull::new(b.p as *mut u8).unwrap()), Ok(b.cap));
        }
    }
}

fn random_size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=2 => 0,
        3..=79 => rng.below(300),
        80..=95 => rng.below(5000),
        _ => rng.below(200_000),
    }
}

/// Frees live block `i` of the model, through the C path or the checked one at random, after
/// verifying its contents.
fn free_model_block(h: &mut Heap, m: &mut Model, i: usize, rng: &mut Rng) {
    let b = m.live.swap_remove(i);
    verify(&b, b.req);
    if rng.below(2) == 0 {
        h.free_c(b.p as *mut u8, "model");
    } else {
        h.free(b.p as *mut u8).expect("free");
    }
    m.freed.push((b.p, b.cap));
}

fn model_run(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let mut h = Heap::new(64 << 20);
    let mut m = Model::new();
    for step in 0..steps {
        let op = rng.below(100);
        if op < 45 || m.live.is_empty() {
            // alloc, sometimes with a larger alignment
            let size = random_size(&mut rng);
            let align = if op < 8 { 1 << (4 + rng.below(10)) } else { ALIGN };
            let old_top = if h.base == 0 { 0 } else { h.top };
            let p = if align == ALIGN && rng.below(2) == 0 {
                h.alloc_c(size) as usize
            } else {
                h.alloc_aligned(size, align).expect("alloc").as_ptr() as usize
            };
            assert_eq!(p % align.max(ALIGN), 0, "alignment {align}");
            if old_top != 0 {
                let a = align.max(ALIGN);
                assert_eq!(p, (old_top + 8 + a - 1) & !(a - 1), "the block goes right above the old top");
            }
            let b = Block { p, req: size, cap: capacity_for(size), fill: m.fill_byte() };
            fill(&b);
            m.live.push(b);
        } else if op < 75 {
            // free: the top block half of the time, else any
            let i = if rng.below(2) == 0 { m.top_index().unwrap() } else { rng.below(m.live.len()) };
            free_model_block(&mut h, &mut m, i, &mut rng);
        } else if op < 95 {
            // realloc: the top block half of the time, else any
            let i = if rng.below(2) == 0 { m.top_index().unwrap() } else { rng.below(m.live.len()) };
            let b = m.live[i];
            let is_top = Some(i) == m.top_index();
            let n = 1 + random_size(&mut rng);
            let old_top = h.top;
            let q = if rng.below(2) == 0 {
                h.realloc_c(b.p as *mut u8, n, "model") as usize
            } else {
                h.realloc(NonNull::new(b.p as *mut u8).unwrap(), n).expect("valid").expect("memory").as_ptr() as usize
            };
            assert_ne!(q, 0);
            let mut nb = Block { p: q, req: n, cap: b.cap, fill: b.fill };
            if is_top {
                assert_eq!(q, b.p, "the top block is resized in place");
                nb.cap = capacity_for(n);
            } else if capacity_for(n) <= b.cap {
                assert_eq!(q, b.p, "shrinking in place");
            } else {
                assert_eq!(q, old_top + 8, "a grown block moves to the top");
                nb.cap = capacity_for(n);
                m.freed.push((b.p, b.cap));
            }
            verify(&nb, b.req.min(n));
            nb.fill = m.fill_byte();
            fill(&nb);
            m.live[i] = nb;
        } else {
            // unwind: free the top few blocks
            for _ in 0..rng.below(6) {
                let Some(i) = m.top_index() else { break };
                free_model_block(&mut h, &mut m, i, &mut rng);
            }
        }
        m.compare(&h);
        if step % 64 == 0 {
            for b in &m.live {
                verify(b, b.req);
            }
        }
    }
    // Free everything in random order: the heap must end exactly empty.
    while !m.live.is_empty() {
        let b = m.live.swap_remove(rng.below(m.live.len()));
        verify(&b, b.req);
        h.free(b.p as *mut u8).unwrap();
        m.freed.push((b.p, b.cap));
        m.compare(&h);
    }
    let st = h.check().unwrap();
    assert_eq!((st.top_bytes, st.live_blocks, st.free_blocks), (0, 0, 0));
}

#[test]
fn model_random_sequences() {
    for seed in 1..=6u64 {
        model_run(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 2500);
    }
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

#[test]
fn pop_cascade_in_every_order_returns_to_the_start() {
    let mut h = Heap::new(16 << 20);
    let keep = h.alloc(40).unwrap();
    let start = h.top;
    let sizes = [100, 200, 0, 5000, 48, 1];
    for order in permutations(sizes.len()) {
        let ps: Vec<usize> = sizes.iter().map(|&s| h.alloc(s).unwrap().as_ptr() as usize).collect();
        let ends: Vec<usize> = ps.iter().zip(sizes).map(|(&p, s)| p + capacity_for(s) + FOOT).collect();
        let mut alive = [true; 6];
        for &i in &order {
            h.free(ps[i] as *mut u8).unwrap();
            alive[i] = false;
            let expect = (0..6).rev().find(|&j| alive[j]).map(|j| ends[j]).unwrap_or(start);
            assert_eq!(h.top, expect, "order {order:?}");
            h.check().unwrap();
        }
        assert_eq!(h.top, start, "order {order:?}");
    }
    h.free(keep.as_ptr()).unwrap();
    assert_eq!(h.check().unwrap().top_bytes, 0);
}

#[test]
fn seed_process_pattern_leaves_no_trace() {
    let mut h = Heap::new(16 << 20);
    let outer = h.alloc(10).unwrap();
    let before = h.check().unwrap();
    for _ in 0..1000 {
        let a = h.alloc(100).unwrap();
        let b = h.alloc(200).unwrap();
        h.free(a.as_ptr()).unwrap();
        h.free(b.as_ptr()).unwrap();
    }
    let after = h.check().unwrap();
    assert_eq!(after.top_bytes, before.top_bytes);
    assert_eq!((after.free_blocks, after.live_blocks), (0, 1));
    h.free(outer.as_ptr()).unwrap();
}

#[test]
fn realloc_at_the_top_is_in_place_across_commit_chunks() {
    let mut h = Heap::new(64 << 20);
    let p = h.alloc(1).unwrap();
    let mut n = 1;
    while n < 8 << 20 {
        n = n * 3 / 2 + 1;
        let q = h.realloc(p, n).unwrap().unwrap();
        assert_eq!(q, p);
        // SAFETY: the block has n bytes.
        unsafe { *q.as_ptr().add(n - 1) = 7 };
    }
    assert!(h.check().unwrap().committed_bytes >= n);
    let q = h.realloc(p, 10).unwrap().unwrap();
    assert_eq!(q, p);
    assert_eq!(h.top, p.as_ptr() as usize + capacity_for(10) + FOOT);
    h.check().unwrap();
    h.free_c(p.as_ptr(), "test");
}

#[test]
fn invalid_pointers_are_classified() {
    let mut h = Heap::new(16 << 20);
    assert_eq!(h.free(core::ptr::null_mut()), Ok(()), "NULL before init");
    let mut local = 0u64;
    assert_eq!(h.free(&mut local as *mut u64 as *mut u8), Err(Invalid::NotOurs), "before init");
    let a = h.alloc(64).unwrap();
    let b = h.alloc(64).unwrap();
    let c = h.alloc(64).unwrap();
    assert_eq!(h.free(&mut local as *mut u64 as *mut u8), Err(Invalid::NotOurs));
    // SAFETY: pointer arithmetic inside block a, never dereferenced by the test.
    let inside = unsafe { a.as_ptr().add(ALIGN) };
    // SAFETY: a has 64 bytes.
    unsafe { core::ptr::write_bytes(a.as_ptr(), 0, 64) };
    assert_eq!(h.free(inside), Err(Invalid::NotABlock));
    // SAFETY: as above.
    assert_eq!(h.free(unsafe { a.as_ptr().add(1) }), Err(Invalid::NotABlock));
    assert_eq!(h.free(h.base as *mut u8), Err(Invalid::NotOurs), "the sentinel");
    h.free(b.as_ptr()).unwrap();
    assert_eq!(h.free(b.as_ptr()), Err(Invalid::DoubleFree));
    assert_eq!(h.realloc(b, 10), Err(Invalid::DoubleFree));
    assert_eq!(h.usable_size(b), Err(Invalid::DoubleFree));
    h.free(c.as_ptr()).unwrap();
    assert_eq!(h.top, a.as_ptr() as usize + capacity_for(64) + FOOT, "c and then b popped");
    assert_eq!(h.free(c.as_ptr()), Err(Invalid::AboveTop));
    h.check().unwrap();
    h.free(a.as_ptr()).unwrap();
    assert_eq!(h.free(a.as_ptr()), Err(Invalid::AboveTop));
}

#[test]
fn after_a_fast_pop_the_top_block_is_found_by_its_end() {
    let mut h = Heap::new(16 << 20);
    let a = h.alloc_c(32);
    let b = h.alloc_c(48);
    let c = h.alloc_c(0);
    assert!(!a.is_null() && !b.is_null() && !c.is_null());
    h.free_c(c, "test");
    assert_eq!(h.last as usize, h.base, "a fast pop leaves the last block unknown");
    h.check().unwrap();
    assert_eq!(h.free(c), Err(Invalid::AboveTop), "a double free after a fast pop");
    // b is the top block though `last` does not name it: found by its end, it pops.
    h.free_c(b, "test");
    assert_eq!(h.top, a as usize + capacity_for(32) + FOOT);
    assert_eq!(h.free(b), Err(Invalid::AboveTop));
    // realloc of the unnamed top block is in place, and names it again.
    let a2 = h.realloc(NonNull::new(a).unwrap(), 100).unwrap().unwrap();
    assert_eq!(a2.as_ptr(), a);
    assert_eq!(h.last as usize, a as usize);
    h.check().unwrap();
    // An unnamed padded top block goes the slow way and pops with its padding.
    let x = h.alloc_c(16);
    let p = h.alloc_aligned(16, 4096).unwrap().as_ptr();
    let y = h.alloc_c(16);
    h.free_c(y, "test");
    assert_eq!(h.last as usize, h.base);
    h.free_c(p, "test");
    assert_eq!(h.top, x as usize + capacity_for(16) + FOOT, "p popped with its padding");
    h.check().unwrap();
    // A block below an unnamed top is marked free, then popped with the top.
    let z = h.alloc_c(16);
    let w = h.alloc_c(16);
    let v = h.alloc_c(16);
    h.free_c(v, "test");
    h.free_c(z, "test");
    assert_eq!(h.check().unwrap().free_blocks, 1);
    h.free_c(w, "test");
    assert_eq!(h.top, x as usize + capacity_for(16) + FOOT, "w and z popped");
    h.free_c(x, "test");
    h.free_c(a, "test");
    let st = h.check().unwrap();
    assert_eq!((st.top_bytes, st.live_blocks, st.free_blocks), (0, 0, 0));
}

#[test]
fn an_overflow_into_a_footer_is_reported_when_popping() {
    // A pop reads the footer below it only when a free block may lie there (nfree != 0).
    let mut h = Heap::new(16 << 20);
    let x = h.alloc(16).unwrap();
    let a = h.alloc(32).unwrap();
    let b = h.alloc(32).unwrap();
    h.free(x.as_ptr()).unwrap();
    // SAFETY: deliberately writes 8 bytes past a's payload, into its footer (still our memory).
    unsafe { core::ptr::write_bytes(a.as_ptr().add(capacity_for(32)), 0x41, 8) };
    assert!(h.check().is_err());
    assert_eq!(h.free(b.as_ptr()), Err(Invalid::Corrupted));
    // With nothing free below, the pop does not read the footer; check() still sees the damage.
    let mut h = Heap::new(16 << 20);
    let a = h.alloc(32).unwrap();
    let b = h.alloc(32).unwrap();
    // SAFETY: as above.
    unsafe { core::ptr::write_bytes(a.as_ptr().add(capacity_for(32)), 0x41, 8) };
    assert_eq!(h.free(b.as_ptr()), Ok(()));
    assert!(h.check().is_err());
    let mut h = Heap::new(16 << 20);
    let a = h.alloc(32).unwrap();
    let b = h.alloc(32).unwrap();
    h.free(a.as_ptr()).unwrap();
    // SAFETY: deliberately overwrites a's footer with a capacity that points at b's payload.
    unsafe { *(a.as_ptr().add(capacity_for(32)) as *mut usize) = 16 };
    assert_eq!(h.free(b.as_ptr()), Err(Invalid::Corrupted));
}

#[test]
fn huge_requests_fail_cleanly() {
    let mut h = Heap::new(16 << 20);
    assert!(h.alloc(usize::MAX).is_none());
    assert!(h.alloc(BIMP_MAX_REQUEST + 1).is_none());
    assert!(h.alloc(32 << 20).is_none(), "more than the reservation");
    assert!(h.alloc_aligned(16, 1 << 62).is_none());
    let p = h.alloc(16).unwrap();
    assert_eq!(h.realloc(p, usize::MAX), Ok(None));
    assert_eq!(h.realloc(p, 32 << 20), Ok(None));
    assert_eq!(h.usable_size(p), Ok(capacity_for(16)), "a failed realloc leaves the block alone");
    h.check().unwrap();
}

#[test]
fn exhausting_the_reservation_gives_none_and_recovers() {
    let mut h = Heap::new(4 << 20);
    let mut ps = Vec::new();
    while let Some(p) = h.alloc(100_000) {
        ps.push(p);
        assert!(ps.len() < 100, "a 4 MiB reservation cannot hold 100 blocks of 100 kB");
    }
    assert!(ps.len() >= 35, "{} blocks", ps.len());
    h.check().unwrap();
    if let Some(small) = h.alloc(16) {
        h.free(small.as_ptr()).unwrap();
    }
    for p in ps.iter().rev() {
        h.free_c(p.as_ptr(), "test");
    }
    assert_eq!(h.check().unwrap().top_bytes, 0);
    assert!(h.alloc(3 << 20).is_some(), "the space is usable again");
}

#[test]
fn injected_os_failures_give_none_and_leave_the_heap_intact() {
    let mut h = Heap::new(64 << 20);
    os::inject_failures_after(Some(0));
    assert!(h.alloc(16).is_none(), "reservation refused");
    os::inject_failures_after(None);
    let p = h.alloc(16).unwrap();
    let before = h.check().unwrap();
    os::inject_failures_after(Some(0));
    assert!(h.alloc(8 << 20).is_none(), "commit refused");
    assert_eq!(h.realloc(p, 8 << 20), Ok(None), "commit refused for realloc");
    os::inject_failures_after(None);
    assert_eq!(h.check().unwrap(), before);
    assert!(h.alloc(8 << 20).is_some());
}

#[test]
fn deep_unwind_decommits_with_hysteresis() {
    let mut h = Heap::new(256 << 20);
    let mut ps = Vec::new();
    for _ in 0..1024 {
        let p = h.alloc(64 << 10).unwrap();
        // SAFETY: the block has 64 KiB.
        unsafe { core::ptr::write_bytes(p.as_ptr(), 0x5A, 64 << 10) };
        ps.push(p);
    }
    let full = h.check().unwrap();
    assert!(full.committed_bytes >= 64 << 20);
    for p in ps.iter().rev() {
        h.free_c(p.as_ptr(), "test");
    }
    let empty = h.check().unwrap();
    assert_eq!(empty.top_bytes, 0);
    assert_eq!(empty.peak_top_bytes, full.top_bytes);
    assert!(empty.committed_bytes <= BIMP_DECOMMIT_TRIGGER, "committed {} after unwinding", empty.committed_bytes);
    // Moving the top up and down by less than the hysteresis never changes what is committed again.
    let p = h.alloc(4 << 20).unwrap();
    h.free_c(p.as_ptr(), "test");
    let settled = h.check().unwrap().committed_bytes;
    for _ in 0..100 {
        let p = h.alloc(4 << 20).unwrap();
        h.free_c(p.as_ptr(), "test");
        assert_eq!(h.check().unwrap().committed_bytes, settled);
    }
    // Decommitted pages come back as zero when committed again.
    let p = h.alloc(32 << 20).unwrap();
    // SAFETY: the block has 32 MiB.
    let s = unsafe { core::slice::from_raw_parts(p.as_ptr(), 32 << 20) };
    assert!(s[(16 << 20)..].iter().all(|&b| b == 0));
}

#[test]
fn the_process_wide_heap_is_safe_across_threads() {
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut rng = Rng(0x1234_5678 + t as u64);
                let mut mine: Vec<(NonNull<u8>, usize, u8)> = Vec::new();
                for i in 0..20_000u32 {
                    if mine.len() < 64 && rng.below(3) != 0 {
                        let n = rng.below(400);
                        let p = malloc(n).unwrap();
                        let f = (i as u8) ^ t;
                        // SAFETY: the block has n bytes.
                        unsafe { core::ptr::write_bytes(p.as_ptr(), f, n) };
                        mine.push((p, n, f));
                    } else if let Some((p, n, f)) = mine.pop() {
                        // SAFETY: the block is ours and has n bytes.
                        let s = unsafe { core::slice::from_raw_parts(p.as_ptr(), n) };
                        assert!(s.iter().all(|&b| b == f));
                        free_c(p.as_ptr(), "test");
                    }
                }
                for (p, _, _) in mine {
                    free_c(p.as_ptr(), "test");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let st = stats();
    assert_eq!(st.live_blocks, 0);
    assert_eq!(st.top_bytes, 0, "all freed: everything popped");
}
