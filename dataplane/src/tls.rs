//! TLS termination: the certificate is chosen per handshake from the current tables, so
//! a new certificate in a snapshot is served by the next handshake, without a restart.
//! Client certificates are requested and checked the same way (`client_auth`).

use std::sync::Arc;

use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{
    ClientCertVerified, ClientCertVerifier, ClientHello, DigitallySignedStruct, ResolvesServerCert, SignatureScheme,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::client_auth::ClientAuth;
use crate::tables::Tables;

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

/// Asks for and checks client certificates on one port, by the port's current
/// [`ClientAuth`].
pub struct PortVerifier {
    tables: Tables,
    port: u16,
    provider: Arc<CryptoProvider>,
}

impl PortVerifier {
    pub fn new(tables: Tables, port: u16) -> PortVerifier {
        PortVerifier { tables, port, provider: Arc::new(rustls::crypto::ring::default_provider()) }
    }

    fn current(&self) -> Option<Arc<ClientAuth>> {
        self.tables.load().client_auth.get(&self.port).cloned()
    }
}

impl std::fmt::Debug for PortVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortVerifier").field("port", &self.port).finish()
    }
}

impl ClientCertVerifier for PortVerifier {
    fn offer_client_auth(&self) -> bool {
        self.current().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current().is_some_and(|auth| auth.required())
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // The hints would have to outlive the tables they come from; an empty list lets
        // clients send any certificate they have.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Without a validation now (a snapshot removed it during this handshake) there
        // is nothing to check the certificate against.
        let Some(auth) = self.current() else { return Ok(ClientCertVerified::assertion()) };
        match auth.verifier().verify_client_cert(end_entity, intermediates, now) {
            Ok(verified) => Ok(verified),
            Err(_) if !auth.required() => Ok(ClientCertVerified::assertion()),
            Err(error) => Err(error),
        }
    }

    // The client proves it holds the certificate's key in every mode.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
