//! Generates the ABI check with ctest2: a C file that includes `rallocs.h` and a Rust file that compares
//! what C sees (sizes, alignments, field offsets and types, constant values) with `src/ffi/types.rs`.

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    println!("cargo:rerun-if-changed=../include/rallocs.h");
    println!("cargo:rerun-if-changed=../src/ffi/types.rs");
    let mut cfg = ctest2::TestGenerator::new();
    cfg.header("rallocs.h")
        .include(root.join("include"))
        .flag("-std=c11")
        .flag("-Wall")
        .flag("-Wextra")
        .flag("-Werror")
        .flag("-Wno-unused-parameter");
    // cbindgen writes `typedef struct name {..} name;` (style "both"): C code may say either.
    cfg.type_name(|ty, is_struct, is_union| {
        if is_struct {
            format!("struct {ty}")
        } else if is_union {
            format!("union {ty}")
        } else {
            ty.to_string()
        }
    });
    cfg.generate(root.join("src/ffi/types.rs"), "all.rs");
}
