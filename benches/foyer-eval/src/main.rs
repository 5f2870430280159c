//! foyer 0.22 evaluation benchmark: 3000 x 1 MiB values, 64 MiB memory tier, 4 GiB disk tier.
//!
//! usage: foyer_eval <evict|insert> [wait_every]
//!   evict  = HybridCachePolicy::WriteOnEviction (foyer default)
//!   insert = HybridCachePolicy::WriteOnInsertion
//!   wait_every = if > 0, call storage().wait().await every N inserts (manual back-pressure)
use std::{path::Path, time::Instant};

use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy,
};

const N: usize = 3000;
const VAL: usize = 1 << 20;
const MEM: usize = 64 << 20;
const DISK: usize = 4 << 30;
/// The device directory, under the working directory (`run.sh` runs here).
const DIR: &str = "data";

fn key(i: usize) -> String {
    format!("tensor-{i:05}")
}

/// Distinct pseudo-random content per key (xorshift64* seeded by index).
fn value(i: usize) -> Vec<u8> {
    let mut s: u64 = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(VAL);
    for _ in 0..VAL / 8 {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        v.extend_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v
}

fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn rss_mib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        >> 10
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / secs
}

fn du() -> String {
    let o = std::process::Command::new("du")
        .args(["-sh", DIR])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

async fn open(policy: HybridCachePolicy) -> anyhow::Result<HybridCache<String, Vec<u8>>> {
    let device = FsDeviceBuilder::new(Path::new(DIR))
        .with_capacity(DISK)
        .build()?;
    let hybrid = HybridCacheBuilder::new()
        .with_policy(policy)
        .memory(MEM)
        // NB: the default weighter is |_,_| 1 (capacity = entry count); we need bytes.
        .with_weighter(|k: &String, v: &Vec<u8>| k.len() + v.len())
        .storage()
        .with_engine_config(
            BlockEngineConfig::new(device)
                .with_tombstone_log(std::env::var("FOYER_TOMBSTONE").is_ok_and(|v| v == "1")),
        )
        .build()
        .await?;
    Ok(hybrid)
}

/// Read all keys once via HybridCache::get; returns (hits, exact, bytes, seconds-in-get).
async fn read_pass(
    h: &HybridCache<String, Vec<u8>>,
    verify: bool,
) -> anyhow::Result<(usize, usize, usize, f64)> {
    let (mut hits, mut exact, mut bytes, mut t) = (0, 0, 0, 0.0);
    for i in 0..N {
        let k = key(i);
        let t0 = Instant::now();
        let e = h.get(&k).await?;
        t += t0.elapsed().as_secs_f64();
        if let Some(e) = e {
            hits += 1;
            bytes += e.value().len();
            if verify && e.value() == &value(i) {
                exact += 1;
            }
        }
    }
    Ok((hits, exact, bytes, t))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let policy = match args.get(1).map(String::as_str) {
        Some("insert") => HybridCachePolicy::WriteOnInsertion,
        _ => HybridCachePolicy::WriteOnEviction,
    };
    let wait_every: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    println!(
        "== foyer 0.22 eval: policy={policy:?} wait_every={wait_every} N={N} x {VAL} B, mem={MEM} disk={DISK}"
    );

    let _ = std::fs::remove_dir_all(DIR);
    let t = Instant::now();
    let h = open(policy).await?;
    println!(
        "open (fresh): {:.3}s; RSS {} MiB",
        t.elapsed().as_secs_f64(),
        rss_mib()
    );

    // ---- 2. insert stream
    let (mut t_gen, mut t_ins, mut t_wait) = (0.0, 0.0, 0.0);
    let t_all = Instant::now();
    for i in 0..N {
        let t0 = Instant::now();
        let v = value(i);
        t_gen += t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        drop(h.insert(key(i), v));
        t_ins += t0.elapsed().as_secs_f64();
        if wait_every > 0 && (i + 1) % wait_every == 0 {
            let t0 = Instant::now();
            h.storage().wait().await;
            t_wait += t0.elapsed().as_secs_f64();
        }
    }
    let t0 = Instant::now();
    h.storage().wait().await; // wait for flushers + reclaimers to drain
    let t_drain = t0.elapsed().as_secs_f64();
    let wall = t_all.elapsed().as_secs_f64() - t_gen;
    let st = h.statistics();
    println!(
        "insert: {} MiB; insert() calls {:.3}s = {:.0} MB/s; manual waits {:.3}s; final drain {:.3}s; \
         insert+drain wall (excl. value gen {:.2}s) {:.3}s = {:.0} MB/s offered",
        N * VAL >> 20,
        t_ins,
        mbps(N * VAL, t_ins),
        t_wait,
        t_drain,
        t_gen,
        wall,
        mbps(N * VAL, wall)
    );
    println!(
        "device stats after drain: disk_write_bytes={} MiB ({} ios) -> effective write {:.0} MB/s over wall",
        st.disk_write_bytes() >> 20,
        st.disk_write_ios(),
        mbps(st.disk_write_bytes(), wall)
    );
    let (mut on_disk, mut in_mem, mut either) = (0, 0, 0);
    for i in 0..N {
        let k = key(i);
        let d = h.storage().may_contains(&k);
        let m = h.memory().contains(&k);
        on_disk += d as usize;
        in_mem += m as usize;
        either += (d || m) as usize;
    }
    println!(
        "after drain: indexed on disk {on_disk}, in memory {in_mem} (memory usage {} MiB), either {either}, lost (dropped) {}; RSS {} MiB",
        h.memory().usage() >> 20,
        N - either,
        rss_mib()
    );

    // ---- 3. read pass, cold page cache
    let dc = drop_caches();
    println!("drop_caches: {}", if dc { "ok" } else { "FAILED" });
    let rb0 = st.disk_read_bytes();
    let (hits, exact, bytes, t) = read_pass(&h, true).await?;
    println!(
        "read pass 1 (cold): hits {hits}/{N}, exact {exact}, {} MiB in {t:.3}s = {:.0} MB/s (disk_read_bytes {} MiB)",
        bytes >> 20,
        mbps(bytes, t),
        (st.disk_read_bytes() - rb0) >> 20
    );
    println!("RSS after read pass 1: {} MiB", rss_mib());
    let rb0 = st.disk_read_bytes();
    let (hits, _, bytes, t) = read_pass(&h, false).await?;
    println!(
        "read pass 2 (warm page cache): hits {hits}/{N}, {} MiB in {t:.3}s = {:.0} MB/s (disk_read_bytes {} MiB)",
        bytes >> 20,
        mbps(bytes, t),
        (st.disk_read_bytes() - rb0) >> 20
    );

    // ---- 4. close, reopen (recovery)
    let t = Instant::now();
    h.close().await?;
    println!(
        "close() (flush_on_close=true): {:.3}s",
        t.elapsed().as_secs_f64()
    );
    drop(h);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    println!(
        "du after close: {}  (configured device {} MiB)",
        du(),
        DISK >> 20
    );

    let dc = drop_caches();
    let t = Instant::now();
    let h = open(policy).await?;
    println!(
        "reopen/recovery (drop_caches {}): {:.3}s",
        if dc { "ok" } else { "FAILED" },
        t.elapsed().as_secs_f64()
    );
    let indexed = (0..N)
        .filter(|&i| h.storage().may_contains(&key(i)))
        .count();
    let (hits, exact, bytes, t) = read_pass(&h, true).await?;
    println!(
        "after recovery: indexed {indexed}/{N}; readable {hits}, exact {exact}; {} MiB in {t:.3}s = {:.0} MB/s",
        bytes >> 20,
        mbps(bytes, t)
    );

    // ---- put-once semantics probe: second insert of an existing key
    let p = (0..N)
        .find(|&i| h.storage().may_contains(&key(i)))
        .unwrap_or(0);
    let k = key(p);
    let before = h.get(&k).await?.map(|e| e.value().len());
    println!("probe key {k}: before second insert value len {before:?}");
    drop(h.insert(k.clone(), vec![7u8; 16]));
    let e = h.get(&k).await?.unwrap();
    println!(
        "second insert of existing key -> value now len {} (overwrite = {})",
        e.value().len(),
        e.value().len() == 16
    );
    drop(e);
    h.remove(&k);
    h.storage().wait().await;
    println!(
        "after remove: memory {} disk-indexed {}",
        h.memory().contains(&k),
        h.storage().may_contains(&k)
    );
    h.close().await?;
    drop(h);
    let h = open(policy).await?;
    let back = h.get(&k).await?.map(|e| e.value().len());
    println!(
        "after remove + restart: {k} readable = {back:?} (tombstone log env FOYER_TOMBSTONE={:?})",
        std::env::var("FOYER_TOMBSTONE").ok()
    );
    h.close().await?;
    drop(h);
    println!("du final: {}", du());
    Ok(())
}
