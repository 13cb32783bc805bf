//! Listener certificates: TLS Secrets loaded and checked exactly as the data plane loads
//! them, with a cache keyed by content.

use sluice_snapshot::Certificate;

use crate::index::{Index, ObjectKey};
use crate::problems::CertificateProblem;

/// Reads a TLS Secret: the certificate chain and key must load exactly as the data plane
/// loads them (`sluice_snapshot::compile::load_certificate`), and the leaf must be valid now.
pub(crate) fn load_certificate(index: &Index<'_>, key: &ObjectKey) -> Result<Certificate, CertificateProblem> {
    let Some(secret) = index.secrets.get(key) else {
        return Err(CertificateProblem::NotFound { secret: key.clone() });
    };
    let field = |name: &str| -> Option<Vec<u8>> {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(name))
            .map(|bytes| bytes.0.clone())
            .or_else(|| secret.string_data.as_ref().and_then(|data| data.get(name)).map(|s| s.clone().into_bytes()))
    };
    let invalid = |what: &str| CertificateProblem::Invalid { secret: key.clone(), what: what.to_string() };
    let cert = field("tls.crt").ok_or_else(|| invalid("has no tls.crt"))?;
    let private_key = field("tls.key").ok_or_else(|| invalid("has no tls.key"))?;
    let cert_chain_pem = String::from_utf8(cert).map_err(|_| invalid("tls.crt is not UTF-8 PEM"))?;
    let private_key_pem = String::from_utf8(private_key).map_err(|_| invalid("tls.key is not UTF-8 PEM"))?;
    let (not_before, not_after) = checked_certificate(&cert_chain_pem, &private_key_pem).map_err(|e| invalid(&e))?;
    if let Some(now) = index.now {
        let validity = |at: i64| sluice_snapshot::compile::validity_problem(not_before, not_after, at);
        // Translate again when this answer changes: at notBefore, or just past notAfter.
        if not_before > now {
            index.changes_at(not_before);
        } else if not_after >= now {
            index.changes_at(not_after.saturating_add(1));
        }
        if let Some(problem) = validity(now) {
            return Err(invalid(&problem));
        }
    }
    Ok(Certificate { name: format!("secret/{}/{}", key.namespace, key.name), cert_chain_pem, private_key_pem })
}

/// Certificates already checked, by content: loading a key (RSA especially) costs
/// milliseconds, and every pass sees the same Secrets again. The answer depends only on
/// the content, so translation stays a pure function of the World.
type CheckedCertificates = std::collections::HashMap<(String, String), Result<(i64, i64), String>>;
static CHECKED_CERTIFICATES: std::sync::Mutex<Option<CheckedCertificates>> = std::sync::Mutex::new(None);
const MAX_CHECKED_CERTIFICATES: usize = 4096;

/// The leaf's (notBefore, notAfter), or why the data plane could not serve the pair.
fn checked_certificate(chain: &str, key: &str) -> Result<(i64, i64), String> {
    let cache_key = (chain.to_string(), key.to_string());
    if let Ok(cache) = CHECKED_CERTIFICATES.lock()
        && let Some(answer) = cache.as_ref().and_then(|c| c.get(&cache_key))
    {
        return answer.clone();
    }
    let answer = sluice_snapshot::compile::load_certificate(chain, key).map(|c| (c.not_before, c.not_after));
    if let Ok(mut cache) = CHECKED_CERTIFICATES.lock() {
        let cache = cache.get_or_insert_with(Default::default);
        if cache.len() >= MAX_CHECKED_CERTIFICATES {
            cache.clear();
        }
        cache.insert(cache_key, answer.clone());
    }
    answer
}
