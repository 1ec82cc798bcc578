//! The daemon's global allocator: mimalloc, asked for alignment only when a type needs more
//! than mimalloc gives every block anyway.
//!
//! The `mimalloc` crate's allocator calls `mi_malloc_aligned` for every allocation. For a
//! block over 1 KiB (a request's boxed state, a read buffer), or one whose next free block
//! is not aligned to the type's alignment by chance, that takes mimalloc's generic aligned
//! path, several times the cost of `mi_malloc`; callgrind of the HTTP worker path counted
//! about 120 instructions per allocation there. Every mimalloc block is 8-byte aligned, and
//! one whose size is a multiple of 16 is 16-byte aligned (its size class is a multiple of 16
//! bytes and pages start aligned), so only a type aligned more strictly (tokio's 128-byte
//! task cells) needs the aligned calls, as with the standard library's `System` allocator.

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// mimalloc's plain calls suffice for `size` bytes aligned to `align`.
#[inline]
fn plain(size: usize, align: usize) -> bool {
    align <= 8 || (align == 16 && size.is_multiple_of(16))
}

/// mimalloc, plain when the layout asks for no more alignment than a plain block has.
pub struct MiMalloc;

// SAFETY: each method forwards to the mimalloc call for the same layout; a plain block meets
// every layout `plain` accepts (see the module's comment), and `mi_free` releases blocks of
// either kind.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for the impl.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for the impl.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe {
            if plain(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_meet_their_layouts_alignment_and_keep_their_bytes() {
        let a = MiMalloc;
        for align in [1, 2, 8, 16, 32, 128, 4096] {
            for size in [
                1,
                7,
                16,
                24,
                48,
                100,
                1000,
                1025,
                1040,
                5000,
                70_000,
                1 << 20,
            ] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; each block is freed with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xAB, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc: size {size} align {align}");
                    assert!((0..size).all(|i| *q.add(i) == 0xAB));
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }

    /// The premise of `plain`: a plain block whose size is a multiple of 16 is 16-aligned,
    /// across the small, medium and large size classes.
    #[test]
    fn plain_blocks_of_a_multiple_of_16_bytes_are_16_aligned() {
        let mut held = Vec::new();
        for size in (16..=(1 << 20))
            .step_by(16)
            .filter(|s| *s < 70_000 || s % 4096 == 0)
        {
            for _ in 0..3 {
                // SAFETY: a plain block, freed below with mi_free.
                let p = unsafe { mi::mi_malloc(size) };
                assert_eq!(p as usize % 16, 0, "size {size}");
                held.push(p);
            }
        }
        for p in held {
            // SAFETY: from mi_malloc above.
            unsafe { mi::mi_free(p) };
        }
    }
}
