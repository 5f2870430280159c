//! The gRPC door over real sockets: every status code, every dtype, large
//! tensors and concurrent clients.

mod common;

use bytes::Bytes;
use common::{pattern, start_server, u8_meta};
use redstone::client::{ClientError, RemoteCacheClient};
use redstone::grpc::proto::{self, red_stone_client::RedStoneClient};
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
use redstone::tensor::Tensor;
use tonic::Code;

/// A raw tonic client, to send requests the typed client refuses to build.
async fn raw_client(addr: std::net::SocketAddr) -> RedStoneClient<tonic::transport::Channel> {
    RedStoneClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(usize::MAX)
}

#[tokio::test]
async fn put_get_delete_stats() {
    let server = start_server(64 << 20).await;
    let client = RemoteCacheClient::connect(server.grpc_addr().to_string())
        .await
        .unwrap();
    let data = pattern(4096, 1);
    client.put("a", u8_meta(4096), data.clone()).await.unwrap();
    let got = client.get("a").await.unwrap().expect("stored");
    assert_eq!(got.data().as_ref(), data.as_slice());
    assert_eq!(got.meta(), &u8_meta(4096));
    assert!(client.get("missing").await.unwrap().is_none());
    let stats = client.get_stats().await.unwrap();
    assert_eq!((stats.entries, stats.hits, stats.misses), (1, 1, 1));
    assert_eq!(stats.hit_rate, 0.5);
    assert_eq!(stats.memory_limit, 64 << 20);
    assert_eq!(stats, server.engine().stats());
    assert!(client.delete("a").await.unwrap());
    assert!(!client.delete("a").await.unwrap());
    // Nothing is cached; what is charged is the delete's tombstone.
    let tombstone = "a".len() as u64 + redstone::engine::TOMBSTONE_OVERHEAD;
    assert_eq!(client.get_stats().await.unwrap().memory_used, tombstone);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn status_codes_and_messages() {
    let server = start_server(1 << 20).await;
    let mut raw = raw_client(server.grpc_addr()).await;
    let meta = proto::TensorMeta {
        dtype: 5,
        shape: vec![4],
        layout: 1,
    };
    let put = |key: &str, meta: Option<proto::TensorMeta>, len: usize| proto::PutRequest {
        key: key.into(),
        meta,
        data: Bytes::from(vec![7u8; len]),
    };

    let status = raw
        .get(proto::GetRequest { key: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    raw.put(put("k", Some(meta.clone()), 4)).await.unwrap();
    let status = raw.put(put("k", Some(meta.clone()), 4)).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(
        status.message().starts_with("AlreadyExists: "),
        "{}",
        status.message()
    );

    let big = proto::TensorMeta {
        shape: vec![2 << 20],
        ..meta.clone()
    };
    let status = raw.put(put("big", Some(big), 2 << 20)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().starts_with("OutOfMemory: "),
        "{}",
        status.message()
    );

    let invalid = [
        (put("x", None, 4), "InvalidTensorMetadata: "),
        (
            put(
                "x",
                Some(proto::TensorMeta {
                    dtype: 0,
                    ..meta.clone()
                }),
                4,
            ),
            "InvalidTensorMetadata: ",
        ),
        (
            put(
                "x",
                Some(proto::TensorMeta {
                    dtype: 42,
                    ..meta.clone()
                }),
                4,
            ),
            "InvalidTensorMetadata: ",
        ),
        (
            put(
                "x",
                Some(proto::TensorMeta {
                    layout: 0,
                    ..meta.clone()
                }),
                4,
            ),
            "InvalidTensorMetadata: ",
        ),
        (
            put(
                "x",
                Some(proto::TensorMeta {
                    layout: 9,
                    ..meta.clone()
                }),
                4,
            ),
            "InvalidTensorMetadata: ",
        ),
        (
            put(
                "x",
                Some(proto::TensorMeta {
                    shape: vec![u64::MAX, u64::MAX],
                    ..meta.clone()
                }),
                4,
            ),
            "InvalidTensorMetadata: ",
        ),
        (put("x", Some(meta.clone()), 5), "InvalidSize: "),
        (put("x", Some(meta.clone()), 3), "InvalidSize: "),
        (put("", Some(meta.clone()), 4), "InvalidKey: "),
        (
            put(&"k".repeat(5000), Some(meta.clone()), 4),
            "InvalidKey: ",
        ),
    ];
    for (request, prefix) in invalid {
        let status = raw.put(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(status.message().starts_with(prefix), "{}", status.message());
    }
    let status = raw
        .get(proto::GetRequest { key: String::new() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = raw
        .delete(proto::DeleteRequest { key: String::new() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // The refused requests stored nothing and broke nothing.
    let stats = raw
        .get_stats(proto::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.entries, 1);
    assert_eq!(stats.evictions, 0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn typed_client_errors() {
    let server = start_server(1 << 20).await;
    let client = RemoteCacheClient::connect(server.grpc_addr().to_string())
        .await
        .unwrap();
    client.put("k", u8_meta(4), vec![0u8; 4]).await.unwrap();
    assert!(matches!(
        client.put("k", u8_meta(4), vec![0u8; 4]).await,
        Err(ClientError::AlreadyExists(_))
    ));
    assert!(matches!(
        client
            .put("big", u8_meta(2 << 20), vec![0u8; 2 << 20])
            .await,
        Err(ClientError::OutOfMemory(_))
    ));
    assert!(matches!(
        client.put("", u8_meta(4), vec![0u8; 4]).await,
        Err(ClientError::InvalidArgument(m)) if m.starts_with("InvalidKey: ")
    ));
    // A length mismatch is caught before anything is sent.
    assert!(matches!(
        client.put("x", u8_meta(4), vec![0u8; 5]).await,
        Err(ClientError::Invalid(redstone::Error::InvalidSize { .. }))
    ));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn connecting_to_nothing_is_a_connect_error() {
    // Bind then drop a listener to find a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RemoteCacheClient::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn every_dtype_and_layout_round_trips() {
    let server = start_server(64 << 20).await;
    let client = RemoteCacheClient::connect(server.grpc_addr().to_string())
        .await
        .unwrap();
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        for layout in [StorageLayout::RowMajor, StorageLayout::ColumnMajor] {
            for shape in [vec![], vec![0, 3], vec![3, 5, 7]] {
                let meta = TensorMeta::new(dtype, shape.clone(), layout).unwrap();
                let data = pattern(meta.byte_size() as usize, i as u64);
                let key = format!("{dtype}/{layout:?}/{shape:?}");
                client
                    .put(key.as_str(), meta.clone(), data.clone())
                    .await
                    .unwrap();
                let got = client.get(key.as_str()).await.unwrap().expect("stored");
                assert_eq!(got.meta(), &meta, "{key}");
                assert_eq!(got.data().as_ref(), data.as_slice(), "{key}");
            }
        }
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_64_mib_tensor_round_trips() {
    let server = start_server(256 << 20).await;
    let client = RemoteCacheClient::connect(server.grpc_addr().to_string())
        .await
        .unwrap();
    let values: Vec<f32> = (0..16 << 20).map(|i| i as f32).collect();
    let tensor = Tensor::from_slice::<f32>(vec![4096, 4096], &values).unwrap();
    assert_eq!(tensor.data().len(), 64 << 20);
    client.put_tensor("weights", tensor.clone()).await.unwrap();
    let got = client.get("weights").await.unwrap().expect("stored");
    assert_eq!(got, tensor);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_see_their_own_bytes() {
    let server = start_server(256 << 20).await;
    let addr = server.grpc_addr().to_string();
    let mut tasks = Vec::new();
    for c in 0..16u64 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let client = RemoteCacheClient::connect(addr).await.unwrap();
            for i in 0..20u64 {
                let key = format!("c{c}/{i}");
                let data = pattern(1000 + (i as usize * 997) % 50_000, c * 1000 + i);
                client
                    .put(key.as_str(), u8_meta(data.len() as u64), data.clone())
                    .await
                    .unwrap();
                let got = client.get(key.as_str()).await.unwrap().expect("stored");
                assert_eq!(got.data().as_ref(), data.as_slice(), "{key}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(server.engine().stats().entries, 16 * 20);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let server = start_server(1 << 20).await;
    let addr = server.grpc_addr();
    let client = RemoteCacheClient::connect(addr.to_string()).await.unwrap();
    client.put("k", u8_meta(1), vec![1u8]).await.unwrap();
    server.shutdown().await.unwrap();
    assert!(RemoteCacheClient::connect(addr.to_string()).await.is_err());
}

#[tokio::test]
async fn the_grpc_door_limits_connections_and_closes_idle_ones() {
    use redstone::grpc::GrpcConfig;
    use redstone::server::{Config, Server};
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    let config = Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: "127.0.0.1:0".parse().unwrap(),
        memory_limit: 1 << 20,
        grpc: GrpcConfig {
            max_connections: 2,
            idle_timeout: Duration::from_millis(700),
            ..GrpcConfig::default()
        },
        ..Config::default()
    };
    let server = Server::bind(config).await.unwrap().spawn();
    let addr = server.grpc_addr();
    // Two silent connections take both places...
    let mut held = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so a third is closed at once.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut first_byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), third.read(&mut first_byte))
        .await
        .expect("the connection over the limit is closed, not left waiting");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The silent ones are closed after the idle timeout.
    for conn in &mut held {
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut sink))
            .await
            .expect("an idle connection is closed")
            .ok();
    }
    // Their places are free again for a real client.
    let client = RemoteCacheClient::connect(addr.to_string()).await.unwrap();
    client.get_stats().await.unwrap();
    server.shutdown().await.unwrap();
}
