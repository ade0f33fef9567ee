//! The process-wide page pool: one 32 GiB reservation carved into region pages, shared by every region
//! and protected by one lock.
//!
//! Layout of the reservation (reserved on first use, so that a program that never creates a region pays
//! nothing and one under `ulimit -v` still starts):
//!
//! ```text
//!   page 0 ..            META_PAGES         top               committed_top          REGION_PAGES
//!   | page table | cold bitmap | carved pages ...  | committed, not carved | reserved only ... |
//! ```
//!
//! * The *page table* has one `AtomicU32` per page: [`T_FREE`], [`T_META`], [`T_SMALL`], [`T_RUN`] or
//!   `T_TAIL | distance << 3` for the later pages of a run. `region_free` reads it without the lock to
//!   decide whether a pointer's page header may be trusted (a run's later pages hold user data, a free
//!   page holds nothing). Written only under the lock, before the page changes hands.
//! * The *cold bitmap* has a bit per page that is free and whose memory went back to the OS.
//! * The *spare bitmap* has a bit per page that is free and still resident and is not on the warm
//!   stack: the pages of freed runs. A run is taken from spare pages first (no page fault), then from
//!   any free pages (spare or cold), then carved; a run grows in place over the free pages after it.
//! * Free single pages that are still resident sit on the *warm stack* (linked through their headers),
//!   most recently freed first.
//! * Hysteresis: when the resident free pages (warm and spare) exceed `max(REGION_POOL_KEEP_HIGH, in
//!   use)`, the pool gives memory back (`MADV_DONTNEED`, spare ranges first, one call per range) until
//!   `max(REGION_POOL_KEEP_LOW, 7/8 of in use)` remain: resident memory stays within twice the pages in
//!   use plus a constant, and a program that frees and reallocates large blocks pays no system call and
//!   no page fault for them. The narrow band matters: a page given back costs four page faults when it
//!   is used again, far more than the one system call that gives back a whole range.
//!
//! Invariants (checked by [`Pool::check`]): every page in `[META_PAGES, top)` is exactly one of in use
//! (table says so), warm (on the stack, table free), spare (bit set, table free) or cold (bit set, table
//! free); `nwarm`, `nspare` and `ncold` count them; no cold (spare) bit lies below `cold_hint * 64`
//! (`spare_hint * 64`) or at or above `top`.

use super::page::PageHeader;
use crate::config::{
    REGION_PAGE, REGION_PAGES, REGION_PAGE_SHIFT, REGION_POOL_COMMIT_STEP, REGION_POOL_KEEP_HIGH,
    REGION_POOL_KEEP_LOW, REGION_RESERVE,
};
use crate::os::{self, OsError, OsResult};
use crate::sync::{Mutex, MutexGuard};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Page-table value of a page that no region uses.
pub const T_FREE: u32 = 0;
/// Page-table value of the pool's own pages.
pub const T_META: u32 = 1;
/// Page-table value of a small page in use.
pub const T_SMALL: u32 = 2;
/// Page-table value of the first page of a run.
pub const T_RUN: u32 = 3;
/// Page-table value of a later page of a run, or-ed with its distance to the first page shifted left 3.
pub const T_TAIL: u32 = 4;

const TABLE_BYTES: usize = REGION_PAGES * 4;
const COLD_WORDS: usize = REGION_PAGES / 64;
/// Bitmap numbers for `word`/`set_bit`: free pages given back to the OS, free pages of freed runs kept
/// resident.
const COLD: usize = 0;
const SPARE: usize = 1;
/// Pages at the start of the reservation that hold the page table and the two bitmaps.
pub const META_PAGES: usize = (TABLE_BYTES + 2 * COLD_WORDS * 8).div_ceil(REGION_PAGE);

/// Base address of the reservation, 0 until it is made. Published with Release after the page table is
/// committed; read with Acquire (pairs with that store) by code that then reads the table.
static BASE: AtomicUsize = AtomicUsize::new(0);

