//! The disk tier under the faults a hostile review found (each of these
//! failed on the first version).

use std::sync::Arc;
use std::time::Duration;

use super::index::Where;
use super::tests::scratch_dir;
use super::*;
use crate::engine::{Engine, MAX_TOMBSTONES, TOMBSTONE_TTL};

const FLUSH: Duration = Duration::from_secs(30);

fn tensor(fill: u8, len: usize) -> Tensor {
    let data: Vec<u8> = (0..len)
        .map(|i| fill.wrapping_add((i % 251) as u8))
        .collect();
    Tensor::from_slice::<u8>(vec![len as u64], &data).unwrap()
}

fn tier(dir: &Path, size: u64, queue: u64) -> DiskTier {
    DiskTier::open(&DiskConfig {
        queue,
        ..DiskConfig::new(dir, size)
    })
    .unwrap()
}

fn segment_of(t: &DiskTier, key: &str) -> Option<u64> {
    match t.lookup(key)? {
        Found::Stored(r) => match &r.slot.at {
            Where::Stored { loc, .. } => Some(loc.segment),
            Where::Queued(_) => None,
        },
        Found::Queued(_) => None,
    }
}

/// A delete as the engine does it: remove, then void the record.
fn delete(t: &DiskTier, key: &str) -> bool {
    let (removed, voiding) = t.remove(key, None);
    if let Some(v) = voiding {
        t.void(v);
    }
    removed
}

fn offer_flush(t: &DiskTier, key: &str, v: Tensor) {
    assert!(t.offer(Arc::from(key), v).is_none());
    assert!(t.flush(FLUSH));
}

/// Once writes have failed, deletes still hold after a restart, their own
/// and earlier ones (an earlier design logged deletes as records and, when
/// it could not, dropped a segment that held other keys' delete records).
#[test]
fn a_delete_after_writes_failed_keeps_other_deletes() {
    let dir = scratch_dir("review-dropseg");
    let mb = 1 << 20;
    {
        // 64 MiB tier: 4 MiB segments, three 1 MiB records each.
        let t = tier(&dir, 64 << 20, 16 << 20);
        offer_flush(&t, "B", tensor(1, mb));
        offer_flush(&t, "f1", tensor(2, mb));
        offer_flush(&t, "f2", tensor(3, mb));
        offer_flush(&t, "f3", tensor(4, mb));
        let b_seg = segment_of(&t, "B").unwrap();
        // Delete B: its delete record goes to the active (later) segment.
        assert!(delete(&t, "B"));
        assert!(t.flush(FLUSH));
        offer_flush(&t, "C", tensor(5, mb));
        let c_seg = segment_of(&t, "C").unwrap();
        assert!(c_seg > b_seg, "B in {b_seg}, C (and B's delete) in {c_seg}");
        // A write fails (what writer::fail does): the tier stops writing.
        t.shared.writable.store(false, Ordering::Relaxed);
        // Deleting C drops C's segment, and B's delete record with it.
        assert!(delete(&t, "C"));
        assert!(t.flush(FLUSH));
    }
    let t = tier(&dir, 64 << 20, 16 << 20);
    let back = match t.lookup("B") {
        Some(Found::Stored(r)) => t.read(&r).0,
        _ => None,
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        back.is_none(),
        "B was deleted, yet after a restart it is served again ({} bytes)",
        back.map_or(0, |b| b.data().len())
    );
}

/// A delete has voided the record by the time it returns, even while the
/// writer is busy: a SIGKILL right after it (the files as the kernel has
/// them) cannot bring the tensor back.
#[test]
fn a_delete_is_on_disk_when_it_returns() {
    let dir = scratch_dir("review-crashdel");
    let snap = scratch_dir("review-crashdel-snap");
    {
        let t = tier(&dir, 64 << 20, 16 << 20);
        offer_flush(&t, "K", tensor(1, 4096));
        // A slow disk: the writer is busy (here: blocked on the log).
        let busy = lock(&t.shared.log);
        assert!(delete(&t, "K"), "delete acknowledged");
        assert!(!t.contains("K"));
        std::thread::sleep(Duration::from_millis(100));
        // SIGKILL now: the directory holds what the kernel has.
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "seg") {
                std::fs::copy(&p, snap.join(p.file_name().unwrap())).unwrap();
            }
        }
        drop(busy);
        assert!(t.flush(FLUSH));
    }
    let t = tier(&snap, 64 << 20, 16 << 20);
    let back = t.contains("K");
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&snap);
    assert!(!back, "a delete acknowledged before the crash came back");
}

