//! Compiles `proto/` with the pure-Rust `protox` compiler (no system `protoc`), generates the
//! prost messages and tonic services, and writes the file descriptor set for server reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/taizhang/v1/records.proto",
        "proto/taizhang/v1/ledger.proto",
        "proto/taizhang/v1/audit.proto",
        "proto/taizhang/v1/witness.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("taizhang_descriptor.bin"), &descriptor)?;
    // Proto3 JSON mapping (enums by name, bytes as base64) for the CLI's record files.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor)?
        .build(&[".taizhang"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
