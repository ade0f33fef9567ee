//! bimp: the improved bump allocator: one process-wide stack of blocks whose `free` pops the top
//! block and every already-freed block directly beneath it.
//!
//! The heap is one reservation of address space, committed in chunks as the top grows:
//!
//! ```text
//!  res_start                                                                           res_end
//!  |    |S|F| s|block A|f | s|block B (free)|f |pad| s|block C|f |  committed   | reserved (PROT_NONE)
//!         ^base            ^                          ^last      ^top           ^commit_end
//! ```
//!
//! A block is `[size word | payload | footer]`, and `p`, the pointer the program gets, is the payload:
//! * `p - 8`, the size word (`s`): the payload capacity (a multiple of `BIMP_ALIGN`, below 2^40), bit 0
//!   [`FREE`], bit 1 [`PADDED`], and the 24-bit [`TAG`] in bits 40..64, which tells a block from an
//!   arbitrary address inside the heap;
//! * `p + capacity`, the footer (`f`, [`FOOT`] = `BIMP_ALIGN - 8` bytes): its first word repeats the
//!   capacity, so that the block below the top can be found from the top alone;
//! * an aligned allocation may leave padding below its size word; then `PADDED` is set and the
//!   padding's length is stored at `p - 16` (padding is at least `BIMP_ALIGN` >= 16 bytes).
//!
//! Block starts (and the top) are `-8 (mod BIMP_ALIGN)`, so that payloads are aligned and the overhead
//! is `BIMP_ALIGN` bytes per block. A sentinel block of capacity 0 that is never free sits at `base`.
//!
//! Why footers and not links to the block below: `malloc` then writes its header from the top alone,
//! and freeing the top block sets `top = p - 8` without reading anything below it, so that a
//! malloc/free pair has no chain of dependent memory accesses through the heap's state. The block
//! below is looked at only when a free block may lie there (`nfree != 0`), to keep popping; that is
//! also the only time a footer is trusted, after a range check, so that an overflow into a footer is
//! caught where it matters.
//!
//! Invariants (checked by [`Heap::check`]):
//! * `res_start < base < top <= commit_end <= res_end`; `commit_end` is page-aligned; `base` is
//!   `BIMP_ALIGN`-aligned and `top = -8 (mod BIMP_ALIGN)`.
//! * `top` is the end (footer included) of the last block; `last` is that block's pointer, or the
//!   sentinel's when no block is left or after a fast pop (the new top block is then unknown until a
//!   free finds it by its end, `top`, or an allocation sets it); [`NO_LAST`] before initialisation.
//! * `nfree` is the number of free blocks below the top.
//! * The last block is live: freeing the top block pops it and every free block beneath it, so a free
//!   block always has a live block somewhere above it.
//! * Walking down from the top through the footers reaches the sentinel; every block's footer repeats
//!   the capacity in its size word.
//!
//! Costs: `alloc` is a bounds check and four stores; freeing the top block is a pop (one step per
//! freed block beneath it; no validation needed when the pointer *is* `last`, else the validation
//! below and a compare with the top); freeing another block validates the pointer and sets one bit.
//! Statistics walk the blocks (O(blocks)).
//!
//! Thread safety: the process-wide heap ([`malloc`], [`free_c`], ...) is guarded by one futex lock that is
//! skipped while glibc reports the process single-threaded (`__libc_single_threaded`), and always with
//! the `bimp-single-threaded` feature. [`Heap`] itself is a plain structure, used directly by the tests.

use core::cell::UnsafeCell;
use core::ptr::NonNull;

use crate::config::{
    BIMP_ALIGN, BIMP_COMMIT_CHUNK, BIMP_DECOMMIT_KEEP, BIMP_DECOMMIT_TRIGGER, BIMP_MAX_REQUEST, BIMP_RESERVE,
    BIMP_RESERVE_MIN,
};
use crate::os;

/// Alignment of every block (the build-time `BIMP_ALIGN`).
pub const ALIGN: usize = BIMP_ALIGN;
/// Bytes of a block's footer: with the 8-byte size word, one alignment unit of overhead per block.
const FOOT: usize = ALIGN - 8;
/// Free flag in the size word.
const FREE: usize = 1;
/// The block has padding below its size word; its length is stored at `p - 16`.
const PADDED: usize = 2;
/// Marks the sentinel's size word, so that the fast pop never takes it for a live block.
const SENTINEL: usize = 4;
/// Position of the tag in the size word; the capacity lives below it.
const TAG_SHIFT: u32 = 40;
/// Marks a block ("B1 3D 5A"): a pointer whose size word lacks it was not returned by bimp.
const TAG: usize = 0xB1_3D_5A;
/// The tag as it sits in a size word.
const HEAD: usize = TAG << TAG_SHIFT;
/// The capacity and flag bits of a size word.
const CAP_MASK: usize = (1 << TAG_SHIFT) - 1;
/// What `last` names before initialisation: a size word marked as the sentinel, so that the fast
/// paths, which read the word below `last` without further checks, find no block there (a pointer
/// equal to `last` then fails validation with a message instead of a wild read).
static NO_BLOCK: [usize; 2] = [HEAD | SENTINEL, 0];

