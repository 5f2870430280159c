//! Which nodes are in the cluster: a fixed list, or every address a DNS
//! name resolves to.
//!
//! A `dns:NAME:PORT` cluster resolves the name on first use and again at
//! most every `refresh` while it is in use — in the background: requests
//! go on with the last good set. A failed resolution or an empty answer
//! keeps the last good set (logged once per run of failures). When the
//! set changes, the old set is kept as a *previous generation* for
//! `grace`, so that gets can still find keys on the replicas they had
//! before the change.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::metrics::ClusterMetrics;
use super::node::Node;
use super::placement;

/// Resolves a host name to its addresses. The default is the system's
/// resolver ([`system_resolver`]); give another to
/// [`ClusterClient::with_resolver`](super::ClusterClient::with_resolver)
/// (service discovery of your own, or a test). It runs on a blocking
/// thread, so it may block.
pub type Resolver = Arc<dyn Fn(&str) -> std::io::Result<Vec<IpAddr>> + Send + Sync>;

/// The system's resolver (`getaddrinfo`: `/etc/hosts`, then DNS).
pub fn system_resolver() -> Resolver {
    Arc::new(|name: &str| {
        Ok((name, 0)
            .to_socket_addrs()?
            .map(|a: SocketAddr| a.ip())
            .collect())
    })
}

/// How long a caller waits for a resolution it needs (the resolution goes
/// on in the background).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest grace period honoured.
pub(super) const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Earlier node sets kept at most, however fast the set changes.
const MAX_GENERATIONS: usize = 4;

/// The nodes at one moment, with the earlier sets still read from. Held in
/// an `Arc`: a request works on the set it began with.
#[derive(Debug, Default)]
pub(super) struct Members {
    /// The nodes, sorted by address. Empty only before a `dns:` name was
    /// first resolved.
    pub(super) nodes: Vec<Arc<Node>>,
    /// Earlier node sets, newest first, each until its grace ends.
    pub(super) previous: Vec<Generation>,
}

/// A node set that was replaced, read from until `until`.
#[derive(Debug, Clone)]
pub(super) struct Generation {
    pub(super) nodes: Vec<Arc<Node>>,
    pub(super) until: Instant,
}

impl Members {
    /// The nodes of a fixed list.
    pub(super) fn fixed(addrs: &[String], metrics: &ClusterMetrics) -> Members {
        Members {
            nodes: addrs
                .iter()
                .map(|a| Arc::new(Node::new(a.clone(), metrics)))
                .collect(),
            previous: Vec::new(),
        }
    }

    /// `key`'s replicas among `nodes`, best first: its top `replicas`, or
    /// every node when there are fewer.
    pub(super) fn replica_set(nodes: &[Arc<Node>], key: &str, replicas: usize) -> Vec<Arc<Node>> {
        let mut ranked = placement::rank_by(nodes, |n| n.addr.as_str(), key);
        ranked.truncate(replicas);
        ranked.into_iter().map(|i| Arc::clone(&nodes[i])).collect()
    }

    /// The earlier node sets still inside their grace.
    pub(super) fn previous(&self) -> impl Iterator<Item = &Generation> {
        let now = Instant::now();
        self.previous.iter().filter(move |g| g.until > now)
    }

    fn live_previous(&self) -> Vec<Generation> {
        self.previous().cloned().collect()
    }

    /// Every node this set knows: current and earlier.
    pub(super) fn all(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.nodes
            .iter()
            .chain(self.previous.iter().flat_map(|g| &g.nodes))
    }

    /// The set that follows this one when the nodes are `addrs` (sorted,
    /// distinct): nodes kept are the same `Node`s (connection and health
    /// go on), and this set becomes the newest earlier generation.
    fn next(&self, addrs: &[String], grace: Duration, metrics: &ClusterMetrics) -> Members {
        let known: HashMap<&str, &Arc<Node>> = self.all().map(|n| (n.addr.as_str(), n)).collect();
        let nodes = addrs
            .iter()
            .map(|a| match known.get(a.as_str()) {
                Some(node) => Arc::clone(node),
                None => Arc::new(Node::new(a.clone(), metrics)),
            })
            .collect();
        let mut previous = Vec::new();
        if !self.nodes.is_empty() && !grace.is_zero() {
            previous.push(Generation {
                nodes: self.nodes.clone(),
                until: Instant::now() + grace.min(MAX_GRACE),
            });
        }
        previous.extend(self.live_previous());
        previous.truncate(MAX_GENERATIONS);
        Members { nodes, previous }
    }
}

