//! UDP listeners (Pingora has no UDP): one socket per port; a session per client address
//! with its own connected upstream socket to an endpoint chosen by weight when the
//! session starts. Sessions end after an idle timeout; their number per port is bounded.
//!
//! ```text
//!  client ──datagram──► listener socket ──► session (client addr) ──► upstream socket ──► endpoint
//!  client ◄─────────── listener socket ◄── relay task ◄───────────────┘
//! ```
//!
//! A snapshot swap changes the backends of new sessions only: a session keeps its
//! endpoint until it has been idle for the timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::net::UdpSocket;

use crate::metrics::Metrics;
use crate::proxy::Tables;
use crate::routes::Target;

/// The largest UDP payload; every datagram is forwarded whole.
const MAX_DATAGRAM: usize = 65535;

/// Proxies the datagrams of one UDP port.
pub struct UdpProxy {
    pub tables: Tables,
    pub bind: String,
    pub port: u16,
    pub idle_timeout: Duration,
    pub max_sessions: usize,
    pub metrics: Arc<Metrics>,
}

/// One client's session: its upstream socket and when it was last used.
struct Session {
    upstream: Arc<UdpSocket>,
    last_used: Arc<AtomicU64>,
}

#[async_trait]
impl BackgroundService for UdpProxy {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let address = format!("{}:{}", self.bind, self.port);
        let socket = match UdpSocket::bind(&address).await {
            Ok(socket) => Arc::new(socket),
            Err(error) => {
                tracing::error!(%address, %error, "cannot bind the UDP listener");
                return;
            }
        };
        tracing::info!(%address, "serving UDP");
        tokio::select! {
            () = self.serve(socket) => {}
            _ = shutdown.changed() => {}
        }
    }
}

impl UdpProxy {
    async fn serve(&self, socket: Arc<UdpSocket>) {
        let sessions: Sessions = Arc::default();
        let clock = tokio::time::Instant::now();
        let mut buffer = vec![0u8; MAX_DATAGRAM];
        loop {
            let (len, client) = match socket.recv_from(&mut buffer).await {
                Ok(received) => received,
                Err(error) => {
                    // E.g. an ICMP port unreachable for an earlier send: not fatal.
                    tracing::debug!(port = self.port, %error, "UDP receive error");
                    continue;
                }
            };
            let now = millis_since(clock);
            let (existing, count) = {
                let sessions = lock(&sessions);
                let existing = sessions.get(&client).map(|session| {
                    session.last_used.store(now, Ordering::Relaxed);
                    session.upstream.clone()
                });
                (existing, sessions.len())
            };
            let upstream = match existing {
                Some(upstream) => upstream,
                None if count >= self.max_sessions => {
                    self.metrics.udp.dropped_session_limit.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // Only this task adds sessions, so nobody adds this client meanwhile.
                None => match self.open_session(&socket, client, &sessions, clock, now).await {
                    Some(session) => {
                        let upstream = session.upstream.clone();
                        lock(&sessions).insert(client, session);
                        self.metrics.udp.sessions.fetch_add(1, Ordering::Relaxed);
                        upstream
                    }
                    None => continue,
                },
            };
            match upstream.send(&buffer[..len]).await {
                Ok(_) => {
                    self.metrics.udp.datagrams_in.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::debug!(%client, %error, "UDP send to the backend failed");
                    self.metrics.udp.dropped_send_error.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Picks an endpoint for a new client and starts the task relaying its answers.
    async fn open_session(
        &self,
        listener: &Arc<UdpSocket>,
        client: SocketAddr,
        sessions: &Sessions,
        clock: tokio::time::Instant,
        now: u64,
    ) -> Option<Session> {
        let endpoint = {
            let tables = self.tables.load();
            match tables.udp.get(&self.port).and_then(|backends| backends.pick()) {
                Some((_, Target::Cluster(cluster))) => cluster.pick().map(|(endpoint, _)| endpoint),
                // An invalid backend, no backend or no endpoint: the datagram is dropped.
                _ => None,
            }
        };
        let Some(endpoint) = endpoint else {
            tracing::debug!(port = self.port, %client, "no UDP backend; dropping");
            self.metrics.udp.dropped_no_backend.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let local: SocketAddr = if endpoint.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let upstream = match UdpSocket::bind(local).await {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(%error, "cannot open an upstream UDP socket");
                self.metrics.udp.dropped_send_error.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        if let Err(error) = upstream.connect(endpoint).await {
            tracing::debug!(%endpoint, %error, "cannot connect the upstream UDP socket");
            self.metrics.udp.dropped_send_error.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let upstream = Arc::new(upstream);
        let last_used = Arc::new(AtomicU64::new(now));
        let relay = Relay {
            listener: listener.clone(),
            upstream: upstream.clone(),
            client,
            last_used: last_used.clone(),
            sessions: sessions.clone(),
            idle_timeout: self.idle_timeout,
            clock,
            metrics: self.metrics.clone(),
        };
        tokio::spawn(relay.run());
        Some(Session { upstream, last_used })
    }
}

type Sessions = Arc<std::sync::Mutex<HashMap<SocketAddr, Session>>>;

fn lock(sessions: &Sessions) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Session>> {
    // A panic never happens while the lock is held; recover the map if one did.
    sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn millis_since(clock: tokio::time::Instant) -> u64 {
    u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Carries a session's answers back to its client and ends the session when idle.
struct Relay {
    listener: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    last_used: Arc<AtomicU64>,
    sessions: Sessions,
    idle_timeout: Duration,
    clock: tokio::time::Instant,
    metrics: Arc<Metrics>,
}

impl Relay {
    async fn run(self) {
        let mut buffer = vec![0u8; MAX_DATAGRAM];
        let idle = u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            let quiet = millis_since(self.clock).saturating_sub(self.last_used.load(Ordering::Relaxed));
            if quiet >= idle {
                break;
            }
            let wait = Duration::from_millis(idle - quiet);
            match tokio::time::timeout(wait, self.upstream.recv(&mut buffer)).await {
                Ok(Ok(len)) => {
                    self.last_used.store(millis_since(self.clock), Ordering::Relaxed);
                    if self.listener.send_to(&buffer[..len], self.client).await.is_ok() {
                        self.metrics.udp.datagrams_out.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // The backend refused (ICMP port unreachable): keep the session until idle.
                Ok(Err(error)) => {
                    tracing::debug!(client = %self.client, %error, "UDP receive from the backend failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => {}
            }
        }
        let mut sessions = lock(&self.sessions);
        if sessions.get(&self.client).is_some_and(|s| Arc::ptr_eq(&s.upstream, &self.upstream)) {
            sessions.remove(&self.client);
            self.metrics.udp.sessions.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