/// `last` before initialisation: the payload address of [`NO_BLOCK`].
fn no_last() -> *const u8 {
    NO_BLOCK[1..].as_ptr().cast()
}
/// Largest request the allocation fast paths take (larger ones, up to `BIMP_MAX_REQUEST`, go through
/// the slow path): on x86-64 the bound is a 32-bit immediate, so that the check is one compare.
const FAST_MAX: usize = i32::MAX as usize;

const _: () = assert!(BIMP_MAX_REQUEST <= CAP_MASK + 1 && BIMP_RESERVE <= CAP_MASK);
const _: () = assert!(ALIGN >= 16 && ALIGN % 16 == 0 && FOOT >= 8);

/// Why a pointer passed to a bimp entry point cannot be accepted; the C layer aborts with its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Outside the bimp heap.
    NotOurs,
    /// Inside the heap but at or above the top: freed and popped already, or never allocated.
    AboveTop,
    /// Inside the heap but not the start of a block (misaligned or no block header).
    NotABlock,
    /// The block is already free.
    DoubleFree,
    /// A size word or footer below the freed block was overwritten (a buffer overflow).
    Corrupted,
}

impl Invalid {
    /// The reason, as the one-line diagnostic prints it.
    pub fn why(self) -> &'static str {
        match self {
            Invalid::NotOurs => "not allocated by bimp",
            Invalid::AboveTop => "above the bimp top: already freed, or never allocated",
            Invalid::NotABlock => "not the start of a bimp block",
            Invalid::DoubleFree => "double free: the bimp block is already free",
            Invalid::Corrupted => "bimp heap corrupted below this block: a buffer overflow?",
        }
    }
}

/// Counters of a heap, computed by walking it ([`Heap::check`]): the C type `bimp_stats_t` itself, so
/// that `bimp_stats_get` copies it out unchanged.
pub type Stats = crate::ffi::types::bimp_stats_t;

/// Capacity recorded in a size word.
#[inline(always)]
const fn cap_of(word: usize) -> usize {
    word & CAP_MASK & !(ALIGN - 1)
}

/// Reads the word at address `at`.
///
/// # Safety
/// `at` is 8-aligned and inside committed memory of a heap.
#[inline(always)]
unsafe fn rd(at: usize) -> usize {
    // SAFETY: guaranteed by the caller.
    unsafe { *(at as *const usize) }
}

/// Writes the word at address `at`.
///
/// # Safety
/// `at` is 8-aligned, inside committed memory of a heap, and not part of a live block's payload.
#[inline(always)]
unsafe fn wr(at: usize, v: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { *(at as *mut usize) = v }
}

