//! BackendTLSPolicies: which policy applies to a Service port, what TLS it asks for, and
//! the policies' status (one ancestor per Gateway that sends traffic to a targeted port).
//!
//! ```text
//!  policies by age ──► targets (Service, sectionName?) ── taken already? ──► Conflicted
//!                  └─► validation: caCertificateRefs (ConfigMap ca.crt) | System roots,
//!                      hostname (SNI), subjectAltNames ──► UpstreamTls, or why not
//!  Service port (name) ──► the policy for (Service, port name), else for (Service, all)
//!  routes using a targeted port on Gateway G ──► ancestor G on every policy of the target
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sluice_gateway_api::backendtlspolicies::{BackendTlsPolicy, BackendTlsPolicyValidationSubjectAltNamesType};
use sluice_snapshot::{SubjectAltName, UpstreamTls, subject_alt_name};

use crate::index::{Index, ObjectKey};
use crate::status::{Condition, reason};

/// Why a policy's validation cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PolicyProblem {
    /// A caCertificateRef is not a core ConfigMap.
    InvalidKind(String),
    /// A caCertificateRef names a ConfigMap that is missing, has no `ca.crt`, or whose
    /// `ca.crt` holds no usable certificate.
    InvalidCaCertificateRef(String),
    /// `wellKnownCACertificates` names a set Sluice does not know.
    UnsupportedWellKnown(String),
    /// A subjectAltName is empty or of the wrong shape.
    InvalidSubjectAltName(String),
}

impl PolicyProblem {
    fn resolved_refs_reason(&self) -> &'static str {
        match self {
            PolicyProblem::InvalidKind(_) => reason::INVALID_KIND,
            PolicyProblem::InvalidCaCertificateRef(_) => reason::INVALID_CA_CERTIFICATE_REF,
            PolicyProblem::UnsupportedWellKnown(_) | PolicyProblem::InvalidSubjectAltName(_) => reason::RESOLVED_REFS,
        }
    }

    fn message(&self) -> &str {
        match self {
            PolicyProblem::InvalidKind(m)
            | PolicyProblem::InvalidCaCertificateRef(m)
            | PolicyProblem::UnsupportedWellKnown(m)
            | PolicyProblem::InvalidSubjectAltName(m) => m,
        }
    }

    /// Whether the references are fine and only the validation's values are not.
    fn refs_resolved(&self) -> bool {
        matches!(self, PolicyProblem::UnsupportedWellKnown(_) | PolicyProblem::InvalidSubjectAltName(_))
    }
}

/// One policy, checked.
struct Policy<'w> {
    key: ObjectKey,
    object: &'w BackendTlsPolicy,
    /// The TLS it asks for, or why it cannot be used.
    tls: Result<UpstreamTls, PolicyProblem>,
    /// An invalid reference next to valid ones (the policy is used with the valid ones).
    partial: Option<PolicyProblem>,
    /// The older policy that holds one of its targets, if any.
    conflicted_with: Option<ObjectKey>,
    /// Its targets: (Service, port name or all ports).
    targets: Vec<(ObjectKey, Option<String>)>,
}

/// What a Service port's policy says for its traffic.
pub(crate) enum Applied {
    /// No policy: plaintext.
    None,
    /// TLS as the policy asks.
    Tls(UpstreamTls),
    /// The policy is not usable: requests get an error, never plaintext.
    Refused(String),
}

/// Every BackendTLSPolicy of the World, indexed by target.
pub(crate) struct Policies<'w> {
    policies: Vec<Policy<'w>>,
    /// (Service, port name or None for every port) → the policy that holds it.
    by_target: HashMap<(ObjectKey, Option<String>), usize>,
    /// Gateways sending traffic to each (Service, port name).
    used_by: BTreeMap<(ObjectKey, String), BTreeSet<ObjectKey>>,
}

