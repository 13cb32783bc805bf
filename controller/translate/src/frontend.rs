//! Client certificate validation of HTTPS listeners (Gateway `spec.tls.frontend`).
//!
//! ```text
//!  spec.tls.frontend.perPort[port] ─┐ per HTTPS listener: its port's entry, else the default
//!  spec.tls.frontend.default ───────┴─► caCertificateRefs ──► ConfigMap `ca.crt` (ReferenceGrant
//!                                        checked, loaded with the data plane's loader)
//!    some refs valid ─► snapshot ClientValidation (their CA bundle, the mode); ResolvedRefs=False
//!                       for the invalid ones
//!    no ref valid    ─► listener Accepted=False NoValidCACertificate (not served)
//! ```
//!
//! The data plane asks for the client certificate during the handshake, before the SNI
//! has picked a listener, so validation is per port: every HTTPS listener on a port gets
//! the same one, as the API's perPort field says.

use std::collections::BTreeMap;

use sluice_gateway_api::gateways::{
    Gateway, GatewayTlsFrontendDefaultValidationMode, GatewayTlsFrontendPerPortTlsValidationMode,
};
use sluice_snapshot::{ClientValidation, ClientValidationMode, Protocol};

use crate::gateways::{GATEWAY_GROUP, ListenerPlan};
use crate::index::{Index, ObjectKey};
use crate::problems::{CaProblem, ListenerProblem};

/// The ConfigMap key holding a PEM CA bundle.
const CA_KEY: &str = "ca.crt";

/// One caCertificateRef, whichever field it came from.
struct CaRef<'g> {
    group: &'g str,
    kind: &'g str,
    name: &'g str,
    namespace: Option<&'g str>,
}

/// The caCertificateRefs of a validation: the default's and a perPort entry's have
/// generated types of their own, with the same fields.
macro_rules! ca_refs {
    ($validation:expr) => {
        $validation
            .ca_certificate_refs
            .iter()
            .map(|r| CaRef { group: &r.group, kind: &r.kind, name: &r.name, namespace: r.namespace.as_deref() })
            .collect()
    };
}

/// A validation as the Gateway spells it (the default or one perPort entry).
struct ValidationSpec<'g> {
    /// Snapshot name of the validation, traceable to the field.
    name: String,
    /// Where it is in the Gateway, for messages.
    field: String,
    refs: Vec<CaRef<'g>>,
    insecure_fallback: bool,
}

/// A validation after its references are resolved.
struct Resolved {
    /// The CA bundle of the valid refs, if any.
    validation: Option<ClientValidation>,
    /// The invalid refs.
    problems: Vec<CaProblem>,
}

/// Resolves the client certificate validation of every HTTPS listener of `gateway`
/// that is accepted so far: sets its `client_validation` (and adds the validation to
/// `validations`), or its ResolvedRefs problem, or, when no reference is valid, its
/// Accepted=False NoValidCACertificate.
pub(crate) fn plan_client_validation(
    gateway: &Gateway,
    key: &ObjectKey,
    listeners: &mut [ListenerPlan],
    index: &Index<'_>,
    validations: &mut BTreeMap<String, ClientValidation>,
) {
    let Some(frontend) = gateway.spec.tls.as_ref().and_then(|tls| tls.frontend.as_ref()) else { return };
    let mut resolved: BTreeMap<String, Resolved> = BTreeMap::new();
    for listener in listeners.iter_mut().filter(|l| l.protocol == Protocol::Https && l.not_accepted.is_none()) {
        let spec = match frontend.per_port.iter().flatten().find(|entry| entry.port == listener.port) {
            Some(entry) => entry.tls.validation.as_ref().map(|validation| ValidationSpec {
                name: format!("gateway/{}/{}/frontend/port/{}", key.namespace, key.name, entry.port),
                field: format!("spec.tls.frontend.perPort[port {}]", entry.port),
                refs: ca_refs!(validation),
                insecure_fallback: matches!(
                    validation.mode,
                    Some(GatewayTlsFrontendPerPortTlsValidationMode::AllowInsecureFallback)
                ),
            }),
            None => frontend.default.validation.as_ref().map(|validation| ValidationSpec {
                name: format!("gateway/{}/{}/frontend/default", key.namespace, key.name),
                field: "spec.tls.frontend.default".into(),
                refs: ca_refs!(validation),
                insecure_fallback: matches!(
                    validation.mode,
                    Some(GatewayTlsFrontendDefaultValidationMode::AllowInsecureFallback)
                ),
            }),
        };
        // A perPort entry without validation turns validation off for its port.
        let Some(spec) = spec else { continue };
        let outcome = resolved.entry(spec.name.clone()).or_insert_with(|| resolve(&spec, key, index));
        if !outcome.problems.is_empty() {
            listener.unresolved.get_or_insert_with(|| ListenerProblem::CaRefs(outcome.problems.clone()));
        }
        match &outcome.validation {
            Some(validation) => {
                listener.client_validation = Some(validation.name.clone());
                validations.insert(validation.name.clone(), validation.clone());
            }
            None => {
                listener.not_accepted = Some(ListenerProblem::NoValidCaCertificate {
                    field: spec.field.clone(),
                    problems: outcome.problems.clone(),
                });
            }
        }
    }
}

