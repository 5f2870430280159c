//! Tensors: validated metadata plus the raw bytes it describes.
//!
//! The payload is a [`Bytes`]: cloning a tensor bumps a reference count and
//! never copies the data. Elements are stored in the machine's native byte
//! order (little-endian on every platform Redstone supports).

pub mod codec;
pub mod meta;
pub mod synthetic;

use bytes::Bytes;

use crate::Error;
use codec::Encoding;
use meta::{DType, StorageLayout, TensorMeta};

/// A Rust element type that maps to a [`DType`], for the typed helpers
/// [`Tensor::from_slice`], [`Tensor::as_slice`] and [`Tensor::to_vec`].
///
/// Implemented for `f32`, `f64`, `i8`, `i16`, `i32`, `i64`, `u8`, `u16`,
/// `u32` and `u64`. Half floats and booleans have no native Rust type here;
/// build those tensors from bytes with [`Tensor::new`].
pub trait Element: bytemuck::Pod {
    /// The dtype a tensor of this element type carries.
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {
        $(impl Element for $t { const DTYPE: DType = DType::$d; })*
    };
}

element!(
    f32 => F32, f64 => F64,
    i8 => I8, i16 => I16, i32 => I32, i64 => I64,
    u8 => U8, u16 => U16, u32 => U32, u64 => U64,
);

/// An immutable tensor: metadata plus exactly `meta.byte_size()` bytes.
///
/// A tensor may also hold its payload encoded ([`codec`]): then
/// [`data`](Tensor::data) is the encoded form, and
/// [`decoded`](Tensor::decoded) gives the raw tensor. Clients hand out raw
/// tensors; encoded ones live in the server, which stores what it was sent.
///
/// ```
/// use redstone::tensor::Tensor;
///
/// let t = Tensor::from_slice::<f32>(vec![2, 2], &[1.0, 2.0, 3.0, 4.0])?;
/// assert_eq!(t.meta().shape(), &[2, 2]);
/// assert_eq!(t.to_vec::<f32>()?, vec![1.0, 2.0, 3.0, 4.0]);
/// assert!(t.to_vec::<i32>().is_err()); // wrong dtype
/// # Ok::<(), redstone::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    meta: TensorMeta,
    encoding: Encoding,
    data: Bytes,
}

impl Tensor {
    /// Builds a tensor, checking that `data` is exactly as long as the
    /// metadata requires ([`Error::InvalidSize`] otherwise).
    pub fn new(meta: TensorMeta, data: impl Into<Bytes>) -> Result<Tensor, Error> {
        let data = data.into();
        if data.len() as u64 != meta.byte_size() {
            return Err(Error::InvalidSize {
                expected: meta.byte_size(),
                actual: data.len() as u64,
            });
        }
        Ok(Tensor {
            meta,
            encoding: Encoding::Raw,
            data,
        })
    }

    /// Builds a tensor from its payload in `encoding`. The framing of an
    /// encoded payload is checked against the metadata
    /// ([`codec::check`], [`Error::InvalidEncoding`]); its contents are
    /// checked when it is decoded.
    pub fn from_encoded(
        meta: TensorMeta,
        encoding: Encoding,
        data: impl Into<Bytes>,
    ) -> Result<Tensor, Error> {
        match encoding {
            Encoding::Raw => Tensor::new(meta, data),
            Encoding::Packed => {
                let data = data.into();
                codec::check(&meta, &data)?;
                Ok(Tensor {
                    meta,
                    encoding,
                    data,
                })
            }
        }
    }

    /// Builds a row-major tensor of `T` from a slice, copying it once.
    pub fn from_slice<T: Element>(
        shape: impl Into<Vec<u64>>,
        values: &[T],
    ) -> Result<Tensor, Error> {
        let meta = TensorMeta::new(T::DTYPE, shape, StorageLayout::RowMajor)?;
        let bytes: &[u8] = bytemuck::cast_slice(values);
        Tensor::new(meta, Bytes::copy_from_slice(bytes))
    }

    /// The tensor's metadata.
    pub fn meta(&self) -> &TensorMeta {
        &self.meta
    }

    /// The payload as held: the raw bytes, or their encoded form if
    /// [`encoding`](Tensor::encoding) is not [`Encoding::Raw`].
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// How the payload is held.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The raw tensor: itself if raw (no copy), else its payload decoded
    /// into a new buffer ([`Error::InvalidEncoding`] if it is corrupt).
    pub fn decoded(&self) -> Result<Tensor, Error> {
        match self.encoding {
            Encoding::Raw => Ok(self.clone()),
            Encoding::Packed => Ok(Tensor {
                meta: self.meta.clone(),
                encoding: Encoding::Raw,
                data: codec::decode(&self.meta, &self.data)?,
            }),
        }
    }

    /// Splits the tensor into metadata and payload (as held: see
    /// [`data`](Tensor::data)).
    pub fn into_parts(self) -> (TensorMeta, Bytes) {
        (self.meta, self.data)
    }

    /// Views the payload as a slice of `T`, without copying.
    ///
    /// Fails with [`Error::TypeMismatch`] if the tensor's dtype is not `T`'s,
    /// [`Error::Misaligned`] if the buffer is not aligned for `T` (use
    /// [`Tensor::to_vec`] then, which copies), or [`Error::InvalidEncoding`]
    /// if the payload is encoded (use [`Tensor::decoded`] first).
    pub fn as_slice<T: Element>(&self) -> Result<&[T], Error> {
        self.check_dtype::<T>()?;
        if self.encoding != Encoding::Raw {
            return Err(Error::InvalidEncoding(
                "the payload is encoded; decode the tensor to view it".into(),
            ));
        }
        bytemuck::try_cast_slice(&self.data).map_err(|_| Error::Misaligned {
            align: std::mem::align_of::<T>(),
        })
    }

