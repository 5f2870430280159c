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