/// The reservation's base address, or 0 when no region was ever created.
#[inline(always)]
pub fn base() -> usize {
    // Acquire pairs with the Release store in `Pool::ensure_init`: the table is committed before.
    BASE.load(Ordering::Acquire)
}

/// Page-table entry of page `idx` (`idx < REGION_PAGES`) of the reservation at `base`.
///
/// # Safety
/// `base` is the value [`base`] returned (non-zero).
#[inline(always)]
pub unsafe fn table_entry(base: usize, idx: usize) -> u32 {
    debug_assert!(idx < REGION_PAGES);
    // SAFETY: the table is committed before BASE is published and never decommitted; idx is in range.
    let e = unsafe { &*(base as *const AtomicU32).add(idx) };
    // Relaxed: for a page of the calling region the value was written under the pool lock before the
    // page was handed to this thread (the lock orders it); for any other page every value read means
    // "not yours", stale or not.
    e.load(Ordering::Relaxed)
}

/// The shared pool. Lock it with [`lock`].
pub struct Pool {
    base: usize,
    /// Pages below `top` were carved from the reservation.
    top: usize,
    /// Pages below `committed_top` are readable and writable (they stay so for ever).
    committed_top: usize,
    warm: *mut PageHeader,
    nwarm: usize,
    ncold: usize,
    cold_hint: usize,
    nspare: usize,
    spare_hint: usize,
}

// SAFETY: the raw pointers name pages of the reservation, which is process-wide memory; the Mutex gives
// one thread at a time access to them.
unsafe impl Send for Pool {}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    base: 0,
    top: 0,
    committed_top: 0,
    warm: core::ptr::null_mut(),
    nwarm: 0,
    ncold: 0,
    cold_hint: 0,
    nspare: 0,
    spare_hint: 0,
});

/// Takes the pool lock.
pub fn lock() -> MutexGuard<'static, Pool> {
    POOL.lock()
}

static ATFORK: crate::sync::Once = crate::sync::Once::new();

/// Registers the `fork()` handlers of the pool lock, once (from `region_create`, before the lock is
/// taken: glibc runs the prepare handlers under its own lock, so registering while holding ours could
/// deadlock against a concurrent `fork`). The prepare handler takes the lock so that no other thread
/// holds it across the fork; parent and child release it (in the child, the pool is consistent and
/// every region page stays mapped).
pub fn register_atfork() {
    ATFORK.call_once(|| {
        // SAFETY: the handlers are valid for the life of the process; glibc stores the first handlers
        // without allocating.
        unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_release), Some(fork_release)) };
    });
}

extern "C" fn fork_prepare() {
    POOL.lock_forever();
}

extern "C" fn fork_release() {
    // SAFETY: fork_prepare took the lock in this thread (in the child: in the thread that forked, which
    // is the child's only thread); no reference into the pool is held.
    unsafe { POOL.unlock_forgotten() };
}

/// Process-wide figures of the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Free pages kept resident (warm single pages and spare pages of freed runs).
    pub warm: usize,
    /// Free pages whose memory went back to the OS.
    pub cold: usize,
    /// Pages carved from the reservation so far (high-water mark, without the pool's own pages).
    pub carved: usize,
}

impl Pool {
    /// Makes the reservation if it does not exist yet.
    pub fn ensure_init(&mut self) -> OsResult<()> {
        if self.base != 0 {
            return Ok(());
        }
        let p = os::reserve(REGION_RESERVE, REGION_PAGE)?;
        // SAFETY: the range is the start of the reservation just made.
        if let Err(e) = unsafe { os::commit(p, META_PAGES * REGION_PAGE) } {
            // SAFETY: nothing uses the reservation yet.
            let _ = unsafe { os::release(p, REGION_RESERVE) };
            return Err(e);
        }
        let base = p.as_ptr() as usize;
        // SAFETY: the table is committed and fresh (zero = T_FREE); mark the pool's own pages.
        unsafe {
            for i in 0..META_PAGES {
                (*(base as *const AtomicU32).add(i)).store(T_META, Ordering::Relaxed);
            }
        }
        self.base = base;
        self.top = META_PAGES;
        self.committed_top = META_PAGES;
        self.cold_hint = META_PAGES / 64;
        self.spare_hint = META_PAGES / 64;
        // Release pairs with the Acquire in `base()`: the committed table is visible to whoever sees BASE.
        BASE.store(base, Ordering::Release);
        Ok(())
    }

