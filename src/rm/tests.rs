//! Model tests of rmalloc: operation sequences against a shadow model, `check()` after every step.

use super::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::testutil::Rng;

fn byte(seed: u64, i: usize) -> u8 {
    (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) >> 3) as u8 ^ (i as u8)
}

fn fill(p: *mut u8, from: usize, to: usize, seed: u64) {
    for i in from..to {
        // SAFETY: p is a locked block of at least `to` bytes.
        unsafe { *p.add(i) = byte(seed, i) };
    }
}

fn verify(p: *const u8, n: usize, seed: u64, what: &str) {
    for i in 0..n {
        // SAFETY: p is a locked block of at least n bytes.
        let b = unsafe { *p.add(i) };
        assert_eq!(b, byte(seed, i), "{what}: byte {i} of {n}");
    }
}

const RESERVE: usize = 64 << 20;

fn new_rm() -> Rm {
    Rm::new(RESERVE, 1 << 16)
}

#[derive(Clone)]
struct Entry {
    h: usize,
    size: usize,
    seed: u64,
    locks: u32,
    ptr: *mut u8,
    purgeable: bool,
    purged: bool,
}

fn pick_size(r: &mut Rng) -> usize {
    match r.below(10) {
        0..=5 => r.below(200),
        6..=8 => r.below(4000),
        _ => r.below(40_000),
    }
}

