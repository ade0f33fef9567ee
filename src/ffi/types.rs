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
    /// Bytes of memory committed: superblocks whose pages were not given back, large blocks (and the
    /// cache of recently freed ones), and heap metadata.
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
