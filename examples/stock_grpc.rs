//! 1 MiB gRPC gets from a stock tonic client at default settings (the
//! generated `RedStoneClient` on one default `Channel`: 64 KiB HTTP/2
//! windows, 16 KiB frames), for the README's gRPC figures:
//!
//! ```sh
//! cargo run --release --example stock_grpc -- 127.0.0.1:50051 8   # address, workers
//! ```
//!
//! Puts 32 tensors of 1 MiB (`stock:0` … `stock:31`), then runs that many
//! workers of gets for 4 s and prints the MB/s of the last 3.
use redstone::grpc::proto::red_stone_client::RedStoneClient;
use redstone::grpc::proto::{GetRequest, PutRequest, TensorMeta};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args[1].clone();
    let workers: usize = args[2].parse().unwrap();
    let client = RedStoneClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let size = 1usize << 20;
    for i in 0..32 {
        let mut c = client.clone();
        let _ = c
            .put(PutRequest {
                key: format!("stock:{i}"),
                meta: Some(TensorMeta {
                    dtype: 5,
                    shape: vec![size as u64],
                    layout: 1,
                }),
                data: vec![i as u8; size].into(),
            })
            .await;
    }
    let stop = Instant::now() + Duration::from_secs(4);
    let start_measure = Instant::now() + Duration::from_secs(1);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut i = w as u64;
            while Instant::now() < stop {
                i = (i * 7 + 3) % 32;
                let r = c
                    .get(GetRequest {
                        key: format!("stock:{i}"),
                    })
                    .await
                    .unwrap();
                assert_eq!(r.into_inner().data.len(), size);
                if Instant::now() > start_measure {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    println!("{:.0}", total as f64 * size as f64 / 3.0 / 1e6);
}
