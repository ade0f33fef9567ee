//! C entry points of bimp, the improved bump allocator (`bimp_*`), and with the `bimp-preload` feature
//! the unprefixed malloc family served by it (the preload library `librallocs-bimp.so`).
//!
//! Each export validates its arguments, calls [`crate::bimp`] and maps the result to C: a pointer, or
//! NULL with `errno`, or an abort with one line naming the function and the pointer. The shared
//! helpers below take the C name of the entry point so that the diagnostic names what the program
//! called (`bimp_free` or `free`).

use core::ffi::{c_int, c_void};
use core::ptr::{null_mut, NonNull};

use crate::bimp;
use crate::ffi::types::bimp_stats_t;
use crate::os;

#[cfg(all(feature = "override", feature = "bimp-preload"))]
compile_error!(
    "features `override` and `bimp-preload` both export malloc: build the bimp preload library with \
     --no-default-features --features bimp-preload"
);

/// NULL with `errno` set to `e`.
#[cold]
#[inline(never)]
fn fail(e: c_int) -> *mut c_void {
    os::set_errno(e);
    null_mut()
}

#[inline(always)]
fn out(p: Option<NonNull<u8>>) -> *mut c_void {
    match p {
        Some(p) => p.as_ptr().cast(),
        None => fail(libc::ENOMEM),
    }
}

#[cold]
#[inline(never)]
fn invalid(func: &str, p: *mut c_void, e: bimp::Invalid) -> ! {
    crate::diag::invalid_pointer(func, p as *const u8, e.why())
}

/// Frees `p`, aborting with a message naming `func` when it is invalid (the abort happens inside
/// [`bimp::free_c`], so that the fast path is a leaf function).
#[inline(always)]
fn free_named(func: &'static str, p: *mut c_void) {
    bimp::free_c(p.cast(), func)
}

/// realloc with glibc semantics: the common case (`p` not NULL, `size` not 0) goes straight to
/// [`bimp::realloc_c`], whose fast path is a leaf; the rest to [`realloc_named`].
#[inline(always)]
fn realloc_plain(func: &'static str, p: *mut c_void, size: usize) -> *mut c_void {
    if size != 0 && !p.is_null() {
        return bimp::realloc_c(p.cast(), size, func).cast();
    }
    realloc_named(func, p, size, false)
}

/// realloc with glibc semantics; `free_on_failure` gives BSD `reallocf`.
#[inline(never)]
fn realloc_named(func: &'static str, p: *mut c_void, size: usize, free_on_failure: bool) -> *mut c_void {
    if p.is_null() {
        return bimp::malloc_c(size).cast();
    }
    if size == 0 {
        free_named(func, p);
        return null_mut();
    }
    let q = bimp::realloc_c(p.cast(), size, func);
    if q.is_null() && free_on_failure {
        // The block is untouched by the failure: free it, keeping realloc's errno.
        let e = os::errno();
        free_named(func, p);
        os::set_errno(e);
    }
    q.cast()
}

fn calloc_impl(n: usize, size: usize) -> *mut c_void {
    let Some(total) = n.checked_mul(size) else { return fail(libc::ENOMEM) };
    match bimp::malloc(total) {
        // SAFETY: the block was just allocated with at least `total` bytes.
        Some(p) => unsafe {
            core::ptr::write_bytes(p.as_ptr(), 0, total);
            p.as_ptr().cast()
        },
        None => fail(libc::ENOMEM),
    }
}

fn reallocarray_named(func: &'static str, p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) => realloc_named(func, p, total, false),
        None => fail(libc::ENOMEM),
    }
}

fn aligned_alloc_impl(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return fail(libc::EINVAL);
    }
    out(bimp::malloc_aligned(size, align))
}

fn memalign_impl(align: usize, size: usize) -> *mut c_void {
    // glibc: an alignment above SIZE_MAX/2 + 1 is EINVAL; one that is not a power of two is rounded up.
    if align > usize::MAX / 2 + 1 {
        return fail(libc::EINVAL);
    }
    let align = if align <= 1 { 1 } else { align.next_power_of_two() };
    out(bimp::malloc_aligned(size, align))
}

