//! Hostile-review programs for the speed work (issue #15): the copy-free
//! gRPC `Get` against a plain tonic server over the same engine, the bulk
//! route of protocol version 3, the client's receive-buffer pool and the
//! allocator's settings.
//!
//! Tests whose comment starts "Found by review" failed before their fix;
//! the others guard properties nothing else covers.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{pattern, start_server, u8_meta};
use http_body_util::BodyExt;
use prost::Message;
use redstone::client::{ClientError, FastClient, FastClientOptions};
use redstone::fast::stream::FrameReader;
use redstone::fast::wire::{
    encode_frame_as, Limits, Opcode, Response, Status, FLAG_END, FLAG_RESPONSE,
};
use redstone::grpc::proto::GetRequest;
use redstone::grpc::GrpcService;
use redstone::server::ServerHandle;
use tokio::io::AsyncWriteExt;

// ---------------------------------------------------------------------
// gRPC: differential probes against a plain tonic server (no CopyFreeGet
// layer) over the same engine: what the route answered before the change.
// ---------------------------------------------------------------------

/// A plain tonic server of `GrpcService` over `server`'s engine, with the
/// same oversize mapping the real server has, but without `CopyFreeGet`.
async fn reference_grpc(server: &ServerHandle) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = GrpcService::new(server.engine().clone());
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tower::util::MapResponseLayer::new(
                redstone::grpc::oversize_request_status,
            ))
            .add_service(service.into_server())
            .serve_with_incoming(incoming),
    );
    addr
}

struct RawReply {
    http: u16,
    headers: http::HeaderMap,
    body: Bytes,
    trailers: Option<http::HeaderMap>,
}

