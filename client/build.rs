//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and generates tonic stubs.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let files = [
        root.join("txpipe/broker/v1/broker.proto"),
        root.join("txpipe/pipeline/v1/pipeline.proto"),
        root.join("txpipe/ledger/v1/ledger.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("txpipe_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .bytes(".txpipe.broker.v1.Record")
        .compile_fds(fds)?;
    Ok(())
}
