//! rmalloc: relocatable handles over a compacting heap (`rmalloc`, `rmlock`, `rmunlock`, `rmfree`, ...).
//!
//! Each export validates its pointers, calls [`crate::rm`] and maps the result to an `rm_status_t`.
//!
//! The exports write through out-parameters that C passes; they are safe Rust functions because C
//! cannot honour `unsafe` anyway: the documented contract (a writable pointer or NULL) is the C caller's.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use super::types::{rm_stats_t, rm_status_t};
use crate::rm::{self, Error};
use core::ffi::c_void;

/// An rmalloc handle: opaque. Its address never changes while the block it names moves during
/// compaction; reach the bytes with `rmlock` and release them with `rmunlock`.
#[allow(non_camel_case_types)]
pub struct rm_memory_t {
    _opaque: [u8; 0],
}

#[inline(always)]
fn status(r: Result<(), Error>) -> rm_status_t {
    match r {
        Ok(()) => rm_status_t::RM_OK,
        Err(e) => error(e),
    }
}

#[inline(always)]
fn error(e: Error) -> rm_status_t {
    match e {
        Error::InvalidArgument => rm_status_t::RM_INVALID_ARGUMENT,
        Error::OutOfMemory => rm_status_t::RM_OUT_OF_MEMORY,
        Error::InvalidHandle => rm_status_t::RM_INVALID_HANDLE,
        Error::Locked => rm_status_t::RM_LOCKED,
        Error::NotLocked => rm_status_t::RM_NOT_LOCKED,
        Error::Purged => rm_status_t::RM_PURGED,
    }
}

/// Allocates a relocatable block of `size` bytes and stores its handle in `*handle`.
///
/// The handle's address never changes; the block behind it may move whenever it is not locked. Reach
/// the bytes with `rmlock`. `size` may be 0 (a distinct, lockable block of no bytes). The contents are
/// indeterminate.
///
/// Returns `RM_OK` and writes `*handle`; `RM_INVALID_ARGUMENT` when `handle` is NULL;
/// `RM_OUT_OF_MEMORY` when `size` overflows, exceeds the limit (`rmsetlimit`), or does not fit even
/// after compacting the heap and discarding every unlocked purgeable block. `*handle` is written only
/// on `RM_OK`. Thread-safe.
#[no_mangle]
pub extern "C" fn rmalloc(handle: *mut *mut rm_memory_t, size: usize) -> rm_status_t {
    if handle.is_null() {
        return rm_status_t::RM_INVALID_ARGUMENT;
    }
    match rm::global().alloc(size) {
        Ok(h) => {
            // SAFETY: the caller passes a writable pointer to a handle variable (checked non-NULL).
            unsafe { *handle = h as *mut rm_memory_t };
            rm_status_t::RM_OK
        }
        Err(e) => error(e),
    }
}

/// Locks the block of `h` and stores its address in `*ptr`: the block does not move, and `*ptr` stays
/// valid, until the matching `rmunlock`. Locks nest: each `rmlock` adds one to the handle's lock count
/// and each `rmunlock` takes one off; the block may move again only when the count is back to 0.
/// The address is 16-byte aligned.
///
/// Returns `RM_OK`; `RM_INVALID_ARGUMENT` when `h` or `ptr` is NULL; `RM_INVALID_HANDLE` when `h` was
/// not returned by `rmalloc` or was freed; `RM_PURGED` when the block was purgeable and has been
/// discarded (revive it with `rmrealloc`). `*ptr` is written only on `RM_OK`. Thread-safe and
/// lock-free (no mutex) unless the heap is moving this very block at that moment.
#[no_mangle]
pub extern "C" fn rmlock(h: *mut rm_memory_t, ptr: *mut *mut c_void) -> rm_status_t {
    if h.is_null() || ptr.is_null() {
        return rm_status_t::RM_INVALID_ARGUMENT;
    }
    match rm::global().lock(h as usize) {
        Ok(p) => {
            // SAFETY: the caller passes a writable pointer (checked non-NULL).
            unsafe { *ptr = p.cast() };
            rm_status_t::RM_OK
        }
        Err(e) => error(e),
    }
}

/// Takes one off the lock count of `h`. The pointer `rmlock` returned must not be used after the count
/// reaches 0.
///
/// Returns `RM_OK`; `RM_INVALID_ARGUMENT` when `h` is NULL; `RM_INVALID_HANDLE` for a handle not
/// returned by `rmalloc` or freed; `RM_NOT_LOCKED` when the count is already 0. Thread-safe, lock-free.
#[no_mangle]
pub extern "C" fn rmunlock(h: *mut rm_memory_t) -> rm_status_t {
    if h.is_null() {
        return rm_status_t::RM_INVALID_ARGUMENT;
    }
    status(rm::global().unlock(h as usize))
}

