use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;

use super::*;
use crate::tensor::meta::{DType, StorageLayout, TensorMeta};

fn bytes(n: usize, fill: u8) -> Tensor {
    let meta = TensorMeta::new(DType::U8, vec![n as u64], StorageLayout::RowMajor).unwrap();
    Tensor::new(meta, vec![fill; n]).unwrap()
}

/// A budget that holds exactly `n` entries of `size` payload bytes with
/// single-character keys.
fn budget_for(n: u64, size: usize) -> u64 {
    n * Engine::charge("k", bytes(size, 0).meta())
}

#[test]
fn get_returns_the_stored_allocation() {
    let cache = Engine::new(1 << 20);
    let t = bytes(1000, 9);
    let ptr = t.data().as_ptr();
    cache.put("k", t).unwrap();
    let got = cache.get("k").unwrap().unwrap();
    assert_eq!(got.data().as_ptr(), ptr, "a get must not copy the payload");
}

#[test]
fn least_recently_used_goes_first() {
    let cache = Engine::new(budget_for(3, 100));
    for k in ["a", "b", "c"] {
        cache.put(k, bytes(100, 0)).unwrap();
    }
    // Reading "a" gives it a second chance; "b" is then the oldest unread.
    cache.get("a").unwrap().unwrap();
    cache.put("d", bytes(100, 0)).unwrap();
    assert!(cache.contains("a"));
    assert!(!cache.contains("b"), "b was the least recently used");
    assert!(cache.contains("c") && cache.contains("d"));
    cache.put("e", bytes(100, 0)).unwrap();
    // "a" used its second chance and was moved to the front, behind which
    // "c" is now the oldest.
    assert!(!cache.contains("c"));
    assert!(cache.contains("a"));
    assert_eq!(cache.stats().evictions, 2);
}

#[test]
fn a_hot_key_survives_a_stream_of_cold_puts() {
    let cold = Engine::charge("c0000", bytes(64, 0).meta());
    let cache = Engine::new(budget_for(1, 64) + 9 * cold);
    cache.put("k", bytes(64, 1)).unwrap();
    for i in 0..1000 {
        cache.get("k").unwrap().unwrap();
        cache.put(&format!("c{i:04}"), bytes(64, 0)).unwrap();
    }
    assert!(cache.contains("k"));
    assert_eq!(cache.stats().entries, 10);
}

#[test]
fn eviction_terminates_when_every_entry_is_referenced() {
    let cache = Engine::new(budget_for(4, 10));
    for k in ["a", "b", "c", "d"] {
        cache.put(k, bytes(10, 0)).unwrap();
        cache.get(k).unwrap();
    }
    cache.put("e", bytes(10, 0)).unwrap();
    assert_eq!(cache.stats().entries, 4);
    assert_eq!(cache.stats().evictions, 1);
    // The pass cleared every bit and then evicted the oldest, "a".
    assert!(!cache.contains("a"));
}

#[test]
fn oversize_put_fails_fast_and_evicts_nothing() {
    let limit = budget_for(4, 100);
    let cache = Engine::new(limit);
    for k in ["a", "b", "c"] {
        cache.put(k, bytes(100, 0)).unwrap();
    }
    let before = cache.stats();
    let err = cache.put("huge", bytes(limit as usize, 0)).unwrap_err();
    assert!(matches!(err, Error::OutOfMemory { limit: l, .. } if l == limit));
    let after = cache.stats();
    assert_eq!(after.entries, 3);
    assert_eq!(after.memory_used, before.memory_used);
    assert_eq!(after.evictions, 0);
}

#[test]
fn a_tensor_of_exactly_the_budget_fits_after_evicting_everything() {
    let limit = budget_for(1, 1000);
    let cache = Engine::new(limit);
    cache.put("a", bytes(10, 0)).unwrap();
    cache.put("k", bytes(1000, 0)).unwrap();
    assert_eq!(cache.stats().memory_used, limit);
    assert!(!cache.contains("a"));
}

