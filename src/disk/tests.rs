use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::engine::{Engine, MAX_TOMBSTONES, TOMBSTONE_TTL};

/// A fresh directory under the system's temp dir, unique to this process.
pub(crate) fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("redstone-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tensor(fill: u8, len: usize) -> Tensor {
    let data: Vec<u8> = (0..len)
        .map(|i| fill.wrapping_add((i % 251) as u8))
        .collect();
    Tensor::from_slice::<u8>(vec![len as u64], &data).unwrap()
}

/// An engine of `ram` bytes over a disk tier of `disk` bytes in `dir`.
fn engine(dir: &Path, ram: u64, disk: u64) -> Engine {
    let tier = DiskTier::open(&DiskConfig {
        queue: 1 << 20,
        ..DiskConfig::new(dir, disk)
    })
    .unwrap();
    Engine::with_disk(ram, TOMBSTONE_TTL, MAX_TOMBSTONES, tier)
}

const FLUSH: Duration = Duration::from_secs(30);

/// Puts one at a time, flushing after each, so none is dropped for a full
/// queue.
fn put_all(e: &Engine, n: u8, len: usize) {
    for i in 0..n {
        e.put(&format!("t{i}"), tensor(i, len)).unwrap();
        assert!(e.flush_disk(FLUSH));
    }
}

