//! Hostile review of the local door (`server --uds`).
//!
//! FINDINGS, now fixed (each `f*` test failed on the reviewed code, for
//! the bug its doc comment names, and passes with the fix):
//! - `f1_every_shared_tensor_holds_a_server_fd_until_no_door_can_accept`
//! - `f2_stray_descriptors_on_a_few_connections_exhaust_the_servers_fd_table`
//! - `f3_one_connection_can_take_all_of_max_leased_and_get_into_is_refused_too`
//! - `f4_the_local_door_has_its_own_ingress_budget`
//! - `f5_shutdown_removes_a_socket_file_that_is_no_longer_its_own`
//! - `f7_a_client_that_does_not_read_puts_the_servers_descriptors_out_of_reach`
//! - `f8_a_live_socket_another_user_cannot_connect_to_is_taken_over_as_stale`
//! - `f9_a_release_deferred_by_a_full_queue_waits_for_the_next_request`
//!
//! (A sixth finding, that a lease is only the client's word — a client
//! that releases, or closes its connection, and keeps the descriptor keeps
//! the pages — is a limit of the design, documented in docs/PROTOCOL.md and
//! the README: `--max-leased` bounds cooperating clients.)
//!
//! The `Spawned` tests run the `server` binary with a low RLIMIT_NOFILE,
//! two as user `nobody` (those need root, and are skipped without it).
//!
//! PASSING CHECKS (things tried that held) are the tests named `ok_*`.
//!
//! Tests that count this process's descriptors (the server runs in
//! process) take `SERIAL`, so that no other test of this file opens or
//! closes descriptors meanwhile.

mod common;

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::{pattern, u8_meta};
use redstone::client::{ClientError, FastClient, FastClientOptions};
use redstone::fast::local::LocalConfig;
use redstone::fast::wire::{
    decode_response, encode, encode_frame, encode_head, Body, ConditionalPut, Opcode, Prefix,
    Request, Response, Status, WireMeta, FLAG_END, FLAG_FD, FLAG_RESPONSE, PREFIX_LEN,
};
use redstone::fast::FastConfig;
use redstone::server::{Config, Server};
use rustix::fs::SealFlags;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

const MIB: usize = 1 << 20;
const SEALED: SealFlags = SealFlags::WRITE
    .union(SealFlags::SHRINK)
    .union(SealFlags::GROW);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------- helpers

use common::local::{put_request, scratch, LocalServer as Local};

async fn start_with(name: &str, limit: u64, max_leased: u64, fast: FastConfig) -> Local {
    Local::start(name, limit, max_leased, 0o600, fast).await
}

async fn start(name: &str, limit: u64, max_leased: u64) -> Local {
    start_with(name, limit, max_leased, FastConfig::for_budget(limit)).await
}

