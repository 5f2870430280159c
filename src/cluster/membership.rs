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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

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

/// How long one resolution may take before it counts as failed.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

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
#[derive(Debug)]
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
                until: Instant::now() + grace,
            });
        }
        let now = Instant::now();
        previous.extend(
            self.previous
                .iter()
                .filter(|g| g.until > now)
                .map(|g| Generation {
                    nodes: g.nodes.clone(),
                    until: g.until,
                }),
        );
        previous.truncate(MAX_GENERATIONS);
        Members { nodes, previous }
    }
}

/// A `dns:NAME:PORT` source and its refresh state.
pub(super) struct Dns {
    name: String,
    port: u16,
    resolver: Resolver,
    refresh: Duration,
    /// When the next background resolution is due.
    next: Mutex<Instant>,
    /// A resolution is running.
    running: AtomicBool,
    /// The last resolution failed (to log a run of failures once).
    failing: AtomicBool,
    /// One first resolution at a time, for callers that wait for it.
    first: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dns({}:{})", self.name, self.port)
    }
}

impl Dns {
    pub(super) fn new(name: String, port: u16, resolver: Resolver, refresh: Duration) -> Dns {
        Dns {
            name,
            port,
            resolver,
            refresh,
            next: Mutex::new(Instant::now()),
            running: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            first: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// Whether a background resolution should start now; if so, it is
    /// marked running and the caller must call [`Dns::done`].
    pub(super) fn due(&self) -> bool {
        let next = *self.next.lock().unwrap_or_else(PoisonError::into_inner);
        Instant::now() >= next
            && self
                .running
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// A background resolution ended: the next is due a refresh from now.
    pub(super) fn done(&self) {
        *self.next.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now() + self.refresh;
        self.running.store(false, Ordering::Release);
    }

    /// The nodes the name stands for now: `ADDR:PORT`, sorted, distinct.
    /// No address at all is a failure, not an empty cluster.
    pub(super) async fn resolve(&self) -> Result<Vec<String>, String> {
        let (resolver, name) = (Arc::clone(&self.resolver), self.name.clone());
        let lookup = tokio::task::spawn_blocking(move || resolver(&name));
        let ips = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Err(_) => return Err(format!("no answer in {RESOLVE_TIMEOUT:?}")),
            Ok(Err(e)) => return Err(format!("the resolver failed: {e}")),
            Ok(Ok(Err(e))) => return Err(e.to_string()),
            Ok(Ok(Ok(ips))) => ips,
        };
        let mut addrs: Vec<String> = ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, self.port).to_string())
            .collect();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Err("no addresses".into());
        }
        Ok(addrs)
    }

    /// Notes a resolution's outcome; logs the first failure of a run and
    /// the recovery after one.
    pub(super) fn outcome(&self, result: &Result<Vec<String>, String>, metrics: &ClusterMetrics) {
        match result {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(name = %self.name, "the cluster's name resolves again");
                }
            }
            Err(e) => {
                metrics.resolve_failure();
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(name = %self.name, "cannot resolve the cluster's name ({e}); keeping the last node set");
                }
            }
        }
    }

    /// Waits for the one first resolution in progress, if any.
    pub(super) async fn first(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.first.lock().await
    }
}

/// The current node set, swapped whole when it changes.
#[derive(Debug, Default)]
pub(super) struct Current(RwLock<Arc<Members>>);

impl Current {
    pub(super) fn new(members: Members) -> Current {
        Current(RwLock::new(Arc::new(members)))
    }

