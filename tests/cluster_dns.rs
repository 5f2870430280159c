//! A cluster that follows a DNS name: servers on 127.0.0.2, 127.0.0.3, …
//! with one port, and a resolver the test controls (never the machine's
//! own /etc/hosts).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{cluster_metric as metric, pattern};
use redstone::client::{ClientError, FastClient};
use redstone::cluster::{ClusterClient, ClusterConfig, Resolver};
use redstone::server::{Config, Server, ServerHandle};
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
use redstone::tensor::Tensor;

/// What the test's resolver answers: addresses, or a failure.
#[derive(Clone)]
struct Answer(Arc<Mutex<Result<Vec<IpAddr>, std::io::ErrorKind>>>);

impl Answer {
    fn new(servers: &[ServerHandle]) -> Answer {
        let answer = Answer(Arc::new(Mutex::new(Ok(Vec::new()))));
        answer.set(servers);
        answer
    }

    fn set(&self, servers: &[ServerHandle]) {
        *self.0.lock().unwrap() = Ok(servers.iter().map(|s| s.fast_addr().ip()).collect());
    }

    fn fail(&self, kind: std::io::ErrorKind) {
        *self.0.lock().unwrap() = Err(kind);
    }

    fn empty(&self) {
        *self.0.lock().unwrap() = Ok(Vec::new());
    }

    fn resolver(&self) -> Resolver {
        let answer = self.clone();
        Arc::new(move |name: &str| {
            assert_eq!(name, "redstone.test");
            match &*answer.0.lock().unwrap() {
                Ok(ips) => Ok(ips.clone()),
                Err(kind) => Err(std::io::Error::from(*kind)),
            }
        })
    }
}

async fn server_at(addr: SocketAddr) -> std::io::Result<ServerHandle> {
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: addr,
        memory_limit: 64 << 20,
        ..Config::default()
    };
    match Server::bind(config).await {
        Ok(server) => Ok(server.spawn()),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// `n` servers on 127.0.0.2, 127.0.0.3, … sharing one free port.
async fn servers(n: u8) -> Vec<ServerHandle> {
    'port: for _ in 0..20 {
        let first = server_at("127.0.0.2:0".parse().unwrap()).await.unwrap();
        let port = first.fast_addr().port();
        let mut out = vec![first];
        for i in 1..n {
            let addr = SocketAddr::new(IpAddr::from([127, 0, 0, 2 + i]), port);
            match server_at(addr).await {
                Ok(server) => out.push(server),
                // Taken on that address by someone else: another port.
                Err(_) => continue 'port,
            }
        }
        return out;
    }
    panic!("no port free on 127.0.0.2..{}", 2 + n);
}

fn cluster(servers: &[ServerHandle], answer: &Answer, replicas: usize) -> ClusterClient {
    cluster_with(servers, answer, replicas, Duration::from_secs(60))
}

fn cluster_with(
    servers: &[ServerHandle],
    answer: &Answer,
    replicas: usize,
    grace: Duration,
) -> ClusterClient {
    let port = servers[0].fast_addr().port();
    let config = ClusterConfig {
        replicas,
        write_quorum: replicas,
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(300),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        refresh: Duration::from_millis(30),
        grace,
        ..ClusterConfig::from_arg(&format!("dns:redstone.test:{port}")).unwrap()
    };
    ClusterClient::with_resolver(config, answer.resolver()).unwrap()
}

fn tensor_for(i: u64) -> Tensor {
    let data = pattern(256 + (i as usize % 5) * 64, i);
    let meta =
        TensorMeta::new(DType::U8, vec![data.len() as u64], StorageLayout::RowMajor).unwrap();
    Tensor::new(meta, data).unwrap()
}

fn key(i: u64) -> String {
    format!("t{i}")
}

