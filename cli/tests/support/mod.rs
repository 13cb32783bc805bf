//! Helpers for the push and standalone tests: processes, ports, a tiny HTTP client.

#![allow(dead_code)] // each test file uses a different part

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_controller::push::{Authentication, PushServer, ServerTls};
use sluice_snapshot::{
    AppProtocol, Cluster, Endpoint, Header, HeaderModifier, HttpFilter, HttpRoute, Listener, Protocol, Snapshot,
    WeightedBackend, http_filter, weighted_backend,
};

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

#[path = "../../../dataplane/tests/support/ports.rs"]
mod ports;
pub use ports::free_port;

/// `GET path` with `Host: host`; returns the status and the body, or an error text.
pub fn get(port: u16, host: &str, path: &str) -> Result<(u16, String, String), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no response head: {text:?}"))?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status: {head}"))?;
    Ok((status, head.to_string(), body.to_string()))
}

/// Polls until `check` holds or `timeout` passes.
pub fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A child process killed when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    /// SIGTERM first, so that `sluice run` cleans up after itself; SIGKILL after 3 s.
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A data plane fed by the push server at `push` (loopback, no TLS).
pub fn dataplane(push: SocketAddr, gateway: &str, pod: &str, admin: u16) -> Process {
    dataplane_with(push, gateway, pod, admin, &[])
}

/// `dataplane` with more arguments.
pub fn dataplane_with(push: SocketAddr, gateway: &str, pod: &str, admin: u16, extra: &[&str]) -> Process {
    let child = Command::new(SLUICE)
        .args(["dataplane", "--control-plane", &format!("http://{push}"), "--gateway", gateway, "--pod", pod])
        .args(["--bind", "127.0.0.1", "--admin", &format!("127.0.0.1:{admin}")])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Process(child)
}

/// The generation the data plane serves, from its admin `/config`.
pub fn served_generation(admin: u16) -> Option<u64> {
    let (_, _, body) = get(admin, "admin", "/config").ok()?;
    body.split_whitespace().find_map(|part| part.strip_prefix("generation="))?.parse().ok()
}

/// `sluice_config_reloads_total{result="applied"}` from the data plane's `/metrics`.
pub fn applied_reloads(admin: u16) -> u64 {
    let (_, _, body) = get(admin, "admin", "/metrics").unwrap();
    body.lines()
        .find(|l| l.starts_with("sluice_config_reloads_total{result=\"applied\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no applied reloads in the metrics:\n{body}"))
}

/// A push server running on its own runtime until dropped.
pub struct Controller {
    pub push: PushServer,
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Controller {
    /// Starts a fresh push server (no state) on `port` (0: any free port), with TLS and
    /// token authentication when `secured`, else plain and unauthenticated.
    pub fn start(port: u16, secured: Option<(ServerTls, Authentication)>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let push = PushServer::new();
        let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = push.clone();
        runtime.spawn(async move {
            let (tls, authentication) = match secured {
                Some((tls, authentication)) => (Some(tls), authentication),
                None => (None, Authentication::LoopbackOnly),
            };
            server.serve(listener, tls, authentication, async { drop(stopped.await) }).await.unwrap();
        });
        Controller { push, address, stop: Some(stop), runtime: Some(runtime) }
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().unwrap()
    }
}

impl Drop for Controller {
    /// Stops serving: every stream ends and the port closes, as when the process dies.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// An echo backend on its own runtime; returns its port and the runtime that keeps it.
pub fn echo(service: &str) -> (u16, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let identity = sluice_controller::standalone::echo::EchoIdentity {
        namespace: "test".into(),
        service: service.into(),
        pod: format!("{service}-0"),
    };
    runtime.spawn(sluice_controller::standalone::echo::serve(listener, identity));
    (port, runtime)
}

/// A snapshot with one HTTP listener on `port`: `host` → the echo backend at
/// `backend_port`, answering with `x-version: tag`. A `cluster` other than "echo" names
/// a cluster the snapshot does not define, which the data plane must reject.
pub fn snapshot(gateway: &str, port: u16, host: &str, backend_port: u16, tag: &str, cluster: &str) -> Snapshot {
    let filter = HttpFilter {
        kind: Some(http_filter::Kind::ResponseHeaderModifier(HeaderModifier {
            set: vec![Header { name: "x-version".into(), value: tag.into() }],
            ..Default::default()
        })),
    };
    Snapshot {
        gateway: gateway.into(),
        listeners: vec![Listener {
            name: "http".into(),
            port: u32::from(port),
            protocol: Protocol::Http as i32,
            http_routes: vec![HttpRoute {
                name: "httproute/test/r/rule/0/match/0".into(),
                hostnames: vec![host.into()],
                filters: vec![filter],
                backends: vec![WeightedBackend {
                    name: cluster.into(),
                    weight: 1,
                    target: Some(weighted_backend::Target::Cluster(cluster.into())),
                    filters: vec![],
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        clusters: vec![Cluster {
            name: "echo".into(),
            app_protocol: AppProtocol::Http1 as i32,
            endpoints: vec![Endpoint { address: "127.0.0.1".into(), port: u32::from(backend_port), ready: true }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
