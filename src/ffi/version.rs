//! Library identification.

use core::ffi::c_char;

/// Returns the version of the rallocs library that is running, as a string "MAJOR.MINOR.PATCH".
///
/// The string is static: never free it. It matches the `RALLOCS_VERSION_MAJOR`, `_MINOR` and `_PATCH`
/// macros of the header the program was compiled with when the two come from the same release; compare
/// them to detect a program running against a different library than it was built with.
/// Thread-safe; never fails.
#[no_mangle]
pub extern "C" fn rallocs_version() -> *const c_char {
    crate::VERSION_CSTR.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_the_crate_version() {
        // SAFETY: rallocs_version returns a static NUL-terminated string.
        let s = unsafe { core::ffi::CStr::from_ptr(super::rallocs_version()) };
        assert_eq!(s.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