/// The node set of a cluster client, and for a `dns:` name, how it is
/// kept up to date.
#[derive(Debug)]
pub(super) struct Membership {
    shared: Arc<Shared>,
}

/// What the resolutions running in the background share with the client.
#[derive(Debug)]
struct Shared {
    current: RwLock<Arc<Members>>,
    dns: Option<Dns>,
    grace: Duration,
    metrics: ClusterMetrics,
}

/// A `dns:NAME:PORT` source and its resolutions.
struct Dns {
    name: String,
    port: u16,
    resolver: Resolver,
    refresh: Duration,
    /// A resolution is running (at most one: a resolver that hangs holds
    /// one blocking thread, not one per refresh).
    running: AtomicBool,
    /// Counts resolutions that ended, for callers waiting for one.
    ended: watch::Sender<u64>,
    /// How the last resolution ended.
    last: Mutex<Option<Attempt>>,
}

/// How a resolution ended.
#[derive(Debug, Clone)]
struct Attempt {
    at: Instant,
    error: Option<String>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dns({}:{})", self.name, self.port)
    }
}

impl Membership {
    /// A fixed node list.
    pub(super) fn fixed(addrs: &[String], metrics: &ClusterMetrics) -> Membership {
        metrics.set_nodes(addrs.len());
        Membership::with(
            Members::fixed(addrs, metrics),
            None,
            Duration::ZERO,
            metrics,
        )
    }

    /// The addresses of `name`, with `port`; resolved on first use.
    pub(super) fn dns(
        (name, port): (String, u16),
        resolver: Resolver,
        refresh: Duration,
        grace: Duration,
        metrics: &ClusterMetrics,
    ) -> Membership {
        let dns = Dns {
            name,
            port,
            resolver,
            refresh,
            running: AtomicBool::new(false),
            ended: watch::Sender::new(0),
            last: Mutex::new(None),
        };
        Membership::with(Members::default(), Some(dns), grace, metrics)
    }

    fn with(
        members: Members,
        dns: Option<Dns>,
        grace: Duration,
        metrics: &ClusterMetrics,
    ) -> Membership {
        Membership {
            shared: Arc::new(Shared {
                current: RwLock::new(Arc::new(members)),
                dns,
                grace,
                metrics: metrics.clone(),
            }),
        }
    }

    /// Whether the nodes follow a `dns:` name.
    pub(super) fn is_dns(&self) -> bool {
        self.shared.dns.is_some()
    }

    /// The node set as it is, without resolving anything.
    pub(super) fn now(&self) -> Arc<Members> {
        self.shared.now()
    }

    /// The node set to work on. A `dns:` name is resolved in the
    /// background once `refresh` has passed since the last resolution;
    /// a caller waits for the resolution (up to [`RESOLVE_TIMEOUT`]) only
    /// when there is no node set yet, or when the last resolution is more
    /// than two periods old (a client that was idle), and then goes on with
    /// the last good set if it fails.
    pub(super) async fn get(&self) -> Result<Arc<Members>, String> {
        let shared = &self.shared;
        let current = shared.now();
        let Some(dns) = &shared.dns else {
            return Ok(current);
        };
        let last = dns.last();
        let age = last.as_ref().map(|a| a.at.elapsed());
        let running = dns.running.load(Ordering::Acquire);
        if !current.nodes.is_empty() {
            match age {
                Some(age) if age < dns.refresh => return Ok(current),
                Some(age) if age < 2 * dns.refresh || running => {
                    Shared::start(shared);
                    return Ok(current);
                }
                _ => {}
            }
        } else if let Some(Attempt { error: Some(e), .. }) =
            last.filter(|a| a.at.elapsed() < dns.refresh.min(Duration::from_secs(1)))
        {
            // Failed a moment ago: not a resolution per request.
            return Err(dns.cannot(&e));
        }
        let mut ended = dns.ended.subscribe();
        let seen = *ended.borrow_and_update();
        Shared::start(shared);
        let waited = tokio::time::timeout(RESOLVE_TIMEOUT, ended.wait_for(|&n| n != seen))
            .await
            .map(|r| r.is_ok());
        let current = shared.now();
        if !current.nodes.is_empty() {
            return Ok(current);
        }
        Err(dns.cannot(&match (waited, dns.last()) {
            (Ok(_), Some(Attempt { error: Some(e), .. })) => e,
            _ => format!("no answer in {RESOLVE_TIMEOUT:?}"),
        }))
    }
}

