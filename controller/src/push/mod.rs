//! The push server: one gRPC stream per data-plane pod, each receiving only its own
//! Gateway's versioned snapshots, answering ACK or NACK.
//!
//! ```text
//!  publish(gateway, snapshot) ──► Versioner::stamp ──(changed?)──► watch channel per Gateway
//!                                                                   │ one stream task per pod
//!  pod: Hello{gateway, pod, current} ──► identity check ──► resume ─┴─► Snapshot vN ──► pod
//!  pod: Ack/Nack ──► per-pod bookkeeping ──► progress() ──► Programmed condition
//! ```
//!
//! Each published snapshot carries, besides its whole encoding, the delta from the one
//! published before it (`sluice_snapshot::delta::diff`, encoded once). A stream sends
//! that delta when the pod was last sent the delta's base, else the whole snapshot (new
//! stream, a burst merged by the watch channel, after a Nack or a Resync).
//!
//! Versions never go backwards: a reconnecting pod reports what it serves, and the server
//! either adopts that version (same content, e.g. after a controller restart: no reload)
//! or stamps its own content above it.

pub mod auth;
pub mod ca;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use sluice_snapshot::edits::Edits;
use sluice_snapshot::push::config_push_server::{ConfigPush, ConfigPushServer};
use sluice_snapshot::push::{ControlPlaneMessage, DataPlaneMessage, Hello, control_plane_message, data_plane_message};
use sluice_snapshot::{ListenerDelta, Snapshot, SnapshotDelta, Version, Versioner};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// How the push server learns who a client is.
#[derive(Clone)]
pub enum Authentication {
    /// Every stream carries a bearer token that the authenticator turns into the one
    /// Gateway the caller may read.
    Token(Arc<dyn auth::Authenticator>),
    /// No authentication: only for a server bound to loopback (tests).
    LoopbackOnly,
}

impl std::fmt::Debug for Authentication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Authentication::Token(_) => "Token",
            Authentication::LoopbackOnly => "LoopbackOnly",
        })
    }
}

/// What one data-plane pod has applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodProgress {
    /// The last version the pod applied (ACKed, or reported when it connected).
    pub applied: Option<u64>,
    /// The last version the pod rejected, with its error, if it is not yet superseded.
    pub rejected: Option<(u64, String)>,
    /// Whether the pod's stream is open.
    pub connected: bool,
    /// The pieces of the applied version the pod could not compile and does not serve:
    /// (snapshot name, problem).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<(String, String)>,
}

/// The push state of one Gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayProgress {
    /// The version of the latest published snapshot.
    pub version: Option<u64>,
    pub pods: BTreeMap<String, PodProgress>,
}

impl GatewayProgress {
    /// `Ok(())` when every connected pod applied the current version (and at least one
    /// is connected); else why not, for the Gateway's `Programmed` condition message.
    pub fn programmed(&self) -> Result<(), String> {
        self.programmed_from(None)
    }

    /// As [`GatewayProgress::programmed`], but a pod that applied `floor` or a later
    /// version counts as programmed: the versions after `floor` changed only routes or
    /// endpoints, which do not make a Gateway unprogrammed while they travel (a pod that
    /// rejected one still does).
    pub fn programmed_from(&self, floor: Option<u64>) -> Result<(), String> {
        let Some(version) = self.version else {
            return Err("no configuration has been published yet".into());
        };
        let connected: Vec<_> = self.pods.iter().filter(|(_, pod)| pod.connected).collect();
        if connected.is_empty() {
            return Err(format!("waiting for a data plane to connect and apply version {version}"));
        }
        if let Some((pod, (rejected, error))) =
            connected.iter().find_map(|(name, pod)| pod.rejected.as_ref().map(|r| (name, r)))
        {
            return Err(format!("data plane {pod} rejected version {rejected} and serves the previous one: {error}"));
        }
        let needed = floor.map_or(version, |floor| floor.min(version));
        let behind: Vec<&str> = connected
            .iter()
            .filter(|(_, pod)| pod.applied.is_none_or(|applied| applied < needed))
            .map(|(name, _)| name.as_str())
            .collect();
        if behind.is_empty() {
            Ok(())
        } else {
            Err(format!("waiting for data planes {} to apply version {version}", behind.join(", ")))
        }
    }

    /// The pieces that connected pods on the current version do not serve, by snapshot
    /// name (`httproute/ns/r/rule/0/match/0`, `gateway/ns/gw/listener/l`), with the
    /// problem the first such pod reported.
    pub fn dropped(&self) -> BTreeMap<String, String> {
        let mut dropped = BTreeMap::new();
        let current =
            self.pods.values().filter(|pod| pod.connected && pod.applied.is_some() && pod.applied == self.version);
        for pod in current {
            for (name, problem) in &pod.dropped {
                dropped.entry(name.clone()).or_insert_with(|| problem.clone());
            }
        }
        dropped
    }
}

/// A published snapshot, encoded once for all streams.
#[derive(Debug)]
struct Published {
    version: Version,
    /// The encoding with `version`, as sent: made when a stream first needs the whole
    /// snapshot (streams at the previous content get the delta).
    encoded: std::sync::OnceLock<Bytes>,
    /// The content, decoded (without `version`): the base of the next delta.
    content: Arc<Snapshot>,
    /// The digests of the content's items: the next content's hash costs its changes.
    digests: Arc<sluice_snapshot::digest::Digests>,
    /// The delta from the content published before, encoded: (base content hash, bytes).
    delta: Option<(String, Bytes)>,
}

impl Published {
    fn new(version: Version, content: Arc<Snapshot>, digests: Arc<sluice_snapshot::digest::Digests>) -> Self {
        Self { version, encoded: std::sync::OnceLock::new(), content, digests, delta: None }
    }

    /// The whole snapshot with its version, encoded once.
    fn encoded(&self) -> Bytes {
        self.encoded
            .get_or_init(|| {
                let unversioned = prost::Message::encode_to_vec(&*self.content);
                Bytes::from(sluice_snapshot::encode_with_version(&unversioned, &self.version))
            })
            .clone()
    }

    /// The same content under another version (no delta: a stream at this content gets
    /// an empty one, see [`message_for`]).
    fn restamped(&self, version: Version) -> Self {
        Self::new(version, self.content.clone(), self.digests.clone())
    }
}

