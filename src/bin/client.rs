//! `client`: a short tour of a running Redstone server.
//!
//! Puts a 100×768 f32 tensor, reads it back and checks every byte, prints
//! the server's stats, deletes the tensor, and exits 0. Exits 1 with a clear
//! message if no server answers. `--fast` uses the fast path instead of gRPC.

use std::process::ExitCode;

use clap::Parser;
use redstone::client::{FastClient, RemoteCacheClient, TensorStore};
use redstone::cluster::{ClusterClient, ClusterConfig};
use redstone::tensor::Tensor;

/// Exercise a running Redstone server: put, get (verified), stats, delete.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The server's address. Default: 127.0.0.1:50051 (gRPC), or
    /// 127.0.0.1:50052 with --fast.
    #[arg(long)]
    addr: Option<String>,

    /// Use the fast path (binary frames over TCP) instead of gRPC.
    /// (`--tcp` is the old name.)
    #[arg(long, alias = "tcp")]
    fast: bool,

    /// Use a cluster: the nodes' fast-path addresses, comma-separated,
    /// `dns:NAME:PORT` (every address NAME resolves to), or the path of a
    /// cluster TOML file.
    #[arg(long, conflicts_with_all = ["fast", "addr"])]
    nodes: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = if let Some(nodes) = &args.nodes {
        match cluster(nodes) {
            Ok(cluster) => tour(&cluster, nodes, "cluster").await,
            Err(e) => Err(e),
        }
    } else if args.fast {
        let addr = args.addr.unwrap_or_else(|| "127.0.0.1:50052".into());
        match FastClient::connect(addr.as_str()).await {
            Ok(client) => tour(&client, &addr, "fast path").await,
            Err(e) => Err(not_running(e)),
        }
    } else {
        let addr = args.addr.unwrap_or_else(|| "127.0.0.1:50051".into());
        match RemoteCacheClient::connect(addr.as_str()).await {
            Ok(client) => tour(&client, &addr, "gRPC").await,
            Err(e) => Err(not_running(e)),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cluster(nodes: &str) -> Result<ClusterClient, Box<dyn std::error::Error>> {
    Ok(ClusterClient::new(ClusterConfig::from_arg(nodes)?)?)
}

fn not_running(e: redstone::client::ClientError) -> Box<dyn std::error::Error> {
    format!("{e}\n(start one with: cargo run --release --bin server)").into()
}

async fn tour(
    store: &impl TensorStore,
    addr: &str,
    transport: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    println!("connected to {addr} ({transport})");
    let key = format!("redstone-client-demo:{}", std::process::id());
    let values: Vec<f32> = (0..100 * 768).map(|i| i as f32 * 0.5).collect();
    let tensor = Tensor::from_slice::<f32>(vec![100, 768], &values)?;
    let expected = tensor.data().clone();

    store.put_tensor(&key, tensor).await?;
    println!("put    {key}: f32 [100, 768], {} bytes", expected.len());

    let got = store
        .get(&key)
        .await?
        .ok_or("the tensor just stored is missing")?;
    if got.data() != &expected || got.meta().shape() != [100, 768] {
        return Err("the tensor read back differs from the one stored".into());
    }
    println!(
        "get    {key}: shape {:?}, all {} bytes match",
        got.meta().shape(),
        expected.len()
    );

    let stats = store.stats().await?;
    println!(
        "stats  entries {}, memory {} / {} bytes ({:.2}%), hit rate {:.1}%, evictions {}",
        stats.entries,
        stats.memory_used,
        stats.memory_limit,
        stats.memory_utilization * 100.0,
        stats.hit_rate * 100.0,
        stats.evictions
    );

    let deleted = store.delete(&key).await?;
    println!("delete {key}: {deleted}");
    if !deleted {
        return Err("the delete found nothing to remove".into());
    }
    Ok(())
}
