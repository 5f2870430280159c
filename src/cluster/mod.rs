//! The cluster lives in the client: every server is a plain single-node
//! cache, and [`ClusterClient`] decides where each key goes.
//!
//! - `placement`: rendezvous hashing; a key's replica set is its top R
//!   nodes.
//! - `config`: [`ClusterConfig`], from a node list, a `dns:` name or a
//!   TOML file.
//! - `membership`: the node set — fixed, or what a DNS name resolves to,
//!   re-resolved while in use — and the earlier sets still read from.
//! - `node`: one node's connection and health (backoff while down).
//! - `read`: what the replicas asked during one get have answered.
//! - `metrics`: per-node requests, failures and marked-down events, read
//!   repairs, hedges and quorum failures
//!   ([`ClusterClient::register_metrics`]).
//!
//! Tensors are immutable, so a replica has the tensor or it does not — or,
//! when two puts race, another value: a put writes all R replicas at once,
//! compares content digests where a replica already holds the key, and
//! succeeds when W acknowledge and none holds another value; a failed put
//! takes its value back (`DELETE_IF` its digest). A get asks the replicas in placement order, skipping
//! nodes marked down, and falls over to the next on a timeout, a connection
//! error or `NotFound`; when a replica missed a tensor another had, the
//! client writes it back in the background (read repair). A node that fails
//! is skipped for a backoff that doubles with each failure, then tried
//! again: it rejoins by answering.
//!
//! With a `dns:NAME:PORT` node list, the set follows the name. Writes go to
//! the new placement; for a grace period after a change, a get that misses
//! on a key's new replicas asks its replicas under the earlier set and
//! repairs the new ones from what it finds, and a delete reaches them too.

mod config;
mod membership;
mod metrics;
mod node;
pub mod placement;
mod read;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::task::JoinSet;

use config::NodeSource;
pub use config::{ClusterConfig, ConfigError};
pub use membership::{system_resolver, Resolver};
use membership::{Members, Membership};
use metrics::ClusterMetrics;
use node::{is_node_failure, Node};
use read::{ReadResult, Reads};

use crate::client::{ClientError, TensorStore, L1};
use crate::engine::unix_micros;
use crate::fast::{FastClient, FastClientOptions};
use crate::stats::{Counters, Stats};
use crate::tensor::codec::{Compression, Encoding};
use crate::tensor::Tensor;
use crate::Error;

#[derive(Debug)]
struct Inner {
    members: Membership,
    config: ClusterConfig,
    metrics: ClusterMetrics,
    l1: Option<L1>,
}

/// One node's health and counters, from [`ClusterClient::node_stats`].
#[derive(Debug)]
pub struct NodeStats {
    /// The node's address.
    pub addr: String,
    /// Whether the client currently considers it up.
    pub up: bool,
    /// Its counters, or why they could not be read.
    pub stats: Result<Stats, ClientError>,
}

/// A client of a Redstone cluster: consistent-hash placement, replication
/// and failover over the fast path. Cheap to clone.
///
/// ```no_run
/// use redstone::cluster::{ClusterClient, ClusterConfig};
/// use redstone::client::TensorStore;
/// use redstone::tensor::Tensor;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let nodes = ClusterConfig::parse_nodes("127.0.0.1:50052,127.0.0.1:50062,127.0.0.1:50072")?;
/// let cluster = ClusterClient::new(ClusterConfig::new(nodes))?;
/// cluster.put_tensor("w", Tensor::from_slice::<f32>(vec![2], &[1.0, 2.0])?).await?;
/// assert!(cluster.get("w").await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClusterClient {
    inner: Arc<Inner>,
}

impl ClusterClient {
    /// A client for the nodes of `config`. Connections are made (and a
    /// `dns:` name is resolved) on first use, so this succeeds even while
    /// nodes are down.
    pub fn new(config: ClusterConfig) -> Result<ClusterClient, ConfigError> {
        ClusterClient::with_resolver(config, system_resolver())
    }