#[test]
fn second_put_of_a_key_is_already_exists_and_changes_nothing() {
    let cache = Engine::new(budget_for(2, 10));
    cache.put("a", bytes(10, 1)).unwrap();
    cache.put("b", bytes(10, 2)).unwrap();
    let used = cache.stats().memory_used;
    assert_eq!(
        cache.put("a", bytes(10, 3)).unwrap_err(),
        Error::AlreadyExists("a".into())
    );
    assert_eq!(cache.stats().memory_used, used);
    assert_eq!(cache.stats().evictions, 0, "a refused put evicts nothing");
    assert_eq!(cache.get("a").unwrap().unwrap().data()[0], 1);
    // Delete, then put again, is how a key changes.
    assert!(cache.delete("a").unwrap());
    assert!(!cache.delete("a").unwrap());
    cache.put("a", bytes(10, 3)).unwrap();
    assert_eq!(cache.get("a").unwrap().unwrap().data()[0], 3);
}

#[test]
fn keys_are_validated() {
    let cache = Engine::new(1 << 20);
    let long = "x".repeat(MAX_KEY_LEN + 1);
    for key in ["", long.as_str()] {
        assert!(matches!(
            cache.put(key, bytes(1, 0)),
            Err(Error::InvalidKey(_))
        ));
        assert!(matches!(cache.get(key), Err(Error::InvalidKey(_))));
        assert!(matches!(cache.delete(key), Err(Error::InvalidKey(_))));
    }
    cache.put(&"x".repeat(MAX_KEY_LEN), bytes(1, 0)).unwrap();
    cache.put("ключ/🦀", bytes(1, 0)).unwrap();
}

#[test]
fn stats_count_hits_misses_and_memory() {
    let cache = Engine::new(10_000);
    assert_eq!(cache.stats().hit_rate, 0.0);
    let t = bytes(100, 0);
    let charge = Engine::charge("a", t.meta());
    cache.put("a", t).unwrap();
    cache.get("a").unwrap().unwrap();
    cache.get("a").unwrap().unwrap();
    cache.get("a").unwrap().unwrap();
    assert!(cache.get("zz").unwrap().is_none());
    let s = cache.stats();
    assert_eq!((s.entries, s.hits, s.misses), (1, 3, 1));
    assert_eq!(s.hit_rate, 0.75);
    assert_eq!(s.memory_used, charge);
    assert_eq!(s.memory_limit, 10_000);
    assert_eq!(s.memory_utilization, charge as f64 / 10_000.0);
    cache.delete("a").unwrap();
    // What is left is the delete's tombstone.
    assert_eq!(
        cache.stats().memory_used,
        "a".len() as u64 + TOMBSTONE_OVERHEAD
    );
}

