//! The push link's certificate authority: it signs the controller's server certificate
//! and one client certificate per Gateway. A client certificate names its Gateway in a
//! URI SAN (`spiffe://sluice.dev/ns/NAMESPACE/gateway/NAME`), which is the only identity
//! the push server trusts.

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// Prefix of the URI SAN that carries a data plane's Gateway identity.
const IDENTITY_PREFIX: &str = "spiffe://sluice.dev/ns/";
/// The URI SAN that binds a client certificate to one Gateway object (its UID).
const UID_PREFIX: &str = "urn:sluice:gateway-uid:";

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

    /// A client certificate that identifies the data planes of one Gateway
    /// (`namespace/name`).
    pub fn issue_client(&self, gateway: &str, days: i64) -> Result<Issued> {
        self.issue_client_for(gateway, None, days)
    }

    /// A client certificate for one Gateway, bound to its UID when given: a Gateway
    /// deleted and created again under the same name gets a new UID, and the push server
    /// refuses certificates of the old one.
    pub fn issue_client_for(&self, gateway: &str, uid: Option<&str>, days: i64) -> Result<Issued> {
        let Some((namespace, name)) = gateway.split_once('/') else {
            bail!("a Gateway is named namespace/name, not {gateway:?}");
        };
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, gateway);
        let uri = format!("{IDENTITY_PREFIX}{namespace}/gateway/{name}");
        params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().context("identity URI")?)];
        if let Some(uid) = uid {
            if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                bail!("Gateway UID {uid:?} is not a UUID");
            }
            let urn = format!("{UID_PREFIX}{uid}");
            params.subject_alt_names.push(SanType::URI(urn.as_str().try_into().context("UID URI")?));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
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

/// The Gateway UID a client certificate (DER) is bound to, if any.
pub fn gateway_uid_of_certificate(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = certificate.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(UID_PREFIX).map(str::to_string),
        _ => None,
    })
}

/// The Gateway (`namespace/name`) a client certificate (DER) identifies, if any.
pub fn gateway_of_certificate(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = certificate.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => {
            let rest = uri.strip_prefix(IDENTITY_PREFIX)?;
            let (namespace, name) = rest.split_once("/gateway/")?;
            let valid = |part: &str| !part.is_empty() && !part.contains('/');
            (valid(namespace) && valid(name)).then(|| format!("{namespace}/{name}"))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    #[test]
    fn client_certificates_name_their_gateway() {
        let ca = CertificateAuthority::generate("test", 1).unwrap();
        let client = ca.issue_client("team-a/web", 1).unwrap();
        assert_eq!(gateway_of_certificate(&der(&client.certificate_pem)).as_deref(), Some("team-a/web"));
        let server = ca.issue_server(&["localhost", "127.0.0.1"], 1).unwrap();
        assert_eq!(gateway_of_certificate(&der(&server.certificate_pem)), None);
        assert!(ca.issue_client("no-namespace", 1).is_err());
        assert!(!format!("{client:?}").contains("PRIVATE"));
        assert_eq!(gateway_uid_of_certificate(&der(&client.certificate_pem)), None);
        let uid = "6f1d2c1e-0000-4000-8000-000000000001";
        let bound = ca.issue_client_for("team-a/web", Some(uid), 1).unwrap();
        assert_eq!(gateway_of_certificate(&der(&bound.certificate_pem)).as_deref(), Some("team-a/web"));
        assert_eq!(gateway_uid_of_certificate(&der(&bound.certificate_pem)).as_deref(), Some(uid));
        assert!(ca.issue_client_for("team-a/web", Some("a/b"), 1).is_err());
    }

    #[test]
    fn a_kept_ca_still_issues() {
        let ca = CertificateAuthority::generate("test", 1).unwrap();
        let again = CertificateAuthority::from_pem(ca.certificate_pem(), ca.private_key_pem()).unwrap();
        let client = again.issue_client("ns/gw", 1).unwrap();
        assert_eq!(gateway_of_certificate(&der(&client.certificate_pem)).as_deref(), Some("ns/gw"));
        assert!(CertificateAuthority::from_pem("junk", ca.private_key_pem()).is_err());
    }
}