    /// [`new`](Self::new), resolving a `dns:` name with `resolver` instead
    /// of the system's.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use redstone::cluster::{ClusterClient, ClusterConfig, Resolver};
    ///
    /// // Service discovery of your own: the pods' addresses.
    /// let pods: Resolver = Arc::new(|_name| Ok(vec![[10, 0, 0, 7].into(), [10, 0, 0, 9].into()]));
    /// let config = ClusterConfig::from_arg("dns:redstone:50052")?;
    /// let cluster = ClusterClient::with_resolver(config, pods)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_resolver(
        config: ClusterConfig,
        resolver: Resolver,
    ) -> Result<ClusterClient, ConfigError> {
        config.validate()?;
        let metrics = ClusterMetrics::default();
        let members = match config.source()? {
            NodeSource::List => Membership::fixed(&config.nodes, &metrics),
            NodeSource::Dns { name, port } => Membership::dns(
                (name, port),
                resolver,
                config.refresh,
                config.grace,
                &metrics,
            ),
        };
        Ok(ClusterClient {
            inner: Arc::new(Inner {
                members,
                l1: config.l1.as_ref().map(L1::new),
                config,
                metrics,
            }),
        })
    }

    /// Registers this client's metrics in `registry`, for the application
    /// to serve with its own (per node: `redstone_cluster_node_requests`,
    /// `_node_failures`, `_node_marked_down`; `redstone_cluster_read_repairs`
    /// by outcome, `_hedged_reads`, `_quorum_failures` by op). Every clone
    /// of the client counts into them.
    ///
    /// ```
    /// use prometheus_client::registry::Registry;
    /// use redstone::cluster::{ClusterClient, ClusterConfig};
    ///
    /// let cluster = ClusterClient::new(ClusterConfig::new(vec!["10.0.0.1:50052".into()]))?;
    /// let mut registry = Registry::default();
    /// cluster.register_metrics(&mut registry);
    /// let mut text = String::new();
    /// prometheus_client::encoding::text::encode(&mut text, &registry)?;
    /// assert!(text.contains("redstone_cluster_node_requests_total{node=\"10.0.0.1:50052\"} 0"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner.metrics.register(registry);
        if let Some(l1) = &self.inner.l1 {
            l1.register_metrics(registry);
        }
    }

    /// The client's L1 cache ([`ClusterConfig::l1`]), if it has one.
    pub fn l1(&self) -> Option<&L1> {
        self.inner.l1.as_ref()
    }

    /// The configuration in use.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// The addresses of `key`'s replicas, best first, among the nodes
    /// known now (none before a `dns:` name's first resolution).
    pub fn replicas_of(&self, key: &str) -> Vec<String> {
        let members = self.inner.members.now();
        self.inner
            .replica_set(&members, key)
            .iter()
            .map(|n| n.addr.clone())
            .collect()
    }

    /// The nodes' addresses now (a `dns:` name's, as last resolved; none
    /// before its first resolution).
    pub fn nodes(&self) -> Vec<String> {
        let members = self.inner.members.now();
        members.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Stores `tensor` on all of `key`'s replicas at once and waits for
    /// every one to answer (or time out); succeeds when W acknowledged and
    /// none holds another value.
    ///
    /// A replica that already holds the key acknowledges only if it holds
    /// this very tensor (same [`Tensor::digest`]); if every
    /// acknowledgement is of that kind, the put is
    /// [`ClientError::AlreadyExists`], as on one node. A replica holding
    /// another value is a conflict: this put lost a race (or the key was
    /// put before with other contents), and it fails with `AlreadyExists`.
    /// A put that fails takes its value back from every replica it may
    /// have reached, so it never stays readable. With W > R/2 (the
    /// default W = R), of two puts of different values under one key at
    /// most one succeeds. A put that began before a delete of the key
    /// reached a replica fails with [`ClientError::Deleted`].
    ///
    /// With a `dns:` name, W is at most the number of nodes, and every
    /// other node of the set (and the key's replicas under earlier sets, in
    /// the grace period) is asked too: one holding another value — a copy a
    /// change left behind, which gets may not see — makes the put
    /// `AlreadyExists` (delete the key to clear it). A node that cannot be
    /// asked (down) is not counted. After a change, a put of the very
    /// tensor an earlier replica holds stores it on the new replicas and
    /// returns `Ok`. Two clients that see different node sets (for up to a
    /// refresh period after a change) can each place a different value
    /// under one key.
    pub async fn put_tensor(&self, key: &str, tensor: Tensor) -> Result<(), ClientError> {
        let raw = (tensor.encoding() == Encoding::Raw).then(|| tensor.clone());
        self.put_keeping(key, tensor, raw).await
    }

    /// [`put_tensor`](Self::put_tensor), compressed as `compression` says
    /// ([`FastClient::put_with`]): compressed once here, the same bytes
    /// sent to every replica.
    pub async fn put_with(
        &self,
        key: &str,
        tensor: Tensor,
        compression: Compression,
    ) -> Result<(), ClientError> {
        let raw = (tensor.encoding() == Encoding::Raw).then(|| tensor.clone());
        self.put_keeping(key, compression.apply(&tensor), raw).await
    }

    async fn put_keeping(
        &self,
        key: &str,
        tensor: Tensor,
        raw: Option<Tensor>,
    ) -> Result<(), ClientError> {
        let epoch = self.inner.l1.as_ref().map(L1::epoch);
        // On a task of its own, so that a caller who stops waiting (a
        // timeout around this call) does not cancel the take-back of a
        // failed put halfway.
        let inner = Arc::clone(&self.inner);
        let put = tokio::spawn(inner.put(key.to_owned(), tensor))
            .await
            .unwrap_or_else(|e| Err(ClientError::Protocol(format!("put task failed: {e}"))));
        if let (Some(l1), Some(epoch)) = (&self.inner.l1, epoch) {
            match &put {
                Ok(()) => l1.put_done(key, raw, epoch),
                // A failed put takes its value back from the replicas it
                // reached (a delete of its own): a get that read it
                // meanwhile must not keep it.
                Err(_) => l1.invalidate(key),
            }
        }
        put
    }

    /// The tensor under `key`, from the first replica that has it. With
    /// [`ClusterConfig::hedge_after`] set, a second replica is asked too if
    /// the first has not answered by then, and the first answer wins.
    ///
    /// With an L1 ([`ClusterConfig::l1`]), a tensor held there is returned
    /// without a request, and concurrent misses of one key share one read.
    pub async fn get(&self, key: &str) -> Result<Option<Tensor>, ClientError> {
        match &self.inner.l1 {
            Some(l1) => l1.get(key, || self.fetch(key)).await,
            None => self.fetch(key).await,
        }
    }

    async fn fetch(&self, key: &str) -> Result<Option<Tensor>, ClientError> {
        let inner = &self.inner;
        let members = inner.members().await?;
        let order = inner.read_order(&members, key);
        let mut reads = Reads::new(unix_micros());
        let mut rest = &order[..];
        if let (Some(hedge), [first, second, ..]) = (inner.config.hedge_after, &order[..]) {
            rest = &order[2..];
            let started = Instant::now();
            // The first read runs on a task of its own: when the hedge wins
            // it is left to finish, within the node's timeout, so that a
            // hung replica is still marked down rather than cancelled
            // before it can time out.
            let mut a = tokio::spawn({
                let (inner, key, first) = (Arc::clone(inner), key.to_owned(), Arc::clone(first));
                async move { inner.get_on(&first, &key).await }
            });
            let joined = |r: Result<ReadResult, tokio::task::JoinError>| {
                r.unwrap_or_else(|e| Err(ClientError::Protocol(format!("read task failed: {e}"))))
            };
            let mut b = std::pin::pin!(async move {
                tokio::time::sleep(hedge).await;
                inner.metrics.hedge();
                inner.get_on(second, key).await
            });
            let (hedge_first, result) = tokio::select! {
                r = &mut a => (false, joined(r)),
                r = &mut b => (true, r),
            };
            match (hedge_first, &result) {
                // The hedge found the tensor first: the first replica lost.
                (true, Ok(Some(_))) => first.lost_race(&inner.config),
                (false, Ok(_)) => first.won_race(),
                _ => {}
            }
            let node = if hedge_first { second } else { first };
            if let Some(tensor) = reads.absorb(node, result)? {
                return Ok(Some(inner.found(key, tensor, reads)));
            }
            let (node, result) = if hedge_first {
                (first, joined(a.await))
            } else if started.elapsed() < hedge {
                // The first replica answered before the hedge went out:
                // ask the second now rather than after the delay.
                (second, inner.get_on(second, key).await)
            } else {
                (second, b.await)
            };
            if let Some(tensor) = reads.absorb(node, result)? {
                return Ok(Some(inner.found(key, tensor, reads)));
            }
        }
        for node in rest {
            if let Some(tensor) = reads.absorb(node, inner.get_on(node, key).await)? {
                return Ok(Some(inner.found(key, tensor, reads)));
            }
        }
        if let Some(tensor) = inner.read_previous(&members, key, &order).await? {
            return Ok(Some(inner.found(key, tensor, reads)));
        }
        reads.finish()
    }

    /// Removes `key` from all its replicas; whether any held it.
    ///
    /// `Ok` only when every replica answered: a replica that could not be
    /// reached may still hold the tensor and serve it later, so the delete
    /// is then [`ClientError::Quorum`], naming those replicas. The replicas
    /// that answered have removed the key; retry the delete to finish it.
    ///
    /// With a `dns:` name the delete goes to every node of the set (a
    /// change can leave a copy on any of them), and is `Ok` only when all
    /// answered; the key's replicas under earlier sets that have left are
    /// asked too, during the grace period, and one that cannot be reached
    /// does not fail the delete, but gets do not fall back to it for the
    /// rest of the grace. A node set that changes while the delete runs
    /// gets it as well. What a delete cannot reach is a node that left the
    /// set and later comes back with its data (see the README, "Running on
    /// Kubernetes").
    pub async fn delete(&self, key: &str) -> Result<bool, ClientError> {
        if let Some(l1) = &self.inner.l1 {
            l1.invalidate(key);
        }
        let deleted = self.delete_everywhere(key).await;
        if let Some(l1) = &self.inner.l1 {
            l1.invalidate(key);
        }
        deleted
    }

    async fn delete_everywhere(&self, key: &str) -> Result<bool, ClientError> {
        let inner = &self.inner;
        let mut members = inner.members().await?;
        let mut reached = Vec::new();
        let mut any = false;
        // A node set that changed while the delete ran gets it too: a get on
        // the new set could otherwise find the value on a replica this
        // delete never asked, and repair it back.
        for _ in 0..3 {
            any |= inner.delete_round(&members, key, &mut reached).await?;
            let now = inner.members.now();
            if Arc::ptr_eq(&now, &members) {
                break;
            }
            members = now;
        }
        Ok(any)
    }

    /// Ends every node's connection now ([`FastClient::reset`]): calls in
    /// flight fail, and requests not yet written are dropped with their
    /// payloads; the next calls connect again.
    pub fn reset(&self) {
        for node in self.inner.members.now().all() {
            if let Some(client) = node.state().client.take() {
                client.reset();
            }
        }
    }

    /// Ends the connections let go of when their nodes were marked down
    /// ([`FastClient::reset`]): requests still queued on them — replica
    /// writes to a node that stopped reading — are dropped now, with their
    /// payloads, rather than when the connection's write timeout ends it.
    /// The connections in use are not touched.
    pub fn reset_failed(&self) {
        for node in self.inner.members.now().all() {
            let failed = std::mem::take(&mut node.state().failed);
            for client in failed {
                client.reset();
            }
        }
    }

    /// The counters of every node, with whether the client sees it up
    /// (none if a `dns:` name has never resolved).
    pub async fn node_stats(&self) -> Vec<NodeStats> {
        let Ok(members) = self.inner.members().await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for node in &members.nodes {
            let stats = self.inner.stats_on(node).await;
            out.push(NodeStats {
                addr: node.addr.clone(),
                up: node.is_up(),
                stats,
            });
        }
        out
    }

    /// The counters summed over the nodes that answer (replicas count once
    /// per node). Fails only if no node answers.
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        self.inner.members().await?;
        let nodes = self.node_stats().await;
        if let Some(sum) = NodeStats::sum(&nodes) {
            return Ok(sum);
        }
        Err(nodes
            .into_iter()
            .filter_map(|node| node.stats.err())
            .last()
            .unwrap_or(ClientError::Unavailable("no nodes".into())))
    }
}