/// What kind of message a stream sent, for the bytes-sent counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A whole snapshot.
    Snapshot,
    /// A delta against the snapshot the pod serves.
    Delta,
}

/// Messages and bytes the push server sent, by kind.
#[derive(Debug, Default)]
struct SentCounters {
    snapshots: AtomicU64,
    snapshot_bytes: AtomicU64,
    deltas: AtomicU64,
    delta_bytes: AtomicU64,
}

/// Messages and bytes sent since the server started, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub snapshots: u64,
    pub snapshot_bytes: u64,
    pub deltas: u64,
    pub delta_bytes: u64,
}

struct GatewayState {
    versioner: Versioner,
    /// The latest stamped snapshot; every stream of this Gateway watches it.
    current: watch::Sender<Option<Arc<Published>>>,
    pods: BTreeMap<String, PodState>,
    /// The Gateway object's UID, when known: credentials bound to another UID (an
    /// earlier Gateway of that name) are refused.
    uid: Option<String>,
    /// A private copy of the current content (the address of which it is a copy, and
    /// the copy): [`PushServer::publish_edited`] edits it in place and publishes it, and
    /// the content it replaces, edited the same way, becomes the next copy.
    spare: Option<(usize, Snapshot)>,
}

#[derive(Default)]
struct PodState {
    progress: PodProgress,
    /// The stream that owns this pod's entry (a reconnect may overlap the old stream).
    stream: u64,
}

impl GatewayState {
    fn new() -> Self {
        Self {
            versioner: Versioner::default(),
            current: watch::Sender::new(None),
            pods: BTreeMap::new(),
            uid: None,
            spare: None,
        }
    }

    fn progress(&self) -> GatewayProgress {
        GatewayProgress {
            version: self.versioner.current().filter(|v| !v.content_hash.is_empty()).map(|v| v.generation),
            pods: self.pods.iter().map(|(name, pod)| (name.clone(), pod.progress.clone())).collect(),
        }
    }

    /// Re-stamps the current content (after the floor moved) and publishes it.
    fn restamp(&mut self) {
        let Some(published) = self.current.borrow().clone() else { return };
        if let Some(version) = self.versioner.stamp_hash(published.version.content_hash.clone()) {
            self.current.send_replace(Some(Arc::new(published.restamped(version))));
        }
    }
}

#[derive(Default)]
struct Shared {
    gateways: Mutex<BTreeMap<String, GatewayState>>,
    /// Bumped whenever any Gateway's progress changes.
    progress: watch::Sender<u64>,
    streams: AtomicU64,
    sent: SentCounters,
    /// True on a standby controller replica: new streams are refused and open ones end,
    /// so data planes reconnect until they reach the leader (whose progress counts).
    standby: watch::Sender<bool>,
}

/// The push server's state; cheap to clone. Serve it with [`PushServer::serve`].
#[derive(Clone, Default)]
pub struct PushServer {
    shared: Arc<Shared>,
}

impl PushServer {
    pub fn new() -> Self {
        Self::default()
    }

