//! Superblocks: S = 64 KiB, S-aligned, holding blocks of one size class.
//!
//! ```text
//!  sb (S-aligned)                sb + 64              sb + 128               sb + 256
//!  | owner line: free list, counts, | list links,      | remote line:         | block 0 | block 1 | ... |
//!  | owner heap, touched            | (slow paths)     | thread_free (atomic) |   ^ bump: untouched tail
//! ```
//!
//! Invariants (checked by [`Superblock::check`] for an owned superblock):
//! * `used + |free| + (capacity - bump) == capacity` counting blocks the owner knows of; blocks in
//!   `thread_free` are still counted in `used` until the owner collects them.
//! * every block on `free` or `thread_free` lies in `[data, data + bump * size)` on a block boundary.
//! * `owner` is a heap (or [`GLOBAL_OWNER`] in the global heap); only the owner touches
//!   `free`, `used`, `bump` and the list links; any thread may push onto `thread_free`.

use super::heap::Heap;
use crate::config::{CARVE_BATCH_BYTES, PAGE_SIZE, SUPERBLOCK_HEADER, SUPERBLOCK_SIZE};
use crate::size_class::{class_size, superblock_size};
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

/// A free block: its first word links to the next free block.
#[repr(C)]
pub struct Block {
    /// Next free block, or null.
    pub next: *mut Block,
}

/// Where a superblock is: which list of its owner (or of the global heap) holds it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Place {
    /// Nowhere yet (being set up or moved).
    Detached = 0,
    /// The class's current superblock of its heap (not on any list).
    Current = 1,
    /// On a partial list (fullness bin in `bin`).
    Partial = 2,
    /// On the full list of its heap.
    Full = 3,
    /// On the empty list of its heap.
    Empty = 4,
    /// In the global heap, on a partial list of its class.
    GlobalPartial = 5,
    /// In the global heap, on the empty list.
    GlobalEmpty = 6,
}

const MAGIC: u32 = 0x5241_5342; // "RASB"

/// The owner of superblocks in the global heap: an address no heap can have.
pub const GLOBAL_OWNER: *mut Heap = 1 as *mut Heap;

/// The superblock header: the owner's hot fields on the first cache line; the remote-free list and the
/// list links (slow paths only) on the second.
#[repr(C, align(64))]
pub struct Superblock {
    /// Local free list (owner only).
    pub free: *mut Block,
    /// Blocks handed out and not freed to `free` (owner only).
    pub used: u32,
    /// Blocks the superblock holds.
    pub capacity: u32,
    /// Blocks carved from the data area so far (owner only).
    pub bump: u32,
    /// Bytes carved so far (`bump * block_size`), for the O(1) pointer check.
    pub carved_bytes: u32,
    /// The owner frees into its slow path when `used` drops below this (fullness-bin boundary).
    pub rebin_below: u32,
    /// Block size in bytes.
    pub block_size: u32,
    magic: u32,
    /// Size class.
    pub class: u8,
    /// Which list holds it.
    pub place: Place,
    /// Fullness bin while on a partial list.
    pub bin: u8,
    /// Set when the pages after the header were given back to the OS (they read as zero).
    pub purged: bool,
    /// `ceil(2^64 / block_size)`: `off * div_magic < div_magic` iff `off` is a multiple of the size.
    pub div_magic: u64,
    /// Owning heap; [`GLOBAL_OWNER`] while in the global heap (never null, so that a thread without a
    /// heap never matches it). Read by any thread, written by the owner (giving it up) or by the global
    /// heap's lock holder (handing it out).
    pub owner: AtomicPtr<Heap>,
    /// Bytes from the superblock's start whose pages may be resident (the header page, and every page
    /// a carve reached since the last purge): what it counts in the committed bytes.
    pub touched: u32,
    _pad: u32,
    /// List links (owner or global lock), on the second cache line.
    pub next: *mut Superblock,
    /// List links (owner or global lock).
    pub prev: *mut Superblock,
    /// Time (ms) it became empty in the global heap, for delayed purging.
    pub empty_since_ms: u64,
    _pad_to_remote_line: [u64; 5],
    /// Blocks freed by other threads, pushed with one compare-exchange each: alone on the third cache
    /// line, so that remote frees and the owner's list operations do not share a line.
    pub thread_free: AtomicPtr<Block>,
}

