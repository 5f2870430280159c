//! Hostile clients over real sockets. Each misbehaves while a well-behaved
//! client does byte-exact puts and gets on another connection, and must
//! not disturb it.

mod common;

use std::time::{Duration, Instant};

use common::{
    pattern, prefix_bytes, start_server, start_server_with, u8_meta, GoodClient, RawConn,
};
use redstone::client::FastClient;
use redstone::fast::wire::{encode_frame, Request, Status, WireMeta};
use redstone::fast::FastConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Tests that measure this process's RSS, and the one that allocates
/// large buffers, take turns: tests in one binary run in parallel.
static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_garbage() {
    let server = start_server(64 << 20).await;
    let good = GoodClient::start(server.fast_addr(), "garbage").await;
    for round in 0..100u64 {
        let mut s = TcpStream::connect(server.fast_addr()).await.unwrap();
        let _ = s
            .write_all(&pattern(100 + (round as usize * 997) % 20_000, round))
            .await;
        // Read whatever the server answers until it closes.
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    }
    good.finish().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_length_claims_are_refused_from_the_prefix() {
    let _turn = MEMORY.lock().await;
    let server = start_server(64 << 20).await;
    let good = GoodClient::start(server.fast_addr(), "claims").await;
    let rss_before = common::rss_bytes();
    for (header_len, payload_len) in [(0u32, 1u64 << 63), (u32::MAX, 0), (64, u64::MAX)] {
        let mut raw = RawConn::connect(server.fast_addr()).await;
        raw.send_bytes(&prefix_bytes(1, 3, 42, header_len, payload_len))
            .await
            .unwrap();
        let started = Instant::now();
        let (prefix, response, _) = raw.recv().await.expect("an error frame");
        assert_eq!(
            (prefix.request_id, response.status()),
            (42, Status::TooLarge)
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused at once"
        );
        assert!(raw.recv().await.is_none(), "then closed");
    }
    // Nothing near the claimed sizes was allocated.
    assert!(common::rss_bytes() < rss_before + (256 << 20));
    good.finish().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_cut_mid_payload_stores_nothing() {
    let server = start_server(64 << 20).await;
    let good = GoodClient::start(server.fast_addr(), "cut").await;
    let mut raw = RawConn::connect(server.fast_addr()).await;
    let request = Request::Put {
        key: "cut".into(),
        meta: WireMeta::from(&u8_meta(1 << 20)),
    };
    raw.send_bytes(&encode_frame(request.opcode(), 0, 1, &request, 1 << 20).unwrap())
        .await
        .unwrap();
    raw.send_bytes(&vec![1u8; 100_000]).await.unwrap();
    drop(raw);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!server.engine().contains("cut"));
    good.finish().await;
    assert_eq!(
        server.engine().stats().entries,
        0,
        "only the good client's keys came and went"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_leaves_halfway_through_a_large_get() {
    let _turn = MEMORY.lock().await;
    let server = start_server(256 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    client
        .put("big", u8_meta(64 << 20), vec![9u8; 64 << 20])
        .await
        .unwrap();
    let good = GoodClient::start(server.fast_addr(), "leaver").await;
    for _ in 0..5 {
        let mut raw = RawConn::connect(server.fast_addr()).await;
        raw.send(1, &Request::Get { key: "big".into() }, &[]).await;
        let mut some = vec![0u8; 1 << 20];
        raw.reader_mut_read_exact(&mut some).await;
        drop(raw);
    }
    good.finish().await;
    // The tensor is intact for everyone else.
    let mut buf = vec![0u8; 64 << 20];
    client.get_into("big", &mut buf).await.unwrap().unwrap();
    assert!(buf.iter().all(|&b| b == 9));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_by_the_read_timeout() {
    let fast = FastConfig {
        idle_timeout: Duration::from_secs(1),
        ..FastConfig::for_budget(64 << 20)
    };
    let server = start_server_with(64 << 20, fast).await;
    let good = GoodClient::start(server.fast_addr(), "slowloris").await;
    let request = Request::Get { key: "k".into() };
    let frame = encode_frame(request.opcode(), 0, 5, &request, 0).unwrap();
    let mut s = TcpStream::connect(server.fast_addr()).await.unwrap();
    let started = Instant::now();
    let mut closed_after = None;
    for byte in frame.iter().cycle().take(40) {
        // One byte every 200 ms: never idle for a full second, but one
        // frame takes far longer than a second to arrive.
        if s.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut probe = [0u8; 256];
        if let Ok(Ok(0) | Ok(_)) =
            tokio::time::timeout(Duration::from_millis(200), s.read(&mut probe)).await
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the server must cut the connection");
    assert!(
        closed_after < Duration::from_secs(4),
        "took {closed_after:?}"
    );
    good.finish().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_hit_the_limit_cleanly() {
    let fast = FastConfig {
        max_connections: 100,
        ..FastConfig::for_budget(64 << 20)
    };
    let server = start_server_with(64 << 20, fast).await;
    let good = GoodClient::start(server.fast_addr(), "crowd").await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(server.fast_addr()).await.unwrap());
    }
    // The good client holds one slot; 99 idle ones got the rest, and every
    // other one is told Busy and closed.
    let mut busy = 0;
    for s in idle.iter_mut() {
        let mut buf = vec![0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await {
            if n > 0 {
                busy += 1;
            }
        }
    }
    assert!(busy >= 900, "{busy} connections were refused");
    let started = Instant::now();
    let probe = TcpStream::connect(server.fast_addr()).await;
    assert!(
        probe.is_ok() && started.elapsed() < Duration::from_secs(1),
        "still accepting"
    );
    good.finish().await;
    drop(idle);
    // Once the crowd leaves, new clients are served again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    FastClient::connect(server.fast_addr())
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_gets_backpressure() {
    let _turn = MEMORY.lock().await;
    // Three connections: the setup client's, the good client's and the
    // flood's.
    // The write timeout outlasts the 3 s in which the flood must stall.
    let fast = FastConfig {
        max_connections: 3,
        write_timeout: Duration::from_secs(4),
        idle_timeout: Duration::from_secs(4),
        ..FastConfig::for_budget(64 << 20)
    };
    let server = start_server_with(64 << 20, fast).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    client
        .put("v", u8_meta(65536), vec![3u8; 65536])
        .await
        .unwrap();
    let good = GoodClient::start(server.fast_addr(), "flood").await;
    // 200,000 pipelined GETs of a 64 KiB tensor: 13 GB of answers if the
    // server buffered them.
    let request = Request::Get { key: "v".into() };
    let one = encode_frame(request.opcode(), 0, 1, &request, 0).unwrap();
    let flood: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * 200_000)
        .collect();
    let rss_before = common::rss_bytes();
    let mut s = TcpStream::connect(server.fast_addr()).await.unwrap();
    let wrote_all = tokio::time::timeout(Duration::from_secs(3), s.write_all(&flood)).await;
    assert!(
        wrote_all.is_err(),
        "the server must stop reading a client that does not read"
    );
    let grown = common::rss_bytes().saturating_sub(rss_before);
    assert!(grown < 128 << 20, "memory grew by {grown} bytes");
    good.finish().await;
    drop(client);
    // The stalled connection is released (write timeout) while the flooder
    // still holds its socket: all three places serve again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut fresh = Vec::new();
    for _ in 0..3 {
        let c = FastClient::connect(server.fast_addr()).await.unwrap();
        c.ping()
            .await
            .expect("a place freed by the stalled connection");
        fresh.push(c);
    }
    drop(s);
    server.shutdown().await.unwrap();
}

/// A server whose clients may hold at most one connection, cutting stalled
/// writers after a second.
async fn one_connection_server(budget: u64) -> redstone::server::ServerHandle {
    let fast = FastConfig {
        max_connections: 1,
        idle_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(1),
        ..FastConfig::for_budget(budget)
    };
    start_server_with(budget, fast).await
}

/// Pipelines `n` GETs of `key` on a new connection and never reads.
async fn flood_gets(addr: std::net::SocketAddr, key: &str, n: usize) -> TcpStream {
    let request = Request::Get { key: key.into() };
    let one = encode_frame(request.opcode(), 0, 1, &request, 0).unwrap();
    let flood: Vec<u8> = one.iter().copied().cycle().take(one.len() * n).collect();
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server stops reading once its queue is full: don't wait for all.
    let _ = tokio::time::timeout(Duration::from_secs(1), s.write_all(&flood)).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_and_frees_its_connection() {
    let _turn = MEMORY.lock().await;
    let server = one_connection_server(64 << 20).await;
    let setup = FastClient::connect(server.fast_addr()).await.unwrap();
    setup
        .put("m", u8_meta(1 << 20), vec![1u8; 1 << 20])
        .await
        .unwrap();
    drop(setup);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // 2,000 GETs of 1 MiB on the only connection, never read.
    let stalled = flood_gets(server.fast_addr(), "m", 2000).await;
    // Within the write timeout (1 s) and the idle timeout (1 s), the
    // stalled connection is closed and its slot is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let client = FastClient::connect(server.fast_addr()).await.unwrap();
        match client.ping().await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "still refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And a shutdown does not wait on it.
    let started = Instant::now();
    server.shutdown().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_responses_keep_no_more_evicted_tensors_alive_than_the_queue_bound() {
    let _turn = MEMORY.lock().await;
    const MIB: u64 = 1 << 20;
    // Per connection alone, each stalled batch could keep 64 MiB (two of
    // its 30 MiB tensors) alive: 384 MiB over six. The server-wide bound
    // allows 32 MiB in all.
    let fast = FastConfig {
        max_queued_bytes: 64 * MIB,
        max_queued_total: 32 * MIB,
        ..FastConfig::for_budget(128 * MIB)
    };
    let server = start_server_with(128 * MIB, fast).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let value = vec![5u8; 30 << 20];
    let rss_before = common::rss_bytes();
    let mut stalled = Vec::new();
    for round in 0..6 {
        let keys: Vec<String> = (0..4).map(|i| format!("r{round}/{i}")).collect();
        for key in &keys {
            // Each round's puts evict the previous round's tensors.
            client
                .put(key, u8_meta(30 * MIB), value.clone())
                .await
                .unwrap();
        }
        let mut raw = RawConn::connect(server.fast_addr()).await;
        raw.send(1, &Request::GetMany { keys }, &[]).await;
        stalled.push(raw);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = server.engine().stats();
    assert!(stats.memory_used <= 128 * MIB);
    // The cache (120 MiB) plus at most the server-wide queue bound (64 MiB)
    // of evicted tensors, plus this process's own slack. Without the bound
    // every stalled batch kept its 120 MiB alive: 720 MiB.
    let grown = common::rss_bytes().saturating_sub(rss_before);
    assert!(grown < 300 * MIB, "memory grew by {} MiB", grown / MIB);
    drop(stalled);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_cannot_pin_more_than_the_ingress_bound() {
    let _turn = MEMORY.lock().await;
    const MIB: u64 = 1 << 20;
    let fast = FastConfig {
        idle_timeout: Duration::from_secs(2),
        max_ingress: 64 * MIB,
        ..FastConfig::for_budget(64 * MIB)
    };
    let server = start_server_with(64 * MIB, fast).await;
    let good = GoodClient::start(server.fast_addr(), "ingress").await;
    let len = 56 * MIB;
    let body = std::sync::Arc::new(pattern(len as usize - 1, 7));
    let rss_before = common::rss_bytes();
    let mut uploads = Vec::new();
    for i in 0..8 {
        let request = Request::Put {
            key: format!("upload/{i}"),
            meta: WireMeta::from(&u8_meta(len)),
        };
        let head = encode_frame(request.opcode(), 0, 1, &request, len).unwrap();
        let (body, addr) = (body.clone(), server.fast_addr());
        uploads.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&head).await.unwrap();
            // All but the last byte, then silence.
            let _ = s.write_all(&body).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let grown = common::rss_bytes().saturating_sub(rss_before);
    // One upload's buffer (56 MiB) at a time, not eight (448 MiB).
    assert!(grown < 200 * MIB, "memory grew by {} MiB", grown / MIB);
    assert!(
        !server.engine().contains("upload/0"),
        "nothing half-sent is stored"
    );
    // The stalled uploads are cut by the frame timeout and free their room:
    // a whole 56 MiB put goes through.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        client.put("after", u8_meta(len), vec![1u8; len as usize]),
    )
    .await
    .expect("room for a new upload once the stalled ones are cut")
    .unwrap();
    good.finish().await;
    for upload in uploads {
        upload.abort();
    }
    server.shutdown().await.unwrap();
}