fn posix_memalign_impl(memptr: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if memptr.is_null() || !align.is_power_of_two() || align % core::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    // posix_memalign reports through its result only: errno is left as the caller had it.
    let saved = os::errno();
    let r = bimp::malloc_aligned(size, align);
    os::set_errno(saved);
    match r {
        Some(p) => {
            // SAFETY: the caller passes a pointer to writable storage for one pointer (checked non-NULL).
            unsafe { *memptr = p.as_ptr().cast() };
            0
        }
        None => libc::ENOMEM,
    }
}

fn valloc_impl(size: usize) -> *mut c_void {
    out(bimp::malloc_aligned(size, os::page_size()))
}

fn pvalloc_impl(size: usize) -> *mut c_void {
    let page = os::page_size();
    match os::align_up(if size == 0 { 1 } else { size }, page) {
        Some(rounded) => out(bimp::malloc_aligned(rounded, page)),
        None => fail(libc::ENOMEM),
    }
}

fn usable_size_named(func: &str, p: *mut c_void) -> usize {
    match NonNull::new(p.cast::<u8>()) {
        None => 0,
        Some(nn) => match bimp::usable_size(nn) {
            Ok(n) => n,
            Err(e) => invalid(func, p, e),
        },
    }
}

/// Allocates `size` bytes on top of the bimp stack and returns a pointer aligned to
/// `bimp_alignment()` (16 unless built with `BIMP_ALIGN`). `size` 0 gives a unique pointer that must
/// be freed. Returns NULL with `errno` ENOMEM when memory or the bimp address space runs out (also
/// for sizes no system could hold, such as `SIZE_MAX`). Thread-safe unless built with
/// `BIMP_SINGLE_THREADED`.
#[no_mangle]
pub extern "C" fn bimp_malloc(size: usize) -> *mut c_void {
    bimp::malloc_c(size).cast()
}

/// Allocates `n * size` zeroed bytes. Returns NULL with `errno` ENOMEM when the product overflows or
/// memory runs out.
#[no_mangle]
pub extern "C" fn bimp_calloc(n: usize, size: usize) -> *mut c_void {
    calloc_impl(n, size)
}

/// Frees a block returned by a `bimp_*` allocation function; NULL is ignored. Freeing the top block
/// pops it and every already-freed block directly beneath it, so memory freed in any order comes back
/// once everything above it is free; freeing another block marks it free in O(1).
///
/// A pointer that bimp did not return, or a block already freed, aborts the process with one line on
/// stderr: `rallocs: bimp_free(): invalid pointer 0x... (reason)`.
///
/// # Safety
/// `p` is NULL or a pointer returned by a `bimp_*` allocation function and not yet freed. The
/// violations above are detected; a stale pointer whose memory was popped and handed out again
/// cannot be told from the new block.
#[no_mangle]
pub unsafe extern "C" fn bimp_free(p: *mut c_void) {
    free_named("bimp_free", p)
}

/// Resizes a block to `size` bytes, keeping its contents up to the smaller size. The top block grows
/// or shrinks in place (no copy); another block shrinks in place or moves (allocate, copy, free).
/// `p` NULL: same as `bimp_malloc(size)`. `size` 0 (with `p` not NULL): frees `p` and returns NULL.
/// On failure returns NULL with `errno` ENOMEM and leaves `p` allocated and unchanged. An invalid `p`
/// aborts as in `bimp_free`.
///
/// # Safety
/// `p` is NULL or a pointer returned by a `bimp_*` allocation function and not yet freed
/// (other values are detected and abort, as far as bimp can tell).
#[no_mangle]
pub unsafe extern "C" fn bimp_realloc(p: *mut c_void, size: usize) -> *mut c_void {
    realloc_plain("bimp_realloc", p, size)
}

/// `bimp_realloc(p, n * size)`, but returns NULL with `errno` ENOMEM (leaving `p` unchanged) when
/// `n * size` overflows.
///
/// # Safety
/// as for `bimp_realloc`.
#[no_mangle]
pub unsafe extern "C" fn bimp_reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    reallocarray_named("bimp_reallocarray", p, n, size)
}

