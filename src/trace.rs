//! Allocation-trace recorder: `RALLOCS_TRACE=/path/file` makes the malloc family write every call it
//! serves (operation, thread, addresses, size, alignment) to a compact binary file, which
//! `rallocs-bench replay` feeds through every allocator and `rallocs-bench trace-info` summarises.
//! The format is documented in `bench/TRACE_FORMAT.md`; [`Decoder`] is its reference reader.
//!
//! Invariants:
//! * Nothing here allocates: records are encoded into one buffer obtained with [`os::map`] and written
//!   out with `write(2)` when it fills, at [`flush`] and at process exit (a `.fini_array` entry).
//! * When tracing is off the whole cost is [`enabled`]: one relaxed load and a branch.
//! * Records appear in the file in one global order: the recorder lock serialises them, so a free
//!   recorded on one thread always follows the allocation (recorded on another) that returned its
//!   pointer, provided the caller records allocations *after* obtaining the block and frees *before*
//!   releasing it.
//! * A process never writes into another process's file: the file is created with `O_EXCL`; when the
//!   name is taken (a child that inherited `RALLOCS_TRACE` through `exec`) the process writes
//!   `<name>.<pid>` instead, and a child made by `fork` drops the parent's buffered records and switches
//!   to `<name>.<pid>` too.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::config::{TRACE_BUFFER_SIZE, TRACE_MAX_RECORD, TRACE_MAX_THREADS, TRACE_PATH_MAX};
use crate::os;
use crate::sync::{Mutex, Once};

/// The first eight bytes of every trace file.
pub const MAGIC: [u8; 8] = *b"RALTRACE";
/// The format version this module writes and [`Decoder`] reads.
pub const VERSION: u32 = 1;
/// Size of the file header: magic, version (u32 LE), pid (u32 LE).
pub const HEADER_LEN: usize = 16;

/// One traced operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// `malloc(size)` returned `result`.
    Malloc = 1,
    /// `calloc` returned `result` for `size` bytes in total (count times element size).
    Calloc = 2,
    /// `realloc(old, size)` returned `result` (NULL: it failed and `old` is still live).
    Realloc = 3,
    /// `free(old)`.
    Free = 4,
    /// An aligned allocation (`aligned_alloc`, `memalign`, `posix_memalign`, `valloc`, `pvalloc`)
    /// of `size` bytes at `align` returned `result`.
    Memalign = 5,
}

impl Op {
    /// The operation with tag `v`, if any.
    pub fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Malloc,
            2 => Op::Calloc,
            3 => Op::Realloc,
            4 => Op::Free,
            5 => Op::Memalign,
            _ => return None,
        })
    }
}

/// Bit of the tag byte saying that a thread id (varint) follows: the record's thread differs from the
/// previous record's.
pub const TAG_THREAD: u8 = 0x80;
/// Mask of the operation in the tag byte.
pub const TAG_OP_MASK: u8 = 0x0f;

/// One decoded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// What was called.
    pub op: Op,
    /// Small thread id: 0 for the first thread seen, 1 for the next, and so on.
    pub thread: u32,
    /// The block returned (0 when the call failed); 0 for `Free`.
    pub result: usize,
    /// The block passed in (`Realloc`, `Free`); 0 otherwise.
    pub old: usize,
    /// Requested size in bytes; 0 for `Free`.
    pub size: usize,
    /// Requested alignment (`Memalign`); 0 otherwise.
    pub align: usize,
}

// ---------------------------------------------------------------------------------------------------
// Encoding (shared by the recorder and the tests)

#[inline(always)]
fn put_varint(buf: &mut [u8], pos: &mut usize, mut v: u64) {
    while v >= 0x80 {
        buf[*pos] = (v as u8) | 0x80;
        *pos += 1;
        v >>= 7;
    }
    buf[*pos] = v as u8;
    *pos += 1;
}

#[inline(always)]
fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

#[inline(always)]
fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The per-stream state of the encoder: addresses are written as differences from the previous
/// address in the file, and the thread only when it changes.
#[derive(Clone, Copy, Default)]
struct Encoder {
    last_addr: usize,
    last_thread: u32,
}

