//! Entry points for the cargo-fuzz targets in `fuzz/`, shared with the
//! corpus replay test (`tests/fuzz_replay.rs`), so that CI runs every saved
//! input through the same code on a stable toolchain without libFuzzer.
//!
//! Each function takes arbitrary bytes, must never panic on them, and
//! asserts invariants on what it decoded: an assertion failure is a bug.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::engine::Engine;
use crate::fast::stream::FrameReader;
use crate::fast::wire::{
    decode_request, decode_response, encode, encode_frame, AlignedHeader, ArchivedRequest, Body,
    ConditionalPut, Limits, Prefix, Request, Response, Status, WireMeta, WireStats, PREFIX_LEN,
};
use crate::fast::FastConfig;
use crate::grpc::proto;
use crate::tensor::meta::TensorMeta;
use crate::tensor::Tensor;

const LIMITS: Limits = Limits {
    max_header: 4096,
    max_payload: 64 * 1024,
};

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime");
    }
    RUNTIME.with(|rt| rt.block_on(future))
}

/// [`block_on`] with a paused clock that jumps ahead whenever every task
/// waits, so timeouts fire at once.
fn block_on_paused<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
        .block_on(future)
}

/// A reader that hands out its bytes in chunks of varying size, so frames
/// are split at arbitrary read boundaries.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    turn: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let size = match self.sizes.get(self.turn % self.sizes.len().max(1)) {
            Some(&s) => usize::from(s).max(1),
            None => 7,
        };
        self.turn += 1;
        let n = size.min(self.data.len()).min(buf.remaining());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

/// Target 1: the frame decoder on arbitrary bytes split at arbitrary read
/// boundaries. The first 8 bytes choose the chunk sizes.
pub fn frame_decoder(data: &[u8]) {
    let (sizes, stream) = data.split_at(data.len().min(8));
    let mut reader = FrameReader::new(Chunked {
        data: stream,
        sizes,
        turn: 0,
    });
    block_on(async {
        let mut consumed = 0usize;
        while let Ok(Some(head)) = reader.read_head(&LIMITS).await {
            let p = head.prefix;
            assert!(p.header_len <= LIMITS.max_header && p.payload_len <= LIMITS.max_payload);
            assert_eq!(head.header.len(), p.header_len as usize);
            let Ok(payload) = reader.read_payload(p.payload_len).await else {
                break;
            };
            assert_eq!(payload.len() as u64, p.payload_len);
            consumed += PREFIX_LEN + head.header.len() + payload.len();
            assert!(
                consumed <= stream.len(),
                "decoded more bytes than were sent"
            );
            let _ = decode_request(&head.header, p.request_id);
        }
    });
}

/// Target 2: header validation (rkyv checked access) on arbitrary bytes.
/// Whatever validates must re-encode to something that decodes to itself,
/// and read in place (as the server reads it) as what it deserializes to.
pub fn header(data: &[u8]) {
    let mut aligned = AlignedHeader::new();
    let in_place = aligned.request(data, 1).ok();
    let owned = decode_request(data, 1).ok();
    assert_eq!(in_place.is_some(), owned.is_some());
    if let (Some(archived), Some(request)) = (in_place, &owned) {
        assert_eq!(archived.opcode(), request.opcode());
        if let (ArchivedRequest::Put { key, meta }, Request::Put { key: k, meta: m }) =
            (archived, request)
        {
            assert_eq!(key.as_str(), k);
            assert_eq!(
                meta.to_meta().ok(),
                TensorMeta::try_from(m.clone()).ok(),
                "in-place and owned metadata agree"
            );
        }
    }
    if let Some(request) = owned {
        let encoded = encode(&request).expect("a decoded request re-encodes");
        assert_eq!(decode_request(&encoded, 1).ok(), Some(request));
    }
    if let Ok(response) = decode_response(data, 1) {
        let encoded = encode(&response).expect("a decoded response re-encodes");
        assert_eq!(decode_response(&encoded, 1).ok(), Some(response));
    }
}

/// Target 3: a whole server connection fed an arbitrary byte stream over an
/// in-memory pipe, against a small engine. The handler must end, keep the
/// budget, and answer only with well-formed response frames.
pub fn connection(data: &[u8]) {
    drive_connection(data, None);
}

/// Target 6: [`connection`], but the client stops reading after the number
/// of reply bytes the first input byte picks (× 64) and keeps its end open,
/// as a client that stalled would. The handler must still end (its writer
/// gives up after the write timeout) and keep the budget. Runs on a paused
/// clock, so timeouts cost no real time.
pub fn stalled_connection(data: &[u8]) {
    let Some((&stop, stream)) = data.split_first() else {
        return;
    };
    drive_connection(stream, Some(usize::from(stop) * 64));
}

