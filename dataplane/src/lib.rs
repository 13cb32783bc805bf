//! `sluice-dataplane`: serves one Gateway's config snapshot with Pingora.
//!
//! ```text
//!  --snapshot FILE ──(poll, 250 ms)──┐
//!  --control-plane URL ──(gRPC)──────┴─► parse → validate → compile ──ArcSwap──► proxy
//!                                         │ on error: keep serving the last good tables
//!                                         │ (and NACK it to the control plane)
//!  --admin ADDR: GET /ready (200 once a snapshot is applied), GET /config (version)
//! ```

mod admin;
mod apply;
mod client_auth;
mod client_hello;
mod cors;
mod deadline;
mod decide;
mod edits;
mod fast;
mod fast_h2;
#[doc(hidden)]
pub mod fuzzing;
mod incremental;
mod metrics;
mod mirror;
mod outcome;
mod path;
mod proxy;
pub mod push;
mod retry;
mod tables;
mod tcp;
mod tls;
mod tls_proxy;
mod udp;
pub mod upstream_tls;
mod view;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::Server;
use sluice_snapshot::{Protocol, Snapshot};

use crate::apply::{Applier, Listening};
use crate::metrics::Metrics;
use crate::proxy::SluiceProxy;
use crate::tables::Tables;
use crate::tables::compile;

#[derive(Parser, Debug)]
#[command(name = "sluice-dataplane", version, about = "The Sluice data plane")]
#[command(group(clap::ArgGroup::new("source").required(true).args(["snapshot", "control_plane"])))]
pub struct Cli {
    /// Snapshot file (proto3 JSON or YAML); reloaded when it changes.
    #[arg(long)]
    snapshot: Option<PathBuf>,
    /// The controller's push server, e.g. https://sluice-controller.sluice-system:9443
    /// (http:// only on loopback). Snapshots come from there.
    #[arg(long, requires = "gateway")]
    control_plane: Option<String>,
    #[command(flatten)]
    push: push::PushArgs,
    /// Exit when standard input closes (set by `sluice run` so that data planes never
    /// outlive it).
    #[arg(long)]
    exit_with_stdin: bool,
    /// Validate and compile the snapshot, print a summary and exit.
    #[arg(long)]
    check: bool,
    /// Address the listeners bind to.
    #[arg(long, default_value = "0.0.0.0")]
    bind: String,
    /// Admin endpoint (`/ready`, `/config`), e.g. 127.0.0.1:9901.
    #[arg(long)]
    admin: Option<String>,
    /// Print one JSON access-log line per request to stdout.
    #[arg(long)]
    access_log: bool,
    /// How often the snapshot file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 250)]
    poll_interval_ms: u64,
    /// Seconds within which an HTTP/1.x request head must arrive completely, from its
    /// first byte (from accept for a connection's first request); slower clients are
    /// disconnected (0: no deadline). Pingora alone only bounds each read. 10 s is
    /// HAProxy's recommended `timeout http-request`.
    #[arg(long, default_value_t = 10)]
    request_header_timeout_secs: u64,
    /// Seconds within which a connection to a TLS listener (protocol TLS) must send its
    /// whole ClientHello, and, on a listener that terminates TLS, complete its handshake,
    /// from accept; slower clients are disconnected without a TLS alert.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    tls_handshake_timeout_secs: u64,
    /// Seconds after which a UDP session (one client address) without datagrams in
    /// either direction ends; its next datagram starts a new session.
    #[arg(long, default_value_t = 60)]
    udp_idle_timeout_secs: u64,
    /// UDP sessions per UDP port at most; datagrams of further clients are dropped
    /// (metric `sluice_udp_dropped_datagrams_total{reason="session_limit"}`), live
    /// sessions are never evicted.
    #[arg(long, default_value_t = 16384)]
    udp_max_sessions: usize,
    /// Serve plain HTTP/1.1 requests without a body on the fast path (routes with header
    /// filters and URL rewrites); everything else goes through Pingora's proxy either way.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    http1_fast_path: bool,
    /// Threads serving the HTTP and HTTPS listeners (together), and each TCP and TLS
    /// passthrough listener; each UDP listener has one. 0: one per CPU this process may
    /// use (its CPU affinity and cgroup CPU quota).
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
    /// Client connections open at most per TCP-based listener port (HTTP, HTTPS, TLS,
    /// TCP); more are closed at accept and counted in sluice_connections_refused_total.
    #[arg(long, default_value_t = 16384)]
    max_connections_per_listener: usize,
    /// Proxies in front of the data plane (load balancers) whose X-Forwarded-For entries
    /// are kept; 0 (default): a client's own X-Forwarded-For, Forwarded, X-Forwarded-Host,
    /// X-Forwarded-Port and X-Real-IP never reach a backend.
    #[arg(long, default_value_t = 0)]
    trusted_hops: usize,
    /// Seconds the longest read or write on a client or backend connection may wait
    /// while a request is served (a backend that stops answering, a client that stops
    /// reading its response or sending its body); then the exchange fails (502/504 if
    /// no response started, else the connection is closed).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_secs: u64,
    /// Seconds within which a request body must arrive completely, from the request's
    /// start; slower uploads are answered 408 (or cut, once the response has started).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    request_body_timeout_secs: u64,
    /// Seconds an HTTP/2 connection without a stream in flight is kept open (0: no
    /// limit). Its preface must arrive within --request-header-timeout-secs.
    #[arg(long, default_value_t = 300)]
    http2_idle_timeout_secs: u64,
}

