//! The managed heap: blocks tiling one reservation, free blocks in segregated lists (TLSF-style).
//!
//! ```text
//!   base    start                                                  top           commit_end
//!   | pad12 | blk | blk | free | blk | ... | blk | (wilderness: committed, no block)  | reserved ...
//! ```
//!
//! A block is a 4-byte header followed by its payload; block sizes are multiples of 16 and at least
//! 32, and blocks start at 12 mod 16, so every payload is 16-byte aligned. The header is a `u32`:
//! `tag << 3 | kind << 1 | prev_free`, where `kind` is live, free or quick, `tag` (live blocks) is the
//! owning slot's index + 1, and `prev_free` says the block before is free. A live block's size is kept
//! in its slot (`Slot::next_free` doubles as it while the handle is live), so the header costs 4 bytes.
//! A free or quick block holds its size (`u64` at +4) and list links (`next` at +12, `prev` at +20); a
//! free block also ends with a `u32` footer holding its size / 16, which `prev_free` lets the next
//! block find.
//!
//! Two kinds of free space: *free blocks*, coalesced, in 32 x 16 segregated lists (exact 16-byte
//! classes below 256 bytes, then 16 classes per power of two; a good fit is one bitmap search), and
//! *quick blocks*: small blocks (up to `RM_QUICK_MAX`) freed recently, not coalesced, in one LIFO list
//! per exact size and at most `RM_QUICK_BYTES` in all, so that the common free-then-allocate of a small
//! size is a list push and a pop. Neighbours treat a quick block as live; compaction takes it as free
//! space, and an allocation that does not fit flushes the quick lists into free blocks first.
//!
//! Invariants (walked by [`Heap::check_blocks`]): blocks tile `[start, top)`; no two free blocks are
//! adjacent and the last block is never free (it joins the wilderness instead); every free block is in
//! the list of its size class and every listed block is free, and the same for quick blocks; `used` is
//! the sum of live block sizes, `free_bytes` that of free blocks, `quick_bytes` that of quick blocks;
//! `resume` (where an interrupted compaction continues) is a block boundary or `top`; with a limit,
//! `top - base <= limit`.

use crate::config::{RM_DECOMMIT_SLACK, RM_HEAP_COMMIT, RM_QUICK_BYTES, RM_QUICK_MAX};
use crate::os;
use core::ptr::NonNull;

/// Smallest block (header, size, two links, footer).
pub const MIN_BLOCK: usize = 32;
/// Bytes of block header before the payload.
pub const HEADER: usize = 4;
/// Bytes before the first block, so that payloads are 16-byte aligned.
pub const START_PAD: usize = 12;
const SIZE_OFF: usize = 4;
const NEXT_OFF: usize = 12;
const PREV_OFF: usize = 20;
const KIND_FREE: usize = 1 << 1;
const KIND_QUICK: usize = 2 << 1;
const KIND_MASK: usize = 3 << 1;
const SL_LOG2: usize = 4;
const SL_COUNT: usize = 1 << SL_LOG2;
/// Sizes below this have exact classes 16 bytes apart (first-level list 0).
const SMALL: usize = SL_COUNT * 16;
const SMALL_LOG2: usize = SMALL.trailing_zeros() as usize;
const FL_COUNT: usize = 32;
/// Largest block size a footer can hold (32 bits of 16-byte units).
pub const MAX_BLOCK: usize = (u32::MAX as usize) << 4;
/// What [`htag`] says for a freed block waiting, uncoalesced, in a quick list (neighbours treat it as
/// live).
pub const QUICK: usize = usize::MAX;
const QUICK_LISTS: usize = RM_QUICK_MAX / 16 + 1;

/// The size of a block for a payload of `size` bytes, or None on overflow.
#[inline(always)]
pub fn block_size(size: usize) -> Option<usize> {
    let s = size.checked_add(HEADER + 15)? & !15;
    if s > MAX_BLOCK {
        return None;
    }
    Some(if s < MIN_BLOCK { MIN_BLOCK } else { s })
}

#[inline(always)]
fn mapping(size: usize) -> (usize, usize) {
    if size < SMALL {
        (0, size >> 4)
    } else {
        let f = usize::BITS as usize - 1 - size.leading_zeros() as usize;
        (f - SMALL_LOG2 + 1, (size >> (f - SL_LOG2)) & (SL_COUNT - 1))
    }
}

