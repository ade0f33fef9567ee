//! The operating-system layer: the only module that calls `mmap`, `mremap`, `munmap`, `madvise` and
//! `mprotect`.
//!
//! Address space goes through four states, and every function here moves a range between two of them:
//!
//! ```text
//!   (unmapped) --reserve--> reserved --commit--> committed --decommit--> reserved --release--> (unmapped)
//!                                                 committed --reset--> committed (pages dropped, read as 0)
//! ```
//!
//! * *reserved*: `PROT_NONE`, `MAP_NORESERVE`: costs address space only, touching it faults.
//! * *committed*: readable and writable; pages become resident when first touched.
//! * `decommit` gives the memory and the commit charge back; `reset` only drops the pages (cheaper, and
//!   the range stays usable).
//!
//! Errors are values ([`OsError`] carries the errno). Tests inject failures per thread through
//! [`inject_failures_after`], the seam that lets every out-of-memory path be exercised.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

/// An operating-system failure, carrying the `errno` the kernel returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OsError(pub i32);

/// The result of an OS-layer call.
pub type OsResult<T> = Result<T, OsError>;

impl OsError {
    /// Out of memory (or of address space), the error callers map to `ENOMEM`.
    pub const NO_MEMORY: OsError = OsError(libc::ENOMEM);
    /// A bad argument (size or alignment), mapped to `EINVAL`.
    pub const INVALID: OsError = OsError(libc::EINVAL);
}

/// The page size, read once (0 until then).
static PAGE: AtomicUsize = AtomicUsize::new(0);

/// The kernel's page size in bytes.
#[inline]
pub fn page_size() -> usize {
    // Relaxed: the value is the same whichever thread stores it; there is nothing else to order.
    let p = PAGE.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let p = if p > 0 { p as usize } else { crate::config::PAGE_SIZE };
    // Relaxed: see the load above.
    PAGE.store(p, Ordering::Relaxed);
    p
}

