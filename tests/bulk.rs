//! Large payloads leave the shared connection: a GET flagged `NOT_BULK`
//! (protocol version 3) of a tensor over `BULK_THRESHOLD` is answered
//! `Bulk` without its payload, and the client fetches it on an exclusive
//! connection, so small replies are never queued behind it.

mod common;

use common::{pattern, start_server, u8_meta, RawConn};
use redstone::client::FastClient;
use redstone::fast::wire::{
    encode, encode_frame_as, encode_head, Opcode, Request, Status, BULK_THRESHOLD, FLAG_NOT_BULK,
};

fn flagged_get(id: u64, key: &str, version: u8, flags: u8) -> Vec<u8> {
    let request = Request::Get { key: key.into() };
    encode_frame_as(version, request.opcode(), flags, id, &request, 0).unwrap()
}

#[tokio::test]
async fn a_flagged_get_of_a_large_tensor_is_answered_bulk_without_its_payload() {
    let server = start_server(64 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let big = BULK_THRESHOLD + 1;
    client
        .put("big", u8_meta(big), pattern(big as usize, 1))
        .await
        .unwrap();
    client
        .put(
            "edge",
            u8_meta(BULK_THRESHOLD),
            pattern(BULK_THRESHOLD as usize, 2),
        )
        .await
        .unwrap();

    let mut raw = RawConn::connect(server.fast_addr()).await;
    // The large one first, then a small one behind it: both answered at
    // once, the first without a payload.
    let mut frames = flagged_get(1, "big", 3, FLAG_NOT_BULK);
    frames.extend(flagged_get(2, "edge", 3, FLAG_NOT_BULK));
    frames.extend(flagged_get(3, "big", 3, 0));
    frames.extend(flagged_get(4, "missing", 3, FLAG_NOT_BULK));
    raw.send_bytes(&frames).await.unwrap();

    let (prefix, response, payload) = raw.recv().await.unwrap();
    assert_eq!((prefix.request_id, response.status()), (1, Status::Bulk));
    assert!(payload.is_empty() && prefix.payload_len == 0);
    // At the threshold: sent inline.
    let (prefix, response, payload) = raw.recv().await.unwrap();
    assert_eq!((prefix.request_id, response.status()), (2, Status::Ok));
    assert_eq!(payload.len() as u64, BULK_THRESHOLD);
    // Unflagged: the payload, as before.
    let (prefix, response, payload) = raw.recv().await.unwrap();
    assert_eq!((prefix.request_id, response.status()), (3, Status::Ok));
    assert_eq!(&payload[..], &pattern(big as usize, 1)[..]);
    let (prefix, response, _) = raw.recv().await.unwrap();
    assert_eq!(
        (prefix.request_id, response.status()),
        (4, Status::NotFound)
    );
}

#[tokio::test]
async fn the_flag_is_malformed_before_version_3_and_off_a_get() {
    let server = start_server(1 << 20).await;
    for frame in [
        flagged_get(1, "k", 2, FLAG_NOT_BULK),
        encode_head(
            Opcode::Delete,
            FLAG_NOT_BULK,
            1,
            &encode(&Request::Delete { key: "k".into() }).unwrap(),
            0,
        ),
    ] {
        let mut raw = RawConn::connect(server.fast_addr()).await;
        raw.send_bytes(&frame).await.unwrap();
        let (_, response, _) = raw.recv().await.unwrap();
        assert_eq!(response.status(), Status::Malformed);
        assert!(raw.recv().await.is_none(), "fatal: the server closes");
    }
}

#[tokio::test]
async fn the_client_gets_large_tensors_whole_through_the_bulk_route() {
    let server = start_server(256 << 20).await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let sizes = [
        BULK_THRESHOLD - 1,
        BULK_THRESHOLD,
        BULK_THRESHOLD + 1,
        16 << 20,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let key = format!("t{i}");
        let data = pattern(size as usize, i as u64);
        client.put(&key, u8_meta(size), data.clone()).await.unwrap();
        let got = client.get(&key).await.unwrap().expect("cached");
        assert_eq!(got.data().len(), data.len());
        assert!(got.data()[..] == data[..], "{size} bytes");
    }
    assert!(client.get("missing").await.unwrap().is_none());
    // Concurrent large and small gets on one client all come back right.
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let key = if i % 2 == 0 { "t3" } else { "t0" };
            let got = client.get(key).await.unwrap().unwrap();
            got.data().len() as u64
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let expected = if i % 2 == 0 { sizes[3] } else { sizes[0] };
        assert_eq!(task.await.unwrap(), expected);
    }
}

/// The fast-path GETs the server answered with `status`, from `/metrics`.
async fn gets_answered(server: &redstone::server::ServerHandle, status: &str) -> f64 {
    let addr = server.metrics_addr().expect("metrics served");
    let (code, body) = common::http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    body.lines()
        .filter(|l| l.starts_with("redstone_requests_total{"))
        .filter(|l| {
            l.contains(r#"door="fast""#)
                && l.contains(r#"op="get""#)
                && l.contains(&format!(r#"status="{status}""#))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A plain `get` of a large tensor never puts its payload on the shared
/// connection: the server saw it flagged and answered `Bulk` there, then
/// sent it on an exclusive connection. Small ones stay inline.
#[tokio::test]
async fn the_client_routes_large_payloads_off_its_shared_connection() {
    let server = common::start_server_with_metrics(
        256 << 20,
        redstone::fast::FastConfig::for_budget(256 << 20),
    )
    .await;
    let client = FastClient::connect(server.fast_addr()).await.unwrap();
    let big = 8u64 << 20;
    client
        .put("big", u8_meta(big), pattern(big as usize, 9))
        .await
        .unwrap();
    client
        .put("small", u8_meta(3072), pattern(3072, 3))
        .await
        .unwrap();
    for _ in 0..3 {
        let got = client.get("big").await.unwrap().unwrap();
        assert!(got.data()[..] == pattern(big as usize, 9)[..]);
        assert_eq!(
            client.get("small").await.unwrap().unwrap().data().len(),
            3072
        );
    }
    assert_eq!(gets_answered(&server, "bulk").await, 3.0);
    assert_eq!(gets_answered(&server, "ok").await, 6.0);
}
