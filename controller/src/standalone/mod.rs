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

pub mod echo;
pub mod grpc_echo;
pub mod manifests;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sluice_translate::status::{Condition, ConditionStatus, reason};
use sluice_translate::{World, translate};
use std::sync::Arc;
use tokio::process::{Child, Command};

use tokio::sync::{mpsc, watch};

use crate::push::auth::StaticTokens;
use crate::push::ca::CertificateAuthority;
use crate::push::{Authentication, GatewayProgress, PushServer, ServerTls};

use self::manifests::{Manifests, Problem};

/// Annotation on a Service: standalone mode runs an echo backend at each of its static
/// EndpointSlice addresses (loopback only): `"true"` an HTTP (or, for UDP ports, a UDP)
/// echo, `"grpc"` the gRPC echo (`sluice.echo.v1.Echo`, h2c).
pub const ECHO_ANNOTATION: &str = "standalone.sluice.dev/echo";

/// Which echo backend runs at an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum EchoKind {
    Http,
    Udp,
    Grpc,
}

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
    let result = run_in(&options, &state_dir, shutdown).await;
    let _ = std::fs::remove_dir_all(&state_dir);
    result
}

async fn run_in(options: &Options, state_dir: &Path, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let ca = CertificateAuthority::generate("sluice standalone push CA", 365)?;
    let server_certificate = ca.issue_server(&["127.0.0.1", "localhost"], 365)?;
    let ca_file = state_dir.join("ca.crt");
    write_private(&ca_file, ca.certificate_pem())?;

    let push = PushServer::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the push server")?;
    let push_address = listener.local_addr()?;
    let (stop_push, push_stopped) = tokio::sync::oneshot::channel::<()>();
    let tls = ServerTls {
        certificate_pem: server_certificate.certificate_pem,
        private_key_pem: server_certificate.private_key_pem,
    };
    // Each data plane gets its own token, which reads its Gateway only.
    let tokens = StaticTokens::new();
    let authentication = Authentication::Token(std::sync::Arc::new(tokens.clone()));
    let push_task = tokio::spawn({
        let push = push.clone();
        async move {
            if let Err(error) =
                push.serve(listener, Some(tls), authentication, async { drop(push_stopped.await) }).await
            {
                tracing::error!("{error:#}");
            }
        }
    });

    let (events, mut changes) = mpsc::unbounded_channel::<Change>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let change = classify(&event);
            if change != Change::None {
                let _ = events.send(change);
            }
        }
    })
    .context("watching the directory")?;
    notify::Watcher::watch(&mut watcher, &options.dir, notify::RecursiveMode::Recursive)
        .context("watching the directory")?;

    let mut runner = Runner {
        options: options.clone(),
        state_dir: state_dir.to_path_buf(),
        tokens,
        ca_file,
        push_address,
        push: push.clone(),
        manifests: Manifests::new(&options.dir),
        gateways: Vec::new(),
        status: Arc::default(),
        routes_text: String::new(),
        problems: Arc::default(),
        processes: BTreeMap::new(),
        echoes: BTreeMap::new(),
        last_report: String::new(),
        translated: false,
        clock_change: None,
        document: watch::Sender::new(None),
    };
    if let Some(file) = &options.status_file {
        tokio::spawn(write_status_file(file.clone(), runner.document.subscribe()));
    }
    println!("sluice: serving the Gateways in {} (push server {push_address})", options.dir.display());
    // Subscribed before the first publish, so that no ACK goes unnoticed.
    let mut progress = push.watch_progress();
    runner.reconcile().await;

    let mut rescan = tokio::time::interval(Duration::from_secs(2));
    let mut supervise = tokio::time::interval(Duration::from_millis(500));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(change) = changes.recv() => {
                // A completed write (close after writing, a rename into place, a removal)
                // is applied at once; other changes once the directory is quiet for the
                // quiet period, and never more than 50 ms after they began.
                let started = Instant::now();
                let mut complete = change == Change::Complete;
                while started.elapsed() < Duration::from_millis(50) {
                    let wait = if complete { Duration::ZERO } else { options.quiet_period };
                    match tokio::time::timeout(wait, changes.recv()).await {
                        Ok(Some(change)) => complete |= change == Change::Complete,
                        _ => break,
                    }
                }
                runner.reconcile().await;
            }
            _ = rescan.tick() => runner.reconcile().await,
            _ = progress.changed() => runner.report(),
            _ = supervise.tick() => runner.supervise().await,
        }
    }
    drop(watcher);
    for (_, mut process) in std::mem::take(&mut runner.processes) {
        let _ = process.child.kill().await;
    }
    let _ = stop_push.send(());
    let _ = push_task.await;
    Ok(())
}

