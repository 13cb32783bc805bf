//! The push client: one gRPC stream to the controller, snapshots in, ACK/NACK out.
//!
//! ```text
//!  connect (TLS, bearer token) ──► Hello{gateway, pod, current version}
//!     ◄── Snapshot vN ──► same content as served? take the version, no reload
//!                         else validate + compile ──ok──► ArcSwap store ──► Ack{vN, dropped pieces}
//!                                                  └─err─► keep serving     ──► Nack{vN, error}
//!  stream ends / fails ──► keep serving the last good snapshot, reconnect after a
//!                          jittered exponential backoff (100 ms … 10 s)
//! ```
//!
//! With `--state-dir`, the applied snapshot is also written there (checksummed, replaced
//! atomically): a whole snapshot at once, the result of deltas [`SAVE_DELAY`] after the
//! first of them, once for a burst and outside the change's busy moment. A data plane
//! that starts while its controller is unreachable serves that snapshot at once
//! (`sluice_config_stale 1`) and takes the controller's as soon as it connects.
//!
//! The client runs on its own thread and runtime, beside Pingora's: the first snapshot
//! decides which ports the proxy listens on, so the proxy starts after it arrives.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sluice_snapshot::Snapshot;
use sluice_snapshot::push::config_push_client::ConfigPushClient;
use sluice_snapshot::push::{Ack, DataPlaneMessage, Hello, Nack, Resync, control_plane_message, data_plane_message};
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::apply::{Applier, Listening, Unapplied};
use crate::metrics::Metrics;
use crate::tables::Tables;

/// Longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Command-line options of the push client.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PushArgs {
    /// The Gateway (namespace/name) this data plane serves; it must be the Gateway its
    /// token is for.
    #[arg(long)]
    pub gateway: Option<String>,
    /// This pod's name, for the controller's bookkeeping (default: $POD_NAME, else
    /// $HOSTNAME).
    #[arg(long)]
    pub pod: Option<String>,
    /// CA certificates (PEM file) trusted for the controller's server certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The same as `--ca`, given as PEM text (in pods: the environment variable, from the
    /// Deployment, which carries both CAs during a CA rotation).
    #[arg(long, env = "SLUICE_PUSH_CA", hide_env_values = true, conflicts_with = "ca")]
    pub ca_pem: Option<String>,
    /// A file holding the bearer token that proves which Gateway this data plane serves
    /// (in pods: the projected ServiceAccount token, renewed by the kubelet). Read at
    /// every connect.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Directory where the last applied snapshot is kept (in pods: an emptyDir), so
    /// that a restarted data plane serves without its controller.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// The file in `--state-dir` holding the last applied snapshot: a header line with the
/// sha256 of the encoded snapshot, then the snapshot (protobuf).
const SAVED_SNAPSHOT: &str = "snapshot.pb";
const SAVED_MAGIC: &str = "sluice-snapshot-v1";

/// How long after an applied delta the snapshot served is saved to `--state-dir`. Encoding
/// and writing the whole snapshot costs a few milliseconds of CPU at 5000 routes: done
/// for every delta before its ACK, it competed with the change's first requests (and the
/// API server's status writes) for the CPU. Deferred, a burst of changes is saved once;
/// a data plane restarted within this time serves the snapshot before the burst until
/// its controller answers.
const SAVE_DELAY: Duration = Duration::from_secs(1);

/// Saving the snapshot served to `--state-dir`.
struct Saver {
    dir: Option<PathBuf>,
    /// When the snapshot served, changed by deltas since the last save, is to be saved.
    due: Option<tokio::time::Instant>,
}

impl Saver {
    /// A whole snapshot was applied: saved at once, as it was received.
    fn whole(&mut self, encoded: &[u8]) {
        let Some(dir) = &self.dir else { return };
        self.due = None;
        save_logged(dir, encoded);
    }

    /// A delta was applied: the snapshot served is saved within [`SAVE_DELAY`].
    fn changed(&mut self) {
        if self.dir.is_some() && self.due.is_none() {
            self.due = Some(tokio::time::Instant::now() + SAVE_DELAY);
        }
    }

