//! Compiles the snapshot .proto with a vendored protoc, so no system install is needed,
//! and derives proto3-JSON serde impls (pbjson) for snapshot files and golden tests.
//! With the `grpc` feature it also generates the tonic stubs of the push service and of
//! the echo service the built-in test backends speak.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("snapshot_descriptor.bin");
    let proto = "proto/sluice/snapshot/v1/snapshot.proto";
    let push = "proto/sluice/push/v1/push.proto";
    let echo = "proto/sluice/echo/v1/echo.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed={push}");
    println!("cargo:rerun-if-changed={echo}");

    prost_build::Config::new()
        .protoc_executable(&protoc)
        .file_descriptor_set_path(&descriptor_path)
        .compile_protos(&[proto], &["proto"])?;

    let descriptors = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new().register_descriptors(&descriptors)?.build(&[".sluice.snapshot.v1"])?;

    if env::var_os("CARGO_FEATURE_GRPC").is_some() {
        let mut config = prost_build::Config::new();
        config.protoc_executable(&protoc);
        // Snapshots travel as `Bytes`: encoded once, shared by every stream.
        config.bytes([".sluice.push.v1.ControlPlaneMessage.snapshot", ".sluice.push.v1.ControlPlaneMessage.delta"]);
        tonic_prost_build::configure().extern_path(".sluice.snapshot.v1", "crate::v1").compile_with_config(
            config,
            &[push],
            &["proto"],
        )?;
        let mut config = prost_build::Config::new();
        config.protoc_executable(&protoc);
        tonic_prost_build::configure().compile_with_config(config, &[echo], &["proto"])?;
    }
    Ok(())
}
