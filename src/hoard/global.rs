//! The global heap: superblocks that no thread heap owns, the segments superblocks are carved from, the
//! heap structures, and the process-wide statistics and set-up (options, thread-exit key, fork handlers).
//!
//! Everything here is behind one lock (`GLOBAL`); thread heaps come here only on their slow paths (when
//! they need a superblock they do not have, or give one back to restore the emptiness invariant).
//!
//! Invariants: every superblock on `partial[c]` has class `c`, owner null and at least one live block;
//! every superblock on `empty` or `purged` has no live block and owner `GLOBAL_OWNER`; `purged` superblocks have
//! had their pages after the header given back to the OS; `empty` is ordered newest first.

use super::addrmap;
use super::heap::{self, Heap};
use super::list::List;
use super::superblock::{Place, Superblock, GLOBAL_OWNER};
use super::thread;
use crate::config::{PAGE_SIZE, SEGMENT_SIZE, SUPERBLOCK_SIZE};
use crate::size_class::{kind_of, KINDS, SUPERBLOCK_BYTES};
use crate::os;
use crate::size_class::NCLASSES;
use crate::sync::{Mutex, Once};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

struct Global {
    partial: [List; NCLASSES],
    /// Empty superblocks of each kind, newest first.
    empty: [List; KINDS],
    /// Empty superblocks whose data pages went back to the OS, of each kind.
    purged: [List; KINDS],
    /// The segment being carved, per kind.
    seg_cur: [usize; KINDS],
    seg_end: [usize; KINDS],
    meta_cur: usize,
    meta_end: usize,
    all_heaps: *mut Heap,
    free_heaps: *mut Heap,
}

// SAFETY: the raw pointers in Global are only followed under the GLOBAL lock.
unsafe impl Send for Global {}

static GLOBAL: Mutex<Global> = Mutex::new(Global {
    partial: [const { List::new() }; NCLASSES],
    empty: [const { List::new() }; KINDS],
    purged: [const { List::new() }; KINDS],
    seg_cur: [0; KINDS],
    seg_end: [0; KINDS],
    meta_cur: 0,
    meta_end: 0,
    all_heaps: ptr::null_mut(),
    free_heaps: ptr::null_mut(),
});

static INIT: Once = Once::new();
static KEY: AtomicU32 = AtomicU32::new(0);

/// Process-wide counters (slow paths only; Relaxed: statistics, no ordering with other data).
pub struct GlobalStats {
    /// Bytes committed: superblocks not purged, large spans, heap metadata.
    pub committed: AtomicUsize,
    /// Highest value `committed` reached.
    pub peak_committed: AtomicUsize,
    /// Address space reserved.
    pub reserved: AtomicUsize,
    /// Superblocks in the global heap.
    pub global_superblocks: AtomicUsize,
    /// Superblocks ever carved (thread heaps hold `total - global`).
    pub total_superblocks: AtomicUsize,
    /// Heap structures in existence.
    pub heaps: AtomicUsize,
    /// Trim calls.
    pub trims: AtomicU64,
    /// Remote frees by threads that had no heap (and their bytes).
    pub remote_frees_no_heap: AtomicU64,
    /// Bytes of those.
    pub remote_bytes_no_heap: AtomicU64,
    /// Bytes of remote frees collected into global superblocks by `sweep`.
    pub collected_by_sweep: AtomicU64,
}

/// The process-wide counters.
pub static STATS: GlobalStats = GlobalStats {
    committed: AtomicUsize::new(0),
    peak_committed: AtomicUsize::new(0),
    reserved: AtomicUsize::new(0),
    global_superblocks: AtomicUsize::new(0),
    total_superblocks: AtomicUsize::new(0),
    heaps: AtomicUsize::new(0),
    trims: AtomicU64::new(0),
    remote_frees_no_heap: AtomicU64::new(0),
    remote_bytes_no_heap: AtomicU64::new(0),
    collected_by_sweep: AtomicU64::new(0),
};