/// Loads the CA bundles of a validation's references.
fn resolve(spec: &ValidationSpec<'_>, gateway: &ObjectKey, index: &Index<'_>) -> Resolved {
    let mut bundle = String::new();
    let mut problems: Vec<CaProblem> = Vec::new();
    for ca_ref in &spec.refs {
        match load_ca_ref(ca_ref, gateway, index) {
            Ok(pem) => {
                bundle.push_str(&pem);
                if !bundle.ends_with('\n') {
                    bundle.push('\n');
                }
            }
            Err(problem) => problems.push(problem),
        }
    }
    let mut validation = None;
    if !bundle.is_empty() {
        // Each ref loaded on its own, so together they load too; checked all the same,
        // since this is exactly what the data plane gets.
        match checked_ca_bundle(&bundle) {
            Ok(()) => {
                let mode = if spec.insecure_fallback {
                    ClientValidationMode::AllowInsecureFallback
                } else {
                    ClientValidationMode::AllowValidOnly
                };
                validation =
                    Some(ClientValidation { name: spec.name.clone(), ca_bundle_pem: bundle, mode: mode as i32 });
            }
            Err(error) => problems.push(CaProblem::UnusableBundle { field: spec.field.clone(), error }),
        }
    }
    Resolved { validation, problems }
}

/// The PEM CA bundle one caCertificateRef names, or why it cannot be used.
fn load_ca_ref(ca_ref: &CaRef<'_>, gateway: &ObjectKey, index: &Index<'_>) -> Result<String, CaProblem> {
    let namespace = ca_ref.namespace.filter(|ns| !ns.is_empty()).unwrap_or(&gateway.namespace);
    let key = ObjectKey::new(namespace, ca_ref.name);
    if !ca_ref.group.is_empty() || ca_ref.kind != "ConfigMap" {
        let kind =
            if ca_ref.group.is_empty() { ca_ref.kind.to_string() } else { format!("{}.{}", ca_ref.kind, ca_ref.group) };
        return Err(CaProblem::UnsupportedKind { config_map: key, kind });
    }
    if !index.reference_allowed(GATEWAY_GROUP, "Gateway", &gateway.namespace, "", "ConfigMap", &key) {
        return Err(CaProblem::NotPermitted { config_map: key, namespace: namespace.to_string() });
    }
    let Some(config_map) = index.config_maps.get(&key) else {
        return Err(CaProblem::NotFound { config_map: key });
    };
    let pem = config_map.data.as_ref().and_then(|data| data.get(CA_KEY)).cloned().or_else(|| {
        config_map
            .binary_data
            .as_ref()
            .and_then(|data| data.get(CA_KEY))
            .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
    });
    let Some(pem) = pem else {
        return Err(CaProblem::NoBundle { config_map: key, key: CA_KEY });
    };
    checked_ca_bundle(&pem).map_err(|error| CaProblem::InvalidBundle { config_map: key, key: CA_KEY, error })?;
    Ok(pem)
}

/// CA bundles already checked, by content (every pass sees the same ConfigMaps again;
/// the answer depends only on the content, so translation stays a pure function).
type CheckedBundles = std::collections::HashMap<String, Result<(), String>>;
static CHECKED_BUNDLES: std::sync::Mutex<Option<CheckedBundles>> = std::sync::Mutex::new(None);
const MAX_CHECKED_BUNDLES: usize = 1024;

/// Whether the data plane can check client certificates against `pem`.
fn checked_ca_bundle(pem: &str) -> Result<(), String> {
    if let Ok(cache) = CHECKED_BUNDLES.lock()
        && let Some(answer) = cache.as_ref().and_then(|c| c.get(pem))
    {
        return answer.clone();
    }
    let answer = sluice_snapshot::compile::load_ca_bundle(pem).map(|_| ());
    if let Ok(mut cache) = CHECKED_BUNDLES.lock() {
        let cache = cache.get_or_insert_with(Default::default);
        if cache.len() >= MAX_CHECKED_BUNDLES {
            cache.clear();
        }
        cache.insert(pem.to_string(), answer.clone());
    }
    answer
}