/// Reads the 32-bit header of the block at `b`.
///
/// # Safety
/// `b` is a block boundary inside the committed heap.
#[inline(always)]
pub unsafe fn hdr(b: usize) -> usize {
    // SAFETY: forwarded to the caller; headers are 4-aligned.
    unsafe { *(b as *const u32) as usize }
}

/// Writes the 32-bit header of the block at `b`.
///
/// # Safety
/// `b` is a block boundary inside the committed heap that nothing else uses.
#[inline(always)]
pub unsafe fn set_hdr(b: usize, h: usize) {
    // SAFETY: forwarded to the caller.
    unsafe { *(b as *mut u32) = h as u32 }
}

/// The size of free or quick block `b`.
///
/// # Safety
/// `b` is a free or quick block.
#[inline(always)]
pub unsafe fn fsize(b: usize) -> usize {
    // SAFETY: forwarded to the caller.
    unsafe { rd(b + SIZE_OFF) }
}

/// Reads the word at `a`.
///
/// # Safety
/// `a` is an 8-aligned address inside the committed heap.
#[inline(always)]
pub unsafe fn rd(a: usize) -> usize {
    // SAFETY: forwarded to the caller.
    unsafe { *(a as *const usize) }
}

/// Writes the word at `a`.
///
/// # Safety
/// `a` is an 8-aligned address inside the committed heap that nothing else uses.
#[inline(always)]
pub unsafe fn wr(a: usize, v: usize) {
    // SAFETY: forwarded to the caller.
    unsafe { *(a as *mut usize) = v }
}

/// What a header says: the tag of a live block (slot index + 1), 0 for a free block, [`QUICK`] for a
/// quick one.
#[inline(always)]
pub fn htag(h: usize) -> usize {
    match h & KIND_MASK {
        0 => h >> 3,
        KIND_FREE => 0,
        _ => QUICK,
    }
}
/// The header of a live block with `tag` (slot index + 1; 0 while the caller fills it in).
#[inline(always)]
pub fn live_header(tag: usize, prev_free: bool) -> usize {
    (tag << 3) | prev_free as usize
}

/// The heap: one reservation, the block tiling and the free lists.
pub struct Heap {
    /// Start of the reservation (0 until reserved).
    pub base: usize,
    /// Reserved bytes.
    pub reserve: usize,
    /// The first block (`base + START_PAD`).
    pub start: usize,
    /// End of the last block: `[top, commit_end)` is the committed wilderness.
    pub top: usize,
    /// End of the committed part.
    pub commit_end: usize,
    /// Bound on `top - base` (0: none).
    pub limit: usize,
    /// Bytes in live blocks.
    pub used: usize,
    /// Bytes in free blocks (the wilderness not included).
    pub free_bytes: usize,
    /// Where an interrupted compaction resumes (a block boundary or `top`).
    pub resume: usize,
    /// A budgeted compaction finished its pass but has not yet given back every page past `top`.
    pub trim_pending: bool,
    /// Bytes in quick-list blocks.
    pub quick_bytes: usize,
    quick: [usize; QUICK_LISTS],
    fl_bitmap: u32,
    sl_bitmap: [u32; FL_COUNT],
    heads: [[usize; SL_COUNT]; FL_COUNT],
}

impl Heap {
    /// A heap that will reserve `reserve` bytes on first use.
    pub const fn new(reserve: usize) -> Self {
        Heap {
            base: 0,
            reserve,
            start: 0,
            top: 0,
            commit_end: 0,
            limit: 0,
            used: 0,
            free_bytes: 0,
            resume: 0,
            trim_pending: false,
            quick_bytes: 0,
            quick: [0; QUICK_LISTS],
            fl_bitmap: 0,
            sl_bitmap: [0; FL_COUNT],
            heads: [[0; SL_COUNT]; FL_COUNT],
        }
    }

