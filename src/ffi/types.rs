//! Types and constants that appear in `include/rallocs.h`.
//!
//! This file is also compiled by the ABI check in `systest/`, which compares every item here with what a
//! C compiler sees in the header (sizes, alignments, field offsets and types, constant values). Keep it
//! to plain `#[repr(C)]` items and constants, written in edition-2021 syntax that `ctest2` can parse.

/// Alignment, in bytes, of every pointer that the malloc-style functions of rallocs return (the
/// alignment of `max_align_t`). Requests for a larger alignment go through the aligned entry points.
pub const RALLOCS_MIN_ALIGN: usize = 16;
