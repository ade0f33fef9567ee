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
/// Bytes at the start of a superblock taken by its header (the owner's fields, the list links, then the
/// remote-free list on a cache line of its own; rounded to 256 so that blocks of classes that are
/// multiples of 128 start at multiples of 128). Blocks start right after it.
pub const SUPERBLOCK_HEADER: usize = 256;
/// Largest small request: a quarter superblock (16 KiB), within Hoard's limit of half a superblock, so
/// that even the largest class fits three blocks after the header. Larger blocks are mapped directly.
pub const MAX_SMALL_SIZE: usize = SUPERBLOCK_SIZE / 4;
/// Medium superblocks: 1 MiB (aligned to S), for the classes above MAX_SMALL_SIZE, so that blocks of
/// up to a quarter of it are served by the heap (no system call, memory reused warm) instead of being
/// mapped one by one.
pub const MEDIUM_SUPERBLOCK_SIZE: usize = 1 << 20;
/// Largest medium request (256 KiB): a quarter of a medium superblock. Larger blocks are mapped directly.
pub const MAX_MEDIUM_SIZE: usize = MEDIUM_SUPERBLOCK_SIZE / 4;
/// Superblocks are carved from segments of this size (4 MiB = 64 small or 4 medium superblocks), mapped
/// one at a time.
pub const SEGMENT_SIZE: usize = 4 << 20;
/// Fullness groups per size class for partially used superblocks (Hoard's fullness bins).
pub const FULLNESS_BINS: usize = 4;
/// Hoard's emptiness fraction f, as 1/EMPTY_FRACTION_INV: a heap gives a superblock to the global heap when
/// its in-use bytes u fall below (1 - f) * a (a = bytes it holds) ...
pub const EMPTY_FRACTION_INV: usize = 4;
/// ... and below a - K * S (Hoard's K), so that a heap keeps at least K superblocks' worth of slack.
pub const EMPTY_SLACK_SUPERBLOCKS: usize = 4;
/// Completely empty superblocks a thread heap keeps for reuse before it gives them to the global heap
/// (small, medium).
pub const HEAP_EMPTY_KEEP: [usize; 2] = [2, 1];
/// A full superblock returns to a partial bin once 1/FULL_REFILL_FRACTION_INV of its blocks (at least
/// one) were freed by its owner.
pub const FULL_REFILL_FRACTION_INV: u32 = 8;
/// Slots of a heap's cache of the superblocks it owns (direct-mapped by address, a power of two): a free
/// that hits it needs no address-map lookup.
pub const OWNED_CACHE_SLOTS: usize = 64;
const _: () = assert!(OWNED_CACHE_SLOTS.is_power_of_two());
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
pub const LARGE_CACHE_BYTES: usize = 32 << 20;
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
const _: () = assert!(MEDIUM_SUPERBLOCK_SIZE % SUPERBLOCK_SIZE == 0 && SEGMENT_SIZE % MEDIUM_SUPERBLOCK_SIZE == 0);
// The address map encodes a medium superblock's start as 0..15 chunks back (4 bits).
const _: () = assert!(MEDIUM_SUPERBLOCK_SIZE / SUPERBLOCK_SIZE <= 16);
const _: () = assert!(MAX_MEDIUM_SIZE <= MEDIUM_SUPERBLOCK_SIZE / 2 && MAX_MEDIUM_SIZE > MAX_SMALL_SIZE);
const _: () = assert!(MAX_SMALL_SIZE <= SUPERBLOCK_SIZE / 2);
const _: () = assert!(LARGE_HEADER % MIN_ALIGN == 0 && LARGE_HEADER < PAGE_SIZE);
const _: () = assert!(LARGE_STEPS_PER_DOUBLING.is_power_of_two() && LARGE_CACHE_BYTES >= 16 * LARGE_CACHE_ENTRIES * PAGE_SIZE);
const _: () = assert!(SUPERBLOCK_HEADER % MAX_SMALL_ALIGN == 0);

// ---------------------------------------------------------------------------------------------------
// Trace recorder (src/trace.rs)

