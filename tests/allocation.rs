//! The steady-state hot path allocates per batch, never per command: a counting allocator
//! measures propose → accept → commit through three replicas at 64 and 1024 commands a batch.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benches may unwrap.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use quorum::sim::direct::DirectCluster;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations per batch over `rounds` batches of `commands`, after a warm-up.
fn allocations_per_batch(commands: usize, rounds: u64) -> f64 {
    let mut cluster = DirectCluster::new(3, commands);
    let payload = [1u8; 16];
    for _ in 0..256 {
        cluster.propose_and_commit(commands, &payload);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..rounds {
        assert_eq!(cluster.propose_and_commit(commands, &payload), commands as u64);
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / rounds as f64
}

#[test]
fn hot_path_allocates_per_batch_not_per_command() {
    let small = allocations_per_batch(64, 4_000);
    let large = allocations_per_batch(1024, 4_000);
    // A batch buffer, its shared handle, and amortized log growth: a few per batch.
    assert!(small < 4.0, "{small} allocations per batch of 64");
    assert!(large < 4.0, "{large} allocations per batch of 1024");
    // Sixteen times the commands, (about) the same allocations: none per command.
    assert!(large < small + 0.5, "64/batch: {small}, 1024/batch: {large}");
    let per_command = large / 1024.0;
    assert!(per_command < 0.005, "{per_command} allocations per command");
}