impl RawReply {
    fn grpc_status(&self) -> Option<String> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

/// One raw HTTP/2 request to `addr`.
async fn h2_call(addr: SocketAddr, headers: &[(&str, &str)], body: Vec<u8>) -> RawReply {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/redstone.RedStone/Get"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(http_body_util::Full::new(Bytes::from(body)))
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    let http = response.status().as_u16();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    RawReply {
        http,
        headers,
        body: collected.to_bytes(),
        trailers,
    }
}

fn header_names(headers: &http::HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = headers
        .keys()
        .filter(|k| k.as_str() != "date")
        .map(|k| k.to_string())
        .collect();
    names.sort();
    names
}

fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn get_request(key: &str) -> Vec<u8> {
    GetRequest { key: key.into() }.encode_to_vec()
}

async fn both(
    server: &ServerHandle,
    reference: SocketAddr,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (RawReply, RawReply) {
    let ours = h2_call(server.grpc_addr(), headers, body.clone()).await;
    let theirs = h2_call(reference, headers, body).await;
    (ours, theirs)
}

/// Found by review; the bug as it was found, now fixed:
///
/// A Get message with the compressed flag set but no `grpc-encoding` must
/// fail with INTERNAL (gRPC compression spec: "MUST fail with INTERNAL
/// status"), which is what tonic answers. `read_request` (src/grpc/get.rs,
/// the `compressed != 0` branch) answers UNIMPLEMENTED, for flag 1 and for
/// any other non-zero flag (tonic: INTERNAL "invalid compression flag").
#[tokio::test]
async fn grpc_get_compressed_flag_without_encoding_is_internal_like_tonic() {
    let server = start_server(64 << 20).await;
    let reference = reference_grpc(&server).await;
    let mut diffs = Vec::new();
    for (flag, headers) in [
        (1u8, &[][..]),
        (2u8, &[][..]),
        (1u8, &[("grpc-encoding", "identity")][..]),
    ] {
        let (ours, theirs) =
            both(&server, reference, headers, framed(flag, &get_request("k"))).await;
        if ours.grpc_status() != theirs.grpc_status() {
            diffs.push(format!(
                "flag {flag} {headers:?}: ours {:?}, tonic {:?}",
                ours.grpc_status(),
                theirs.grpc_status()
            ));
        }
    }
    assert!(diffs.is_empty(), "{diffs:#?}");
}

/// Found by review; the bug as it was found, now fixed:
///
/// tonic reads a unary request's first message and then drains the rest of
/// the body (`Streaming::trailers` loops over `message()`), so a Get body
/// holding two messages is answered with the first key's tensor (OK).
/// `read_request` (src/grpc/get.rs, the `buf.len() != len` check) answers
/// INTERNAL instead: a request tonic served now fails.
#[tokio::test]
async fn grpc_get_with_two_messages_is_answered_like_tonic() {
    let server = start_server(64 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    client.put("k", u8_meta(16), pattern(16, 1)).await.unwrap();
    let reference = reference_grpc(&server).await;
    let mut body = framed(0, &get_request("k"));
    body.extend(framed(0, &get_request("k")));
    let (ours, theirs) = both(&server, reference, &[], body).await;
    assert_eq!(
        theirs.grpc_status().as_deref(),
        Some("0"),
        "tonic serves it"
    );
    assert_eq!(
        ours.grpc_status(),
        theirs.grpc_status(),
        "ours: {:?}",
        ours.headers.get("grpc-message")
    );
    assert_eq!(ours.body, theirs.body);
}

/// Found by review; the bug as it was found, now fixed:
///
/// A Get of a key longer than MESSAGE_SLACK (64 KiB) used to reach the
/// service (tonic's decoding limit is the budget + 64 KiB) and be refused
/// as an invalid key: INVALID_ARGUMENT, which `RemoteCacheClient` maps to
/// `InvalidArgument`. The copy-free route refuses the body itself with
/// OUT_OF_RANGE ("a Get request of over 65536 bytes"), a status the
/// original API never gave for a bad key (src/grpc/get.rs `read_request`,
/// the `Limited` error branch).
#[tokio::test]
async fn grpc_get_of_an_overlong_key_is_invalid_argument_like_tonic() {
    let server = start_server(64 << 20).await;
    let reference = reference_grpc(&server).await;
    let key = "k".repeat(70 * 1024);
    let (ours, theirs) = both(&server, reference, &[], framed(0, &get_request(&key))).await;
    assert_eq!(
        ours.grpc_status(),
        theirs.grpc_status(),
        "ours: {:?}; tonic: {:?}",
        ours.headers.get("grpc-message"),
        theirs.headers.get("grpc-message")
    );
}

/// malformed bodies other than the above get tonic's status, and
/// found tensors (empty, small, at and over the varint/1 MiB boundaries)
/// are byte-identical on the wire, headers included.
#[tokio::test]
async fn grpc_get_matches_tonic_on_other_bodies_and_found_tensors() {
    let server = start_server(64 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let sizes = [1usize, 127, 128, 16_384, (1 << 20) + 1, 3 << 20];
    for (i, &n) in sizes.iter().enumerate() {
        client
            .put(&format!("t{n}"), u8_meta(n as u64), pattern(n, i as u64))
            .await
            .unwrap();
    }
    let reference = reference_grpc(&server).await;
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty body".into(), vec![]),
        ("short prefix".into(), vec![0, 0, 0]),
        ("truncated message".into(), {
            let mut b = framed(0, &get_request("t1"));
            b.pop();
            b
        }),
        ("trailing partial prefix".into(), {
            let mut b = framed(0, &get_request("t1"));
            b.extend([0, 0]);
            b
        }),
        ("garbage message".into(), framed(0, &[0xff; 9])),
        ("empty message (empty key)".into(), framed(0, &[])),
        ("missing key".into(), framed(0, &get_request("nope"))),
        ("bad key".into(), framed(0, &get_request("a\0b"))),
    ];
    for n in sizes {
        cases.push((
            format!("found {n}"),
            framed(0, &get_request(&format!("t{n}"))),
        ));
    }
    let mut diffs = Vec::new();
    for (name, body) in cases {
        let (ours, theirs) = both(&server, reference, &[], body).await;
        if ours.grpc_status() != theirs.grpc_status()
            || ours.body != theirs.body
            || ours.http != theirs.http
            || ours.trailers.as_ref().map(header_names)
                != theirs.trailers.as_ref().map(header_names)
        {
            diffs.push(format!(
                "{name}: ours {:?} {:?} {:?} ({} body bytes), tonic {:?} {:?} {:?} ({} body bytes)",
                (
                    header_names(&ours.headers),
                    ours.trailers.as_ref().map(header_names)
                ),
                ours.grpc_status(),
                ours.headers.get("grpc-message"),
                ours.body.len(),
                (
                    header_names(&theirs.headers),
                    theirs.trailers.as_ref().map(header_names)
                ),
                theirs.grpc_status(),
                theirs.headers.get("grpc-message"),
                theirs.body.len()
            ));
        }
    }
    assert!(diffs.is_empty(), "{diffs:#?}");
}

// ---------------------------------------------------------------------
// Fast path: timeouts, permits, cancellation, the buffer pool.
// ---------------------------------------------------------------------

/// A fake fast-path server: the first connection (the client's shared
/// one) answers every GET `Bulk`; every later (exclusive) connection reads
/// requests and never answers.
async fn bulk_then_silent_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((stream, _)) = listener.accept().await {
            let answer = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut reader = FrameReader::new(r);
                let limits = Limits {
                    max_header: 1 << 20,
                    max_payload: 1 << 30,
                };
                while let Ok(Some(head)) = reader.read_head(&limits).await {
                    let _ = reader.skip_payload(head.prefix.payload_len).await;
                    if !answer {
                        continue;
                    }
                    let response = Response::error(Status::Bulk, "go exclusive");
                    let frame = encode_frame_as(
                        3,
                        Opcode::Get,
                        FLAG_RESPONSE | FLAG_END,
                        head.prefix.request_id,
                        &response,
                        0,
                    )
                    .unwrap();
                    if w.write_all(&frame).await.is_err() {
                        return;
                    }
                }
                // Keep the silent connection open.
                std::future::pending::<()>().await;
                drop(w);
            });
        }
    });
    addr
}