    /// Reserves the address space if not done yet; false when that fails.
    pub fn ensure_init(&mut self) -> bool {
        if self.base != 0 {
            return true;
        }
        match os::reserve(self.reserve, os::page_size()) {
            Ok(p) => {
                self.base = p.as_ptr() as usize;
                self.start = self.base + START_PAD;
                self.top = self.start;
                self.commit_end = self.base;
                self.resume = self.start;
                true
            }
            Err(_) => false,
        }
    }

    /// Gives the reservation back to the OS.
    ///
    /// # Safety
    /// No block of this heap is used any more.
    pub unsafe fn destroy(&mut self) {
        if self.base != 0 {
            // SAFETY: the caller guarantees nothing uses the heap; the range is our reservation.
            let _ = unsafe { os::release(NonNull::new_unchecked(self.base as *mut u8), self.reserve) };
            self.base = 0;
        }
    }

    // ---- free lists ----

    /// Puts `[b, b + size)` in the free lists as a free block (header, links, footer).
    ///
    /// # Safety
    /// The range is committed heap that no block uses, `size >= MIN_BLOCK`, multiple of 16; the block
    /// before `b` is live (or `b == start`).
    pub unsafe fn insert_free(&mut self, b: usize, size: usize) {
        let (fl, sl) = mapping(size);
        let head = self.heads[fl][sl];
        // SAFETY: the caller guarantees the range is ours; head is a listed free block.
        unsafe {
            set_hdr(b, KIND_FREE);
            wr(b + SIZE_OFF, size);
            wr(b + NEXT_OFF, head);
            wr(b + PREV_OFF, 0);
            *((b + size - 4) as *mut u32) = (size >> 4) as u32;
            if head != 0 {
                wr(head + PREV_OFF, b);
            }
        }
        self.heads[fl][sl] = b;
        self.fl_bitmap |= 1 << fl;
        self.sl_bitmap[fl] |= 1 << sl;
        self.free_bytes += size;
    }

    /// Takes free block `b` out of its list.
    ///
    /// # Safety
    /// `b` is a listed free block.
    pub unsafe fn remove_free(&mut self, b: usize) {
        // SAFETY: b is a listed free block: its header and links are valid, and so are its neighbours'.
        unsafe {
            let size = fsize(b);
            let (next, prev) = (rd(b + NEXT_OFF), rd(b + PREV_OFF));
            let (fl, sl) = mapping(size);
            if next != 0 {
                wr(next + PREV_OFF, prev);
            }
            if prev != 0 {
                wr(prev + NEXT_OFF, next);
            } else {
                self.heads[fl][sl] = next;
                if next == 0 {
                    self.sl_bitmap[fl] &= !(1 << sl);
                    if self.sl_bitmap[fl] == 0 {
                        self.fl_bitmap &= !(1 << fl);
                    }
                }
            }
            self.free_bytes -= size;
        }
    }

    /// A listed free block of at least `size` bytes: a good fit from the size classes above the
    /// request, else a bounded first-fit walk of the request's own class.
    #[inline]
    fn find_free(&self, size: usize) -> Option<usize> {
        let (mut fl, mut sl) = if size < SMALL {
            mapping(size)
        } else {
            let r = size + (1 << (usize::BITS as usize - 1 - size.leading_zeros() as usize - SL_LOG2)) - 1;
            mapping(r)
        };
        if fl < FL_COUNT {
            let mut sl_map = self.sl_bitmap[fl] & (!0u32).checked_shl(sl as u32).unwrap_or(0);
            if sl_map == 0 {
                let fl_map = self.fl_bitmap & (!0u32).checked_shl(fl as u32 + 1).unwrap_or(0);
                if fl_map != 0 {
                    fl = fl_map.trailing_zeros() as usize;
                    sl_map = self.sl_bitmap[fl];
                }
            }
            if sl_map != 0 {
                sl = sl_map.trailing_zeros() as usize;
                return Some(self.heads[fl][sl]);
            }
        }
        // Nothing in the classes that surely fit: first fit in the request's own class.
        let (fl, sl) = mapping(size);
        let mut b = self.heads[fl][sl];
        let mut n = 0;
        while b != 0 && n < 32 {
            // SAFETY: listed free blocks have valid headers and links.
            unsafe {
                if fsize(b) >= size {
                    return Some(b);
                }
                b = rd(b + NEXT_OFF);
            }
            n += 1;
        }
        None
    }

