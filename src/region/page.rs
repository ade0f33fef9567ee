//! The region page: a [`REGION_PAGE`]-sized, [`REGION_PAGE`]-aligned piece of the reservation that starts
//! with a [`PageHeader`], so that any block pointer finds its page by masking (`p & !(REGION_PAGE - 1)`).
//!
//! A page is divided into 16-byte granules. Granule `g` stands for the block whose payload starts at
//! `page + 16 * g`; a block of `k` granules occupies the bytes `[16g - 8, 16g - 8 + 16k)`: its 8-byte
//! block header (chunk size and a magic word) sits just below the 16-byte aligned payload.
//!
//! The page header keeps one bitmap, `occ`, with one bit per granule: set iff the granule belongs to the
//! header or to a live block (user or internal). Runs of clear bits are the page's *holes*: reuse fills
//! them by bump allocation again (the reaps idea, Berger, Zorn and McKinley, OOPSLA 2002), so pages that
//! empty in random order are reused before fresh ones are taken. `region_free` accepts `p` only when
//! `occ` says granule `g` is in use (or `p` lies in the open hole, see the region) and the block header
//! below `p` carries the live magic: a block freed twice finds its bit clear or its header marked freed;
//! an interior pointer finds user data where the magic should be.
//!
//! The header is laid out so that a free touches one cache line for the owner and the counts and one
//! for the bitmap word; allocation by bumping touches none of it.
//!
//! Invariants of a small page (checked by `Region::check`), for the *current* page once its open hole is
//! materialised: `occ` covers `[0, first)`; the occupied granules after it are tiled by blocks whose
//! headers carry the live or internal magic; `live` counts those blocks and `used` their granules.

use crate::config::{REGION_BITMAP_WORDS, REGION_GRANULE, REGION_GRANULES, REGION_PAGE};
use core::sync::atomic::AtomicPtr;

/// Page kinds in [`PageHeader::kind`].
pub const KIND_SMALL: u8 = 1;
/// The first page of a run of pages holding one large block.
pub const KIND_RUN: u8 = 2;

/// Magic word of a live user block's header.
pub const MAGIC_LIVE: u32 = 0x5245_474c; // "REGL"
/// Magic word of a block the region allocated for itself (cleanup records): `region_free` refuses it.
pub const MAGIC_INTERNAL: u32 = 0x5245_4749; // "REGI"
/// Magic word of a large block's header (at the start of its run).
pub const MAGIC_RUN: u32 = 0x5245_4752; // "REGR"
/// Magic word written into a block's header when it is freed (debugging aid only).
pub const MAGIC_FREED: u32 = 0x5245_4746; // "REGF"