/// Capacity of a block for a request of `n` bytes (`n <= BIMP_MAX_REQUEST`). A request of 0 gets
/// capacity 0: its block still spans `BIMP_ALIGN` bytes (size word and footer), so its pointer is
/// unique.
#[inline(always)]
const fn capacity_for(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

/// One bimp heap: a stack of blocks over one reservation. All addresses are plain integers; 0 in
/// `base` means "not initialised yet" (every pointer check fails and every allocation takes the slow
/// path, which initialises).
pub struct Heap {
    /// End of the last block (footer included); the next block's size word starts here.
    top: usize,
    /// End of the committed part of the reservation.
    commit_end: usize,
    /// `commit_end - BIMP_DECOMMIT_TRIGGER` (0 when that is negative): a pop whose new top lies
    /// below it gives pages back, so the fast pop compares the new top with it and nothing else.
    shrink_at: usize,
    /// Pointer of the last block: the sentinel when the heap is empty or the last block is unknown
    /// (after a fast pop), [`no_last()`] before initialisation. A pointer (not an address) so that
    /// the constant initialiser of the process-wide heap can name [`NO_BLOCK`].
    last: *const u8,
    /// Pointer of the sentinel block (its payload is empty; its footer starts here).
    base: usize,
    /// Number of free blocks below the top: while it is 0, popping the top block cannot cascade.
    nfree: usize,
    /// Highest top seen when the top last moved down (the current top may be higher).
    peak: usize,
    res_start: usize,
    res_end: usize,
    /// Reservation size to request; 0 for the default policy ([`reservation_target`]).
    want_reserve: usize,
    /// The process-wide heap registers fork handlers for its lock (once: then this is cleared).
    global: bool,
}

impl Heap {
    /// An empty heap that reserves address space on its first allocation: `reserve` bytes, or the
    /// default policy (64 GiB, less under `RLIMIT_AS`) when `reserve` is 0.
    pub fn new(reserve: usize) -> Heap {
        Heap::new_at(reserve, no_last())
    }

    /// [`Heap::new`] with `last` given: [`no_last()`] (a constant initialiser cannot call it).
    const fn new_at(reserve: usize, no_last: *const u8) -> Heap {
        Heap {
            top: 0,
            commit_end: 0,
            shrink_at: 0,
            last: no_last,
            base: 0,
            nfree: 0,
            peak: 0,
            res_start: 0,
            res_end: 0,
            want_reserve: reserve,
            global: false,
        }
    }

    const fn new_global(no_last: *const u8) -> Heap {
        let mut h = Heap::new_at(0, no_last);
        h.global = true;
        h
    }

    /// Moves the end of the committed memory to `end`, and `shrink_at` with it.
    #[inline(always)]
    fn set_commit_end(&mut self, end: usize) {
        self.commit_end = end;
        self.shrink_at = end.saturating_sub(BIMP_DECOMMIT_TRIGGER);
    }

    /// The top of an empty heap: the end of the sentinel.
    #[inline(always)]
    fn floor(&self) -> usize {
        self.base + FOOT
    }

    /// Writes a block at `a` with capacity `cap` and `pad` bytes of padding below its size word, on
    /// top of the stack. The caller checked that `[top, a + cap + FOOT)` is committed.
    #[inline(always)]
    fn place(&mut self, a: usize, cap: usize, pad: usize) -> NonNull<u8> {
        // SAFETY: the caller checked that [top, a + cap + FOOT) lies in the committed part of our
        // reservation at or above the top, so these words belong to no live block.
        unsafe {
            if pad != 0 {
                wr(a - 16, pad);
                wr(a - 8, cap | HEAD | PADDED);
            } else {
                wr(a - 8, cap | HEAD);
            }
            wr(a + cap, cap);
        }
        self.last = a as *const u8;
        self.top = a + cap + FOOT;
        // SAFETY: a > base > 0.
        unsafe { NonNull::new_unchecked(a as *mut u8) }
    }

    /// Allocates `size` bytes aligned to `BIMP_ALIGN` on top of the stack; `None` when the
    /// reservation is exhausted or the OS refuses memory. Fast path: a bounds check and three stores.
    #[inline(always)]
    pub fn alloc(&mut self, size: usize) -> Option<NonNull<u8>> {
        if size <= FAST_MAX {
            let cap = capacity_for(size);
            let a = self.top + 8;
            if a + cap + FOOT <= self.commit_end {
                return Some(self.place(a, cap, 0));
            }
        }
        self.alloc_slow(size, ALIGN)
    }

    /// [`Heap::alloc`] for C: the pointer, or NULL with `errno` set to ENOMEM. The fast path ends in
    /// a return or a tail call, so it needs no stack frame.
    #[inline(always)]
    pub fn alloc_c(&mut self, size: usize) -> *mut u8 {
        if size <= FAST_MAX {
            let cap = capacity_for(size);
            let a = self.top + 8;
            if a + cap + FOOT <= self.commit_end {
                return self.place(a, cap, 0).as_ptr();
            }
        }
        self.alloc_slow_c(size)
    }

    #[cold]
    #[inline(never)]
    fn alloc_slow_c(&mut self, size: usize) -> *mut u8 {
        match self.alloc_slow(size, ALIGN) {
            Some(p) => p.as_ptr(),
            None => {
                os::set_errno(libc::ENOMEM);
                core::ptr::null_mut()
            }
        }
    }

    /// Allocates `size` bytes aligned to `align` (a power of two); padding below the block is
    /// reclaimed with it.
    #[inline]
    pub fn alloc_aligned(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        debug_assert!(align.is_power_of_two());
        if align <= ALIGN {
            return self.alloc(size);
        }
        if size <= FAST_MAX && align <= FAST_MAX {
            let cap = capacity_for(size);
            let a = (self.top + 8 + align - 1) & !(align - 1);
            if a + cap + FOOT <= self.commit_end {
                let pad = a - 8 - self.top;
                return Some(self.place(a, cap, pad));
            }
        }
        self.alloc_slow(size, align)
    }

    /// The slow half of [`Heap::alloc`] / [`Heap::alloc_aligned`]: initialises the heap, commits
    /// enough memory, then places the block as the fast path does.
    #[cold]
    #[inline(never)]
    fn alloc_slow(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if size > BIMP_MAX_REQUEST || align > BIMP_MAX_REQUEST {
            return None;
        }
        if self.base == 0 {
            self.init().ok()?;
        }
        let cap = capacity_for(size);
        let align = if align < ALIGN { ALIGN } else { align };
        let a = (self.top + 8 + align - 1) & !(align - 1);
        self.grow(a + cap + FOOT)?;
        // Placed here rather than by calling the fast path again, which takes no request above
        // FAST_MAX.
        Some(self.place(a, cap, a - 8 - self.top))
    }

    /// Makes `[.., end)` committed; `None` past the reservation or when the OS refuses.
    #[cold]
    #[inline(never)]
    fn grow(&mut self, end: usize) -> Option<()> {
        if end <= self.commit_end {
            return Some(());
        }
        if end > self.res_end {
            return None;
        }
        let want = core::cmp::max(end, self.commit_end + BIMP_COMMIT_CHUNK);
        let new_end = core::cmp::min(os::align_up(want, os::page_size())?, self.res_end);
        let start = NonNull::new(self.commit_end as *mut u8)?;
        // SAFETY: [commit_end, new_end) is page-aligned and lies inside our live reservation.
        unsafe { os::commit(start, new_end - self.commit_end) }.ok()?;
        self.set_commit_end(new_end);
        Some(())
    }

    /// Reserves the address space, commits the first chunk and writes the sentinel.
    fn init(&mut self) -> Result<(), os::OsError> {
        if self.global {
            register_fork_handlers();
            self.global = false;
        }
        let page = os::page_size();
        let mut size = reservation_target(self.want_reserve, page);
        let start = loop {
            match os::reserve(size, core::cmp::max(ALIGN, page)) {
                Ok(p) => break p,
                Err(e) if size <= BIMP_RESERVE_MIN => return Err(e),
                Err(_) => size = core::cmp::max((size / 2) & !(page - 1), BIMP_RESERVE_MIN),
            }
        };
        let first = core::cmp::min(core::cmp::max(BIMP_COMMIT_CHUNK, 2 * ALIGN), size);
        // SAFETY: the first `first` bytes (page multiple) of the reservation just made.
        if let Err(e) = unsafe { os::commit(start, first) } {
            // SAFETY: the reservation was never handed out.
            let _ = unsafe { os::release(start, size) };
            return Err(e);
        }
        let s = start.as_ptr() as usize;
        self.res_start = s;
        self.res_end = s + size;
        self.set_commit_end(s + first);
        self.base = s + ALIGN;
        // SAFETY: the sentinel's size word and footer lie in [s, s + 2 * ALIGN), inside the first
        // committed chunk.
        unsafe {
            wr(self.base - 8, HEAD | SENTINEL);
            wr(self.base, 0);
        }
        self.last = self.base as *const u8;
        self.top = self.floor();
        self.peak = self.top;
        Ok(())
    }

    /// Checks that `a` is the pointer of a live block; returns its size word.
    #[inline(always)]
    fn validate(&self, a: usize) -> Result<usize, Invalid> {
        // p in (base, top] and aligned: its size word lies inside the heap, so it can be read.
        if a.wrapping_sub(self.base + 1) < self.top.wrapping_sub(self.base) && a % ALIGN == 0 {
            // SAFETY: base < a <= top and a is aligned, so a - 8 lies in committed memory at or
            // above the sentinel's size word.
            let word = unsafe { rd(a - 8) };
            if word & (!CAP_MASK | FREE) == HEAD {
                return Ok(word);
            }
        }
        Err(self.classify(a))
    }

    /// The word below `a` when it may be a block's size word (`a` aligned, in `(base, top]`: the
    /// word lies in the heap, so it can be read); `None` otherwise. Nothing is checked about the
    /// word itself.
    #[inline(always)]
    fn word_below(&self, a: usize) -> Option<usize> {
        // Three branches rather than one range compare: each is a compare with memory or an
        // immediate, cheaper than computing the offsets.
        if a > self.top {
            return None;
        }
        if a <= self.base {
            return None;
        }
        if a % ALIGN != 0 {
            return None;
        }
        // SAFETY: as in validate.
        Some(unsafe { rd(a - 8) })
    }

    /// Says why `a` failed [`Heap::validate`].
    #[cold]
    #[inline(never)]
    fn classify(&self, a: usize) -> Invalid {
        if self.base == 0 || a <= self.base || a >= self.res_end {
            return Invalid::NotOurs;
        }
        if a >= self.top {
            return Invalid::AboveTop;
        }
        if a % ALIGN != 0 {
            return Invalid::NotABlock;
        }
        // SAFETY: as in validate: base < a < top, aligned.
        let word = unsafe { rd(a - 8) };
        if word & !CAP_MASK != HEAD {
            Invalid::NotABlock
        } else if word & FREE != 0 {
            Invalid::DoubleFree
        } else {
            Invalid::NotABlock
        }
    }

    /// Frees the block at `p` (NULL is ignored). The top block is popped together with every free
    /// block beneath it; any other block is validated and marked free in O(1).
    ///
    /// The top block needs no validation when `p == last`: it is the live block on top. After a fast
    /// pop `last` is unknown (the sentinel), and the top block is recognised by its end, `top`.
    #[inline(always)]
    pub fn free(&mut self, p: *mut u8) -> Result<(), Invalid> {
        let a = p as usize;
        if a == self.last as usize {
            if self.pop_fast(a) {
                return Ok(());
            }
            return self.pop(a);
        }
        self.free_below(a)
    }

    /// [`Heap::free`] for C: an invalid pointer aborts with a one-line message naming `func`. The fast
    /// path ends in a return or a tail call, so it needs no stack frame.
    #[inline(always)]
    pub fn free_c(&mut self, p: *mut u8, func: &'static str) {
        let a = p as usize;
        if a == self.last as usize {
            if self.pop_fast(a) {
                return;
            }
        } else if let Some(word) = self.word_below(a) {
            // A live, unpadded block: the tag and a capacity with every flag clear (anything else,
            // padded blocks included, goes the slow way).
            let cap = word ^ HEAD;
            if cap & (!CAP_MASK | (ALIGN - 1)) == 0 {
                if a + cap + FOOT != self.top {
                    // SAFETY: a is a validated live block.
                    unsafe { wr(a - 8, word | FREE) };
                    self.nfree += 1;
                    return;
                }
                // The top block, which `last` does not name.
                if self.pop_plain(a) {
                    return;
                }
            }
        } else if a == 0 {
            // free(NULL), frequent in C programs: tested only once the pointer failed the range
            // check, so the paths above do not pay for it.
            return;
        }
        self.free_slow_c(a, func)
    }

    #[inline(never)]
    fn free_slow_c(&mut self, a: usize, func: &'static str) {
        let r = if a == self.last as usize { self.pop(a) } else { self.free_below(a) };
        if let Err(e) = r {
            crate::diag::invalid_pointer(func, a as *const u8, e.why());
        }
    }

    /// Frees a block that `last` does not name: validate it, then pop it if it is the top block
    /// (it ends at `top`), else set its free bit.
    #[inline(never)]
    fn free_below(&mut self, a: usize) -> Result<(), Invalid> {
        match self.validate(a) {
            Ok(word) if a + cap_of(word) + FOOT == self.top => self.pop(a),
            Ok(word) => {
                // SAFETY: a is a validated live block.
                unsafe { wr(a - 8, word | FREE) };
                self.nfree += 1;
                Ok(())
            }
            Err(_) if a == 0 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Start (lowest address, padding included) of the block at `a` whose size word is `word`.
    ///
    /// # Safety
    /// `a` is a block of this heap.
    #[inline(always)]
    unsafe fn start_of(a: usize, word: usize) -> usize {
        if word & PADDED == 0 {
            a - 8
        } else {
            // SAFETY: a padded block stores its padding length at a - 16.
            a - 8 - unsafe { rd(a - 16) }
        }
    }

    /// [`Heap::pop_plain`] for `a == last` (the live top block, or the sentinel when `last` is
    /// unknown or the heap is empty: its size word then says so), unless it has padding.
    #[inline(always)]
    fn pop_fast(&mut self, a: usize) -> bool {
        // SAFETY: a is the last block (live by the invariants) or the sentinel, so its size word is
        // committed heap memory.
        let word = unsafe { rd(a - 8) };
        if word & (PADDED | SENTINEL) != 0 {
            return false;
        }
        self.pop_plain(a)
    }

    /// The common pops of the live, unpadded top block `a`: `a` alone when no block below the top is
    /// free (`nfree == 0`: nothing below `a` is read, and the new top `a - 8` is known without
    /// waiting for any load), or `a` and the only free block when that lies directly beneath it
    /// without padding. Nothing may need decommitting. `last` becomes unknown (the sentinel).
    /// Returns false, having changed nothing, otherwise ([`Heap::pop`] then does the general pop, out
    /// of line).
    #[inline(always)]
    fn pop_plain(&mut self, a: usize) -> bool {
        let t = a - 8;
        if self.nfree != 0 {
            return self.pop_fast_one_more(t);
        }
        if t < self.shrink_at {
            return false;
        }
        if self.top > self.peak {
            self.peak = self.top;
        }
        self.top = t;
        self.last = self.base as *const u8;
        true
    }

    /// The second case of [`Heap::pop_plain`]: the block ending at `t` must be the only free block
    /// (so the one below it is live or the sentinel) and unpadded; then both go.
    ///
    /// The block left on top is named as `last` when its footer and size word agree (else `last`
    /// stays unknown): in the seed's `process()` pattern, the caller frees its own top block next,
    /// and a `last` that always names it keeps that free on one well-predicted path.
    #[inline(always)]
    fn pop_fast_one_more(&mut self, t: usize) -> bool {
        // SAFETY: t is the start of a live block, so the footer below it is committed heap memory;
        // each footer's value is range-checked before the size word it leads to is read.
        unsafe {
            let fcap = rd(t - FOOT);
            if fcap > t - FOOT - self.base || self.nfree != 1 {
                return false;
            }
            let q = t - FOOT - fcap;
            let t = q - 8;
            if rd(t) != HEAD | FREE | fcap || t < self.shrink_at {
                return false;
            }
            if self.top > self.peak {
                self.peak = self.top;
            }
            self.nfree = 0;
            self.top = t;
            self.last = self.base as *const u8;
            // t >= floor, so its footer (the sentinel's at the floor) is heap memory.
            let fcap = rd(t - FOOT);
            if fcap <= t - FOOT - self.base {
                let below = t - FOOT - fcap;
                if rd(below - 8) == HEAD | fcap {
                    self.last = below as *const u8;
                }
            }
        }
        true
    }

    /// The general pop: the last block `a`, then every free block beneath it; decommits when the top
    /// fell far enough. `Err(Corrupted)` when a footer or size word below was overwritten, and
    /// `Err(NotOurs)` for the sentinel's address on an empty heap.
    #[inline(always)]
    fn pop(&mut self, a: usize) -> Result<(), Invalid> {
        // SAFETY: a is the last block, so its size word can be read; the blocks below are found
        // through footers, each range-checked to lie above the sentinel before it is followed.
        unsafe {
            let w0 = rd(a - 8);
            if w0 & SENTINEL != 0 {
                return Err(Invalid::NotOurs);
            }
            let mut t = Self::start_of(a, w0);
            let mut popped = 0;
            let q = loop {
                let fcap = rd(t - FOOT);
                if fcap > t - FOOT - self.base {
                    return Err(Invalid::Corrupted);
                }
                let q = t - FOOT - fcap;
                let w = rd(q - 8);
                if w == HEAD | FREE | fcap {
                    // A free block without padding: pop it too.
                    popped += 1;
                    t = q - 8;
                } else if w == HEAD | fcap {
                    // A live block: the popping stops here.
                    break q;
                } else if q == self.base {
                    if w != HEAD | SENTINEL {
                        return Err(Invalid::Corrupted);
                    }
                    break q;
                } else if w == HEAD | FREE | PADDED | fcap {
                    popped += 1;
                    t = Self::start_of(q, w);
                } else if w == HEAD | PADDED | fcap {
                    break q;
                } else {
                    return Err(Invalid::Corrupted);
                }
            };
            if self.top > self.peak {
                self.peak = self.top;
            }
            self.nfree -= popped;
            self.last = q as *const u8;
            self.top = t;
        }
        if self.top < self.shrink_at {
            self.decommit_slow();
        }
        Ok(())
    }

    /// Gives the pages above `top + BIMP_DECOMMIT_KEEP` back to the OS.
    #[cold]
    #[inline(never)]
    fn decommit_slow(&mut self) {
        let Some(keep) = os::align_up(self.top + BIMP_DECOMMIT_KEEP, os::page_size()) else { return };
        if keep < self.commit_end {
            let Some(start) = NonNull::new(keep as *mut u8) else { return };
            // SAFETY: [keep, commit_end) is page-aligned, inside our reservation, above the top (so
            // no block lives there) and nothing touches it until it is committed again.
            if unsafe { os::decommit(start, self.commit_end - keep) }.is_ok() {
                self.set_commit_end(keep);
            }
        }
    }

    /// Resizes the live block `p` to `n` bytes. The top block grows or shrinks in place; another block
    /// shrinks in place or moves (allocate, copy, free). `Ok(None)`: out of memory, `p` untouched.
    #[inline]
    pub fn realloc(&mut self, p: NonNull<u8>, n: usize) -> Result<Option<NonNull<u8>>, Invalid> {
        let a = p.as_ptr() as usize;
        let word = self.validate(a)?;
        let size = cap_of(word);
        if n > BIMP_MAX_REQUEST {
            return Ok(None);
        }
        let cap = capacity_for(n);
        if a + size + FOOT == self.top {
            // The top block (whether or not `last` knows it).
            let end = a + cap + FOOT;
            if end > self.commit_end && self.grow(end).is_none() {
                return Ok(None);
            }
            if end < self.top && self.top > self.peak {
                self.peak = self.top;
            }
            // SAFETY: a is the validated last block and [a - 8, end) is committed.
            unsafe {
                wr(a - 8, (word & !CAP_MASK) | (word & PADDED) | cap);
                wr(a + cap, cap);
            }
            self.top = end;
            self.last = a as *const u8;
            if self.top < self.shrink_at {
                self.decommit_slow();
            }
            return Ok(Some(p));
        }
        if cap <= size {
            return Ok(Some(p));
        }
        let Some(q) = self.alloc(n) else { return Ok(None) };
        // SAFETY: both blocks are live and distinct (q lies above the top p is below); p's `size`
        // bytes are its payload, and q holds at least `cap > size` bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(p.as_ptr(), q.as_ptr(), size);
            wr(a - 8, word | FREE);
        }
        self.nfree += 1;
        Ok(Some(q))
    }

    /// [`Heap::realloc`] for C, for `p` not NULL and `n` not 0: the new pointer, or NULL with `errno`
    /// ENOMEM (the block untouched); an invalid `p` aborts with a message naming `func`. Fast path:
    /// the top block growing within the committed memory, a few instructions and two stores.
    #[inline(always)]
    pub fn realloc_c(&mut self, p: *mut u8, n: usize, func: &'static str) -> *mut u8 {
        let a = p as usize;
        if a == self.last as usize && n <= FAST_MAX {
            let cap = capacity_for(n);
            let end = a + cap + FOOT;
            if end <= self.commit_end && end >= self.top {
                // SAFETY: a is the last block (live by the invariants), or the sentinel when `last`
                // is unknown, whose size word says so; the block's new extent [a, end) is
                // committed and lies at or above the old top's footer. A padded block keeps its
                // flag on the slow path.
                unsafe {
                    if rd(a - 8) & (PADDED | SENTINEL) == 0 {
                        wr(a - 8, HEAD | cap);
                        wr(a + cap, cap);
                        self.top = end;
                        return p;
                    }
                }
            }
        }
        self.realloc_slow_c(p, n, func)
    }

    #[inline(never)]
    fn realloc_slow_c(&mut self, p: *mut u8, n: usize, func: &'static str) -> *mut u8 {
        let Some(nn) = NonNull::new(p) else { return self.alloc_c(n) };
        match self.realloc(nn, n) {
            Ok(Some(q)) => q.as_ptr(),
            Ok(None) => {
                os::set_errno(libc::ENOMEM);
                core::ptr::null_mut()
            }
            Err(e) => crate::diag::invalid_pointer(func, p, e.why()),
        }
    }

    /// Usable size of the live block at `p`.
    pub fn usable_size(&self, p: NonNull<u8>) -> Result<usize, Invalid> {
        self.validate(p.as_ptr() as usize).map(cap_of)
    }

    /// Walks the whole heap, checks every invariant listed in the module documentation, and returns
    /// the counters. O(blocks).
    pub fn check(&self) -> Result<Stats, &'static str> {
        let mut st = Stats::default();
        if self.base == 0 {
            return if self.top == 0 && self.last == no_last() && self.commit_end == 0 {
                Ok(st)
            } else {
                Err("uninitialised heap with a top")
            };
        }
        let page = os::page_size();
        if !(self.res_start < self.base
            && self.floor() <= self.top
            && self.top <= self.commit_end
            && self.commit_end <= self.res_end)
        {
            return Err("res_start < base < top <= commit_end <= res_end does not hold");
        }
        if self.shrink_at != self.commit_end.saturating_sub(BIMP_DECOMMIT_TRIGGER) {
            return Err("shrink_at does not follow commit_end");
        }
        if self.commit_end % page != 0 || self.res_start % page != 0 || self.res_end % page != 0 {
            return Err("commit or reservation bounds not page-aligned");
        }
        if (self.top + 8) % ALIGN != 0 || self.base % ALIGN != 0 {
            return Err("top or base not aligned");
        }
        // SAFETY: every address read below lies in [base - 8, top), range-checked before it is read.
        unsafe {
            if rd(self.base - 8) != HEAD | SENTINEL || rd(self.base) != 0 {
                return Err("sentinel damaged");
            }
            let mut t = self.top;
            let mut first = true;
            while t != self.floor() {
                if t < self.floor() + ALIGN {
                    return Err("walk went below the sentinel");
                }
                let fcap = rd(t - FOOT);
                if fcap > t - FOOT - self.base - 8 || fcap % ALIGN != 0 {
                    return Err("footer out of range");
                }
                let q = t - FOOT - fcap;
                let w = rd(q - 8);
                if w & !CAP_MASK != HEAD || w & (ALIGN - 1) & !(FREE | PADDED) != 0 {
                    return Err("size word without the bimp tag");
                }
                if cap_of(w) != fcap {
                    return Err("footer does not repeat the capacity");
                }
                if first {
                    if self.last as usize != q && self.last as usize != self.base {
                        return Err("last is neither the top block nor unknown (the sentinel)");
                    }
                    if w & FREE != 0 {
                        return Err("the top block is free: it should have been popped");
                    }
                    first = false;
                }
                if w & PADDED != 0 {
                    let pad = rd(q - 16);
                    if pad < ALIGN || pad % ALIGN != 0 || pad > q - 8 - self.floor() {
                        return Err("bad padding length");
                    }
                }
                if w & FREE != 0 {
                    st.free_blocks += 1;
                    st.free_bytes += fcap;
                } else {
                    st.live_blocks += 1;
                    st.live_bytes += fcap;
                }
                t = Self::start_of(q, w);
            }
            if first && self.last as usize != self.base {
                return Err("empty heap whose last block is not the sentinel");
            }
            if st.free_blocks != self.nfree {
                return Err("nfree does not count the free blocks");
            }
        }
        st.top_bytes = self.top - self.floor();
        st.peak_top_bytes = core::cmp::max(self.peak, self.top) - self.floor();
        st.committed_bytes = self.commit_end - self.res_start;
        st.reserved_bytes = self.res_end - self.res_start;
        Ok(st)
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        if self.res_start != 0 {
            if let Some(p) = NonNull::new(self.res_start as *mut u8) {
                // SAFETY: the heap owned the reservation and nothing can use its blocks after the
                // heap is gone (the process-wide heap is a static and never dropped).
                let _ = unsafe { os::release(p, self.res_end - self.res_start) };
            }
        }
    }
}

/// Size of the first reservation: `want` if set, else [`BIMP_RESERVE`], at most a quarter of a finite
/// `RLIMIT_AS` (so that a program under `ulimit -v` keeps address space for everything else).
fn reservation_target(want: usize, page: usize) -> usize {
    let mut size = if want != 0 { want } else { BIMP_RESERVE };
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass.
    if want == 0 && unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut rl) } == 0 && rl.rlim_cur != libc::RLIM_INFINITY {
        size = core::cmp::min(size, (rl.rlim_cur / 4) as usize);
    }
    core::cmp::max(size & !(page - 1), BIMP_RESERVE_MIN)
}

