//! Intrusive doubly linked lists of superblocks (through `Superblock::next`/`prev`).
//!
//! Invariant: `len` equals the number of nodes reachable from `head`; `tail` is the last one; every
//! node's `prev` is the node before it. The list's owner (a heap's thread, or the global lock holder)
//! is the only one touching it.

use super::superblock::Superblock;
use core::ptr;

/// A list of superblocks.
pub struct List {
    /// First node or null.
    pub head: *mut Superblock,
    /// Last node or null.
    pub tail: *mut Superblock,
    /// Number of nodes.
    pub len: usize,
}

impl Default for List {
    fn default() -> Self {
        Self::new()
    }
}

impl List {
    /// An empty list.
    pub const fn new() -> Self {
        List { head: ptr::null_mut(), tail: ptr::null_mut(), len: 0 }
    }

    /// True when empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// Adds `sb` at the front.
    ///
    /// # Safety
    /// `sb` is a valid superblock on no list, owned by this list's owner.
    pub unsafe fn push_front(&mut self, sb: *mut Superblock) {
        // SAFETY: sb is valid and detached (caller); head, if any, is a node of this list.
        unsafe {
            (*sb).prev = ptr::null_mut();
            (*sb).next = self.head;
            if self.head.is_null() {
                self.tail = sb;
            } else {
                (*self.head).prev = sb;
            }
        }
        self.head = sb;
        self.len += 1;
    }

    /// Adds `sb` at the back.
    ///
    /// # Safety
    /// As for [`List::push_front`].
    pub unsafe fn push_back(&mut self, sb: *mut Superblock) {
        // SAFETY: sb is valid and detached (caller); tail, if any, is a node of this list.
        unsafe {
            (*sb).next = ptr::null_mut();
            (*sb).prev = self.tail;
            if self.tail.is_null() {
                self.head = sb;
            } else {
                (*self.tail).next = sb;
            }
        }
        self.tail = sb;
        self.len += 1;
    }

    /// Unlinks `sb`.
    ///
    /// # Safety
    /// `sb` is on this list.
    pub unsafe fn remove(&mut self, sb: *mut Superblock) {
        // SAFETY: sb and its neighbours are nodes of this list (caller).
        unsafe {
            let (p, n) = ((*sb).prev, (*sb).next);
            if p.is_null() {
                self.head = n;
            } else {
                (*p).next = n;
            }
            if n.is_null() {
                self.tail = p;
            } else {
                (*n).prev = p;
            }
            (*sb).next = ptr::null_mut();
            (*sb).prev = ptr::null_mut();
        }
        self.len -= 1;
    }

    /// Removes and returns the first node, or null.
    pub fn pop_front(&mut self) -> *mut Superblock {
        let sb = self.head;
        if !sb.is_null() {
            // SAFETY: sb is this list's head.
            unsafe { self.remove(sb) };
        }
        sb
    }

    /// Removes and returns the last node, or null.
    pub fn pop_back(&mut self) -> *mut Superblock {
        let sb = self.tail;
        if !sb.is_null() {
            // SAFETY: sb is this list's tail.
            unsafe { self.remove(sb) };
        }
        sb
    }

    /// Walks the list checking links and length; calls `f` on each node.
    pub fn check(&self, mut f: impl FnMut(&Superblock)) {
        let mut n = 0;
        let mut prev: *mut Superblock = ptr::null_mut();
        let mut sb = self.head;
        while !sb.is_null() {
            // SAFETY: nodes of a list are valid superblocks.
            let r = unsafe { &*sb };
            assert_eq!(r.prev, prev, "list prev link");
            f(r);
            n += 1;
            prev = sb;
            sb = r.next;
        }
        assert_eq!(prev, self.tail, "list tail");
        assert_eq!(n, self.len, "list length");
    }
}
