//! One record of the segment log, as laid out on disk.
//!
//! ```text
//! offset  size  field
//!      0     4  magic: "RSR1" for a live record, "RSV1" once voided
//!      4     1  kind: 1 = raw tensor, 2 = tensor encoded with
//!               `Encoding::Packed` (the payload is the encoded form)
//!      5     1  dtype code
//!      6     1  layout code
//!      7     1  reserved, 0
//!      8     4  key length, bytes (little-endian, as every integer here)
//!     12     4  rank (number of dimensions)
//!     16     8  payload length, bytes (as stored)
//!     24     8  the tensor's digest (`Tensor::digest`: dtype, layout,
//!               shape and raw payload)
//!     32     8  head checksum: XXH3-64 of bytes 4..32, the dimensions and
//!               the key (not of the magic)
//!     40  8×rank dimensions, u64 each
//!      …   key   the key, UTF-8
//!      …   len   the payload
//! ```
//!
//! The head checksum covers the key, the metadata and the digest; the
//! digest covers the metadata and the payload. So a record whose head
//! checksum holds is a record this server wrote, and its payload is the
//! tensor's only if the digest recomputed over it matches: recovery checks
//! the first (reading only heads), every read checks both.
//!
//! A delete *voids* the key's record in place: it overwrites the magic
//! (4 bytes, no new space, so it works on a full disk), and the checksum,
//! which leaves the magic out, still holds. Recovery skips a voided record
//! and forgets the key, as a delete at that point of the log.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

use super::log::Loc;
use super::pool::Pool;
use crate::engine::MAX_KEY_LEN;
use crate::tensor::codec::Encoding;
use crate::tensor::meta::{DType, StorageLayout, TensorMeta, MAX_RANK};
use crate::tensor::Tensor;

pub(crate) const MAGIC: [u8; 4] = *b"RSR1";
/// The magic of a voided (deleted) record.
pub(crate) const VOID: [u8; 4] = *b"RSV1";
/// The fixed part of a record's head.
pub(crate) const FIXED: usize = 40;
/// The largest head: the fixed part, [`MAX_RANK`] dimensions, the longest key.
pub(crate) const MAX_HEAD: usize = FIXED + 8 * MAX_RANK + MAX_KEY_LEN;

/// A record's head, decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    /// Whether a delete voided the record.
    pub(crate) voided: bool,
    pub(crate) key: String,
    pub(crate) meta: TensorMeta,
    /// How the payload is stored.
    pub(crate) encoding: Encoding,
    pub(crate) payload_len: u64,
    pub(crate) digest: u64,
    /// The head's length on disk: where the payload starts.
    pub(crate) len: usize,
}

/// Why bytes are not a record's head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadHead {
    /// Fewer bytes than the head needs (the end of the file, or a head
    /// longer than the bytes read so far).
    #[error("the head needs {0} bytes")]
    Short(usize),
    /// Not a record this server wrote, or written only in part.
    #[error("{0}")]
    Corrupt(&'static str),
}

/// Encodes the head of a tensor record.
pub(crate) fn tensor_head(key: &str, tensor: &Tensor, digest: u64) -> Vec<u8> {
    let meta = tensor.meta();
    let shape = meta.shape();
    let mut head = Vec::with_capacity(FIXED + 8 * shape.len() + key.len());
    head.extend_from_slice(&MAGIC);
    let kind = 1 + tensor.encoding().code();
    head.extend_from_slice(&[kind, meta.dtype().code(), meta.layout().code(), 0]);
    head.extend_from_slice(&(key.len() as u32).to_le_bytes());
    head.extend_from_slice(&(shape.len() as u32).to_le_bytes());
    head.extend_from_slice(&(tensor.data().len() as u64).to_le_bytes());
    head.extend_from_slice(&digest.to_le_bytes());
    head.extend_from_slice(&[0; 8]);
    for dim in shape {
        head.extend_from_slice(&dim.to_le_bytes());
    }
    head.extend_from_slice(key.as_bytes());
    let sum = head_sum(&head);
    head[32..40].copy_from_slice(&sum.to_le_bytes());
    head
}

/// The checksum of a head: everything but the magic and its own 8 bytes.
fn head_sum(head: &[u8]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&head[4..32]);
    hasher.update(&head[FIXED..]);
    hasher.digest()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Decodes the head at the start of `bytes`, checking its checksum. The
