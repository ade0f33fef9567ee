//! Compaction and purging: making room in the heap by moving and discarding blocks.
//!
//! Compaction walks the blocks in address order with two cursors: `scan`, the next block to visit,
//! and `dest`, where the next movable block goes. Free and quick-list blocks are taken out of their
//! lists and become part of the gap `[dest, scan)`; an unlocked live block is pinned (its slot's state
//! goes from count 0 to MOVING with one compare-exchange, so a concurrent `rmlock` either got in
//! first, and the block stays, or waits until the bit clears), copied down to `dest`, its slot updated,
//! and unpinned. A locked block stays where it is; the blocks after it are moved back into the gap
//! before it while they fit, and what is left of the gap becomes a free block (see [`compact`]). When
//! `scan` reaches `top` the trailing gap joins the wilderness and the pages past the new `top` go back
//! to the OS.
//!
//! With a time budget the walk reads the clock every `RM_COMPACT_CHECK_BLOCKS` blocks or
//! `RM_COMPACT_CHECK_BYTES` moved bytes; when the budget is spent it closes the gap as a free block and
//! remembers `dest` in `heap.resume`, where the next budgeted call continues (see `Heap::absorbed` for
//! how the resume point survives frees in between). A full compaction (budget 0) starts at the heap's
//! start. The overshoot is at most the work between two clock reads: `RM_COMPACT_CHECK_BLOCKS` blocks
//! or `RM_COMPACT_CHECK_BYTES` bytes, plus one block; a budgeted pass that ends gives back at most
//! `RM_COMPACT_TRIM_STEP` bytes of pages per call.

use super::heap::{fsize, hdr, htag, set_hdr, QUICK};
use super::table::{Table, COUNT_MASK, LIVE, MOVING, PURGEABLE, PURGED};
use super::Inner;
use crate::config::{RM_COMPACT_CHECK_BLOCKS, RM_COMPACT_CHECK_BYTES, RM_COMPACT_TRIM_STEP};
use core::sync::atomic::Ordering;

/// Monotonic clock in nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the block of `slot` for moving (lock count 0 -> MOVING); false when it is locked or pinned.
fn pin(slot: &super::table::Slot) -> bool {
    loop {
        // Relaxed peek; the compare-exchange below does the ordering.
        let s = slot.state.load(Ordering::Relaxed);
        if s & (COUNT_MASK | MOVING) != 0 {
            return false;
        }
        // Acquire pairs with the Release decrement in `rmunlock`: the program's writes to the block are
        // visible before it is copied.
        if slot.state.compare_exchange(s, s | MOVING, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return true;
        }
    }
}

/// Copies pinned block `from` (header `hd`, `size` bytes) to `to`, publishes the new address and
/// unpins it.
///
/// # Safety
/// The slot is pinned by this thread; `[to, to + size)` is unused heap (it may overlap the block).
unsafe fn move_block(slot: &super::table::Slot, from: usize, to: usize, hd: usize, size: usize) {
    // SAFETY: forwarded to the caller; the block cannot be locked while MOVING is set.
    unsafe {
        core::ptr::copy(from as *const u8, to as *mut u8, size);
        set_hdr(to, hd & !1);
    }
    // Relaxed: published by the Release below.
    slot.block.store(to, Ordering::Relaxed);
    // Release pairs with the Acquire compare-exchange in `rmlock`: the new address and the moved bytes
    // are visible to whoever locks the block next.
    slot.state.fetch_and(!MOVING, Ordering::Release);
}

