//! TLS termination: the certificate is chosen per handshake from the current tables, so
//! a new certificate in a snapshot is served by the next handshake, without a restart.
//! Client certificates are requested and checked the same way (`client_auth`).

use std::sync::Arc;

use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{ClientHello, ResolvesServerCert};

use crate::routes::Tables;

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

/// What the handshake of a TLS connection decided, kept with the connection's TLS digest.
#[derive(Debug)]
pub struct Handshake {
    /// The SNI the client sent (lower case), against which requests are checked (421
    /// Misdirected Request).
    pub server_name: Option<String>,
    /// Why the connection must not be served: its (resumed) session's client
    /// certificate does not pass the port's current validation.
    pub refused: Option<String>,
}

/// Records the SNI of each TLS connection (the certificate itself comes from
/// [`SniResolver`]) and checks its client certificate against the port's validation
/// again: a resumed session skipped the verifier, possibly under another validation.
pub struct HandshakeCheck {
    pub tables: Tables,
    pub port: u16,
}

#[async_trait::async_trait]
impl pingora_core::listeners::TlsAccept for HandshakeCheck {
    async fn handshake_complete_callback(
        &self,
        tls: &pingora_core::protocols::tls::TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let server_name = tls.server_name().map(str::to_ascii_lowercase);
        let tables = self.tables.load();
        let refused = tables.client_auth.get(&self.port).and_then(|auth| auth.admits(tls.peer_cert_chain_der()).err());
        Some(Arc::new(Handshake { server_name, refused }))
    }
}
