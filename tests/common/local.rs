//! Helpers for the local door's tests (`tests/local.rs`,
//! `tests/review_local.rs`): a server with a socket in a fresh directory,
//! its leased-bytes gauge, and requests built by hand.

use std::path::PathBuf;
use std::time::Duration;

use redstone::client::FastClient;
use redstone::fast::local::LocalConfig;
use redstone::fast::wire::{Request, WireMeta};
use redstone::fast::FastConfig;
use redstone::metrics::ServerMetrics;
use redstone::server::{Config, Server, ServerHandle};

use super::u8_meta;

/// A fresh directory for one test's socket.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("redstone-local-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A server with a local door, and what the tests read of it.
pub struct LocalServer {
    pub server: ServerHandle,
    pub metrics: ServerMetrics,
    pub path: PathBuf,
}

impl LocalServer {
    /// Starts a server with a budget of `limit`, its socket (mode `mode`)
    /// in a fresh directory named after `name`.
    pub async fn start(
        name: &str,
        limit: u64,
        max_leased: u64,
        mode: u32,
        fast: FastConfig,
    ) -> LocalServer {
        let path = scratch(name).join("redstone.sock");
        let config = Config {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            fast_addr: "127.0.0.1:0".parse().unwrap(),
            memory_limit: limit,
            fast,
            local: Some(LocalConfig {
                mode,
                ..LocalConfig::new(&path, max_leased)
            }),
            ..Config::default()
        };
        let server = Server::bind(config).await.expect("bind");
        let metrics = server.metrics().clone();
        LocalServer {
            server: server.spawn(),
            metrics,
            path,
        }
    }

    /// The door's address for `FastClient::connect`.
    pub fn addr(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    pub async fn client(&self) -> FastClient {
        FastClient::connect(self.addr()).await.unwrap()
    }

    /// A client that keeps `keep` bytes of mappings
    /// (`FastClientOptions::keep_mapped`).
    pub async fn client_keeping(&self, keep: u64) -> FastClient {
        let options = redstone::client::FastClientOptions {
            keep_mapped: keep,
            ..Default::default()
        };
        FastClient::connect_with(&self.addr(), options)
            .await
            .unwrap()
    }

    /// `redstone_local_leased_bytes` from the metrics.
    pub fn leased(&self) -> u64 {
        let text = self.metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix("redstone_local_leased_bytes "))
            .and_then(|v| v.trim().parse().ok())
            .expect("the leased gauge")
    }

    /// Waits (a bounded while) for the leased bytes to become `want`.
    pub async fn leased_becomes(&self, want: u64) {
        for _ in 0..300 {
            if self.leased() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(self.leased(), want, "leased bytes");
    }
}

/// A PUT of a `u8` tensor of `len` bytes under `key`.
pub fn put_request(key: &str, len: u64) -> Request {
    Request::Put {
        key: key.into(),
        meta: WireMeta::from(&u8_meta(len)),
    }
}

/// Whether `addr` lies in a read-only shared memfd mapping of this process
/// (as a mapped tensor does), per /proc/self/maps.
pub fn memfd_mapped_at(addr: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            return false;
        };
        let Some((lo, hi)) = range.split_once('-') else {
            return false;
        };
        let (lo, hi) = (
            usize::from_str_radix(lo, 16).unwrap(),
            usize::from_str_radix(hi, 16).unwrap(),
        );
        lo <= addr && addr < hi && perms.starts_with("r--s") && line.contains("memfd:")
    })
}
