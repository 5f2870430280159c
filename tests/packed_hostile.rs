//! Packed tensors and the L1 against hostile peers and races: what a
//! hostile review of the change found (each test failed before its fix),
//! and what it probed that held.
//!
//! The two `*_cannot_allocate` tests run their scenario in a child process
//! (this same test binary) under `ulimit -v`, so that an allocation failure
//! is deterministic whatever the machine's RAM, and an abort kills only
//! the child.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{pattern, rss_bytes, start_server, start_server_with, u8_meta, with_l1, RawConn};
use redstone::client::{ClientError, FastClient, FastClientOptions, L1Options};
use redstone::cluster::{ClusterClient, ClusterConfig};
use redstone::engine::unix_micros;
use redstone::fast::stream::FrameReader;
use redstone::fast::wire::{
    decode_request, encode, encode_frame, encode_head, Body, Limits, Request, Response, Status,
    WireMeta, FLAG_END, FLAG_RESPONSE,
};
use redstone::fast::FastConfig;
use redstone::tensor::codec::{self, Compression, Encoding, BLOCK};
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
use redstone::tensor::synthetic::Kind;
use redstone::tensor::Tensor;
use redstone::Error;
use tokio::io::AsyncWriteExt;

// ---------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------

fn tensor(len: usize, seed: u64) -> Tensor {
    Tensor::new(u8_meta(len as u64), pattern(len, seed)).unwrap()
}

/// Every other f32 zero: packs with zero masks.
fn sparse_f32(n: usize) -> Tensor {
    let mut bytes = vec![0u8; n * 4];
    for i in (1..n).step_by(2) {
        bytes[i * 4] = (i % 7) as u8 + 1;
    }
    let meta = TensorMeta::new(DType::F32, vec![n as u64], StorageLayout::RowMajor).unwrap();
    Tensor::new(meta, bytes).unwrap()
}

/// Sends `request` as a version-1 client would (version byte 1).
async fn send_v1(conn: &mut RawConn, id: u64, request: &Request) {
    let header = encode(request).unwrap();
    let mut frame = encode_head(request.opcode(), 0, id, &header, 0);
    frame[4] = 1;
    conn.send_bytes(&frame).await.unwrap();
}

/// A packed payload for `raw_len` raw bytes of width `width` whose every
/// block is a zero mask with no bit set: valid, decodes to zeros, and
/// decoding it into a fresh (calloc'd) buffer touches none of its pages.
fn empty_masks(raw_len: u64, width: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut left = raw_len as usize;
    while left > 0 {
        let raw = left.min(BLOCK);
        let bitmap = (raw / width).div_ceil(8);
        out.extend_from_slice(&((1u32 << 30) | bitmap as u32).to_le_bytes());
        out.resize(out.len() + bitmap, 0);
        left -= raw;
    }
    out
}

/// Packed framing for `raw_len` bytes that `codec::check` accepts with the
/// fewest bytes (LZ4 blocks of the minimum length the check allows),
/// contents garbage: a decoder allocates the raw size, then fails.
fn lz4_framing(raw_len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut left = raw_len as usize;
    while left > 0 {
        let raw = left.min(BLOCK);
        let len = raw.saturating_sub(1024).div_ceil(256).max(1);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.resize(out.len() + len, 0);
        left -= raw;
    }
    out
}

type Answer = Arc<dyn Fn(&str) -> (Response, Bytes, u64) + Send + Sync>;

