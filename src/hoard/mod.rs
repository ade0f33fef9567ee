//! The malloc family's heap, after Hoard (Berger, McKinley, Blumofe, Wilson, ASPLOS 2000).
//!
//! ```text
//!   malloc/free (ffi/malloc.rs)
//!        |
//!   this module: size dispatch, pointer validation, realloc/calloc/aligned
//!        |                                   |
//!   thread heap (heap.rs, no lock)        large blocks (large.rs: own mappings + a small cache)
//!        |  slow path only
//!   global heap (global.rs, one lock) -- segments of superblocks (superblock.rs), address map (addrmap.rs)
//!        |
//!   os.rs
//! ```
//!
//! Every pointer handed to `free`/`realloc`/`malloc_usable_size` is checked against the address map and
//! the superblock's block grid (or the large span's header) before anything is written: a pointer that
//! rallocs did not return aborts with one line naming the function and the pointer.

pub mod addrmap;
pub mod global;
pub mod heap;
pub mod large;
pub mod list;
pub mod superblock;
pub mod thread;

use crate::config::{MAX_MEDIUM_SIZE, MAX_SMALL_ALIGN, MIN_ALIGN, SUPERBLOCK_HEADER, SUPERBLOCK_SIZE};
use crate::ffi::types::rallocs_stats_t;
use crate::size_class::{class_of, class_of_aligned, class_size, DIRECT_MAX};
use core::ptr;
use core::sync::atomic::Ordering;
use superblock::Superblock;

/// Allocates `size` bytes (16-byte aligned; 0 counts as 1). Null with `errno = ENOMEM` when out of
/// memory (only the slow paths can fail, so the fast path never touches errno). `record`: report
/// the call to the trace recorder (entry points do; calls inside calloc or realloc do not). Recording
/// happens only on the slow path: while tracing, threads have no heap in the fast slot.
#[inline(always)]
pub fn malloc(size: usize, record: bool) -> *mut u8 {
    if size <= DIRECT_MAX {
        // SAFETY: fast() is the calling thread's heap, or NO_HEAP, whose direct table holds only the
        // empty placeholder: the pop fails and the call goes on below.
        let b = unsafe { heap::pop_direct(thread::fast(), size) };
        if !b.is_null() {
            return b;
        }
    }
    malloc_class(size, record)
}

/// Small sizes whose current superblock is exhausted, medium sizes: the thread heap's class path (its
/// slow path refills); otherwise [`malloc_slow`].
#[inline(never)]
fn malloc_class(size: usize, record: bool) -> *mut u8 {
    if size <= MAX_MEDIUM_SIZE {
        let h = thread::current();
        if !h.is_null() {
            // SAFETY: h is the calling thread's heap.
            return unsafe { heap::alloc(h, class_of(size)) };
        }
    }
    malloc_slow(size, record)
}

/// The allocation path for large sizes, for threads without a heap yet, and while tracing.
#[inline(never)]
fn malloc_slow(size: usize, record: bool) -> *mut u8 {
    let p = if size > MAX_MEDIUM_SIZE {
        global::ensure_init();
        large::alloc(size, MIN_ALIGN, false)
    } else {
        let h = thread_heap();
        if h.is_null() {
            ptr::null_mut()
        } else {
            // SAFETY: h is the calling thread's heap.
            unsafe { heap::alloc(h, class_of(size)) }
        }
    };
    if record {
        crate::trace::record(crate::trace::Op::Malloc, p, ptr::null_mut(), size, 0);
    }
    if p.is_null() {
        crate::os::set_errno(libc::ENOMEM);
    }
    p
}

/// The calling thread's heap, from either slot, created on first use; null when out of memory.
#[inline]
fn thread_heap() -> *mut heap::Heap {
    let h = thread::any();
    if h.is_null() {
        global::heap_for_thread()
    } else {
        h
    }
}

/// What a pointer passed to free/realloc is.
enum Owner {
    Small(*mut Superblock),
    Large(usize),
}

