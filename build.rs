//! Compiles proto/ into Rust with protox (a pure-Rust protobuf compiler, so no system protoc),
//! tonic for the gRPC service, and pbjson for the canonical proto3 JSON used by `POST /json`.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "envoy/service/ratelimit/v3/rls.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "ratelimit/config/ratelimit/v3/rls_conf.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let descriptor_bytes = descriptors.encode_to_vec();
    fs::write(out_dir.join("descriptors.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(descriptors)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        // proto3 JSON for the RLS messages (`POST /json`); the xDS ones travel as binary only.
        .build(&[
            ".envoy.config",
            ".envoy.extensions",
            ".envoy.service.ratelimit",
            ".envoy.type",
        ])?;
    Ok(())
}