/// lengths it claims are bounded before any is used: a key over
/// [`MAX_KEY_LEN`], a rank over [`MAX_RANK`] or a payload length that is not
/// the metadata's byte size is `Corrupt`, whatever the checksum says.
pub(crate) fn decode(bytes: &[u8]) -> Result<Head, BadHead> {
    if bytes.len() < FIXED {
        return Err(BadHead::Short(FIXED));
    }
    let voided = match [bytes[0], bytes[1], bytes[2], bytes[3]] {
        MAGIC => false,
        VOID => true,
        _ => return Err(BadHead::Corrupt("no record starts here")),
    };
    let key_len = u32_at(bytes, 8) as usize;
    let rank = u32_at(bytes, 12) as usize;
    if key_len > MAX_KEY_LEN || rank > MAX_RANK {
        return Err(BadHead::Corrupt("the head claims an impossible length"));
    }
    let len = FIXED + 8 * rank + key_len;
    if bytes.len() < len {
        return Err(BadHead::Short(len));
    }
    let head = &bytes[..len];
    if u64_at(head, 32) != head_sum(head) {
        return Err(BadHead::Corrupt("the head's checksum does not match"));
    }
    let encoding = match head[4] {
        1 => Encoding::Raw,
        2 => Encoding::Packed,
        _ => return Err(BadHead::Corrupt("unknown record kind")),
    };
    let key = std::str::from_utf8(&head[len - key_len..])
        .map_err(|_| BadHead::Corrupt("the key is not UTF-8"))?
        .to_owned();
    let payload_len = u64_at(head, 16);
    let shape: Vec<u64> = (0..rank).map(|i| u64_at(head, FIXED + 8 * i)).collect();
    let meta = TensorMeta::new(
        DType::from_code(i64::from(head[5])).map_err(|_| BadHead::Corrupt("bad dtype"))?,
        shape,
        StorageLayout::from_code(i64::from(head[6])).map_err(|_| BadHead::Corrupt("bad layout"))?,
    )
    .map_err(|_| BadHead::Corrupt("bad shape"))?;
    if !encoding.fits(&meta, payload_len) {
        return Err(BadHead::Corrupt("the payload length is not the shape's"));
    }
    Ok(Head {
        voided,
        key,
        meta,
        encoding,
        payload_len,
        digest: u64_at(head, 24),
        len,
    })
}

/// Voids the record at `offset` of `file` (see the module docs).
pub(crate) fn void(file: &File, offset: u64) -> std::io::Result<()> {
    file.write_all_at(&VOID, offset)
}

/// Why a record read back is not served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadFailure {
    #[error("reading it failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("its head is bad: {0}")]
    Head(#[from] BadHead),
    #[error("it is not the record the index named")]
    Mismatch,
    #[error("its payload does not match its digest")]
    Digest,
}

/// Reads the tensor record at `loc` (head `head_len` bytes, payload `len`)
/// with `pread`, and checks all of it against what the index says: the
/// head's checksum, the key, the length, and the payload against the
/// digest. The payload goes into a buffer from `pool`: the bytes checked
/// are the bytes served, and a read error is an error, never a signal.
pub(crate) fn read(
    loc: &Loc,
    head_len: u32,
    key: &str,
    len: u64,
    digest: u64,
    pool: &Arc<Pool>,
) -> Result<Tensor, ReadFailure> {
    let mut head = vec![0; head_len as usize];
    loc.file.read_exact_at(&mut head, loc.offset)?;
    let head = decode(&head)?;
    if head.voided
        || head.key != key
        || head.payload_len != len
        || head.digest != digest
        || head.len != head_len as usize
    {
        return Err(ReadFailure::Mismatch);
    }
    let len = usize::try_from(len).map_err(|_| ReadFailure::Mismatch)?;
    let mut payload = pool.take(len);
    loc.file
        .read_exact_at(payload.as_mut(), loc.offset + u64::from(head_len))?;
    let tensor = Tensor::from_encoded(head.meta, head.encoding, Bytes::from_owner(payload))
        .map_err(|_| ReadFailure::Mismatch)?;
    // An encoded payload is decoded (a block at a time) to be checked.
    if tensor.digest() != digest {
        return Err(ReadFailure::Digest);
    }
    Ok(tensor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor() -> Tensor {
        Tensor::from_slice::<f32>(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap()
    }

    #[test]
    fn a_head_round_trips() {
        let t = tensor();
        let head = tensor_head("layer.0", &t, t.digest());
        let got = decode(&head).unwrap();
        assert!(!got.voided);
        assert_eq!(got.key, "layer.0");
        assert_eq!(&got.meta, t.meta());
        assert_eq!(
            (got.payload_len, got.digest, got.len),
            (24, t.digest(), head.len())
        );
        let mut voided = head.clone();
        voided[..4].copy_from_slice(&VOID);
        assert!(
            decode(&voided).unwrap().voided,
            "voiding keeps the checksum"
        );
    }

    #[test]
    fn every_flipped_byte_of_a_head_is_caught() {
        let t = tensor();
        let head = tensor_head("k", &t, t.digest());
        for i in 0..head.len() {
            for bit in 0..8 {
                let mut bad = head.clone();
                bad[i] ^= 1 << bit;
                // A flip in the magic may only turn it into the other one.
                let caught = match decode(&bad) {
                    Err(_) => true,
                    Ok(h) => i < 4 && h.voided,
                };
                assert!(caught, "byte {i} bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn a_short_read_asks_for_the_whole_head() {
        let t = tensor();
        let head = tensor_head("key", &t, 7);
        assert_eq!(decode(&head[..10]), Err(BadHead::Short(FIXED)));
        assert_eq!(decode(&head[..FIXED + 1]), Err(BadHead::Short(head.len())));
    }

    #[test]
    fn an_encoded_tensor_keeps_its_encoding() {
        use crate::tensor::codec;
        let zeros = Tensor::from_slice::<f32>(vec![4096], &[0.0; 4096]).unwrap();
        let packed = codec::compress(&zeros).unwrap();
        let head = decode(&tensor_head("z", &packed, zeros.digest())).unwrap();
        assert_eq!(head.encoding, Encoding::Packed);
        assert_eq!(head.payload_len, packed.data().len() as u64);
        assert_eq!(
            packed.digest(),
            zeros.digest(),
            "the digest is the raw tensor's"
        );
    }

    #[test]
    fn claimed_lengths_are_bounded_before_use() {
        let mut head = tensor_head("k", &tensor(), 0);
        head[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&head), Err(BadHead::Corrupt(_))));
    }
}
