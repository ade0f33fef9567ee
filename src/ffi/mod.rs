//! The C boundary: every `extern "C"` function of rallocs lives here, one file per family.
//!
//! Each export is a few lines: validate the arguments, call safe internals, map the result to C (a
//! pointer or NULL with `errno`, a status code, or an abort with a one-line message naming the function
//! and the pointer). C-visible types and constants live in [`types`], so that the ABI check (`systest/`)
//! can compare them with `include/rallocs.h`.

pub mod bimp;
pub mod malloc;
pub mod region;
pub mod rm;
pub mod types;
pub mod version;