    /// Address of page `idx`.
    #[inline]
    pub fn page_addr(&self, idx: usize) -> usize {
        self.base + (idx << REGION_PAGE_SHIFT)
    }

    fn page_index(&self, addr: usize) -> usize {
        (addr - self.base) >> REGION_PAGE_SHIFT
    }

    fn set_table(&self, idx: usize, v: u32) {
        // SAFETY: base is set (callers hold pages) and idx < REGION_PAGES.
        let e = unsafe { &*(self.base as *const AtomicU32).add(idx) };
        // Relaxed: ordered by the pool lock, see `table_entry`.
        e.store(v, Ordering::Relaxed);
    }

    /// Word `w` of bitmap `map` ([`COLD`] or [`SPARE`]).
    fn word(&self, map: usize, w: usize) -> u64 {
        debug_assert!(w < COLD_WORDS && map <= SPARE);
        // SAFETY: the bitmaps are committed and w is in range; the pool lock orders every access.
        unsafe { *((self.base + TABLE_BYTES) as *const u64).add(map * COLD_WORDS + w) }
    }

    /// Sets or clears the bit of page `idx` in bitmap `map`, keeping its count and hint.
    fn set_bit(&mut self, map: usize, idx: usize, on: bool) {
        debug_assert!(idx / 64 < COLD_WORDS && map <= SPARE);
        // SAFETY: the bitmap is committed, the index is in range, and `&mut self` (the pool lock) makes
        // the access exclusive.
        let w = unsafe { &mut *((self.base + TABLE_BYTES) as *mut u64).add(map * COLD_WORDS + idx / 64) };
        debug_assert!((*w >> (idx % 64) & 1 != 0) != on, "bit of page {idx} in map {map} already {on}");
        if on {
            *w |= 1 << (idx % 64);
        } else {
            *w &= !(1 << (idx % 64));
        }
        let (count, hint) = if map == COLD {
            (&mut self.ncold, &mut self.cold_hint)
        } else {
            (&mut self.nspare, &mut self.spare_hint)
        };
        if on {
            *count += 1;
            if idx / 64 < *hint {
                *hint = idx / 64;
            }
        } else {
            *count -= 1;
        }
    }

    fn set_cold(&mut self, idx: usize, on: bool) {
        self.set_bit(COLD, idx, on);
    }

    fn is_cold(&self, idx: usize) -> bool {
        self.word(COLD, idx / 64) & (1 << (idx % 64)) != 0
    }

    fn is_spare(&self, idx: usize) -> bool {
        self.word(SPARE, idx / 64) & (1 << (idx % 64)) != 0
    }

    /// Word `w` of the free pages a run may take: spare only (`any` false), or spare or cold.
    fn free_word(&self, w: usize, any: bool) -> u64 {
        let s = self.word(SPARE, w);
        if any {
            s | self.word(COLD, w)
        } else {
            s
        }
    }

    /// First page at or after `from` (and below `top`) whose bit in `word(i)` equals `want`, or `top`.
    fn next_in(&self, from: usize, want: bool, word: impl Fn(usize) -> u64) -> usize {
        let end = self.top;
        let mut i = from;
        while i < end {
            let w = word(i / 64);
            let w = if want { w } else { !w };
            let w = w & (u64::MAX << (i % 64));
            if w != 0 {
                let j = (i / 64) * 64 + w.trailing_zeros() as usize;
                return j.min(end);
            }
            i = (i / 64 + 1) * 64;
        }
        end
    }

