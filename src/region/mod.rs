//! Page regions: bump allocation in pages, O(1) per-object free, page recycling, 32-bit compressed
//! pointers (issue 6).
//!
//! A [`Region`] owns pages of the process-wide reservation ([`pool`]). It allocates by bumping a pointer
//! through the current *hole* (a run of free granules of its current page: the whole page when the page
//! is fresh). `free` finds the block's page by masking the pointer, validates it with the page bitmaps
//! (see [`page`]), and drops the page's counts; a page that empties is recycled (the region keeps a few
//! empty pages, most recently emptied first, and gives the rest to the pool); a page that becomes at
//! least `REGION_REUSE_FREE_PERCENT` free goes on the *partial* list, and its holes are bump-allocated
//! again before any fresh page is taken: that bounds the footprint when blocks die in random order.
//! Blocks larger than a page get a run of contiguous pages.
//!
//! The region struct itself lives at the start of its first page (the *home* page), after the page
//! header, so that creating a region allocates nothing else; cleanup records live in region pages too.
//!
//! Laziness on the fast path: allocations in the open hole `[hole_start, bump)` write only their block
//! header; the hole's `occ` bits and the page's `live`/`used` counts are brought up to date
//! ("materialised") when the hole is left or a block inside it is freed.
//!
//! Invariants (walked by [`Region::check`]): every page on the all-list is owned by the region and
//! marked in the pool's page table; the partial list holds exactly the pages with `in_partial` set,
//! none of them current; cached pages are owned, empty and not on the all-list; `live_bytes` and
//! `live_objects` equal the sums over the pages' live user blocks; `peak_bytes >= live_bytes`.

pub mod page;
pub mod pool;

use crate::config::{
    MIN_ALIGN, REGION_CACHE_PAGES, REGION_GRANULE, REGION_GRANULES, REGION_HINT_CLASSES, REGION_HINT_SLOTS, REGION_PAGE,
    REGION_RESERVE,
};
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;
use page::{
    chunk_size, clear_range, set_range, test_bit, PageHeader, FIRST_GRANULE, HEADER_SIZE, KIND_RUN, KIND_SMALL,
    MAGIC_FREED, MAGIC_INTERNAL, MAGIC_LIVE, MAGIC_RUN, SMALL_MAX,
};
use pool::{table_entry, Pool, T_RUN, T_SMALL, T_TAIL};

const PAGE_MASK: usize = REGION_PAGE - 1;
const REGION_MAGIC: usize = 0x5245_4749_4f4e_2131; // "REGION!1"
/// Offset of the region struct in its home page.
pub const REGION_OFFSET: usize = HEADER_SIZE;
/// First granule blocks may use on a home page.
const HOME_FIRST: usize = page::granules_before(REGION_OFFSET + core::mem::size_of::<Region>());
const _: () = assert!(HOME_FIRST < REGION_GRANULES / 4);
/// The largest block a region hands out (the reservation bounds it anyway).
const MAX_BLOCK: usize = REGION_RESERVE / 2;

/// A cleanup record, stored in a region page (an internal block).
struct Callback {
    func: extern "C" fn(*mut core::ffi::c_void),
    arg: *mut core::ffi::c_void,
    next: *mut Callback,
}

/// Why a pointer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadPointer {
    /// Not inside the region reservation at all.
    Outside,
    /// Inside the reservation, but not in a page of this region.
    NotThisRegion,
    /// In a page of this region, but not the start of a live block (interior, or already freed).
    NotLive,
    /// The block's header was overwritten.
    Corrupted,
}

impl BadPointer {
    /// The explanation `diag::invalid_pointer` prints.
    pub fn why(self) -> &'static str {
        match self {
            BadPointer::Outside => "not a region block",
            BadPointer::NotThisRegion => "not in a page of this region",
            BadPointer::NotLive => "not the start of a live block: freed already, or interior",
            BadPointer::Corrupted => "block header overwritten",
        }
    }
}

/// Figures of one region (and of the pool), as `region_stats_get` reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Usable bytes of live blocks.
    pub live_bytes: usize,
    /// Live blocks.
    pub live_objects: usize,
    /// Largest `live_bytes` since the region was created.
    pub peak_bytes: usize,
    /// Pages in use (small pages, run pages, the home page).
    pub pages_in_use: usize,
    /// Empty pages the region keeps.
    pub pages_cached: usize,
    /// Pool figures.
    pub pool: pool::PoolStats,
}

/// A region. Lives inside its home page; used by one thread at a time.
#[repr(C)]
pub struct Region {
    // --- fast path ---
    /// Payload address of the next block in the open hole.
    bump: usize,
    /// End of the open hole: a block of `c` chunk bytes fits iff `bump + c <= limit`.
    limit: usize,
    /// Start of the part of the open hole whose allocations are not materialised yet.
    hole_start: usize,
    /// Allocations in `[hole_start, bump)`.
    hole_allocs: usize,
    /// The page being allocated from.
    cur: *mut PageHeader,
    /// Most recently freed-into small page (known to be ours): frees there skip the page-table check.
    mru: usize,
    /// Granule of the current page where the search for the next hole resumes.
    sweep: usize,
    /// The reservation's base.
    base: usize,
    live_bytes: usize,
    live_objects: usize,
    peak_bytes: usize,
    // --- slow path ---
    magic: usize,
    home: *mut PageHeader,
    /// Every page in use (small and run heads), linked through `all_prev/all_next`.
    all: *mut PageHeader,
    /// Pages worth reusing, linked through `list_prev/list_next`.
    partial: *mut PageHeader,
    /// Empty pages, most recently emptied first, linked through `list_next`.
    cache: *mut PageHeader,
    ncache: usize,
    /// Pages in use, counting every page of a run.
    npages: usize,
    callbacks: *mut Callback,
    /// Per size in granules: pushes so far (the ring's head) and hints held.
    hint_top: [u32; REGION_HINT_CLASSES],
    hint_len: [u32; REGION_HINT_CLASSES],
    /// Places of freed blocks, as granule offsets from the reservation's base.
    hints: [[u32; REGION_HINT_SLOTS]; REGION_HINT_CLASSES],
}

