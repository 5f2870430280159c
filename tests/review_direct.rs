//! Hostile review of frames written "at once" (src/fast/direct.rs): the
//! server's `Queue::queue` and the client's `Link::send` write a frame
//! from the task that made it when nothing is queued ahead of it.
//!
//! `a_reply_is_never_written_after_the_writer_gave_up` failed before its
//! fix (a reply written into a GET payload the writer had given up on);
//! the others cover the new paths.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{pattern, start_server, start_server_with, u8_meta, RawConn};
use redstone::client::{FastClient, FastClientOptions};
use redstone::fast::stream::FrameReader;
use redstone::fast::wire::{
    decode_request, encode, encode_frame, encode_head, Body, Limits, Opcode, Prefix, Request,
    Response, Status, WireMeta, FLAG_END, FLAG_RESPONSE, PREFIX_LEN,
};
use redstone::fast::FastConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMITS: Limits = Limits {
    max_header: 1 << 20,
    max_payload: 1 << 40,
};

fn put_head(id: u64, key: &str, len: u64) -> Vec<u8> {
    let request = Request::Put {
        key: key.into(),
        meta: WireMeta::from(&u8_meta(len)),
    };
    encode_head(Opcode::Put, 0, id, &encode(&request).unwrap(), len)
}

fn get_frame(id: u64, key: &str) -> Vec<u8> {
    let request = Request::Get { key: key.into() };
    encode_head(Opcode::Get, 0, id, &encode(&request).unwrap(), 0)
}

/// Reads `socket` to its end (or until `limit` passes with nothing new).
async fn read_to_end(socket: &mut TcpStream, got: &mut Vec<u8>, limit: Duration) -> bool {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(limit, socket.read(&mut buf)).await {
            Ok(Ok(0)) => return true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return true,
            Err(_) => return false,
        }
    }
}