    /// Sets or clears the `prev_free` bit of the block at `b`, if `b` is a block (not `top`).
    ///
    /// # Safety
    /// `b` is a block boundary or `top`.
    #[inline]
    pub unsafe fn set_prev_free(&mut self, b: usize, free: bool) {
        if b < self.top {
            // SAFETY: b is a block header inside the heap.
            unsafe { set_hdr(b, (hdr(b) & !1) | free as usize) };
        }
    }

    /// Called when the block boundary at `x` disappears into the block starting at `into`.
    #[inline]
    fn absorbed(&mut self, x: usize, into: usize) {
        if self.resume == x {
            self.resume = into;
        }
    }

    // ---- blocks ----

    /// Frees live block `b` of `size` bytes into its quick list if it is small and the lists have room
    /// (no coalescing: one push), else as [`Heap::free_block`].
    ///
    /// # Safety
    /// As for [`Heap::free_block`].
    #[inline(always)]
    pub unsafe fn free_fast(&mut self, b: usize, size: usize) {
        if size <= RM_QUICK_MAX && self.quick_bytes + size <= RM_QUICK_BYTES {
            let list = &mut self.quick[size >> 4];
            let head = *list;
            // SAFETY: b is ours now; its payload holds the links (next, prev); head is a listed quick
            // block. The prev_free bit is kept.
            unsafe {
                set_hdr(b, (hdr(b) & 1) | KIND_QUICK);
                wr(b + SIZE_OFF, size);
                wr(b + NEXT_OFF, head);
                wr(b + PREV_OFF, 0);
                if head != 0 {
                    wr(head + PREV_OFF, b);
                }
            }
            *list = b;
            self.quick_bytes += size;
            return;
        }
        // SAFETY: forwarded.
        unsafe { self.free_block(b, size) }
    }

    /// Turns every quick-list block into an ordinary free block (coalescing).
    pub fn flush_quick(&mut self) {
        if self.quick_bytes == 0 {
            return;
        }
        for i in 0..QUICK_LISTS {
            while self.quick[i] != 0 {
                let b = self.quick[i];
                // SAFETY: listed quick blocks are blocks of this heap that nothing uses; freeing one as
                // live coalesces it with free neighbours (quick ones count as live until flushed).
                unsafe {
                    let next = rd(b + NEXT_OFF);
                    self.quick[i] = next;
                    if next != 0 {
                        wr(next + PREV_OFF, 0);
                    }
                    let size = fsize(b);
                    set_hdr(b, live_header(0, hdr(b) & 1 != 0));
                    self.quick_bytes -= size;
                    self.free_block(b, size);
                }
            }
        }
    }

    /// Takes quick block `b` out of its list (compaction uses its space as free space).
    ///
    /// # Safety
    /// `b` is a listed quick block.
    pub unsafe fn remove_quick(&mut self, b: usize) {
        // SAFETY: b and its neighbours are listed quick blocks.
        unsafe {
            let size = fsize(b);
            let (next, prev) = (rd(b + NEXT_OFF), rd(b + PREV_OFF));
            if prev != 0 {
                wr(prev + NEXT_OFF, next);
            } else {
                self.quick[size >> 4] = next;
            }
            if next != 0 {
                wr(next + PREV_OFF, prev);
            }
            self.quick_bytes -= size;
        }
    }

    /// Allocates a block of exactly `size` bytes or a little more (a multiple of 16, at least 32): a
    /// quick-list block, a free block or a bump at `top`. Writes a live header with tag 0 (the caller
    /// ORs its tag in) and returns `(block, block size)`.
    #[inline(always)]
    pub fn alloc_block(&mut self, size: usize) -> Option<(usize, usize)> {
        if size <= RM_QUICK_MAX {
            let b = self.quick[size >> 4];
            if b != 0 {
                // SAFETY: b is a listed quick block of exactly `size` bytes; its successor is listed.
                unsafe {
                    let next = rd(b + NEXT_OFF);
                    self.quick[size >> 4] = next;
                    if next != 0 {
                        wr(next + PREV_OFF, 0);
                    }
                    set_hdr(b, live_header(0, hdr(b) & 1 != 0));
                }
                self.quick_bytes -= size;
                return Some((b, size));
            }
        }
        self.alloc_block_general(size)
    }

