//! Every tunable of rallocs, with the sizes derived from it, checked at compile time.
//!
//! Families add their tunables here, never as literals in their own modules.

/// Alignment of every block the malloc-style entry points return (`max_align_t` on x86-64 and aarch64).
pub const MIN_ALIGN: usize = 16;

/// The page size rallocs is designed for. The real one is read with [`crate::os::page_size`]; the
/// allocator refuses to start on a kernel whose page is larger than this.
pub const PAGE_SIZE: usize = 4096;

/// Longest diagnostic line [`crate::diag`] formats on the stack before truncating it.
pub const DIAG_LINE_MAX: usize = 256;

const _: () = assert!(MIN_ALIGN.is_power_of_two() && MIN_ALIGN >= core::mem::align_of::<u128>());
const _: () = assert!(PAGE_SIZE.is_power_of_two() && PAGE_SIZE % MIN_ALIGN == 0);
const _: () = assert!(DIAG_LINE_MAX >= 64);

// ---- region_* (src/region.rs) -------------------------------------------------------------------------

/// log2 of the region page: every region page is this size and aligned to it, so that `region_free`
/// finds a block's page header by masking the pointer.
pub const REGION_PAGE_SHIFT: u32 = 14;
/// Size of a region page (16 KiB): small enough that a small region costs little, large enough that
/// taking a new page happens once per ~100 blocks of 150 bytes.
pub const REGION_PAGE: usize = 1 << REGION_PAGE_SHIFT;
/// The process-wide reservation every region page comes from: 2^32 units of 8 bytes, so that
/// `region_offset` fits any region pointer in 32 bits.
pub const REGION_RESERVE: usize = 32 << 30;
/// Pages in the reservation (2 Mi).
pub const REGION_PAGES: usize = REGION_RESERVE / REGION_PAGE;
/// Allocation granule: blocks are 16-byte aligned and their sizes (with the 8-byte block header) are
/// multiples of it. The page header keeps one bit per granule in each of its two bitmaps.
pub const REGION_GRANULE: usize = 16;
/// Granules per page (1,024), and 64-bit words per page bitmap (16).
pub const REGION_GRANULES: usize = REGION_PAGE / REGION_GRANULE;
/// Words of one page bitmap.
pub const REGION_BITMAP_WORDS: usize = REGION_GRANULES / 64;
/// Empty pages a region keeps for itself (most recently emptied first) before giving them to the pool.
pub const REGION_CACHE_PAGES: usize = 4;
/// A page that is neither current nor full becomes a candidate for reuse (its holes are filled by bump
/// allocation again) once at least this percentage of its capacity is free.
pub const REGION_REUSE_FREE_PERCENT: usize = 40;
/// Freed blocks of up to this many granules (requests up to 376 bytes) leave a *hint* (their place) in
/// a small per-region stack per size; when the open hole is used up, an allocation of that size takes a
/// hinted place (checked against the page bitmap, so a stale hint is just skipped) before sweeping pages.
pub const REGION_HINT_CLASSES: usize = 24;
/// Hints kept per size (a ring: the oldest are forgotten first).
pub const REGION_HINT_SLOTS: usize = 32;
/// The shared pool keeps at most this many free pages resident; past it, it gives memory back to the OS
/// (`MADV_DONTNEED`) until only [`REGION_POOL_KEEP_LOW`] remain: hysteresis, so that a program that
/// frees and reallocates a few pages does not pay a system call each time. 256 pages = 4 MiB.
pub const REGION_POOL_KEEP_HIGH: usize = 256;
/// Free resident pages the pool keeps after trimming (64 pages = 1 MiB).
pub const REGION_POOL_KEEP_LOW: usize = 64;
/// Pages committed at a time when the pool carves fresh pages from the reservation (1 MiB).
pub const REGION_POOL_COMMIT_STEP: usize = 64;

const _: () = assert!(REGION_PAGE.is_power_of_two() && REGION_PAGE >= PAGE_SIZE);
const _: () = assert!(REGION_RESERVE % REGION_PAGE == 0 && REGION_RESERVE / 8 - 1 == u32::MAX as usize);
const _: () = assert!(REGION_GRANULE == MIN_ALIGN && REGION_GRANULES % 64 == 0);
const _: () = assert!(REGION_POOL_KEEP_LOW < REGION_POOL_KEEP_HIGH);
const _: () = assert!(REGION_HINT_SLOTS.is_power_of_two() && REGION_HINT_CLASSES <= 64);
const _: () = assert!(REGION_REUSE_FREE_PERCENT > 0 && REGION_REUSE_FREE_PERCENT < 100);
