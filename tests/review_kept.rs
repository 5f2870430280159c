//! A hostile review's tests of the fast path's per-connection deadline
//! (one lazily re-armed timer for the idle and per-request limits) and of
//! the local door's kept mappings (`FastClientOptions::keep_mapped`).
//!
//! `d*` tests probe the connection deadline over TCP; `k*` tests probe
//! kept mappings over the local door.

mod common;

use std::time::{Duration, Instant};

use common::local::{memfd_mapped_at, LocalServer as Local};
use common::{pattern, start_server_with, u8_meta};
use redstone::client::{FastClient, FastClientOptions};
use redstone::fast::wire::{
    decode_response, encode, encode_head, Prefix, Request, Status, PREFIX_LEN,
};
use redstone::fast::FastConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------- deadline

fn fast_with_idle(idle: Duration) -> FastConfig {
    FastConfig {
        idle_timeout: idle,
        ..FastConfig::for_budget(64 << 20)
    }
}

fn frame(request: &Request, id: u64, payload_len: u64) -> Vec<u8> {
    let header = encode(request).unwrap();
    encode_head(request.opcode(), 0, id, &header, payload_len)
}

/// Reads one response frame (its status), or `None` on EOF/error.
async fn read_status(s: &mut TcpStream) -> Option<Status> {
    let mut prefix = vec![0u8; PREFIX_LEN];
    s.read_exact(&mut prefix).await.ok()?;
    let p = Prefix::parse(&prefix).ok()??;
    let mut rest = vec![0u8; p.header_len as usize + p.payload_len as usize];
    s.read_exact(&mut rest).await.ok()?;
    let r = decode_response(&rest[..p.header_len as usize], p.request_id).ok()?;
    Some(r.status())
}