#[test]
fn evicted_tensors_are_read_back_from_disk_and_after_a_restart() {
    let dir = scratch_dir("spill");
    {
        let e = engine(&dir, 2 << 20, 64 << 20);
        put_all(&e, 12, 256 << 10);
        let disk = e.disk_stats().unwrap();
        assert!(disk.writes >= 8, "{disk:?}");
        assert_eq!(disk.dropped_writes, 0);
        for i in 0..12 {
            assert_eq!(
                e.get(&format!("t{i}")).unwrap(),
                Some(tensor(i, 256 << 10)),
                "t{i}"
            );
        }
        assert!(e.disk_stats().unwrap().hits >= 8);
        // Put-once holds across tiers.
        assert!(matches!(
            e.put("t0", tensor(0, 16)),
            Err(crate::Error::AlreadyExists(_))
        ));
        e.persist(std::time::Instant::now() + FLUSH);
    }
    let e = engine(&dir, 2 << 20, 64 << 20);
    assert_eq!(e.disk_stats().unwrap().entries, 12);
    for i in 0..12 {
        assert_eq!(
            e.get(&format!("t{i}")).unwrap(),
            Some(tensor(i, 256 << 10)),
            "t{i}"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_delete_survives_a_restart() {
    let dir = scratch_dir("delete");
    {
        let e = engine(&dir, 2 << 20, 64 << 20);
        put_all(&e, 12, 256 << 10);
        assert!(e.delete("t0").unwrap());
        assert!(!e.contains("t0"));
        // And a new value under the key wins over the deleted one.
        assert!(e.delete("t1").unwrap());
        e.put("t1", tensor(99, 1000)).unwrap();
        e.persist(std::time::Instant::now() + FLUSH);
    }
    let e = engine(&dir, 2 << 20, 64 << 20);
    assert_eq!(e.get("t0").unwrap(), None);
    assert_eq!(e.get("t1").unwrap(), Some(tensor(99, 1000)));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Puts 12 tensors of 256 KiB through a 1 MiB RAM tier, persists them all,
/// closes the tier; returns its segment files, oldest first.
#[test]
fn packed_tensors_spill_and_come_back_packed_after_a_restart() {
    use crate::tensor::codec::{self, Encoding};
    use crate::tensor::synthetic::Kind;
    let dir = scratch_dir("packed");
    let raw: Vec<Tensor> = (0..12).map(|i| Kind::Relu.tensor(512 << 10, i)).collect();
    {
        let e = engine(&dir, 2 << 20, 64 << 20);
        for (i, t) in raw.iter().enumerate() {
            e.put(&format!("p{i}"), codec::compress(t).unwrap())
                .unwrap();
            assert!(e.flush_disk(FLUSH));
        }
        assert!(e.disk_stats().unwrap().writes >= 4);
        e.persist(std::time::Instant::now() + FLUSH);
    }
    let e = engine(&dir, 2 << 20, 64 << 20);
    for (i, t) in raw.iter().enumerate() {
        let back = e.get(&format!("p{i}")).unwrap().expect("on disk");
        assert_eq!(back.encoding(), Encoding::Packed, "p{i}");
        assert_eq!(&back.decoded().unwrap(), t, "p{i}");
        assert_eq!(e.digest(&format!("p{i}")).unwrap(), Some(t.digest()));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn written_out(dir: &Path) -> Vec<PathBuf> {
    let e = engine(dir, 2 << 20, 64 << 20);
    put_all(&e, 12, 256 << 10);
    e.persist(std::time::Instant::now() + FLUSH);
    drop(e);
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    segments
}

#[test]
fn a_flipped_payload_byte_is_a_miss_never_a_wrong_tensor() {
    let dir = scratch_dir("flip");
    let seg = written_out(&dir).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    // The first record's payload starts after its head (40 + 8 + 2 bytes).
    bytes[40 + 8 + 2 + 1000] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();
    let e = engine(&dir, 2 << 20, 64 << 20);
    let mut missing = 0;
    for i in 0..12 {
        match e.get(&format!("t{i}")).unwrap() {
            Some(t) => assert_eq!(t, tensor(i, 256 << 10)),
            None => missing += 1,
        }
    }
    assert_eq!(missing, 1);
    assert_eq!(e.disk_stats().unwrap().corrupt, 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_torn_tail_is_skipped_and_new_records_go_to_a_new_segment() {
    let dir = scratch_dir("torn");
    let seg = written_out(&dir).into_iter().next_back().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    file.set_len(len - 1000).unwrap();
    let e = engine(&dir, 2 << 20, 64 << 20);
    let stats = e.disk_stats().unwrap();
    assert_eq!(stats.corrupt, 1);
    assert_eq!(stats.entries, 11, "all but the torn record");
    e.put("new", tensor(7, 300 << 10)).unwrap();
    e.put("pusher", tensor(8, 800 << 10)).unwrap();
    assert!(e.flush_disk(FLUSH));
    drop(e);
    let e = engine(&dir, 2 << 20, 64 << 20);
    assert_eq!(e.get("new").unwrap(), Some(tensor(7, 300 << 10)));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_second_tier_on_the_same_directory_is_refused() {
    let dir = scratch_dir("lock");
    let _first = DiskTier::open(&DiskConfig::new(&dir, 1 << 20)).unwrap();
    let second = DiskTier::open(&DiskConfig::new(&dir, 1 << 20));
    assert!(matches!(second, Err(DiskError::InUse(_))), "{second:?}");
    drop(_first);
    assert!(DiskTier::open(&DiskConfig::new(&dir, 1 << 20)).is_ok());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_directory_that_cannot_be_made_is_a_clear_error() {
    let dir = scratch_dir("notadir");
    let file = dir.join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = DiskTier::open(&DiskConfig::new(file.join("sub"), 1 << 20)).unwrap_err();
    assert!(matches!(err, DiskError::Unusable { .. }));
    assert!(err.to_string().contains("file/sub"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_second_read_within_the_window_promotes_to_ram() {
    let dir = scratch_dir("promote");
    let e = engine(&dir, 2 << 20, 64 << 20);
    put_all(&e, 12, 256 << 10);
    let before = e.stats().entries;
    assert!(e.get("t0").unwrap().is_some());
    assert_eq!(
        e.disk_stats().unwrap().promotions,
        0,
        "one read does not promote"
    );
    assert!(e.get("t0").unwrap().is_some());
    assert_eq!(e.disk_stats().unwrap().promotions, 1);
    let hits = e.disk_stats().unwrap().hits;
    assert!(e.get("t0").unwrap().is_some());
    assert_eq!(e.disk_stats().unwrap().hits, hits, "now served from RAM");
    assert!(e.stats().entries <= before);
    // Deleting it removes both copies.
    assert!(e.delete("t0").unwrap());
    assert_eq!(e.get("t0").unwrap(), None);
    std::fs::remove_dir_all(dir).unwrap();
}