    /// Until a save is due; forever when none is.
    async fn due(&self) {
        match self.due {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// Saves the snapshot served if deltas changed it since the last save.
    fn flush(&mut self, applier: &Applier) {
        let (Some(dir), Some(_)) = (&self.dir, self.due.take()) else { return };
        if let Some(snapshot) = &applier.snapshot {
            save_logged(dir, &prost::Message::encode_to_vec(snapshot));
        }
    }
}

fn save_logged(dir: &std::path::Path, encoded: &[u8]) {
    if let Err(error) = save(dir, encoded) {
        // Serving goes on; only a restart without the controller would miss it.
        tracing::warn!("cannot save the snapshot in {}: {error}", dir.display());
    }
}

/// Writes an encoded snapshot to `dir` atomically (a temporary file renamed over the old
/// one).
fn save(dir: &std::path::Path, encoded: &[u8]) -> std::io::Result<()> {
    let mut bytes = format!("{SAVED_MAGIC} {}\n", sluice_snapshot::hash_encoded(encoded)).into_bytes();
    bytes.extend_from_slice(encoded);
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(".{SAVED_SNAPSHOT}.tmp"));
    std::fs::write(&temporary, &bytes)?;
    std::fs::rename(&temporary, dir.join(SAVED_SNAPSHOT))
}

/// The snapshot saved in `dir` for `gateway`, if there is one whose checksum holds.
fn load_saved(dir: &std::path::Path, gateway: &str) -> Result<Option<Snapshot>> {
    let path = dir.join(SAVED_SNAPSHOT);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let newline = bytes.iter().position(|b| *b == b'\n').context("no header line")?;
    let header = std::str::from_utf8(bytes.get(..newline).unwrap_or_default()).context("the header is not text")?;
    let encoded = bytes.get(newline + 1..).unwrap_or_default();
    let hash = header.strip_prefix(SAVED_MAGIC).map(str::trim).context("not a saved snapshot")?;
    if sluice_snapshot::hash_encoded(encoded) != hash {
        bail!("the checksum does not match (a partial or corrupted file)");
    }
    let snapshot: Snapshot = prost::Message::decode(encoded).context("decoding")?;
    if snapshot.gateway != gateway {
        bail!("it is Gateway {}'s, not {gateway}'s", snapshot.gateway);
    }
    Ok(Some(snapshot))
}

/// Starts the push client and waits for the first snapshot that applies; returns its
/// listeners and the tables that the client keeps updating.
pub fn start(url: String, args: PushArgs, metrics: Arc<Metrics>) -> Result<(Listening, Tables)> {
    let gateway = args.gateway.clone().context("--gateway is required with --control-plane")?;
    let pod = args
        .pod
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unnamed".into());
    // Checked now, so that a bad URL, a missing CA or an unreadable token fail at start.
    endpoint(&url, &args)?;
    if let Some(path) = &args.token_file {
        read_token(path)?;
    }
    let (first_sender, first) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("push-client".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!("cannot start the push client runtime: {error}");
                return;
            }
        };
        let mut applier = Applier::new(metrics, Some(first_sender), true);
        if let Some(dir) = &args.state_dir {
            match load_saved(dir, &gateway) {
                Ok(Some(saved)) => {
                    let generation = saved.version.as_ref().map_or(0, |v| v.generation);
                    match applier.apply(saved) {
                        Ok(_) => {
                            applier.metrics.stale.store(true, Ordering::Relaxed);
                            tracing::warn!(generation, "serving the saved snapshot until the control plane answers");
                        }
                        Err(error) => tracing::warn!("the saved snapshot does not apply: {error}"),
                    }
                }
                Ok(None) => {}
                Err(error) => tracing::warn!("ignoring the saved snapshot in {}: {error:#}", dir.display()),
            }
        }
        runtime.block_on(run(&url, &args, gateway, pod, applier));
    })?;
    tracing::info!("waiting for the first snapshot from the control plane");
    first.recv().context("the push client stopped before a snapshot arrived")
}

/// The channel endpoint, with mTLS for https:// URLs.
fn endpoint(url: &str, args: &PushArgs) -> Result<Endpoint> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("--control-plane {url:?} is not a URL"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        // Large windows: a multi-MiB snapshot arrives without waiting on window updates.
        .initial_stream_window_size(16 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024);
    if url.starts_with("https://") {
        let ca = match (&args.ca, &args.ca_pem) {
            (Some(path), _) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            (None, Some(pem)) => pem.clone().into_bytes(),
            (None, None) => bail!("--ca or --ca-pem ($SLUICE_PUSH_CA) is required with an https:// control plane"),
        };
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        endpoint = endpoint.tls_config(tls).context("push client TLS")?;
    } else {
        let host = endpoint.uri().host().unwrap_or_default().trim_matches(['[', ']']);
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            bail!("a control plane without TLS must be on loopback; use https:// for {url}");
        }
    }
    Ok(endpoint)
}