    fn alloc_block_general(&mut self, size: usize) -> Option<(usize, usize)> {
        if let Some(b) = self.find_free(size) {
            // SAFETY: b is a listed free block of at least `size` bytes.
            unsafe {
                self.remove_free(b);
                let total = fsize(b);
                set_hdr(b, live_header(0, false));
                if total - size >= MIN_BLOCK {
                    self.insert_free(b + size, total - size);
                    return Some((b, size));
                }
                self.set_prev_free(b + total, false);
                return Some((b, total));
            }
        }
        self.bump(size)
    }

    /// Moves the top of the heap up to `end`, committing as needed, within the limit; false (and nothing
    /// changed) when it cannot.
    fn extend_top(&mut self, end: usize) -> bool {
        if self.limit != 0 && end - self.base > self.limit {
            return false;
        }
        if end > self.commit_end && !self.grow(end) {
            return false;
        }
        self.top = end;
        true
    }

    fn bump(&mut self, size: usize) -> Option<(usize, usize)> {
        let b = self.top;
        let end = b.checked_add(size)?;
        if !self.extend_top(end) {
            return None;
        }
        // SAFETY: [b, end) is committed wilderness; the block before is live (free blocks never touch
        // the wilderness).
        unsafe { set_hdr(b, live_header(0, false)) };
        Some((b, size))
    }

    /// Commits the heap up to at least `end`; false beyond the limit, the reservation or memory.
    pub fn grow(&mut self, end: usize) -> bool {
        if self.base == 0 && !self.ensure_init() {
            return false;
        }
        let page = os::page_size();
        if end - self.base > self.reserve || (self.limit != 0 && end - self.base > self.limit) {
            return false;
        }
        if end <= self.commit_end {
            return true;
        }
        let mut new_end = (self.commit_end + RM_HEAP_COMMIT).max((end + page - 1) & !(page - 1));
        new_end = new_end.min(self.base + self.reserve);
        if self.limit != 0 {
            let cap = (self.base + self.limit + page - 1) & !(page - 1);
            new_end = new_end.min(cap.max((end + page - 1) & !(page - 1)));
        }
        // SAFETY: [commit_end, new_end) is page-aligned and inside our reservation.
        let r = unsafe { os::commit(NonNull::new_unchecked(self.commit_end as *mut u8), new_end - self.commit_end) };
        if r.is_err() {
            return false;
        }
        self.commit_end = new_end;
        true
    }

    /// Frees the live block `b` of `bsize` bytes (its tag is ignored), coalescing with free
    /// neighbours or the wilderness.
    ///
    /// # Safety
    /// `b` is a live block of this heap of `bsize` bytes that nothing uses any more.
    pub unsafe fn free_block(&mut self, b: usize, bsize: usize) {
        // SAFETY: b is a live block; its neighbours' headers (and the footer of a free predecessor) are
        // valid by the tiling invariant.
        unsafe {
            let h = hdr(b);
            let mut start = b;
            let mut size = bsize;
            if h & 1 != 0 {
                let psize = (*((b - 4) as *const u32) as usize) << 4;
                let p = b - psize;
                self.remove_free(p);
                self.absorbed(b, p);
                start = p;
                size += psize;
            }
            let next = b + bsize;
            if next == self.top {
                self.top = start;
                if self.resume > self.top {
                    self.resume = self.top;
                }
                self.maybe_decommit();
                return;
            }
            let nh = hdr(next);
            if htag(nh) == 0 {
                let nsize = fsize(next);
                self.remove_free(next);
                self.absorbed(next, start);
                size += nsize;
            } else {
                set_hdr(next, nh | 1);
            }
            self.insert_free(start, size);
        }
    }

