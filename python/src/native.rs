//! `Native`: the calls the Python classes make, each blocking (the GIL
//! released while it waits) or as an awaitable (`a`-prefixed, returning
//! `(future, abort)`; see `aio`).

use std::future::Future;
use std::time::Duration;

use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use redstone::client::ClientError;
use redstone::client::L1Options;
use redstone::cluster::{ClusterClient, ClusterConfig};
use redstone::fast::{FastClient, FastClientOptions};
use redstone::tensor::codec::Compression;
use redstone::tensor::meta::TensorMeta;
use redstone::tensor::Tensor;

use crate::aio;
use crate::arrays::{pinned, Expect, Released, Target};
use crate::backend::Backend;
use crate::convert::{Fetched, FetchedMany};
use crate::errors::to_py;
use crate::process::PerProcess;
use crate::runtime::runtime;

/// How often a blocking call looks for a signal (Ctrl-C) while it waits.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// A tensor's metadata as `(dtype code, shape, layout code)`.
type MetaParts = (u8, Vec<u64>, u8);

/// What a client connects to, kept so that a forked child can connect
/// again.
enum Spec {
    Node(String, FastClientOptions),
    Cluster(ClusterConfig),
}

impl Spec {
    fn connect(&self, py: Python<'_>) -> PyResult<Backend> {
        match self {
            Spec::Node(addr, options) => {
                let connect = FastClient::connect_with(addr.clone(), options.clone());
                Ok(Backend::Node(wait(py, connect)?))
            }
            Spec::Cluster(config) => ClusterClient::new(config.clone())
                .map(Backend::Cluster)
                .map_err(|e| to_py(py, ClientError::InvalidArgument(e.to_string()))),
        }
    }
}

/// One client, to a node or a cluster, shared by every thread and task
/// that holds it.
#[pyclass(frozen, module = "redstone._redstone")]
pub struct Native {
    spec: Spec,
    /// The backend of the process using the client.
    backend: PerProcess<Backend>,
}