/// Bytes of the recorder's buffer (one mapping); it is written out with one `write(2)` when full.
pub const TRACE_BUFFER_SIZE: usize = 1 << 20;
/// Longest encoded record: tag, thread varint (5), two address varints (10 each), size and alignment
/// varints (10 each).
pub const TRACE_MAX_RECORD: usize = 1 + 5 + 4 * 10;
/// Threads the recorder tells apart (a power of two); later threads share one id.
pub const TRACE_MAX_THREADS: usize = 1024;
/// Longest `RALLOCS_TRACE` path, with its NUL.
pub const TRACE_PATH_MAX: usize = 1024;
/// Suffixes `.1` ... `.N` tried after `<path>.<pid>` before the recorder gives up.
pub const TRACE_NAME_TRIES: u32 = 1000;

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
/// The shared pool keeps at most `max(this, pages in use)` free pages resident (freed single pages and the
/// pages of freed runs); past it, it gives memory back to the OS (`MADV_DONTNEED`) until only
/// `max(REGION_POOL_KEEP_LOW, 7/8 of the pages in use)` remain: hysteresis, so that a program that frees
/// and reallocates pages or large blocks does not pay a system call and page faults each time, while
/// resident memory stays within twice the pages in use (plus 4 MiB). 256 pages = 4 MiB.
pub const REGION_POOL_KEEP_HIGH: usize = 256;
/// Free resident pages the pool keeps at least after trimming (64 pages = 1 MiB).
pub const REGION_POOL_KEEP_LOW: usize = 64;
/// Pages committed at a time when the pool carves fresh pages from the reservation (1 MiB).
pub const REGION_POOL_COMMIT_STEP: usize = 64;

const _: () = assert!(REGION_PAGE.is_power_of_two() && REGION_PAGE >= PAGE_SIZE);
const _: () = assert!(REGION_RESERVE % REGION_PAGE == 0 && REGION_RESERVE / 8 - 1 == u32::MAX as usize);
const _: () = assert!(REGION_GRANULE == MIN_ALIGN && REGION_GRANULES <= u16::MAX as usize);
const _: () = assert!(REGION_POOL_KEEP_LOW < REGION_POOL_KEEP_HIGH);

// ---------------------------------------------------------------------------------------------------
// bimp: the improved bump allocator (src/bimp.rs)
// ---------------------------------------------------------------------------------------------------

/// Parses the decimal number that build.rs passes in `RALLOCS_BIMP_ALIGN` (0 if it is not one).
const fn parse_decimal(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v: usize = 0;
    while i < b.len() {
        if b[i] < b'0' || b[i] > b'9' {
            return 0;
        }
        v = v * 10 + (b[i] - b'0') as usize;
        i += 1;
    }
    v
}

/// Alignment of every bimp block and of every pointer `bimp_malloc` returns: the seed's `BIMP_ALIGN`,
/// set at build time (`make BIMP_ALIGN=32`, or the `BIMP_ALIGN` environment variable of a cargo build),
/// 16 by default. Each block carries a header of this many bytes, so the next block stays aligned.
pub const BIMP_ALIGN: usize = match option_env!("RALLOCS_BIMP_ALIGN") {
    Some(s) => parse_decimal(s),
    None => 16,
};

/// Address space the bimp heap tries to reserve on its first call (64 GiB: costs no memory). When the
/// reservation fails (for example under `ulimit -v`) it halves the request down to [`BIMP_RESERVE_MIN`];
/// when `RLIMIT_AS` is finite it starts at a quarter of that limit.
pub const BIMP_RESERVE: usize = 64 << 30;

/// Smallest reservation the bimp heap accepts before it reports `ENOMEM`.
pub const BIMP_RESERVE_MIN: usize = 4 << 20;

/// Least amount the committed part of the bimp heap grows by when the top reaches its end (one
/// `mprotect`; pages become resident only when touched).
pub const BIMP_COMMIT_CHUNK: usize = 1 << 20;

/// When the committed end of the bimp heap lies more than this far above the top, the pages above
/// `top + BIMP_DECOMMIT_KEEP` go back to the OS. The gap between the two is the hysteresis: a top that
/// moves up and down by less than `BIMP_DECOMMIT_TRIGGER - BIMP_DECOMMIT_KEEP` (7 MiB) never commits and
/// decommits the same pages twice.
pub const BIMP_DECOMMIT_TRIGGER: usize = 8 << 20;

/// Committed bytes kept above the top after a decommit (see [`BIMP_DECOMMIT_TRIGGER`]).
pub const BIMP_DECOMMIT_KEEP: usize = 1 << 20;

/// Largest request the bimp heap considers (1 TiB, more than any reservation): larger sizes fail with
/// `ENOMEM` before any size arithmetic, so nothing below can overflow. Block links are stored in 40 bits.
pub const BIMP_MAX_REQUEST: usize = 1 << 40;

