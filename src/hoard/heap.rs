//! Thread heaps: each thread allocates from its own heap with no lock and no atomic read-modify-write.
//!
//! A heap holds, per size class, a *current* superblock (allocation pops its free list), partial
//! superblocks in fullness bins (the fullest is taken first; a superblock's bin is set when it enters
//! a partial list and not moved by later frees, which only make it emptier), and full superblocks; plus a few empty
//! superblocks of any class. `u` (`in_use`) is the bytes of blocks handed out from the heap's
//! superblocks, `a` the bytes of the superblocks it holds other than its current ones (`held` minus
//! `cur_held`).
//!
//! **Emptiness invariant (Hoard):** after every free, NOT (`u < a - K*S` and `u < (1 - f) * a`): when both
//! hold, superblocks that are at least f empty move to the global heap until one fails. With f = 1/4 and
//! K = 4 ([`EMPTY_FRACTION_INV`], [`EMPTY_SLACK_SUPERBLOCKS`]), a heap holds at most
//! `max(u + K*S, u / (1 - f))` bytes besides its current superblocks (at most one per class, which
//! never move), so the whole process holds O(live bytes + threads * (K + NCLASSES) * S), whatever the
//! producer/consumer pattern. `u` counts the current superblocks' blocks too, which only makes the test
//! fire less often. Leaving current superblocks out of `a` keeps a heap whose live blocks are spread
//! over many classes from handing superblocks to the global heap and taking them back at the next
//! refill. Blocks freed by other threads still count in `u` until the owner collects them; the owner
//! collects on its slow path before taking a new superblock. When no superblock can move (only current
//! ones remain), the check is disarmed until a superblock enters a partial bin or the empty list, so
//! frees do not keep taking the slow path.
//!
//! Fast paths ([`alloc`], [`free_local`]) and their slow paths sit side by side below.

use super::global;
use super::list::List;
use super::superblock::{self, Block, Place, Superblock};
use super::thread;
use crate::config::{
    EMPTY_FRACTION_INV, EMPTY_SLACK_SUPERBLOCKS, FULLNESS_BINS, FULL_REFILL_FRACTION_INV, FULL_SCAN_LIMIT, HEAP_EMPTY_KEEP,
    OWNED_CACHE_SLOTS, SUPERBLOCK_SHIFT, SUPERBLOCK_SIZE,
};
use crate::size_class::{direct_slot, kind_of, DIRECT_MAX, DIRECT_RANGE, DIRECT_SLOTS, KINDS, NCLASSES};
use core::ptr;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A counter written only by its heap's owner and read by anyone (statistics): a relaxed load and
/// store, which compile to plain moves (no atomic read-modify-write on the fast path).
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A zero counter.
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    /// Adds `n` (owner only).
    #[inline(always)]
    pub fn add(&self, n: u64) {
        // Relaxed: single writer; readers only need some recent value (statistics).
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
    /// Current value.
    #[inline]
    pub fn get(&self) -> u64 {
        // Relaxed: statistics only.
        self.0.load(Ordering::Relaxed)
    }
}

/// Per-heap statistics, summed over all heaps when read.
pub struct HeapStats {
    /// Allocations served (small blocks).
    pub mallocs: Counter,
    /// Frees by the owner.
    pub frees: Counter,
    /// Frees this thread made into superblocks owned by others.
    pub remote_frees: Counter,
    /// Bytes of those.
    pub remote_freed_bytes: Counter,
    /// Bytes of remote frees this heap collected into its superblocks.
    pub collected_bytes: Counter,
}

