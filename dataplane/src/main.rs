//! `sluice-dataplane`: executes Sluice config snapshots.
//!
//! The proxy itself (Pingora listeners, routing, filters, live swaps) is being built;
//! today the binary checks a snapshot file the way the proxy will before applying it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use sluice_snapshot::Snapshot;

#[derive(Parser)]
#[command(name = "sluice-dataplane", version, about = "The Sluice data plane")]
struct Cli {
    /// Snapshot file (proto3 JSON or YAML) to load.
    #[arg(long)]
    snapshot: PathBuf,
    /// Validate the snapshot, print a summary and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let text = std::fs::read_to_string(&cli.snapshot).with_context(|| format!("reading {}", cli.snapshot.display()))?;
    let snapshot = Snapshot::from_text(&text)?;
    sluice_snapshot::validate(&snapshot)?;
    let routes: usize = snapshot.listeners.iter().map(|l| l.http_routes.len() + l.tcp_routes.len()).sum();
    println!(
        "snapshot for {}: {} listeners, {routes} routes, {} clusters, {} certificates: valid",
        snapshot.gateway,
        snapshot.listeners.len(),
        snapshot.clusters.len(),
        snapshot.certificates.len()
    );
    if !cli.check {
        bail!("serving is not implemented yet; use --check");
    }
    Ok(())
}
