//! Helpers shared by the integration tests.
#![allow(dead_code)]

use redstone::server::{Config, Server, ServerHandle};

/// Starts a server on an ephemeral loopback port with a budget of `limit`.
pub async fn start_server(limit: u64) -> ServerHandle {
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        tcp_addr: "127.0.0.1:0".parse().unwrap(),
        memory_limit: limit,
        ..Config::default()
    };
    Server::bind(config).await.expect("bind").spawn()
}

/// Deterministic bytes derived from a seed, so a corrupted or swapped
/// payload cannot pass for the right one.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

use bytes::Bytes;
use redstone::connection::FrameReader;
use redstone::protocol::{
    decode_response, encode, encode_head, Limits, Opcode, Prefix, Request, Response,
};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A fast-path connection driven frame by frame, for tests that send what
/// no well-behaved client would.
pub struct RawConn {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl RawConn {
    pub async fn connect(addr: std::net::SocketAddr) -> RawConn {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        RawConn {
            reader: FrameReader::new(r),
            writer: w,
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }

    /// Sends a well-formed request frame.
    pub async fn send(&mut self, id: u64, request: &Request, payload: &[u8]) {
        let header = encode(request);
        let mut frame = encode_head(request.opcode(), 0, id, &header, payload.len() as u64);
        frame.extend_from_slice(payload);
        self.send_bytes(&frame).await.unwrap();
    }

    /// Sends a frame with a hand-picked opcode and header bytes.
    pub async fn send_raw(&mut self, opcode: Opcode, id: u64, header: &[u8], payload: &[u8]) {
        let mut frame = encode_head(opcode, 0, id, header, payload.len() as u64);
        frame.extend_from_slice(payload);
        self.send_bytes(&frame).await.unwrap();
    }

    /// The next response frame, or `None` once the server has closed.
    pub async fn recv(&mut self) -> Option<(Prefix, Response, Bytes)> {
        let limits = Limits {
            max_header: 1 << 20,
            max_payload: 1 << 40,
        };
        let head = self.reader.read_head(&limits).await.ok()??;
        let response = decode_response(&head.header, head.prefix.request_id).unwrap();
        let payload = self
            .reader
            .read_payload(head.prefix.payload_len)
            .await
            .unwrap();
        Some((head.prefix, response, payload))
    }
}

/// Starts a server with a custom fast-path configuration.
pub async fn start_server_with(limit: u64, fast: redstone::fast::FastConfig) -> ServerHandle {
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        tcp_addr: "127.0.0.1:0".parse().unwrap(),
        memory_limit: limit,
        fast,
        ..Config::default()
    };
    Server::bind(config).await.expect("bind").spawn()
}