// ---------------------------------------------------------------------------------------------------
// The process-wide heap
// ---------------------------------------------------------------------------------------------------

struct GlobalHeap(UnsafeCell<Heap>);

// SAFETY: the heap is only reached through `with`, which holds LOCK unless the process has a single
// thread (or the build promised it is only used from one).
unsafe impl Sync for GlobalHeap {}

static HEAP: GlobalHeap = GlobalHeap(UnsafeCell::new(Heap::new_global(
    (&NO_BLOCK as *const [usize; 2]).cast::<usize>().wrapping_add(1).cast::<u8>(),
)));

#[cfg(not(feature = "bimp-single-threaded"))]
static LOCK: crate::sync::SpinLock<()> = crate::sync::SpinLock::new(());

/// True when the process-wide heap may be used without the lock.
#[inline(always)]
fn unlocked_ok() -> bool {
    cfg!(feature = "bimp-single-threaded") || crate::sync::single_threaded()
}

/// The process-wide heap.
///
/// # Safety
/// The caller holds LOCK, or [`unlocked_ok`] said no other thread exists (or the build is
/// single-threaded by contract), and drops the reference before releasing the lock or returning to C.
#[inline(always)]
unsafe fn heap() -> &'static mut Heap {
    // SAFETY: the caller guarantees that no other reference to the heap exists meanwhile.
    unsafe { &mut *HEAP.0.get() }
}

