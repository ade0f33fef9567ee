//! The region page: a [`REGION_PAGE`]-sized, [`REGION_PAGE`]-aligned piece of the reservation that starts
//! with a [`PageHeader`], so that any block pointer finds its page by masking (`p & !(REGION_PAGE - 1)`).
//!
//! A small page is carved by bumping into *chunks*, each a multiple of the 16-byte granule: an 8-byte
//! block header, then the payload, whose address `p` is 16-byte aligned. The header holds the chunk's
//! size in granules and a state word (live, freed, internal, padding) xor-ed with a tag of `p`, so that
//! user bytes below an interior pointer, or a header copied elsewhere, almost never pass for a live block.
//! Chunks tile the page from granule `first` to the carving end (`top`, or the region's bump pointer for
//! its current page): walking them by their sizes visits every chunk.
//!
//! Sizes are rounded to *classes*: every granule count up to [`EXACT_GRANULES`] is a class of its own,
//! above that four classes per doubling up to [`MAX_SMALL_GRANULES`]. A freed chunk (state freed) sits
//! on its region's free list of its class, linked through its first payload bytes by 32-bit granule
//! indexes from the reservation's base (`next`, `prev`), so that a chunk of 16 bytes holds both links.
//!
//! A chunk freed at its page's *dead frontier* (the first chunk, or right after the last dead chunk:
//! frees in allocation order, FIFO) becomes *dead* instead: on no list, so that its page empties and is
//! recycled whole rather than refilled piecemeal; the region lists a page's dead chunks if frees move on
//! to another page before it empties.
//!
//! Invariants of a small page (checked by `Region::check`): chunks tile `[first, top)`; `live` counts
//! the live and internal chunks, `[dead_lo, dead_hi)` covers the dead ones; every freed chunk is on
//! the free list of its
//! class, every dead or padding chunk on none.

use crate::config::{REGION_GRANULE, REGION_GRANULES, REGION_PAGE};
use core::sync::atomic::AtomicPtr;

/// Page kinds in [`PageHeader::kind`].
pub const KIND_SMALL: u8 = 1;
/// The first page of a run of pages holding one large block.
pub const KIND_RUN: u8 = 2;

/// State of a live user block's header.
pub const MAGIC_LIVE: u32 = 0x5245_474c; // "REGL"
/// State of a block the region allocated for itself (cleanup records): `region_free` refuses it.
pub const MAGIC_INTERNAL: u32 = 0x5245_4749; // "REGI"
/// State of a large block's header (just below its payload in its run).
pub const MAGIC_RUN: u32 = 0x5245_4752; // "REGR"
/// State of a freed chunk: it is on its class's free list.
pub const MAGIC_FREED: u32 = 0x5245_4746; // "REGF"
/// State of a freed chunk left off the lists because it was freed right after its left neighbour (FIFO
/// order: its page is likely to empty soon); listed later if the page stops emptying (see the region).
pub const MAGIC_DEAD: u32 = 0x5245_4744; // "REGD"
/// State of a padding chunk (alignment gaps, page tails): on no list, dead until its page is recycled.
pub const MAGIC_PAD: u32 = 0x5245_4750; // "REGP"

/// Granule counts up to this are classes of their own (chunks up to 1 KiB, requests up to 1,016 bytes).
pub const EXACT_GRANULES: usize = 64;
/// The largest chunk of a small page, in granules (a class: 7 << 7); larger blocks get runs.
pub const MAX_SMALL_GRANULES: usize = 896;
/// Number of classes, index 0 unused: 64 exact ones and 15 geometric ones (80, 96, ... 896 granules).
pub const NCLASSES: usize = EXACT_GRANULES + 16;
/// Largest request served from the exact classes.
pub const EXACT_MAX: usize = EXACT_GRANULES * REGION_GRANULE - 8;

