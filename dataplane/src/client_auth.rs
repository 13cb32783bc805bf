//! Client certificates on HTTPS ports (Gateway `spec.tls.frontend`): requested and
//! checked during the TLS handshake, per port, against the tables of the moment, so a new
//! CA bundle or mode applies to the next handshake and established connections stay.
//!
//! ```text
//!  handshake ──► tls::PortVerifier (the port's ClientAuth, loaded from the tables per call)
//!                  none ─────────────────► no CertificateRequest
//!                  AllowValidOnly ───────► certificate required; one that does not chain
//!                                          to the CA bundle fails the handshake
//!                  AllowInsecureFallback ► certificate requested; none, or one that does
//!                                          not verify, is accepted
//!  handshake done ──► ClientAuth::admits (tls::HandshakeCheck): a resumed TLS session
//!                     skips the verifier, so the certificate it carries is checked again
//!                     against the port's current validation; a refused connection is
//!                     closed before its first request (fast::Front)
//! ```
//!
//! The certificate is requested before the SNI picks a listener: every HTTPS listener on
//! a port has the same validation (the snapshot guarantees it), and the CertificateRequest
//! names no CAs (clients then offer whichever certificate they have).

use std::sync::Arc;

use pingora_rustls::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use sluice_snapshot::{ClientValidation, ClientValidationMode};

/// The client certificate validation of one HTTPS port, compiled.
#[derive(Debug)]
pub struct ClientAuth {
    /// The snapshot's name of the validation.
    pub name: String,
    /// Only AllowValidOnly and AllowInsecureFallback (the snapshot's validation rejects
    /// an unspecified mode).
    pub mode: ClientValidationMode,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientAuth {
    /// Loads the CA bundle with the translator's loader.
    pub fn compile(validation: &ClientValidation) -> Result<ClientAuth, String> {
        let mode = validation.mode();
        if mode == ClientValidationMode::Unspecified {
            return Err("the client validation mode is unspecified".into());
        }
        let bundle = sluice_snapshot::compile::load_client_ca_bundle(&validation.ca_bundle_pem)?;
        Ok(ClientAuth { name: validation.name.clone(), mode, verifier: bundle.verifier })
    }

    /// Whether a valid client certificate is required (AllowValidOnly).
    pub(crate) fn required(&self) -> bool {
        self.mode == ClientValidationMode::AllowValidOnly
    }

    /// The verifier of the CA bundle.
    pub(crate) fn verifier(&self) -> &dyn ClientCertVerifier {
        self.verifier.as_ref()
    }

    /// Whether a connection whose client presented `chain` (leaf first; None: no
    /// certificate) may be served under this validation now; if not, why.
    pub fn admits(&self, chain: Option<&[CertificateDer<'static>]>) -> Result<(), String> {
        if !self.required() {
            return Ok(());
        }
        let Some((leaf, intermediates)) = chain.and_then(<[CertificateDer<'static>]>::split_first) else {
            return Err("the client presented no certificate".into());
        };
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|error| format!("the client certificate is not valid: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (rcgen::CertifiedIssuer<'static, rcgen::KeyPair>, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let pem = issuer.pem();
        (issuer, pem)
    }

    fn client(issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.signed_by(&rcgen::KeyPair::generate().unwrap(), &**issuer).unwrap().der().clone()
    }

    fn auth(pem: &str, mode: ClientValidationMode) -> Result<ClientAuth, String> {
        ClientAuth::compile(&ClientValidation { name: "v".into(), ca_bundle_pem: pem.into(), mode: mode as i32 })
    }

    #[test]
    fn valid_only_admits_certificates_of_its_bundle_and_fallback_admits_all() {
        let (a, a_pem) = ca();
        let (b, _) = ca();
        let valid_only = auth(&a_pem, ClientValidationMode::AllowValidOnly).unwrap();
        let from_a = [client(&a)];
        let from_b = [client(&b)];
        assert_eq!(valid_only.admits(Some(&from_a)), Ok(()));
        let refused = valid_only.admits(Some(&from_b)).unwrap_err();
        assert!(refused.starts_with("the client certificate is not valid: "), "{refused}");
        assert_eq!(valid_only.admits(None).unwrap_err(), "the client presented no certificate");
        assert_eq!(valid_only.admits(Some(&[])).unwrap_err(), "the client presented no certificate");

        let fallback = auth(&a_pem, ClientValidationMode::AllowInsecureFallback).unwrap();
        assert_eq!(fallback.admits(Some(&from_b)), Ok(()));
        assert_eq!(fallback.admits(None), Ok(()));

        assert_eq!(
            auth(&a_pem, ClientValidationMode::Unspecified).unwrap_err(),
            "the client validation mode is unspecified"
        );
        assert_eq!(auth("", ClientValidationMode::AllowValidOnly).unwrap_err(), "the CA bundle holds no certificate");
    }
}
