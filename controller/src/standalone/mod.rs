//! Standalone mode: Gateway API YAML in a directory in, traffic served on localhost.
//!
//! ```text
//!  DIR/*.yaml ──inotify (+2 s rescan)──► Manifests (per-file cache) ──► World ──► translate
//!      │                                                                │ per Gateway
//!      │   echo backends for Services annotated standalone.sluice.dev/echo  ▼
//!      └──────────────────────────────────────────────► PushServer::publish (mTLS, loopback)
//!                                                          │ gRPC stream
//!                         one data-plane process per Gateway ◄┘ ACK/NACK ──► status report
//! ```
//!
//! It runs the same translator and the same push path as the Kubernetes controller; the
//! data planes are child processes that exit with it.
//!
//! It drives the shared reconcile pass (`crate::reconcile`): the provider is the
//! directory, the sink the printed report and the status file. Files: `run.rs` the loop,
//! `files.rs` the directory watch, `dataplanes.rs` the data-plane processes,
//! `backends.rs` the echo backends, `report.rs` the report and the status file.

pub mod echo;
pub mod grpc_echo;
pub mod manifests;

mod backends;
mod dataplanes;
mod files;
mod report;
mod run;

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

/// Annotation on a Service: standalone mode runs an echo backend at each of its static
/// EndpointSlice addresses (loopback only): `"true"` an HTTP (or, for UDP ports, a UDP)
/// echo, `"grpc"` the gRPC echo (`sluice.echo.v1.Echo`, h2c).
pub const ECHO_ANNOTATION: &str = "standalone.sluice.dev/echo";

/// What `sluice run` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The directory of manifests.
    pub dir: PathBuf,
    /// The command that starts a data plane (program and leading arguments); the push
    /// link's arguments are appended.
    pub dataplane: Vec<OsString>,
    /// Where the full status is written as YAML after every change.
    pub status_file: Option<PathBuf>,
    /// The address data-plane listeners bind to.
    pub bind: IpAddr,
    /// How long the directory must be quiet before a change is applied.
    pub quiet_period: Duration,
    /// Print only problems, not every status change.
    pub quiet: bool,
}

/// Runs standalone mode until `shutdown` completes.
pub async fn run(options: Options, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    anyhow::ensure!(options.dir.is_dir(), "{} is not a directory", options.dir.display());
    remove_stale_state_dirs();
    let state_dir = std::env::temp_dir().join(format!("sluice-run-{}", std::process::id()));
    create_private_dir(&state_dir)?;
    let result = run::run_in(&options, &state_dir, shutdown).await;
    let _ = std::fs::remove_dir_all(&state_dir);
    result
}

/// Removes the state directories (CA and client keys) of `sluice run` processes that no
/// longer exist, e.g. after a SIGKILL.
fn remove_stale_state_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("sluice-run-")).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

fn write_private(path: &Path, content: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(content.as_bytes())?;
    Ok(())
}
