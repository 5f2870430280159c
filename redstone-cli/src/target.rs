//! Which server(s) a command talks to: one node over the fast path (the
//! default) or gRPC, or a cluster.

use clap::Args;
use redstone::client::{ClientError, FastClient, RemoteCacheClient, TensorStore};
use redstone::cluster::{ClusterClient, ClusterConfig, NodeStats};
use redstone::stats::Stats;
use redstone::tensor::Tensor;

use crate::error::CliError;

/// Where the cache is: every subcommand takes these.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The server's address: its fast path (default 127.0.0.1:50052), or
    /// with --grpc its gRPC API (default 127.0.0.1:50051).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub addr: Option<String>,

    /// Talk to the gRPC API instead of the fast path.
    #[arg(long, global = true, conflicts_with = "nodes")]
    pub grpc: bool,

    /// A cluster: a comma-separated list of fast-path addresses,
    /// `dns:NAME:PORT` (every address NAME resolves to, re-resolved every
    /// 5 s), or a cluster TOML file (`nodes = [...]`, `replicas = 2`, …).
    #[arg(
        long,
        global = true,
        value_name = "LIST|dns:NAME:PORT|FILE",
        conflicts_with = "addr"
    )]
    pub nodes: Option<String>,
}

/// A connected store: one of the three clients.
#[derive(Debug, Clone)]
pub enum Store {
    /// One node's fast path.
    Fast(FastClient),
    /// One node's gRPC API.
    Grpc(RemoteCacheClient),
    /// A cluster, over the nodes' fast paths.
    Cluster(ClusterClient),
}

impl TargetArgs {
    /// Connects (a cluster connects on first use).
    pub async fn connect(&self) -> Result<Store, CliError> {
        if let Some(nodes) = &self.nodes {
            let config =
                ClusterConfig::from_arg(nodes).map_err(|e| CliError::Usage(e.to_string()))?;
            let cluster = ClusterClient::new(config).map_err(|e| CliError::Usage(e.to_string()))?;
            return Ok(Store::Cluster(cluster));
        }
        if self.grpc {
            let addr = self.addr.as_deref().unwrap_or("127.0.0.1:50051");
            return Ok(Store::Grpc(RemoteCacheClient::connect(addr).await?));
        }
        let addr = self.addr.as_deref().unwrap_or("127.0.0.1:50052");
        Ok(Store::Fast(FastClient::connect(addr).await?))
    }
}

impl TargetArgs {
    /// `n` stores for one job: separate connections to one server (so
    /// that bulk transfers use more than one socket, and the server more
    /// than one core), or clones of one cluster client (which has a
    /// connection per node already).
    pub async fn connect_many(&self, n: usize) -> Result<Vec<Store>, CliError> {
        let first = self.connect().await?;
        let mut stores = vec![first.clone()];
        for _ in 1..n.max(1) {
            stores.push(match &first {
                Store::Cluster(_) => first.clone(),
                _ => self.connect().await?,
            });
        }
        Ok(stores)
    }
}

impl TensorStore for Store {
    async fn put_tensor(&self, key: &str, tensor: Tensor) -> Result<(), ClientError> {
        match self {
            Store::Fast(c) => c.put_tensor(key, tensor).await,
            Store::Grpc(c) => c.put_tensor(key, tensor).await,
            Store::Cluster(c) => c.put_tensor(key, tensor).await,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Tensor>, ClientError> {
        match self {
            Store::Fast(c) => TensorStore::get(c, key).await,
            Store::Grpc(c) => TensorStore::get(c, key).await,
            Store::Cluster(c) => c.get(key).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, ClientError> {
        match self {
            Store::Fast(c) => TensorStore::delete(c, key).await,
            Store::Grpc(c) => TensorStore::delete(c, key).await,
            Store::Cluster(c) => c.delete(key).await,
        }
    }

    async fn stats(&self) -> Result<Stats, ClientError> {
        match self {
            Store::Fast(c) => TensorStore::stats(c).await,
            Store::Grpc(c) => TensorStore::stats(c).await,
            Store::Cluster(c) => c.stats().await,
        }
    }
}

impl Store {
    /// Each node's counters (a cluster), or `None` for one server.
    pub async fn node_stats(&self) -> Option<Vec<NodeStats>> {
        match self {
            Store::Cluster(c) => Some(c.node_stats().await),
            _ => None,
        }
    }

    /// The tensor under `key`, or [`CliError::NotFound`].
    pub async fn fetch(&self, key: &str) -> Result<Tensor, CliError> {
        TensorStore::get(self, key)
            .await?
            .ok_or_else(|| CliError::NotFound(key.to_owned()))
    }
}