/// Descriptors open in this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits (a bounded while) for this process to have at most `want` fds.
async fn fds_settle(want: usize) -> usize {
    for _ in 0..300 {
        if open_fds() <= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    open_fds()
}

/// A sealed memfd of `len` bytes of `data` (repeated), sealed with `seals`.
fn memfd_of(data: &[u8], seals: SealFlags) -> OwnedFd {
    use rustix::fs::MemfdFlags;
    let fd = rustix::fs::memfd_create("review", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .unwrap();
    rustix::fs::ftruncate(&fd, data.len() as u64).unwrap();
    let mut done = 0;
    while done < data.len() {
        done += rustix::io::pwrite(&fd, &data[done..], done as u64).unwrap();
    }
    if !seals.is_empty() {
        rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    }
    fd
}

fn memfd(len: usize, fill: u8, seals: SealFlags) -> OwnedFd {
    memfd_of(&vec![fill; len], seals)
}

/// A raw local-door connection: frames and descriptors by hand.
struct Raw {
    stream: UnixStream,
    got: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

/// One reply frame read by [`Raw::recv`].
struct Frame {
    prefix: Prefix,
    response: Response,
    payload: Vec<u8>,
    fd: Option<OwnedFd>,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            stream,
            got: Vec::new(),
            fds: VecDeque::new(),
        }
    }

    /// `bytes` in one sendmsg with `fds` attached.
    fn send_with(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        let sent = rustix::net::sendmsg(
            &self.stream,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        if sent < bytes.len() {
            self.stream.write_all(&bytes[sent..])?;
        }
        Ok(())
    }

    /// A request frame (prefix + header; `stream_payload` after it), with
    /// `fds` attached.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        request: &Request,
        flags: u8,
        id: u64,
        payload_len: u64,
        stream_payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> std::io::Result<()> {
        let header = encode(request).unwrap();
        let mut frame = encode_head(request.opcode(), flags, id, &header, payload_len);
        frame.extend_from_slice(stream_payload);
        self.send_with(&frame, fds)
    }

    fn ping(&mut self, id: u64, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        self.send(&Request::Ping, 0, id, 0, &[], fds)
    }

    /// The next reply frame; `None` if the server closed the connection
    /// (or said nothing for the read timeout).
    fn recv(&mut self) -> Option<Frame> {
        loop {
            if self.got.len() >= PREFIX_LEN {
                let prefix = Prefix::parse(&self.got).unwrap().unwrap();
                let header_end = PREFIX_LEN + prefix.header_len as usize;
                let flagged = prefix.flags & FLAG_FD != 0;
                let on_stream = if flagged {
                    0
                } else {
                    prefix.payload_len as usize
                };
                if self.got.len() >= header_end + on_stream {
                    let response =
                        decode_response(&self.got[PREFIX_LEN..header_end], prefix.request_id)
                            .unwrap();
                    let payload = self.got[header_end..header_end + on_stream].to_vec();
                    self.got.drain(..header_end + on_stream);
                    let fd = if flagged {
                        Some(
                            self.fds
                                .pop_front()
                                .expect("a descriptor for a flagged reply"),
                        )
                    } else {
                        None
                    };
                    return Some(Frame {
                        prefix,
                        response,
                        payload,
                        fd,
                    });
                }
            }
            let mut buf = vec![0u8; 256 * 1024];
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = match rustix::net::recvmsg(
                &self.stream,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(msg) => msg,
                Err(_) => return None,
            };
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = message {
                    self.fds.extend(fds);
                }
            }
            if msg.bytes == 0 {
                return None;
            }
            self.got.extend_from_slice(&buf[..msg.bytes]);
        }
    }

    /// Whether the server has closed the connection (reads to EOF, or a
    /// reset).
    fn closed(&mut self) -> bool {
        let mut sink = [0u8; 4096];
        loop {
            match self.stream.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// A `server` binary started with RLIMIT_NOFILE = `nofile` (the soft
/// limit most services run with is 1024), fast path and local door on.
struct Spawned {
    child: std::process::Child,
    fast: std::net::SocketAddr,
    uds: PathBuf,
    /// Its log lines (RUST_LOG=debug).
    log: std::sync::Arc<Mutex<Vec<String>>>,
}

impl Spawned {
    fn start(name: &str, nofile: u64, cache: &str) -> Spawned {
        Spawned::start_as(name, nofile, cache, None)
    }

    /// [`Spawned::start`] as user `uid` (and group `uid`), in a scratch
    /// directory anyone may write.
    fn start_as(name: &str, nofile: u64, cache: &str, uid: Option<u32>) -> Spawned {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch(name);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        Spawned::start_at(&dir.join("redstone.sock"), nofile, cache, uid)
            .expect("the server starts")
    }

    /// The server on socket `uds`; `None` if it exits before listening.
    fn start_at(uds: &Path, nofile: u64, cache: &str, uid: Option<u32>) -> Option<Spawned> {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let uds = uds.to_path_buf();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_server"));
        command
            .args([
                "127.0.0.1:0",
                cache,
                "--fast",
                "127.0.0.1:0",
                "--metrics",
                "off",
            ])
            .arg("--uds")
            .arg(&uds)
            .env("RUST_LOG", "info,redstone::fast=debug")
            .stderr(std::process::Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe; nothing else runs
        // between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: nofile,
                    rlim_max: nofile,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(uid) = uid {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn server");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let fast = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.wait();
                return None;
            };
            if let Some(rest) = line.split("fast=").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        let log = std::sync::Arc::new(Mutex::new(Vec::new()));
        let keep = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                keep.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        for _ in 0..200 {
            if uds.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Spawned {
            child,
            fast,
            uds,
            log,
        })
    }

    /// Its log lines containing `needle` (the first few).
    fn logged(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|l| l.contains(needle))
            .take(3)
            .cloned()
            .collect()
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a fresh TCP fast-path client gets a PING answered within 3 s.
async fn tcp_ping_answers(addr: std::net::SocketAddr) -> Result<(), String> {
    let options = FastClientOptions {
        connect_timeout: Duration::from_secs(3),
        request_timeout: Some(Duration::from_secs(3)),
        ..FastClientOptions::default()
    };
    let client = FastClient::connect_with(addr, options)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    client.ping().await.map_err(|e| format!("ping: {e}"))
}

// --------------------------------------------------------------- findings

/// F1 (high). Every tensor stored through the local door keeps a
/// descriptor open in the server for as long as it is stored (the memfd in
/// `memfd::register`'s registry, src/fast/local/memfd.rs:138-141, plus a
/// VMA for its mapping, src/fast/local/memfd.rs:99), with no cap on their
/// number, and the server never raises RLIMIT_NOFILE. Its soft limit is
/// 1024 under systemd's default: a perfectly honest workload of ~1000
/// tensors of 256 KiB (250 MiB of cache) exhausts it, and from then on the
/// server cannot `accept` on ANY door (src/fast/server/mod.rs:186-192 just
/// logs and retries forever: TCP clients hang), and every further memfd PUT
/// is cut (recvmsg truncates the descriptors, and the connection is cut
/// with the misleading "more than 64 file descriptors in one message",
/// src/fast/local/fds.rs:118-123). The server also accepts memfds of any size
/// (the 256 KiB `SHARE_THRESHOLD` is only the Rust client's choice,
/// src/fast/server/handler.rs:566), so a hostile client gets there with
/// 1-byte tensors charged ~100 bytes each; with a raised fd limit the next
/// wall is vm.max_map_count (65530 VMAs), after which every mmap in the
/// process, jemalloc's included, fails.
///
/// Fix: bound the memfd-backed payloads (a count, e.g. a fraction of
/// RLIMIT_NOFILE and of max_map_count, raised to the hard limit at
/// startup); past the bound, or under SHARE_THRESHOLD, copy the memfd's
/// bytes into an ordinary allocation (charged to --max-ingress) and close
/// it, instead of keeping it.
///
/// Repro: a server with RLIMIT_NOFILE 256, an honest `FastClient` putting
/// 400 tensors of exactly SHARE_THRESHOLD bytes, then a new TCP client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_every_shared_tensor_holds_a_server_fd_until_no_door_can_accept() {
    let server = Spawned::start("f1", 256, "512MiB");
    let base = server.open_fds();
    let options = FastClientOptions {
        connect_timeout: Duration::from_secs(3),
        request_timeout: Some(Duration::from_secs(3)),
        ..FastClientOptions::default()
    };
    let client = FastClient::connect_with(format!("unix:{}", server.uds.display()), options)
        .await
        .unwrap();
    let len = redstone::fast::local::SHARE_THRESHOLD;
    let mut stored = 0;
    let mut first_error = None;
    for i in 0..400u64 {
        let key = format!("t{i}");
        match client.put(&key, u8_meta(len as u64), pattern(len, i)).await {
            Ok(()) => stored += 1,
            Err(e) => {
                first_error = Some(format!("put #{i}: {e}"));
                break;
            }
        }
    }
    let held = server.open_fds();
    // The cut connection gave back one descriptor: the first new client
    // may get it, the next cannot.
    let mut tcp = Vec::new();
    let mut kept = Vec::new();
    for _ in 0..2 {
        let options = FastClientOptions {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Some(Duration::from_secs(3)),
            ..FastClientOptions::default()
        };
        let client = FastClient::connect_with(server.fast, options)
            .await
            .unwrap();
        tcp.push(client.ping().await.map_err(|e| e.to_string()));
        kept.push(client);
    }
    assert!(
        first_error.is_none() && tcp.iter().all(Result::is_ok),
        "{stored} tensors of {len} bytes stored ({} MiB of a 512 MiB cache); the server \
         went from {base} to {held} open fds (limit 256); first put error: {first_error:?}; \
         two new TCP clients: {tcp:?}",
        stored * len / MIB
    );
}

/// F2 (high). Descriptors sent without a flagged frame wait on a
/// connection's inbox, up to 256 per connection (src/fast/local/fds.rs:38,
/// 57-70), for as long as the connection lives (a client that pings now
/// and then keeps it forever), and nothing bounds them across connections
/// (1024 connections × 256). One hostile local client thus fills the
/// server's descriptor table with a handful of connections (each sending
/// the same descriptor many times over: SCM_RIGHTS installs a new one per
/// entry), and from then on no door accepts anything.
///
/// Fix: a server-wide budget of unclaimed descriptors (well under
/// RLIMIT_NOFILE) shared by all local connections, and cut a connection
/// whose unclaimed descriptors outnumber the flagged frames it has
/// buffered (an honest peer never sends more).
///
/// Repro: a server at RLIMIT_NOFILE 1024; stray descriptors on PINGs over
/// a few connections until its table is full; then a new TCP client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_stray_descriptors_on_a_few_connections_exhaust_the_servers_fd_table() {
    const LIMIT: usize = 1024;
    let server = Spawned::start("f2", LIMIT as u64, "64MiB");
    assert!(
        tcp_ping_answers(server.fast).await.is_ok(),
        "serves at first"
    );
    // Give the server's TCP client connection time to close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let mut hostile = Vec::new();
    let mut id = 1;
    'fill: for _ in 0..20 {
        let mut raw = Raw::connect(&server.uds);
        raw.ping(id, &[]).unwrap();
        id += 1;
        if raw.recv().is_none() {
            break;
        }
        let mut sent = 0;
        // Under the per-connection bound (128); the server-wide one cuts
        // a connection that would pass it.
        while sent < 120 {
            let free = LIMIT.saturating_sub(server.open_fds());
            if free == 0 {
                hostile.push(raw);
                break 'fill;
            }
            let n = free.min(40).min(120 - sent);
            let fds: Vec<BorrowedFd<'_>> = (0..n).map(|_| devnull.as_fd()).collect();
            if raw.ping(id, &fds).is_err() {
                break;
            }
            id += 1;
            if raw.recv().is_none() {
                // Cut: the server-wide budget of unclaimed descriptors.
                break;
            }
            sent += n;
        }
        hostile.push(raw);
    }
    let held = server.open_fds();
    let tcp = tcp_ping_answers(server.fast).await;
    assert!(
        tcp.is_ok(),
        "{} hostile connections hold {held} of the server's {LIMIT} fds with stray \
         descriptors; a new TCP client: {tcp:?}",
        hostile.len()
    );
}

/// F3 (medium). One connection can lease all of `--max-leased` and keep
/// it as long as it likes (leases have no per-connection byte share and no
/// timeout beyond the connection's idle timeout, which any request
/// resets). Every other local client's GET of any other memfd-stored
/// tensor is then refused `LeaseLimit` (src/fast/server/handler.rs:681-688)
/// — and so is its `get_into`, which over the local door is a GET that maps
/// (src/fast/client/mod.rs `get_into_local`), although the refusal tells
/// the user to "read with get_into" (src/fast/local/leases.rs:39). Nothing
/// streams the bytes instead: the tensor cannot be read at all through the
/// local door.
///
/// Fix: when a lease would pass the limit, answer the GET with the payload
/// on the stream (as for any other tensor: `shared()` returning `None`)
/// instead of `LeaseLimit`; at least serve `get_into` that way (e.g. a
/// request flag "no fd"), and give each connection at most a share of
/// `--max-leased`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_one_connection_can_take_all_of_max_leased_and_get_into_is_refused_too() {
    let local = start("f3", 64 << 20, 8 * MIB as u64).await;
    let hog = local.client().await;
    for key in ["a", "b"] {
        hog.put(key, u8_meta(6 * MIB as u64), pattern(6 * MIB, 3))
            .await
            .unwrap();
    }
    let held = hog.get("a").await.unwrap().unwrap();
    local.leased_becomes(6 * MIB as u64).await;
    let other = local.client().await;
    let mut dst = vec![0u8; 6 * MIB];
    let got = other.get_into("b", &mut dst).await;
    assert!(
        matches!(got, Ok(Some(_))),
        "another client's get_into of `b` while one connection leases `a`: {got:?}"
    );
    drop(held);
    drop(local.server.shutdown().await);
}

/// F4 (medium). The local door is a second `fast::serve` with budgets of
/// its own (`shared_budgets` per call, src/fast/server/mod.rs:161), so
/// `--max-ingress` ("PUT payloads being received at once, over all
/// connections") and `--max-queued-total` are each granted twice: once to
/// the TCP connections and once again to the local ones, and the README's
/// memory bound ("budget + --max-queued-total + --max-ingress") is off by
/// both. Payloads under 256 KiB, and any payload a client chooses to send
/// on the stream, go through the local door's own ingress budget;
/// `redstone_fast_receiving_bytes` shows only the TCP door's.
///
/// Fix: build the `Shared` budgets once in `Server::run` and pass the same
/// `Arc` to both doors (and register the probes once).
///
/// Repro: a stalled TCP upload holds all of --max-ingress; a TCP put must
/// wait for room (it does), and so must a local-door put that sends its
/// payload on the stream (it does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_the_local_door_has_its_own_ingress_budget() {
    let fast = FastConfig {
        max_ingress: MIB as u64,
        idle_timeout: Duration::from_secs(20),
        write_timeout: Duration::from_secs(20),
        ..FastConfig::for_budget(64 << 20)
    };
    let local = start_with("f4", 64 << 20, 64 << 20, fast).await;
    let mut stalled = tokio::net::TcpStream::connect(local.server.fast_addr())
        .await
        .unwrap();
    let request = put_request("stalled", MIB as u64);
    let head = encode_frame(Opcode::Put, 0, 1, &request, MIB as u64).unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &head)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &[0u8; 1])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let small = 128 * 1024;
    let tcp = FastClient::connect(local.server.fast_addr()).await.unwrap();
    let tcp_put = tokio::time::timeout(
        Duration::from_millis(1500),
        tcp.put("tcp", u8_meta(small as u64), vec![1u8; small]),
    )
    .await;
    assert!(tcp_put.is_err(), "sanity: a TCP put waits for ingress room");
    let uds = local.client().await;
    let uds_put = tokio::time::timeout(
        Duration::from_millis(1500),
        uds.put("uds", u8_meta(small as u64), vec![2u8; small]),
    )
    .await;
    assert!(
        uds_put.is_err(),
        "a local-door put of {small} bytes on the stream was received while a stalled \
         TCP upload held all of --max-ingress ({MIB} bytes): {uds_put:?}"
    );
    drop(stalled);
    drop(local.server.shutdown().await);
}

