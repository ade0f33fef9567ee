//! Every allocator behind one malloc-style interface ([`Alloc`]), dispatched statically so that a
//! workload compiled for one allocator calls it directly, as a C program linked with it would.
//!
//! Peers: glibc (taken with `dlsym` on a `libc.so.6` handle, which skips interposition), jemalloc
//! (`_rjem_` prefixed), mimalloc (`mi_` prefixed), rpmalloc (`rp` prefixed). rallocs families are
//! called through their C names, declared here and resolved by the rallocs rlib's `#[no_mangle]`
//! definitions. Nothing in this process replaces `malloc`: the harness's own Rust allocations go to
//! glibc, untimed and identical for every allocator.

use std::ffi::c_void;
use std::sync::OnceLock;

// Force the peer crates to be linked (we declare the few symbols we use ourselves).
use libmimalloc_sys as _;
use rpmalloc_sys as _;
use tikv_jemalloc_sys as _;

/// A malloc-style allocator.
///
/// # Safety
/// The methods have the C contracts of their namesakes.
pub trait Alloc: Sync + Send + 'static {
    /// `malloc`.
    unsafe fn malloc(&self, size: usize) -> *mut u8;
    /// `free`.
    unsafe fn free(&self, p: *mut u8);
    /// `realloc`.
    unsafe fn realloc(&self, p: *mut u8, size: usize) -> *mut u8;
    /// `calloc`.
    unsafe fn calloc(&self, n: usize, size: usize) -> *mut u8;
    /// `aligned_alloc` (size is rounded up to the alignment by the caller when needed).
    unsafe fn aligned(&self, align: usize, size: usize) -> *mut u8;
    /// Called first thing on every thread a workload starts (and on the main thread).
    fn thread_start(&self) {}
    /// Called last thing on every thread a workload started.
    fn thread_end(&self) {}
}

// ---------------------------------------------------------------------------------------------------
// glibc

type MallocFn = unsafe extern "C" fn(usize) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type ReallocFn = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
type CallocFn = unsafe extern "C" fn(usize, usize) -> *mut c_void;
type AlignedFn = unsafe extern "C" fn(usize, usize) -> *mut c_void;

/// glibc's malloc, looked up on a handle to `libc.so.6` so that no interposed malloc is found.
pub struct Glibc {
    malloc: MallocFn,
    free: FreeFn,
    realloc: ReallocFn,
    calloc: CallocFn,
    aligned: AlignedFn,
}

impl Glibc {
    /// The process-wide instance.
    pub fn get() -> &'static Glibc {
        static G: OnceLock<Glibc> = OnceLock::new();
        G.get_or_init(|| unsafe {
            let h = libc::dlopen(c"libc.so.6".as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY);
            assert!(!h.is_null(), "dlopen(libc.so.6) failed");
            let sym = |name: &std::ffi::CStr| {
                let p = libc::dlsym(h, name.as_ptr());
                assert!(!p.is_null(), "dlsym({name:?}) failed");
                p
            };
            Glibc {
                malloc: std::mem::transmute::<*mut c_void, MallocFn>(sym(c"malloc")),
                free: std::mem::transmute::<*mut c_void, FreeFn>(sym(c"free")),
                realloc: std::mem::transmute::<*mut c_void, ReallocFn>(sym(c"realloc")),
                calloc: std::mem::transmute::<*mut c_void, CallocFn>(sym(c"calloc")),
                aligned: std::mem::transmute::<*mut c_void, AlignedFn>(sym(c"aligned_alloc")),
            }
        })
    }
}

impl Alloc for Glibc {
    #[inline(always)]
    unsafe fn malloc(&self, size: usize) -> *mut u8 {
        (self.malloc)(size).cast()
    }
    #[inline(always)]
    unsafe fn free(&self, p: *mut u8) {
        (self.free)(p.cast())
    }
    #[inline(always)]
    unsafe fn realloc(&self, p: *mut u8, size: usize) -> *mut u8 {
        (self.realloc)(p.cast(), size).cast()
    }
    #[inline(always)]
    unsafe fn calloc(&self, n: usize, size: usize) -> *mut u8 {
        (self.calloc)(n, size).cast()
    }
    #[inline(always)]
    unsafe fn aligned(&self, align: usize, size: usize) -> *mut u8 {
        (self.aligned)(align, size).cast()
    }
}

// ---------------------------------------------------------------------------------------------------
// jemalloc, mimalloc, rpmalloc

