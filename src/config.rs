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

// ---------------------------------------------------------------------------------------------------
// Malloc family (Hoard-style heap, src/hoard/)
// ---------------------------------------------------------------------------------------------------

/// Superblock size S: every superblock is S bytes, aligned to S, so `free` finds it by masking.
pub const SUPERBLOCK_SHIFT: u32 = 16;
/// S = 64 KiB.
pub const SUPERBLOCK_SIZE: usize = 1 << SUPERBLOCK_SHIFT;
/// Bytes at the start of a superblock taken by its header (two cache lines: the owner's fields, then the
/// remote-free list on a line of its own). Blocks start right after it.
pub const SUPERBLOCK_HEADER: usize = 128;
/// Largest small request: a quarter superblock (16 KiB), within Hoard's limit of half a superblock, so
/// that even the largest class fits three blocks after the header. Larger blocks are mapped directly.
pub const MAX_SMALL_SIZE: usize = SUPERBLOCK_SIZE / 4;
/// Superblocks are carved from segments of this size (4 MiB = 64 superblocks), mapped one at a time.
pub const SEGMENT_SIZE: usize = 4 << 20;
/// Fullness groups per size class for partially used superblocks (Hoard's fullness bins).
pub const FULLNESS_BINS: usize = 4;
/// Hoard's emptiness fraction f, as 1/EMPTY_FRACTION_INV: a heap gives a superblock to the global heap when
/// its in-use bytes u fall below (1 - f) * a (a = bytes it holds) ...
pub const EMPTY_FRACTION_INV: usize = 4;
/// ... and below a - K * S (Hoard's K), so that a heap keeps at least K superblocks' worth of slack.
pub const EMPTY_SLACK_SUPERBLOCKS: usize = 4;
/// Completely empty superblocks a thread heap keeps for reuse before it gives them to the global heap.
pub const HEAP_EMPTY_KEEP: usize = 2;
/// Full superblocks a heap inspects for remote frees each time it needs a new superblock (bounded so that
/// a heap with many full superblocks does not scan them all every time; the scan rotates).
pub const FULL_SCAN_LIMIT: usize = 16;
/// Blocks carved from a superblock's untouched tail at once (lazy carving keeps fresh pages untouched).
pub const CARVE_BATCH_BYTES: usize = 4096;
/// Default delay before empty superblocks and cached large spans are given back to the OS
/// (option RALLOCS_PURGE_DELAY_MS).
pub const DEFAULT_PURGE_DELAY_MS: u64 = 250;
/// Large spans kept mapped after free for reuse: at most this many ...
pub const LARGE_CACHE_ENTRIES: usize = 64;
/// ... and at most this many bytes in all (address space: the pages a span's block never wrote are
/// not resident, and cached spans are unmapped after the purge delay).
pub const LARGE_CACHE_BYTES: usize = 256 << 20;
/// Large span lengths are rounded up to one of this many sizes per doubling (at most 1.25x apart for
/// 4), so that a freed span fits the next request of a similar size. The rounding costs address space
/// only: pages past what a program writes are never touched.
pub const LARGE_STEPS_PER_DOUBLING: usize = 4;
/// Bytes before the user pointer in a large span (the span header).
pub const LARGE_HEADER: usize = 64;
/// Largest alignment served from superblocks (blocks start at multiples of it when the class size is a
/// multiple of it); larger alignments get a large span.
pub const MAX_SMALL_ALIGN: usize = 128;

const _: () = assert!(SUPERBLOCK_SIZE.is_power_of_two() && SUPERBLOCK_SIZE >= 16 * PAGE_SIZE);
const _: () = assert!(SUPERBLOCK_HEADER % 128 == 0 && SUPERBLOCK_HEADER % MIN_ALIGN == 0);
const _: () = assert!(SEGMENT_SIZE % SUPERBLOCK_SIZE == 0 && SEGMENT_SIZE / SUPERBLOCK_SIZE == 64);
const _: () = assert!(MAX_SMALL_SIZE <= SUPERBLOCK_SIZE / 2);
const _: () = assert!(LARGE_HEADER % MIN_ALIGN == 0 && LARGE_HEADER < PAGE_SIZE);
const _: () = assert!(LARGE_STEPS_PER_DOUBLING.is_power_of_two() && LARGE_CACHE_BYTES >= 16 * LARGE_CACHE_ENTRIES * PAGE_SIZE);
const _: () = assert!(SUPERBLOCK_HEADER % MAX_SMALL_ALIGN == 0);

// ---------------------------------------------------------------------------------------------------
// Trace recorder (src/trace.rs)
// ---------------------------------------------------------------------------------------------------

/// Bytes of the recorder's buffer (one mapping); it is written out with one `write(2)` when full.
pub const TRACE_BUFFER_SIZE: usize = 1 << 20;
/// Longest encoded record: tag, thread varint (5), two address varints (10 each), size and alignment
/// varints (10 each).
pub const TRACE_MAX_RECORD: usize = 1 + 5 + 4 * 10;
/// Threads the recorder tells apart (a power of two); later threads share one id.
pub const TRACE_MAX_THREADS: usize = 1024;
/// Longest `RALLOCS_TRACE` path, with its NUL.
pub const TRACE_PATH_MAX: usize = 1024;

const _: () = assert!(TRACE_BUFFER_SIZE % PAGE_SIZE == 0 && TRACE_BUFFER_SIZE >= 64 * TRACE_MAX_RECORD);
const _: () = assert!(TRACE_MAX_THREADS.is_power_of_two());
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
/// Allocation granule: blocks are 16-byte aligned and their chunks (8-byte block header + payload) are
/// multiples of it.
pub const REGION_GRANULE: usize = 16;
/// Granules per page (1,024).
pub const REGION_GRANULES: usize = REGION_PAGE / REGION_GRANULE;
/// Empty pages a region keeps for itself (most recently emptied first) before giving them to the pool.
pub const REGION_CACHE_PAGES: usize = 4;
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
const _: () = assert!(REGION_GRANULE == MIN_ALIGN && REGION_GRANULES <= u16::MAX as usize);
const _: () = assert!(REGION_POOL_KEEP_LOW < REGION_POOL_KEEP_HIGH);