fn model_run(seed: u64, steps: usize, limit: usize) {
    let rm = new_rm();
    let mut r = Rng(seed);
    let mut live: Vec<Entry> = Vec::new();
    let mut dead: Vec<usize> = Vec::new();
    let mut ooms = 0;
    let mut purges = 0;
    if limit != 0 {
        rm.set_limit(limit).unwrap();
    }
    for step in 0..steps {
        let op = r.below(100);
        match op {
            0..=29 => {
                let size = pick_size(&mut r);
                match rm.alloc(size) {
                    Ok(h) => {
                        let seed = r.next();
                        let p = rm.lock(h).unwrap();
                        assert_eq!(p as usize % 16, 0, "payload alignment");
                        fill(p, 0, size, seed);
                        rm.unlock(h).unwrap();
                        assert_eq!(rm.size(h), size);
                        live.push(Entry { h, size, seed, locks: 0, ptr: core::ptr::null_mut(), purgeable: false, purged: false });
                    }
                    Err(e) => {
                        assert_eq!(e, Error::OutOfMemory);
                        assert!(limit != 0, "out of memory without a limit");
                        ooms += 1;
                        // Every unlocked purgeable block has been discarded before giving up.
                        for e in live.iter_mut() {
                            if e.purgeable && e.locks == 0 && !e.purged {
                                assert_eq!(rm.lock(e.h), Err(Error::Purged), "an unlocked purgeable block survived OOM");
                                e.purged = true;
                            }
                        }
                        // With nothing locked, compaction leaves one run: the request really does not fit.
                        if live.iter().all(|e| e.locks == 0) {
                            let used = rm.stats().used;
                            assert!(heap::START_PAD + used + heap::block_size(size).unwrap() > limit, "OOM with room: used {used} size {size}");
                        }
                    }
                }
            }
            30..=44 if !live.is_empty() => {
                let i = r.below(live.len());
                let e = &mut live[i];
                if e.purged {
                    assert_eq!(rm.lock(e.h), Err(Error::Purged));
                    continue_check(&rm);
                    continue;
                }
                let p = rm.lock(e.h).unwrap();
                if e.locks > 0 {
                    assert_eq!(p, e.ptr, "a locked block moved");
                }
                verify(p, e.size, e.seed, "lock");
                e.locks += 1;
                e.ptr = p;
            }
            45..=59 if !live.is_empty() => {
                let i = r.below(live.len());
                let e = &mut live[i];
                if e.locks == 0 {
                    assert_eq!(rm.unlock(e.h), Err(Error::NotLocked));
                } else {
                    // SAFETY: still locked: the pointer is valid.
                    verify(e.ptr, e.size, e.seed, "before unlock");
                    rm.unlock(e.h).unwrap();
                    e.locks -= 1;
                }
            }
            60..=79 if !live.is_empty() => {
                let i = r.below(live.len());
                if live[i].locks > 0 {
                    assert_eq!(rm.free(live[i].h), Err(Error::Locked));
                } else {
                    let e = live.swap_remove(i);
                    if !e.purged {
                        let p = rm.lock(e.h).unwrap();
                        verify(p, e.size, e.seed, "before free");
                        rm.unlock(e.h).unwrap();
                    }
                    rm.free(e.h).unwrap();
                    dead.push(e.h);
                }
            }
            80..=87 if !live.is_empty() => {
                let i = r.below(live.len());
                let size = pick_size(&mut r);
                let e = &mut live[i];
                match rm.realloc(e.h, size) {
                    Ok(()) => {
                        if e.purged {
                            e.purged = false;
                            e.seed = r.next();
                            let p = rm.lock(e.h).unwrap();
                            fill(p, 0, size, e.seed);
                            rm.unlock(e.h).unwrap();
                        } else {
                            let p = rm.lock(e.h).unwrap();
                            if e.locks > 0 {
                                assert_eq!(p, e.ptr, "realloc moved a locked block");
                            }
                            verify(p, e.size.min(size), e.seed, "after realloc");
                            fill(p, e.size.min(size), size, e.seed);
                            rm.unlock(e.h).unwrap();
                        }
                        e.size = size;
                        assert_eq!(rm.size(e.h), size);
                    }
                    Err(Error::Locked) => assert!(e.locks > 0 && !e.purged),
                    Err(Error::OutOfMemory) => assert!(limit != 0),
                    Err(x) => panic!("realloc: {x:?}"),
                }
            }
            88..=91 if !live.is_empty() => {
                let i = r.below(live.len());
                let e = &mut live[i];
                let v = r.below(2) == 0;
                rm.set_purgeable(e.h, v).unwrap();
                e.purgeable = v;
            }
            92..=95 => {
                let budget = if r.below(2) == 0 { 0 } else { 1 + r.below(20) as u64 };
                let done = rm.compact(budget);
                if budget == 0 {
                    assert!(done);
                    if live.iter().all(|e| e.locks == 0) {
                        let s = rm.stats();
                        assert_eq!(s.fragmentation, 0.0, "free space is one run after a full compaction: {s:?}");
                        assert!(s.free < crate::os::page_size(), "pages past the end returned: {s:?}");
                    }
                }
            }
            96 if !dead.is_empty() => {
                let h = dead[r.below(dead.len())];
                assert_eq!(rm.lock(h), Err(Error::InvalidHandle));
                assert_eq!(rm.unlock(h), Err(Error::InvalidHandle));
                assert_eq!(rm.free(h), Err(Error::InvalidHandle));
                assert_eq!(rm.realloc(h, 10), Err(Error::InvalidHandle));
                assert_eq!(rm.set_purgeable(h, true), Err(Error::InvalidHandle));
                assert_eq!(rm.size(h), 0);
            }
            97 => {
                // Every live block's contents, and every lock pointer unchanged.
                for e in &live {
                    if e.purged {
                        continue;
                    }
                    let p = rm.lock(e.h).unwrap();
                    if e.locks > 0 {
                        assert_eq!(p, e.ptr, "a locked block moved");
                    }
                    verify(p, e.size, e.seed, "sweep");
                    rm.unlock(e.h).unwrap();
                }
            }
            _ => {}
        }
        continue_check(&rm);
        let s = rm.stats();
        if s.purges != purges {
            // An allocation made room by discarding purgeable blocks: learn which.
            purges = s.purges;
            for e in live.iter_mut() {
                if e.purgeable && !e.purged && e.locks == 0 {
                    match rm.lock(e.h) {
                        Err(Error::Purged) => e.purged = true,
                        Ok(_) => rm.unlock(e.h).unwrap(),
                        Err(x) => panic!("{x:?}"),
                    }
                }
            }
        }
        assert_eq!(s.handles, live.len(), "step {step}: handles");
        assert_eq!(s.capacity, s.used + s.free);
    }
    // Unlock everything, free everything: the heap is empty and gives its pages back.
    for e in live.drain(..) {
        for _ in 0..e.locks {
            rm.unlock(e.h).unwrap();
        }
        rm.free(e.h).unwrap();
    }
    let end = rm.stats();
    eprintln!("model seed {seed:#x} limit {limit}: {ooms} OOMs, {end:?}");
    rm.compact(0);
    rm.check();
    let s = rm.stats();
    assert_eq!((s.used, s.handles), (0, 0));
    assert!(s.capacity <= crate::os::page_size(), "{s:?}");
    if limit != 0 {
        assert!(ooms > 0 && end.purges > 0, "the limit was never reached");
    }
}

fn continue_check(rm: &Rm) {
    rm.check();
}

#[test]
fn model_unlimited() {
    for seed in 1..=3u64 {
        model_run(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 4000, 0);
    }
}

#[test]
fn model_under_a_limit_compacts_and_purges() {
    model_run(0xDEAD_BEEF, 6000, 512 << 10);
    model_run(0x1234_5678, 6000, 2 << 20);
}