    /// Copies the payload into a `Vec<T>`; works whatever the alignment,
    /// and decodes an encoded payload.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, Error> {
        self.check_dtype::<T>()?;
        match self.encoding {
            Encoding::Raw => Ok(bytemuck::pod_collect_to_vec(&self.data)),
            _ => Ok(bytemuck::pod_collect_to_vec(self.decoded()?.data())),
        }
    }

    /// A 64-bit content digest (XXH3) of the metadata and the raw payload:
    /// two tensors with the same digest are, short of a 2^-64 accident, the
    /// same tensor, however each is encoded. It reads every byte (~10 GB/s;
    /// an encoded payload is decoded a block at a time), so callers compute
    /// it only when they must compare values (the cluster's put conflicts).
    /// A corrupt encoded payload gets a digest no raw tensor has.
    ///
    /// ```
    /// use redstone::tensor::Tensor;
    /// let a = Tensor::from_slice::<f32>(vec![2], &[1.0, 2.0])?;
    /// let b = Tensor::from_slice::<f32>(vec![2], &[1.0, 2.5])?;
    /// let c = Tensor::from_slice::<f32>(vec![1, 2], &[1.0, 2.0])?;
    /// assert_eq!(a.digest(), a.clone().digest());
    /// assert_ne!(a.digest(), b.digest()); // other values
    /// assert_ne!(a.digest(), c.digest()); // same bytes, other shape
    /// # Ok::<(), redstone::Error>(())
    /// ```
    pub fn digest(&self) -> u64 {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(&[self.meta.dtype().code(), self.meta.layout().code()]);
        hasher.update(&(self.meta.shape().len() as u32).to_le_bytes());
        for dim in self.meta.shape() {
            hasher.update(&dim.to_le_bytes());
        }
        match self.encoding {
            Encoding::Raw => hasher.update(&self.data),
            Encoding::Packed => {
                if codec::visit_raw(&self.meta, &self.data, |block| hasher.update(block)).is_err() {
                    hasher.update(b"corrupt encoded payload");
                    hasher.update(&self.data);
                }
            }
        }
        hasher.digest()
    }

    /// Returns the tensor with its payload in an allocation of its own,
    /// exactly `byte_size` long.
    ///
    /// A `Bytes` sliced out of a larger buffer keeps that whole buffer alive.
    /// The cache charges a tensor for its payload length, so a front end that
    /// decodes payloads out of shared receive buffers compacts them before
    /// storing. This copies the payload once.
    pub fn compacted(self) -> Tensor {
        Tensor {
            data: Bytes::copy_from_slice(&self.data),
            encoding: self.encoding,
            meta: self.meta,
        }
    }

    fn check_dtype<T: Element>(&self) -> Result<(), Error> {
        if self.meta.dtype() == T::DTYPE {
            Ok(())
        } else {
            Err(Error::TypeMismatch {
                stored: self.meta.dtype(),
                requested: T::DTYPE,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_must_match_meta() {
        let meta = TensorMeta::new(DType::F32, vec![2, 3], StorageLayout::RowMajor).unwrap();
        assert!(Tensor::new(meta.clone(), vec![0u8; 24]).is_ok());
        let err = Tensor::new(meta, vec![0u8; 23]).unwrap_err();
        assert_eq!(
            err,
            Error::InvalidSize {
                expected: 24,
                actual: 23
            }
        );
        assert!(err.to_string().starts_with("InvalidSize: "));
    }

    #[test]
    fn typed_round_trip_for_every_element_type() {
        fn check<T: Element + PartialEq + std::fmt::Debug>(values: &[T]) {
            let t = Tensor::from_slice(vec![values.len() as u64], values).unwrap();
            assert_eq!(t.meta().dtype(), T::DTYPE);
            assert_eq!(t.to_vec::<T>().unwrap(), values);
            assert_eq!(t.as_slice::<T>().unwrap(), values);
        }
        check::<f32>(&[1.5, -2.0]);
        check::<f64>(&[1e300, -0.0]);
        check::<i8>(&[-128, 127]);
        check::<i16>(&[-1, 300]);
        check::<i32>(&[i32::MIN, 7]);
        check::<i64>(&[i64::MAX, -9]);
        check::<u8>(&[0, 255]);
        check::<u16>(&[65535, 1]);
        check::<u32>(&[u32::MAX, 2]);
        check::<u64>(&[u64::MAX, 3]);
    }

    #[test]
    fn misaligned_view_is_an_error_not_ub() {
        let backing = Bytes::from(vec![0u8; 17]);
        let meta = TensorMeta::new(DType::F32, vec![4], StorageLayout::RowMajor).unwrap();
        // One of these two offsets is misaligned for f32.
        let a = Tensor::new(meta.clone(), backing.slice(0..16)).unwrap();
        let b = Tensor::new(meta, backing.slice(1..17)).unwrap();
        let results = [a.as_slice::<f32>().is_ok(), b.as_slice::<f32>().is_ok()];
        assert!(results.contains(&false));
        assert_eq!(b.to_vec::<f32>().unwrap(), vec![0.0; 4]);
    }

    #[test]
    fn compacted_owns_an_exact_allocation() {
        let big = Bytes::from(vec![7u8; 1 << 20]);
        let meta = TensorMeta::new(DType::U8, vec![8], StorageLayout::RowMajor).unwrap();
        let t = Tensor::new(meta, big.slice(100..108)).unwrap().compacted();
        assert_eq!(t.data().as_ref(), &[7u8; 8]);
        // The compacted payload no longer points into the big buffer.
        let range = big.as_ptr() as usize..big.as_ptr() as usize + big.len();
        assert!(!range.contains(&(t.data().as_ptr() as usize)));
    }
}