/// Classifies `p` (non-null) or aborts naming `func`.
#[inline(always)]
fn owner_of(p: *mut u8, func: &str) -> Owner {
    let sb = owned_superblock(thread::fast(), p);
    if !sb.is_null() {
        return Owner::Small(sb);
    }
    let chunk = (p as usize) & !(SUPERBLOCK_SIZE - 1);
    // (A superblock's first byte is its header: `p == chunk` fails the block check below.)
    if addrmap::kind(chunk) == addrmap::SUPERBLOCK {
        let sb = chunk as *mut Superblock;
        // SAFETY: the address map says a superblock header of ours is at `chunk`.
        if unsafe { (*sb).is_block_start(p) } {
            return Owner::Small(sb);
        }
        crate::diag::invalid_pointer(func, p, "not the start of a block");
    }
    owner_of_large(p, func)
}

/// Medium superblocks and large spans.
#[inline(never)]
fn owner_of_large(p: *mut u8, func: &str) -> Owner {
    let chunk = (p as usize) & !(SUPERBLOCK_SIZE - 1);
    let kind = addrmap::kind(chunk);
    if kind & 0xf0 == addrmap::MEDIUM {
        let sb = (chunk - (kind & 0x0f) as usize * SUPERBLOCK_SIZE) as *mut Superblock;
        // SAFETY: the address map says a medium superblock of ours starts at `sb`.
        if unsafe { (*sb).is_block_start(p) } {
            return Owner::Small(sb);
        }
        crate::diag::invalid_pointer(func, p, "not the start of a block");
    }
    match large::span_of(p) {
        Some(span) => Owner::Large(span),
        None => crate::diag::invalid_pointer(func, p, "not allocated by rallocs"),
    }
}

/// Frees `p` (NULL: nothing). `func` names the entry point in the abort message for a bad pointer;
/// `record` as for [`malloc`]. The fast path handles blocks of small superblocks; medium and large
/// blocks and bad pointers go to [`free_slow`].
///
/// # Safety
/// `p` is NULL or a block this allocator returned that is still live. A pointer the allocator never
/// returned is detected and aborts; a block freed twice is not always detected.
#[inline(always)]
pub unsafe fn free(p: *mut u8, func: &str, record: bool) {
    // Fastest: a block of a superblock this thread's heap owns, found in the heap's owned cache (no
    // address-map lookup; the cache is exact). While tracing, `fast()` is NO_HEAP and every free takes
    // the checked path, where it is recorded.
    let h = thread::fast();
    let sb = owned_superblock(h, p);
    // SAFETY: a non-null sb is a superblock h owns and p one of its carved blocks (owned_superblock);
    // the caller gives p up.
    unsafe {
        if !sb.is_null() {
            heap::free_local(h, sb, p.cast(), func);
            return;
        }
        free_checked(p, func, record)
    }
}

/// The superblock of `p` when `p` is a carved block of a superblock that heap `h` (the calling thread's
/// heap or NO_HEAP) owns, found in its exact owned cache without an address-map lookup; else null.
#[inline(always)]
fn owned_superblock(h: *mut heap::Heap, p: *mut u8) -> *mut Superblock {
    let chunk = (p as usize) & !(SUPERBLOCK_SIZE - 1);
    // SAFETY: h is a heap or NO_HEAP (whose owned cache is empty). A hit in the exact owned cache
    // means a superblock header of ours, owned by h, is at `chunk` (small, or the first 64 KiB of a
    // medium one), so the offset from its data area is the low bits of `p` less the header.
    unsafe {
        if heap::owns(h, chunk) {
            let sb = chunk as *mut Superblock;
            if (*sb).is_block_offset(((p as usize) & (SUPERBLOCK_SIZE - 1)).wrapping_sub(SUPERBLOCK_HEADER)) {
                return sb;
            }
        }
    }
    ptr::null_mut()
}