/// Granule of payload address `p` in its page.
#[inline(always)]
fn granule(p: usize) -> usize {
    (p & PAGE_MASK) / REGION_GRANULE
}

/// # Safety
/// `p - 8` is a block header inside a committed page.
#[inline(always)]
unsafe fn read_block_header(p: usize) -> (usize, u32) {
    // SAFETY: guaranteed by the caller.
    let v = unsafe { ((p - 8) as *const u64).read() };
    ((v & 0xffff_ffff) as usize, (v >> 32) as u32)
}

/// # Safety
/// `p - 8` is inside a committed page owned by the caller.
#[inline(always)]
unsafe fn write_block_header(p: usize, csize: usize, magic: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe { ((p - 8) as *mut u64).write(csize as u64 | (magic as u64) << 32) }
}

impl Region {
    // ------------------------------------------------------------------ creation and destruction

    /// Creates a region in a fresh page of the pool. `None` when the reservation cannot be made or is full.
    pub fn create() -> Option<NonNull<Region>> {
        let mut pool = pool::lock();
        let h = pool.take_page().ok()?;
        let base = pool::base();
        drop(pool);
        let r = (h as usize + REGION_OFFSET) as *mut Region;
        // SAFETY: the page is ours alone and committed; the region fits after its header.
        unsafe {
            let hp = PageHeader::init_small(h, r, HOME_FIRST);
            r.write(Region {
                bump: 0,
                limit: 0,
                hole_start: 0,
                hole_allocs: 0,
                cur: h,
                mru: h as usize,
                sweep: 0,
                base,
                live_bytes: 0,
                live_objects: 0,
                peak_bytes: 0,
                magic: REGION_MAGIC,
                home: h,
                all: ptr::null_mut(),
                partial: ptr::null_mut(),
                cache: ptr::null_mut(),
                ncache: 0,
                npages: 1,
                callbacks: ptr::null_mut(),
                hint_top: [0; REGION_HINT_CLASSES],
                hint_len: [0; REGION_HINT_CLASSES],
                hints: [[0; REGION_HINT_SLOTS]; REGION_HINT_CLASSES],
            });
            let reg = &mut *r;
            reg.all_push(hp);
            reg.open_whole_page(h);
        }
        NonNull::new(r)
    }

    /// The region at `r`, if `r` is what [`Region::create`] returned and the region is alive.
    ///
    /// # Safety
    /// If `r` points into the region reservation, no other thread uses that region now.
    pub unsafe fn from_ptr<'a>(r: *mut Region) -> Option<&'a mut Region> {
        let base = pool::base();
        let a = r as usize;
        if base == 0 || a.wrapping_sub(base) >= REGION_RESERVE || a & PAGE_MASK != REGION_OFFSET {
            return None;
        }
        let page = a & !PAGE_MASK;
        // SAFETY: base is non-zero and the index is inside the reservation.
        if unsafe { table_entry(base, (page - base) / REGION_PAGE) } != T_SMALL {
            return None;
        }
        // SAFETY: a small page in use is committed; `region` is atomic.
        let owner = unsafe { (*(page as *const PageHeader)).region.load(Ordering::Relaxed) };
        // SAFETY: the page is a live home page of `r` (its owner field names it), so `r` is a Region,
        // used by this thread alone per the caller.
        (owner == r).then(|| unsafe { &mut *r }).filter(|reg| reg.magic == REGION_MAGIC)
    }

    /// The region at `r` after a cheap check (its place in a page and its magic word), for the hot entry
    /// points; [`Region::from_ptr`] is the full check. `None` when the check fails.
    ///
    /// # Safety
    /// `r` is readable when it has a region's offset in a page; if it is a region, no other thread uses it.
    #[inline(always)]
    pub unsafe fn from_ptr_fast<'a>(r: *mut Region) -> Option<&'a mut Region> {
        if r as usize & PAGE_MASK != REGION_OFFSET {
            return None;
        }
        // SAFETY: per the caller, r is readable; a live region says so in its magic word (cleared by destroy).
        let reg = unsafe { &mut *r };
        if reg.magic == REGION_MAGIC {
            Some(reg)
        } else {
            None
        }
    }

    /// Runs the cleanup callbacks (most recently registered first), then gives every page back.
    ///
    /// # Safety
    /// `this` is a live region no other thread uses; it is dead afterwards.
    pub unsafe fn destroy(this: *mut Region) {
        // SAFETY: guaranteed by the caller.
        let r = unsafe { &mut *this };
        r.run_callbacks();
        r.materialize();
        let home = r.home;
        let mut pool = pool::lock();
        // SAFETY: every page on the lists belongs to r, which is dying.
        unsafe {
            r.release_pages(&mut pool, false);
            r.magic = 0;
            pool.give_page(home);
        }
    }

    /// Runs the cleanup callbacks, then frees every block; keeps the home page (and the page cache).
    pub fn reset(&mut self) {
        self.run_callbacks();
        self.materialize();
        let mut pool = pool::lock();
        // SAFETY: every page on the lists belongs to self.
        unsafe { self.release_pages(&mut pool, true) };
        drop(pool);
        // SAFETY: the home page is ours.
        let home = unsafe { &mut *self.home };
        home.clear_blocks();
        home.all_prev = ptr::null_mut();
        home.all_next = ptr::null_mut();
        self.all = ptr::null_mut();
        self.all_push(home);
        self.partial = ptr::null_mut();
        self.hint_len = [0; REGION_HINT_CLASSES];
        self.npages = 1;
        self.live_bytes = 0;
        self.live_objects = 0;
        self.mru = self.home as usize;
        self.open_whole_page(self.home);
    }

