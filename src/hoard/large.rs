//! Large blocks (above `MAX_MEDIUM_SIZE`, 256 KiB): each is a span mapped on its own, S-aligned, with a header
//! at its start; a small cache keeps recently freed spans mapped so that alloc/free cycles of large
//! blocks do not call mmap every time. Cached spans older than the purge delay are unmapped.
//!
//! ```text
//!  span (S-aligned)        span + off (off = LARGE_HEADER, or the alignment, or S)
//!  | LargeHeader ... |      | user block ...................................... | span + len
//! ```
//! For alignments of S or more the user pointer is itself S-aligned and the header sits at `p - S`, so
//! `free` finds the header at `p & !(S-1)`, or at `p - S` when that is `p` itself (a superblock block
//! never starts at a superblock's first byte).
//!
//! Invariant: a span's first chunk is LARGE in the address map exactly while its block is live; cached
//! spans are NONE, so a stale pointer into a cached span is reported as invalid.

use super::addrmap;
use super::global::{self, commit_add, commit_sub};
use crate::config::{LARGE_CACHE_BYTES, LARGE_CACHE_ENTRIES, LARGE_HEADER, LARGE_STEPS_PER_DOUBLING, SUPERBLOCK_SIZE};
use crate::os;
use crate::sync::Mutex;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const MAGIC: u64 = 0x5241_4c41_5247_4521; // "RALARGE!"

/// Header at the start of every large span.
#[repr(C)]
struct LargeHeader {
    magic: u64,
    /// Bytes mapped from the span start.
    span_len: usize,
    /// Offset of the user block from the span start.
    offset: usize,
    /// Address of the mapping to release (differs from the span for big alignments).
    map_base: usize,
    map_len: usize,
}

#[derive(Clone, Copy)]
struct Cached {
    span: usize,
    len: usize,
    since_ms: u64,
}

struct Cache {
    entries: [Cached; LARGE_CACHE_ENTRIES],
    n: usize,
    bytes: usize,
}

static CACHE: Mutex<Cache> =
    Mutex::new(Cache { entries: [Cached { span: 0, len: 0, since_ms: 0 }; LARGE_CACHE_ENTRIES], n: 0, bytes: 0 });

/// Live large blocks and their usable bytes; large mallocs and frees.
pub static LIVE_BLOCKS: AtomicUsize = AtomicUsize::new(0);
/// Usable bytes of live large blocks.
pub static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Large allocations served.
pub static MALLOCS: AtomicU64 = AtomicU64::new(0);
/// Large blocks freed.
pub static FREES: AtomicU64 = AtomicU64::new(0);

pub(super) fn lock_for_fork() {
    CACHE.lock_forever();
}

/// # Safety
/// Only from the fork handlers, after [`lock_for_fork`].
pub(super) unsafe fn unlock_after_fork() {
    // SAFETY: lock_for_fork took the lock in this thread (or its pre-fork self).
    unsafe { CACHE.unlock_forgotten() };
}

/// Rounds a span length (a multiple of `page`) up to the next of LARGE_STEPS_PER_DOUBLING sizes per
/// power of two, in whole pages. `None` on overflow.
fn span_class(len: usize, page: usize) -> Option<usize> {
    let pages = len / page;
    if pages <= LARGE_STEPS_PER_DOUBLING {
        return Some(len);
    }
    let top = usize::BITS - 1 - pages.leading_zeros(); // floor(log2(pages))
    let step = 1usize << (top - LARGE_STEPS_PER_DOUBLING.trailing_zeros());
    pages.checked_add(step - 1).and_then(|p| (p & !(step - 1)).checked_mul(page))
}

fn header(span: usize) -> *mut LargeHeader {
    span as *mut LargeHeader
}

