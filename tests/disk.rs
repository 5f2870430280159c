//! The disk tier as a user runs it: `server --disk-dir … --disk-size …`,
//! restarted, killed, and starved of disk.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{pattern, u8_meta};
use redstone::client::{FastClient, RemoteCacheClient};

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("redstone-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running `server`, its addresses and everything it logged so far.
struct Running {
    child: Child,
    grpc: String,
    fast: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// Starts `command` (a `server` invocation, maybe wrapped in a shell)
    /// and waits for its listening line.
    fn start(mut command: Command) -> Running {
        let mut child = command
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let field = |line: &str, name: &str| {
            line.split(name)
                .nth(1)
                .map(|rest| rest.split_whitespace().next().unwrap().to_string())
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let (grpc, fast) = loop {
            let line = lines
                .next()
                .expect("the server exited before saying where it listens")
                .unwrap();
            log.lock().unwrap().push(line.clone());
            if let (Some(grpc), Some(fast)) = (field(&line, "grpc="), field(&line, "fast=")) {
                break (grpc, fast);
            }
        };
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            lines.for_each(|l| sink.lock().unwrap().push(l.unwrap_or_default()))
        });
        Running {
            child,
            grpc,
            fast,
            log,
        }
    }

    fn logged(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn sigterm_and_wait(mut self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}");
                return;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// `server` with a RAM budget and a disk tier in `dir`, on free ports.
fn server(dir: &Path, ram: &str, disk: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_server"));
    command
        .args([
            "127.0.0.1:0",
            ram,
            "--fast",
            "127.0.0.1:0",
            "--metrics",
            "off",
        ])
        .args(["--disk-dir".as_ref(), dir.as_os_str()])
        .args(["--disk-size", disk])
        .args(extra);
    command
}

const TENSOR: usize = 256 << 10;

/// `server` run so that files it writes may not pass 4 MiB (`ulimit -f`
/// counts 512-byte blocks in sh): writes past it fail, as on a full disk.
/// SIGXFSZ is ignored, so a write fails with an error instead of killing
/// the process.
fn with_file_limit(server: &Command) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"ulimit -f 8192; trap "" XFSZ; exec "$@""#)
        .arg("sh");
    command.arg(server.get_program()).args(server.get_args());
    command
}

/// Waits until the server's disk queue is empty, so that a test's puts are
/// written rather than dropped for a full queue.
async fn drained(client: &FastClient) {
    for _ in 0..2000 {
        let disk = client.disk_stats().await.unwrap().expect("a disk tier");
        if disk.queued_bytes == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the disk queue never drained");
}

/// Puts a 256 KiB tensor of `seed`'s pattern and waits until it is written.
async fn put_one(client: &FastClient, key: &str, seed: u64) {
    client
        .put(key, u8_meta(TENSOR as u64), pattern(TENSOR, seed))
        .await
        .unwrap();
    drained(client).await;
}

async fn read_all_back(fast: &str, grpc: &str, n: u64) {
    let client = FastClient::connect(fast).await.unwrap();
    for i in 0..n {
        let got = client.get(&format!("t{i}")).await.unwrap();
        let got = got.unwrap_or_else(|| panic!("t{i} is gone"));
        assert_eq!(got.data().as_ref(), pattern(TENSOR, i), "t{i}");
    }
    // The gRPC door serves disk-tier tensors too.
    let grpc = RemoteCacheClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    for i in (0..n).step_by(7) {
        let got = grpc.get(format!("t{i}")).await.unwrap().expect("present");
        assert_eq!(got.data().as_ref(), pattern(TENSOR, i), "t{i} over gRPC");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_times_the_ram_budget_reads_back_exactly_and_again_after_a_restart() {
    let dir = scratch("fill");
    // 8 MiB of RAM (2 MiB of it the disk queue), 32 MiB of tensors.
    let n = 128;
    let args = ["--persist-on-shutdown"];
    let running = Running::start(server(&dir, "8MiB", "256MiB", &args));
    let client = FastClient::connect(&running.fast).await.unwrap();
    for i in 0..n {
        put_one(&client, &format!("t{i}"), i).await;
    }
    let disk = client.disk_stats().await.unwrap().unwrap();
    assert_eq!(disk.dropped_writes, 0, "{disk:?}");
    assert!(disk.entries >= 96, "most tensors live on disk: {disk:?}");
    read_all_back(&running.fast, &running.grpc, n).await;
    // Put-once across tiers: t0 is on disk, not in RAM.
    let again = client.put("t0", u8_meta(4), vec![0u8; 4]).await;
    assert!(again.is_err(), "{again:?}");
    drop(client);
    running.sigterm_and_wait();

    let running = Running::start(server(&dir, "8MiB", "256MiB", &[]));
    assert_eq!(running.logged("disk tier recovered"), 1);
    let client = FastClient::connect(&running.fast).await.unwrap();
    let disk = client.disk_stats().await.unwrap().unwrap();
    assert_eq!(disk.entries, n, "every tensor is back: {disk:?}");
    read_all_back(&running.fast, &running.grpc, n).await;
    running.sigterm_and_wait();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_in_a_write_storm_every_tensor_served_is_exact() {
    let dir = scratch("storm");
    let running = Running::start(server(&dir, "8MiB", "64MiB", &[]));
    let stop = Instant::now() + Duration::from_millis(1500);
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let fast = running.fast.clone();
        writers.push(tokio::spawn(async move {
            let client = FastClient::connect(&fast).await.unwrap();
            let mut put = Vec::new();
            for i in 0.. {
                if Instant::now() > stop {
                    break;
                }
                let seed = w * 1_000_000 + i;
                let len = 4096 + (seed as usize * 7919) % (300 << 10);
                let key = format!("s{seed}");
                if client
                    .put(&key, u8_meta(len as u64), pattern(len, seed))
                    .await
                    .is_ok()
                {
                    put.push((key, len, seed));
                }
            }
            put
        }));
    }
    // Kill it while the writers are still writing.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    running.sigkill();
    let mut put = Vec::new();
    for w in writers {
        put.extend(w.await.unwrap());
    }
    assert!(put.len() > 100, "the storm put {} tensors", put.len());

    let running = Running::start(server(&dir, "8MiB", "64MiB", &[]));
    let client = FastClient::connect(&running.fast).await.unwrap();
    let mut served = 0;
    for (key, len, seed) in &put {
        if let Some(t) = client.get(key).await.unwrap() {
            assert_eq!(
                t.data().as_ref(),
                pattern(*len, *seed),
                "{key} came back wrong"
            );
            served += 1;
        }
    }
    assert!(served > 0, "nothing survived the kill");
    running.sigterm_and_wait();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fails_stops_the_tier_not_the_server() {
    let dir = scratch("full");
    // Files this process writes may not pass 4 MiB (`ulimit -f` counts
    // 512-byte blocks in sh): the first segment (16 MiB) fails part-way,
    // as on a full disk. SIGXFSZ is ignored, so the write fails with an
    // error instead of killing the process.
    let server = server(&dir, "8MiB", "256MiB", &[]);
    let running = Running::start(with_file_limit(&server));
    let client = FastClient::connect(&running.fast).await.unwrap();
    let n = 64;
    for i in 0..n {
        put_one(&client, &format!("t{i}"), i).await;
    }
    let disk = client.disk_stats().await.unwrap().unwrap();
    assert!(!disk.writable, "{disk:?}");
    assert!(disk.dropped_writes > 0, "{disk:?}");
    // Puts go on; what RAM holds is served, what was written before the
    // failure too, and nothing is served wrong.
    client
        .put("after", u8_meta(16), vec![1u8; 16])
        .await
        .unwrap();
    assert!(client.get("after").await.unwrap().is_some());
    assert!(client.get(&format!("t{}", n - 1)).await.unwrap().is_some());
    assert!(
        client.get("t0").await.unwrap().is_some(),
        "written before the failure"
    );
    for i in 0..n {
        if let Some(t) = client.get(&format!("t{i}")).await.unwrap() {
            assert_eq!(t.data().as_ref(), pattern(TENSOR, i), "t{i}");
        }
    }
    assert_eq!(running.logged("stopped writing"), 1, "logged once");
    running.sigterm_and_wait();
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_stays_deleted_across_a_disk_failure_and_restarts() {
    let dir = scratch("resurrect");
    // Run 1: B reaches disk (segment 0).
    let running = Running::start(server(&dir, "8MiB", "256MiB", &[]));
    let client = FastClient::connect(&running.fast).await.unwrap();
    put_one(&client, "B", 1).await;
    for i in 0..40 {
        put_one(&client, &format!("f{i}"), 100 + i).await;
    }
    drop(client);
    running.sigterm_and_wait();

    // Run 2: files may not pass 4 MiB (a disk that fills up).
    let running = Running::start(with_file_limit(&server(&dir, "8MiB", "256MiB", &[])));
    let client = FastClient::connect(&running.fast).await.unwrap();
    assert!(client.delete("B").await.unwrap(), "B deleted");
    assert!(client.get("B").await.unwrap().is_none());
    put_one(&client, "C", 2).await;
    let mut i = 0;
    loop {
        put_one(&client, &format!("g{i}"), 200 + i).await;
        i += 1;
        let disk = client.disk_stats().await.unwrap().unwrap();
        if !disk.writable {
            break;
        }
        assert!(i < 200, "the disk never failed");
    }
    // C was written before the failure; deleting it now must not undo B's
    // delete (an earlier design logged deletes as records, and dropped a
    // whole segment, other deletes with it, when it could not log one).
    assert!(client.delete("C").await.unwrap());
    drop(client);
    running.sigterm_and_wait();

    // Run 3.
    let running = Running::start(server(&dir, "8MiB", "256MiB", &[]));
    let client = FastClient::connect(&running.fast).await.unwrap();
    let b = client.get("B").await.unwrap();
    drop(client);
    running.sigterm_and_wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        b.is_none(),
        "B, deleted while the disk worked, came back after a restart"
    );
}

#[test]
fn a_directory_in_use_or_unusable_is_refused_at_startup() {
    let dir = scratch("lock");
    let first = Running::start(server(&dir, "8MiB", "64MiB", &[]));
    for (disk_dir, says) in [
        (dir.clone(), "in use by another server"),
        (dir.join("LOCK").join("sub"), "is not usable"),
    ] {
        let out = server(&disk_dir, "8MiB", "64MiB", &[]).output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(says) && stderr.contains("--disk-dir"),
            "{stderr}"
        );
    }
    first.sigterm_and_wait();
    std::fs::remove_dir_all(dir).unwrap();
}
