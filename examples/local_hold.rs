//! Holds one tensor from a server, as a process of its own, until stdin
//! closes: `benches/local.py` runs eight of these to show what eight
//! readers of one tensor cost in memory, over the local door and over TCP.
//!
//! ```text
//! local_hold ADDR KEY            get KEY, touch every page, print "held N", wait
//! local_hold ADDR KEY --put N    first put an N-byte tensor under KEY
//! ```
//! `ADDR` is `unix:PATH` (the local door) or `HOST:PORT` (TCP).

use std::io::Read;

use redstone::fast::FastClient;
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (addr, key) = match &args[..] {
        [_, addr, key, ..] => (addr.as_str(), key.as_str()),
        _ => return Err("usage: local_hold ADDR KEY [--put BYTES]".into()),
    };
    let client = FastClient::connect(addr).await?;
    if let [_, _, _, flag, size] = &args[..] {
        if flag != "--put" {
            return Err(format!("unknown flag {flag}").into());
        }
        let size: u64 = size.parse()?;
        let meta = TensorMeta::new(DType::U8, vec![size], StorageLayout::RowMajor)?;
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        client.put(key, meta, data).await?;
        println!("put {size}");
        return Ok(());
    }
    let tensor = client.get(key).await?.ok_or("not cached")?;
    // Touch every page, as a reader of the tensor would.
    let sum: u64 = tensor
        .data()
        .iter()
        .step_by(4096)
        .map(|&b| u64::from(b))
        .sum();
    println!("held {} {sum}", tensor.data().len());
    // Held until the parent closes stdin.
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    drop(tensor);
    Ok(())
}
