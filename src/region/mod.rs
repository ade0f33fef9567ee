//! Page regions: bump allocation in pages, O(1) per-object free, page recycling, 32-bit compressed
//! pointers (issue 6).
//!
//! A [`Region`] owns pages of the process-wide reservation ([`pool`]). It allocates by bumping a
//! pointer through its current page. `free` finds the block's page by masking the pointer, validates
//! the block by its header (see [`page`]), and drops the page's live count: the last block of the
//! current page gives its space back to the bump pointer (LIFO, and a LIFO unwind goes on page by page
//! through the pages opened before), a block freed in allocation order becomes *dead* so that its page
//! empties whole (FIFO), any other goes on its class's free list. When the current page is used up, the
//! next page is an empty one (the home page, the region's cache of recently emptied pages, else the
//! pool), and if no page emptied lately (random order: pages do not empty) or the pages hold more than
//! 1.5 times the live bytes, allocation takes the listed chunks of its class before bumping. That keeps the footprint bounded
//! when blocks die in random order (the reaps idea, Berger, Zorn and McKinley, OOPSLA 2002), while a
//! queue keeps carving in allocation order even when a few of its blocks die late. A page whose last
//! block dies leaves the region (the home page, which holds the region, is carved again instead): its
//! freed chunks are unlinked from the lists (one walk over the page, paid once per page) and the page
//! goes to the cache or the pool. Blocks larger than a page get a run of contiguous pages, which the pool
//! keeps resident when freed, grows in place and shrinks in place.
//!
//! Costs (x86-64, callgrind, an alloc/free pair with the C calls and their checks, sizes 16-256 B,
//! 1,000 live): FIFO 99 instructions, LIFO stacks 109, random order 128 (glibc 2.36: 152, 290, 150).
//! The fast paths make no call and save no register; everything else is one tail call to a slow path.
//!
//! The region struct itself lives at the start of its first page (the *home* page), after the page
//! header, so that creating a region allocates nothing else; cleanup records live in region pages too.
//!
//! Invariants (walked by [`Region::check`]): every page on the all-list is owned by the region and
//! marked in the pool's page table; the chunks of each small page tile it up to its carving end (the
//! bump pointer for the current page) and its `live` counts the live and internal ones; every freed
//! chunk is on the list of its class and every listed chunk is a freed chunk of a listed page; cached
//! pages are owned, empty and not on the all-list; `live_bytes` and `live_objects` equal the sums over
//! the live user blocks; `peak_bytes >= live_bytes`.

pub mod page;
pub mod pool;

use crate::config::{MIN_ALIGN, REGION_CACHE_PAGES, REGION_GRANULE, REGION_PAGE, REGION_RESERVE};
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering;
use page::{
    class_granules, class_of, granules, read_header, write_header, PageHeader, EXACT_GRANULES,
    EXACT_MAX, FIRST_GRANULE, HEADER_SIZE, KIND_RUN, KIND_SMALL, MAGIC_FREED, MAGIC_INTERNAL, MAGIC_LIVE,
    MAGIC_DEAD, MAGIC_PAD, MAGIC_RUN, MAX_SMALL_GRANULES, NCLASSES, SMALL_MAX,
};
use pool::{table_entry, Pool, T_RUN, T_SMALL, T_TAIL};

const PAGE_MASK: usize = REGION_PAGE - 1;
const REGION_MAGIC: usize = 0x5245_4749_4f4e_2132; // "REGION!2"
/// Offset of the region struct in its home page.
pub const REGION_OFFSET: usize = HEADER_SIZE;
/// First granule blocks may use on a home page.
const HOME_FIRST: usize = page::granules_before(REGION_OFFSET + core::mem::size_of::<Region>());
const _: () = assert!(HOME_FIRST + MAX_SMALL_GRANULES <= crate::config::REGION_GRANULES);
/// What a page that empties adds to [`Region::emptied`]: 4 tolerates two pages carved in a row while
/// none emptied before the region takes the pattern for random order.
const EMPTIED_SCORE: u32 = 4;
/// The largest block a region hands out (the reservation bounds it anyway).
const MAX_BLOCK: usize = REGION_RESERVE / 2;

