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

const _: () = assert!(TRACE_BUFFER_SIZE % PAGE_SIZE == 0 && TRACE_BUFFER_SIZE >= 64 * TRACE_MAX_RECORD);
const _: () = assert!(TRACE_MAX_THREADS.is_power_of_two());
