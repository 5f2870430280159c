//! One connection to the target, whichever it is.

use bytes::Bytes;
use redstone::client::{ClientError, FastClient, L1Options, RemoteCacheClient, TensorStore};
use redstone::cluster::{ClusterClient, ClusterConfig};
use redstone::tensor::codec::Compression;
use redstone::tensor::meta::TensorMeta;
use redstone::tensor::Tensor;

use crate::args::Args;
use crate::key_for;

/// One connection to the target.
#[derive(Clone)]
pub(crate) enum Conn {
    Fast(FastClient),
    Grpc(RemoteCacheClient),
    Cluster(ClusterClient),
}

/// The cluster client described by `--nodes` (a list or a TOML file),
/// `--replicas` and `--write-quorum`.
pub(crate) fn cluster_from(
    args: &Args,
    nodes: &str,
) -> Result<ClusterClient, Box<dyn std::error::Error>> {
    let mut config = ClusterConfig::from_arg(nodes)?;
    if let Some(r) = args.replicas {
        config.replicas = r;
        config.write_quorum = r;
    }
    if let Some(w) = args.write_quorum {
        config.write_quorum = w;
    }
    config.l1 = args.l1.map(L1Options::new);
    Ok(ClusterClient::new(config)?)
}

/// Writes every key read by the run, ignoring keys already there.
pub(crate) async fn prefill(
    conn: &Conn,
    values: &[Bytes],
    meta: &TensorMeta,
    compression: Compression,
) -> Result<(), ClientError> {
    let size = meta.byte_size() as usize;
    for (i, v) in values.iter().enumerate() {
        let tensor = Tensor::new(meta.clone(), v.clone())?;
        match conn
            .put_with(&key_for(size, i as u64), tensor, compression)
            .await
        {
            Ok(()) | Err(ClientError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Conn {
    pub(crate) async fn put(&self, key: &str, tensor: Tensor) -> Result<(), ClientError> {
        match self {
            Conn::Fast(c) => TensorStore::put_tensor(c, key, tensor).await,
            Conn::Grpc(c) => TensorStore::put_tensor(c, key, tensor).await,
            Conn::Cluster(c) => TensorStore::put_tensor(c, key, tensor).await,
        }
    }

    /// A put compressed as `compression` says (the gRPC API has no
    /// compression: refused before the run).
    pub(crate) async fn put_with(
        &self,
        key: &str,
        tensor: Tensor,
        compression: Compression,
    ) -> Result<(), ClientError> {
        match self {
            Conn::Fast(c) => c.put_with(key, tensor, compression).await,
            Conn::Cluster(c) => c.put_with(key, tensor, compression).await,
            Conn::Grpc(c) => TensorStore::put_tensor(c, key, tensor).await,
        }
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Tensor>, ClientError> {
        match self {
            Conn::Fast(c) => TensorStore::get(c, key).await,
            Conn::Grpc(c) => TensorStore::get(c, key).await,
            Conn::Cluster(c) => TensorStore::get(c, key).await,
        }
    }

    pub(crate) async fn stats(&self) -> Result<redstone::stats::Stats, ClientError> {
        match self {
            Conn::Fast(c) => TensorStore::stats(c).await,
            Conn::Grpc(c) => TensorStore::stats(c).await,
            Conn::Cluster(c) => TensorStore::stats(c).await,
        }
    }

    /// The client's L1 counters, if it has an L1.
    pub(crate) fn l1_stats(&self) -> Option<redstone::client::L1Stats> {
        match self {
            Conn::Fast(c) => c.l1().map(|l1| l1.stats()),
            Conn::Cluster(c) => c.l1().map(|l1| l1.stats()),
            Conn::Grpc(_) => None,
        }
    }

    /// Reads into `buf` where the transport can (fast), else gets and copies.
    pub(crate) async fn get_into(&self, key: &str, buf: &mut [u8]) -> Result<bool, ClientError> {
        match self {
            Conn::Fast(c) => Ok(c.get_into(key, buf).await?.is_some()),
            Conn::Grpc(_) | Conn::Cluster(_) => match self.get(key).await? {
                Some(t) if t.data().len() == buf.len() => {
                    buf.copy_from_slice(t.data());
                    Ok(true)
                }
                Some(_) => Err(ClientError::Protocol("size differs".into())),
                None => Ok(false),
            },
        }
    }
}