/// F5 (low). On shutdown the door removes whatever file is at its path
/// (src/fast/server/mod.rs:248-250, "if it is still ours" — it never
/// checks). If the file was replaced meanwhile — by a new server started
/// on the same path after the first one's socket was unlinked, the usual
/// blue/green restart — the old server's shutdown deletes the new server's
/// socket, and no local client can connect to it any more.
///
/// Fix: remember the socket's (st_dev, st_ino) after the rename in
/// `local::bind`, and remove the path at shutdown only if it still names
/// that inode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f5_shutdown_removes_a_socket_file_that_is_no_longer_its_own() {
    let old = start("f5", 16 << 20, 16 << 20).await;
    let path = old.path.clone();
    std::fs::remove_file(&path).unwrap();
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: "127.0.0.1:0".parse().unwrap(),
        memory_limit: 16 << 20,
        local: Some(LocalConfig::new(&path, 1 << 20)),
        ..Config::default()
    };
    let new = Server::bind(config).await.expect("bind").spawn();
    old.server.shutdown().await.unwrap();
    let exists = path.exists();
    let reachable = match FastClient::connect(format!("unix:{}", path.display())).await {
        Ok(client) => client.ping().await.is_ok(),
        Err(_) => false,
    };
    drop(new.shutdown().await);
    assert!(
        exists && reachable,
        "the old server's shutdown removed the new server's socket"
    );
}

