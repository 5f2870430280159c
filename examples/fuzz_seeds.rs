//! Writes the seed corpus of every fuzz target to `fuzz/corpus/<target>/`:
//! a few valid inputs each, a few kilobytes in all.
//! `cargo run --example fuzz_seeds`

use std::fs;
use std::path::Path;

use prost::Message;
use redstone::fast::wire::{
    encode, encode_frame, Body, ConditionalPut, Request, Response, Status, WireMeta,
};
use redstone::grpc::proto;
use redstone::tensor::{codec, Tensor};

fn frame(id: u64, request: &Request, payload: &[u8]) -> Vec<u8> {
    let mut f = encode_frame(request.opcode(), 0, id, request, payload.len() as u64).unwrap();
    f.extend_from_slice(payload);
    f
}

fn u8_meta(n: u64) -> WireMeta {
    WireMeta {
        dtype: 5,
        layout: 1,
        encoding: 0,
        shape: vec![n],
    }
}

fn main() -> std::io::Result<()> {
    let requests = [
        (Request::Ping, vec![]),
        (Request::Get { key: "k".into() }, vec![]),
        (
            Request::Put {
                key: "p".into(),
                meta: u8_meta(8),
            },
            vec![1u8; 8],
        ),
        (
            Request::Put {
                key: "k".into(),
                meta: u8_meta(4),
            },
            vec![2u8; 4],
        ),
        (Request::Delete { key: "k".into() }, vec![]),
        (Request::Stats, vec![]),
        (
            Request::GetMany {
                keys: vec!["k".into(), "p".into(), "x".into()],
            },
            vec![],
        ),
        (Request::Digest { key: "p".into() }, vec![]),
        (
            Request::PutIf(Box::new(ConditionalPut {
                key: "q".into(),
                meta: u8_meta(2),
                since: 0u64.to_le_bytes(),
            })),
            vec![3u8; 2],
        ),
        (
            Request::DeleteIf {
                key: "p".into(),
                digest: [0; 8],
            },
            vec![],
        ),
    ];
    let session: Vec<u8> = requests
        .iter()
        .enumerate()
        .flat_map(|(i, (r, p))| frame(i as u64 + 1, r, p))
        .collect();

    let mut seeds: Vec<(&str, Vec<Vec<u8>>)> = Vec::new();
    // frame_decoder: 8 bytes of read sizes, then frames.
    seeds.push((
        "frame_decoder",
        vec![
            [[1u8, 2, 3, 5, 8, 13, 21, 34].as_slice(), &session].concat(),
            [[64u8; 8].as_slice(), &session].concat(),
            [
                [1u8; 8].as_slice(),
                &frame(9, &requests[2].0, &requests[2].1),
            ]
            .concat(),
        ],
    ));
    let responses = [
        Response::ok(Body::Empty),
        Response::ok(Body::Tensor(WireMeta {
            dtype: 1,
            layout: 2,
            encoding: 1,
            shape: vec![2, 3],
        })),
        Response::ok(Body::Deleted(true)),
        Response::error(Status::NotFound, "NotFound: key \"k\" is not cached"),
    ];
    let mut headers: Vec<Vec<u8>> = requests.iter().map(|(r, _)| encode(r).unwrap()).collect();
    headers.extend(responses.iter().map(|r| encode(r).unwrap()));
    seeds.push(("header", headers));
    seeds.push((
        "connection",
        vec![session.clone(), frame(1, &requests[1].0, &[])],
    ));
    // The first byte: after how many reply bytes (× 64) the client stops
    // reading: at once, after a few frames.
    let stalled = |stop: u8| [vec![stop], session.clone()].concat();
    seeds.push(("stalled_connection", vec![stalled(0), stalled(2)]));
    let put = |meta: Option<proto::TensorMeta>, data: Vec<u8>| {
        proto::PutRequest {
            key: "k".into(),
            meta,
            data: data.into(),
        }
        .encode_to_vec()
    };
    seeds.push((
        "grpc_meta",
        vec![
            put(
                Some(proto::TensorMeta {
                    dtype: 1,
                    shape: vec![2, 2],
                    layout: 1,
                }),
                vec![0; 16],
            ),
            put(
                Some(proto::TensorMeta {
                    dtype: 13,
                    shape: vec![],
                    layout: 2,
                }),
                vec![1],
            ),
            put(None, vec![]),
        ],
    ));
    seeds.push((
        "roundtrip",
        vec![
            vec![0],
            b"\x01\x03key".to_vec(),
            b"\x02\x01k\x01\x01\x02\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x03".to_vec(),
            b"\x05\x03\x01a\x01b\x01c\x03\x07\x00\x00\x00".to_vec(),
        ],
    ));

    // packed: a sparse f32 tensor packed (then decoded as a claim of its
    // element count), a dense one, raw bytes to pack.
    let sparse: Vec<f32> = (0..20_000)
        .map(|i| if i % 2 == 0 { 0.0 } else { i as f32 })
        .collect();
    let sparse = Tensor::from_slice(vec![sparse.len() as u64], &sparse).unwrap();
    let runs = Tensor::from_slice::<f32>(vec![70_000], &[1.5; 70_000]).unwrap();
    let claim = |t: &Tensor| {
        let packed = codec::compress(t).unwrap();
        let mut input = vec![0u8];
        input.extend_from_slice(&(t.meta().numel() as u32).to_le_bytes());
        input.extend_from_slice(packed.data());
        input
    };
    seeds.push((
        "packed",
        vec![
            claim(&sparse),
            claim(&runs),
            [vec![0x80], [0, 0, 0, 0, 1, 0, 0, 0].repeat(64)].concat(),
            [vec![0x86], [0x3f, 0x80, 0, 0].repeat(100)].concat(),
        ],
    ));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus");
    for (target, inputs) in seeds {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        for (i, input) in inputs.iter().enumerate() {
            fs::write(dir.join(format!("seed-{i:02}")), input)?;
        }
        println!("{target}: {} seeds", inputs.len());
    }
    Ok(())
}