/// A head with a valid checksum claiming a payload of nearly 2^64 bytes
/// ends its segment's replay; it neither wraps the offset nor allocates.
#[test]
fn a_head_claiming_an_overflowing_length_ends_the_replay() {
    use crate::tensor::meta::{DType, StorageLayout};
    let dir = scratch_dir("review-wrap");
    let key = b"k";
    let head_len = 40 + 8 + key.len();
    let p: u64 = 0u64.wrapping_sub(head_len as u64);
    let mut head = Vec::new();
    head.extend_from_slice(b"RSR1");
    head.extend_from_slice(&[1, DType::U8.code(), StorageLayout::RowMajor.code(), 0]);
    head.extend_from_slice(&(key.len() as u32).to_le_bytes());
    head.extend_from_slice(&1u32.to_le_bytes());
    head.extend_from_slice(&p.to_le_bytes());
    head.extend_from_slice(&0u64.to_le_bytes());
    head.extend_from_slice(&[0; 8]);
    head.extend_from_slice(&p.to_le_bytes());
    head.extend_from_slice(key);
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&head[4..32]);
    h.update(&head[40..]);
    let sum = h.digest();
    head[32..40].copy_from_slice(&sum.to_le_bytes());
    assert!(record::decode(&head).is_ok(), "a head recovery accepts");
    std::fs::write(dir.join(log::segment_name(0)), &head).unwrap();
    let d = dir.clone();
    let opened =
        std::thread::spawn(move || DiskTier::open(&DiskConfig::new(&d, 64 << 20)).is_ok()).join();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(opened.is_ok(), "recovery panicked on a hostile segment");
}

/// A file named like a segment with the largest id is not taken for one
/// (the next id would overflow and sort before the old ones).
#[test]
fn a_segment_name_out_of_range_is_not_ours() {
    let dir = scratch_dir("review-maxid");
    std::fs::write(dir.join(log::segment_name(u64::MAX)), b"").unwrap();
    let d = dir.clone();
    let opened =
        std::thread::spawn(move || DiskTier::open(&DiskConfig::new(&d, 64 << 20)).is_ok()).join();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        opened.is_ok(),
        "open panicked on a segment named ffffffffffffffff.seg"
    );
}

/// The write queue's bound counts each tensor's key and entries, not only
/// its payload: empty tensors cannot queue without bound.
#[test]
fn the_queue_bound_counts_what_each_tensor_holds() {
    let dir = scratch_dir("review-empty");
    let t = tier(&dir, 64 << 20, 1 << 20);
    let shared = Arc::clone(&t.shared);
    let e = Engine::with_disk(3 << 20, TOMBSTONE_TTL, MAX_TOMBSTONES, t);
    let busy = lock(&shared.log);
    let empty = Tensor::from_slice::<u8>(vec![0], &[]).unwrap();
    for i in 0..60_000 {
        e.put(&format!("e{i:06}"), empty.clone()).unwrap();
    }
    let (bytes, waiting) = {
        let q = lock(&shared.queue);
        (q.bytes, q.pushed - q.finished)
    };
    let queued = shared.index.len() as u64;
    drop(busy);
    assert!(e.flush_disk(FLUSH));
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
    // Each queued tensor costs at least what the engine charges a RAM entry.
    let held = queued * crate::engine::ENTRY_OVERHEAD;
    assert!(
        held <= shared.queue_limit,
        "{queued} tensors queued ({waiting} jobs, {bytes} bytes counted) hold >= {held} bytes; the queue's bound is {}",
        shared.queue_limit
    );
}

/// Stats (DISK_STATS, /metrics, on a runtime worker) do not wait for the
/// log's lock, which a write holds for its whole `pwrite`.
#[test]
fn stats_do_not_wait_for_a_disk_write() {
    let dir = scratch_dir("review-stats");
    let t = Arc::new(tier(&dir, 64 << 20, 1 << 20));
    let busy = lock(&t.shared.log); // the writer inside a long pwrite
    let (tx, rx) = std::sync::mpsc::channel();
    let t2 = Arc::clone(&t);
    let h = std::thread::spawn(move || {
        let _ = t2.stats();
        tx.send(()).unwrap();
    });
    let answered = rx.recv_timeout(Duration::from_secs(1)).is_ok();
    drop(busy);
    h.join().unwrap();
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(answered, "stats() waited for the disk write");
}

/// A tensor RAM cannot hold (restarted with a smaller budget) is served
/// from disk; it is neither copied for a promotion nor counted as one.
#[test]
fn a_promotion_ram_refuses_is_neither_copied_nor_counted() {
    let dir = scratch_dir("review-promote");
    let big = 4 << 20;
    {
        let e = Engine::with_disk(
            16 << 20,
            TOMBSTONE_TTL,
            MAX_TOMBSTONES,
            tier(&dir, 64 << 20, 8 << 20),
        );
        e.put("big", tensor(9, big)).unwrap();
        e.persist(std::time::Instant::now() + FLUSH);
    }
    let e = Engine::with_disk(
        3 << 20,
        TOMBSTONE_TTL,
        MAX_TOMBSTONES,
        tier(&dir, 64 << 20, 1 << 20),
    );
    for _ in 0..5 {
        assert_eq!(e.get("big").unwrap().unwrap().data().len(), big);
    }
    let promotions = e.disk_stats().unwrap().promotions;
    let in_ram = e.stats().entries;
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (promotions, in_ram),
        (0, 0),
        "promotions counted (each a full copy) for a tensor RAM can never hold"
    );
}