/// A thread heap. Lives in global metadata memory; reused after its thread exits.
#[repr(C, align(64))]
pub struct Heap {
    /// The current superblock of each request size up to [`DIRECT_MAX`], by [`direct_slot`]: the
    /// allocation fast path for small sizes reads it without computing the class. Every slot of a
    /// class's [`DIRECT_RANGE`] equals `cur` of that class (kept so by [`Heap::set_cur`]).
    pub direct: [*mut Superblock; DIRECT_SLOTS],
    /// Current superblock per class ([`superblock::none()`] when there is none: never null); written
    /// only through [`Heap::set_cur`].
    pub cur: [*mut Superblock; NCLASSES],
    /// Direct-mapped cache of superblocks this heap owns, indexed by `(address >> 16) % slots`; 1 marks
    /// an empty slot (no superblock is at an odd address). Exact: a superblock leaves it when it leaves
    /// the heap, so a hit proves ownership without the address map.
    pub owned: [usize; OWNED_CACHE_SLOTS],
    /// `u - release_below` (wrapping), where `u` is the bytes of blocks handed out from this heap's
    /// superblocks: read `u` through [`Heap::in_use`]. Stored this way so that the owner's free
    /// subtracts the block size and branches on the sign (owner writes, anyone reads).
    slack: AtomicUsize,
    /// When `u` drops below this, the free slow path enforces the emptiness invariant; set through
    /// [`Heap::set_release_below`], which keeps `slack` consistent (owner writes, anyone reads).
    release_below: AtomicUsize,
    /// `a`: bytes of superblocks this heap holds (owner writes, anyone reads).
    pub held: AtomicUsize,
    /// Bytes of its current superblocks (owner only): left out of `a` in the emptiness test.
    cur_held: usize,
    partial: [[List; FULLNESS_BINS]; NCLASSES],
    full: [List; NCLASSES],
    /// Empty superblocks of each kind (small, medium), any class.
    empty: [List; KINDS],
    /// Statistics.
    pub stats: HeapStats,
    /// Next heap on the global list of all heaps (global lock).
    pub all_next: *mut Heap,
    /// Next heap on the global list of unused heaps (global lock).
    pub free_next: *mut Heap,
    /// A thread uses it.
    pub alive: bool,
}

/// The heap of every thread that has none yet: its thread-local slot starts out pointing here, so the
/// fast paths need no null check. Never written: its direct table and current superblocks are the
/// empty placeholder (allocation goes to the slow path, which gives the thread a real heap), and its
/// owned cache is empty (frees go to the checked path).
pub struct NoHeap(Heap);

// SAFETY: NO_HEAP is never written after its constant initialisation; sharing reads is safe.
unsafe impl Sync for NoHeap {}

/// See [`NoHeap`].
pub static NO_HEAP: NoHeap = NoHeap(Heap::empty(&superblock::NO_SUPERBLOCK.0 as *const Superblock as *mut Superblock));

/// The address of [`NO_HEAP`]: "this thread has no heap".
#[inline(always)]
pub fn no_heap() -> *mut Heap {
    &NO_HEAP.0 as *const Heap as *mut Heap
}

/// True when the 64 KiB-aligned `chunk` is a superblock in `h`'s owned cache (so `h` owns it).
///
/// # Safety
/// `h` is a heap or [`no_heap()`].
#[inline(always)]
pub unsafe fn owns(h: *const Heap, chunk: usize) -> bool {
    // The slot's byte offset in one shift and one mask (`owned_slot(chunk) * 8`): indexing with
    // `owned_slot` compiles to one instruction more on the free fast path.
    let off = (chunk >> (SUPERBLOCK_SHIFT - 3)) & ((OWNED_CACHE_SLOTS - 1) << 3);
    // SAFETY: off is a multiple of 8 below OWNED_CACHE_SLOTS * 8: one of the cache's slots.
    unsafe { *(*h).owned.as_ptr().cast::<u8>().add(off).cast::<usize>() == chunk }
}

/// The slot of the owned-superblock cache for the superblock (or 64 KiB chunk) at `addr`.
#[inline(always)]
fn owned_slot(addr: usize) -> usize {
    (addr >> SUPERBLOCK_SHIFT) & (OWNED_CACHE_SLOTS - 1)
}

#[inline(always)]
fn add_usize(a: &AtomicUsize, n: usize) {
    // Relaxed: single writer (the owner); readers want statistics only.
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}
#[inline(always)]
fn sub_usize(a: &AtomicUsize, n: usize) {
    // Relaxed: as in add_usize.
    a.store(a.load(Ordering::Relaxed).wrapping_sub(n), Ordering::Relaxed);
}

impl Heap {
    /// Initialises a heap in place (all lists empty, counters zero).
    ///
    /// # Safety
    /// `h` points to writable, unused memory for a Heap.
    pub unsafe fn init(h: *mut Heap) {
        // SAFETY: the caller gives us the memory; writing a whole Heap initialises it.
        unsafe { ptr::write(h, Heap::empty(superblock::none())) };
    }

