//! Types and constants that appear in `include/rallocs.h`.
//!
//! This file is also compiled by the ABI check in `systest/`, which compares every item here with what a
//! C compiler sees in the header (sizes, alignments, field offsets and types, constant values). Keep it
//! to plain `#[repr(C)]` items and constants, written in edition-2021 syntax that `ctest2` can parse.

/// Alignment, in bytes, of every pointer that the malloc-style functions of rallocs return (the
/// alignment of `max_align_t`). Requests for a larger alignment go through the aligned entry points.
pub const RALLOCS_MIN_ALIGN: usize = 16;

/// Statistics of the malloc family, filled by `rallocs_stats_get()`.
///
/// Byte counts are a snapshot (other threads may allocate while it is taken); call counts are totals
/// since the process started.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct rallocs_stats_t {
    /// Bytes in live blocks, counted by their usable size (what `malloc_usable_size` reports).
    pub live_bytes: usize,
    /// Bytes of memory that may be resident: the pages of superblocks that allocation has reached and
    /// that were not given back to the OS since, large blocks (and the cache of recently freed ones),
    /// and heap metadata.
    pub committed_bytes: usize,
    /// Bytes of address space reserved (mapped) by the malloc family.
    pub reserved_bytes: usize,
    /// Highest value `committed_bytes` has reached.
    pub peak_committed_bytes: usize,
    /// Superblocks held by thread heaps.
    pub thread_superblocks: usize,
    /// Superblocks in the global heap (free for any thread to adopt).
    pub global_superblocks: usize,
    /// Live large blocks (mapped on their own).
    pub large_blocks: usize,
    /// Usable bytes of live large blocks.
    pub large_bytes: usize,
    /// Thread heaps in existence (in use or kept for reuse by new threads).
    pub heaps: usize,
    /// Successful allocations (every allocating function counts once).
    pub mallocs: u64,
    /// Blocks freed (including by `realloc`).
    pub frees: u64,
    /// Frees made by a thread other than the one owning the block's superblock.
    pub remote_frees: u64,
    /// Calls of `rallocs_trim` and `malloc_trim`.
    pub trims: u64,
}

// ---- region_* -----------------------------------------------------------------------------------------

/// Figures of one region and of the process-wide page pool, filled by `region_stats_get`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct region_stats_t {
    /// Usable bytes of the region's live blocks (what `region_usable_size` reports, summed).
    pub live_bytes: usize,
    /// Live blocks of the region.
    pub live_objects: usize,
    /// The largest `live_bytes` since the region was created (a reset does not lower it).
    pub peak_bytes: usize,
    /// Pages the region uses: pages holding blocks, the pages of large blocks, and its first page.
    pub pages_in_use: usize,
    /// Empty pages the region keeps for reuse (at most a few).
    pub pages_cached: usize,
    /// Bytes of one page.
    pub page_size: usize,
    /// Process-wide: free pages the shared pool keeps resident for the next region that needs one.
    pub pool_pages_free: usize,
    /// Process-wide: free pages whose memory the pool gave back to the operating system.
    pub pool_pages_released: usize,
    /// Process-wide: pages carved from the 32 GiB reservation so far (a high-water mark).
    pub pool_pages_carved: usize,
}

// ---------------------------------------------------------------------------------------------------
// bimp_*
// ---------------------------------------------------------------------------------------------------

/// Counters of the bimp heap, filled by `bimp_stats_get()`. Sizes are in bytes; "blocks" counts
/// allocations.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct bimp_stats_t {
    /// Bytes from the base of the heap to its top: live blocks, freed blocks still below the top,
    /// their headers and alignment padding. 0 when every block has been freed.
    pub top_bytes: usize,
    /// Usable bytes of the live blocks (the sum of their `bimp_malloc_usable_size`).
    pub live_bytes: usize,
    /// Number of live blocks.
    pub live_blocks: usize,
    /// Usable bytes of freed blocks that still lie below the top (they come back when every block
    /// above them is freed).
    pub free_bytes: usize,
    /// Number of freed blocks still below the top.
    pub free_blocks: usize,
    /// Bytes of memory committed for the heap (readable and writable; resident once touched).
    pub committed_bytes: usize,
    /// Highest value `top_bytes` has reached.
    pub peak_top_bytes: usize,
    /// Bytes of address space reserved for the heap (0 before the first allocation).
    pub reserved_bytes: usize,
}

// ---- rmalloc: relocatable handles over a compacting heap ----

// The opaque handle type `rm_memory_t` is declared in `ffi/rm.rs`: ctest2 refuses a struct without
// `#[repr(C)]`, and a `#[repr(C)]` one would make cbindgen print a (zero-sized) definition.

/// The result of every rmalloc call that can fail.
// ctest2 skips enums (c-tests/rm.c checks the values and size with _Static_assert), so the ABI check
// compiles this item without using it.
#[allow(non_camel_case_types, dead_code)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum rm_status_t {
    /// Success.
    RM_OK = 0,
    /// A NULL handle or out-parameter.
    RM_INVALID_ARGUMENT,
    /// No memory within the limit (after compacting and purging), or a size that overflows.
    RM_OUT_OF_MEMORY,
    /// A handle that rmalloc did not return, or that was freed.
    RM_INVALID_HANDLE,
    /// `rmfree` of a locked handle, or `rmrealloc` that would have to move a locked block.
    RM_LOCKED,
    /// `rmunlock` of a handle whose lock count is zero.
    RM_NOT_LOCKED,
    /// `rmlock` of a purgeable block that was discarded; `rmrealloc` revives the handle.
    RM_PURGED,
}

/// A snapshot of the rmalloc heap, filled by `rm_stats_get`. Sizes are bytes.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct rm_stats_t {
    /// Heap memory committed from the OS.
    pub capacity: usize,
    /// Bytes in live blocks (block headers and rounding included).
    pub used: usize,
    /// `capacity - used`: free blocks plus the committed run at the end of the heap.
    pub free: usize,
    /// The largest contiguous free run (a free block or the committed run at the end).
    pub largest_free: usize,
    /// `1 - largest_free / free` (0 when nothing is free): 0 means all free space is one run.
    pub fragmentation: core::ffi::c_double,
    /// Handles allocated and not freed (purged ones included).
    pub handles: usize,
    /// Compaction passes run (by `rmcompact` or by an allocation that did not fit).
    pub compactions: u64,
    /// Bytes moved by compaction, in total.
    pub bytes_moved: u64,
    /// The longest time one compaction held the heap, in nanoseconds.
    pub longest_pause_ns: u64,
    /// Purgeable blocks discarded to make room.
    pub purges: u64,
}