/// A hostile fast-path server: answers every GET with `answer(key)`
/// (response, payload bytes sent, payload length claimed), anything else
/// with an empty Ok.
async fn fake_server(answer: Answer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let (r, mut w) = socket.into_split();
                let mut reader = FrameReader::new(r);
                let limits = Limits {
                    max_header: 1 << 20,
                    max_payload: 1 << 40,
                };
                while let Ok(Some(head)) = reader.read_head(&limits).await {
                    if head.prefix.payload_len > 0
                        && reader.read_payload(head.prefix.payload_len).await.is_err()
                    {
                        break;
                    }
                    let id = head.prefix.request_id;
                    let (response, payload, claimed) = match decode_request(&head.header, id) {
                        Ok(Request::Get { key }) => answer(&key),
                        _ => (Response::ok(Body::Empty), Bytes::new(), 0),
                    };
                    let frame = encode_frame(
                        head.prefix.opcode,
                        FLAG_RESPONSE | FLAG_END,
                        id,
                        &response,
                        claimed,
                    )
                    .unwrap();
                    if w.write_all(&frame).await.is_err() || w.write_all(&payload).await.is_err() {
                        break;
                    }
                }
                // Hold the socket a while: a client reading a claimed
                // payload that never comes should fail on its own.
                tokio::time::sleep(Duration::from_secs(20)).await;
            });
        }
    });
    addr
}

fn tensor_reply(dtype: DType, encoding: u8, shape: Vec<u64>) -> Response {
    Response::ok(Body::Tensor(WireMeta {
        dtype: dtype.code(),
        layout: StorageLayout::RowMajor.code(),
        encoding,
        shape,
    }))
}

const CHILD: &str = "REVIEW14_CHILD";

fn child_scenario(name: &str) -> bool {
    std::env::var(CHILD).is_ok_and(|v| v == name)
}