extern "C" {
    fn _rjem_malloc(size: usize) -> *mut c_void;
    fn _rjem_free(p: *mut c_void);
    fn _rjem_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn _rjem_calloc(n: usize, size: usize) -> *mut c_void;
    fn _rjem_aligned_alloc(align: usize, size: usize) -> *mut c_void;

    fn mi_malloc(size: usize) -> *mut c_void;
    fn mi_free(p: *mut c_void);
    fn mi_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn mi_calloc(n: usize, size: usize) -> *mut c_void;
    fn mi_malloc_aligned(size: usize, align: usize) -> *mut c_void;

    fn rpmalloc_initialize() -> i32;
    fn rpmalloc_thread_initialize();
    fn rpmalloc_thread_finalize();
    fn rpmalloc(size: usize) -> *mut c_void;
    fn rpfree(p: *mut c_void);
    fn rprealloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn rpcalloc(n: usize, size: usize) -> *mut c_void;
    fn rpaligned_alloc(align: usize, size: usize) -> *mut c_void;
}

/// Defines a unit-struct allocator from five C functions.
macro_rules! c_alloc {
    ($name:ident, $malloc:ident, $free:ident, $realloc:ident, $calloc:ident, |$a:ident, $s:ident| $aligned:expr) => {
        /// A peer allocator called through its prefixed C API.
        pub struct $name;
        impl Alloc for $name {
            #[inline(always)]
            unsafe fn malloc(&self, size: usize) -> *mut u8 {
                $malloc(size).cast()
            }
            #[inline(always)]
            unsafe fn free(&self, p: *mut u8) {
                $free(p.cast())
            }
            #[inline(always)]
            unsafe fn realloc(&self, p: *mut u8, size: usize) -> *mut u8 {
                $realloc(p.cast(), size).cast()
            }
            #[inline(always)]
            unsafe fn calloc(&self, n: usize, size: usize) -> *mut u8 {
                $calloc(n, size).cast()
            }
            #[inline(always)]
            unsafe fn aligned(&self, $a: usize, $s: usize) -> *mut u8 {
                $aligned.cast()
            }
            rpmalloc_threads!($name);
        }
    };
}

macro_rules! rpmalloc_threads {
    (Rpmalloc) => {
        fn thread_start(&self) {
            static INIT: std::sync::Once = std::sync::Once::new();
            // SAFETY: rpmalloc's documented start-up: once per process, then once per thread.
            INIT.call_once(|| unsafe {
                rpmalloc_initialize();
            });
            unsafe { rpmalloc_thread_initialize() };
        }
        fn thread_end(&self) {
            unsafe { rpmalloc_thread_finalize() };
        }
    };
    ($other:ident) => {};
}

c_alloc!(Jemalloc, _rjem_malloc, _rjem_free, _rjem_realloc, _rjem_calloc, |a, s| _rjem_aligned_alloc(a, s));
c_alloc!(Mimalloc, mi_malloc, mi_free, mi_realloc, mi_calloc, |a, s| mi_malloc_aligned(s, a));
c_alloc!(Rpmalloc, rpmalloc, rpfree, rprealloc, rpcalloc, |a, s| rpaligned_alloc(a, s));

// ---------------------------------------------------------------------------------------------------
// rallocs families (their C API; the rlib provides the definitions)

extern "C" {
    fn rallocs_malloc(size: usize) -> *mut c_void;
    fn rallocs_free(p: *mut c_void);
    fn rallocs_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn rallocs_calloc(n: usize, size: usize) -> *mut c_void;
    fn rallocs_aligned_alloc(align: usize, size: usize) -> *mut c_void;
}

c_alloc!(Rallocs, rallocs_malloc, rallocs_free, rallocs_realloc, rallocs_calloc, |a, s| rallocs_aligned_alloc(a, s));

extern "C" {
    fn region_create() -> *mut c_void;
    fn region_destroy(r: *mut c_void);
    fn region_alloc(r: *mut c_void, size: usize) -> *mut c_void;
    fn region_alloc_aligned(r: *mut c_void, size: usize, align: usize) -> *mut c_void;
    fn region_calloc(r: *mut c_void, n: usize, size: usize) -> *mut c_void;
    fn region_realloc(r: *mut c_void, p: *mut c_void, size: usize) -> *mut c_void;
    fn region_free(r: *mut c_void, p: *mut c_void);
}