    fn gateways(&self) -> MutexGuard<'_, BTreeMap<String, GatewayState>> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters more than stopping pushes, so a poisoned lock is taken over.
        self.shared.gateways.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Tells the server the UID of the Gateway object now named `gateway` (forgotten
    /// with the Gateway in [`PushServer::remove`]).
    pub fn bind_uid(&self, gateway: &str, uid: &str) {
        let mut gateways = self.gateways();
        let state = gateways.entry(gateway.to_string()).or_insert_with(GatewayState::new);
        if state.uid.as_deref() != Some(uid) {
            state.uid = Some(uid.to_string());
        }
    }

    /// Whether a credential bound to `uid` (or to none) may read `gateway`: a credential
    /// bound to another UID than the Gateway's is an earlier Gateway's of the same name.
    fn uid_matches(&self, gateway: &str, uid: Option<&str>) -> bool {
        match (self.gateways().get(gateway).and_then(|state| state.uid.as_deref()), uid) {
            (Some(current), Some(uid)) => current == uid,
            _ => true,
        }
    }

    fn progress_changed(&self) {
        self.shared.progress.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Publishes a Gateway's latest snapshot. It is stamped with a new version and pushed
    /// to the Gateway's data planes only if its content changed; returns the new version.
    pub fn publish(&self, gateway: &str, mut snapshot: Snapshot) -> Option<Version> {
        // Diffed and hashed once, outside the lock: against the snapshot published now,
        // whose digests the delta edits (only changed items are digested). The delta is
        // kept only if that is still the one published when the new one is stamped.
        snapshot.version = None;
        // Edited in place once it is replaced (the next private copy): room for insertions.
        sluice_snapshot::room::make_room(&mut snapshot);
        let content = Arc::new(snapshot);
        let before = self.gateways().get(gateway).and_then(|state| state.current.borrow().clone());
        let delta = before.as_ref().map(|before| sluice_snapshot::delta::diff(&before.content, &content));
        let digests = match (&before, &delta) {
            (Some(before), Some(delta)) => before.digests.after(delta).ok(),
            _ => None,
        };
        let digests = Arc::new(digests.unwrap_or_else(|| sluice_snapshot::digest::Digests::of(&content)));
        let hash = digests.hash(&content.gateway);
        let delta = delta.filter(|_| before.as_ref().is_some_and(|before| before.version.content_hash != hash));
        let mut gateways = self.gateways();
        let state = gateways.entry(gateway.to_string()).or_insert_with(GatewayState::new);
        let version = state.versioner.stamp_hash(hash)?;
        if let Some((_, stale)) = state.spare.take() {
            drop_elsewhere(stale);
        }
        let mut published = Published::new(version.clone(), content.clone(), digests);
        let base = state.current.borrow().clone();
        let mut sent = None;
        if let (Some(mut delta), Some(before), Some(base)) = (delta, &before, base)
            && Arc::ptr_eq(&before.content, &base.content)
        {
            delta.base = Some(base.version.clone());
            delta.version = Some(version.clone());
            let encoded = Bytes::from(prost::Message::encode_to_vec(&delta));
            published.delta = Some((base.version.content_hash.clone(), encoded));
            sent = Some(delta);
        }
        let old = state.current.send_replace(Some(Arc::new(published)));
        drop(gateways);
        self.progress_changed();
        drop(before);
        self.keep_spare(gateway, old, sent, &content);
        Some(version)
    }

    /// Turns the content a publish replaced (`old`) into the next private copy of the new
    /// content (`new`) by applying the delta that was sent (made from `old`'s content),
    /// if no stream holds it any more: O(the delta). Otherwise (the first publish, a
    /// stream still sending the old content) the copy is made on another thread, so that
    /// the next edit need not wait for it.
    fn keep_spare(&self, gateway: &str, old: Option<Arc<Published>>, sent: Option<SnapshotDelta>, new: &Arc<Snapshot>) {
        // Held elsewhere (a stream sending it): only a reference goes.
        let old_content = old.and_then(|old| Arc::try_unwrap(old).ok()).map(|old| old.content);
        let next = old_content.and_then(|content| Arc::try_unwrap(content).ok());
        let (Some(mut next), Some(delta)) = (next, sent) else {
            return self.copy_elsewhere(gateway, new);
        };
        if sluice_snapshot::delta::apply_in_place(&mut next, delta).is_err() {
            drop_elsewhere(next);
            return self.copy_elsewhere(gateway, new);
        }
        next.version = None;
        self.set_spare(gateway, address(new), next);
    }

    /// Makes the private copy of `content` on a blocking thread (when inside a runtime).
    fn copy_elsewhere(&self, gateway: &str, content: &Arc<Snapshot>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (server, gateway, content) = (self.clone(), gateway.to_string(), content.clone());
        drop(runtime.spawn_blocking(move || {
            let copy = sluice_snapshot::room::copy_with_room(&content);
            let at = address(&content);
            drop(content);
            server.set_spare(&gateway, at, copy);
        }));
    }

    /// Keeps `copy` as the private copy of the content at `at`, if that is still current
    /// and has none.
    fn set_spare(&self, gateway: &str, at: usize, copy: Snapshot) {
        let mut gateways = self.gateways();
        match gateways.get_mut(gateway) {
            Some(state)
                if state.spare.is_none()
                    && state.current.borrow().as_ref().is_some_and(|p| address(&p.content) == at) =>
            {
                state.spare = Some((at, copy));
            }
            _ => {
                drop(gateways);
                drop_elsewhere(copy);
            }
        }
    }

    /// Publishes a Gateway's snapshot edited in place from the content published now:
    /// `edit` edits a copy of it and says where (`Edits`), which gives the delta without
    /// comparing the two; the content it replaces, edited the same way, is the next copy.
    /// So publishing costs what changed, not the snapshot's size (a copy is made only when
    /// there is none: the first time, or while a stream still held the old content).
    /// Nothing is published when `gateway` has no content yet or the edit changed nothing;
    /// returns the new version.
    pub fn publish_edited(&self, gateway: &str, edit: impl FnOnce(&mut Snapshot) -> Edits) -> Option<Version> {
        let (before, spare) = {
            let mut gateways = self.gateways();
            let state = gateways.get_mut(gateway)?;
            let before = state.current.borrow().clone()?;
            let spare = state.spare.take().filter(|(of, _)| *of == address(&before.content));
            (before, spare)
        };
        let mut edited = match spare {
            Some((_, spare)) => spare,
            None => sluice_snapshot::room::copy_with_room(&before.content),
        };
        let edits = edit(&mut edited);
        let Some(mut delta) = edits.delta(&edited) else {
            // Edits that do not describe the result (a bug): compared as any snapshot.
            tracing::warn!(gateway, "an in-place edit did not record its changes; publishing by comparison");
            return self.publish(gateway, edited);
        };
        let digests = before.digests.after(&delta).unwrap_or_else(|_| sluice_snapshot::digest::Digests::of(&edited));
        let hash = digests.hash(&edited.gateway);
        let mut gateways = self.gateways();
        let state = gateways.get_mut(gateway)?;
        if hash == before.version.content_hash {
            state.spare = Some((address(&before.content), edited));
            return None;
        }
        let version = state.versioner.stamp_hash(hash)?;
        let content = Arc::new(edited);
        let mut published = Published::new(version.clone(), content.clone(), Arc::new(digests));
        let base = state.current.borrow().clone();
        let mut sent = None;
        if let Some(base) = base
            && Arc::ptr_eq(&base.content, &before.content)
        {
            delta.base = Some(base.version.clone());
            delta.version = Some(version.clone());
            let encoded = Bytes::from(prost::Message::encode_to_vec(&delta));
            published.delta = Some((base.version.content_hash.clone(), encoded));
            sent = Some(delta);
        }
        let old = state.current.send_replace(Some(Arc::new(published)));
        drop(gateways);
        self.progress_changed();
        drop(before);
        self.keep_spare(gateway, old, sent, &content);
        Some(version)
    }

    /// The content last published for `gateway` (its version cleared), if any.
    pub fn content(&self, gateway: &str) -> Option<Arc<Snapshot>> {
        let gateways = self.gateways();
        let published = gateways.get(gateway)?.current.borrow().clone()?;
        Some(published.content.clone())
    }

    /// Messages and bytes sent to data planes since the server started, by kind.
    pub fn sent(&self) -> Sent {
        let counters = &self.shared.sent;
        Sent {
            snapshots: counters.snapshots.load(Ordering::Relaxed),
            snapshot_bytes: counters.snapshot_bytes.load(Ordering::Relaxed),
            deltas: counters.deltas.load(Ordering::Relaxed),
            delta_bytes: counters.delta_bytes.load(Ordering::Relaxed),
        }
    }

    fn count_sent(&self, kind: MessageKind, bytes: usize) {
        let counters = &self.shared.sent;
        let (messages, total) = match kind {
            MessageKind::Snapshot => (&counters.snapshots, &counters.snapshot_bytes),
            MessageKind::Delta => (&counters.deltas, &counters.delta_bytes),
        };
        messages.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Forgets a deleted Gateway; its open streams stay open but receive nothing more.
    pub fn remove(&self, gateway: &str) {
        self.gateways().remove(gateway);
        self.progress_changed();
    }

    /// The Gateways that have a published snapshot or a connected pod.
    pub fn progress(&self) -> BTreeMap<String, GatewayProgress> {
        self.gateways().iter().map(|(name, state)| (name.clone(), state.progress())).collect()
    }

    /// Refuses (true) or accepts (false, the default) data-plane streams. Going to standby
    /// ends the open streams.
    pub fn set_standby(&self, standby: bool) {
        self.shared.standby.send_if_modified(|s| std::mem::replace(s, standby) != standby);
    }

    /// Changes whenever some Gateway's progress changed.
    pub fn watch_progress(&self) -> watch::Receiver<u64> {
        self.shared.progress.subscribe()
    }

    /// The tonic service, for serving beside other services. Its streams end when
    /// `closing` turns true (a graceful shutdown cannot finish while streams are open).
    pub fn service(
        &self,
        authentication: Authentication,
        closing: watch::Receiver<bool>,
    ) -> ConfigPushServer<PushService> {
        ConfigPushServer::new(PushService { server: self.clone(), authentication, closing })
            .max_decoding_message_size(64 * 1024)
            .max_encoding_message_size(usize::MAX)
    }

    /// Serves the push service on `listener` until `shutdown` completes. With `tls`
    /// (server certificate and key) clients connect over TLS; without it the listener
    /// must be on loopback. Without token authentication it must be on loopback too.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        tls: Option<ServerTls>,
        authentication: Authentication,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        let address: SocketAddr = listener.local_addr()?;
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .tcp_nodelay(true);
        match &tls {
            Some(tls) => {
                let config = tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(&tls.certificate_pem, &tls.private_key_pem))
                    // A client that stalls its handshake holds no connection for long.
                    .timeout(TLS_HANDSHAKE_TIMEOUT);
                builder = builder.tls_config(config).context("push server TLS")?;
            }
            None => anyhow::ensure!(
                address.ip().is_loopback(),
                "the push server without TLS may only listen on loopback, not {address}"
            ),
        }
        if matches!(authentication, Authentication::LoopbackOnly) {
            anyhow::ensure!(
                address.ip().is_loopback(),
                "the push server without authentication may only listen on loopback, not {address}"
            );
        }
        // Accepted sockets get TCP_NODELAY here: `Server::tcp_nodelay` only applies to
        // listeners tonic binds itself, and Nagle + delayed ACKs stall large snapshots.
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let (closing, closed) = watch::channel(false);
        let shutdown = async move {
            shutdown.await;
            closing.send_replace(true);
        };
        builder
            .add_service(self.service(authentication, closed))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .context("push server")
    }

    /// Serves with TLS on `listener` until `stop` turns true, with a server certificate
    /// from `issue` that is replaced every `renew_every`: the server stops (open streams
    /// end; data planes reconnect and keep serving meanwhile), binds the same address
    /// again and serves with a new certificate, so a long-running controller never serves
    /// an expired one.
    pub async fn serve_renewing(
        &self,
        listener: tokio::net::TcpListener,
        issue: impl Fn() -> Result<ServerTls>,
        authentication: Authentication,
        renew_every: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let address = listener.local_addr().ok();
        let mut listener = Some(listener);
        loop {
            let tls = match issue() {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::error!("issuing the push server certificate: {error:#}");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    continue;
                }
            };
            let bound = match (listener.take(), address) {
                (Some(listener), _) => listener,
                (None, Some(address)) => match tokio::net::TcpListener::bind(address).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!("binding the push server to {address} again: {error}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
                (None, None) => return,
            };
            let mut until = stop.clone();
            let ends = async move {
                tokio::select! {
                    _ = until.wait_for(|stopped| *stopped) => {}
                    () = tokio::time::sleep(renew_every) => {}
                }
            };
            if let Err(error) = self.serve(bound, Some(tls), authentication.clone(), ends).await {
                tracing::error!("push server: {error:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if *stop.borrow_and_update() {
                return;
            }
            tracing::info!("renewing the push server certificate");
        }
    }

    /// Registers a pod's stream; returns the stream id, the channel to watch and whether
    /// the current snapshot must be sent first.
    fn connect(&self, hello: &Hello) -> (u64, watch::Receiver<Option<Arc<Published>>>) {
        let stream = self.shared.streams.fetch_add(1, Ordering::Relaxed) + 1;
        let mut gateways = self.gateways();
        let state = gateways.entry(hello.gateway.clone()).or_insert_with(GatewayState::new);
        // A generation no controller could have stamped (one per change) is ignored:
        // adopting it would leave no room to grow, freezing the Gateway's config.
        let reported = hello.current.clone().filter(|v| v.generation > 0 && v.generation <= MAX_REPORTED_GENERATION);
        if hello.current.as_ref().is_some_and(|v| v.generation > MAX_REPORTED_GENERATION) {
            tracing::warn!(gateway = hello.gateway, pod = hello.pod, "ignoring an impossible reported generation");
        }
        if let Some(reported) = &reported {
            let ours = state.current.borrow().clone();
            match ours {
                Some(ours) if ours.version.content_hash == reported.content_hash => {
                    // It serves our content already, maybe under a higher generation (we
                    // restarted): take its version so nobody reloads.
                    if state.versioner.adopt(reported) {
                        let adopted = ours.restamped(reported.clone());
                        state.current.send_replace(Some(Arc::new(adopted)));
                    }
                }
                _ => {
                    state.versioner.observe(reported.generation);
                    state.restamp();
                }
            }
        }
        let pod = state.pods.entry(hello.pod.clone()).or_default();
        pod.stream = stream;
        pod.progress.connected = true;
        pod.progress.rejected = None;
        pod.progress.applied = reported.map(|v| v.generation);
        pod.progress.dropped = hello.dropped.iter().map(|d| (d.name.clone(), d.problem.clone())).collect();
        let receiver = state.current.subscribe();
        drop(gateways);
        self.progress_changed();
        (stream, receiver)
    }

    fn record(&self, gateway: &str, pod: &str, stream: u64, message: data_plane_message::Message) {
        let mut gateways = self.gateways();
        let Some(entry) = gateways.get_mut(gateway).and_then(|g| g.pods.get_mut(pod)) else { return };
        if entry.stream != stream {
            return;
        }
        match message {
            data_plane_message::Message::Ack(ack) => {
                entry.progress.applied = ack.version.map(|v| v.generation);
                entry.progress.rejected = None;
                if !ack.dropped.is_empty() {
                    tracing::warn!(gateway, pod, dropped = ack.dropped.len(), "data plane dropped snapshot pieces");
                }
                entry.progress.dropped = ack.dropped.into_iter().map(|d| (d.name, d.problem)).collect();
            }
            data_plane_message::Message::Nack(nack) => {
                let generation = nack.version.map(|v| v.generation).unwrap_or_default();
                tracing::warn!(gateway, pod, generation, error = nack.error, "data plane rejected a snapshot");
                entry.progress.rejected = Some((generation, nack.error));
            }
            data_plane_message::Message::Hello(_) | data_plane_message::Message::Resync(_) => return,
        }
        drop(gateways);
        self.progress_changed();
    }

    /// A pod's stream ended: its entry goes (only connected pods count for Programmed
    /// and dropped pieces), so the bookkeeping never outgrows the pods connected now.
    fn disconnect(&self, gateway: &str, pod: &str, stream: u64) {
        let mut gateways = self.gateways();
        if let Some(state) = gateways.get_mut(gateway)
            && state.pods.get(pod).is_some_and(|entry| entry.stream == stream)
        {
            state.pods.remove(pod);
        }
        drop(gateways);
        self.progress_changed();
    }
}

/// How long a data plane's TLS handshake with the push server may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The highest generation a data plane may report (2^53: a million changes a second for
/// 285 years); above it a report is ignored.
const MAX_REPORTED_GENERATION: u64 = 1 << 53;

/// Where a content lives: tells whether a spare copy is a copy of the current content
/// (while that content is current it is alive, so no other content has its address).
fn address(content: &Arc<Snapshot>) -> usize {
    Arc::as_ptr(content) as usize
}

/// Frees a value on a background thread when inside a runtime: a large snapshot takes
/// milliseconds to free, which should not delay pushing the next one.
fn drop_elsewhere<T: Send + 'static>(value: T) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(value))),
        Err(_) => drop(value),
    }
}