/// Like `bimp_realloc`, but when it fails the block is freed (BSD `reallocf`): the caller never has to
/// free `p` after this call. Returns NULL with `errno` ENOMEM on failure.
///
/// # Safety
/// as for `bimp_realloc`.
#[no_mangle]
pub unsafe extern "C" fn bimp_reallocf(p: *mut c_void, size: usize) -> *mut c_void {
    realloc_named("bimp_reallocf", p, size, true)
}

/// Allocates `size` bytes aligned to `alignment`, which must be a power of two (else NULL with
/// `errno` EINVAL); `size` need not be a multiple of it. The padding below the block comes back with
/// it. NULL with `errno` ENOMEM when memory runs out.
#[no_mangle]
pub extern "C" fn bimp_aligned_alloc(alignment: usize, size: usize) -> *mut c_void {
    aligned_alloc_impl(alignment, size)
}

/// Allocates `size` bytes aligned to `alignment` (glibc `memalign`): an alignment that is not a power
/// of two is rounded up to the next one; one above `SIZE_MAX / 2 + 1` gives NULL with `errno` EINVAL.
/// NULL with `errno` ENOMEM when memory runs out.
#[no_mangle]
pub extern "C" fn bimp_memalign(alignment: usize, size: usize) -> *mut c_void {
    memalign_impl(alignment, size)
}

/// Stores in `*memptr` a block of `size` bytes aligned to `alignment` and returns 0. Returns EINVAL
/// when `alignment` is not a power of two multiple of `sizeof(void *)` (or `memptr` is NULL), ENOMEM
/// when memory runs out; on failure `*memptr` and `errno` are left unchanged.
///
/// # Safety
/// `memptr` is NULL or points to writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn bimp_posix_memalign(memptr: *mut *mut c_void, alignment: usize, size: usize) -> c_int {
    posix_memalign_impl(memptr, alignment, size)
}

/// Allocates `size` bytes aligned to the page size. NULL with `errno` ENOMEM on failure.
#[no_mangle]
pub extern "C" fn bimp_valloc(size: usize) -> *mut c_void {
    valloc_impl(size)
}

/// Allocates `size` bytes rounded up to a whole number of pages (at least one), aligned to the page
/// size. NULL with `errno` ENOMEM when the rounding overflows or memory runs out.
#[no_mangle]
pub extern "C" fn bimp_pvalloc(size: usize) -> *mut c_void {
    pvalloc_impl(size)
}

/// Returns the number of usable bytes of the live block `p` (at least the size requested: requests are
/// rounded up to `bimp_alignment()`), or 0 for NULL. An invalid `p` aborts as in `bimp_free`.
///
/// # Safety
/// as for `bimp_realloc`.
#[no_mangle]
pub unsafe extern "C" fn bimp_malloc_usable_size(p: *mut c_void) -> usize {
    usable_size_named("bimp_malloc_usable_size", p)
}

/// Returns the alignment of every block bimp returns: the `BIMP_ALIGN` the library was built with
/// (16 by default; always a power of two of at least 16).
#[no_mangle]
pub extern "C" fn bimp_alignment() -> usize {
    bimp::ALIGN
}

/// Returns true when the `bimp_*` functions may be called from several threads at once; false when
/// the library was built with `BIMP_SINGLE_THREADED` (no locking at all: one thread only).
#[no_mangle]
pub extern "C" fn bimp_thread_safe() -> bool {
    bimp::THREAD_SAFE
}

/// Fills `*out` with the counters of the bimp heap (NULL: does nothing). Walks every block below the
/// top, so it costs O(blocks): meant for tests and diagnostics, not for hot paths. Thread-safe (a
/// consistent snapshot).
///
/// # Safety
/// `out` is NULL or points to writable storage for one `bimp_stats_t`.
#[no_mangle]
pub unsafe extern "C" fn bimp_stats_get(out: *mut bimp_stats_t) {
    if out.is_null() {
        return;
    }
    // SAFETY: the caller passes a pointer to writable storage for one bimp_stats_t (checked non-NULL).
    unsafe { out.write(bimp::stats()) };
}

