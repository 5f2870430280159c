//! Tensor metadata: element type, shape and memory layout.
//!
//! A [`TensorMeta`] is validated when it is built, so every value of the type
//! describes a tensor whose byte size fits in a `u64`.

use std::fmt;
use std::sync::Arc;

use crate::Error;

/// The most dimensions a tensor may have.
///
/// Real models stay far below this; the limit exists so that a request can
/// never make the server allocate a shape of arbitrary length.
pub const MAX_RANK: usize = 32;

/// The element type of a tensor.
///
/// Each variant has a stable one-byte code ([`DType::code`]) shared by the
/// gRPC enum and the fast-path protocol. Codes are never reused or
/// renumbered: F32 to U8 are the original contract, later types follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE 754 float.
    F32,
    /// 64-bit IEEE 754 float.
    F64,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// 8-bit unsigned integer.
    U8,
    /// 16-bit IEEE 754 half-precision float.
    F16,
    /// 16-bit brain float.
    BF16,
    /// 8-bit signed integer.
    I8,
    /// 16-bit signed integer.
    I16,
    /// 16-bit unsigned integer.
    U16,
    /// 32-bit unsigned integer.
    U32,
    /// 64-bit unsigned integer.
    U64,
    /// Boolean, one byte per element (0 or 1).
    Bool,
}

impl DType {
    /// Every dtype, in code order.
    pub const ALL: [DType; 13] = [
        DType::F32,
        DType::F64,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::I16,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::Bool,
    ];