struct DataPlane {
    child: Child,
    ports: Vec<u32>,
    admin: SocketAddr,
    /// Set once the process exited, with how; it is restarted after a pause.
    exited: Option<(String, Instant)>,
    started: Instant,
    /// Exits in a row without a minute of running in between (for the restart backoff).
    failures: u32,
}

impl DataPlane {
    /// How long to wait before restarting after `failures` quick exits in a row: 2 s,
    /// doubling up to a minute (e.g. while another program holds the port).
    fn restart_pause(failures: u32) -> Duration {
        Duration::from_secs(2u64.saturating_mul(1 << failures.saturating_sub(1).min(5)).min(60))
    }
}

struct Runner {
    options: Options,
    state_dir: PathBuf,
    tokens: StaticTokens,
    ca_file: PathBuf,
    push_address: SocketAddr,
    push: PushServer,
    manifests: Manifests,
    /// The Gateways of the last translation (their snapshots moved to the push server).
    gateways: Vec<String>,
    /// The translator's status of the last translation, and its routes' summary text.
    status: Arc<sluice_translate::Status>,
    routes_text: String,
    problems: Arc<Vec<Problem>>,
    processes: BTreeMap<String, DataPlane>,
    /// Echo backends by address and transport (true: UDP).
    echoes: BTreeMap<(SocketAddr, EchoKind), tokio::task::JoinHandle<()>>,
    last_report: String,
    /// Whether the directory was translated at least once.
    translated: bool,
    /// When the clock alone changes the last translation (a certificate expires or
    /// becomes valid; Unix seconds): the next rescan translates again from then on.
    clock_change: Option<i64>,
    /// The latest status, for the status file writer.
    document: watch::Sender<Option<Arc<StatusDocument>>>,
}

impl Runner {
    async fn reconcile(&mut self) {
        let started = Instant::now();
        match self.manifests.refresh() {
            Ok(false) if self.translated && self.clock_change.is_none_or(|at| crate::unix_now() < at) => return,
            Ok(_) => {}
            Err(error) => eprintln!("sluice: reading {}: {error}", self.options.dir.display()),
        }
        self.translated = true;
        let read = started.elapsed();
        let (mut world, problems) = self.manifests.world();
        world.now = Some(crate::unix_now());
        self.problems = Arc::new(problems);
        let mut output = translate(&world);
        self.clock_change = output.next_change_at;
        let translated = started.elapsed();
        self.status = Arc::new(std::mem::take(&mut output.status));
        self.routes_text = render_routes(&self.status, self.options.quiet);
        self.gateways = output.gateways.keys().map(ToString::to_string).collect();
        let mut wanted = BTreeMap::new();
        for (key, gateway) in &mut output.gateways {
            let name = key.to_string();
            let mut ports: Vec<u32> = gateway.snapshot.listeners.iter().map(|l| l.port).collect();
            ports.sort_unstable();
            ports.dedup();
            // The snapshot moves to the push server; the status stays for the report.
            if let Some(version) = self.push.publish(&name, std::mem::take(&mut gateway.snapshot)) {
                tracing::debug!(
                    gateway = name,
                    generation = version.generation,
                    read_ms = read.as_secs_f64() * 1e3,
                    translate_ms = (translated - read).as_secs_f64() * 1e3,
                    published_ms = started.elapsed().as_secs_f64() * 1e3,
                    "published"
                );
            }
            if !ports.is_empty() {
                wanted.insert(name, ports);
            }
        }
        for (name, ports) in &wanted {
            self.ensure_process(name, ports.clone()).await;
        }
        let gone: Vec<String> = self.processes.keys().filter(|name| !wanted.contains_key(*name)).cloned().collect();
        for name in gone {
            if let Some(mut process) = self.processes.remove(&name) {
                let _ = process.child.kill().await;
            }
        }
        for name in self.push.progress().keys() {
            if !self.gateways.contains(name) {
                self.push.remove(name);
            }
        }
        self.ensure_echoes(&world).await;
        self.report();
        tracing::debug!(total_ms = started.elapsed().as_secs_f64() * 1e3, "reconciled");
    }

