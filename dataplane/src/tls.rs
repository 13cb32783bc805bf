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
