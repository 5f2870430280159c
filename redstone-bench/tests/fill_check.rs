//! `redstone-bench --op fill|check` against real servers: a deployment
//! check that writes a key set across a cluster and verifies it after a
//! node is lost.

use std::process::Command;

use redstone::server::{Config, Server, ServerHandle};

/// Runs `redstone-bench ARGS… --json` and returns whether it exited 0 and
/// its last line (the JSON object).
fn bench_json(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_redstone-bench"))
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let last = stdout.lines().last().unwrap_or_default().to_string();
    (out.status.success(), last)
}

/// Runs the bench on a blocking thread, so the servers keep serving.
async fn bench(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bench_json(&args)
    })
    .await
    .unwrap()
}

async fn start_server() -> ServerHandle {
    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: "127.0.0.1:0".parse().unwrap(),
        memory_limit: 64 << 20,
        ..Config::default()
    };
    Server::bind(config).await.expect("bind").spawn()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_then_check_a_cluster_across_a_node_loss() {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(start_server().await);
    }
    let nodes = servers
        .iter()
        .map(|s| s.fast_addr().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let common = strings(&[
        "--nodes",
        &nodes,
        "--replicas",
        "2",
        "--keys",
        "300",
        "--size",
        "4KiB",
        "--key-prefix",
        "deploy",
    ]);
    let (ok, json) = bench([strings(&["--op", "fill"]), common.clone()].concat()).await;
    assert!(ok, "{json}");
    assert!(
        json.contains("\"written\":300") && json.contains("\"errors\":0"),
        "{json}"
    );

    // One node goes away: with two replicas every key is still found.
    servers.remove(0).shutdown().await.unwrap();
    let (ok, json) = bench([strings(&["--op", "check"]), common].concat()).await;
    assert!(ok, "{json}");
    assert!(
        json.contains("\"found\":300")
            && json.contains("\"missing\":0")
            && json.contains("\"corrupt\":0"),
        "{json}"
    );

    // A check of keys never written reports them missing and fails.
    let single = servers[0].fast_addr().to_string();
    let (ok, json) = bench(strings(&[
        "--addr",
        &single,
        "--op",
        "check",
        "--keys",
        "5",
        "--size",
        "4KiB",
        "--key-prefix",
        "never",
    ]))
    .await;
    assert!(!ok);
    assert!(json.contains("\"missing\":5"), "{json}");
    for server in servers {
        server.shutdown().await.unwrap();
    }
}