#[test]
fn bad_handles_are_refused() {
    let rm = new_rm();
    assert_eq!(rm.lock(0x1000), Err(Error::InvalidHandle), "before any allocation");
    let h = rm.alloc(10).unwrap();
    assert_eq!(rm.lock(h + 1), Err(Error::InvalidHandle), "wrong generation tag");
    assert_eq!(rm.lock(h ^ (1 << 40)), Err(Error::InvalidHandle), "outside the table");
    assert_eq!(rm.lock(h + 32), Err(Error::InvalidHandle), "an unused slot");
    assert_eq!(rm.unlock(h), Err(Error::NotLocked));
    let p = rm.lock(h).unwrap();
    assert_eq!(rm.lock(h).unwrap(), p, "locks nest");
    assert_eq!(rm.free(h), Err(Error::Locked));
    rm.unlock(h).unwrap();
    assert_eq!(rm.free(h), Err(Error::Locked), "one lock still held");
    rm.unlock(h).unwrap();
    assert_eq!(rm.unlock(h), Err(Error::NotLocked));
    rm.free(h).unwrap();
    assert_eq!(rm.free(h), Err(Error::InvalidHandle), "double free");
    // Reuse is delayed: many allocations later the freed handle is still refused.
    let hs: Vec<usize> = (0..3000).map(|_| rm.alloc(1).unwrap()).collect();
    assert!(!hs.contains(&h));
    assert_eq!(rm.lock(h), Err(Error::InvalidHandle));
    for x in hs.iter().take(2000) {
        rm.free(*x).unwrap();
    }
    // Now slots are reused, each with a new generation: the stale handles still fail.
    let again: Vec<usize> = (0..900).map(|_| rm.alloc(1).unwrap()).collect();
    for x in hs.iter().take(2000) {
        assert!(!again.contains(x), "a reused slot gave back a stale handle");
        assert_eq!(rm.lock(*x), Err(Error::InvalidHandle));
    }
    assert_eq!(rm.alloc(usize::MAX), Err(Error::OutOfMemory));
    let compactions = rm.stats().compactions;
    assert_eq!(rm.alloc(RESERVE), Err(Error::OutOfMemory));
    assert_eq!(rm.stats().compactions, compactions, "an impossible request compacted the heap");
    rm.check();
}

#[test]
fn compaction_packs_around_locked_blocks_and_resumes() {
    let rm = new_rm();
    let hs: Vec<usize> = (0..5000).map(|i| rm.alloc(16 + (i % 7) * 24).unwrap()).collect();
    for (i, h) in hs.iter().enumerate() {
        let p = rm.lock(*h).unwrap();
        fill(p, 0, 16 + (i % 7) * 24, i as u64);
        rm.unlock(*h).unwrap();
    }
    let mut pinned = Vec::new();
    for (i, h) in hs.iter().enumerate() {
        if i % 3 == 0 {
            rm.free(*h).unwrap();
        } else if i % 97 == 1 {
            pinned.push((i, *h, rm.lock(*h).unwrap()));
        }
    }
    let before = rm.stats();
    assert!(before.fragmentation > 0.5, "{before:?}");
    // Tiny budgets: many resumable steps, checked after each.
    let mut steps = 0;
    while !rm.compact(1) {
        rm.check();
        steps += 1;
        assert!(steps < 100_000);
    }
    rm.check();
    for &(i, h, p) in &pinned {
        assert_eq!(rm.lock(h).unwrap(), p, "a locked block moved");
        verify(p, 16 + (i % 7) * 24, i as u64, "pinned");
        rm.unlock(h).unwrap();
    }
    for (i, h) in hs.iter().enumerate() {
        if i % 3 != 0 {
            let p = rm.lock(*h).unwrap();
            verify(p, 16 + (i % 7) * 24, i as u64, "moved");
            rm.unlock(*h).unwrap();
        }
    }
    let after = rm.stats();
    assert!(after.bytes_moved > 0 && after.compactions as usize == steps + 1);
    assert!(after.capacity < before.capacity, "pages returned: {before:?} -> {after:?}");
    for &(_, h, _) in &pinned {
        rm.unlock(h).unwrap();
    }
    rm.compact(0);
    let s = rm.stats();
    assert_eq!(s.fragmentation, 0.0, "{s:?}");
    rm.check();
}

