//! The closed-loop workers and what they measure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use redstone::client::FastClient;
use redstone::tensor::codec::Compression;
use redstone::tensor::meta::TensorMeta;
use redstone::tensor::Tensor;

use crate::args::Op;
use crate::conn::Conn;
use crate::{key_for, resp};

/// What a worker measured.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) latencies_ns: Vec<u32>,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

impl Tally {
    pub(crate) fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }
}

/// What every worker needs to know.
pub(crate) struct Ctx {
    pub(crate) op: Op,
    pub(crate) verify: bool,
    pub(crate) into: bool,
    pub(crate) size: usize,
    /// The values' metadata (`--data`).
    pub(crate) meta: TensorMeta,
    /// How puts are sent (`--compress`).
    pub(crate) compression: Compression,
    pub(crate) keys: u64,
    pub(crate) values: Arc<Vec<Bytes>>,
    pub(crate) base: Bytes,
    /// Keys this worker puts start with this, so workers never collide.
    pub(crate) prefix: String,
    /// A missing key is not an error (see `--allow-misses`).
    pub(crate) allow_misses: bool,
}

/// A tiny xorshift, so key choice costs nothing measurable.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

impl Ctx {
    /// Judges a value read for key `i`: missing is an error (unless misses
    /// are allowed), and so is a wrong value when verifying.
    pub(crate) fn check_read(&self, i: u64, value: Option<&[u8]>) -> Result<(), String> {
        match value {
            Some(v) if self.verify && v != &self.values[i as usize][..] => {
                Err(format!("key {i}: value differs"))
            }
            Some(_) => Ok(()),
            None if self.allow_misses => Ok(()),
            None => Err(format!("key {i}: missing (evicted? use fewer --keys)")),
        }
    }

    /// Whether the next operation is a put.
    pub(crate) fn is_put(&self, rng: &mut Rng) -> bool {
        match self.op {
            Op::Get => false,
            Op::Put => true,
            Op::Mixed => rng.next().is_multiple_of(5),
            Op::Fill | Op::Check | Op::Scan => {
                unreachable!("one-shot operations have their own loop")
            }
        }
    }
}

pub(crate) async fn store_worker(
    conn: Conn,
    ctx: Ctx,
    seed: u64,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
) -> Tally {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut tally = Tally::default();
    let mut seq = 0u64;
    let mut buf = if ctx.into {
        vec![0u8; ctx.size]
    } else {
        Vec::new()
    };
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let outcome = if ctx.is_put(&mut rng) {
            seq += 1;
            let tensor = Tensor::new(ctx.meta.clone(), ctx.base.clone()).expect("sized to meta");
            conn.put_with(&format!("{}{seq}", ctx.prefix), tensor, ctx.compression)
                .await
                .map_err(|e| e.to_string())
        } else if ctx.into {
            let i = rng.next() % ctx.keys;
            match conn.get_into(&key_for(ctx.size, i), &mut buf).await {
                Ok(found) => ctx.check_read(i, found.then_some(&buf[..])),
                Err(e) => Err(e.to_string()),
            }
        } else {
            let i = rng.next() % ctx.keys;
            match conn.get(&key_for(ctx.size, i)).await {
                Ok(t) => ctx.check_read(i, t.as_ref().map(|t| &t.data()[..])),
                Err(e) => Err(e.to_string()),
            }
        };
        if measuring.load(Ordering::Relaxed) {
            record(&mut tally, started, outcome);
        }
    }
    tally
}

pub(crate) async fn batch_worker(
    client: FastClient,
    ctx: Ctx,
    pipeline: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
) -> Tally {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut tally = Tally::default();
    let mut picks = Vec::with_capacity(pipeline);
    let mut keys = Vec::with_capacity(pipeline);
    while !stop.load(Ordering::Relaxed) {
        picks.clear();
        keys.clear();
        for _ in 0..pipeline {
            let i = rng.next() % ctx.keys;
            picks.push(i);
            keys.push(key_for(ctx.size, i));
        }
        let started = Instant::now();
        let result = client.get_many(&keys).await;
        if !measuring.load(Ordering::Relaxed) {
            continue;
        }
        match result {
            Err(e) => {
                for _ in 0..pipeline {
                    tally.error(e.to_string());
                }
            }
            Ok(tensors) => {
                for (i, t) in picks.iter().zip(tensors) {
                    let outcome = ctx.check_read(*i, t.as_ref().map(|t| &t.data()[..]));
                    record(&mut tally, started, outcome);
                }
            }
        }
    }
    tally
}

pub(crate) async fn redis_worker(
    mut conn: resp::Resp,
    ctx: Ctx,
    pipeline: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
) -> Tally {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut tally = Tally::default();
    let mut out = Vec::new();
    let mut sent: Vec<Option<u64>> = Vec::with_capacity(pipeline);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        sent.clear();
        for _ in 0..pipeline {
            if ctx.is_put(&mut rng) {
                seq += 1;
                resp::Resp::set(&mut out, &format!("{}{seq}", ctx.prefix), &ctx.base);
                sent.push(None);
            } else {
                let i = rng.next() % ctx.keys;
                resp::Resp::get(&mut out, &key_for(ctx.size, i));
                sent.push(Some(i));
            }
        }
        if let Err(e) = conn.send(&mut out).await {
            tally.error(e.to_string());
            return tally;
        }
        for key in sent.iter() {
            let outcome = match (conn.read().await, key) {
                (Err(e), _) => {
                    tally.error(e.to_string());
                    return tally;
                }
                (Ok(resp::Reply::Bulk(v)), Some(i)) => ctx.check_read(*i, Some(&v[..])),
                (Ok(resp::Reply::Nil), Some(i)) => ctx.check_read(*i, None),
                (Ok(_), _) => Ok(()),
            };
            if measuring.load(Ordering::Relaxed) {
                record(&mut tally, started, outcome);
            }
        }
    }
    tally
}

pub(crate) fn record(tally: &mut Tally, started: Instant, outcome: Result<(), String>) {
    match outcome {
        Ok(()) => {
            let ns = started.elapsed().as_nanos().min(u32::MAX as u128) as u32;
            tally.latencies_ns.push(ns);
        }
        Err(e) => tally.error(e),
    }
}
