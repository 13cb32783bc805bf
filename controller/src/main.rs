//! `sluice-controller`: the Sluice control plane.
//!
//! `translate` runs the translator on manifest files and prints the status and snapshots
//! Sluice would produce: the quickest way to see why a route is not accepted. `run` is
//! standalone mode: it serves a directory of manifests on this machine, starting the
//! `sluice-dataplane` program installed beside this one.

use clap::Parser;
use sluice_controller::cli::{Command, execute};

#[derive(Parser)]
#[command(name = "sluice-controller", version, about = "The Sluice Gateway API control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn main() -> anyhow::Result<()> {
    let dataplane = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("sluice-dataplane")))
        .map_or_else(|| "sluice-dataplane".into(), |path| path.into_os_string());
    execute(Cli::parse().command, vec![dataplane])
}

/// mimalloc: translation allocates heavily, and glibc's allocator made it ~1.5× slower.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
