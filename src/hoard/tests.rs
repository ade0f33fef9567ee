//! Model tests of the malloc family's heap: operation sequences against a shadow model, with the
//! heap's `check()` after every step and a fill pattern verified before every free.

use super::*;
use std::collections::HashMap;

// The tests pass only live blocks they allocated (or NULL).
fn tfree(p: *mut u8, func: &str, record: bool) {
    // SAFETY: see above.
    unsafe { free(p, func, record) }
}
fn trealloc(p: *mut u8, size: usize, func: &str) -> *mut u8 {
    // SAFETY: see above.
    unsafe { realloc(p, size, func) }
}
fn tusable(p: *mut u8, func: &str) -> usize {
    // SAFETY: see above.
    unsafe { usable_size(p, func) }
}
use std::vec::Vec;

use crate::testutil::Rng;

fn pattern(p: *mut u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: p has at least len bytes (tests).
        unsafe { *p.add(i) = seed.wrapping_add(i as u8) };
    }
}

fn verify(p: *mut u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: p has at least len bytes (tests).
        assert_eq!(unsafe { *p.add(i) }, seed.wrapping_add(i as u8), "block {p:p} byte {i}");
    }
}

fn random_size(rng: &mut Rng) -> usize {
    match rng.below(20) {
        0 => rng.below(300_000),
        1..=3 => rng.below(16_384),
        _ => rng.below(512),
    }
}

#[test]
fn model_sequence_against_shadow() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    // shadow: pointer -> (requested size, seed, alignment)
    let mut live: HashMap<usize, (usize, u8, usize)> = HashMap::new();
    let mut order: Vec<usize> = Vec::new();
    for step in 0..20_000u32 {
        let op = rng.below(10);
        if op < 5 || order.is_empty() {
            let size = random_size(&mut rng);
            let align = if rng.below(8) == 0 { 1usize << rng.below(14) } else { 16 };
            let p = if align > 16 { aligned(align, size) } else if op == 0 { calloc(1, size) } else { malloc(size, false) };
            assert!(!p.is_null(), "step {step}: allocation of {size} failed");
            assert_eq!(p as usize % align.max(16), 0, "alignment {align}");
            assert!(tusable(p, "test") >= size);
            if op == 0 && align == 16 {
                // SAFETY: p has size bytes.
                assert!(unsafe { core::slice::from_raw_parts(p, size) }.iter().all(|&b| b == 0), "calloc zero");
            }
            for (&q, &(qs, _, _)) in &live {
                let (a, b) = (p as usize, q);
                assert!(a + size.max(1) <= b || b + qs.max(1) <= a, "step {step}: overlap {a:#x}+{size} {b:#x}+{qs}");
            }
            let seed = step as u8;
            pattern(p, size, seed);
            live.insert(p as usize, (size, seed, align));
            order.push(p as usize);
        } else if op < 8 {
            let i = rng.below(order.len());
            let p = order.swap_remove(i);
            let (size, seed, _) = live.remove(&p).unwrap();
            verify(p as *mut u8, size, seed);
            tfree(p as *mut u8, "test", false);
        } else {
            let i = rng.below(order.len());
            let p = order[i];
            let (size, seed, align) = live[&p];
            if align > 16 {
                continue;
            }
            let new_size = random_size(&mut rng).max(1);
            let q = trealloc(p as *mut u8, new_size, "test");
            assert!(!q.is_null());
            verify(q, size.min(new_size), seed);
            live.remove(&p);
            pattern(q, new_size, seed);
            live.insert(q as usize, (new_size, seed, 16));
            order[i] = q as usize;
        }
        if step % 64 == 0 {
            check();
        }
    }
    for p in order {
        let (size, seed, _) = live.remove(&p).unwrap();
        verify(p as *mut u8, size, seed);
        tfree(p as *mut u8, "test", false);
    }
    check();
}

#[test]
fn remote_frees_return_to_their_superblock_and_are_collected() {
    // One thread allocates, another frees: blocks go back to the allocating thread's superblocks.
    let n = 50_000;
    let ptrs: Vec<usize> = (0..n).map(|_| malloc(64, false) as usize).collect();
    let first_sb = Superblock::of(ptrs[0] as *const u8) as usize;
    std::thread::spawn(move || {
        for p in ptrs {
            tfree(p as *mut u8, "test", false);
        }
    })
    .join()
    .unwrap();
    // The allocating thread reuses the remotely freed blocks instead of taking new superblocks.
    let again: Vec<usize> = (0..n).map(|_| malloc(64, false) as usize).collect();
    assert!(again.iter().any(|&p| Superblock::of(p as *const u8) as usize == first_sb));
    check();
    for p in again {
        tfree(p as *mut u8, "test", false);
    }
    check();
}

#[test]
fn abandoned_heaps_are_adopted() {
    // Threads that allocate and exit leave their superblocks to the global heap; blocks they left live
    // can be freed by anyone afterwards.
    let mut survivors = Vec::new();
    for _ in 0..50 {
        let keep = std::thread::spawn(|| {
            let v: Vec<usize> = (0..1000).map(|i| malloc(16 + i % 200, false) as usize).collect();
            for &p in &v[..900] {
                tfree(p as *mut u8, "test", false);
            }
            v[900..].to_vec()
        })
        .join()
        .unwrap();
        survivors.extend(keep);
    }
    for p in survivors {
        tfree(p as *mut u8, "test", false);
    }
    check();
}

