//! The allocator every Redstone process runs with, and what a payload
//! costs in it.
//!
//! # jemalloc (the default `jemalloc` feature)
//! With the feature on (the default), this crate makes jemalloc the
//! process's global allocator: the `server` binary, `redstone-bench`, the
//! `redstone` CLI and the tests all run on it. (The Python extension turns
//! it off: a library loaded into Python keeps the system allocator.)
//!
//! Why: glibc reaches the budget's resident memory only with its mmap
//! threshold pinned (below), and then every large buffer (a PUT's payload,
//! tonic's encode buffers) is a fresh mapping that page-faults on first
//! touch and is unmapped on free. jemalloc reuses freed extents instead.
//! Measured with the same client against both builds of the server
//! (`benches/ab.py`, the README's Memory section): 1 MiB puts from 16
//! clients 2.4×, single-stream 64 MiB puts 2.0×.
//!
//! Its settings (compiled in by `.cargo/config.toml`): freed pages are
//! returned to the system within about 200 ms by a background thread
//! (`dirty_decay_ms:200,muzzy_decay_ms:0`), and allocations of 8 MiB and
//! more are not purged the moment they are freed (`oversize_threshold:0`),
//! so the next large PUT reuses an evicted tensor's pages. Resident memory
//! follows the budget (`benches/memory.py`: 1.01× full of 3 KiB or 1 MiB
//! tensors); while the size of the tensors put changes (16 MiB, then
//! 64 MiB), the freed extents of the old size linger for those 200 ms and
//! resident memory peaked at 1.2× the budget, settling at 0.95×.
//!
//! The settings live in this workspace's `.cargo/config.toml`: a build
//! from elsewhere (`cargo install` from a registry, a crate depending on
//! this one) gets jemalloc's defaults (10 s decay, large allocations purged
//! at once). And a `cargo build --workspace` unifies features, linking
//! jemalloc into the Python extension too; maturin builds that crate alone,
//! without it.
//!
//! The engine charges a payload its jemalloc size class
//! ([`payload_footprint`]): sizes are rounded up to one of four classes per
//! power of two, so a 1 MiB tensor costs exactly 1 MiB and a 1 MiB + 1 byte
//! one costs 1.25 MiB. (The cache-oblivious page jemalloc would add to each
//! large allocation is compiled out.)
//!
//! # glibc (default features off)
//! An application embedding Redstone with an allocator of its own turns the
//! default features off. The engine then charges a payload of 128 KiB or
//! more in whole pages, as glibc maps it when such an allocation gets a
//! mapping of its own, and [`apply_policy`] (run by
//! [`Server::bind`](crate::server::Server::bind)) pins glibc's mmap
//! threshold at 128 KiB so that it does: by default glibc raises the
//! threshold as large blocks are freed (up to 32 MiB), after which payloads
//! come from the heap, and a heap freed out of order is not returned.
//! Measured: a 2 GiB cache filled with 1 MiB tensors, then 64 MiB ones, sat
//! at 4.2 GiB resident; a mixed workload on a 6 GiB cache reached 19 GiB.

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The memory a payload of `len` bytes really occupies in the allocator.
///
/// With jemalloc, its size class:
/// ```
/// # #[cfg(feature = "jemalloc")] {
/// use redstone::engine::payload_footprint;
/// assert_eq!(payload_footprint(3072), 3072);
/// assert_eq!(payload_footprint(1 << 20), 1 << 20);
/// assert_eq!(payload_footprint((1 << 20) + 1), 5 << 18);
/// # }
/// ```
pub fn payload_footprint(len: u64) -> u64 {
    if cfg!(feature = "jemalloc") {
        jemalloc_size_class(len)
    } else {
        glibc_footprint(len)
    }
}

/// jemalloc's size class for `len` (with 16-byte quanta and 4 KiB pages):
/// multiples of 16 up to 128, then four classes per power of two.
fn jemalloc_size_class(len: u64) -> u64 {
    if len <= 8 {
        return 8;
    }
    if len <= 128 {
        return len.div_ceil(16) * 16;
    }
    // 2^lg < len <= 2^(lg + 1): classes 2^lg + k * 2^(lg - 2).
    let lg = 63 - u64::leading_zeros(len - 1) as u64;
    let delta = 1u64 << (lg - 2);
    len.div_ceil(delta).saturating_mul(delta)
}

/// glibc: allocations from 128 KiB up are mapped in whole pages, with a
/// 16-byte header; smaller ones carry a header that
/// [`ENTRY_OVERHEAD`](crate::engine::ENTRY_OVERHEAD) covers.
fn glibc_footprint(len: u64) -> u64 {
    const PAGE_MAPPED_FROM: u64 = 128 * 1024;
    const PAGE: u64 = 4096;
    if len >= PAGE_MAPPED_FROM {
        len.saturating_add(16).div_ceil(PAGE).saturating_mul(PAGE)
    } else {
        len
    }
}

/// Applies the allocator policy the engine's charges assume, once per
/// process: with glibc, pins its mmap threshold at 128 KiB (see the module
/// docs); with jemalloc, nothing is left to do.
pub(crate) fn apply_policy() {
    #[cfg(all(not(feature = "jemalloc"), target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(pin_mmap_threshold);
    }
}

#[cfg(all(not(feature = "jemalloc"), target_os = "linux", target_env = "gnu"))]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_maps_large_payloads_in_whole_pages() {
        assert_eq!(glibc_footprint(3072), 3072);
        assert_eq!(glibc_footprint(1 << 20), (1 << 20) + 4096);
        assert_eq!(glibc_footprint(128 * 1024 - 1), 128 * 1024 - 1);
        assert_eq!(glibc_footprint(128 * 1024), 33 * 4096);
    }

    #[test]
    fn jemalloc_classes_follow_its_spacing() {
        let cases = [
            (1, 8),
            (9, 16),
            (100, 112),
            (129, 160),
            (3072, 3072),
            (3073, 3584),
            (16 << 10, 16 << 10),
            ((16 << 10) + 1, 20 << 10),
            (1 << 20, 1 << 20),
            ((1 << 20) + 1, 5 << 18),
            (4_000_000, 4 << 20),
            (64 << 20, 64 << 20),
        ];
        for (len, class) in cases {
            assert_eq!(jemalloc_size_class(len), class, "{len}");
        }
        assert_eq!(jemalloc_size_class(u64::MAX), u64::MAX);
    }

    /// The arithmetic is jemalloc's own answer, for every size up to 1 MiB
    /// in steps and around every class boundary above.
    #[cfg(feature = "jemalloc")]
    #[test]
    fn jemalloc_classes_match_the_allocator() {
        let nallocx = |len: u64| {
            // SAFETY: nallocx only computes a size class; it reads no
            // memory of ours and takes no pointer.
            unsafe { tikv_jemalloc_sys::nallocx(len as usize, 0) as u64 }
        };
        let mut sizes: Vec<u64> = (1..=(1 << 20)).step_by(37).collect();
        for lg in 10..34 {
            for k in 4..8u64 {
                let class = k << (lg - 2);
                sizes.extend([class - 1, class, class + 1]);
            }
        }
        for len in sizes {
            assert_eq!(jemalloc_size_class(len), nallocx(len), "{len}");
        }
    }
}
