//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod local;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redstone::client::FastClient;
use redstone::cluster::ClusterClient;
use redstone::fast::stream::FrameReader;
use redstone::fast::wire::{
    decode_response, encode, encode_head, Limits, Opcode, Prefix, Request, Response, MAGIC,
    PREFIX_LEN,
};
use redstone::fast::FastConfig;
use redstone::server::{Config, Server, ServerHandle};
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Metadata of a one-dimensional `u8` tensor of `n` bytes.
pub fn u8_meta(n: u64) -> TensorMeta {
    TensorMeta::new(DType::U8, vec![n], StorageLayout::RowMajor).unwrap()
}

/// Starts a server on an ephemeral loopback port with a budget of `limit`.
pub async fn start_server(limit: u64) -> ServerHandle {
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: "127.0.0.1:0".parse().unwrap(),
        memory_limit: limit,
        ..Config::default()
    };
    Server::bind(config).await.expect("bind").spawn()
}

/// Deterministic bytes derived from a seed, so a corrupted or swapped
/// payload cannot pass for the right one.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A fast-path connection driven frame by frame, for tests that send what
/// no well-behaved client would.
pub struct RawConn {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        RawConn {
            reader: FrameReader::new(r),
            writer: w,
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }

    /// Sends a well-formed request frame.
    pub async fn send(&mut self, id: u64, request: &Request, payload: &[u8]) {
        let header = encode(request).unwrap();
        let mut frame = encode_head(request.opcode(), 0, id, &header, payload.len() as u64);
        frame.extend_from_slice(payload);
        self.send_bytes(&frame).await.unwrap();
    }

    /// Sends a frame with a hand-picked opcode and header bytes.
    pub async fn send_raw(&mut self, opcode: Opcode, id: u64, header: &[u8], payload: &[u8]) {
        let mut frame = encode_head(opcode, 0, id, header, payload.len() as u64);
        frame.extend_from_slice(payload);
        self.send_bytes(&frame).await.unwrap();
    }

    /// The next response frame, or `None` once the server has closed.
    pub async fn recv(&mut self) -> Option<(Prefix, Response, Bytes)> {
        let limits = Limits {
            max_header: 1 << 20,
            max_payload: 1 << 40,
        };
        let head = self.reader.read_head(&limits).await.ok()??;
        let response = decode_response(&head.header, head.prefix.request_id).unwrap();
        let payload = self
            .reader
            .read_payload(head.prefix.payload_len)
            .await
            .unwrap();
        Some((head.prefix, response, payload))
    }

    /// Reads exactly `buf.len()` raw bytes of whatever the server sends.
    pub async fn reader_mut_read_exact(&mut self, buf: &mut [u8]) {
        self.reader.read_payload_into(buf).await.unwrap();
    }
}

/// Starts a server with a custom fast-path configuration.
pub async fn start_server_with(limit: u64, fast: FastConfig) -> ServerHandle {
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: "127.0.0.1:0".parse().unwrap(),
        memory_limit: limit,
        fast,
        ..Config::default()
    };
    Server::bind(config).await.expect("bind").spawn()
}

/// A well-behaved client doing byte-exact puts and gets in a loop until
/// stopped; `finish` returns how many round trips it verified and fails the
/// test on any error or mismatch.
pub struct GoodClient {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl GoodClient {
    pub async fn start(addr: SocketAddr, tag: &str) -> GoodClient {
        let client = FastClient::connect(addr).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let tag = tag.to_string();
        let task = tokio::spawn(async move {
            let mut done = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let key = format!("good/{tag}/{done}");
                let data = pattern(8192, done);
                client
                    .put(&key, u8_meta(8192), data.clone())
                    .await
                    .expect("good put");
                let got = client
                    .get(&key)
                    .await
                    .expect("good get")
                    .expect("just stored");
                assert_eq!(
                    got.data().as_ref(),
                    data.as_slice(),
                    "good client read corrupted data"
                );
                client.delete(&key).await.expect("good delete");
                done += 1;
                tokio::task::yield_now().await;
            }
            done
        });
        GoodClient { stop, task }
    }

    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let done = self.task.await.expect("the good client failed");
        assert!(done > 0, "the good client made no progress");
        done
    }
}

/// This process's resident set size, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A raw prefix with chosen fields (no validation), for hostile frames.
pub fn prefix_bytes(
    version: u8,
    opcode: u8,
    id: u64,
    header_len: u32,
    payload_len: u64,
) -> Vec<u8> {
    let mut p = vec![0u8; PREFIX_LEN];
    p[0..4].copy_from_slice(&MAGIC);
    p[4] = version;
    p[5] = opcode;
    p[8..16].copy_from_slice(&id.to_le_bytes());
    p[16..20].copy_from_slice(&header_len.to_le_bytes());
    p[24..32].copy_from_slice(&payload_len.to_le_bytes());
    p
}

/// `GET path` over HTTP/1.1 from `addr`: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut stream = TcpStream::connect(addr).await.expect("connect to HTTP");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    (status, body.to_owned())
}

/// Starts a server on ephemeral ports, metrics endpoint included.
pub async fn start_server_with_metrics(limit: u64, fast: FastConfig) -> ServerHandle {
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        memory_limit: limit,
        fast,
        ..Config::default()
    };
    Server::bind(config).await.expect("bind").spawn()
}

/// The value of the cluster client's metric `name` with `labels`, read
/// through a registry as an application would serve it (0 if absent).
pub fn cluster_metric(cluster: &ClusterClient, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut registry = prometheus_client::registry::Registry::default();
    cluster.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let values: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        })
        .collect();
    assert!(values.len() <= 1, "{name} {labels:?}: {values:?}");
    values.first().copied().unwrap_or(0.0)
}

/// A proxy on `listen` to `target` that delays each chunk of the
/// target's answers by `delay`; returns its address.
pub async fn slow_proxy_at(listen: SocketAddr, target: SocketAddr, delay: Duration) -> SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(target).await.unwrap();
            let (mut client_r, mut client_w) = client.into_split();
            let (mut server_r, mut server_w) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_r, &mut server_w).await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = server_r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    if client_w.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// [`slow_proxy_at`] on a free loopback port.
pub async fn slow_proxy(target: SocketAddr, delay: Duration) -> SocketAddr {
    slow_proxy_at("127.0.0.1:0".parse().unwrap(), target, delay).await
}

/// A fast-path client of `server` with an L1 cache.
pub async fn with_l1(server: &ServerHandle, l1: redstone::client::L1Options) -> FastClient {
    let options = redstone::client::FastClientOptions {
        l1: Some(l1),
        ..redstone::client::FastClientOptions::default()
    };
    FastClient::connect_with(server.fast_addr(), options)
        .await
        .unwrap()
}
