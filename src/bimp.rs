//! bimp: the improved bump allocator: one process-wide stack of blocks whose `free` pops the top
//! block and every already-freed block directly beneath it.
//!
//! The heap is one reservation of address space, committed in chunks as the top grows:
//!
//! ```text
//!  res_start                                                                   res_end
//!  | sentinel | hdr|block A | hdr|block B (free) |pad| hdr|block C |  committed  | reserved (PROT_NONE)
//!             ^base                                             ^last        ^top         ^commit_end
//! ```
//!
//! Every block is `[header | payload]`. The header is [`BIMP_ALIGN`] bytes so that the payload that
//! follows stays aligned; its last 16 bytes (just below the user pointer `p`) hold two words:
//! * `p - 16`, the size word: the payload capacity (a multiple of `BIMP_ALIGN`, below 2^40), bit 0 set
//!   when the block is free, and the 24-bit [`TAG`] in bits 40..64, which tells a block start from an
//!   arbitrary address inside the heap;
//! * `p - 8`, the link: `p - prev`, the distance down to the user pointer of the block below.
//!
//! A sentinel block of capacity 0 that is never free sits at `base` (link 0), so walking down always
//! ends there.
//!
//! Invariants (checked by [`Heap::check`]):
//! * `res_start < base <= top <= commit_end <= res_end`; `commit_end` is page-aligned; `top` is
//!   `BIMP_ALIGN`-aligned.
//! * `top == last + capacity(last)`: the top is the end of the last block.
//! * The last block is live (or the sentinel): freeing the top block pops it and every free block
//!   beneath it, so a free block always has a live block somewhere above it.
//! * Walking the links from `last` reaches `base`; every block starts at or after the end of the block
//!   below it plus a header (the gap is alignment padding, reclaimed when the block above is popped).
//!
//! Costs: `alloc` is a bounds check and two header stores; freeing the top block is a pop (one step per
//! freed block beneath it, no validation needed: the pointer *is* the last block); freeing another block
//! validates the pointer and sets one bit. Statistics walk the blocks (O(blocks)). About 20 instructions
//! each for `bimp_malloc` and a top `bimp_free` in a single-threaded process (see README, "bimp").
//!
//! Thread safety: the process-wide heap ([`malloc`], [`free`], ...) is guarded by one futex lock that is
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
/// Header size: one alignment unit, so that payloads stay aligned.
const HDR: usize = ALIGN;
/// Free flag in the size word.
const FREE: usize = 1;
/// Position of the tag in the size word; the capacity lives below it.
const TAG_SHIFT: u32 = 40;
/// Marks a block header ("B1 3D 5A"): a pointer whose header lacks it was not returned by bimp.
const TAG: usize = 0xB1_3D_5A;
/// The tag as it sits in a size word.
const HEAD: usize = TAG << TAG_SHIFT;
/// The capacity bits of a size word (bit 0, the free flag, is 0 in a live block's word).
const CAP_MASK: usize = (1 << TAG_SHIFT) - 1;
/// `last` of a heap that has not reserved anything yet: odd, so never a block's address.
const NO_LAST: usize = usize::MAX;

const _: () = assert!(BIMP_MAX_REQUEST <= CAP_MASK + 1 && BIMP_RESERVE <= CAP_MASK);
const _: () = assert!(HDR >= 16 && HDR % 16 == 0);

/// Why a pointer passed to a bimp entry point cannot be accepted; the C layer aborts with its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Outside the bimp heap.
    NotOurs,
    /// Inside the heap but above the top: freed and popped already, or never allocated.
    AboveTop,
    /// Inside the heap but not the start of a block (misaligned or no block header).
    NotABlock,
    /// The block is already free.
    DoubleFree,
}

impl Invalid {
    /// The reason, as the one-line diagnostic prints it.
    pub fn why(self) -> &'static str {
        match self {
            Invalid::NotOurs => "not allocated by bimp",
            Invalid::AboveTop => "above the bimp top: already freed, or never allocated",
            Invalid::NotABlock => "not the start of a bimp block",
            Invalid::DoubleFree => "double free: the bimp block is already free",
        }
    }
}

/// Counters of a heap, computed by walking it ([`Heap::check`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes from the base to the top: headers, padding, live and free blocks.
    pub top_bytes: usize,
    /// Payload bytes of live blocks (their usable sizes).
    pub live_bytes: usize,
    /// Number of live blocks.
    pub live_blocks: usize,
    /// Payload bytes of freed blocks still below the top.
    pub free_bytes: usize,
    /// Number of freed blocks still below the top.
    pub free_blocks: usize,
    /// Bytes of the reservation currently committed (readable and writable).
    pub committed_bytes: usize,
    /// Highest value `top_bytes` has had.
    pub peak_top_bytes: usize,
    /// Bytes of address space reserved.
    pub reserved_bytes: usize,
}