/// Runs test `test` of this binary in a child under `ulimit -v` (7 GiB of
/// address space) with `CHILD=scenario`; returns whether it exited
/// cleanly and its output.
fn run_child(test: &str, scenario: &str) -> (bool, String) {
    let exe = std::env::current_exe().unwrap();
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 7340032 && exec \"$0\" \"$@\"")
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, scenario)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(Duration::from_secs(300)) else {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
        panic!("the child ({scenario}) hung");
    };
    let out = out.unwrap();
    let log = format!(
        "status: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), log)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------
// server side
// ---------------------------------------------------------------------

/// handler.rs `get`: the first estimate is the *stored* (packed) length,
/// so for a version-1 request the decoded frame never fits it, and the
/// loop goes round again: a second `find` (a second engine hit) and a
/// second full decode of the tensor, on every version-1 GET of a packed
/// tensor.
#[tokio::test]
async fn a_version_1_get_of_a_packed_tensor_is_looked_up_once() {
    let server = start_server(64 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let raw = sparse_f32(200_000);
    client
        .put_with("p", raw.clone(), Compression::Lz4)
        .await
        .unwrap();
    assert_eq!(
        server.engine().get("p").unwrap().unwrap().encoding(),
        Encoding::Packed
    );
    // A version-2 GET: one hit.
    let before = server.engine().stats().hits;
    assert_eq!(client.get("p").await.unwrap().as_ref(), Some(&raw));
    let v2_hits = server.engine().stats().hits - before;
    // A version-1 GET.
    let mut conn = RawConn::connect(server.fast_addr()).await;
    let before = server.engine().stats().hits;
    send_v1(&mut conn, 7, &Request::Get { key: "p".into() }).await;
    let (prefix, response, payload) = conn.recv().await.unwrap();
    assert_eq!((prefix.version, response.status()), (1, Status::Ok));
    assert_eq!(&payload[..], &raw.data()[..]);
    let v1_hits = server.engine().stats().hits - before;
    assert_eq!(v2_hits, 1);
    assert_eq!(
        v1_hits, 1,
        "one version-1 GET counted {v1_hits} engine hits (and decoded the tensor as many times)"
    );
    server.shutdown().await.unwrap();
}

/// A version-1 (or gRPC) reader of a packed tensor makes the server hold
/// a decoded copy (the raw size, up to ~255x what the budget charged)
/// outside every budget. Eight readers that do not read their replies
/// pin 8 x 48 MiB for a server whose whole budget is 64 MiB and whose
/// stored bytes are < 2 MiB. Before the change a GET was zero copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_version_1_readers_of_packed_tensors_hold_at_most_the_ingress_budget() {
    let budget: u64 = 64 << 20;
    // --max-ingress = the budget (the server's default), and queues that
    // would hold every reply: only the ingress budget bounds the unpacked
    // copies (without it, 8 x 48 MiB).
    let fast = FastConfig {
        max_queued_total: 1 << 30,
        ..FastConfig::for_budget(budget)
    };
    let server = start_server_with(budget, fast).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let raw_len: u64 = 48 << 20;
    {
        let zeros = Tensor::new(u8_meta(raw_len), vec![0u8; raw_len as usize]).unwrap();
        let packed = codec::compress(&zeros).unwrap();
        for i in 0..8 {
            client
                .put_tensor(&format!("z{i}"), packed.clone())
                .await
                .unwrap();
        }
    }
    let used = server.engine().stats().memory_used;
    assert!(used < 4 << 20, "stored {used}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes();
    let mut conns = Vec::new();
    for i in 0..8u64 {
        let mut conn = RawConn::connect(server.fast_addr()).await;
        send_v1(
            &mut conn,
            i,
            &Request::Get {
                key: format!("z{i}"),
            },
        )
        .await;
        conns.push(conn);
    }
    // Nobody reads: the decoded frames wait in the server's queues.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut grown = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        grown = rss_bytes().saturating_sub(before);
        if grown > 3 * budget {
            break;
        }
    }
    drop(conns);
    // One unpacked copy at a time (48 MiB), plus what the tests running
    // beside this one in the process allocate meanwhile.
    assert!(
        grown < 2 * budget,
        "8 stalled version-1 readers grew the server by {} MiB; its budget is {} MiB and it \
         stores {} KiB",
        grown >> 20,
        budget >> 20,
        used >> 10
    );
    server.shutdown().await.unwrap();
}

/// Allocation failure while unpacking aborts the server. `codec::decode`
/// allocates with `BytesMut::zeroed` (infallible) in `spawn_blocking`.
/// Default config (`--max-tensor` = budget = 4 GiB), in a process limited
/// to 7 GiB of address space: a 64 MiB packed put that claims 4 GiB, then
/// three version-1 readers that do not read. Each decoded copy is 4 GiB;
/// the second does not fit, and the whole server aborts instead of
/// answering an error. (The real-RAM version of this is the previous
/// test with LZ4 zeros, which touch their pages.)
#[test]
fn the_server_survives_an_unpack_it_cannot_allocate() {
    if child_scenario("server") {
        return child_server_alloc();
    }
    let (ok, log) = run_child("the_server_survives_an_unpack_it_cannot_allocate", "server");
    assert!(ok, "the server process died:\n{log}");
}

fn child_server_alloc() {
    runtime().block_on(async {
        let budget: u64 = 4 << 30;
        let server = start_server_with(budget, FastConfig::for_budget(budget)).await;
        let meta = TensorMeta::new(DType::F64, vec![budget / 8], StorageLayout::RowMajor).unwrap();
        let data = empty_masks(meta.byte_size(), 8);
        eprintln!(
            "packed put of {} bytes claiming {}",
            data.len(),
            meta.byte_size()
        );
        let t = Tensor::from_encoded(meta, Encoding::Packed, data).unwrap();
        let client = FastClient::connect(server.fast_addr()).await.unwrap();
        client.put_tensor("z", t).await.unwrap();
        eprintln!("charged {} bytes", server.engine().stats().memory_used);
        let mut conns = Vec::new();
        for i in 0..3u64 {
            let mut conn = RawConn::connect(server.fast_addr()).await;
            send_v1(&mut conn, i, &Request::Get { key: "z".into() }).await;
            conns.push(conn);
            tokio::time::sleep(Duration::from_secs(2)).await;
            eprintln!("reader {i} sent; server alive");
        }
        client.ping().await.unwrap();
        eprintln!("the server survived");
        drop(conns);
    });
}

/// A packed tensor that fails to decode is answered to a version-1 client
/// with status 16 (`InvalidEncoding`), a code version 1 does not have.
/// Version-1 clients must never see anything of version 2; the docs list
/// 16 only for PUTs.
#[tokio::test]
async fn a_version_1_client_never_sees_a_version_2_status() {
    let server = start_server(64 << 20).await;
    let good = codec::compress(&Kind::Bf16.tensor(64 << 10, 5)).unwrap();
    let mut data = good.data().to_vec();
    for b in &mut data[4..40] {
        *b = 0xff;
    }
    let bad = Tensor::from_encoded(good.meta().clone(), Encoding::Packed, data).unwrap();
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    client.put_tensor("bad", bad).await.unwrap();
    let mut conn = RawConn::connect(server.fast_addr()).await;
    send_v1(&mut conn, 3, &Request::Get { key: "bad".into() }).await;
    let (prefix, response, _) = conn.recv().await.unwrap();
    assert_eq!(prefix.version, 1);
    assert!(
        response.status <= Status::Deleted as u16,
        "a version-1 GET was answered status {} ({})",
        response.status,
        response.message
    );
    server.shutdown().await.unwrap();
}

/// The server reads `WireMeta.encoding` from version-1 requests too. In
/// version 1 that byte is padding (PROTOCOL.md v1 never said what it
/// holds, and rkyv's validation does not check padding); a version-1
/// client whose padding is not zero had its PUT accepted before this
/// change and gets `InvalidEncoding` (a status it does not know) now.
/// Reading the byte only for version >= 2 keeps v1 unchanged.
#[tokio::test]
async fn a_version_1_puts_padding_is_not_an_encoding() {
    let server = start_server(64 << 20).await;
    let mut conn = RawConn::connect(server.fast_addr()).await;
    let data = pattern(64, 1);
    let request = Request::Put {
        key: "v1".into(),
        meta: WireMeta {
            encoding: 0xab,
            ..WireMeta::from(&u8_meta(64))
        },
    };
    let header = encode(&request).unwrap();
    let mut frame = encode_head(request.opcode(), 0, 1, &header, 64);
    frame[4] = 1;
    frame.extend_from_slice(&data);
    conn.send_bytes(&frame).await.unwrap();
    let (prefix, response, _) = conn.recv().await.unwrap();
    assert_eq!(prefix.version, 1);
    assert_eq!(
        response.status(),
        Status::Ok,
        "a version-1 PUT with a nonzero padding byte: {} {}",
        response.status,
        response.message
    );
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------
// client side
// ---------------------------------------------------------------------

/// A hostile server: a packed reply claiming 16 GiB raw, in 64 MiB of
/// framing that `codec::check` accepts, to a client whose max_payload is
/// the Python binding's default (64 GiB). `tensor_from` -> `decoded` ->
/// `BytesMut::zeroed(16 GiB)` aborts the process. The same claim made
/// raw is a clean error (the frame reader allocates with
/// `try_reserve_exact`), as the Python docs promise ("a reply ... the
/// process cannot allocate is redstone.ConnectionError").
#[test]
fn a_client_survives_a_packed_reply_it_cannot_allocate() {
    if child_scenario("client") {
        return child_client_alloc();
    }
    let (ok, log) = run_child(
        "a_client_survives_a_packed_reply_it_cannot_allocate",
        "client",
    );
    assert!(ok, "the client process died:\n{log}");
}

fn child_client_alloc() {
    runtime().block_on(async {
        let claim: u64 = 16 << 30;
        let framing = Bytes::from(lz4_framing(claim));
        eprintln!("{} bytes of framing claim {claim}", framing.len());
        let addr = fake_server(Arc::new(move |key: &str| {
            if key == "raw" {
                (tensor_reply(DType::U8, 0, vec![claim]), Bytes::new(), claim)
            } else {
                let len = framing.len() as u64;
                (
                    tensor_reply(DType::U8, 1, vec![claim]),
                    framing.clone(),
                    len,
                )
            }
        }))
        .await;
        let options = || FastClientOptions {
            max_payload: 64 << 30,
            request_timeout: Some(Duration::from_secs(60)),
            ..FastClientOptions::default()
        };
        let c = FastClient::connect_with(addr, options()).await.unwrap();
        let raw = c.get("raw").await;
        eprintln!("raw claim: {:?}", raw.as_ref().map(|t| t.is_some()));
        assert!(raw.is_err());
        let c = FastClient::connect_with(addr, options()).await.unwrap();
        let packed = c.get("packed").await;
        eprintln!("packed claim: {:?}", packed.as_ref().map(|t| t.is_some()));
        assert!(packed.is_err());
        eprintln!("the client survived");
    });
}

/// Hostile replies that are refused cleanly (no panic, no allocation of
/// the claim): unknown encoding, framing that does not hold, a packed
/// claim over max_payload, stray mask bits, and a get_into packed
/// payload longer than any packing of the buffer.
#[tokio::test]
async fn hostile_packed_replies_are_clean_errors() {
    let stray = {
        // One block of 9 u8 elements: a 2-byte mask with bit 9 set.
        let mut v = ((1u32 << 30) | 2).to_le_bytes().to_vec();
        v.extend_from_slice(&[0, 2]);
        v
    };
    let stray = Bytes::from(stray);
    let addr = fake_server(Arc::new(move |key: &str| match key {
        "unknown" => (
            tensor_reply(DType::U8, 2, vec![8]),
            Bytes::from(vec![0; 8]),
            8,
        ),
        "framing" => (
            tensor_reply(DType::U8, 1, vec![1000]),
            Bytes::from(vec![0xff; 8]),
            8,
        ),
        "huge" => (
            tensor_reply(DType::U8, 1, vec![8 << 30]),
            Bytes::from(vec![0; 64]),
            64,
        ),
        "stray" => (
            tensor_reply(DType::U8, 1, vec![9]),
            stray.clone(),
            stray.len() as u64,
        ),
        _ => (
            tensor_reply(DType::U8, 1, vec![16]),
            Bytes::from(vec![0; 64]),
            64,
        ),
    }))
    .await;
    let client = FastClient::connect(addr).await.unwrap();
    for key in ["unknown", "framing", "huge", "stray"] {
        let result = client.get(key).await;
        assert!(result.is_err(), "{key}: {result:?}");
        eprintln!("{key}: {:?}", result.unwrap_err());
    }
    let mut buf = vec![0u8; 16];
    let result = client.get_into("long", &mut buf).await;
    assert!(
        matches!(result, Err(ClientError::Protocol(_))),
        "{result:?}"
    );
}

/// A client with an L1 serves a value it no longer has: it got `k` (kept),
/// another client deleted it, then this client wrote a new value with
/// `put_if` (or `put_tensor` of an already-packed tensor). Neither write
/// touches the L1, so this client's next `get` returns the old value,
/// contradicting its own successful write.
#[tokio::test]
async fn the_l1_serves_this_clients_own_latest_write() {
    let server = start_server(64 << 20).await;
    let a = with_l1(&server, L1Options::new(16 << 20)).await;
    let b = FastClient::connect(server.fast_addr()).await.unwrap();

    let (old, new) = (tensor(4096, 1), tensor(4096, 2));
    b.put_tensor("k1", old.clone()).await.unwrap();
    assert_eq!(a.get("k1").await.unwrap().as_ref(), Some(&old));
    assert!(b.delete("k1").await.unwrap());
    a.put_if("k1", new.clone(), unix_micros()).await.unwrap();
    let put_if = a.get("k1").await.unwrap();

    let old2 = tensor(BLOCK, 3);
    let new2 = Kind::Relu.tensor(BLOCK, 4);
    b.put_tensor("k2", old2.clone()).await.unwrap();
    assert_eq!(a.get("k2").await.unwrap().as_ref(), Some(&old2));
    assert!(b.delete("k2").await.unwrap());
    a.put_tensor("k2", codec::compress(&new2).unwrap())
        .await
        .unwrap();
    let packed_put = a.get("k2").await.unwrap();

    assert!(
        put_if.as_ref() == Some(&new) && packed_put.as_ref() == Some(&new2),
        "after its own successful writes the client read back: put_if -> {}, packed put -> {}",
        if put_if.as_ref() == Some(&old) {
            "the OLD value"
        } else {
            "the new value"
        },
        if packed_put.as_ref() == Some(&old2) {
            "the OLD value"
        } else {
            "the new value"
        },
    );
    server.shutdown().await.unwrap();
}

/// `put_with` keeps the caller's tensor in the L1 as "the raw value"
/// without checking its encoding (`put_tensor` does check). Given an
/// already-packed tensor, the L1 then hands the *packed* tensor out of
/// `get` (docs: clients hand out raw tensors; `as_slice` fails on it), and
/// `get_into` of the right raw size fails with InvalidSize although the
/// server holds exactly that tensor.
#[tokio::test]
async fn the_l1_never_serves_a_packed_tensor() {
    let server = start_server(64 << 20).await;
    let client = with_l1(&server, L1Options::new(16 << 20)).await;
    let raw = sparse_f32(100_000);
    let packed = codec::compress(&raw).unwrap();
    client
        .put_with("k", packed, Compression::None)
        .await
        .unwrap();
    let got = client.get("k").await.unwrap().unwrap();
    let mut dst = vec![0u8; raw.data().len()];
    let into = client.get_into("k", &mut dst).await;
    // Another client (no L1) reads it right.
    let plain = FastClient::connect(server.fast_addr()).await.unwrap();
    assert_eq!(plain.get("k").await.unwrap().as_ref(), Some(&raw));
    assert!(
        got.encoding() == Encoding::Raw && into.is_ok(),
        "get -> {:?} tensor of {} bytes; get_into -> {:?}",
        got.encoding(),
        got.data().len(),
        into.map(|m| m.is_some())
    );
    server.shutdown().await.unwrap();
}

/// A cluster put that loses a put-once conflict takes its value back
/// (`take_back`, a `delete_if` on the replicas it landed on) without
/// touching the L1's delete epoch. A get by the same client that ran while
/// the value was briefly on replica A keeps it in the L1, and the L1 then
/// serves, with no TTL, a value that the put reported as failed and that
/// no node holds (the cluster's value is the other writer's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_l1_forgets_a_value_its_failed_put_took_back() {
    let a = start_server(64 << 20).await;
    let b = start_server(64 << 20).await;
    let slow_b = common::slow_proxy(b.fast_addr(), Duration::from_millis(300)).await;
    let a_addr = a.fast_addr().to_string();
    let mut config = ClusterConfig::new(vec![a_addr.clone(), slow_b.to_string()]);
    config.l1 = Some(L1Options::new(16 << 20));
    let cluster = ClusterClient::new(config).unwrap();
    // A key whose first replica (read first) is A.
    let key = (0..)
        .map(|i| format!("conflict-{i}"))
        .find(|k| cluster.replicas_of(k).first() == Some(&a_addr))
        .unwrap();
    let (mine, theirs) = (tensor(4096, 1), tensor(4096, 2));
    // Another writer got to B first.
    FastClient::connect(b.fast_addr())
        .await
        .unwrap()
        .put_tensor(&key, theirs.clone())
        .await
        .unwrap();
    let put = {
        let (cluster, key, mine) = (cluster.clone(), key.clone(), mine.clone());
        tokio::spawn(async move { cluster.put_tensor(&key, mine).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Meanwhile, this client reads the key: A has `mine` for now.
    let during = cluster.get(&key).await.unwrap();
    let put = put.await.unwrap();
    assert!(put.is_err(), "the put should lose the conflict: {put:?}");
    assert!(a.engine().get(&key).unwrap().is_none(), "taken back from A");
    let after = cluster.get(&key).await.unwrap();
    assert!(
        after.as_ref() != Some(&mine),
        "after its put failed ({:?}) and was taken back, the client still serves its own value \
         (read during the put: {}); the cluster holds the other writer's",
        put.unwrap_err(),
        if during.as_ref() == Some(&mine) {
            "mine"
        } else {
            "other"
        }
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The L1 keeps a put's tensor as given: a tensor that is a slice of a
/// larger buffer pins that whole buffer, while the L1 charges only the
/// slice. README: "payload + key + 128 bytes per entry never pass
/// capacity". The engine compacts for exactly this reason
/// (`Tensor::compacted`); the L1 does not.
#[tokio::test]
async fn the_l1_keeps_no_more_than_it_charges() {
    let server = start_server(64 << 20).await;
    let client = with_l1(&server, L1Options::new(8 << 20)).await;
    let big = Bytes::from(pattern(32 << 20, 9));
    let range = big.as_ptr() as usize..big.as_ptr() as usize + big.len();
    let slice = Tensor::new(u8_meta(1 << 20), big.slice(0..1 << 20)).unwrap();
    client.put_tensor("s", slice).await.unwrap();
    drop(big);
    let stats = client.l1().unwrap().stats();
    let held = client.get("s").await.unwrap().unwrap();
    assert!(
        !range.contains(&(held.data().as_ptr() as usize)),
        "the L1 charges {} bytes (capacity {}) but holds a view into the caller's 32 MiB buffer, \
         which stays allocated",
        stats.bytes,
        stats.capacity
    );
    server.shutdown().await.unwrap();
}

/// README / client.py / L1Options docs: "a tensor over a quarter of
/// capacity is never kept". quick_cache halves the shard count while a
/// shard would hold under 32 estimated items, and the L1 estimates one
/// item per 64 KiB: below 8 MiB of capacity there are 2 shards or 1, and
/// tensors up to ~half or ~all of capacity are kept.
#[tokio::test]
async fn a_small_l1_keeps_no_tensor_over_a_quarter_of_it() {
    let server = start_server(64 << 20).await;
    let client = with_l1(&server, L1Options::new(4 << 20)).await;
    client.put_tensor("q", tensor(1_500_000, 1)).await.unwrap();
    let stats = client.l1().unwrap().stats();
    assert_eq!(
        stats.entries, 0,
        "a 1.5 MB tensor was kept by a 4 MiB L1 ({} bytes held)",
        stats.bytes
    );
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------
// docs
// ---------------------------------------------------------------------

/// docs/PROTOCOL.md's status table still says `UnsupportedVersion` is for
/// "the prefix's version is not 1", but version 1 and 2 are both taken.
#[test]
fn the_protocol_doc_status_table_names_both_versions() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md")).unwrap();
    let row = doc
        .lines()
        .find(|l| l.contains("`UnsupportedVersion`") && l.starts_with("| 9"))
        .unwrap();
    assert!(!row.contains("version is not 1 |"), "{row}");
}

// ---------------------------------------------------------------------
// things that held
// ---------------------------------------------------------------------

/// Version-1 GET_MANY over packed, raw and missing keys: every frame in
/// version 1, every tensor raw with encoding 0.
#[tokio::test]
async fn version_1_get_many_sees_only_raw_tensors() {
    let server = start_server(64 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let packed = sparse_f32(300_000);
    let plain = tensor(10_000, 4);
    client
        .put_with("p", packed.clone(), Compression::Lz4)
        .await
        .unwrap();
    client.put_tensor("r", plain.clone()).await.unwrap();
    let mut conn = RawConn::connect(server.fast_addr()).await;
    let keys = vec!["p".to_string(), "missing".into(), "r".into()];
    send_v1(&mut conn, 11, &Request::GetMany { keys }).await;
    let mut seen = Vec::new();
    loop {
        let (prefix, response, payload) = conn.recv().await.unwrap();
        assert_eq!(prefix.version, 1);
        let end = prefix.flags & FLAG_END != 0;
        if let Body::Tensor(meta) = &response.body {
            assert_eq!(meta.encoding, 0);
        }
        seen.push((response.index, response.status(), payload));
        if end {
            break;
        }
    }
    assert_eq!(seen.len(), 3);
    assert_eq!((seen[0].0, seen[0].1), (0, Status::Ok));
    assert_eq!(&seen[0].2[..], &packed.data()[..]);
    assert_eq!((seen[1].0, seen[1].1), (1, Status::NotFound));
    assert_eq!((seen[2].0, seen[2].1), (2, Status::Ok));
    assert_eq!(&seen[2].2[..], &plain.data()[..]);
    server.shutdown().await.unwrap();
}

/// Mutated packed payloads (bytes flipped, words rewritten, truncated)
/// never panic: an error, or exactly the raw size; a digest is computed
/// for any payload whose framing holds.
#[test]
fn mutated_packed_payloads_never_panic() {
    // Block 0 zero-masked, block 1 LZ4, block 2 raw noise, a short tail.
    let mut bytes = sparse_f32(BLOCK / 4).data().to_vec();
    bytes.extend_from_slice(Kind::Bf16.tensor(BLOCK, 2).data());
    bytes.extend_from_slice(&pattern(BLOCK, 3));
    bytes.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 0, 7, 7, 7, 7]);
    let meta = TensorMeta::new(
        DType::F32,
        vec![(bytes.len() / 4) as u64],
        StorageLayout::RowMajor,
    )
    .unwrap();
    let raw = Tensor::new(meta.clone(), bytes).unwrap();
    let packed = codec::compress(&raw).unwrap();
    assert_eq!(packed.decoded().unwrap(), raw);
    let good = packed.data().to_vec();
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..200 {
        let mut data = good.clone();
        match round % 4 {
            0 => {
                for _ in 0..(1 + next() % 4) {
                    let at = (next() as usize) % data.len();
                    data[at] ^= (next() as u8) | 1;
                }
            }
            1 => {
                let at = (next() as usize) % (data.len() - 4);
                data[at..at + 4].copy_from_slice(&(next() as u32).to_le_bytes());
            }
            2 => data.truncate((next() as usize) % data.len()),
            _ => {
                // Flip the mode bits of the first word only.
                data[3] ^= 0x40 << (next() % 2);
            }
        }
        match codec::decode(&meta, &data) {
            Ok(out) => assert_eq!(out.len() as u64, meta.byte_size()),
            Err(Error::InvalidEncoding(_)) => {}
            Err(e) => panic!("round {round}: {e}"),
        }
        if let Ok(t) = Tensor::from_encoded(meta.clone(), Encoding::Packed, data) {
            let _ = t.digest();
        }
    }
}

/// This client's own deletes, raced by many concurrent gets of the same
/// key: once `delete` returns, no get of this client returns the old
/// value, even gets that were in flight across the delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_l1_value_after_own_delete_under_races() {
    let server = start_server(64 << 20).await;
    let client = with_l1(&server, L1Options::new(16 << 20)).await;
    for i in 0..150u64 {
        let value = tensor(4096, i);
        client.put_tensor("race", value.clone()).await.unwrap();
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move {
                    for _ in 0..4 {
                        let _ = c.get("race").await;
                        let _ = c.get_many(&["race"]).await;
                    }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(client.delete("race").await.unwrap());
        assert_eq!(client.get("race").await.unwrap(), None, "round {i}");
        for r in readers {
            r.await.unwrap();
        }
        assert_eq!(client.get("race").await.unwrap(), None, "round {i}, later");
        assert_eq!(client.get_many(&["race"]).await.unwrap(), vec![None]);
    }
    server.shutdown().await.unwrap();
}