    /// Gives every page but the home page back (to the cache when `keep_cache` and it has room, else to
    /// the pool), and with `!keep_cache` the cached pages too.
    ///
    /// # Safety
    /// Every listed page belongs to `self`; none of them is used afterwards except through the cache.
    unsafe fn release_pages(&mut self, pool: &mut Pool, keep_cache: bool) {
        let mut h = self.all;
        while !h.is_null() {
            // SAFETY: pages on the all-list are committed and ours.
            let next = unsafe { (*h).all_next };
            if h != self.home {
                // SAFETY: as above.
                let hp = unsafe { &mut *h };
                if hp.kind == KIND_RUN {
                    // SAFETY: the run is ours and dead.
                    unsafe { pool.give_run(h, hp.run_pages) };
                } else if keep_cache && self.ncache < REGION_CACHE_PAGES {
                    hp.clear_blocks();
                    self.cache_push(hp);
                } else {
                    // SAFETY: the page is ours and dead.
                    unsafe { pool.give_page(h) };
                }
            }
            h = next;
        }
        if !keep_cache {
            while !self.cache.is_null() {
                let c = self.cache;
                // SAFETY: cached pages are committed and ours.
                self.cache = unsafe { (*c).list_next };
                // SAFETY: the page is ours and empty.
                unsafe { pool.give_page(c) };
            }
            self.ncache = 0;
        }
    }

    fn run_callbacks(&mut self) {
        while !self.callbacks.is_null() {
            let cb = self.callbacks;
            // SAFETY: records live in region pages until reset/destroy, which is now.
            let (func, arg) = unsafe {
                self.callbacks = (*cb).next;
                ((*cb).func, (*cb).arg)
            };
            func(arg);
        }
    }

    /// Registers `func(arg)` to run at the next reset or at destroy. `None` when out of memory.
    pub fn on_destroy(&mut self, func: extern "C" fn(*mut core::ffi::c_void), arg: *mut core::ffi::c_void) -> Option<()> {
        let peak = self.peak_bytes;
        let p = self.alloc(core::mem::size_of::<Callback>())?.as_ptr() as usize;
        self.peak_bytes = peak;
        // SAFETY: p is a block just allocated in one of our small pages (the record is far below a page).
        unsafe {
            let (csize, _) = read_block_header(p);
            write_block_header(p, csize, MAGIC_INTERNAL);
            self.live_objects -= 1;
            self.live_bytes -= csize - 8;
            (p as *mut Callback).write(Callback { func, arg, next: self.callbacks });
        }
        self.callbacks = p as *mut Callback;
        Some(())
    }

    // ------------------------------------------------------------------ allocation

    /// Allocates `size` bytes, 16-byte aligned. Fast path: bump in the open hole. `None`: out of memory.
    #[inline(always)]
    pub fn alloc(&mut self, size: usize) -> Option<NonNull<u8>> {
        let c = chunk_size(size);
        let p = self.bump;
        if c > self.limit - p {
            return self.alloc_slow(size);
        }
        self.bump = p + c;
        // SAFETY: [p - 8, p - 8 + c) lies in the open hole of our current page, which is committed.
        unsafe { write_block_header(p, c, MAGIC_LIVE) };
        self.hole_allocs += 1;
        self.live_objects += 1;
        self.live_bytes += c - 8;
        if self.live_bytes > self.peak_bytes {
            self.peak_bytes = self.live_bytes;
        }
        // SAFETY: p is inside a page, never 0.
        Some(unsafe { NonNull::new_unchecked(p as *mut u8) })
    }

    /// The slow path of [`Region::alloc`]: a large block, or a new hole, then the fast path again.
    #[cold]
    #[inline(never)]
    fn alloc_slow(&mut self, size: usize) -> Option<NonNull<u8>> {
        if size > SMALL_MAX {
            return self.alloc_run(size, MIN_ALIGN);
        }
        let c = chunk_size(size);
        // The next hole of the current page that fits; else an empty cached page (the cheapest, and
        // it keeps FIFO lifetimes page-aligned); else a place a block of this size left; else a hole
        // found by sweeping other pages.
        if let Some(p) = self.alloc_in_next_hole(c) {
            return Some(p);
        }
        if self.cache.is_null() && c / REGION_GRANULE < REGION_HINT_CLASSES {
            if let Some(p) = self.alloc_from_hint(c) {
                return Some(p);
            }
        }
        self.refill(c)?;
        self.alloc(size)
    }

    /// Places a chunk of `c` bytes at the start of the next hole of the current page that holds it,
    /// directly (no hole is opened and closed for one block); the rest of that hole becomes the open hole.
    #[inline(always)]
    fn alloc_in_next_hole(&mut self, c: usize) -> Option<NonNull<u8>> {
        self.materialize();
        // SAFETY: the current page is a small page of ours.
        let h = unsafe { &mut *self.cur };
        let k = c / REGION_GRANULE;
        let mut g = self.sweep;
        while g < REGION_GRANULES {
            let g0 = page::next_bit(&h.occ, g, false);
            if g0 >= REGION_GRANULES {
                break;
            }
            let g1 = page::next_bit(&h.occ, g0, true);
            if g1 - g0 >= k {
                set_range(&mut h.occ, g0, k);
                h.used += k as u32;
                h.live += 1;
                let p = h.addr() + g0 * REGION_GRANULE;
                // SAFETY: granules [g0, g0 + k) of our page were free.
                unsafe { write_block_header(p, c, MAGIC_LIVE) };
                self.bump = p + c;
                self.hole_start = self.bump;
                self.limit = h.addr() + g1 * REGION_GRANULE;
                self.sweep = g1;
                self.live_objects += 1;
                self.live_bytes += c - 8;
                if self.live_bytes > self.peak_bytes {
                    self.peak_bytes = self.live_bytes;
                }
                // SAFETY: p is inside a page, never 0.
                return Some(unsafe { NonNull::new_unchecked(p as *mut u8) });
            }
            g = g1;
        }
        self.sweep = REGION_GRANULES;
        None
    }