/// Generation of the small page holding payload `p`.
#[inline(always)]
fn page_gen(p: usize) -> u32 {
    // SAFETY: callers pass payloads of small pages in use, whose headers are committed.
    unsafe { (*((p & !PAGE_MASK) as *const PageHeader)).gen }
}

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
    // --- fast path (the first cache line holds everything a FIFO or LIFO pair touches) ---
    /// `REGION_MAGIC` while the region lives (the C entry points check it).
    magic: usize,
    /// Payload address of the next block carved from the current page.
    bump: usize,
    /// End of the current page: a chunk of `c` bytes fits iff `bump + c <= limit`.
    limit: usize,
    /// The page being carved.
    cur: *mut PageHeader,
    /// The page the last refill left (0: none): LIFO frees that cross back into it shrink its carved
    /// part instead of listing chunks (see `free_small`).
    prev: usize,
    /// The most recently allocated block: `realloc` grows it in place when it is also the last block
    /// carved from the current page.
    last: usize,
    /// Most recently freed-into small page (known to be ours): frees there skip the page-table check.
    /// When frees move on to another page, this one's dead chunks are listed unless it emptied.
    mru: usize,
    /// The reservation's base.
    base: usize,
    live_bytes: usize,
    live_objects: usize,
    peak_bytes: usize,
    /// Per class: the first freed chunk, as a granule index from `base` (0: empty list).
    free: [u32; NCLASSES],
    // --- slow path ---
    home: *mut PageHeader,
    /// Every page in use (small and run heads), linked through `all_prev/all_next`.
    all: *mut PageHeader,
    /// Empty pages, most recently emptied first, linked through `list_next`.
    cache: *mut PageHeader,
    ncache: usize,
    /// Pages in use, counting every page of a run.
    npages: usize,
    callbacks: *mut Callback,
    /// The home page emptied while it was not current: its blocks are forgotten and the next refill
    /// carves it again (it cannot leave the region, which lives in it).
    home_empty: bool,
    /// Score of the pages that emptied (and left, or the home page): [`EMPTIED_SCORE`] per page, halved
    /// whenever the current page is used up. Non-zero: frees are emptying pages (queue order), so the
    /// next page is carved rather than freed chunks reused (see [`Region::alloc_slow`]).
    emptied: u32,
    /// Allocation takes freed chunks before bumping (random order); decided whenever the current page
    /// is used up (see [`Region::alloc_slow`]).
    reuse: bool,
}

/// The links of a freed chunk, in its first payload bytes: granule indexes from the base, `next` 0 at
/// the end of the list; `prev` is meaningful only for a chunk that is not the head of its list.
#[repr(C)]
struct Links {
    next: u32,
    prev: u32,
}

impl Region {
    // ------------------------------------------------------------------ creation and destruction