#[pymethods]
impl Native {
    /// Connects to one server (`addr`) or prepares a cluster client
    /// (`nodes`, connected on first use). Timeouts are in seconds.
    #[new]
    #[pyo3(signature = (addr=None, *, nodes=None, replicas=None, write_quorum=None,
                        connect_timeout=5.0, timeout=None, max_tensor=None, l1=None,
                        l1_ttl=None, keep_mapped=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        addr: Option<String>,
        nodes: Option<Vec<String>>,
        replicas: Option<usize>,
        write_quorum: Option<usize>,
        connect_timeout: f64,
        timeout: Option<f64>,
        max_tensor: Option<u64>,
        l1: Option<u64>,
        l1_ttl: Option<f64>,
        keep_mapped: Option<u64>,
    ) -> PyResult<Native> {
        let connect_timeout = seconds("connect_timeout", connect_timeout)?;
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        let l1 = match (l1, l1_ttl) {
            (None, None) => None,
            (None, Some(_)) => return Err(PyValueError::new_err("l1_ttl needs l1=BYTES")),
            (Some(capacity), ttl) => Some(L1Options {
                capacity,
                ttl: ttl.map(|t| seconds("l1_ttl", t)).transpose()?,
            }),
        };
        let mut options = FastClientOptions {
            connect_timeout,
            request_timeout: timeout,
            // Python callers hold whole checkpoints: allow tensors far
            // larger than the Rust default's 4 GiB.
            max_payload: 64 << 30,
            l1: l1.clone(),
            // Arrays take their buffer over (no copy) only from a `Bytes`
            // over a plain `Vec`; a pooled one would be copied.
            buffer_pool: 0,
            keep_mapped: keep_mapped.unwrap_or(0),
            ..FastClientOptions::default()
        };
        if let Some(max) = max_tensor {
            options.max_payload = max;
        }
        let spec = match (addr, nodes) {
            (Some(addr), None) => {
                if replicas.is_some() || write_quorum.is_some() {
                    return Err(PyValueError::new_err(
                        "replicas and write_quorum apply to a cluster (nodes=[...])",
                    ));
                }
                Spec::Node(addr, options)
            }
            (None, Some(_)) if keep_mapped.is_some_and(|bytes| bytes > 0) => {
                return Err(PyValueError::new_err(
                    "keep_mapped applies to one server's local door (addr=\"unix:PATH\")",
                ));
            }
            (None, Some(nodes)) => {
                let mut config = ClusterConfig::new(nodes);
                config.connect_timeout = connect_timeout;
                config.l1 = l1;
                config.max_payload = options.max_payload;
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
                Spec::Cluster(config)
            }
            _ => {
                return Err(PyValueError::new_err(
                    "give either an address or nodes=[...], not both",
                ))
            }
        };
        let backend = spec.connect(py)?;
        Ok(Native {
            spec,
            backend: PerProcess::with(backend),
        })
    }

    /// Stores a tensor: dtype and layout codes, shape, and its bytes as a
    /// flat uint8 array, sent from the array's own memory (or compressed
    /// from it: `compress="lz4"`). Returns only once nothing reads the
    /// array any more, whatever the outcome.
    #[pyo3(signature = (key, dtype, shape, layout, data, compress=None))]
    #[allow(clippy::too_many_arguments)]
    fn put(
        &self,
        py: Python<'_>,
        key: String,
        dtype: i64,
        shape: Vec<u64>,
        layout: i64,
        data: Bound<'_, PyArray1<u8>>,
        compress: Option<&str>,
    ) -> PyResult<()> {
        let compression = compression(compress)?;
        let backend = self.backend(py)?;
        let (tensor, released) = tensor(dtype, shape, layout, &data)?;
        let sender = backend.clone();
        let result = wait(
            py,
            async move { sender.put(&key, tensor?, compression).await },
        );
        // Dropped here, with the GIL.
        drop(py.detach(|| block_on(release(backend, released))));
        result
    }

    /// `(dtype, shape, layout, flat uint8 array)` or `None`.
    fn get(&self, py: Python<'_>, key: String) -> PyResult<Fetched> {
        let backend = self.backend(py)?;
        wait(py, async move { backend.get(&key).await }).map(Fetched)
    }

    /// Reads the tensor into `out` (a writable, contiguous uint8 array of
    /// its byte size); its metadata, or `None` if not cached. With
    /// `expect`, `(dtype, shape, layout)` of the caller's array, a tensor
    /// that does not match is refused before `out` is written.
    #[pyo3(signature = (key, out, expect=None))]
    fn get_into(
        &self,
        py: Python<'_>,
        key: String,
        out: Bound<'_, PyArray1<u8>>,
        expect: Option<MetaParts>,
    ) -> PyResult<Option<MetaParts>> {
        let backend = self.backend(py)?;
        let mut target = Target::new(&out).map_err(|e| to_py(py, e))?;
        let meta = wait(py, async move {
            read_into(&backend, &key, target.slice(), expect).await
        })?;
        Ok(meta.map(meta_parts))
    }

    /// A list with one `get` result per key.
    fn get_many(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<FetchedMany> {
        let backend = self.backend(py)?;
        wait(py, async move { backend.get_many(keys).await }).map(FetchedMany)
    }

    /// Whether the key was cached.
    fn delete(&self, py: Python<'_>, key: String) -> PyResult<bool> {
        let backend = self.backend(py)?;
        wait(py, async move { backend.delete(&key).await })
    }

    /// The counters, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let backend = self.backend(py)?;
        wait(py, async move { backend.stats().await })?.into_pyobject(py)
    }

    /// `put`, as `(future, abort)`. The future resolves once nothing reads
    /// the array any more.
    #[pyo3(signature = (key, dtype, shape, layout, data, compress=None))]
    #[allow(clippy::too_many_arguments)]
    fn aput<'py>(
        &self,
        py: Python<'py>,
        key: String,
        dtype: i64,
        shape: Vec<u64>,
        layout: i64,
        data: Bound<'py, PyArray1<u8>>,
        compress: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let compression = compression(compress)?;
        let backend = self.backend(py)?;
        let (tensor, released) = tensor(dtype, shape, layout, &data)?;
        let sender = backend.clone();
        let work = async move { sender.put(&key, tensor?, compression).await };
        aio::spawn(py, work, release(backend, released))
    }

    /// `get`, as `(future, abort)`.
    fn aget<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let backend = self.backend(py)?;
        aio::spawn(
            py,
            async move { backend.get(&key).await.map(Fetched) },
            nothing(),
        )
    }

    /// `get_into`, as `(future, abort)`. `out` is written only by this call
    /// until the future resolves.
    #[pyo3(signature = (key, out, expect=None))]
    fn aget_into<'py>(
        &self,
        py: Python<'py>,
        key: String,
        out: Bound<'py, PyArray1<u8>>,
        expect: Option<MetaParts>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let backend = self.backend(py)?;
        let mut target = Target::new(&out).map_err(|e| to_py(py, e))?;
        let work = async move {
            let meta = read_into(&backend, &key, target.slice(), expect).await?;
            Ok(meta.map(meta_parts))
        };
        aio::spawn(py, work, nothing())
    }

    /// `get_many`, as `(future, abort)`.
    fn aget_many<'py>(&self, py: Python<'py>, keys: Vec<String>) -> PyResult<Bound<'py, PyAny>> {
        let backend = self.backend(py)?;
        let work = async move { backend.get_many(keys).await.map(FetchedMany) };
        aio::spawn(py, work, nothing())
    }

    /// `delete`, as `(future, abort)`.
    fn adelete<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let backend = self.backend(py)?;
        aio::spawn(py, async move { backend.delete(&key).await }, nothing())
    }

    /// `stats`, as `(future, abort)`.
    fn astats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let backend = self.backend(py)?;
        aio::spawn(py, async move { backend.stats().await }, nothing())
    }
}