/// Frees the handle `h` and its block (or nothing more, if the block was purged).
///
/// Returns `RM_OK`; `RM_INVALID_ARGUMENT` when `h` is NULL; `RM_INVALID_HANDLE` for a handle not
/// returned by `rmalloc` or already freed (a freed handle is detected: its slot is marked and reused
/// only much later, under a new generation tag, so a stale handle is refused rather than reaching
/// another block); `RM_LOCKED` when the lock count is above 0, in which case nothing is freed.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn rmfree(h: *mut rm_memory_t) -> rm_status_t {
    if h.is_null() {
        return rm_status_t::RM_INVALID_ARGUMENT;
    }
    status(rm::global().free(h as usize))
}

/// Resizes the block of `h` to `size` bytes, keeping its contents up to the smaller of the two sizes.
/// A locked block is resized only in place (shrinking always works; growing works when the space after
/// it is free); if it would have to move, `RM_LOCKED` is returned and nothing changes. A purged block is
/// revived with `size` bytes of indeterminate contents.
///
/// Returns `RM_OK`; `RM_INVALID_ARGUMENT` when `h` is NULL; `RM_INVALID_HANDLE` for a handle not
/// returned by `rmalloc` or freed; `RM_LOCKED` as above; `RM_OUT_OF_MEMORY` when `size` overflows or
/// does not fit (the block is then unchanged). Thread-safe.
#[no_mangle]
pub extern "C" fn rmrealloc(h: *mut rm_memory_t, size: usize) -> rm_status_t {
    if h.is_null() {
        return rm_status_t::RM_INVALID_ARGUMENT;
    }
    status(rm::global().realloc(h as usize, size))
}

/// The size of the block of `h` as last requested (`rmalloc` or `rmrealloc`); 0 when `h` is NULL, not
/// a handle, freed, or purged. Thread-safe.
#[no_mangle]
pub extern "C" fn rmsize(h: *const rm_memory_t) -> usize {
    if h.is_null() {
        return 0;
    }
    rm::global().size(h as usize)
}

/// Marks the block of `h` purgeable (`true`: when an allocation does not fit even after compaction,
/// the block may be discarded while it is unlocked; `rmlock` then returns `RM_PURGED`) or not.
///
/// Returns `RM_OK`; `RM_INVALID_ARGUMENT` when `h` is NULL; `RM_INVALID_HANDLE` for a handle not
/// returned by `rmalloc` or freed. Thread-safe.
#[no_mangle]
pub extern "C" fn rmsetpurgeable(h: *mut rm_memory_t, purgeable: bool) -> rm_status_t {
    if h.is_null() {
        return rm_status_t::RM_INVALID_ARGUMENT;
    }
    status(rm::global().set_purgeable(h as usize, purgeable))
}

/// Compacts the heap: unlocked blocks slide toward its start (their handles follow), locked blocks stay
/// put and the free space around them becomes free blocks. With `budget_us` > 0 it stops after about
/// that many microseconds (the overshoot is bounded by moving 16 small blocks or 64 KiB plus one
/// block) and the next call continues where it stopped; 0 compacts the whole heap. When a pass reaches
/// the end of the heap, the pages past the last block go back to the OS; with nothing locked, all free
/// space is then one run at the end.
///
/// Always returns `RM_OK`. Thread-safe: other threads wait for the heap meanwhile, except `rmlock` and
/// `rmunlock` of blocks that are not being moved.
#[no_mangle]
pub extern "C" fn rmcompact(budget_us: u64) -> rm_status_t {
    rm::global().compact(budget_us);
    rm_status_t::RM_OK
}

/// Sets the heap budget: the heap (blocks, free blocks and headers; the handle table is not counted)
/// never extends beyond `bytes`. 0 removes the limit (the default). When the heap is already larger,
/// it is compacted first.
///
/// Returns `RM_OK`; `RM_OUT_OF_MEMORY` when the heap does not fit in `bytes` even after compacting (the
/// limit is then unchanged). Thread-safe.
#[no_mangle]
pub extern "C" fn rmsetlimit(bytes: usize) -> rm_status_t {
    status(rm::global().set_limit(bytes))
}

/// Fills `*out` with a snapshot of the heap's statistics (see `rm_stats_t`). Does nothing when `out`
/// is NULL. Thread-safe.
#[no_mangle]
pub extern "C" fn rm_stats_get(out: *mut rm_stats_t) {
    if out.is_null() {
        return;
    }
    let s = rm::global().stats();
    let c = rm_stats_t {
        capacity: s.capacity,
        used: s.used,
        free: s.free,
        largest_free: s.largest_free,
        fragmentation: s.fragmentation,
        handles: s.handles,
        compactions: s.compactions,
        bytes_moved: s.bytes_moved,
        longest_pause_ns: s.longest_pause_ns,
        purges: s.purges,
    };
    // SAFETY: the caller passes a writable rm_stats_t (checked non-NULL).
    unsafe { *out = c };
}