    /// Remembers that a block of `k` granules at `p` was freed.
    #[inline(always)]
    fn push_hint(&mut self, k: usize, p: usize) {
        if k < REGION_HINT_CLASSES {
            let top = self.hint_top[k];
            self.hints[k][top as usize % REGION_HINT_SLOTS] = ((p - self.base) / REGION_GRANULE) as u32;
            self.hint_top[k] = top.wrapping_add(1);
            if (self.hint_len[k] as usize) < REGION_HINT_SLOTS {
                self.hint_len[k] += 1;
            }
        }
    }

    /// Allocates a chunk of `c` bytes at a hinted place that is still free: in a listed, non-current
    /// small page of ours whose `occ` bits are clear there. Stale hints are dropped.
    fn alloc_from_hint(&mut self, c: usize) -> Option<NonNull<u8>> {
        let k = c / REGION_GRANULE;
        while self.hint_len[k] != 0 {
            self.hint_len[k] -= 1;
            self.hint_top[k] = self.hint_top[k].wrapping_sub(1);
            let h = self.hints[k][self.hint_top[k] as usize % REGION_HINT_SLOTS];
            let p = self.base + h as usize * REGION_GRANULE;
            let page = p & !PAGE_MASK;
            let g = granule(p);
            if page == self.cur as usize {
                continue;
            }
            // SAFETY: p lies inside the reservation (it was a block of ours); the table is committed.
            if unsafe { table_entry(self.base, (page - self.base) / REGION_PAGE) } != T_SMALL {
                continue;
            }
            // SAFETY: a small page in use is committed; `region` is atomic.
            let hp = unsafe { &mut *(page as *mut PageHeader) };
            if !ptr::eq(hp.region.load(Ordering::Relaxed), self) || hp.cached != 0 || !page::range_is_clear(&hp.occ, g, k) {
                continue;
            }
            set_range(&mut hp.occ, g, k);
            hp.used += k as u32;
            hp.live += 1;
            // SAFETY: the granules [g, g + k) of our page are free.
            unsafe { write_block_header(p, c, MAGIC_LIVE) };
            self.live_objects += 1;
            self.live_bytes += c - 8;
            if self.live_bytes > self.peak_bytes {
                self.peak_bytes = self.live_bytes;
            }
            // SAFETY: p is inside a page, never 0.
            return Some(unsafe { NonNull::new_unchecked(p as *mut u8) });
        }
        None
    }

    /// Allocates `size` bytes aligned to `align` (a power of two).
    pub fn alloc_aligned(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        debug_assert!(align.is_power_of_two());
        if align <= MIN_ALIGN {
            return self.alloc(size);
        }
        let c = chunk_size(size);
        // Small enough to place in a page with its padding?
        if c <= SMALL_MAX + 8 && align <= REGION_PAGE / 4 && c + align <= SMALL_MAX + 8 {
            loop {
                let p = (self.bump + align - 1) & !(align - 1);
                if p <= self.limit && c <= self.limit - p {
                    // Close the part before the padding; the padding stays a hole.
                    self.materialize();
                    self.bump = p;
                    self.hole_start = p;
                    return self.alloc(size);
                }
                self.refill(c + align)?;
            }
        }
        self.alloc_run(size, align)
    }

    /// Makes the open hole at least `c` bytes long: the rest of the current page, else a cached empty
    /// page, else a partial page, else a page from the pool.
    fn refill(&mut self, c: usize) -> Option<()> {
        self.materialize();
        let cur = self.cur;
        // SAFETY: the current page is ours.
        if unsafe { self.open_hole(cur, self.sweep, c) } {
            return Some(());
        }
        loop {
            self.leave_current();
            if !self.cache.is_null() {
                let h = self.cache_pop();
                // SAFETY: cached pages are ours and empty.
                unsafe {
                    self.all_push(&mut *h);
                    self.npages += 1;
                }
                self.open_whole_page(h);
                return Some(());
            }
            if !self.partial.is_null() {
                let h = self.partial;
                // SAFETY: partial pages are ours.
                unsafe { self.partial_remove(&mut *h) };
                self.cur = h;
                // SAFETY: as above.
                if unsafe { self.open_hole(h, 0, c) } {
                    return Some(());
                }
                continue;
            }
            let h = pool::lock().take_page().ok()?;
            // SAFETY: the pool gave us the page.
            let hp = unsafe { PageHeader::init_small(h, self, FIRST_GRANULE) };
            self.all_push(hp);
            self.npages += 1;
            self.open_whole_page(h);
            return Some(());
        }
    }

    /// Opens the first hole of page `h` at or after granule `from` that holds `c` bytes; false if none.
    ///
    /// # Safety
    /// `h` is a small page of ours.
    unsafe fn open_hole(&mut self, h: *mut PageHeader, from: usize, c: usize) -> bool {
        // SAFETY: guaranteed by the caller.
        let hp = unsafe { &*h };
        let mut g = from;
        while g < REGION_GRANULES {
            let g0 = page::next_bit(&hp.occ, g, false);
            if g0 >= REGION_GRANULES {
                break;
            }
            let g1 = page::next_bit(&hp.occ, g0, true);
            if (g1 - g0) * REGION_GRANULE >= c {
                self.cur = h;
                self.bump = hp.addr() + g0 * REGION_GRANULE;
                self.hole_start = self.bump;
                self.limit = hp.addr() + g1 * REGION_GRANULE;
                self.sweep = g1;
                return true;
            }
            g = g1;
        }
        self.sweep = REGION_GRANULES;
        false
    }

    /// Makes the empty page `h` current with one hole covering it.
    fn open_whole_page(&mut self, h: *mut PageHeader) {
        // SAFETY: h is an empty small page of ours.
        let ok = unsafe { self.open_hole(h, 0, 16) };
        debug_assert!(ok);
    }