    /// A heap with no superblocks: no current superblock in any class (`none` is
    /// [`superblock::none()`], passed in because a constant function cannot name a static), an empty
    /// owned cache, empty lists, zero counters.
    const fn empty(none: *mut Superblock) -> Heap {
        const NO_LIST: List = List::new();
        const NO_BINS: [List; FULLNESS_BINS] = [NO_LIST; FULLNESS_BINS];
        Heap {
            direct: [none; DIRECT_SLOTS],
            cur: [none; NCLASSES],
            owned: [1; OWNED_CACHE_SLOTS],
            slack: AtomicUsize::new(0),
            release_below: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            cur_held: 0,
            partial: [NO_BINS; NCLASSES],
            full: [NO_LIST; NCLASSES],
            empty: [NO_LIST; KINDS],
            stats: HeapStats {
                mallocs: Counter::new(),
                frees: Counter::new(),
                remote_frees: Counter::new(),
                remote_freed_bytes: Counter::new(),
                collected_bytes: Counter::new(),
            },
            all_next: ptr::null_mut(),
            free_next: ptr::null_mut(),
            alive: false,
        }
    }

    /// Makes `sb` (or [`superblock::none()`]) the current superblock of class `c`, in `cur` and in the
    /// class's direct-table slots.
    fn set_cur(&mut self, c: usize, sb: *mut Superblock) {
        let old = self.cur[c];
        if old != superblock::none() {
            // SAFETY: a current superblock is ours.
            self.cur_held -= unsafe { (*old).size() };
        }
        if sb != superblock::none() {
            // SAFETY: the caller passes a superblock of ours.
            self.cur_held += unsafe { (*sb).size() };
        }
        self.recompute_threshold();
        self.cur[c] = sb;
        let (start, end) = DIRECT_RANGE[c];
        for slot in &mut self.direct[start as usize..end as usize] {
            *slot = sb;
        }
    }

    fn recompute_threshold(&mut self) {
        // Current superblocks never move, so they are left out of `a`: counting them would break the
        // invariant for a heap that only has current superblocks and a few others, and make it hand
        // superblocks to the global heap only to take them back at the next refill.
        let a = self.held_not_current();
        let by_slack = a.saturating_sub(EMPTY_SLACK_SUPERBLOCKS * SUPERBLOCK_SIZE);
        let by_fraction = a - a / EMPTY_FRACTION_INV;
        self.set_release_below(by_slack.min(by_fraction));
    }

    /// `a` of the emptiness invariant: bytes of the superblocks this heap holds other than its current
    /// ones (owner only).
    pub fn held_not_current(&self) -> usize {
        // Relaxed: single writer, the owner (the caller).
        self.held.load(Ordering::Relaxed).saturating_sub(self.cur_held)
    }

    /// `u`: bytes of blocks handed out from this heap's superblocks. From another thread, a value the
    /// owner had recently (the two fields are read separately).
    #[inline]
    pub fn in_use(&self) -> usize {
        // Relaxed: both fields have one writer, the owner; readers want statistics or are the owner.
        self.slack.load(Ordering::Relaxed).wrapping_add(self.release_below.load(Ordering::Relaxed))
    }

    /// The threshold below which frees enforce the emptiness invariant.
    #[inline]
    pub fn release_below(&self) -> usize {
        // Relaxed: owner writes; see in_use.
        self.release_below.load(Ordering::Relaxed)
    }

    /// True when `u < release_below`: the emptiness invariant may need restoring.
    #[inline(always)]
    fn below_threshold(&self) -> bool {
        // Relaxed: see in_use. Both values stay far below 2^63, so the sign of the difference decides.
        (self.slack.load(Ordering::Relaxed) as isize) < 0
    }

    /// Moves the threshold, keeping `u` unchanged (owner only).
    fn set_release_below(&mut self, v: usize) {
        let u = self.in_use();
        // Relaxed: single writer (the owner); see in_use.
        self.release_below.store(v, Ordering::Relaxed);
        self.slack.store(u.wrapping_sub(v), Ordering::Relaxed);
    }

    fn bin_of(sb: &Superblock) -> usize {
        ((sb.used() as usize * FULLNESS_BINS) / sb.capacity as usize).min(FULLNESS_BINS - 1)
    }