#[test]
fn large_blocks_round_trip_and_cache() {
    for &size in &[crate::config::MAX_SMALL_SIZE + 1, 100_000, MAX_MEDIUM_SIZE + 1, 1 << 20, 5 << 20] {
        for _ in 0..4 {
            let p = malloc(size, false);
            assert!(!p.is_null());
            pattern(p, size, 7);
            let q = trealloc(p, size * 2, "test");
            verify(q, size, 7);
            tfree(q, "test", false);
        }
    }
    let p = aligned(64 << 20, 100);
    assert_eq!(p as usize % (64 << 20), 0);
    tfree(p, "test", false);
    check();
}

#[test]
fn zero_and_huge_requests() {
    let a = malloc(0, false);
    let b = malloc(0, false);
    assert!(!a.is_null() && !b.is_null() && a != b);
    tfree(a, "test", false);
    tfree(b, "test", false);
    assert!(malloc(usize::MAX, false).is_null());
    assert!(malloc(isize::MAX as usize, false).is_null());
    assert!(calloc(usize::MAX / 2, 3).is_null());
    assert!(aligned(1 << 20, usize::MAX - 100).is_null());
}

#[test]
fn emptiness_invariant_bounds_a_thread_heap() {
    // Allocate a lot, free most of it: the heap must give superblocks back to the global heap.
    let v: Vec<usize> = (0..200_000).map(|_| malloc(48, false) as usize).collect();
    for (i, &p) in v.iter().enumerate() {
        if i % 64 != 0 {
            tfree(p as *mut u8, "test", false);
        }
    }
    let h = thread::current();
    // SAFETY: our own heap; counters read with relaxed loads.
    let (u, a) = unsafe { ((*h).in_use(), (*h).held_not_current()) };
    let k = crate::config::EMPTY_SLACK_SUPERBLOCKS * SUPERBLOCK_SIZE;
    assert!(
        !(u < a.saturating_sub(k) && u < a - a / crate::config::EMPTY_FRACTION_INV),
        "emptiness invariant violated: u = {u}, a = {a}"
    );
    check();
    for (i, &p) in v.iter().enumerate() {
        if i % 64 == 0 {
            tfree(p as *mut u8, "test", false);
        }
    }
    check();
}

#[test]
fn growing_realloc_keeps_contents_and_grows_in_place_or_with_headroom() {
    // Each step writes only its new bytes and checks a sample of the old ones (debug builds are slow).
    let byte = |i: usize| (i * 31 % 251) as u8;
    let mut p = malloc(1, false);
    let mut size = 0;
    let mut moves = 0;
    while size < (8 << 20) {
        let next = size + 4093;
        let q = trealloc(p, next, "test");
        assert!(!q.is_null());
        if q != p {
            moves += 1;
        }
        // SAFETY: q holds `next` bytes; the first `size` were written before.
        unsafe {
            for i in (0..size).step_by(997) {
                assert_eq!(*q.add(i), byte(i), "byte {i} after growing to {next}");
            }
            for i in size..next {
                *q.add(i) = byte(i);
            }
        }
        p = q;
        size = next;
    }
    // About 2,000 steps: with in-place growth or 50% headroom, the block moves O(log n) times.
    assert!(moves < 100, "{moves} moves");
    tfree(p, "test", false);
    check();
}

#[test]
fn blocks_of_an_exited_thread_freed_elsewhere_come_back() {
    // A thread allocates and exits with its blocks live; this thread frees them (remote frees into
    // superblocks now in the global heap). A sweep must find those superblocks empty again.
    let v: Vec<usize> = std::thread::spawn(|| (0..20_000).map(|_| malloc(4000, false) as usize).collect())
        .join()
        .unwrap();
    for p in v {
        tfree(p as *mut u8, "test", false);
    }
    // trim sweeps the global heap: the superblocks become empty and their pages go back.
    assert!(trim(), "trim released nothing");
    global::check();
}

#[test]
fn frees_do_not_stay_on_the_slow_path_when_nothing_can_be_released() {
    // Many classes with one nearly empty current superblock each: the invariant cannot be restored
    // (current superblocks stay), so the check must disarm instead of running on every free.
    let sizes: Vec<usize> = (0..NCLASSES_FOR_TEST).map(crate::size_class::class_size).collect();
    let keep: Vec<usize> = sizes.iter().map(|&s| malloc(s, false) as usize).collect();
    let h = thread::current();
    for _ in 0..1000 {
        for &s in &sizes {
            let p = malloc(s, false);
            tfree(p, "test", false);
        }
    }
    // SAFETY: our own heap.
    let (u, below) = unsafe { ((*h).in_use(), (*h).release_below()) };
    assert!(u >= below, "free path still armed: u = {u}, release_below = {below}");
    for p in keep {
        tfree(p as *mut u8, "test", false);
    }
    check();
}

const NCLASSES_FOR_TEST: usize = crate::size_class::NCLASSES;

#[test]
fn medium_blocks_come_from_medium_superblocks_and_validate() {
    let sizes = [crate::config::MAX_SMALL_SIZE + 1, 40_000, 100_000, MAX_MEDIUM_SIZE];
    let mut v = Vec::new();
    for &s in &sizes {
        for _ in 0..10 {
            let p = malloc(s, false);
            assert!(!p.is_null());
            assert_eq!(p as usize % 16, 0);
            let chunk = (p as usize) & !(SUPERBLOCK_SIZE - 1);
            assert_eq!(addrmap::kind(chunk) & 0xf0, addrmap::MEDIUM, "size {s} served by a medium superblock");
            assert!(tusable(p, "test") >= s);
            pattern(p, s, 9);
            v.push((p, s));
        }
    }
    check();
    for (p, s) in v {
        verify(p, s, 9);
        tfree(p, "test", false);
    }
    check();
}
