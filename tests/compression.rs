//! Compressed puts end to end: stored packed (and charged so), read back
//! raw through every door and by version-1 clients, and refused cleanly
//! when corrupt.

mod common;

use common::{start_server, start_server_with, RawConn};
use redstone::client::{ClientError, FastClient, RemoteCacheClient};
use redstone::engine::Engine;
use redstone::fast::wire::{encode, encode_head, Body, Opcode, Request, Status, WireMeta};
use redstone::fast::FastConfig;
use redstone::tensor::codec::{self, Compression, Encoding};
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
use redstone::tensor::synthetic::Kind;
use redstone::tensor::Tensor;
use redstone::Error;

/// A tensor of `dtype` that packs: every other element zero, the rest
/// small values.
fn sparse(dtype: DType, n: usize) -> Tensor {
    let w = dtype.width();
    let mut bytes = vec![0u8; n * w];
    for i in (1..n).step_by(2) {
        bytes[i * w] = (i % 7) as u8 + 1;
    }
    let meta = TensorMeta::new(dtype, vec![n as u64], StorageLayout::RowMajor).unwrap();
    Tensor::new(meta, bytes).unwrap()
}

#[tokio::test]
async fn every_dtype_round_trips_through_every_read() {
    let server = start_server(256 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let grpc = RemoteCacheClient::connect(server.grpc_addr().to_string())
        .await
        .unwrap();
    for dtype in DType::ALL {
        let raw = sparse(dtype, 300_001);
        let key = format!("t-{dtype}");
        client
            .put_with(&key, raw.clone(), Compression::Lz4)
            .await
            .unwrap();
        let stored = server.engine().get(&key).unwrap().unwrap();
        assert_eq!(stored.encoding(), Encoding::Packed, "{dtype}");
        assert!(stored.data().len() < raw.data().len() * 2 / 3, "{dtype}");
        assert_eq!(
            client.get(&key).await.unwrap().as_ref(),
            Some(&raw),
            "{dtype}"
        );
        let mut buf = vec![0u8; raw.data().len()];
        let meta = client.get_into(&key, &mut buf).await.unwrap();
        assert_eq!(meta.as_ref(), Some(raw.meta()));
        assert_eq!(&buf[..], &raw.data()[..], "{dtype}: get_into");
        let many = client.get_many(&[&key, "missing"]).await.unwrap();
        assert_eq!(many[0].as_ref(), Some(&raw));
        // The digest is the raw tensor's, wherever it is computed.
        assert_eq!(client.digest(&key).await.unwrap(), Some(raw.digest()));
        // The gRPC door keeps the original contract: plain tensors.
        assert_eq!(
            grpc.get(&key).await.unwrap().as_ref(),
            Some(&raw),
            "{dtype}"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_budget_charges_what_is_stored() {
    let server = start_server(256 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let relu = Kind::Relu.tensor(1 << 20, 3);
    client
        .put_with("relu", relu.clone(), Compression::Lz4)
        .await
        .unwrap();
    // Stored packed, in under 0.6 of the raw size, and charged that as
    // the allocator holds it (its size class), not the raw size.
    let used = server.engine().stats().memory_used;
    let stored = server.engine().get("relu").unwrap().unwrap();
    assert_ne!(stored.encoding(), Encoding::Raw);
    assert!(stored.data().len() < relu.data().len() * 6 / 10);
    assert_eq!(
        used,
        Engine::charge_stored("relu", relu.meta(), stored.data().len() as u64)
    );
    assert!(used < Engine::charge("relu", relu.meta()) * 7 / 10);
    // Noise does not compress: stored raw, charged in full.
    let noise = Kind::Normal.tensor(1 << 20, 4);
    client
        .put_with("noise", noise.clone(), Compression::Lz4)
        .await
        .unwrap();
    let stored = server.engine().get("noise").unwrap().unwrap();
    assert_eq!(stored.encoding(), Encoding::Raw);
    assert_eq!(
        server.engine().stats().memory_used - used,
        Engine::charge("noise", noise.meta())
    );
    assert_eq!(client.get("noise").await.unwrap(), Some(noise));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_version_1_client_reads_a_packed_tensor_raw() {
    let server = start_server(64 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let raw = sparse(DType::F32, 100_000);
    client
        .put_with("p", raw.clone(), Compression::Lz4)
        .await
        .unwrap();
    let mut conn = RawConn::connect(server.fast_addr()).await;
    let header = encode(&Request::Get { key: "p".into() }).unwrap();
    let mut frame = encode_head(Opcode::Get, 0, 5, &header, 0);
    frame[4] = 1;
    conn.send_bytes(&frame).await.unwrap();
    let (prefix, response, payload) = conn.recv().await.unwrap();
    assert_eq!(prefix.version, 1, "answered in the request's version");
    assert_eq!(response.status(), Status::Ok);
    let Body::Tensor(meta) = response.body else {
        panic!("{:?}", response.body)
    };
    assert_eq!(meta.encoding, 0);
    assert_eq!(&payload[..], &raw.data()[..]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn corrupt_packed_puts_are_refused_and_the_connection_goes_on() {
    let server = start_server(64 << 20).await;
    let mut conn = RawConn::connect(server.fast_addr()).await;
    let meta = TensorMeta::new(DType::F32, vec![1000], StorageLayout::RowMajor).unwrap();
    let put = |encoding: u8| Request::Put {
        key: "bad".into(),
        meta: WireMeta {
            encoding,
            ..WireMeta::from(&meta)
        },
    };
    // Framing that does not hold: a block claiming more than follows.
    conn.send(1, &put(1), &[0xff, 0xff, 0xff, 0x3f, 1, 2, 3])
        .await;
    let (_, response, _) = conn.recv().await.unwrap();
    assert_eq!(
        response.status(),
        Status::InvalidEncoding,
        "{}",
        response.message
    );
    // An unknown encoding.
    conn.send(2, &put(9), &[0; 16]).await;
    let (_, response, _) = conn.recv().await.unwrap();
    assert_eq!(
        response.status(),
        Status::InvalidEncoding,
        "{}",
        response.message
    );
    // Longer than any packing of 4000 bytes: refused before it is read.
    conn.send(3, &put(1), &vec![0; 4100]).await;
    let (_, response, _) = conn.recv().await.unwrap();
    assert_eq!(
        response.status(),
        Status::InvalidSize,
        "{}",
        response.message
    );
    assert!(server.engine().get("bad").unwrap().is_none());
    conn.send(4, &Request::Ping, &[]).await;
    let (prefix, response, _) = conn.recv().await.unwrap();
    assert_eq!((prefix.request_id, response.status()), (4, Status::Ok));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_packed_payload_that_does_not_decode_is_an_error_on_every_read() {
    let server = start_server(64 << 20).await;
    let good = codec::compress(&Kind::Bf16.tensor(64 << 10, 5)).unwrap();
    // The framing holds, the LZ4 inside does not: stored as sent (a
    // client's own bytes), an error wherever it is decoded.
    let mut data = good.data().to_vec();
    for b in &mut data[4..40] {
        *b = 0xff;
    }
    let bad = Tensor::from_encoded(good.meta().clone(), Encoding::Packed, data).unwrap();
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    client.put_tensor("bad", bad).await.unwrap();
    let err = client.get("bad").await.unwrap_err();
    assert!(
        matches!(err, ClientError::Invalid(Error::InvalidEncoding(_))),
        "{err:?}"
    );
    let mut buf = vec![0u8; 64 << 10];
    assert!(client.get_into("bad", &mut buf).await.is_err());
    let grpc = RemoteCacheClient::connect(server.grpc_addr().to_string())
        .await
        .unwrap();
    match grpc.get("bad").await {
        Err(ClientError::Rpc(status)) => assert_eq!(status.code(), tonic::Code::DataLoss),
        other => panic!("{other:?}"),
    }
    // Everything else still works.
    client.ping().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_raw_side_is_unchanged() {
    // A plain put stays a plain tensor: sent, stored and charged raw.
    let server = start_server(64 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let t = Kind::Relu.tensor(1 << 20, 1);
    client.put_tensor("plain", t.clone()).await.unwrap();
    assert_eq!(
        server.engine().get("plain").unwrap().unwrap().encoding(),
        Encoding::Raw
    );
    client
        .put_with("none", t.clone(), Compression::None)
        .await
        .unwrap();
    assert_eq!(
        server.engine().stats().memory_used,
        Engine::charge("plain", t.meta()) + Engine::charge("none", t.meta())
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_packed_put_may_not_unpack_past_the_largest_tensor() {
    // 64 MiB of zeros packs to ~260 KiB: under a 1 MiB --max-tensor as
    // sent, but a gRPC or version-1 reader would have the server unpack
    // 64 MiB. Refused, and the connection goes on.
    let fast = FastConfig {
        max_payload: 1 << 20,
        ..FastConfig::for_budget(256 << 20)
    };
    let server = start_server_with(256 << 20, fast).await;
    let zeros = Tensor::new(
        TensorMeta::new(DType::U8, vec![64 << 20], StorageLayout::RowMajor).unwrap(),
        vec![0u8; 64 << 20],
    )
    .unwrap();
    let packed = codec::compress(&zeros).unwrap();
    assert!(packed.data().len() < 1 << 20);
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let err = client.put_tensor("zeros", packed).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::OutOfMemory(m) if m.contains("--max-tensor")),
        "{err:?}"
    );
    assert!(server.engine().get("zeros").unwrap().is_none());
    client.ping().await.unwrap();
    server.shutdown().await.unwrap();
}
