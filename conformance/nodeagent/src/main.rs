//! `sluice-nodeagent`: the node of the local test cluster (conformance/cluster).
//!
//! Stands in for kubelet and a container runtime: registers one Ready Node and
//! keeps its Lease fresh, binds pending pods to it, and runs every container
//! of a bound pod as a local process inside the pod's own network namespace
//! (veth on the host bridge, a pod IP from the test range). Images map to
//! local binaries (`--image echo-basic=/path/to/echo-basic`) or to OCI image
//! archives (`--image sluice-dataplane=/path/sluice-dataplane.tar`), which run
//! in their own root filesystem with the pod's user, groups and read-only root,
//! as a container runtime would. Container output
//! is kept as CRI-format log files and served to the API server for
//! `kubectl logs`. See conformance/cluster/README.md.

mod image;
mod logs;
mod node;
mod pods;
mod probe;
mod sandbox;
mod spec;
mod volumes;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Parser;

/// Command line of the node agent.
#[derive(Parser, Debug, Clone)]
#[command(name = "sluice-nodeagent", version, about)]
pub struct Cli {
    /// Node name to register.
    #[arg(long, default_value = "sluice-node")]
    pub node_name: String,
    /// Host bridge the pod veths join; it must exist and own --node-ip.
    #[arg(long, default_value = "sluice0")]
    pub bridge: String,
    /// The node's address: the bridge's IP, the pods' gateway, where the log
    /// server listens and what the Node reports as InternalIP.
    #[arg(long, default_value = "198.18.0.1")]
    pub node_ip: Ipv4Addr,
    /// Prefix length of the pod network on the bridge.
    #[arg(long, default_value_t = 16)]
    pub pod_prefix: u8,
    /// The whole test range; pod namespaces get a route for it and nothing else.
    #[arg(long, default_value = "198.18.0.0/15")]
    pub test_range: String,
    /// Image map, NAME=PATH; NAME is the image's last path element without tag
    /// or digest (`gcr.io/x/echo-basic:v1` → `echo-basic`). PATH is a host binary,
    /// or an OCI image archive when it ends in `.tar`. Repeatable.
    #[arg(long = "image", value_parser = parse_image)]
    pub images: Vec<(String, PathBuf)>,
    /// Directory for pod state: volumes, logs, pid files.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Port of the kubelet API (container logs) on --node-ip.
    #[arg(long, default_value_t = 10250)]
    pub kubelet_port: u16,
    /// Host and port pods use to reach the API server (KUBERNETES_SERVICE_HOST/PORT).
    #[arg(long, default_value = "198.19.0.1")]
    pub kubernetes_service_host: String,
    #[arg(long, default_value_t = 443)]
    pub kubernetes_service_port: u16,
}

fn parse_image(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or_else(|| format!("expected NAME=PATH, got {s:?}"))?;
    if name.is_empty() || path.is_empty() {
        return Err(format!("expected NAME=PATH, got {s:?}"));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

/// What every part of the agent shares.
pub struct Agent {
    pub cli: Cli,
    pub client: kube::Client,
    pub images: HashMap<String, PathBuf>,
    /// Images that are OCI archives (NAME → archive), unpacked on first use.
    pub archives: HashMap<String, PathBuf>,
    pub unpacked: image::Cache,
    pub ips: sandbox::IpPool,
    pub pods: pods::Registry,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("sluice-nodeagent: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async_main(cli))
}

async fn async_main(cli: Cli) -> Result<()> {
    let (mut images, mut archives) = (HashMap::new(), HashMap::new());
    for (name, path) in &cli.images {
        if !path.is_file() {
            bail!("--image {name}={}: no such file", path.display());
        }
        if path.extension().is_some_and(|e| e == "tar") {
            archives.insert(name.clone(), path.clone());
        } else {
            images.insert(name.clone(), path.clone());
        }
    }
    sandbox::check_bridge(&cli.bridge, cli.node_ip).await?;
    std::fs::create_dir_all(cli.state_dir.join("pods"))
        .with_context(|| format!("creating {}", cli.state_dir.display()))?;
    // A previous agent's sandboxes are gone with it: their processes are
    // killed and namespaces removed; the pods start again from the API.
    sandbox::sweep(&cli.state_dir).await;

    let client = kube::Client::try_default().await.context("connecting to the API server (KUBECONFIG)")?;
    let ips = sandbox::IpPool::new(cli.node_ip, cli.pod_prefix)?;
    let agent = Arc::new(Agent {
        cli,
        client,
        images,
        archives,
        unpacked: image::Cache::default(),
        ips,
        pods: pods::Registry::default(),
    });

    node::register(&agent).await?;
    let logs = tokio::spawn(logs::serve(agent.clone()));
    let heartbeat = tokio::spawn(node::heartbeat(agent.clone()));
    let pods = tokio::spawn(pods::run(agent.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping pods"),
        _ = term.recv() => tracing::info!("terminated; stopping pods"),
        r = logs => bail!("log server ended: {r:?}"),
        r = heartbeat => bail!("heartbeat ended: {r:?}"),
        r = pods => bail!("pod loop ended: {r:?}"),
    }
    pods::shutdown(&agent).await;
    sandbox::sweep(&agent.cli.state_dir).await;
    Ok(())
}
