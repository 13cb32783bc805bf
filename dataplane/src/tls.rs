//! TLS termination: the certificate is chosen per handshake from the current tables, so
//! a new certificate in a snapshot is served by the next handshake, without a restart.

use std::sync::Arc;

use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{ClientHello, ResolvesServerCert};

use crate::proxy::Tables;

/// Picks the certificate for one TLS port by SNI.
pub struct SniResolver {
    pub tables: Tables,
    pub port: u16,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver").field("port", &self.port).finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let tables = self.tables.load();
        tables.tls.get(&self.port)?.lookup(client_hello.server_name())
    }
}

/// The SNI a client sent, kept with the connection's TLS digest so that requests can be
/// checked against it (421 Misdirected Request).
#[derive(Debug)]
pub struct ClientServerName(pub String);

/// Records the SNI of each TLS connection (the certificate itself comes from
/// [`SniResolver`]).
pub struct RecordServerName;

#[async_trait::async_trait]
impl pingora_core::listeners::TlsAccept for RecordServerName {
    async fn handshake_complete_callback(
        &self,
        tls: &pingora_core::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let name = tls.server_name()?.to_ascii_lowercase();
        Some(Arc::new(ClientServerName(name)))
    }
}