/// F7 (high, for a server not run as root — the normal case). Every
/// descriptor a server sends and its peer has not yet read counts against
/// the server user's in-flight limit (`too_many_unix_fds`: more in flight
/// than RLIMIT_NOFILE and `sendmsg` fails with ETOOMANYREFS). Nothing
/// bounds how many the server puts in flight: a local client that sends
/// GETs of a shared tensor (up to 4096 leases) and never reads fills its
/// receive queue with replies and their descriptors, and they stay in
/// flight as long as it keeps the socket open — even after the server has
/// cut it. From then on every FD reply to every local client fails in
/// `FdWriter::poll_write_vectored` (src/fast/local/fds.rs:172-184), which
/// ends that client's connection: no local client can read a shared
/// tensor, indefinitely.
///
/// Fix: bound the FD replies in flight: a small per-connection cap on FD
/// replies not yet read (e.g. stop flagging FD, or stop reading the
/// connection's requests, while its outbox/socket holds more than ~32),
/// a server-wide lease-count cap well under RLIMIT_NOFILE (raised to the
/// hard limit at startup), and on ETOOMANYREFS fall back to sending the
/// payload on the stream instead of failing the connection.
///
/// Repro: a server as `nobody` with RLIMIT_NOFILE 256; a raw client sends
/// 2000 GETs and never reads; then an honest client's `get`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f7_a_client_that_does_not_read_puts_the_servers_descriptors_out_of_reach() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: runs a server as another user, which needs root");
        return;
    }
    let server = Spawned::start_as("f7", 256, "256MiB", Some(65534));
    let honest = FastClient::connect(format!("unix:{}", server.uds.display()))
        .await
        .unwrap();
    let data = pattern(MIB, 5);
    honest
        .put("t", u8_meta(MIB as u64), data.clone())
        .await
        .unwrap();
    let got = honest.get("t").await.unwrap().unwrap();
    assert!(got.data()[..] == data[..], "sanity: shared and read back");
    drop(got);
    // The hostile client: many GETs, never a read.
    let hostile = UnixStream::connect(&server.uds).unwrap();
    let mut writer = hostile.try_clone().unwrap();
    let get = encode(&Request::Get { key: "t".into() }).unwrap();
    let mut burst = Vec::new();
    for id in 1..=2000u64 {
        burst.extend(encode_head(Opcode::Get, FLAG_FD, id, &get, 0));
    }
    let sender = std::thread::spawn(move || {
        writer
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = writer.write_all(&burst);
        writer
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut results = Vec::new();
    for _ in 0..3 {
        let options = FastClientOptions {
            request_timeout: Some(Duration::from_secs(5)),
            ..FastClientOptions::default()
        };
        let client = FastClient::connect_with(format!("unix:{}", server.uds.display()), options)
            .await
            .unwrap();
        results.push(match client.get("t").await {
            Ok(Some(t)) if t.data()[..] == data[..] => Ok(()),
            other => Err(format!("{other:?}")),
        });
    }
    let _keep = (hostile, sender.join().unwrap());
    assert!(
        results.iter().all(Result::is_ok),
        "with one local client not reading, honest gets of a shared tensor: {results:?}; \
         server log: {:?}",
        server.logged("write failed")
    );
}

/// F8 (low). Socket files are only checked by `connect` before being
/// removed as stale (src/fast/local/mod.rs:154-160): any error but success
/// counts as stale — EACCES included. A second server started by another
/// user, on a path in a directory it may write, removes the first
/// server's LIVE socket (mode 600, so its `connect` is refused), binds its
/// own in its place, and the first server's clients now talk to it.
///
/// Fix: treat only ECONNREFUSED as stale; refuse to start on any other
/// error (EACCES, EAGAIN, ...), naming it.
///
/// Repro: a root server's socket in a world-writable directory; a server
/// started as `nobody` on the same path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f8_a_live_socket_another_user_cannot_connect_to_is_taken_over_as_stale() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: runs a server as another user, which needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("f8");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.join("redstone.sock");
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: "127.0.0.1:0".parse().unwrap(),
        memory_limit: 16 << 20,
        local: Some(LocalConfig::new(&path, 1 << 20)),
        ..Config::default()
    };
    let first = Server::bind(config).await.expect("bind").spawn();
    let second = Spawned::start_at(&path, 1024, "16MiB", Some(65534));
    let taken = second.is_some();
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&path).unwrap());
    drop(second);
    drop(first.shutdown().await);
    assert!(
        !taken,
        "a server run as another user took over the live socket at {} (now owned by uid {owner})",
        path.display()
    );
}

