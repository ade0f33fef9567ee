//! Size classes of the malloc family.
//!
//! Exact classes every 16 bytes up to 128, then four classes per doubling (at most 1.25x apart:
//! 160, 192, 224, 256, 320, ...) up to [`MAX_SMALL_SIZE`] = 16 KiB: 36 small classes in 64 KiB
//! superblocks; then 16 medium classes up to [`MAX_MEDIUM_SIZE`] = 256 KiB in 1 MiB superblocks. Every
//! class size is a
//! multiple of 16, so every block is 16-byte aligned (superblock data starts at a multiple of 128).
//!
//! Invariant: `class_of(n)` is the smallest class whose size is at least `n`, for every `n` in
//! `0..=MAX_MEDIUM_SIZE`, and neighbouring classes are at most 1.25x apart (see the tests).

use crate::config::{MAX_MEDIUM_SIZE, MAX_SMALL_SIZE, MEDIUM_SUPERBLOCK_SIZE, MIN_ALIGN, SUPERBLOCK_SIZE};

/// Number of small classes (served from 64 KiB superblocks).
pub const SMALL_CLASSES: usize = 36;
/// Number of size classes, small and medium.
pub const NCLASSES: usize = 52;

/// Superblock kinds: small (0) and medium (1).
pub const KINDS: usize = 2;

/// The superblock kind of class `c`: 0 small, 1 medium.
#[inline(always)]
pub fn kind_of(c: usize) -> usize {
    (c >= SMALL_CLASSES) as usize
}

/// Bytes of a superblock of kind `k`.
pub const SUPERBLOCK_BYTES: [usize; KINDS] = [SUPERBLOCK_SIZE, MEDIUM_SUPERBLOCK_SIZE];

/// Bytes of a superblock of class `c`.
#[inline(always)]
pub fn superblock_size(c: usize) -> usize {
    SUPERBLOCK_BYTES[kind_of(c)]
}

const fn size_of_class(c: usize) -> usize {
    if c < 8 {
        (c + 1) * 16
    } else {
        let k = (c - 8) / 4;
        let sub = (c - 8) % 4;
        (128 << k) + (sub + 1) * (32 << k)
    }
}

/// Block size of every class.
pub static CLASS_SIZE: [u32; NCLASSES] = {
    let mut t = [0u32; NCLASSES];
    let mut c = 0;
    while c < NCLASSES {
        t[c] = size_of_class(c) as u32;
        c += 1;
    }
    t
};

const _: () = assert!(size_of_class(SMALL_CLASSES - 1) == MAX_SMALL_SIZE);
const _: () = assert!(size_of_class(NCLASSES - 1) == MAX_MEDIUM_SIZE);
const _: () = assert!(size_of_class(0) == MIN_ALIGN);

/// Largest size served by the lookup table of [`class_of`].
const TABLE_MAX: usize = 1024;

/// `SMALL_TABLE[(size + 15) / 16]` is the class of `size` for sizes up to [`TABLE_MAX`]: one load, no
/// branch on the size (random request sizes would mispredict a comparison).
static SMALL_TABLE: [u8; TABLE_MAX / 16 + 1] = {
    let mut t = [0u8; TABLE_MAX / 16 + 1];
    let mut i = 0;
    while i < t.len() {
        t[i] = class_of_computed(if i == 0 { 0 } else { i * 16 }) as u8;
        i += 1;
    }
    t
};

/// Sizes up to this are served through a heap's direct table (see [`direct_slot`]).
pub const DIRECT_MAX: usize = TABLE_MAX;
/// Slots of a heap's direct table: one per 16 bytes of size up to [`DIRECT_MAX`], plus slot 0 (size 0).
pub const DIRECT_SLOTS: usize = TABLE_MAX / 16 + 1;

/// The direct-table slot of a request of `size <= DIRECT_MAX` bytes: every size in one slot has the
/// same class (class boundaries up to [`DIRECT_MAX`] are multiples of 16).
#[inline(always)]
pub fn direct_slot(size: usize) -> usize {
    (size + 15) >> 4
}

/// `DIRECT_RANGE[c]`: the direct-table slots whose class is `c`, as `start..end` (empty for classes
/// above [`DIRECT_MAX`]). A heap points every slot of the range at class `c`'s current superblock.
pub static DIRECT_RANGE: [(u8, u8); NCLASSES] = {
    let mut t = [(0u8, 0u8); NCLASSES];
    let mut i = 0;
    while i < DIRECT_SLOTS {
        let c = SMALL_TABLE[i] as usize;
        if t[c].1 == 0 {
            t[c].0 = i as u8;
        }
        t[c].1 = i as u8 + 1;
        i += 1;
    }
    t
};

