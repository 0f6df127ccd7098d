//! The binary's global allocator: mimalloc, entered the short way when it
//! can be.
//!
//! The mimalloc crate's `MiMalloc` sends every call through mimalloc's
//! aligned entry points (`mi_malloc_aligned` and friends), which check the
//! alignment before reaching the same allocation code. Every block mimalloc
//! hands out is aligned to at least a machine word, so a request for no more
//! than that (nearly every Rust allocation: byte buffers, boxes, `Arc`s)
//! goes straight to `mi_malloc`. This is ours rather than the crate's
//! because the crate offers no such choice, and the proxy path makes a few
//! dozen allocations per request (measured in docs/performance.md).

// The one place in the project with `unsafe`: a global allocator can't be
// written without it.
#![allow(unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout},
    ffi::c_void,
};

use libmimalloc_sys as mi;

/// The alignment every mimalloc block has (a machine word).
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc as the global allocator; see the [module docs](self).
pub(crate) struct Allocator;

// SAFETY: every method hands the request to mimalloc, which returns blocks
// of at least `size` bytes aligned to `align` (plain entry points only when
// `align` is at most a word, which every mimalloc block satisfies), or null
// on failure; blocks are freed with `mi_free`, which takes any of them.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl's comment.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl's comment.
        unsafe {
            if layout.align() <= WORD {
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
            if layout.align() <= WORD {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn blocks_have_the_alignment_asked_for() {
        // Odd sizes and every alignment up to a page, through the global
        // allocator this binary's tests also run on.
        for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1usize, 7, 8, 24, 40, 100, 4000] {
                let layout = std::alloc::Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero size; freed with the same layout.
                unsafe {
                    let p = std::alloc::alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xa5, size);
                    let q = std::alloc::realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0);
                    assert_eq!(*q, 0xa5);
                    std::alloc::dealloc(
                        q,
                        std::alloc::Layout::from_size_align(size * 3, align).unwrap(),
                    );
                }
            }
        }
    }
}
