//! The malloc family's C entry points: the prefixed `rallocs_*` functions (always exported, declared in
//! rallocs.h) and, with feature `override`, the standard names that replace the system allocator.
//!
//! Each export validates its arguments, calls `crate::hoard`, and maps the result to C: NULL with
//! `errno` (ENOMEM, EINVAL), an error number (posix_memalign), or an abort naming the function and the
//! pointer for a pointer rallocs did not hand out.

use crate::ffi::types::rallocs_stats_t;
use crate::hoard;
use crate::os::{errno, set_errno};
use crate::trace::{self, Op};
use core::ffi::{c_int, c_void};
use core::ptr;

#[inline(always)]
fn or_enomem(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

// Every entry point reports its call to the trace recorder: allocations after they obtained the
// block, frees before they release it. malloc and free record on their slow paths (while tracing, no
// thread takes the fast paths), so tracing costs them nothing when it is off.

#[inline(always)]
fn malloc_impl(size: usize) -> *mut c_void {
    // errno is set on the slow path that failed.
    hoard::malloc(size, true).cast()
}

#[inline(always)]
fn free_impl(p: *mut c_void, func: &str) {
    // SAFETY: the C contract of free: p is NULL or a live block from this allocator. A pointer it never
    // returned is detected (address map, block grid) and aborts naming `func`.
    unsafe { hoard::free(p.cast(), func, true) }
}

fn calloc_impl(n: usize, size: usize) -> *mut c_void {
    let p = hoard::calloc(n, size);
    trace::record(Op::Calloc, p, ptr::null_mut(), n.saturating_mul(size), 0);
    or_enomem(p)
}

fn aligned_impl(align: usize, size: usize) -> *mut c_void {
    let p = hoard::aligned(align, size);
    trace::record(Op::Memalign, p, ptr::null_mut(), size, align);
    or_enomem(p)
}

fn aligned_or_einval(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    aligned_impl(align, size)
}

fn posix_memalign_impl(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || align % core::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let saved = errno();
    let p = hoard::aligned(align, size);
    trace::record(Op::Memalign, p, ptr::null_mut(), size, align);
    set_errno(saved);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller passed a valid out-parameter (posix_memalign's contract); written only on success.
    unsafe { *out = p.cast() };
    0
}

fn reallocarray_impl(p: *mut c_void, n: usize, size: usize, func: &str) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) => realloc_impl(p, total, func),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

fn realloc_impl(p: *mut c_void, size: usize, func: &str) -> *mut c_void {
    // SAFETY: the C contract of realloc, checked as for free.
    let q = unsafe { hoard::realloc(p.cast(), size, func) };
    trace::record(Op::Realloc, q, p.cast(), size, 0);
    if q.is_null() && (size != 0 || p.is_null()) {
        set_errno(libc::ENOMEM);
    }
    q.cast()
}

fn pvalloc_impl(size: usize) -> *mut c_void {
    let page = crate::os::page_size();
    match crate::os::align_up(size.max(1), page) {
        Some(n) => aligned_impl(page, n),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

fn free_sized_impl(p: *mut c_void, align: usize, size: usize, func: &str) {
    if p.is_null() {
        return;
    }
    // SAFETY: the C contract of free_sized, checked as for free.
    let usable = unsafe { hoard::usable_size(p.cast(), func) };
    if size > usable || (align != 0 && (p as usize) % align != 0) {
        crate::diag::invalid_pointer(func, p.cast(), "size or alignment does not match the block");
    }
    free_impl(p, func);
}

/// Allocates `size` bytes and returns a pointer aligned to 16 bytes (`RALLOCS_MIN_ALIGN`), or NULL with
/// `errno = ENOMEM`. `size` 0 returns a unique pointer that must be freed. Thread-safe; the memory is not
/// cleared.
#[no_mangle]
pub extern "C" fn rallocs_malloc(size: usize) -> *mut c_void {
    malloc_impl(size)
}

/// Frees a block returned by any `rallocs_*` allocating function (or by `malloc` & co. when rallocs
/// replaces them). NULL does nothing. A pointer rallocs did not return (a stack address, a pointer
/// into the middle of a block, memory from another allocator) aborts the process with one line on
/// stderr naming `rallocs_free` and the pointer. Thread-safe: any thread may free any block.
#[no_mangle]
pub extern "C" fn rallocs_free(p: *mut c_void) {
    free_impl(p, "rallocs_free")
}

/// Allocates `n * size` bytes cleared to zero, 16-byte aligned. NULL with `errno = ENOMEM` when the
/// product overflows or memory runs out. Thread-safe.
#[no_mangle]
pub extern "C" fn rallocs_calloc(n: usize, size: usize) -> *mut c_void {
    calloc_impl(n, size)
}

/// Resizes the block `p` to `size` bytes, keeping its contents up to the smaller size; the block may
/// move. `p` NULL: same as `rallocs_malloc(size)`. `size` 0 with `p` not NULL: frees `p` and returns
/// NULL (as glibc). On failure returns NULL with `errno = ENOMEM` and leaves `p` untouched. An invalid
/// `p` aborts as in `rallocs_free`. Thread-safe.
#[no_mangle]
pub extern "C" fn rallocs_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    realloc_impl(p, size, "rallocs_realloc")
}

/// `rallocs_realloc(p, n * size)`, except that an overflowing product returns NULL with
/// `errno = ENOMEM` and leaves `p` untouched. Thread-safe.
#[no_mangle]
pub extern "C" fn rallocs_reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    reallocarray_impl(p, n, size, "rallocs_reallocarray")
}

/// Allocates `size` bytes aligned to `alignment`, which must be a power of two (any, up to the size of
/// the address space; 64 MiB and more work). NULL with `errno = EINVAL` for a bad alignment, `ENOMEM`
/// when memory runs out. Free the block with `rallocs_free`. Thread-safe.
#[no_mangle]
pub extern "C" fn rallocs_aligned_alloc(alignment: usize, size: usize) -> *mut c_void {
    aligned_or_einval(alignment, size)
}

/// POSIX `posix_memalign`: stores a block of `size` bytes aligned to `alignment` (a power of two and a
/// multiple of `sizeof(void *)`) in `*out` and returns 0; returns `EINVAL` or `ENOMEM` on failure without
/// touching `*out` or `errno`. Thread-safe.
///
/// # Safety
/// `out` must be valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn rallocs_posix_memalign(out: *mut *mut c_void, alignment: usize, size: usize) -> c_int {
    posix_memalign_impl(out, alignment, size)
}