impl Shared {
    fn now(&self) -> Arc<Members> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Starts a resolution in the background unless one is running.
    fn start(shared: &Arc<Shared>) {
        let Some(dns) = &shared.dns else { return };
        if dns
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let weak = Arc::downgrade(shared);
        let (resolver, name, port) = (Arc::clone(&dns.resolver), dns.name.clone(), dns.port);
        // Ends the attempt even if the task is dropped, polled or not (its
        // runtime shutting down), so that a later one can start.
        let end = AttemptEnd {
            shared: weak.clone(),
            outcome: None,
        };
        tokio::spawn(async move {
            // The whole guard moves into the task (not just the field set
            // below), so it is dropped with the task.
            let mut end = end;
            let lookup = tokio::task::spawn_blocking(move || resolver(&name)).await;
            let result = nodes_of(lookup, port);
            let Some(shared) = weak.upgrade() else { return };
            shared.resolved(&result);
            end.outcome = Some(result.err());
        });
    }

    /// Takes a resolution's result: logs and counts a failure (the first
    /// of a run logged), or makes the nodes found the set.
    fn resolved(&self, result: &Result<Vec<String>, String>) {
        let Some(dns) = &self.dns else { return };
        let was_failing = dns.last().is_some_and(|a| a.error.is_some());
        match result {
            Ok(addrs) => {
                if was_failing {
                    tracing::info!(name = %dns.name, "the cluster's name resolves again");
                }
                self.update(addrs);
            }
            Err(e) => {
                self.metrics.resolve_failure();
                if !was_failing {
                    tracing::warn!(name = %dns.name, "cannot resolve the cluster's name ({e}); keeping the last node set");
                }
                // Earlier sets whose grace ended go even while the name
                // does not resolve.
                let nodes: Vec<String> = self.now().nodes.iter().map(|n| n.addr.clone()).collect();
                if !nodes.is_empty() {
                    self.update(&nodes);
                }
            }
        }
    }

    /// Makes `addrs` the node set if it differs from the current one (and
    /// drops earlier sets whose grace ended); logs and counts what changed.
    fn update(&self, addrs: &[String]) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let old: Vec<&str> = current.nodes.iter().map(|n| n.addr.as_str()).collect();
        let now = Instant::now();
        let expired = current.previous.iter().any(|g| g.until <= now);
        if old == addrs && !expired {
            return;
        }
        let next = if old == addrs {
            Members {
                nodes: current.nodes.clone(),
                previous: current.live_previous(),
            }
        } else {
            let added: Vec<&str> = addrs
                .iter()
                .map(String::as_str)
                .filter(|a| !old.contains(a))
                .collect();
            let removed: Vec<&str> = old
                .iter()
                .copied()
                .filter(|a| !addrs.iter().any(|n| n == a))
                .collect();
            self.metrics
                .membership_change(added.len(), removed.len(), addrs.len());
            if old.is_empty() {
                tracing::info!(nodes = ?addrs, "cluster nodes resolved");
            } else {
                tracing::info!(
                    ?added,
                    ?removed,
                    nodes = addrs.len(),
                    "cluster membership changed"
                );
            }
            current.next(addrs, self.grace, &self.metrics)
        };
        // Nodes in no set any more: their connections close with the last
        // request using them, and their metric series go.
        let kept: HashSet<&str> = next.all().map(|n| n.addr.as_str()).collect();
        for node in current.all() {
            if !kept.contains(node.addr.as_str()) {
                self.metrics.forget(&node.addr);
            }
        }
        *current = Arc::new(next);
    }
}

/// Records the end of a resolution when dropped.
struct AttemptEnd {
    shared: Weak<Shared>,
    /// `Some(error or not)` once the resolver answered; `None` if the task
    /// was dropped first (not an answer about the name).
    outcome: Option<Option<String>>,
}

impl Drop for AttemptEnd {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let Some(dns) = &shared.dns else { return };
        if let Some(error) = self.outcome.take() {
            *dns.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Attempt {
                at: Instant::now(),
                error,
            });
        }
        dns.running.store(false, Ordering::Release);
        dns.ended.send_modify(|n| *n += 1);
    }
}

impl Dns {
    fn last(&self) -> Option<Attempt> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn cannot(&self, why: &str) -> String {
        format!("no cluster nodes: cannot resolve {:?}: {why}", self.name)
    }
}

