//! Compiles `proto/redstone.proto` with protox, a pure-Rust protobuf compiler,
//! so building Redstone never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/redstone.proto");
    let fds = protox::compile(["redstone.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // `bytes` fields decode as `bytes::Bytes`: a payload is split out of
        // the receive buffer, not copied into a fresh `Vec`.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
