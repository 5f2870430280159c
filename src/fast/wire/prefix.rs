//! The fixed frame prefix: sans-IO encode and parse.
//!
//! ```text
//! offset size  field
//!  0      4    magic        b"RSTN"
//!  4      1    version      3 (a server also reads and answers 1 and 2)
//!  5      1    opcode       see `Opcode`
//!  6      1    flags        bit 0 RESPONSE, bit 1 END, bit 2 NOT_BULK
//!                            (version 3), bit 3 FD (version 3, the local
//!                            door); other bits 0
//!  7      1    reserved     0
//!  8      8    request_id   u64, chosen by the client, echoed by the server
//! 16      4    header_len   u32, bytes of rkyv header that follow
//! 20      4    reserved     0
//! 24      8    payload_len  u64, bytes of raw payload after the header
//! ```
//! All integers are little-endian. See `docs/PROTOCOL.md`.

use super::{ProtocolError, Status};

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"RSTN";
/// The protocol version this crate speaks: 2 adds encoded (compressed)
/// payloads, named by [`WireMeta::encoding`](super::WireMeta::encoding); 3
/// adds [`FLAG_NOT_BULK`].
pub const VERSION: u8 = 3;
/// The oldest version a server still answers, in that version: a version-1
/// client is never sent an encoded payload.
pub const MIN_VERSION: u8 = 1;
/// The prefix length in bytes.
pub const PREFIX_LEN: usize = 32;

/// Set on every frame the server sends.
pub const FLAG_RESPONSE: u8 = 1;
/// Set on the last frame of a response (every response but a batch GET's
/// non-final frames).
pub const FLAG_END: u8 = 2;
/// On a GET (version 3 on): the client fetches a tensor whose payload is
/// over [`BULK_THRESHOLD`] on a connection of its own, so a large payload
/// never holds up the small replies behind it on a shared one. The server
/// answers such a GET [`Status::Bulk`], without the payload.
pub const FLAG_NOT_BULK: u8 = 4;
/// The largest payload a GET flagged [`FLAG_NOT_BULK`] is answered with.
/// At loopback's 3–4 GB/s a 1 MiB reply holds a connection for about
/// 0.3 ms.
pub const BULK_THRESHOLD: u64 = 1 << 20;
/// The payload is not on the stream: it is the whole of a sealed memfd,
/// `payload_len` bytes, passed as the next file descriptor on the socket
/// (`SCM_RIGHTS`). Version 3, on a PUT or PUT_IF request or a GET
/// response, and only over the local (Unix socket) door. On a GET request:
/// the client takes the answer as a memfd if the server can give one.
pub const FLAG_FD: u8 = 8;
const KNOWN_FLAGS: u8 = FLAG_RESPONSE | FLAG_END;

/// What a frame asks for (or answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Liveness check; no header, no payload.
    Ping = 1,
    /// Read one tensor.
    Get = 2,
    /// Store one tensor; the payload is its bytes.
    Put = 3,
    /// Remove one key.
    Delete = 4,
    /// Read the cache's counters.
    Stats = 5,
    /// Read many tensors; answered by one frame per key.
    GetMany = 6,
    /// The content digest of one key's tensor.
    Digest = 7,
    /// Remove one key only if its tensor has a given digest.
    DeleteIf = 8,
    /// Store one tensor unless its key was deleted after a given time.
    PutIf = 9,
    /// Read the disk tier's counters.
    DiskStats = 10,
    /// Let go of mapped tensors (the local door's leases).
    Release = 11,
}

impl Opcode {
    /// The opcode as a metrics label: `get`, `put`, `get_many`, …
    pub fn name(self) -> &'static str {
        match self {
            Opcode::Ping => "ping",
            Opcode::Get => "get",
            Opcode::Put => "put",
            Opcode::Delete => "delete",
            Opcode::Stats => "stats",
            Opcode::GetMany => "get_many",
            Opcode::Digest => "digest",
            Opcode::DeleteIf => "delete_if",
            Opcode::PutIf => "put_if",
            Opcode::DiskStats => "disk_stats",
            Opcode::Release => "release",
        }
    }

    /// The opcode for a byte, if it names one.
    pub fn from_u8(byte: u8) -> Option<Opcode> {
        Some(match byte {
            1 => Opcode::Ping,
            2 => Opcode::Get,
            3 => Opcode::Put,
            4 => Opcode::Delete,
            5 => Opcode::Stats,
            6 => Opcode::GetMany,
            7 => Opcode::Digest,
            8 => Opcode::DeleteIf,
            9 => Opcode::PutIf,
            10 => Opcode::DiskStats,
            11 => Opcode::Release,
            _ => return None,
        })
    }
}

/// A decoded prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    /// The protocol version, [`MIN_VERSION`] to [`VERSION`]. A response
    /// carries its request's.
    pub version: u8,
    /// The opcode.
    pub opcode: Opcode,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Matches a response to its request.
    pub request_id: u64,
    /// Bytes of rkyv header after the prefix.
    pub header_len: u32,
    /// Bytes of raw payload after the header.
    pub payload_len: u64,
}

impl Prefix {
    /// Whether this frame is a response.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// Whether this frame ends its response.
    pub fn is_end(&self) -> bool {
        self.flags & FLAG_END != 0
    }

    /// The 32 bytes on the wire.
    pub fn encode(&self) -> [u8; PREFIX_LEN] {
        let mut out = [0u8; PREFIX_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = self.version;
        out[5] = self.opcode as u8;
        out[6] = self.flags;
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.header_len.to_le_bytes());
        out[24..32].copy_from_slice(&self.payload_len.to_le_bytes());
        out
    }

