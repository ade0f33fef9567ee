//! `region_*`: page regions with O(1) per-object free, page recycling and 32-bit compressed pointers.
//!
//! Each export validates its arguments, calls [`crate::region`], and maps the result to C: NULL with
//! `errno`, a status, or an abort with one line naming the function and the pointer.

use crate::diag::invalid_pointer;
use crate::ffi::types::region_stats_t;
use crate::os::set_errno;
use crate::region::{self, Region};
use core::ffi::c_void;
use core::ptr;

/// A region: an arena of pages from which blocks are allocated by bumping a pointer, and freed one by one
/// or all at once. Opaque: create it with `region_create`, destroy it with `region_destroy`.
#[allow(non_camel_case_types)]
pub struct region_t {
    _opaque: [u8; 0],
}

/// The region behind `r` after the cheap check (for allocation and free), `None` for NULL; aborts when
/// `r` is not a live region.
///
/// # Safety
/// As for [`region_mut`], and `r` is readable memory when it has a region's offset in a page.
#[inline(always)]
unsafe fn region_hot<'a>(func: &str, r: *mut region_t) -> Option<&'a mut Region> {
    // SAFETY: the caller's contract; NULL fails the cheap check (it is not at a region's offset).
    match unsafe { Region::from_ptr_fast(r.cast()) } {
        Some(reg) => Some(reg),
        None => not_a_region(func, r),
    }
}

/// NULL (`None`) or an abort for a pointer that is not a live region.
#[cold]
#[inline(never)]
fn not_a_region<'a>(func: &str, r: *mut region_t) -> Option<&'a mut Region> {
    if r.is_null() {
        return None;
    }
    invalid_pointer(func, r.cast(), "not a live region")
}

/// The region behind `r`, `None` for NULL; aborts for a pointer that is not a live region.
///
/// # Safety
/// If `r` is a region, no other thread uses it now.
#[inline(always)]
unsafe fn region_mut<'a>(func: &str, r: *mut region_t) -> Option<&'a mut Region> {
    if r.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees exclusive use of a real region; from_ptr checks that it is one.
    match unsafe { Region::from_ptr(r.cast()) } {
        Some(reg) => Some(reg),
        None => invalid_pointer(func, r.cast(), "not a live region"),
    }
}

/// Creates an empty region. Its pages come from a 32 GiB address-space reservation that the first
/// `region_create` of the process makes and every region shares.
///
/// Returns NULL with `errno` = `ENOMEM` when the reservation cannot be made (for example under a low
/// `ulimit -v`) or is exhausted. Thread-safe.
#[no_mangle]
pub extern "C" fn region_create() -> *mut region_t {
    match Region::create() {
        Some(r) => r.as_ptr().cast(),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// Runs the region's cleanup callbacks (most recently registered first), then frees every block and
/// gives every page back to the shared pool. `r` must not be used afterwards. NULL is ignored; a pointer
/// that is not a live region aborts. Not thread-safe for the same region.
///
/// # Safety
/// `r` is NULL or a live region that no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn region_destroy(r: *mut region_t) {
    // SAFETY: the caller's contract.
    if let Some(reg) = unsafe { region_mut("region_destroy", r) } {
        // SAFETY: reg is live and dies here.
        unsafe { Region::destroy(reg) };
    }
}

/// Runs the region's cleanup callbacks (most recently registered first, then forgets them), frees every
/// block at once and keeps one page (plus a few empty ones) for what comes next. NULL is ignored.
///
/// # Safety
/// `r` is NULL or a live region that no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn region_reset(r: *mut region_t) {
    // SAFETY: the caller's contract.
    if let Some(reg) = unsafe { region_mut("region_reset", r) } {
        reg.reset();
    }
}

/// Allocates `size` bytes from region `r`, aligned to 16 bytes. `size` 0 returns a unique block.
/// Blocks larger than a page (about 16 KiB) get pages of their own.
///
/// Returns NULL with `errno` = `EINVAL` when `r` is NULL, `ENOMEM` when memory, the reservation or the
/// size limit (half the reservation) is exhausted. A region is used by one thread at a time;
/// different regions may be used by different threads at once.
///
/// # Safety
/// `r` is NULL or a live region that no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn region_alloc(r: *mut region_t, size: usize) -> *mut c_void {
    // SAFETY: the caller's contract.
    let Some(reg) = (unsafe { region_hot("region_alloc", r) }) else {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    };
    reg.alloc_or_null(size).cast()
}

