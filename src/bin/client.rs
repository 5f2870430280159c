//! `client`: a short tour of a running Redstone server.
//!
//! Puts a 100×768 f32 tensor, reads it back and checks every byte, prints
//! the server's stats, deletes the tensor, and exits 0. Exits 1 with a clear
//! message if no server answers.

use std::process::ExitCode;

use clap::Parser;
use redstone::client::RemoteCacheClient;
use redstone::tensor::Tensor;

/// Exercise a running Redstone server: put, get (verified), stats, delete.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The server's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let client = RemoteCacheClient::connect(args.addr.as_str())
        .await
        .map_err(|e| format!("{e}\n(start one with: cargo run --release --bin server)"))?;
    println!("connected to {}", args.addr);

    let key = format!("redstone-client-demo:{}", std::process::id());
    let values: Vec<f32> = (0..100 * 768).map(|i| i as f32 * 0.5).collect();
    let tensor = Tensor::from_slice::<f32>(vec![100, 768], &values)?;
    let expected = tensor.data().clone();

    client.put_tensor(key.as_str(), tensor).await?;
    println!("put    {key}: f32 [100, 768], {} bytes", expected.len());

    let got = client
        .get(key.as_str())
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

    let stats = client.get_stats().await?;
    println!(
        "stats  entries {}, memory {} / {} bytes ({:.2}%), hit rate {:.1}%, evictions {}",
        stats.entries,
        stats.memory_used,
        stats.memory_limit,
        stats.memory_utilization * 100.0,
        stats.hit_rate * 100.0,
        stats.evictions
    );

    let deleted = client.delete(key.as_str()).await?;
    println!("delete {key}: {deleted}");
    if !deleted {
        return Err("the delete found nothing to remove".into());
    }
    Ok(())
}