    /// Puts an owned, detached, non-empty, non-full superblock on the partial list of its fullness bin.
    fn put_partial(&mut self, sb: *mut Superblock) {
        // SAFETY: the caller passes a superblock this heap owns.
        let r = unsafe { &mut *sb };
        let bin = Self::bin_of(r);
        r.place = Place::Partial;
        r.bin = bin as u8;
        // The bin is assigned here, when the superblock leaves the current slot or the full list, and
        // not updated by later frees (a superblock on a partial list only gets emptier, so its bin
        // overstates its fullness): frees take the slow path only when it empties.
        r.set_rebin_below(1);
        // SAFETY: sb is detached and ours.
        unsafe { self.partial[r.class as usize][bin].push_front(sb) };
        self.recompute_threshold();
    }

    fn put_full(&mut self, sb: *mut Superblock) {
        // SAFETY: the caller passes a superblock this heap owns.
        let r = unsafe { &mut *sb };
        r.place = Place::Full;
        // It moves back to a partial bin once an eighth of it is free (at least one block), so that when
        // it becomes current again it serves a run of allocations: under random frees, moving it back at
        // the first free would make superblocks cycle current -> full -> partial every few allocations.
        r.set_rebin_below(r.capacity - (r.capacity / FULL_REFILL_FRACTION_INV).max(1) + 1);
        // SAFETY: sb is detached and ours.
        unsafe { self.full[r.class as usize].push_back(sb) };
    }

    fn put_empty(&mut self, sb: *mut Superblock) {
        // SAFETY: the caller passes a superblock this heap owns.
        let r = unsafe { &mut *sb };
        r.place = Place::Empty;
        r.set_rebin_below(0);
        // SAFETY: sb is detached and ours.
        unsafe { self.empty[kind_of(r.class as usize)].push_front(sb) };
        self.recompute_threshold();
    }

    fn detach(&mut self, sb: *mut Superblock) {
        // SAFETY: sb is ours; its place says which list holds it.
        let r = unsafe { &mut *sb };
        let c = r.class as usize;
        // SAFETY: the superblock is on the list its place names.
        unsafe {
            match r.place {
                Place::Partial => self.partial[c][r.bin as usize].remove(sb),
                Place::Full => self.full[c].remove(sb),
                Place::Empty => self.empty[kind_of(c)].remove(sb),
                Place::Current => self.set_cur(c, superblock::none()),
                _ => {}
            }
        }
        r.place = Place::Detached;
    }

    /// Takes ownership of a superblock that nobody owns (fresh, or from the global heap).
    fn adopt(&mut self, sb: *mut Superblock) {
        let me: *mut Heap = self;
        // SAFETY: the global heap handed sb over under its lock: nobody else uses its owner fields.
        let r = unsafe { &mut *sb };
        // Relaxed: the global lock (Release on unlock) orders the header writes before our use; other
        // threads only compare `owner` with their own heap, which they never see here unless it is theirs.
        r.owner.store(me, Ordering::Relaxed);
        self.owned[owned_slot(sb as usize)] = sb as usize;
        add_usize(&self.held, r.size());
        add_usize(&self.slack, r.used() as usize * r.block_size as usize);
        self.collect(r);
        self.recompute_threshold();
    }

    /// Collects remote frees of an owned superblock, keeping `u` exact.
    fn collect(&mut self, r: &mut Superblock) -> u32 {
        let n = r.collect_remote();
        if n != 0 {
            let bytes = n as usize * r.block_size as usize;
            sub_usize(&self.slack, bytes);
            self.stats.collected_bytes.add(bytes as u64);
        }
        n
    }

    /// Gives an owned, detached superblock to the global heap.
    fn release(&mut self, sb: *mut Superblock) {
        // SAFETY: sb is ours and detached.
        let r = unsafe { &mut *sb };
        let slot = owned_slot(sb as usize);
        if self.owned[slot] == sb as usize {
            self.owned[slot] = 1;
        }
        sub_usize(&self.held, r.size());
        sub_usize(&self.slack, r.used() as usize * r.block_size as usize);
        self.recompute_threshold();
        // SAFETY: sb was ours, is detached, and is off our accounts.
        unsafe { global::give(sb) };
    }

