//! The handle table: slots that never move, one per handle.
//!
//! The table is one reservation of `max_slots * RM_SLOT_SIZE` bytes, committed in `RM_TABLE_COMMIT`
//! steps and never shrunk, so any address below the committed end can always be read. A handle is the
//! address of its slot plus the low five bits of the slot's generation (`gen & 31`); validating a
//! handle is a range check and one comparison of that tag with the slot's state word, so a freed or
//! reused handle is refused without reading anything outside the table.
//!
//! Each slot's `state` word packs the lock count and the flags, and every change of it is one atomic
//! read-modify-write, which is what lets `rmlock`/`rmunlock` run without the heap mutex:
//!
//! ```text
//!   bits  0..32  lock count            bit 32  LIVE       bit 33  PURGEABLE
//!   bit   34     PURGED (no block)     bit 35  MOVING (the allocator pinned the slot; rmlock waits)
//!   bits 40..64  generation (bumped by every free; its low 5 bits are the handle's tag)
//! ```
//!
//! Invariants: a slot is LIVE exactly while its handle is allocated; a LIVE slot without PURGED names
//! the header of a live block whose tag names the slot back; the block of a slot whose count is
//! above zero does not move; MOVING is set only by a thread holding the heap mutex and only while the
//! count is zero. A freed slot first waits in a FIFO quarantine of `RM_HANDLE_REUSE_DELAY` slots; when
//! later frees push it out, it goes on a LIFO stack of reusable slots, which allocation takes first
//! (the most recently released, so still in cache), then never-used slots, and only when the table is
//! full a slot from the quarantine.

use crate::config::{RM_HANDLE_REUSE_DELAY, RM_SLOT_SIZE, RM_TABLE_COMMIT};
use crate::os;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Mask of the lock count in a slot's state word.
pub const COUNT_MASK: u64 = 0xFFFF_FFFF;
/// The slot's handle is allocated.
pub const LIVE: u64 = 1 << 32;
/// The block may be discarded when memory runs out.
pub const PURGEABLE: u64 = 1 << 33;
/// The block was discarded: the slot names no block.
pub const PURGED: u64 = 1 << 34;
/// The allocator is moving (or resizing) the block; rmlock waits until the bit clears.
pub const MOVING: u64 = 1 << 35;
/// Shift of the generation in the state word.
pub const GEN_SHIFT: u32 = 40;
/// Mask of the handle's generation tag (the low bits of the handle).
pub const TAG_MASK: usize = RM_SLOT_SIZE - 1;
/// The "no slot" link of the free queue.
pub const NONE: usize = usize::MAX;

/// One handle slot.
#[repr(C, align(32))]
pub struct Slot {
    /// Lock count, flags and generation (see the module documentation).
    pub state: AtomicU64,
    /// Address of the block header (0 when purged or free). Written only under the heap mutex, and
    /// while the slot is MOVING or has just been made LIVE; readers order their read after an Acquire
    /// of `state`.
    pub block: AtomicUsize,
    /// The size the program asked for (what `rmsize` reports).
    pub size: AtomicUsize,
    /// While the handle is live: the size of its block (the block header has no room for it). While
    /// it is free: the link of the quarantine queue or the reusable stack (a slot index, or [`NONE`]).
    /// Used under the heap mutex only.
    pub next_free: AtomicUsize,
}

const _: () = assert!(core::mem::size_of::<Slot>() == RM_SLOT_SIZE);
const _: () = assert!(core::mem::align_of::<Slot>() == RM_SLOT_SIZE);

/// The generation tag a handle carries for a state word.
#[inline(always)]
pub fn tag_of(state: u64) -> usize {
    ((state >> GEN_SHIFT) as usize) & TAG_MASK
}

/// The part of the table that lock-free readers use: where it is and how much of it is committed.
pub struct Table {
    base: AtomicUsize,
    committed: AtomicUsize,
}

/// The part of the table changed only under the heap mutex: the high-water mark and the free queue.
pub struct TableInner {
    /// Reserved slots (fixed when the table is created).
    pub max_slots: usize,
    /// Slots ever handed out: `[0, hwm)` have been used.
    pub hwm: usize,
    /// Oldest freed slot (reused first), or [`NONE`].
    pub head: usize,
    /// Newest freed slot, or [`NONE`].
    pub tail: usize,
    /// Number of slots in the free queue (the quarantine), at most `RM_HANDLE_REUSE_DELAY`.
    pub queued: usize,
    /// Top of the stack of reusable slots (out of quarantine), or [`NONE`].
    pub ready: usize,
    /// Number of reusable slots.
    pub nready: usize,
    /// Handles allocated and not freed.
    pub live: usize,
}