    /// First page at or after `from` (and below `top`) whose cold bit equals `want`, or `top`.
    fn next_cold(&self, from: usize, want: bool) -> usize {
        self.next_in(from, want, |w| self.word(COLD, w))
    }

    /// Pages in use (by regions), carved and neither warm, spare nor cold.
    fn in_use(&self) -> usize {
        self.top.saturating_sub(META_PAGES) - self.nwarm - self.nspare - self.ncold
    }

    /// Carves `n` pages at `top`, committing as needed. Returns the first page's index.
    fn carve(&mut self, n: usize) -> OsResult<usize> {
        let start = self.top;
        let end = start.checked_add(n).filter(|&e| e <= REGION_PAGES).ok_or(OsError::NO_MEMORY)?;
        if end > self.committed_top {
            let to = end.max(self.committed_top + REGION_POOL_COMMIT_STEP).min(REGION_PAGES);
            let p = NonNull::new(self.page_addr(self.committed_top) as *mut u8).ok_or(OsError::NO_MEMORY)?;
            // SAFETY: [committed_top, to) lies inside the reservation and is not in use.
            unsafe { os::commit(p, (to - self.committed_top) * REGION_PAGE)? };
            self.committed_top = to;
        }
        self.top = end;
        Ok(start)
    }

    /// One page for a small-page user, marked [`T_SMALL`]; the memory may hold old contents.
    pub fn take_page(&mut self) -> OsResult<*mut PageHeader> {
        self.ensure_init()?;
        let idx = if !self.warm.is_null() {
            let h = self.warm;
            // SAFETY: pages on the warm stack are committed and owned by the pool.
            self.warm = unsafe { (*h).list_next };
            self.nwarm -= 1;
            self.page_index(h as usize)
        } else if self.nspare != 0 {
            // The smallest spare range: isolated pages first, large ranges stay whole for runs.
            let i = self.fit(1, false, &|i| i).unwrap_or(self.top);
            debug_assert!(i < self.top);
            self.set_bit(SPARE, i, false);
            i
        } else {
            let i = self.next_cold(self.cold_hint * 64, true);
            if i < self.top {
                self.set_cold(i, false);
                self.cold_hint = i / 64;
                i
            } else {
                self.carve(1)?
            }
        };
        self.set_table(idx, T_SMALL);
        Ok(self.page_addr(idx) as *mut PageHeader)
    }

    /// The first page of `n` free pages whose start `fits` accepts (`fits(i)`: the first acceptable
    /// start at or after `i`): the smallest spare range that holds them (`any` false), or the first range
    /// of spare or cold pages that does (`any` true).
    fn fit(&self, n: usize, any: bool, fits: &impl Fn(usize) -> usize) -> Option<usize> {
        let avail = if any { self.nspare + self.ncold } else { self.nspare };
        if avail < n {
            return None;
        }
        let mut from = if any { self.spare_hint.min(self.cold_hint) } else { self.spare_hint } * 64;
        let mut best: Option<(usize, usize)> = None;
        loop {
            let i = self.next_in(from, true, |w| self.free_word(w, any));
            if i >= self.top {
                break;
            }
            let j = self.next_in(i, false, |w| self.free_word(w, any));
            let s = fits(i);
            if s + n <= j {
                if any || j - i == n {
                    return Some(s);
                }
                if best.is_none_or(|(_, len)| j - i < len) {
                    best = Some((s, j - i));
                }
            }
            from = j;
        }
        best.map(|(s, _)| s)
    }

