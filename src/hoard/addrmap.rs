//! The address map: which 64 KiB chunks of the address space start a superblock or a large span of ours.
//!
//! `free` and `realloc` consult it before trusting any header, so that a pointer rallocs never returned
//! (a stack address, memory from another allocator) is detected and reported instead of corrupting the
//! heap. Two levels: a static top table indexed by `addr >> 32` (one entry per 4 GiB), pointing to a leaf
//! of one byte per 64 KiB chunk (64 KiB per leaf), mapped on first use and never freed.
//!
//! Invariant: `kind(c) == SUPERBLOCK` exactly while chunk `c` holds a small superblock header written
//! by us; `kind(c) == MEDIUM | k` for each chunk `k` of a medium superblock of ours; `kind(c) == LARGE`
//! exactly while a live large span starts at `c`.

use crate::config::SUPERBLOCK_SHIFT;
use crate::os;
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

/// Chunk kinds.
pub const NONE: u8 = 0;
/// The chunk starts a superblock.
pub const SUPERBLOCK: u8 = 1;
/// The chunk starts a large span.
pub const LARGE: u8 = 2;
/// `MEDIUM | k`: the chunk lies in a medium superblock that starts `k` chunks before it (k < 16).
pub const MEDIUM: u8 = 0x10;

const ADDR_BITS: u32 = 48;
const TOP_SHIFT: u32 = 32;
const TOP_ENTRIES: usize = 1 << (ADDR_BITS - TOP_SHIFT);
const LEAF_ENTRIES: usize = 1 << (TOP_SHIFT - SUPERBLOCK_SHIFT);

type Leaf = [AtomicU8; LEAF_ENTRIES];

static TOP: [AtomicPtr<Leaf>; TOP_ENTRIES] = [const { AtomicPtr::new(core::ptr::null_mut()) }; TOP_ENTRIES];

/// The kind of the chunk that starts at `chunk` (any address; addresses outside user space are NONE).
#[inline(always)]
pub fn kind(chunk: usize) -> u8 {
    let top = chunk >> TOP_SHIFT;
    if top >= TOP_ENTRIES {
        return NONE;
    }
    // Acquire pairs with the Release compare-exchange that installs the leaf in `leaf_for`.
    let leaf = TOP[top].load(Ordering::Acquire);
    if leaf.is_null() {
        return NONE;
    }
    // SAFETY: installed leaves are never freed and have LEAF_ENTRIES entries; the index is masked.
    let e = unsafe { &(*leaf)[(chunk >> SUPERBLOCK_SHIFT) & (LEAF_ENTRIES - 1)] };
    // Relaxed: the kind is published before the chunk's address is handed to any other thread (through
    // a malloc result, which the program passes on with its own synchronisation, or through our locks).
    e.load(Ordering::Relaxed)
}

fn leaf_for(chunk: usize) -> Option<&'static Leaf> {
    let top = chunk >> TOP_SHIFT;
    if top >= TOP_ENTRIES {
        return None;
    }
    // Acquire: pairs with the Release below.
    let mut leaf = TOP[top].load(Ordering::Acquire);
    if leaf.is_null() {
        let size = core::mem::size_of::<Leaf>();
        let fresh = os::map(size, os::page_size()).ok()?.as_ptr().cast::<Leaf>();
        // Release publishes the zeroed leaf; Acquire on failure to read the winner's.
        match TOP[top].compare_exchange(core::ptr::null_mut(), fresh, Ordering::Release, Ordering::Acquire) {
            Ok(_) => leaf = fresh,
            Err(winner) => {
                // SAFETY: fresh was mapped above with this size and never shared.
                unsafe {
                    let _ = os::release(core::ptr::NonNull::new_unchecked(fresh.cast()), size);
                }
                leaf = winner;
            }
        }
    }
    // SAFETY: leaf is non-null, points to a mapped, never-freed Leaf.
    Some(unsafe { &*leaf })
}

/// Records the kind of the chunk at `chunk`. Fails (out of memory for a leaf) only when setting.
pub fn set(chunk: usize, k: u8) -> Result<(), os::OsError> {
    let leaf = leaf_for(chunk).ok_or(os::OsError::NO_MEMORY)?;
    // Relaxed: see `kind`.
    leaf[(chunk >> SUPERBLOCK_SHIFT) & (LEAF_ENTRIES - 1)].store(k, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_lookup() {
        let base = 0x5a5a_0000_0000usize;
        assert_eq!(kind(base), NONE);
        set(base, SUPERBLOCK).unwrap();
        set(base + (1 << SUPERBLOCK_SHIFT), LARGE).unwrap();
        assert_eq!(kind(base), SUPERBLOCK);
        assert_eq!(kind(base + (1 << SUPERBLOCK_SHIFT)), LARGE);
        assert_eq!(kind(base + (2 << SUPERBLOCK_SHIFT)), NONE);
        set(base, NONE).unwrap();
        assert_eq!(kind(base), NONE);
        assert_eq!(kind(usize::MAX & !0xffff), NONE);
    }
}