impl Encoder {
    /// Appends one record to `buf` at `pos`; `buf` has at least [`TRACE_MAX_RECORD`] bytes free.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn encode(&mut self, buf: &mut [u8], pos: &mut usize, op: Op, thread: u32, result: usize, old: usize, size: usize, align: usize) {
        let mut tag = op as u8;
        if thread != self.last_thread {
            tag |= TAG_THREAD;
        }
        buf[*pos] = tag;
        *pos += 1;
        if thread != self.last_thread {
            put_varint(buf, pos, thread as u64);
            self.last_thread = thread;
        }
        let mut addr = |buf: &mut [u8], pos: &mut usize, a: usize| {
            put_varint(buf, pos, zigzag(a.wrapping_sub(self.last_addr) as i64));
            self.last_addr = a;
        };
        match op {
            Op::Malloc | Op::Calloc => {
                addr(buf, pos, result);
                put_varint(buf, pos, size as u64);
            }
            Op::Memalign => {
                addr(buf, pos, result);
                put_varint(buf, pos, size as u64);
                put_varint(buf, pos, align as u64);
            }
            Op::Realloc => {
                addr(buf, pos, old);
                addr(buf, pos, result);
                put_varint(buf, pos, size as u64);
            }
            Op::Free => addr(buf, pos, old),
        }
    }
}

/// Why a trace could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The file does not start with [`MAGIC`].
    BadMagic,
    /// A version this reader does not know.
    BadVersion(u32),
    /// A record with an unknown operation at this byte offset.
    BadRecord(usize),
}

/// Reads the records of a trace held in memory, in file order. A record cut short at the end (a
/// process that died before its last write finished) ends the iteration.
pub struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
    enc: Encoder,
    /// The pid of the process that wrote the trace.
    pub pid: u32,
    error: Option<DecodeError>,
}

impl<'a> Decoder<'a> {
    /// Checks the header of `data` and positions the reader on the first record.
    pub fn new(data: &'a [u8]) -> Result<Self, DecodeError> {
        if data.len() < HEADER_LEN || data[..8] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
        if version != VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        let pid = u32::from_le_bytes([data[12], data[13], data[14], data[15]]);
        Ok(Decoder { data, pos: HEADER_LEN, enc: Encoder::default(), pid, error: None })
    }

    /// The error that stopped the iteration early, if one did.
    pub fn error(&self) -> Option<DecodeError> {
        self.error
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = *self.data.get(self.pos)?;
            self.pos += 1;
            if shift < 64 {
                v |= ((b & 0x7f) as u64) << shift;
            }
            if b & 0x80 == 0 {
                return Some(v);
            }
            shift += 7;
        }
    }

    fn addr(&mut self) -> Option<usize> {
        let d = unzigzag(self.varint()?);
        let a = self.enc.last_addr.wrapping_add(d as usize);
        self.enc.last_addr = a;
        Some(a)
    }
}

impl Iterator for Decoder<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        let start = self.pos;
        let tag = *self.data.get(self.pos)?;
        self.pos += 1;
        let Some(op) = Op::from_u8(tag & TAG_OP_MASK) else {
            self.error = Some(DecodeError::BadRecord(start));
            self.pos = self.data.len();
            return None;
        };
        if tag & TAG_THREAD != 0 {
            self.enc.last_thread = self.varint()? as u32;
        }
        let mut r = Record { op, thread: self.enc.last_thread, result: 0, old: 0, size: 0, align: 0 };
        match op {
            Op::Malloc | Op::Calloc => {
                r.result = self.addr()?;
                r.size = self.varint()? as usize;
            }
            Op::Memalign => {
                r.result = self.addr()?;
                r.size = self.varint()? as usize;
                r.align = self.varint()? as usize;
            }
            Op::Realloc => {
                r.old = self.addr()?;
                r.result = self.addr()?;
                r.size = self.varint()? as usize;
            }
            Op::Free => r.old = self.addr()?,
        }
        Some(r)
    }
}

// ---------------------------------------------------------------------------------------------------
// The process-wide recorder

/// Whether records are being written. Relaxed everywhere: a record that races with the switch is
/// either written or not; the recorder state itself is guarded by `STATE`'s lock.
static ENABLED: AtomicBool = AtomicBool::new(false);
static INIT: Once = Once::new();
static STATE: Mutex<State> = Mutex::new(State::new());

