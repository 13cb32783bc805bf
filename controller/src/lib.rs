//! The Sluice control plane as a library: the push server (`push`), the deployer's
//! renderer (`deploy`), the reconcile pass (`reconcile`) that Kubernetes mode (`cluster`)
//! and standalone mode (`standalone`) both drive, used by the
//! `sluice-controller` and `sluice` binaries.

pub mod cli;
pub mod cluster;
pub mod deploy;
pub mod push;
pub mod reconcile;
pub mod standalone;

/// Seconds since the Unix epoch (the translator's `World::now`: certificate validity).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The instant of `at` (Unix seconds) on tokio's clock, at most a day away (a later time
/// is looked at again then).
pub fn instant_of_unix(at: i64) -> tokio::time::Instant {
    const DAY: u64 = 24 * 3600;
    let wait = u64::try_from(at.saturating_sub(unix_now())).unwrap_or(0).min(DAY);
    tokio::time::Instant::now() + std::time::Duration::from_secs(wait)
}
