//! TLS to backends (a BackendTLSPolicy on the cluster's Service port): what Pingora's
//! connector is told, and the subjectAltNames check Pingora cannot make.
//!
//! ```text
//!  UpstreamTls (snapshot) ──compile──► UpstreamTlsTable
//!     Pingora peer: TLS, SNI = hostname, CA = the policy's, client certificate, ALPN,
//!                   group key = hash of all of it (pooled connections never cross policies)
//!     no SANs:  Pingora verifies chain + hostname
//!     SANs:     Pingora verifies the chain; on each new connection the leaf's SHA-256
//!               must be one this table verified against the SANs (a probe handshake with
//!               `client_config`, once per leaf), else the request fails (502)
//!  Sluice's own connections (TLSRoute Terminate) use `client_config`, which checks all
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora_core::utils::tls::{CertKey, WrappedX509};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use sluice_snapshot::{UpstreamTls, subject_alt_name};

/// A subjectAltName the backend's certificate may carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum San {
    Dns(String),
    Uri(String),
}

/// The compiled TLS of one cluster.
pub struct UpstreamTlsTable {
    pub policy: String,
    pub sni: String,
    /// The policy's CA for Pingora's connector; `None`: the system roots.
    pub ca: Option<Arc<[WrappedX509]>>,
    /// The certificate must match one of these (and the SNI is not checked).
    pub sans: Vec<San>,
    /// The client certificate presented to the backend.
    pub client: Option<Arc<CertKey>>,
    /// Distinguishes pooled connections: everything that affects verification.
    pub group_key: u64,
    /// A full verifier (chain, and hostname or SANs) for connections Sluice makes itself.
    pub client_config: Arc<rustls::ClientConfig>,
    /// Leaf certificates (SHA-256) that passed the SAN check.
    verified_leaves: Mutex<HashSet<Vec<u8>>>,
}

impl std::fmt::Debug for UpstreamTlsTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsTable").field("policy", &self.policy).field("sni", &self.sni).finish_non_exhaustive()
    }
}

/// How long the SAN probe's handshake may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl UpstreamTlsTable {
    /// Compiles a cluster's TLS; `client` is the client certificate (chain and key, PEM)
    /// it names, if any.
    pub fn compile(tls: &UpstreamTls, client: Option<(&str, &str)>) -> Result<Self, String> {
        let roots = if tls.system_roots {
            let mut roots = rustls::RootCertStore::empty();
            pingora_rustls::load_platform_certs_incl_env_into_store(&mut roots)
                .map_err(|e| format!("the system CA certificates cannot be loaded: {e}"))?;
            roots
        } else {
            sluice_snapshot::compile::load_ca_bundle(&tls.ca_pem)?
        };
        let ca = if tls.system_roots {
            None
        } else {
            let mut wrapped = Vec::new();
            for der in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
                let der = der.map_err(|e| format!("the CA bundle is not valid PEM: {e}"))?;
                // Pingora parses each certificate again (and panics on one it cannot).
                x509_parser::parse_x509_certificate(der.as_ref())
                    .map_err(|e| format!("a CA certificate cannot be parsed: {e}"))?;
                wrapped.push(WrappedX509::new(der.to_vec(), pingora_core::utils::tls::parse_x509));
            }
            Some(Arc::from(wrapped))
        };
        let sans: Vec<San> = tls
            .subject_alt_names
            .iter()
            .filter_map(|san| match &san.kind {
                Some(subject_alt_name::Kind::Hostname(h)) => Some(San::Dns(h.to_ascii_lowercase())),
                Some(subject_alt_name::Kind::Uri(u)) => Some(San::Uri(u.clone())),
                None => None,
            })
            .collect();
        ServerName::try_from(tls.sni.clone()).map_err(|e| format!("the SNI {:?} is not a valid name: {e}", tls.sni))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("the CA cannot be used: {e}"))?;
        let verifier = Arc::new(PolicyVerifier { webpki, sans: sans.clone() });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let (client_config, client_key) = match client {
            Some((chain, key)) => {
                let loaded = sluice_snapshot::compile::load_certificate(chain, key)?;
                let key_der = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .map_err(|e| format!("the client key is not valid PEM: {e}"))?;
                let certificates: Vec<Vec<u8>> = loaded.key.cert.iter().map(|c| c.to_vec()).collect();
                let pingora_key = CertKey::new(certificates, key_der.secret_der().to_vec());
                let config = builder
                    .with_client_auth_cert(loaded.key.cert.clone(), key_der)
                    .map_err(|e| format!("the client certificate cannot be used: {e}"))?;
                (config, Some(Arc::new(pingora_key)))
            }
            None => (builder.with_no_client_auth(), None),
        };
        let group_key = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            let client_chain = client.map(|(chain, _)| chain);
            (&tls.policy, &tls.sni, &tls.ca_pem, tls.system_roots, &sans, client_chain).hash(&mut hasher);
            hasher.finish()
        };
        Ok(UpstreamTlsTable {
            policy: tls.policy.clone(),
            sni: tls.sni.clone(),
            ca,
            sans,
            client: client_key,
            group_key,
            client_config: Arc::new(client_config),
            verified_leaves: Mutex::new(HashSet::new()),
        })
    }

    /// Whether Pingora must check the certificate's name against the SNI (no SANs given).
    pub fn verify_hostname(&self) -> bool {
        self.sans.is_empty()
    }

    /// Checks a new connection to `endpoint` whose leaf certificate has SHA-256 `leaf`
    /// against the SANs: known leaves pass at once; an unknown one is fetched by a probe
    /// handshake that verifies chain and SANs, and passes if it is the same certificate.
    pub async fn check_leaf(&self, endpoint: SocketAddr, leaf: &[u8]) -> Result<(), String> {
        if self.sans.is_empty() || self.lock().contains(leaf) {
            return Ok(());
        }
        let probed = tokio::time::timeout(PROBE_TIMEOUT, self.probe(endpoint))
            .await
            .map_err(|_| format!("verifying the certificate of {endpoint} took longer than {PROBE_TIMEOUT:?}"))??;
        if probed != leaf {
            return Err(format!("{endpoint} presented a certificate that does not carry the subjectAltNames"));
        }
        let mut verified = self.lock();
        // Bounded: a backend rotating certificates endlessly cannot grow it without end.
        if verified.len() >= 64 {
            verified.clear();
        }
        verified.insert(probed);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Vec<u8>>> {
        self.verified_leaves.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A TLS handshake with full verification; the SHA-256 of the leaf certificate.
    async fn probe(&self, endpoint: SocketAddr) -> Result<Vec<u8>, String> {
        let stream = self.connect(endpoint).await?;
        let (_, connection) = stream.get_ref();
        let leaf = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or_else(|| format!("{endpoint} presented no certificate"))?;
        Ok(pingora_rustls::hash_certificate(leaf))
    }

    /// A verified TLS connection to `endpoint` (SNI, CA, SANs, client certificate).
    pub async fn connect(
        &self,
        endpoint: SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let tcp =
            tokio::net::TcpStream::connect(endpoint).await.map_err(|e| format!("connecting to {endpoint}: {e}"))?;
        let name = ServerName::try_from(self.sni.clone()).map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(self.client_config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS to {endpoint} (policy {}): {e}", self.policy))
    }
}

/// Verifies a backend certificate: its chain against the policy's CAs, then its name
/// against the SNI, or, when the policy lists subjectAltNames, against those (DNS names
/// and URIs, which webpki cannot check).
#[derive(Debug)]
struct PolicyVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    sans: Vec<San>,
}

impl ServerCertVerifier for PolicyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        if self.sans.is_empty() {
            return chain;
        }
        match chain {
            Ok(_) | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)) => {}
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {}
            Err(other) => return Err(other),
        }
        if certificate_matches(end_entity.as_ref(), &self.sans) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Whether the certificate (DER) carries one of `sans`: a URI exactly, a DNS name exactly
