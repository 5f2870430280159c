//! The gRPC client, and the one mapping of gRPC statuses onto
//! [`ClientError`].

use std::time::Duration;

use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::proto::red_stone_client::RedStoneClient;
use super::proto::{DeleteRequest, GetRequest, PutRequest, StatsRequest};
use super::MAX_GRPC_MESSAGE;
use super::{meta_from_proto, H2_CONNECTION_WINDOW, H2_MAX_FRAME, H2_STREAM_WINDOW};
use crate::client::{ClientError, TensorStore};
use crate::stats::Stats;
use crate::tensor::meta::TensorMeta;
use crate::tensor::Tensor;

/// An error and its sources, innermost last: tonic's own message is terse
/// ("transport error"), the cause ("Connection refused") is in the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A client of the gRPC API. Cheap to clone; clones share one HTTP/2
/// connection, and calls from many tasks are multiplexed on it.
///
/// ```no_run
/// use redstone::grpc::RemoteCacheClient;
/// use redstone::tensor::Tensor;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = RemoteCacheClient::connect("127.0.0.1:50051").await?;
/// let t = Tensor::from_slice::<f32>(vec![2], &[1.0, 2.0])?;
/// client.put_tensor("k", t).await?;
/// let back = client.get("k").await?.expect("just stored");
/// assert_eq!(back.to_vec::<f32>()?, vec![1.0, 2.0]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RemoteCacheClient {
    inner: RedStoneClient<Channel>,
}

impl RemoteCacheClient {
    /// Connects to `addr` (`host:port`, or a full `http://host:port` URI).
    /// Fails with [`ClientError::Connect`] if nothing answers within 5 s.
    pub async fn connect(addr: impl Into<String>) -> Result<RemoteCacheClient, ClientError> {
        let addr = addr.into();
        let uri = if addr.contains("://") {
            addr.clone()
        } else {
            format!("http://{addr}")
        };
        let connect_err = |reason: String| ClientError::Connect {
            addr: addr.clone(),
            reason,
        };
        let channel = Endpoint::from_shared(uri)
            .map_err(|e| connect_err(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_frame_size(H2_MAX_FRAME)
            .connect()
            .await
            .map_err(|e| connect_err(error_chain(&e)))?;
        let inner = RedStoneClient::new(channel)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE);
        Ok(RemoteCacheClient { inner })
    }

    /// Stores `data` under `key`. The length is checked against `meta`
    /// before anything is sent.
    pub async fn put(
        &self,
        key: impl Into<String>,
        meta: TensorMeta,
        data: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        self.put_tensor(key, Tensor::new(meta, data)?).await
    }

    /// Stores a tensor under `key`.
    pub async fn put_tensor(
        &self,
        key: impl Into<String>,
        tensor: Tensor,
    ) -> Result<(), ClientError> {
        let (meta, data) = tensor.into_parts();
        let request = PutRequest {
            key: key.into(),
            meta: Some((&meta).into()),
            data,
        };
        self.inner.clone().put(request).await?;
        Ok(())
    }

    /// The tensor under `key`, or `None` if it is not cached.
    pub async fn get(&self, key: impl Into<String>) -> Result<Option<Tensor>, ClientError> {
        let request = GetRequest { key: key.into() };
        let reply = match self.inner.clone().get(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(status.into()),
        };
        let meta = meta_from_proto(reply.meta).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let tensor =
            Tensor::new(meta, reply.data).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Some(tensor))
    }

    /// Removes `key`; returns whether it was cached.
    pub async fn delete(&self, key: impl Into<String>) -> Result<bool, ClientError> {
        let request = DeleteRequest { key: key.into() };
        Ok(self
            .inner
            .clone()
            .delete(request)
            .await?
            .into_inner()
            .deleted)
    }

    /// The server's counters.
    pub async fn get_stats(&self) -> Result<Stats, ClientError> {
        Ok(self
            .inner
            .clone()
            .get_stats(StatsRequest {})
            .await?
            .into_inner()
            .into())
    }
}

impl TensorStore for RemoteCacheClient {
    async fn put_tensor(&self, key: &str, tensor: Tensor) -> Result<(), ClientError> {
        RemoteCacheClient::put_tensor(self, key, tensor).await
    }
    async fn get(&self, key: &str) -> Result<Option<Tensor>, ClientError> {
        RemoteCacheClient::get(self, key).await
    }
    async fn delete(&self, key: &str) -> Result<bool, ClientError> {
        RemoteCacheClient::delete(self, key).await
    }
    async fn stats(&self) -> Result<Stats, ClientError> {
        self.get_stats().await
    }
}

impl From<Status> for ClientError {
    /// The only place gRPC statuses are mapped to client errors.
    fn from(status: Status) -> ClientError {
        let message = status.message().to_owned();
        match status.code() {
            Code::AlreadyExists => ClientError::AlreadyExists(message),
            Code::ResourceExhausted => ClientError::OutOfMemory(message),
            Code::InvalidArgument => ClientError::InvalidArgument(message),
            Code::Unavailable => ClientError::Unavailable(message),
            _ => ClientError::Rpc(status),
        }
    }
}
