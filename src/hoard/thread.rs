//! The calling thread's heap pointer, without `__tls_get_addr`.
//!
//! A replacement malloc in a shared library must not reach thread-local storage through
//! `__tls_get_addr` (the general-dynamic model), which may itself call malloc. On x86-64 the slot is a
//! `.tdata` variable declared in assembly and read with the initial-exec model (`@GOTTPOFF`): two
//! instructions, no call. Elsewhere the slot is a pthread key (a libc call, slower but correct). A
//! thread without a heap reads [`no_heap()`] from [`fast()`], never null.
//!
//! Two slots: the fast paths read `fast()`; while the trace recorder is on (`RALLOCS_TRACE`), a
//! thread's heap lives in the second slot (`traced()`) instead, so that every call misses the fast
//! paths and is recorded on a slow path: tracing costs the fast paths nothing.
//!
//! Thread exit: a pthread key (created during initialisation, before any thread heap exists) has a
//! destructor that abandons the thread's heap; see `heap::abandon`.

use super::heap::{no_heap, Heap};

// The heap slot starts out (in every thread) pointing at `NO_HEAP`, so the fast paths need no null
// check. Its initial value is a relocated address in `.tdata`: the dynamic linker copies a module's
// TLS image into a thread only after relocating the module (and before any allocator call).
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".pushsection .tdata,\"awT\",@progbits",
    ".p2align 3",
    ".globl __rallocs_tls_heap",
    ".hidden __rallocs_tls_heap",
    ".type __rallocs_tls_heap,@object",
    ".size __rallocs_tls_heap,8",
    "__rallocs_tls_heap:",
    ".quad {no_heap}",
    ".popsection",
    ".pushsection .tbss,\"awT\",@nobits",
    ".p2align 3",
    ".globl __rallocs_tls_traced_heap",
    ".hidden __rallocs_tls_traced_heap",
    ".type __rallocs_tls_traced_heap,@object",
    ".size __rallocs_tls_traced_heap,8",
    "__rallocs_tls_traced_heap:",
    ".zero 8",
    ".popsection",
    no_heap = sym super::heap::NO_HEAP,
);

/// The calling thread's heap for the fast paths: [`no_heap()`] (never null) while it has none.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn fast() -> *mut Heap {
    let h: *mut Heap;
    // SAFETY: reads this thread's 8-byte TLS slot declared above, through its GOT entry (initial-exec
    // model); touches no other memory.
    unsafe {
        core::arch::asm!(
            "mov {h}, qword ptr [rip + __rallocs_tls_heap@GOTTPOFF]",
            "mov {h}, qword ptr fs:[{h}]",
            h = out(reg) h,
            options(nostack, readonly, preserves_flags, pure),
        );
    }
    h
}

/// The calling thread's heap, or null if it has none yet.
#[inline(always)]
pub fn current() -> *mut Heap {
    let h = fast();
    if h == no_heap() {
        core::ptr::null_mut()
    } else {
        h
    }
}

/// Sets the calling thread's heap (null: none).
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn set_current(h: *mut Heap) {
    let h = if h.is_null() { no_heap() } else { h };
    // SAFETY: writes this thread's 8-byte TLS slot declared above and nothing else.
    unsafe {
        core::arch::asm!(
            "mov {t}, qword ptr [rip + __rallocs_tls_heap@GOTTPOFF]",
            "mov qword ptr fs:[{t}], {h}",
            t = out(reg) _,
            h = in(reg) h,
            options(nostack, preserves_flags),
        );
    }
}

/// The calling thread's heap while tracing, or null.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn traced() -> *mut Heap {
    let h: *mut Heap;
    // SAFETY: reads this thread's second TLS slot, declared above.
    unsafe {
        core::arch::asm!(
            "mov {h}, qword ptr [rip + __rallocs_tls_traced_heap@GOTTPOFF]",
            "mov {h}, qword ptr fs:[{h}]",
            h = out(reg) h,
            options(nostack, readonly, preserves_flags, pure),
        );
    }
    h
}

/// Sets the calling thread's heap for tracing.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn set_traced(h: *mut Heap) {
    // SAFETY: writes this thread's second TLS slot and nothing else.
    unsafe {
        core::arch::asm!(
            "mov {t}, qword ptr [rip + __rallocs_tls_traced_heap@GOTTPOFF]",
            "mov qword ptr fs:[{t}], {h}",
            t = out(reg) _,
            h = in(reg) h,
            options(nostack, preserves_flags),
        );
    }
}

/// The calling thread's heap in whichever slot holds it, or null.
#[inline]
pub fn any() -> *mut Heap {
    let h = current();
    if h.is_null() {
        traced()
    } else {
        h
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub fn fast() -> *mut Heap {
    // SAFETY: the key is created during initialisation, before any heap exists; before that (or for an
    // invalid key) pthread_getspecific returns NULL.
    let h: *mut Heap = unsafe { libc::pthread_getspecific(super::heap::thread_key()).cast() };
    if h.is_null() {
        no_heap()
    } else {
        h
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub fn set_current(h: *mut Heap) {
    // SAFETY: the key is valid once initialisation ran (callers only set a heap after it ran).
    unsafe {
        libc::pthread_setspecific(super::heap::thread_key(), h.cast());
    }
}

/// Without an initial-exec slot the trace recorder shares the pthread key: tracing is not free there.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub fn traced() -> *mut Heap {
    core::ptr::null_mut()
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub fn set_traced(h: *mut Heap) {
    set_current(h)
}
