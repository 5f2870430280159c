//! The cluster client against real servers on ephemeral ports.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cluster_metric as metric, pattern, slow_proxy};
use redstone::client::ClientError;
use redstone::cluster::{ClusterClient, ClusterConfig};
use redstone::server::{Config, Server, ServerHandle};
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
use redstone::tensor::Tensor;

async fn node_at(tcp: SocketAddr) -> ServerHandle {
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: tcp,
        memory_limit: 256 << 20,
        ..Config::default()
    };
    Server::bind(config).await.expect("bind").spawn()
}

async fn nodes(n: usize) -> Vec<ServerHandle> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(node_at("127.0.0.1:0".parse().unwrap()).await);
    }
    out
}

fn config(servers: &[ServerHandle], replicas: usize, quorum: usize) -> ClusterConfig {
    ClusterConfig {
        replicas,
        write_quorum: quorum,
        timeout: Duration::from_millis(500),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        ..ClusterConfig::new(servers.iter().map(|s| s.fast_addr().to_string()).collect())
    }
}

/// A node that accepts connections and never answers; returns its address.
async fn hung_node() -> SocketAddr {
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hung.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
        }
    });
    addr
}

fn tensor_for(i: u64) -> Tensor {
    let data = pattern(512 + (i as usize % 7) * 100, i);
    let meta =
        TensorMeta::new(DType::U8, vec![data.len() as u64], StorageLayout::RowMajor).unwrap();
    Tensor::new(meta, data).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_node_loss_and_read_repair_refills_a_restarted_node() {
    let mut servers = nodes(3).await;
    let cluster = ClusterClient::new(config(&servers, 2, 2)).unwrap();
    const N: u64 = 2000;
    for i in 0..N {
        cluster
            .put_tensor(&format!("t{i}"), tensor_for(i))
            .await
            .unwrap();
    }
    let held: u64 = servers.iter().map(|s| s.engine().stats().entries).sum();
    assert_eq!(held, 2 * N, "every tensor on exactly two nodes");

    // Lose node 1: every tensor is still readable, byte for byte.
    let lost = servers.remove(1);
    let lost_addr = lost.fast_addr();
    lost.shutdown().await.unwrap();
    for i in 0..N {
        let got = cluster
            .get(&format!("t{i}"))
            .await
            .unwrap()
            .expect("a replica survives");
        assert_eq!(got, tensor_for(i), "t{i}");
    }

    // It comes back empty at the same address and rejoins by itself.
    let back = node_at(lost_addr).await;
    tokio::time::sleep(Duration::from_millis(150)).await; // past the backoff
    for i in 0..N {
        let got = cluster
            .get(&format!("t{i}"))
            .await
            .unwrap()
            .expect("still readable");
        assert_eq!(got, tensor_for(i), "t{i}");
    }
    // Read repair: every key for which the restarted node is the first
    // replica was found missing there and written back.
    let primary: Vec<String> = (0..N)
        .map(|i| format!("t{i}"))
        .filter(|k| cluster.replicas_of(k)[0] == lost_addr.to_string())
        .collect();
    assert!(!primary.is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while back.engine().stats().entries < primary.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for k in &primary {
        assert!(back.engine().contains(k), "{k} was not repaired");
    }
    // Each of them was counted as one read repair.
    let repaired = || {
        metric(
            &cluster,
            "redstone_cluster_read_repairs_total",
            &[("outcome", "ok")],
        )
    };
    while repaired() < primary.len() as f64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(repaired(), primary.len() as f64);
    let lost = lost_addr.to_string();
    let node = [("node", lost.as_str())];
    assert!(metric(&cluster, "redstone_cluster_node_failures_total", &node) >= 1.0);
    assert!(metric(&cluster, "redstone_cluster_node_marked_down_total", &node) >= 1.0);
    let nodes = cluster.node_stats().await;
    assert!(
        nodes.iter().all(|n| n.up && n.stats.is_ok()),
        "all three nodes are up again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_costs_at_most_the_timeout() {
    let hung_addr = hung_node().await;
    let real = nodes(1).await;
    let timeout = Duration::from_millis(300);
    let cluster = ClusterClient::new(ClusterConfig {
        replicas: 2,
        write_quorum: 1,
        timeout,
        backoff_min: Duration::from_secs(5),
        backoff_max: Duration::from_secs(5),
        ..ClusterConfig::new(vec![hung_addr.to_string(), real[0].fast_addr().to_string()])
    })
    .unwrap();
    // A key whose first replica is the hung node.
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| cluster.replicas_of(k)[0] == hung_addr.to_string())
        .unwrap();
    // Stored on the live replica directly: a cluster put would wait for
    // the hung one and mark it down, and this test is about reads.
    redstone::client::FastClient::connect(real[0].fast_addr())
        .await
        .unwrap()
        .put_tensor(&key, tensor_for(1))
        .await
        .unwrap();
    let started = Instant::now();
    let got = cluster.get(&key).await.unwrap();
    let took = started.elapsed();
    assert_eq!(got, Some(tensor_for(1)));
    assert!(took >= timeout, "the hung node was asked first");
    assert!(took < timeout + Duration::from_millis(700), "took {took:?}");
    // Now marked down, it is skipped: no more waiting.
    let started = Instant::now();
    assert_eq!(cluster.get(&key).await.unwrap(), Some(tensor_for(1)));
    assert!(started.elapsed() < timeout, "a down node is skipped");
    let stats = cluster.node_stats().await;
    assert!(!stats[0].up && stats[1].up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_during_a_failure_lose_no_acknowledged_tensor() {
    let mut servers = nodes(3).await;
    let cluster = ClusterClient::new(config(&servers, 2, 2)).unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (cluster, acked) = (cluster.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut refused = 0;
            for i in 0..300u64 {
                let id = w * 1000 + i;
                match cluster.put_tensor(&format!("c{id}"), tensor_for(id)).await {
                    Ok(()) => acked.lock().unwrap().push(id),
                    Err(
                        ClientError::Quorum(_)
                        | ClientError::Unavailable(_)
                        | ClientError::Timeout(_),
                    ) => refused += 1,
                    Err(e) => panic!("unexpected {e}"),
                }
                tokio::task::yield_now().await;
            }
            refused
        }));
    }
    // Fail a node while the writers run: once 200 puts are acknowledged.
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    servers.remove(2).shutdown().await.unwrap();
    let mut refused = 0;
    for w in writers {
        refused += w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    assert_eq!(acked.len() + refused, 1200, "every put was answered");
    assert!(
        refused > 0,
        "the failure happened while writes were running"
    );
    for id in acked {
        let got = cluster.get(&format!("c{id}")).await.unwrap();
        assert_eq!(
            got,
            Some(tensor_for(id)),
            "acknowledged tensor c{id} was lost"
        );
    }
}

#[tokio::test]
async fn puts_are_put_once_and_deletes_reach_every_replica() {
    let servers = nodes(3).await;
    let cluster = ClusterClient::new(config(&servers, 3, 3)).unwrap();
    cluster.put_tensor("k", tensor_for(1)).await.unwrap();
    assert!(matches!(
        cluster.put_tensor("k", tensor_for(2)).await,
        Err(ClientError::AlreadyExists(_))
    ));
    assert_eq!(cluster.get("k").await.unwrap(), Some(tensor_for(1)));
    assert!(cluster.delete("k").await.unwrap());
    assert!(servers.iter().all(|s| !s.engine().contains("k")));
    assert!(!cluster.delete("k").await.unwrap());
    assert_eq!(cluster.get("k").await.unwrap(), None);
    let stats = cluster.stats().await.unwrap();
    assert_eq!(stats.memory_limit, 3 * (256 << 20));
}

/// A key whose first replica in `cluster` is `node`.
fn key_first_on(cluster: &ClusterClient, node: SocketAddr, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| cluster.replicas_of(k)[0] == node.to_string())
        .unwrap()
}

/// Two replicas, `first` then a live node, hedged after `hedge`.
fn hedged_pair(
    first: SocketAddr,
    live: SocketAddr,
    timeout: Duration,
    hedge: Duration,
    backoff: Duration,
) -> ClusterClient {
    ClusterClient::new(ClusterConfig {
        replicas: 2,
        write_quorum: 1,
        timeout,
        backoff_min: backoff,
        backoff_max: backoff,
        hedge_after: Some(hedge),
        ..ClusterConfig::new(vec![first.to_string(), live.to_string()])
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_read_does_not_wait_for_a_hung_replica() {
    let hung_addr = hung_node().await;
    let real = nodes(1).await;
    let cluster = ClusterClient::new(ClusterConfig {
        replicas: 2,
        write_quorum: 1,
        timeout: Duration::from_secs(3),
        hedge_after: Some(Duration::from_millis(50)),
        ..ClusterConfig::new(vec![hung_addr.to_string(), real[0].fast_addr().to_string()])
    })
    .unwrap();
    let key = (0..)
        .map(|i| format!("h{i}"))
        .find(|k| cluster.replicas_of(k)[0] == hung_addr.to_string())
        .unwrap();
    // Stored on the live replica directly (see above).
    redstone::client::FastClient::connect(real[0].fast_addr())
        .await
        .unwrap()
        .put_tensor(&key, tensor_for(3))
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        metric(&cluster, "redstone_cluster_hedged_reads_total", &[]),
        0.0
    );
    assert_eq!(cluster.get(&key).await.unwrap(), Some(tensor_for(3)));
    let took = started.elapsed();
    assert_eq!(
        metric(&cluster, "redstone_cluster_hedged_reads_total", &[]),
        1.0
    );
    assert!(
        took >= Duration::from_millis(50),
        "the hedge waited its delay"
    );
    assert!(
        took < Duration::from_secs(1),
        "took {took:?}: the hedge did not fire"
    );
    // A key missing everywhere still answers None (both replicas asked).
    let absent = (0..)
        .map(|i| format!("absent{i}"))
        .find(|k| cluster.replicas_of(k)[0] == real[0].fast_addr().to_string())
        .unwrap();
    assert_eq!(cluster.get(&absent).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_keeps_losing_hedge_races_is_read_last() {
    let real = nodes(2).await;
    let slow = slow_proxy(real[0].fast_addr(), Duration::from_millis(150)).await;
    let fast = real[1].fast_addr();
    let cluster = hedged_pair(
        slow,
        fast,
        Duration::from_secs(2),
        Duration::from_millis(20),
        Duration::from_secs(30),
    );
    let key = key_first_on(&cluster, slow, "s");
    cluster.put_tensor(&key, tensor_for(5)).await.unwrap();
    let mut took = Vec::new();
    for _ in 0..12 {
        let started = Instant::now();
        assert_eq!(cluster.get(&key).await.unwrap(), Some(tensor_for(5)));
        took.push(started.elapsed());
    }
    // The slow replica answers every time, within the timeout, but loses
    // each race to the hedge; after three losses it is read last and gets
    // no longer wait for the hedge delay (nor the slow replica).
    let mut late = took[6..].to_vec();
    late.sort();
    assert!(
        late[late.len() / 2] < Duration::from_millis(20),
        "later gets still wait for the hedge: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_that_loses_a_hedge_race_is_still_marked_down() {
    let hung_addr = hung_node().await;
    let real = nodes(1).await;
    let cluster = hedged_pair(
        hung_addr,
        real[0].fast_addr(),
        Duration::from_millis(300),
        Duration::from_millis(30),
        Duration::from_secs(30),
    );
    let key = key_first_on(&cluster, hung_addr, "h");
    // Stored on the live replica directly: a cluster put would wait for
    // the hung one, time out and mark it down before any read.
    redstone::client::FastClient::connect(real[0].fast_addr())
        .await
        .unwrap()
        .put_tensor(&key, tensor_for(4))
        .await
        .unwrap();
    assert_eq!(cluster.get(&key).await.unwrap(), Some(tensor_for(4)));
    // The first read was left to run to its timeout, which marks the hung
    // replica down: later gets go to the live replica first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut took = Vec::new();
    for _ in 0..6 {
        let started = Instant::now();
        assert_eq!(cluster.get(&key).await.unwrap(), Some(tensor_for(4)));
        took.push(started.elapsed());
    }
    took.sort();
    assert!(
        took[took.len() / 2] < Duration::from_millis(30),
        "gets still wait for the hedge: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_misses_a_replica_is_not_ok() {
    let hung_addr = hung_node().await;
    let real = nodes(2).await;
    let mut addrs: Vec<String> = real.iter().map(|s| s.fast_addr().to_string()).collect();
    addrs.push(hung_addr.to_string());
    let cluster = ClusterClient::new(ClusterConfig {
        replicas: 3,
        write_quorum: 2,
        timeout: Duration::from_millis(300),
        ..ClusterConfig::new(addrs)
    })
    .unwrap();
    cluster.put_tensor("gone", tensor_for(6)).await.unwrap();
    // The hung replica may still hold the tensor: the delete says so.
    match cluster.delete("gone").await {
        Err(ClientError::Quorum(why)) => {
            assert!(why.contains(&hung_addr.to_string()), "{why}");
            assert!(why.contains("2 of 3"), "{why}");
        }
        other => panic!("a delete that missed a replica returned {other:?}"),
    }
    assert_eq!(
        metric(
            &cluster,
            "redstone_cluster_quorum_failures_total",
            &[("op", "delete")]
        ),
        1.0
    );
    let hung = hung_addr.to_string();
    let node = [("node", hung.as_str())];
    assert!(metric(&cluster, "redstone_cluster_node_failures_total", &node) >= 1.0);
    let first = real[0].fast_addr().to_string();
    let node = [("node", first.as_str())];
    assert_eq!(
        metric(&cluster, "redstone_cluster_node_requests_total", &node),
        2.0
    );
    assert_eq!(
        metric(&cluster, "redstone_cluster_node_failures_total", &node),
        0.0
    );
    // The replicas that answered did remove it.
    for server in &real {
        let direct = redstone::client::FastClient::connect(server.fast_addr())
            .await
            .unwrap();
        assert!(direct.get("gone").await.unwrap().is_none());
    }
}

/// What each of `servers` holds under `key`, read directly.
async fn held_by(servers: &[ServerHandle], key: &str) -> Vec<Option<Tensor>> {
    let mut out = Vec::new();
    for server in servers {
        let direct = redstone::client::FastClient::connect(server.fast_addr())
            .await
            .unwrap();
        out.push(direct.get(key).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_holding_another_value_is_a_conflict_not_an_acknowledgement() {
    let servers = nodes(3).await;
    let cluster = ClusterClient::new(config(&servers, 3, 2)).unwrap();
    let (v1, v2) = (tensor_for(10), tensor_for(11));
    // v1 sits on one replica (a put that raced, or an old value).
    let second = cluster.replicas_of("k")[1].to_owned();
    redstone::client::FastClient::connect(second.as_str())
        .await
        .unwrap()
        .put_tensor("k", v1.clone())
        .await
        .unwrap();
    assert!(matches!(
        cluster.put_tensor("k", v2.clone()).await,
        Err(ClientError::AlreadyExists(_))
    ));
    // The failed put took its value back: no replica serves v2.
    for held in held_by(&servers, "k").await {
        assert_ne!(held.as_ref(), Some(&v2));
    }
    let got = cluster.get("k").await.unwrap();
    assert!(got.is_none() || got == Some(v1.clone()), "{got:?}");
    // The same value again is the put-once AlreadyExists, and changes
    // nothing.
    let servers2 = nodes(3).await;
    let fresh = ClusterClient::new(config(&servers2, 3, 2)).unwrap();
    fresh.put_tensor("same", v1.clone()).await.unwrap();
    assert!(matches!(
        fresh.put_tensor("same", v1.clone()).await,
        Err(ClientError::AlreadyExists(_))
    ));
    assert_eq!(held_by(&servers2, "same").await, vec![Some(v1); 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_puts_of_different_values_at_most_one_is_acknowledged() {
    let servers = nodes(3).await;
    let a = ClusterClient::new(config(&servers, 3, 2)).unwrap();
    let b = ClusterClient::new(config(&servers, 3, 2)).unwrap();
    const KEYS: u64 = 100;
    // Each key's two puts start together, so they overlap.
    let mut acked_a = Vec::new();
    let mut acked_b = Vec::new();
    for i in 0..KEYS {
        let key = format!("race/{i}");
        let (ra, rb) = tokio::join!(
            a.put_tensor(&key, tensor_for(1000 + i)),
            b.put_tensor(&key, tensor_for(2000 + i))
        );
        acked_a.push(ra.is_ok());
        acked_b.push(rb.is_ok());
    }
    for i in 0..KEYS {
        let key = format!("race/{i}");
        let (va, vb) = (tensor_for(1000 + i), tensor_for(2000 + i));
        assert!(
            !(acked_a[i as usize] && acked_b[i as usize]),
            "{key}: both values acknowledged"
        );
        let winner = match (acked_a[i as usize], acked_b[i as usize]) {
            (true, _) => Some(&va),
            (_, true) => Some(&vb),
            _ => None,
        };
        for held in held_by(&servers, &key).await {
            assert!(
                held.is_none() || held.as_ref() == winner,
                "{key}: a replica serves a value that was not acknowledged"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_repair_racing_a_delete_does_not_bring_the_tensor_back() {
    let servers = nodes(2).await;
    // The replica that has the tensor answers slowly; the other never had it.
    let slow = slow_proxy(servers[0].fast_addr(), Duration::from_millis(300)).await;
    let empty = servers[1].fast_addr();
    let cluster = ClusterClient::new(ClusterConfig {
        replicas: 2,
        write_quorum: 1,
        timeout: Duration::from_secs(3),
        ..ClusterConfig::new(vec![empty.to_string(), slow.to_string()])
    })
    .unwrap();
    let key = key_first_on(&cluster, empty, "repair");
    redstone::client::FastClient::connect(servers[0].fast_addr())
        .await
        .unwrap()
        .put_tensor(&key, tensor_for(7))
        .await
        .unwrap();
    // The get asks the empty replica (NotFound), then waits on the slow
    // one; once the slow one has answered (its server counted the hit),
    // but before the reply gets through the proxy, the key is deleted
    // everywhere.
    let get = {
        let (cluster, key) = (cluster.clone(), key.clone());
        tokio::spawn(async move { cluster.get(&key).await })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while servers[0].engine().stats().hits == 0 {
        assert!(
            Instant::now() < deadline,
            "the get never reached the slow replica"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let direct = ClusterClient::new(ClusterConfig {
        replicas: 2,
        write_quorum: 1,
        ..ClusterConfig::new(vec![empty.to_string(), servers[0].fast_addr().to_string()])
    })
    .unwrap();
    assert!(direct.delete(&key).await.unwrap());
    // The get read the tensor before the delete; its read repair onto the
    // empty replica comes after, and must be refused.
    assert_eq!(get.await.unwrap().unwrap(), Some(tensor_for(7)));
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert_eq!(held_by(&servers, &key).await, vec![None, None]);
    }
    assert_eq!(cluster.get(&key).await.unwrap(), None);
    // A put right after a delete is not taken for a late write.
    direct.put_tensor(&key, tensor_for(8)).await.unwrap();
    assert!(direct.delete(&key).await.unwrap());
    direct.put_tensor(&key, tensor_for(9)).await.unwrap();
    assert_eq!(direct.get(&key).await.unwrap(), Some(tensor_for(9)));
}