fn load(path: &Path) -> Result<(String, Snapshot)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let snapshot = Snapshot::from_text(&text)?;
    Ok((text, snapshot))
}

/// Parses the command line and runs the data plane (the `sluice-dataplane` binary).
pub fn main() -> Result<()> {
    run(Cli::parse())
}

/// Runs the data plane until the process is stopped.
pub fn run(cli: Cli) -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .try_init();
    if cli.exit_with_stdin {
        std::thread::spawn(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            std::process::exit(0);
        });
    }
    let metrics = Arc::new(Metrics::default());
    let (listening, tables) = match (&cli.snapshot, &cli.control_plane) {
        (Some(path), _) => {
            let (text, snapshot) = load(path)?;
            if cli.check {
                compile(&snapshot, &metrics)?;
                print_summary(&snapshot);
                return Ok(());
            }
            // The same applier as the push client's (swap, metrics, dropped pieces),
            // keeping nothing but the tables: a file's snapshot is compiled whole.
            // (Not a copy of the snapshot kept for `serve`: its listeners are enough.)
            let listening = Listening::of(&snapshot);
            let mut applier = Applier::new(metrics.clone(), None, false);
            applier.install(snapshot).map_err(anyhow::Error::msg)?;
            let tables = applier.tables.clone().context("no tables after the first snapshot")?;
            spawn_file_watcher(path.clone(), applier, Duration::from_millis(cli.poll_interval_ms.max(1)), &text);
            (listening, tables)
        }
        (None, Some(url)) => push::start(url.clone(), cli.push.clone(), metrics.clone())?,
        (None, None) => bail!("either --snapshot or --control-plane is required"),
    };
    serve(&cli, listening, tables, metrics)
}

fn print_summary(snapshot: &Snapshot) {
    let routes: usize = snapshot
        .listeners
        .iter()
        .map(|l| l.http_routes.len() + l.tcp_routes.len() + l.udp_routes.len() + l.tls_routes.len())
        .sum();
    println!(
        "snapshot for {}: {} listeners, {routes} routes, {} clusters, {} certificates: valid",
        snapshot.gateway,
        snapshot.listeners.len(),
        snapshot.clusters.len(),
        snapshot.certificates.len()
    );
}

