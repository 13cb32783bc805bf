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
//! endpoint until it has been idle for the timeout. A client datagram that cannot start
//! a session (no usable backend, the port's session limit reached) is dropped and
//! counted; live sessions are never evicted. One task reads the listener socket; each
//! session's relay task owns the session's end, so one session's errors stay its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::net::UdpSocket;

use crate::metrics::UdpMetrics;
use crate::tables::Tables;
use crate::tables::{InFlight, Target};

/// The largest UDP payload; every datagram is forwarded whole.
const MAX_DATAGRAM: usize = 65535;

/// Proxies the datagrams of one UDP port.
pub struct UdpProxy {
    pub tables: Tables,
    pub bind: String,
    pub port: u16,
    pub idle_timeout: Duration,
    pub max_sessions: usize,
    pub metrics: Arc<UdpMetrics>,
}

/// One client's session: its upstream socket and when it was last used.
struct Session {
    upstream: Arc<UdpSocket>,
    /// Milliseconds since the port's clock started; written under the sessions lock by
    /// the listener task, so that the relay never ends a session a datagram just used.
    last_used: Arc<AtomicU64>,
}

type Sessions = Arc<std::sync::Mutex<HashMap<SocketAddr, Session>>>;

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
            () = self.serve(socket, shutdown.clone()) => {}
            _ = shutdown.changed() => {}
        }
    }
}

impl UdpProxy {
    async fn serve(&self, socket: Arc<UdpSocket>, shutdown: ShutdownWatch) {
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
                    tracing::debug!(port = self.port, %client, "UDP session limit reached; dropping");
                    self.metrics.dropped_session_limit.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // Only this task adds sessions, so nobody adds this client meanwhile.
                None => {
                    let relay = RelayContext { listener: &socket, sessions: &sessions, clock, shutdown: &shutdown };
                    match self.open_session(client, now, relay).await {
                        Some(session) => {
                            let upstream = session.upstream.clone();
                            lock(&sessions).insert(client, session);
                            self.metrics.sessions.fetch_add(1, Ordering::Relaxed);
                            upstream
                        }
                        None => continue,
                    }
                }
            };
            match upstream.send(&buffer[..len]).await {
                Ok(_) => {
                    self.metrics.datagrams_in.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::debug!(%client, %error, "UDP send to the backend failed");
                    self.metrics.dropped_send_error.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Picks an endpoint for a new client (from the tables current now) and starts the
    /// task relaying its answers.
    async fn open_session(&self, client: SocketAddr, now: u64, context: RelayContext<'_>) -> Option<Session> {
        let picked = {
            let tables = self.tables.load();
            match tables.udp.get(&self.port).and_then(|backends| backends.pick()) {
                Some((_, Target::Cluster(cluster))) => cluster.pick(),
                // An invalid backend, no backend (or no route) or no endpoint: dropped.
                _ => None,
            }
        };
        // With least-request balancing the session counts as in flight until it ends.
        let Some((endpoint, in_flight)) = picked else {
            tracing::debug!(port = self.port, %client, "no UDP backend; dropping");
            self.metrics.dropped_no_backend.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let local: SocketAddr = if endpoint.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let upstream = match UdpSocket::bind(local).await {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(%error, "cannot open an upstream UDP socket");
                self.metrics.dropped_send_error.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        if let Err(error) = upstream.connect(endpoint).await {
            tracing::debug!(%endpoint, %error, "cannot connect the upstream UDP socket");
            self.metrics.dropped_send_error.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let upstream = Arc::new(upstream);
        let last_used = Arc::new(AtomicU64::new(now));
        let relay = Relay {
            listener: context.listener.clone(),
            upstream: upstream.clone(),
            client,
            last_used: last_used.clone(),
            sessions: context.sessions.clone(),
            idle_timeout: self.idle_timeout,
            clock: context.clock,
            metrics: self.metrics.clone(),
            shutdown: context.shutdown.clone(),
            _in_flight: in_flight,
        };
        tokio::spawn(relay.run());
        Some(Session { upstream, last_used })
    }
}

/// What a new session's relay shares with the port.
struct RelayContext<'a> {
    listener: &'a Arc<UdpSocket>,
    sessions: &'a Sessions,
    clock: tokio::time::Instant,
    shutdown: &'a ShutdownWatch,
}

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
    metrics: Arc<UdpMetrics>,
    shutdown: ShutdownWatch,
    _in_flight: Option<InFlight>,
}

impl Relay {
    async fn run(mut self) {
        let mut buffer = vec![0u8; MAX_DATAGRAM];
        let idle = u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            let quiet = self.quiet();
            if quiet >= idle {
                if self.end_if_idle(idle) {
                    return;
                }
                continue;
            }
            let wait = Duration::from_millis(idle - quiet);
            tokio::select! {
                received = tokio::time::timeout(wait, self.upstream.recv(&mut buffer)) => match received {
                    Ok(Ok(len)) => self.answer(&buffer[..len]).await,
                    // The backend refused (ICMP port unreachable): keep the session until idle.
                    Ok(Err(error)) => {
                        tracing::debug!(client = %self.client, %error, "UDP receive from the backend failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(_) => {}
                },
                _ = self.shutdown.changed() => break,
            }
        }
        self.end(&mut lock(&self.sessions));
    }

    /// Milliseconds since the session last carried a datagram, either way.
    fn quiet(&self) -> u64 {
        millis_since(self.clock).saturating_sub(self.last_used.load(Ordering::Relaxed))
    }

    async fn answer(&self, datagram: &[u8]) {
        self.last_used.store(millis_since(self.clock), Ordering::Relaxed);
        match self.listener.send_to(datagram, self.client).await {
            Ok(_) => {
                self.metrics.datagrams_out.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::debug!(client = %self.client, %error, "UDP send to the client failed");
                self.metrics.dropped_send_error.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Ends the session unless a client datagram used it since the caller looked: the
    /// listener task refreshes sessions under the same lock.
    fn end_if_idle(&self, idle: u64) -> bool {
        let mut sessions = lock(&self.sessions);
        if self.quiet() < idle {
            return false;
        }
        self.end(&mut sessions);
        true
    }

    fn end(&self, sessions: &mut HashMap<SocketAddr, Session>) {
        if sessions.get(&self.client).is_some_and(|s| Arc::ptr_eq(&s.upstream, &self.upstream)) {
            sessions.remove(&self.client);
            self.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