struct State {
    fd: i32,
    buf: *mut u8,
    len: usize,
    enc: Encoder,
    /// Open-addressing table from `pthread_self()` values to small ids (0 = empty slot).
    threads: [usize; TRACE_MAX_THREADS],
    thread_ids: [u32; TRACE_MAX_THREADS],
    next_thread: u32,
    /// The file name from `RALLOCS_TRACE`, NUL-terminated.
    path: [u8; TRACE_PATH_MAX],
    records: u64,
}

// SAFETY: `buf` points to a private mapping owned by the State; only the lock holder touches it.
unsafe impl Send for State {}

impl State {
    const fn new() -> Self {
        State {
            fd: -1,
            buf: core::ptr::null_mut(),
            len: 0,
            enc: Encoder { last_addr: 0, last_thread: 0 },
            threads: [0; TRACE_MAX_THREADS],
            thread_ids: [0; TRACE_MAX_THREADS],
            next_thread: 0,
            path: [0; TRACE_PATH_MAX],
            records: 0,
        }
    }

    /// The small id of the thread whose `pthread_self()` is `me`. Threads beyond the table's capacity
    /// share the last id.
    #[inline(always)]
    fn thread_id(&mut self, me: usize) -> u32 {
        let mask = TRACE_MAX_THREADS - 1;
        // Fibonacci hashing of the thread pointer; the low bits of pthread_t are alignment zeros.
        let mut i = (me.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) & mask;
        for _ in 0..TRACE_MAX_THREADS {
            if self.threads[i] == me {
                return self.thread_ids[i];
            }
            if self.threads[i] == 0 {
                self.threads[i] = me;
                self.thread_ids[i] = self.next_thread;
                self.next_thread += 1;
                return self.thread_ids[i];
            }
            i = (i + 1) & mask;
        }
        TRACE_MAX_THREADS as u32
    }

    fn buffer(&mut self) -> &mut [u8] {
        // SAFETY: `buf` is a mapping of TRACE_BUFFER_SIZE bytes owned by this State (checked non-null by
        // every caller through `fd >= 0`, which is set only after the mapping succeeded).
        unsafe { core::slice::from_raw_parts_mut(self.buf, TRACE_BUFFER_SIZE) }
    }

    /// Writes out the buffered bytes; on a write error tracing stops (the file is incomplete but every
    /// record in it is whole).
    fn write_out(&mut self) {
        let mut off = 0;
        while off < self.len {
            // SAFETY: `buf[off..len]` is initialised memory of our mapping.
            let n = unsafe { libc::write(self.fd, self.buf.add(off).cast(), self.len - off) };
            if n > 0 {
                off += n as usize;
            } else if n < 0 && os::errno() == libc::EINTR {
                continue;
            } else {
                // Relaxed: see ENABLED.
                ENABLED.store(false, Ordering::Relaxed);
                break;
            }
        }
        self.len = 0;
    }

    /// Opens the trace file: `path` itself if it does not exist yet, else `path.<pid>`. Writes the
    /// header into the buffer. Returns false if no file could be created.
    fn open(&mut self, with_pid: bool) -> bool {
        let pid = getpid();
        let mut name = [0u8; TRACE_PATH_MAX + 12];
        let plen = self.path.iter().position(|&b| b == 0).unwrap_or(0);
        name[..plen].copy_from_slice(&self.path[..plen]);
        let attempt = |name: &[u8]| {
            // SAFETY: `name` is NUL-terminated; open(2) does not allocate.
            unsafe {
                libc::open(
                    name.as_ptr().cast(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                    0o644 as libc::c_uint,
                )
            }
        };
        let mut fd = if with_pid { -1 } else { attempt(&name[..plen + 1]) };
        if fd < 0 {
            // `<path>.<pid>`, replacing a stale file of an earlier process with the same pid.
            let mut end = plen;
            name[end] = b'.';
            end += 1;
            let mut digits = [0u8; 10];
            let mut n = pid;
            let mut d = 0;
            loop {
                digits[d] = b'0' + (n % 10) as u8;
                d += 1;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            while d > 0 {
                d -= 1;
                name[end] = digits[d];
                end += 1;
            }
            name[end] = 0;
            // SAFETY: NUL-terminated name; unlink does not allocate.
            unsafe { libc::unlink(name.as_ptr().cast()) };
            fd = attempt(&name[..end + 1]);
        }
        if fd < 0 {
            return false;
        }
        self.fd = fd;
        self.len = 0;
        self.enc = Encoder::default();
        self.records = 0;
        let header = self.buffer();
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&pid.to_le_bytes());
        self.len = HEADER_LEN;
        true
    }
}

fn getpid() -> u32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() as u32 }
}