/// F9 (low). A mapping dropped while the client's writer queue is full
/// is not released: `flush_releases` puts the id back
/// (src/fast/client/link.rs:192-197) and it goes out only with the
/// client's next request. A client that then goes quiet keeps the lease —
/// and that share of `--max-leased`, refusing other clients' GETs — until
/// the server's idle timeout (300 s by default) closes its connection.
///
/// Fix: have the write loop take the waiting releases after each batch
/// (or retry `flush_releases` from the writer task when the queue drains).
///
/// Repro: the local door's ingress held by a stalled upload, so a client
/// (queue of 1) has its writer blocked; a mapped tensor is dropped; the
/// upload is cut and the client's puts complete; nothing more is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f9_a_release_deferred_by_a_full_queue_waits_for_the_next_request() {
    let fast = FastConfig {
        max_ingress: MIB as u64,
        idle_timeout: Duration::from_secs(60),
        write_timeout: Duration::from_secs(60),
        ..FastConfig::for_budget(64 << 20)
    };
    let local = start_with("f9", 64 << 20, 64 << 20, fast).await;
    let options = FastClientOptions {
        queue: 1,
        ..FastClientOptions::default()
    };
    let client = FastClient::connect_with(local.addr(), options)
        .await
        .unwrap();
    client
        .put("m", u8_meta(MIB as u64), pattern(MIB, 1))
        .await
        .unwrap();
    let mapped = client.get("m").await.unwrap().unwrap();
    local.leased_becomes(MIB as u64).await;
    // Hold all of the door's ingress: a PUT on the stream, one byte sent.
    let mut stalled = Raw::connect(&local.path);
    let head = encode_frame(
        Opcode::Put,
        0,
        1,
        &put_request("stalled", MIB as u64),
        MIB as u64,
    )
    .unwrap();
    stalled.send_with(&head, &[]).unwrap();
    stalled.send_with(&[0u8], &[]).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Puts on the stream that the server does not read: the socket fills,
    // the writer blocks, the queue of one fills.
    let small = 200 * 1024;
    let mut puts = Vec::new();
    for i in 0..4 {
        let client = client.clone();
        puts.push(tokio::spawn(async move {
            client
                .put(
                    &format!("p{i}"),
                    u8_meta(small as u64),
                    vec![i as u8; small],
                )
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(mapped);
    drop(stalled);
    for put in puts {
        put.await.unwrap().unwrap();
    }
    // The mapping is gone and the client has said nothing more since.
    for _ in 0..300 {
        if local.leased() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leased = local.leased();
    // One more request carries the release.
    client.ping().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_ping = local.leased();
    drop(client);
    drop(local.server.shutdown().await);
    assert_eq!(
        leased, 0,
        "the dropped mapping is still leased 3 s later; after one more request: {after_ping}"
    );
}

// ---------------------------------------------------------- passing checks

/// Descriptors of other kinds, memfds sealed short of immutable, a
/// write-only reopen of a sealed memfd: each a fatal `Malformed`, the
/// connection closed, nothing stored, no descriptor left in the server,
/// and the server serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_hostile_descriptor_kinds_are_refused_without_leaking() {
    let _turn = SERIAL.lock().await;
    let local = start("kinds", 64 << 20, 64 << 20).await;
    let len = 8192usize;
    let before = open_fds();
    {
        let sealed = memfd(len, 1, SEALED);
        let write_only: OwnedFd = std::fs::OpenOptions::new()
            .write(true)
            .open(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&sealed)
            ))
            .unwrap()
            .into();
        // SAFETY: eventfd returns a new descriptor this test owns.
        let event = unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)) };
        let cases: Vec<(&str, OwnedFd)> = vec![
            ("future-write only", {
                let fd = memfd(len, 1, SealFlags::empty());
                rustix::fs::fcntl_add_seals(
                    &fd,
                    SealFlags::FUTURE_WRITE | SealFlags::SHRINK | SealFlags::GROW,
                )
                .unwrap();
                fd
            }),
            ("socket", UnixStream::pair().unwrap().0.into()),
            ("dev-zero", std::fs::File::open("/dev/zero").unwrap().into()),
            ("directory", std::fs::File::open("/tmp").unwrap().into()),
            ("eventfd", event),
            ("write-only reopen", write_only),
        ];
        for (what, fd) in cases {
            let mut raw = Raw::connect(&local.path);
            raw.send(
                &put_request(what, len as u64),
                FLAG_FD,
                1,
                len as u64,
                &[],
                &[fd.as_fd()],
            )
            .unwrap();
            let frame = raw.recv().expect("an answer");
            assert_eq!(frame.response.status(), Status::Malformed, "{what}");
            assert!(raw.closed(), "{what}: closed");
            assert!(local.server.engine().get(what).unwrap().is_none(), "{what}");
        }
    }
    let after = fds_settle(before).await;
    assert!(after <= before, "fds {before} -> {after}");
    local.client().await.ping().await.unwrap();
    drop(local.server.shutdown().await);
}

