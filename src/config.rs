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