    async fn ensure_process(&mut self, gateway: &str, ports: Vec<u32>) {
        if let Some(process) = self.processes.get(gateway) {
            if process.ports == ports {
                return;
            }
            // Listener ports are part of the process (as they are of a Deployment):
            // a port change restarts the data plane.
            if let Some(mut old) = self.processes.remove(gateway) {
                let _ = old.child.kill().await;
            }
        }
        match self.spawn(gateway, &ports) {
            Ok((child, admin)) => {
                let process = DataPlane { child, ports, admin, exited: None, started: Instant::now(), failures: 0 };
                self.processes.insert(gateway.to_string(), process);
            }
            Err(error) => eprintln!("sluice: cannot start the data plane of {gateway}: {error:#}"),
        }
    }

    fn spawn(&self, gateway: &str, ports: &[u32]) -> Result<(Child, SocketAddr)> {
        let token = self.state_dir.join(format!("{}.token", gateway.replace('/', "_")));
        write_private(&token, &self.tokens.issue(gateway))?;
        let admin = free_loopback_port()?;
        let (program, leading) = self.options.dataplane.split_first().context("no data-plane command")?;
        let mut command = Command::new(program);
        command
            .args(leading)
            .arg("--control-plane")
            .arg(format!("https://{}", self.push_address))
            .args(["--gateway", gateway, "--pod", "standalone"])
            .arg("--ca")
            .arg(&self.ca_file)
            .arg("--token-file")
            .arg(&token)
            .args(["--bind", &self.options.bind.to_string(), "--admin", &admin.to_string(), "--exit-with-stdin"])
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        let child = command.spawn().with_context(|| format!("running {}", program.to_string_lossy()))?;
        let listening: Vec<String> = ports.iter().map(|p| format!("{}:{p}", self.options.bind)).collect();
        println!("sluice: data plane for {gateway} on {} (admin http://{admin})", listening.join(", "));
        Ok((child, admin))
    }

    /// Notices data planes that exited and restarts them after a pause.
    async fn supervise(&mut self) {
        let mut changed = false;
        let mut restart = Vec::new();
        for (gateway, process) in &mut self.processes {
            if let Some((_, since)) = &process.exited {
                if since.elapsed() > DataPlane::restart_pause(process.failures) {
                    restart.push((gateway.clone(), process.ports.clone(), process.failures));
                }
                continue;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                let ran_a_while = process.started.elapsed() > Duration::from_secs(60);
                process.failures = if ran_a_while { 1 } else { process.failures.saturating_add(1) };
                let pause = DataPlane::restart_pause(process.failures);
                eprintln!("sluice: the data plane of {gateway} exited ({status}); restarting it in {pause:?}");
                process.exited = Some((format!("the data plane process exited ({status})"), Instant::now()));
                changed = true;
            }
        }
        for (gateway, ports, failures) in restart {
            self.processes.remove(&gateway);
            self.ensure_process(&gateway, ports).await;
            if let Some(process) = self.processes.get_mut(&gateway) {
                process.failures = failures;
            }
            changed = true;
        }
        if changed {
            self.report();
        }
    }