/// Uses the cluster until its node set is `servers` (a refresh happens
/// only while it is in use).
async fn wait_for_nodes(cluster: &ClusterClient, servers: &[ServerHandle]) {
    let mut want: Vec<String> = servers.iter().map(|s| s.fast_addr().to_string()).collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.nodes() != want {
        assert!(
            Instant::now() < deadline,
            "{:?} never became {want:?}",
            cluster.nodes()
        );
        cluster.get("any").await.ok();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn fill(cluster: &ClusterClient, n: u64) {
    for i in 0..n {
        cluster.put_tensor(&key(i), tensor_for(i)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_moves_a_quarter_of_the_keys_and_none_is_missed() {
    let mut all = servers(4).await;
    let answer = Answer::new(&all[..3]);
    let cluster = cluster(&all[..3], &answer, 1);
    const N: u64 = 800;
    fill(&cluster, N).await;
    let before: Vec<Vec<String>> = (0..N).map(|i| cluster.replicas_of(&key(i))).collect();
    assert_eq!(metric(&cluster, "redstone_cluster_nodes", &[]), 3.0);

    // Readers run through the change and must never miss.
    let stop = Arc::new(AtomicBool::new(false));
    let misses = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let (cluster, stop, misses) = (cluster.clone(), stop.clone(), misses.clone());
        async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let i = reads % N;
                match cluster.get(&key(i)).await {
                    Ok(Some(t)) => assert_eq!(t, tensor_for(i), "{}", key(i)),
                    _ => {
                        misses.fetch_add(1, Ordering::Relaxed);
                    }
                }
                reads += 1;
            }
            reads
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    answer.set(&all);
    wait_for_nodes(&cluster, &all).await;
    let new = all[3].fast_addr().to_string();
    let after: Vec<Vec<String>> = (0..N).map(|i| cluster.replicas_of(&key(i))).collect();
    let moved: Vec<u64> = (0..N)
        .filter(|&i| before[i as usize] != after[i as usize])
        .collect();
    assert!(
        moved.len() as f64 > N as f64 * 0.15 && (moved.len() as f64) < N as f64 * 0.35,
        "{} of {N} keys moved",
        moved.len()
    );
    assert!(
        moved.iter().all(|&i| after[i as usize] == [new.clone()]),
        "only onto the new node"
    );

    // Every key is readable right after the change, byte for byte.
    for i in 0..N {
        let got = cluster.get(&key(i)).await.unwrap();
        assert_eq!(got, Some(tensor_for(i)), "{}", key(i));
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.await.unwrap();
    assert!(reads > 0);
    assert_eq!(
        misses.load(Ordering::Relaxed),
        0,
        "misses among {reads} reads during the change"
    );

    // The moved keys were found on their previous replicas and repaired
    // onto the new node; reads of them stop going to the old placement.
    let from_previous = metric(
        &cluster,
        "redstone_cluster_previous_placement_reads_total",
        &[],
    );
    assert!(
        from_previous >= moved.len() as f64,
        "{from_previous} < {}",
        moved.len()
    );
    let newcomer = &all[3];
    let deadline = Instant::now() + Duration::from_secs(10);
    while newcomer.engine().stats().entries < moved.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "read repair never filled the new node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for &i in &moved {
        assert!(
            newcomer.engine().contains(&key(i)),
            "{} not repaired",
            key(i)
        );
        assert_eq!(cluster.get(&key(i)).await.unwrap(), Some(tensor_for(i)));
    }
    assert_eq!(
        metric(
            &cluster,
            "redstone_cluster_previous_placement_reads_total",
            &[]
        ),
        from_previous,
        "repaired keys are read from their new replica"
    );
    assert_eq!(
        metric(
            &cluster,
            "redstone_cluster_membership_changes_total",
            &[("change", "added")]
        ),
        4.0,
        "three at the first resolution, then one"
    );
    assert_eq!(metric(&cluster, "redstone_cluster_nodes", &[]), 4.0);

    // New writes go to the new placement.
    let fresh = (N..N + 1000)
        .find(|&i| cluster.replicas_of(&key(i)) == [new.clone()])
        .unwrap();
    cluster
        .put_tensor(&key(fresh), tensor_for(fresh))
        .await
        .unwrap();
    assert!(newcomer.engine().contains(&key(fresh)));
    for server in all.drain(..) {
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_with_two_replicas_loses_nothing() {
    let mut all = servers(4).await;
    let answer = Answer::new(&all);
    let cluster = cluster(&all, &answer, 2);
    const N: u64 = 400;
    fill(&cluster, N).await;
    let gone = all.remove(1);
    let gone_addr = gone.fast_addr().to_string();
    answer.set(&all);
    gone.shutdown().await.unwrap();
    wait_for_nodes(&cluster, &all).await;
    for i in 0..N {
        let got = cluster.get(&key(i)).await.unwrap();
        assert_eq!(got, Some(tensor_for(i)), "{}", key(i));
        assert!(!cluster.replicas_of(&key(i)).contains(&gone_addr));
    }
    assert_eq!(
        metric(
            &cluster,
            "redstone_cluster_membership_changes_total",
            &[("change", "removed")]
        ),
        1.0
    );
    // A delete of a key the removed node held is not refused for the node
    // that left, and the key stays deleted.
    let held: u64 = (0..N)
        .find(|&i| {
            let k = key(i);
            // Its replicas under the old set included the removed node.
            let mut four: Vec<String> = all.iter().map(|s| s.fast_addr().to_string()).collect();
            four.push(gone_addr.clone());
            four.sort();
            let ranked = redstone::cluster::placement::rank(&four, &k);
            ranked[..2].iter().any(|&j| four[j] == gone_addr)
        })
        .unwrap();
    assert!(cluster.delete(&key(held)).await.unwrap());
    assert_eq!(cluster.get(&key(held)).await.unwrap(), None);
    for server in all {
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_in_the_grace_period_reaches_the_previous_replicas() {
    let all = servers(3).await;
    let answer = Answer::new(&all[..2]);
    let cluster = cluster(&all[..2], &answer, 1);
    const N: u64 = 200;
    fill(&cluster, N).await;
    answer.set(&all);
    wait_for_nodes(&cluster, &all).await;
    let new = all[2].fast_addr().to_string();
    let moved: Vec<u64> = (0..N)
        .filter(|&i| cluster.replicas_of(&key(i)) == [new.clone()])
        .collect();
    assert!(!moved.is_empty());
    // Deleted before any read repaired them: only the old replica holds
    // them, and only the delete's reaching it keeps a get from finding them
    // there.
    for &i in &moved {
        assert!(
            cluster.delete(&key(i)).await.unwrap(),
            "{} was held",
            key(i)
        );
        assert_eq!(cluster.get(&key(i)).await.unwrap(), None, "{}", key(i));
    }
    for server in &all[..2] {
        for &i in &moved {
            assert!(!server.engine().contains(&key(i)));
        }
    }
    for server in all {
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_empty_resolution_keeps_the_last_good_set() {
    let all = servers(2).await;
    let answer = Answer::new(&all);
    // Nothing resolved yet and the name fails: a clear error, not a panic
    // or an empty cluster.
    answer.fail(std::io::ErrorKind::NotFound);
    let cluster = cluster(&all, &answer, 2);
    match cluster.get("k").await {
        Err(ClientError::Unavailable(why)) => assert!(why.contains("redstone.test"), "{why}"),
        other => panic!("{other:?}"),
    }
    answer.empty();
    assert!(matches!(
        cluster.put_tensor("k", tensor_for(1)).await,
        Err(ClientError::Unavailable(_))
    ));

    answer.set(&all);
    // A failure is repeated without resolving for min(refresh, 1 s).
    tokio::time::sleep(Duration::from_millis(50)).await;
    cluster.put_tensor("k", tensor_for(1)).await.unwrap();
    let good = cluster.nodes();
    assert_eq!(good.len(), 2);

    // Failures and empty answers after that keep the set: every call
    // still works.
    let failures = metric(&cluster, "redstone_cluster_resolve_failures_total", &[]);
    for broken in [0, 1] {
        if broken == 0 {
            answer.fail(std::io::ErrorKind::TimedOut);
        } else {
            answer.empty();
        }
        let start = metric(&cluster, "redstone_cluster_resolve_failures_total", &[]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(&cluster, "redstone_cluster_resolve_failures_total", &[]) < start + 2.0 {
            assert!(Instant::now() < deadline, "the name was not resolved again");
            assert_eq!(cluster.get("k").await.unwrap(), Some(tensor_for(1)));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(cluster.nodes(), good);
    }
    assert!(metric(&cluster, "redstone_cluster_resolve_failures_total", &[]) >= failures + 4.0);
    assert_eq!(
        metric(
            &cluster,
            "redstone_cluster_membership_changes_total",
            &[("change", "removed")]
        ),
        0.0
    );
    // Both nodes still hold what was put during the failures.
    cluster.put_tensor("k2", tensor_for(2)).await.unwrap();
    for server in &all {
        let direct = FastClient::connect(server.fast_addr()).await.unwrap();
        assert_eq!(direct.get("k2").await.unwrap(), Some(tensor_for(2)));
    }
    for server in all {
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_nodes_than_replicas_puts_every_key_on_every_node() {
    let all = servers(2).await;
    let answer = Answer::new(&all);
    let port = all[0].fast_addr().port();
    // The defaults for a name: R = W = 3, capped at the nodes there are.
    let config = ClusterConfig::from_arg(&format!("dns:redstone.test:{port}")).unwrap();
    assert_eq!((config.replicas, config.write_quorum), (3, 3));
    let cluster = ClusterClient::with_resolver(config, answer.resolver()).unwrap();
    cluster.put_tensor("k", tensor_for(7)).await.unwrap();
    for server in &all {
        assert!(server.engine().contains("k"));
    }
    for server in all {
        server.shutdown().await.unwrap();
    }
}

/// The first of `key`'s top `r` among `nodes` (addresses).
fn top(nodes: &[&ServerHandle], key: &str, r: usize) -> Vec<String> {
    let mut names: Vec<String> = nodes.iter().map(|s| s.fast_addr().to_string()).collect();
    names.sort();
    let ranked = redstone::cluster::placement::rank(&names, key);
    ranked[..r].iter().map(|&i| names[i].clone()).collect()
}

/// A key for which `pred` holds.
fn key_where(pred: impl Fn(&str) -> bool) -> String {
    (0..100_000)
        .map(|i| format!("k{i}"))
        .find(|k| pred(k))
        .expect("a key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_after_a_scale_out_is_refused_if_the_previous_replicas_hold_another_value() {
    let all = servers(4).await;
    let (old, new): (Vec<_>, Vec<_>) = (all.iter().take(2).collect(), all.iter().collect());
    // A key whose two replicas both change when two nodes join.
    let k = key_where(|k| {
        let (before, after) = (top(&old, k, 2), top(&new, k, 2));
        before.iter().all(|n| !after.contains(n))
    });
    let answer = Answer::new(&all[..2]);
    let cluster = cluster(&all[..2], &answer, 2);
    cluster.put_tensor(&k, tensor_for(1)).await.unwrap();
    answer.set(&all);
    wait_for_nodes(&cluster, &all).await;
    match cluster.put_tensor(&k, tensor_for(2)).await {
        Err(ClientError::AlreadyExists(_)) => {}
        other => panic!("put-once across the change: {other:?}"),
    }
    assert_eq!(cluster.get(&k).await.unwrap(), Some(tensor_for(1)));
    for server in all {
        assert_ne!(
            server.engine().get(&k).unwrap(),
            Some(tensor_for(2)),
            "the refused value is nowhere"
        );
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_resolves_before_it_deletes() {
    let all = servers(3).await;
    let (two, three): (Vec<_>, Vec<_>) = (all.iter().take(2).collect(), all.iter().collect());
    let k = key_where(|k| top(&two, k, 1) != top(&three, k, 1));
    let answer = Answer::new(&all[..2]);
    let busy = cluster(&all[..2], &answer, 1);
    let idle = cluster(&all[..2], &answer, 1);
    busy.put_tensor(&k, tensor_for(1)).await.unwrap();
    assert!(idle.get(&k).await.unwrap().is_some());

    answer.set(&all);
    wait_for_nodes(&busy, &all).await;
    // The busy client finds the key on its old replica and repairs it onto
    // the new one.
    assert!(busy.get(&k).await.unwrap().is_some());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all[2].engine().contains(&k) {
        assert!(Instant::now() < deadline, "no read repair");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The idle client's set is more than two refresh periods old: it
    // resolves again before deleting, so the delete reaches the new replica.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(idle.delete(&k).await.unwrap());
    assert_eq!(busy.get(&k).await.unwrap(), None);
    for server in all {
        assert!(!server.engine().contains(&k));
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_grace_a_copy_left_on_a_former_replica_is_deleted_and_blocks_a_put() {
    let all = servers(3).await;
    let (two, three): (Vec<_>, Vec<_>) = (all.iter().take(2).collect(), all.iter().collect());
    let moved = |k: &str| top(&two, k, 1) != top(&three, k, 1);
    let (k, j) = {
        let k = key_where(moved);
        let j = key_where(|j| j != k && moved(j));
        (k, j)
    };
    let answer = Answer::new(&all[..2]);
    let cluster = cluster_with(&all[..2], &answer, 1, Duration::from_millis(200));
    cluster.put_tensor(&k, tensor_for(1)).await.unwrap();
    cluster.put_tensor(&j, tensor_for(3)).await.unwrap();
    answer.set(&all);
    wait_for_nodes(&cluster, &all).await;
    // k is read in the grace: repaired onto the new node, and its copy
    // stays on the former replica.
    assert_eq!(cluster.get(&k).await.unwrap(), Some(tensor_for(1)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !all[2].engine().contains(&k) {
        assert!(Instant::now() < deadline, "no read repair");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // the grace is over
    assert!(cluster.delete(&k).await.unwrap());
    // j was not read: a get misses, but its value is still on the former
    // replica, and another value under j is refused.
    assert_eq!(cluster.get(&j).await.unwrap(), None);
    match cluster.put_tensor(&j, tensor_for(4)).await {
        Err(ClientError::AlreadyExists(_)) => {}
        other => panic!("a put over the copy left behind: {other:?}"),
    }
    // The new node leaves again: the former replica is k's and j's replica
    // once more. The delete reached it; j is the value first put.
    answer.set(&all[..2]);
    wait_for_nodes(&cluster, &all[..2]).await;
    assert_eq!(
        cluster.get(&k).await.unwrap(),
        None,
        "a deleted value came back"
    );
    assert_eq!(cluster.get(&j).await.unwrap(), Some(tensor_for(3)));
    for server in all {
        assert_ne!(server.engine().get(&j).unwrap(), Some(tensor_for(4)));
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_is_not_ok_while_a_node_of_the_set_cannot_be_reached() {
    let mut all = servers(3).await;
    let answer = Answer::new(&all);
    let cluster = cluster(&all, &answer, 1);
    let down = all[2].fast_addr().to_string();
    let k = key_where(|k| cluster_replica(&all, k) != down);
    cluster.put_tensor(&k, tensor_for(1)).await.unwrap();
    // A node that is not k's replica, but in the set (still in the name),
    // stops: it might hold a copy a change left there.
    all.pop().unwrap().shutdown().await.unwrap();
    match cluster.delete(&k).await {
        Err(ClientError::Quorum(why)) => assert!(why.contains(&down), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        cluster.get(&k).await.unwrap(),
        None,
        "its replica removed it"
    );
    // Once the name drops it, deletes are whole again.
    answer.set(&all);
    wait_for_nodes(&cluster, &all).await;
    assert!(!cluster.delete(&k).await.unwrap());
    for server in all {
        server.shutdown().await.unwrap();
    }
}

/// `key`'s replica among `servers` with R = 1.
fn cluster_replica(servers: &[ServerHandle], key: &str) -> String {
    let refs: Vec<&ServerHandle> = servers.iter().collect();
    top(&refs, key, 1).remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_replica_a_delete_missed_is_neither_read_nor_asked_in_the_grace() {
    let mut all = servers(3).await;
    let first_two: Vec<&ServerHandle> = all[..2].iter().collect();
    let a = all[0].fast_addr().to_string();
    let k = key_where(|k| top(&first_two, k, 1) == [a.clone()]);
    let answer = Answer::new(&all[..2]);
    let cluster = cluster(&all[..2], &answer, 1);
    cluster.put_tensor(&k, tensor_for(1)).await.unwrap();
    // A leaves the name; while it cannot be reached, the key is deleted:
    // A is an earlier replica that left, so the delete is Ok without it.
    answer.set(&all[1..]);
    wait_for_nodes(&cluster, &all[1..]).await;
    let a_addr = all[0].fast_addr();
    all.remove(0).shutdown().await.unwrap();
    assert!(matches!(cluster.delete(&k).await, Ok(false)));
    // A answers again, still holding the value (a partition healed).
    let back = server_at(a_addr).await.unwrap();
    back.engine().put(&k, tensor_for(1)).unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await; // past its backoff
    assert_eq!(cluster.get(&k).await.unwrap(), None, "read back from A");
    cluster.put_tensor(&k, tensor_for(2)).await.unwrap();
    assert_eq!(cluster.get(&k).await.unwrap(), Some(tensor_for(2)));
    back.shutdown().await.unwrap();
    for server in all {
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_refused_for_a_copy_elsewhere_is_never_readable() {
    let all = servers(2).await;
    let port = all[0].fast_addr().port();
    // A third node, slow to answer, holds another value under the key.
    let holder = server_at("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let slow = SocketAddr::new(IpAddr::from([127, 0, 0, 4]), port);
    common::slow_proxy_at(slow, holder.fast_addr(), Duration::from_millis(150)).await;
    let answer = Answer::new(&all);
    answer.0.lock().unwrap().as_mut().unwrap().push(slow.ip());
    let two: Vec<&ServerHandle> = all.iter().collect();
    let mut three: Vec<String> = two.iter().map(|s| s.fast_addr().to_string()).collect();
    three.push(slow.to_string());
    three.sort();
    // A key whose replica (R = 1) is one of the two quick nodes.
    let k = key_where(|k| {
        let ranked = redstone::cluster::placement::rank(&three, k);
        three[ranked[0]] != slow.to_string()
    });
    let replica = all
        .iter()
        .find(|s| top(&two, &k, 1) == [s.fast_addr().to_string()])
        .unwrap();
    holder.engine().put(&k, tensor_for(1)).unwrap();
    let cluster = cluster(&all, &answer, 1);
    let put = tokio::spawn({
        let (cluster, k) = (cluster.clone(), k.clone());
        async move { cluster.put_tensor(&k, tensor_for(2)).await }
    });
    // While the slow node is being asked, the replica has not been written.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !replica.engine().contains(&k),
        "the refused value was readable"
    );
    match put.await.unwrap() {
        Err(ClientError::AlreadyExists(_)) => {}
        other => panic!("{other:?}"),
    }
    assert!(!replica.engine().contains(&k));
    holder.shutdown().await.unwrap();
    for server in all {
        server.shutdown().await.unwrap();
    }
}
