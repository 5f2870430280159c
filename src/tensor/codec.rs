//! Tensor-aware compression: byte shuffle by element width, then LZ4.
//!
//! Floats compress badly as they lie in memory: each element's exponent
//! byte sits among mantissa bytes that look random. Shuffling a block of
//! `n` elements of width `w` into `w` planes (all first bytes, then all
//! second bytes, …) lines the exponents up, and zeros (a ReLU's output)
//! become long runs. LZ4 (`lz4_flex`, pure Rust) then compresses each plane
//! set at memory-like speed.
//!
//! # Format ([`Encoding::Lz4Shuffle`])
//!
//! The raw tensor (`meta.byte_size()` bytes) is cut into blocks of
//! [`BLOCK`] bytes (the last one shorter; a multiple of every width). Each
//! block is stored as a 4-byte little-endian word, then its bytes:
//!
//! - word bit 31 clear: `word` bytes of an LZ4 block that decompresses to
//!   exactly the block's raw length, shuffled;
//! - word bit 31 set: `word & 0x7fff_ffff` bytes, the block's raw bytes as
//!   they are (equal to its raw length; for blocks that do not compress).
//!
//! The blocks are independent, so a decoder works on one cache-sized block
//! at a time. A decoder checks the framing against the metadata before it
//! allocates anything ([`check`]), and every block's decompressed length
//! exactly: corrupt input is [`Error::InvalidEncoding`], never a panic.
//!
//! ```
//! use redstone::tensor::codec::{self, Encoding};
//! use redstone::tensor::Tensor;
//!
//! let relu: Vec<f32> = (0..100_000).map(|i| if i % 2 == 0 { 0.0 } else { i as f32 }).collect();
//! let raw = Tensor::from_slice(vec![relu.len() as u64], &relu)?;
//! let packed = codec::compress(&raw).expect("half zeros compress");
//! assert_eq!(packed.encoding(), Encoding::Lz4Shuffle);
//! assert!(packed.data().len() < raw.data().len() / 2);
//! assert_eq!(packed.decoded()?, raw);
//! # Ok::<(), redstone::Error>(())
//! ```

use bytes::{Bytes, BytesMut};

use super::meta::TensorMeta;
use super::Tensor;
use crate::Error;

/// The raw bytes of one block: 256 KiB, a multiple of every element width.
pub const BLOCK: usize = 256 << 10;

/// Compression is kept only when it saves at least this factor: below it,
/// [`compress`] returns `None` and the caller stores the raw tensor.
pub const MIN_RATIO: f64 = 1.1;

const RAW_BLOCK: u32 = 1 << 31;

/// How a tensor's payload is stored.
///
/// The code ([`Encoding::code`]) travels in the fast path's metadata and in
/// the disk tier's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// The raw bytes, exactly `meta.byte_size()` of them.
    #[default]
    Raw,
    /// Byte-shuffled by element width, LZ4-compressed in blocks (see the
    /// module docs).
    Lz4Shuffle,
}

impl Encoding {
    /// The stable wire code: 0 raw, 1 shuffle + LZ4.
    pub const fn code(self) -> u8 {
        match self {
            Encoding::Raw => 0,
            Encoding::Lz4Shuffle => 1,
        }
    }

    /// The encoding with wire code `code`.
    pub fn from_code(code: u8) -> Result<Encoding, Error> {
        match code {
            0 => Ok(Encoding::Raw),
            1 => Ok(Encoding::Lz4Shuffle),
            other => Err(Error::InvalidEncoding(format!(
                "unknown encoding (code {other})"
            ))),
        }
    }
}

/// What a client does to a tensor it puts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// Send and store the raw bytes (the default).
    #[default]
    None,
    /// Shuffle by element width and compress with LZ4 when that saves at
    /// least [`MIN_RATIO`]; otherwise send the raw bytes.
    Lz4,
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Compression, String> {
        match s {
            "none" | "off" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            other => Err(format!(
                "unknown compression {other:?} (expected none or lz4)"
            )),
        }
    }
}

impl Compression {
    /// Applies this setting to `tensor`: the encoded tensor when it
    /// compresses enough, else `tensor` itself (a clone, no copy).
    pub fn apply(self, tensor: &Tensor) -> Tensor {
        match self {
            Compression::None => tensor.clone(),
            Compression::Lz4 => compress(tensor).unwrap_or_else(|| tensor.clone()),
        }
    }
}