    /// Runs an echo backend at each static endpoint of Services annotated for it.
    async fn ensure_echoes(&mut self, world: &World) {
        let mut wanted: BTreeMap<(SocketAddr, EchoKind), echo::EchoIdentity> = BTreeMap::new();
        for service in &world.services {
            let annotated = service.metadata.annotations.as_ref().and_then(|a| a.get(ECHO_ANNOTATION));
            let grpc = match annotated.map(String::as_str) {
                Some("true") => false,
                Some("grpc") => true,
                _ => continue,
            };
            let namespace = service.metadata.namespace.clone().unwrap_or_default();
            let name = service.metadata.name.clone().unwrap_or_default();
            for slice in &world.endpoint_slices {
                let owner = slice.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name"));
                if slice.metadata.namespace.as_deref() != Some(namespace.as_str()) || owner != Some(&name) {
                    continue;
                }
                for endpoint in &slice.endpoints {
                    for address in &endpoint.addresses {
                        let Ok(ip) = address.parse::<IpAddr>() else { continue };
                        if !ip.is_loopback() {
                            eprintln!("sluice: echo backends run on loopback only; skipping {address} of {name}");
                            continue;
                        }
                        for slice_port in slice.ports.iter().flatten() {
                            let Some(Ok(port)) = slice_port.port.map(u16::try_from) else { continue };
                            let kind = match (slice_port.protocol.as_deref() == Some("UDP"), grpc) {
                                (true, _) => EchoKind::Udp,
                                (false, true) => EchoKind::Grpc,
                                (false, false) => EchoKind::Http,
                            };
                            wanted.insert(
                                (SocketAddr::new(ip, port), kind),
                                echo::EchoIdentity {
                                    namespace: namespace.clone(),
                                    service: name.clone(),
                                    pod: format!("{name}-{ip}-{port}"),
                                },
                            );
                        }
                    }
                }
            }
        }
        self.echoes.retain(|address, task| {
            let keep = wanted.contains_key(address);
            if !keep {
                task.abort();
            }
            keep
        });
        for ((address, kind), identity) in wanted {
            if self.echoes.contains_key(&(address, kind)) {
                continue;
            }
            let started = match kind {
                EchoKind::Http => echo::start(address, identity).await,
                EchoKind::Udp => echo::start_udp(address, identity).await,
                EchoKind::Grpc => grpc_echo::start(address, identity).await,
            };
            match started {
                Ok(task) => {
                    self.echoes.insert((address, kind), task);
                }
                Err(error) => eprintln!("sluice: cannot start the echo backend on {address}: {error}"),
            }
        }
    }

    /// Prints what changed in the status, and hands the status to the file writer.
    fn report(&mut self) {
        let progress = self.push.progress();
        let mut holds = BTreeMap::new();
        for name in &self.gateways {
            let exited = self.processes.get(name).and_then(|p| p.exited.as_ref()).map(|(why, _)| why.clone());
            let waiting = match (exited, progress.get(name)) {
                (Some(why), _) => Some(why),
                (None, Some(progress)) => progress.programmed().err(),
                (None, None) => Some("no configuration has been published yet".to_string()),
            };
            if let Some(message) = waiting {
                holds.insert(name.clone(), message);
            }
        }
        let document = StatusDocument {
            status: self.status.clone(),
            programmed_holds: holds,
            data_planes: progress,
            problems: self.problems.clone(),
        };
        if self.document.borrow().as_deref().is_some_and(|last| last.same_as(&document)) {
            return;
        }
        let mut text = render_gateways(&document, &self.processes, self.options.quiet);
        text.push_str(&self.routes_text);
        for (gateway, progress) in &document.data_planes {
            for (piece, problem) in progress.dropped() {
                text.push_str(&format!("gateway {gateway}: the data plane does not serve {piece}: {problem}\n"));
            }
        }
        for problem in document.problems.iter() {
            text.push_str(&format!("skipped in {}: {}\n", problem.file.display(), problem.message));
        }
        if text != self.last_report {
            print!("{text}");
            self.last_report = text;
        }
        self.document.send_replace(Some(Arc::new(document)));
    }
}