/// More than 64 descriptors in one message, or more than 128
/// waiting unclaimed, cut the connection, and every one of them is closed
/// in the server; other connections are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_descriptor_floods_cut_the_connection_and_are_closed() {
    let _turn = SERIAL.lock().await;
    let local = start("flood", 16 << 20, 16 << 20).await;
    let before = open_fds();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let bystander = local.client().await;
    bystander.ping().await.unwrap();
    let before_all = open_fds();
    {
        // (Nit: the receive buffer is sized `cmsg_space!(ScmRights(64))`,
        // which rustix pads for alignment, so 65 or 66 descriptors in one
        // message are taken, not cut; 67 always are.)
        let mut raw = Raw::connect(&local.path);
        let fds: Vec<BorrowedFd<'_>> = (0..67).map(|_| devnull.as_fd()).collect();
        raw.ping(1, &fds).unwrap();
        // The ping is lost with the message: the server reads nothing of it.
        assert!(raw.closed(), "67 in one message: cut");
        let mut raw = Raw::connect(&local.path);
        let fds: Vec<BorrowedFd<'_>> = (0..64).map(|_| devnull.as_fd()).collect();
        for i in 0..2 {
            raw.ping(i, &fds).unwrap();
            assert!(raw.recv().is_some(), "ping {i} answered");
        }
        let one = [devnull.as_fd()];
        let _ = raw.ping(9, &one);
        let _ = raw.recv();
        assert!(raw.closed(), "129 waiting: cut");
    }
    let after = fds_settle(before_all).await;
    assert!(after <= before_all, "fds {before_all} -> {after}");
    bystander.ping().await.unwrap();
    drop(devnull);
    drop(bystander);
    let _ = before;
    drop(local.server.shutdown().await);
}

/// A memfd of the claimed size whose length is not the metadata's
/// is a request error (`InvalidSize`), and an LZ4 payload with broken
/// framing in a memfd is `InvalidEncoding`: both answered, the connection
/// kept, the descriptor closed (the registry entry too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_bad_payloads_in_memfds_are_request_errors_and_leak_nothing() {
    let _turn = SERIAL.lock().await;
    let local = start("payloads", 64 << 20, 64 << 20).await;
    let before = open_fds();
    {
        let mut raw = Raw::connect(&local.path);
        let fd = memfd(4096, 1, SEALED);
        // Metadata says 8192 bytes; frame and memfd say 4096.
        raw.send(
            &put_request("mismatch", 8192),
            FLAG_FD,
            1,
            4096,
            &[],
            &[fd.as_fd()],
        )
        .unwrap();
        let frame = raw.recv().unwrap();
        assert_eq!(
            frame.response.status(),
            Status::InvalidSize,
            "{}",
            frame.response.message
        );
        // Encoding 1 (shuffle + LZ4), bytes that are no such frame.
        let meta = WireMeta {
            encoding: 1,
            ..WireMeta::from(&u8_meta(1 << 20))
        };
        let packed = Request::Put {
            key: "packed".into(),
            meta,
        };
        let fd = memfd(4096, 0xAB, SEALED);
        raw.send(&packed, FLAG_FD, 2, 4096, &[], &[fd.as_fd()])
            .unwrap();
        let frame = raw.recv().unwrap();
        assert_eq!(
            frame.response.status(),
            Status::InvalidEncoding,
            "{}",
            frame.response.message
        );
        raw.ping(3, &[]).unwrap();
        assert_eq!(
            raw.recv().unwrap().response.status(),
            Status::Ok,
            "still served"
        );
        // PUT_IF with a memfd is stored, and read back shared.
        let fd = memfd(8192, 7, SEALED);
        let put_if = Request::PutIf(Box::new(ConditionalPut {
            key: "putif".into(),
            meta: WireMeta::from(&u8_meta(8192)),
            since: 0u64.to_le_bytes(),
        }));
        raw.send(&put_if, FLAG_FD, 4, 8192, &[], &[fd.as_fd()])
            .unwrap();
        assert_eq!(raw.recv().unwrap().response.status(), Status::Ok);
        assert!(local.server.engine().get("mismatch").unwrap().is_none());
        assert!(local.server.engine().get("packed").unwrap().is_none());
        let got = local.client().await.get("putif").await.unwrap().unwrap();
        assert!(got.data().iter().all(|&b| b == 7));
        assert!(local.server.engine().delete("putif").unwrap());
    }
    let after = fds_settle(before).await;
    assert!(after <= before, "fds {before} -> {after}");
    drop(local.server.shutdown().await);
}

