//! The compile steps shared by the translator and the data plane.
//!
//! The translator checks user input with exactly the code the data plane uses to build
//! its tables, so it never emits a regular expression, certificate, CA bundle or CORS
//! policy the data plane could not compile (DESIGN.md, data flow rule 3):
//!
//! ```text
//!  translator ──full_regex / load_certificate / load_ca_bundle / check_cors──► status condition on the one route or listener
//!  data plane ──full_regex / load_certificate / load_ca_bundle / origin_pattern──► routing tables (a failure drops that piece only)
//! ```

use std::sync::Arc;

pub use crate::origin::{HostPattern, MAX_ORIGIN_LENGTH, OriginPattern, check_cors, origin_pattern};

use regex::{Regex, RegexBuilder};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The longest regular expression accepted, in bytes (Gateway API caps path values at
/// 1024 and header values at 4096 characters).
pub const MAX_REGEX_LENGTH: usize = 4096;
/// The largest compiled program of one regular expression (the `regex` crate's default is
/// 10 MiB; one route must not take that much of a data plane's memory).
pub const MAX_REGEX_SIZE: usize = 1 << 20;
/// The deepest nesting of groups and repetitions in one regular expression.
pub const MAX_REGEX_NESTING: u32 = 32;

/// A Gateway API regular expression, compiled to match the whole value (`^(?:…)$`),
/// within the size and nesting limits above.
pub fn full_regex(pattern: &str) -> Result<Regex, String> {
    if pattern.len() > MAX_REGEX_LENGTH {
        return Err(format!("regular expression is {} bytes long, the limit is {MAX_REGEX_LENGTH}", pattern.len()));
    }
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(MAX_REGEX_SIZE)
        .nest_limit(MAX_REGEX_NESTING)
        .build()
        .map_err(|error| match error {
            regex::Error::CompiledTooBig(limit) => {
                format!("regular expression {pattern:?} compiles to more than {limit} bytes")
            }
            error => format!("invalid regular expression {pattern:?}: {}", first_line(&error.to_string())),
        })
}

/// The `regex` crate's syntax errors span several lines (the pattern, a caret, the
/// error); the last line says what is wrong.
fn first_line(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines.last().map_or_else(|| message.to_string(), |l| l.trim_start_matches("error: ").to_string())
}

/// A certificate chain and private key as rustls serves them, with the leaf's validity.
#[derive(Debug, Clone)]
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    /// The leaf certificate's notBefore and notAfter, in seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

impl LoadedCertificate {
    /// Why the certificate must not be served at `now` (seconds since the epoch), if so.
    pub fn invalid_at(&self, now: i64) -> Option<String> {
        validity_problem(self.not_before, self.not_after, now)
    }
}

/// Why a certificate valid from `not_before` to `not_after` must not be served at `now`.
pub fn validity_problem(not_before: i64, not_after: i64, now: i64) -> Option<String> {
    if now > not_after {
        Some(format!("the certificate expired at {}", utc(not_after)))
    } else if now < not_before {
        Some(format!("the certificate is not valid before {}", utc(not_before)))
    } else {
        None
    }
}

/// Loads a PEM certificate chain and private key: at least one certificate, a private key
/// rustls can use, and a key that belongs to the first (leaf) certificate.
pub fn load_certificate(cert_chain_pem: &str, private_key_pem: &str) -> Result<LoadedCertificate, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate chain is not valid PEM: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("the certificate chain holds no certificate".into());
    };
    let (not_before, not_after) = match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, parsed)) => (parsed.validity().not_before.timestamp(), parsed.validity().not_after.timestamp()),
        Err(e) => return Err(format!("the leaf certificate cannot be parsed: {e}")),
    };
    let key = PrivateKeyDer::from_pem_slice(private_key_pem.as_bytes())
        .map_err(|e| format!("the private key is not valid PEM: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => "the private key does not match the certificate".to_string(),
        e => format!("the private key cannot be used: {e}"),
    })?;
    Ok(LoadedCertificate { key: Arc::new(key), not_before, not_after })
}

/// The CA certificates of a PEM bundle as a rustls root store: at least one certificate,
/// every one of them usable as a trust anchor.
pub fn load_ca_bundle(pem: &str) -> Result<rustls::RootCertStore, String> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the CA bundle is not valid PEM: {e}"))?;
    if certificates.is_empty() {
        return Err("the CA bundle holds no certificate".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, certificate) in certificates.into_iter().enumerate() {
        roots
            .add(certificate)
            .map_err(|e| format!("certificate {} of the CA bundle cannot be a trust anchor: {e}", i + 1))?;
    }
    Ok(roots)
}