/// The header at the start of every page a region uses.
#[repr(C)]
pub struct PageHeader {
    /// Owning region, or null while the page is in the pool. Atomic because `region_usable_size` of a
    /// pointer reads it from another thread while the owner of that page may be changing hands.
    pub region: AtomicPtr<super::Region>,
    /// Live blocks (user and internal) in the page; for a run, 1.
    pub live: u32,
    /// First granule blocks may use (after this header, and after the region itself on its home page).
    pub first: u16,
    /// [`KIND_SMALL`] or [`KIND_RUN`].
    pub kind: u8,
    /// 1 while the page sits empty in its region's cache (not on the all-list).
    pub cached: u8,
    /// 1 if chunks of the page may be on free lists (then they must be unlinked when it empties).
    pub listed: u8,
    /// Generation, advanced whenever the page's blocks are forgotten; part of every header's tag.
    pub gen: u32,
    /// Payload of the lowest dead chunk (`usize::MAX` when none).
    pub dead_lo: usize,
    /// The *dead frontier*: a chunk freed with its payload here becomes dead, and the frontier moves to
    /// its end. It starts at the first chunk, so frees in allocation order (FIFO) keep finding it; every
    /// dead chunk lies in `[dead_lo, dead_hi)`.
    pub dead_hi: usize,
    /// Payload address where carving stopped, for a page that is not its region's current page.
    pub top: usize,
    /// Links in the region's list of every page in use.
    pub all_prev: *mut PageHeader,
    /// See `all_prev`.
    pub all_next: *mut PageHeader,
    /// Link in the region's empty-page cache, or the pool's warm stack.
    pub list_next: *mut PageHeader,
    /// Runs: pages in the run.
    pub run_pages: usize,
    /// Runs: address of the block.
    pub run_payload: usize,
    /// Runs: usable bytes of the block.
    pub run_size: usize,
}

/// Bytes the page header takes, rounded to a granule.
pub const HEADER_SIZE: usize = (core::mem::size_of::<PageHeader>() + REGION_GRANULE - 1) & !(REGION_GRANULE - 1);
/// First granule of an ordinary page: the block header (8 bytes) must fit after the page header.
pub const FIRST_GRANULE: usize = granules_before(HEADER_SIZE);
/// Bytes of the largest block a page holds (14,328 with 16 KiB pages); larger blocks get a run of pages.
pub const SMALL_MAX: usize = MAX_SMALL_GRANULES * REGION_GRANULE - 8;

const _: () = assert!(HEADER_SIZE < REGION_PAGE / 8);
const _: () = assert!(core::mem::align_of::<PageHeader>() <= REGION_GRANULE);
const _: () = assert!(FIRST_GRANULE * REGION_GRANULE - 8 >= HEADER_SIZE);
const _: () = assert!(MAX_SMALL_GRANULES + FIRST_GRANULE <= REGION_GRANULES);
const _: () = assert!(class_of(MAX_SMALL_GRANULES) == NCLASSES - 1);

/// The first granule whose block header lies at or after byte `offset` of the page.
pub const fn granules_before(offset: usize) -> usize {
    (offset + 8).div_ceil(REGION_GRANULE)
}

/// Granules of the chunk (block header + payload) for a request of `size` bytes, before rounding to a
/// class; a value larger than any page when `size` is huge (never wraps).
#[inline(always)]
pub fn granules(size: usize) -> usize {
    size.saturating_add(8 + REGION_GRANULE - 1) / REGION_GRANULE
}

/// Bytes of the chunk for a request of `size` bytes before class rounding (never wraps).
#[inline(always)]
pub fn chunk_size(size: usize) -> usize {
    size.saturating_add(8 + REGION_GRANULE - 1) & !(REGION_GRANULE - 1)
}

/// Class index of a chunk of `k` granules, `1 <= k <= MAX_SMALL_GRANULES` (rounding up).
#[inline(always)]
pub const fn class_of(k: usize) -> usize {
    if k <= EXACT_GRANULES {
        return k;
    }
    let b = (usize::BITS - 1 - (k - 1).leading_zeros()) as usize; // 2^b < k <= 2^(b+1)
    let step = b - 2;
    let q = (k + (1 << step) - 1) >> step; // 5..=8
    EXACT_GRANULES + 1 + (b - 6) * 4 + q - 5
}

/// Granules of the chunks of class `c`.
#[inline(always)]
pub const fn class_granules(c: usize) -> usize {
    if c <= EXACT_GRANULES {
        return c;
    }
    let j = c - EXACT_GRANULES - 1;
    (5 + j % 4) << (4 + j / 4)
}

/// The tag mixed into a header's state word: it ties the header to its payload address and to the
/// page's generation `gen` (so that headers left from before a reset or a recycling are stale).
#[inline(always)]
pub fn tag(p: usize, gen: u32) -> u32 {
    (p >> 4) as u32 ^ gen
}