/// Capacity recorded in a size word.
#[inline(always)]
const fn cap_of(word: usize) -> usize {
    word & CAP_MASK & !FREE
}

/// Address of the size word of the block whose user pointer is `p`.
#[inline(always)]
fn size_word(p: usize) -> *mut usize {
    (p - 16) as *mut usize
}

/// Address of the link word of the block whose user pointer is `p`.
#[inline(always)]
fn link_word(p: usize) -> *mut usize {
    (p - 8) as *mut usize
}

/// Capacity of a block for a request of `n` bytes (`n <= BIMP_MAX_REQUEST`): at least one unit.
#[inline(always)]
const fn capacity_for(n: usize) -> usize {
    let n = if n == 0 { 1 } else { n };
    (n + ALIGN - 1) & !(ALIGN - 1)
}

/// One bimp heap: a stack of blocks over one reservation. All addresses are plain integers; 0 in
/// `base` means "not initialised yet" (every pointer check fails and every allocation takes the slow
/// path, which initialises).
pub struct Heap {
    /// End of the last block; the next block's header starts here.
    top: usize,
    /// End of the committed part of the reservation.
    commit_end: usize,
    /// User pointer of the last block (the sentinel when the heap is empty; [`NO_LAST`] before
    /// initialisation).
    last: usize,
    /// User pointer of the sentinel block.
    base: usize,
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
    pub const fn new(reserve: usize) -> Heap {
        Heap {
            top: 0,
            commit_end: 0,
            last: NO_LAST,
            base: 0,
            peak: 0,
            res_start: 0,
            res_end: 0,
            want_reserve: reserve,
            global: false,
        }
    }

    const fn new_global() -> Heap {
        let mut h = Heap::new(0);
        h.global = true;
        h
    }

    /// Writes the header of a block at `a` with capacity `cap` on top of the stack. `a + cap` must be
    /// within the committed range and `a - HDR` at or above the top.
    #[inline(always)]
    fn place(&mut self, a: usize, cap: usize) -> NonNull<u8> {
        // SAFETY: the caller checked that [a - HDR, a + cap) lies in the committed part of our
        // reservation above the top, so the two header words belong to no live block.
        unsafe {
            *size_word(a) = cap | HEAD;
            *link_word(a) = a - self.last;
        }
        self.last = a;
        self.top = a + cap;
        // SAFETY: a > base > 0.
        unsafe { NonNull::new_unchecked(a as *mut u8) }
    }

    /// Allocates `size` bytes aligned to `BIMP_ALIGN` on top of the stack; `None` when the
    /// reservation is exhausted or the OS refuses memory. Fast path: a bounds check and two stores.
    #[inline(always)]
    pub fn alloc(&mut self, size: usize) -> Option<NonNull<u8>> {
        if size <= BIMP_MAX_REQUEST {
            let cap = capacity_for(size);
            let a = self.top + HDR;
            if a + cap <= self.commit_end {
                return Some(self.place(a, cap));
            }
        }
        self.alloc_slow(size, ALIGN)
    }

    /// Allocates `size` bytes aligned to `align` (a power of two); padding below the block is
    /// reclaimed with it.
    #[inline]
    pub fn alloc_aligned(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        debug_assert!(align.is_power_of_two());
        if align <= ALIGN {
            return self.alloc(size);
        }
        if size <= BIMP_MAX_REQUEST && align <= BIMP_MAX_REQUEST {
            let cap = capacity_for(size);
            let a = (self.top + HDR + align - 1) & !(align - 1);
            if a + cap <= self.commit_end {
                return Some(self.place(a, cap));
            }
        }
        self.alloc_slow(size, align)
    }