/// The unprefixed malloc family, served by bimp: `LD_PRELOAD=build/librallocs-bimp.so program`.
/// Not declared in rallocs.h (the names are the standard ones from <stdlib.h> and <malloc.h>).
#[cfg(feature = "bimp-preload")]
mod preload {
    use super::*;

    /// `malloc` served by bimp.
    #[no_mangle]
    pub extern "C" fn malloc(size: usize) -> *mut c_void {
        bimp::malloc_c(size).cast()
    }
    /// `free` served by bimp.
    ///
    /// # Safety
    /// As `bimp_free`; the same holds for every unsafe function of this module.
    #[no_mangle]
    pub unsafe extern "C" fn free(p: *mut c_void) {
        free_named("free", p)
    }
    /// `cfree` (obsolete alias of `free`).
    ///
    /// # Safety
    /// As for the `bimp_*` function it forwards to.
    #[no_mangle]
    pub unsafe extern "C" fn cfree(p: *mut c_void) {
        free_named("cfree", p)
    }
    /// `calloc` served by bimp.
    #[no_mangle]
    pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
        calloc_impl(n, size)
    }
    /// `realloc` served by bimp.
    ///
    /// # Safety
    /// As for the `bimp_*` function it forwards to.
    #[no_mangle]
    pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
        realloc_plain("realloc", p, size)
    }
    /// `reallocarray` served by bimp.
    ///
    /// # Safety
    /// As for the `bimp_*` function it forwards to.
    #[no_mangle]
    pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
        reallocarray_named("reallocarray", p, n, size)
    }
    /// BSD `reallocf` served by bimp.
    ///
    /// # Safety
    /// As for the `bimp_*` function it forwards to.
    #[no_mangle]
    pub unsafe extern "C" fn reallocf(p: *mut c_void, size: usize) -> *mut c_void {
        realloc_named("reallocf", p, size, true)
    }
    /// `aligned_alloc` served by bimp.
    #[no_mangle]
    pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
        aligned_alloc_impl(align, size)
    }
    /// `memalign` served by bimp.
    #[no_mangle]
    pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
        memalign_impl(align, size)
    }
    /// `posix_memalign` served by bimp.
    ///
    /// # Safety
    /// As for the `bimp_*` function it forwards to.
    #[no_mangle]
    pub unsafe extern "C" fn posix_memalign(memptr: *mut *mut c_void, align: usize, size: usize) -> c_int {
        posix_memalign_impl(memptr, align, size)
    }
    /// `valloc` served by bimp.
    #[no_mangle]
    pub extern "C" fn valloc(size: usize) -> *mut c_void {
        valloc_impl(size)
    }
    /// `pvalloc` served by bimp.
    #[no_mangle]
    pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
        pvalloc_impl(size)
    }
    /// `malloc_usable_size` served by bimp.
    ///
    /// # Safety
    /// As for the `bimp_*` function it forwards to.
    #[no_mangle]
    pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
        usable_size_named("malloc_usable_size", p)
    }
    /// glibc's internal alias of `malloc`, called directly by a few programs.
    #[no_mangle]
    pub extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
        bimp::malloc_c(size).cast()
    }
    /// glibc's internal alias of `free`.
    ///
    /// # Safety
    /// As for the `bimp_*` function it forwards to.
    #[no_mangle]
    pub unsafe extern "C" fn __libc_free(p: *mut c_void) {
        free_named("free", p)
    }
    /// glibc's internal alias of `calloc`.
    #[no_mangle]
    pub extern "C" fn __libc_calloc(n: usize, size: usize) -> *mut c_void {
        calloc_impl(n, size)
    }
    /// glibc's internal alias of `realloc`.
    ///
    /// # Safety
    /// As for the `bimp_*` function it forwards to.
    #[no_mangle]
    pub unsafe extern "C" fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
        realloc_plain("realloc", p, size)
    }
    /// glibc's internal alias of `memalign`.
    #[no_mangle]
    pub extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
        memalign_impl(align, size)
    }
    /// glibc's internal alias of `valloc`.
    #[no_mangle]
    pub extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
        valloc_impl(size)
    }
    /// glibc's internal alias of `pvalloc`.
    #[no_mangle]
    pub extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
        pvalloc_impl(size)
    }
}