/// Handle-table failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    /// Address space or memory ran out.
    NoMemory,
}

impl TableInner {
    /// An empty table of `max_slots` slots.
    pub const fn new(max_slots: usize) -> Self {
        TableInner { max_slots, hwm: 0, head: NONE, tail: NONE, queued: 0, ready: NONE, nready: 0, live: 0 }
    }
}

impl Table {
    /// A table not yet reserved.
    pub const fn new() -> Self {
        Table { base: AtomicUsize::new(0), committed: AtomicUsize::new(0) }
    }

    /// Base address of the table (0 until reserved).
    #[inline(always)]
    pub fn base(&self) -> usize {
        // Acquire pairs with the Release store in `reserve`: the reservation is visible.
        self.base.load(Ordering::Acquire)
    }

    /// Finds the slot a handle names: `(slot, tag)`, or None when the address is not a slot of the
    /// committed table. Reads nothing.
    #[inline(always)]
    pub fn lookup(&self, h: usize) -> Option<(&Slot, usize)> {
        let base = self.base();
        let off = h.wrapping_sub(base);
        // Acquire pairs with the Release store in `grow`: the committed range is readable.
        if base == 0 || off >= self.committed.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: `off` lies below the committed end of our table, which is never decommitted while
        // the table lives, and slots are RM_SLOT_SIZE-aligned from `base`.
        let slot = unsafe { &*((base + (off & !TAG_MASK)) as *const Slot) };
        Some((slot, off & TAG_MASK))
    }

    /// The slot with index `idx`.
    ///
    /// # Safety
    /// `idx` is below the high-water mark of the table (so the slot is committed).
    #[inline(always)]
    pub unsafe fn slot(&self, idx: usize) -> &Slot {
        // SAFETY: the caller guarantees the slot is committed; see `lookup`.
        unsafe { &*((self.base() + idx * RM_SLOT_SIZE) as *const Slot) }
    }

    /// The handle of slot `idx` in its current generation.
    ///
    /// # Safety
    /// As for [`Table::slot`].
    #[inline(always)]
    pub unsafe fn handle(&self, idx: usize) -> usize {
        // SAFETY: forwarded.
        let s = unsafe { self.slot(idx) }.state.load(Ordering::Relaxed);
        self.base() + idx * RM_SLOT_SIZE + tag_of(s)
    }

    /// The index of a slot.
    #[inline(always)]
    pub fn index(&self, slot: &Slot) -> usize {
        (slot as *const Slot as usize - self.base()) / RM_SLOT_SIZE
    }

    /// Takes a slot for a new handle (its state is left not LIVE: the caller makes it live). Called
    /// with the heap mutex held.
    pub fn alloc(&self, t: &mut TableInner) -> Result<usize, TableError> {
        if t.ready != NONE {
            let idx = t.ready;
            // SAFETY: reusable slots are below the high-water mark. Relaxed: links are only touched
            // under the heap mutex.
            t.ready = unsafe { self.slot(idx) }.next_free.load(Ordering::Relaxed);
            t.nready -= 1;
            return Ok(idx);
        }
        let full = t.hwm == t.max_slots || (t.hwm + 1) * RM_SLOT_SIZE > self.committed.load(Ordering::Relaxed);
        if full && self.grow(t).is_err() {
            if t.queued > 0 {
                return Ok(self.pop(t));
            }
            return Err(TableError::NoMemory);
        }
        let idx = t.hwm;
        t.hwm += 1;
        Ok(idx)
    }

    /// Takes the oldest slot out of the quarantine.
    fn pop(&self, t: &mut TableInner) -> usize {
        let idx = t.head;
        // SAFETY: queued slots are below the high-water mark.
        let s = unsafe { self.slot(idx) };
        // Relaxed: the queue links are only touched under the heap mutex.
        t.head = s.next_free.load(Ordering::Relaxed);
        if t.head == NONE {
            t.tail = NONE;
        }
        t.queued -= 1;
        idx
    }

    /// Puts a freed slot at the tail of the reuse queue. Called with the heap mutex held.
    pub fn release_slot(&self, t: &mut TableInner, idx: usize) {
        // SAFETY: idx was allocated, so it is below the high-water mark.
        let s = unsafe { self.slot(idx) };
        // Relaxed: queue links are only touched under the heap mutex.
        s.next_free.store(NONE, Ordering::Relaxed);
        if t.tail == NONE {
            t.head = idx;
        } else {
            // SAFETY: the tail is a queued slot.
            unsafe { self.slot(t.tail) }.next_free.store(idx, Ordering::Relaxed);
        }
        t.tail = idx;
        t.queued += 1;
        if t.queued > RM_HANDLE_REUSE_DELAY {
            // The oldest has waited long enough: it becomes reusable.
            let old = self.pop(t);
            // SAFETY: old came out of the quarantine, so it is below the high-water mark.
            unsafe { self.slot(old) }.next_free.store(t.ready, Ordering::Relaxed);
            t.ready = old;
            t.nready += 1;
        }
    }