/// Adds to the committed bytes and raises the peak.
pub fn commit_add(n: usize) {
    // Relaxed: statistics.
    let now = STATS.committed.fetch_add(n, Ordering::Relaxed) + n;
    STATS.peak_committed.fetch_max(now, Ordering::Relaxed);
}

/// Subtracts from the committed bytes.
pub fn commit_sub(n: usize) {
    // Relaxed: statistics.
    STATS.committed.fetch_sub(n, Ordering::Relaxed);
}

/// Counts a remote free by a thread without a heap.
pub fn count_remote_free(bytes: u64) {
    // Relaxed: statistics.
    STATS.remote_frees_no_heap.fetch_add(1, Ordering::Relaxed);
    STATS.remote_bytes_no_heap.fetch_add(bytes, Ordering::Relaxed);
}

/// Milliseconds of a monotonic clock (the coarse one: a vDSO read, no system call).
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// One-time set-up, safe from any thread and before `main`: options, the trace recorder, the
/// thread-exit key, the fork handlers. Allocates nothing.
#[inline]
pub fn ensure_init() {
    INIT.call_once(init);
}

fn init() {
    crate::options::load();
    crate::trace::init_from_env();
    if os::page_size() > PAGE_SIZE {
        crate::diag::fatal(format_args!("malloc: page size {} is not supported", os::page_size()));
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: key is a valid out-parameter; the destructor has the right signature. pthread_key_create
    // does not allocate.
    if unsafe { libc::pthread_key_create(&mut key, Some(on_thread_exit)) } != 0 {
        crate::diag::fatal(format_args!("malloc: pthread_key_create failed"));
    }
    // Relaxed: published by INIT's completion (Release/Acquire).
    KEY.store(key, Ordering::Relaxed);
    // SAFETY: the handlers are valid for the life of the process; glibc stores the first handlers
    // without allocating.
    unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
}

/// The thread-exit key.
pub fn thread_key() -> libc::pthread_key_t {
    // Relaxed: set before INIT completed; every caller runs after ensure_init.
    KEY.load(Ordering::Relaxed)
}

extern "C" fn on_thread_exit(arg: *mut libc::c_void) {
    let h = arg.cast::<Heap>();
    if h.is_null() {
        return;
    }
    if thread::current() == h {
        thread::set_current(ptr::null_mut());
    }
    if thread::traced() == h {
        thread::set_traced(ptr::null_mut());
    }
    // SAFETY: h was this thread's heap (set with pthread_setspecific when it was created); the thread
    // no longer uses it: its TLS slot is cleared, so a later malloc in this thread makes a new heap.
    unsafe { heap::abandon(h) };
}

/// Runs when the process exits (the library's `.fini_array`): prints the statistics if
/// `RALLOCS_SHOW_STATS=1`.
extern "C" fn at_exit() {
    if INIT.is_completed() && crate::options::SHOW_STATS.get() != 0 {
        super::print_stats(2);
    }
}

#[used]
#[link_section = ".fini_array"]
static AT_EXIT: extern "C" fn() = at_exit;

extern "C" fn fork_prepare() {
    super::large::lock_for_fork();
    GLOBAL.lock_forever();
}

extern "C" fn fork_parent() {
    // SAFETY: fork_prepare took both locks in this thread.
    unsafe {
        GLOBAL.unlock_forgotten();
        super::large::unlock_after_fork();
    }
}

extern "C" fn fork_child() {
    // SAFETY: the child has one thread, which took both locks in fork_prepare.
    unsafe {
        GLOBAL.unlock_forgotten();
        super::large::unlock_after_fork();
    }
    // The heaps of the parent's other threads have no thread in the child. They are left as they are:
    // such a thread may have been in the middle of a list operation on its own heap when the parent
    // forked, so walking them could corrupt the child. Their memory stays reserved in the child; blocks
    // the child frees into their superblocks go to the remote lists, as for any other owner.
}

/// The calling thread's heap, creating (or recycling) one on first use; null when out of memory.
#[cold]
#[inline(never)]
pub fn heap_for_thread() -> *mut Heap {
    ensure_init();
    let h = {
        let mut g = GLOBAL.lock();
        let h = if !g.free_heaps.is_null() {
            let h = g.free_heaps;
            // SAFETY: heaps on the free list are valid and unused.
            g.free_heaps = unsafe { (*h).free_next };
            h
        } else {
            let h = match alloc_meta(&mut g, core::mem::size_of::<Heap>()) {
                Some(p) => p.cast::<Heap>(),
                None => return ptr::null_mut(),
            };
            // SAFETY: fresh metadata memory, sized for a Heap.
            unsafe {
                Heap::init(h);
                (*h).all_next = g.all_heaps;
            }
            g.all_heaps = h;
            // Relaxed: statistics.
            STATS.heaps.fetch_add(1, Ordering::Relaxed);
            h
        };
        // SAFETY: h is now exclusively ours.
        unsafe { (*h).alive = true };
        h
    };
    // Set the TLS slot before the key: pthread_setspecific may call calloc for keys past the first 32,
    // and that call must find this heap instead of recursing here. While tracing, the heap goes in the
    // second slot so that every call takes a slow path, where it is recorded.
    if crate::trace::enabled() {
        thread::set_traced(h);
    } else {
        thread::set_current(h);
    }
    // SAFETY: the key was created in init.
    unsafe { libc::pthread_setspecific(thread_key(), h.cast()) };
    h
}

/// Returns an abandoned heap (all superblocks already given back) to the free list.
///
/// # Safety
/// `h` is a heap of ours that no thread uses any more and that holds no superblock.
pub unsafe fn recycle_heap(h: *mut Heap) {
    let mut g = GLOBAL.lock();
    // SAFETY: h is a heap nobody uses any more.
    unsafe {
        (*h).alive = false;
        (*h).free_next = g.free_heaps;
    }
    g.free_heaps = h;
}

fn alloc_meta(g: &mut Global, size: usize) -> Option<*mut u8> {
    let size = os::align_up(size, 64)?;
    if g.meta_end - g.meta_cur < size {
        let chunk = os::align_up(size.max(SUPERBLOCK_SIZE), os::page_size())?;
        let p = os::map(chunk, os::page_size()).ok()?;
        // Relaxed: statistics.
        STATS.reserved.fetch_add(chunk, Ordering::Relaxed);
        commit_add(chunk);
        g.meta_cur = p.as_ptr() as usize;
        g.meta_end = g.meta_cur + chunk;
    }
    let p = g.meta_cur as *mut u8;
    g.meta_cur += size;
    Some(p)
}

fn new_superblock(g: &mut Global, kind: usize) -> *mut Superblock {
    let size = SUPERBLOCK_BYTES[kind];
    if g.seg_cur[kind] == g.seg_end[kind] {
        let seg = match os::map(SEGMENT_SIZE, SUPERBLOCK_SIZE) {
            Ok(p) => p.as_ptr() as usize,
            Err(_) => return ptr::null_mut(),
        };
        // Relaxed: statistics.
        STATS.reserved.fetch_add(SEGMENT_SIZE, Ordering::Relaxed);
        g.seg_cur[kind] = seg;
        g.seg_end[kind] = seg + SEGMENT_SIZE;
    }
    let sb = g.seg_cur[kind];
    // A small superblock is one chunk of the address map; a medium one is 16, each saying how far back
    // its start is.
    let chunks = size / SUPERBLOCK_SIZE;
    for i in 0..chunks {
        let k = if kind == 0 { addrmap::SUPERBLOCK } else { addrmap::MEDIUM | i as u8 };
        if addrmap::set(sb + i * SUPERBLOCK_SIZE, k).is_err() {
            for j in 0..i {
                let _ = addrmap::set(sb + j * SUPERBLOCK_SIZE, addrmap::NONE);
            }
            return ptr::null_mut();
        }
    }
    g.seg_cur[kind] += size;
    // Only the header page counts as committed until carving reaches more pages.
    commit_add(PAGE_SIZE);
    // Relaxed: statistics.
    STATS.total_superblocks.fetch_add(1, Ordering::Relaxed);
    sb as *mut Superblock
}

/// Gives the data pages of empty superblocks that have sat in the global heap for the purge delay (all
/// of them when `all`) back to the OS. Returns the bytes released.
fn purge(g: &mut Global, all: bool) -> usize {
    let delay = crate::options::PURGE_DELAY_MS.get();
    let now = if all || delay == 0 { u64::MAX } else { now_ms() };
    let mut released = 0;
    for (kind, &bytes) in SUPERBLOCK_BYTES.iter().enumerate() {
        let data_len = bytes - PAGE_SIZE;
        loop {
            let sb = g.empty[kind].tail;
            // SAFETY: nodes of the global lists are valid superblocks owned by the global heap.
            if sb.is_null() || (!all && delay != 0 && now.saturating_sub(unsafe { (*sb).empty_since_ms }) < delay) {
                break;
            }
            g.empty[kind].pop_back();
            let data = sb as usize + PAGE_SIZE;
            // SAFETY: the superblock is empty and owned by the global heap: its data pages are dead.
            if unsafe { os::reset(NonNull::new_unchecked(data as *mut u8), data_len) }.is_ok() {
                // SAFETY: as above.
                let r = unsafe { &mut *sb };
                r.purged = true;
                let freed = r.touched as usize - PAGE_SIZE;
                r.touched = PAGE_SIZE as u32;
                commit_sub(freed);
                released += freed;
            }
            // SAFETY: sb is detached.
            unsafe { g.purged[kind].push_front(sb) };
        }
    }
    released
}

/// Takes a superblock for class `c` from the global heap for heap `owner`: a partial one of the class
/// (already formatted, owner still to be set by `Heap::adopt`), else an empty one re-formatted, else a
/// new one. Null when out of memory.
pub fn take(c: usize, owner: *mut Heap) -> *mut Superblock {
    let mut g = GLOBAL.lock();
    purge(&mut g, false);
    let sb = g.partial[c].pop_front();
    if !sb.is_null() {
        // Relaxed: statistics.
        STATS.global_superblocks.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: sb came off our list.
        unsafe { (*sb).place = Place::Detached };
        return sb;
    }
    let kind = kind_of(c);
    let mut sb = g.empty[kind].pop_front();
    if sb.is_null() && g.purged[kind].is_empty() && sweep(&mut g) != 0 {
        sb = g.empty[kind].pop_front();
    }
    if sb.is_null() {
        sb = g.purged[kind].pop_front();
    }
    let touched = if !sb.is_null() {
        // Relaxed: statistics.
        STATS.global_superblocks.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: an empty superblock of ours, off every list.
        unsafe { (*sb).touched }
    } else {
        sb = new_superblock(&mut g, kind);
        if sb.is_null() {
            return sb;
        }
        PAGE_SIZE as u32
    };
    // SAFETY: an empty superblock nobody else can reach (off every list); its resident pages stay
    // counted through `touched`.
    unsafe { Superblock::init(sb, c, GLOBAL_OWNER, touched) };
    let _ = owner;
    sb
}

/// Receives a superblock from a thread heap (which already took it off its lists and its accounts).
///
/// # Safety
/// `sb` is a superblock of ours that the calling heap owned, off all its lists; the caller gives it up.
pub unsafe fn give(sb: *mut Superblock) {
    let mut g = GLOBAL.lock();
    // SAFETY: the heap handed sb over; under the lock, we are its only user.
    let r = unsafe { &mut *sb };
    // Relaxed: other threads only compare `owner` with their own heap (see heap::free).
    r.owner.store(GLOBAL_OWNER, Ordering::Relaxed);
    // Relaxed: statistics.
    STATS.global_superblocks.fetch_add(1, Ordering::Relaxed);
    // SAFETY: sb is detached; the lists are the global heap's, and we hold its lock.
    unsafe {
        if r.used() == 0 {
            r.place = Place::GlobalEmpty;
            r.empty_since_ms = now_ms();
            g.empty[kind_of(r.class as usize)].push_front(sb);
        } else {
            r.place = Place::GlobalPartial;
            g.partial[r.class as usize].push_front(sb);
        }
    }
    purge(&mut g, false);
}

/// Collects the remote frees of every partial superblock in the global heap (the lock holder is their
/// owner) and moves those that became empty to the empty list, where any class can reuse them and the
/// purge gives their pages back. Blocks that a thread left live when it exited and that other threads
/// freed later come back this way. Returns how many superblocks became empty.
fn sweep(g: &mut Global) -> usize {
    let now = now_ms();
    let mut emptied = 0;
    for c in 0..NCLASSES {
        let mut sb = g.partial[c].head;
        while !sb.is_null() {
            // SAFETY: nodes of the global lists are superblocks the global heap owns; we hold its lock.
            let r = unsafe { &mut *sb };
            let next = r.next;
            let n = r.collect_remote();
            // Relaxed: statistics (the bytes leave the remote-free accounts here, as in Heap::collect).
            STATS.collected_by_sweep.fetch_add(n as u64 * r.block_size as u64, Ordering::Relaxed);
            if r.used() == 0 {
                // SAFETY: sb is on partial[c].
                unsafe { g.partial[c].remove(sb) };
                r.place = Place::GlobalEmpty;
                r.empty_since_ms = now;
                // SAFETY: sb is detached.
                unsafe { g.empty[kind_of(c)].push_front(sb) };
                emptied += 1;
            }
            sb = next;
        }
    }
    emptied
}

/// Gives the pages of every empty superblock in the global heap back to the OS now (after collecting
/// remote frees into the global heap's superblocks). Returns the bytes released.
pub fn trim() -> usize {
    let mut g = GLOBAL.lock();
    sweep(&mut g);
    purge(&mut g, true)
}

/// Sums the statistics of every heap: (live small bytes, small mallocs, small frees, remote frees).
pub fn sum_heaps() -> (usize, u64, u64, u64) {
    let g = GLOBAL.lock();
    let (mut in_use, mut mallocs, mut frees, mut remote) = (0usize, 0u64, 0u64, 0u64);
    let (mut remote_bytes, mut collected) = (0u64, 0u64);
    let mut h = g.all_heaps;
    while !h.is_null() {
        // SAFETY: heaps are never freed; their counters are atomics read with Relaxed loads.
        let r = unsafe { &*h };
        // Relaxed: statistics.
        in_use += r.in_use();
        mallocs += r.stats.mallocs.get();
        frees += r.stats.frees.get();
        remote += r.stats.remote_frees.get();
        remote_bytes += r.stats.remote_freed_bytes.get();
        collected += r.stats.collected_bytes.get();
        h = r.all_next;
    }
    // Relaxed: statistics.
    remote += STATS.remote_frees_no_heap.load(Ordering::Relaxed);
    remote_bytes += STATS.remote_bytes_no_heap.load(Ordering::Relaxed);
    collected += STATS.collected_by_sweep.load(Ordering::Relaxed);
    // Blocks freed remotely but not yet collected still count in their owner's `in_use`; blocks in
    // global superblocks are not in any heap's `in_use`.
    let mut global_live = 0usize;
    for c in 0..NCLASSES {
        g.partial[c].check(|r| global_live += r.used() as usize * r.block_size as usize);
    }
    let outstanding = remote_bytes.saturating_sub(collected) as usize;
    ((in_use + global_live).saturating_sub(outstanding), mallocs, frees + remote, remote)
}

/// Walks the global heap's invariants (tests).
pub fn check() {
    let g = GLOBAL.lock();
    for c in 0..NCLASSES {
        g.partial[c].check(|r| {
            assert_eq!(r.class as usize, c);
            assert_eq!(r.place, Place::GlobalPartial);
            // Relaxed: under the lock, the owner of a global superblock is only written by us.
            assert_eq!(r.owner.load(Ordering::Relaxed), GLOBAL_OWNER);
        });
    }
    for k in 0..KINDS {
        g.empty[k].check(|r| assert!(r.used() == 0 && r.place == Place::GlobalEmpty && !r.purged));
        g.purged[k].check(|r| assert!(r.used() == 0 && r.purged));
    }
}
