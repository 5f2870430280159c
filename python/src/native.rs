//! `Native`: the calls the Python classes make, each blocking (the GIL
//! released while it waits) or as an awaitable (`a`-prefixed).

use std::future::Future;
use std::time::Duration;

use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_async_runtimes::tokio::{future_into_py, get_runtime};
use redstone::client::ClientError;
use redstone::cluster::{ClusterClient, ClusterConfig};
use redstone::fast::{FastClient, FastClientOptions};
use redstone::tensor::meta::TensorMeta;
use redstone::tensor::Tensor;

use crate::arrays::{pinned, Target};
use crate::backend::Backend;
use crate::convert::{Fetched, FetchedMany};
use crate::errors::{to_py, to_py_detached};

/// How often a blocking call looks for a signal (Ctrl-C) while it waits.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// A tensor's metadata as `(dtype code, shape, layout code)`.
type MetaParts = (u8, Vec<u64>, u8);

/// One client, to a node or a cluster, shared by every thread and task
/// that holds it.
#[pyclass(frozen, module = "redstone._redstone")]
pub struct Native {
    backend: Backend,
}

#[pymethods]
impl Native {
    /// Connects to one server (`addr`) or prepares a cluster client
    /// (`nodes`, connected on first use). Timeouts are in seconds.
    #[new]
    #[pyo3(signature = (addr=None, *, nodes=None, replicas=None, write_quorum=None,
                        connect_timeout=5.0, timeout=None))]
    fn new(
        py: Python<'_>,
        addr: Option<String>,
        nodes: Option<Vec<String>>,
        replicas: Option<usize>,
        write_quorum: Option<usize>,
        connect_timeout: f64,
        timeout: Option<f64>,
    ) -> PyResult<Native> {
        let connect_timeout = seconds("connect_timeout", connect_timeout)?;
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        let backend = match (addr, nodes) {
            (Some(addr), None) => {
                if replicas.is_some() || write_quorum.is_some() {
                    return Err(PyValueError::new_err(
                        "replicas and write_quorum apply to a cluster (nodes=[...])",
                    ));
                }
                let options = FastClientOptions {
                    connect_timeout,
                    request_timeout: timeout,
                    ..FastClientOptions::default()
                };
                Backend::Node(wait(py, FastClient::connect_with(addr, options))?)
            }
            (None, Some(nodes)) => {
                let mut config = ClusterConfig::new(nodes);
                config.connect_timeout = connect_timeout;
                if let Some(timeout) = timeout {
                    config.timeout = timeout;
                }
                if let Some(replicas) = replicas {
                    config.replicas = replicas;
                    config.write_quorum = replicas;
                }
                if let Some(w) = write_quorum {
                    config.write_quorum = w;
                }
                let client = ClusterClient::new(config)
                    .map_err(|e| to_py(py, ClientError::InvalidArgument(e.to_string())))?;
                Backend::Cluster(client)
            }
            _ => {
                return Err(PyValueError::new_err(
                    "give either an address or nodes=[...], not both",
                ))
            }
        };
        Ok(Native { backend })
    }

    /// Stores a tensor: dtype and layout codes, shape, and its bytes as a
    /// flat uint8 array, sent from the array's own memory.
    fn put(
        &self,
        py: Python<'_>,
        key: String,
        dtype: i64,
        shape: Vec<u64>,
        layout: i64,
        data: Bound<'_, PyArray1<u8>>,
    ) -> PyResult<()> {
        let tensor = tensor(py, dtype, shape, layout, &data)?;
        let backend = self.backend.clone();
        wait(py, async move { backend.put(&key, tensor).await })
    }

    /// `(dtype, shape, layout, flat uint8 array)` or `None`.
    fn get(&self, py: Python<'_>, key: String) -> PyResult<Fetched> {
        let backend = self.backend.clone();
        wait(py, async move { backend.get(&key).await }).map(Fetched)
    }

    /// Reads the tensor into `out` (a writable, contiguous uint8 array of
    /// its byte size); its metadata, or `None` if not cached.
    fn get_into(
        &self,
        py: Python<'_>,
        key: String,
        out: Bound<'_, PyArray1<u8>>,
    ) -> PyResult<Option<MetaParts>> {
        let mut target = Target::new(&out)?;
        let backend = self.backend.clone();
        let meta = wait(py, async move {
            read_into(&backend, &key, target.slice()).await
        })?;
        Ok(meta.map(meta_parts))
    }

    /// A list with one `get` result per key.
    fn get_many(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<FetchedMany> {
        let backend = self.backend.clone();
        wait(py, async move { backend.get_many(keys).await }).map(FetchedMany)
    }

    /// Whether the key was cached.
    fn delete(&self, py: Python<'_>, key: String) -> PyResult<bool> {
        let backend = self.backend.clone();
        wait(py, async move { backend.delete(&key).await })
    }

    /// The counters, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let backend = self.backend.clone();
        wait(py, async move { backend.stats().await })?.into_pyobject(py)
    }

    /// `put`, as an awaitable.
    fn aput<'py>(
        &self,
        py: Python<'py>,
        key: String,
        dtype: i64,
        shape: Vec<u64>,
        layout: i64,
        data: Bound<'py, PyArray1<u8>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let tensor = tensor(py, dtype, shape, layout, &data)?;
        let backend = self.backend.clone();
        awaitable(py, async move { backend.put(&key, tensor).await })
    }

    /// `get`, as an awaitable.
    fn aget<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let backend = self.backend.clone();
        awaitable(py, async move { backend.get(&key).await.map(Fetched) })
    }

    /// `get_into`, as an awaitable. `out` is held until the read ends.
    fn aget_into<'py>(
        &self,
        py: Python<'py>,
        key: String,
        out: Bound<'py, PyArray1<u8>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut target = Target::new(&out)?;
        let backend = self.backend.clone();
        awaitable(py, async move {
            let meta = read_into(&backend, &key, target.slice()).await?;
            Ok(meta.map(meta_parts))
        })
    }

    /// `get_many`, as an awaitable.
    fn aget_many<'py>(&self, py: Python<'py>, keys: Vec<String>) -> PyResult<Bound<'py, PyAny>> {
        let backend = self.backend.clone();
        awaitable(
            py,
            async move { backend.get_many(keys).await.map(FetchedMany) },
        )
    }

    /// `delete`, as an awaitable.
    fn adelete<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let backend = self.backend.clone();
        awaitable(py, async move { backend.delete(&key).await })
    }

    /// `stats`, as an awaitable.
    fn astats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let backend = self.backend.clone();
        awaitable(py, async move { backend.stats().await })
    }
}