/// Whether the recorder is on. One relaxed load: the whole cost of tracing when it is off.
#[inline(always)]
pub fn enabled() -> bool {
    // Relaxed: see ENABLED.
    ENABLED.load(Ordering::Relaxed)
}

/// Reads `RALLOCS_TRACE` and, when it names a file, starts recording into it. Called once at malloc
/// initialisation; later calls do nothing. Never allocates (libc `getenv`, `open(2)`, `mmap`).
pub fn init_from_env() {
    INIT.call_once(|| {
        // SAFETY: the name is NUL-terminated; getenv does not allocate.
        let p = unsafe { libc::getenv(c"RALLOCS_TRACE".as_ptr()) };
        if p.is_null() {
            return;
        }
        // SAFETY: getenv returns a NUL-terminated string that stays valid while the environment is
        // not changed; we copy it at once.
        let s = unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes();
        start(s);
    });
}

/// Starts recording into the file `path` (or `path.<pid>` if it exists). Returns whether it did.
/// Used by [`init_from_env`] and by tests and programs that trace themselves.
pub fn start(path: &[u8]) -> bool {
    if path.is_empty() || path.len() >= TRACE_PATH_MAX || path.contains(&0) {
        return false;
    }
    let mut st = STATE.lock();
    if st.fd >= 0 {
        return false;
    }
    if st.buf.is_null() {
        match os::map(TRACE_BUFFER_SIZE, os::page_size()) {
            Ok(p) => st.buf = p.as_ptr(),
            Err(_) => return false,
        }
    }
    st.path = [0; TRACE_PATH_MAX];
    st.path[..path.len()].copy_from_slice(path);
    if !st.open(false) {
        return false;
    }
    register_atfork();
    // Relaxed: see ENABLED; the state it guards was published by the lock.
    ENABLED.store(true, Ordering::Relaxed);
    true
}

