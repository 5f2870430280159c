//! One node or a cluster, behind one set of calls.

use bytes::Bytes;
use redstone::client::{ClientError, L1Stats};
use redstone::cluster::{ClusterClient, NodeStats};
use redstone::disk::DiskStats;
use redstone::fast::FastClient;
use redstone::stats::Stats;
use redstone::tensor::codec::Compression;
use redstone::tensor::meta::TensorMeta;
use redstone::tensor::Tensor;

/// Where a Python client's calls go.
#[derive(Debug, Clone)]
pub enum Backend {
    /// One server's fast path.
    Node(FastClient),
    /// Keys placed and replicated over several servers.
    Cluster(ClusterClient),
}

/// `tensor` with a payload no one else holds: a cluster's read repair may
/// still hold the one it got, and the array the caller receives must own
/// its memory. Copied here, off the interpreter, when it is shared. A
/// tensor mapped from the local door is left as it is: immutable shared
/// memory, handed out as a read-only array.
fn sole(tensor: Tensor) -> Result<Tensor, ClientError> {
    if redstone::fast::local::is_mapping(tensor.data()) {
        return Ok(tensor);
    }
    let (meta, data) = tensor.into_parts();
    let data = match data.try_into_mut() {
        Ok(unique) => unique.freeze(),
        Err(shared) => Bytes::from(shared.to_vec()),
    };
    Tensor::new(meta, data).map_err(ClientError::from)
}

/// A server's counters (and its disk tier's, if it has one), or for a
/// cluster their sum and each node's.
#[derive(Debug)]
pub struct Report {
    pub total: Stats,
    /// The client's L1, if it has one.
    pub l1: Option<L1Stats>,
    pub nodes: Option<Vec<NodeStats>>,
    /// One server's disk tier: `Some(None)` if it has none.
    pub disk: Option<Option<DiskStats>>,
}

impl Backend {
    pub async fn put(
        &self,
        key: &str,
        tensor: Tensor,
        compression: Compression,
    ) -> Result<(), ClientError> {
        // The tensor views the caller's array, which is theirs again once
        // `put` returns: an L1 keeps a copy of a put's tensor
        // (`L1::put_done`), never the array.
        match self {
            Backend::Node(c) => c.put_with(key, tensor, compression).await,
            Backend::Cluster(c) => c.put_with(key, tensor, compression).await,
        }
    }

    /// With an L1 the payload may be shared with it: then copied (`sole`).
    pub async fn get(&self, key: &str) -> Result<Option<Tensor>, ClientError> {
        match self {
            Backend::Node(c) => c.get(key).await?.map(sole).transpose(),
            Backend::Cluster(c) => c.get(key).await?.map(sole).transpose(),
        }
    }

    /// The L1's counters, if the client has one.
    pub fn l1_stats(&self) -> Option<L1Stats> {
        match self {
            Backend::Node(c) => c.l1().map(|l1| l1.stats()),
            Backend::Cluster(c) => c.l1().map(|l1| l1.stats()),
        }
    }

    /// Ends the connections now, dropping the requests they hold (see
    /// [`FastClient::reset`]).
    pub fn reset(&self) {
        match self {
            Backend::Node(c) => c.reset(),
            Backend::Cluster(c) => c.reset(),
        }
    }

    /// Ends the connections whose calls failed: one server's, or the
    /// connections a cluster let go of when it marked their nodes down.
    pub fn reset_failed(&self) {
        match self {
            Backend::Node(c) => c.reset(),
            Backend::Cluster(c) => c.reset_failed(),
        }
    }

    /// On one node the payload is read from the socket into `dst`. A
    /// cluster read may fail over between replicas and repair them, which
    /// needs the tensor whole, so there it is received and copied once.
    ///
    /// `accept` sees the tensor's metadata before any byte of `dst` is
    /// written; its error is the call's.
    pub async fn get_into(
        &self,
        key: &str,
        dst: &mut [u8],
        accept: impl FnOnce(&TensorMeta) -> Result<(), ClientError>,
    ) -> Result<Option<TensorMeta>, ClientError> {
        match self {
            Backend::Node(c) => c.get_into_with(key, dst, accept).await,
            Backend::Cluster(c) => {
                let Some(tensor) = c.get(key).await? else {
                    return Ok(None);
                };
                let (meta, data) = tensor.into_parts();
                // As on one node: the caller's check first, then the size.
                accept(&meta)?;
                if data.len() != dst.len() {
                    return Err(ClientError::Invalid(redstone::Error::InvalidSize {
                        expected: data.len() as u64,
                        actual: dst.len() as u64,
                    }));
                }
                dst.copy_from_slice(&data);
                Ok(Some(meta))
            }
        }
    }

    /// One entry per key, in order. One node gets them in one request; a
    /// cluster asks each key's replicas, all keys at once.
    pub async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Tensor>>, ClientError> {
        match self {
            Backend::Node(c) => c
                .get_many(&keys)
                .await?
                .into_iter()
                .map(|t| t.map(sole).transpose())
                .collect(),
            Backend::Cluster(c) => {
                let reads: Vec<_> = keys
                    .into_iter()
                    .map(|key| {
                        let c = c.clone();
                        tokio::spawn(async move { c.get(&key).await?.map(sole).transpose() })
                    })
                    .collect();
                let mut out = Vec::with_capacity(reads.len());
                for read in reads {
                    out.push(
                        read.await.map_err(|e| {
                            ClientError::Protocol(format!("read task failed: {e}"))
                        })??,
                    );
                }
                Ok(out)
            }
        }
    }

    pub async fn delete(&self, key: &str) -> Result<bool, ClientError> {
        match self {
            Backend::Node(c) => c.delete(key).await,
            Backend::Cluster(c) => c.delete(key).await,
        }
    }

    pub async fn stats(&self) -> Result<Report, ClientError> {
        match self {
            Backend::Node(c) => Ok(Report {
                total: c.stats().await?,
                l1: self.l1_stats(),
                nodes: None,
                disk: Some(c.disk_stats().await?),
            }),
            Backend::Cluster(c) => {
                let nodes = c.node_stats().await;
                let Some(total) = NodeStats::sum(&nodes) else {
                    // Every node's error is in the report's message.
                    let why: Vec<String> = nodes
                        .iter()
                        .filter_map(|n| n.stats.as_ref().err().map(|e| format!("{}: {e}", n.addr)))
                        .collect();
                    return Err(ClientError::Unavailable(format!(
                        "no node answered: {}",
                        why.join("; ")
                    )));
                };
                Ok(Report {
                    total,
                    l1: self.l1_stats(),
                    nodes: Some(nodes),
                    disk: None,
                })
            }
        }
    }
}