/// The writer task gives up on a client that stopped reading (the write
/// timeout) in the middle of a 32 MiB reply, while the handler is inside a
/// PUT whose payload still trickles in: the client must read the reply's
/// first part, then the end of the stream. Before its fix the write half
/// lived on in the `Queue`, the writer's holds were gone
/// (`unwritten.none()`), and the PUT's answer was written at once into the
/// middle of the truncated GET payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_is_never_written_after_the_writer_gave_up() {
    let fast = FastConfig {
        write_timeout: Duration::from_millis(400),
        ..FastConfig::for_budget(256 << 20)
    };
    let server = start_server_with(256 << 20, fast).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let big = pattern(32 << 20, 5);
    client
        .put("big", u8_meta(big.len() as u64), big.clone())
        .await
        .unwrap();
    let mut socket = TcpStream::connect(server.fast_addr()).await.unwrap();
    socket.write_all(&get_frame(1, "big")).await.unwrap();
    // The GET is answered; its reply fills the socket and the writer stalls.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A PUT whose payload comes a byte at a time, faster than the stall
    // limit on uploads, for longer than the write timeout.
    let payload = pattern(64, 6);
    socket.write_all(&put_head(2, "p", 64)).await.unwrap();
    for b in &payload[..12] {
        socket.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The writer has given up. Make room, then finish the PUT.
    let mut got = Vec::new();
    while got.len() < 1 << 20 {
        let mut buf = vec![0u8; 1 << 20];
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "ended after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    socket.write_all(&payload[12..]).await.unwrap();
    let ended = read_to_end(&mut socket, &mut got, Duration::from_secs(5)).await;
    let prefix = Prefix::parse(&got).unwrap().unwrap();
    assert_eq!(prefix.request_id, 1);
    let rest = &got[PREFIX_LEN + prefix.header_len as usize..];
    assert!(
        rest.len() < big.len(),
        "the writer gave up: the reply is cut short"
    );
    let first_bad = rest.iter().zip(&big).position(|(a, b)| a != b);
    let intruder = first_bad.and_then(|at| Prefix::parse(&rest[at..]).ok().flatten());
    assert_eq!(
        first_bad,
        None,
        "{} bytes after the GET reply's head: bytes not of its payload at {first_bad:?}, \
         a frame's prefix there: {intruder:?}",
        rest.len()
    );
    assert!(ended, "the connection ends");
    server.shutdown().await.unwrap();
}

/// The server's paths, one request at a time (written at once) and
/// pipelined (queued, batched): a GET alone; a burst of GETs and a PING in
/// one write; a PUT whose payload comes in two parts, the second with a GET
/// behind it (the PUT said "direct" with only part of its payload
/// buffered); a DELETE and a GET_MANY pipelined. Every reply comes whole,
/// in order, its payload intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_replies_at_once_and_pipelined_stay_whole_and_in_order() {
    let server = start_server(64 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let values: Vec<Vec<u8>> = (0..8).map(|i| pattern(1000 + 4000 * i, i as u64)).collect();
    for (i, v) in values.iter().enumerate() {
        client
            .put(&format!("k{i}"), u8_meta(v.len() as u64), v.clone())
            .await
            .unwrap();
    }
    let mut raw = RawConn::connect(server.fast_addr()).await;
    // One at a time.
    for (i, v) in values.iter().enumerate() {
        raw.send(
            i as u64 + 1,
            &Request::Get {
                key: format!("k{i}"),
            },
            &[],
        )
        .await;
        let (prefix, response, payload) = raw.recv().await.unwrap();
        assert_eq!(prefix.request_id, i as u64 + 1);
        assert_eq!(response.status, Status::Ok as u16, "{response:?}");
        assert_eq!(payload.as_ref(), v.as_slice());
    }
    // Pipelined in one write.
    let mut burst = Vec::new();
    for round in 0..4u64 {
        for (i, _) in values.iter().enumerate() {
            burst.extend(get_frame(100 + round * 10 + i as u64, &format!("k{i}")));
        }
    }
    burst.extend(encode_head(
        Opcode::Ping,
        0,
        999,
        &encode(&Request::Ping).unwrap(),
        0,
    ));
    raw.send_bytes(&burst).await.unwrap();
    for round in 0..4u64 {
        for (i, v) in values.iter().enumerate() {
            let (prefix, _, payload) = raw.recv().await.unwrap();
            assert_eq!(prefix.request_id, 100 + round * 10 + i as u64);
            assert_eq!(payload.as_ref(), v.as_slice());
        }
    }
    assert_eq!(raw.recv().await.unwrap().0.request_id, 999);
    // A PUT with part of its payload, then the rest with a GET behind it.
    let data = pattern(300_000, 77);
    let mut first = put_head(2000, "fresh", data.len() as u64);
    first.extend_from_slice(&data[..1000]);
    raw.send_bytes(&first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut second = data[1000..].to_vec();
    second.extend(get_frame(2001, "fresh"));
    raw.send_bytes(&second).await.unwrap();
    let (prefix, response, _) = raw.recv().await.unwrap();
    assert_eq!(prefix.request_id, 2000);
    assert_eq!(response.status, Status::Ok as u16, "{response:?}");
    let (prefix, _, payload) = raw.recv().await.unwrap();
    assert_eq!(prefix.request_id, 2001);
    assert!(payload.as_ref() == data.as_slice());
    // DELETE then GET_MANY then GET, pipelined.
    let mut mixed = Vec::new();
    let delete = Request::Delete { key: "k0".into() };
    mixed.extend(encode_head(
        Opcode::Delete,
        0,
        3000,
        &encode(&delete).unwrap(),
        0,
    ));
    let many = Request::GetMany {
        keys: vec!["k1".into(), "k0".into(), "k2".into()],
    };
    mixed.extend(encode_head(
        Opcode::GetMany,
        0,
        3001,
        &encode(&many).unwrap(),
        0,
    ));
    mixed.extend(get_frame(3002, "k3"));
    raw.send_bytes(&mixed).await.unwrap();
    assert_eq!(raw.recv().await.unwrap().0.request_id, 3000);
    let mut frames = 0;
    loop {
        let (prefix, _, _) = raw.recv().await.unwrap();
        if prefix.request_id == 3002 {
            break;
        }
        assert_eq!(prefix.request_id, 3001, "the batch's frames come together");
        frames += 1;
    }
    assert_eq!(frames, 3, "one frame per key of the batch, then the GET");
    server.shutdown().await.unwrap();
}

/// Callers cancelled at every await of a send (a timeout of a few hundred
/// microseconds, a queue of one frame so that most wait for room) never
/// leave part of a frame on the wire: a slow fake server checks that every
/// frame it reads is a well-formed request with an intact payload, and the
/// client still works afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_callers_never_leave_part_of_a_frame() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, write) = socket.into_split();
        let write = Arc::new(tokio::sync::Mutex::new(write));
        let mut reader = FrameReader::new(read);
        let mut seen = 0usize;
        while let Some(head) = reader.read_head(&LIMITS).await.unwrap() {
            let id = head.prefix.request_id;
            match decode_request(&head.header, id).unwrap() {
                Request::Put { key, .. } => {
                    let payload = reader.read_payload(head.prefix.payload_len).await.unwrap();
                    let seed: u64 = key.parse().unwrap();
                    assert!(
                        payload.as_ref() == pattern(payload.len(), seed).as_slice(),
                        "put {key} intact"
                    );
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                Request::Ping => {}
                other => panic!("unexpected {other:?}"),
            }
            let ok = Response::ok(Body::Empty);
            let frame =
                encode_frame(head.prefix.opcode, FLAG_RESPONSE | FLAG_END, id, &ok, 0).unwrap();
            write.lock().await.write_all(&frame).await.unwrap();
            seen += 1;
        }
        seen
    });
    let options = FastClientOptions {
        queue: 1,
        ..FastClientOptions::default()
    };
    let client = FastClient::connect_with(addr, options).await.unwrap();
    let mut calls = Vec::new();
    for t in 0..8u64 {
        let c = client.clone();
        calls.push(tokio::spawn(async move {
            for i in 0..40u64 {
                let seed = t * 1000 + i;
                let len = [10, 70_000, 300_000][(i % 3) as usize];
                let data = pattern(len, seed);
                let patience = Duration::from_micros(100 + 150 * (i % 7));
                let key = seed.to_string();
                let put = c.put(&key, u8_meta(len as u64), data);
                let _ = tokio::time::timeout(patience, put).await;
                let _ = tokio::time::timeout(patience, c.ping()).await;
            }
        }));
    }
    for call in calls {
        call.await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), client.ping())
        .await
        .expect("the connection still answers")
        .unwrap();
    drop(client);
    let seen = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the client's end reaches the server")
        .unwrap();
    assert!(seen > 0);
}

