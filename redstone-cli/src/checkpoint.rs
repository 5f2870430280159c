//! `redstone load` and `redstone dump`: a safetensors checkpoint in and
//! out of the cache.
//!
//! `load` maps the file and puts every tensor under `PREFIX` + its name,
//! each payload a view of the mapping (no copy in this process), several
//! at once; then it puts the manifest under `PREFIX` itself: the file's
//! own header (names, dtypes, shapes, offsets, `__metadata__`), stored as
//! a `u8` tensor. `dump` reads the manifest back, fetches the tensors in
//! file order and writes header + data: the same bytes as the original
//! file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use redstone::client::{ClientError, TensorStore};
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
use redstone::tensor::Tensor;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};
use tokio::task::JoinSet;

use crate::error::CliError;
use crate::target::Store;

/// How to load.
#[derive(Debug)]
pub struct Load {
    pub prefix: String,
    pub skip_existing: bool,
    pub concurrency: usize,
}

/// A checkpoint file, mapped and checked.
pub struct Checkpoint {
    path: PathBuf,
    /// The file's header (its JSON), stored as the manifest.
    manifest: Bytes,
    /// The file's data region; each tensor is a slice of it.
    data: Bytes,
    /// Its tensors in file order.
    tensors: Vec<(String, TensorInfo, TensorMeta)>,
}

impl Checkpoint {
    /// Maps `path` and checks it: a valid safetensors file whose every
    /// dtype Redstone stores.
    pub fn open(path: &Path) -> Result<Checkpoint, CliError> {
        let bad = |why: String| CliError::Usage(format!("{}: {why}", path.display()));
        let file = File::open(path).map_err(|e| bad(e.to_string()))?;
        // SAFETY: the mapping is read-only and private to this process; if
        // another process truncates the file while it is mapped, reads of
        // the lost pages fault (SIGBUS) — the documented risk of every
        // mmap, taken so that a checkpoint larger than RAM is never read
        // whole.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| bad(e.to_string()))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&map)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let tensors = plan(&metadata).map_err(bad)?;
        // read_metadata checked that header and data fill the file.
        let map = Bytes::from_owner(map);
        Ok(Checkpoint {
            path: path.to_owned(),
            manifest: map.slice(8..8 + header_len),
            data: map.slice(8 + header_len..),
            tensors,
        })
    }
}

/// What became of one tensor's put.
enum Put {
    Stored,
    /// Already cached, with these very contents (`--skip-existing`).
    Skipped,
}