/// Rounds `n` up to a multiple of `align` (a power of two); `None` on overflow.
#[inline]
pub const fn align_up(n: usize, align: usize) -> Option<usize> {
    match n.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

#[cfg(test)]
std::thread_local! {
    static FAIL_AFTER: core::cell::Cell<Option<u32>> = const { core::cell::Cell::new(None) };
}

/// Test seam: after `n` more successful mapping calls on this thread (reserve, map, commit), every
/// further one fails with `ENOMEM`, until `None` is set again.
#[cfg(test)]
pub fn inject_failures_after(n: Option<u32>) {
    FAIL_AFTER.with(|f| f.set(n));
}

#[inline]
fn injected_failure() -> bool {
    #[cfg(test)]
    {
        FAIL_AFTER.with(|f| match f.get() {
            Some(0) => true,
            Some(n) => {
                f.set(Some(n - 1));
                false
            }
            None => false,
        })
    }
    #[cfg(not(test))]
    {
        false
    }
}

/// The calling thread's `errno`.
#[inline]
pub fn errno() -> i32 {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
#[inline]
pub fn set_errno(e: i32) {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() = e }
}

/// Maps `size` bytes (a multiple of the page size) with `prot` and `flags`, aligned to `align` (a
/// power of two), trimming the over-allocation when the kernel's placement is not aligned.
fn map_aligned(size: usize, align: usize, prot: i32, flags: i32) -> OsResult<NonNull<u8>> {
    let page = page_size();
    if size == 0 || size % page != 0 || !align.is_power_of_two() {
        return Err(OsError::INVALID);
    }
    if injected_failure() {
        return Err(OsError::NO_MEMORY);
    }
    let align = if align < page { page } else { align };
    let mmap = |len: usize| -> OsResult<*mut u8> {
        // SAFETY: an anonymous private mapping at an address the kernel chooses touches no existing
        // memory.
        let p = unsafe { libc::mmap(core::ptr::null_mut(), len, prot, flags | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
        if p == libc::MAP_FAILED {
            Err(OsError(errno()))
        } else {
            Ok(p.cast())
        }
    };
    if align == page {
        return Ok(nonnull(mmap(size)?));
    }
    // Over-reserve by align - page, then give back the unaligned head and the tail.
    let total = size.checked_add(align - page).ok_or(OsError::NO_MEMORY)?;
    let raw = mmap(total)?;
    let addr = raw as usize;
    let aligned = (addr + align - 1) & !(align - 1);
    let head = aligned - addr;
    let tail = total - head - size;
    // SAFETY: head and tail lie inside the mapping just made and belong to nobody else.
    unsafe {
        if head != 0 {
            unmap_raw(raw, head);
        }
        if tail != 0 {
            unmap_raw((aligned + size) as *mut u8, tail);
        }
    }
    Ok(nonnull(aligned as *mut u8))
}

#[inline]
fn nonnull(p: *mut u8) -> NonNull<u8> {
    match NonNull::new(p) {
        Some(p) => p,
        None => crate::diag::fatal(format_args!("os: the kernel mapped address 0")),
    }
}

/// # Safety
/// `[p, p + len)` is a mapping (or the part of one) that nothing uses any more.
unsafe fn unmap_raw(p: *mut u8, len: usize) {
    // SAFETY: the caller guarantees the range is ours and unused.
    let r = unsafe { libc::munmap(p.cast(), len) };
    if r != 0 {
        crate::diag::fatal(format_args!("os: munmap({:p}, {}) failed, errno {}", p, len, errno()));
    }
}

/// Reserves `size` bytes of address space (a multiple of the page size) aligned to `align` (any power
/// of two; at least a page is used). The range is inaccessible until [`commit`]ted and costs no memory.
pub fn reserve(size: usize, align: usize) -> OsResult<NonNull<u8>> {
    map_aligned(size, align, libc::PROT_NONE, libc::MAP_NORESERVE)
}

/// Reserves and commits `size` bytes aligned to `align` in one call: for blocks that are used at once
/// (large allocations).
pub fn map(size: usize, align: usize) -> OsResult<NonNull<u8>> {
    map_aligned(size, align, libc::PROT_READ | libc::PROT_WRITE, 0)
}

fn check_range(p: NonNull<u8>, len: usize) -> OsResult<()> {
    let page = page_size();
    if len == 0 || len % page != 0 || (p.as_ptr() as usize) % page != 0 {
        Err(OsError::INVALID)
    } else {
        Ok(())
    }
}

/// Makes a reserved range readable and writable. Fresh pages read as zero.
///
/// # Safety
/// `[p, p + len)` lies inside a range returned by [`reserve`] or [`map`] and not yet released;
/// `p` and `len` are page-aligned.
pub unsafe fn commit(p: NonNull<u8>, len: usize) -> OsResult<()> {
    check_range(p, len)?;
    if injected_failure() {
        return Err(OsError::NO_MEMORY);
    }
    // SAFETY: the caller guarantees the range is one of our mappings.
    let r = unsafe { libc::mprotect(p.as_ptr().cast(), len, libc::PROT_READ | libc::PROT_WRITE) };
    if r == 0 {
        Ok(())
    } else {
        Err(OsError(errno()))
    }
}

/// Gives the memory of a committed range back to the OS and makes it inaccessible again (reserved):
/// the resident pages and the commit charge both go back.
///
/// # Safety
/// `[p, p + len)` lies inside one of our mappings, page-aligned, and nothing reads or writes it until
/// it is committed again.
pub unsafe fn decommit(p: NonNull<u8>, len: usize) -> OsResult<()> {
    check_range(p, len)?;
    // Mapping fresh PROT_NONE pages over the range drops the old pages atomically.
    // SAFETY: MAP_FIXED replaces only pages of our own mapping, which the caller says are unused.
    let r = unsafe {
        libc::mmap(
            p.as_ptr().cast(),
            len,
            libc::PROT_NONE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if r == libc::MAP_FAILED {
        Err(OsError(errno()))
    } else {
        Ok(())
    }
}

/// Drops the resident pages of a committed range; the range stays committed and reads as zero.
///
/// # Safety
/// `[p, p + len)` lies inside one of our committed mappings, page-aligned, and its contents are no
/// longer needed.
pub unsafe fn reset(p: NonNull<u8>, len: usize) -> OsResult<()> {
    check_range(p, len)?;
    // SAFETY: the caller guarantees the range is ours and its contents are dead.
    let r = unsafe { libc::madvise(p.as_ptr().cast(), len, libc::MADV_DONTNEED) };
    if r == 0 {
        Ok(())
    } else {
        Err(OsError(errno()))
    }
}

/// Grows or shrinks the mapping `[p, p + old_len)` to `new_len` bytes without moving it; fails (and
/// changes nothing) when the address space after it is taken. New pages read as zero.
///
/// # Safety
/// `[p, p + old_len)` is one whole mapping of ours, made by [`map`], page-aligned lengths.
pub unsafe fn resize_in_place(p: NonNull<u8>, old_len: usize, new_len: usize) -> OsResult<()> {
    check_range(p, old_len)?;
    check_range(p, new_len)?;
    if injected_failure() {
        return Err(OsError::NO_MEMORY);
    }
    // SAFETY: the caller guarantees the mapping is ours; without MREMAP_MAYMOVE the kernel either
    // resizes in place or fails without touching it.
    let r = unsafe { libc::mremap(p.as_ptr().cast(), old_len, new_len, 0) };
    if r == libc::MAP_FAILED {
        Err(OsError(errno()))
    } else {
        Ok(())
    }
}

/// Returns a reserved or committed range to the OS.
///
/// # Safety
/// `[p, p + len)` lies inside one of our mappings, page-aligned, and is never used again.
pub unsafe fn release(p: NonNull<u8>, len: usize) -> OsResult<()> {
    check_range(p, len)?;
    // SAFETY: the caller guarantees the range is ours and dead.
    let r = unsafe { libc::munmap(p.as_ptr().cast(), len) };
    if r == 0 {
        Ok(())
    } else {
        Err(OsError(errno()))
    }
}

/// Writes all of `bytes` to standard error with `write(2)`, retrying on short writes; never allocates.
pub fn write_stderr(bytes: &[u8]) {
    write_fd(2, bytes)
}

/// Writes all of `bytes` to file descriptor `fd`, retrying on short writes; never allocates. Errors
/// (a closed descriptor) end the write silently: diagnostics must not fail.
pub fn write_fd(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else if n < 0 && errno() == libc::EINTR {
            continue;
        } else {
            return;
        }
    }
}

/// Ends the process at once with `SIGABRT`, running no handler of ours.
pub fn abort() -> ! {
    // SAFETY: abort has no preconditions and does not return.
    unsafe { libc::abort() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_is_a_power_of_two() {
        assert!(page_size().is_power_of_two());
        assert!(page_size() >= 4096);
    }

    #[test]
    fn align_up_rounds_and_detects_overflow() {
        assert_eq!(align_up(0, 16), Some(0));
        assert_eq!(align_up(1, 16), Some(16));
        assert_eq!(align_up(4096, 4096), Some(4096));
        assert_eq!(align_up(usize::MAX - 3, 16), None);
    }

    #[test]
    fn reserve_honours_every_alignment() {
        let page = page_size();
        let mut align = page;
        while align <= 64 << 20 {
            let p = reserve(2 * page, align).expect("reserve");
            assert_eq!(p.as_ptr() as usize % align, 0, "alignment {align}");
            // SAFETY: p was just reserved with this size.
            unsafe { release(p, 2 * page).unwrap() };
            align <<= 1;
        }
    }

    #[test]
    fn commit_write_decommit_reads_zero_again() {
        let page = page_size();
        let p = reserve(4 * page, page).unwrap();
        // SAFETY: the range is our reservation; each step keeps to it.
        unsafe {
            commit(p, 4 * page).unwrap();
            core::ptr::write_bytes(p.as_ptr(), 0xAB, 4 * page);
            decommit(p, 4 * page).unwrap();
            commit(p, 4 * page).unwrap();
            assert_eq!(*p.as_ptr().add(3 * page), 0, "decommitted memory reads zero");
            core::ptr::write_bytes(p.as_ptr(), 0xCD, page);
            reset(p, page).unwrap();
            assert_eq!(*p.as_ptr(), 0, "reset memory reads zero");
            release(p, 4 * page).unwrap();
        }
    }

    #[test]
    fn decommit_gives_resident_memory_back() {
        let page = page_size();
        let len = 64 << 20;
        let p = map(len, page).unwrap();
        let rss = || -> usize {
            let s = std::fs::read_to_string("/proc/self/statm").unwrap();
            s.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * page
        };
        // SAFETY: the range is our mapping.
        unsafe { core::ptr::write_bytes(p.as_ptr(), 1, len) };
        let touched = rss();
        // SAFETY: the range is our mapping and its contents are dead.
        unsafe { decommit(p, len).unwrap() };
        let after = rss();
        assert!(touched >= after + len / 2, "rss {touched} -> {after} after decommitting {len}");
        // SAFETY: as above.
        unsafe { release(p, len).unwrap() };
    }

    #[test]
    fn bad_arguments_are_errors() {
        let page = page_size();
        assert_eq!(reserve(0, page), Err(OsError::INVALID));
        assert_eq!(reserve(page + 1, page), Err(OsError::INVALID));
        assert_eq!(reserve(page, 3 * page), Err(OsError::INVALID));
        assert_eq!(reserve(usize::MAX & !(page - 1), 1 << 30), Err(OsError::NO_MEMORY));
        let p = reserve(page, page).unwrap();
        // SAFETY: the calls are refused before touching anything (misaligned pointer / length).
        unsafe {
            let odd = NonNull::new_unchecked(p.as_ptr().add(1));
            assert_eq!(commit(odd, page), Err(OsError::INVALID));
            assert_eq!(commit(p, 7), Err(OsError::INVALID));
            release(p, page).unwrap();
        }
    }

    #[test]
    fn injected_out_of_memory_reaches_every_mapping_call() {
        let page = page_size();
        inject_failures_after(Some(1));
        let p = reserve(page, page).expect("first call succeeds");
        assert_eq!(reserve(page, page), Err(OsError::NO_MEMORY));
        assert_eq!(map(page, page), Err(OsError::NO_MEMORY));
        // SAFETY: p is our reservation.
        assert_eq!(unsafe { commit(p, page) }, Err(OsError::NO_MEMORY));
        inject_failures_after(None);
        // SAFETY: as above.
        unsafe {
            commit(p, page).unwrap();
            release(p, page).unwrap();
        }
    }

    #[test]
    fn errno_round_trips() {
        set_errno(libc::EINVAL);
        assert_eq!(errno(), libc::EINVAL);
        set_errno(0);
    }
}