    /// Restores the emptiness invariant: while `u < a - K*S` and `u < (1-f) a`, move a superblock that
    /// is at least f empty (an empty one first, then the emptiest partial ones) to the global heap.
    fn enforce_emptiness(&mut self) {
        while self.below_threshold() {
            let mut victim = self.empty[0].pop_back();
            if victim.is_null() {
                victim = self.empty[1].pop_back();
            }
            if victim.is_null() {
                // Partial bins below 1 - f full, emptiest first.
                let max_bin = FULLNESS_BINS - FULLNESS_BINS / EMPTY_FRACTION_INV;
                'search: for bin in 0..max_bin {
                    for c in 0..NCLASSES {
                        let sb = self.partial[c][bin].pop_back();
                        if !sb.is_null() {
                            victim = sb;
                            break 'search;
                        }
                    }
                }
            }
            if victim.is_null() {
                // Bins are assigned lazily: a superblock in the fullest bin may have emptied since.
                'scan: for c in 0..NCLASSES {
                    let mut sb = self.partial[c][FULLNESS_BINS - 1].head;
                    while !sb.is_null() {
                        // SAFETY: nodes of our lists are our superblocks.
                        let r = unsafe { &*sb };
                        if (r.used() as usize) * EMPTY_FRACTION_INV <= r.capacity as usize * (EMPTY_FRACTION_INV - 1) {
                            // SAFETY: sb is on this list.
                            unsafe { self.partial[c][FULLNESS_BINS - 1].remove(sb) };
                            victim = sb;
                            break 'scan;
                        }
                        sb = r.next;
                    }
                }
            }
            if victim.is_null() {
                // Nothing can go (only current superblocks remain): stop checking on every free until
                // a superblock enters a partial bin or the empty list again (which re-arms the check).
                self.set_release_below(0);
                return;
            }
            // SAFETY: victim was just taken off one of our lists.
            unsafe { (*victim).place = Place::Detached };
            self.release(victim);
        }
    }

    /// Finds a superblock with free blocks for class `c` and makes it current; false when out of memory.
    fn refill(&mut self, c: usize) -> bool {
        let sb = self.find(c);
        if sb.is_null() {
            return false;
        }
        // SAFETY: find returns an owned, detached superblock of class c.
        let r = unsafe { &mut *sb };
        r.place = Place::Current;
        r.set_rebin_below(0);
        self.set_cur(c, sb);
        true
    }

    fn find(&mut self, c: usize) -> *mut Superblock {
        // 1. The fullest partial superblock.
        for bin in (0..FULLNESS_BINS).rev() {
            let sb = self.partial[c][bin].pop_front();
            if !sb.is_null() {
                return sb;
            }
        }
        // 2. Full superblocks that received remote frees (a bounded, rotating scan).
        for _ in 0..FULL_SCAN_LIMIT.min(self.full[c].len) {
            let sb = self.full[c].pop_front();
            // SAFETY: sb was on our full list.
            let r = unsafe { &mut *sb };
            if self.collect(r) != 0 {
                return sb;
            }
            // SAFETY: sb is detached again and ours.
            unsafe { self.full[c].push_back(sb) };
        }
        // 3. One of our empty superblocks, re-formatted for this class.
        let me: *mut Heap = self;
        let sb = self.empty[kind_of(c)].pop_front();
        if !sb.is_null() {
            // SAFETY: an empty superblock we own: no live blocks, no remote frees pending (it was
            // empty when it got here and only we allocate from it).
            unsafe { Superblock::init(sb, c, me, (*sb).touched) };
            return sb;
        }
        // 4. The global heap: a partial superblock of this class, an empty one, or a new one. A
        // superblock abandoned full by an exited thread may have no free block yet: keep it as full.
        loop {
            let sb = global::take(c, me);
            if sb.is_null() {
                return sb;
            }
            self.adopt(sb);
            // SAFETY: sb is now ours.
            if unsafe { (*sb).used() < (*sb).capacity } {
                return sb;
            }
            self.put_full(sb);
        }
    }

    /// Walks the invariants of this heap and all its superblocks (owner thread only).
    pub fn check(&self) {
        let me = self as *const Heap as *mut Heap;
        let mut u = 0usize;
        let mut held = 0usize;
        let mut visit = |r: &Superblock, place: Place| {
            // Relaxed: we are the owner; the owner field only changes through us.
            assert_eq!(r.owner.load(Ordering::Relaxed), me, "owner");
            assert_eq!(r.place, place, "place");
            r.check();
            u += r.used() as usize * r.block_size as usize;
            held += r.size();
        };
        for c in 0..NCLASSES {
            if self.cur[c] != superblock::none() {
                // SAFETY: current superblocks are valid and ours.
                let r = unsafe { &*self.cur[c] };
                assert_eq!(r.class as usize, c);
                visit(r, Place::Current);
            }
            for bin in 0..FULLNESS_BINS {
                self.partial[c][bin].check(|r| {
                    assert_eq!(r.class as usize, c);
                    assert_eq!(r.bin as usize, bin);
                    visit(r, Place::Partial)
                });
            }
            self.full[c].check(|r| visit(r, Place::Full));
        }
        for (k, list) in self.empty.iter().enumerate() {
            list.check(|r| {
                assert_eq!(r.used(), 0, "empty superblock has live blocks");
                assert_eq!(kind_of(r.class as usize), k, "empty superblock on the list of its kind");
                visit(r, Place::Empty)
            });
        }
        assert_eq!(u, self.in_use(), "u equals the sum of used blocks");
        for c in 0..NCLASSES {
            let (start, end) = DIRECT_RANGE[c];
            for slot in start as usize..end as usize {
                assert_eq!(self.direct[slot], self.cur[c], "direct slot {slot} follows class {c}");
            }
        }
        for (i, &sb) in self.owned.iter().enumerate() {
            if sb != 1 {
                assert_eq!(owned_slot(sb), i, "owned-cache slot");
                // SAFETY: cached superblocks are ours (the cache is cleared when one leaves).
                // Relaxed: we are the owner.
                assert_eq!(unsafe { (*(sb as *const Superblock)).owner.load(Ordering::Relaxed) }, me, "owned cache is exact");
            }
        }
        assert_eq!(held, self.held.load(Ordering::Relaxed), "a equals the superblocks held");
        // SAFETY: current superblocks are valid and ours.
        let cur_held: usize = self.cur.iter().filter(|&&sb| sb != superblock::none()).map(|&sb| unsafe { (*sb).size() }).sum();
        assert_eq!(cur_held, self.cur_held, "cur_held equals the current superblocks' bytes");
    }
}