/// Serves the listeners of the first snapshot applied from `tables`. Listener ports are
/// fixed for the life of the process: a later snapshot with other ports needs a restart
/// (the deployer rolls the pods).
fn serve(cli: &Cli, listening: Listening, tables: Tables, metrics: Arc<Metrics>) -> Result<()> {
    let ports_of = |protocol: Protocol| -> Vec<u16> {
        let mut ports: Vec<u16> = listening
            .listeners
            .iter()
            .filter(|(listener, _)| *listener == protocol)
            .filter_map(|(_, port)| u16::try_from(*port).ok())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    };
    let (http_ports, https_ports, tcp_ports, udp_ports, tls_ports) = (
        ports_of(Protocol::Http),
        ports_of(Protocol::Https),
        ports_of(Protocol::Tcp),
        ports_of(Protocol::Udp),
        ports_of(Protocol::Tls),
    );
    // A Gateway whose every listener is invalid still gets a data plane: it serves
    // nothing until the deployer rolls it with listener ports, and is Ready meanwhile.
    // Readiness probes a TCP-based port; UDP-only data planes are Ready once applied.
    let first_port = http_ports.iter().chain(&https_ports).chain(&tcp_ports).chain(&tls_ports).next().copied();
    if first_port.is_none() && udp_ports.is_empty() {
        tracing::warn!(gateway = listening.gateway, "the snapshot has no listener to serve; waiting for one");
    }
    if let Some(admin) = &cli.admin {
        // Ready once a snapshot is applied (it is, by now) and the listeners accept.
        let probe_host =
            if cli.bind == "0.0.0.0" || cli.bind == "::" { "127.0.0.1".to_string() } else { cli.bind.clone() };
        let probe = first_port.map(|port| format!("{probe_host}:{port}"));
        admin::spawn(admin, tables.clone(), metrics.clone(), probe)?;
    }

    let mut conf = pingora_core::server::configuration::ServerConf::new()
        .ok_or_else(|| anyhow::anyhow!("starting the server: no default configuration"))?;
    // Pingora's own bound on tries per request; HTTPRoute retries bound it further.
    conf.max_retries = usize::try_from(sluice_snapshot::MAX_RETRY_ATTEMPTS).unwrap_or(100) + 1;
    let threads = worker_threads(cli.worker_threads);
    conf.threads = threads;
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    if !http_ports.is_empty() || !https_ports.is_empty() {
        let unmatched = metrics.route(metrics::NO_ROUTE);
        let proxy = SluiceProxy {
            tables: tables.clone(),
            unmatched: unmatched.clone(),
            access_log: cli.access_log,
            trusted_hops: cli.trusted_hops,
            io_timeout: Duration::from_secs(cli.idle_timeout_secs),
            request_body_timeout: Duration::from_secs(cli.request_body_timeout_secs),
        };
        let mut http = pingora_proxy::http_proxy(&server.configuration, proxy);
        // Cleartext HTTP/2 (h2c, prior knowledge) beside HTTP/1.1 on plain listeners;
        // HTTPS listeners negotiate HTTP/2 with ALPN.
        let mut options = pingora_core::apps::HttpServerOptions::default();
        options.h2c = true;
        options.h2_idle_timeout =
            (cli.http2_idle_timeout_secs > 0).then(|| Duration::from_secs(cli.http2_idle_timeout_secs));
        http.server_options = Some(options);
        let app = fast::Front {
            proxy: Arc::new(http),
            tables: tables.clone(),
            unmatched,
            access_log: cli.access_log,
            head_timeout: (cli.request_header_timeout_secs > 0)
                .then(|| Duration::from_secs(cli.request_header_timeout_secs)),
            fast_path: cli.http1_fast_path,
            pool: fast::UpstreamPool::default(),
            connections: http_ports.iter().chain(&https_ports).map(|port| (*port, metrics.listener(*port))).collect(),
            max_connections: cli.max_connections_per_listener.max(1),
            trusted_hops: cli.trusted_hops,
            io_timeout: Duration::from_secs(cli.idle_timeout_secs),
            request_body_timeout: Duration::from_secs(cli.request_body_timeout_secs),
        };
        let mut service = pingora_core::services::listening::Service::new("Sluice HTTP".to_string(), app);
        for port in &http_ports {
            service.add_listener(ListenerConfig::tcp(format!("{}:{port}", cli.bind)).l4_buffer(unbuffered_reads()));
        }
        for port in &https_ports {
            let check = tls::HandshakeCheck { tables: tables.clone(), port: *port };
            let mut settings = pingora_core::listeners::tls::TlsSettings::with_callbacks(Box::new(check))
                .map_err(|e| anyhow::anyhow!("TLS settings: {e}"))?;
            settings.set_cert_resolver(Arc::new(tls::SniResolver { tables: tables.clone(), port: *port }));
            settings.set_client_cert_verifier(Arc::new(tls::PortVerifier::new(tables.clone(), *port)));
            settings.enable_h2();
            service.add_listener(
                ListenerConfig::tcp(format!("{}:{port}", cli.bind)).tls(settings).l4_buffer(unbuffered_reads()),
            );
        }
        server.add_service(service);
    }
    for port in &tcp_ports {
        let app = tcp::TcpProxy {
            tables: tables.clone(),
            port: *port,
            connections: metrics.listener(*port),
            max_connections: cli.max_connections_per_listener.max(1),
        };
        let mut service = pingora_core::services::listening::Service::new(format!("tcp-{port}"), app);
        service.add_listener(ListenerConfig::tcp(format!("{}:{port}", cli.bind)).l4_buffer(unbuffered_reads()));
        server.add_service(service);
    }
    for port in &tls_ports {
        let app = tls_proxy::TlsProxy {
            tables: tables.clone(),
            port: *port,
            connections: metrics.listener(*port),
            max_connections: cli.max_connections_per_listener.max(1),
            handshake_timeout: Duration::from_secs(cli.tls_handshake_timeout_secs),
            metrics: metrics.tls_port(*port),
        };
        let mut service = pingora_core::services::listening::Service::new(format!("tls-{port}"), app);
        service.add_listener(ListenerConfig::tcp(format!("{}:{port}", cli.bind)).l4_buffer(unbuffered_reads()));
        server.add_service(service);
    }
    for port in &udp_ports {
        let app = udp::UdpProxy {
            tables: tables.clone(),
            bind: cli.bind.clone(),
            port: *port,
            idle_timeout: Duration::from_secs(cli.udp_idle_timeout_secs.max(1)),
            max_sessions: cli.udp_max_sessions.max(1),
            metrics: metrics.udp_port(*port),
        };
        server.add_service(pingora_core::services::background::background_service(&format!("udp-{port}"), app));
    }
    tracing::info!(
        http = ?http_ports,
        https = ?https_ports,
        tls = ?tls_ports,
        tcp = ?tcp_ports,
        udp = ?udp_ports,
        threads,
        "serving"
    );
    server.run_forever()
}