    /// `n` contiguous pages for a large block, such that the address of page `first + phase` is a
    /// multiple of `align_pages` pages; the first
    /// is marked [`T_RUN`], the others [`T_TAIL`]. Prefers free pages given back earlier (first fit).
    pub fn take_run(&mut self, n: usize, align_pages: usize, phase: usize) -> OsResult<*mut PageHeader> {
        self.ensure_init()?;
        if n == 0 || n > REGION_PAGES {
            return Err(OsError::NO_MEMORY);
        }
        // Alignment is of the address, and the base is only page-aligned: count pages from address 0.
        let base_pages = self.base >> REGION_PAGE_SHIFT;
        let fits = |s: usize| -> usize { s + (align_pages - (base_pages + s + phase) % align_pages) % align_pages };
        // Best fit among spare pages only (resident: no page fault; best fit keeps the large spare
        // ranges whole), then first fit among all free pages.
        let found = self.fit(n, false, &fits).or_else(|| self.fit(n, true, &fits));
        let start = match found {
            Some(s) => {
                self.take_free(s, s + n);
                s
            }
            None => {
                let s = fits(self.top);
                let pad = s - self.top;
                let first = self.carve(pad + n)?;
                for i in first..first + pad {
                    self.set_cold(i, true); // fresh pages: free and not resident
                }
                s
            }
        };
        self.set_table(start, T_RUN);
        for d in 1..n {
            self.set_table(start + d, T_TAIL | ((d as u32) << 3));
        }
        Ok(self.page_addr(start) as *mut PageHeader)
    }

    /// Takes back a small page: it stays resident on the warm stack unless too many are.
    ///
    /// # Safety
    /// `h` came from [`Pool::take_page`] and nobody uses it any more.
    pub unsafe fn give_page(&mut self, h: *mut PageHeader) {
        self.set_table(self.page_index(h as usize), T_FREE);
        // SAFETY: the page is committed and now ours.
        unsafe {
            (*h).region.store(core::ptr::null_mut(), Ordering::Relaxed);
            (*h).list_next = self.warm;
        }
        self.warm = h;
        self.nwarm += 1;
        self.maybe_trim();
    }

    /// Hysteresis: when the resident free pages exceed `max(KEEP_HIGH, in use)`, trims them to
    /// `max(KEEP_LOW, 7/8 of in use)` (see the module documentation).
    fn maybe_trim(&mut self) {
        let used = self.in_use();
        if self.nwarm + self.nspare > REGION_POOL_KEEP_HIGH.max(used) {
            self.trim(REGION_POOL_KEEP_LOW.max(used - used / 8));
        }
    }

    /// Takes the free pages `[s, e)` (spare or cold) out of the bitmaps.
    fn take_free(&mut self, s: usize, e: usize) {
        for i in s..e {
            if self.is_spare(i) {
                self.set_bit(SPARE, i, false);
            } else {
                self.set_cold(i, false);
            }
        }
    }

    /// Gives the memory of resident free pages back to the OS until `keep` remain: spare ranges first
    /// (one system call per range), then warm pages.
    pub fn trim(&mut self, keep: usize) {
        let mut from = self.spare_hint * 64;
        while self.nwarm + self.nspare > keep && self.nspare > 0 {
            let i = self.next_in(from, true, |w| self.word(SPARE, w));
            if i >= self.top {
                break;
            }
            let j = self.next_in(i, false, |w| self.word(SPARE, w));
            let j = j.min(i + (self.nwarm + self.nspare - keep));
            // SAFETY: the pages are free and inside our reservation; their contents are dead.
            let _ = unsafe { os::reset(NonNull::new_unchecked(self.page_addr(i) as *mut u8), (j - i) * REGION_PAGE) };
            for k in i..j {
                self.set_bit(SPARE, k, false);
                self.set_cold(k, true);
            }
            from = j;
        }
        while self.nwarm > 0 && self.nwarm + self.nspare > keep {
            let h = self.warm;
            // SAFETY: pages on the warm stack are committed and owned by the pool.
            self.warm = unsafe { (*h).list_next };
            self.nwarm -= 1;
            let idx = self.page_index(h as usize);
            // SAFETY: the page is free and inside our reservation; its contents are dead.
            let _ = unsafe { os::reset(NonNull::new_unchecked(h.cast()), REGION_PAGE) };
            self.set_cold(idx, true);
        }
    }

