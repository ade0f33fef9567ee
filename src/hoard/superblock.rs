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
    /// `used - rebin_below`, where `used` is the blocks handed out and not freed to `free` (owner only;
    /// read it through [`Superblock::used`]). Stored this way so that the owner's free decrements one
    /// field and branches on its sign: negative means the superblock crossed its fullness boundary.
    pub headroom: i32,
    /// Blocks the superblock holds.
    pub capacity: u32,
    /// Blocks carved from the data area so far (owner only). 64 bits wide so that the pointer check
    /// compares a block index with it directly.
    pub bump: u64,
    /// The owner frees into its slow path when `used` drops below this (fullness-bin boundary); set
    /// through [`Superblock::set_rebin_below`], which keeps `headroom` consistent.
    rebin_below: u32,
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
    /// The inverse modulo 2^64 of the block size's odd factor (`block_size = odd << shift`): see
    /// [`Superblock::block_index`].
    pub inv: u64,
    /// Owning heap; [`GLOBAL_OWNER`] while in the global heap (never null, so that a thread without a
    /// heap never matches it). Read by any thread, written by the owner (giving it up) or by the global
    /// heap's lock holder (handing it out).
    pub owner: AtomicPtr<Heap>,
    /// Bytes from the superblock's start whose pages may be resident (the header page, and every page
    /// a carve reached since the last purge): what it counts in the committed bytes.
    pub touched: u32,
    /// The power of two in the block size (see `inv`).
    pub shift: u8,
    _pad: [u8; 3],
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

/// The inverse of odd `q` modulo 2^64 (Newton's iteration: each step doubles the correct low bits,
/// and `q` itself is correct to 3 bits since `q * q = 1 (mod 8)` for odd `q`).
const fn odd_inverse(q: u64) -> u64 {
    let mut x = q;
    let mut i = 0;
    while i < 5 {
        x = x.wrapping_mul(2u64.wrapping_sub(q.wrapping_mul(x)));
        i += 1;
    }
    x
}

const _: () = assert!(odd_inverse(3).wrapping_mul(3) == 1 && odd_inverse(0x1234_5677).wrapping_mul(0x1234_5677) == 1);

/// A superblock with no blocks, which every class of a heap points at while it has no current
/// superblock: the allocation fast path then needs no null check (its empty free list sends it to the
/// slow path). Never written.
pub struct NoSuperblock(pub Superblock);

// SAFETY: NO_SUPERBLOCK is never written after its constant initialisation; sharing reads is safe.
unsafe impl Sync for NoSuperblock {}