#[cold]
fn no_memory() -> *mut c_void {
    set_errno(libc::ENOMEM);
    ptr::null_mut()
}

/// Allocates `size` bytes from region `r`, aligned to `align`, which must be a power of two (any, up to
/// the size of the reservation). Returns NULL with `errno` = `EINVAL` for a NULL region or a bad
/// alignment, `ENOMEM` when out of memory. Free the block with `region_free`.
///
/// # Safety
/// `r` is NULL or a live region that no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn region_alloc_aligned(r: *mut region_t, size: usize, align: usize) -> *mut c_void {
    // SAFETY: the caller's contract.
    let reg = unsafe { region_hot("region_alloc_aligned", r) };
    let Some(reg) = reg.filter(|_| align.is_power_of_two()) else {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    };
    match reg.alloc_aligned(size, align) {
        Some(p) => p.as_ptr().cast(),
        None => no_memory(),
    }
}

/// Allocates `n * size` bytes from region `r`, zeroed and 16-byte aligned. Returns NULL with `errno` =
/// `EINVAL` for a NULL region, `ENOMEM` when `n * size` overflows or memory runs out.
///
/// # Safety
/// `r` is NULL or a live region that no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn region_calloc(r: *mut region_t, n: usize, size: usize) -> *mut c_void {
    // SAFETY: the caller's contract.
    let Some(reg) = (unsafe { region_hot("region_calloc", r) }) else {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    };
    let Some(total) = n.checked_mul(size) else { return no_memory() };
    match reg.alloc(total) {
        // SAFETY: the block holds at least `total` bytes.
        Some(p) => unsafe {
            ptr::write_bytes(p.as_ptr(), 0, total);
            p.as_ptr().cast()
        },
        None => no_memory(),
    }
}

/// Resizes block `p` of region `r` to `size` bytes, keeping its contents up to the smaller size.
/// In place when `p` is the last block allocated in its page (or shrinks by less than half, or is a
/// large block with room); otherwise the contents move and `p` is freed. NULL `p` is `region_alloc`.
///
/// Returns the block, or NULL with `errno`: `EINVAL` for a NULL region, `ENOMEM` when out of memory (then
/// `p` is untouched). Aborts when `p` is not a live block of `r`.
///
/// # Safety
/// `r` is NULL or a live region that no other thread uses; `p` is NULL or a block of it.
#[no_mangle]
pub unsafe extern "C" fn region_realloc(r: *mut region_t, p: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: the caller's contract.
    let Some(reg) = (unsafe { region_mut("region_realloc", r) }) else {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    };
    if p.is_null() {
        return match reg.alloc(size) {
            Some(q) => q.as_ptr().cast(),
            None => no_memory(),
        };
    }
    match reg.realloc(p as usize, size) {
        Ok(Some(q)) => q.as_ptr().cast(),
        Ok(None) => no_memory(),
        Err(e) => invalid_pointer("region_realloc", p.cast(), e.why()),
    }
}

/// Frees block `p` of region `r` in constant time. A page that empties is recycled. NULL `p` is
/// ignored. Aborts with a one-line message when `p` is not a live block of `r` (a block of another
/// region, a stack or malloc address, a block freed twice, an interior pointer unless the 8 bytes below
/// it happen to look like a block header), or when `r` is NULL and `p` is not.
///
/// # Safety
/// `r` is NULL or a live region that no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn region_free(r: *mut region_t, p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: the caller's contract; NULL fails the cheap check (it is not at a region's offset).
    match unsafe { Region::from_ptr_fast(r.cast()) } {
        Some(reg) => reg.free_or(p as usize, bad_free),
        None => free_without_region(r, p),
    }
}

#[cold]
#[inline(never)]
fn free_without_region(r: *mut region_t, p: *mut c_void) -> ! {
    if r.is_null() {
        invalid_pointer("region_free", p.cast(), "the region is NULL")
    }
    invalid_pointer("region_free", r.cast(), "not a live region")
}

#[cold]
#[inline(never)]
fn bad_free(p: usize, e: region::BadPointer) -> ! {
    invalid_pointer("region_free", p as *const u8, e.why())
}