async fn run(url: &str, args: &PushArgs, gateway: String, pod: String, mut applier: Applier) {
    let mut backoff = MIN_BACKOFF;
    let mut saver = Saver { dir: args.state_dir.clone(), due: None };
    loop {
        let started = Instant::now();
        // The CA and the token are read again at every connect: renewed ones take effect.
        let token = args.token_file.as_deref().map(read_token).transpose();
        let connected = match (endpoint(url, args), token) {
            (Ok(endpoint), Ok(token)) => {
                session(&endpoint, token.as_deref(), &gateway, &pod, &mut applier, &mut saver).await
            }
            (Err(error), _) | (_, Err(error)) => Err(error),
        };
        saver.flush(&applier);
        match connected {
            Ok(received) => {
                tracing::warn!("the control plane closed the stream; serving the last good snapshot");
                if received {
                    backoff = MIN_BACKOFF;
                }
            }
            Err(error) => tracing::warn!("control plane unavailable ({error:#}); serving the last good snapshot"),
        }
        if started.elapsed() > MAX_BACKOFF {
            backoff = MIN_BACKOFF;
        }
        // Full jitter in the upper half, so that a fleet does not reconnect in lockstep.
        let pause = backoff.mul_f64(rand::random_range(0.5..=1.0));
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The bearer token in `path` (surrounding whitespace removed).
fn read_token(path: &std::path::Path) -> Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| format!("reading the token {}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token.to_string())
}

/// One stream, until it ends. Returns whether any snapshot arrived.
async fn session(
    endpoint: &Endpoint,
    token: Option<&str>,
    gateway: &str,
    pod: &str,
    applier: &mut Applier,
    saver: &mut Saver,
) -> Result<bool> {
    let channel = endpoint.connect().await.context("connecting")?;
    let mut client = ConfigPushClient::new(channel).max_decoding_message_size(usize::MAX);
    let (sender, receiver) = mpsc::channel(4);
    let hello = Hello {
        gateway: gateway.to_string(),
        pod: pod.to_string(),
        current: applier.current.clone(),
        dropped: applier.dropped.clone(),
        accepts_deltas: true,
    };
    sender.send(message(data_plane_message::Message::Hello(hello))).await?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().context("the token is not a valid header value")?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = client
        .stream(request)
        .await
        .map_err(|status| anyhow::anyhow!("{}: {}", status.code(), status.message()))?
        .into_inner();
    tracing::info!(gateway, pod, "connected to the control plane");
    let mut received = false;
    // The last message received, held until the next one is in. tonic receives into one
    // buffer that keeps the capacity of the largest message for as long as it is its only
    // owner (a whole snapshot: ~1.4 MB at 5000 routes, then reused for every small delta).
    // Held, the buffer is shared when the next message arrives, so that message gets a
    // buffer of its own size and the old one is freed here.
    let mut last: Option<bytes::Bytes> = None;
    loop {
        let next = tokio::select! {
            next = inbound.message() => next,
            () = saver.due() => {
                saver.flush(applier);
                continue;
            }
        };
        let next = next.map_err(|status| anyhow::anyhow!("{}: {}", status.code(), status.message()))?;
        drop(last.take());
        let Some(next) = next else { return Ok(received) };
        let started = Instant::now();
        if let Some(
            control_plane_message::Message::Snapshot(encoded) | control_plane_message::Message::Delta(encoded),
        ) = &next.message
        {
            last = Some(encoded.clone());
        }
        let (kind, whole, outcome) = match next.message {
            Some(control_plane_message::Message::Snapshot(encoded)) => {
                let outcome = match <Snapshot as prost::Message>::decode(encoded.clone()) {
                    Ok(snapshot) => {
                        let offered = snapshot.version.clone();
                        applier.apply(snapshot).map_err(|e| Unapplied::Rejected(offered, e))
                    }
                    Err(error) => Err(Unapplied::Rejected(None, format!("cannot decode the snapshot: {error}"))),
                };
                ("snapshot", Some(encoded), outcome)
            }
            Some(control_plane_message::Message::Delta(encoded)) => ("delta", None, applier.apply_delta(&encoded)),
            None => continue,
        };
        received = true;
        let reply = match outcome {
            Ok(version) => {
                applier.metrics.stale.store(false, Ordering::Relaxed);
                let counter =
                    if kind == "delta" { &applier.metrics.deltas_applied } else { &applier.metrics.snapshots_applied };
                counter.fetch_add(1, Ordering::Relaxed);
                match &whole {
                    Some(encoded) => saver.whole(encoded),
                    None => saver.changed(),
                }
                let apply_ms = started.elapsed().as_secs_f64() * 1e3;
                tracing::info!(generation = version.generation, kind, apply_ms, "applied snapshot");
                data_plane_message::Message::Ack(Ack { version: Some(version), dropped: applier.dropped.clone() })
            }
            Err(Unapplied::Resync(reason)) => {
                applier.metrics.resyncs_requested.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("cannot apply a delta, asking for the whole snapshot: {reason}");
                data_plane_message::Message::Resync(Resync { current: applier.current.clone(), reason })
            }
            Err(Unapplied::Rejected(offered, error)) => {
                applier.metrics.reloads_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("rejected snapshot, keeping the last good one: {error}");
                data_plane_message::Message::Nack(Nack { version: offered, error })
            }
        };
        sender.send(message(reply)).await?;
        // Once answered: the first delta after a whole snapshot then costs its changes too.
        applier.digest_served();
    }
}

fn message(message: data_plane_message::Message) -> DataPlaneMessage {
    DataPlaneMessage { message: Some(message) }
}