    /// Brings the open hole's `occ` bits and the current page's counts up to date.
    #[inline(always)]
    fn materialize(&mut self) {
        if self.bump > self.hole_start {
            // SAFETY: the current page is ours.
            let h = unsafe { &mut *self.cur };
            let (g, n) = (granule(self.hole_start), (self.bump - self.hole_start) / REGION_GRANULE);
            set_range(&mut h.occ, g, n);
            h.used += n as u32;
            h.live += self.hole_allocs as u32;
        }
        self.hole_start = self.bump;
        self.hole_allocs = 0;
    }

    /// Closes the current page (materialised): nothing stays open.
    fn leave_current(&mut self) {
        self.bump = 0;
        self.limit = 0;
        self.hole_start = 0;
        self.sweep = 0;
        let h = self.cur;
        // SAFETY: the current page is ours.
        let hp = unsafe { &mut *h };
        // No current page until the caller picks one: point at home so `cur` stays valid.
        self.cur = self.home;
        if hp.live == 0 && h != self.home {
            self.page_emptied(hp);
        }
    }

    /// A large block: a run of pages with the block after the run's header.
    fn alloc_run(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if size > MAX_BLOCK {
            return None;
        }
        let align = align.max(MIN_ALIGN);
        let (pages, align_pages, phase, offset) = if align < REGION_PAGE {
            let off = (HEADER_SIZE + 8 + align - 1) & !(align - 1);
            ((off + size).div_ceil(REGION_PAGE).max(1), 1, 0, off)
        } else {
            (1 + size.div_ceil(REGION_PAGE).max(1), align / REGION_PAGE, 1, REGION_PAGE)
        };
        let h = pool::lock().take_run(pages, align_pages, phase).ok()?;
        let payload = h as usize + offset;
        // SAFETY: the run is ours and committed; the header fits in its first page.
        unsafe {
            let hp = PageHeader::init_small(h, self, FIRST_GRANULE);
            hp.kind = KIND_RUN;
            hp.run_pages = pages;
            hp.run_payload = payload;
            hp.run_size = pages * REGION_PAGE - offset;
            hp.live = 1;
            write_block_header(payload, 0, MAGIC_RUN);
            self.all_push(hp);
            self.npages += pages;
            self.live_objects += 1;
            self.live_bytes += hp.run_size;
            if self.live_bytes > self.peak_bytes {
                self.peak_bytes = self.live_bytes;
            }
        }
        NonNull::new(payload as *mut u8)
    }

    // ------------------------------------------------------------------ free

    /// Frees the block at `p`. Fast path: `p`'s page is the most recently freed-into page.
    #[inline(always)]
    pub fn free(&mut self, p: usize) -> Result<(), BadPointer> {
        let page = p & !PAGE_MASK;
        if page != self.mru {
            // Inline check for a small page of ours; runs and errors take the slow path.
            let off = p.wrapping_sub(self.base);
            // SAFETY: the index is inside the reservation (checked first); a small page in use is
            // committed and its `region` field is atomic.
            let ours = off < REGION_RESERVE
                && unsafe { table_entry(self.base, off / REGION_PAGE) } == T_SMALL
                && ptr::eq(unsafe { (*(page as *const PageHeader)).region.load(Ordering::Relaxed) }, self);
            if !ours {
                return self.free_slow(p);
            }
            self.mru = page;
        }
        // SAFETY: mru is always a small page of ours.
        unsafe { self.free_small(page, p) }
    }

    /// The slow path of [`Region::free`]: validates `p`'s page, remembers it, then frees.
    #[cold]
    #[inline(never)]
    fn free_slow(&mut self, p: usize) -> Result<(), BadPointer> {
        match self.owner_page(p)? {
            (page, KIND_SMALL) => {
                self.mru = page;
                // SAFETY: owner_page checked that the page is a small page of ours.
                unsafe { self.free_small(page, p) }
            }
            (page, _) => self.free_run(page, p),
        }
    }

    /// Which of our pages `p` is in: `(page address, kind)` where the page is the run's first page for
    /// an address inside a run.
    fn owner_page(&self, p: usize) -> Result<(usize, u8), BadPointer> {
        let off = p.wrapping_sub(self.base);
        if off >= REGION_RESERVE {
            return Err(BadPointer::Outside);
        }
        let idx = off / REGION_PAGE;
        // SAFETY: base is set (we exist) and idx is in range.
        let t = unsafe { table_entry(self.base, idx) };
        let (page, kind) = match t {
            T_SMALL => (p & !PAGE_MASK, KIND_SMALL),
            T_RUN => (p & !PAGE_MASK, KIND_RUN),
            t if t & T_TAIL != 0 => ((p & !PAGE_MASK) - (t >> 3) as usize * REGION_PAGE, KIND_RUN),
            _ => return Err(BadPointer::NotThisRegion),
        };
        // SAFETY: pages in use are committed; `region` is atomic.
        let owner = unsafe { (*(page as *const PageHeader)).region.load(Ordering::Relaxed) };
        if !ptr::eq(owner, self) {
            return Err(BadPointer::NotThisRegion);
        }
        Ok((page, kind))
    }

    /// Validates `p` as a live block of the small page `page` and returns its chunk size: its granule is
    /// occupied (or lies in the open hole, whose bits are not set yet) and its header has the live magic.
    ///
    /// # Safety
    /// `page` is a small page of ours.
    #[inline(always)]
    unsafe fn live_block(&self, page: usize, p: usize) -> Result<usize, BadPointer> {
        // SAFETY: guaranteed by the caller.
        let h = unsafe { &*(page as *const PageHeader) };
        let g = granule(p);
        let in_open_hole = p >= self.hole_start && p < self.bump && page == self.cur as usize;
        if p % REGION_GRANULE != 0 || g < h.first as usize || !(in_open_hole || test_bit(&h.occ, g)) {
            return Err(BadPointer::NotLive);
        }
        // SAFETY: p - 8 lies in the page, after its header (g >= first).
        let (c, magic) = unsafe { read_block_header(p) };
        if magic != MAGIC_LIVE || c == 0 || g + c / REGION_GRANULE > REGION_GRANULES {
            return Err(BadPointer::NotLive);
        }
        Ok(c)
    }