const _: () = assert!(core::mem::offset_of!(Superblock, next) == 64);
const _: () = assert!(core::mem::offset_of!(Superblock, thread_free) == 128);

/// A superblock with no blocks, which every class of a heap points at while it has no current
/// superblock: the allocation fast path then needs no null check (its empty free list sends it to the
/// slow path). Never written.
pub struct NoSuperblock(Superblock);

// SAFETY: NO_SUPERBLOCK is never written after its constant initialisation; sharing reads is safe.
unsafe impl Sync for NoSuperblock {}

/// See [`NoSuperblock`].
pub static NO_SUPERBLOCK: NoSuperblock = NoSuperblock(Superblock::header(0, 0, 0, 0, GLOBAL_OWNER, 0, 0));

/// The placeholder for "no current superblock".
#[inline(always)]
pub fn none() -> *mut Superblock {
    &NO_SUPERBLOCK.0 as *const Superblock as *mut Superblock
}
const _: () = assert!(core::mem::size_of::<Superblock>() <= SUPERBLOCK_HEADER);

impl Superblock {
    /// Bytes of this superblock (64 KiB small, 1 MiB medium).
    #[inline]
    pub fn size(&self) -> usize {
        superblock_size(self.class as usize)
    }

    /// The small superblock that contains `p` (masking).
    #[inline(always)]
    pub fn of(p: *const u8) -> *mut Superblock {
        ((p as usize) & !(SUPERBLOCK_SIZE - 1)) as *mut Superblock
    }

    /// Start of the data area.
    #[inline(always)]
    pub fn data(&self) -> *mut u8 {
        (self as *const Self as *mut u8).wrapping_add(SUPERBLOCK_HEADER)
    }