/// `FastClient::reset()` ends the connection for the server at once, even
/// after requests were written at once from callers' tasks (no writer task
/// wake-up) and while a clone of the client lives on.
#[tokio::test]
async fn reset_ends_the_connection_for_the_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, mut write) = socket.into_split();
        let mut reader = FrameReader::new(read);
        let mut seen = 0usize;
        while let Ok(Some(head)) = reader.read_head(&LIMITS).await {
            let id = head.prefix.request_id;
            let ok = Response::ok(Body::Empty);
            let frame =
                encode_frame(head.prefix.opcode, FLAG_RESPONSE | FLAG_END, id, &ok, 0).unwrap();
            let _ = write.write_all(&frame).await;
            seen += 1;
        }
        seen
    });
    let client = FastClient::connect(addr).await.unwrap();
    let _clone = client.clone();
    for _ in 0..5 {
        client.ping().await.unwrap();
    }
    client.reset();
    let seen = tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("the server sees the connection end")
        .unwrap();
    assert_eq!(seen, 5);
}

/// The local door: memfd replies (queued, their descriptor sent with
/// their bytes) and small replies (written at once when nothing is queued)
/// interleave from many tasks on one connection; every tensor comes back
/// with its own bytes, so no descriptor went with the wrong frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_door_descriptors_stay_with_their_frames() {
    use common::local::LocalServer;
    let local = LocalServer::start(
        "review_direct_fds",
        512 << 20,
        256 << 20,
        0o600,
        FastConfig::for_budget(512 << 20),
    )
    .await;
    let client = local.client().await;
    let sizes = [100usize, 300 << 10, 2000, 1 << 20, 64];
    for (i, &len) in sizes.iter().enumerate() {
        client
            .put(
                &format!("t{i}"),
                u8_meta(len as u64),
                pattern(len, i as u64),
            )
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for t in 0..8usize {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..30usize {
                let i = (t + round) % sizes.len();
                let got = c.get(&format!("t{i}")).await.unwrap().expect("stored");
                assert!(
                    got.data().as_ref() == pattern(sizes[i], i as u64).as_slice(),
                    "t{i} came back with its own bytes"
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    drop(client);
    local.leased_becomes(0).await;
    local.server.shutdown().await.unwrap();
}
