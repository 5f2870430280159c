//! The `server` and `client` binaries as a user runs them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Starts `server ARGS…` and returns it with the gRPC address it logged.
fn start_server(args: &[&str]) -> (Child, String) {
    let (child, grpc, _) = start_server_both(args);
    (child, grpc)
}

/// Starts `server ARGS…`; returns it with the gRPC and fast-path addresses.
fn start_server_both(args: &[&str]) -> (Child, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let field = |line: &str, name: &str| {
        line.split(name)
            .nth(1)
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
    };
    let (grpc, tcp) = loop {
        let line = lines
            .next()
            .expect("the server exited before saying where it listens")
            .unwrap();
        if let (Some(grpc), Some(tcp)) = (field(&line, "grpc="), field(&line, "fast=")) {
            break (grpc, tcp);
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, grpc, tcp)
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("the server did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn client_tour_against_a_server_then_sigterm_exits_zero() {
    // The original positional form, with a size that has a unit.
    let (mut server, addr) = start_server(&["127.0.0.1:0", "64MiB", "--fast", "127.0.0.1:0"]);
    let out = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--addr", &addr])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all 307200 bytes match"), "{stdout}");
    assert!(
        stdout.contains(&format!("/ {} bytes", 64 << 20)),
        "{stdout}"
    );
    sigterm(&server);
    let status = wait_with_timeout(&mut server, Duration::from_secs(15));
    assert!(status.success(), "server exit status: {status}");
}

#[test]
fn client_without_a_server_says_so_and_fails() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to a Redstone server"),
        "{stderr}"
    );
}

#[test]
fn server_rejects_a_bad_size() {
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["127.0.0.1:0", "12 parsecs"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));
}

/// SIGTERM while a fast-path PUT is half received: the server stops
/// accepting, finishes that request (the client gets its answer), and
/// exits 0.
#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_then_exits_zero() {
    use redstone::fast::stream::FrameReader;
    use redstone::fast::wire::{decode_response, encode_frame, Limits, Request, Status, WireMeta};
    use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
    use tokio::io::AsyncWriteExt;

    // `--tcp`, the fast path's old flag name, still works.
    let (mut server, _grpc, tcp) =
        start_server_both(&["127.0.0.1:0", "64MiB", "--tcp", "127.0.0.1:0"]);
    let stream = tokio::net::TcpStream::connect(tcp.as_str()).await.unwrap();
    let (r, mut w) = stream.into_split();
    let meta = TensorMeta::new(DType::U8, vec![1 << 20], StorageLayout::RowMajor).unwrap();
    let request = Request::Put {
        key: "in-flight".into(),
        meta: WireMeta::from(&meta),
    };
    w.write_all(&encode_frame(request.opcode(), 0, 7, &request, 1 << 20).unwrap())
        .await
        .unwrap();
    w.write_all(&vec![5u8; 1 << 19]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new client is no longer accepted...
    assert!(tokio::net::TcpStream::connect(tcp.as_str()).await.is_err());
    // ...but the half-sent request completes.
    w.write_all(&vec![5u8; 1 << 19]).await.unwrap();
    let mut reader = FrameReader::new(r);
    let limits = Limits {
        max_header: 1 << 16,
        max_payload: 0,
    };
    let head = reader.read_head(&limits).await.unwrap().expect("an answer");
    let response = decode_response(&head.header, 7).unwrap();
    assert_eq!((head.prefix.request_id, response.status()), (7, Status::Ok));
    let status = wait_with_timeout(&mut server, Duration::from_secs(15));
    assert!(status.success(), "server exit status: {status}");
}