    /// A header with no blocks carved, on no list: the one value both [`Superblock::init`] and the
    /// never-written [`NO_SUPERBLOCK`] start from.
    const fn header(
        class: u8,
        block_size: u32,
        capacity: u32,
        div_magic: u64,
        owner: *mut Heap,
        touched: u32,
        magic: u32,
    ) -> Superblock {
        Superblock {
            free: ptr::null_mut(),
            used: 0,
            capacity,
            bump: 0,
            carved_bytes: 0,
            rebin_below: 0,
            block_size,
            magic,
            class,
            place: Place::Detached,
            bin: 0,
            purged: false,
            div_magic,
            owner: AtomicPtr::new(owner),
            touched,
            _pad: 0,
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
            empty_since_ms: 0,
            _pad_to_remote_line: [0; 5],
            thread_free: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Writes a fresh header for `class` at `sb` (data area untouched), owned by `owner`; `touched` carries
    /// over the bytes whose pages may already be resident (see the field).
    ///
    /// # Safety
    /// `sb` is an S-aligned superblock of ours, committed, that no list and no other thread uses.
    pub unsafe fn init(sb: *mut Superblock, class: usize, owner: *mut Heap, touched: u32) {
        let size = class_size(class);
        let capacity = ((superblock_size(class) - SUPERBLOCK_HEADER) / size) as u32;
        let header = Superblock::header(class as u8, size as u32, capacity, (u64::MAX / size as u64) + 1, owner, touched, MAGIC);
        // SAFETY: the caller guarantees sb is ours and unshared; writing the whole header initialises it.
        unsafe { ptr::write(sb, header) };
    }

    /// True if `p` is the start of a block of this superblock that has been carved (a pointer malloc
    /// could have returned). O(1): one multiplication. The caller has checked in the address map that
    /// this is a superblock of ours.
    #[inline(always)]
    pub fn is_block_start(&self, p: *const u8) -> bool {
        let off = (p as usize).wrapping_sub(self.data() as usize) as u64;
        off < self.carved_bytes as u64 && off.wrapping_mul(self.div_magic) < self.div_magic
    }

    /// Carves up to a batch of fresh blocks from the untouched tail onto the free list. Returns false
    /// when the superblock has no untouched blocks left. Owner only.
    pub fn carve(&mut self) -> bool {
        if self.bump >= self.capacity {
            return false;
        }
        let size = self.block_size as usize;
        let batch = (CARVE_BATCH_BYTES / size).max(1) as u32;
        let n = batch.min(self.capacity - self.bump);
        let first = self.data().wrapping_add(self.bump as usize * size);
        // Link the new blocks in address order, the last one pointing at the old free list.
        let mut p = first;
        for i in 0..n {
            let next = if i + 1 == n { self.free.cast::<u8>() } else { p.wrapping_add(size) };
            // SAFETY: p is inside this superblock's data area (bump + i < capacity), committed and not in
            // use by anyone (never carved before).
            unsafe { (*p.cast::<Block>()).next = next.cast() };
            p = p.wrapping_add(size);
        }
        self.free = first.cast();
        self.bump += n;
        self.carved_bytes = self.bump * self.block_size;
        // Pages reached for the first time since the last purge now count as committed.
        let end = (SUPERBLOCK_HEADER as u32 + self.carved_bytes).next_multiple_of(PAGE_SIZE as u32);
        if end > self.touched {
            super::global::commit_add((end - self.touched) as usize);
            self.touched = end;
        }
        true
    }

    /// Moves every block on `thread_free` to `free`; returns how many. Owner only.
    pub fn collect_remote(&mut self) -> u32 {
        // Relaxed peek: most calls find nothing.
        if self.thread_free.load(Ordering::Relaxed).is_null() {
            return 0;
        }
        // Acquire pairs with the Release compare-exchange of `push_remote`: the pushed blocks' `next`
        // links are visible.
        let mut b = self.thread_free.swap(ptr::null_mut(), Ordering::Acquire);
        let mut n = 0;
        while !b.is_null() {
            // SAFETY: b came from thread_free: a block of this superblock, owned by the list.
            let next = unsafe { (*b).next };
            // SAFETY: as above; the block now moves to the owner's free list.
            unsafe { (*b).next = self.free };
            self.free = b;
            b = next;
            n += 1;
        }
        self.used -= n;
        n
    }

    /// Pushes a block freed by a thread that does not own the superblock: one compare-exchange loop on
    /// this superblock's `thread_free`, nothing else. Returns false, pushing nothing, when `b` is already
    /// the head of that list (a second free of the same block).
    ///
    /// # Safety
    /// `b` is a live block of this superblock that the caller gives up.
    #[inline]
    pub unsafe fn push_remote(&self, b: *mut Block) -> bool {
        // Relaxed: the compare-exchange below validates the value.
        let mut head = self.thread_free.load(Ordering::Relaxed);
        loop {
            if head == b {
                return false;
            }
            // SAFETY: the caller gave the block up; we own its first word until it is published.
            unsafe { (*b).next = head };
            // Release pairs with the Acquire swap in `collect_remote`.
            match self.thread_free.compare_exchange_weak(head, b, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(h) => head = h,
            }
        }
    }

    /// Walks the invariants of an owned superblock (tests and checked builds).
    pub fn check(&self) {
        assert_eq!(self.magic, MAGIC, "superblock magic");
        assert_eq!(self.block_size as usize, class_size(self.class as usize));
        assert!(self.bump <= self.capacity);
        assert_eq!(self.carved_bytes, self.bump * self.block_size);
        assert!(self.touched as usize >= PAGE_SIZE, "the header page counts as committed");
        assert!(self.touched as usize >= SUPERBLOCK_HEADER + self.carved_bytes as usize, "carved pages count as committed");
        let mut n = 0u32;
        let mut b = self.free;
        while !b.is_null() {
            assert!(self.is_block_start(b.cast()), "free block {b:p} not a block start");
            n += 1;
            assert!(n <= self.capacity, "free list cycle");
            // SAFETY: b is a block of this superblock on the owner's free list.
            b = unsafe { (*b).next };
        }
        assert_eq!(self.used + n, self.bump, "used + |free| == carved");
    }
}