/// Same as `rallocs_aligned_alloc` (glibc's `memalign`): NULL with `errno = EINVAL` when `alignment` is not
/// a power of two. Thread-safe.
#[no_mangle]
pub extern "C" fn rallocs_memalign(alignment: usize, size: usize) -> *mut c_void {
    aligned_or_einval(alignment, size)
}

/// Allocates `size` bytes aligned to the page size. NULL with `errno = ENOMEM` on failure. Thread-safe.
#[no_mangle]
pub extern "C" fn rallocs_valloc(size: usize) -> *mut c_void {
    aligned_impl(crate::os::page_size(), size)
}

/// Allocates `size` bytes rounded up to a whole number of pages (at least one), page-aligned. NULL with
/// `errno = ENOMEM` on failure or overflow. Thread-safe.
#[no_mangle]
pub extern "C" fn rallocs_pvalloc(size: usize) -> *mut c_void {
    pvalloc_impl(size)
}

/// Returns the number of bytes usable in the block `p` (at least what was requested; 0 for NULL). An
/// invalid `p` aborts as in `rallocs_free`. Thread-safe.
#[no_mangle]
pub extern "C" fn rallocs_malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: the C contract: p is NULL or a live block; a foreign pointer is detected and aborts.
    unsafe { hoard::usable_size(p.cast(), "rallocs_malloc_usable_size") }
}

/// C23 `free_sized`: frees `p`, which was allocated with `size` bytes. A `size` larger than the block
/// aborts naming the function and the pointer. NULL does nothing. Thread-safe.
#[no_mangle]
pub extern "C" fn rallocs_free_sized(p: *mut c_void, size: usize) {
    free_sized_impl(p, 0, size, "rallocs_free_sized")
}

/// C23 `free_aligned_sized`: frees `p`, which was allocated with `alignment` and `size` (by
/// `rallocs_aligned_alloc`). A mismatch the library can see (a larger size, a pointer not aligned to
/// `alignment`) aborts naming the function and the pointer. NULL does nothing. Thread-safe.
#[no_mangle]
pub extern "C" fn rallocs_free_aligned_sized(p: *mut c_void, alignment: usize, size: usize) {
    free_sized_impl(p, alignment, size, "rallocs_free_aligned_sized")
}

/// Gives every free page of the malloc family back to the operating system now (otherwise that happens
/// after `RALLOCS_PURGE_DELAY_MS`). Returns 1 if memory was released, 0 if there was nothing to release.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn rallocs_trim() -> c_int {
    hoard::trim() as c_int
}

