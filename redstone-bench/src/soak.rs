//! Soak mode: clients that stall while the others work, and a sampler of
//! the server's resident memory and charged bytes over the run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redstone::fast::wire::{encode_frame, Request};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::conn::Conn;
use crate::key_for;

/// Opens `n` fast-path connections that pipeline GETs of the run's keys
/// and never read a reply: the slow readers a server must survive. They
/// stay open until dropped.
pub(crate) async fn stallers(
    addr: &str,
    n: usize,
    keys: u64,
    size: usize,
) -> Result<Vec<TcpStream>, Box<dyn std::error::Error>> {
    let mut flood = Vec::new();
    for round in 0..4u64 {
        for i in 0..keys {
            let request = Request::Get {
                key: key_for(size, i),
            };
            flood.extend(encode_frame(
                request.opcode(),
                0,
                round * keys + i + 1,
                &request,
                0,
            )?);
        }
    }
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await?;
        // The server stops reading once this connection's queue is full.
        let _ = tokio::time::timeout(Duration::from_secs(1), s.write_all(&flood)).await;
        held.push(s);
    }
    Ok(held)
}

/// The largest values seen by the sampler.
#[derive(Debug, Default)]
pub(crate) struct Peaks {
    pub(crate) rss_bytes: u64,
    pub(crate) memory_used: u64,
    pub(crate) memory_limit: u64,
}

/// Every second until `stop`: the server's resident memory (from
/// `/proc/PID/status`, with `pid`) and its `memory_used`, printed to stderr
/// as one line each, and their peaks returned.
pub(crate) fn sample(pid: Option<u32>, conn: Conn, stop: Arc<AtomicBool>) -> JoinHandle<Peaks> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut peaks = Peaks::default();
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss = pid.and_then(rss_of).unwrap_or(0);
            let (used, limit) = match conn.stats().await {
                Ok(s) => (s.memory_used, s.memory_limit),
                Err(_) => (0, 0),
            };
            peaks.rss_bytes = peaks.rss_bytes.max(rss);
            peaks.memory_used = peaks.memory_used.max(used);
            peaks.memory_limit = limit;
            eprintln!(
                "t={:>4.0}s rss={} MiB memory_used={} MiB budget={} MiB",
                started.elapsed().as_secs_f64(),
                rss >> 20,
                used >> 20,
                limit >> 20
            );
        }
        peaks
    })
}

/// A process's resident set size in bytes (Linux).
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}