/// See [`NoSuperblock`].
pub static NO_SUPERBLOCK: NoSuperblock = NoSuperblock(Superblock::header(0, 0, 0, 0, 0, GLOBAL_OWNER, 0, 0));

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

    /// Blocks handed out and not freed to `free` (blocks freed remotely count until collected).
    #[inline(always)]
    pub fn used(&self) -> u32 {
        self.headroom.wrapping_add(self.rebin_below as i32) as u32
    }

    /// Adds `n` blocks to `used` (owner only).
    #[inline(always)]
    pub fn add_used(&mut self, n: u32) {
        self.headroom += n as i32;
    }

    /// Takes `n` blocks off `used` (owner only).
    #[inline(always)]
    pub fn sub_used(&mut self, n: u32) {
        self.headroom -= n as i32;
    }

    /// Moves the fullness boundary, keeping `used` unchanged.
    #[inline]
    pub fn set_rebin_below(&mut self, v: u32) {
        let used = self.used();
        self.rebin_below = v;
        self.headroom = used as i32 - v as i32;
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
        inv: u64,
        shift: u8,
        owner: *mut Heap,
        touched: u32,
        magic: u32,
    ) -> Superblock {
        Superblock {
            free: ptr::null_mut(),
            headroom: 0,
            capacity,
            bump: 0,
            rebin_below: 0,
            block_size,
            magic,
            class,
            place: Place::Detached,
            bin: 0,
            purged: false,
            inv,
            shift,
            owner: AtomicPtr::new(owner),
            touched,
            _pad: [0; 3],
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
        let shift = size.trailing_zeros();
        let header = Superblock::header(class as u8, size as u32, capacity, odd_inverse((size >> shift) as u64), shift as u8, owner, touched, MAGIC);
        // SAFETY: the caller guarantees sb is ours and unshared; writing the whole header initialises it.
        unsafe { ptr::write(sb, header) };
    }

    /// True if `p` is the start of a block of this superblock that has been carved (a pointer malloc
    /// could have returned). O(1): one multiplication and one comparison. The caller has checked in
    /// the address map that this is a superblock of ours.
    #[inline(always)]
    pub fn is_block_start(&self, p: *const u8) -> bool {
        self.is_block_offset((p as usize).wrapping_sub(self.data() as usize))
    }

    /// Bytes carved so far.
    #[inline]
    pub fn carved_bytes(&self) -> u32 {
        self.bump as u32 * self.block_size
    }

    /// True if the byte offset `off` from the data area (any value, wrapped) starts a carved block.
    #[inline(always)]
    pub fn is_block_offset(&self, off: usize) -> bool {
        self.block_index(off) < self.bump
    }

    /// `off / block_size` when `off` is a multiple of the block size, else a number above any block
    /// index. With `block_size = q << shift` (q odd) and `inv * q = 1 (mod 2^64)`, `x = off * inv`
    /// rotated right by `shift` equals `i` exactly when `off = i * block_size`: if the result `i` is
    /// below 2^(64 - shift), rotating back gives `x = i << shift`, so `off = x * q = i * block_size`
    /// modulo 2^64, hence exactly (both sides are below 2^64). One comparison against `bump` then
    /// checks alignment to the grid and the carved bound together.
    #[inline(always)]
    pub fn block_index(&self, off: usize) -> u64 {
        (off as u64).wrapping_mul(self.inv).rotate_right(self.shift as u32)
    }

    /// Carves up to a batch of fresh blocks from the untouched tail onto the free list. Returns false
    /// when the superblock has no untouched blocks left. Owner only.
    pub fn carve(&mut self) -> bool {
        if self.bump >= self.capacity as u64 {
            return false;
        }
        let size = self.block_size as usize;
        let batch = (CARVE_BATCH_BYTES / size).max(1) as u32;
        let n = batch.min(self.capacity - self.bump as u32);
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
        self.bump += n as u64;
        // Pages reached for the first time since the last purge now count as committed.
        let end = (SUPERBLOCK_HEADER as u32 + self.carved_bytes()).next_multiple_of(PAGE_SIZE as u32);
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
        self.sub_used(n);
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
        assert!(self.bump <= self.capacity as u64);
        assert!(self.touched as usize >= PAGE_SIZE, "the header page counts as committed");
        assert!(self.touched as usize >= SUPERBLOCK_HEADER + self.carved_bytes() as usize, "carved pages count as committed");
        let mut n = 0u32;
        let mut b = self.free;
        while !b.is_null() {
            assert!(self.is_block_start(b.cast()), "free block {b:p} not a block start");
            n += 1;
            assert!(n <= self.capacity, "free list cycle");
            // SAFETY: b is a block of this superblock on the owner's free list.
            b = unsafe { (*b).next };
        }
        assert_eq!((self.used() + n) as u64, self.bump, "used + |free| == carved");
        assert!(self.rebin_below <= self.capacity + 1, "rebin boundary within the superblock");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size_class::NCLASSES;

    #[test]
    fn block_offsets_are_recognised_exactly() {
        for c in 0..NCLASSES {
            let size = class_size(c);
            let capacity = ((superblock_size(c) - SUPERBLOCK_HEADER) / size) as u32;
            let shift = size.trailing_zeros();
            let mut h = Superblock::header(c as u8, size as u32, capacity, odd_inverse((size >> shift) as u64), shift as u8, GLOBAL_OWNER, 0, MAGIC);
            for bump in [0, 1, capacity / 2, capacity] {
                h.bump = bump as u64;
                // Every offset of the first 64 KiB, offsets near every block boundary, wrapped negatives.
                let near = (0..=capacity as usize + 1).flat_map(|i| (0..33).map(move |d| (i * size + d).wrapping_sub(16)));
                for off in (0..SUPERBLOCK_SIZE).chain(near).chain((1..4096).map(|k| usize::MAX - k + 1)) {
                    let want = off % size == 0 && off / size < bump as usize;
                    assert_eq!(h.is_block_offset(off), want, "class {c} size {size} bump {bump} offset {off}");
                }
            }
        }
    }
}