impl Native {
    /// The backend of this process. In a child forked after the client was
    /// made, the parent's connections are not this process's to use (their
    /// threads did not survive the fork, and writing to them would
    /// interleave with the parent): the child connects again, once.
    fn backend(&self, py: Python<'_>) -> PyResult<Backend> {
        self.backend
            .get_or_try_init(|| self.spec.connect(py))
            .cloned()
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
    let rt = runtime()?;
    let mut work = std::pin::pin!(work);
    loop {
        let step = py
            .detach(|| rt.block_on(async { tokio::time::timeout(SIGNAL_CHECK, &mut work).await }));
        match step {
            Ok(result) => return result.map_err(|e| to_py(py, e)),
            Err(_) => py.check_signals()?,
        }
    }
}

/// Waits for `work` without looking at signals (for releases, which end
/// within the connections' write timeout).
fn block_on<T>(work: impl Future<Output = T>) -> Option<T> {
    Some(runtime().ok()?.block_on(work))
}

/// A `put`'s tensor over `data`'s memory (or why it is refused), and the
/// signal that the memory is no longer read. A refused tensor releases the
/// array at once, but its error is returned by the call's work, so that it
/// takes the same path as any other.
fn tensor(
    dtype: i64,
    shape: Vec<u64>,
    layout: i64,
    data: &Bound<'_, PyArray1<u8>>,
) -> PyResult<(Result<Tensor, ClientError>, Released)> {
    let (bytes, released) = pinned(data)?;
    let tensor = TensorMeta::from_codes(dtype, shape, layout)
        .and_then(|meta| Tensor::new(meta, bytes))
        .map_err(ClientError::from);
    Ok((tensor, released))
}

/// How long a finished put waits for its payload's frames to let go of the
/// array before it ends the connections holding them.
const RELEASE_GRACE: Duration = Duration::from_millis(200);

/// The array of a finished put, back from the last frame that held it.
/// After a success that is at once (a frame drops its payload as soon as
/// it is written, and the server answered after reading all of it); after
/// a failure or an interrupted call the payload may still be queued, or
/// half-written to a server that stopped reading: past [`RELEASE_GRACE`]
/// the connections holding it are ended, which drops it.
async fn release(backend: Backend, mut released: Released) -> Option<Py<PyArray1<u8>>> {
    if let Ok(array) = tokio::time::timeout(RELEASE_GRACE, &mut released).await {
        return array.ok();
    }
    // First the connections that failed (a cluster's replica that timed
    // out), then, if the payload is still held, every one.
    backend.reset_failed();
    if let Ok(array) = tokio::time::timeout(RELEASE_GRACE, &mut released).await {
        return array.ok();
    }
    backend.reset();
    released.await.ok()
}

/// Nothing to release after a call.
async fn nothing() {}

/// `get_into`, with the caller's array checked against the tensor, and a
/// size mismatch said in the caller's terms.
async fn read_into(
    backend: &Backend,
    key: &str,
    out: &mut [u8],
    expect: Option<MetaParts>,
) -> Result<Option<TensorMeta>, ClientError> {
    let expect = expect.map(|(dtype, shape, layout)| Expect {
        dtype,
        shape,
        layout,
    });
    let accept = |meta: &TensorMeta| expect.as_ref().map_or(Ok(()), |e| e.check(key, meta));
    backend
        .get_into(key, out, accept)
        .await
        .map_err(|e| match e {
            ClientError::Invalid(redstone::Error::InvalidSize { expected, actual }) => {
                ClientError::InvalidArgument(format!(
                    "out is {actual} bytes but the tensor under {key:?} is {expected}: \
                     give get_into an array of exactly its size (out untouched)"
                ))
            }
            other => other,
        })
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

/// A put's `compress=` argument: `None`/`"none"` or `"lz4"`.
fn compression(compress: Option<&str>) -> PyResult<Compression> {
    compress
        .unwrap_or("none")
        .parse()
        .map_err(PyValueError::new_err)
}