/// Runs `work` on the shared runtime with the GIL released, so other
/// Python threads run meanwhile. Every [`SIGNAL_CHECK`] it looks for a
/// signal: Ctrl-C abandons the call (dropping it, as a timeout would) and
/// raises `KeyboardInterrupt`.
fn wait<T: Send>(
    py: Python<'_>,
    work: impl Future<Output = Result<T, ClientError>> + Send,
) -> PyResult<T> {
    let mut work = std::pin::pin!(work);
    loop {
        let step = py.detach(|| {
            get_runtime().block_on(async { tokio::time::timeout(SIGNAL_CHECK, &mut work).await })
        });
        match step {
            Ok(result) => return result.map_err(|e| to_py(py, e)),
            Err(_) => py.check_signals()?,
        }
    }
}

/// `work` as an asyncio awaitable, run on the shared runtime.
fn awaitable<'py, T>(
    py: Python<'py>,
    work: impl Future<Output = Result<T, ClientError>> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    future_into_py(py, async move { work.await.map_err(to_py_detached) })
}

/// `get_into`, with a size mismatch said in the caller's terms.
async fn read_into(
    backend: &Backend,
    key: &str,
    out: &mut [u8],
) -> Result<Option<TensorMeta>, ClientError> {
    backend.get_into(key, out).await.map_err(|e| match e {
        ClientError::Invalid(redstone::Error::InvalidSize { expected, actual }) => {
            ClientError::InvalidArgument(format!(
                "out is {actual} bytes but the tensor under {key:?} is {expected}: \
                 give get_into an array of exactly its size (out untouched)"
            ))
        }
        other => other,
    })
}

/// A tensor over `data`'s memory, checked against its metadata.
fn tensor(
    py: Python<'_>,
    dtype: i64,
    shape: Vec<u64>,
    layout: i64,
    data: &Bound<'_, PyArray1<u8>>,
) -> PyResult<Tensor> {
    let invalid = |e: redstone::Error| to_py(py, ClientError::from(e));
    let meta = TensorMeta::from_codes(dtype, shape, layout).map_err(invalid)?;
    Tensor::new(meta, pinned(data)?).map_err(invalid)
}

fn meta_parts(meta: TensorMeta) -> MetaParts {
    (
        meta.dtype().code(),
        meta.shape().to_vec(),
        meta.layout().code(),
    )
}

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!(
            "{name} must be a non-negative number of seconds, not {value}"
        ))
    })
}
