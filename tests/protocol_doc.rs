//! docs/PROTOCOL.md's example frames are what the encoder produces.

use redstone::fast::wire::{
    encode, encode_head, Body, Opcode, Request, Response, WireMeta, FLAG_END, FLAG_RESPONSE,
};

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|c| {
            c.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The ```hex blocks of the protocol document, in order.
fn doc_examples() -> Vec<String> {
    let doc = include_str!("../docs/PROTOCOL.md");
    doc.split("```hex\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().trim().to_string())
        .collect()
}

#[test]
fn protocol_doc_examples_match_the_encoder() {
    let get = encode(&Request::Get { key: "k".into() }).unwrap();
    let put = encode(&Request::Put {
        key: "w".into(),
        meta: WireMeta {
            dtype: 1,
            layout: 1,
            encoding: 0,
            shape: vec![2],
        },
    })
    .unwrap();
    let mut put_frame = encode_head(Opcode::Put, 0, 2, &put, 8);
    for v in [1.0f32, 2.0] {
        put_frame.extend_from_slice(&v.to_le_bytes());
    }
    let ok = encode(&Response::ok(Body::Empty)).unwrap();
    let expected = [
        hex(&encode_head(Opcode::Get, 0, 1, &get, 0)),
        hex(&put_frame),
        hex(&encode_head(
            Opcode::Put,
            FLAG_RESPONSE | FLAG_END,
            2,
            &ok,
            0,
        )),
    ];
    let documented = doc_examples();
    assert_eq!(documented.len(), expected.len());
    for (doc, actual) in documented.iter().zip(&expected) {
        assert_eq!(
            doc, actual,
            "docs/PROTOCOL.md is out of date; the encoder says:\n{actual}"
        );
    }
}
