//! Synthetic tensors that stand for real ones, for benchmarks and tests of
//! compression: what a tensor's bytes look like decides how well it
//! compresses, so each kind mimics a kind of tensor an ML service caches.
//!
//! ```
//! use redstone::tensor::synthetic::Kind;
//! let t = Kind::Relu.tensor(1 << 20, 7);
//! assert_eq!(t.data().len(), 1 << 20);
//! let zeros = t.to_vec::<f32>()?.iter().filter(|x| **x == 0.0).count();
//! assert!((100_000..160_000).contains(&zeros)); // about half of 262,144
//! # Ok::<(), redstone::Error>(())
//! ```

use std::str::FromStr;

use super::meta::{DType, StorageLayout, TensorMeta};
use super::Tensor;

/// A kind of tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `u8` bytes in a short repeating pattern (the load generator's
    /// default: compresses to almost nothing).
    Bytes,
    /// ReLU activations: `f32`, half exact zeros, half |N(0, 1)|.
    Relu,
    /// Embeddings: `f32` drawn from N(0, 1).
    Normal,
    /// Weights in `bf16`: N(0, 0.02), rounded to bfloat16.
    Bf16,
    /// Quantized weights: `i8`, round(N(0, 1) × 20) clamped to ±127.
    Int8,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::Bytes,
        Kind::Relu,
        Kind::Normal,
        Kind::Bf16,
        Kind::Int8,
    ];

    /// The name `FromStr` reads.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Bytes => "bytes",
            Kind::Relu => "relu",
            Kind::Normal => "normal",
            Kind::Bf16 => "bf16",
            Kind::Int8 => "int8",
        }
    }

    /// The element type.
    pub fn dtype(self) -> DType {
        match self {
            Kind::Bytes => DType::U8,
            Kind::Relu | Kind::Normal => DType::F32,
            Kind::Bf16 => DType::BF16,
            Kind::Int8 => DType::I8,
        }
    }

    /// A one-dimensional tensor of this kind, `bytes` long rounded down
    /// to whole elements, from `seed` (the same seed gives the same bytes).
    pub fn tensor(self, bytes: usize, seed: u64) -> Tensor {
        let n = bytes / self.dtype().width();
        let mut rng = Normal::new(seed);
        let data: Vec<u8> = match self {
            Kind::Bytes => (0..n)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
                .collect(),
            Kind::Relu => (0..n)
                .flat_map(|_| rng.next().max(0.0).to_le_bytes())
                .collect(),
            Kind::Normal => (0..n).flat_map(|_| rng.next().to_le_bytes()).collect(),
            Kind::Bf16 => (0..n)
                .flat_map(|_| bf16_bits(rng.next() * 0.02).to_le_bytes())
                .collect(),
            Kind::Int8 => (0..n)
                .map(|_| (rng.next() * 20.0).round().clamp(-127.0, 127.0) as i8 as u8)
                .collect(),
        };
        let meta = TensorMeta::new(self.dtype(), vec![n as u64], StorageLayout::RowMajor)
            .expect("a vector's metadata");
        Tensor::new(meta, data).expect("sized to its metadata")
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown data kind {s:?} (bytes, relu, normal, bf16, int8)"))
    }
}

/// `x` rounded to the nearest bfloat16 (ties to even), as its 16 bits.
fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// Standard normal samples: splitmix64 and Box–Muller.
struct Normal {
    state: u64,
    spare: Option<f32>,
}

impl Normal {
    fn new(seed: u64) -> Normal {
        Normal {
            state: seed,
            spare: None,
        }
    }

    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // In (0, 1]: never 0, so the logarithm is finite.
        ((z >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f32 {
        if let Some(x) = self.spare.take() {
            return x;
        }
        let (u, v) = (self.uniform(), self.uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let theta = std::f64::consts::TAU * v;
        self.spare = Some((r * theta.sin()) as f32);
        (r * theta.cos()) as f32
    }
}