/// Allocates a large block of at least `size` bytes aligned to `align` (a power of two), cleared to
/// zero when `zero` (fresh mappings already are). Null when out of memory or address space.
pub fn alloc(size: usize, align: usize, zero: bool) -> *mut u8 {
    let page = os::page_size();
    let offset = if align >= SUPERBLOCK_SIZE { SUPERBLOCK_SIZE } else { align.max(LARGE_HEADER) };
    let len = match size.checked_add(offset).and_then(|n| os::align_up(n, page)).and_then(|n| span_class(n, page)) {
        Some(n) if n <= isize::MAX as usize => n,
        _ => return ptr::null_mut(),
    };
    let (span, map_base, map_len, fresh) = if align < SUPERBLOCK_SIZE {
        match take_cached(len) {
            Some((span, clen)) => (span, span, clen, false),
            None => match os::map(len, SUPERBLOCK_SIZE) {
                Ok(p) => (p.as_ptr() as usize, p.as_ptr() as usize, len, true),
                Err(_) => return ptr::null_mut(),
            },
        }
    } else {
        // User pointer aligned to `align`, header one S-chunk before it.
        let total = match len.checked_add(align - SUPERBLOCK_SIZE) {
            Some(t) => t,
            None => return ptr::null_mut(),
        };
        match os::map(total, align) {
            Ok(p) => {
                let base = p.as_ptr() as usize;
                (base + align - SUPERBLOCK_SIZE, base, total, true)
            }
            Err(_) => return ptr::null_mut(),
        }
    };
    if addrmap::set(span, addrmap::LARGE).is_err() {
        // SAFETY: the mapping was made (or taken from the cache) for us and is unused.
        unsafe { release_mapping(map_base, map_len) };
        return ptr::null_mut();
    }
    let span_len = map_base + map_len - span;
    // SAFETY: span starts a mapping we own, at least a page long.
    unsafe {
        ptr::write(header(span), LargeHeader { magic: MAGIC, span_len, offset, map_base, map_len });
    }
    if fresh {
        commit_add(map_len);
        // Relaxed: statistics.
        global::STATS.reserved.fetch_add(map_len, Ordering::Relaxed);
    } else if zero {
        // SAFETY: the user part of a span taken from the cache is ours and unused.
        unsafe { ptr::write_bytes((span + offset) as *mut u8, 0, span_len - offset) };
    }
    // Relaxed: statistics.
    LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
    LIVE_BYTES.fetch_add(span_len - offset, Ordering::Relaxed);
    MALLOCS.fetch_add(1, Ordering::Relaxed);
    (span + offset) as *mut u8
}

/// The span header of `p` if `p` is the user pointer of a live large block.
pub fn span_of(p: *const u8) -> Option<usize> {
    let a = p as usize;
    let chunk = a & !(SUPERBLOCK_SIZE - 1);
    let span = if chunk == a { a.wrapping_sub(SUPERBLOCK_SIZE) } else { chunk };
    if addrmap::kind(span) != addrmap::LARGE {
        return None;
    }
    // SAFETY: the address map says a live large span starts here: its header is mapped.
    let h = unsafe { &*header(span) };
    if h.magic == MAGIC && span + h.offset == a {
        Some(span)
    } else {
        None
    }
}

/// Usable bytes of the large block whose span is `span`.
pub fn usable(span: usize) -> usize {
    // SAFETY: span is a live large span (from span_of).
    let h = unsafe { &*header(span) };
    h.span_len - h.offset
}