/// Runs one compaction (`budget_ns == 0`: a full pass from the start). Returns true when the pass
/// reached the end of the heap. Called with the heap mutex held.
///
/// Two modes: *sliding* (`gap == None`): `[dest, scan)` is free and each unlocked block slides down
/// to `dest`. *Filling* (`gap == Some((end, anchor_end))`): a locked block occupies `[end,
/// anchor_end)`, `[dest, end)` is the free gap before it and `[anchor_end, scan)` is free; unlocked
/// blocks from after the locked one move back into the gap while they fit (leaving either nothing or
/// at least a minimum block), so compaction packs around locked blocks instead of leaving holes.
pub fn compact(table: &Table, inner: &mut Inner, budget_ns: u64) -> bool {
    let t0 = now_ns();
    let h = &mut inner.heap;
    if h.base == 0 {
        return true;
    }
    let full = budget_ns == 0;
    if !full && h.trim_pending {
        // The last budgeted pass finished; give back the rest of its pages before starting another.
        h.trim_pending = !h.trim_at_most(RM_COMPACT_TRIM_STEP);
        if h.trim_pending {
            return finish(inner, t0, 0, false);
        }
    }
    let from = if full { h.start } else { h.resume };
    let (mut scan, mut dest) = (from, from);
    let mut gap: Option<(usize, usize)> = None;
    let (mut blocks, mut bytes, mut moved) = (0usize, 0usize, 0u64);
    // Closes the gap before a locked block at `end`: the rest of it becomes a free block.
    let close = |h: &mut super::heap::Heap, dest: usize, end: usize| {
        // SAFETY: every caller passes the gap [dest, end): unused heap after a live block, of 0 or at
        // least MIN_BLOCK bytes, and `end` is the locked (live) block after it.
        unsafe {
            if dest < end {
                h.insert_free(dest, end - dest);
            }
            set_hdr(end, (hdr(end) & !1) | (dest < end) as usize);
        }
    };
    let done = loop {
        if scan >= h.top {
            break true;
        }
        // SAFETY: scan is a block boundary in [start, top): it starts at one (start or the resume
        // point) and advances by block sizes.
        let hd = unsafe { hdr(scan) };
        let tag = htag(hd);
        if tag == 0 || tag == QUICK {
            // SAFETY: a free block at a boundary is listed, and so is a quick one; both hold their size.
            unsafe {
                let size = fsize(scan);
                if tag == 0 {
                    h.remove_free(scan);
                } else {
                    h.remove_quick(scan);
                }
                scan += size;
            }
            continue;
        }
        // SAFETY: a live block's tag names a slot below the high-water mark.
        let slot = unsafe { table.slot(tag - 1) };
        // Relaxed: a live block's size changes only under the heap mutex, which we hold.
        let size = slot.next_free.load(Ordering::Relaxed);
        if let Some((end, anchor_end)) = gap {
            let room = end - dest;
            if (size == room || size + super::heap::MIN_BLOCK <= room) && pin(slot) {
                // SAFETY: pinned; [dest, dest + size) lies in the gap, below the block.
                unsafe { move_block(slot, scan, dest, hd, size) };
                moved += size as u64;
                bytes += size;
                dest += size;
                scan += size;
                if dest == end {
                    close(h, dest, end);
                    gap = None;
                    dest = anchor_end;
                }
                blocks += 1;
            } else {
                // It does not fit (or is locked): the gap is done; slide from after the locked block.
                close(h, dest, end);
                gap = None;
                dest = anchor_end;
                // Visit this block again in sliding mode.
                continue;
            }
        } else if dest == scan {
            scan += size;
            dest = scan;
            blocks += 1;
        } else if pin(slot) {
            // SAFETY: pinned; [dest, scan) is free, so the copy stays inside the heap.
            unsafe { move_block(slot, scan, dest, hd, size) };
            moved += size as u64;
            bytes += size;
            dest += size;
            scan += size;
            blocks += 1;
        } else {
            // Locked: it stays; fill the gap before it from the blocks after it.
            gap = Some((scan, scan + size));
            scan += size;
            blocks += 1;
        }
        if !full && scan < h.top && (blocks >= RM_COMPACT_CHECK_BLOCKS || bytes >= RM_COMPACT_CHECK_BYTES) {
            blocks = 0;
            bytes = 0;
            if now_ns().wrapping_sub(t0) >= budget_ns {
                break false;
            }
        }
    };
    if let Some((end, anchor_end)) = gap {
        close(h, dest, end);
        dest = anchor_end;
    }
    if done {
        h.top = dest;
        h.resume = h.start;
        if full {
            h.trim();
        } else {
            h.trim_pending = !h.trim_at_most(RM_COMPACT_TRIM_STEP);
        }
    } else {
        if dest < scan {
            let mut end = scan;
            // SAFETY: scan < top is a block boundary; a free one is listed and its successor is live.
            unsafe {
                let sh = hdr(scan);
                if htag(sh) == 0 {
                    end = scan + fsize(scan);
                    h.remove_free(scan);
                } else {
                    set_hdr(scan, sh | 1);
                }
                h.insert_free(dest, end - dest);
            }
        }
        h.resume = dest;
    }
    finish(inner, t0, moved, done)
}

fn finish(inner: &mut Inner, t0: u64, moved: u64, done: bool) -> bool {
    let pause = now_ns().wrapping_sub(t0);
    inner.compactions += 1;
    inner.bytes_moved += moved;
    inner.longest_pause_ns = inner.longest_pause_ns.max(pause);
    done
}

/// Discards every unlocked purgeable block: its slot stays LIVE and becomes PURGED. Returns how many
/// were discarded. Called with the heap mutex held.
pub fn purge(table: &Table, inner: &mut Inner) -> usize {
    let mut n = 0;
    for idx in 0..inner.tab.hwm {
        // SAFETY: idx < hwm.
        let slot = unsafe { table.slot(idx) };
        let ok = loop {
            // Relaxed peek; the compare-exchange orders.
            let s = slot.state.load(Ordering::Relaxed);
            if s & (LIVE | PURGEABLE | PURGED | MOVING | COUNT_MASK) != (LIVE | PURGEABLE) {
                break false;
            }
            // Acquire pairs with `rmunlock`'s Release: nobody uses the block after this.
            if slot.state.compare_exchange(s, s | PURGED, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                break true;
            }
        };
        if ok {
            // Relaxed: written under the heap mutex; readers see PURGED first and never read it.
            let b = slot.block.load(Ordering::Relaxed);
            slot.block.store(0, Ordering::Relaxed);
            let size = slot.next_free.load(Ordering::Relaxed);
            // SAFETY: b was the live block (of `size` bytes) of a slot that is now PURGED and unlocked:
            // nobody uses it.
            unsafe { inner.heap.free_block(b, size) };
            inner.heap.used -= size;
            n += 1;
        }
    }
    inner.purges += n as u64;
    n
}
