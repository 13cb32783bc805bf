//! The push link's certificate authority: it signs the controller's server certificate,
//! which data planes verify against a trust bundle (this CA, and during a rotation also
//! the next or the previous one). Data planes prove who they are with a bearer token
//! (auth.rs), not with certificates.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct Issued {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("private_key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

/// A CA that issues the push link's certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    certificate_pem: String,
    private_key_pem: String,
}

impl CertificateAuthority {
    /// A new CA with a fresh key, valid for `days` days.
    pub fn generate(common_name: &str, days: i64) -> Result<Self> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, days);
        let certificate = params.self_signed(&key).context("self-signing the CA")?;
        let private_key_pem = key.serialize_pem();
        Ok(Self { certificate_pem: certificate.pem(), private_key_pem, issuer: Issuer::new(params, key) })
    }

    /// Loads a CA kept earlier (e.g. in a Secret) from its PEM certificate and key.
    pub fn from_pem(certificate_pem: &str, private_key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(private_key_pem).context("parsing the CA key")?;
        let issuer = Issuer::from_ca_cert_pem(certificate_pem, key).context("parsing the CA certificate")?;
        Ok(Self { issuer, certificate_pem: certificate_pem.into(), private_key_pem: private_key_pem.into() })
    }

    /// The CA certificate, which both sides trust.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The CA's private key, for keeping the CA (e.g. in a Secret).
    pub fn private_key_pem(&self) -> &str {
        &self.private_key_pem
    }

    /// A server certificate for the push server, for these DNS names or IP addresses.
    pub fn issue_server(&self, names: &[&str], days: i64) -> Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for name in names {
            params.subject_alt_names.push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().with_context(|| format!("DNS name {name}"))?),
            });
        }
        params.distinguished_name.push(DnType::CommonName, "sluice-controller");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, days)
    }

    fn sign(&self, mut params: CertificateParams, days: i64) -> Result<Issued> {
        set_validity(&mut params, days);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate().context("generating a key")?;
        let certificate = params.signed_by(&key, &self.issuer).context("signing a certificate")?;
        Ok(Issued { certificate_pem: certificate.pem(), private_key_pem: key.serialize_pem() })
    }
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that differ between controller and data-plane nodes.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days);
}

/// The trust bundle made of the CA certificates in `pems` (each may hold several): every
/// certificate must parse; duplicates go and the rest are sorted, so that the same set of
/// CAs always gives the same bundle (a rotation step that only reorders them changes no
/// Deployment).
pub fn trust_bundle(pems: &[&str]) -> Result<String> {
    let mut certificates = std::collections::BTreeSet::new();
    for pem in pems {
        for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
            let block = block.context("reading a PEM block")?;
            block.parse_x509().context("parsing a CA certificate")?;
            certificates.insert(block.contents);
        }
    }
    anyhow::ensure!(!certificates.is_empty(), "no CA certificate");
    Ok(certificates.into_iter().map(|der| pem_certificate(&der)).collect())
}

fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_ca_still_issues() {
        let ca = CertificateAuthority::generate("test", 1).unwrap();
        let again = CertificateAuthority::from_pem(ca.certificate_pem(), ca.private_key_pem()).unwrap();
        assert!(again.issue_server(&["localhost", "127.0.0.1"], 1).is_ok());
        assert!(CertificateAuthority::from_pem("junk", ca.private_key_pem()).is_err());
        assert!(!format!("{:?}", again.issue_server(&["localhost"], 1).unwrap()).contains("PRIVATE"));
    }

    /// The CA that docs/push.md's rotation steps make with openssl (kept in testdata)
    /// loads and issues push server certificates.
    #[test]
    fn a_ca_made_with_openssl_as_documented_loads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/push-ca");
        let certificate = std::fs::read_to_string(dir.join("openssl.crt")).unwrap();
        let key = std::fs::read_to_string(dir.join("openssl.key")).unwrap();
        let ca = CertificateAuthority::from_pem(&certificate, &key).unwrap();
        assert!(ca.issue_server(&["sluice-controller.sluice-system.svc"], 1).is_ok());
        assert_eq!(trust_bundle(&[&certificate]).unwrap().matches("BEGIN CERTIFICATE").count(), 1);
    }

    #[test]
    fn a_trust_bundle_is_the_sorted_set_of_its_certificates() {
        let old = CertificateAuthority::generate("old", 1).unwrap();
        let new = CertificateAuthority::generate("new", 1).unwrap();
        let both = trust_bundle(&[old.certificate_pem(), new.certificate_pem()]).unwrap();
        assert_eq!(both.matches("BEGIN CERTIFICATE").count(), 2);
        // The same set in another order, or with a duplicate, is the same bundle.
        let concatenated = format!("{}{}", new.certificate_pem(), old.certificate_pem());
        assert_eq!(trust_bundle(&[&concatenated, old.certificate_pem()]).unwrap(), both);
        assert_eq!(
            trust_bundle(&[old.certificate_pem(), ""]).unwrap(),
            trust_bundle(&[old.certificate_pem()]).unwrap()
        );
        // Each certificate survives the round trip.
        let again = trust_bundle(&[&both]).unwrap();
        assert_eq!(again, both);
        assert!(trust_bundle(&[""]).is_err());
        assert!(trust_bundle(&["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]).is_err());
    }
}