/// Lease bookkeeping under abuse: unknown and repeated releases,
/// a duplicate request id, a GET_MANY and a TCP GET (never flagged FD),
/// the 4096-lease cap, a lease of a deleted tensor; the leased gauge is
/// back to 0 after every path, and a connection's end releases all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_lease_accounting_survives_abuse() {
    let local = start("leases", 64 << 20, 64 << 20).await;
    let client = local.client().await;
    let data = pattern(MIB, 1);
    client
        .put("t", u8_meta(MIB as u64), data.clone())
        .await
        .unwrap();
    let mut raw = Raw::connect(&local.path);
    let get = Request::Get { key: "t".into() };
    raw.send(&get, FLAG_FD, 7, 0, &[], &[]).unwrap();
    let first = raw.recv().unwrap();
    assert_eq!(first.prefix.flags & FLAG_FD, FLAG_FD);
    // The same id again: refused, nothing more leased.
    raw.send(&get, FLAG_FD, 7, 0, &[], &[]).unwrap();
    let dup = raw.recv().unwrap();
    assert_eq!(dup.response.status(), Status::LeaseLimit);
    assert!(dup.fd.is_none());
    local.leased_becomes(MIB as u64).await;
    // Unknown ids, and the real one twice.
    let release = Request::Release {
        leases: vec![
            1u64.to_le_bytes(),
            7u64.to_le_bytes(),
            7u64.to_le_bytes(),
            u64::MAX.to_le_bytes(),
        ],
    };
    raw.send(&release, 0, 8, 0, &[], &[]).unwrap();
    assert_eq!(raw.recv().unwrap().response.status(), Status::Ok);
    local.leased_becomes(0).await;
    // Another connection cannot release this one's lease.
    raw.send(&get, FLAG_FD, 9, 0, &[], &[]).unwrap();
    assert!(raw.recv().unwrap().fd.is_some());
    let mut other = Raw::connect(&local.path);
    other
        .send(
            &Request::Release {
                leases: vec![9u64.to_le_bytes()],
            },
            0,
            1,
            0,
            &[],
            &[],
        )
        .unwrap();
    other.recv().unwrap();
    local.leased_becomes(MIB as u64).await;
    // GET_MANY and TCP: bytes on the stream, no descriptor, no lease.
    let many = Request::GetMany {
        keys: vec!["t".into(), "t".into()],
    };
    other.send(&many, 0, 2, 0, &[], &[]).unwrap();
    for _ in 0..2 {
        let frame = other.recv().unwrap();
        assert_eq!(frame.prefix.flags & FLAG_FD, 0);
        assert!(frame.payload == data);
    }
    let tcp = FastClient::connect(local.server.fast_addr()).await.unwrap();
    assert!(tcp.get("t").await.unwrap().unwrap().data()[..] == data[..]);
    assert_eq!(local.leased(), MIB as u64);
    // A lease of a deleted tensor: still readable, still counted, then
    // released with the connection.
    assert!(client.delete("t").await.unwrap());
    assert_eq!(local.leased(), MIB as u64);
    drop(raw);
    local.leased_becomes(0).await;
    // 4096 leases on one connection, then LeaseLimit.
    // (The smallest payload the server keeps as a memfd.)
    let size = redstone::fast::local::SHARE_THRESHOLD;
    let small = memfd(size, 3, SEALED);
    let mut raw = Raw::connect(&local.path);
    raw.send(
        &put_request("s", size as u64),
        FLAG_FD,
        1,
        size as u64,
        &[],
        &[small.as_fd()],
    )
    .unwrap();
    assert_eq!(raw.recv().unwrap().response.status(), Status::Ok);
    let get = Request::Get { key: "s".into() };
    let mut last = None;
    for id in 0..4097u64 {
        raw.send(&get, FLAG_FD, 1000 + id, 0, &[], &[]).unwrap();
        let frame = raw.recv().unwrap();
        last = Some(frame.response.status());
        drop(frame.fd);
    }
    assert_eq!(last, Some(Status::LeaseLimit));
    drop(raw);
    local.leased_becomes(0).await;
    drop(local.server.shutdown().await);
}

