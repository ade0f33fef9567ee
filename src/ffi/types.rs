//! Types and constants that appear in `include/rallocs.h`.
//!
//! This file is also compiled by the ABI check in `systest/`, which compares every item here with what a
//! C compiler sees in the header (sizes, alignments, field offsets and types, constant values). Keep it
//! to plain `#[repr(C)]` items and constants, written in edition-2021 syntax that `ctest2` can parse.

/// Alignment, in bytes, of every pointer that the malloc-style functions of rallocs return (the
/// alignment of `max_align_t`). Requests for a larger alignment go through the aligned entry points.
pub const RALLOCS_MIN_ALIGN: usize = 16;

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
