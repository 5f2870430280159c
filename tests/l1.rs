//! The client-side L1: hits without a request, single flight, own deletes,
//! the TTL, and the byte bound.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{pattern, start_server, u8_meta, with_l1};
use redstone::client::{FastClient, L1Options, L1_ENTRY_OVERHEAD};
use redstone::cluster::{ClusterClient, ClusterConfig};
use redstone::server::ServerHandle;
use redstone::tensor::Tensor;

fn tensor(len: usize, seed: u64) -> Tensor {
    Tensor::new(u8_meta(len as u64), pattern(len, seed)).unwrap()
}

/// Gets the server answered (hits + misses).
fn server_gets(server: &ServerHandle) -> u64 {
    let s = server.engine().stats();
    s.hits + s.misses
}

#[tokio::test]
async fn a_hit_makes_no_request_and_a_miss_one() {
    let server = start_server(64 << 20).await;
    let plain = FastClient::connect(server.fast_addr()).await.unwrap();
    let t = tensor(1 << 20, 1);
    plain.put_tensor("k", t.clone()).await.unwrap();
    let client = with_l1(&server, L1Options::new(16 << 20)).await;
    let before = server_gets(&server);
    assert_eq!(client.get("k").await.unwrap().as_ref(), Some(&t));
    assert_eq!(server_gets(&server), before + 1, "the first get is a miss");
    for _ in 0..5 {
        let hit = client.get("k").await.unwrap().unwrap();
        assert_eq!(hit, t);
    }
    assert_eq!(server_gets(&server), before + 1, "hits make no request");
    // A key the server does not have is asked for each time.
    assert_eq!(client.get("absent").await.unwrap(), None);
    assert_eq!(client.get("absent").await.unwrap(), None);
    assert_eq!(server_gets(&server), before + 3);
    let stats = client.l1().unwrap().stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (5, 3, 1));
    assert_eq!(stats.bytes, (1 << 20) + 1 + L1_ENTRY_OVERHEAD);
    // A hit hands out the cached buffer itself.
    let a = client.get("k").await.unwrap().unwrap();
    let b = client.get("k").await.unwrap().unwrap();
    assert_eq!(a.data().as_ptr(), b.data().as_ptr());
    // get_into is served from it too.
    let mut buf = vec![0u8; 1 << 20];
    client.get_into("k", &mut buf).await.unwrap().unwrap();
    assert_eq!(&buf[..], &t.data()[..]);
    assert_eq!(server_gets(&server), before + 3);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn puts_fill_it_and_own_deletes_empty_it_at_once() {
    let server = start_server(64 << 20).await;
    let client = with_l1(&server, L1Options::new(16 << 20)).await;
    let t = tensor(4096, 2);
    client.put_tensor("k", t.clone()).await.unwrap();
    let before = server_gets(&server);
    assert_eq!(client.get("k").await.unwrap().as_ref(), Some(&t));
    assert_eq!(server_gets(&server), before, "a put is kept");
    assert!(client.delete("k").await.unwrap());
    assert_eq!(client.get("k").await.unwrap(), None, "own delete");
    assert_eq!(client.get_many(&["k"]).await.unwrap(), vec![None]);
    // Re-put with other contents: the new value, never the old.
    let other = tensor(4096, 3);
    client.put_tensor("k", other.clone()).await.unwrap();
    assert_eq!(client.get("k").await.unwrap(), Some(other));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn another_clients_change_shows_once_the_ttl_passes() {
    let server = start_server(64 << 20).await;
    let writer = FastClient::connect(server.fast_addr()).await.unwrap();
    let old = tensor(4096, 4);
    writer.put_tensor("k", old.clone()).await.unwrap();
    let ttl = Duration::from_millis(300);
    let client = with_l1(
        &server,
        L1Options {
            capacity: 1 << 20,
            ttl: Some(ttl),
        },
    )
    .await;
    assert_eq!(client.get("k").await.unwrap().as_ref(), Some(&old));
    writer.delete("k").await.unwrap();
    let new = tensor(4096, 5);
    writer.put_tensor("k", new.clone()).await.unwrap();
    // Within the TTL the L1 may serve the old value (as documented)…
    assert_eq!(client.get("k").await.unwrap().as_ref(), Some(&old));
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    // …and after it, never.
    assert_eq!(client.get("k").await.unwrap(), Some(new));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_misses_of_one_key_make_one_request() {
    let server = start_server(256 << 20).await;
    let client = with_l1(&server, L1Options::new(128 << 20)).await;
    let t = tensor(32 << 20, 6);
    FastClient::connect(server.fast_addr())
        .await
        .unwrap()
        .put_tensor("big", t.clone())
        .await
        .unwrap();
    let before = server_gets(&server);
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, barrier) = (client.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                client.get("big").await.unwrap().unwrap()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), t);
    }
    // One lookup for 16 gets (a tensor this large is answered `Bulk` on
    // the shared connection from its peeked size, then looked up once by
    // the get on an exclusive one: docs/PROTOCOL.md, "Bulk replies").
    assert_eq!(server_gets(&server), before + 1, "one request for 16 gets");
    let stats = client.l1().unwrap().stats();
    assert_eq!((stats.misses, stats.hits), (1, 15));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_bound_holds_under_concurrent_gets() {
    let server = start_server(256 << 20).await;
    let capacity = 1 << 20;
    let client = with_l1(&server, L1Options::new(capacity)).await;
    let writer = FastClient::connect(server.fast_addr()).await.unwrap();
    for i in 0..64 {
        writer
            .put_tensor(&format!("k{i}"), tensor(64 << 10, i))
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..16u64)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut x = w * 7 + 1;
                let mut peak = 0;
                for _ in 0..200 {
                    x = (x * 1_103_515_245 + 12_345) % (1 << 31);
                    let i = x % 64;
                    let got = client.get(&format!("k{i}")).await.unwrap().unwrap();
                    assert_eq!(got, tensor(64 << 10, i));
                    peak = peak.max(client.l1().unwrap().stats().bytes);
                }
                peak
            })
        })
        .collect();
    for task in tasks {
        let peak = task.await.unwrap();
        assert!(peak <= capacity, "{peak} bytes held, over {capacity}");
    }
    let stats = client.l1().unwrap().stats();
    assert!(stats.bytes <= capacity && stats.evictions > 0, "{stats:?}");
    assert!(stats.hits > 0, "{stats:?}");
    // A tensor over the L1's share is never kept.
    writer
        .put_tensor("huge", tensor(2 << 20, 99))
        .await
        .unwrap();
    client.get("huge").await.unwrap().unwrap();
    assert!(client.l1().unwrap().stats().bytes <= capacity);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cluster_client_has_one_too() {
    let a = start_server(64 << 20).await;
    let b = start_server(64 << 20).await;
    let mut config = ClusterConfig::new(vec![a.fast_addr().to_string(), b.fast_addr().to_string()]);
    config.l1 = Some(L1Options::new(8 << 20));
    let cluster = ClusterClient::new(config).unwrap();
    let t = tensor(8192, 7);
    cluster.put_tensor("k", t.clone()).await.unwrap();
    let before = server_gets(&a) + server_gets(&b);
    assert_eq!(cluster.get("k").await.unwrap().as_ref(), Some(&t));
    assert_eq!(server_gets(&a) + server_gets(&b), before);
    assert!(cluster.delete("k").await.unwrap());
    assert_eq!(cluster.get("k").await.unwrap(), None);
    let mut registry = prometheus_client::registry::Registry::default();
    cluster.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("redstone_l1_hits_total 1"), "{text}");
    assert!(text.contains("redstone_l1_misses_total 1"), "{text}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[test]
fn a_task_looping_over_hits_lets_the_runtime_run() {
    // One thread runs everything: a hit that never yielded would keep the
    // timer below from ever firing, and this test from ending.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let server = start_server(16 << 20).await;
            let client = with_l1(&server, L1Options::new(8 << 20)).await;
            client.put_tensor("k", tensor(1024, 8)).await.unwrap();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let looping = {
                let (client, stop) = (client.clone(), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut n = 0u64;
                    let mut buf = vec![0u8; 1024];
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        client.get("k").await.unwrap().unwrap();
                        client.get_into("k", &mut buf).await.unwrap().unwrap();
                        client.get_many(&["k"]).await.unwrap();
                        n += 1;
                    }
                    n
                })
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(looping.await.unwrap() > 0);
            server.shutdown().await.unwrap();
        });
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(30))
        .expect("the timer ran while a task looped over L1 hits");
}