fn register_atfork() {
    static ATFORK: Once = Once::new();
    ATFORK.call_once(|| {
        // SAFETY: the handler is a plain function; glibc stores the first handlers without
        // allocating (see PITFALLS).
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

/// In a child made by `fork`: the parent owns the buffered records and the file; the child starts its
/// own `<path>.<pid>`.
extern "C" fn after_fork_in_child() {
    if !enabled() {
        return;
    }
    // SAFETY: the child has one thread; whoever held the lock in the parent does not exist here.
    unsafe { STATE.force_unlock_after_fork() };
    let mut st = STATE.lock();
    // SAFETY: the descriptor is ours (inherited); closing it in the child leaves the parent's open.
    unsafe { libc::close(st.fd) };
    st.fd = -1;
    st.threads = [0; TRACE_MAX_THREADS];
    st.next_thread = 0;
    if !st.open(true) {
        // Relaxed: see ENABLED.
        ENABLED.store(false, Ordering::Relaxed);
    }
}

/// Records one call. `result` is the block returned (NULL if the call failed), `old` the block passed
/// in (`Realloc`, `Free`), `size` the bytes requested (`Calloc`: count times element size), `align`
/// the alignment (`Memalign`). Call it after obtaining a block and before releasing one (see the module
/// invariants). Does nothing when tracing is off; never allocates.
#[inline]
pub fn record(op: Op, result: *mut u8, old: *mut u8, size: usize, align: usize) {
    if !enabled() {
        return;
    }
    record_slow(op, result as usize, old as usize, size, align);
}

#[cold]
#[inline(never)]
fn record_slow(op: Op, result: usize, old: usize, size: usize, align: usize) {
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    let mut st = STATE.lock();
    if st.fd < 0 {
        return;
    }
    if st.len + TRACE_MAX_RECORD > TRACE_BUFFER_SIZE {
        st.write_out();
    }
    let thread = st.thread_id(me);
    let mut pos = st.len;
    let mut enc = st.enc;
    enc.encode(st.buffer(), &mut pos, op, thread, result, old, size, align);
    st.enc = enc;
    st.len = pos;
    st.records += 1;
}

/// Writes every buffered record to the file. Also runs at process exit.
pub fn flush() {
    if !enabled() {
        return;
    }
    let mut st = STATE.lock();
    if st.fd >= 0 && st.len > 0 {
        st.write_out();
    }
}

/// Flushes and closes the file: later calls record nothing. Returns the number of records written.
pub fn stop() -> u64 {
    // Relaxed: see ENABLED.
    ENABLED.store(false, Ordering::Relaxed);
    let mut st = STATE.lock();
    if st.fd < 0 {
        return 0;
    }
    if st.len > 0 {
        st.write_out();
    }
    // SAFETY: the descriptor is ours.
    unsafe { libc::close(st.fd) };
    st.fd = -1;
    st.threads = [0; TRACE_MAX_THREADS];
    st.next_thread = 0;
    st.records
}

extern "C" fn flush_at_exit() {
    flush();
}

/// Runs [`flush`] when the process exits (or the library is unloaded), after `main` returns.
#[used]
#[link_section = ".fini_array"]
static FLUSH_AT_EXIT: extern "C" fn() = flush_at_exit;

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_all(recs: &[Record]) -> std::vec::Vec<u8> {
        let mut out = std::vec::Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&42u32.to_le_bytes());
        let mut enc = Encoder::default();
        let mut buf = [0u8; 64];
        for r in recs {
            let mut pos = 0;
            enc.encode(&mut buf, &mut pos, r.op, r.thread, r.result, r.old, r.size, r.align);
            assert!(pos <= TRACE_MAX_RECORD, "record of {pos} bytes exceeds TRACE_MAX_RECORD");
            out.extend_from_slice(&buf[..pos]);
        }
        out
    }

    /// A deterministic PRNG for the round-trip test.
    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    fn random_record(s: &mut u64) -> Record {
        let op = Op::from_u8((xorshift(s) % 5 + 1) as u8).unwrap();
        let big = |s: &mut u64| match xorshift(s) % 4 {
            0 => 0,
            1 => usize::MAX,
            2 => (xorshift(s) as usize) & 0x7fff_ffff_fff0,
            _ => xorshift(s) as usize,
        };
        let mut r = Record { op, thread: (xorshift(s) % 300) as u32, result: 0, old: 0, size: 0, align: 0 };
        match op {
            Op::Malloc | Op::Calloc => {
                r.result = big(s);
                r.size = big(s);
            }
            Op::Memalign => {
                r.result = big(s);
                r.size = big(s);
                r.align = 1 << (xorshift(s) % 64);
            }
            Op::Realloc => {
                r.old = big(s);
                r.result = big(s);
                r.size = big(s);
            }
            Op::Free => r.old = big(s),
        }
        r
    }

    #[test]
    fn records_round_trip_through_the_encoder_and_decoder() {
        let mut s = 0x1234_5678_9abc_def1u64;
        let recs: std::vec::Vec<Record> = (0..20_000).map(|_| random_record(&mut s)).collect();
        let bytes = encode_all(&recs);
        let mut dec = Decoder::new(&bytes).unwrap();
        assert_eq!(dec.pid, 42);
        let back: std::vec::Vec<Record> = dec.by_ref().collect();
        assert_eq!(dec.error(), None);
        assert_eq!(back, recs);
    }

    #[test]
    fn typical_records_are_small() {
        // A malloc near the previous address on the same thread: tag, 1-2 byte delta, 1 byte size.
        let recs = [
            Record { op: Op::Malloc, thread: 0, result: 0x5555_0000_1000, old: 0, size: 24, align: 0 },
            Record { op: Op::Malloc, thread: 0, result: 0x5555_0000_1020, old: 0, size: 24, align: 0 },
            Record { op: Op::Free, thread: 0, result: 0, old: 0x5555_0000_1000, size: 0, align: 0 },
        ];
        let bytes = encode_all(&recs);
        let first = HEADER_LEN + 1 + 7 + 1; // tag, full address delta, size
        assert_eq!(bytes.len(), first + 3 + 2, "second malloc 3 bytes, free 2 bytes");
    }

    #[test]
    fn a_truncated_file_ends_at_the_last_whole_record_and_garbage_is_reported() {
        let recs = [
            Record { op: Op::Malloc, thread: 0, result: 0x1000, old: 0, size: 100_000, align: 0 },
            Record { op: Op::Realloc, thread: 1, result: 0x2000, old: 0x1000, size: 200_000, align: 0 },
        ];
        let bytes = encode_all(&recs);
        let n = Decoder::new(&bytes[..bytes.len() - 1]).unwrap().count();
        assert_eq!(n, 1);
        let mut bad = bytes.clone();
        bad.push(0x0e);
        let mut dec = Decoder::new(&bad).unwrap();
        assert_eq!(dec.by_ref().count(), 2);
        assert_eq!(dec.error(), Some(DecodeError::BadRecord(bytes.len())));
        assert_eq!(Decoder::new(b"not a trace at all").err(), Some(DecodeError::BadMagic));
        let mut v2 = bytes;
        v2[8] = 2;
        assert_eq!(Decoder::new(&v2).err(), Some(DecodeError::BadVersion(2)));
    }

    #[test]
    fn thread_ids_are_small_stable_and_bounded() {
        let mut st = State::new();
        let a = st.thread_id(0x7f00_0000_1000);
        let b = st.thread_id(0x7f00_0000_2000);
        assert_eq!((a, b), (0, 1));
        assert_eq!(st.thread_id(0x7f00_0000_1000), 0);
        for i in 0..TRACE_MAX_THREADS {
            st.thread_id(0x1000 * (i + 10));
        }
        assert_eq!(st.thread_id(0xdead_0000), TRACE_MAX_THREADS as u32, "overflow threads share one id");
    }

    #[test]
    fn the_global_recorder_writes_a_readable_file_from_several_threads() {
        let dir = std::env::temp_dir().join(std::format!("rallocs-trace-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("t.rtrace");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(dir.join(std::format!("t.rtrace.{}", std::process::id())));
        assert!(!enabled());
        assert!(start(path.as_os_str().as_encoded_bytes()));
        // A second start while recording is refused.
        assert!(!start(path.as_os_str().as_encoded_bytes()));
        let per_thread = 70_000; // more than one buffer's worth in total
        let handles: std::vec::Vec<_> = (0..4usize)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        let p = (0x10_0000 * (t + 1) + 16 * i) as *mut u8;
                        record(Op::Malloc, p, core::ptr::null_mut(), i % 1000 + 1, 0);
                        record(Op::Free, core::ptr::null_mut(), p, 0, 0);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // Other tests running at the same time may call the traced malloc family: at least ours.
        assert!(stop() >= 4 * 2 * per_thread as u64);
        assert!(!enabled());
        record(Op::Malloc, 16 as *mut u8, core::ptr::null_mut(), 1, 0); // ignored after stop
        let bytes = std::fs::read(&path).unwrap();
        let dec = Decoder::new(&bytes).unwrap();
        assert_eq!(dec.pid, std::process::id());
        // Per thread: strictly alternating malloc/free of the expected addresses, in order.
        let mut next = std::collections::HashMap::<u32, usize>::new();
        let mut count = 0;
        let mut live = std::collections::HashMap::<u32, usize>::new();
        let ours = |a: usize| (0x10_0000..0x50_0000 + 16 * per_thread).contains(&a);
        for r in dec.filter(|r| ours(r.result) || ours(r.old)) {
            count += 1;
            let i = next.entry(r.thread).or_insert(0);
            match r.op {
                Op::Malloc => {
                    assert_eq!(r.size, *i % 1000 + 1);
                    assert!(live.insert(r.thread, r.result).is_none());
                }
                Op::Free => {
                    assert_eq!(live.remove(&r.thread), Some(r.old));
                    *i += 1;
                }
                _ => panic!("unexpected {r:?}"),
            }
        }
        assert_eq!(count, 8 * per_thread);
        assert_eq!(next.len(), 4);
        assert!(next.values().all(|&n| n == per_thread));
        // The name is taken now: a second recording goes to `<name>.<pid>`.
        assert!(start(path.as_os_str().as_encoded_bytes()));
        record(Op::Malloc, 32 as *mut u8, core::ptr::null_mut(), 7, 0);
        assert!(stop() >= 1);
        let second = std::fs::read(dir.join(std::format!("t.rtrace.{}", std::process::id()))).unwrap();
        let recs: std::vec::Vec<Record> = Decoder::new(&second).unwrap().filter(|r| r.result == 32).collect();
        assert_eq!(recs, [Record { op: Op::Malloc, thread: 0, result: 32, old: 0, size: 7, align: 0 }]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
