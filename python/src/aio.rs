//! Calls as asyncio awaitables.
//!
//! A call runs as a task on the shared runtime; when it ends, its result is
//! handed to the event loop with `call_soon_threadsafe`, by one delivering
//! thread that takes the GIL once per batch of results (waiting for the
//! GIL there stalls no network I/O). The Python
//! side (`redstone/client.py`) awaits the future; if its task is cancelled
//! it aborts the call and still waits for this future, which resolves only
//! once the Rust side has let go of the caller's arrays.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;
use redstone::client::ClientError;
use tokio::task::AbortHandle;

use crate::errors::to_py;
use crate::process::PerProcess;
use crate::runtime::runtime;

/// Set when the interpreter begins to shut down: results are no longer
/// delivered.
static CLOSING: AtomicBool = AtomicBool::new(false);
/// Threads of this process delivering a result now (attached to the
/// interpreter, or about to be); a forked child starts at none.
static DELIVERING: PerProcess<AtomicUsize> = PerProcess::new();

/// This process's count of delivering threads.
fn delivering() -> &'static AtomicUsize {
    let count: Result<_, std::convert::Infallible> =
        DELIVERING.get_or_try_init(|| Ok(AtomicUsize::new(0)));
    match count {
        Ok(count) => count,
        Err(never) => match never {},
    }
}

/// Registered with `atexit`: stops deliveries and waits for those under
/// way to let go of the interpreter. A thread that held the GIL while the
/// interpreter finalized would crash the process on its way out
/// (`PyGILState_Release`), even after every awaitable had resolved.
#[pyfunction]
pub fn shutdown(py: Python<'_>) {
    CLOSING.store(true, Ordering::SeqCst);
    py.detach(|| {
        let deadline = Instant::now() + Duration::from_secs(2);
        while delivering().load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// A result to hand to its event loop, with the GIL held.
type Delivery = Box<dyn FnOnce(Python<'_>) + Send>;

/// The delivering thread's queue (a forked child starts its own thread).
static DELIVERIES: PerProcess<mpsc::Sender<Delivery>> = PerProcess::new();

/// Queues `delivery` for the delivering thread: one thread, which takes
/// the GIL once for every result that arrived meanwhile (not a thread per
/// result, nor a runtime worker blocked on the GIL).
fn submit(delivery: Delivery) {
    let queue = DELIVERIES.get_or_try_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("redstone-deliver".into())
            .spawn(move || deliver(rx))
            .map(|_| tx)
    });
    match queue {
        Ok(queue) => {
            if let Err(unsent) = queue.send(delivery) {
                std::mem::forget(unsent);
            }
        }
        // No thread, no delivery: the awaitable never resolves, as at
        // shutdown. (Only when the process can start no thread.)
        Err(_) => std::mem::forget(delivery),
    }
}

/// The delivering thread: batches of results, one GIL acquisition each.
fn deliver(rx: mpsc::Receiver<Delivery>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        // Counted before the check, so that `shutdown` either sees this
        // thread or this thread sees `CLOSING`.
        delivering().fetch_add(1, Ordering::SeqCst);
        if CLOSING.load(Ordering::SeqCst) {
            delivering().fetch_sub(1, Ordering::SeqCst);
            // No one is left to tell; the Python objects are leaked with
            // the interpreter.
            std::mem::forget(batch);
            continue;
        }
        Python::try_attach(|py| {
            for delivery in batch.drain(..) {
                delivery(py);
            }
        });
        if !batch.is_empty() {
            std::mem::forget(batch);
        }
        delivering().fetch_sub(1, Ordering::SeqCst);
    }
}

/// Stops a call started by [`spawn`]: its task is dropped at its next
/// step. Its future still resolves, when that has happened.
#[pyclass(frozen, module = "redstone._redstone")]
pub struct Abort(AbortHandle);

#[pymethods]
impl Abort {
    fn __call__(&self) {
        self.0.abort();
    }
}

/// Starts `work` and returns `(future, abort)`: an asyncio future of the
/// running loop that gets its result, and an [`Abort`]. `after` runs once
/// `work` has ended, however it ended (finished, failed or aborted), and
/// gives what must be released with the GIL held (a put's array).
pub fn spawn<'py, T, A>(
    py: Python<'py>,
    work: impl Future<Output = Result<T, ClientError>> + Send + 'static,
    after: impl Future<Output = A> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>>
where
    T: for<'a> IntoPyObject<'a> + Send + 'static,
    A: Send + 'static,
{
    if CLOSING.load(Ordering::SeqCst) {
        return Err(PyRuntimeError::new_err(
            "Python is shutting down: AsyncClient calls can no longer be delivered",
        ));
    }
    let event_loop = py
        .import("asyncio")?
        .call_method0("get_running_loop")
        .map_err(|_| {
            PyValueError::new_err("AsyncClient calls need a running asyncio event loop")
        })?;
    let future = event_loop.call_method0("create_future")?;
    let resolve = py.import("redstone._aio")?.getattr("resolve")?;
    let rt = runtime()?;
    let task = rt.spawn(work);
    let abort = Abort(task.abort_handle());
    let (event_loop, target, resolve) = (
        event_loop.unbind(),
        future.clone().unbind(),
        resolve.unbind(),
    );
    rt.spawn(async move {
        let outcome = task.await;
        let released = after.await;
        submit(Box::new(move |py: Python<'_>| {
            let (ok, value) = match outcome {
                Ok(Ok(value)) => match value.into_py_any(py) {
                    Ok(value) => (true, value),
                    Err(e) => (false, e.into_value(py).into_any()),
                },
                Ok(Err(e)) => (false, to_py(py, e).into_value(py).into_any()),
                Err(e) => {
                    let why = if e.is_cancelled() {
                        "cancelled"
                    } else {
                        "failed"
                    };
                    let err = PyRuntimeError::new_err(format!("the call was {why}"));
                    (false, err.into_value(py).into_any())
                }
            };
            // A closed loop (the program is ending) takes no callbacks.
            let _ =
                event_loop.call_method1(py, "call_soon_threadsafe", (resolve, target, ok, value));
            drop(released);
        }));
    });
    (future, Bound::new(py, abort)?).into_bound_py_any(py)
}