/// Defines a process-wide entry point as a pair: an `#[inline(always)]` unlocked path taken while the
/// process has one thread, and an out-of-line locked path (a separate function, so that the unlocked
/// path needs no saved registers or stack frame).
macro_rules! global_op {
    ($(#[$doc:meta])* $name:ident, $locked:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty, |$h:ident| $body:expr) => {
        $(#[$doc])*
        #[inline(always)]
        pub(crate) fn $name($($arg: $ty),*) -> $ret {
            if unlocked_ok() {
                // SAFETY: no other thread exists (see `unlocked_ok`); nothing in the body re-enters.
                let $h = unsafe { heap() };
                $body
            } else {
                $locked($($arg),*)
            }
        }

        #[cfg(not(feature = "bimp-single-threaded"))]
        #[inline(never)]
        fn $locked($($arg: $ty),*) -> $ret {
            let _guard = LOCK.lock();
            // SAFETY: LOCK is held for as long as the reference lives.
            let $h = unsafe { heap() };
            $body
        }

        #[cfg(feature = "bimp-single-threaded")]
        #[inline(always)]
        fn $locked($(_: $ty),*) -> $ret {
            unreachable!("unlocked_ok() is always true in the single-threaded build")
        }
    };
}

global_op!(
    /// Allocates `size` bytes from the process-wide heap (aligned to [`ALIGN`]); `None`: out of memory.
    malloc, malloc_locked, (size: usize) -> Option<NonNull<u8>>, |h| h.alloc(size)
);
global_op!(
    /// Allocates `size` bytes aligned to `align` (a power of two); `None`: out of memory.
    malloc_aligned, malloc_aligned_locked, (size: usize, align: usize) -> Option<NonNull<u8>>,
    |h| h.alloc_aligned(size, align)
);
global_op!(
    /// Allocates `size` bytes from the process-wide heap for C: the pointer, or NULL with `errno`
    /// ENOMEM.
    malloc_c, malloc_c_locked, (size: usize) -> *mut u8, |h| h.alloc_c(size)
);
global_op!(
    /// Frees a block of the process-wide heap for C (NULL is ignored); an invalid pointer aborts with
    /// a one-line message naming `func`.
    free_c, free_c_locked, (p: *mut u8, func: &'static str) -> (), |h| h.free_c(p, func)
);
global_op!(
    /// Resizes a block of the process-wide heap for C (`p` not NULL, `n` not 0): the new pointer, or
    /// NULL with `errno` ENOMEM; an invalid `p` aborts with a message naming `func`.
    realloc_c, realloc_c_locked, (p: *mut u8, n: usize, func: &'static str) -> *mut u8, |h| h.realloc_c(p, n, func)
);
global_op!(
    /// Usable size of a live block of the process-wide heap.
    usable_size, usable_size_locked, (p: NonNull<u8>) -> Result<usize, Invalid>, |h| h.usable_size(p)
);
global_op!(
    /// Walks the process-wide heap and checks it.
    check_global, check_locked, () -> Result<Stats, &'static str>, |h| h.check()
);

/// Counters of the process-wide heap (walks it: O(blocks)); aborts if the heap is corrupted.
pub fn stats() -> Stats {
    match check_global() {
        Ok(s) => s,
        Err(why) => crate::diag::fatal(format_args!("bimp_stats_get(): heap corrupted: {}", why)),
    }
}

/// Whether the process-wide heap takes a lock (false in the `bimp-single-threaded` build).
pub const THREAD_SAFE: bool = !cfg!(feature = "bimp-single-threaded");

#[cfg(not(feature = "bimp-single-threaded"))]
mod fork {
    //! The lock is held across `fork()` so that the child inherits a consistent heap and an unlocked
    //! lock even when another thread was inside bimp.
    use super::LOCK;
    use crate::sync::SpinGuard;
    use core::cell::UnsafeCell;

    struct Held(UnsafeCell<Option<SpinGuard<'static, ()>>>);
    // SAFETY: only the forking thread touches it, between its prepare and parent/child handlers.
    unsafe impl Sync for Held {}
    static HELD: Held = Held(UnsafeCell::new(None));

    extern "C" fn prepare() {
        let g = LOCK.lock();
        // SAFETY: see `Held`.
        unsafe { *HELD.0.get() = Some(g) };
    }

    extern "C" fn parent() {
        // SAFETY: see `Held`. Dropping the guard unlocks and wakes waiters.
        drop(unsafe { (*HELD.0.get()).take() });
    }

    extern "C" fn child() {
        // SAFETY: see `Held`.
        if let Some(g) = unsafe { (*HELD.0.get()).take() } {
            core::mem::forget(g);
            // SAFETY: we are the only thread of the child; the heap is consistent because the
            // parent's thread held the lock across fork.
            unsafe { LOCK.force_unlock_after_fork() };
        }
    }

    /// Registers the handlers (glibc stores them without allocating).
    pub fn register() {
        // SAFETY: the handlers are valid for the life of the process.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    }
}

fn register_fork_handlers() {
    #[cfg(not(feature = "bimp-single-threaded"))]
    fork::register();
}

#[cfg(test)]
mod tests;
