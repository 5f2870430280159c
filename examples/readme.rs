//! The client example from the original Redstone README, unchanged but for
//! the unsafe byte cast (now a safe `bytemuck` call). Run a server first:
//! `cargo run --release --bin server`, then `cargo run --example readme`.

use redstone::client::RemoteCacheClient;
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Connect to cache server
    let client = RemoteCacheClient::connect("127.0.0.1:50051".to_string()).await?;

    // Create tensor metadata
    let meta = TensorMeta::new(
        DType::F32,     // float32
        vec![100, 768], // Shape: 100 x 768
        StorageLayout::RowMajor,
    )?;

    // Prepare tensor data (76,800 floats = 307,200 bytes)
    let data = vec![0.0f32; 100 * 768];
    let bytes: Vec<u8> = bytemuck::cast_slice(&data).to_vec();

    // Put tensor in cache (a second run finds the key already there)
    match client
        .put("embeddings:user123".to_string(), meta, bytes)
        .await
    {
        Ok(()) | Err(redstone::client::ClientError::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }

    // Get tensor from cache
    if let Some(tensor) = client.get("embeddings:user123").await? {
        println!("Found tensor with shape: {:?}", tensor.meta().shape());
    }

    // Get cache statistics
    let stats = client.get_stats().await?;
    println!("Hit rate: {:.1}%", stats.hit_rate * 100.0);
    println!("Memory used: {} MB", stats.memory_used / 1024 / 1024);

    Ok(())
}