/// A fake local-door server on `path` answering each GET with a reply
/// flagged FD, the payload's length `claim`, and descriptor `fd`.
fn fake_server(path: &Path, claim: u64, fd: OwnedFd) -> std::thread::JoinHandle<()> {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        loop {
            let mut prefix = [0u8; PREFIX_LEN];
            if stream.read_exact(&mut prefix).is_err() {
                return;
            }
            let p = Prefix::parse(&prefix).unwrap().unwrap();
            let mut rest = vec![0u8; p.header_len as usize + p.payload_len as usize];
            if stream.read_exact(&mut rest).is_err() {
                return;
            }
            let (response, flags, len) = match p.opcode {
                Opcode::Get => (
                    Response::ok(Body::Tensor(WireMeta::from(&u8_meta(claim)))),
                    FLAG_END | FLAG_RESPONSE | FLAG_FD,
                    claim,
                ),
                _ => (Response::ok(Body::Empty), FLAG_END | FLAG_RESPONSE, 0),
            };
            let head = encode_frame(p.opcode, flags, p.request_id, &response, len).unwrap();
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [fd.as_fd()];
            if flags & FLAG_FD != 0 {
                assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
            }
            if rustix::net::sendmsg(
                &stream,
                &[IoSlice::new(&head)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .is_err()
            {
                return;
            }
        }
    })
}

/// A hostile server's descriptor (unsealed memfd, a memfd of the
/// wrong size, a pipe) is refused by the client with an error, not a
/// crash, and the client's connection serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_the_client_refuses_a_hostile_servers_descriptor() {
    let dir = scratch("fake");
    let cases: Vec<(&str, u64, OwnedFd)> = vec![
        ("unsealed", 8192, memfd(8192, 1, SealFlags::empty())),
        ("short", 8192, memfd(4096, 1, SEALED)),
        ("empty", 0, memfd(0, 1, SEALED)),
        ("pipe", 8192, std::io::pipe().unwrap().0.into()),
    ];
    for (i, (what, claim, fd)) in cases.into_iter().enumerate() {
        let path = dir.join(format!("s{i}"));
        let fake = fake_server(&path, claim, fd);
        let options = FastClientOptions {
            request_timeout: Some(Duration::from_secs(5)),
            ..FastClientOptions::default()
        };
        let client = FastClient::connect_with(format!("unix:{}", path.display()), options)
            .await
            .unwrap();
        let got = client.get("x").await;
        assert!(
            matches!(got, Err(ClientError::Protocol(_) | ClientError::Invalid(_))),
            "{what}: {got:?}"
        );
        client.ping().await.unwrap();
        drop(client);
        fake.join().unwrap();
    }
}

/// A stale socket file is replaced; a live one, or any other
/// file, is refused; the socket has the mode asked for before anyone can
/// connect (bound in a private directory); the private directory is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_bind_replaces_stale_sockets_and_leaves_no_private_dir() {
    let dir = scratch("bind");
    let path = dir.join("s.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let config = || Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: "127.0.0.1:0".parse().unwrap(),
        memory_limit: 16 << 20,
        local: Some(LocalConfig::new(&path, 1 << 20)),
        ..Config::default()
    };
    let server = Server::bind(config())
        .await
        .expect("stale replaced")
        .spawn();
    assert!(Server::bind(config()).await.is_err(), "a live one is not");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "s.sock")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    server.shutdown().await.unwrap();
    assert!(!path.exists());
    let _ = Instant::now();
}

/// A reader handed a stored tensor's memfd cannot change it by
/// reopening it through /proc (O_TRUNC, O_RDWR + write), punching a hole,
/// or allocating past its end; the tensor reads the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_a_reader_cannot_change_a_shared_tensor_through_proc_or_fallocate() {
    let local = start("reopen", 64 << 20, 64 << 20).await;
    let client = local.client().await;
    let data = pattern(MIB, 11);
    client
        .put("w", u8_meta(MIB as u64), data.clone())
        .await
        .unwrap();
    let mut raw = Raw::connect(&local.path);
    raw.send(&Request::Get { key: "w".into() }, FLAG_FD, 1, 0, &[], &[])
        .unwrap();
    let fd = raw.recv().unwrap().fd.expect("a memfd");
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let truncating = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&proc_path);
    assert!(truncating.is_err(), "reopen with O_TRUNC");
    let mut rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&proc_path)
        .unwrap();
    assert!(rw.write_all(b"x").is_err(), "write through a reopened fd");
    // SAFETY: fallocate on a descriptor this test owns.
    let punched = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096,
        )
    };
    assert_eq!(punched, -1, "punch a hole");
    // SAFETY: as above.
    let grown = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::FALLOC_FL_KEEP_SIZE,
            MIB as i64,
            4096,
        )
    };
    assert_eq!(grown, -1, "allocate past the end");
    let got = client.get("w").await.unwrap().unwrap();
    assert!(got.data()[..] == data[..]);
    drop(local.server.shutdown().await);
}

/// A stray descriptor is claimed only by a later flagged frame of
/// the connection it came on (as the spec says), never by another
/// connection's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_a_stray_descriptor_never_crosses_connections() {
    let local = start("stray", 64 << 20, 64 << 20).await;
    let stray = memfd(4096, 0xAA, SEALED);
    let mut a = Raw::connect(&local.path);
    a.ping(1, &[stray.as_fd()]).unwrap();
    assert_eq!(a.recv().unwrap().response.status(), Status::Ok);
    let mut b = Raw::connect(&local.path);
    b.send(&put_request("b", 4096), FLAG_FD, 1, 4096, &[], &[])
        .unwrap();
    assert_eq!(b.recv().unwrap().response.status(), Status::Malformed);
    assert!(b.closed());
    a.send(&put_request("a", 4096), FLAG_FD, 2, 4096, &[], &[])
        .unwrap();
    assert_eq!(a.recv().unwrap().response.status(), Status::Ok);
    let got = local.server.engine().get("a").unwrap().unwrap();
    assert!(got.data().iter().all(|&x| x == 0xAA));
    assert!(local.server.engine().get("b").unwrap().is_none());
    drop(local.server.shutdown().await);
}