    /// # Safety
    /// `page` is a small page of ours.
    #[inline(always)]
    unsafe fn free_small(&mut self, page: usize, p: usize) -> Result<(), BadPointer> {
        // SAFETY: guaranteed by the caller.
        let c = unsafe { self.live_block(page, p)? };
        // SAFETY: as above.
        let h = unsafe { &mut *(page as *mut PageHeader) };
        let g = granule(p);
        // SAFETY: the block is live in our page.
        unsafe { write_block_header(p, c, MAGIC_FREED) };
        self.live_objects -= 1;
        self.live_bytes -= c - 8;
        if page == self.cur as usize && p >= self.hole_start && p < self.bump {
            if p + c == self.bump {
                // The last block of the open hole: give the space back to the hole.
                self.bump = p;
                self.hole_allocs -= 1;
                return Ok(());
            }
            self.materialize();
        }
        let k = c / REGION_GRANULE;
        clear_range(&mut h.occ, g, k);
        h.used -= k as u32;
        h.live -= 1;
        // A hint only for a hole that does not extend a free neighbour on its left, in a sparse page:
        // random-order frees. Frees in allocation order (FIFO) grow one hole from the left, which
        // sweeping finds, and let the page empty and be recycled.
        if h.used <= h.reuse_at && test_bit(&h.occ, g - 1) {
            self.push_hint(k, p);
        }
        if h.live == 0 || (h.used <= h.reuse_at && h.in_partial == 0 && page != self.cur as usize) {
            self.page_changed(h);
        }
        Ok(())
    }

    /// A page emptied or became worth reusing.
    #[cold]
    #[inline(never)]
    fn page_changed(&mut self, h: &mut PageHeader) {
        let is_cur = ptr::eq(h, self.cur);
        if h.live == 0 {
            if is_cur {
                // Reopen the whole page, unless the open hole sits somewhere inside it.
                if self.bump == self.hole_start {
                    self.open_whole_page(h);
                }
                return;
            }
            if !ptr::eq(h, self.home) {
                self.page_emptied(h);
                return;
            }
        }
        if !is_cur && h.in_partial == 0 {
            self.partial_push(h);
        }
    }

    /// Recycles the empty, non-current, non-home page `h`: into the cache, or back to the pool.
    fn page_emptied(&mut self, h: &mut PageHeader) {
        if h.in_partial != 0 {
            self.partial_remove(h);
        }
        self.all_remove(h);
        self.npages -= 1;
        if self.mru == h.addr() {
            self.mru = self.home as usize;
        }
        if self.ncache < REGION_CACHE_PAGES {
            self.cache_push(h);
        } else {
            // SAFETY: the page is ours, empty and unlisted.
            unsafe { pool::lock().give_page(h) };
        }
    }

    fn free_run(&mut self, page: usize, p: usize) -> Result<(), BadPointer> {
        // SAFETY: owner_page checked that `page` is the first page of a run of ours.
        let h = unsafe { &mut *(page as *mut PageHeader) };
        if h.run_payload != p || h.live != 1 {
            return Err(BadPointer::NotLive);
        }
        // SAFETY: the block header of a run sits just below its payload.
        if unsafe { read_block_header(p) }.1 != MAGIC_RUN {
            return Err(BadPointer::Corrupted);
        }
        h.live = 0;
        self.live_objects -= 1;
        self.live_bytes -= h.run_size;
        self.all_remove(h);
        self.npages -= h.run_pages;
        let n = h.run_pages;
        // SAFETY: the run is ours and dead.
        unsafe { pool::lock().give_run(h, n) };
        Ok(())
    }

    // ------------------------------------------------------------------ realloc, queries

    /// Usable bytes of the live block `p` of any region. Lock-free; reads only `p`'s page.
    pub fn usable_size(p: usize) -> Result<usize, BadPointer> {
        let (page, kind) = Self::any_page(p)?;
        if kind == KIND_RUN {
            // SAFETY: any_page checked that the page is a run's first page in use.
            let h = unsafe { &*(page as *const PageHeader) };
            return if h.run_payload == p { Ok(h.run_size) } else { Err(BadPointer::NotLive) };
        }
        // SAFETY: any_page checked that the page is a small page in use, so its owner is a live region;
        // the caller uses that region from this thread, so reading it is not a race.
        let owner = unsafe { &*(*(page as *const PageHeader)).region.load(Ordering::Relaxed) };
        // SAFETY: the page is a small page of `owner`.
        unsafe { owner.live_block(page, p) }.map(|c| c - 8)
    }

    /// The page (run head for runs) and kind of any region pointer, whoever owns it.
    fn any_page(p: usize) -> Result<(usize, u8), BadPointer> {
        let base = pool::base();
        let off = p.wrapping_sub(base);
        if base == 0 || off >= REGION_RESERVE {
            return Err(BadPointer::Outside);
        }
        // SAFETY: base is set and the index is in range.
        match unsafe { table_entry(base, off / REGION_PAGE) } {
            T_SMALL => Ok((p & !PAGE_MASK, KIND_SMALL)),
            T_RUN => Ok((p & !PAGE_MASK, KIND_RUN)),
            t if t & T_TAIL != 0 => Ok(((p & !PAGE_MASK) - (t >> 3) as usize * REGION_PAGE, KIND_RUN)),
            _ => Err(BadPointer::Outside),
        }
    }

    /// Whether `p` points into memory of a page of this region (a block or not).
    pub fn contains(&self, p: usize) -> bool {
        match self.owner_page(p) {
            Ok((page, KIND_RUN)) => {
                // SAFETY: owner_page checked that this is a run of ours.
                let h = unsafe { &*(page as *const PageHeader) };
                p >= h.run_payload && p < h.run_payload + h.run_size
            }
            Ok(_) => true,
            Err(_) => false,
        }
    }