/// The longest valid encoded form of a `raw_len`-byte tensor: every
/// block stored raw behind its 4-byte word.
pub fn max_encoded_len(raw_len: u64) -> u64 {
    raw_len.saturating_add(4 * raw_len.div_ceil(BLOCK as u64))
}

/// Compresses a raw tensor with [`Encoding::Lz4Shuffle`]; `None` when the
/// tensor is already encoded or compresses by less than [`MIN_RATIO`].
pub fn compress(tensor: &Tensor) -> Option<Tensor> {
    if tensor.encoding() != Encoding::Raw || tensor.data().is_empty() {
        return None;
    }
    let raw = tensor.data();
    let width = tensor.meta().dtype().width();
    let budget = (raw.len() as f64 / MIN_RATIO) as usize;
    let mut out = Vec::with_capacity(budget.min(raw.len()) + 64);
    let mut shuffled = vec![0u8; BLOCK.min(raw.len())];
    let mut packed = vec![0u8; lz4_flex::block::get_maximum_output_size(BLOCK.min(raw.len()))];
    for block in raw.chunks(BLOCK) {
        let shuffled = &mut shuffled[..block.len()];
        shuffle(width, block, shuffled);
        let n = lz4_flex::block::compress_into(shuffled, &mut packed).ok()?;
        if n < block.len() {
            out.extend_from_slice(&(n as u32).to_le_bytes());
            out.extend_from_slice(&packed[..n]);
        } else {
            out.extend_from_slice(&(block.len() as u32 | RAW_BLOCK).to_le_bytes());
            out.extend_from_slice(block);
        }
        if out.len() > budget {
            return None;
        }
    }
    Some(Tensor {
        meta: tensor.meta().clone(),
        encoding: Encoding::Lz4Shuffle,
        data: Bytes::from(out),
    })
}

/// Checks the framing of `data` as the [`Encoding::Lz4Shuffle`] form of a
/// tensor described by `meta`, without decompressing: one word per block,
/// each length inside the data, the data used up exactly, and no block
/// claiming more than LZ4 can expand its bytes to. This bounds the raw size
/// by the bytes actually present, so a decoder may then allocate it.
pub fn check(meta: &TensorMeta, data: &[u8]) -> Result<(), Error> {
    let mut rest = data;
    let mut raw_left = meta.byte_size();
    let mut index = 0usize;
    while raw_left > 0 {
        let raw_len = raw_left.min(BLOCK as u64) as usize;
        let (word, after) = split_word(rest, index)?;
        let len = (word & !RAW_BLOCK) as usize;
        if len > after.len() {
            return Err(corrupt(index, "claims more bytes than follow"));
        }
        if word & RAW_BLOCK != 0 {
            if len != raw_len {
                return Err(corrupt(index, "is stored raw with the wrong length"));
            }
        } else if len == 0 || raw_len > len.saturating_mul(256).saturating_add(1024) {
            // One LZ4 byte expands to at most 255.
            return Err(corrupt(index, "claims more than LZ4 can expand to"));
        }
        rest = &after[len..];
        raw_left -= raw_len as u64;
        index += 1;
    }
    if !rest.is_empty() {
        return Err(Error::InvalidEncoding(format!(
            "{} bytes follow the last block",
            rest.len()
        )));
    }
    Ok(())
}

/// Decodes `data` (checked with [`check`] first) into `out`, which must be
/// exactly `meta.byte_size()` bytes.
pub fn decode_into(meta: &TensorMeta, data: &[u8], out: &mut [u8]) -> Result<(), Error> {
    check(meta, data)?;
    if out.len() as u64 != meta.byte_size() {
        return Err(Error::InvalidSize {
            expected: meta.byte_size(),
            actual: out.len() as u64,
        });
    }
    let width = meta.dtype().width();
    let mut scratch = vec![0u8; BLOCK.min(out.len())];
    let mut rest = data;
    for (index, block) in out.chunks_mut(BLOCK).enumerate() {
        let (word, after) = split_word(rest, index)?;
        let len = (word & !RAW_BLOCK) as usize;
        let (stored, after) = after.split_at(len);
        rest = after;
        if word & RAW_BLOCK != 0 {
            block.copy_from_slice(stored);
            continue;
        }
        let scratch = &mut scratch[..block.len()];
        decompress_block(index, stored, scratch)?;
        unshuffle(width, scratch, block);
    }
    Ok(())
}