/// The header at the start of every page a region uses.
#[repr(C)]
pub struct PageHeader {
    /// Owning region, or null while the page is in the pool. Atomic because `region_free` of a foreign
    /// pointer reads it from another thread while the owner of that page may be changing hands.
    pub region: AtomicPtr<super::Region>,
    /// Links in the region's list of every page in use.
    pub all_prev: *mut PageHeader,
    /// See `all_prev`.
    pub all_next: *mut PageHeader,
    /// Links in the region's partial list or empty-page cache, or the pool's resident free stack.
    pub list_prev: *mut PageHeader,
    /// See `list_prev`.
    pub list_next: *mut PageHeader,
    /// Live blocks (user and internal) in the page; for a run, 1.
    pub live: u32,
    /// Granules of those blocks.
    pub used: u32,
    /// Once `used <= reuse_at` the page is worth reusing (see `REGION_REUSE_FREE_PERCENT`).
    pub reuse_at: u32,
    /// First granule blocks may use (after this header, and after the region itself on its home page).
    pub first: u16,
    /// [`KIND_SMALL`] or [`KIND_RUN`].
    pub kind: u8,
    /// 1 while the page is on its region's partial list.
    pub in_partial: u8,
    /// 1 while the page sits empty in its region's cache (not on the all-list).
    pub cached: u8,
    /// Occupied granules (header and live blocks); starts on the second cache line.
    pub occ: [u64; REGION_BITMAP_WORDS],
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
/// Bytes of the largest block an ordinary page can hold (16,040 with 16 KiB pages); larger blocks get a
/// run of pages.
pub const SMALL_MAX: usize = (REGION_GRANULES - FIRST_GRANULE) * REGION_GRANULE - 8;

const _: () = assert!(HEADER_SIZE < REGION_PAGE / 8);
const _: () = assert!(core::mem::align_of::<PageHeader>() <= REGION_GRANULE);
const _: () = assert!(core::mem::offset_of!(PageHeader, occ) == 64);
const _: () = assert!(FIRST_GRANULE * REGION_GRANULE - 8 >= HEADER_SIZE);

/// The first granule whose block header lies at or after byte `offset` of the page.
pub const fn granules_before(offset: usize) -> usize {
    (offset + 8).div_ceil(REGION_GRANULE)
}

/// Bytes of the chunk (block header + payload, a multiple of 16) for a request of `size` bytes, or a
/// value larger than any page when `size` is huge (never wraps).
#[inline(always)]
pub fn chunk_size(size: usize) -> usize {
    size.saturating_add(8 + REGION_GRANULE - 1) & !(REGION_GRANULE - 1)
}

/// Sets bits `[from, from + n)`.
#[inline(always)]
pub fn set_range(bits: &mut [u64; REGION_BITMAP_WORDS], from: usize, n: usize) {
    range_op(bits, from, n, true)
}

/// Clears bits `[from, from + n)`.
#[inline(always)]
pub fn clear_range(bits: &mut [u64; REGION_BITMAP_WORDS], from: usize, n: usize) {
    range_op(bits, from, n, false)
}

#[inline(always)]
fn range_op(bits: &mut [u64; REGION_BITMAP_WORDS], from: usize, n: usize, set: bool) {
    if (1..=64).contains(&n) {
        // At most two words: blocks up to 1 KiB, the common case.
        let (w, lo) = (from / 64, from % 64);
        let m = u64::MAX >> (64 - n);
        let (m0, m1) = (m << lo, (m >> 1) >> (63 - lo));
        if set {
            bits[w] |= m0;
        } else {
            bits[w] &= !m0;
        }
        if m1 != 0 {
            if set {
                bits[w + 1] |= m1;
            } else {
                bits[w + 1] &= !m1;
            }
        }
        return;
    }
    range_op_words(bits, from, n, set)
}

fn range_op_words(bits: &mut [u64; REGION_BITMAP_WORDS], from: usize, n: usize, set: bool) {
    let (mut i, end) = (from, from + n);
    while i < end {
        let w = i / 64;
        let lo = i % 64;
        let hi = if end - w * 64 >= 64 { 64 } else { end - w * 64 };
        let mask = if hi - lo == 64 { u64::MAX } else { ((1u64 << (hi - lo)) - 1) << lo };
        if set {
            bits[w] |= mask;
        } else {
            bits[w] &= !mask;
        }
        i = w * 64 + hi;
    }
}

/// Whether bits `[from, from + n)` are all clear, for `1 <= n <= 64`.
#[inline(always)]
pub fn range_is_clear(bits: &[u64; REGION_BITMAP_WORDS], from: usize, n: usize) -> bool {
    debug_assert!((1..=64).contains(&n) && from + n <= REGION_GRANULES);
    let (w, lo) = (from / 64, from % 64);
    let m = u64::MAX >> (64 - n);
    let (m0, m1) = (m << lo, (m >> 1) >> (63 - lo));
    bits[w] & m0 == 0 && (m1 == 0 || bits[w + 1] & m1 == 0)
}

/// Tests bit `g`.
#[inline(always)]
pub fn test_bit(bits: &[u64; REGION_BITMAP_WORDS], g: usize) -> bool {
    bits[g / 64] & (1u64 << (g % 64)) != 0
}

/// The first bit at or after `from` whose value is `want`, or [`REGION_GRANULES`] when there is none.
pub fn next_bit(bits: &[u64; REGION_BITMAP_WORDS], from: usize, want: bool) -> usize {
    let mut w = from / 64;
    if w >= REGION_BITMAP_WORDS {
        return REGION_GRANULES;
    }
    let flip = if want { 0 } else { u64::MAX };
    let mut word = (bits[w] ^ flip) & (u64::MAX << (from % 64));
    loop {
        if word != 0 {
            return w * 64 + word.trailing_zeros() as usize;
        }
        w += 1;
        if w == REGION_BITMAP_WORDS {
            return REGION_GRANULES;
        }
        word = bits[w] ^ flip;
    }
}

/// Counts set bits.
pub fn count_bits(bits: &[u64; REGION_BITMAP_WORDS]) -> usize {
    bits.iter().map(|w| w.count_ones() as usize).sum()
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
        h.list_prev = core::ptr::null_mut();
        h.list_next = core::ptr::null_mut();
        h.kind = KIND_SMALL;
        h.cached = 0;
        h.first = first as u16;
        let capacity = REGION_GRANULES - first;
        h.reuse_at = (capacity - capacity * crate::config::REGION_REUSE_FREE_PERCENT / 100) as u32;
        h.run_pages = 0;
        h.run_payload = 0;
        h.run_size = 0;
        h.clear_blocks();
        h
    }