const fn class_of_computed(size: usize) -> usize {
    if size <= 128 {
        // 0 and 1..=16 -> 0, 17..=32 -> 1, ...
        (size.saturating_sub(1)) >> 4
    } else {
        let s = size - 1;
        let b = (usize::BITS - 1 - s.leading_zeros()) as usize; // floor(log2(s)) >= 7
        8 + (b - 7) * 4 + ((s >> (b - 2)) & 3)
    }
}

/// The class serving a request of `size` bytes (`size <= MAX_MEDIUM_SIZE`; 0 counts as 1).
#[inline(always)]
pub fn class_of(size: usize) -> usize {
    debug_assert!(size <= MAX_MEDIUM_SIZE);
    if size <= TABLE_MAX {
        // Every size in (16(i-1), 16i] has the class of 16i: class boundaries up to 1024 are multiples of 16.
        SMALL_TABLE[(size + 15) >> 4] as usize
    } else {
        class_of_computed(size)
    }
}

/// Block size of class `c`.
#[inline(always)]
pub fn class_size(c: usize) -> usize {
    CLASS_SIZE[c] as usize
}

/// The smallest class whose blocks hold `size` bytes and start at multiples of `align` (a power of two,
/// at most [`crate::config::MAX_SMALL_ALIGN`]): its size must be a multiple of `align`, since block `i`
/// of a superblock starts at `SUPERBLOCK_HEADER + i * size`. `None` when no small class fits.
pub fn class_of_aligned(size: usize, align: usize) -> Option<usize> {
    let want = if size < align { align } else { size };
    if want > MAX_MEDIUM_SIZE {
        return None;
    }
    let mut c = class_of(want);
    while c < NCLASSES {
        if class_size(c) % align == 0 {
            return Some(c);
        }
        c += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_ranges_cover_exactly_the_slots_of_their_class() {
        let mut covered = 0;
        for c in 0..NCLASSES {
            let (start, end) = DIRECT_RANGE[c];
            for i in start as usize..end as usize {
                assert_eq!(class_of(if i == 0 { 0 } else { i * 16 }), c, "slot {i}");
                assert_eq!(class_of(i * 16 - if i == 0 { 0 } else { 15 }), c, "slot {i} low end");
                covered += 1;
            }
        }
        assert_eq!(covered, DIRECT_SLOTS);
        for n in 0..=DIRECT_MAX {
            let (start, end) = DIRECT_RANGE[class_of(n)];
            assert!((start as usize..end as usize).contains(&direct_slot(n)), "size {n}");
        }
    }

    #[test]
    fn table_agrees_with_the_computation() {
        for n in 0..=TABLE_MAX {
            assert_eq!(class_of(n), class_of_computed(n), "size {n}");
        }
    }

    #[test]
    fn every_size_maps_to_the_smallest_fitting_class() {
        for n in 0..=MAX_MEDIUM_SIZE {
            let c = class_of(n);
            assert!(class_size(c) >= n, "size {n} class {c}");
            if c > 0 {
                assert!(class_size(c - 1) < n.max(1), "size {n} fits class {} already", c - 1);
            }
        }
    }

    #[test]
    fn classes_are_at_most_1_25x_apart_and_16_aligned() {
        for c in 1..NCLASSES {
            let (a, b) = (class_size(c - 1), class_size(c));
            assert!(b % 16 == 0);
            // Above the exact classes (every 16 bytes up to 128), at most 1.25x apart.
            if a >= 128 {
                assert!(b * 4 <= a * 5, "classes {a} -> {b} more than 1.25x apart");
            }
        }
        // Exact classes for the smallest sizes.
        assert_eq!(&CLASS_SIZE[..8], &[16, 32, 48, 64, 80, 96, 112, 128]);
    }

    #[test]
    fn aligned_classes_are_multiples_of_the_alignment() {
        for align in [16usize, 32, 64, 128] {
            for size in [1usize, 17, 100, 129, 1000, 5000, 16000] {
                let c = class_of_aligned(size, align).unwrap();
                assert!(class_size(c) >= size && class_size(c) % align == 0);
            }
        }
        assert_eq!(class_of_aligned(MAX_MEDIUM_SIZE + 1, 16), None);
        assert_eq!(kind_of(class_of(MAX_SMALL_SIZE)), 0);
        assert_eq!(kind_of(class_of(MAX_SMALL_SIZE + 1)), 1);
    }
}