    /// Shrinks live block `b` from `cur` to `size` bytes (a block size), freeing the tail when it is big
    /// enough. Returns the new block size.
    ///
    /// # Safety
    /// `b` is a live block of `cur >= size` bytes.
    pub unsafe fn shrink(&mut self, b: usize, cur: usize, size: usize) -> usize {
        if cur - size < MIN_BLOCK {
            return cur;
        }
        // SAFETY: b is a live block; see `free_block`. The tail [b + size, b + cur) becomes free.
        unsafe {
            let rest = b + size;
            let mut rsize = cur - size;
            let next = b + cur;
            if next == self.top {
                self.top = rest;
                if self.resume > self.top {
                    self.resume = self.top;
                }
                self.maybe_decommit();
                return size;
            }
            let nh = hdr(next);
            if htag(nh) == 0 {
                rsize += fsize(next);
                self.remove_free(next);
                self.absorbed(next, rest);
            } else {
                set_hdr(next, nh | 1);
            }
            self.insert_free(rest, rsize);
            size
        }
    }

    /// Grows live block `b` from `cur` to at least `size` bytes without moving it, from a free
    /// successor or the wilderness. Returns the new block size, or None when it cannot grow in place.
    ///
    /// # Safety
    /// `b` is a live block of `cur < size` bytes.
    pub unsafe fn grow_in_place(&mut self, b: usize, cur: usize, size: usize) -> Option<usize> {
        let next = b + cur;
        if next == self.top {
            let end = b.checked_add(size)?;
            if !self.extend_top(end) {
                return None;
            }
            return Some(size);
        }
        // SAFETY: b is a live block; see `free_block`.
        unsafe {
            let nh = hdr(next);
            if htag(nh) != 0 || cur + fsize(next) < size {
                return None;
            }
            let total = cur + fsize(next);
            self.remove_free(next);
            self.absorbed(next, b);
            if total - size >= MIN_BLOCK {
                self.insert_free(b + size, total - size);
                Some(size)
            } else {
                self.set_prev_free(b + total, false);
                Some(total)
            }
        }
    }

    fn maybe_decommit(&mut self) {
        let page = os::page_size();
        let keep = (self.top + page - 1) & !(page - 1);
        if self.commit_end > keep + RM_DECOMMIT_SLACK {
            self.trim();
        }
    }

    /// Returns every committed page past `top` to the OS.
    pub fn trim(&mut self) {
        self.trim_at_most(usize::MAX);
    }

    /// Returns committed pages past `top` to the OS, at most `max` bytes of them (the highest ones).
    /// True when none are left.
    pub fn trim_at_most(&mut self, max: usize) -> bool {
        if self.base == 0 {
            return true;
        }
        let page = os::page_size();
        let mut keep = (self.top + page - 1) & !(page - 1);
        if self.commit_end > keep && self.commit_end - keep > max {
            keep = self.commit_end - (max & !(page - 1)).max(page);
        }
        if self.commit_end > keep {
            // SAFETY: [keep, commit_end) is committed wilderness past every block: nothing uses it.
            if unsafe { os::decommit(NonNull::new_unchecked(keep as *mut u8), self.commit_end - keep) }.is_ok() {
                self.commit_end = keep;
            }
        }
        self.commit_end <= (self.top + page - 1) & !(page - 1)
    }

    /// The largest free run: the largest free block or the committed wilderness.
    pub fn largest_free(&self) -> usize {
        let mut best = self.commit_end.saturating_sub(self.top);
        if self.fl_bitmap != 0 {
            let fl = 31 - self.fl_bitmap.leading_zeros() as usize;
            let sl = 31 - self.sl_bitmap[fl].leading_zeros() as usize;
            let mut b = self.heads[fl][sl];
            while b != 0 {
                // SAFETY: listed free blocks have valid headers and links.
                unsafe {
                    best = best.max(fsize(b));
                    b = rd(b + NEXT_OFF);
                }
            }
        }
        best
    }