impl<'w> Policies<'w> {
    pub fn new(policies: &'w [std::sync::Arc<BackendTlsPolicy>], index: &Index<'_>) -> Self {
        let mut by_target = HashMap::new();
        let mut checked = Vec::new();
        for object in crate::httproutes::by_age(policies) {
            let key = ObjectKey::of(object);
            let targets: Vec<(ObjectKey, Option<String>)> = object
                .spec
                .target_refs
                .iter()
                .filter(|t| t.group.is_empty() && t.kind == "Service")
                .map(|t| (ObjectKey::new(key.namespace.clone(), t.name.clone()), t.section_name.clone()))
                .collect();
            let mut conflicted_with = None;
            for target in &targets {
                match by_target.get(target) {
                    Some(&holder) => {
                        let holder: &Policy<'_> = &checked[holder];
                        conflicted_with.get_or_insert(holder.key.clone());
                    }
                    None => {
                        by_target.insert(target.clone(), checked.len());
                    }
                }
            }
            let (tls, partial) = match validation(&key, object, index) {
                Ok((tls, partial)) => (Ok(tls), partial),
                Err(problem) => (Err(problem), None),
            };
            checked.push(Policy { tls, partial, key, object, conflicted_with, targets });
        }
        Policies { policies: checked, by_target, used_by: BTreeMap::new() }
    }

    /// The policy for traffic to `service`'s port named `port_name`: one naming that
    /// port, else one for the whole Service.
    pub fn applied(&self, service: &ObjectKey, port_name: &str) -> Applied {
        let specific = self.by_target.get(&(service.clone(), Some(port_name.to_string())));
        let whole = self.by_target.get(&(service.clone(), None));
        let Some(&index) = specific.or(whole) else { return Applied::None };
        let policy = &self.policies[index];
        match &policy.tls {
            Ok(tls) => Applied::Tls(tls.clone()),
            Err(problem) => Applied::Refused(format!("BackendTLSPolicy {}: {}", policy.key, problem.message())),
        }
    }

    /// Notes that `gateway` sends traffic to `service`'s port named `port_name`.
    pub fn record_use(&mut self, gateway: &ObjectKey, service: &ObjectKey, port_name: &str) {
        self.used_by.entry((service.clone(), port_name.to_string())).or_default().insert(gateway.clone());
    }

    /// The status of every policy: per Gateway using one of its targets, Accepted and
    /// ResolvedRefs.
    pub fn status(&self) -> BTreeMap<ObjectKey, PolicyStatus> {
        let mut out = BTreeMap::new();
        for policy in &self.policies {
            let mut gateways = BTreeSet::new();
            for (service, section) in &policy.targets {
                for ((used_service, port), users) in &self.used_by {
                    if used_service == service && section.as_ref().is_none_or(|s| s == port) {
                        gateways.extend(users.iter().cloned());
                    }
                }
            }
            let generation = policy.object.metadata.generation.unwrap_or_default();
            let conditions = conditions(policy, generation);
            let ancestors = gateways
                .into_iter()
                .map(|gateway| PolicyAncestorStatus { gateway, conditions: conditions.clone() })
                .collect();
            out.insert(policy.key.clone(), PolicyStatus { ancestors });
        }
        out
    }
}

fn conditions(policy: &Policy<'_>, generation: i64) -> Vec<Condition> {
    let accepted = match (&policy.conflicted_with, &policy.tls) {
        (Some(holder), _) => Condition::new(
            reason::ACCEPTED,
            false,
            reason::CONFLICTED,
            format!("BackendTLSPolicy {holder} targets the same Service port and is older"),
            generation,
        ),
        (None, Err(problem)) if problem.refs_resolved() => {
            Condition::new(reason::ACCEPTED, false, reason::INVALID, problem.message().to_string(), generation)
        }
        (None, Err(problem)) => Condition::new(
            reason::ACCEPTED,
            false,
            reason::NO_VALID_CA_CERTIFICATE,
            problem.message().to_string(),
            generation,
        ),
        (None, Ok(_)) => Condition::new(reason::ACCEPTED, true, reason::ACCEPTED, "Policy is accepted", generation),
    };
    let problem = policy.tls.as_ref().err().or(policy.partial.as_ref());
    let resolved = match problem {
        Some(problem) if !problem.refs_resolved() => Condition::new(
            reason::RESOLVED_REFS,
            false,
            problem.resolved_refs_reason(),
            problem.message().to_string(),
            generation,
        ),
        _ => Condition::new(
            reason::RESOLVED_REFS,
            true,
            reason::RESOLVED_REFS,
            "All references are resolved",
            generation,
        ),
    };
    vec![accepted, resolved]
}

/// The status of one BackendTLSPolicy: Sluice's ancestors (other controllers' entries are
/// kept by the status writer).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PolicyStatus {
    pub ancestors: Vec<PolicyAncestorStatus>,
}