/// TLS material for the push server.
#[derive(Clone)]
pub struct ServerTls {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

/// The tonic service implementation.
pub struct PushService {
    server: PushServer,
    authentication: Authentication,
    closing: watch::Receiver<bool>,
}

impl PushService {
    /// Who the caller is, from its bearer token; `None` when the server runs without
    /// authentication.
    async fn identity<T>(&self, request: &Request<T>) -> Result<Option<auth::Caller>, Status> {
        match &self.authentication {
            Authentication::LoopbackOnly => Ok(None),
            Authentication::Token(authenticator) => {
                let token = auth::bearer_token(request.metadata())
                    .ok_or_else(|| Status::unauthenticated("a bearer token is required"))?;
                let caller = authenticator.authenticate(token).await?;
                if !self.server.uid_matches(&caller.gateway, caller.gateway_uid.as_deref()) {
                    return Err(Status::permission_denied(format!(
                        "the credential is for an earlier Gateway {} (another UID)",
                        caller.gateway
                    )));
                }
                Ok(Some(caller))
            }
        }
    }
}

fn valid_gateway_name(gateway: &str) -> bool {
    gateway.split_once('/').is_some_and(|(namespace, name)| {
        !namespace.is_empty() && !name.is_empty() && !name.contains('/') && gateway.len() <= 317
    })
}

#[tonic::async_trait]
impl ConfigPush for PushService {
    type StreamStream = ReceiverStream<Result<ControlPlaneMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<DataPlaneMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let identity = self.identity(&request).await?;
        if *self.server.shared.standby.borrow() {
            return Err(Status::unavailable("this controller replica is a standby; reconnect to reach the leader"));
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(30), inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 30 s"))??;
        let Some(DataPlaneMessage { message: Some(data_plane_message::Message::Hello(hello)) }) = first else {
            return Err(Status::invalid_argument("the first message of a stream must be a Hello"));
        };
        if !valid_gateway_name(&hello.gateway) {
            return Err(Status::invalid_argument(format!(
                "Hello.gateway must be namespace/name, not {:?}",
                hello.gateway
            )));
        }
        if let Some(identity) = &identity
            && identity.gateway != hello.gateway
        {
            return Err(Status::permission_denied(format!(
                "this client may read Gateway {} only, not {}",
                identity.gateway, hello.gateway
            )));
        }
        // The stream ends when its credential expires; the data plane reconnects with a
        // renewed one.
        let expires = identity.and_then(|caller| caller.expires_at).map(|at| {
            let left = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        let pod = if hello.pod.is_empty() { "unnamed".to_string() } else { hello.pod.clone() };
        let hello = Hello { pod, ..hello };
        let (stream, mut current) = self.server.connect(&hello);
        tracing::info!(gateway = hello.gateway, pod = hello.pod, "data plane connected");

        let (sender, receiver) = mpsc::channel(4);
        let server = self.server.clone();
        let mut closing = self.closing.clone();
        let mut standby = self.server.shared.standby.subscribe();
        tokio::spawn(async move {
            let reported_hash = hello.current.as_ref().map(|v| v.content_hash.clone());
            // What the pod serves, as far as this stream knows: the base a delta must have.
            // A data plane that does not take deltas is never at a base: whole snapshots.
            let mut sent: Option<Version> = hello.current.clone().filter(|_| hello.accepts_deltas);
            // Whether the last message was a delta (a Nack of one is answered whole).
            let mut sent_delta = false;
            // The first snapshot: skipped when the pod already serves this content.
            let initial = current.borrow_and_update().clone();
            if let Some(published) = initial {
                let same = Some(&published.version.content_hash) == reported_hash.as_ref();
                let reported = hello.current.as_ref().map_or(0, |v| v.generation);
                let newer = published.version.generation > reported;
                if newer || !same {
                    // A new stream gets the whole snapshot (or, at our content, the version).
                    let at = sent.take().filter(|_| same);
                    let (kind, message) = message_for(&published, at.as_ref());
                    server.count_sent(kind, encoded_len(&message));
                    sent = Some(published.version.clone());
                    sent_delta = kind == MessageKind::Delta;
                    if sender.send(Ok(message)).await.is_err() {
                        server.disconnect(&hello.gateway, &hello.pod, stream);
                        return;
                    }
                }
            }
            loop {
                let whole = tokio::select! {
                    changed = current.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        false
                    }
                    message = inbound.message() => match message {
                        Ok(Some(DataPlaneMessage { message: Some(data_plane_message::Message::Resync(resync)) })) => {
                            tracing::info!(
                                gateway = hello.gateway,
                                pod = hello.pod,
                                reason = resync.reason,
                                "data plane asks for the whole snapshot"
                            );
                            // Only a delta can miss; after a whole snapshot the pod has
                            // what it needs, so a late (or repeated) Resync costs nothing.
                            if !sent_delta {
                                continue;
                            }
                            true
                        }
                        Ok(Some(DataPlaneMessage { message: Some(message) })) => {
                            let nacked = matches!(message, data_plane_message::Message::Nack(_));
                            server.record(&hello.gateway, &hello.pod, stream, message);
                            if !nacked {
                                continue;
                            }
                            // The pod serves what it served before: a rejected delta is
                            // followed by the whole snapshot, a rejected snapshot by the
                            // next change, whole.
                            sent = None;
                            if !sent_delta {
                                continue;
                            }
                            true
                        }
                        Ok(Some(DataPlaneMessage { message: None })) => continue,
                        Ok(None) | Err(_) => break,
                    },
                    () = sender.closed() => break,
                    _ = closing.changed() => break,
                    Ok(()) = async { standby.wait_for(|s| *s).await.map(|_| ()) } => break,
                    () = async {
                        match expires {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        tracing::info!(gateway = hello.gateway, pod = hello.pod, "credential expired; ending the stream");
                        break;
                    }
                };
                let published = current.borrow_and_update().clone();
                let Some(published) = published else { continue };
                if whole || !hello.accepts_deltas {
                    sent = None;
                }
                let (kind, message) = message_for(&published, sent.as_ref());
                let bytes = encoded_len(&message);
                server.count_sent(kind, bytes);
                tracing::debug!(
                    gateway = hello.gateway,
                    pod = hello.pod,
                    generation = published.version.generation,
                    ?kind,
                    bytes,
                    "pushing"
                );
                sent = Some(published.version.clone());
                sent_delta = kind == MessageKind::Delta;
                if sender.send(Ok(message)).await.is_err() {
                    break;
                }
            }
            tracing::info!(gateway = hello.gateway, pod = hello.pod, "data plane disconnected");
            server.disconnect(&hello.gateway, &hello.pod, stream);
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// The message bringing a pod that serves `at` (as far as its stream knows) to
/// `published`: the delta when `at` is its base, an empty delta when `at` has the same
/// content (only the version moves), else the whole snapshot.
fn message_for(published: &Published, at: Option<&Version>) -> (MessageKind, ControlPlaneMessage) {
    let delta = |bytes: Bytes| {
        (MessageKind::Delta, ControlPlaneMessage { message: Some(control_plane_message::Message::Delta(bytes)) })
    };
    match at {
        Some(at) if at.content_hash == published.version.content_hash && !at.content_hash.is_empty() => {
            let same = SnapshotDelta {
                base: Some(at.clone()),
                version: Some(published.version.clone()),
                gateway: published.content.gateway.clone(),
                listeners: (0..published.content.listeners.len())
                    .map(|index| ListenerDelta {
                        base_index: Some(u32::try_from(index).unwrap_or(u32::MAX)),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            delta(Bytes::from(prost::Message::encode_to_vec(&same)))
        }
        Some(at) => match &published.delta {
            Some((base, bytes)) if *base == at.content_hash => delta(bytes.clone()),
            _ => snapshot_message(published),
        },
        None => snapshot_message(published),
    }
}

fn snapshot_message(published: &Published) -> (MessageKind, ControlPlaneMessage) {
    let message = ControlPlaneMessage { message: Some(control_plane_message::Message::Snapshot(published.encoded())) };
    (MessageKind::Snapshot, message)
}

fn encoded_len(message: &ControlPlaneMessage) -> usize {
    match &message.message {
        Some(control_plane_message::Message::Snapshot(bytes) | control_plane_message::Message::Delta(bytes)) => {
            bytes.len()
        }
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(version: Option<u64>, pods: &[(&str, Option<u64>, bool)]) -> GatewayProgress {
        GatewayProgress {
            version,
            pods: pods
                .iter()
                .map(|(name, applied, connected)| {
                    (
                        name.to_string(),
                        PodProgress { applied: *applied, rejected: None, connected: *connected, dropped: vec![] },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn programmed_needs_every_connected_pod_on_the_current_version() {
        assert!(progress(None, &[]).programmed().is_err());
        assert!(progress(Some(3), &[]).programmed().unwrap_err().contains("waiting for a data plane"));
        assert!(progress(Some(3), &[("a", Some(3), true), ("b", Some(2), false)]).programmed().is_ok());
        let behind = progress(Some(3), &[("a", Some(3), true), ("b", Some(2), true)]);
        assert!(behind.programmed().unwrap_err().contains("waiting for data planes b"));
        let mut rejected = progress(Some(3), &[("a", Some(2), true)]);
        rejected.pods.get_mut("a").unwrap().rejected = Some((3, "bad regex".into()));
        assert!(rejected.programmed().unwrap_err().contains("rejected version 3"));
    }

    #[test]
    fn versions_after_the_floor_do_not_unprogram_a_pod_that_applied_it() {
        let travelling = progress(Some(5), &[("a", Some(3), true), ("b", Some(5), true)]);
        assert!(travelling.programmed().is_err());
        assert!(travelling.programmed_from(Some(3)).is_ok());
        assert!(
            travelling.programmed_from(Some(4)).unwrap_err().contains("waiting for data planes a to apply version 5")
        );
        let mut rejected = progress(Some(5), &[("a", Some(3), true)]);
        rejected.pods.get_mut("a").unwrap().rejected = Some((5, "bad regex".into()));
        assert!(rejected.programmed_from(Some(3)).unwrap_err().contains("rejected version 5"));
    }

    #[test]
    fn publish_pushes_only_changes() {
        let server = PushServer::new();
        let snapshot = Snapshot { gateway: "ns/gw".into(), ..Default::default() };
        assert_eq!(server.publish("ns/gw", snapshot.clone()).map(|v| v.generation), Some(1));
        assert_eq!(server.publish("ns/gw", snapshot), None);
        assert_eq!(server.progress()["ns/gw"].version, Some(1));
    }

    #[test]
    fn a_reconnect_at_our_content_is_adopted_and_other_content_is_outnumbered() {
        let server = PushServer::new();
        let snapshot = Snapshot { gateway: "ns/gw".into(), ..Default::default() };
        let ours = server.publish("ns/gw", snapshot.clone()).unwrap();
        // Same content under a higher generation (we restarted): adopted, no reload.
        let same = Version { generation: 40, content_hash: ours.content_hash.clone() };
        let hello = Hello {
            gateway: "ns/gw".into(),
            pod: "p1".into(),
            current: Some(same),
            dropped: vec![],
            accepts_deltas: true,
        };
        let (_, receiver) = server.connect(&hello);
        assert_eq!(receiver.borrow().as_ref().unwrap().version.generation, 40);
        assert!(server.progress()["ns/gw"].programmed().is_ok());
        // Other content at a higher generation: ours is re-stamped above it.
        let other = Version { generation: 90, content_hash: "other".into() };
        let hello = Hello {
            gateway: "ns/gw".into(),
            pod: "p2".into(),
            current: Some(other),
            dropped: vec![],
            accepts_deltas: true,
        };
        let (_, receiver) = server.connect(&hello);
        assert_eq!(receiver.borrow().as_ref().unwrap().version.generation, 91);
        // And it keeps growing from there.
        let changed = Snapshot { gateway: "ns/gw".into(), listeners: vec![Default::default()], ..Default::default() };
        assert_eq!(server.publish("ns/gw", changed).map(|v| v.generation), Some(92));
    }

    #[test]
    fn an_impossible_reported_generation_is_ignored() {
        let server = PushServer::new();
        let snapshot = Snapshot { gateway: "ns/gw".into(), ..Default::default() };
        server.publish("ns/gw", snapshot).unwrap();
        let huge = Version { generation: u64::MAX - 1, content_hash: "other".into() };
        let hello = Hello {
            gateway: "ns/gw".into(),
            pod: "p1".into(),
            current: Some(huge),
            dropped: vec![],
            accepts_deltas: true,
        };
        let (_, receiver) = server.connect(&hello);
        assert_eq!(receiver.borrow().as_ref().unwrap().version.generation, 1, "not pushed to the maximum");
        let changed = Snapshot { gateway: "ns/gw".into(), listeners: vec![Default::default()], ..Default::default() };
        assert_eq!(server.publish("ns/gw", changed).map(|v| v.generation), Some(2), "room to grow");
    }

    /// A Gateway with `routes` routes on one listener and two clusters; `tag` changes
    /// route 7 only.
    fn routes_snapshot(routes: usize, tag: &str) -> Snapshot {
        let route = |i: usize| sluice_snapshot::HttpRoute {
            name: format!("httproute/ns/r{i}/rule/0/match/0"),
            hostnames: vec![if i == 7 { format!("{tag}.example") } else { format!("h{i}.example") }],
            ..Default::default()
        };
        Snapshot {
            gateway: "ns/gw".into(),
            listeners: vec![sluice_snapshot::Listener {
                name: "http".into(),
                port: 80,
                http_routes: (0..routes).map(route).collect(),
                ..Default::default()
            }],
            clusters: vec![
                sluice_snapshot::Cluster { name: "a".into(), ..Default::default() },
                sluice_snapshot::Cluster { name: "b".into(), ..Default::default() },
            ],
            ..Default::default()
        }
    }

    fn published(server: &PushServer) -> Arc<Published> {
        server.gateways()["ns/gw"].current.borrow().clone().unwrap()
    }

    /// What `message` makes of `base` (with its hash checked, as the data plane does).
    fn applied(base: &Snapshot, message: &ControlPlaneMessage) -> Snapshot {
        let Some(control_plane_message::Message::Delta(bytes)) = &message.message else { panic!("not a delta") };
        let delta: SnapshotDelta = prost::Message::decode(bytes.clone()).unwrap();
        assert_eq!(delta.base.as_ref().unwrap().content_hash, sluice_snapshot::content_hash(base));
        let mut next = sluice_snapshot::delta::apply(base, &delta).unwrap();
        let version = next.version.take().unwrap();
        assert_eq!(sluice_snapshot::content_hash(&next), version.content_hash);
        next
    }

    #[test]
    fn a_stream_at_the_base_gets_the_delta_and_any_other_the_whole_snapshot() {
        let server = PushServer::new();
        let (a, b, c) = (routes_snapshot(100, "a"), routes_snapshot(100, "b"), routes_snapshot(100, "c"));
        server.publish("ns/gw", a.clone()).unwrap();
        let at_a = published(&server);
        assert!(at_a.delta.is_none(), "nothing to diff the first snapshot against");
        assert_eq!(message_for(&at_a, None).0, MessageKind::Snapshot, "a new stream gets it whole");

        server.publish("ns/gw", b.clone()).unwrap();
        let at_b = published(&server);
        let (kind, message) = message_for(&at_b, Some(&at_a.version));
        assert_eq!(kind, MessageKind::Delta);
        assert_eq!(applied(&a, &message), b);
        assert!(encoded_len(&message) * 20 < at_b.encoded().len(), "one route of 100 costs about one route");
        assert_eq!(message_for(&at_b, None).0, MessageKind::Snapshot, "after a Nack or a Resync");

        // A stream that skipped b (a burst merged by the watch channel) gets c whole.
        server.publish("ns/gw", c.clone()).unwrap();
        let at_c = published(&server);
        assert_eq!(message_for(&at_c, Some(&at_a.version)).0, MessageKind::Snapshot);
        assert_eq!(message_for(&at_c, Some(&at_b.version)).0, MessageKind::Delta);

        // Back to a: a stream that skipped b and c is at that content already, and only
        // the version moves (an empty delta); one at c gets the delta c → a.
        server.publish("ns/gw", a.clone()).unwrap();
        let again = published(&server);
        let (kind, message) = message_for(&again, Some(&at_a.version));
        assert_eq!(kind, MessageKind::Delta);
        assert_eq!(applied(&a, &message), a);
        let (kind, message) = message_for(&again, Some(&at_c.version));
        assert_eq!(kind, MessageKind::Delta);
        assert_eq!(applied(&c, &message), a);
        assert_eq!(message_for(&again, Some(&at_b.version)).0, MessageKind::Snapshot);
    }

    /// Replaces route 7 of `snapshot` (as `routes_snapshot` makes it) with `tag`'s, noting
    /// the edit.
    fn replace_route_7(snapshot: &mut Snapshot, tag: &str) -> Edits {
        let mut edits = Edits::new(snapshot);
        let routes = &mut snapshot.listeners[0].http_routes;
        edits.listeners[0].http_routes.splice(routes.len(), 7, 1);
        routes[7] = routes_snapshot(8, tag).listeners[0].http_routes[7].clone();
        edits
    }

    fn spare(server: &PushServer) -> Option<Snapshot> {
        server.gateways()["ns/gw"].spare.as_ref().map(|(_, spare)| spare.clone())
    }

    #[test]
    fn an_edited_snapshot_travels_as_the_delta_a_comparison_gives_and_leaves_a_copy() {
        let server = PushServer::new();
        assert_eq!(server.publish_edited("ns/gw", |_| unreachable!("nothing to edit yet")), None);
        let (a, b, c) = (routes_snapshot(100, "a"), routes_snapshot(100, "b"), routes_snapshot(100, "c"));
        let a_version = server.publish("ns/gw", a.clone()).unwrap();
        assert!(spare(&server).is_none(), "no copy before the first edit");

        let version = server.publish_edited("ns/gw", |snapshot| replace_route_7(snapshot, "b")).unwrap();
        let at_b = published(&server);
        assert_eq!(at_b.version, version);
        assert!(*at_b.content == b);
        assert_eq!(at_b.version.content_hash, sluice_snapshot::content_hash(&b), "the hash of the whole");
        let (kind, message) = message_for(&at_b, Some(&a_version));
        assert_eq!(kind, MessageKind::Delta);
        assert_eq!(applied(&a, &message), b);
        let Some(control_plane_message::Message::Delta(bytes)) = &message.message else { panic!("not a delta") };
        let sent: SnapshotDelta = prost::Message::decode(bytes.clone()).unwrap();
        let mut compared = sluice_snapshot::delta::diff(&a, &b);
        (compared.base, compared.version) = (Some(a_version.clone()), Some(version.clone()));
        assert!(sent == compared, "the edits give the delta a comparison would");
        assert!(spare(&server) == Some(b.clone()), "the replaced content, edited the same way, is the next copy");

        // The next edit starts from that copy (no clone), and an edit that changes nothing
        // publishes nothing and keeps the copy.
        drop(at_b);
        server.publish_edited("ns/gw", |snapshot| replace_route_7(snapshot, "c")).unwrap();
        assert!(*published(&server).content == c);
        assert!(spare(&server) == Some(c.clone()));
        assert_eq!(server.publish_edited("ns/gw", |snapshot| replace_route_7(snapshot, "c")), None);
        assert!(spare(&server) == Some(c.clone()), "an edit that changed nothing leaves the copy");

        // A stream holding the content being replaced: no copy, the next edit clones.
        let held = published(&server);
        server.publish_edited("ns/gw", |snapshot| replace_route_7(snapshot, "a")).unwrap();
        assert!(spare(&server).is_none());
        drop(held);
        server.publish_edited("ns/gw", |snapshot| replace_route_7(snapshot, "b")).unwrap();
        assert!(*published(&server).content == b);
        assert!(spare(&server).is_some());

        // A whole publish makes its copy the same way, from the delta a comparison gave.
        server.publish("ns/gw", a.clone()).unwrap();
        assert!(spare(&server) == Some(a.clone()));
    }

    #[tokio::test]
    async fn the_first_publish_makes_its_copy_on_another_thread() {
        let server = PushServer::new();
        let a = routes_snapshot(100, "a");
        server.publish("ns/gw", a.clone()).unwrap();
        for _ in 0..500 {
            if spare(&server).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(spare(&server) == Some(a), "the copy of the first content");
    }

    #[test]
    fn a_restamped_snapshot_reaches_streams_at_its_content_as_an_empty_delta() {
        let server = PushServer::new();
        let (a, b) = (routes_snapshot(10, "a"), routes_snapshot(10, "b"));
        server.publish("ns/gw", a.clone()).unwrap();
        let at_a = published(&server);
        server.publish("ns/gw", b.clone()).unwrap();
        let at_b = published(&server);
        // A pod with other content at a higher generation: b is re-stamped above it.
        let other = Version { generation: 50, content_hash: "other".into() };
        let hello = Hello {
            gateway: "ns/gw".into(),
            pod: "p".into(),
            current: Some(other),
            dropped: vec![],
            accepts_deltas: true,
        };
        server.connect(&hello);
        let restamped = published(&server);
        assert_eq!(restamped.version.generation, 51);
        let (kind, message) = message_for(&restamped, Some(&at_b.version));
        assert_eq!(kind, MessageKind::Delta);
        assert_eq!(applied(&b, &message), b);
        // The delta a → b was stamped for version 2; re-stamped, it is not sent again.
        assert_eq!(message_for(&restamped, Some(&at_a.version)).0, MessageKind::Snapshot);
        // The next change is a delta from the re-stamped version.
        server.publish("ns/gw", a.clone()).unwrap();
        let (kind, message) = message_for(&published(&server), Some(&restamped.version));
        assert_eq!(kind, MessageKind::Delta);
        assert_eq!(applied(&b, &message), a);
    }

    #[test]
    fn pods_that_left_are_forgotten() {
        let server = PushServer::new();
        server.publish("ns/gw", Snapshot { gateway: "ns/gw".into(), ..Default::default() }).unwrap();
        for n in 0..100 {
            let hello = Hello {
                gateway: "ns/gw".into(),
                pod: format!("pod-{n}"),
                current: None,
                dropped: vec![],
                accepts_deltas: true,
            };
            let (stream, _) = server.connect(&hello);
            server.disconnect("ns/gw", &hello.pod, stream);
        }
        let hello =
            Hello { gateway: "ns/gw".into(), pod: "live".into(), current: None, dropped: vec![], accepts_deltas: true };
        let (old, _) = server.connect(&hello);
        let (new, _) = server.connect(&hello);
        // The old stream of a pod that reconnected ends after the new one began.
        server.disconnect("ns/gw", "live", old);
        let pods = server.progress()["ns/gw"].pods.clone();
        assert_eq!(pods.keys().collect::<Vec<_>>(), ["live"], "only the connected pod is kept");
        server.disconnect("ns/gw", "live", new);
        assert!(server.progress()["ns/gw"].pods.is_empty());
    }
}