// ---------------------------------------------------------------------------------------------------
// Allocation: fast path and slow path.
// ---------------------------------------------------------------------------------------------------

/// Allocates a block of class `c` from heap `h`: pops the current superblock's free list. One branch
/// to the slow path when there is no current superblock or its list is empty.
///
/// # Safety
/// `h` is the calling thread's heap.
#[inline(always)]
pub unsafe fn alloc(h: *mut Heap, c: usize) -> *mut u8 {
    // SAFETY: h is the caller's own heap, cur[c] its current superblock of class c (or the placeholder).
    unsafe {
        let b = pop(h, (*h).cur[c]);
        if !b.is_null() {
            return b;
        }
        alloc_slow(h, c)
    }
}

/// Pops a block for a request of `size <= DIRECT_MAX` bytes from the current superblock of its class,
/// read from the direct table (no class computation); null when that superblock has no free block
/// (or `h` is [`no_heap()`]): the caller then takes [`alloc`]'s path, whose slow path refills.
///
/// # Safety
/// `h` is the calling thread's heap or [`no_heap()`].
#[inline(always)]
pub unsafe fn pop_direct(h: *mut Heap, size: usize) -> *mut u8 {
    debug_assert!(size <= DIRECT_MAX);
    // SAFETY: a direct slot holds the current superblock of the size's class, or the never-written
    // placeholder (always so in NO_HEAP), whose free list is empty: pop writes nothing then.
    unsafe { pop(h, (*h).direct[direct_slot(size)]) }
}

/// Pops a block off `sb`'s free list and counts it; null when the list is empty.
///
/// # Safety
/// `h` is the calling thread's heap and `sb` one of its current superblocks or the never-written
/// placeholder, whose free list is empty.
#[inline(always)]
unsafe fn pop(h: *mut Heap, sb: *mut Superblock) -> *mut u8 {
    // SAFETY: see the function's contract: only the owner touches sb's free list and counts.
    unsafe {
        let b = (*sb).free;
        if b.is_null() {
            return ptr::null_mut();
        }
        (*sb).free = (*b).next;
        (*sb).add_used(1);
        add_usize(&(*h).slack, (*sb).block_size as usize);
        (*h).stats.mallocs.add(1);
        b.cast()
    }
}

