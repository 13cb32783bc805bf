//! `sluice`: the whole of Sluice in one program, for laptops and quick starts.
//!
//! `sluice run DIR` serves the Gateways defined in DIR on localhost; each Gateway's data
//! plane is this same program started as `sluice dataplane ...`. `sluice translate`
//! prints what Sluice makes of manifests.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Sluice: a Gateway API implementation (standalone mode)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Controller(sluice_controller::cli::Command),
    /// Run a data plane (the `sluice-dataplane` program).
    Dataplane(Box<sluice_dataplane::Cli>),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Controller(command) => {
            let exe = std::env::current_exe()?;
            sluice_controller::cli::execute(command, vec![exe.into_os_string(), "dataplane".into()])
        }
        Command::Dataplane(cli) => sluice_dataplane::run(*cli),
    }
}

/// mimalloc: translation allocates heavily, and glibc's allocator made propagation at
/// 5000 routes ~1.5× slower. (The Kubernetes data plane, `sluice-dataplane`, keeps
/// glibc's allocator for its smaller memory footprint.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