    /// Forgets every block of a small page: empty bitmaps (the header granules stay occupied), zero counts.
    pub fn clear_blocks(&mut self) {
        self.live = 0;
        self.used = 0;
        self.in_partial = 0;
        self.occ = [0; REGION_BITMAP_WORDS];
        set_range(&mut self.occ, 0, self.first as usize);
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
    fn ranges_and_searches() {
        let mut b = [0u64; REGION_BITMAP_WORDS];
        set_range(&mut b, 60, 10);
        assert_eq!(count_bits(&b), 10);
        assert!(test_bit(&b, 60) && test_bit(&b, 69) && !test_bit(&b, 70) && !test_bit(&b, 59));
        assert_eq!(next_bit(&b, 0, true), 60);
        assert_eq!(next_bit(&b, 60, false), 70);
        assert_eq!(next_bit(&b, 70, true), REGION_GRANULES);
        set_range(&mut b, 0, REGION_GRANULES);
        assert_eq!(count_bits(&b), REGION_GRANULES);
        assert_eq!(next_bit(&b, 0, false), REGION_GRANULES);
        clear_range(&mut b, 128, 64);
        assert_eq!(next_bit(&b, 5, false), 128);
        assert_eq!(next_bit(&b, 128, true), 192);
        clear_range(&mut b, 0, REGION_GRANULES);
        assert_eq!(count_bits(&b), 0);
        for from in [0, 1, 30, 63, 64, 100, 1000] {
            for n in [1, 2, 33, 63, 64, 65, 130] {
                if from + n > REGION_GRANULES {
                    continue;
                }
                if n <= 64 {
                    assert!(range_is_clear(&b, from, n));
                }
                set_range(&mut b, from, n);
                assert_eq!(count_bits(&b), n);
                if n <= 64 {
                    assert!(!range_is_clear(&b, from, n));
                    assert!(from == 0 || range_is_clear(&b, from - 1, 1));
                }
                assert!(test_bit(&b, from) && test_bit(&b, from + n - 1));
                assert_eq!(next_bit(&b, 0, true), from);
                clear_range(&mut b, from, n);
                assert_eq!(count_bits(&b), 0);
            }
        }
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(0), 16);
        assert_eq!(chunk_size(8), 16);
        assert_eq!(chunk_size(9), 32);
        assert_eq!(chunk_size(24), 32);
        assert_eq!(chunk_size(25), 48);
        assert!(chunk_size(usize::MAX) > REGION_PAGE);
    }
}
