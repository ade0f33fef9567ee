//! Build script: sets the SONAME of the shared library and generates `rallocs.h` with cbindgen.
//!
//! The fresh header goes to `$OUT_DIR/rallocs.h` and to `<target>/include/rallocs.h`; the committed
//! `include/rallocs.h` is never written here. `make header` copies the fresh one over it, and `make test`
//! fails when the two differ.

use std::env;
use std::path::PathBuf;

fn main() {
    let major = env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    let minor = env::var("CARGO_PKG_VERSION_MINOR").unwrap();
    let patch = env::var("CARGO_PKG_VERSION_PATCH").unwrap();
    // The bimp preload library (feature `bimp-preload`) is a different library: give it its own SONAME.
    if env::var_os("CARGO_FEATURE_BIMP_PRELOAD").is_some() {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librallocs-bimp.so");
    } else {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librallocs.so.{major}");
    }
    bimp_align();
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let mut config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    config.after_includes = Some(format!(
        "\n/** Version of this header: compare with rallocs_version() at run time. */\n\
         #define RALLOCS_VERSION_MAJOR {major}\n\
         #define RALLOCS_VERSION_MINOR {minor}\n\
         #define RALLOCS_VERSION_PATCH {patch}\n\
         #define RALLOCS_VERSION_STRING \"{major}.{minor}.{patch}\""
    ));
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen could not generate rallocs.h");

    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    bindings.write_to_file(out.join("rallocs.h"));
    let target = env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() { target } else { root.join(target) };
    bindings.write_to_file(target.join("include").join("rallocs.h"));
}

/// The seed's `BIMP_ALIGN` option: the alignment of every bimp block, a power of two of at least 16
/// (default 16). Validated here so that a bad value fails the build with a clear message; passed to the
/// crate as `RALLOCS_BIMP_ALIGN` (`config::BIMP_ALIGN`, which asserts it again).
fn bimp_align() {
    println!("cargo:rerun-if-env-changed=BIMP_ALIGN");
    let raw = env::var("BIMP_ALIGN").unwrap_or_default();
    let raw = raw.trim();
    let align = if raw.is_empty() { 16 } else {
        match raw.parse::<usize>() {
            Ok(v) => v,
            Err(_) => panic!("BIMP_ALIGN={raw:?} is not a number: it must be a power of two from 16 to 1048576"),
        }
    };
    if !align.is_power_of_two() || !(16..=1 << 20).contains(&align) {
        panic!("BIMP_ALIGN={align} is invalid: it must be a power of two from 16 to 1048576 (16, 32, 64, ...)");
    }
    println!("cargo:rustc-env=RALLOCS_BIMP_ALIGN={align}");
}