/// The nodes a resolver's answer stands for: `ADDR:PORT`, sorted,
/// distinct. A dual-stack answer counts each server once: IPv4 addresses
/// when there are any (IPv4-mapped IPv6 ones included), else IPv6. No
/// address at all is a failure, not an empty cluster.
fn nodes_of(
    lookup: Result<std::io::Result<Vec<IpAddr>>, tokio::task::JoinError>,
    port: u16,
) -> Result<Vec<String>, String> {
    let ips: Vec<IpAddr> = match lookup {
        Err(e) => return Err(format!("the resolver failed: {e}")),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(ips)) => ips.into_iter().map(|ip| ip.to_canonical()).collect(),
    };
    let v4 = ips.iter().any(IpAddr::is_ipv4);
    let mut addrs: Vec<String> = ips
        .into_iter()
        .filter(|ip| ip.is_ipv4() == v4)
        .map(|ip| SocketAddr::new(ip, port).to_string())
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err("no addresses".into());
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn addrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A resolver answering what `answer` holds, counting its calls, and
    /// holding each call while `hold` is set.
    #[derive(Clone, Default)]
    struct Fake {
        answer: Arc<Mutex<Vec<IpAddr>>>,
        calls: Arc<AtomicUsize>,
        hold: Arc<AtomicBool>,
    }

    impl Fake {
        fn resolver(&self) -> Resolver {
            let fake = self.clone();
            Arc::new(move |_name| {
                fake.calls.fetch_add(1, Ordering::SeqCst);
                while fake.hold.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(fake.answer.lock().unwrap().clone())
            })
        }

        fn set(&self, ips: &[[u8; 4]]) {
            *self.answer.lock().unwrap() = ips.iter().map(|&ip| IpAddr::from(ip)).collect();
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    fn membership(fake: &Fake, refresh: Duration, grace: Duration) -> Membership {
        let metrics = ClusterMetrics::default();
        Membership::dns(("svc".into(), 7), fake.resolver(), refresh, grace, &metrics)
    }

    #[test]
    fn a_change_keeps_nodes_and_the_old_set_for_the_grace() {
        let fake = Fake::default();
        let m = membership(&fake, Duration::from_secs(1), Duration::from_secs(60));
        let shared = &m.shared;
        shared.update(&addrs(&["a:1", "b:1"]));
        let first = m.now();
        assert!(first.previous.is_empty(), "the first set replaces nothing");
        shared.update(&addrs(&["a:1", "b:1"]));
        assert!(Arc::ptr_eq(&first, &m.now()), "no change, no new set");

        shared.update(&addrs(&["b:1", "c:1"]));
        let second = m.now();
        assert!(
            Arc::ptr_eq(&first.nodes[1], &second.nodes[0]),
            "b is the same node"
        );
        let previous: Vec<_> = second.previous().collect();
        assert_eq!((previous.len(), previous[0].nodes.len()), (1, 2));

        // A node that left and came back within the grace is the same node.
        shared.update(&addrs(&["a:1", "c:1"]));
        let third = m.now();
        assert!(Arc::ptr_eq(&first.nodes[0], &third.nodes[0]));
        assert_eq!(third.previous().count(), 2);

        for i in 0..10 {
            shared.update(&addrs(&[&format!("n{i}:1")]));
        }
        assert_eq!(m.now().previous.len(), MAX_GENERATIONS);
    }

    #[test]
    fn earlier_sets_go_when_their_grace_ends_and_so_do_their_metrics() {
        let fake = Fake::default();
        let m = membership(&fake, Duration::from_secs(1), Duration::from_millis(50));
        let shared = &m.shared;
        shared.update(&addrs(&["a:1", "b:1"]));
        shared.update(&addrs(&["b:1"]));
        let a = Arc::clone(&m.now().previous[0].nodes[0]);
        assert_eq!(a.addr, "a:1");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(m.now().previous().count(), 0, "the grace is over");
        // A refresh that finds the same nodes drops the expired set.
        shared.update(&addrs(&["b:1"]));
        assert!(m.now().previous.is_empty());
        assert_eq!(Arc::strong_count(&a), 1, "nothing holds the node that left");
        let mut registry = prometheus_client::registry::Registry::default();
        shared.metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("node=\"b:1\""), "{text}");
        assert!(!text.contains("node=\"a:1\""), "{text}");
    }

    #[test]
    fn answers_are_sorted_distinct_one_family_and_never_empty() {
        let ips = |list: &[&str]| -> std::io::Result<Vec<IpAddr>> {
            Ok(list.iter().map(|s| s.parse().unwrap()).collect())
        };
        let nodes = |list: &[&str]| nodes_of(Ok(ips(list)), 7);
        assert_eq!(
            nodes(&["127.0.0.3", "127.0.0.2", "127.0.0.3"]).unwrap(),
            ["127.0.0.2:7", "127.0.0.3:7"]
        );
        // Dual stack: one server, one node.
        assert_eq!(
            nodes(&["::1", "127.0.0.2", "::ffff:127.0.0.2"]).unwrap(),
            ["127.0.0.2:7"]
        );
        assert_eq!(nodes(&["::2", "::1"]).unwrap(), ["[::1]:7", "[::2]:7"]);
        assert!(nodes(&[]).is_err());
        assert!(nodes_of(Ok(Err(std::io::ErrorKind::NotFound.into())), 7).is_err());
    }

    #[tokio::test]
    async fn the_system_resolver_knows_localhost() {
        let lookup = tokio::task::spawn_blocking(|| system_resolver()("localhost")).await;
        let nodes = nodes_of(Ok(lookup.unwrap()), 9).unwrap();
        assert!(
            nodes.iter().any(|n| n == "127.0.0.1:9" || n == "[::1]:9"),
            "{nodes:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_resolution_per_period_and_none_per_request() {
        let fake = Fake::default();
        fake.set(&[[127, 0, 0, 2]]);
        let m = membership(&fake, Duration::from_millis(200), Duration::from_secs(60));
        for _ in 0..50 {
            assert_eq!(m.get().await.unwrap().nodes.len(), 1);
        }
        assert_eq!(fake.calls(), 1, "the first resolution starts the period");
        tokio::time::sleep(Duration::from_millis(250)).await;
        fake.set(&[[127, 0, 0, 2], [127, 0, 0, 3]]);
        // Due: this call starts one in the background and goes on.
        assert_eq!(m.get().await.unwrap().nodes.len(), 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while m.now().nodes.len() != 2 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(fake.calls(), 2);

        // An empty answer before any set: one resolution, then fast failures.
        let empty = Fake::default();
        let m = membership(&empty, Duration::from_secs(60), Duration::from_secs(60));
        for _ in 0..20 {
            let e = m.get().await.unwrap_err();
            assert!(e.contains("\"svc\"") && e.contains("no addresses"), "{e}");
        }
        assert_eq!(empty.calls(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_resolver_holds_one_thread_and_callers_go_on() {
        let fake = Fake::default();
        fake.set(&[[127, 0, 0, 2]]);
        let m = membership(&fake, Duration::from_millis(20), Duration::from_secs(60));
        m.get().await.unwrap();
        fake.hold.store(true, Ordering::SeqCst);
        // Past one period: this call starts a resolution, which hangs.
        tokio::time::sleep(Duration::from_millis(30)).await;
        m.get().await.unwrap();
        // Long past two periods: callers would wait for a resolution, but
        // one is running already (hung): they go on with the last set.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        for _ in 0..20 {
            assert_eq!(m.get().await.unwrap().nodes.len(), 1);
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(fake.calls(), 2, "one resolution at a time");
        fake.hold.store(false, Ordering::SeqCst);
    }

    #[test]
    fn a_resolution_cut_by_its_runtime_lets_the_next_one_run() {
        let fake = Fake::default();
        fake.set(&[[127, 0, 0, 2]]);
        fake.hold.store(true, Ordering::SeqCst);
        let m = membership(&fake, Duration::from_millis(10), Duration::from_secs(60));
        let first = tokio::runtime::Runtime::new().unwrap();
        first.block_on(async {
            let _ = tokio::time::timeout(Duration::from_millis(50), m.get()).await;
        });
        let releaser = {
            let fake = fake.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                fake.hold.store(false, Ordering::SeqCst);
            })
        };
        drop(first);
        releaser.join().unwrap();
        let second = tokio::runtime::Runtime::new().unwrap();
        let nodes = second.block_on(async { m.get().await.map(|m| m.nodes.len()) });
        assert_eq!(nodes, Ok(1));
    }

    #[test]
    fn a_resolution_never_polled_lets_the_next_one_run() {
        let fake = Fake::default();
        fake.set(&[[127, 0, 0, 2]]);
        let m = membership(&fake, Duration::from_millis(10), Duration::from_secs(60));
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Spawned on a runtime that stops before it polls the task.
        first.block_on(async { Shared::start(&m.shared) });
        drop(first);
        assert_eq!(fake.calls(), 0);
        let second = tokio::runtime::Runtime::new().unwrap();
        let nodes = second.block_on(async { m.get().await.map(|m| m.nodes.len()) });
        assert_eq!(nodes, Ok(1));
    }
}
