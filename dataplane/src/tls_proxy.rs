//! TLS listeners (protocol TLS): each connection's ClientHello chooses a listener and a
//! TLSRoute by SNI; the TLS stream then passes through to the backend, or the data plane
//! terminates it and copies the plaintext.
//!
//! ```text
//!  accept ─► read the ClientHello (deadline, size cap) ─► SNI ─► listener ─► route ─► endpoint
//!    Passthrough: connect, replay the ClientHello bytes, copy both ways
//!    Terminate:   connect (over TLS when the backend has a BackendTLSPolicy), finish the
//!                 handshake (listener's certificate), copy plaintext
//!  anything missing (no route, invalid backend, no endpoint, refused) ─► close, no alert
//! ```
//!
//! The backend connection is opened before the client handshake completes, so a missing
//! backend never costs a handshake, and bytes a backend sends first (a server greeting)
//! wait in its socket until the client can take them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

use crate::client_hello::{MAX_CLIENT_HELLO_BYTES, Replayed, read_client_hello};
use crate::metrics::{TlsMetrics, TlsOutcome};
use crate::tables::Tables;
use crate::tables::Target;

/// How long connecting to a backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Proxies the connections of one TLS port.
pub struct TlsProxy {
    pub tables: Tables,
    pub port: u16,
    pub connections: Arc<crate::metrics::ListenerMetrics>,
    pub max_connections: usize,
    /// From accept, the ClientHello (and, when terminating, the whole handshake) must be
    /// complete within this.
    pub handshake_timeout: Duration,
    pub metrics: Arc<TlsMetrics>,
}

#[async_trait]
impl ServerApp for TlsProxy {
    async fn process_new(self: &Arc<Self>, mut downstream: Stream, _shutdown: &ShutdownWatch) -> Option<Stream> {
        let _open = self.connections.admit(self.max_connections)?;
        let outcome = self.serve(&mut downstream).await;
        self.metrics.count(outcome);
        None
    }
}

impl TlsProxy {
    /// Serves one connection until either side closes; returns what became of it.
    async fn serve(&self, downstream: &mut Stream) -> TlsOutcome {
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        let hello = match read_client_hello(downstream, deadline, MAX_CLIENT_HELLO_BYTES).await {
            Ok(hello) => hello,
            Err(error) => {
                tracing::debug!(port = self.port, %error, "closing a TLS connection");
                return TlsOutcome::from(&error);
            }
        };
        let server_name = hello.server_name.as_deref();
        // The tables are only held while choosing: a new snapshot never waits for a connection.
        let (listener, endpoint, upstream_tls) = {
            let tables = self.tables.load();
            let Some((listener, route)) = tables.tls_ports.get(&self.port).and_then(|port| port.select(server_name))
            else {
                tracing::debug!(port = self.port, sni = server_name, "no TLS listener for the SNI; closing");
                return TlsOutcome::NoRoute;
            };
            let Some(route) = route else {
                tracing::debug!(listener = listener.name, sni = server_name, "no TLS route for the SNI; closing");
                return TlsOutcome::NoRoute;
            };
            let (endpoint, upstream_tls) = match route.backends.pick() {
                // A BackendTLSPolicy applies where the data plane terminates the client's TLS:
                // it then originates TLS of its own. Passed-through TLS is the client's.
                Some((_, Target::Cluster(cluster))) if listener.terminate.is_some() => {
                    (cluster.pick(), cluster.tls.clone())
                }
                Some((_, Target::Cluster(cluster))) => (cluster.pick(), None),
                // An invalid backend's share, or no backend at all.
                _ => (None, None),
            };
            (listener.clone(), endpoint, upstream_tls)
        };
        // With least-request balancing the connection counts as in flight until it ends.
        let Some((endpoint, _in_flight)) = endpoint else {
            tracing::debug!(listener = listener.name, sni = server_name, "no usable TLS backend; closing");
            return TlsOutcome::NoBackend;
        };
        let upstream = match upstream_tls {
            None => connect(endpoint).await.map(Upstream::Plain),
            Some(Ok(table)) => match tokio::time::timeout(CONNECT_TIMEOUT, table.connect(endpoint)).await {
                Ok(Ok(stream)) => Ok(Upstream::Tls(Box::new(stream))),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(format!("TLS to {endpoint} timed out")),
            },
            // The policy could not be set up: never fall back to plaintext.
            Some(Err(error)) => Err(error),
        };
        let mut upstream = match upstream {
            Ok(upstream) => upstream,
            Err(error) => {
                tracing::debug!(%endpoint, %error, "TLS route backend unavailable");
                return TlsOutcome::NoBackend;
            }
        };
        match &listener.terminate {
            None => {
                let Upstream::Plain(upstream) = &mut upstream else { return TlsOutcome::NoBackend };
                if upstream.write_all(&hello.bytes).await.is_err() {
                    return TlsOutcome::NoBackend;
                }
                let _ = tokio::io::copy_bidirectional(downstream, upstream).await;
                TlsOutcome::Passthrough
            }
            Some(config) => {
                let acceptor = pingora_rustls::TlsAcceptor::from(config.clone());
                let handshake = acceptor.accept(Replayed::new(hello.bytes, downstream));
                let mut tls = match tokio::time::timeout_at(deadline, handshake).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(listener = listener.name, %error, "TLS handshake failed");
                        return TlsOutcome::HandshakeFailed;
                    }
                    Err(_) => {
                        tracing::debug!(listener = listener.name, "TLS handshake timed out");
                        return TlsOutcome::HandshakeFailed;
                    }
                };
                let _ = match &mut upstream {
                    Upstream::Plain(upstream) => tokio::io::copy_bidirectional(&mut tls, upstream).await,
                    Upstream::Tls(upstream) => tokio::io::copy_bidirectional(&mut tls, upstream.as_mut()).await,
                };
                TlsOutcome::Terminate
            }
        }
    }
}

/// The connection to a TLS route's backend: plain TCP, or TLS the data plane originates
/// (a terminated connection whose backend has a BackendTLSPolicy).
enum Upstream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

/// A TCP connection to `endpoint` within [`CONNECT_TIMEOUT`].
async fn connect(endpoint: std::net::SocketAddr) -> Result<tokio::net::TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(endpoint)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(format!("connecting to {endpoint}: {error}")),
        Err(_) => Err(format!("connecting to {endpoint} timed out")),
    }
}
