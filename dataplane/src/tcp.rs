//! TCP listeners: each connection goes to a backend chosen by weight, bytes copied both
//! ways until either side closes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;

use crate::tables::Tables;
use crate::tables::Target;

/// Proxies the connections of one TCP port.
pub struct TcpProxy {
    pub tables: Tables,
    pub port: u16,
    pub connections: Arc<crate::metrics::ListenerMetrics>,
    pub max_connections: usize,
}

#[async_trait]
impl ServerApp for TcpProxy {
    async fn process_new(self: &Arc<Self>, mut downstream: Stream, _shutdown: &ShutdownWatch) -> Option<Stream> {
        let _open = self.connections.admit(self.max_connections)?;
        let endpoint = {
            let tables = self.tables.load();
            match tables.tcp.get(&self.port).and_then(|backends| backends.pick()) {
                Some((_, Target::Cluster(cluster))) => cluster.pick(),
                // An invalid backend, no backend or no endpoint: close the connection.
                _ => None,
            }
        };
        // With least-request balancing the connection counts as in flight until it ends.
        let Some((endpoint, _in_flight)) = endpoint else {
            tracing::debug!(port = self.port, "no TCP backend; closing");
            return None;
        };
        let upstream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(endpoint)).await;
        let mut upstream = match upstream {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%endpoint, %error, "TCP backend refused");
                return None;
            }
            Err(_) => {
                tracing::debug!(%endpoint, "TCP backend connect timed out");
                return None;
            }
        };
        let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
        None
    }
}