/// Found by review; the bug as it was found, now fixed:
///
/// `request_timeout` ("how long one call may wait for its reply") no
/// longer bounds `get_into`: the refactor moved the `tokio::time::timeout`
/// out of `get_into_on` (src/fast/client/mod.rs) so that `fetch_bulk`
/// could use `with_timeout`, but `get_into_with` never got it back. A
/// server that stops answering hangs `get_into` forever (and it holds an
/// exclusive permit meanwhile: see the next test).
#[tokio::test]
async fn get_into_honors_request_timeout() {
    let addr = bulk_then_silent_server().await;
    let options = FastClientOptions {
        request_timeout: Some(Duration::from_millis(300)),
        ..FastClientOptions::default()
    };
    let client = FastClient::connect_with(addr, options).await.unwrap();
    let mut dst = vec![0u8; 16];
    let outcome =
        tokio::time::timeout(Duration::from_secs(3), client.get_into("k", &mut dst)).await;
    match outcome {
        Ok(Err(ClientError::Timeout(_))) => {}
        Ok(other) => panic!("expected a timeout, got {other:?}"),
        Err(_) => panic!("get_into still waiting after 3 s with request_timeout 300 ms"),
    }
}

/// Found by review; the bug as it was found, now fixed:
///
/// A plain `get` of a large tensor now waits for an exclusive permit
/// (`FastClient::exclusive`, src/fast/client/mod.rs) outside
/// `with_timeout`: with `max_exclusive` calls already on exclusive
/// connections, `get` waits for them with no bound, so `request_timeout`
/// no longer bounds a `get` (before the change a `get` never touched the
/// permit). Here: max_exclusive 1, four gets of Bulk tensors from a server
/// whose exclusive connections never answer, request_timeout 300 ms; the
/// last get returns only after ~4 × 300 ms (and with a get_into holding
/// the permit, see the previous test, it would never return).
#[tokio::test]
async fn get_of_a_bulk_tensor_is_bounded_by_request_timeout() {
    let addr = bulk_then_silent_server().await;
    let limit = Duration::from_millis(300);
    let options = FastClientOptions {
        request_timeout: Some(limit),
        max_exclusive: 1,
        ..FastClientOptions::default()
    };
    let client = FastClient::connect_with(addr, options).await.unwrap();
    let started = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let r = client.get(&format!("k{i}")).await;
                (r.map(|t| t.is_some()), started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for call in calls {
        let (result, took) = call.await.unwrap();
        assert!(matches!(result, Err(ClientError::Timeout(_))), "{result:?}");
        slowest = slowest.max(took);
    }
    assert!(
        slowest < 2 * limit + Duration::from_millis(200),
        "a get with request_timeout {limit:?} took {slowest:?}"
    );
}

/// a `get` of a large tensor dropped mid-payload (the exclusive
/// connection dropped with the future) leaks neither the permit nor a
/// desynchronised connection: the next gets, with max_exclusive 1, return
/// the right bytes.
#[tokio::test]
async fn a_get_dropped_mid_bulk_leaks_nothing() {
    let server = start_server(256 << 20).await;
    let direct = FastClient::connect(server.fast_addr()).await.unwrap();
    let n = 8 << 20;
    direct
        .put("big", u8_meta(n as u64), pattern(n, 7))
        .await
        .unwrap();
    direct
        .put("big2", u8_meta(n as u64), pattern(n, 8))
        .await
        .unwrap();
    let proxy = common::slow_proxy(server.fast_addr(), Duration::from_millis(2)).await;
    let options = FastClientOptions {
        max_exclusive: 1,
        ..FastClientOptions::default()
    };
    let client = FastClient::connect_with(proxy, options).await.unwrap();
    for _ in 0..3 {
        let dropped = tokio::time::timeout(Duration::from_millis(60), client.get("big")).await;
        assert!(dropped.is_err(), "should still be reading");
    }
    let got = tokio::time::timeout(Duration::from_secs(20), client.get("big2"))
        .await
        .expect("no permit leaked")
        .unwrap()
        .unwrap();
    assert!(got.data()[..] == pattern(n, 8)[..]);
}

/// a pooled buffer is never handed out while a tensor (or a
/// clone, or a slice) still references it: tensors of the same size read
/// one after another keep their own bytes, and a dropped one's buffer is
/// reused only once its last reference is gone.
#[tokio::test]
async fn pooled_buffers_are_not_shared_between_live_tensors() {
    let server = start_server(256 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let n = 2 << 20;
    for i in 0..4u64 {
        client
            .put(&format!("p{i}"), u8_meta(n as u64), pattern(n, 100 + i))
            .await
            .unwrap();
    }
    let a = client.get("p0").await.unwrap().unwrap();
    let a_slice = a.data().slice(10..20);
    let a_ptr = a.data().as_ptr();
    drop(a);
    // a's buffer is still referenced by the slice.
    let b = client.get("p1").await.unwrap().unwrap();
    assert_ne!(b.data().as_ptr(), a_ptr);
    assert_eq!(&a_slice[..], &pattern(n, 100)[10..20]);
    drop(a_slice);
    let c = client.get("p2").await.unwrap().unwrap();
    assert_eq!(c.data().as_ptr(), a_ptr, "reused once free");
    let d = client.get("p3").await.unwrap().unwrap();
    assert!(b.data()[..] == pattern(n, 101)[..]);
    assert!(c.data()[..] == pattern(n, 102)[..]);
    assert!(d.data()[..] == pattern(n, 103)[..]);
}

/// Found by review; the bug as it was found, now fixed:
///
/// One `FastClient::get` of a tensor over BULK_THRESHOLD is two engine
/// lookups: the flagged GET on the shared connection runs `find` (RAM
/// lookup, or the whole disk read) before `get_frame` decides to answer
/// `Bulk` (src/fast/server/handler.rs `get`), then the exclusive GET looks
/// it up again. Each lookup counts a hit (`Engine::get_ram`), so the
/// documented hit rate (`redstone_cache_hits_total`, `redstone stats`)
/// counts every large get twice (for a tensor on the disk tier: a miss and
/// a disk read, then a hit). Fix: answer `Bulk` from `peek_len` before
/// `find` (no lookup, no disk read), falling back to `find` only when the
/// peeked length is at or under the threshold.
#[tokio::test]
async fn a_large_get_counts_one_hit() {
    let server = start_server(64 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let n = 2 << 20;
    client
        .put("big", u8_meta(n as u64), pattern(n, 5))
        .await
        .unwrap();
    client
        .put("small", u8_meta(64), pattern(64, 6))
        .await
        .unwrap();
    let before = server.engine().stats().hits;
    client.get("small").await.unwrap().unwrap();
    assert_eq!(server.engine().stats().hits - before, 1, "small get");
    let before = server.engine().stats().hits;
    client.get("big").await.unwrap().unwrap();
    assert_eq!(server.engine().stats().hits - before, 1, "one get, one hit");
}

/// Found by review (low severity); the bug as it was found, now fixed:
///
/// The copy-free reply carries a `content-length` header tonic never sends:
/// `Chunks::size_hint` (src/grpc/get.rs) is exact, so hyper adds
/// `content-length` to the response headers. The body bytes are identical,
/// but the headers are not what the gRPC HTTP/2 spec lists for a response
/// (and not what tonic sent before). Fix: return an inexact hint
/// (`SizeHint::new()` with a lower bound at most) from `size_hint`.
#[tokio::test]
async fn grpc_get_response_headers_match_tonic() {
    let server = start_server(64 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    client
        .put("k", u8_meta(100), pattern(100, 1))
        .await
        .unwrap();
    let reference = reference_grpc(&server).await;
    // Error replies (trailers-only) have tonic's headers.
    let (ours, theirs) = both(&server, reference, &[], framed(0, &get_request("nope"))).await;
    assert_eq!(header_names(&ours.headers), header_names(&theirs.headers));
    // A found tensor's do not.
    let (ours, theirs) = both(&server, reference, &[], framed(0, &get_request("k"))).await;
    assert_eq!(ours.body, theirs.body);
    assert_eq!(header_names(&ours.headers), header_names(&theirs.headers));
}

/// the build-time malloc conf from `.cargo/config.toml` really is
/// compiled in (it is appended to tikv-jemalloc-sys's own
/// `background_thread:true`, not replacing it), as src/alloc.rs assumes.
/// Note it is a workspace `[env]` setting: a crate depending on redstone
/// from outside this workspace (or `cargo install` from a registry) gets
/// jemalloc's defaults instead.
#[cfg(feature = "jemalloc")]
#[test]
fn jemalloc_runs_with_the_configured_options() {
    fn read<T: Default + Copy>(name: &str) -> T {
        let name = std::ffi::CString::new(name).unwrap();
        let mut value = T::default();
        let mut len = std::mem::size_of::<T>();
        // SAFETY: `value` is a T of `len` bytes, the type of these options.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                &mut value as *mut T as *mut std::ffi::c_void,
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(rc, 0, "{name:?}");
        value
    }
    assert_eq!(read::<isize>("opt.dirty_decay_ms"), 200);
    assert_eq!(read::<isize>("opt.muzzy_decay_ms"), 0);
    assert_eq!(read::<usize>("opt.oversize_threshold"), 0);
    assert!(read::<bool>("opt.background_thread"));
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// `advise_huge_pages`
/// (src/fast/stream.rs) splits the allocator's mappings at every 2 MiB
/// boundary of every fresh payload buffer of 4 MiB or more (server PUTs
/// included), and the flag outlives the buffer. This reports how the
/// process's mapping count grows over a churn of large PUTs of varied
/// sizes; it fails only if it grows without bound (one or more mappings
/// per PUT), which would run into vm.max_map_count on a long-lived server.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_put_churn_does_not_grow_mappings_per_put() {
    let server = start_server(64 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let before = mappings();
    let puts = 300usize;
    for i in 0..puts {
        let n = (4 << 20) + (i % 37) * 12_288 + (i % 5) * (1 << 20);
        let key = format!("c{i}");
        client
            .put(&key, u8_meta(n as u64), vec![i as u8; n])
            .await
            .unwrap();
        if i % 3 == 0 {
            client.delete(&key).await.unwrap();
        }
    }
    let after = mappings();
    eprintln!("mappings: {before} -> {after} over {puts} large puts");
    assert!(
        after < before + puts / 2,
        "mappings grew {before} -> {after} over {puts} puts"
    );
}

/// Found by review; the bug as it was found, now fixed:
///
/// With a disk tier, one `FastClient::get` of a large tensor on disk is two
/// full disk reads, and it always promotes the tensor back to RAM. The
/// flagged GET on the shared connection runs `find` (src/fast/server/
/// handler.rs `get`), which reads and checksums the whole record on the
/// blocking pool, before `get_frame` throws it away and answers `Bulk`;
/// the exclusive GET then reads it again. The disk tier promotes a tensor
/// on its second read within PROMOTE_WINDOW (`DiskRead::read`), so that
/// second read of the *same* client get promotes it, evicting RAM tensors:
/// the tier's "read twice to come back" policy no longer holds for any
/// tensor over 1 MiB, and every such read costs twice the disk I/O. A
/// small tensor, read once, is neither. Fix: answer `Bulk` from
/// `peek_len` (which knows the disk tier's length) before `find`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_get_of_a_large_tensor_on_disk_is_one_disk_read() {
    let dir = std::env::temp_dir().join(format!("review-speed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = redstone::server::Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: "127.0.0.1:0".parse().unwrap(),
        memory_limit: 8 << 20,
        disk: Some(redstone::disk::DiskConfig::new(&dir, 256 << 20)),
        ..redstone::server::Config::default()
    };
    let server = redstone::server::Server::bind(config)
        .await
        .unwrap()
        .spawn();
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let big = 3 << 20;
    client
        .put("big", u8_meta(big as u64), pattern(big, 1))
        .await
        .unwrap();
    client
        .put("small", u8_meta(65_536), pattern(65_536, 2))
        .await
        .unwrap();
    // The write queue is 2 MiB (a quarter of the budget) and takes a larger
    // tensor only when empty: flush after each put, so that an eviction
    // never finds `big` still queued and drops `small`.
    for i in 0..4 {
        client
            .put(&format!("fill{i}"), u8_meta(3 << 20), vec![0u8; 3 << 20])
            .await
            .unwrap();
        assert!(server.engine().flush_disk(Duration::from_secs(10)));
    }
    let stats = || server.engine().disk_stats().unwrap();

    let before = stats();
    let small = client.get("small").await.unwrap().expect("on disk");
    assert!(small.data()[..] == pattern(65_536, 2)[..]);
    let after = stats();
    assert_eq!(after.hits - before.hits, 1, "small: one disk read");
    assert_eq!(
        after.promotions - before.promotions,
        0,
        "small: read once, not promoted"
    );

    let before = stats();
    let got = client.get("big").await.unwrap().expect("on disk");
    assert!(got.data()[..] == pattern(big, 1)[..]);
    let after = stats();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (
            after.hits - before.hits,
            after.promotions - before.promotions
        ),
        (1, 0),
        "big: (disk reads, promotions) for one get"
    );
}