    /// The size of one element in bytes.
    pub const fn width(self) -> usize {
        match self {
            DType::U8 | DType::I8 | DType::Bool => 1,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// The stable wire code: the gRPC enum number and the fast-path byte.
    /// Zero means "unspecified" and is never a valid dtype.
    pub const fn code(self) -> u8 {
        match self {
            DType::F32 => 1,
            DType::F64 => 2,
            DType::I32 => 3,
            DType::I64 => 4,
            DType::U8 => 5,
            DType::F16 => 6,
            DType::BF16 => 7,
            DType::I8 => 8,
            DType::I16 => 9,
            DType::U16 => 10,
            DType::U32 => 11,
            DType::U64 => 12,
            DType::Bool => 13,
        }
    }

    /// The dtype with wire code `code`.
    ///
    /// ```
    /// use redstone::tensor::meta::DType;
    /// assert_eq!(DType::from_code(1).unwrap(), DType::F32);
    /// assert!(DType::from_code(0).is_err()); // unspecified
    /// ```
    pub fn from_code(code: i64) -> Result<DType, Error> {
        DType::ALL
            .into_iter()
            .find(|d| i64::from(d.code()) == code)
            .ok_or_else(|| {
                let what = if code == 0 { "unspecified" } else { "unknown" };
                Error::InvalidTensorMetadata(format!("{what} dtype (code {code})"))
            })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How a multi-dimensional tensor is laid out in its flat byte buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageLayout {
    /// The last dimension varies fastest (C order).
    RowMajor,
    /// The first dimension varies fastest (Fortran order).
    ColumnMajor,
}

impl StorageLayout {
    /// The stable wire code (the gRPC enum number). Zero means unspecified.
    pub const fn code(self) -> u8 {
        match self {
            StorageLayout::RowMajor => 1,
            StorageLayout::ColumnMajor => 2,
        }
    }

    /// The layout with wire code `code`.
    pub fn from_code(code: i64) -> Result<StorageLayout, Error> {
        match code {
            1 => Ok(StorageLayout::RowMajor),
            2 => Ok(StorageLayout::ColumnMajor),
            0 => Err(Error::InvalidTensorMetadata(
                "unspecified storage layout (code 0)".into(),
            )),
            other => Err(Error::InvalidTensorMetadata(format!(
                "unknown storage layout (code {other})"
            ))),
        }
    }
}

/// Validated tensor metadata: dtype, shape and layout.
///
/// A scalar has shape `[]` and one element; a shape with a zero dimension is
/// an empty tensor of zero bytes.
///
/// ```
/// use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
///
/// let meta = TensorMeta::new(DType::F32, vec![100, 768], StorageLayout::RowMajor)?;
/// assert_eq!(meta.numel(), 76_800);
/// assert_eq!(meta.byte_size(), 307_200);
///
/// // A shape whose byte size overflows is an error, never a panic.
/// assert!(TensorMeta::new(DType::F64, vec![u64::MAX, 2], StorageLayout::RowMajor).is_err());
/// # Ok::<(), redstone::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorMeta {
    dtype: DType,
    /// Shared, so that cloning metadata (every cache hit does) is a
    /// reference-count bump, not an allocation.
    shape: Arc<[u64]>,
    layout: StorageLayout,
    /// `numel × width`, computed once with checked arithmetic at construction.
    byte_size: u64,
}

impl TensorMeta {
    /// Validates and builds metadata. Fails with
    /// [`Error::InvalidTensorMetadata`] if the shape has more than
    /// [`MAX_RANK`] dimensions or its byte size overflows a `u64`.
    pub fn new(
        dtype: DType,
        shape: impl Into<Vec<u64>>,
        layout: StorageLayout,
    ) -> Result<TensorMeta, Error> {
        let shape = shape.into();
        if shape.len() > MAX_RANK {
            return Err(Error::InvalidTensorMetadata(format!(
                "rank {} exceeds the maximum of {MAX_RANK}",
                shape.len()
            )));
        }
        // An empty tensor is zero bytes whatever its other dimensions say.
        let byte_size = if shape.contains(&0) {
            Some(0)
        } else {
            shape
                .iter()
                .try_fold(dtype.width() as u64, |acc, &dim| acc.checked_mul(dim))
        };
        let byte_size = byte_size.ok_or_else(|| {
            Error::InvalidTensorMetadata(format!(
                "shape {shape:?} of {dtype} overflows a 64-bit byte size"
            ))
        })?;
        Ok(TensorMeta {
            dtype,
            shape: shape.into(),
            layout,
            byte_size,
        })
    }

    /// Validates and builds metadata from the stable codes of its dtype and
    /// layout ([`DType::code`], [`StorageLayout::code`]), as both wire
    /// formats carry them. Unknown or unspecified codes are
    /// [`Error::InvalidTensorMetadata`].
    ///
    /// ```
    /// use redstone::tensor::meta::{DType, TensorMeta};
    /// let meta = TensorMeta::from_codes(1, vec![2, 3], 1)?;
    /// assert_eq!((meta.dtype(), meta.byte_size()), (DType::F32, 24));
    /// assert!(TensorMeta::from_codes(99, vec![2], 1).is_err());
    /// # Ok::<(), redstone::Error>(())
    /// ```
    pub fn from_codes(
        dtype: i64,
        shape: impl Into<Vec<u64>>,
        layout: i64,
    ) -> Result<TensorMeta, Error> {
        TensorMeta::new(
            DType::from_code(dtype)?,
            shape,
            StorageLayout::from_code(layout)?,
        )
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The size of each dimension; empty for a scalar.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The memory layout.
    pub fn layout(&self) -> StorageLayout {
        self.layout
    }

    /// The number of elements: the product of the shape (1 for a scalar).
    pub fn numel(&self) -> u64 {
        self.byte_size / self.dtype.width() as u64
    }

    /// The exact number of payload bytes a tensor with this metadata holds.
    pub fn byte_size(&self) -> u64 {
        self.byte_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_has_one_element() {
        let m = TensorMeta::new(DType::I64, vec![], StorageLayout::RowMajor).unwrap();
        assert_eq!(m.numel(), 1);
        assert_eq!(m.byte_size(), 8);
    }

    #[test]
    fn zero_dimension_is_empty() {
        let m = TensorMeta::new(DType::F32, vec![3, 0, 5], StorageLayout::ColumnMajor).unwrap();
        assert_eq!(m.numel(), 0);
        assert_eq!(m.byte_size(), 0);
    }

    #[test]
    fn overflow_is_an_error() {
        let err = TensorMeta::new(DType::F32, vec![1 << 32, 1 << 31], StorageLayout::RowMajor)
            .unwrap_err();
        assert!(err.to_string().starts_with("InvalidTensorMetadata: "));
        // A zero dimension makes the tensor empty, wherever it stands.
        for shape in [vec![0, u64::MAX, u64::MAX], vec![u64::MAX, u64::MAX, 0]] {
            let m = TensorMeta::new(DType::U8, shape, StorageLayout::RowMajor).unwrap();
            assert_eq!(m.byte_size(), 0);
        }
    }

    #[test]
    fn rank_is_bounded() {
        assert!(TensorMeta::new(DType::U8, vec![1; MAX_RANK], StorageLayout::RowMajor).is_ok());
        assert!(
            TensorMeta::new(DType::U8, vec![1; MAX_RANK + 1], StorageLayout::RowMajor).is_err()
        );
    }

    #[test]
    fn codes_round_trip_and_never_move() {
        for d in DType::ALL {
            assert_eq!(DType::from_code(d.code().into()).unwrap(), d);
        }
        // The original contract's numbers.
        assert_eq!(DType::F32.code(), 1);
        assert_eq!(DType::U8.code(), 5);
        assert!(DType::from_code(0).is_err());
        assert!(DType::from_code(14).is_err());
        assert!(DType::from_code(-1).is_err());
        assert!(StorageLayout::from_code(3).is_err());
    }
}