    fn grow(&self, t: &mut TableInner) -> Result<(), TableError> {
        let reserved = t.max_slots * RM_SLOT_SIZE;
        if self.base() == 0 {
            let p = os::reserve(reserved, os::page_size()).map_err(|_| TableError::NoMemory)?;
            // Release pairs with the Acquire load in `base`.
            self.base.store(p.as_ptr() as usize, Ordering::Release);
        }
        let committed = self.committed.load(Ordering::Relaxed);
        if committed >= reserved {
            return Err(TableError::NoMemory);
        }
        let len = RM_TABLE_COMMIT.min(reserved - committed);
        let len = os::align_up(len, os::page_size()).unwrap_or(len);
        // SAFETY: [base + committed, + len) lies inside our reservation (the reservation is a multiple
        // of the commit step or the page) and is page-aligned.
        let r = unsafe { os::commit(NonNull::new_unchecked((self.base() + committed) as *mut u8), len) };
        r.map_err(|_| TableError::NoMemory)?;
        // Release pairs with the Acquire load in `lookup`: the new slots are committed before any
        // handle naming them is handed out.
        self.committed.store(committed + len, Ordering::Release);
        Ok(())
    }

    /// Gives the whole table back to the OS.
    ///
    /// # Safety
    /// Nothing uses the table or any handle of it any more.
    pub unsafe fn destroy(&self, t: &TableInner) {
        let base = self.base();
        if base != 0 {
            // SAFETY: the caller guarantees the table is dead; the range is our reservation.
            let _ = unsafe { os::release(NonNull::new_unchecked(base as *mut u8), t.max_slots * RM_SLOT_SIZE) };
            // Relaxed: nobody uses the table any more.
            self.base.store(0, Ordering::Relaxed);
            self.committed.store(0, Ordering::Relaxed);
        }
    }

    /// Walks the table's invariants: the free queue holds exactly `queued` non-LIVE slots and
    /// `live` slots are LIVE. Panics on a violation. Called with the heap mutex held.
    pub fn check(&self, t: &TableInner) {
        let mut n = 0;
        let mut i = t.head;
        while i != NONE {
            assert!(i < t.hwm, "queued slot {i} beyond the high-water mark");
            // SAFETY: i < hwm.
            let s = unsafe { self.slot(i) };
            assert!(s.state.load(Ordering::Relaxed) & LIVE == 0, "queued slot {i} is live");
            n += 1;
            assert!(n <= t.queued, "free queue longer than its count");
            i = s.next_free.load(Ordering::Relaxed);
        }
        assert_eq!(n, t.queued, "free queue count");
        assert!(t.queued <= RM_HANDLE_REUSE_DELAY, "quarantine longer than the reuse delay");
        let (mut n, mut i) = (0, t.ready);
        while i != NONE {
            assert!(i < t.hwm, "reusable slot {i} beyond the high-water mark");
            // SAFETY: i < hwm.
            let s = unsafe { self.slot(i) };
            assert!(s.state.load(Ordering::Relaxed) & LIVE == 0, "reusable slot {i} is live");
            n += 1;
            assert!(n <= t.nready, "reusable stack longer than its count");
            i = s.next_free.load(Ordering::Relaxed);
        }
        assert_eq!(n, t.nready, "reusable slot count");
        assert_eq!(t.live + t.queued + t.nready, t.hwm, "every used slot is live, quarantined or reusable");
        let mut live = 0;
        for i in 0..t.hwm {
            // SAFETY: i < hwm.
            let s = unsafe { self.slot(i) }.state.load(Ordering::Relaxed);
            if s & LIVE != 0 {
                live += 1;
                assert!(s & MOVING == 0, "slot {i} left MOVING");
                if s & PURGED != 0 {
                    // SAFETY: i < hwm.
                    assert_eq!(unsafe { self.slot(i) }.block.load(Ordering::Relaxed), 0, "purged slot {i} has a block");
                }
            }
        }
        assert_eq!(live, t.live, "live handle count");
        assert!(t.hwm * RM_SLOT_SIZE <= self.committed.load(Ordering::Relaxed));
    }
}

impl Default for Table {
    fn default() -> Self {
        Self::new()
    }
}