fn drive_connection(data: &[u8], read_limit: Option<usize>) {
    const BUDGET: u64 = 64 * 1024;
    let engine = Engine::new(BUDGET);
    // A key the stream may read, delete or collide with.
    let seed = Tensor::from_slice::<u8>(vec![16], &[7u8; 16]).expect("a valid tensor");
    engine.put("k", seed).expect("room for the seed");
    let config = FastConfig {
        max_header: 4096,
        max_payload: 32 * 1024,
        max_connections: 1,
        max_in_flight: 4,
        idle_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(1),
        max_queued_bytes: 16 * 1024,
        max_queued_total: 32 * 1024,
        max_ingress: 32 * 1024,
    };
    let input = data.to_vec();
    let served = engine.clone();
    let run = async move {
        let (client, server) = tokio::io::duplex(8192);
        let (server_read, server_write) = tokio::io::split(server);
        let (client_read, mut client_write) = tokio::io::split(client);
        let handler = tokio::spawn(crate::fast::serve_io(
            server_read,
            server_write,
            served,
            Arc::new(config),
        ));
        let writer = tokio::spawn(async move {
            // The server may close first; that is fine.
            let _ = client_write.write_all(&input).await;
            let _ = client_write.shutdown().await;
        });
        let mut replies = Vec::new();
        let limit = read_limit.map_or(u64::MAX, |n| n as u64);
        let mut client_read = tokio::io::AsyncReadExt::take(client_read, limit);
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut client_read, &mut replies).await;
        // A stalled client keeps its end open, unread, until the handler
        // has ended.
        let ended = tokio::time::timeout(Duration::from_secs(60), handler).await;
        assert!(
            matches!(ended, Ok(Ok(()))),
            "the connection handler must end"
        );
        drop(client_read);
        writer.abort();
        check_replies(&replies, read_limit.is_some()).await;
    };
    match read_limit {
        None => block_on(run),
        Some(_) => block_on_paused(run),
    }
    let stats = engine.stats();
    assert!(stats.memory_used <= BUDGET);
}

/// Every reply frame is a well-formed response; a cut stream may end
/// mid-frame.
async fn check_replies(replies: &[u8], cut: bool) {
    let mut reader = FrameReader::new(replies);
    let limits = Limits {
        max_header: 1 << 20,
        max_payload: 64 * 1024,
    };
    loop {
        let head = match reader.read_head(&limits).await {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(_) if cut => break,
            Err(e) => panic!("the server sends valid frames: {e}"),
        };
        assert!(head.prefix.is_response());
        let response = decode_response(&head.header, 0).expect("the server sends valid headers");
        let payload = match reader.read_payload(head.prefix.payload_len).await {
            Ok(payload) => payload,
            Err(_) if cut => break,
            Err(e) => panic!("whole frames: {e}"),
        };
        if let Body::Tensor(meta) = response.body {
            let meta = TensorMeta::try_from(meta).expect("stored metadata is valid");
            assert_eq!(meta.byte_size(), payload.len() as u64);
        }
    }
}

/// Target 4: gRPC metadata conversion. The bytes are a protobuf
/// `PutRequest`, as the gRPC door would receive it.
pub fn grpc_meta(data: &[u8]) {
    let Ok(request) = proto::PutRequest::decode(data) else {
        return;
    };
    let Ok(meta) = crate::grpc::meta_from_proto(request.meta.clone()) else {
        return;
    };
    let width = meta.dtype().width() as u64;
    let numel = meta
        .shape()
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d));
    if !meta.shape().contains(&0) {
        assert_eq!(
            numel.and_then(|n| n.checked_mul(width)),
            Some(meta.byte_size())
        );
    } else {
        assert_eq!(meta.byte_size(), 0);
    }
    assert_eq!(
        proto::TensorMeta::from(&meta),
        request.meta.unwrap_or_default()
    );
    if let Ok(t) = Tensor::new(meta, request.data) {
        assert_eq!(t.data().len() as u64, t.meta().byte_size());
    }
}

/// Bytes read as a sequence of choices, for structured fuzzing: libFuzzer
/// mutates the bytes, this turns them into values. Running out of bytes
/// yields zeros and empty values.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| acc << 8 | u64::from(self.byte()))
    }

    fn string(&mut self) -> String {
        let len = usize::from(self.byte()) % 40;
        let take = len.min(self.0.len());
        let (s, rest) = self.0.split_at(take);
        self.0 = rest;
        String::from_utf8_lossy(s).into_owned()
    }

    fn meta(&mut self) -> WireMeta {
        let (dtype, layout) = (self.byte(), self.byte());
        let rank = usize::from(self.byte()) % 6;
        let encoding = self.byte() % 3;
        WireMeta {
            dtype,
            layout,
            encoding,
            shape: (0..rank).map(|_| self.u64()).collect(),
        }
    }
}