    /// Takes back a run of `n` pages: they stay resident as spare pages (see [`Pool::maybe_trim`]).
    ///
    /// # Safety
    /// `h` and `n` came from [`Pool::take_run`] (or [`Pool::grow_run`]) and nobody uses the run any more.
    pub unsafe fn give_run(&mut self, h: *mut PageHeader, n: usize) {
        let idx = self.page_index(h as usize);
        for i in idx..idx + n {
            self.set_table(i, T_FREE);
            self.set_bit(SPARE, i, true);
        }
        self.maybe_trim();
    }

    /// Grows the run of `n` pages at `h` in place to `m > n` pages when the pages after it are free (or
    /// not carved yet). `false`: they are not, nothing changed.
    ///
    /// # Safety
    /// `h` and `n` describe a run of the caller's.
    pub unsafe fn grow_run(&mut self, h: *mut PageHeader, n: usize, m: usize) -> bool {
        let idx = self.page_index(h as usize);
        let (s, e) = (idx + n, idx + m);
        if e > REGION_PAGES {
            return false;
        }
        let free_end = e.min(self.top);
        if s < free_end && self.next_in(s, false, |w| self.free_word(w, true)) < free_end {
            return false;
        }
        if e > self.top && self.carve(e - self.top).is_err() {
            return false;
        }
        if s < free_end {
            self.take_free(s, free_end);
        }
        for d in n..m {
            self.set_table(idx + d, T_TAIL | ((d as u32) << 3));
        }
        true
    }

    /// Shrinks the run of `n` pages at `h` in place to `m` pages (`1 <= m < n`): the pages beyond the
    /// new end become spare.
    ///
    /// # Safety
    /// `h` and `n` describe a run of the caller's; nobody uses its pages from `m` on any more.
    pub unsafe fn shrink_run(&mut self, h: *mut PageHeader, n: usize, m: usize) {
        debug_assert!(1 <= m && m < n);
        let idx = self.page_index(h as usize);
        for i in idx + m..idx + n {
            self.set_table(i, T_FREE);
            self.set_bit(SPARE, i, true);
        }
        self.maybe_trim();
    }

    /// Process-wide figures.
    pub fn stats(&self) -> PoolStats {
        PoolStats { warm: self.nwarm + self.nspare, cold: self.ncold, carved: self.top.saturating_sub(META_PAGES) }
    }

    /// Walks the pool's invariants; panics (tests) on a violation. Returns the number of pages in use.
    pub fn check(&self) -> usize {
        if self.base == 0 {
            return 0;
        }
        let mut warm = 0;
        let mut h = self.warm;
        while !h.is_null() {
            let idx = self.page_index(h as usize);
            assert!(idx >= META_PAGES && idx < self.top, "warm page inside the carved range");
            // SAFETY: base is set.
            assert_eq!(unsafe { table_entry(self.base, idx) }, T_FREE, "warm page marked free");
            assert!(!self.is_cold(idx) && !self.is_spare(idx), "warm page is neither cold nor spare");
            warm += 1;
            // SAFETY: warm pages are committed.
            h = unsafe { (*h).list_next };
        }
        assert_eq!(warm, self.nwarm, "warm count");
        let (mut cold, mut used, mut spare) = (0, 0, 0);
        for i in META_PAGES..self.top {
            // SAFETY: base is set.
            let t = unsafe { table_entry(self.base, i) };
            if self.is_spare(i) {
                assert_eq!(t, T_FREE, "spare page {i} is free");
                assert!(!self.is_cold(i), "spare page {i} is not cold");
                assert!(i / 64 >= self.spare_hint, "spare hint");
                spare += 1;
            } else if self.is_cold(i) {
                assert_eq!(t, T_FREE, "cold page {i} is free");
                assert!(i / 64 >= self.cold_hint, "cold hint");
                cold += 1;
            } else if t != T_FREE {
                used += 1;
            }
        }
        assert_eq!(cold, self.ncold, "cold count");
        assert_eq!(spare, self.nspare, "spare count");
        assert_eq!(used + cold + warm + spare, self.top - META_PAGES, "every carved page accounted for");
        used
    }
}