    /// Resizes the live block `p` to `size` bytes: in place when it is the last block of the open hole
    /// (or shrinks little, or a run has room), else by moving. `Ok(None)`: out of memory, `p` untouched.
    pub fn realloc(&mut self, p: usize, size: usize) -> Result<Option<NonNull<u8>>, BadPointer> {
        let (page, kind) = self.owner_page(p)?;
        let old_usable = if kind == KIND_RUN {
            // SAFETY: owner_page checked it is our run.
            let h = unsafe { &*(page as *const PageHeader) };
            if h.run_payload != p || h.live != 1 {
                return Err(BadPointer::NotLive);
            }
            if size <= h.run_size && size > SMALL_MAX && size >= h.run_size / 2 {
                // SAFETY: p is live.
                return Ok(Some(unsafe { NonNull::new_unchecked(p as *mut u8) }));
            }
            h.run_size
        } else {
            // SAFETY: owner_page checked that it is a small page of ours.
            let c = unsafe { self.live_block(page, p)? };
            let nc = chunk_size(size);
            if page == self.cur as usize && p >= self.hole_start && p + c == self.bump && nc <= self.limit - p {
                // The last block of the open hole grows or shrinks in place.
                self.bump = p + nc;
                // SAFETY: the block is ours; the new chunk lies in the open hole.
                unsafe { write_block_header(p, nc, MAGIC_LIVE) };
                self.live_bytes = self.live_bytes + nc - c;
                if self.live_bytes > self.peak_bytes {
                    self.peak_bytes = self.live_bytes;
                }
                // SAFETY: p is live.
                return Ok(Some(unsafe { NonNull::new_unchecked(p as *mut u8) }));
            }
            if nc <= c && nc * 2 >= c {
                // SAFETY: p is live.
                return Ok(Some(unsafe { NonNull::new_unchecked(p as *mut u8) }));
            }
            c - 8
        };
        let Some(q) = self.alloc(size) else { return Ok(None) };
        // SAFETY: both blocks are live and distinct; copy what both hold.
        unsafe { ptr::copy_nonoverlapping(p as *const u8, q.as_ptr(), old_usable.min(size)) };
        self.free(p)?;
        Ok(Some(q))
    }

    /// This region's figures and the pool's.
    pub fn stats(&self) -> Stats {
        Stats {
            live_bytes: self.live_bytes,
            live_objects: self.live_objects,
            peak_bytes: self.peak_bytes,
            pages_in_use: self.npages,
            pages_cached: self.ncache,
            pool: pool::lock().stats(),
        }
    }

    // ------------------------------------------------------------------ lists

    fn all_push(&mut self, h: &mut PageHeader) {
        h.all_prev = ptr::null_mut();
        h.all_next = self.all;
        if !self.all.is_null() {
            // SAFETY: pages on the all-list are ours.
            unsafe { (*self.all).all_prev = h };
        }
        self.all = h;
    }

    fn all_remove(&mut self, h: &mut PageHeader) {
        // SAFETY: neighbours on the all-list are ours.
        unsafe {
            if h.all_prev.is_null() {
                self.all = h.all_next;
            } else {
                (*h.all_prev).all_next = h.all_next;
            }
            if !h.all_next.is_null() {
                (*h.all_next).all_prev = h.all_prev;
            }
        }
        h.all_prev = ptr::null_mut();
        h.all_next = ptr::null_mut();
    }

    fn partial_push(&mut self, h: &mut PageHeader) {
        h.in_partial = 1;
        h.list_prev = ptr::null_mut();
        h.list_next = self.partial;
        if !self.partial.is_null() {
            // SAFETY: partial pages are ours.
            unsafe { (*self.partial).list_prev = h };
        }
        self.partial = h;
    }

    fn partial_remove(&mut self, h: &mut PageHeader) {
        // SAFETY: neighbours on the partial list are ours.
        unsafe {
            if h.list_prev.is_null() {
                self.partial = h.list_next;
            } else {
                (*h.list_prev).list_next = h.list_next;
            }
            if !h.list_next.is_null() {
                (*h.list_next).list_prev = h.list_prev;
            }
        }
        h.in_partial = 0;
        h.list_prev = ptr::null_mut();
        h.list_next = ptr::null_mut();
    }

    fn cache_push(&mut self, h: &mut PageHeader) {
        h.cached = 1;
        h.list_next = self.cache;
        self.cache = h;
        self.ncache += 1;
    }

    fn cache_pop(&mut self) -> *mut PageHeader {
        let h = self.cache;
        // SAFETY: cached pages are ours.
        unsafe {
            self.cache = (*h).list_next;
            (*h).cached = 0;
        }
        self.ncache -= 1;
        h
    }

    // ------------------------------------------------------------------ invariants