/// Puts `tensor` under `key`; with `skip_existing`, a key already holding
/// this very tensor is skipped, and one holding anything else refused.
async fn put_one(
    store: &Store,
    key: &str,
    tensor: Tensor,
    skip_existing: bool,
) -> Result<Put, CliError> {
    match store.put_tensor(key, tensor.clone()).await {
        Ok(()) => Ok(Put::Stored),
        Err(ClientError::AlreadyExists(_)) if skip_existing => {
            let cached = store.fetch(key).await?;
            if cached == tensor {
                Ok(Put::Skipped)
            } else {
                Err(CliError::Refused(format!(
                    "{key} is cached with other contents than the checkpoint's; \
                     delete it or load under another --prefix"
                )))
            }
        }
        Err(ClientError::AlreadyExists(_)) => Err(CliError::Refused(format!(
            "{key} is already cached (--skip-existing skips tensors cached with the same contents)"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The Redstone dtype of a safetensors dtype.
fn dtype_of(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::BOOL => DType::Bool,
        Dtype::U8 => DType::U8,
        Dtype::I8 => DType::I8,
        Dtype::I16 => DType::I16,
        Dtype::U16 => DType::U16,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I32 => DType::I32,
        Dtype::U32 => DType::U32,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        Dtype::I64 => DType::I64,
        Dtype::U64 => DType::U64,
        _ => return None,
    })
}

/// The header's tensors in file order, each with the metadata it is
/// stored with; refuses a checkpoint with a dtype Redstone lacks before
/// anything is put.
fn plan(metadata: &Metadata) -> Result<Vec<(String, TensorInfo, TensorMeta)>, String> {
    let mut out = Vec::new();
    for name in metadata.offset_keys() {
        let info = metadata
            .info(&name)
            .ok_or_else(|| format!("{name} is listed but has no entry"))?;
        if name.is_empty() {
            return Err("a tensor has an empty name".into());
        }
        let dtype = dtype_of(info.dtype)
            .ok_or_else(|| format!("{name}: Redstone has no {:?} dtype", info.dtype))?;
        let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
        let meta = TensorMeta::new(dtype, shape, StorageLayout::RowMajor)
            .map_err(|e| format!("{name}: {e}"))?;
        out.push((name, info.clone(), meta));
    }
    Ok(out)
}

fn progress(total: u64, verb: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let template =
        format!("{verb} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// One line of summary: how much, how fast.
fn rate(bytes: u64, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    format!(
        "{:.1} MB in {:.2} s ({:.0} MB/s)",
        bytes as f64 / 1e6,
        secs,
        bytes as f64 / 1e6 / secs
    )
}

/// Puts every tensor of a checkpoint, spread over `stores` (connections
/// to one server, or one cluster client), then its manifest.
pub async fn load(
    stores: &[Store],
    checkpoint: Checkpoint,
    args: Load,
) -> Result<String, CliError> {
    let Some(store) = stores.first() else {
        return Err(CliError::Usage("no connection to load over".into()));
    };
    let Checkpoint {
        path,
        manifest,
        data,
        tensors,
    } = checkpoint;
    let bad = |why: String| CliError::Usage(format!("{}: {why}", path.display()));
    let started = Instant::now();
    let bar = progress(data.len() as u64, "loading");
    let mut in_flight = JoinSet::new();
    let (mut stored, mut skipped, mut bytes) = (0usize, 0usize, 0u64);
    let count = tensors.len();
    let mut issued = 0usize;
    let mut tensors = tensors.into_iter();
    let prefix: Arc<str> = args.prefix.clone().into();
    loop {
        while in_flight.len() < args.concurrency.max(1) {
            let Some((name, info, meta)) = tensors.next() else {
                break;
            };
            let (start, end) = info.data_offsets;
            let tensor = Tensor::new(meta, data.slice(start..end))
                .map_err(|e| bad(format!("{name}: {e}")))?;
            let store = stores[issued % stores.len()].clone();
            issued += 1;
            let key = format!("{prefix}{name}");
            let skip = args.skip_existing;
            in_flight.spawn(async move {
                let len = tensor.data().len() as u64;
                (len, put_one(&store, &key, tensor, skip).await)
            });
        }
        let Some(joined) = in_flight.join_next().await else {
            break;
        };
        let (len, result) =
            joined.map_err(|e| CliError::Refused(format!("a put task failed: {e}")))?;
        match result {
            Ok(Put::Stored) => stored += 1,
            Ok(Put::Skipped) => skipped += 1,
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        }
        bytes += len;
        bar.inc(len);
        bar.set_message(format!("{}/{count} tensors", stored + skipped));
    }
    bar.finish_and_clear();

    // Last, so that a manifest means every tensor was stored.
    let meta = TensorMeta::new(
        DType::U8,
        vec![manifest.len() as u64],
        StorageLayout::RowMajor,
    )
    .map_err(|e| bad(e.to_string()))?;
    let manifest = Tensor::new(meta, manifest).map_err(|e| bad(e.to_string()))?;
    match put_one(store, &args.prefix, manifest, true).await {
        Ok(_) => {}
        Err(CliError::Refused(_)) => {
            return Err(CliError::Refused(format!(
                "another checkpoint's manifest is cached under {:?}; choose another --prefix",
                args.prefix
            )))
        }
        Err(e) => return Err(e),
    }
    let n = stored + skipped;
    let skipped = if skipped > 0 {
        format!(" ({skipped} already cached, skipped)")
    } else {
        String::new()
    };
    Ok(format!(
        "loaded {n} tensors under {:?}{skipped}: {}; `redstone dump {:?} -o FILE` writes them back",
        args.prefix,
        rate(bytes, started),
        args.prefix
    ))
}

/// Writes the checkpoint loaded under `prefix` to `out`: its header, then
/// each tensor's bytes in file order, checked against the manifest.
pub async fn dump(store: &Store, prefix: &str, out: &Path) -> Result<String, CliError> {
    let manifest = match store.fetch(prefix).await {
        Err(CliError::NotFound(_)) => {
            return Err(CliError::NotFound(format!(
                "no checkpoint manifest under {prefix:?} (was it loaded with `redstone load --prefix {prefix}`?)"
            )))
        }
        other => other?,
    };
    let header = manifest.data().clone();
    let metadata: Metadata = serde_json::from_slice(&header).map_err(|e| {
        CliError::Refused(format!(
            "the manifest under {prefix:?} is not a safetensors header: {e}"
        ))
    })?;
    let tensors = plan(&metadata).map_err(CliError::Refused)?;
    let total = metadata.data_len() as u64;

    // Written beside the destination, renamed over it once complete.
    let partial = crate::partial_path(out);
    let io = |e: std::io::Error| CliError::Output(format!("cannot write {}: {e}", out.display()));
    let result = async {
        let mut file = BufWriter::with_capacity(1 << 20, File::create(&partial).map_err(io)?);
        file.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(io)?;
        file.write_all(&header).map_err(io)?;
        let started = Instant::now();
        let bar = progress(total, "dumping");
        for (i, (name, info, meta)) in tensors.iter().enumerate() {
            let key = format!("{prefix}{name}");
            let tensor = store.fetch(&key).await?;
            let (start, end) = info.data_offsets;
            if tensor.meta() != meta || tensor.data().len() != end - start {
                bar.abandon();
                return Err(CliError::Refused(format!(
                    "{key} holds {:?} {:?}, not the checkpoint's {:?} {:?}",
                    tensor.meta().dtype(),
                    tensor.meta().shape(),
                    meta.dtype(),
                    meta.shape()
                )));
            }
            file.write_all(tensor.data()).map_err(io)?;
            bar.inc(tensor.data().len() as u64);
            bar.set_message(format!("{}/{} tensors", i + 1, tensors.len()));
        }
        file.flush().map_err(io)?;
        file.get_ref().sync_all().map_err(io)?;
        bar.finish_and_clear();
        Ok(started)
    }
    .await;
    let started = match result {
        Ok(started) => started,
        Err(e) => {
            std::fs::remove_file(&partial).ok();
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&partial, out) {
        std::fs::remove_file(&partial).ok();
        return Err(io(e));
    }
    Ok(format!(
        "wrote {} tensors to {}: {}",
        tensors.len(),
        out.display(),
        rate(total, started)
    ))
}