const _: () = assert!(
    BIMP_ALIGN.is_power_of_two() && BIMP_ALIGN >= 16 && BIMP_ALIGN <= 1 << 20,
    "BIMP_ALIGN must be a power of two from 16 to 1048576"
);
const _: () = assert!(BIMP_ALIGN >= MIN_ALIGN);
const _: () = assert!(BIMP_COMMIT_CHUNK % PAGE_SIZE == 0 && BIMP_DECOMMIT_KEEP % PAGE_SIZE == 0);
const _: () = assert!(BIMP_DECOMMIT_TRIGGER > BIMP_DECOMMIT_KEEP + BIMP_COMMIT_CHUNK);
const _: () = assert!(BIMP_RESERVE_MIN <= BIMP_RESERVE && BIMP_RESERVE < BIMP_MAX_REQUEST);
const _: () = assert!(BIMP_RESERVE_MIN >= 2 * BIMP_ALIGN && BIMP_RESERVE_MIN % PAGE_SIZE == 0);

// ---- rmalloc (relocatable handles over a compacting heap, `src/rm/`) ----

/// Bytes of address space reserved for the rmalloc heap (committed as it grows, capped by `rmsetlimit`).
/// 16 GiB: address space only (`MAP_NORESERVE`); the largest single block is below this.
pub const RM_HEAP_RESERVE: usize = 16 << 30;

/// Maximum number of rmalloc handles: the handle table reserves `RM_MAX_HANDLES * RM_SLOT_SIZE` bytes
/// (2^26 slots * 32 B = 2 GiB of address space) and commits it in [`RM_TABLE_COMMIT`] steps.
pub const RM_MAX_HANDLES: usize = 1 << 26;

/// Size and alignment of one handle slot. A handle is the slot's address plus the low 5 bits of the
/// slot's generation, so the slot size is also the number of distinct generation tags (32).
pub const RM_SLOT_SIZE: usize = 32;

/// Bytes of the handle table committed at a time (64 KiB = 2048 slots).
pub const RM_TABLE_COMMIT: usize = 64 << 10;

/// Bytes of the heap committed at least at a time when the heap grows (64 KiB).
pub const RM_HEAP_COMMIT: usize = 64 << 10;

/// Committed bytes past the end of the heap that are kept when a free shrinks the heap; more than this
/// is given back to the OS (`os::decommit`). A completed compaction gives back everything past the end.
pub const RM_DECOMMIT_SLACK: usize = 1 << 20;

/// A freed handle slot is reused only when at least this many freed slots wait in the FIFO queue (or
/// the table cannot grow): a stale handle then still finds its slot marked freed for a long time, and
/// after reuse the 5-bit generation tag in the handle still tells it apart 31 times out of 32.
pub const RM_HANDLE_REUSE_DELAY: usize = 1024;

/// Compaction reads the clock after this many blocks, or after moving [`RM_COMPACT_CHECK_BYTES`], so a
/// budgeted `rmcompact` overshoots by at most that much work plus one block.
pub const RM_COMPACT_CHECK_BLOCKS: usize = 16;

/// See [`RM_COMPACT_CHECK_BLOCKS`] (64 KiB: about 10 µs of copying).
pub const RM_COMPACT_CHECK_BYTES: usize = 64 << 10;

/// A budgeted `rmcompact` gives at most this many bytes of pages back to the OS per call (decommitting
/// costs about 0.1 µs per resident page: 1 MiB ≈ 30 µs); the rest goes back in the following calls.
pub const RM_COMPACT_TRIM_STEP: usize = 1 << 20;

const _: () = assert!(RM_SLOT_SIZE.is_power_of_two() && RM_SLOT_SIZE >= 32);
const _: () = assert!(RM_TABLE_COMMIT % PAGE_SIZE == 0 && RM_TABLE_COMMIT % RM_SLOT_SIZE == 0);
const _: () = assert!(RM_HEAP_COMMIT % PAGE_SIZE == 0 && RM_HEAP_RESERVE % RM_HEAP_COMMIT == 0);
const _: () = assert!((RM_MAX_HANDLES as u64) < u32::MAX as u64);
// Free-block footers hold sizes in 16-byte units in 32 bits (the heap stays below 64 GiB), and block
// headers hold the slot index + 1 in 29 bits.
const _: () = assert!((RM_HEAP_RESERVE as u64) < (1u64 << 36));
const _: () = assert!(RM_MAX_HANDLES < (1 << 29));

/// rmalloc blocks up to this size (header included) are kept, uncoalesced, in per-size LIFO lists when
/// freed, and handed out again first (the fast path: one list pop or push). 1 KiB = 64 lists.
pub const RM_QUICK_MAX: usize = 1024;

/// At most this many bytes wait in the quick lists; beyond it frees coalesce at once. Compaction takes
/// the quick blocks it meets as free space; an allocation that does not fit first flushes the lists
/// into ordinary free blocks.
pub const RM_QUICK_BYTES: usize = 256 << 10;

const _: () = assert!(RM_QUICK_MAX % 16 == 0 && RM_QUICK_MAX >= 32 && RM_QUICK_BYTES >= RM_QUICK_MAX);