    /// Parses a prefix from the start of `buf`: `Ok(None)` if fewer than
    /// [`PREFIX_LEN`] bytes are there yet.
    ///
    /// Limits are not checked here; see [`Limits::check`](super::Limits::check).
    pub fn parse(buf: &[u8]) -> Result<Option<Prefix>, ProtocolError> {
        let Some(bytes) = buf.get(..PREFIX_LEN) else {
            return Ok(None);
        };
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let request_id = u64_at(8);
        if bytes[0..4] != MAGIC {
            return Err(ProtocolError::new(
                Status::Malformed,
                0,
                "the frame does not start with the magic bytes RSTN",
            ));
        }
        let version = bytes[4];
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(ProtocolError::new(
                Status::UnsupportedVersion,
                request_id,
                format!(
                    "protocol version {version} is not supported; this side speaks versions \
                     {MIN_VERSION} to {VERSION}"
                ),
            ));
        }
        let opcode = Opcode::from_u8(bytes[5]).ok_or_else(|| {
            ProtocolError::new(
                Status::UnknownOpcode,
                request_id,
                format!("unknown opcode {}", bytes[5]),
            )
        })?;
        let flags = bytes[6];
        let response = flags & FLAG_RESPONSE != 0;
        let known = KNOWN_FLAGS
            | match (version >= 3, opcode, response) {
                (true, Opcode::Get, false) => FLAG_NOT_BULK | FLAG_FD,
                (true, Opcode::Put | Opcode::PutIf, false) => FLAG_FD,
                (true, Opcode::Get, true) => FLAG_FD,
                _ => 0,
            };
        if flags & !known != 0 || bytes[7] != 0 || u32_at(20) != 0 {
            return Err(ProtocolError::new(
                Status::Malformed,
                request_id,
                "unknown flags or nonzero reserved bytes in the prefix",
            ));
        }
        Ok(Some(Prefix {
            version,
            opcode,
            flags,
            request_id,
            header_len: u32_at(16),
            payload_len: u64_at(24),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_short_input() {
        let p = Prefix {
            version: VERSION,
            opcode: Opcode::Put,
            flags: FLAG_RESPONSE | FLAG_END,
            request_id: u64::MAX - 3,
            header_len: 77,
            payload_len: 1 << 40,
        };
        let bytes = p.encode();
        assert_eq!(Prefix::parse(&bytes).unwrap(), Some(p));
        for n in 0..PREFIX_LEN {
            assert_eq!(Prefix::parse(&bytes[..n]).unwrap(), None);
        }
    }

    #[test]
    fn opcodes_are_contiguous_from_one() {
        // The metrics index ops by `opcode - 1`.
        let all: Vec<Opcode> = (1..=u8::MAX).map_while(Opcode::from_u8).collect();
        assert_eq!(all.len(), 11);
        assert!(all.iter().enumerate().all(|(i, op)| *op as usize == i + 1));
        assert_eq!(Opcode::from_u8(all.len() as u8 + 1), None);
    }

    #[test]
    fn bad_prefixes_are_typed_errors() {
        let good = Prefix {
            version: VERSION,
            opcode: Opcode::Get,
            flags: 0,
            request_id: 9,
            header_len: 1,
            payload_len: 0,
        }
        .encode();
        let with = |i: usize, b: u8| {
            let mut x = good;
            x[i] = b;
            Prefix::parse(&x).unwrap_err().status
        };
        assert_eq!(with(0, b'X'), Status::Malformed);
        assert_eq!(with(4, 0), Status::UnsupportedVersion);
        assert_eq!(with(4, 4), Status::UnsupportedVersion);
        let mut old = good;
        old[4] = 1;
        assert_eq!(Prefix::parse(&old).unwrap().unwrap().version, 1);
        assert_eq!(with(5, 0), Status::UnknownOpcode);
        assert_eq!(with(5, 200), Status::UnknownOpcode);
        assert_eq!(with(6, 16), Status::Malformed);
        // NOT_BULK: known on a version-3 GET only.
        let mut flagged = good;
        flagged[6] = FLAG_NOT_BULK;
        assert_eq!(
            Prefix::parse(&flagged).unwrap().unwrap().flags,
            FLAG_NOT_BULK
        );
        flagged[4] = 2;
        assert_eq!(
            Prefix::parse(&flagged).unwrap_err().status,
            Status::Malformed
        );
        assert_eq!(with(7, 1), Status::Malformed);
        assert_eq!(with(21, 1), Status::Malformed);
    }

    #[test]
    fn fd_is_known_on_version_3_puts_and_get_responses_only() {
        let parse = |version: u8, opcode: Opcode, flags: u8| {
            let p = Prefix {
                version,
                opcode,
                flags,
                request_id: 1,
                header_len: 0,
                payload_len: 0,
            };
            Prefix::parse(&p.encode()).map(|p| p.is_some())
        };
        let response = FLAG_RESPONSE | FLAG_END;
        for (version, opcode, flags, ok) in [
            (3, Opcode::Put, FLAG_FD, true),
            (3, Opcode::PutIf, FLAG_FD, true),
            (3, Opcode::Get, response | FLAG_FD, true),
            (2, Opcode::Put, FLAG_FD, false),
            (3, Opcode::Get, FLAG_FD, true),
            (3, Opcode::GetMany, FLAG_FD, false),
            (3, Opcode::Put, response | FLAG_FD, false),
            (3, Opcode::GetMany, response | FLAG_FD, false),
            (3, Opcode::Delete, FLAG_FD, false),
        ] {
            let parsed = parse(version, opcode, flags);
            assert_eq!(parsed.is_ok(), ok, "v{version} {opcode:?} flags {flags}");
        }
    }
}
