//! Run-time options: one table, read once at start-up from `RALLOCS_*` environment variables with libc
//! `getenv` (which does not allocate), never with `std::env`.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `RALLOCS_PURGE_DELAY_MS` | 250 | delay before empty superblocks and cached large spans go back to the OS; 0 = at once |
//! | `RALLOCS_SHOW_STATS` | 0 | 1: print the statistics to stderr at process exit |
//!
//! (`RALLOCS_TRACE`, the allocation-trace recorder's output file, is read by its own module.)

use core::sync::atomic::{AtomicU64, Ordering};

/// One option: its variable, its default, and its value once read.
pub struct Opt {
    /// Environment variable, NUL-terminated.
    pub name: &'static [u8],
    /// Value when the variable is unset or not a number.
    pub default: u64,
    value: AtomicU64,
}

impl Opt {
    const fn new(name: &'static [u8], default: u64) -> Self {
        Opt { name, default, value: AtomicU64::new(default) }
    }

    /// The option's value (its default until [`load`] ran).
    #[inline]
    pub fn get(&self) -> u64 {
        // Relaxed: written once by `load` inside the allocator's one-time initialisation, whose
        // completion (sync::Once, Acquire/Release) orders it before every later reader.
        self.value.load(Ordering::Relaxed)
    }
}

/// `RALLOCS_PURGE_DELAY_MS`.
pub static PURGE_DELAY_MS: Opt = Opt::new(b"RALLOCS_PURGE_DELAY_MS\0", crate::config::DEFAULT_PURGE_DELAY_MS);
/// `RALLOCS_SHOW_STATS`.
pub static SHOW_STATS: Opt = Opt::new(b"RALLOCS_SHOW_STATS\0", 0);

static ALL: [&Opt; 2] = [&PURGE_DELAY_MS, &SHOW_STATS];

/// Parses a decimal number; `None` for anything else.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    Some(v)
}

/// Reads every option from the environment. Called once, from the allocator's initialiser.
pub fn load() {
    for opt in ALL {
        // SAFETY: the name is NUL-terminated; getenv returns NULL or a NUL-terminated string that lives
        // as long as the environment is not modified, and we copy out of it at once.
        let s = unsafe { libc::getenv(opt.name.as_ptr().cast()) };
        if s.is_null() {
            continue;
        }
        // SAFETY: s is a NUL-terminated string from the environment.
        let bytes = unsafe { core::ffi::CStr::from_ptr(s) }.to_bytes();
        let v = parse_u64(bytes).unwrap_or(opt.default);
        // Relaxed: see `get`.
        opt.value.store(v, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_rejects_the_rest() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"1500"), Some(1500));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"12ms"), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
    }
}
