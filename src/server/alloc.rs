//! The allocator policy every Redstone server runs with.
//!
//! The engine charges a payload of 128 KiB or more in whole pages
//! ([`payload_footprint`](crate::engine::payload_footprint)), as glibc maps
//! it when such an allocation gets a mapping of its own, and expects that
//! mapping to be returned to the system when the tensor is evicted. glibc
//! only does both reliably with its mmap threshold pinned: by default it
//! raises the threshold as large blocks are freed (up to 32 MiB), after
//! which payloads come from the heap, and a heap freed out of order is not
//! returned. Measured here: a 2 GiB cache filled with 1 MiB tensors, then
//! 64 MiB ones, sat at 4.2 GiB resident; a mixed workload on a 6 GiB cache
//! reached 19 GiB and was killed. With the threshold pinned, resident
//! memory follows the budget (`benches/memory.py`).
//!
//! [`Server::bind`](super::Server::bind) applies it, so every server —
//! the `server` binary, tests, an application embedding one — runs with
//! the policy the budget assumes.

use std::sync::Once;

/// Pins glibc's mmap threshold at 128 KiB, once per process.
pub(super) fn apply_policy() {
    static ONCE: Once = Once::new();
    ONCE.call_once(pin_mmap_threshold);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn pin_mmap_threshold() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only changes allocator tuning, with a documented
    // parameter (M_MMAP_THRESHOLD) and an in-range value. glibc serializes
    // it with its arena lock; a thread allocating meanwhile reads the
    // threshold as a plain integer and at worst uses the old value once.
    let ok = unsafe { mallopt(M_MMAP_THRESHOLD, 128 * 1024) };
    if ok != 1 {
        tracing::warn!("could not pin glibc's mmap threshold; memory may exceed the budget");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn pin_mmap_threshold() {}
