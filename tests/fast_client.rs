//! The fast-path client against servers that misbehave: ones that stop
//! reading, die in the middle of a reply, or answer what the caller's
//! buffer cannot take. Fake servers are a few lines of `FrameReader` and
//! `encode_frame`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{pattern, start_server, u8_meta};
use redstone::client::{ClientError, FastClient, FastClientOptions};
use redstone::fast::stream::FrameReader;
use redstone::fast::wire::{
    encode_frame, Body, Limits, Opcode, Response, Status, WireMeta, FLAG_END, FLAG_RESPONSE,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const LIMITS: Limits = Limits {
    max_header: 1 << 20,
    max_payload: 1 << 30,
};

/// Answers each GET on `socket` with `reply(n)`, n counting the requests on
/// this connection from 0; `None` closes the connection.
async fn answer(socket: TcpStream, reply: impl Fn(usize) -> Option<(Response, Vec<u8>, usize)>) {
    let (read, mut write) = socket.into_split();
    let mut reader = FrameReader::new(read);
    let mut n = 0;
    while let Ok(Some(head)) = reader.read_head(&LIMITS).await {
        let Some((response, payload, send)) = reply(n) else {
            return;
        };
        let frame = encode_frame(
            Opcode::Get,
            FLAG_RESPONSE | FLAG_END,
            head.prefix.request_id,
            &response,
            payload.len() as u64,
        )
        .unwrap();
        // `send` bytes of the payload: fewer than promised, then the
        // connection closes.
        if write.write_all(&frame).await.is_err()
            || write.write_all(&payload[..send]).await.is_err()
        {
            return;
        }
        if send < payload.len() {
            return;
        }
        n += 1;
    }
}

fn tensor_reply(data: &[u8], send: usize) -> (Response, Vec<u8>, usize) {
    let meta = WireMeta::from(&u8_meta(data.len() as u64));
    (Response::ok(Body::Tensor(meta)), data.to_vec(), send)
}

#[tokio::test]
async fn calls_fail_once_the_server_stops_reading_past_the_write_timeout() {
    // Accepts, then never reads: the client's writes fill the socket.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(socket);
    });
    let options = FastClientOptions {
        write_timeout: Some(Duration::from_millis(300)),
        ..FastClientOptions::default()
    };
    let client = FastClient::connect_with(addr, options).await.unwrap();
    let big = vec![7u8; 64 << 20];
    let put = client.put("k", u8_meta(big.len() as u64), big);
    let result = tokio::time::timeout(Duration::from_secs(10), put)
        .await
        .expect("the put waited forever for a server that stopped reading");
    assert!(
        matches!(result, Err(ClientError::Unavailable(_))),
        "{result:?}"
    );
    held.abort();
}

#[tokio::test]
async fn get_into_is_not_retried_once_its_payload_began() {
    // Connection 1 answers one GET in full (so it is kept as a spare),
    // then dies half-way through the next reply; any later connection
    // answers NotFound. A retry would return `None` over a half-written
    // buffer.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = pattern(1 << 20, 9);
    let served = Arc::new(AtomicUsize::new(0));
    let server = {
        let (data, served) = (data.clone(), Arc::clone(&served));
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let nth = served.fetch_add(1, Ordering::SeqCst);
                let data = data.clone();
                tokio::spawn(answer(socket, move |n| match (nth, n) {
                    // The client's shared connection (opened at connect).
                    (0, _) => None,
                    (1, 0) => Some(tensor_reply(&data, data.len())),
                    (1, _) => Some(tensor_reply(&data, data.len() / 2)),
                    _ => Some((Response::error(Status::NotFound, "gone"), Vec::new(), 0)),
                }));
            }
        })
    };
    let client = FastClient::connect(addr).await.unwrap();
    let mut buf = vec![0u8; data.len()];
    assert!(client.get_into("k", &mut buf).await.unwrap().is_some());
    buf.fill(0);
    let second = client.get_into("k", &mut buf).await;
    assert!(
        matches!(second, Err(ClientError::Unavailable(_))),
        "a call that wrote half the buffer must fail, not retry: {second:?}"
    );
    server.abort();
}

#[tokio::test]
async fn get_into_with_a_refused_tensor_leaves_the_buffer_untouched() {
    let server = start_server(1 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let data = pattern(4096, 1);
    client.put("k", u8_meta(4096), data.clone()).await.unwrap();
    let mut buf = vec![0xEEu8; 4096];
    let refused = client
        .get_into_with("k", &mut buf, |meta| {
            assert_eq!(meta.byte_size(), 4096);
            Err(ClientError::InvalidArgument("not this one".into()))
        })
        .await;
    assert!(matches!(refused, Err(ClientError::InvalidArgument(m)) if m == "not this one"));
    assert!(
        buf.iter().all(|&b| b == 0xEE),
        "a refused tensor was written"
    );
    // The connection stayed in step: the next call reads the tensor.
    assert!(client.get_into("k", &mut buf).await.unwrap().is_some());
    assert_eq!(buf, data);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn get_into_connections_are_bounded() {
    // Counts connections; answers every GET with NotFound after a pause,
    // so concurrent calls overlap.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opened = Arc::new(AtomicUsize::new(0));
    let server = {
        let opened = Arc::clone(&opened);
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                opened.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut reader = FrameReader::new(read);
                    while let Ok(Some(head)) = reader.read_head(&LIMITS).await {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let missing = Response::error(Status::NotFound, "no");
                        let frame = encode_frame(
                            Opcode::Get,
                            FLAG_RESPONSE | FLAG_END,
                            head.prefix.request_id,
                            &missing,
                            0,
                        )
                        .unwrap();
                        if write.write_all(&frame).await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
    };
    let options = FastClientOptions {
        max_exclusive: 3,
        ..FastClientOptions::default()
    };
    let client = FastClient::connect_with(addr, options).await.unwrap();
    let calls: Vec<_> = (0..24)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8];
                client.get_into("k", &mut buf).await
            })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap().unwrap().is_none());
    }
    // The shared connection, and at most three of get_into's own.
    assert!(
        opened.load(Ordering::SeqCst) <= 4,
        "{} connections",
        opened.load(Ordering::SeqCst)
    );
    server.abort();
}

#[tokio::test]
async fn a_refused_upload_reports_why_even_as_its_writes_fail() {
    // The server refuses the payload claim, says so, and closes: the
    // client's writer then fails mid-payload, but the call must still get
    // the server's reason, not a bare "connection lost".
    let fast = redstone::fast::FastConfig {
        max_payload: 1 << 20,
        ..redstone::fast::FastConfig::for_budget(1 << 30)
    };
    let server = common::start_server_with(1 << 30, fast).await;
    for _ in 0..10 {
        let client = FastClient::connect(server.fast_addr()).await.unwrap();
        let big = vec![1u8; 64 << 20];
        let err = client
            .put("k", u8_meta(big.len() as u64), big)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::TooLarge(_)), "{err}");
    }
    server.shutdown().await.unwrap();
}