/// or under one of the certificate's `*.` wildcards (one label).
pub fn certificate_matches(der: &[u8], sans: &[San]) -> bool {
    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else { return false };
    let Ok(Some(extension)) = certificate.subject_alternative_name() else { return false };
    let mut dns = Vec::new();
    let mut uris = Vec::new();
    for name in &extension.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
            x509_parser::extensions::GeneralName::URI(u) => uris.push(*u),
            _ => {}
        }
    }
    sans.iter().any(|san| match san {
        San::Uri(uri) => uris.contains(&uri.as_str()),
        San::Dns(name) => dns.iter().any(|presented| dns_matches(presented, name)),
    })
}

/// RFC 6125: `presented` equals `wanted`, or is `*.rest` and `wanted` is one label
/// followed by `.rest`.
fn dns_matches(presented: &str, wanted: &str) -> bool {
    if presented == wanted {
        return true;
    }
    match presented.strip_prefix("*.") {
        Some(rest) => wanted.split_once('.').is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(dns: &[&str], uris: &[&str]) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|d| (*d).to_string()).collect::<Vec<_>>()).unwrap();
        for uri in uris {
            params.subject_alt_names.push(rcgen::SanType::URI((*uri).try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn sans_match_dns_names_wildcards_and_uris() {
        let cert =
            certificate(&["abc.example.com", "*.other.example.com"], &["spiffe://abc.example.com/test-identity"]);
        let dns = |n: &str| San::Dns(n.into());
        assert!(certificate_matches(&cert, &[dns("abc.example.com")]));
        assert!(certificate_matches(&cert, &[dns("x.other.example.com")]));
        assert!(!certificate_matches(&cert, &[dns("a.b.other.example.com")]), "a wildcard covers one label");
        assert!(!certificate_matches(&cert, &[dns("def.example.com")]));
        assert!(certificate_matches(&cert, &[San::Uri("spiffe://abc.example.com/test-identity".into())]));
        assert!(!certificate_matches(&cert, &[San::Uri("spiffe://def.example.com/test-identity".into())]));
        assert!(certificate_matches(&cert, &[dns("def.example.com"), dns("abc.example.com")]), "any of them");
        assert!(!certificate_matches(b"junk", &[dns("abc.example.com")]));
    }
}