/// A PEM CA bundle as the data plane checks client certificates against it.
#[derive(Debug, Clone)]
pub struct LoadedCaBundle {
    /// Checks that a client certificate (with the intermediates the client sent) chains
    /// to one of the bundle's certificates and may authenticate a client (EKU).
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The number of CA certificates in the bundle.
    pub certificates: usize,
}

/// Loads a PEM CA bundle for checking client certificates ([`load_ca_bundle`]: at least
/// one certificate, each usable as a trust anchor; other sections are ignored).
pub fn load_client_ca_bundle(ca_bundle_pem: &str) -> Result<LoadedCaBundle, String> {
    let roots = load_ca_bundle(ca_bundle_pem)?;
    let certificates = roots.len();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("the CA bundle cannot verify client certificates: {e}"))?;
    Ok(LoadedCaBundle { verifier, certificates })
}

/// `2026-12-02T10:00:00Z` for seconds since the epoch.
fn utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_match_whole_values_within_limits() {
        let regex = full_regex("/a+").unwrap();
        assert!(regex.is_match("/aaa"));
        assert!(!regex.is_match("/aaa/b"));
        // Valid alone, but the `#` comment swallows the closing of the anchoring group.
        assert!(regex::Regex::new("(?x)a#").is_ok());
        assert!(full_regex("(?x)a#").unwrap_err().contains("invalid regular expression"));
        assert!(full_regex("(").unwrap_err().contains("unclosed group"), "{:?}", full_regex("("));
        assert!(full_regex(&"(".repeat(40)).is_err());
        assert!(full_regex(&format!("{}a{}", "(".repeat(40), ")".repeat(40))).unwrap_err().contains("nest"));
        assert!(full_regex(r"\w{1000}\w{1000}").unwrap_err().contains("compiles to more than"));
        assert!(full_regex(&"a".repeat(MAX_REGEX_LENGTH + 1)).unwrap_err().contains("the limit is 4096"));
    }

    #[test]
    fn ca_bundles_need_usable_certificates() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap().pem();
        assert_eq!(load_ca_bundle(&format!("{ca}{ca}")).unwrap().len(), 2);
        assert!(load_ca_bundle("").unwrap_err().contains("no certificate"));
        assert!(load_ca_bundle("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
    }

    #[test]
    fn client_ca_bundles_need_certificates_usable_as_trust_anchors() {
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
        assert_eq!(load_client_ca_bundle(&ca.cert.pem()).unwrap().certificates, 1);
        let both = format!("{}{}", ca.cert.pem(), other.cert.pem());
        assert_eq!(load_client_ca_bundle(&both).unwrap().certificates, 2);
        // A key next to the certificates is ignored; a key alone is no bundle.
        let with_key = format!("{}{}", ca.signing_key.serialize_pem(), ca.cert.pem());
        assert_eq!(load_client_ca_bundle(&with_key).unwrap().certificates, 1);
        assert_eq!(
            load_client_ca_bundle(&ca.signing_key.serialize_pem()).unwrap_err(),
            "the CA bundle holds no certificate"
        );
        assert_eq!(load_client_ca_bundle("").unwrap_err(), "the CA bundle holds no certificate");
        let not_x509 = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let error = load_client_ca_bundle(&format!("{}{not_x509}", ca.cert.pem())).unwrap_err();
        assert!(error.starts_with("certificate 2 of the CA bundle cannot be a trust anchor"), "{error}");
        let truncated = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(
            load_client_ca_bundle(truncated).unwrap_err().contains("not valid PEM"),
            "{:?}",
            load_client_ca_bundle(truncated)
        );
    }

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_796_212_800), "2026-12-02T12:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn certificates_need_a_matching_usable_key() {
        let good = rcgen::generate_simple_self_signed(vec!["a.example.com".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["b.example.com".into()]).unwrap();
        let cert = good.cert.pem();
        let loaded = load_certificate(&cert, &good.signing_key.serialize_pem()).unwrap();
        assert!(loaded.not_before < loaded.not_after);
        assert_eq!(loaded.invalid_at(loaded.not_before + 1), None);
        assert!(loaded.invalid_at(loaded.not_after + 1).unwrap().contains("expired at"));
        assert!(loaded.invalid_at(loaded.not_before - 1).unwrap().contains("not valid before"));
        let mismatch = load_certificate(&cert, &other.signing_key.serialize_pem()).unwrap_err();
        assert_eq!(mismatch, "the private key does not match the certificate");
        let garbage_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(load_certificate(&cert, garbage_key).unwrap_err().contains("the private key cannot be used"));
        assert!(load_certificate("", &good.signing_key.serialize_pem()).unwrap_err().contains("no certificate"));
        let not_x509 = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(
            load_certificate(not_x509, &good.signing_key.serialize_pem()).unwrap_err().contains("cannot be parsed")
        );
    }
}