/// Target 5: any request or response, built from the bytes, encodes to a
/// frame that decodes to itself.
pub fn roundtrip(data: &[u8]) {
    let mut c = Choices(data);
    let request = match c.byte() % 11 {
        0 => Request::Ping,
        1 => Request::Get { key: c.string() },
        2 => Request::Put {
            key: c.string(),
            meta: c.meta(),
        },
        3 => Request::Delete { key: c.string() },
        4 => Request::Stats,
        8 => Request::DiskStats,
        9 => Request::Release {
            leases: (0..c.byte() % 8).map(|_| c.u64().to_le_bytes()).collect(),
        },
        5 => Request::GetMany {
            keys: (0..c.byte() % 8).map(|_| c.string()).collect(),
        },
        6 => Request::Digest { key: c.string() },
        7 => Request::PutIf(Box::new(ConditionalPut {
            key: c.string(),
            meta: c.meta(),
            since: c.u64().to_le_bytes(),
        })),
        _ => Request::DeleteIf {
            key: c.string(),
            digest: c.u64().to_le_bytes(),
        },
    };
    let id = c.u64();
    let payload_len = c.u64() >> 40;
    let frame = encode_frame(request.opcode(), 0, id, &request, payload_len)
        .expect("a small request encodes");
    let prefix = Prefix::parse(&frame)
        .expect("an encoded prefix parses")
        .expect("a whole prefix");
    assert_eq!(
        (prefix.opcode, prefix.request_id, prefix.payload_len),
        (request.opcode(), id, payload_len)
    );
    assert_eq!(frame.len(), PREFIX_LEN + prefix.header_len as usize);
    assert_eq!(
        decode_request(&frame[PREFIX_LEN..], id).expect("an encoded header decodes"),
        request
    );

    let body = match c.byte() % 5 {
        0 => Body::Empty,
        1 => Body::Tensor(c.meta()),
        2 => Body::Deleted(c.byte() & 1 == 1),
        3 => Body::Digest(c.u64()),
        _ => Body::Stats(WireStats {
            entries: c.u64(),
            memory_used: c.u64(),
            memory_limit: c.u64(),
            hits: c.u64(),
            misses: c.u64(),
            evictions: c.u64(),
        }),
    };
    let response = Response {
        status: u16::from(c.byte()) % Status::ALL.len() as u16,
        index: c.u64() as u32,
        message: c.string(),
        body,
    };
    let encoded = encode(&response).expect("a small response encodes");
    assert_eq!(
        decode_response(&encoded, 0).expect("an encoded response decodes"),
        response
    );
}

/// Target 7: the packed-tensor codec ([`codec`](crate::tensor::codec)).
/// First byte: bit 7 clear decodes the rest as a packed payload for a
/// claimed element count (4 bytes): an `InvalidEncoding` error or exactly
/// the claimed bytes, and a claim the framing accepts is bounded by the
/// bytes present (no allocation a header merely claims). Bit 7 set packs
/// the rest as a raw tensor and unpacks it: the same bytes. The low bits
/// pick the dtype.
pub fn packed(data: &[u8]) {
    use crate::tensor::codec;
    use crate::tensor::meta::{DType, StorageLayout};
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let dtype = DType::ALL[usize::from(choice & 0x0f) % DType::ALL.len()];
    let vector =
        |n: u64| TensorMeta::new(dtype, vec![n], StorageLayout::RowMajor).expect("a vector");
    if choice & 0x80 == 0 {
        let (claim, encoded) = rest.split_at(rest.len().min(4));
        let mut count = [0u8; 4];
        count[..claim.len()].copy_from_slice(claim);
        let meta = vector(u64::from(u32::from_le_bytes(count)));
        if codec::check(&meta, encoded).is_ok() {
            assert!(
                meta.byte_size() <= 512 * encoded.len() as u64,
                "the framing accepted {} raw bytes from {} encoded",
                meta.byte_size(),
                encoded.len()
            );
        }
        match codec::decode(&meta, encoded) {
            Ok(raw) => assert_eq!(raw.len() as u64, meta.byte_size()),
            Err(crate::Error::InvalidEncoding(_)) => {}
            Err(e) => panic!("a corrupt payload gave {e}"),
        }
    } else {
        let len = rest.len() / dtype.width() * dtype.width();
        let raw = Tensor::new(vector((len / dtype.width()) as u64), rest[..len].to_vec())
            .expect("sized to its metadata");
        if let Some(packed) = codec::compress(&raw) {
            assert!(packed.data().len() < len);
            assert_eq!(packed.decoded().expect("a packed tensor unpacks"), raw);
            assert_eq!(packed.digest(), raw.digest());
        }
    }
}