/// Waits until the server closes `s` (reads until EOF), at most `max`;
/// returns the statuses read on the way and when EOF came.
async fn until_closed(s: &mut TcpStream, max: Duration) -> (Vec<Status>, Option<Instant>) {
    let deadline = Instant::now() + max;
    let mut statuses = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, read_status(s)).await {
            Ok(Some(st)) => statuses.push(st),
            Ok(None) => return (statuses, Some(Instant::now())),
            Err(_) => return (statuses, None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_a_silent_connection_is_closed_after_the_idle_timeout() {
    let server = start_server_with(64 << 20, fast_with_idle(Duration::from_secs(1))).await;
    let mut s = TcpStream::connect(server.fast_addr()).await.unwrap();
    let t0 = Instant::now();
    let (st, closed) = until_closed(&mut s, Duration::from_secs(5)).await;
    let took = closed.expect("closed") - t0;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    assert_eq!(st, vec![Status::Timeout]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_a_trickling_put_payload_is_cut_one_limit_after_its_head() {
    let server = start_server_with(64 << 20, fast_with_idle(Duration::from_secs(1))).await;
    let mut s = TcpStream::connect(server.fast_addr()).await.unwrap();
    let len = 64u64;
    let put = Request::Put {
        key: "slow".into(),
        meta: (&u8_meta(len)).into(),
    };
    s.write_all(&frame(&put, 1, len)).await.unwrap();
    let t0 = Instant::now();
    // One payload byte every 100 ms: 6.4 s for the whole payload, never
    // stalled for long (the stall timeout is 30 s).
    let mut cut = None;
    for _ in 0..len {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(&[7]).await.is_err() {
            cut = Some(t0.elapsed());
            break;
        }
        let mut probe = [0u8; 1];
        if tokio::time::timeout(Duration::from_millis(1), s.peek(&mut probe))
            .await
            .is_ok()
        {
            cut = Some(t0.elapsed());
            break;
        }
    }
    let cut = cut.expect("the server must cut a payload that trickles past the limit");
    assert!(cut < Duration::from_millis(2500), "{cut:?}");
    let (st, _) = until_closed(&mut s, Duration::from_secs(3)).await;
    assert_eq!(st.first(), Some(&Status::Timeout), "{st:?}");
    server.shutdown().await.unwrap();
}

/// The timer armed at connect must not cut a request that begins near its
/// end: progress re-arms it (lazily).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_progress_moves_the_deadline_and_silence_after_it_still_closes() {
    let server = start_server_with(64 << 20, fast_with_idle(Duration::from_secs(1))).await;
    let mut s = TcpStream::connect(server.fast_addr()).await.unwrap();
    for id in 1..=4u64 {
        // 0.8 s of silence each time: 3.2 s in all, well past the first
        // arming, but never a whole limit without progress.
        tokio::time::sleep(Duration::from_millis(800)).await;
        s.write_all(&frame(&Request::Ping, id, 0)).await.unwrap();
        assert_eq!(read_status(&mut s).await, Some(Status::Ok), "ping {id}");
    }
    // A put whose payload takes 0.7 s after its head: within the limit.
    let len = 8u64;
    let put = Request::Put {
        key: "k".into(),
        meta: (&u8_meta(len)).into(),
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.write_all(&frame(&put, 9, len)).await.unwrap();
    for _ in 0..len {
        tokio::time::sleep(Duration::from_millis(85)).await;
        s.write_all(&[1]).await.unwrap();
    }
    assert_eq!(read_status(&mut s).await, Some(Status::Ok), "slow put");
    let done = Instant::now();
    let (st, closed) = until_closed(&mut s, Duration::from_secs(5)).await;
    let took = closed.expect("closed") - done;
    assert!(
        took >= Duration::from_millis(850) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    assert_eq!(st, vec![Status::Timeout]);
    server.shutdown().await.unwrap();
}

/// Shutdown reaches a connection waiting for its next request promptly,
/// through the stop future built once per connection, after several
/// requests have polled it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_shutdown_reaches_an_idle_connection_after_many_requests() {
    let server = start_server_with(64 << 20, fast_with_idle(Duration::from_secs(60))).await;
    let mut s = TcpStream::connect(server.fast_addr()).await.unwrap();
    for id in 1..=50u64 {
        s.write_all(&frame(&Request::Ping, id, 0)).await.unwrap();
        assert_eq!(read_status(&mut s).await, Some(Status::Ok));
    }
    let t0 = Instant::now();
    let stop = tokio::spawn(server.shutdown());
    let (st, closed) = until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed.expect("closed") - t0 < Duration::from_secs(3));
    assert_eq!(st, vec![Status::ShuttingDown]);
    stop.await.unwrap().unwrap();
}

// ------------------------------------------------------------ kept mappings

async fn start(name: &str, max_leased: u64, idle: Duration) -> Local {
    Local::start(
        name,
        256 << 20,
        max_leased,
        0o600,
        fast_with_idle_budget(idle),
    )
    .await
}

fn fast_with_idle_budget(idle: Duration) -> FastConfig {
    FastConfig {
        idle_timeout: idle,
        ..FastConfig::for_budget(256 << 20)
    }
}

const LONG: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k1_overwrites_and_delete_reput_never_serve_a_kept_stale_tensor() {
    let local = start("rk-overwrite", 256 << 20, LONG).await;
    let client = local.client_keeping(64 << 20).await;
    let other = local.client().await;
    let mut held = Vec::new();
    for round in 0..30u64 {
        let data = pattern(MIB, round);
        // Same key, same length: by overwrite, or by delete and put, from
        // this client or another.
        let putter = if round % 2 == 0 { &client } else { &other };
        // Write-once keys: replaced by delete and put.
        let _ = putter.delete("k").await.unwrap();
        putter
            .put("k", u8_meta(MIB as u64), data.clone())
            .await
            .unwrap();
        for _ in 0..3 {
            let got = client.get("k").await.unwrap().unwrap();
            assert!(got.data()[..] == data[..], "round {round}: stale bytes");
            // Keep some old tensors alive so their memfds stay open too.
            if round % 4 == 0 {
                held.push(got);
            }
        }
    }
    drop(held);
    drop((client, other));
    local.leased_becomes(0).await;
    local.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k2_equal_contents_and_changed_lengths_under_many_keys() {
    let local = start("rk-keys", 256 << 20, LONG).await;
    let client = local.client_keeping(64 << 20).await;
    let same = pattern(MIB, 42);
    for k in ["a", "b", "c"] {
        client
            .put(k, u8_meta(MIB as u64), same.clone())
            .await
            .unwrap();
    }
    let ptrs: Vec<usize> = {
        let mut v = Vec::new();
        for k in ["a", "b", "c"] {
            let t = client.get(k).await.unwrap().unwrap();
            assert!(t.data()[..] == same[..]);
            v.push(t.data().as_ptr() as usize);
        }
        v
    };
    // Each key its own memfd, its own kept mapping, reused on the next get.
    assert_ne!(ptrs[0], ptrs[1]);
    for (k, p) in ["a", "b", "c"].into_iter().zip(&ptrs) {
        let t = client.get(k).await.unwrap().unwrap();
        assert_eq!(t.data().as_ptr() as usize, *p, "{k}: kept");
    }
    // Another length under "a" (longer and shorter).
    for len in [2 * MIB, MIB / 2, 300 * 1024] {
        let data = pattern(len, len as u64);
        assert!(client.delete("a").await.unwrap());
        client
            .put("a", u8_meta(len as u64), data.clone())
            .await
            .unwrap();
        let t = client.get("a").await.unwrap().unwrap();
        assert_eq!(t.data().len(), len);
        assert!(t.data()[..] == data[..]);
    }
    drop(client);
    local.leased_becomes(0).await;
    local.server.shutdown().await.unwrap();
}

/// Each kept hit releases its new lease: 5,000 gets on one connection
/// never reach the per-connection cap of 4,096 leases, and the gauge holds
/// one tensor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3_repeated_hits_release_their_leases() {
    let local = start("rk-repeat", 256 << 20, LONG).await;
    let client = local.client_keeping(64 << 20).await;
    let data = pattern(512 * 1024, 3);
    client
        .put("k", u8_meta(data.len() as u64), data.clone())
        .await
        .unwrap();
    let first = client.get("k").await.unwrap().unwrap().data().as_ptr();
    for i in 0..5000 {
        let t = client.get("k").await.unwrap().unwrap();
        assert_eq!(t.data().as_ptr(), first, "get {i}");
    }
    local.leased_becomes(data.len() as u64).await;
    drop(client);
    local.leased_becomes(0).await;
    local.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k4_odd_budgets_do_not_panic_and_leases_settle() {
    let local = start("rk-budgets", 256 << 20, LONG).await;
    let data = pattern(MIB, 4);
    local
        .client()
        .await
        .put("k", u8_meta(MIB as u64), data.clone())
        .await
        .unwrap();
    // Smaller than any shared tensor: nothing is kept.
    let tiny = local.client_keeping(1).await;
    for _ in 0..3 {
        assert!(tiny.get("k").await.unwrap().unwrap().data()[..] == data[..]);
    }
    local.leased_becomes(0).await;
    // Unbounded.
    let huge = local.client_keeping(u64::MAX).await;
    for _ in 0..3 {
        assert!(huge.get("k").await.unwrap().unwrap().data()[..] == data[..]);
    }
    local.leased_becomes(MIB as u64).await;
    drop((tiny, huge));
    local.leased_becomes(0).await;
    local.server.shutdown().await.unwrap();
}

/// Clones hammer a few keys while a putter replaces them: every get is
/// one of the tensors that key held, the client never deadlocks, and all
/// leases go when the client does, even with the app still holding tensors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_concurrent_clones_with_replacing_puts_and_small_budget() {
    let local = start("rk-concurrent", 256 << 20, LONG).await;
    // Room for about two of the four tensors: constant eviction.
    let client = local.client_keeping(2 * MIB as u64 + 1).await;
    let keys = ["w", "x", "y", "z"];
    for (i, k) in keys.iter().enumerate() {
        client
            .put(k, u8_meta(MIB as u64), pattern(MIB, i as u64 * 1000))
            .await
            .unwrap();
    }
    let putter = {
        let c = local.client().await;
        tokio::spawn(async move {
            for gen in 1..20u64 {
                for (i, k) in keys.iter().enumerate() {
                    c.delete(k).await.unwrap();
                    c.put(k, u8_meta(MIB as u64), pattern(MIB, i as u64 * 1000 + gen))
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for t in 0..6u64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut kept_some = Vec::new();
            for n in 0..150u64 {
                let i = ((n + t) % 4) as usize;
                // Between a delete and its put: nothing.
                let Some(got) = c.get(keys[i]).await.unwrap() else {
                    continue;
                };
                // Which generation is it? Its first 64 bytes tell.
                let ok = (0..20u64)
                    .any(|gen| got.data()[..64] == pattern(64, i as u64 * 1000 + gen)[..]);
                assert!(ok, "a bytes of no generation of {}", keys[i]);
                let gen = (0..20u64)
                    .find(|gen| got.data()[..64] == pattern(64, i as u64 * 1000 + gen)[..])
                    .unwrap();
                assert!(
                    got.data()[..] == pattern(MIB, i as u64 * 1000 + gen)[..],
                    "torn or mixed tensor"
                );
                if n % 37 == 0 {
                    kept_some.push(got);
                }
            }
            kept_some
        }));
    }
    putter.await.unwrap();
    let mut held = Vec::new();
    for t in tasks {
        held.extend(
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("deadlock?")
                .unwrap(),
        );
    }
    drop(client);
    // The app still holds tensors; the connection's end lets go of leases.
    local.leased_becomes(0).await;
    drop(held);
    local.server.shutdown().await.unwrap();
}

/// After the server closes an idle connection (its leases go with it),
/// the client's next connection lets go of the kept mappings: none of them
/// outlives its lease uncounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_mappings_are_let_go_when_the_connection_is_replaced() {
    let local = start("rk-reconnect", 5 * MIB as u64, Duration::from_secs(1)).await;
    let client = local.client_keeping(64 << 20).await;
    client
        .put("x", u8_meta(3 * MIB as u64), pattern(3 * MIB, 1))
        .await
        .unwrap();
    let x_at = client.get("x").await.unwrap().unwrap().data().as_ptr() as usize;
    local.leased_becomes(3 * MIB as u64).await;
    assert!(memfd_mapped_at(x_at), "kept");
    // Idle past the server's limit: it closes the connection.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    local.leased_becomes(0).await;
    // The next call reconnects, and the kept mapping goes.
    client.ping().await.unwrap();
    assert!(!memfd_mapped_at(x_at), "no mapping outlives its lease");
    // Got again, it is leased again.
    let x = client.get("x").await.unwrap().unwrap();
    assert!(x.data()[..] == pattern(3 * MIB, 1)[..]);
    local.leased_becomes(3 * MIB as u64).await;
    drop((x, client));
    local.leased_becomes(0).await;
    local.server.shutdown().await.unwrap();
}

/// `--idle-timeout` is any u64 of seconds. `tokio::time::timeout` (the old
/// code) treats an unrepresentable deadline as "never"; `Deadline::new`
/// computes `now + limit`, which overflows and panics in every connection
/// task. A ping must be answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_a_huge_idle_timeout_still_serves() {
    let server = start_server_with(64 << 20, fast_with_idle(Duration::from_secs(u64::MAX))).await;
    let mut s = TcpStream::connect(server.fast_addr()).await.unwrap();
    s.write_all(&frame(&Request::Ping, 1, 0)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), read_status(&mut s)).await;
    assert_eq!(got, Ok(Some(Status::Ok)), "the connection died");
    server.shutdown().await.unwrap();
}

/// `mapped` keeps the mapping before `tensor_from` checks the reply: a get
/// that fails (here a packed tensor that unpacks past this client's
/// `max_payload`) still leaves its mapping kept and its lease held.
/// A failed get holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k6_a_failed_get_keeps_no_mapping() {
    use redstone::tensor::codec::Compression;
    use redstone::tensor::Tensor;
    let local = start("rk-failed", 256 << 20, LONG).await;
    let len = 4 * MIB;
    // Half noise, half zeros: packs to about half, well over 256 KiB.
    let mut data = pattern(len, 5);
    for block in data.chunks_mut(4096) {
        block[2048..].fill(0);
    }
    let putter = local.client().await;
    putter
        .put_with(
            "p",
            Tensor::new(u8_meta(len as u64), data).unwrap(),
            Compression::Lz4,
        )
        .await
        .unwrap();
    let options = FastClientOptions {
        keep_mapped: 64 << 20,
        max_payload: 3 * MIB as u64,
        ..Default::default()
    };
    let client = FastClient::connect_with(&local.addr(), options)
        .await
        .unwrap();
    let err = client.get("p").await.expect_err("unpacks past max_payload");
    assert!(
        matches!(err, redstone::client::ClientError::TooLarge(_)),
        "{err:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = local.leased();
    drop(client);
    local.leased_becomes(0).await;
    local.server.shutdown().await.unwrap();
    assert_eq!(held, 0, "a failed get left {held} bytes leased (kept)");
}