    pub(super) fn get(&self) -> Arc<Members> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Makes `addrs` the node set, if it differs from the current one;
    /// logs and counts what changed.
    pub(super) fn update(&self, addrs: &[String], grace: Duration, metrics: &ClusterMetrics) {
        let mut current = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let old: Vec<&str> = current.nodes.iter().map(|n| n.addr.as_str()).collect();
        if old == addrs {
            return;
        }
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
        metrics.membership_change(added.len(), removed.len(), addrs.len());
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
        let next = current.next(addrs, grace, metrics);
        *current = Arc::new(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_change_keeps_nodes_and_the_old_set_for_the_grace() {
        let metrics = ClusterMetrics::default();
        let current = Current::default();
        current.update(&addrs(&["a:1", "b:1"]), Duration::from_secs(60), &metrics);
        let first = current.get();
        assert!(first.previous.is_empty(), "the first set replaces nothing");
        current.update(&addrs(&["a:1", "b:1"]), Duration::from_secs(60), &metrics);
        assert!(Arc::ptr_eq(&first, &current.get()), "no change, no new set");

        current.update(&addrs(&["b:1", "c:1"]), Duration::from_secs(60), &metrics);
        let second = current.get();
        assert!(
            Arc::ptr_eq(&first.nodes[1], &second.nodes[0]),
            "b is the same node"
        );
        let previous: Vec<_> = second.previous().collect();
        assert_eq!(previous.len(), 1);
        assert_eq!(previous[0].nodes.len(), 2);

        // A node that left and came back within the grace is the same node.
        current.update(&addrs(&["a:1", "c:1"]), Duration::from_secs(60), &metrics);
        let third = current.get();
        assert!(Arc::ptr_eq(&first.nodes[0], &third.nodes[0]));
        assert_eq!(third.previous().count(), 2);

        for i in 0..10 {
            current.update(
                &addrs(&[&format!("n{i}:1")]),
                Duration::from_secs(60),
                &metrics,
            );
        }
        assert_eq!(current.get().previous.len(), MAX_GENERATIONS);

        current.update(&addrs(&["x:1"]), Duration::ZERO, &metrics);
        let last = current.get();
        assert_eq!(last.previous().count(), MAX_GENERATIONS);
        assert_eq!(
            last.previous[0].nodes[0].addr, "n8:1",
            "no grace: the replaced set (n9) is not kept, older ones are"
        );
    }

    #[tokio::test]
    async fn resolution_sorts_dedups_and_refuses_an_empty_answer() {
        let answer = Arc::new(Mutex::new(Ok(vec![
            "127.0.0.3".parse::<IpAddr>().unwrap(),
            "127.0.0.2".parse().unwrap(),
            "127.0.0.3".parse().unwrap(),
            "::1".parse().unwrap(),
        ])));
        let resolver: Resolver = {
            let answer = Arc::clone(&answer);
            Arc::new(move |name| {
                assert_eq!(name, "svc");
                match &*answer.lock().unwrap() {
                    Ok(ips) => Ok(ips.clone()),
                    Err(kind) => Err(std::io::Error::from(*kind)),
                }
            })
        };
        let dns = Dns::new("svc".into(), 7, resolver, Duration::from_secs(5));
        assert_eq!(
            dns.resolve().await.unwrap(),
            ["127.0.0.2:7", "127.0.0.3:7", "[::1]:7"]
        );
        *answer.lock().unwrap() = Ok(Vec::new());
        assert!(dns.resolve().await.is_err());
        *answer.lock().unwrap() = Err(std::io::ErrorKind::NotFound);
        assert!(dns.resolve().await.is_err());
    }

    #[tokio::test]
    async fn the_system_resolver_knows_localhost() {
        let dns = Dns::new(
            "localhost".into(),
            9,
            system_resolver(),
            Duration::from_secs(5),
        );
        let nodes = dns.resolve().await.unwrap();
        assert!(
            nodes.iter().any(|n| n == "127.0.0.1:9" || n == "[::1]:9"),
            "{nodes:?}"
        );
    }

    #[test]
    fn a_refresh_is_due_once_per_period() {
        let dns = Dns::new("svc".into(), 7, system_resolver(), Duration::from_secs(60));
        assert!(dns.due());
        assert!(!dns.due(), "one runs at a time");
        dns.done();
        assert!(!dns.due(), "not again before the period");
    }
}