    /// Walks the tiling and the free lists; calls `live(block, header)` for each live block, which
    /// checks it and returns its size (kept in its slot). Panics on a violation of the module's
    /// invariants. Returns the number of live blocks.
    pub fn check_blocks(&self, mut live: impl FnMut(usize, usize) -> usize) -> usize {
        if self.base == 0 {
            return 0;
        }
        assert!(self.start <= self.top && self.top <= self.commit_end, "top outside the committed heap");
        assert!(self.commit_end <= self.base + self.reserve);
        assert!(self.limit == 0 || self.top - self.base <= self.limit, "heap beyond its limit");
        let (mut b, mut prev_free, mut used, mut free, mut nfree, mut nlive) = (self.start, false, 0, 0, 0, 0);
        let mut resume_ok = self.resume == self.top;
        let (mut quick, mut nquick) = (0, 0);
        while b < self.top {
            resume_ok |= b == self.resume;
            // SAFETY: b is a block boundary inside [start, top) by induction.
            let h = unsafe { hdr(b) };
            assert!(h & KIND_MASK != KIND_MASK, "block {b:#x}: bad kind");
            assert_eq!(h & 1 != 0, prev_free, "block {b:#x}: prev_free bit");
            let tag = htag(h);
            let size = if tag == 0 || tag == QUICK {
                // SAFETY: free and quick blocks hold their size at +4 (checked below to be sane).
                unsafe { fsize(b) }
            } else {
                live(b, h)
            };
            assert!(size >= MIN_BLOCK && size % 16 == 0, "block {b:#x}: bad size {size}");
            assert!(size <= self.top - b, "block {b:#x} runs past top");
            if tag == QUICK {
                quick += size;
                nquick += 1;
                prev_free = false;
            } else if tag == 0 {
                assert!(!prev_free, "two adjacent free blocks at {b:#x}");
                // SAFETY: a free block's footer is its last 4 bytes.
                let footer = unsafe { *((b + size - 4) as *const u32) } as usize;
                assert_eq!(footer << 4, size, "free block {b:#x}: footer");
                assert!(b + size < self.top, "free block {b:#x} touches the wilderness");
                free += size;
                nfree += 1;
                prev_free = true;
            } else {
                used += size;
                nlive += 1;
                prev_free = false;
            }
            b += size;
        }
        assert_eq!(b, self.top, "blocks do not tile the heap");
        assert!(resume_ok, "resume point {:#x} is not a block boundary", self.resume);
        assert_eq!(used, self.used, "used bytes");
        assert_eq!(free, self.free_bytes, "free bytes");
        assert_eq!(quick, self.quick_bytes, "quick-list bytes");
        let mut listed_quick = 0;
        for (i, &head) in self.quick.iter().enumerate() {
            let (mut q, mut qprev) = (head, 0);
            while q != 0 {
                assert!(q >= self.start && q < self.top, "quick block {q:#x} outside the heap");
                // SAFETY: q lies in the heap (checked above).
                let h = unsafe { hdr(q) };
                // SAFETY: as above.
                assert_eq!((htag(h), unsafe { fsize(q) }), (QUICK, i << 4), "quick list {i}: block {q:#x}");
                // SAFETY: as above.
                assert_eq!(unsafe { rd(q + PREV_OFF) }, qprev, "quick back link of {q:#x}");
                qprev = q;
                listed_quick += 1;
                assert!(listed_quick <= nquick, "quick lists longer than the quick blocks");
                // SAFETY: as above.
                q = unsafe { rd(q + NEXT_OFF) };
            }
        }
        assert_eq!(listed_quick, nquick, "quick blocks missing from their lists");
        let mut listed = 0;
        for fl in 0..FL_COUNT {
            assert_eq!(self.fl_bitmap & (1 << fl) != 0, self.sl_bitmap[fl] != 0, "first-level bitmap {fl}");
            for sl in 0..SL_COUNT {
                let mut f = self.heads[fl][sl];
                assert_eq!(self.sl_bitmap[fl] & (1 << sl) != 0, f != 0, "second-level bitmap {fl}/{sl}");
                let mut prev = 0;
                while f != 0 {
                    assert!(f >= self.start && f < self.top, "listed block {f:#x} outside the heap");
                    // SAFETY: f is inside the heap; its header is checked to be a free one.
                    unsafe {
                        let h = hdr(f);
                        assert_eq!(htag(h), 0, "listed block {f:#x} is live");
                        assert_eq!(mapping(fsize(f)), (fl, sl), "block {f:#x} in the wrong list");
                        assert_eq!(rd(f + PREV_OFF), prev, "back link of {f:#x}");
                        prev = f;
                        f = rd(f + NEXT_OFF);
                    }
                    listed += 1;
                    assert!(listed <= nfree, "free lists longer than the free blocks");
                }
            }
        }
        assert_eq!(listed, nfree, "free blocks missing from the lists");
        nlive
    }
}
