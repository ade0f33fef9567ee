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
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librallocs.so.{major}");
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
