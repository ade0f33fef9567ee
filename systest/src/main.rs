//! Runs the ctest2-generated ABI check (see build.rs). Every type and constant of `src/ffi/types.rs` is
//! compared with `include/rallocs.h` as a C compiler sees it; the process fails on any difference.
#![allow(bad_style, unused_imports, unused_macros, clippy::all)]

#[path = "../../src/ffi/types.rs"]
mod types;

use libc::*;
use types::*;

include!(concat!(env!("OUT_DIR"), "/all.rs"));
