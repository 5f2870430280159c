//! `.npy` files ↔ tensors, through the `npyz` crate: the header is
//! npyz's; the data is the tensor's raw bytes, read and written as is.

use std::io::{Cursor, Write};
use std::path::Path;

use bytes::Bytes;
use npyz::{DType as NpyType, NpyHeader, Order, TypeStr, WriteOptions, WriterBuilder};
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
use redstone::tensor::Tensor;

use crate::error::CliError;

/// The `.npy` type string of each dtype Redstone stores (little-endian),
/// or `None` (bf16 has no `.npy` type).
fn type_str(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        DType::BF16 => return None,
    })
}

/// The dtype of a `.npy` type string such as `<f4`.
fn dtype_of(ts: &str) -> Result<DType, String> {
    let (order, code) = ts.split_at(ts.len().min(1));
    if order == ">" && !code.ends_with('1') {
        return Err(format!(
            "{ts} is big-endian; save it little-endian (arr.astype(arr.dtype.newbyteorder('<')))"
        ));
    }
    DType::ALL
        .into_iter()
        .find(|&d| type_str(d).is_some_and(|t| t[1..] == *code))
        .ok_or_else(|| format!("the .npy type {ts} has no Redstone dtype"))
}

/// The length of a `.npy` file's header as its preamble states it:
/// magic, version, then a 2-byte (version 1) or 4-byte length.
fn stated_header_end(raw: &[u8]) -> Option<usize> {
    let rest = raw.strip_prefix(b"\x93NUMPY")?;
    let (&major, rest) = rest.split_first()?;
    let rest = rest.get(1..)?;
    match major {
        1 => Some(10 + u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize),
        _ => Some(12 + u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize),
    }
}

/// Reads a `.npy` file into a tensor (its data not copied again).
pub fn read(path: &Path) -> Result<Tensor, CliError> {
    let bad = |why: String| CliError::Usage(format!("{}: {why}", path.display()));
    let raw = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    // npyz allocates what the preamble states before reading the header:
    // hold it to the file's size.
    match stated_header_end(&raw) {
        Some(end) if end <= raw.len() => {}
        _ => return Err(bad("not a .npy file: no complete header".into())),
    }
    let mut cursor = Cursor::new(&raw[..]);
    let header =
        NpyHeader::from_reader(&mut cursor).map_err(|e| bad(format!("not a .npy file: {e}")))?;
    let data_start = cursor.position() as usize;
    let ts = match header.dtype() {
        NpyType::Plain(ts) => ts.to_string(),
        other => {
            return Err(bad(format!(
                "structured .npy types ({}) are not tensors",
                other.descr()
            )))
        }
    };
    let dtype = dtype_of(&ts).map_err(bad)?;
    let layout = match header.order() {
        Order::C => StorageLayout::RowMajor,
        Order::Fortran => StorageLayout::ColumnMajor,
    };
    let meta =
        TensorMeta::new(dtype, header.shape().to_vec(), layout).map_err(|e| bad(e.to_string()))?;
    let data = Bytes::from(raw).slice(data_start..);
    Tensor::new(meta, data).map_err(|e| bad(format!("the data does not match the header: {e}")))
}

/// Writes `tensor` as a `.npy` file.
pub fn write(path: &Path, tensor: &Tensor) -> Result<(), CliError> {
    let meta = tensor.meta();
    let ts = type_str(meta.dtype()).ok_or_else(|| {
        CliError::Usage(format!(
            "{:?} has no .npy type; `redstone dump` writes safetensors, which has",
            meta.dtype()
        ))
    })?;
    let ts: TypeStr = ts
        .parse()
        .map_err(|e| CliError::Usage(format!("{ts}: {e}")))?;
    let order = match meta.layout() {
        StorageLayout::RowMajor => Order::C,
        StorageLayout::ColumnMajor => Order::Fortran,
    };
    let io = |e: std::io::Error| CliError::Output(format!("cannot write {}: {e}", path.display()));
    // Written beside the destination and renamed over it once complete.
    let partial = crate::partial_path(path);
    let written = (|| {
        let file = std::fs::File::create(&partial)?;
        let mut out = WriteOptions::new_header_only()
            .dtype(NpyType::Plain(ts))
            .shape(meta.shape())
            .order(order)
            .writer(std::io::BufWriter::new(file))
            .write_header_only()?;
        out.write_all(tensor.data())?;
        out.flush()
    })();
    match written.and_then(|()| std::fs::rename(&partial, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            std::fs::remove_file(&partial).ok();
            Err(io(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_but_bf16_round_trips_through_its_type_string() {
        for dtype in DType::ALL {
            match type_str(dtype) {
                Some(ts) => assert_eq!(dtype_of(ts), Ok(dtype)),
                None => assert_eq!(dtype, DType::BF16),
            }
        }
        assert!(dtype_of(">f4").unwrap_err().contains("big-endian"));
        assert_eq!(dtype_of("<u1"), Ok(DType::U8));
        assert!(dtype_of("<c8").is_err());
    }

    #[test]
    fn a_stated_header_longer_than_the_file_is_caught() {
        let mut v1 = b"\x93NUMPY\x01\x00".to_vec();
        v1.extend(70u16.to_le_bytes());
        assert_eq!(stated_header_end(&v1), Some(80));
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend(u32::MAX.to_le_bytes());
        assert_eq!(stated_header_end(&v2), Some(12 + u32::MAX as usize));
        assert_eq!(stated_header_end(b"\x93NUMPY\x02"), None);
        assert_eq!(stated_header_end(b"PK\x03\x04"), None);
    }
}
