//! rmalloc: relocatable handles over a compacting heap.
//!
//! Programs hold a *handle* (the address of a slot in the [`table`], which never moves) and reach the
//! bytes only between `rmlock` and `rmunlock`. Because nothing else points into the [`heap`], it can be
//! compacted ([`compact`]): unlocked blocks slide toward the start and their slots are updated; locked
//! blocks stay put and compaction packs around them. Purgeable blocks can be discarded when memory runs
//! out; their handles stay valid and report `Purged` until revived by `realloc`.
//!
//! Concurrency: one [`Mutex`] guards the heap and the table's allocation state. `lock`/`unlock` (and
//! `set_purgeable`, `size`) do not take it: they change the slot's state word with one compare-exchange,
//! which compaction also uses to pin a block (count 0 -> MOVING), so a block being locked is never moved
//! and a block being moved is not handed out until its new address is published.
//!
//! Invariants (walked by [`Rm::check`]): those of the [`table`] and the [`heap`], plus: every live,
//! unpurged slot names a live block whose tag names it back, and every live block is named by its slot.

pub mod compact;
pub mod heap;
pub mod table;

use crate::sync::Mutex;
use core::sync::atomic::Ordering;
use heap::{Heap, HEADER};
use table::{tag_of, Slot, Table, TableInner, COUNT_MASK, GEN_SHIFT, LIVE, MOVING, PURGEABLE, PURGED};

/// Why an rmalloc operation failed (the C status codes other than `RM_OK`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A NULL handle or out-parameter.
    InvalidArgument,
    /// No room within the limit, after compacting and purging; or a size that overflows.
    OutOfMemory,
    /// Not a handle of this heap, or a freed one.
    InvalidHandle,
    /// The handle is locked (free, or a resize that must move the block).
    Locked,
    /// Unlock of a handle whose lock count is zero.
    NotLocked,
    /// The purgeable block was discarded.
    Purged,
}

/// A snapshot of the heap (see `rm_stats_t` for the meaning of each field).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Committed heap bytes.
    pub capacity: usize,
    /// Bytes in live blocks.
    pub used: usize,
    /// `capacity - used`.
    pub free: usize,
    /// Largest free run.
    pub largest_free: usize,
    /// `1 - largest_free / free`.
    pub fragmentation: f64,
    /// Live handles.
    pub handles: usize,
    /// Compaction passes.
    pub compactions: u64,
    /// Bytes moved by compaction.
    pub bytes_moved: u64,
    /// Longest compaction, ns.
    pub longest_pause_ns: u64,
    /// Blocks purged.
    pub purges: u64,
}

/// The state guarded by the heap mutex.
pub struct Inner {
    /// Allocation state of the handle table.
    pub tab: TableInner,
    /// The heap.
    pub heap: Heap,
    /// Compaction passes run.
    pub compactions: u64,
    /// Bytes moved by compaction.
    pub bytes_moved: u64,
    /// Longest compaction, ns.
    pub longest_pause_ns: u64,
    /// Blocks purged.
    pub purges: u64,
}

/// One rmalloc heap with its handle table. The C API uses one global instance ([`global`]); tests
/// make their own.
pub struct Rm {
    table: Table,
    inner: Mutex<Inner>,
}

static GLOBAL: Rm = Rm::new(crate::config::RM_HEAP_RESERVE, crate::config::RM_MAX_HANDLES);

/// The heap behind the C API.
#[inline(always)]
pub fn global() -> &'static Rm {
    ATFORK.call_once(register_atfork);
    &GLOBAL
}

// fork(): the heap mutex is taken before the fork and released on both sides, so that a child forked
// while another thread compacts or allocates finds the heap consistent and the mutex free. (Locks that
// other threads held on handles stay counted in the child: those blocks stay where they are.)
static ATFORK: crate::sync::Once = crate::sync::Once::new();