/// Tries to resize the large block of `span` in place to hold `size` bytes: shrinking keeps the mapping
/// (returns true if `size` fits); growing asks the kernel to extend the mapping where it lies. False
/// when the block must move.
pub fn resize_in_place(span: usize, size: usize) -> bool {
    // SAFETY: span is a live large span (from span_of) owned by the caller's block.
    let h = unsafe { &mut *header(span) };
    if h.map_base != span {
        return false;
    }
    let page = os::page_size();
    let need = match size.checked_add(h.offset).and_then(|n| os::align_up(n, page)) {
        Some(n) => n,
        None => return false,
    };
    if need <= h.span_len {
        return true;
    }
    // Grow to at least twice the span (address space only: pages not written stay unallocated), so that
    // a block growing step by step asks the kernel O(log n) times.
    let need = span_class(need, page).unwrap_or(need).max(h.span_len.saturating_mul(2));
    // SAFETY: the span is one whole mapping of ours (map_base == span, map_len == span_len).
    let ok = unsafe { os::resize_in_place(NonNull::new_unchecked(span as *mut u8), h.map_len, need) }.is_ok();
    if ok {
        let grown = need - h.map_len;
        h.map_len = need;
        h.span_len = need;
        commit_add(grown);
        // Relaxed: statistics.
        global::STATS.reserved.fetch_add(grown, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(grown, Ordering::Relaxed);
    }
    ok
}

/// Frees the large block whose span is `span`.
pub fn free(span: usize) {
    // SAFETY: span is a live large span (from span_of); we give it up now.
    let (len, offset, map_base, map_len) = unsafe {
        let h = &*header(span);
        (h.span_len, h.offset, h.map_base, h.map_len)
    };
    let _ = addrmap::set(span, addrmap::NONE);
    // SAFETY: as above; clearing the magic makes a second free of the same pointer detectable.
    unsafe { (*header(span)).magic = 0 };
    // Relaxed: statistics.
    LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
    LIVE_BYTES.fetch_sub(len - offset, Ordering::Relaxed);
    FREES.fetch_add(1, Ordering::Relaxed);
    // With a purge delay of 0 nothing is kept: the span goes back at once.
    let keep = crate::options::PURGE_DELAY_MS.get() != 0;
    if keep && map_base == span && offset < SUPERBLOCK_SIZE && put_cached(span, len) {
        return;
    }
    // SAFETY: the block is dead and the mapping is ours.
    unsafe { release_mapping(map_base, map_len) };
}

/// Unmaps a dead mapping and takes it off the committed and reserved counts.
///
/// # Safety
/// The mapping is ours and unused.
unsafe fn release_mapping(base: usize, len: usize) {
    // SAFETY: forwarded from the caller.
    let _ = unsafe { os::release(NonNull::new_unchecked(base as *mut u8), len) };
    commit_sub(len);
    // Relaxed: statistics.
    global::STATS.reserved.fetch_sub(len, Ordering::Relaxed);
}

fn take_cached(len: usize) -> Option<(usize, usize)> {
    let mut c = CACHE.lock();
    // Best fit among spans no more than 1.25x the request (the next span class), so a small request
    // does not pin a huge span.
    let mut best: Option<usize> = None;
    for i in 0..c.n {
        let e = c.entries[i];
        if e.len >= len && e.len <= len + len / 4 && best.map_or(true, |b| e.len < c.entries[b].len) {
            best = Some(i);
        }
    }
    let i = best?;
    let e = c.entries[i];
    c.n -= 1;
    let last = c.n;
    c.entries[i] = c.entries[last];
    c.bytes -= e.len;
    Some((e.span, e.len))
}

fn put_cached(span: usize, len: usize) -> bool {
    let now = global::now_ms();
    let mut c = CACHE.lock();
    expire(&mut c, now, false);
    if len > LARGE_CACHE_BYTES / 4 {
        return false;
    }
    // Make room by unmapping the oldest spans: recently freed ones are the likeliest to be reused.
    while c.n > 0 && (c.n == LARGE_CACHE_ENTRIES || c.bytes + len > LARGE_CACHE_BYTES) {
        let mut oldest = 0;
        for i in 1..c.n {
            if c.entries[i].since_ms < c.entries[oldest].since_ms {
                oldest = i;
            }
        }
        let e = c.entries[oldest];
        // SAFETY: cached spans are dead mappings of ours.
        unsafe { release_mapping(e.span, e.len) };
        c.bytes -= e.len;
        c.n -= 1;
        let last = c.n;
        c.entries[oldest] = c.entries[last];
    }
    let n = c.n;
    c.entries[n] = Cached { span, len, since_ms: now };
    c.n += 1;
    c.bytes += len;
    true
}

fn expire(c: &mut Cache, now: u64, all: bool) -> usize {
    let delay = crate::options::PURGE_DELAY_MS.get();
    let mut released = 0;
    let mut i = 0;
    while i < c.n {
        let e = c.entries[i];
        if all || now.saturating_sub(e.since_ms) >= delay {
            // SAFETY: cached spans are dead mappings of ours.
            unsafe { release_mapping(e.span, e.len) };
            released += e.len;
            c.bytes -= e.len;
            c.n -= 1;
            let last = c.n;
            c.entries[i] = c.entries[last];
        } else {
            i += 1;
        }
    }
    released
}

/// Unmaps every cached span now; returns the bytes released.
pub fn trim() -> usize {
    let mut c = CACHE.lock();
    expire(&mut c, 0, true)
}

/// Walks the cache's invariants (tests).
pub fn check() {
    let c = CACHE.lock();
    let mut bytes = 0;
    for e in &c.entries[..c.n] {
        assert_eq!(e.span % SUPERBLOCK_SIZE, 0);
        assert_eq!(addrmap::kind(e.span), addrmap::NONE, "a cached span is not live");
        bytes += e.len;
    }
    assert_eq!(bytes, c.bytes);
}

#[cfg(test)]
mod tests {
    #[test]
    fn span_classes_round_up_at_most_25_percent() {
        let page = 4096;
        let mut prev = 0;
        for pages in 1..5000usize {
            let len = pages * page;
            let c = super::span_class(len, page).unwrap();
            assert!(c >= len && c % page == 0);
            assert!(c <= len + len / 4 + page, "{len} -> {c}");
            assert!(c >= prev);
            prev = c;
        }
        assert_eq!(super::span_class(usize::MAX & !(page - 1), page), None);
    }
}