impl NodeStats {
    /// The counters of the nodes in `nodes` that answered, summed; `None`
    /// if none did.
    pub fn sum(nodes: &[NodeStats]) -> Option<Stats> {
        let answered = nodes.iter().filter_map(|node| node.stats.as_ref().ok());
        answered
            .map(Stats::counters)
            .reduce(Counters::saturating_add)
            .map(Stats::from)
    }
}

/// What one replica did with a put.
enum Write {
    /// It stored the tensor.
    Stored,
    /// It already held this very tensor.
    Held,
    /// It holds another value under the key.
    Conflict,
}

impl TensorStore for ClusterClient {
    async fn put_tensor(&self, key: &str, tensor: Tensor) -> Result<(), ClientError> {
        ClusterClient::put_tensor(self, key, tensor).await
    }
    async fn get(&self, key: &str) -> Result<Option<Tensor>, ClientError> {
        ClusterClient::get(self, key).await
    }
    async fn delete(&self, key: &str) -> Result<bool, ClientError> {
        ClusterClient::delete(self, key).await
    }
    async fn stats(&self) -> Result<Stats, ClientError> {
        ClusterClient::stats(self).await
    }
}

impl Inner {
    /// The node set to work on ([`Membership::get`]).
    async fn members(&self) -> Result<Arc<Members>, ClientError> {
        self.members.get().await.map_err(ClientError::Unavailable)
    }

