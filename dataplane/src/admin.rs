//! The admin endpoint: `GET /ready`, `/config`, `/config/endpoints`, `/metrics`, on its own
//! thread and runtime.
//!
//! Every connection is its own task, with a deadline for its request head and one for
//! writing the answer, so a client that dribbles bytes or never reads `/metrics` holds
//! only its own connection: the kubelet's `/ready` is answered meanwhile. The endpoint
//! binds `--admin` (in pods `0.0.0.0:9901`, the container port `admin`); it is not a port
//! of the Gateway's Service, so only what reaches pod IPs (kubelet, scrapers) reaches it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;
use crate::tables::Tables;

/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client may take to read the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 256;
/// The largest request head read.
const MAX_HEAD: usize = 4096;

struct Admin {
    tables: Tables,
    metrics: Arc<Metrics>,
    registry: prometheus_client::registry::Registry,
    /// A listener address that must accept connections before `/ready` says so.
    probe: Option<String>,
    ready: AtomicBool,
    connections: AtomicUsize,
}

/// Binds `address` and serves the admin endpoint on a thread of its own.
pub fn spawn(address: &str, tables: Tables, metrics: Arc<Metrics>, probe: Option<String>) -> Result<()> {
    let listener = std::net::TcpListener::bind(address).with_context(|| format!("binding admin address {address}"))?;
    listener.set_nonblocking(true).context("admin socket")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("admin runtime")?;
    let registry = metrics.registry();
    let admin = Arc::new(Admin {
        tables,
        metrics,
        registry,
        probe,
        ready: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
    });
    std::thread::Builder::new().name("admin".into()).spawn(move || {
        runtime.block_on(async move {
            let Ok(listener) = TcpListener::from_std(listener) else { return };
            loop {
                let Ok((stream, peer)) = listener.accept().await else { continue };
                if admin.connections.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                    admin.connections.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                let admin = admin.clone();
                tokio::spawn(async move {
                    admin.serve(stream, peer).await;
                    admin.connections.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
    })?;
    Ok(())
}

impl Admin {
    async fn serve(&self, mut stream: TcpStream, peer: SocketAddr) {
        let mut head = Vec::with_capacity(512);
        let read = tokio::time::timeout(READ_TIMEOUT, async {
            let mut chunk = [0u8; 1024];
            while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => head.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                }
            }
            true
        })
        .await;
        if !matches!(read, Ok(true)) {
            tracing::debug!(%peer, "admin client sent no complete request in time");
            return;
        }
        let request = String::from_utf8_lossy(&head);
        let path = request.split_whitespace().nth(1).unwrap_or("/");
        let (status, body) = self.answer(path).await;
        let response =
            format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }

    async fn answer(&self, path: &str) -> (&'static str, String) {
        match path {
            "/ready" => {
                if !self.ready.load(Ordering::Relaxed) && self.accepting().await {
                    self.ready.store(true, Ordering::Relaxed);
                }
                if self.ready.load(Ordering::Relaxed) {
                    ("200 OK", "ready\n".to_string())
                } else {
                    ("503 Service Unavailable", "listeners are not accepting yet\n".to_string())
                }
            }
            "/metrics" => {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &self.registry) {
                    Ok(()) => ("200 OK", text),
                    Err(_) => ("500 Internal Server Error", "cannot render metrics\n".to_string()),
                }
            }
            "/config/endpoints" => ("200 OK", endpoints_text(&self.tables.load())),
            "/config" => {
                let current = self.tables.load();
                let generation = self.metrics.generation.load(Ordering::Relaxed);
                ("200 OK", format!("gateway={} generation={generation}\n", current.gateway))
            }
            _ => ("404 Not Found", "not found\n".to_string()),
        }
    }

    /// Whether the first listener accepts connections (none to check: yes).
    async fn accepting(&self) -> bool {
        let Some(probe) = &self.probe else { return true };
        matches!(tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(probe)).await, Ok(Ok(_)))
    }
}

/// `/config/endpoints`: the served tables' generation and build time, then one line per
/// cluster with its endpoints (what the endpoint-churn benchmark polls to see when an
/// EndpointSlice change reached the data plane).
fn endpoints_text(tables: &crate::tables::Compiled) -> String {
    use std::fmt::Write as _;
    let mut text = format!(
        "gateway={} generation={} compiled_unix_ms={}\n",
        tables.gateway, tables.generation, tables.compiled_unix_ms
    );
    for cluster in &tables.clusters {
        text.push_str(&cluster.name);
        for endpoint in &cluster.endpoints {
            let _ = write!(text, " {endpoint}");
        }
        text.push('\n');
    }
    text
}
