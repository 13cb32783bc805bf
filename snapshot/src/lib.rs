//! The Sluice config snapshot: everything one Gateway's data plane serves.
//!
//! ```text
//!  translate ──► Snapshot (gen 0, no hash) ──► Versioner::stamp ──► push ──► data plane
//!                                                                      validate() + compile
//! ```
//!
//! The types are generated from `proto/sluice/snapshot/v1/snapshot.proto` (prost) with
//! proto3-JSON serde impls (pbjson), so a snapshot travels as protobuf over gRPC and as
//! JSON/YAML in files and golden tests. This crate knows neither kube nor pingora.

pub mod compile;
pub mod delta;
pub mod digest;
pub mod edits;
mod hash;
mod origin;
pub mod room;
mod validate;

pub use delta::DeltaError;
pub use hash::{Versioner, content_hash, encode_with_version, hash_encoded};
pub use validate::{
    ADMIN_PORT, DATA_PLANE_ALLOCATOR_ENV, MAX_RETRY_ATTEMPTS, Piece, Problem, ValidationError, http_route_problems,
    plain_cluster_valid, problems, valid_header_value, valid_hostname, valid_path_value, valid_token, validate,
};

/// Generated snapshot types (`sluice.snapshot.v1`).
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/sluice.snapshot.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/sluice.snapshot.v1.serde.rs"));
}

pub use v1::*;

/// The push service between controller and data planes (`sluice.push.v1`): messages and
/// tonic client/server stubs. Enabled by the `grpc` feature.
#[cfg(feature = "grpc")]
#[allow(clippy::all, missing_docs)]
pub mod push {
    include!(concat!(env!("OUT_DIR"), "/sluice.push.v1.rs"));
}

/// The gRPC echo service of the built-in test backends (`sluice.echo.v1`): messages and
/// tonic client/server stubs. Enabled by the `grpc` feature.
#[cfg(feature = "grpc")]
#[allow(clippy::all, missing_docs)]
pub mod echo {
    include!(concat!(env!("OUT_DIR"), "/sluice.echo.v1.rs"));
}

/// Errors reading a snapshot file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is neither valid JSON nor YAML of a snapshot.
    #[error("cannot parse snapshot: {0}")]
    Parse(String),
}

impl Snapshot {
    /// Parses a snapshot from its JSON or YAML form (proto3 JSON field names).
    pub fn from_text(text: &str) -> Result<Self, Error> {
        match serde_json::from_str(text) {
            Ok(snapshot) => Ok(snapshot),
            // No snippet of the text in the error: a snapshot holds private keys.
            Err(json_err) => serde_saphyr::from_str_with_options(text, serde_saphyr::options! { with_snippet: false })
                .map_err(|yaml_err| Error::Parse(format!("as JSON: {json_err}; as YAML: {yaml_err}"))),
        }
    }
}