thread_local! {
    /// The calling thread's region (one region per thread; a region is used by one thread at a time).
    static REGION: std::cell::Cell<*mut c_void> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// `region_*` on one region per thread, created by `thread_start` and destroyed by `thread_end`.
pub struct Region;

impl Region {
    #[inline(always)]
    fn region() -> *mut c_void {
        REGION.with(|r| r.get())
    }
}

impl Alloc for Region {
    #[inline(always)]
    unsafe fn malloc(&self, size: usize) -> *mut u8 {
        region_alloc(Self::region(), size).cast()
    }
    #[inline(always)]
    unsafe fn free(&self, p: *mut u8) {
        region_free(Self::region(), p.cast())
    }
    #[inline(always)]
    unsafe fn realloc(&self, p: *mut u8, size: usize) -> *mut u8 {
        region_realloc(Self::region(), p.cast(), size).cast()
    }
    #[inline(always)]
    unsafe fn calloc(&self, n: usize, size: usize) -> *mut u8 {
        region_calloc(Self::region(), n, size).cast()
    }
    #[inline(always)]
    unsafe fn aligned(&self, align: usize, size: usize) -> *mut u8 {
        region_alloc_aligned(Self::region(), size, align).cast()
    }
    fn thread_start(&self) {
        REGION.with(|r| {
            if r.get().is_null() {
                // SAFETY: region_create has no preconditions.
                let reg = unsafe { region_create() };
                assert!(!reg.is_null(), "region_create failed");
                r.set(reg);
            }
        });
    }
    fn thread_end(&self) {
        // SAFETY: the thread's own region, which no other thread uses.
        REGION.with(|r| unsafe {
            region_destroy(r.replace(std::ptr::null_mut()));
        });
    }
}

extern "C" {
    fn bimp_malloc(size: usize) -> *mut c_void;
    fn bimp_free(p: *mut c_void);
    fn bimp_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn bimp_calloc(n: usize, size: usize) -> *mut c_void;
    fn bimp_aligned_alloc(align: usize, size: usize) -> *mut c_void;
}

c_alloc!(Bimp, bimp_malloc, bimp_free, bimp_realloc, bimp_calloc, |a, s| bimp_aligned_alloc(a, s));

// RALLOCS-FAMILIES (adapters are added here as each family lands on main)

// ---------------------------------------------------------------------------------------------------
// The list

/// How an allocator takes part in the suite.
#[allow(dead_code)] // the variants of families that have not landed yet
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// A general-purpose peer (glibc, jemalloc, mimalloc, rpmalloc): the baselines.
    Peer,
    /// A rallocs family with the malloc interface (frees from any thread).
    Rallocs,
    /// A rallocs family whose blocks must be freed by the thread that allocated them.
    RallocsLocal,
    /// A stack-like allocator (bimp): the single-thread workloads and the traces; its footprint grows
    /// without bound under the threaded classics' non-stack lifetimes (gigabytes, tens of seconds).
    Stack,
    /// rmalloc itself: only the handle workloads.
    Handles,
}

/// Every allocator this build knows, in table order.
pub const ALLOCATORS: &[(&str, Kind)] = &[
    ("glibc", Kind::Peer),
    ("jemalloc", Kind::Peer),
    ("mimalloc", Kind::Peer),
    ("rpmalloc", Kind::Peer),
    ("rallocs", Kind::Rallocs),
    ("region", Kind::RallocsLocal),
    ("bimp", Kind::Stack),
    ("rmalloc", Kind::Handles),
    // RALLOCS-LIST
];

/// Runs `$body` with `$a` bound to the malloc-style allocator called `$name` (a `&'static` value of
/// a concrete type, so the body is compiled once per allocator). `$none` when the name is not one.
#[macro_export]
macro_rules! with_alloc {
    ($name:expr, $a:ident => $body:expr, $none:expr) => {{
        use $crate::alloc::*;
        match $name {
            "glibc" => {
                let $a: &'static Glibc = Glibc::get();
                $body
            }
            "jemalloc" => {
                let $a: &'static Jemalloc = &Jemalloc;
                $body
            }
            "mimalloc" => {
                let $a: &'static Mimalloc = &Mimalloc;
                $body
            }
            "rpmalloc" => {
                let $a: &'static Rpmalloc = &Rpmalloc;
                $body
            }
            "rallocs" => {
                let $a: &'static Rallocs = &Rallocs;
                $body
            }
            "region" => {
                let $a: &'static Region = &Region;
                $body
            }
            "bimp" => {
                let $a: &'static Bimp = &Bimp;
                $body
            }
            // RALLOCS-DISPATCH
            _ => $none,
        }
    }};
}

/// The kind of the allocator called `name`.
pub fn kind(name: &str) -> Option<Kind> {
    ALLOCATORS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// The allocators that serve as baselines ("best peer").
pub fn is_peer(name: &str) -> bool {
    kind(name) == Some(Kind::Peer)
}
