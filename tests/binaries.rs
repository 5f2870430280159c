//! The `server` and `client` binaries as a user runs them.

mod common;

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
    let (child, grpc, fast, _) = start_server_all(args);
    (child, grpc, fast)
}

/// Starts `server ARGS…` (metrics on a free port unless ARGS say where);
/// returns it with the gRPC, fast-path and metrics addresses it logged.
fn start_server_all(args: &[&str]) -> (Child, String, String, String) {
    let mut args = args.to_vec();
    if !args.contains(&"--metrics") {
        args.extend(["--metrics", "127.0.0.1:0"]);
    }
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
    let (grpc, tcp, metrics) = loop {
        let line = lines
            .next()
            .expect("the server exited before saying where it listens")
            .unwrap();
        if let (Some(grpc), Some(tcp), Some(metrics)) = (
            field(&line, "grpc="),
            field(&line, "fast="),
            field(&line, "metrics="),
        ) {
            break (grpc, tcp, metrics);
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, grpc, tcp, metrics)
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
/// accepting, says 503 on `/health` while it finishes that request (the
/// client gets its answer), and exits 0.
#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_then_exits_zero() {
    use redstone::fast::stream::FrameReader;
    use redstone::fast::wire::{decode_response, encode_frame, Limits, Request, Status, WireMeta};
    use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
    use tokio::io::AsyncWriteExt;

    // `--tcp`, the fast path's old flag name, still works.
    let (mut server, _grpc, tcp, metrics) =
        start_server_all(&["127.0.0.1:0", "64MiB", "--tcp", "127.0.0.1:0"]);
    let metrics: std::net::SocketAddr = metrics.parse().unwrap();
    assert_eq!(common::http_get(metrics, "/health").await.0, 200);
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
    // A new client is no longer accepted, and the health check says so...
    assert!(tokio::net::TcpStream::connect(tcp.as_str()).await.is_err());
    assert_eq!(
        common::http_get(metrics, "/health").await,
        (503, "draining\n".to_owned())
    );
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

/// `--config FILE` sets what the flags set; a flag on the command line
/// wins over the file; a bad file is refused naming its line.
#[test]
fn config_file_settings_and_flags_win() {
    let dir = std::env::temp_dir().join(format!("redstone-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.toml");
    std::fs::write(
        &path,
        "cache-size = \"3MiB\"\nmax-connections = 7\naddr = \"127.0.0.1:0\"\nfast = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let path_str = path.to_str().unwrap();
    let (mut server, _, _, _) = start_server_all(&["--config", path_str, "--max-connections", "9"]);
    server.kill().ok();
    server.wait().ok();
    // The start line reports the effective limits.
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args([
            "--config",
            path_str,
            "--max-connections",
            "9",
            "--metrics",
            "off",
        ])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line_with(out, "listening");
    assert!(
        line.contains(&format!("budget_bytes={}", 3 << 20)),
        "{line}"
    );
    assert!(line.contains("max_connections=9"), "{line}");
    assert!(line.contains("metrics=off"), "{line}");

    std::fs::write(
        &path,
        "cache-size = \"3MiB\"\n\nmax-connections = \"many\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--config", path_str])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3"), "{stderr}");
    // A bad size names its line too.
    std::fs::write(&path, "max-connections = 3\ncache-size = \"lots\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--config", path_str])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2"), "{stderr}");
    std::fs::write(&path, "colour = \"red\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--config", path_str])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("colour"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The first stderr line of `child` containing `needle`; the child is
/// killed after.
fn first_line_with(mut child: Child, needle: &str) -> String {
    let stderr = child.stderr.take().unwrap();
    let line = BufReader::new(stderr)
        .lines()
        .map(Result::unwrap)
        .find(|l| l.contains(needle))
        .unwrap_or_default();
    child.kill().ok();
    child.wait().ok();
    line
}

/// A metrics port in use is a startup error that names the flag.
#[test]
fn metrics_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["127.0.0.1:0", "--fast", "127.0.0.1:0", "--metrics", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--metrics") && stderr.contains(&addr),
        "{stderr}"
    );
}

/// `--log-format json`: one JSON object per line.
#[test]
fn json_logs_are_one_object_per_line() {
    let child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["127.0.0.1:0", "--fast", "127.0.0.1:0", "--metrics", "off"])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line_with(child, "listening");
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains("\"level\":\"INFO\""), "{line}");
    assert!(line.contains("\"fast\":\"127.0.0.1:"), "{line}");
}

/// deploy/redstone.yaml's server arguments start a server (its ports made
/// free ones on loopback) whose /health answers, as its probes ask; a
/// client following a `dns:` name of it takes the tour.
#[tokio::test]
async fn the_kubernetes_manifest_starts_a_server_a_dns_client_can_use() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/redstone.yaml"))
            .unwrap();
    let args: Vec<String> = manifest
        .lines()
        .skip_while(|l| l.trim() != "args:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- \"")?.strip_suffix('"'))
        .map(|a| match a.strip_prefix("0.0.0.0:") {
            Some(_) => "127.0.0.1:0".to_owned(),
            None => a.to_owned(),
        })
        .collect();
    assert!(args.iter().any(|a| a == "--metrics"), "{args:?}");
    assert!(manifest.contains("path: /health") && manifest.contains("port: metrics"));
    // Text logs, which the helper reads the addresses from.
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Some(i) = args.iter().position(|&a| a == "--log-format") {
        args.drain(i..i + 2);
    }
    let (mut server, _, fast, metrics) = start_server_all(&args);
    let (status, body) = common::http_get(metrics.parse().unwrap(), "/health").await;
    assert_eq!((status, body.trim()), (200, "ok"));

    let port = fast.rsplit_once(':').unwrap().1;
    let out = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--nodes", &format!("dns:127.0.0.1:{port}")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("bytes match"),
        "client failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sigterm(&server);
    let status = wait_with_timeout(&mut server, Duration::from_secs(15));
    assert!(status.success(), "server exit status: {status}");
}
