//! The fast path over real sockets.

mod common;

use std::time::Duration;

use common::{pattern, prefix_bytes, start_server, start_server_with, u8_meta, RawConn};
use redstone::client::{ClientError, FastClient, TensorStore};
use redstone::fast::wire::{
    encode, Body, Opcode, Request, Status, WireMeta, FLAG_END, FLAG_RESPONSE, MAGIC,
};
use redstone::fast::FastConfig;
use redstone::tensor::meta::{DType, StorageLayout, TensorMeta};
use redstone::tensor::Tensor;

fn wire_u8(n: u64) -> WireMeta {
    WireMeta::from(&u8_meta(n))
}

#[tokio::test]
async fn put_get_delete_stats_ping() {
    let server = start_server(64 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    client.ping().await.unwrap();
    let data = pattern(10_000, 1);
    client
        .put("a", u8_meta(10_000), data.clone())
        .await
        .unwrap();
    let got = client.get("a").await.unwrap().expect("stored");
    assert_eq!(got.data().as_ref(), data.as_slice());
    assert_eq!(got.meta(), &u8_meta(10_000));
    assert!(client.get("missing").await.unwrap().is_none());

    let mut buf = vec![0u8; 10_000];
    let meta = client
        .get_into("a", &mut buf)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!((meta, buf), (u8_meta(10_000), data));
    let mut wrong = vec![0u8; 3];
    assert!(matches!(
        client.get_into("a", &mut wrong).await,
        Err(ClientError::Invalid(_))
    ));

    let stats = client.stats().await.unwrap();
    assert_eq!(stats, server.engine().stats());
    assert_eq!((stats.entries, stats.hits, stats.misses), (1, 3, 1));
    assert!(client.delete("a").await.unwrap());
    assert!(!client.delete("a").await.unwrap());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn both_doors_share_one_engine() {
    let server = start_server(64 << 20).await;
    let fast = FastClient::connect(server.fast_addr()).await.unwrap();
    let grpc = redstone::client::RemoteCacheClient::connect(server.grpc_addr().to_string())
        .await
        .unwrap();
    let t = Tensor::from_slice::<f64>(vec![3], &[1.0, 2.0, 3.0]).unwrap();
    TensorStore::put_tensor(&fast, "x", t.clone())
        .await
        .unwrap();
    assert_eq!(TensorStore::get(&grpc, "x").await.unwrap(), Some(t.clone()));
    TensorStore::put_tensor(&grpc, "y", t.clone())
        .await
        .unwrap();
    assert_eq!(TensorStore::get(&fast, "y").await.unwrap(), Some(t));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn batch_get_with_missing_keys() {
    let server = start_server(64 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    for i in 0..10u64 {
        if i % 3 != 0 {
            let data = pattern(1000 + i as usize, i);
            client
                .put(&format!("k{i}"), u8_meta(data.len() as u64), data)
                .await
                .unwrap();
        }
    }
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let batch = client.get_many(&keys).await.unwrap();
    assert_eq!(batch.len(), 10);
    for (i, got) in batch.iter().enumerate() {
        if i % 3 == 0 {
            assert!(got.is_none(), "k{i} was never stored");
        } else {
            let expected = pattern(1000 + i, i as u64);
            assert_eq!(got.as_ref().unwrap().data().as_ref(), expected.as_slice());
        }
    }
    assert!(client.get_many::<&str>(&[]).await.unwrap().is_empty());
    // A bad key in a batch is refused before anything is sent.
    let mixed = client.get_many(&["k1", ""]).await;
    assert!(
        matches!(
            mixed,
            Err(ClientError::Invalid(redstone::Error::InvalidKey(_)))
        ),
        "{mixed:?}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn batch_get_streams_one_frame_per_key_with_end_on_the_last() {
    let server = start_server(1 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    client.put("a", u8_meta(3), vec![1u8, 2, 3]).await.unwrap();
    let mut raw = RawConn::connect(server.fast_addr()).await;
    let keys = vec!["a".to_string(), "nope".into(), "a".into()];
    raw.send(77, &Request::GetMany { keys }, &[]).await;
    for index in 0..3u32 {
        let (prefix, response, payload) = raw.recv().await.unwrap();
        assert_eq!(prefix.request_id, 77);
        assert_eq!(prefix.opcode, Opcode::GetMany);
        assert_eq!(prefix.is_end(), index == 2);
        assert_eq!(response.index, index);
        if index == 1 {
            assert_eq!(response.status(), Status::NotFound);
            assert!(payload.is_empty());
        } else {
            assert_eq!(response.status(), Status::Ok);
            assert_eq!(payload.as_ref(), &[1, 2, 3]);
        }
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn request_level_errors_keep_the_connection_open() {
    let server = start_server(1 << 20).await;
    let mut raw = RawConn::connect(server.fast_addr()).await;
    let put = |key: &str, meta: WireMeta| Request::Put {
        key: key.into(),
        meta,
    };

    raw.send(1, &put("k", wire_u8(4)), &[1, 2, 3, 4]).await;
    raw.send(2, &put("k", wire_u8(4)), &[1, 2, 3, 4]).await;
    // Under the payload limit (the budget) but over it once the key and
    // the per-entry overhead are charged.
    let almost = (1 << 20) - 100;
    raw.send(3, &put("big", wire_u8(almost)), &vec![0u8; almost as usize])
        .await;
    raw.send(4, &put("", wire_u8(1)), &[0]).await;
    raw.send(
        5,
        &put(
            "m",
            WireMeta {
                dtype: 0,
                layout: 1,
                encoding: 0,
                shape: vec![1],
            },
        ),
        &[0],
    )
    .await;
    raw.send(
        6,
        &put(
            "m",
            WireMeta {
                dtype: 99,
                layout: 1,
                encoding: 0,
                shape: vec![1],
            },
        ),
        &[0],
    )
    .await;
    raw.send(
        7,
        &put(
            "m",
            WireMeta {
                dtype: 1,
                layout: 3,
                encoding: 0,
                shape: vec![1],
            },
        ),
        &[0; 4],
    )
    .await;
    raw.send(
        8,
        &put(
            "m",
            WireMeta {
                dtype: 2,
                layout: 1,
                encoding: 0,
                shape: vec![u64::MAX, 2],
            },
        ),
        &[],
    )
    .await;
    raw.send(9, &put("m", wire_u8(4)), &[1, 2, 3]).await;
    raw.send(10, &Request::Get { key: "nope".into() }, &[])
        .await;
    raw.send(11, &Request::Delete { key: String::new() }, &[])
        .await;
    raw.send(12, &Request::Get { key: "k".into() }, &[]).await;

    let expected = [
        (1, Status::Ok, ""),
        (2, Status::AlreadyExists, "AlreadyExists: "),
        (3, Status::OutOfMemory, "OutOfMemory: "),
        (4, Status::InvalidKey, "InvalidKey: "),
        (5, Status::InvalidMetadata, "InvalidTensorMetadata: "),
        (6, Status::InvalidMetadata, "InvalidTensorMetadata: "),
        (7, Status::InvalidMetadata, "InvalidTensorMetadata: "),
        (8, Status::InvalidMetadata, "InvalidTensorMetadata: "),
        (9, Status::InvalidSize, "InvalidSize: "),
        (10, Status::NotFound, "NotFound: "),
        (11, Status::InvalidKey, "InvalidKey: "),
        (12, Status::Ok, ""),
    ];
    for (id, status, prefix) in expected {
        let (p, response, payload) = raw.recv().await.expect("the connection stays open");
        assert_eq!(p.request_id, id);
        assert_eq!(p.flags, FLAG_RESPONSE | FLAG_END);
        assert_eq!(
            response.status(),
            status,
            "request {id}: {}",
            response.message
        );
        assert!(
            response.message.starts_with(prefix),
            "request {id}: {}",
            response.message
        );
        if id == 12 {
            assert_eq!(payload.as_ref(), &[1, 2, 3, 4]);
            assert!(matches!(response.body, Body::Tensor(_)));
        }
    }
    let stats = server.engine().stats();
    assert_eq!((stats.entries, stats.evictions), (1, 0));
    server.shutdown().await.unwrap();
}

/// Sends `bytes` on a fresh connection and returns the status of the one
/// error frame the server answers with; the server must then close.
async fn fatal_status(server: &redstone::server::ServerHandle, bytes: &[u8]) -> (u64, Status) {
    let mut raw = RawConn::connect(server.fast_addr()).await;
    raw.send_bytes(bytes).await.unwrap();
    let (prefix, response, _) = raw.recv().await.expect("an error frame");
    assert!(prefix.is_response() && prefix.is_end());
    assert!(!response.message.is_empty());
    assert!(
        raw.recv().await.is_none(),
        "the server closes after a fatal error"
    );
    (prefix.request_id, response.status())
}

#[tokio::test]
async fn fatal_errors_get_an_error_frame_then_close() {
    let fast = FastConfig {
        max_header: 1024,
        ..FastConfig::for_budget(1 << 20)
    };
    let server = start_server_with(1 << 20, fast).await;
    let get = encode(&Request::Get { key: "k".into() }).unwrap();

    assert_eq!(
        fatal_status(&server, &[0xAB; 64]).await,
        (0, Status::Malformed)
    );
    assert_eq!(
        fatal_status(&server, &prefix_bytes(4, 2, 5, 0, 0)).await,
        (5, Status::UnsupportedVersion)
    );
    assert_eq!(
        fatal_status(&server, &prefix_bytes(1, 99, 6, 0, 0)).await,
        (6, Status::UnknownOpcode)
    );
    // Claims over the limits are refused from the prefix alone.
    assert_eq!(
        fatal_status(&server, &prefix_bytes(1, 3, 7, 0, 1 << 63)).await,
        (7, Status::TooLarge)
    );
    assert_eq!(
        fatal_status(&server, &prefix_bytes(1, 2, 8, u32::MAX, 0)).await,
        (8, Status::TooLarge)
    );
    // A header that does not validate.
    let mut garbage_header = prefix_bytes(1, 2, 9, 40, 0);
    garbage_header.extend_from_slice(&[0xEE; 40]);
    assert_eq!(
        fatal_status(&server, &garbage_header).await,
        (9, Status::Malformed)
    );
    // The prefix says PUT, the header says GET.
    let mut mismatch = prefix_bytes(1, 3, 10, get.len() as u32, 0);
    mismatch.extend_from_slice(&get);
    assert_eq!(
        fatal_status(&server, &mismatch).await,
        (10, Status::Malformed)
    );
    // A GET with a payload.
    let mut with_payload = prefix_bytes(1, 2, 11, get.len() as u32, 3);
    with_payload.extend_from_slice(&get);
    with_payload.extend_from_slice(b"xyz");
    assert_eq!(
        fatal_status(&server, &with_payload).await,
        (11, Status::Malformed)
    );

    // After all that, the server still serves.
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    client.ping().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_put_over_max_tensor_is_too_large_for_the_client() {
    let fast = FastConfig {
        max_payload: 1000,
        ..FastConfig::for_budget(1 << 20)
    };
    let server = start_server_with(1 << 20, fast).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let err = client
        .put("k", u8_meta(2000), vec![0u8; 2000])
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::TooLarge(_)), "{err}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn connection_limit_answers_busy() {
    let fast = FastConfig {
        max_connections: 1,
        ..FastConfig::for_budget(1 << 20)
    };
    let server = start_server_with(1 << 20, fast).await;
    let first = FastClient::connect(server.fast_addr()).await.unwrap();
    first.ping().await.unwrap();
    let mut second = RawConn::connect(server.fast_addr()).await;
    let (prefix, response, _) = second.recv().await.expect("a Busy frame");
    assert_eq!((prefix.request_id, response.status()), (0, Status::Busy));
    assert!(second.recv().await.is_none());
    first.ping().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn idle_connections_time_out() {
    let fast = FastConfig {
        idle_timeout: Duration::from_millis(200),
        ..FastConfig::for_budget(1 << 20)
    };
    let server = start_server_with(1 << 20, fast).await;
    let mut raw = RawConn::connect(server.fast_addr()).await;
    // Half a prefix, then silence.
    raw.send_bytes(&MAGIC).await.unwrap();
    let (_, response, _) = tokio::time::timeout(Duration::from_secs(5), raw.recv())
        .await
        .expect("the server must act on its own")
        .expect("a Timeout frame");
    assert_eq!(response.status(), Status::Timeout);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_256_mib_tensor_round_trips() {
    let server = start_server(300 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    // 256 blocks of 1 MiB, each stamped with its number, so a block moved
    // or dropped shows up.
    let block = pattern(1 << 20, 42);
    let mut data = Vec::with_capacity(256 << 20);
    for i in 0..256u32 {
        data.extend_from_slice(&i.to_le_bytes());
        data.extend_from_slice(&block[4..]);
    }
    let meta = TensorMeta::new(DType::F32, vec![64, 1 << 20], StorageLayout::RowMajor).unwrap();
    client
        .put("huge", meta.clone(), data.clone())
        .await
        .unwrap();
    let got = client.get("huge").await.unwrap().expect("stored");
    assert_eq!(got.meta(), &meta);
    assert!(got.data().as_ref() == data.as_slice(), "payload differs");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_byte_exact() {
    let server = start_server(256 << 20).await;
    let addr = server.fast_addr();
    let shared = FastClient::connect(addr).await.unwrap();
    let mut tasks = Vec::new();
    for c in 0..32u64 {
        // Half the tasks share one multiplexed connection, half have their own.
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let client = if c % 2 == 0 {
                shared
            } else {
                FastClient::connect(addr).await.unwrap()
            };
            for i in 0..25u64 {
                let key = format!("c{c}/{i}");
                let data = pattern(500 + ((c * 31 + i * 7919) % 100_000) as usize, c * 1000 + i);
                client
                    .put(&key, u8_meta(data.len() as u64), data.clone())
                    .await
                    .unwrap();
                let got = client.get(&key).await.unwrap().expect("stored");
                assert_eq!(got.data().as_ref(), data.as_slice(), "{key}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(server.engine().stats().entries, 32 * 25);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_client_does_not_disturb_a_good_one() {
    let server = start_server(64 << 20).await;
    let addr = server.fast_addr();
    let good = tokio::spawn(async move {
        let client = FastClient::connect(addr).await.unwrap();
        for i in 0..200u64 {
            let data = pattern(4096, i);
            client
                .put(&format!("g{i}"), u8_meta(4096), data.clone())
                .await
                .unwrap();
            let got = client.get(&format!("g{i}")).await.unwrap().unwrap();
            assert_eq!(got.data().as_ref(), data.as_slice());
        }
    });
    for round in 0..50u64 {
        let mut raw = RawConn::connect(addr).await;
        let mut junk = pattern(1000, round);
        if round % 2 == 0 {
            // A valid-looking prefix in front of the junk.
            let mut p = prefix_bytes(1, 3, round, 100, 4096);
            p.extend_from_slice(&junk);
            junk = p;
        }
        let _ = raw.send_bytes(&junk).await;
        drop(raw);
    }
    good.await.unwrap();
    server.shutdown().await.unwrap();
}

/// A fake server that answers requests in reverse order proves the client
/// matches replies by id, not by order.
#[tokio::test]
async fn replies_out_of_order_reach_the_right_callers() {
    use redstone::fast::stream::{write_frames, FrameReader, OutFrame};
    use redstone::fast::wire::{decode_request, encode_head, Limits, Response};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    const N: usize = 8;
    let fake = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut reader = FrameReader::new(r);
        let limits = Limits {
            max_header: 1 << 16,
            max_payload: 0,
        };
        let mut requests = Vec::new();
        while requests.len() < N {
            let head = reader.read_head(&limits).await.unwrap().unwrap();
            let Request::Get { key } = decode_request(&head.header, 0).unwrap() else {
                panic!()
            };
            requests.push((head.prefix.request_id, key));
        }
        let frames: Vec<OutFrame> = requests
            .into_iter()
            .rev()
            .map(|(id, key)| {
                let header =
                    encode(&Response::ok(Body::Tensor(wire_u8(key.len() as u64)))).unwrap();
                let head = encode_head(
                    Opcode::Get,
                    FLAG_RESPONSE | FLAG_END,
                    id,
                    &header,
                    key.len() as u64,
                );
                OutFrame::new(head, bytes::Bytes::from(key.into_bytes()))
            })
            .collect();
        write_frames(&mut w, frames).await.unwrap();
        // Keep the socket open until the client is done.
        let _ = reader.read_head(&limits).await;
    });
    let client = FastClient::connect(addr).await.unwrap();
    let calls: Vec<_> = (0..N)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let key = format!("key-number-{i}-{}", "x".repeat(i));
                let got = client.get(&key).await.unwrap().unwrap();
                assert_eq!(
                    got.data().as_ref(),
                    key.as_bytes(),
                    "each caller gets its own reply"
                );
            })
        })
        .collect();
    for c in calls {
        c.await.unwrap();
    }
    drop(client);
    fake.await.unwrap();
}

#[tokio::test]
async fn a_closed_server_fails_calls_instead_of_hanging() {
    let server = start_server(1 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    client.ping().await.unwrap();
    server.shutdown().await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), client.ping())
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Unavailable(_) | ClientError::Connect { .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn the_client_reconnects_after_a_server_restart() {
    let server = start_server(1 << 20).await;
    let addr = server.fast_addr();
    let client = FastClient::connect(addr).await.unwrap();
    client.put("k", u8_meta(1), vec![1u8]).await.unwrap();
    server.shutdown().await.unwrap();
    // The old connection is gone; a call in flight fails...
    assert!(client.ping().await.is_err());
    // ...and once a server listens there again, the next call reconnects.
    let config = redstone::server::Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: addr,
        memory_limit: 1 << 20,
        ..redstone::server::Config::default()
    };
    let again = redstone::server::Server::bind(config)
        .await
        .unwrap()
        .spawn();
    client.ping().await.unwrap();
    assert!(
        client.get("k").await.unwrap().is_none(),
        "a restarted server is empty"
    );
    again.shutdown().await.unwrap();
}

#[tokio::test]
async fn dropping_the_servers_run_future_stops_the_fast_path_too() {
    let config = redstone::server::Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        fast_addr: "127.0.0.1:0".parse().unwrap(),
        memory_limit: 1 << 20,
        ..redstone::server::Config::default()
    };
    let server = redstone::server::Server::bind(config).await.unwrap();
    let addr = server.fast_addr();
    let run = tokio::spawn(server.run(std::future::pending()));
    FastClient::connect(addr)
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fast path still accepts after its server was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_get_many_over_the_servers_header_limit_is_split_and_disturbs_no_one() {
    let server = start_server(64 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    client
        .put("present", u8_meta(3), vec![1, 2, 3])
        .await
        .unwrap();
    // ~180 KB of keys: over the server's 64 KiB header limit in one request.
    let keys: Vec<String> = (0..5000)
        .map(|i| {
            if i % 1000 == 0 {
                "present".to_owned()
            } else {
                format!("missing/key/number/{i:08}")
            }
        })
        .collect();
    let other = {
        let client = client.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                assert!(client.get("present").await.unwrap().is_some());
            }
        })
    };
    let got = client.get_many(&keys).await.unwrap();
    assert_eq!(got.len(), keys.len());
    for (key, value) in keys.iter().zip(&got) {
        assert_eq!(value.is_some(), key == "present", "{key}");
    }
    other.await.unwrap();
    // A single key over the limit is refused before it is sent.
    let fast = FastConfig {
        max_header: 1024,
        ..FastConfig::for_budget(1 << 20)
    };
    let small = start_server_with(1 << 20, fast).await;
    let options = redstone::client::FastClientOptions {
        max_header: 1024,
        ..Default::default()
    };
    let client = FastClient::connect_with(small.fast_addr(), options)
        .await
        .unwrap();
    let long = "k".repeat(2000);
    assert!(matches!(
        client.get(&long).await,
        Err(ClientError::TooLarge(_))
    ));
    client
        .ping()
        .await
        .expect("the shared connection is still up");
    server.shutdown().await.unwrap();
    small.shutdown().await.unwrap();
}

#[tokio::test]
async fn get_into_is_not_failed_by_a_spare_connection_the_server_closed() {
    let fast = FastConfig {
        idle_timeout: Duration::from_millis(300),
        ..FastConfig::for_budget(1 << 20)
    };
    let server = start_server_with(1 << 20, fast).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let data = pattern(100, 3);
    client.put("k", u8_meta(100), data.clone()).await.unwrap();
    let mut buf = vec![0u8; 100];
    client.get_into("k", &mut buf).await.unwrap().unwrap();
    // The exclusive connection now idles past the server's timeout and is
    // closed by it.
    tokio::time::sleep(Duration::from_millis(900)).await;
    buf.fill(0);
    let meta = client.get_into("k", &mut buf).await.unwrap();
    assert_eq!((meta, buf), (Some(u8_meta(100)), data));
    server.shutdown().await.unwrap();
}

/// A reply the server writes at once, from the handler, never overtakes one
/// queued before it: with a 16 MiB reply still draining to a client that
/// reads slowly, each small GET sent meanwhile is answered after it, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_written_at_once_never_overtake_queued_ones() {
    use redstone::fast::wire::{encode_head, Limits};
    use tokio::io::AsyncWriteExt;

    let server = start_server(64 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let big = pattern(16 << 20, 1);
    let small = pattern(100, 2);
    client
        .put("big", u8_meta(big.len() as u64), big.clone())
        .await
        .unwrap();
    client
        .put("small", u8_meta(small.len() as u64), small.clone())
        .await
        .unwrap();
    let mut raw = RawConn::connect(server.fast_addr()).await;
    raw.send(1, &Request::Get { key: "big".into() }, &[]).await;
    // Read the big reply a little at a time, sending a small GET between
    // reads: the socket keeps having room while the reply is unwritten.
    let sender = {
        let writer = &mut raw.writer;
        async move {
            for id in 2..=65u64 {
                let header = encode(&Request::Get {
                    key: "small".into(),
                })
                .unwrap();
                let frame = encode_head(Opcode::Get, 0, id, &header, 0);
                writer.write_all(&frame).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    let limits = Limits {
        max_header: 1 << 20,
        max_payload: 1 << 40,
    };
    let reader = &mut raw.reader;
    let receiver = async move {
        let head = reader.read_head(&limits).await.unwrap().unwrap();
        assert_eq!(head.prefix.request_id, 1, "the big reply comes first");
        let mut got = vec![0u8; head.prefix.payload_len as usize];
        for chunk in got.chunks_mut(256 << 10) {
            reader.read_payload_into(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(got == big, "the big payload arrived intact");
        for id in 2..=65u64 {
            let head = reader.read_head(&limits).await.unwrap().unwrap();
            assert_eq!(head.prefix.request_id, id, "small replies in order");
            let payload = reader.read_payload(head.prefix.payload_len).await.unwrap();
            assert_eq!(payload.as_ref(), small.as_slice());
        }
    };
    tokio::join!(sender, receiver);
    server.shutdown().await.unwrap();
}
