//! Results as Python objects.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::IntoPyObjectExt;
use redstone::disk::DiskStats;
use redstone::stats::Stats;
use redstone::tensor::Tensor;

use crate::arrays::into_array;
use crate::backend::Report;

/// A received tensor as `(dtype code, shape, layout code, flat uint8 array)`,
/// or `None`.
pub struct Fetched(pub Option<Tensor>);

impl<'py> IntoPyObject<'py> for Fetched {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.0 {
            None => Ok(py.None().into_bound(py)),
            Some(tensor) => parts(py, tensor),
        }
    }
}

/// Several [`Fetched`], as a list.
pub struct FetchedMany(pub Vec<Option<Tensor>>);

impl<'py> IntoPyObject<'py> for FetchedMany {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let items = self
            .0
            .into_iter()
            .map(|t| Fetched(t).into_pyobject(py))
            .collect::<PyResult<Vec<_>>>()?;
        items.into_bound_py_any(py)
    }
}

fn parts(py: Python<'_>, tensor: Tensor) -> PyResult<Bound<'_, PyAny>> {
    let (meta, data) = tensor.into_parts();
    let array = into_array(py, data)?;
    let tuple = PyTuple::new(
        py,
        [
            meta.dtype().code().into_bound_py_any(py)?,
            meta.shape().into_bound_py_any(py)?,
            meta.layout().code().into_bound_py_any(py)?,
            array.into_any(),
        ],
    )?;
    Ok(tuple.into_any())
}

impl<'py> IntoPyObject<'py> for Report {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    /// The counters as a dict; a cluster's also has `nodes`, a list of
    /// dicts with each node's `addr`, `up` and counters (or `error`); one
    /// server's has `disk`: its disk tier's counters, or `None`.
    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let dict = stats_dict(py, &self.total)?;
        if let Some(l1) = self.l1 {
            let entry = PyDict::new(py);
            entry.set_item("hits", l1.hits)?;
            entry.set_item("misses", l1.misses)?;
            entry.set_item("evictions", l1.evictions)?;
            entry.set_item("entries", l1.entries)?;
            entry.set_item("bytes", l1.bytes)?;
            entry.set_item("capacity", l1.capacity)?;
            dict.set_item("l1", entry)?;
        } else {
            dict.set_item("l1", py.None())?;
        }
        if let Some(disk) = self.disk {
            let disk = disk.map(|d| disk_dict(py, &d)).transpose()?;
            dict.set_item("disk", disk)?;
        }
        if let Some(nodes) = self.nodes {
            let mut list = Vec::with_capacity(nodes.len());
            for node in nodes {
                let entry = match &node.stats {
                    Ok(stats) => stats_dict(py, stats)?,
                    Err(e) => {
                        let entry = PyDict::new(py);
                        entry.set_item("error", e.to_string())?;
                        entry
                    }
                };
                entry.set_item("addr", node.addr)?;
                entry.set_item("up", node.up)?;
                list.push(entry);
            }
            dict.set_item("nodes", list)?;
        }
        Ok(dict.into_any())
    }
}

fn disk_dict<'py>(py: Python<'py>, d: &DiskStats) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("entries", d.entries)?;
    dict.set_item("bytes", d.bytes)?;
    dict.set_item("limit", d.limit)?;
    dict.set_item("queued_bytes", d.queued_bytes)?;
    dict.set_item("hits", d.hits)?;
    dict.set_item("misses", d.misses)?;
    dict.set_item("promotions", d.promotions)?;
    dict.set_item("writes", d.writes)?;
    dict.set_item("dropped_writes", d.dropped_writes)?;
    dict.set_item("corrupt", d.corrupt)?;
    dict.set_item("evictions", d.evictions)?;
    dict.set_item("writable", d.writable)?;
    Ok(dict)
}

fn stats_dict<'py>(py: Python<'py>, s: &Stats) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("entries", s.entries)?;
    dict.set_item("memory_used", s.memory_used)?;
    dict.set_item("memory_limit", s.memory_limit)?;
    dict.set_item("hits", s.hits)?;
    dict.set_item("misses", s.misses)?;
    dict.set_item("evictions", s.evictions)?;
    dict.set_item("hit_rate", s.hit_rate)?;
    dict.set_item("memory_utilization", s.memory_utilization)?;
    Ok(dict)
}