/// Writes the status file after changes, off the path that pushes config (at thousands
/// of routes the YAML takes tens of milliseconds).
async fn write_status_file(file: PathBuf, mut status: watch::Receiver<Option<Arc<StatusDocument>>>) {
    while status.changed().await.is_ok() {
        // Trailing debounce: write once changes pause for a second (at most 5 s late),
        // so that serializing a large status never competes with applying changes.
        let first = Instant::now();
        while first.elapsed() < Duration::from_secs(5) {
            match tokio::time::timeout(Duration::from_secs(1), status.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let Some(document) = status.borrow_and_update().clone() else { continue };
        let file = file.clone();
        let written = tokio::task::spawn_blocking(move || {
            let yaml = document.to_yaml()?;
            write_atomically(&file, &yaml).map_err(|e| format!("writing {}: {e}", file.display()))
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("sluice: status file: {error}"),
            Err(error) => eprintln!("sluice: status file: {error}"),
        }
    }
}

/// What a file-system event means for the manifests.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_to_a_minute() {
        let pauses: Vec<u64> = (1..=8).map(|n| DataPlane::restart_pause(n).as_secs()).collect();
        assert_eq!(pauses, [2, 4, 8, 16, 32, 60, 60, 60]);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Nothing a reader of the files sees: reads (the rescan raises those, and reacting
    /// to them would re-read forever), metadata, hidden files (temporaries, never read).
    None,
    /// A file is being written; more may follow.
    Partial,
    /// A file is complete: closed after writing, renamed into place, or removed.
    Complete,
}

fn classify(event: &notify::Event) -> Change {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
    let hidden = |path: &std::path::PathBuf| path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
    if !event.paths.is_empty() && event.paths.iter().all(hidden) {
        return Change::None;
    }
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(_))
        | EventKind::Remove(_)
        | EventKind::Create(CreateKind::Folder) => Change::Complete,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => Change::None,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any | EventKind::Other => Change::Partial,
    }
}

/// Everything the status file holds: the translator's status, with `Programmed` held
/// at `False`/`Pending` for the Gateways whose data planes have not applied it.
#[derive(Debug)]
struct StatusDocument {
    status: Arc<sluice_translate::Status>,
    /// Per Gateway, why it is not programmed yet.
    programmed_holds: BTreeMap<String, String>,
    data_planes: BTreeMap<String, GatewayProgress>,
    problems: Arc<Vec<Problem>>,
}

impl StatusDocument {
    /// Cheap equality: the large parts are compared by identity.
    fn same_as(&self, other: &StatusDocument) -> bool {
        Arc::ptr_eq(&self.status, &other.status)
            && Arc::ptr_eq(&self.problems, &other.problems)
            && self.programmed_holds == other.programmed_holds
            && self.data_planes == other.data_planes
    }

    /// The status with the holds applied.
    fn status(&self) -> sluice_translate::Status {
        let mut status = (*self.status).clone();
        for (key, gateway) in &mut status.gateways {
            if let Some(message) = self.programmed_holds.get(&key.to_string()) {
                gateway.hold_programmed(reason::PENDING, message);
            }
        }
        status.hold_listener_sets_with_gateways();
        let keys: Vec<_> = status.gateways.keys().cloned().collect();
        for key in keys {
            if let Some(progress) = self.data_planes.get(&key.to_string()) {
                status.apply_dropped(&key, &progress.dropped());
            }
        }
        status
    }

    fn to_yaml(&self) -> Result<String, String> {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct File<'a> {
            status: sluice_translate::Status,
            data_planes: &'a BTreeMap<String, GatewayProgress>,
            problems: Vec<String>,
        }
        let problems = self.problems.iter().map(|p| format!("{}: {}", p.file.display(), p.message)).collect();
        serde_saphyr::to_string(&File { status: self.status(), data_planes: &self.data_planes, problems })
            .map_err(|e| e.to_string())
    }
}

/// Conflicted and OverlappingTLSConfig are fine when False; the other conditions when True.
fn good_when_false(condition: &Condition) -> bool {
    matches!(condition.type_.as_str(), "Conflicted" | "OverlappingTLSConfig")
}

fn is_good(condition: &Condition) -> bool {
    (condition.status == ConditionStatus::True) != good_when_false(condition)
}

/// `Accepted, ResolvedRefs, Programmed=False (Pending: ...)`, and whether all is well.
fn describe(conditions: &[Condition]) -> (bool, String) {
    let parts: Vec<String> = conditions
        .iter()
        .map(|c| match (is_good(c), good_when_false(c)) {
            (true, false) => c.type_.clone(),
            (true, true) => format!("{}=False", c.type_),
            (false, _) => format!("{}={} ({}: {})", c.type_, c.status.as_str(), c.reason, c.message),
        })
        .collect();
    (conditions.iter().all(is_good), parts.join(", "))
}

