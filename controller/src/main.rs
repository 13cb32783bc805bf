//! `sluice-controller`: the Sluice control plane.
//!
//! Today it offers `translate`, which runs the translator on manifest files and prints
//! the status and snapshots Sluice would produce: the quickest way to see why a route is
//! not accepted. The Kubernetes watches, push server and standalone mode build on the
//! same translator.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sluice_translate::{World, translate};

#[derive(Parser)]
#[command(name = "sluice-controller", version, about = "The Sluice Gateway API control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Translate Gateway API manifests (files or directories of *.yaml) and print the
    /// resulting status and per-Gateway snapshots as YAML.
    Translate {
        /// Manifest files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print only the status, not the snapshots.
        #[arg(long)]
        status_only: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Translate { paths, status_only } => {
            let mut text = String::new();
            for path in &paths {
                read_manifests(path, &mut text)?;
            }
            let (world, skipped) = World::from_manifests(&text);
            for skip in &skipped {
                let at = skip.document.map(|d| format!("document {d} ")).unwrap_or_default();
                eprintln!("skipped {at}{}: {}", skip.object, skip.reason);
            }
            let output = translate(&world);
            let rendered = if status_only {
                serde_yaml::to_string(&output.status)?
            } else {
                let mut output = output;
                for gateway in output.gateways.values_mut() {
                    for certificate in &mut gateway.snapshot.certificates {
                        certificate.private_key_pem = "<redacted>".into();
                    }
                }
                serde_yaml::to_string(&output)?
            };
            print!("{rendered}");
            Ok(())
        }
    }
}

/// Appends the manifests at `path` (a file, or every *.yaml/*.yml below a directory, in
/// name order) to `text`, as separate YAML documents.
fn read_manifests(path: &Path, text: &mut String) -> Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {}", path.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            let is_yaml = entry.extension().is_some_and(|ext| ext == "yaml" || ext == "yml");
            if entry.is_dir() || is_yaml {
                read_manifests(&entry, text)?;
            }
        }
        return Ok(());
    }
    let content = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.push_str("\n---\n");
    text.push_str(&content);
    text.push('\n');
    Ok(())
}