/// The allocation slow path: collects remote frees into the current superblock, carves fresh blocks,
/// or retires it and finds another; then calls the fast path again. Null when out of memory.
///
/// # Safety
/// As for [`alloc`].
#[cold]
#[inline(never)]
pub unsafe fn alloc_slow(h: *mut Heap, c: usize) -> *mut u8 {
    // SAFETY: h is the caller's own heap (no one else touches it).
    let heap = unsafe { &mut *h };
    let sb = heap.cur[c];
    if sb != superblock::none() {
        // SAFETY: the current superblock is ours.
        let r = unsafe { &mut *sb };
        if heap.collect(r) == 0 && !r.carve() {
            heap.set_cur(c, superblock::none());
            r.place = Place::Detached;
            heap.put_full(sb);
        }
    }
    if heap.cur[c] == superblock::none() && !heap.refill(c) {
        crate::os::set_errno(libc::ENOMEM);
        return ptr::null_mut();
    }
    // SAFETY: cur[c] is now a superblock with free, remote or untouched blocks: carve if the list is
    // still empty (a fresh or re-formatted superblock).
    unsafe {
        let r = &mut *heap.cur[c];
        if r.free.is_null() && heap.collect(r) == 0 && !r.carve() {
            crate::diag::fatal(format_args!("heap: refill returned a superblock without free blocks"));
        }
        alloc(h, c)
    }
}

// ---------------------------------------------------------------------------------------------------
// Free: local fast path, remote path, slow path.
// ---------------------------------------------------------------------------------------------------

/// Frees block `p` of superblock `sb`. The owner pushes it on the superblock's free list (no atomic);
/// any other thread pushes it on the superblock's `thread_free` with one compare-exchange. `record`:
/// report the call to the trace recorder (entry points do; frees inside realloc do not).
///
/// # Safety
/// `p` is a live block of `sb` (checked by the caller), and is given up.
#[inline(always)]
pub unsafe fn free(sb: *mut Superblock, p: *mut u8, record: bool, func: &str) {
    let h = thread::current();
    let b = p.cast::<Block>();
    // SAFETY: sb is a superblock of ours (address map) and p a live block of it (caller).
    unsafe {
        // Relaxed: only this thread can make the owner equal to its own heap or change it from that.
        // The owner is never null (GLOBAL_OWNER in the global heap), so a thread without a heap (h
        // null, or tracing) never takes the local path here.
        if (*sb).owner.load(Ordering::Relaxed) == h {
            free_local(h, sb, b, func);
            return;
        }
        free_other(sb, b, record, func);
    }
}

/// The owner's free: push on the superblock's list; the slow path when the superblock changes
/// fullness group or the heap breaks the emptiness invariant.
///
/// # Safety
/// `h` is the calling thread's heap and owns `sb`; `b` is a live block of `sb`, given up.
#[inline(always)]
pub(super) unsafe fn free_local(h: *mut Heap, sb: *mut Superblock, b: *mut Block, func: &str) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let head = (*sb).free;
        // A block freed twice in a row is still the head of its list: caught for one comparison. The
        // slow path aborts; reaching it by a jump keeps this path free of calls (and of a stack frame).
        if head == b {
            free_slow(h, sb, DOUBLE_FREE, func);
            return;
        }
        (*b).next = head;
        (*sb).free = b;
        (*h).stats.frees.add(1);
        // Each difference is updated and tested at once, so the branch uses the flags of the update.
        // `used < rebin_below`: the superblock crossed its fullness boundary.
        (*sb).sub_used(1);
        if (*sb).headroom < 0 {
            free_slow(h, sb, (*sb).block_size as usize, func);
            return;
        }
        // `u < release_below`: the emptiness invariant may be broken.
        let slack = (*h).slack.load(Ordering::Relaxed).wrapping_sub((*sb).block_size as usize);
        // Relaxed: single writer (the owner); see Heap::in_use.
        (*h).slack.store(slack, Ordering::Relaxed);
        if (slack as isize) < 0 {
            free_slow(h, sb, 0, func);
        }
    }
}

/// A free that missed the owner's fast path: a remote free into a superblock owned by another heap
/// (or the global heap), or any free while tracing.
///
/// # Safety
/// As for [`free`].
#[inline(never)]
unsafe fn free_other(sb: *mut Superblock, b: *mut Block, record: bool, func: &str) {
    if record {
        crate::trace::record(crate::trace::Op::Free, ptr::null_mut(), b.cast(), 0, 0);
    }
    let h = thread::traced();
    // SAFETY: sb is ours (address map), b a live block of it given up by the caller.
    unsafe {
        // Relaxed: as in `free`.
        if !h.is_null() && (*sb).owner.load(Ordering::Relaxed) == h {
            free_local(h, sb, b, func);
            return;
        }
        // A thread that only frees (a consumer) gets a heap too, so that its counters are its own: the
        // process-wide fallback counters are atomics every such thread would contend on.
        let mut h = thread::any();
        if h.is_null() {
            h = global::heap_for_thread();
        }
        let size = (*sb).block_size as u64;
        if !(*sb).push_remote(b) {
            double_free(func, b);
        }
        if h.is_null() {
            global::count_remote_free(size);
        } else {
            (*h).stats.remote_frees.add(1);
            (*h).stats.remote_freed_bytes.add(size);
        }
    }
}