    /// Walks every invariant of the region (and the pool); panics on a violation.
    pub fn check(&self) {
        let me = self as *const Region as *mut Region;
        assert_eq!(self.magic, REGION_MAGIC);
        assert!(self.peak_bytes >= self.live_bytes);
        let mut internal = [(0usize, 0usize); 64];
        let mut ninternal = 0;
        let mut cb = self.callbacks;
        while !cb.is_null() {
            let p = cb as usize;
            // SAFETY: records are internal blocks of our pages.
            let (c, magic) = unsafe { read_block_header(p) };
            assert_eq!(magic, MAGIC_INTERNAL, "callback record header");
            if ninternal < internal.len() {
                internal[ninternal] = (p, c);
                ninternal += 1;
            }
            // SAFETY: as above.
            cb = unsafe { (*cb).next };
        }
        let (mut bytes, mut objects, mut pages) = (0, 0, 0);
        let mut h = self.all;
        let mut saw_home = false;
        let mut saw_cur = false;
        let mut in_partial = 0;
        while !h.is_null() {
            // SAFETY: pages on the all-list are ours and committed.
            let hp = unsafe { &*h };
            assert_eq!(hp.region.load(Ordering::Relaxed), me, "page owner");
            assert_eq!(hp.cached, 0, "listed pages are not cached");
            let idx = (h as usize - self.base) / REGION_PAGE;
            // SAFETY: base is set.
            let t = unsafe { table_entry(self.base, idx) };
            saw_home |= h == self.home;
            saw_cur |= h == self.cur;
            if hp.kind == KIND_RUN {
                assert_eq!(t, T_RUN);
                for d in 1..hp.run_pages {
                    // SAFETY: as above.
                    assert_eq!(unsafe { table_entry(self.base, idx + d) }, T_TAIL | (d as u32) << 3);
                }
                assert_eq!(hp.live, 1);
                pages += hp.run_pages;
                bytes += hp.run_size;
                objects += 1;
            } else {
                assert_eq!(t, T_SMALL);
                pages += 1;
                in_partial += hp.in_partial as usize;
                if hp.in_partial != 0 {
                    assert!(h != self.cur, "the current page is not on the partial list");
                }
                let (b, o) = self.check_small(hp, &internal[..ninternal]);
                bytes += b;
                objects += o;
            }
            h = hp.all_next;
        }
        assert!(saw_home, "home page listed");
        assert!(saw_cur || (self.bump == 0 && self.limit == 0), "current page listed");
        assert_eq!(pages, self.npages, "pages in use");
        assert_eq!(bytes, self.live_bytes, "live bytes");
        assert_eq!(objects, self.live_objects, "live objects");
        let mut n = 0;
        let mut p = self.partial;
        let mut prev = ptr::null_mut();
        while !p.is_null() {
            // SAFETY: partial pages are ours.
            let hp = unsafe { &*p };
            assert_eq!(hp.in_partial, 1);
            assert_eq!(hp.list_prev, prev);
            prev = p;
            p = hp.list_next;
            n += 1;
        }
        assert_eq!(n, in_partial, "partial list matches the flags");
        let mut n = 0;
        let mut c = self.cache;
        while !c.is_null() {
            // SAFETY: cached pages are ours.
            let hp = unsafe { &*c };
            assert_eq!(hp.region.load(Ordering::Relaxed), me, "cached page owner");
            assert_eq!(hp.live, 0);
            assert_eq!(hp.cached, 1);
            assert_eq!(page::count_bits(&hp.occ), hp.first as usize);
            c = hp.list_next;
            n += 1;
        }
        assert_eq!(n, self.ncache);
        assert!(self.ncache <= REGION_CACHE_PAGES);
    }

    /// Checks one small page; returns its user bytes and blocks.
    fn check_small(&self, hp: &PageHeader, internal: &[(usize, usize)]) -> (usize, usize) {
        let page = hp.addr();
        let mut occ = hp.occ;
        let (mut used, mut live) = (hp.used as usize, hp.live as usize);
        if ptr::eq(hp, self.cur) && self.bump > self.hole_start {
            let n = (self.bump - self.hole_start) / REGION_GRANULE;
            for g in granule(self.hole_start)..granule(self.hole_start) + n {
                assert!(!test_bit(&occ, g), "open hole not yet marked");
            }
            set_range(&mut occ, granule(self.hole_start), n);
            used += n;
            live += self.hole_allocs;
        }
        for g in 0..hp.first as usize {
            assert!(test_bit(&occ, g), "header granules occupied");
        }
        // The occupied granules after the header are tiled by blocks: walk them by their headers.
        let (mut bytes, mut objects, mut granules, mut blocks, mut internals) = (0, 0, 0, 0, 0);
        let mut g = page::next_bit(&occ, hp.first as usize, true);
        while g < REGION_GRANULES {
            let end = page::next_bit(&occ, g, false);
            while g < end {
                let p = page + g * REGION_GRANULE;
                // SAFETY: an occupied granule after the header starts with a block header.
                let (c, magic) = unsafe { read_block_header(p) };
                let k = c / REGION_GRANULE;
                assert!(c % REGION_GRANULE == 0 && k >= 1 && g + k <= end, "block {p:#x} ({c} bytes) inside its run");
                match magic {
                    MAGIC_LIVE => {
                        bytes += c - 8;
                        objects += 1;
                    }
                    MAGIC_INTERNAL => {
                        assert!(internal.iter().any(|&(q, _)| q == p), "internal block is a cleanup record");
                        internals += 1;
                    }
                    m => panic!("block {p:#x} has magic {m:#x}"),
                }
                granules += k;
                blocks += 1;
                g += k;
            }
            g = page::next_bit(&occ, end, true);
        }
        let records_here = internal.iter().filter(|&&(q, _)| q & !PAGE_MASK == page).count();
        assert_eq!(internals, records_here, "every cleanup record of this page found");
        assert_eq!(granules, used, "used granules");
        assert_eq!(blocks, live, "live blocks");
        (bytes, objects)
    }
}

/// Encodes a pointer into the reservation as a 32-bit offset in 8-byte units (0 for NULL).
pub fn offset_of(p: usize) -> Result<u32, BadPointer> {
    if p == 0 {
        return Ok(0);
    }
    let base = pool::base();
    let off = p.wrapping_sub(base);
    if base == 0 || off >= REGION_RESERVE || off % 8 != 0 || off == 0 {
        return Err(BadPointer::Outside);
    }
    Ok((off / 8) as u32)
}

/// Decodes an offset from [`offset_of`]; `None` when no reservation exists (no offset was ever made).
pub fn at_offset(off: u32) -> Option<usize> {
    if off == 0 {
        return Some(0);
    }
    let base = pool::base();
    (base != 0).then(|| base + off as usize * 8)
}

/// Process-wide pool figures.
pub fn pool_stats() -> pool::PoolStats {
    pool::lock().stats()
}


#[cfg(test)]
mod tests;
