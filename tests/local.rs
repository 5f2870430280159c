//! The local door (`--uds`): tensors shared through sealed memfds.
//!
//! Each test starts its own server with a socket in a fresh directory,
//! drives it with `FastClient::connect("unix:PATH")` or a raw socket that
//! sends what no well-behaved client would, and stops it.

mod common;

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::{pattern, u8_meta};
use redstone::client::{ClientError, FastClient};
use redstone::fast::local::LocalConfig;
use redstone::fast::wire::{
    decode_response, encode_head, Opcode, Prefix, Request, Status, FLAG_FD, PREFIX_LEN, VERSION,
};
use redstone::fast::FastConfig;
use redstone::server::{Config, Server, ServerHandle};
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
use redstone::tensor::Tensor;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

const MIB: usize = 1 << 20;

use common::local::{memfd_mapped_at, put_request, LocalServer as Local};

async fn start(name: &str, limit: u64, max_leased: u64, mode: u32) -> Local {
    Local::start(name, limit, max_leased, mode, FastConfig::for_budget(limit)).await
}

/// Whether `bytes` lies in a shared memfd mapping of this process (as a
/// mapped tensor does).
fn is_memfd_mapping(bytes: &[u8]) -> bool {
    memfd_mapped_at(bytes.as_ptr() as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensors_of_every_dtype_round_trip_small_and_shared() {
    let local = start("dtypes", 256 << 20, 256 << 20, 0o600).await;
    let client = local.client().await;
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        // Under the share threshold (through the socket) and over it (a
        // memfd each way).
        for elems in [3u64, (3 * MIB as u64) / dtype.width() as u64 + 1] {
            let meta = TensorMeta::new(dtype, vec![elems], StorageLayout::RowMajor).unwrap();
            let data = pattern(meta.byte_size() as usize, i as u64 * 31 + elems);
            let key = format!("{dtype:?}-{elems}");
            client.put(&key, meta.clone(), data.clone()).await.unwrap();
            let got = client.get(&key).await.unwrap().expect("stored");
            assert_eq!(got.meta(), &meta);
            assert!(got.data()[..] == data[..], "{key}");
            let mut dst = vec![0u8; data.len()];
            let into = client.get_into(&key, &mut dst).await.unwrap();
            assert_eq!(into.as_ref(), Some(&meta));
            assert!(dst == data, "{key}: get_into");
            assert_eq!(
                is_memfd_mapping(got.data()),
                data.len() >= redstone::fast::local::SHARE_THRESHOLD,
                "{key}: mapped iff large"
            );
        }
    }
    // A TCP client reads what the local door stored, byte for byte.
    let tcp = FastClient::connect(local.server.fast_addr()).await.unwrap();
    let key = format!("{:?}-{}", DType::U8, 3 * MIB + 1);
    let over_tcp = tcp.get(&key).await.unwrap().unwrap();
    let over_uds = client.get(&key).await.unwrap().unwrap();
    assert!(over_tcp.data() == over_uds.data());
    // A second put of a key is refused, memfd or not.
    let again = client.put(&key, u8_meta(3 * MIB as u64 + 1), vec![0u8; 3 * MIB + 1]);
    assert!(matches!(again.await, Err(ClientError::AlreadyExists(_))));
    drop(local.server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_tensor_outlives_eviction_and_its_lease_is_released_on_drop() {
    let local = start("evict", 16 << 20, 64 << 20, 0o600).await;
    let client = local.client().await;
    let data = pattern(4 * MIB, 7);
    client
        .put("a", u8_meta(data.len() as u64), data.clone())
        .await
        .unwrap();
    let mapped = client.get("a").await.unwrap().unwrap();
    assert!(is_memfd_mapping(mapped.data()));
    local.leased_becomes(4 * MIB as u64).await;
    // Evict it: the budget holds three such tensors.
    for i in 0..6 {
        let fill = pattern(4 * MIB, 100 + i);
        client
            .put(&format!("fill{i}"), u8_meta(fill.len() as u64), fill)
            .await
            .unwrap();
    }
    assert!(client.get("a").await.unwrap().is_none(), "evicted");
    assert!(local.server.engine().stats().memory_used <= 16 << 20);
    // The mapping still reads the tensor, and it is still counted.
    assert!(mapped.data()[..] == data[..]);
    assert_eq!(local.leased(), 4 * MIB as u64);
    // A clone keeps it; the last drop releases it.
    let clone = mapped.clone();
    drop(mapped);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(local.leased(), 4 * MIB as u64, "a clone still maps it");
    drop(clone);
    local.leased_becomes(0).await;
    drop(local.server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_releases_its_leases() {
    let local = start("exit", 64 << 20, 64 << 20, 0o600).await;
    let client = local.client().await;
    let data = pattern(2 * MIB, 3);
    client
        .put("t", u8_meta(data.len() as u64), data.clone())
        .await
        .unwrap();
    let held: Vec<Tensor> = {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(client.get("t").await.unwrap().unwrap());
        }
        held
    };
    // Three leases of one payload count it once.
    local.leased_becomes(2 * MIB as u64).await;
    // The connection closes (as when the process dies) with the tensors
    // still mapped here: the server lets go of every lease.
    drop(client);
    local.leased_becomes(0).await;
    assert!(held.iter().all(|t| t.data()[..] == data[..]));
    // And a raw client that is handed a memfd and then disappears.
    let mut raw = RawLocal::connect(&local.path).await;
    raw.send(
        Opcode::Get,
        &Request::Get { key: "t".into() },
        FLAG_FD,
        None,
    )
    .await;
    let (prefix, _, fd) = raw.recv().await;
    assert_eq!(prefix.flags & FLAG_FD, FLAG_FD);
    assert!(fd.is_some());
    local.leased_becomes(2 * MIB as u64).await;
    drop(raw);
    local.leased_becomes(0).await;
    drop(local.server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_write_through_its_mapping_or_its_descriptor() {
    let local = start("write", 64 << 20, 64 << 20, 0o600).await;
    let client = local.client().await;
    let data = pattern(MIB, 9);
    client
        .put("w", u8_meta(data.len() as u64), data.clone())
        .await
        .unwrap();
    let mapped = client.get("w").await.unwrap().unwrap();
    // The mapping cannot be made writable.
    let page = mapped.data().as_ptr() as usize & !4095;
    // SAFETY: mprotect on a mapping this test owns; it is expected to fail,
    // and would only add write permission if it did not.
    let rc = unsafe {
        libc::mprotect(
            page as *mut libc::c_void,
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    assert_eq!(rc, -1, "mprotect(PROT_WRITE) on a mapped tensor succeeded");
    // Nor can the descriptor itself be written, mapped writable, or resized.
    let mut raw = RawLocal::connect(&local.path).await;
    raw.send(
        Opcode::Get,
        &Request::Get { key: "w".into() },
        FLAG_FD,
        None,
    )
    .await;
    let (_, _, fd) = raw.recv().await;
    let fd = fd.expect("a memfd");
    assert!(rustix::io::write(&fd, b"x").is_err(), "write(2)");
    assert!(rustix::fs::ftruncate(&fd, 0).is_err(), "ftruncate");
    // SAFETY: a shared writable mapping the kernel is expected to refuse.
    let writable = unsafe {
        memmap2::MmapOptions::new()
            .len(data.len())
            .map_mut(fd.as_fd().as_raw_fd_for_test())
    };
    assert!(writable.is_err(), "a writable shared mapping");
    // The tensor is unchanged, for every reader.
    assert!(client.get("w").await.unwrap().unwrap().data()[..] == data[..]);
    drop(local.server.shutdown().await);
}

/// `as_raw_fd` under a name that says why a raw fd is used.
trait RawForTest {
    fn as_raw_fd_for_test(&self) -> std::os::fd::RawFd;
}

impl RawForTest for std::os::fd::BorrowedFd<'_> {
    fn as_raw_fd_for_test(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_limit_is_a_clear_status_and_frees_up_on_drop() {
    let local = start("limit", 64 << 20, 5 * MIB as u64, 0o600).await;
    let client = local.client().await;
    for key in ["x", "y"] {
        client
            .put(key, u8_meta(3 * MIB as u64), pattern(3 * MIB, 1))
            .await
            .unwrap();
    }
    let x = client.get("x").await.unwrap().unwrap();
    assert!(is_memfd_mapping(x.data()));
    // On the wire: a clear status, at once.
    let mut raw = RawLocal::connect(&local.path).await;
    raw.send(
        Opcode::Get,
        &Request::Get { key: "y".into() },
        FLAG_FD,
        None,
    )
    .await;
    let (_, response, fd) = raw.recv().await;
    assert_eq!(response.status(), Status::LeaseLimit);
    assert!(
        response.message.contains("--max-leased"),
        "{}",
        response.message
    );
    assert!(fd.is_none());
    // The client takes the bytes through the socket instead: a get is
    // never refused for want of a lease.
    let y = tokio::time::timeout(Duration::from_secs(5), client.get("y"))
        .await
        .expect("an answer, not a hang")
        .unwrap()
        .unwrap();
    assert!(!is_memfd_mapping(y.data()));
    assert!(y.data()[..] == pattern(3 * MIB, 1)[..]);
    let mut dst = vec![0u8; 3 * MIB];
    assert!(client.get_into("y", &mut dst).await.unwrap().is_some());
    // The same tensor again is not a new payload.
    let again = client.get("x").await.unwrap().unwrap();
    assert!(is_memfd_mapping(again.data()));
    drop((x, again));
    local.leased_becomes(0).await;
    assert!(is_memfd_mapping(
        client.get("y").await.unwrap().unwrap().data()
    ));
    drop(local.server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_has_the_mode_asked_for_and_a_live_one_is_not_taken_over() {
    let local = start("mode", 16 << 20, 16 << 20, 0o600).await;
    let mode = std::fs::metadata(&local.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second server on the same path is refused while the first serves.
    let second = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: "127.0.0.1:0".parse().unwrap(),
        local: Some(LocalConfig::new(&local.path, 1 << 20)),
        ..Config::default()
    };
    let err = Server::bind(second).await.unwrap_err().to_string();
    assert!(err.contains("another server listens"), "{err}");
    let path = local.path.clone();
    local.server.shutdown().await.unwrap();
    assert!(!path.exists(), "the socket file is removed on shutdown");
    // Group access when asked for; a stale socket file is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    let grouped = start_at(&path, 0o660).await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    let client = FastClient::connect(format!("unix:{}", path.display()))
        .await
        .unwrap();
    client.ping().await.unwrap();
    grouped.shutdown().await.unwrap();
    // A file that is not a socket is never removed.
    std::fs::write(&path, b"precious").unwrap();
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: "127.0.0.1:0".parse().unwrap(),
        local: Some(LocalConfig::new(&path, 1 << 20)),
        ..Config::default()
    };
    assert!(Server::bind(config).await.is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

async fn start_at(path: &Path, mode: u32) -> ServerHandle {
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: "127.0.0.1:0".parse().unwrap(),
        local: Some(LocalConfig {
            mode,
            ..LocalConfig::new(path, 1 << 20)
        }),
        ..Config::default()
    };
    Server::bind(config).await.unwrap().spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_readers_of_one_tensor_share_one_copy() {
    let local = start("eight", 64 << 20, 16 << 20, 0o600).await;
    let data = pattern(8 * MIB, 5);
    local
        .client()
        .await
        .put("shared", u8_meta(data.len() as u64), data.clone())
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        let reader = local.client().await;
        let tensor = reader.get("shared").await.unwrap().unwrap();
        held.push((reader, tensor));
    }
    // One payload leased, however many map it; and every reader's bytes
    // are the same pages (the server's leases are under --max-leased,
    // which 8 copies would pass).
    local.leased_becomes(8 * MIB as u64).await;
    assert!(held.iter().all(|(_, t)| t.data()[..] == data[..]));
    drop(held);
    local.leased_becomes(0).await;
    drop(local.server.shutdown().await);
}

/// A raw local-door connection: frames and descriptors by hand.
struct RawLocal {
    stream: std::os::unix::net::UnixStream,
}

impl RawLocal {
    async fn connect(path: &Path) -> RawLocal {
        let stream = std::os::unix::net::UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawLocal { stream }
    }

    /// Sends one frame, flagged and with `fd` attached if given.
    async fn send(
        &mut self,
        op: Opcode,
        request: &Request,
        flags: u8,
        fd: Option<(&OwnedFd, u64)>,
    ) {
        let header = redstone::fast::wire::encode(request).unwrap();
        let mut frame = encode_head(op, flags, 1, &header, fd.map_or(0, |(_, len)| len));
        let _ = VERSION;
        frame.truncate(PREFIX_LEN + header.len());
        let fds: Vec<_> = fd.iter().map(|(fd, _)| fd.as_fd()).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        }
        let sent = rustix::net::sendmsg(
            &self.stream,
            &[IoSlice::new(&frame)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .unwrap();
        assert_eq!(sent, frame.len());
    }

    /// Reads one reply frame (no payload expected on the stream beyond
    /// small ones) and the descriptor that came with it, if any.
    async fn recv(&mut self) -> (Prefix, redstone::fast::wire::Response, Option<OwnedFd>) {
        let mut got = Vec::new();
        let mut fd = None;
        loop {
            if got.len() >= PREFIX_LEN {
                let prefix = Prefix::parse(&got).unwrap().unwrap();
                let header_end = PREFIX_LEN + prefix.header_len as usize;
                let stream_payload = if prefix.flags & FLAG_FD != 0 {
                    0
                } else {
                    prefix.payload_len as usize
                };
                if got.len() >= header_end + stream_payload {
                    let response =
                        decode_response(&got[PREFIX_LEN..header_end], prefix.request_id).unwrap();
                    return (prefix, response, fd);
                }
            }
            let mut buf = vec![0u8; 64 * 1024];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = rustix::net::recvmsg(
                &self.stream,
                &mut [IoSliceMut::new(&mut buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .unwrap();
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(mut fds) = message {
                    fd = fds.next().or(fd);
                }
            }
            assert!(msg.bytes > 0, "the server closed the connection");
            got.extend_from_slice(&buf[..msg.bytes]);
        }
    }

    /// Whether the server has closed the connection (reads to EOF).
    fn closed(&mut self) -> bool {
        use std::io::Read;
        let mut sink = [0u8; 4096];
        loop {
            match self.stream.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// A sealed memfd of `len` bytes of `fill`, sealed with `seals`.
fn memfd(len: u64, fill: u8, seals: rustix::fs::SealFlags) -> OwnedFd {
    use rustix::fs::MemfdFlags;
    let fd =
        rustix::fs::memfd_create("test", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    let bytes = vec![fill; len as usize];
    rustix::io::pwrite(&fd, &bytes, 0).unwrap();
    rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    fd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_descriptors_are_refused_and_the_server_serves_on() {
    use rustix::fs::SealFlags;
    let local = start("hostile", 64 << 20, 64 << 20, 0o600).await;
    let sealed = SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW;
    let len = 8192u64;
    let cases: Vec<(&str, Option<OwnedFd>, u64)> = vec![
        // Flagged, but nothing attached.
        ("no descriptor", None, len),
        // Writable afterwards: not sealed against writes.
        (
            "unsealed",
            Some(memfd(len, 1, SealFlags::SHRINK | SealFlags::GROW)),
            len,
        ),
        // Sealed, but not the size the frame claims.
        ("short", Some(memfd(len - 1, 1, sealed)), len),
        ("long", Some(memfd(len + 4096, 1, sealed)), len),
        // Not a memfd at all.
        ("pipe", Some(std::io::pipe().unwrap().0.into()), len),
    ];
    for (what, fd, claimed) in cases {
        let mut raw = RawLocal::connect(&local.path).await;
        let request = put_request(what, claimed);
        match &fd {
            Some(fd) => {
                raw.send(Opcode::Put, &request, FLAG_FD, Some((fd, claimed)))
                    .await
            }
            None => {
                // The frame claims a passed payload; none comes.
                let header = redstone::fast::wire::encode(&request).unwrap();
                let mut frame = encode_head(Opcode::Put, FLAG_FD, 1, &header, claimed);
                frame.truncate(PREFIX_LEN + header.len());
                std::io::Write::write_all(&mut raw.stream, &frame).unwrap();
            }
        }
        let (_, response, _) = raw.recv().await;
        assert_eq!(
            response.status(),
            Status::Malformed,
            "{what}: {}",
            response.message
        );
        assert!(raw.closed(), "{what}: the connection is closed");
        assert!(
            local.server.engine().get(what).unwrap().is_none(),
            "{what}: not stored"
        );
    }
    // A descriptor over TCP cannot even be flagged.
    let mut tcp = common::RawConn::connect(local.server.fast_addr()).await;
    let request = put_request("tcp", 16);
    let header = redstone::fast::wire::encode(&request).unwrap();
    let frame = encode_head(Opcode::Put, FLAG_FD, 1, &header, 16);
    tcp.send_bytes(&frame).await.unwrap();
    let (_, response, _) = tcp.recv().await.expect("an answer");
    assert_eq!(response.status(), Status::Malformed);
    // A well-sealed memfd of the right size is stored, and the server
    // still serves everyone.
    let mut raw = RawLocal::connect(&local.path).await;
    let good = memfd(len, 42, sealed);
    raw.send(
        Opcode::Put,
        &put_request("good", len),
        FLAG_FD,
        Some((&good, len)),
    )
    .await;
    let (_, response, _) = raw.recv().await;
    assert_eq!(response.status(), Status::Ok, "{}", response.message);
    let client = local.client().await;
    let got = client.get("good").await.unwrap().unwrap();
    assert!(got.data().iter().all(|&b| b == 42));
    drop(local.server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_puts_and_gets_never_cross_descriptors() {
    // Descriptors are matched to frames by order alone: tasks racing on
    // one connection must never get (or store) each other's tensors.
    let local = start("race", 512 << 20, 512 << 20, 0o600).await;
    let client = local.client().await;
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..6u64 {
                let key = format!("k{t}-{i}");
                // Same size for all, so a crossed descriptor would pass
                // every size check.
                let data = pattern(MIB, t * 100 + i);
                client
                    .put(&key, u8_meta(MIB as u64), data.clone())
                    .await
                    .unwrap();
                let got = client.get(&key).await.unwrap().unwrap();
                assert!(got.data()[..] == data[..], "{key}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let _ = Bytes::new();
    drop(local.server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_mappings_answer_repeat_gets_and_never_a_replaced_tensor() {
    let local = start("kept", 64 << 20, 64 << 20, 0o600).await;
    let client = local.client_keeping(16 << 20).await;
    let first = pattern(2 * MIB, 1);
    client
        .put("a", u8_meta(first.len() as u64), first.clone())
        .await
        .unwrap();
    let got = client.get("a").await.unwrap().unwrap();
    assert!(is_memfd_mapping(got.data()));
    let at = got.data().as_ptr();
    drop(got);
    // Kept after the drop: still leased, and the next get is the same
    // mapping (its own lease released at once).
    let again = client.get("a").await.unwrap().unwrap();
    assert_eq!(again.data().as_ptr(), at, "the kept mapping, not a new one");
    assert!(again.data()[..] == first[..]);
    drop(again);
    local.leased_becomes(2 * MIB as u64).await;
    // Replaced under the same key: another memfd, so not the kept mapping.
    assert!(client.delete("a").await.unwrap());
    let second = pattern(2 * MIB, 2);
    client
        .put("a", u8_meta(second.len() as u64), second.clone())
        .await
        .unwrap();
    let replaced = client.get("a").await.unwrap().unwrap();
    assert!(replaced.data()[..] == second[..], "never the old tensor");
    assert_ne!(replaced.data().as_ptr(), at);
    // The client gone, every kept lease goes with it.
    drop((replaced, client));
    local.leased_becomes(0).await;
    drop(local.server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_mappings_are_let_go_when_the_server_is_short_of_leases() {
    let local = start("kept-limit", 64 << 20, 5 * MIB as u64, 0o600).await;
    let client = local.client_keeping(64 << 20).await;
    for (key, fill) in [("x", 1), ("y", 2)] {
        client
            .put(key, u8_meta(3 * MIB as u64), pattern(3 * MIB, fill))
            .await
            .unwrap();
    }
    drop(client.get("x").await.unwrap().unwrap());
    local.leased_becomes(3 * MIB as u64).await;
    // x's kept lease leaves no room for y's: y comes as bytes, and the
    // kept mappings are let go.
    let y = client.get("y").await.unwrap().unwrap();
    assert!(!is_memfd_mapping(y.data()));
    assert!(y.data()[..] == pattern(3 * MIB, 2)[..]);
    local.leased_becomes(0).await;
    // So the next get may lease again.
    let y = client.get("y").await.unwrap().unwrap();
    assert!(is_memfd_mapping(y.data()));
    drop(local.server.shutdown().await);
}