/// Decodes `data` a block at a time, handing each block's raw bytes to
/// `f` in order (two block-sized buffers, whatever the tensor's size).
pub(crate) fn visit_raw(
    meta: &TensorMeta,
    data: &[u8],
    mut f: impl FnMut(&[u8]),
) -> Result<(), Error> {
    check(meta, data)?;
    let width = meta.dtype().width();
    let first = (meta.byte_size() as usize).min(BLOCK);
    let (mut scratch, mut block) = (vec![0u8; first], vec![0u8; first]);
    let mut rest = data;
    let mut raw_left = meta.byte_size() as usize;
    let mut index = 0;
    while raw_left > 0 {
        let raw_len = raw_left.min(BLOCK);
        let (word, after) = split_word(rest, index)?;
        let (stored, after) = after.split_at((word & !RAW_BLOCK) as usize);
        rest = after;
        if word & RAW_BLOCK != 0 {
            f(stored);
        } else {
            decompress_block(index, stored, &mut scratch[..raw_len])?;
            unshuffle(width, &scratch[..raw_len], &mut block[..raw_len]);
            f(&block[..raw_len]);
        }
        raw_left -= raw_len;
        index += 1;
    }
    Ok(())
}

fn decompress_block(index: usize, stored: &[u8], out: &mut [u8]) -> Result<(), Error> {
    match lz4_flex::block::decompress_into(stored, out) {
        Ok(n) if n == out.len() => Ok(()),
        Ok(n) => Err(corrupt(
            index,
            &format!("decompresses to {n} bytes, not {}", out.len()),
        )),
        Err(e) => Err(corrupt(index, &format!("does not decompress: {e}"))),
    }
}

/// Decodes `data` into a new buffer of `meta.byte_size()` bytes.
pub fn decode(meta: &TensorMeta, data: &[u8]) -> Result<Bytes, Error> {
    check(meta, data)?;
    let len = usize::try_from(meta.byte_size())
        .map_err(|_| Error::InvalidEncoding("the raw size does not fit in memory".into()))?;
    let mut out = BytesMut::zeroed(len);
    decode_into(meta, data, &mut out)?;
    Ok(out.freeze())
}

fn split_word(data: &[u8], index: usize) -> Result<(u32, &[u8]), Error> {
    match data.split_first_chunk::<4>() {
        Some((word, rest)) => Ok((u32::from_le_bytes(*word), rest)),
        None => Err(corrupt(index, "is missing")),
    }
}

fn corrupt(index: usize, what: &str) -> Error {
    Error::InvalidEncoding(format!("block {index} {what}"))
}

/// Splits `src` (whole elements of `width` bytes) into `width` planes.
fn shuffle(width: usize, src: &[u8], dst: &mut [u8]) {
    match width {
        2 => shuffle_n::<2>(src, dst),
        4 => shuffle_n::<4>(src, dst),
        8 => shuffle_n::<8>(src, dst),
        _ => dst.copy_from_slice(src),
    }
}

/// The inverse of [`shuffle`].
fn unshuffle(width: usize, src: &[u8], dst: &mut [u8]) {
    match width {
        2 => unshuffle_n::<2>(src, dst),
        4 => unshuffle_n::<4>(src, dst),
        8 => unshuffle_n::<8>(src, dst),
        _ => dst.copy_from_slice(src),
    }
}

/// Elements per tile: each plane gets a run of `TILE` bytes per step.
const TILE: usize = 16;

fn shuffle_n<const W: usize>(src: &[u8], dst: &mut [u8]) {
    let n = src.len() / W;
    let tiles = n / TILE;
    for t in 0..tiles {
        let elements = &src[t * TILE * W..(t + 1) * TILE * W];
        for k in 0..W {
            let plane = &mut dst[k * n + t * TILE..k * n + (t + 1) * TILE];
            for (i, byte) in plane.iter_mut().enumerate() {
                *byte = elements[i * W + k];
            }
        }
    }
    for i in tiles * TILE..n {
        for k in 0..W {
            dst[k * n + i] = src[i * W + k];
        }
    }
}