/// `--worker-threads`: 0 is one per CPU the process may use (Pingora's default is one
/// thread per service whatever the machine has).
fn worker_threads(asked: usize) -> usize {
    if asked > 0 {
        return asked;
    }
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Every TCP-based listener's connections read straight from the socket: Pingora's
/// default puts a 64 KiB read buffer (zeroed, kept for the connection's life) under every
/// accepted connection, which the fast path's own buffers, Pingora's HTTP sessions,
/// rustls (whose reads take what one TLS record needs), the ClientHello reader and the
/// TCP relays' copy buffers only copy out of. Writes keep Pingora's small write buffer.
fn unbuffered_reads() -> L4BufferSettings {
    L4BufferSettings::default().read(0)
}

/// Reloads the snapshot file when its content changes. Each tick looks at the file's
/// metadata (device, inode, size, modification and change times); when any of it moved,
/// or `FULL_CHECK` has passed since the bytes were last read, the watcher reads the file
/// and compares a hash of the bytes it parses. Reading and hashing every tick cost half a
/// millisecond per 500 KB snapshot four times a second, on the CPU that serves traffic.
/// A change is never missed: a rename over the file or a write moves the metadata, and
/// a rewrite the timestamps cannot tell apart is read within `FULL_CHECK`. Replace the
/// file atomically (write another file, rename it over) so that no half-written file is
/// read. A snapshot that does not parse, validate or compile is logged and the last good
/// one keeps serving.
fn spawn_file_watcher(path: PathBuf, mut applier: Applier, interval: Duration, initial: &str) {
    let mut last = content_hash(initial.as_bytes());
    let mut seen = file_stamp(&path);
    let mut read_at = std::time::Instant::now();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(interval);
            let stamp = file_stamp(&path);
            if stamp.is_some() && stamp == seen && read_at.elapsed() < FULL_CHECK {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else { continue };
            (seen, read_at) = (stamp, std::time::Instant::now());
            let hash = content_hash(&bytes);
            if hash == last {
                continue;
            }
            last = hash;
            let applied = std::str::from_utf8(&bytes)
                .map_err(anyhow::Error::from)
                .and_then(|text| Ok(Snapshot::from_text(text)?))
                .and_then(|snapshot| {
                    let gateway = snapshot.gateway.clone();
                    applier.install(snapshot).map_err(anyhow::Error::msg)?;
                    Ok(gateway)
                });
            match applied {
                Ok(gateway) => tracing::info!(gateway, "applied new snapshot"),
                Err(error) => {
                    applier.metrics.reloads_rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("keeping the last good snapshot: {error:#}");
                }
            }
        }
    });
}

/// How often the snapshot file is read even though its metadata did not move.
const FULL_CHECK: Duration = Duration::from_secs(10);

/// What tells one version of a file from another without reading it.
type FileStamp = (u64, u64, u64, i64, i64, i64, i64);

fn file_stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
}

fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}
