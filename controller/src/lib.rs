//! The Sluice control plane as a library: the push server (`push`), the deployer's
//! renderer (`deploy`) and standalone mode (`standalone`), used by the
//! `sluice-controller` and `sluice` binaries.

pub mod cli;
pub mod cluster;
pub mod deploy;
pub mod push;
pub mod standalone;

/// Seconds since the Unix epoch (the translator's `World::now`: certificate validity).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
