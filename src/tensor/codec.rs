//! Tensor-aware compression: zero masks, byte shuffle by element width,
//! and LZ4.
//!
//! Tensors compress in two ways a byte-oriented compressor misses on its
//! own. Activations after a ReLU are about half exact zeros, scattered one
//! element at a time: a bitmap of the nonzero elements plus those elements
//! stores them in about half the bytes, and expands at memory speed. And a
//! float's exponent byte sits among mantissa bytes that look random:
//! shuffling `n` elements of width `w` into `w` planes (all first bytes,
//! then all second bytes, …) lines the exponents up, and LZ4 (`lz4_flex`,
//! pure Rust) finds the runs.
//!
//! # Format ([`Encoding::Packed`])
//!
//! The raw tensor (`meta.byte_size()` bytes) is cut into blocks of
//! [`BLOCK`] bytes (the last one shorter; a multiple of every width). Each
//! block is stored as a 4-byte little-endian word, `mode << 30 | len`, then
//! `len` bytes:
//!
//! - mode 0, **shuffled LZ4**: an LZ4 block that decompresses to exactly
//!   the block's raw length, the block shuffled by element width;
//! - mode 1, **zero mask**: `ceil(n / 8)` bitmap bytes (bit `i % 8` of byte
//!   `i / 8` set when element `i` is not all zero bytes; bits past `n`
//!   clear), then the nonzero elements in order, as they are;
//! - mode 2, **raw**: the block's bytes as they are.
//!
//! The encoder takes the zero mask for a block whose elements are at least
//! a quarter (but not all) zeros, else tries LZ4 and keeps the raw bytes
//! if LZ4 does not shrink them. The blocks are independent, so a decoder
//! works on one cache-sized block at a time. A decoder checks the framing
//! against the metadata before it allocates anything ([`check`]), and every
//! block's decoded length exactly: corrupt input is
//! [`Error::InvalidEncoding`], never a panic.
//!
//! ```
//! use redstone::tensor::codec::{self, Encoding};
//! use redstone::tensor::Tensor;
//!
//! let relu: Vec<f32> = (0..100_000).map(|i| if i % 2 == 0 { 0.0 } else { i as f32 }).collect();
//! let raw = Tensor::from_slice(vec![relu.len() as u64], &relu)?;
//! let packed = codec::compress(&raw).expect("half zeros compress");
//! assert_eq!(packed.encoding(), Encoding::Packed);
//! assert!(packed.data().len() < raw.data().len() * 6 / 10);
//! assert_eq!(packed.decoded()?, raw);
//! # Ok::<(), redstone::Error>(())
//! ```

use bytes::Bytes;

use super::meta::TensorMeta;
use super::Tensor;
use crate::Error;

/// The raw bytes of one block: 256 KiB, a multiple of every element width.
pub const BLOCK: usize = 256 << 10;

/// Compression is kept only when it saves at least this factor: below it,
/// [`compress`] returns `None` and the caller stores the raw tensor.
pub const MIN_RATIO: f64 = 1.1;

const LEN_BITS: u32 = 30;
const LEN_MASK: u32 = (1 << LEN_BITS) - 1;

/// How one block is stored (the word's top two bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Lz4 = 0,
    ZeroMask = 1,
    Raw = 2,
}

impl Mode {
    fn of(word: u32) -> Option<Mode> {
        match word >> LEN_BITS {
            0 => Some(Mode::Lz4),
            1 => Some(Mode::ZeroMask),
            2 => Some(Mode::Raw),
            _ => None,
        }
    }

    fn word(self, len: usize) -> [u8; 4] {
        ((self as u32) << LEN_BITS | len as u32).to_le_bytes()
    }
}

/// How a tensor's payload is stored.
///
/// The code ([`Encoding::code`]) travels in the fast path's metadata and in
/// the disk tier's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// The raw bytes, exactly `meta.byte_size()` of them.
    #[default]
    Raw,
    /// Blocks of zero-masked, shuffled-LZ4 or raw bytes (see the module
    /// docs).
    Packed,
}

impl Encoding {
    /// The stable wire code: 0 raw, 1 packed.
    pub const fn code(self) -> u8 {
        match self {
            Encoding::Raw => 0,
            Encoding::Packed => 1,
        }
    }

