//! The concurrency shim. Everything in `engine` that other threads can observe goes through
//! these names, so that `RUSTFLAGS="--cfg loom"` swaps in loom's model-checked versions
//! (see `engine/tests/loom.rs`).

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub use std::sync::atomic::{fence, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Spins this many times on a held latch before yielding the thread.
pub const LATCH_SPINS_BEFORE_YIELD_MAX: u32 = 64;

/// Called in a latch or seqlock retry loop.
#[inline]
pub fn backoff(spins: &mut u32) {
    #[cfg(loom)]
    {
        let _ = spins;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    {
        *spins += 1;
        if *spins < LATCH_SPINS_BEFORE_YIELD_MAX {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}