    /// The slow half of [`Heap::alloc`] / [`Heap::alloc_aligned`]: initialises the heap, commits
    /// enough memory, then calls the fast path again.
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
        let a = (self.top + HDR + align - 1) & !(align - 1);
        self.grow(a + cap)?;
        if align == ALIGN {
            self.alloc(size)
        } else {
            self.alloc_aligned(size, align)
        }
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
        self.commit_end = new_end;
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
        let first = core::cmp::min(BIMP_COMMIT_CHUNK, size);
        // SAFETY: the first `first` bytes (page multiple) of the reservation just made.
        if let Err(e) = unsafe { os::commit(start, first) } {
            // SAFETY: the reservation was never handed out.
            let _ = unsafe { os::release(start, size) };
            return Err(e);
        }
        let s = start.as_ptr() as usize;
        self.res_start = s;
        self.res_end = s + size;
        self.commit_end = s + first;
        self.base = s + HDR;
        // SAFETY: the sentinel's header lies in the first committed chunk (HDR <= first).
        unsafe {
            *size_word(self.base) = HEAD;
            *link_word(self.base) = 0;
        }
        self.last = self.base;
        self.top = self.base;
        self.peak = self.base;
        Ok(())
    }

    /// Checks that `a` is the user pointer of a live block; returns its size word (its capacity).
    #[inline(always)]
    fn validate(&self, a: usize) -> Result<usize, Invalid> {
        // p in (base, top] and aligned: its header lies inside the heap, so it can be read.
        if a.wrapping_sub(self.base + 1) < self.top.wrapping_sub(self.base) && a % ALIGN == 0 {
            // SAFETY: base < a <= top and a is aligned, so [a - 16, a) lies in committed memory at or
            // above the sentinel's header.
            let word = unsafe { *size_word(a) };
            if word & (!CAP_MASK | FREE) == HEAD {
                return Ok(cap_of(word));
            }
        }
        Err(self.classify(a))
    }

    /// Says why `a` failed [`Heap::validate`].
    #[cold]
    #[inline(never)]
    fn classify(&self, a: usize) -> Invalid {
        if self.base == 0 || a <= self.base || a >= self.res_end {
            return Invalid::NotOurs;
        }
        if a > self.top {
            return Invalid::AboveTop;
        }
        if a % ALIGN != 0 {
            return Invalid::NotABlock;
        }
        // SAFETY: as in validate: base < a <= top, aligned.
        let word = unsafe { *size_word(a) };
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
    /// The top block needs no validation: `p == last` means it is the live block on top. (On an empty
    /// heap `last` is the sentinel, and "freeing" the sentinel's address pops nothing: a no-op.)
    #[inline(always)]
    pub fn free(&mut self, p: *mut u8) -> Result<(), Invalid> {
        let a = p as usize;
        if a == self.last {
            self.pop(a);
            Ok(())
        } else {
            self.free_below(a)
        }
    }

    /// Frees a block that is not the top one: validate it and set its free bit.
    #[inline]
    fn free_below(&mut self, a: usize) -> Result<(), Invalid> {
        match self.validate(a) {
            Ok(_) => {
                // SAFETY: a is a validated live block.
                unsafe { *size_word(a) |= FREE };
                Ok(())
            }
            Err(_) if a == 0 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Pops the last block `a`, then every free block beneath it.
    #[inline(always)]
    fn pop(&mut self, a: usize) {
        if self.top > self.peak {
            self.peak = self.top;
        }
        let mut q = a;
        let word = loop {
            // SAFETY: q is a block of this heap (the last block, or reached through the links, which
            // stop at the sentinel, a block that is never free); its header is in committed memory.
            unsafe {
                q -= *link_word(q);
                let w = *size_word(q);
                if w & FREE == 0 {
                    break w;
                }
            }
        };
        self.last = q;
        self.top = q + (word & CAP_MASK);
        if self.commit_end - self.top > BIMP_DECOMMIT_TRIGGER {
            self.decommit_slow();
        }
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
                self.commit_end = keep;
            }
        }
    }

    /// Resizes the live block `p` to `n` bytes. The top block grows or shrinks in place; another block
    /// shrinks in place or moves (allocate, copy, free). `Ok(None)`: out of memory, `p` untouched.
    #[inline]
    pub fn realloc(&mut self, p: NonNull<u8>, n: usize) -> Result<Option<NonNull<u8>>, Invalid> {
        let a = p.as_ptr() as usize;
        let size = self.validate(a)?;
        if n > BIMP_MAX_REQUEST {
            return Ok(None);
        }
        let cap = capacity_for(n);
        if a == self.last {
            let end = a + cap;
            if end > self.commit_end && self.grow(end).is_none() {
                return Ok(None);
            }
            if end < self.top && self.top > self.peak {
                self.peak = self.top;
            }
            // SAFETY: a is the validated last block and [a, end) is committed.
            unsafe { *size_word(a) = cap | HEAD };
            self.top = end;
            if self.commit_end - self.top > BIMP_DECOMMIT_TRIGGER {
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
            *size_word(a) |= FREE;
        }
        Ok(Some(q))
    }

    /// Usable size of the live block at `p`.
    pub fn usable_size(&self, p: NonNull<u8>) -> Result<usize, Invalid> {
        self.validate(p.as_ptr() as usize)
    }

    /// Walks the whole heap, checks every invariant listed in the module documentation, and returns
    /// the counters. O(blocks).
    pub fn check(&self) -> Result<Stats, &'static str> {
        let mut st = Stats::default();
        if self.base == 0 {
            return if self.top == 0 && self.last == NO_LAST && self.commit_end == 0 {
                Ok(st)
            } else {
                Err("uninitialised heap with a top")
            };
        }
        let page = os::page_size();
        if !(self.res_start < self.base
            && self.base <= self.top
            && self.top <= self.commit_end
            && self.commit_end <= self.res_end)
        {
            return Err("res_start < base <= top <= commit_end <= res_end does not hold");
        }
        if self.commit_end % page != 0 || self.res_start % page != 0 || self.res_end % page != 0 {
            return Err("commit or reservation bounds not page-aligned");
        }
        if self.top % ALIGN != 0 || self.base % ALIGN != 0 {
            return Err("top or base not aligned");
        }
        // SAFETY: every address read below is a header of a block reached from `last` through links
        // that are range-checked before they are followed; all of them lie in [base - 16, top).
        unsafe {
            if *size_word(self.base) != HEAD || *link_word(self.base) != 0 {
                return Err("sentinel header damaged");
            }
            if self.last < self.base || self.last > self.top || self.last % ALIGN != 0 {
                return Err("last block outside the heap");
            }
            let lsize = *size_word(self.last);
            if self.last + cap_of(lsize) != self.top {
                return Err("top is not the end of the last block");
            }
            if lsize & FREE != 0 {
                return Err("the last block is free: it should have been popped");
            }
            let mut p = self.last;
            while p != self.base {
                let off = *link_word(p);
                let word = *size_word(p);
                if word & !CAP_MASK != HEAD {
                    return Err("block header without the bimp tag");
                }
                let size = cap_of(word);
                if size % ALIGN != 0 || size == 0 {
                    return Err("block capacity not a positive multiple of BIMP_ALIGN");
                }
                if off == 0 || off > p - self.base || off % ALIGN != 0 {
                    return Err("link leaves the heap");
                }
                let prev = p - off;
                let prev_end = prev + cap_of(*size_word(prev));
                if prev_end + HDR > p {
                    return Err("block overlaps the block below it");
                }
                if word & FREE != 0 {
                    st.free_blocks += 1;
                    st.free_bytes += size;
                } else {
                    st.live_blocks += 1;
                    st.live_bytes += size;
                }
                p = prev;
            }
        }
        st.top_bytes = self.top - self.base;
        st.peak_top_bytes = core::cmp::max(self.peak, self.top) - self.base;
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

static HEAP: GlobalHeap = GlobalHeap(UnsafeCell::new(Heap::new_global()));

#[cfg(not(feature = "bimp-single-threaded"))]
static LOCK: crate::sync::Mutex<()> = crate::sync::Mutex::new(());

#[cfg(not(feature = "bimp-single-threaded"))]
extern "C" {
    /// glibc (2.32+): non-zero while the process has only ever had one thread (glibc 2.36 never sets
    /// it back after threads exit); cleared by `pthread_create` before the second thread exists.
    static __libc_single_threaded: core::ffi::c_char;
}

/// True when the process-wide heap may be used without the lock.
#[inline(always)]
fn unlocked_ok() -> bool {
    #[cfg(feature = "bimp-single-threaded")]
    {
        true
    }
    #[cfg(not(feature = "bimp-single-threaded"))]
    {
        // SAFETY: glibc defines the byte for the life of the process; we read it as an atomic byte.
        // Relaxed: when it reads 1 no other thread exists (so there is nothing to order with); once a
        // second thread exists it reads 0 in every thread and LOCK orders all heap accesses.
        let flag = unsafe {
            (*(core::ptr::addr_of!(__libc_single_threaded) as *const core::sync::atomic::AtomicU8))
                .load(core::sync::atomic::Ordering::Relaxed)
        };
        flag != 0
    }
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
        pub fn $name($($arg: $ty),*) -> $ret {
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
    /// Frees a block of the process-wide heap (NULL is ignored).
    free, free_locked, (p: *mut u8) -> Result<(), Invalid>, |h| h.free(p)
);
global_op!(
    /// Resizes a block of the process-wide heap; `Ok(None)`: out of memory, the block is untouched.
    realloc, realloc_locked, (p: NonNull<u8>, n: usize) -> Result<Option<NonNull<u8>>, Invalid>,
    |h| h.realloc(p, n)
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
    use crate::sync::MutexGuard;
    use core::cell::UnsafeCell;

    struct Held(UnsafeCell<Option<MutexGuard<'static, ()>>>);
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