/// Fills `*out` with the malloc family's statistics (see `rallocs_stats_t`). NULL does nothing.
/// Thread-safe; takes a lock briefly.
///
/// # Safety
/// `out` is NULL or valid for writing a `rallocs_stats_t`.
#[no_mangle]
pub unsafe extern "C" fn rallocs_stats_get(out: *mut rallocs_stats_t) {
    // SAFETY: the caller passes NULL or a writable rallocs_stats_t.
    if let Some(out) = unsafe { out.as_mut() } {
        hoard::stats(out);
    }
}

/// Writes the malloc family's statistics as text, one `rallocs: name value` line each, to the file
/// descriptor `fd` (2 for stderr). Does not allocate. Thread-safe.
#[no_mangle]
pub extern "C" fn rallocs_stats_print(fd: c_int) {
    hoard::print_stats(fd)
}

/// The standard names (feature `override`): `-lrallocs` and `LD_PRELOAD=librallocs.so` make these the
/// process's allocator. Same semantics as glibc; the abort message names the function called.
#[cfg(feature = "override")]
mod standard {
    use super::*;

    #[no_mangle]
    pub extern "C" fn malloc(size: usize) -> *mut c_void {
        malloc_impl(size)
    }
    #[no_mangle]
    pub extern "C" fn free(p: *mut c_void) {
        free_impl(p, "free")
    }
    #[no_mangle]
    pub extern "C" fn cfree(p: *mut c_void) {
        free_impl(p, "cfree")
    }
    #[no_mangle]
    pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
        calloc_impl(n, size)
    }
    #[no_mangle]
    pub extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
        realloc_impl(p, size, "realloc")
    }
    #[no_mangle]
    pub extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
        reallocarray_impl(p, n, size, "reallocarray")
    }
    #[no_mangle]
    pub extern "C" fn aligned_alloc(alignment: usize, size: usize) -> *mut c_void {
        aligned_or_einval(alignment, size)
    }
    #[no_mangle]
    pub extern "C" fn memalign(alignment: usize, size: usize) -> *mut c_void {
        aligned_or_einval(alignment, size)
    }
    /// # Safety
    /// `out` must be valid for writing a pointer.
    #[no_mangle]
    pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, alignment: usize, size: usize) -> c_int {
        posix_memalign_impl(out, alignment, size)
    }
    #[no_mangle]
    pub extern "C" fn valloc(size: usize) -> *mut c_void {
        aligned_impl(crate::os::page_size(), size)
    }
    #[no_mangle]
    pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
        pvalloc_impl(size)
    }
    #[no_mangle]
    pub extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
        // SAFETY: as in rallocs_malloc_usable_size.
        unsafe { hoard::usable_size(p.cast(), "malloc_usable_size") }
    }
    #[no_mangle]
    pub extern "C" fn free_sized(p: *mut c_void, size: usize) {
        free_sized_impl(p, 0, size, "free_sized")
    }
    #[no_mangle]
    pub extern "C" fn free_aligned_sized(p: *mut c_void, alignment: usize, size: usize) {
        free_sized_impl(p, alignment, size, "free_aligned_sized")
    }
    #[no_mangle]
    pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
        hoard::trim() as c_int
    }
    #[no_mangle]
    pub extern "C" fn malloc_stats() {
        hoard::print_stats(2)
    }
    #[no_mangle]
    pub extern "C" fn mallinfo2() -> libc::mallinfo2 {
        let mut s = rallocs_stats_t::default();
        hoard::stats(&mut s);
        libc::mallinfo2 {
            arena: s.committed_bytes - s.large_bytes.min(s.committed_bytes),
            ordblks: s.thread_superblocks + s.global_superblocks,
            smblks: 0,
            hblks: s.large_blocks,
            hblkhd: s.large_bytes,
            usmblks: s.peak_committed_bytes,
            fsmblks: 0,
            uordblks: s.live_bytes,
            fordblks: s.committed_bytes.saturating_sub(s.live_bytes),
            keepcost: 0,
        }
    }

    // glibc's internal aliases, which some programs and libraries call directly.
    #[no_mangle]
    pub extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
        malloc(size)
    }
    #[no_mangle]
    pub extern "C" fn __libc_free(p: *mut c_void) {
        free(p)
    }
    #[no_mangle]
    pub extern "C" fn __libc_calloc(n: usize, size: usize) -> *mut c_void {
        calloc(n, size)
    }
    #[no_mangle]
    pub extern "C" fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
        realloc(p, size)
    }
    #[no_mangle]
    pub extern "C" fn __libc_memalign(alignment: usize, size: usize) -> *mut c_void {
        memalign(alignment, size)
    }
    #[no_mangle]
    pub extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
        valloc(size)
    }
    #[no_mangle]
    pub extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
        pvalloc(size)
    }
}