struct ForkGuard(core::cell::UnsafeCell<Option<crate::sync::MutexGuard<'static, Inner>>>);
// SAFETY: the cell is touched only by the fork handlers, which run one at a time in the forking thread
// (prepare, then parent or child).
unsafe impl Sync for ForkGuard {}
static FORK_GUARD: ForkGuard = ForkGuard(core::cell::UnsafeCell::new(None));

fn register_atfork() {
    // SAFETY: the handlers are plain functions; glibc stores the first handlers without allocating.
    unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
}

unsafe extern "C" fn fork_prepare() {
    let g = GLOBAL.inner.lock();
    // SAFETY: see ForkGuard.
    unsafe { *FORK_GUARD.0.get() = Some(g) };
}

unsafe extern "C" fn fork_parent() {
    // SAFETY: see ForkGuard. Dropping the guard unlocks the mutex and wakes any waiter.
    drop(unsafe { (*FORK_GUARD.0.get()).take() });
}

unsafe extern "C" fn fork_child() {
    // SAFETY: see ForkGuard.
    if let Some(g) = unsafe { (*FORK_GUARD.0.get()).take() } {
        core::mem::forget(g);
        // SAFETY: the child has one thread; the heap is consistent because the prepare handler held
        // the mutex across the fork.
        unsafe { GLOBAL.inner.force_unlock_after_fork() };
    }
}

impl Rm {
    /// A heap reserving `heap_reserve` bytes (a multiple of the page size) and `max_handles` slots on
    /// first use.
    pub const fn new(heap_reserve: usize, max_handles: usize) -> Self {
        Rm {
            table: Table::new(),
            inner: Mutex::new(Inner {
                tab: TableInner::new(max_handles),
                heap: Heap::new(heap_reserve),
                compactions: 0,
                bytes_moved: 0,
                longest_pause_ns: 0,
                purges: 0,
            }),
        }
    }

    /// Finds the live slot of handle `h`: `(slot, current state)`.
    #[inline(always)]
    fn live_slot(&self, h: usize) -> Result<(&Slot, u64), Error> {
        let (slot, tag) = self.table.lookup(h).ok_or(Error::InvalidHandle)?;
        // Acquire pairs with the Release stores that make a slot live or publish a moved block.
        let s = slot.state.load(Ordering::Acquire);
        if s & LIVE == 0 || tag_of(s) != tag {
            return Err(Error::InvalidHandle);
        }
        Ok((slot, s))
    }

    /// Allocates a block of `size` bytes and a handle for it.
    pub fn alloc(&self, size: usize) -> Result<usize, Error> {
        let bsize = heap::block_size(size).ok_or(Error::OutOfMemory)?;
        let mut g = self.inner.lock();
        let inner = &mut *g;
        if !inner.heap.ensure_init() {
            return Err(Error::OutOfMemory);
        }
        let idx = self.table.alloc(&mut inner.tab).map_err(|_| Error::OutOfMemory)?;
        let (b, real) = match inner.heap.alloc_block(bsize) {
            Some(x) => x,
            None => match self.alloc_slow(inner, bsize) {
                Some(x) => x,
                None => {
                    self.table.release_slot(&mut inner.tab, idx);
                    return Err(Error::OutOfMemory);
                }
            },
        };
        inner.heap.used += real;
        // SAFETY: b is the block just allocated; idx is below the high-water mark.
        unsafe {
            heap::set_hdr(b, heap::hdr(b) | heap::live_header(idx + 1, false));
            let slot = self.table.slot(idx);
            // Relaxed: published by the Release store of the state.
            slot.block.store(b, Ordering::Relaxed);
            slot.size.store(size, Ordering::Relaxed);
            slot.next_free.store(real, Ordering::Relaxed);
            let gen = slot.state.load(Ordering::Relaxed) >> GEN_SHIFT;
            // Release pairs with the Acquire loads of `live_slot`/`lock` in other threads.
            slot.state.store((gen << GEN_SHIFT) | LIVE, Ordering::Release);
            inner.tab.live += 1;
            Ok(self.table.handle(idx))
        }
    }

    /// The allocation did not fit: compact, retry; discard purgeable blocks, compact, retry.
    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, inner: &mut Inner, bsize: usize) -> Option<(usize, usize)> {
        // A request that cannot fit even in an empty heap must not cost a compaction or the purgeable
        // blocks.
        let room = if inner.heap.limit != 0 { inner.heap.limit.min(inner.heap.reserve) } else { inner.heap.reserve };
        if bsize > room - HEADER {
            return None;
        }
        if inner.heap.quick_bytes != 0 {
            inner.heap.flush_quick();
            if let Some(x) = inner.heap.alloc_block(bsize) {
                return Some(x);
            }
        }
        compact::compact(&self.table, inner, 0);
        if let Some(x) = inner.heap.alloc_block(bsize) {
            return Some(x);
        }
        if compact::purge(&self.table, inner) > 0 {
            compact::compact(&self.table, inner, 0);
            return inner.heap.alloc_block(bsize);
        }
        None
    }

    /// Locks the block of `h` (the count goes up by one) and returns its address, stable until the
    /// matching unlock.
    #[inline(always)]
    pub fn lock(&self, h: usize) -> Result<*mut u8, Error> {
        if let Some((slot, tag)) = self.table.lookup(h) {
            // Relaxed peek: the compare-exchange below orders.
            let s = slot.state.load(Ordering::Relaxed);
            if s & (LIVE | PURGED | MOVING) == LIVE && tag_of(s) == tag && s & COUNT_MASK < COUNT_MASK - 1 {
                // Acquire pairs with compaction's Release clearing MOVING: the block's address and
                // contents are current.
                if slot.state.compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    // Relaxed: ordered by the Acquire above; compaction cannot move it now.
                    return Ok((slot.block.load(Ordering::Relaxed) + HEADER) as *mut u8);
                }
            }
        }
        self.lock_slow(h)
    }

    #[cold]
    #[inline(never)]
    fn lock_slow(&self, h: usize) -> Result<*mut u8, Error> {
        let (slot, tag) = self.table.lookup(h).ok_or(Error::InvalidHandle)?;
        let mut spins = 0u32;
        loop {
            // Acquire pairs with the Release that clears MOVING.
            let s = slot.state.load(Ordering::Acquire);
            if s & LIVE == 0 || tag_of(s) != tag {
                return Err(Error::InvalidHandle);
            }
            if s & PURGED != 0 {
                return Err(Error::Purged);
            }
            if s & COUNT_MASK >= COUNT_MASK - 1 {
                return Err(Error::Locked);
            }
            if s & MOVING != 0 {
                // The allocator is moving or resizing this block: wait until it publishes the result.
                spins += 1;
                if spins < 64 {
                    core::hint::spin_loop();
                } else {
                    // SAFETY: sched_yield has no preconditions.
                    unsafe { libc::sched_yield() };
                }
                continue;
            }
            // Acquire: as in `lock`.
            if slot.state.compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                // Relaxed: ordered by the Acquire above.
                return Ok((slot.block.load(Ordering::Relaxed) + HEADER) as *mut u8);
            }
        }
    }

    /// Unlocks `h` (the count goes down by one).
    #[inline(always)]
    pub fn unlock(&self, h: usize) -> Result<(), Error> {
        let (slot, tag) = self.table.lookup(h).ok_or(Error::InvalidHandle)?;
        // Relaxed peek: the compare-exchange orders.
        let mut s = slot.state.load(Ordering::Relaxed);
        loop {
            if s & LIVE == 0 || tag_of(s) != tag {
                return Err(Error::InvalidHandle);
            }
            if s & COUNT_MASK == 0 {
                return Err(Error::NotLocked);
            }
            // Release pairs with compaction's and purge's Acquire compare-exchange: the program's writes
            // to the block happen before it is moved or discarded.
            match slot.state.compare_exchange_weak(s, s - 1, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(now) => s = now,
            }
        }
    }

    /// Frees `h` and its block. Refused while it is locked.
    pub fn free(&self, h: usize) -> Result<(), Error> {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let (slot, mut s) = self.live_slot(h)?;
        loop {
            if s & COUNT_MASK != 0 {
                return Err(Error::Locked);
            }
            let gen = (s >> GEN_SHIFT) + 1;
            // Acquire pairs with `rmunlock`'s Release: the last user is done with the block.
            match slot.state.compare_exchange(s, gen << GEN_SHIFT, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => {
                    if now & LIVE == 0 || tag_of(now) != tag_of(s) {
                        return Err(Error::InvalidHandle);
                    }
                    s = now;
                }
            }
        }
        // Relaxed: under the mutex; the slot is no longer live, so no lock-free reader reads it. (A load
        // and a store, not a swap: no second atomic read-modify-write on the fast path.)
        let b = slot.block.load(Ordering::Relaxed);
        slot.block.store(0, Ordering::Relaxed);
        if s & PURGED == 0 {
            // Relaxed: the live block's size, kept in the slot; only changed under the mutex.
            let size = slot.next_free.load(Ordering::Relaxed);
            // SAFETY: b was the live block of this slot, of `size` bytes, now freed and unlocked.
            unsafe { inner.heap.free_fast(b, size) };
            inner.heap.used -= size;
        }
        let idx = self.table.index(slot);
        self.table.release_slot(&mut inner.tab, idx);
        inner.tab.live -= 1;
        Ok(())
    }

    /// Resizes the block of `h` to `size` bytes, keeping its contents (up to the smaller size). A
    /// purged block is revived with indeterminate contents. A locked block is resized only in place.
    pub fn realloc(&self, h: usize, size: usize) -> Result<(), Error> {
        let bsize = heap::block_size(size).ok_or(Error::OutOfMemory)?;
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let (slot, s) = self.live_slot(h)?;
        if inner.heap.limit != 0 && bsize > inner.heap.limit {
            return Err(Error::OutOfMemory);
        }
        if s & PURGED != 0 {
            let (b, real) = match inner.heap.alloc_block(bsize) {
                Some(x) => x,
                None => self.alloc_slow(inner, bsize).ok_or(Error::OutOfMemory)?,
            };
            inner.heap.used += real;
            let idx = self.table.index(slot);
            // SAFETY: b is the block just allocated.
            unsafe { heap::set_hdr(b, heap::hdr(b) | heap::live_header(idx + 1, false)) };
            // Relaxed: published by the Release below.
            slot.block.store(b, Ordering::Relaxed);
            slot.size.store(size, Ordering::Relaxed);
            slot.next_free.store(real, Ordering::Relaxed);
            // Release pairs with `lock`'s Acquire.
            slot.state.fetch_and(!PURGED, Ordering::Release);
            return Ok(());
        }
        // Relaxed: the block address changes only under the mutex, which we hold.
        let b = slot.block.load(Ordering::Relaxed);
        // Relaxed: the live block's size, kept in the slot; only changed under the mutex.
        let cur = slot.next_free.load(Ordering::Relaxed);
        let after = if bsize <= cur {
            // SAFETY: b is a live block of `cur >= bsize` bytes.
            Some(unsafe { inner.heap.shrink(b, cur, bsize) })
        } else {
            // SAFETY: b is a live block of `cur < bsize` bytes.
            unsafe { inner.heap.grow_in_place(b, cur, bsize) }
        };
        if let Some(after) = after {
            inner.heap.used = inner.heap.used + after - cur;
            slot.size.store(size, Ordering::Relaxed);
            slot.next_free.store(after, Ordering::Relaxed);
            return Ok(());
        }
        // It must move: pin it (count 0 -> MOVING) so that neither compaction nor purging touches it,
        // and rmlock waits, while a new block is found.
        let mut s = s;
        loop {
            if s & COUNT_MASK != 0 {
                return Err(Error::Locked);
            }
            // Acquire pairs with `rmunlock`'s Release.
            match slot.state.compare_exchange(s, s | MOVING, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        let got = match inner.heap.alloc_block(bsize) {
            Some(x) => Some(x),
            None => self.alloc_slow(inner, bsize),
        };
        let Some((nb, real)) = got else {
            // Release pairs with `lock`'s Acquire (nothing changed).
            slot.state.fetch_and(!MOVING, Ordering::Release);
            return Err(Error::OutOfMemory);
        };
        inner.heap.used += real;
        let idx = self.table.index(slot);
        // Relaxed: the pinned block does not move; we hold the mutex.
        let b = slot.block.load(Ordering::Relaxed);
        let old_size = slot.size.load(Ordering::Relaxed);
        let old_block = slot.next_free.load(Ordering::Relaxed);
        // SAFETY: nb is a fresh block of at least size + HEADER bytes, b the pinned old block (of
        // `old_block` bytes, at least old_size + HEADER); they do not overlap.
        unsafe {
            heap::set_hdr(nb, heap::hdr(nb) | heap::live_header(idx + 1, false));
            core::ptr::copy_nonoverlapping((b + HEADER) as *const u8, (nb + HEADER) as *mut u8, old_size.min(size));
            inner.heap.free_block(b, old_block);
            inner.heap.used -= old_block;
        }
        // Relaxed: published by the Release below.
        slot.block.store(nb, Ordering::Relaxed);
        slot.size.store(size, Ordering::Relaxed);
        slot.next_free.store(real, Ordering::Relaxed);
        // Release pairs with `lock`'s Acquire.
        slot.state.fetch_and(!MOVING, Ordering::Release);
        Ok(())
    }

    /// The size of `h`'s block as requested (0 for an invalid, freed or purged handle).
    pub fn size(&self, h: usize) -> usize {
        match self.live_slot(h) {
            Ok((slot, s)) if s & PURGED == 0 => slot.size.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Marks `h`'s block purgeable (it may be discarded when memory runs out) or not.
    pub fn set_purgeable(&self, h: usize, purgeable: bool) -> Result<(), Error> {
        let (slot, mut s) = self.live_slot(h)?;
        loop {
            let new = if purgeable { s | PURGEABLE } else { s & !PURGEABLE };
            // Relaxed: only the flag changes; purging re-reads the state with its own compare-exchange.
            match slot.state.compare_exchange_weak(s, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(now) => {
                    if now & LIVE == 0 || tag_of(now) != tag_of(s) {
                        return Err(Error::InvalidHandle);
                    }
                    s = now;
                }
            }
        }
    }

    /// Compacts for at most about `budget_us` microseconds (0: fully). Returns true when the pass
    /// reached the end of the heap.
    pub fn compact(&self, budget_us: u64) -> bool {
        let mut g = self.inner.lock();
        compact::compact(&self.table, &mut g, budget_us.saturating_mul(1000))
    }

    /// Sets the heap budget (0: none). When the heap extends beyond it, compacts fully; refused
    /// (limit unchanged) if it still does not fit.
    pub fn set_limit(&self, bytes: usize) -> Result<(), Error> {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let h = &inner.heap;
        if bytes != 0 && h.base != 0 && h.top - h.base > bytes {
            compact::compact(&self.table, inner, 0);
            if inner.heap.top - inner.heap.base > bytes {
                return Err(Error::OutOfMemory);
            }
        }
        inner.heap.limit = bytes;
        if bytes != 0 {
            let page = crate::os::page_size();
            let cap = (inner.heap.base + bytes + page - 1) & !(page - 1);
            if inner.heap.base != 0 && inner.heap.commit_end > cap {
                inner.heap.trim();
            }
        }
        Ok(())
    }

    /// A snapshot of the heap.
    pub fn stats(&self) -> Stats {
        let g = self.inner.lock();
        let h = &g.heap;
        let capacity = h.commit_end.saturating_sub(h.start);
        let free = capacity - h.used;
        let largest = h.largest_free();
        Stats {
            capacity,
            used: h.used,
            free,
            largest_free: largest,
            fragmentation: if free == 0 { 0.0 } else { 1.0 - largest as f64 / free as f64 },
            handles: g.tab.live,
            compactions: g.compactions,
            bytes_moved: g.bytes_moved,
            longest_pause_ns: g.longest_pause_ns,
            purges: g.purges,
        }
    }

    /// Walks every invariant of the table and the heap; panics on a violation.
    pub fn check(&self) {
        let g = self.inner.lock();
        self.table.check(&g.tab);
        let table = &self.table;
        let hwm = g.tab.hwm;
        let nblocks = g.heap.check_blocks(|b, hd| {
            let idx = heap::htag(hd) - 1;
            assert!(idx < hwm, "block {b:#x} names slot {idx} beyond the table");
            // SAFETY: idx < hwm.
            let slot = unsafe { table.slot(idx) };
            let s = slot.state.load(Ordering::Relaxed);
            assert!(s & LIVE != 0 && s & PURGED == 0, "block {b:#x} names a dead or purged slot {idx}");
            assert_eq!(slot.block.load(Ordering::Relaxed), b, "slot {idx} does not name block {b:#x}");
            let bsize = slot.next_free.load(Ordering::Relaxed);
            assert!(slot.size.load(Ordering::Relaxed) + HEADER <= bsize, "slot {idx} larger than its block");
            bsize
        });
        let mut unpurged = 0;
        for i in 0..hwm {
            // SAFETY: i < hwm.
            let s = unsafe { table.slot(i) }.state.load(Ordering::Relaxed);
            if s & (LIVE | PURGED) == LIVE {
                unpurged += 1;
            }
        }
        assert_eq!(nblocks, unpurged, "live blocks vs live unpurged handles");
    }
}

impl Drop for Rm {
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        // SAFETY: `&mut self`: no handle of this heap can be used any more.
        unsafe {
            inner.heap.destroy();
            self.table.destroy(&inner.tab);
        }
    }
}

#[cfg(test)]
mod tests;
