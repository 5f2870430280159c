//! Writes a synthetic safetensors checkpoint, for trying and benchmarking
//! `redstone load`: N `f32` tensors of one size, each filled with its own
//! pattern.
//!
//! `cargo run --release -p redstone-cli --example make_checkpoint -- OUT.safetensors [TENSORS] [BYTES_PER_TENSOR]`
//! (defaults: 64 tensors of 16 MiB: a 1 GiB file)

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .ok_or("usage: make_checkpoint OUT [TENSORS] [BYTES]")?;
    let tensors: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let bytes: usize = args.next().map_or(Ok(16 << 20), |a| a.parse())?;
    let floats = bytes / 4;
    let data: Vec<Vec<u8>> = (0..tensors)
        .map(|t| {
            (0..floats)
                .flat_map(|i| ((t * floats + i) as f32).to_le_bytes())
                .collect()
        })
        .collect();
    let views = data
        .iter()
        .enumerate()
        .map(|(t, d)| {
            let shape = if floats.is_multiple_of(1024) {
                vec![floats / 1024, 1024]
            } else {
                vec![floats]
            };
            let view = TensorView::new(Dtype::F32, shape, d)?;
            Ok((format!("layers.{t}.weight"), view))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize_to_file(views, Some(metadata), out.as_ref())?;
    println!("wrote {tensors} tensors of {bytes} bytes to {out}");
    Ok(())
}