/// `pending` value of [`free_slow`] for a block freed twice.
const DOUBLE_FREE: usize = usize::MAX;

#[cold]
#[inline(never)]
fn double_free(func: &str, b: *mut Block) -> ! {
    crate::diag::invalid_pointer(func, b.cast(), "double free: the block is already free")
}

/// The local free slow path: moves the superblock between fullness groups (full -> partial, bin
/// changes, empty) and restores the emptiness invariant. `pending`: bytes the fast path has not yet
/// taken off `u` (it branches here before that update when the superblock crossed its boundary), or
/// [`DOUBLE_FREE`]: the freed block is the head of the superblock's free list (abort, naming `func`).
///
/// # Safety
/// `h` is the calling thread's heap and owns `sb`.
#[cold]
#[inline(never)]
unsafe fn free_slow(h: *mut Heap, sb: *mut Superblock, pending: usize, func: &str) {
    // SAFETY: h is ours and owns sb.
    let (heap, r) = unsafe { (&mut *h, &mut *sb) };
    if pending == DOUBLE_FREE {
        double_free(func, r.free);
    }
    sub_usize(&heap.slack, pending);
    if r.place != Place::Current && r.headroom < 0 {
        heap.detach(sb);
        if r.used() == 0 {
            heap.put_empty(sb);
            let k = kind_of(r.class as usize);
            if heap.empty[k].len > HEAP_EMPTY_KEEP[k] {
                let old = heap.empty[k].pop_back();
                // SAFETY: old was just taken off our empty list.
                unsafe { (*old).place = Place::Detached };
                heap.release(old);
            }
        } else {
            heap.put_partial(sb);
        }
    }
    heap.enforce_emptiness();
}

/// Abandons a heap whose thread exits: every superblock goes to the global heap (where other threads
/// adopt them; frees that arrive later land on the superblocks' remote lists), and the heap is recycled.
///
/// # Safety
/// `h` is the exiting thread's heap and is not used by it afterwards.
pub unsafe fn abandon(h: *mut Heap) {
    // SAFETY: the exiting thread owns h.
    let heap = unsafe { &mut *h };
    for c in 0..NCLASSES {
        let sb = heap.cur[c];
        if sb != superblock::none() {
            heap.set_cur(c, superblock::none());
            // SAFETY: the current superblock is ours.
            unsafe { (*sb).place = Place::Detached };
            heap.release_collected(sb);
        }
        for bin in 0..FULLNESS_BINS {
            loop {
                let sb = heap.partial[c][bin].pop_front();
                if sb.is_null() {
                    break;
                }
                heap.release_collected(sb);
            }
        }
        loop {
            let sb = heap.full[c].pop_front();
            if sb.is_null() {
                break;
            }
            heap.release_collected(sb);
        }
    }
    for k in 0..KINDS {
        loop {
            let sb = heap.empty[k].pop_front();
            if sb.is_null() {
                break;
            }
            heap.release_collected(sb);
        }
    }
    // SAFETY: every superblock went to the global heap above; the thread no longer uses h.
    unsafe { global::recycle_heap(h) };
}

impl Heap {
    fn release_collected(&mut self, sb: *mut Superblock) {
        // SAFETY: sb is ours and detached.
        let r = unsafe { &mut *sb };
        r.place = Place::Detached;
        self.collect(r);
        self.release(sb);
    }
}

/// The pthread key whose destructor abandons an exiting thread's heap.
#[cfg(not(target_arch = "x86_64"))]
pub fn thread_key() -> libc::pthread_key_t {
    global::thread_key()
}

impl Heap {
    /// Gives every empty superblock of this heap to the global heap (for trim).
    pub fn give_back_empty(&mut self) {
        for k in 0..KINDS {
            loop {
                let sb = self.empty[k].pop_front();
                if sb.is_null() {
                    break;
                }
                self.release_collected(sb);
            }
        }
    }
}
