//! One interface over every transport.

use std::future::Future;

use super::ClientError;
use crate::stats::Stats;
use crate::tensor::Tensor;

/// A remote tensor store: what an application needs from a cache,
/// whichever transport carries it.
///
/// ```no_run
/// use redstone::client::{FastClient, TensorStore};
/// use redstone::tensor::Tensor;
///
/// async fn warm(store: &impl TensorStore) -> Result<(), redstone::client::ClientError> {
///     if store.get("w").await?.is_none() {
///         store.put_tensor("w", Tensor::from_slice::<f32>(vec![1], &[0.0])?).await?;
///     }
///     Ok(())
/// }
/// # async fn demo() -> Result<(), redstone::client::ClientError> {
/// // Swap for RemoteCacheClient::connect("127.0.0.1:50051") to use gRPC.
/// let store = FastClient::connect("127.0.0.1:50052").await?;
/// warm(&store).await
/// # }
/// ```
pub trait TensorStore: Clone + Send + Sync + 'static {
    /// Stores `tensor` under `key` (put-once: an existing key is
    /// [`ClientError::AlreadyExists`]).
    fn put_tensor(
        &self,
        key: &str,
        tensor: Tensor,
    ) -> impl Future<Output = Result<(), ClientError>> + Send;
    /// The tensor under `key`, or `None`.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Tensor>, ClientError>> + Send;
    /// Removes `key`; whether it was cached.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool, ClientError>> + Send;
    /// The server's counters.
    fn stats(&self) -> impl Future<Output = Result<Stats, ClientError>> + Send;
}