    /// Whether a payload of `len` bytes in this encoding can hold a tensor
    /// described by `meta`: exactly its byte size raw, at most
    /// [`max_encoded_len`] of it packed. Checked before a payload is read,
    /// wherever one arrives (a put, a reply, a disk record).
    pub fn fits(self, meta: &TensorMeta, len: u64) -> bool {
        match self {
            Encoding::Raw => meta.byte_size() == len,
            Encoding::Packed => len <= max_encoded_len(meta.byte_size()),
        }
    }

    /// The encoding with wire code `code`.
    pub fn from_code(code: u8) -> Result<Encoding, Error> {
        match code {
            0 => Ok(Encoding::Raw),
            1 => Ok(Encoding::Packed),
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
    /// Pack the tensor ([`Encoding::Packed`]: zero masks, shuffle, LZ4)
    /// when that saves at least [`MIN_RATIO`]; otherwise send the raw
    /// bytes.
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

/// Packs a raw tensor ([`Encoding::Packed`]); `None` when the tensor is
/// already encoded, empty, or saves less than [`MIN_RATIO`].
pub fn compress(tensor: &Tensor) -> Option<Tensor> {
    if tensor.encoding() != Encoding::Raw || tensor.data().is_empty() {
        return None;
    }
    let raw = tensor.data();
    let width = tensor.meta().dtype().width();
    let budget = (raw.len() as f64 / MIN_RATIO) as usize;
    let first = BLOCK.min(raw.len());
    let mut out = Vec::with_capacity(budget + 64);
    let mut shuffled = vec![0u8; first];
    let mut packed = vec![0u8; lz4_flex::block::get_maximum_output_size(first)];
    let mut seen = 0;
    for block in raw.chunks(BLOCK) {
        let n = block.len() / width;
        let zeros = count_zero_elements(width, block);
        if zeros >= n / 4 && zeros < n {
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            zero_mask(width, block, &mut out);
            let len = out.len() - at - 4;
            out[at..at + 4].copy_from_slice(&Mode::ZeroMask.word(len));
        } else {
            let shuffled = &mut shuffled[..block.len()];
            shuffle(width, block, shuffled);
            let len = lz4_flex::block::compress_into(shuffled, &mut packed).ok()?;
            if len < block.len() {
                out.extend_from_slice(&Mode::Lz4.word(len));
                out.extend_from_slice(&packed[..len]);
            } else {
                out.extend_from_slice(&Mode::Raw.word(block.len()));
                out.extend_from_slice(block);
            }
        }
        // Give up early on a tensor that is not going to compress: after
        // an eighth of it, as soon as its pace says so.
        seen += block.len();
        let pace = out.len() as f64 * raw.len() as f64 / seen as f64;
        if out.len() > budget || (seen >= raw.len() / 8 && pace > budget as f64) {
            return None;
        }
    }
    Some(Tensor {
        meta: tensor.meta().clone(),
        encoding: Encoding::Packed,
        data: Bytes::from(out),
    })
}

/// One block of `data`, framed: its mode, its stored bytes, and the bytes
/// after it.
struct Framed<'a> {
    mode: Mode,
    stored: &'a [u8],
    rest: &'a [u8],
}

/// Reads block `index`'s word and bytes, checking them against the
/// block's raw length without decoding.
fn frame(data: &[u8], index: usize, raw_len: usize, width: usize) -> Result<Framed<'_>, Error> {
    let Some((word, after)) = data.split_first_chunk::<4>() else {
        return Err(corrupt(index, "is missing"));
    };
    let word = u32::from_le_bytes(*word);
    let mode = Mode::of(word).ok_or_else(|| corrupt(index, "has an unknown mode"))?;
    let len = (word & LEN_MASK) as usize;
    if len > after.len() {
        return Err(corrupt(index, "claims more bytes than follow"));
    }
    let ok = match mode {
        Mode::Raw => len == raw_len,
        // One LZ4 byte expands to at most 255.
        Mode::Lz4 => len > 0 && raw_len <= len.saturating_mul(256).saturating_add(1024),
        Mode::ZeroMask => {
            let bitmap = (raw_len / width).div_ceil(8);
            len >= bitmap && len - bitmap <= raw_len
        }
    };
    if !ok {
        return Err(corrupt(
            index,
            &format!("has a length ({len}) its mode cannot have"),
        ));
    }
    let (stored, rest) = after.split_at(len);
    Ok(Framed { mode, stored, rest })
}

/// Checks the framing of `data` as the [`Encoding::Packed`] form of a
/// tensor described by `meta`, without decoding: one word per block, each
/// length possible for its mode and inside the data, the data used up
/// exactly. This bounds the raw size by the bytes actually present (LZ4
/// expands a byte to at most 255, a zero mask a bit to one element), so a
/// decoder may then allocate it.
pub fn check(meta: &TensorMeta, data: &[u8]) -> Result<(), Error> {
    let width = meta.dtype().width();
    let mut rest = data;
    let mut raw_left = meta.byte_size();
    let mut index = 0usize;
    while raw_left > 0 {
        let raw_len = raw_left.min(BLOCK as u64) as usize;
        rest = frame(rest, index, raw_len, width)?.rest;
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
    unpack(meta, data, out, false)
}

/// [`decode_into`]; `zeroed`: `out` is known to be all zeros already (a
/// fresh buffer), so zero-masked blocks need not clear it first.
fn unpack(meta: &TensorMeta, data: &[u8], out: &mut [u8], zeroed: bool) -> Result<(), Error> {
    check(meta, data)?;
    if out.len() as u64 != meta.byte_size() {
        return Err(Error::InvalidSize {
            expected: meta.byte_size(),
            actual: out.len() as u64,
        });
    }
    let width = meta.dtype().width();
    SCRATCH.with(|scratch| {
        // A block-sized buffer per thread, kept: a fresh 256 KiB one per
        // call would be mapped and faulted in each time.
        let mut scratch = scratch.borrow_mut();
        let mut rest = data;
        for (index, block) in out.chunks_mut(BLOCK).enumerate() {
            let framed = frame(rest, index, block.len(), width)?;
            rest = framed.rest;
            decode_block(&framed, index, width, block, &mut scratch, zeroed)?;
        }
        Ok(())
    })
}

thread_local! {
    /// Each thread's LZ4 output buffer for [`decode_into`].
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Decodes one framed block into `out` (its raw length), through
/// `scratch` for LZ4.
fn decode_block(
    framed: &Framed<'_>,
    index: usize,
    width: usize,
    out: &mut [u8],
    scratch: &mut Vec<u8>,
    zeroed: bool,
) -> Result<(), Error> {
    match framed.mode {
        Mode::Raw => out.copy_from_slice(framed.stored),
        Mode::ZeroMask => unmask(index, width, framed.stored, out, zeroed)?,
        Mode::Lz4 => {
            if scratch.len() < out.len() {
                scratch.resize(out.len(), 0);
            }
            let scratch = &mut scratch[..out.len()];
            match lz4_flex::block::decompress_into(framed.stored, scratch) {
                Ok(n) if n == out.len() => unshuffle(width, scratch, out),
                Ok(n) => {
                    return Err(corrupt(
                        index,
                        &format!("decompresses to {n} bytes, not {}", out.len()),
                    ))
                }
                Err(e) => return Err(corrupt(index, &format!("does not decompress: {e}"))),
            }
        }
    }
    Ok(())
}

/// Decodes `data` a block at a time, handing each block's raw bytes to
/// `f` in order (block-sized buffers, whatever the tensor's size).
pub(crate) fn visit_raw(
    meta: &TensorMeta,
    data: &[u8],
    mut f: impl FnMut(&[u8]),
) -> Result<(), Error> {
    check(meta, data)?;
    let width = meta.dtype().width();
    let mut block = vec![0u8; (meta.byte_size() as usize).min(BLOCK)];
    let mut scratch = Vec::new();
    let mut rest = data;
    let mut raw_left = meta.byte_size() as usize;
    let mut index = 0;
    while raw_left > 0 {
        let raw_len = raw_left.min(BLOCK);
        let framed = frame(rest, index, raw_len, width)?;
        rest = framed.rest;
        decode_block(
            &framed,
            index,
            width,
            &mut block[..raw_len],
            &mut scratch,
            false,
        )?;
        f(&block[..raw_len]);
        raw_left -= raw_len;
        index += 1;
    }
    Ok(())
}

/// Decodes `data` into a new buffer of `meta.byte_size()` bytes.
pub fn decode(meta: &TensorMeta, data: &[u8]) -> Result<Bytes, Error> {
    check(meta, data)?;
    let len = usize::try_from(meta.byte_size())
        .map_err(|_| Error::InvalidEncoding("the raw size does not fit in memory".into()))?;
    // Fallible: a size the framing allows but memory does not is an error
    // for this tensor, not the end of the process.
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|_| {
        Error::InvalidEncoding(format!("cannot allocate {len} bytes to unpack the tensor"))
    })?;
    out.resize(len, 0);
    unpack(meta, data, &mut out, true)?;
    Ok(Bytes::from(out))
}

fn corrupt(index: usize, what: &str) -> Error {
    Error::InvalidEncoding(format!("block {index} {what}"))
}

/// Elements of `block` whose bytes are all zero.
fn count_zero_elements(width: usize, block: &[u8]) -> usize {
    match width {
        1 => block.iter().filter(|b| **b == 0).count(),
        2 => count_zero_n::<2>(block),
        4 => count_zero_n::<4>(block),
        _ => count_zero_n::<8>(block),
    }
}

fn count_zero_n<const W: usize>(block: &[u8]) -> usize {
    block
        .chunks_exact(W)
        .map(|e| usize::from(e.iter().fold(0, |acc, b| acc | b) == 0))
        .sum()
}

/// Appends `block`'s zero mask and nonzero elements to `out`.
fn zero_mask(width: usize, block: &[u8], out: &mut Vec<u8>) {
    match width {
        1 => zero_mask_n::<1>(block, out),
        2 => zero_mask_n::<2>(block, out),
        4 => zero_mask_n::<4>(block, out),
        _ => zero_mask_n::<8>(block, out),
    }
}

fn zero_mask_n<const W: usize>(block: &[u8], out: &mut Vec<u8>) {
    let n = block.len() / W;
    let at = out.len();
    let bitmap = n.div_ceil(8);
    // Room for every element; each is written at the cursor, which moves
    // past it only if it is nonzero (no branch to mispredict).
    out.resize(at + bitmap + block.len(), 0);
    let (mask, values) = out[at..].split_at_mut(bitmap);
    let mut cursor = 0;
    for (bits, group) in mask.iter_mut().zip(block.chunks(8 * W)) {
        let mut b = 0u8;
        for (i, element) in group.chunks_exact(W).enumerate() {
            let nonzero = element.iter().fold(0, |acc, x| acc | x) != 0;
            values[cursor..cursor + W].copy_from_slice(element);
            cursor += W * usize::from(nonzero);
            b |= u8::from(nonzero) << i;
        }
        *bits = b;
    }
    out.truncate(at + bitmap + cursor);
}

/// Expands a zero-masked block into `out`, checking that the mask names
/// exactly as many elements as follow it.
fn unmask(
    index: usize,
    width: usize,
    stored: &[u8],
    out: &mut [u8],
    zeroed: bool,
) -> Result<(), Error> {
    let n = out.len() / width;
    let (bitmap, values) = stored.split_at(n.div_ceil(8));
    let set: usize = bitmap.iter().map(|b| b.count_ones() as usize).sum();
    let stray = !n.is_multiple_of(8) && bitmap.last().is_some_and(|b| b >> (n % 8) != 0);
    if stray || set * width != values.len() {
        return Err(corrupt(
            index,
            "has a zero mask that does not match its elements",
        ));
    }
    if !zeroed {
        out.fill(0);
    }
    match width {
        1 => unmask_n::<1>(bitmap, values, out),
        2 => unmask_n::<2>(bitmap, values, out),
        4 => unmask_n::<4>(bitmap, values, out),
        _ => unmask_n::<8>(bitmap, values, out),
    }
    Ok(())
}

/// [`unmask`] for width `W`, the mask already checked against `values`
/// and `out` zeroed: drop each value where its set bit says (walking the
/// set bits 64 at a time, so no branch depends on each bit).
fn unmask_n<const W: usize>(bitmap: &[u8], values: &[u8], out: &mut [u8]) {
    let mut next = values.chunks_exact(W);
    for (word_index, chunk) in bitmap.chunks(8).enumerate() {
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        let mut word = u64::from_le_bytes(bytes);
        let base = word_index * 64;
        while word != 0 {
            let i = base + word.trailing_zeros() as usize;
            word &= word - 1;
            if let (Some(value), Some(element)) = (next.next(), out.get_mut(i * W..i * W + W)) {
                element.copy_from_slice(value);
            }
        }
    }
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

/// Elements per tile: each plane moves `TILE` bytes at a time, through a
/// tile of fixed size the compiler keeps in registers.
const TILE: usize = 16;

fn shuffle_n<const W: usize>(src: &[u8], dst: &mut [u8]) {
    let n = src.len() / W;
    let whole = n / TILE * TILE;
    for (t, elements) in src[..whole * W].chunks_exact(TILE * W).enumerate() {
        let mut tile = [[0u8; TILE]; W];
        for (i, element) in elements.chunks_exact(W).enumerate().take(TILE) {
            for k in 0..W {
                tile[k][i] = element[k];
            }
        }
        for (k, plane) in tile.iter().enumerate() {
            dst[k * n + t * TILE..k * n + t * TILE + TILE].copy_from_slice(plane);
        }
    }
    for i in whole..n {
        for k in 0..W {
            dst[k * n + i] = src[i * W + k];
        }
    }
}

fn unshuffle_n<const W: usize>(src: &[u8], dst: &mut [u8]) {
    let n = dst.len() / W;
    let whole = n / TILE * TILE;
    for (t, elements) in dst[..whole * W].chunks_exact_mut(TILE * W).enumerate() {
        let mut tile = [[0u8; TILE]; W];
        for (k, plane) in tile.iter_mut().enumerate() {
            plane.copy_from_slice(&src[k * n + t * TILE..k * n + t * TILE + TILE]);
        }
        for (i, element) in elements.chunks_exact_mut(W).enumerate().take(TILE) {
            for k in 0..W {
                element[k] = tile[k][i];
            }
        }
    }
    for i in whole..n {
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
            assert_eq!(packed.encoding(), Encoding::Packed);
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
        let mut bytes = vec![1u8; BLOCK];
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
    fn sparse_blocks_are_zero_masked_for_every_width() {
        for dtype in [DType::U8, DType::BF16, DType::F32, DType::F64] {
            let w = dtype.width();
            // Every third element nonzero, and a tail that is not a whole
            // mask byte.
            let n = BLOCK / w + 13;
            let mut bytes = vec![0u8; n * w];
            for i in (0..n).step_by(3) {
                bytes[i * w..(i + 1) * w].fill(0x5a ^ (i as u8));
                bytes[i * w] |= 1;
            }
            let raw = tensor(dtype, bytes);
            let packed = compress(&raw).unwrap();
            let words = u32::from_le_bytes(packed.data()[..4].try_into().unwrap());
            assert_eq!(Mode::of(words), Some(Mode::ZeroMask), "{dtype}");
            assert_eq!(packed.decoded().unwrap(), raw, "{dtype}");
        }
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let mut bytes = compressible(BLOCK + 4000, 9);
        // The second block zero-masked: half its elements zero.
        for e in bytes[BLOCK..].chunks_exact_mut(8) {
            e[..4].fill(0);
            e[4] |= 1;
        }
        let raw = tensor(DType::F32, bytes);
        let packed = compress(&raw).unwrap();
        let meta = raw.meta();
        let data = packed.data();
        // Truncated, extended, flipped words and bytes: errors, never panics.
        assert!(decode(meta, &data[..data.len() - 1]).is_err());
        let mut longer = data.to_vec();
        longer.push(0);
        assert!(decode(meta, &longer).is_err());
        for word in [u32::MAX, 3 << 30, LEN_MASK, 1 << 30, 2 << 30] {
            let mut bad = data.to_vec();
            bad[..4].copy_from_slice(&word.to_le_bytes());
            assert!(decode(meta, &bad).is_err(), "word {word:#x}");
        }
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