    /// Creates a region in a fresh page of the pool. `None` when the reservation cannot be made or is full.
    pub fn create() -> Option<NonNull<Region>> {
        pool::register_atfork();
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
                cur: h,
                last: 0,
                prev: 0,
                mru: h as usize,
                base,
                live_bytes: 0,
                live_objects: 0,
                peak_bytes: 0,
                free: [0; NCLASSES],
                magic: REGION_MAGIC,
                home: h,
                all: ptr::null_mut(),
                cache: ptr::null_mut(),
                ncache: 0,
                home_empty: false,
                emptied: 0,
                reuse: false,
                npages: 1,
                callbacks: ptr::null_mut(),
            });
            let reg = &mut *r;
            reg.all_push(hp);
            reg.open_page(h);
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
        r.leave_current();
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
        self.leave_current();
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
        self.free = [0; NCLASSES];
        self.npages = 1;
        self.live_bytes = 0;
        self.live_objects = 0;
        self.mru = self.home as usize;
        self.prev = 0;
        self.home_empty = false;
        self.open_page(self.home);
    }

    /// Gives every page but the home page back (to the cache when `keep_cache` and it has room, else to
    /// the pool), and with `!keep_cache` the cached pages too. The free lists are stale afterwards.
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
            let (k, _) = read_header(p, page_gen(p));
            write_header(p, k, MAGIC_INTERNAL, page_gen(p));
            self.live_objects -= 1;
            self.live_bytes -= k * REGION_GRANULE - 8;
            (p as *mut Callback).write(Callback { func, arg, next: self.callbacks });
        }
        self.callbacks = p as *mut Callback;
        Some(())
    }

    // ------------------------------------------------------------------ free lists

    /// The chunk whose payload has granule index `i` from the base.
    #[inline(always)]
    fn node(&self, i: u32) -> *mut Links {
        (self.base + i as usize * REGION_GRANULE) as *mut Links
    }

    /// Granule index of payload address `p` from the base (never 0 for a block: page 0 is the pool's).
    #[inline(always)]
    fn index(&self, p: usize) -> u32 {
        ((p - self.base) / REGION_GRANULE) as u32
    }

    /// Takes the first chunk off list `c`, if any; returns its payload address.
    #[inline(always)]
    fn pop(&mut self, c: usize) -> Option<usize> {
        let head = self.free[c];
        if head == 0 {
            return None;
        }
        let n = self.node(head);
        // SAFETY: listed chunks are freed chunks of our committed pages; their links are ours.
        // (The new head's `prev` is left stale: a chunk is the head iff the list head names it.)
        self.free[c] = unsafe { (*n).next };
        Some(n as usize)
    }

    /// Puts the freed chunk at `p` (header already says freed) first on list `c`.
    ///
    /// # Safety
    /// `p` is the payload of a freed chunk of class `c` in a small page of ours, on no list.
    #[inline(always)]
    unsafe fn push(&mut self, c: usize, p: usize) {
        let i = self.index(p);
        let head = self.free[c];
        // SAFETY: guaranteed by the caller; the old head is a listed chunk of ours.
        unsafe {
            (p as *mut Links).write(Links { next: head, prev: 0 });
            if head != 0 {
                (*self.node(head)).prev = i;
            }
        }
        self.free[c] = i;
    }

    /// Takes the freed chunk at `p` off list `c`.
    ///
    /// # Safety
    /// `p` is on list `c`.
    unsafe fn unlink(&mut self, c: usize, p: usize) {
        // SAFETY: guaranteed by the caller; neighbours are listed chunks of ours.
        unsafe {
            let Links { next, prev } = (p as *const Links).read();
            if self.free[c] == self.index(p) {
                self.free[c] = next;
            } else {
                (*self.node(prev)).next = next;
            }
            if next != 0 {
                (*self.node(next)).prev = prev;
            }
        }
    }

    /// Takes every freed chunk of the small page `h` off the lists (its chunks tile `[first, end)`).
    fn unlink_page(&mut self, h: &mut PageHeader, end: usize) {
        if h.listed == 0 {
            return;
        }
        h.listed = 0;
        let mut q = h.first_payload();
        while q < end {
            // SAFETY: chunks tile the page up to `end`; every header is ours.
            let (k, state) = unsafe { read_header(q, h.gen) };
            debug_assert!(k >= 1 && matches!(state, MAGIC_FREED | MAGIC_DEAD | MAGIC_PAD), "page holds a live block");
            if state == MAGIC_FREED {
                // SAFETY: a freed chunk is on the list of its class.
                unsafe { self.unlink(class_of(k), q) };
            }
            q += k * REGION_GRANULE;
        }
    }

    // ------------------------------------------------------------------ allocation

    /// Allocates `size` bytes, 16-byte aligned. `None`: out of memory (errno is ENOMEM then).
    #[inline(always)]
    pub fn alloc(&mut self, size: usize) -> Option<NonNull<u8>> {
        NonNull::new(self.alloc_or_null(size))
    }

    /// Allocates `size` bytes, 16-byte aligned, for the C entry points: the block, or NULL with errno
    /// ENOMEM. Fast path: a bump in the current page, else (no page open: the region reuses freed
    /// chunks, see [`Region::alloc_slow`]) a freed chunk of the class; anything else is one (tail) call
    /// to the slow path.
    #[inline(always)]
    pub fn alloc_or_null(&mut self, size: usize) -> *mut u8 {
        if size <= EXACT_MAX {
            let k = granules(size);
            // Freed chunks first only in random order (see `alloc_slow`).
            let p = match if self.reuse { self.pop(k) } else { None } {
                Some(p) => p,
                None => {
                    let p = self.bump;
                    if k * REGION_GRANULE > self.limit - p {
                        return self.alloc_slow_or_null(size);
                    }
                    self.bump = p + k * REGION_GRANULE;
                    p
                }
            };
            // SAFETY: p is a chunk of k granules of one of our small pages, now ours.
            return unsafe { self.finish(p, k) }.as_ptr();
        }
        self.alloc_slow_or_null(size)
    }

    /// The slow path of [`Region::alloc_or_null`].
    #[cold]
    #[inline(never)]
    fn alloc_slow_or_null(&mut self, size: usize) -> *mut u8 {
        match self.alloc_slow(size) {
            Some(p) => p.as_ptr(),
            None => {
                crate::os::set_errno(libc::ENOMEM);
                ptr::null_mut()
            }
        }
    }

    /// Marks the chunk at `p` (of `k` granules, taken from a list or carved) live and counts it.
    ///
    /// # Safety
    /// `p` is the payload of a chunk of `k` granules of a small page of ours that is no block.
    #[inline(always)]
    unsafe fn finish(&mut self, p: usize, k: usize) -> NonNull<u8> {
        // SAFETY: guaranteed by the caller; the page header is ours.
        unsafe {
            let h = &mut *((p & !PAGE_MASK) as *mut PageHeader);
            write_header(p, k, MAGIC_LIVE, h.gen);
            h.live += 1;
        }
        self.last = p;
        self.live_objects += 1;
        self.live_bytes += k * REGION_GRANULE - 8;
        if self.live_bytes > self.peak_bytes {
            self.peak_bytes = self.live_bytes;
        }
        // SAFETY: p is inside a page, never 0.
        unsafe { NonNull::new_unchecked(p as *mut u8) }
    }

    /// The slow path of [`Region::alloc`]: a large block, a block above the exact classes, or the end
    /// of the current page (or of the list of the class when no page is open).
    ///
    /// Where blocks come from decides how FIFO and random order behave, and it is decided whenever the
    /// current page is used up: when pages emptied lately (`emptied`), frees come in allocation order (a
    /// queue) and allocation only carves (`reuse` off), which keeps allocation order equal to address
    /// order, what lets pages empty whole; when none did (random order: pages do not empty), allocation
    /// takes freed chunks of its class before carving (`reuse` on), which bounds the footprint; so does
    /// a footprint above 1.5 times the live bytes (a queue mixed with blocks that die in random order).
    /// So a queue whose order is slightly off (one block freed late) lists a few chunks that nobody
    /// reuses, instead of scattering new blocks into old pages for ever.
    #[cold]
    #[inline(never)]
    fn alloc_slow(&mut self, size: usize) -> Option<NonNull<u8>> {
        if size > SMALL_MAX {
            return self.alloc_run(size, MIN_ALIGN);
        }
        let c = class_of(granules(size));
        let k = class_granules(c);
        if c > EXACT_GRANULES {
            if let Some(p) = self.pop(c) {
                // SAFETY: a listed chunk of class c is ours and free.
                return Some(unsafe { self.finish(p, k) });
            }
        }
        if k * REGION_GRANULE > self.limit - self.bump {
            self.leave_current();
            // A score that decays by half per page carved: a queue, whose pages empty about as often as
            // new ones are carved but not in step with them, keeps it above zero.
            // Reuse also when the pages hold more than 1.5 times the live bytes (a queue mixed with
            // blocks that die in random order: their holes must not pile up while pages keep emptying).
            self.reuse = self.emptied == 0 || self.npages * REGION_PAGE * 2 > self.live_bytes * 3;
            self.emptied /= 2;
            self.open_next()?;
        }
        let p = self.bump;
        self.bump = p + k * REGION_GRANULE;
        // SAFETY: the chunk was carved from our current page.
        Some(unsafe { self.finish(p, k) })
    }

    /// Allocates `size` bytes aligned to `align` (a power of two).
    pub fn alloc_aligned(&mut self, size: usize, align: usize) -> Option<NonNull<u8>> {
        debug_assert!(align.is_power_of_two());
        if align <= MIN_ALIGN {
            return self.alloc(size);
        }
        let k = class_granules(class_of(granules(size).clamp(1, MAX_SMALL_GRANULES)));
        // Small enough to place in a page with its padding?
        if size <= SMALL_MAX && align <= REGION_PAGE / 4 && (k + 1) * REGION_GRANULE + align <= SMALL_MAX {
            loop {
                let p = (self.bump + align - 1) & !(align - 1);
                if p + k * REGION_GRANULE <= self.limit {
                    if p > self.bump {
                        // The gap becomes padding (on no list: it would spoil no later request).
                        // SAFETY: the gap is carved from our current page.
                        unsafe { write_header(self.bump, (p - self.bump) / REGION_GRANULE, MAGIC_PAD, (*self.cur).gen) };
                    }
                    self.bump = p + k * REGION_GRANULE;
                    // SAFETY: the chunk was carved from our current page.
                    return Some(unsafe { self.finish(p, k) });
                }
                self.refill()?;
            }
        }
        self.alloc_run(size, align)
    }

    /// Replaces the current page by an empty one: a cached page, else one from the pool.
    fn refill(&mut self) -> Option<()> {
        self.leave_current();
        self.open_next()
    }

    /// Opens an empty page as the current one (none is open): the emptied home page, else a cached
    /// page, else one from the pool.
    fn open_next(&mut self) -> Option<()> {
        debug_assert!(self.limit == 0);
        if self.home_empty {
            // The emptied home page first: it is on the all-list and counted already.
            self.home_empty = false;
            self.open_page(self.home);
            return Some(());
        }
        let h = if !self.cache.is_null() {
            self.cache_pop()
        } else {
            let h = pool::lock().take_page().ok()?;
            // SAFETY: the pool gave us the page.
            unsafe { PageHeader::init_small(h, self, FIRST_GRANULE) };
            h
        };
        // SAFETY: h is an empty small page of ours.
        unsafe { self.all_push(&mut *h) };
        self.npages += 1;
        self.open_page(h);
        Some(())
    }

    /// Makes the empty page `h` current: carving starts at its first granule.
    fn open_page(&mut self, h: *mut PageHeader) {
        // SAFETY: h is an empty small page of ours.
        let hp = unsafe { &mut *h };
        debug_assert!(hp.live == 0);
        self.cur = h;
        self.bump = hp.first_payload();
        self.limit = hp.addr() + REGION_PAGE;
    }

    /// Closes the current page: its carving end is recorded (an uncarved tail larger than the exact
    /// classes becomes a freed chunk of the largest class it holds, plus padding), it becomes the
    /// `prev` page, and it is recycled if it is empty. Afterwards `cur` is the home page with nothing to
    /// carve.
    fn leave_current(&mut self) {
        if self.limit == 0 {
            return;
        }
        let h = self.cur;
        // SAFETY: the current page is ours.
        let hp = unsafe { &mut *h };
        let mut q = self.bump;
        let mut rest = (self.limit - q) / REGION_GRANULE;
        hp.top = q;
        if rest > EXACT_GRANULES {
            let mut c = class_of(rest.min(MAX_SMALL_GRANULES));
            if class_granules(c) > rest {
                c -= 1;
            }
            let k = class_granules(c);
            // SAFETY: the tail is carved from our current page; the chunk is freed and on no list.
            unsafe {
                write_header(q, k, MAGIC_FREED, hp.gen);
                self.push(c, q);
            }
            hp.listed = 1;
            q += k * REGION_GRANULE;
            rest -= k;
            if rest > 0 {
                // SAFETY: as above.
                unsafe { write_header(q, rest, MAGIC_PAD, hp.gen) };
            }
            hp.top = self.limit;
        }
        self.prev = h as usize;
        self.bump = 0;
        self.limit = 0;
        // No current page until the caller picks one: point at home so `cur` stays valid.
        self.cur = self.home;
        if hp.live == 0 && h != self.home {
            self.unlink_page(hp, hp.top);
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
            write_header(payload, 0, MAGIC_RUN, hp.gen);
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
            return self.free_other_page(p);
        }
        // SAFETY: mru is always a small page of ours.
        unsafe { self.free_small(page, p) }
    }

    /// [`Region::free`] for the C entry point: a bad pointer goes to `bad` (which does not return), so
    /// that the fast path keeps nothing across a call.
    #[inline(always)]
    pub fn free_or(&mut self, p: usize, bad: fn(usize, BadPointer) -> !) {
        let page = p & !PAGE_MASK;
        if page != self.mru {
            // Inline: a small page of ours, and the previous page needs no salvage; else out of line.
            let off = p.wrapping_sub(self.base);
            // SAFETY: the index is inside the reservation (checked first); a small page in use is
            // committed and its `region` field is atomic; mru is a small page of ours.
            let simple = off < REGION_RESERVE
                && unsafe { table_entry(self.base, off / REGION_PAGE) } == T_SMALL
                && ptr::eq(unsafe { (*(page as *const PageHeader)).region.load(Ordering::Relaxed) }, self)
                && unsafe { !(*(self.mru as *const PageHeader)).needs_salvage() };
            if !simple {
                return self.free_other_page_or(p, bad);
            }
            self.mru = page;
        }
        // SAFETY: mru is always a small page of ours.
        if let Err(e) = unsafe { self.free_small(page, p) } {
            bad(p, e)
        }
    }

    #[inline(never)]
    fn free_other_page_or(&mut self, p: usize, bad: fn(usize, BadPointer) -> !) {
        if let Err(e) = self.free_other_page(p) {
            bad(p, e)
        }
    }

    /// [`Region::free`] of a block outside the most recently freed-into page (every free in random
    /// order): validates `p`'s page, remembers it, then frees.
    #[inline(never)]
    fn free_other_page(&mut self, p: usize) -> Result<(), BadPointer> {
        match self.owner_page(p)? {
            (page, KIND_SMALL) => {
                self.set_mru(page);
                // SAFETY: owner_page checked that the page is a small page of ours.
                unsafe { self.free_small(page, p) }
            }
            (page, _) => self.free_run(page, p),
        }
    }

    /// Frees move on to the small page `page` of ours: the previous one's dead chunks are listed unless
    /// it emptied (frees stopped emptying it).
    #[inline(always)]
    fn set_mru(&mut self, page: usize) {
        // SAFETY: mru is always a small page of ours (reset to home when its page leaves).
        let o = unsafe { &mut *(self.mru as *mut PageHeader) };
        self.mru = page;
        if o.needs_salvage() {
            self.salvage(o);
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

    /// Validates `p` as a live block of the small page `page` (of any region) and returns its chunk's
    /// granules: `p` is granule-aligned, after the page's first granule, and the header below it carries
    /// the live state tagged with `p`.
    ///
    /// # Safety
    /// `page` is a small page in use.
    #[inline(always)]
    unsafe fn live_block(page: usize, p: usize) -> Result<usize, BadPointer> {
        // The first granule of an ordinary page bounds every page's (a home page's region struct, after
        // it, holds no word that passes for a live header: the tag ties headers to their address).
        if p % REGION_GRANULE != 0 || p - page < FIRST_GRANULE * REGION_GRANULE {
            return Err(BadPointer::NotLive);
        }
        // SAFETY: guaranteed by the caller; p - 8 lies in the page, after its header.
        let (k, state) = unsafe { read_header(p, (*(page as *const PageHeader)).gen) };
        if state != MAGIC_LIVE {
            return Err(BadPointer::NotLive);
        }
        Ok(k)
    }

    /// # Safety
    /// `page` is a small page of ours.
    #[inline(always)]
    unsafe fn free_small(&mut self, page: usize, p: usize) -> Result<(), BadPointer> {
        // SAFETY: guaranteed by the caller.
        let k = unsafe { Self::live_block(page, p)? };
        // SAFETY: as above.
        let h = unsafe { &mut *(page as *mut PageHeader) };
        self.live_objects -= 1;
        self.live_bytes -= k * REGION_GRANULE - 8;
        h.live -= 1;
        let next = p + k * REGION_GRANULE;
        if p == h.dead_hi {
            // Freed in allocation order: dead, so that the page empties whole (FIFO). Tested first:
            // it is the common case of a queue, and costs no more than giving back the last block.
            // SAFETY: the block is live in our page.
            unsafe { write_header(p, k, MAGIC_DEAD, h.gen) };
            h.dead_lo = h.dead_lo.min(p);
            h.dead_hi = next;
        } else if next == self.bump {
            // The last block carved from the current page: give its space back (LIFO).
            // SAFETY: the block is live in our page.
            unsafe { write_header(p, k, MAGIC_FREED, h.gen) };
            self.bump = p;
            return Ok(());
        // SAFETY: cur is always a page of ours (home when none is open).
        } else if page == self.prev && next == h.top && unsafe { (*self.cur).live } == 0 {
            // The last chunk of the page the last refill left, while the current page is empty: LIFO
            // frees crossing back into it give the space back to its uncarved tail (they would be
            // listed and reused piecemeal else). Random-order frees rarely empty the current page.
            // SAFETY: the block is live in our page.
            unsafe { write_header(p, k, MAGIC_FREED, h.gen) };
            h.top = p;
        } else {
            // SAFETY: as above; then the chunk is freed and on no list; chunks above the exact classes
            // have a class's exact size.
            unsafe {
                write_header(p, k, MAGIC_FREED, h.gen);
                self.push(if k <= EXACT_GRANULES { k } else { class_of(k) }, p);
            }
            h.listed = 1;
        }
        if h.live == 0 {
            self.page_empty(h);
        }
        Ok(())
    }

    /// Where the chunks of the small page `h` end: the bump pointer for the open current page.
    fn carving_end(&self, h: &PageHeader) -> usize {
        if ptr::eq(h, self.cur) && self.limit != 0 {
            self.bump
        } else {
            h.top
        }
    }

    /// Lists the dead chunks of the small page `h`: frees stopped emptying it.
    #[cold]
    #[inline(never)]
    fn salvage(&mut self, h: &mut PageHeader) {
        let (mut q, end) = (h.dead_lo, h.dead_hi);
        while q < end {
            // SAFETY: chunks tile the page; dead_lo is the payload of a chunk; every header is ours.
            let (k, state) = unsafe { read_header(q, h.gen) };
            if state == MAGIC_DEAD {
                // SAFETY: the chunk is dead (freed, on no list); k is a class size.
                unsafe {
                    write_header(q, k, MAGIC_FREED, h.gen);
                    self.push(class_of(k), q);
                }
            }
            q += k * REGION_GRANULE;
        }
        h.dead_lo = usize::MAX;
        h.listed = 1;
    }

    /// The page `h` has no live block left.
    #[cold]
    #[inline(never)]
    fn page_empty(&mut self, h: &mut PageHeader) {
        if ptr::eq(h, self.cur) && self.limit != 0 {
            // Carve it again from the start.
            self.unlink_page(h, self.bump);
            self.bump = h.first_payload();
            h.reset_dead();
        } else if !ptr::eq(h, self.home) {
            self.unlink_page(h, h.top);
            self.page_emptied(h);
        } else {
            // The home page cannot leave the region (which lives in it): its blocks are forgotten and
            // the next refill carves it again, so that FIFO frees recycle it like any other page.
            self.unlink_page(h, h.top);
            h.clear_blocks();
            self.home_empty = true;
            self.emptied = self.emptied.saturating_add(EMPTIED_SCORE);
            if self.prev == h.addr() {
                self.prev = 0;
            }
        }
    }

    /// Recycles the empty, non-current, non-home page `h` (its chunks unlisted): into the cache, or back
    /// to the pool.
    fn page_emptied(&mut self, h: &mut PageHeader) {
        self.emptied = self.emptied.saturating_add(EMPTIED_SCORE);
        if self.prev == h.addr() {
            // LIFO frees that emptied the page the last refill left go on to the page opened before it
            // (the next on the all-list, which is in order of opening): its carved part shrinks too.
            let older = h.all_next;
            // SAFETY: pages on the all-list are ours.
            let small = !older.is_null() && unsafe { (*older).kind } == KIND_SMALL;
            self.prev = if small && older != self.cur { older as usize } else { 0 };
        }
        self.all_remove(h);
        self.npages -= 1;
        if self.mru == h.addr() {
            self.mru = self.home as usize;
        }
        if self.ncache < REGION_CACHE_PAGES {
            h.clear_blocks();
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
        if unsafe { read_header(p, h.gen) }.1 != MAGIC_RUN {
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
        // SAFETY: any_page checked that the page is a small page in use.
        unsafe { Self::live_block(page, p) }.map(|k| k * REGION_GRANULE - 8)
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

    /// Resizes the live block `p` to `size` bytes: in place when it is the most recently allocated block,
    /// the last one carved from the current page, and the page has room (or it shrinks little, or a run has room), else by moving.
    /// `Ok(None)`: out of memory, `p` untouched.
    pub fn realloc(&mut self, p: usize, size: usize) -> Result<Option<NonNull<u8>>, BadPointer> {
        let (page, kind) = self.owner_page(p)?;
        let old_usable = if kind == KIND_RUN {
            // SAFETY: owner_page checked it is our run.
            let h = unsafe { &*(page as *const PageHeader) };
            if h.run_payload != p || h.live != 1 {
                return Err(BadPointer::NotLive);
            }
            if size > SMALL_MAX && size <= MAX_BLOCK {
                if size <= h.run_size && size >= h.run_size / 2 {
                    // SAFETY: p is live.
                    return Ok(Some(unsafe { NonNull::new_unchecked(p as *mut u8) }));
                }
                // Grow over the free pages after the run, or give the pages beyond the new end back.
                let offset = p - page;
                let m = (offset + size).div_ceil(REGION_PAGE);
                let n = h.run_pages;
                let hp = page as *mut PageHeader;
                // SAFETY: the run is ours, of n pages.
                let done = m < n || unsafe { pool::lock().grow_run(hp, n, m) };
                if done {
                    if m < n {
                        // SAFETY: the pages beyond the new end are ours and dead.
                        unsafe { pool::lock().shrink_run(hp, n, m) };
                    }
                    // SAFETY: as above.
                    let h = unsafe { &mut *hp };
                    let old = h.run_size;
                    h.run_pages = m;
                    h.run_size = m * REGION_PAGE - offset;
                    self.npages = self.npages + m - n;
                    self.live_bytes = self.live_bytes + h.run_size - old;
                    if self.live_bytes > self.peak_bytes {
                        self.peak_bytes = self.live_bytes;
                    }
                    // SAFETY: p is live.
                    return Ok(Some(unsafe { NonNull::new_unchecked(p as *mut u8) }));
                }
            }
            h.run_size
        } else {
            // SAFETY: owner_page checked that it is a small page of ours.
            let k = unsafe { Self::live_block(page, p)? };
            let c = k * REGION_GRANULE;
            if size <= SMALL_MAX {
                let nk = class_granules(class_of(granules(size)));
                let nc = nk * REGION_GRANULE;
                if p == self.last && p + c == self.bump && nc <= self.limit - p {
                    // The last block of the current page grows or shrinks in place.
                    self.bump = p + nc;
                    // SAFETY: the block is ours; the new chunk lies in the current page's carved part.
                    unsafe { write_header(p, nk, MAGIC_LIVE, page_gen(p)) };
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
        let mut internal = [0usize; 64];
        let mut ninternal = 0;
        let mut cb = self.callbacks;
        while !cb.is_null() {
            let p = cb as usize;
            // SAFETY: records are internal blocks of our pages.
            let (_, state) = unsafe { read_header(p, page_gen(p)) };
            assert_eq!(state, MAGIC_INTERNAL, "callback record header");
            if ninternal < internal.len() {
                internal[ninternal] = p;
                ninternal += 1;
            }
            // SAFETY: as above.
            cb = unsafe { (*cb).next };
        }
        let (mut bytes, mut objects, mut pages, mut freed) = (0, 0, 0, 0);
        let mut h = self.all;
        let mut saw_home = false;
        let mut saw_cur = false;
        let mut saw_seq = false;
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
            saw_seq |= h as usize == self.mru && hp.kind == KIND_SMALL;
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
                let (b, o, f) = self.check_small(hp, &internal[..ninternal]);
                bytes += b;
                objects += o;
                freed += f;
            }
            h = hp.all_next;
        }
        assert!(saw_home, "home page listed");
        if self.home_empty {
            // SAFETY: the home page is ours.
            let hp = unsafe { &*self.home };
            assert!(hp.live == 0 && hp.listed == 0 && hp.top == hp.first_payload(), "empty home page forgotten");
            assert!(self.cur != self.home || self.limit == 0, "an empty home page is not being carved");
        }
        assert!(saw_cur, "current page listed");
        assert!(saw_seq, "the page of the last free is a listed small page");
        assert!(self.limit == 0 || (self.cur as usize + REGION_PAGE == self.limit && self.bump <= self.limit));
        assert_eq!(pages, self.npages, "pages in use");
        assert_eq!(bytes, self.live_bytes, "live bytes");
        assert_eq!(objects, self.live_objects, "live objects");
        // Every listed chunk is a freed chunk of its class in a listed small page; the lists hold exactly
        // the freed chunks the page walk found.
        let mut listed = 0;
        for c in 1..NCLASSES {
            let mut i = self.free[c];
            let mut prev = 0;
            while i != 0 {
                let p = self.node(i) as usize;
                let page = p & !PAGE_MASK;
                // SAFETY: base is set.
                assert_eq!(unsafe { table_entry(self.base, (page - self.base) / REGION_PAGE) }, T_SMALL);
                // SAFETY: the page is a small page in use, so committed.
                let owner = unsafe { (*(page as *const PageHeader)).region.load(Ordering::Relaxed) };
                assert_eq!(owner, me, "listed chunk in a page of ours");
                // SAFETY: as above.
                let (k, state) = unsafe { read_header(p, page_gen(p)) };
                assert_eq!(state, MAGIC_FREED, "listed chunk {p:#x} is freed");
                assert_eq!(k, class_granules(c), "listed chunk of its class");
                // SAFETY: as above.
                let l = unsafe { (p as *const Links).read() };
                if prev != 0 {
                    assert_eq!(l.prev, prev, "back link");
                }
                prev = i;
                i = l.next;
                listed += 1;
                assert!(listed <= freed, "lists hold more chunks than pages (a cycle?)");
            }
        }
        assert_eq!(listed, freed, "every freed chunk is listed");
        let mut n = 0;
        let mut c = self.cache;
        while !c.is_null() {
            // SAFETY: cached pages are ours.
            let hp = unsafe { &*c };
            assert_eq!(hp.region.load(Ordering::Relaxed), me, "cached page owner");
            assert_eq!(hp.live, 0);
            assert_eq!(hp.cached, 1);
            assert_eq!(hp.top, hp.first_payload());
            c = hp.list_next;
            n += 1;
        }
        assert_eq!(n, self.ncache);
        assert!(self.ncache <= REGION_CACHE_PAGES);
    }

    /// Checks one small page by walking its chunks; returns its user bytes, user blocks and freed chunks.
    fn check_small(&self, hp: &PageHeader, internal: &[usize]) -> (usize, usize, usize) {
        let end = self.carving_end(hp);
        let (mut bytes, mut objects, mut freed, mut live, mut internals, mut dead) = (0, 0, 0, 0, 0, 0);
        let mut q = hp.first_payload();
        while q < end {
            // SAFETY: chunks tile the page up to `end`.
            let (k, state) = unsafe { read_header(q, hp.gen) };
            assert!(k >= 1 && q + k * REGION_GRANULE <= end, "chunk {q:#x} of {k} granules inside the carved part");
            match state {
                MAGIC_LIVE => {
                    assert!(k <= EXACT_GRANULES || class_granules(class_of(k)) == k, "class size");
                    bytes += k * REGION_GRANULE - 8;
                    objects += 1;
                    live += 1;
                }
                MAGIC_INTERNAL => {
                    assert!(internal.contains(&q), "internal block is a cleanup record");
                    internals += 1;
                    live += 1;
                }
                MAGIC_FREED => {
                    assert!(hp.listed != 0, "a page with freed chunks says so");
                    freed += 1
                }
                MAGIC_DEAD => {
                    assert!(q >= hp.dead_lo && q + k * REGION_GRANULE <= hp.dead_hi, "dead chunk inside the dead range");
                    dead += 1
                }
                MAGIC_PAD => {}
                s => panic!("chunk {q:#x} has state {s:#x}"),
            }
            q += k * REGION_GRANULE;
        }
        assert_eq!(q, end, "chunks tile the page");
        let records_here = internal.iter().filter(|&&q| q & !PAGE_MASK == hp.addr()).count();
        assert_eq!(internals, records_here, "every cleanup record of this page found");
        assert_eq!(live, hp.live as usize, "live blocks");
        assert!(dead > 0 || hp.dead_lo == usize::MAX, "a page without dead chunks has no dead range");
        // (The frontier may lie beyond the carving end after LIFO frees moved the bump pointer back.)
        assert!(hp.dead_hi >= hp.first_payload() && hp.dead_hi <= hp.addr() + REGION_PAGE, "dead frontier inside the page");
        (bytes, objects, freed)
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
