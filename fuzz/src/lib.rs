//! Shared by every fuzz target: a global allocator that aborts on any single allocation over
//! [`MAX_ALLOCATION_BYTES`], so that a decoder sizing a buffer from an unchecked length field
//! is a crash the fuzzer reports (libFuzzer's own `-malloc_limit_mb` only works with a
//! sanitizer's allocator, and a `vec![0; n]` of untouched pages never raises the RSS limit).
//! Link it into a target with `use txpipe_fuzz as _;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// Largest single allocation a target may make: 64 MiB. Inputs are a few KiB; the biggest
/// legitimate buffers (the log's 1 MiB scan chunk, the 64 Ki-command capacity cap of
/// `decode_commands`) stay far below it.
pub const MAX_ALLOCATION_BYTES: usize = 64 << 20;

struct Capped;

fn check(size: usize) {
    if size > MAX_ALLOCATION_BYTES {
        // No formatting: allocating here would recurse.
        let _ = std::io::stderr()
            .write_all(b"txpipe-fuzz: single allocation over 64 MiB (unbounded allocation)\n");
        std::process::abort();
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator after the size check.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;