/// Usable bytes of block `p` (at least what was asked for; the block may be written up to it). 0 for
/// NULL. Aborts when `p` is not a live region block. Call it from the thread that uses `p`'s region.
///
/// # Safety
/// `p` is NULL or a live block of a region the calling thread uses.
#[no_mangle]
pub unsafe extern "C" fn region_usable_size(p: *const c_void) -> usize {
    if p.is_null() {
        return 0;
    }
    match Region::usable_size(p as usize) {
        Ok(n) => n,
        Err(e) => invalid_pointer("region_usable_size", p.cast(), e.why()),
    }
}

/// Whether `p` points into a page of region `r` (into a block or not). False when either is NULL.
///
/// # Safety
/// `r` is NULL or a live region that no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn region_contains(r: *const region_t, p: *const c_void) -> bool {
    // SAFETY: the caller's contract; the region is only read.
    match unsafe { region_mut("region_contains", r as *mut region_t) } {
        Some(reg) if !p.is_null() => reg.contains(p as usize),
        _ => false,
    }
}

/// Encodes `p`, any 8-byte aligned address inside region memory (every block is), as a 32-bit offset:
/// its distance from the start of the process-wide reservation in 8-byte units. NULL encodes as 0, which
/// no block has. `region_at` decodes it. Aborts for an address outside region memory. Thread-safe.
#[no_mangle]
pub extern "C" fn region_offset(p: *const c_void) -> u32 {
    match region::offset_of(p as usize) {
        Ok(off) => off,
        Err(_) => invalid_pointer("region_offset", p.cast(), "not 8-byte aligned region memory"),
    }
}

/// Decodes an offset from `region_offset`: 0 gives NULL. Aborts when no region was ever created (no
/// offset can exist then). Thread-safe.
#[no_mangle]
pub extern "C" fn region_at(offset: u32) -> *mut c_void {
    match region::at_offset(offset) {
        Some(p) => p as *mut c_void,
        None => crate::diag::fatal(format_args!("region_at(): offset {offset} but no region memory exists")),
    }
}

/// Registers `fn(arg)` to run when region `r` is reset or destroyed; callbacks run most recently
/// registered first, while the region's blocks are still valid. A callback may allocate from and free
/// into the region (one it registers during the run runs too) but must not reset or destroy it. The
/// record lives in the region itself.
///
/// Returns 0 on success, or an error number (also stored in `errno`): `EINVAL` when `r` or `fn` is NULL,
/// `ENOMEM` when out of memory.
///
/// # Safety
/// `r` is NULL or a live region that no other thread uses; `fn` is safe to call with `arg` then.
#[no_mangle]
pub unsafe extern "C" fn region_on_destroy(
    r: *mut region_t,
    r#fn: Option<extern "C" fn(*mut c_void)>,
    arg: *mut c_void,
) -> i32 {
    // SAFETY: the caller's contract.
    let (Some(reg), Some(f)) = (unsafe { region_mut("region_on_destroy", r) }, r#fn) else {
        set_errno(libc::EINVAL);
        return libc::EINVAL;
    };
    match reg.on_destroy(f, arg) {
        Some(()) => 0,
        None => {
            set_errno(libc::ENOMEM);
            libc::ENOMEM
        }
    }
}

/// Fills `*stats` with region `r`'s figures and the shared pool's. With a NULL `r` only the pool's
/// figures (and `page_size`) are filled, the others are 0. Does nothing when `stats` is NULL. The pool
/// figures are read under the pool lock; the region's from the calling thread, which must be the one
/// using `r`.
///
/// # Safety
/// `r` is NULL or a live region that no other thread uses; `stats` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn region_stats_get(r: *const region_t, stats: *mut region_stats_t) {
    if stats.is_null() {
        return;
    }
    // SAFETY: the caller's contract; the region is only read.
    let s = match unsafe { region_mut("region_stats_get", r as *mut region_t) } {
        Some(reg) => reg.stats(),
        None => region::Stats { pool: region::pool_stats(), ..Default::default() },
    };
    let out = region_stats_t {
        live_bytes: s.live_bytes,
        live_objects: s.live_objects,
        peak_bytes: s.peak_bytes,
        pages_in_use: s.pages_in_use,
        pages_cached: s.pages_cached,
        page_size: crate::config::REGION_PAGE,
        pool_pages_free: s.pool.warm,
        pool_pages_released: s.pool.cold,
        pool_pages_carved: s.pool.carved,
    };
    // SAFETY: stats is writable per the caller.
    unsafe { stats.write(out) };
}