/// One Gateway's view of a policy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PolicyAncestorStatus {
    pub gateway: ObjectKey,
    pub conditions: Vec<Condition>,
}

/// The well-known CA sets Sluice knows.
const WELL_KNOWN_SYSTEM: &str = "System";

/// The TLS a policy asks for (with the problem of an invalid reference next to valid
/// ones), or why it cannot be used.
fn validation(
    key: &ObjectKey,
    policy: &BackendTlsPolicy,
    index: &Index<'_>,
) -> Result<(UpstreamTls, Option<PolicyProblem>), PolicyProblem> {
    let validation = &policy.spec.validation;
    let mut subject_alt_names = Vec::new();
    for san in validation.subject_alt_names.iter().flatten() {
        let kind = match san.r#type {
            BackendTlsPolicyValidationSubjectAltNamesType::Hostname => san
                .hostname
                .as_deref()
                .filter(|h| sluice_snapshot::valid_hostname(h))
                .map(|h| subject_alt_name::Kind::Hostname(h.to_string())),
            BackendTlsPolicyValidationSubjectAltNamesType::Uri => san
                .uri
                .as_deref()
                .filter(|u| !u.is_empty() && u.contains(':') && !u.chars().any(char::is_whitespace))
                .map(|u| subject_alt_name::Kind::Uri(u.to_string())),
        };
        let kind = kind.ok_or_else(|| {
            PolicyProblem::InvalidSubjectAltName(format!("subjectAltName {san:?} is not a valid hostname or URI"))
        })?;
        subject_alt_names.push(SubjectAltName { kind: Some(kind) });
    }
    let mut tls = UpstreamTls {
        policy: format!("backendtlspolicy/{}/{}", key.namespace, key.name),
        sni: validation.hostname.clone(),
        subject_alt_names,
        ..Default::default()
    };
    if let Some(known) = &validation.well_known_ca_certificates {
        if known != WELL_KNOWN_SYSTEM {
            return Err(PolicyProblem::UnsupportedWellKnown(format!(
                "wellKnownCACertificates {known:?} is not supported (only System)"
            )));
        }
        tls.system_roots = true;
        return Ok((tls, None));
    }
    let refs = validation.ca_certificate_refs.as_deref().unwrap_or_default();
    if refs.is_empty() {
        return Err(PolicyProblem::InvalidCaCertificateRef(
            "no caCertificateRefs and no wellKnownCACertificates".into(),
        ));
    }
    let mut bundle = String::new();
    let mut first_problem = None;
    for reference in refs {
        if !reference.group.is_empty() || reference.kind != "ConfigMap" {
            let shown = if reference.group.is_empty() {
                reference.kind.clone()
            } else {
                format!("{}.{}", reference.kind, reference.group)
            };
            first_problem.get_or_insert(PolicyProblem::InvalidKind(format!(
                "caCertificateRef {} has unsupported kind {shown}; only core ConfigMaps are supported",
                reference.name
            )));
            continue;
        }
        let map_key = ObjectKey::new(key.namespace.clone(), reference.name.clone());
        let pem = index
            .config_maps
            .get(&map_key)
            .and_then(|m| m.data.as_ref())
            .and_then(|d| d.get("ca.crt"))
            .filter(|pem| !pem.trim().is_empty());
        match pem.map(|pem| (pem, sluice_snapshot::compile::load_ca_bundle(pem))) {
            Some((pem, Ok(_))) => {
                bundle.push_str(pem.trim_end());
                bundle.push('\n');
            }
            Some((_, Err(problem))) => {
                first_problem.get_or_insert(PolicyProblem::InvalidCaCertificateRef(format!(
                    "ConfigMap {map_key} key ca.crt: {problem}"
                )));
            }
            None => {
                first_problem.get_or_insert(PolicyProblem::InvalidCaCertificateRef(format!(
                    "ConfigMap {map_key} is not found or has no certificate under ca.crt"
                )));
            }
        }
    }
    // Invalid references next to valid ones: the valid ones are used (ResolvedRefs says
    // which is not); with none valid, the policy cannot be used (Accepted=False).
    if bundle.is_empty() {
        return Err(first_problem.unwrap_or_else(|| PolicyProblem::InvalidCaCertificateRef("no usable CA".into())));
    }
    tls.ca_pem = bundle;
    Ok((tls, first_problem))
}