fn unshuffle_n<const W: usize>(src: &[u8], dst: &mut [u8]) {
    let n = dst.len() / W;
    let tiles = n / TILE;
    for t in 0..tiles {
        let elements = &mut dst[t * TILE * W..(t + 1) * TILE * W];
        for k in 0..W {
            let plane = &src[k * n + t * TILE..k * n + (t + 1) * TILE];
            for (i, byte) in plane.iter().enumerate() {
                elements[i * W + k] = *byte;
            }
        }
    }
    for i in tiles * TILE..n {
        for k in 0..W {
            dst[i * W + k] = src[k * n + i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::meta::{DType, StorageLayout};

    fn tensor(dtype: DType, bytes: Vec<u8>) -> Tensor {
        let n = bytes.len() / dtype.width();
        let meta = TensorMeta::new(dtype, vec![n as u64], StorageLayout::RowMajor).unwrap();
        Tensor::new(meta, bytes).unwrap()
    }

    /// Deterministic bytes that compress: small values in every width.
    fn compressible(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 3 == 0 {
                    0
                } else {
                    (x % 5) as u8
                }
            })
            .collect()
    }

    #[test]
    fn shuffle_round_trips_every_width_and_tail() {
        for width in [1, 2, 4, 8] {
            for n in [0, 1, 15, 16, 17, 100] {
                let src: Vec<u8> = (0..n * width).map(|i| (i * 7 + 3) as u8).collect();
                let mut shuffled = vec![0; src.len()];
                let mut back = vec![0; src.len()];
                shuffle(width, &src, &mut shuffled);
                unshuffle(width, &shuffled, &mut back);
                assert_eq!(back, src, "width {width}, {n} elements");
                if width > 1 && n > 1 {
                    // Plane 0 holds every element's first byte.
                    assert_eq!(shuffled[1], src[width]);
                }
            }
        }
    }

    #[test]
    fn every_dtype_round_trips_across_blocks() {
        for dtype in DType::ALL {
            // Two full blocks and a tail, so the last block is shorter.
            let len = (2 * BLOCK + 24 * dtype.width()) / dtype.width() * dtype.width();
            let raw = tensor(dtype, compressible(len, dtype.code().into()));
            let packed = compress(&raw).expect("compressible");
            assert_eq!(packed.encoding(), Encoding::Lz4Shuffle);
            assert!(packed.data().len() < len);
            assert_eq!(packed.decoded().unwrap(), raw, "{dtype}");
        }
    }

    #[test]
    fn zeros_compress_to_the_limit_and_back() {
        let raw = tensor(DType::F32, vec![0; 3 * BLOCK]);
        let packed = compress(&raw).unwrap();
        assert!(packed.data().len() < 3 * BLOCK / 200);
        assert_eq!(packed.decoded().unwrap(), raw);
    }

    #[test]
    fn incompressible_data_is_not_compressed() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..100_000)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                (x >> 56) as u8
            })
            .collect();
        assert!(compress(&tensor(DType::U8, noise)).is_none());
        assert!(compress(&tensor(DType::U8, vec![])).is_none());
    }

    #[test]
    fn mixed_blocks_store_the_noisy_one_raw() {
        let mut bytes = vec![0u8; BLOCK];
        let mut x = 1u64;
        bytes.extend((0..BLOCK).map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            (x >> 56) as u8
        }));
        let raw = tensor(DType::U8, bytes);
        let packed = compress(&raw).unwrap();
        assert!(packed.data().len() > BLOCK);
        assert_eq!(packed.decoded().unwrap(), raw);
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let raw = tensor(DType::F32, compressible(BLOCK + 4000, 9));
        let packed = compress(&raw).unwrap();
        let meta = raw.meta();
        let data = packed.data();
        // Truncated, extended, flipped words and bytes: errors, never panics.
        assert!(decode(meta, &data[..data.len() - 1]).is_err());
        let mut longer = data.to_vec();
        longer.push(0);
        assert!(decode(meta, &longer).is_err());
        let mut claims_more = data.to_vec();
        claims_more[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(meta, &claims_more).is_err());
        for at in (0..data.len()).step_by(97) {
            let mut flipped = data.to_vec();
            flipped[at] ^= 0x5a;
            if let Ok(bytes) = decode(meta, &flipped) {
                assert_eq!(bytes.len(), raw.data().len());
            }
        }
        // A huge shape over a few bytes is refused before any allocation.
        let huge = TensorMeta::new(DType::U8, vec![1 << 40], StorageLayout::RowMajor).unwrap();
        let err = decode(&huge, &data[..64]).unwrap_err();
        assert!(err.to_string().starts_with("InvalidEncoding: "), "{err}");
    }
}