#[test]
fn budget_holds_under_concurrent_puts_gets_and_deletes() {
    const THREADS: usize = 8;
    const PUTS: usize = 2000;
    let limit = 64 * 1024;
    let cache = Engine::new(limit);
    let stop = AtomicBool::new(false);
    let deletes = AtomicU64::new(0);
    let puts_ok = AtomicU64::new(0);
    let max_seen = AtomicU64::new(0);
    std::thread::scope(|s| {
        // A watcher samples memory_used while the writers run.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let used = cache.stats().memory_used;
                max_seen.fetch_max(used, Ordering::Relaxed);
            }
        });
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (cache, deletes, puts_ok) = (&cache, &deletes, &puts_ok);
                s.spawn(move || {
                    for i in 0..PUTS {
                        let key = format!("t{t}-{i}");
                        // Sizes vary so that evictions free uneven amounts.
                        let size = 64 + (i * 37 + t * 101) % 4000;
                        cache.put(&key, bytes(size, t as u8)).unwrap();
                        puts_ok.fetch_add(1, Ordering::Relaxed);
                        if i % 7 == 0 && cache.delete(&key).unwrap() {
                            deletes.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(got) = cache.get(&format!("t{t}-{}", i / 2)).unwrap() {
                            assert!(got.data().iter().all(|&b| b == t as u8));
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    let s = cache.stats();
    assert!(max_seen.load(Ordering::Relaxed) <= limit);
    assert!(s.memory_used <= limit);
    assert!(s.evictions > 0, "the test must actually evict");
    assert_eq!(
        s.entries + s.evictions + deletes.load(Ordering::Relaxed),
        puts_ok.load(Ordering::Relaxed)
    );
    // memory_used is exactly the sum of what the survivors are charged.
    let mut sum = 0;
    for t in 0..THREADS {
        for i in 0..PUTS {
            let key = format!("t{t}-{i}");
            if let Some(tensor) = cache
                .shared
                .index
                .get(key.as_str())
                .map(|e| e.tensor.clone())
            {
                sum += Engine::charge(&key, tensor.meta());
            }
        }
    }
    // ...and the tombstones of the deletes still remembered.
    sum += cache.lock_tombstones().charged();
    assert_eq!(sum, s.memory_used);
    assert_eq!(cache.lock_order().len() as u64, s.entries);
}

#[test]
fn racing_puts_of_one_key_have_exactly_one_winner() {
    const THREADS: usize = 8;
    let cache = Engine::new(1 << 20);
    for round in 0..50 {
        let key = format!("k{round}");
        let barrier = Barrier::new(THREADS);
        let winners: Vec<u8> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (cache, barrier, key) = (&cache, &barrier, &key);
                    s.spawn(move || {
                        barrier.wait();
                        match cache.put(key, bytes(16, t as u8)) {
                            Ok(()) => Some(t as u8),
                            Err(Error::AlreadyExists(_)) => None,
                            Err(e) => panic!("unexpected {e}"),
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(winners.len(), 1);
        let stored = cache.get(&key).unwrap().unwrap();
        assert_eq!(stored.data()[0], winners[0], "the winner's value is stored");
    }
    assert_eq!(cache.stats().entries, 50);
}

#[test]
fn a_charge_is_the_payload_as_allocated_plus_the_entry() {
    let t = bytes((1 << 20) + 1, 0);
    assert!(payload_footprint((1 << 20) + 1) > (1 << 20) + 1);
    assert_eq!(
        Engine::charge("k", t.meta()),
        payload_footprint((1 << 20) + 1) + 1 + 8 + ENTRY_OVERHEAD
    );
}

#[test]
fn admit_refuses_a_put_before_its_payload_exists() {
    let engine = Engine::new(10_000);
    let meta = bytes(100, 0).meta().clone();
    assert!(engine.admit("k", &meta, 100).is_ok());
    assert!(matches!(
        engine.admit("k", &meta, 99),
        Err(Error::InvalidSize { .. })
    ));
    assert!(matches!(
        engine.admit("", &meta, 100),
        Err(Error::InvalidKey(_))
    ));
    let big = bytes(20_000, 0).meta().clone();
    assert!(matches!(
        engine.admit("k", &big, 20_000),
        Err(Error::OutOfMemory { .. })
    ));
    engine.put("k", bytes(100, 0)).unwrap();
    assert!(matches!(
        engine.admit("k", &meta, 100),
        Err(Error::AlreadyExists(_))
    ));
}

#[test]
fn charges_near_the_top_of_u64_saturate_instead_of_wrapping() {
    let meta = TensorMeta::new(DType::U8, vec![u64::MAX - 1], StorageLayout::RowMajor).unwrap();
    assert_eq!(Engine::charge("k", &meta), u64::MAX);
    let engine = Engine::new(u64::MAX - 1);
    assert!(matches!(
        engine.admit("k", &meta, u64::MAX - 1),
        Err(Error::OutOfMemory { .. })
    ));
}

#[test]
fn a_budget_near_u64_max_is_capped_and_never_overflows() {
    let engine = Engine::new(u64::MAX);
    assert_eq!(engine.memory_limit(), MAX_BUDGET);
    engine.put("a", bytes(1000, 1)).unwrap();
    engine.put("b", bytes(1000, 2)).unwrap();
    let stats = engine.stats();
    assert_eq!(stats.entries, 2);
    assert_eq!(
        stats.memory_used,
        2 * Engine::charge("a", bytes(1000, 0).meta())
    );
}

#[test]
fn delete_if_removes_only_the_tensor_with_that_digest() {
    let engine = Engine::new(1 << 20);
    engine.put("k", bytes(100, 1)).unwrap();
    let mine = bytes(100, 1).digest();
    let theirs = bytes(100, 2).digest();
    assert_eq!(engine.digest("k").unwrap(), Some(mine));
    assert_eq!(engine.digest("absent").unwrap(), None);
    assert!(
        !engine.delete_if("k", theirs).unwrap(),
        "another value stays"
    );
    assert!(engine.contains("k"));
    assert!(engine.delete_if("k", mine).unwrap());
    assert!(!engine.contains("k"));
    // Only the delete's tombstone is left charged.
    assert_eq!(
        engine.stats().memory_used,
        "k".len() as u64 + TOMBSTONE_OVERHEAD
    );
    assert!(!engine.delete_if("k", mine).unwrap());
}

#[test]
fn a_conditional_put_begun_before_a_delete_is_refused() {
    let engine = Engine::new(1 << 20);
    let before = unix_micros();
    engine.put("k", bytes(100, 1)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert!(engine.delete("k").unwrap());
    // A repair or a late write carrying the old value: refused.
    assert!(matches!(
        engine.put_if("k", bytes(100, 1), before),
        Err(Error::Deleted(_))
    ));
    assert!(!engine.contains("k"));
    // A write begun after the delete goes through, and so does a plain put.
    std::thread::sleep(std::time::Duration::from_millis(2));
    engine.put_if("k", bytes(100, 2), unix_micros()).unwrap();
    assert!(engine.delete("k").unwrap());
    engine.put("k", bytes(100, 3)).unwrap();
    // A delete of a key never cached is remembered too.
    let before = unix_micros();
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert!(!engine.delete("never").unwrap());
    assert!(engine.put_if("never", bytes(1, 0), before).is_err());
}

#[test]
fn tombstones_are_charged_to_the_budget_and_expire() {
    let ttl = std::time::Duration::from_millis(50);
    let engine = Engine::with_tombstones(1 << 20, ttl, 1000);
    engine.delete("gone").unwrap();
    let stone = "gone".len() as u64 + TOMBSTONE_OVERHEAD;
    assert_eq!(engine.stats().memory_used, stone);
    assert_eq!(engine.stats().entries, 0);
    std::thread::sleep(ttl * 2);
    // Expired stones are dropped on the next write.
    engine.put("k", bytes(10, 0)).unwrap();
    assert_eq!(
        engine.stats().memory_used,
        Engine::charge("k", bytes(10, 0).meta())
    );
    // Tombstones hold at most 1/16 of the budget: a flood of deletes of
    // absent keys displaces at most that much of the cached tensors.
    let limit = 64 * 1024;
    let full = Engine::new(limit);
    let mut i = 0;
    while full.stats().memory_used + Engine::charge("k0000", bytes(1000, 0).meta()) <= limit {
        full.put(&format!("k{i:04}"), bytes(1000, 1)).unwrap();
        i += 1;
    }
    let cached = full.stats().entries;
    for j in 0..10_000 {
        full.delete(&format!("absent/{j}")).unwrap();
        assert!(full.stats().memory_used <= limit);
    }
    let left = full.stats().entries;
    let displaced = (cached - left) * Engine::charge("k0000", bytes(1000, 0).meta());
    assert!(
        displaced <= limit / 16 + 2000,
        "deletes evicted {displaced} bytes"
    );
    assert!(left > 0);
    // With tombstones off, a delete evicts nothing.
    let off = Engine::with_tombstones(budget_for(2, 100), std::time::Duration::ZERO, 0);
    off.put("a", bytes(100, 1)).unwrap();
    off.put("b", bytes(100, 2)).unwrap();
    off.delete("x").unwrap();
    assert!(off.contains("a") && off.contains("b"));
}