    /// `key`'s replicas in `members`: its top R nodes (all of them when
    /// a `dns:` name has fewer than R).
    fn replica_set(&self, members: &Members, key: &str) -> Vec<Arc<Node>> {
        Members::replica_set(&members.nodes, key, self.config.replicas)
    }

    /// `key`'s replicas under the earlier node sets still in their grace,
    /// newest set first, without those in `asked` or struck.
    fn previous_replicas(
        &self,
        members: &Members,
        key: &str,
        asked: &[Arc<Node>],
    ) -> Vec<Arc<Node>> {
        let mut out: Vec<Arc<Node>> = Vec::new();
        for generation in members.previous() {
            for node in Members::replica_set(&generation.nodes, key, self.config.replicas) {
                let seen = |n: &Arc<Node>| Arc::ptr_eq(n, &node);
                if !node.is_struck() && !asked.iter().any(seen) && !out.iter().any(seen) {
                    out.push(node);
                }
            }
        }
        out
    }

    /// Nodes besides `replicas` that may hold `key`: with a `dns:` name,
    /// every other node of the set (a change can leave a copy on a node
    /// that is no longer a replica, and a later change can make it one
    /// again) — and, as the second list, the key's replicas under the
    /// earlier sets that have left the set. None with a fixed list.
    fn bystanders(
        &self,
        members: &Members,
        key: &str,
        replicas: &[Arc<Node>],
    ) -> (Vec<Arc<Node>>, Vec<Arc<Node>>) {
        if !self.members.is_dns() {
            return (Vec::new(), Vec::new());
        }
        let others = members
            .nodes
            .iter()
            .filter(|n| !replicas.iter().any(|r| Arc::ptr_eq(r, n)))
            .cloned()
            .collect();
        // Earlier replicas not in the set now (nor struck: see `Node::strike`).
        let departed = self.previous_replicas(members, key, &members.nodes);
        (others, departed)
    }

