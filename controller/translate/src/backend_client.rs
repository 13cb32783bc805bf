//! The Gateway's backend client certificate (`spec.tls.backend.clientCertificateRef`):
//! presented by its data planes on every TLS connection to a backend (BackendTLSPolicy),
//! and the Gateway's `ResolvedRefs` condition that says whether it could be read.

use sluice_gateway_api::gateways::Gateway;
use sluice_snapshot::Certificate;

use crate::certificates::load_certificate;
use crate::gateways::GATEWAY_GROUP;
use crate::index::{Index, ObjectKey};
use crate::problems::{CertificateProblem, Problem};
use crate::status::{Condition, reason};

/// Why the backend client certificate cannot be used (the Gateway's ResolvedRefs=False).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BackendClientProblem {
    /// `kind` as shown (`Kind` or `Kind.group`).
    UnsupportedKind {
        secret: ObjectKey,
        kind: String,
    },
    NotPermitted {
        secret: ObjectKey,
        namespace: String,
    },
    Certificate(CertificateProblem),
}

impl Problem for BackendClientProblem {
    fn reason(&self) -> &'static str {
        match self {
            BackendClientProblem::UnsupportedKind { .. } | BackendClientProblem::Certificate(_) => {
                reason::INVALID_CLIENT_CERTIFICATE_REF
            }
            BackendClientProblem::NotPermitted { .. } => reason::REF_NOT_PERMITTED,
        }
    }

    fn message(&self) -> String {
        match self {
            BackendClientProblem::UnsupportedKind { secret, kind } => {
                format!("clientCertificateRef {secret} has unsupported kind {kind}; only core Secrets are supported")
            }
            BackendClientProblem::NotPermitted { secret, namespace } => format!(
                "clientCertificateRef to Secret {secret} is not permitted by any ReferenceGrant in namespace {namespace}"
            ),
            BackendClientProblem::Certificate(problem) => problem.message(),
        }
    }
}

/// The Gateway's backend client certificate: `None` without a reference.
pub(crate) fn backend_client_certificate(
    gateway: &Gateway,
    key: &ObjectKey,
    index: &Index<'_>,
) -> Option<Result<Certificate, BackendClientProblem>> {
    let reference = gateway.spec.tls.as_ref()?.backend.as_ref()?.client_certificate_ref.as_ref()?;
    let group = reference.group.as_deref().unwrap_or_default();
    let kind = reference.kind.as_deref().unwrap_or("Secret");
    let namespace = reference.namespace.as_deref().filter(|ns| !ns.is_empty()).unwrap_or(&key.namespace);
    let secret = ObjectKey::new(namespace, reference.name.clone());
    if !(group.is_empty() || group == "core") || kind != "Secret" {
        let shown = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
        return Some(Err(BackendClientProblem::UnsupportedKind { secret, kind: shown }));
    }
    // Checked before existence, so status never tells whether the Secret exists.
    if !index.reference_allowed(GATEWAY_GROUP, "Gateway", &key.namespace, "", "Secret", &secret) {
        return Some(Err(BackendClientProblem::NotPermitted { secret, namespace: namespace.to_string() }));
    }
    Some(load_certificate(index, &secret).map_err(BackendClientProblem::Certificate))
}

/// The Gateway's `ResolvedRefs` condition for its backend client certificate, when it
/// names one.
pub(crate) fn resolved_refs_condition(
    certificate: &Option<Result<Certificate, BackendClientProblem>>,
    generation: i64,
) -> Option<Condition> {
    match certificate.as_ref()? {
        Ok(_) => Some(Condition::new(
            reason::RESOLVED_REFS,
            true,
            reason::RESOLVED_REFS,
            "The backend client certificate is resolved",
            generation,
        )),
        Err(problem) => {
            Some(Condition::new(reason::RESOLVED_REFS, false, problem.reason(), problem.message(), generation))
        }
    }
}
