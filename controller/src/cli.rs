//! The control plane's commands, shared by `sluice-controller` and the all-in-one `sluice`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use sluice_translate::{World, translate};

use crate::standalone;

#[derive(Subcommand, Debug)]
pub enum Command {
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
    /// Standalone mode: serve the Gateways defined in a directory of Gateway API YAML on
    /// this machine, one data-plane process per Gateway, following every file change.
    Run {
        /// The directory of manifests (GatewayClass, Gateway, routes, ReferenceGrants,
        /// Services with static EndpointSlices, Secrets).
        dir: PathBuf,
        /// Write the full status as YAML to this file after every change.
        #[arg(long, default_value = "sluice-status.yaml")]
        status_file: PathBuf,
        /// The address the Gateways' listeners bind to.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// How long the directory must be quiet before a change is applied (ms).
        #[arg(long, default_value_t = 5)]
        quiet_ms: u64,
        /// Print only problems, not every status change.
        #[arg(long)]
        quiet: bool,
        /// The data-plane program (default: the one installed beside this program).
        #[arg(long)]
        dataplane: Option<PathBuf>,
    },
    /// Kubernetes mode: watch the cluster (in-cluster config or KUBECONFIG), deploy a data
    /// plane per Gateway, push its configuration, write status.
    Kubernetes(KubernetesArgs),
    /// Run one of `sluice run`'s built-in echo backends on its own (for trying routes and
    /// for benchmarks): HTTP/1.1 answering with JSON about the request, or gRPC
    /// (`sluice.echo.v1.Echo`, h2c).
    Echo {
        /// The address to listen on.
        #[arg(default_value = "127.0.0.1:9001")]
        address: std::net::SocketAddr,
        /// Serve the gRPC echo instead of the HTTP one.
        #[arg(long)]
        grpc: bool,
        /// The name the backend answers with (`service`).
        #[arg(long, default_value = "echo")]
        name: String,
    },
}

/// Options of Kubernetes mode (see docs/kubernetes.md).
#[derive(clap::Args, Debug)]
pub struct KubernetesArgs {
    /// The controller's namespace (push CA Secret, leader Lease).
    #[arg(long, env = "POD_NAMESPACE", default_value = "sluice-system")]
    pub namespace: String,
    /// This replica's identity in the leader election.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Run without leader election (a single replica).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Address of the push server.
    #[arg(long, default_value = "0.0.0.0:9443")]
    pub push_listen: std::net::SocketAddr,
    /// The push server's URL as data planes dial it
    /// (default https://sluice-controller.<namespace>.svc:9443).
    #[arg(long)]
    pub push_url: Option<String>,
    /// Extra DNS names or IPs for the push server's certificate (the URL's host is
    /// always in it).
    #[arg(long = "push-name")]
    pub push_names: Vec<String>,
    /// The data-plane image when no ProxyConfig names one.
    #[arg(long, env = "SLUICE_DATAPLANE_IMAGE", default_value = "ghcr.io/sluice-gateway/sluice-dataplane:0.1.0")]
    pub dataplane_image: String,
    /// The longest a change of the inputs waits for more before a recompute (ms); a
    /// change is taken in once the inputs were quiet for 2 ms.
    #[arg(long, default_value_t = 20)]
    pub debounce_ms: u64,
}

impl KubernetesArgs {
    fn options(self) -> Result<crate::cluster::Options> {
        let push_url =
            self.push_url.unwrap_or_else(|| format!("https://sluice-controller.{}.svc:9443", self.namespace));
        let host = push_url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_string))
            .with_context(|| format!("--push-url {push_url:?} is not a URL with a host, e.g. https://sluice-controller.sluice-system.svc:9443"))?;
        let mut push_names = vec![host.trim_matches(['[', ']']).to_string()];
        push_names.extend(self.push_names);
        let identity = self.identity.unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_or_else(|_| "sluice-controller".into(), |h| h.trim().to_string())
        });
        Ok(crate::cluster::Options {
            namespace: self.namespace,
            identity,
            leader_election: !self.no_leader_election,
            push_listen: self.push_listen,
            push_names,
            // The trust bundle comes from the push CA Secret (cluster::run).
            deploy: crate::deploy::DeployOptions {
                default_image: self.dataplane_image,
                control_plane_url: push_url,
                push_trust_bundle: String::new(),
            },
            debounce: Duration::from_millis(self.debounce_ms),
        })
    }
}

/// Runs a command. `dataplane` is how to start a data plane when the user names none.
pub fn execute(command: Command, dataplane: Vec<OsString>) -> Result<()> {
    match command {
        Command::Translate { paths, status_only } => print_translation(&paths, status_only),
        Command::Run { dir, status_file, bind, quiet_ms, quiet, dataplane: program } => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
                )
                .try_init();
            let dataplane = match program {
                Some(program) => vec![program.into_os_string()],
                None => dataplane,
            };
            let options = standalone::Options {
                dir,
                dataplane,
                status_file: Some(status_file),
                bind,
                quiet_period: Duration::from_millis(quiet_ms),
                quiet,
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(standalone::run(options, shutdown_signal()))
        }
        Command::Echo { address, grpc, name } => {
            let identity = standalone::echo::EchoIdentity {
                namespace: "default".into(),
                service: name.clone(),
                pod: format!("{name}-0"),
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(async move {
                let task = if grpc {
                    standalone::grpc_echo::start(address, identity).await
                } else {
                    standalone::echo::start(address, identity).await
                }
                .with_context(|| format!("listening on {address}"))?;
                eprintln!("sluice: {} echo on {address}", if grpc { "gRPC" } else { "HTTP" });
                shutdown_signal().await;
                task.abort();
                anyhow::Ok(())
            })
        }
        Command::Kubernetes(args) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
                )
                .try_init();
            let _ = rustls::crypto::ring::default_provider().install_default();
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let options = args.options()?;
            runtime.block_on(crate::cluster::run(options, shutdown_signal()))
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

fn print_translation(paths: &[PathBuf], status_only: bool) -> Result<()> {
    let mut text = String::new();
    for path in paths {
        read_manifests(path, &mut text)?;
    }
    let (mut world, skipped) = World::from_manifests(&text);
    world.now = Some(crate::unix_now());
    for skip in &skipped {
        let at = skip.document.map(|d| format!("document {d} ")).unwrap_or_default();
        eprintln!("skipped {at}{}: {}", skip.object, skip.reason);
    }
    let output = translate(&world);
    let rendered = if status_only {
        serde_saphyr::to_string(&output.status)?
    } else {
        let mut output = output;
        for gateway in output.gateways.values_mut() {
            for certificate in &mut gateway.snapshot.certificates {
                certificate.private_key_pem = "<redacted>".into();
            }
        }
        serde_saphyr::to_string(&output)?
    };
    print!("{rendered}");
    Ok(())
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