#[test]
fn purge_on_pressure_and_revive() {
    let rm = new_rm();
    rm.set_limit(1 << 20).unwrap();
    let a = rm.alloc(600 << 10).unwrap();
    rm.set_purgeable(a, true).unwrap();
    let p = rm.lock(a).unwrap();
    // Locked: it cannot be purged, so the second allocation fails.
    assert_eq!(rm.alloc(600 << 10), Err(Error::OutOfMemory));
    rm.unlock(a).unwrap();
    let _ = p;
    let b = rm.alloc(600 << 10).unwrap();
    assert_eq!(rm.lock(a), Err(Error::Purged));
    assert_eq!(rm.size(a), 0);
    assert_eq!(rm.stats().purges, 1);
    assert_eq!(rm.realloc(a, 1 << 20), Err(Error::OutOfMemory));
    rm.free(b).unwrap();
    rm.realloc(a, 100).unwrap();
    let p = rm.lock(a).unwrap();
    fill(p, 0, 100, 5);
    rm.unlock(a).unwrap();
    assert_eq!(rm.size(a), 100);
    rm.check();
    // A limit below what is in use is refused; one above it is taken.
    assert_eq!(rm.set_limit(64), Err(Error::OutOfMemory));
    rm.set_limit(0).unwrap();
    rm.free(a).unwrap();
    rm.check();
}

#[test]
fn threads_lock_while_another_compacts() {
    let rm = Arc::new(new_rm());
    let stop = Arc::new(AtomicBool::new(false));
    let compactor = {
        let (rm, stop) = (rm.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                rm.compact(if n % 2 == 0 { 0 } else { 50 });
                n += 1;
            }
            n
        })
    };
    // A shared handle that every thread locks concurrently: its pointer is stable while any holds it.
    let shared = rm.alloc(4096).unwrap();
    {
        let p = rm.lock(shared).unwrap();
        fill(p, 0, 4096, 77);
        rm.unlock(shared).unwrap();
    }
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let rm = rm.clone();
            std::thread::spawn(move || {
                let mut r = Rng(t + 1);
                let mut mine: Vec<(usize, usize, u64)> = Vec::new();
                for _ in 0..6000 {
                    match r.below(6) {
                        0 | 1 => {
                            let size = pick_size(&mut r);
                            let h = rm.alloc(size).unwrap();
                            let seed = r.next();
                            let p = rm.lock(h).unwrap();
                            fill(p, 0, size, seed);
                            rm.unlock(h).unwrap();
                            mine.push((h, size, seed));
                        }
                        2 if !mine.is_empty() => {
                            let (h, _, _) = mine.swap_remove(r.below(mine.len()));
                            rm.free(h).unwrap();
                        }
                        3 if !mine.is_empty() => {
                            let (h, size, seed) = mine[r.below(mine.len())];
                            let p = rm.lock(h).unwrap();
                            verify(p, size, seed, "threaded");
                            std::hint::black_box(&p);
                            assert_eq!(rm.lock(h).unwrap(), p);
                            verify(p, size, seed, "threaded, nested");
                            rm.unlock(h).unwrap();
                            rm.unlock(h).unwrap();
                        }
                        _ => {
                            let p = rm.lock(shared).unwrap();
                            verify(p, 4096, 77, "shared");
                            assert_eq!(rm.lock(shared).unwrap(), p, "shared block moved while locked");
                            rm.unlock(shared).unwrap();
                            rm.unlock(shared).unwrap();
                        }
                    }
                }
                for (h, size, seed) in mine {
                    let p = rm.lock(h).unwrap();
                    verify(p, size, seed, "threaded, end");
                    rm.unlock(h).unwrap();
                    rm.free(h).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let passes = compactor.join().unwrap();
    assert!(passes > 0);
    rm.check();
    rm.free(shared).unwrap();
    assert_eq!(rm.stats().handles, 0);
}

#[test]
fn os_failures_are_out_of_memory_and_leave_the_heap_intact() {
    let rm = new_rm();
    // The very first allocation cannot reserve anything.
    crate::os::inject_failures_after(Some(0));
    assert_eq!(rm.alloc(100), Err(Error::OutOfMemory));
    crate::os::inject_failures_after(None);
    let a = rm.alloc(100).unwrap();
    let p = rm.lock(a).unwrap();
    fill(p, 0, 100, 1);
    rm.unlock(a).unwrap();
    // Growing the heap (commit) fails: the request fails, what exists stays.
    crate::os::inject_failures_after(Some(0));
    assert_eq!(rm.alloc(1 << 20), Err(Error::OutOfMemory));
    assert_eq!(rm.realloc(a, 1 << 20), Err(Error::OutOfMemory));
    // Small allocations fail once the committed heap or the first commit step of the table is used up.
    let mut hs = Vec::new();
    let err = loop {
        match rm.alloc(8) {
            Ok(h) => hs.push(h),
            Err(e) => break e,
        }
        assert!(hs.len() < 100_000, "table never needed to grow");
    };
    assert_eq!(err, Error::OutOfMemory);
    crate::os::inject_failures_after(None);
    rm.check();
    let p = rm.lock(a).unwrap();
    verify(p, 100, 1, "after injected failures");
    rm.unlock(a).unwrap();
    assert_eq!(rm.size(a), 100);
    rm.alloc(1 << 20).unwrap();
    rm.alloc(8).unwrap();
    rm.check();
}