/// Reads the header of the chunk with payload `p` in a page of generation `gen`: `(granules, state)`,
/// the state untagged.
///
/// # Safety
/// `p - 8` is readable.
#[inline(always)]
pub unsafe fn read_header(p: usize, gen: u32) -> (usize, u32) {
    // SAFETY: guaranteed by the caller.
    let v = unsafe { ((p - 8) as *const u64).read() };
    ((v & 0xffff_ffff) as usize, (v >> 32) as u32 ^ tag(p, gen))
}

/// Writes the header of the chunk with payload `p` in a page of generation `gen`.
///
/// # Safety
/// `p - 8` is inside a committed page owned by the caller.
#[inline(always)]
pub unsafe fn write_header(p: usize, k: usize, state: u32, gen: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe { ((p - 8) as *mut u64).write(k as u64 | ((state ^ tag(p, gen)) as u64) << 32) }
}

impl PageHeader {
    /// Sets up a small page for `region`, empty, with blocks allowed from granule `first` on. Every field
    /// is written: the memory may hold anything a previous owner left.
    ///
    /// # Safety
    /// `page` is a page of the reservation, committed, that nobody else uses.
    pub unsafe fn init_small(page: *mut PageHeader, region: *mut super::Region, first: usize) -> &'static mut PageHeader {
        // SAFETY: the caller hands us exclusive use of a committed page; the header fits in it.
        let h = unsafe { &mut *page };
        h.region = AtomicPtr::new(region);
        h.all_prev = core::ptr::null_mut();
        h.all_next = core::ptr::null_mut();
        h.list_next = core::ptr::null_mut();
        h.kind = KIND_SMALL;
        h.cached = 0;
        h.first = first as u16;
        h.run_pages = 0;
        h.run_payload = 0;
        h.run_size = 0;
        h.clear_blocks();
        h
    }

    /// Forgets every block of a small page: nothing carved, no live block.
    pub fn clear_blocks(&mut self) {
        self.live = 0;
        self.listed = 0;
        self.gen = self.gen.wrapping_add(1);
        self.top = self.first_payload();
        self.reset_dead();
    }

    /// Whether the page holds dead chunks and live blocks: when frees move on to another page, its dead
    /// chunks are listed.
    #[inline(always)]
    pub fn needs_salvage(&self) -> bool {
        self.dead_lo != usize::MAX && self.live != 0
    }

    /// No dead chunk; the dead frontier at the first chunk.
    pub fn reset_dead(&mut self) {
        self.dead_lo = usize::MAX;
        self.dead_hi = self.first_payload();
    }

    /// Payload address of the first chunk of the page.
    #[inline(always)]
    pub fn first_payload(&self) -> usize {
        self.addr() + self.first as usize * REGION_GRANULE
    }

    /// Address of the page.
    #[inline(always)]
    pub fn addr(&self) -> usize {
        self as *const PageHeader as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        for k in 1..=MAX_SMALL_GRANULES {
            let c = class_of(k);
            assert!((1..NCLASSES).contains(&c));
            let g = class_granules(c);
            assert!(g >= k, "class {c} of {k} granules holds {g}");
            assert_eq!(class_of(g), c);
            assert!(c == 1 || class_granules(c - 1) < k, "smallest class for {k}");
            assert!(g * 4 <= k * 5, "rounding below 25%");
        }
        assert_eq!(class_granules(NCLASSES - 1), MAX_SMALL_GRANULES);
        assert_eq!(class_of(65), 65);
        assert_eq!(class_granules(65), 80);
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(0), 16);
        assert_eq!(chunk_size(8), 16);
        assert_eq!(chunk_size(9), 32);
        assert_eq!(chunk_size(24), 32);
        assert_eq!(chunk_size(25), 48);
        assert_eq!(granules(25), 3);
        assert_eq!(granules(EXACT_MAX), EXACT_GRANULES);
        assert!(chunk_size(usize::MAX) > REGION_PAGE);
        assert!(granules(usize::MAX) > REGION_GRANULES);
    }

    #[test]
    fn headers_are_tied_to_their_address() {
        let mut buf = [0u64; 8];
        let p = (buf.as_mut_ptr() as usize + 31) & !15;
        // SAFETY: p - 8 .. p + 24 lies in buf.
        unsafe {
            write_header(p, 5, MAGIC_LIVE, 7);
            assert_eq!(read_header(p, 7), (5, MAGIC_LIVE));
            assert_ne!(read_header(p, 8).1, MAGIC_LIVE);
            assert_ne!(read_header(p + 16, 7).1, MAGIC_LIVE);
        }
    }
}