/// The human summary of GatewayClasses, Gateways and listeners (few, and changing with
/// the data planes' progress).
fn render_gateways(document: &StatusDocument, processes: &BTreeMap<String, DataPlane>, quiet: bool) -> String {
    let mut out = String::new();
    for (name, class) in &document.status.gateway_classes {
        let (healthy, text) = describe(&class.conditions);
        if !healthy || !quiet {
            out.push_str(&format!("GatewayClass {name}: {text}\n"));
        }
    }
    let mut held_gateways = BTreeMap::new();
    for (key, gateway) in &document.status.gateways {
        let name = key.to_string();
        let mut held = gateway.clone();
        if let Some(message) = document.programmed_holds.get(&name) {
            held.hold_programmed(reason::PENDING, message);
        }
        let (healthy, text) = describe(&held.conditions);
        held_gateways.insert(key.clone(), held);
        let progress = document.data_planes.get(&name);
        let version = progress.and_then(|p| p.version).map(|v| format!(" [version {v}]")).unwrap_or_default();
        let admin = processes.get(&name).map(|p| format!(" admin http://{}", p.admin)).unwrap_or_default();
        if !healthy || !quiet {
            out.push_str(&format!("Gateway {name}: {text}{version}{admin}\n"));
        }
        for listener in &gateway.listeners {
            let (healthy, text) = describe(&listener.conditions);
            if !healthy || !quiet {
                out.push_str(&format!(
                    "  listener {}: {} route(s) attached; {text}\n",
                    listener.name, listener.attached_routes
                ));
            }
        }
    }
    // ListenerSets, with the holds of their Gateways.
    let mut sets = sluice_translate::Status {
        gateways: held_gateways,
        listener_sets: document.status.listener_sets.clone(),
        ..Default::default()
    };
    sets.hold_listener_sets_with_gateways();
    for (key, set) in &sets.listener_sets {
        let (healthy, text) = describe(&set.conditions);
        if !healthy || !quiet {
            out.push_str(&format!("ListenerSet {key} (Gateway {}): {text}\n", set.gateway));
        }
        for listener in &set.listeners {
            let (healthy, text) = describe(&listener.conditions);
            if !healthy || !quiet {
                out.push_str(&format!(
                    "  listener {}: {} route(s) attached; {text}\n",
                    listener.name, listener.attached_routes
                ));
            }
        }
    }
    out
}

/// The routes' part of the summary: every route parent that is not fully accepted, and a
/// count of those that are. Computed once per translation.
fn render_routes(status: &sluice_translate::Status, quiet: bool) -> String {
    let mut out = String::new();
    let mut accepted = 0;
    for (kind, routes) in [
        ("HTTPRoute", &status.http_routes),
        ("GRPCRoute", &status.grpc_routes),
        ("TCPRoute", &status.tcp_routes),
        ("UDPRoute", &status.udp_routes),
        ("TLSRoute", &status.tls_routes),
    ] {
        for (key, route) in routes {
            for parent in &route.parents {
                if parent.conditions.iter().all(is_good) {
                    accepted += 1;
                } else {
                    let (_, text) = describe(&parent.conditions);
                    let namespace = parent.parent_ref.namespace.as_deref().unwrap_or(&key.namespace);
                    out.push_str(&format!("{kind} {key} -> {namespace}/{}: {text}\n", parent.parent_ref.name));
                }
            }
        }
    }
    for (key, policy) in &status.backend_tls_policies {
        for ancestor in &policy.ancestors {
            if !ancestor.conditions.iter().all(is_good) {
                let (_, text) = describe(&ancestor.conditions);
                out.push_str(&format!("BackendTLSPolicy {key} -> {}: {text}\n", ancestor.gateway));
            }
        }
    }
    if !quiet {
        out.push_str(&format!("{accepted} route parent(s) accepted with resolved references\n"));
    }
    out
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

fn write_atomically(path: &Path, content: &str) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, content)?;
    std::fs::rename(&temporary, path)
}

fn free_loopback_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free admin port")?;
    Ok(listener.local_addr()?)
}
