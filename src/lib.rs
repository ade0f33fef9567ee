//! rallocs: allocators for C and C++ programs, written in Rust, shipped as a C library.
//!
//! Map of the crate, bottom layer first (see `ARCHITECTURE.md` for the diagram and the invariants):
//! [`os`] is the only module that talks to the kernel for memory (reserve, commit, decommit, release)
//! and writes diagnostics with `write(2)`; [`sync`] has the lock and the one-time initialiser, neither of
//! which allocates; [`config`] holds every tunable with its derived sizes; [`diag`] formats one-line
//! fatal messages on the stack. The C boundary lives in [`ffi`], one file per family, each export a few
//! lines that validate, call safe internals and map the result to C.
//!
//! The library is `#![no_std]` (core + libc) whenever it is built for C, so that nothing reachable from an
//! allocation entry point can call Rust's global allocator: it would recurse into ourselves.
#![cfg_attr(not(any(test, feature = "std", panic = "unwind")), no_std)]
#![no_builtins]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod bimp;
pub mod config;
pub mod diag;
pub mod ffi;
pub mod hoard;
pub mod options;
pub mod os;
pub mod region;
pub mod rm;
pub mod size_class;
pub mod sync;
#[cfg(test)]
mod testutil;
pub mod trace;

/// The crate version as a NUL-terminated string, as `rallocs_version()` returns it.
pub const VERSION_CSTR: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// Writes one line naming the panic site to stderr and aborts: nothing unwinds across `extern "C"`.
#[cfg(not(any(test, feature = "std", panic = "unwind")))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(loc) => diag::fatal(format_args!(
            "panic at {}:{}: {}",
            loc.file(),
            loc.line(),
            info.message()
        )),
        None => diag::fatal(format_args!("panic: {}", info.message())),
    }
}

// The precompiled `core` is built for unwinding and its unwind tables name `rust_eh_personality`; with
// `panic = "abort"` nothing ever unwinds, so the routine is never called. Define it as a hidden symbol
// that traps, so that the shared library has no undefined reference and exports nothing extra.
#[cfg(all(not(any(test, feature = "std", panic = "unwind")), target_arch = "x86_64"))]
core::arch::global_asm!(
    ".pushsection .text.rust_eh_personality,\"ax\",@progbits",
    ".globl rust_eh_personality",
    ".hidden rust_eh_personality",
    ".type rust_eh_personality,@function",
    "rust_eh_personality:",
    "ud2",
    ".size rust_eh_personality, . - rust_eh_personality",
    ".popsection",
);
#[cfg(all(not(any(test, feature = "std", panic = "unwind")), target_arch = "aarch64"))]
core::arch::global_asm!(
    ".pushsection .text.rust_eh_personality,\"ax\",%progbits",
    ".globl rust_eh_personality",
    ".hidden rust_eh_personality",
    ".type rust_eh_personality,%function",
    "rust_eh_personality:",
    "udf #0",
    ".size rust_eh_personality, . - rust_eh_personality",
    ".popsection",
);