    /// Replicas in placement order, those marked down or slow last (still
    /// tried: they may be back).
    fn read_order(&self, members: &Members, key: &str) -> Vec<Arc<Node>> {
        let (first, last): (Vec<_>, Vec<_>) = self
            .replica_set(members, key)
            .into_iter()
            .partition(|n| n.is_up() && !n.is_slow());
        first.into_iter().chain(last).collect()
    }

    /// A get that missed on every current replica asks the key's replicas
    /// under the earlier node sets (see [`ClusterConfig::grace`]). Their
    /// misses and failures are not the get's: it is a miss either way.
    async fn read_previous(
        &self,
        members: &Members,
        key: &str,
        asked: &[Arc<Node>],
    ) -> Result<Option<Tensor>, ClientError> {
        for node in self.previous_replicas(members, key, asked) {
            match self.get_on(&node, key).await {
                Ok(Some(tensor)) => {
                    self.metrics.previous_placement_read();
                    tracing::debug!(node = %node.addr, key, "read from the previous placement");
                    return Ok(Some(tensor));
                }
                Ok(None) => {}
                Err(e) if is_node_failure(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// The node's connection, made if needed. A node inside its backoff is
    /// refused at once, without a connection attempt.
    async fn client(&self, node: &Node) -> Result<FastClient, ClientError> {
        {
            let s = node.state();
            if let Some(client) = &s.client {
                return Ok(client.clone());
            }
            if s.down_until.is_some_and(|t| Instant::now() < t) {
                return Err(ClientError::Unavailable(format!(
                    "{} is marked down",
                    node.addr
                )));
            }
        }
        self.connect(node).await
    }

    /// The node's connection, made now if there is none, even while the
    /// node is marked down.
    async fn connect(&self, node: &Node) -> Result<FastClient, ClientError> {
        if let Some(client) = &node.state().client {
            return Ok(client.clone());
        }
        let options = FastClientOptions {
            connect_timeout: self.config.connect_timeout,
            request_timeout: Some(self.config.timeout),
            max_payload: self.config.max_payload,
            ..FastClientOptions::default()
        };
        match FastClient::connect_with(node.addr.as_str(), options).await {
            Ok(client) => {
                node.state().client.get_or_insert(client.clone());
                Ok(client)
            }
            Err(e) => {
                // A connection attempt is a request that failed.
                node.counters.requests.inc();
                node.counters.failures.inc();
                node.mark_down(&self.config);
                Err(e)
            }
        }
    }

    /// Runs one request on `node` within the timeout, keeping the node's
    /// health up to date.
    async fn on<T, F, Fut>(&self, node: &Node, call: F) -> Result<T, ClientError>
    where
        F: FnOnce(FastClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        // A node inside its backoff is not asked: neither counted.
        let client = self.client(node).await?;
        node.counters.requests.inc();
        let limit = self.config.timeout;
        let result = tokio::time::timeout(limit, call(client))
            .await
            .unwrap_or(Err(ClientError::Timeout(limit)));
        match &result {
            Err(e) if is_node_failure(e) => {
                node.counters.failures.inc();
                node.mark_down(&self.config);
            }
            _ => node.mark_up(),
        }
        result
    }

    /// A conditional put on `node`: refused if the key was deleted there
    /// after `since_us`, so neither a late write nor a read repair brings
    /// back a deleted tensor.
    async fn put_on(
        &self,
        node: &Node,
        key: &str,
        tensor: Tensor,
        since_us: u64,
    ) -> Result<(), ClientError> {
        self.on(
            node,
            |c| async move { c.put_if(key, tensor, since_us).await },
        )
        .await
    }

    /// [`ClusterClient::put_tensor`].
    async fn put(self: Arc<Self>, key: String, tensor: Tensor) -> Result<(), ClientError> {
        let key = key.as_str();
        let members = self.members().await?;
        let replicas = self.replica_set(&members, key);
        // Fewer replicas than R only while a `dns:` name has fewer nodes:
        // then every node must acknowledge (W = R) or W of them.
        let needed = self.config.write_quorum.min(replicas.len());
        let since_us = unix_micros();
        let digest = Arc::new(OnceLock::new());
        // Put-once across membership changes: with a `dns:` name, another
        // node may hold another value under the key (its replica under an
        // earlier set, which gets read during the grace period, or one
        // again after a later change). Asked before anything is written,
        // so that a refused value is never readable.
        let (others, departed) = self.bystanders(&members, key, &replicas);
        let elsewhere: Vec<Arc<Node>> = others.into_iter().chain(departed).collect();
        if !elsewhere.is_empty() {
            let mine = *digest.get_or_init(|| tensor.digest());
            if self.held_elsewhere(elsewhere, key, mine).await? {
                return Err(Error::AlreadyExists(key.to_owned()).into());
            }
        }
        let mut writes = JoinSet::new();
        for node in replicas {
            let (inner, key, tensor) = (Arc::clone(&self), key.to_owned(), tensor.clone());
            let digest = Arc::clone(&digest);
            writes.spawn(async move {
                let result = inner.write_on(&node, &key, tensor, since_us, &digest).await;
                (node, result)
            });
        }
        let (mut stored, mut held, mut conflicts) = (0, 0, 0);
        let mut errors = Vec::new();
        // Replicas this value may be on: stored, or no answer.
        let mut placed = Vec::new();
        while let Some(joined) = writes.join_next().await {
            match joined {
                Ok((i, Ok(Write::Stored))) => {
                    stored += 1;
                    placed.push(i);
                }
                Ok((_, Ok(Write::Held))) => held += 1,
                Ok((_, Ok(Write::Conflict))) => conflicts += 1,
                Ok((i, Err(e))) => {
                    if is_node_failure(&e) {
                        placed.push(i);
                    }
                    errors.push(e);
                }
                Err(e) => errors.push(ClientError::Protocol(format!("write task failed: {e}"))),
            }
        }
        // Every replica has answered (or timed out): a conflict anywhere
        // means another value is out there, and this put must not win.
        if conflicts == 0 && stored > 0 && stored + held >= needed {
            return Ok(());
        }
        if conflicts == 0 && stored == 0 && held >= needed {
            return Err(Error::AlreadyExists(key.to_owned()).into());
        }
        // Failed: take this value back where it may have landed (not where
        // a replica already held it: that copy is someone else's).
        if !placed.is_empty() {
            let digest = *digest.get_or_init(|| tensor.digest());
            self.take_back(key, digest, placed).await;
        }
        if conflicts > 0 {
            return Err(Error::AlreadyExists(key.to_owned()).into());
        }
        // A refusal that every node would give (too big, bad key) is the
        // answer; otherwise say how far the write got.
        if let Some(pos) = errors.iter().position(|e| !is_node_failure(e)) {
            return Err(errors.swap_remove(pos));
        }
        let why: Vec<String> = errors.iter().map(ToString::to_string).collect();
        self.metrics.quorum_failure("put");
        Err(ClientError::Quorum(format!(
            "{} of {needed} replicas acknowledged: {}",
            stored + held,
            why.join("; ")
        )))
    }

    /// One replica's part of a put: stored, already holding this very
    /// tensor, or holding another.
    async fn write_on(
        &self,
        node: &Node,
        key: &str,
        tensor: Tensor,
        since_us: u64,
        digest: &OnceLock<u64>,
    ) -> Result<Write, ClientError> {
        let mine = match self.put_on(node, key, tensor.clone(), since_us).await {
            Ok(()) => return Ok(Write::Stored),
            Err(ClientError::AlreadyExists(_)) => *digest.get_or_init(|| tensor.digest()),
            Err(e) => return Err(e),
        };
        match self
            .on(node, |c| async move { c.digest(key).await })
            .await?
        {
            Some(theirs) if theirs == mine => Ok(Write::Held),
            Some(_) => Ok(Write::Conflict),
            // Deleted between the two requests: neither an acknowledgement
            // nor proof of another value.
            None => Err(ClientError::Unavailable(format!(
                "{key:?} vanished from {} during the put",
                node.addr
            ))),
        }
    }

    /// Removes the value with `digest` from `nodes` (a failed put taking
    /// its value back), never another value. Nodes marked down are tried
    /// too: a write that timed out there may still land.
    async fn take_back(self: &Arc<Self>, key: &str, digest: u64, nodes: Vec<Arc<Node>>) {
        let mut undo = JoinSet::new();
        for node in nodes {
            let (inner, key) = (Arc::clone(self), key.to_owned());
            undo.spawn(async move {
                let result = match inner.connect(&node).await {
                    Ok(c) => {
                        let limit = inner.config.timeout;
                        tokio::time::timeout(limit, c.delete_if(&key, digest))
                            .await
                            .unwrap_or(Err(ClientError::Timeout(limit)))
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    tracing::warn!(node = %node.addr, key, "could not take back a failed put: {e}");
                }
            });
        }
        while undo.join_next().await.is_some() {}
    }

    /// One pass of [`ClusterClient::delete`] over `members`: `key`'s
    /// replicas and, with a `dns:` name, every other node of the set,
    /// which must all answer; and its replicas under the earlier sets that
    /// have left, which may not. Nodes in `reached` are skipped, and those
    /// reached are added. Whether any held the key.
    async fn delete_round(
        self: &Arc<Self>,
        members: &Members,
        key: &str,
        reached: &mut Vec<Arc<Node>>,
    ) -> Result<bool, ClientError> {
        let replicas = self.replica_set(members, key);
        let (others, departed) = self.bystanders(members, key, &replicas);
        let seen = |n: &Arc<Node>| reached.iter().any(|r| Arc::ptr_eq(r, n));
        let required: Vec<Arc<Node>> = replicas
            .into_iter()
            .chain(others)
            .filter(|n| !seen(n))
            .collect();
        let departed: Vec<Arc<Node>> = departed.into_iter().filter(|n| !seen(n)).collect();
        let mut deletes = JoinSet::new();
        for (node, required) in required
            .iter()
            .map(|n| (n, true))
            .chain(departed.iter().map(|n| (n, false)))
        {
            let (inner, key, node) = (Arc::clone(self), key.to_owned(), Arc::clone(node));
            deletes.spawn(async move {
                let result = inner.delete_on(&node, &key).await;
                (node, required, result)
            });
        }
        let mut any = false;
        let mut missed = Vec::new();
        let grace_end = Instant::now() + self.config.grace.min(membership::MAX_GRACE);
        while let Some(joined) = deletes.join_next().await {
            match joined {
                Ok((node, _, Ok(deleted))) => {
                    any |= deleted;
                    reached.push(node);
                }
                // A refusal every node would give (a bad key) is the answer.
                Ok((_, _, Err(e))) if !is_node_failure(&e) => return Err(e),
                Ok((node, false, Err(_))) => node.strike(grace_end),
                Ok((node, true, Err(e))) => missed.push(format!("{}: {e}", node.addr)),
                Err(e) => missed.push(format!("delete task failed: {e}")),
            }
        }
        if missed.is_empty() {
            return Ok(any);
        }
        self.metrics.quorum_failure("delete");
        Err(ClientError::Quorum(format!(
            "the delete of {key:?} reached {} of {} nodes that may hold it; retry it. Not reached: {}",
            required.len().saturating_sub(missed.len()),
            required.len(),
            missed.join("; ")
        )))
    }

    /// Whether one of `nodes` — nodes besides a key's replicas that may
    /// hold it — holds another value than the one with `digest` under
    /// `key`. Nodes that do not answer (down, or left) are not counted.
    async fn held_elsewhere(
        self: &Arc<Self>,
        nodes: Vec<Arc<Node>>,
        key: &str,
        digest: u64,
    ) -> Result<bool, ClientError> {
        let mut asks = JoinSet::new();
        for node in nodes {
            let (inner, key) = (Arc::clone(self), key.to_owned());
            asks.spawn(async move {
                inner
                    .on(&node, |c| async move { c.digest(&key).await })
                    .await
            });
        }
        let mut other = false;
        while let Some(joined) = asks.join_next().await {
            match joined {
                Ok(Ok(Some(theirs))) => other |= theirs != digest,
                Ok(Err(e)) if !is_node_failure(&e) => return Err(e),
                _ => {}
            }
        }
        Ok(other)
    }

    async fn get_on(&self, node: &Node, key: &str) -> Result<Option<Tensor>, ClientError> {
        self.on(node, |c| async move { c.get(key).await }).await
    }

    async fn delete_on(&self, node: &Node, key: &str) -> Result<bool, ClientError> {
        self.on(node, |c| async move { c.delete(key).await }).await
    }

    async fn stats_on(&self, node: &Node) -> Result<Stats, ClientError> {
        self.on(node, |c| async move { c.stats().await }).await
    }

    /// A get's result: read repair for the replicas that missed it.
    fn found(self: &Arc<Self>, key: &str, tensor: Tensor, reads: Reads) -> Tensor {
        if !reads.missing_on.is_empty() {
            self.repair(key, &tensor, reads.missing_on, reads.began_us);
        }
        tensor
    }

    /// Writes `tensor` back to the replicas that answered `NotFound`, in the
    /// background, unless the key was deleted there since the get began.
    fn repair(self: &Arc<Self>, key: &str, tensor: &Tensor, nodes: Vec<Arc<Node>>, began_us: u64) {
        for node in nodes {
            let (inner, key, tensor) = (Arc::clone(self), key.to_owned(), tensor.clone());
            tokio::spawn(async move {
                match inner.put_on(&node, &key, tensor, began_us).await {
                    Ok(()) => {
                        inner.metrics.repair("ok");
                        tracing::debug!(node = %node.addr, key, "read repair");
                    }
                    // Someone else wrote or deleted it meanwhile.
                    Err(ClientError::AlreadyExists(_) | ClientError::Deleted(_)) => {
                        inner.metrics.repair("superseded");
                    }
                    Err(e) => {
                        inner.metrics.repair("failed");
                        tracing::debug!(node = %node.addr, key, "read repair failed: {e}")
                    }
                }
            });
        }
    }
}