/// Frees `p` after checking it in the address map: NULL, superblocks not in the owned cache, remote
/// frees, medium and large blocks, and bad pointers.
///
/// # Safety
/// As for [`free`].
#[inline(always)]
unsafe fn free_checked(p: *mut u8, func: &str, record: bool) {
    if p.is_null() {
        return;
    }
    let chunk = (p as usize) & !(SUPERBLOCK_SIZE - 1);
    if addrmap::kind(chunk) == addrmap::SUPERBLOCK {
        let sb = chunk as *mut Superblock;
        // SAFETY: the address map says a small superblock header of ours is at `chunk`; the block
        // check makes `p` one of its blocks (the caller guarantees it is live).
        unsafe {
            if (*sb).is_block_start(p) {
                heap::free(sb, p, record, func);
                return;
            }
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe { free_slow(p, func, record) }
}

/// Frees a medium or large block, or aborts for a pointer that is not a block of ours.
///
/// # Safety
/// As for [`free`].
#[inline(never)]
unsafe fn free_slow(p: *mut u8, func: &str, record: bool) {
    match owner_of(p, func) {
        // SAFETY: owner_of checked that p is a block start of a superblock of ours.
        Owner::Small(sb) => unsafe { heap::free(sb, p, record, func) },
        Owner::Large(span) => {
            if record {
                crate::trace::record(crate::trace::Op::Free, ptr::null_mut(), p, 0, 0);
            }
            large::free(span)
        }
    }
}

/// Usable size of the live block `p` (0 for NULL).
///
/// # Safety
/// As for [`free`]; the block stays live.
pub unsafe fn usable_size(p: *mut u8, func: &str) -> usize {
    if p.is_null() {
        return 0;
    }
    match owner_of(p, func) {
        // SAFETY: sb is a superblock of ours.
        Owner::Small(sb) => unsafe { (*sb).block_size as usize },
        Owner::Large(span) => large::usable(span),
    }
}

/// Allocates `n * size` zeroed bytes; null on overflow or out of memory.
pub fn calloc(n: usize, size: usize) -> *mut u8 {
    let total = match n.checked_mul(size) {
        Some(t) => t,
        None => return ptr::null_mut(),
    };
    if total > MAX_MEDIUM_SIZE {
        global::ensure_init();
        return large::alloc(total, MIN_ALIGN, true);
    }
    let p = malloc(total, false);
    if !p.is_null() {
        // SAFETY: p is a fresh block of at least `total` bytes.
        unsafe { ptr::write_bytes(p, 0, total) };
    }
    p
}

/// glibc's realloc: NULL `p` allocates; size 0 frees and returns NULL; otherwise resizes, in place when
/// the block already fits and is not more than twice the request, else by allocate-copy-free. On
/// failure returns NULL and leaves `p` untouched.
///
/// # Safety
/// As for [`free`]: `p` is NULL or a live block of this allocator, which the call takes over.
pub unsafe fn realloc(p: *mut u8, size: usize, func: &str) -> *mut u8 {
    if p.is_null() {
        return malloc(size, false);
    }
    if size == 0 {
        // SAFETY: the caller passes a live block and gives it up.
        unsafe { free(p, func, false) };
        return ptr::null_mut();
    }
    let owner = owner_of(p, func);
    let old = match owner {
        // SAFETY: sb is a superblock of ours.
        Owner::Small(sb) => unsafe { (*sb).block_size as usize },
        Owner::Large(span) => large::usable(span),
    };
    if size <= old && size > old / 2 {
        return p;
    }
    // A block that grows into or within the large sizes: extend a large mapping in place if the kernel
    // can; if it must move, give it 100% headroom so that a loop that grows a buffer step by step copies
    // O(n) bytes and maps O(log n) times in all (the headroom is address space: pages not written stay
    // unallocated).
    let mut new_size = size;
    if size > old {
        if size > MAX_MEDIUM_SIZE {
            if let Owner::Large(span) = owner {
                if large::resize_in_place(span, size) {
                    return p;
                }
            }
            new_size = size.max(old.saturating_mul(2));
        } else {
            // A small or medium block that outgrows its class moves with 50% headroom (about two
            // classes up): a buffer grown step by step then moves half as often and copies about
            // 3x its final size in all instead of 5x.
            new_size = size.max(old + old / 2);
        }
    }
    let mut q = malloc(new_size, false);
    if q.is_null() && new_size != size {
        q = malloc(size, false);
    }
    if q.is_null() {
        return q;
    }
    // SAFETY: p holds `old` bytes, q at least `size`; distinct live blocks; then p, whose contents
    // moved, is given up.
    unsafe {
        ptr::copy_nonoverlapping(p, q, old.min(size));
        free(p, func, false);
    }
    q
}

/// Allocates `size` bytes aligned to `align` (a power of two, checked by the caller). Null when out of
/// memory.
pub fn aligned(align: usize, size: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two());
    if align <= MIN_ALIGN {
        return malloc(size, false);
    }
    if align <= MAX_SMALL_ALIGN {
        if let Some(c) = class_of_aligned(size, align) {
            let h = thread_heap();
            if h.is_null() {
                return ptr::null_mut();
            }
            // SAFETY: h is the calling thread's heap; blocks of class c start at multiples of `align`.
            return unsafe { heap::alloc(h, c) };
        }
    }
    global::ensure_init();
    large::alloc(size, align, false)
}

/// Gives every free page back to the OS now; true if memory was released.
pub fn trim() -> bool {
    global::ensure_init();
    // Relaxed: statistics.
    global::STATS.trims.fetch_add(1, Ordering::Relaxed);
    let h = thread::any();
    if !h.is_null() {
        // SAFETY: h is the calling thread's heap.
        unsafe { (*h).give_back_empty() };
    }
    let released = global::trim() + large::trim();
    released > 0
}

/// Fills `out` with the current statistics.
pub fn stats(out: &mut rallocs_stats_t) {
    let (small_live, mallocs, frees, remote) = global::sum_heaps();
    let s = &global::STATS;
    // Relaxed: statistics.
    let total_sb = s.total_superblocks.load(Ordering::Relaxed);
    let global_sb = s.global_superblocks.load(Ordering::Relaxed);
    *out = rallocs_stats_t {
        live_bytes: small_live + large::LIVE_BYTES.load(Ordering::Relaxed),
        committed_bytes: s.committed.load(Ordering::Relaxed),
        reserved_bytes: s.reserved.load(Ordering::Relaxed),
        peak_committed_bytes: s.peak_committed.load(Ordering::Relaxed),
        thread_superblocks: total_sb.saturating_sub(global_sb),
        global_superblocks: global_sb,
        large_blocks: large::LIVE_BLOCKS.load(Ordering::Relaxed),
        large_bytes: large::LIVE_BYTES.load(Ordering::Relaxed),
        heaps: s.heaps.load(Ordering::Relaxed),
        mallocs: mallocs + large::MALLOCS.load(Ordering::Relaxed),
        frees: frees + large::FREES.load(Ordering::Relaxed),
        remote_frees: remote,
        trims: s.trims.load(Ordering::Relaxed),
    };
}

/// Writes the statistics to `fd`, one `name value` pair per line.
pub fn print_stats(fd: i32) {
    let mut s = rallocs_stats_t::default();
    stats(&mut s);
    let lines: [(&str, u64); 13] = [
        ("live_bytes", s.live_bytes as u64),
        ("committed_bytes", s.committed_bytes as u64),
        ("reserved_bytes", s.reserved_bytes as u64),
        ("peak_committed_bytes", s.peak_committed_bytes as u64),
        ("thread_superblocks", s.thread_superblocks as u64),
        ("global_superblocks", s.global_superblocks as u64),
        ("large_blocks", s.large_blocks as u64),
        ("large_bytes", s.large_bytes as u64),
        ("heaps", s.heaps as u64),
        ("mallocs", s.mallocs),
        ("frees", s.frees),
        ("remote_frees", s.remote_frees),
        ("trims", s.trims),
    ];
    for (name, v) in lines {
        let mut line = crate::diag::LineBuf::new();
        crate::diag::format_line(&mut line, format_args!("{name:<22} {v}"));
        crate::os::write_fd(fd, line.as_bytes());
    }
}

/// Walks the invariants of the calling thread's heap, the global heap and the large-block cache.
pub fn check() {
    let h = thread::any();
    if !h.is_null() {
        // SAFETY: the calling thread's own heap.
        unsafe { (*h).check() };
    }
    global::check();
    large::check();
}

/// The class a request of `size` bytes is served from (tests).
pub fn block_size_for(size: usize) -> usize {
    class_size(class_of(size))
}

#[cfg(test)]
mod tests;
