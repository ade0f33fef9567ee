//! One-line fatal diagnostics, formatted on the stack and written with `write(2)`: no allocation, so
//! they work from inside `malloc`.
//!
//! Every message has the shape `rallocs: <what>\n`, for example
//! `rallocs: free(): invalid pointer 0x7ffd5c3e1a2c (not allocated by rallocs)`.

use crate::config::DIAG_LINE_MAX;
use core::fmt;

/// A fixed buffer that `core::fmt` writes into; text past its end is cut off, never an error.
pub struct LineBuf {
    buf: [u8; DIAG_LINE_MAX],
    len: usize,
}

impl LineBuf {
    /// An empty line.
    pub const fn new() -> Self {
        LineBuf { buf: [0; DIAG_LINE_MAX], len: 0 }
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Default for LineBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Formats `rallocs: <args>` into `line`, keeping the last byte for the newline.
pub fn format_line(line: &mut LineBuf, args: fmt::Arguments<'_>) {
    use fmt::Write;
    line.len = 0;
    let _ = line.write_str("rallocs: ");
    let _ = line.write_fmt(args);
    if line.len == line.buf.len() {
        line.len -= 1;
    }
    line.buf[line.len] = b'\n';
    line.len += 1;
}

/// Writes `rallocs: <args>` as one line to standard error.
pub fn message(args: fmt::Arguments<'_>) {
    let mut line = LineBuf::new();
    format_line(&mut line, args);
    crate::os::write_stderr(line.as_bytes());
}

/// Writes `rallocs: <args>` as one line to standard error and aborts the process.
#[cold]
#[inline(never)]
pub fn fatal(args: fmt::Arguments<'_>) -> ! {
    message(args);
    crate::os::abort()
}

/// Aborts with `rallocs: <func>(): invalid pointer <ptr> (<why>)`: the defined result for a pointer that
/// the named entry point cannot accept.
#[cold]
#[inline(never)]
pub fn invalid_pointer(func: &str, ptr: *const u8, why: &str) -> ! {
    fatal(format_args!("{}(): invalid pointer {:p} ({})", func, ptr, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_prefix_and_newline() {
        let mut l = LineBuf::new();
        format_line(&mut l, format_args!("free(): invalid pointer {:p}", 0x1234 as *const u8));
        assert_eq!(l.as_bytes(), b"rallocs: free(): invalid pointer 0x1234\n");
    }

    #[test]
    fn long_lines_are_cut_and_still_end_in_newline() {
        let mut l = LineBuf::new();
        let long = "x".repeat(4 * DIAG_LINE_MAX);
        format_line(&mut l, format_args!("{long}"));
        assert_eq!(l.as_bytes().len(), DIAG_LINE_MAX);
        assert_eq!(*l.as_bytes().last().unwrap(), b'\n');
        assert_eq!(l.as_bytes().iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
