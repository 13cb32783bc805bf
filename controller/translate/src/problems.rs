//! User mistakes in Gateways, ListenerSets and their listeners, as typed problems: each
//! knows the condition reason and message it becomes (see `conditions`).

use crate::classes::{ClassProblem, OverrideProblem};
use crate::index::ObjectKey;
use crate::status::reason;

/// A user mistake that becomes a condition with `reason()` and `message()`.
pub(crate) trait Problem {
    fn reason(&self) -> &'static str;
    fn message(&self) -> String;
}

/// Why a TLS Secret cannot be served (its certificateRef is not resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CertificateProblem {
    NotFound {
        secret: ObjectKey,
    },
    /// The Secret exists but its content cannot be served: `what` says why.
    Invalid {
        secret: ObjectKey,
        what: String,
    },
}

impl Problem for CertificateProblem {
    fn reason(&self) -> &'static str {
        reason::INVALID_CERTIFICATE_REF
    }

    fn message(&self) -> String {
        match self {
            CertificateProblem::NotFound { secret } => format!("Secret {secret} not found"),
            CertificateProblem::Invalid { secret, what } => format!("Secret {secret}: {what}"),
        }
    }
}

/// Why a caCertificateRef of a client certificate validation cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CaProblem {
    /// `kind` as shown (`Kind` or `Kind.group`).
    UnsupportedKind {
        config_map: ObjectKey,
        kind: String,
    },
    NotPermitted {
        config_map: ObjectKey,
        namespace: String,
    },
    NotFound {
        config_map: ObjectKey,
    },
    /// The ConfigMap has no `key` (`ca.crt`).
    NoBundle {
        config_map: ObjectKey,
        key: &'static str,
    },
    InvalidBundle {
        config_map: ObjectKey,
        key: &'static str,
        error: String,
    },
    /// The bundle of every valid ref together (of `field`) cannot be used.
    UnusableBundle {
        field: String,
        error: String,
    },
}

impl Problem for CaProblem {
    fn reason(&self) -> &'static str {
        match self {
            CaProblem::UnsupportedKind { .. } => reason::INVALID_CA_CERTIFICATE_KIND,
            CaProblem::NotPermitted { .. } => reason::REF_NOT_PERMITTED,
            CaProblem::NotFound { .. }
            | CaProblem::NoBundle { .. }
            | CaProblem::InvalidBundle { .. }
            | CaProblem::UnusableBundle { .. } => reason::INVALID_CA_CERTIFICATE_REF,
        }
    }

    fn message(&self) -> String {
        match self {
            CaProblem::UnsupportedKind { config_map, kind } => {
                format!("caCertificateRef {config_map} has unsupported kind {kind}; only ConfigMap (core) is supported")
            }
            CaProblem::NotPermitted { config_map, namespace } => format!(
                "caCertificateRef to ConfigMap {config_map} is not permitted by any ReferenceGrant in namespace {namespace}"
            ),
            CaProblem::NotFound { config_map } => format!("ConfigMap {config_map} not found"),
            CaProblem::NoBundle { config_map, key } => format!("ConfigMap {config_map} has no {key}"),
            CaProblem::InvalidBundle { config_map, key, error } => format!("ConfigMap {config_map}: {key}: {error}"),
            CaProblem::UnusableBundle { field, error } => format!("the CA bundle of {field} cannot be used: {error}"),
        }
    }
}

/// The messages of several CA problems, as one condition message.
pub(crate) fn joined(problems: &[CaProblem]) -> String {
    problems.iter().map(Problem::message).collect::<Vec<_>>().join("; ")
}

/// Why a listener is not accepted (Accepted=False), conflicts (Conflicted=True) or has
/// unresolved references (ResolvedRefs=False).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListenerProblem {
    UnsupportedProtocol {
        protocol: String,
    },
    PortOutOfRange {
        port: i32,
    },
    /// The port of the data plane's admin endpoint.
    PortReserved {
        port: i32,
    },
    InvalidHostname {
        hostname: String,
    },
    DuplicateName {
        name: String,
    },
    /// A ListenerSet listener whose spec cannot be read as a Gateway listener.
    Unreadable {
        error: String,
    },
    InvalidRouteKind {
        kind: String,
        group: String,
        protocol: String,
    },
    PassthroughOnHttps,
    NoCertificateRefs {
        https: bool,
    },
    CertificateRefKind {
        secret: ObjectKey,
        kind: String,
        group: String,
    },
    CertificateRefNotPermitted {
        secret: ObjectKey,
        namespace: String,
    },
    Certificate(CertificateProblem),
    /// Several listeners of one Gateway share `port` with `protocols` (or TCP/UDP).
    ProtocolConflict {
        port: i32,
        protocols: String,
    },
    /// `listeners` on `port` share `hostname`.
    HostnameConflict {
        port: i32,
        listeners: String,
        hostname: String,
    },
    /// A listener of higher precedence (the Gateway's or an older ListenerSet's) uses
    /// `port` with `protocol`.
    ProtocolTaken {
        port: i32,
        protocol: &'static str,
    },
    /// A listener of higher precedence on `port` uses `hostname`.
    HostnameTaken {
        port: i32,
        hostname: String,
    },
    /// Some caCertificateRefs of the listener's client certificate validation cannot be
    /// used (the first one's reason, every one's message).
    CaRefs(Vec<CaProblem>),
    /// No caCertificateRef of the validation of `field` is valid.
    NoValidCaCertificate {
        field: String,
        problems: Vec<CaProblem>,
    },
}

impl Problem for ListenerProblem {
    fn reason(&self) -> &'static str {
        match self {
            ListenerProblem::UnsupportedProtocol { .. } => reason::UNSUPPORTED_PROTOCOL,
            ListenerProblem::PortOutOfRange { .. } | ListenerProblem::PortReserved { .. } => reason::PORT_UNAVAILABLE,
            ListenerProblem::InvalidHostname { .. }
            | ListenerProblem::DuplicateName { .. }
            | ListenerProblem::PassthroughOnHttps => reason::UNSUPPORTED_VALUE,
            ListenerProblem::Unreadable { .. } => reason::INVALID,
            ListenerProblem::InvalidRouteKind { .. } => reason::INVALID_ROUTE_KINDS,
            ListenerProblem::NoCertificateRefs { .. } | ListenerProblem::CertificateRefKind { .. } => {
                reason::INVALID_CERTIFICATE_REF
            }
            ListenerProblem::CertificateRefNotPermitted { .. } => reason::REF_NOT_PERMITTED,
            ListenerProblem::Certificate(problem) => problem.reason(),
            ListenerProblem::ProtocolConflict { .. } | ListenerProblem::ProtocolTaken { .. } => {
                reason::PROTOCOL_CONFLICT
            }
            ListenerProblem::HostnameConflict { .. } | ListenerProblem::HostnameTaken { .. } => {
                reason::HOSTNAME_CONFLICT
            }
            ListenerProblem::CaRefs(problems) => {
                problems.first().map_or(reason::INVALID_CA_CERTIFICATE_REF, |p| p.reason())
            }
            ListenerProblem::NoValidCaCertificate { .. } => reason::NO_VALID_CA_CERTIFICATE,
        }
    }

    fn message(&self) -> String {
        match self {
            ListenerProblem::UnsupportedProtocol { protocol } => format!("protocol {protocol} is not supported"),
            ListenerProblem::PortOutOfRange { port } => format!("port {port} is out of range"),
            ListenerProblem::PortReserved { port } => {
                format!("port {port} is reserved for the data plane's admin endpoint (/ready, /metrics)")
            }
            ListenerProblem::InvalidHostname { hostname } => format!("hostname {hostname:?} is not a valid DNS name"),
            ListenerProblem::DuplicateName { name } => format!("listener name {name} is used twice"),
            ListenerProblem::Unreadable { error } => format!("listener cannot be read: {error}"),
            ListenerProblem::InvalidRouteKind { kind, group, protocol } => {
                format!("route kind {kind}.{group} is not supported on a {protocol} listener")
            }
            ListenerProblem::PassthroughOnHttps => {
                "HTTPS listeners terminate TLS; Passthrough needs protocol TLS".into()
            }
            ListenerProblem::NoCertificateRefs { https: true } => "HTTPS listener has no certificateRefs".into(),
            ListenerProblem::NoCertificateRefs { https: false } => {
                "TLS listener in mode Terminate has no certificateRefs".into()
            }
            ListenerProblem::CertificateRefKind { secret, kind, group } => {
                format!("certificateRef {secret} has unsupported kind {kind}.{group}")
            }
            ListenerProblem::CertificateRefNotPermitted { secret, namespace } => format!(
                "certificateRef to Secret {secret} is not permitted by any ReferenceGrant in namespace {namespace}"
            ),
            ListenerProblem::Certificate(problem) => problem.message(),
            ListenerProblem::ProtocolConflict { port, protocols } => format!(
                "port {port} is used by several listeners with protocols {protocols}; a TCP or UDP port cannot be shared"
            ),
            ListenerProblem::HostnameConflict { port, listeners, hostname } => {
                format!("listeners {listeners} on port {port} share the hostname {hostname:?}")
            }
            ListenerProblem::ProtocolTaken { port, protocol } => format!(
                "port {port} is already used with protocol {protocol} by a listener of higher precedence; a TCP or UDP \
                 port cannot be shared"
            ),
            ListenerProblem::HostnameTaken { port, hostname } => {
                format!("a listener of higher precedence on port {port} already uses the hostname {hostname:?}")
            }
            ListenerProblem::CaRefs(problems) => joined(problems),
            ListenerProblem::NoValidCaCertificate { field, problems } => {
                let why =
                    if problems.is_empty() { "it has no caCertificateRefs".to_string() } else { joined(problems) };
                format!("no CA certificate of the client certificate validation ({field}) is valid: {why}")
            }
        }
    }
}

/// Why a Gateway is not accepted (Accepted=False) or not programmed (AddressNotUsable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GatewayProblem {
    ClassNotAccepted {
        class: String,
        problem: ClassProblem,
    },
    /// `infrastructure.parametersRef` names something other than a ProxyConfig.
    ParametersRefKind {
        kind: String,
        group: String,
    },
    ProxyConfigNotFound {
        config: ObjectKey,
    },
    /// The ProxyConfig overrides what the GatewayClass's does not let it (`problem`).
    ProxyConfigRejected {
        config: ObjectKey,
        problem: OverrideProblem,
    },
    NoListenerAccepted,
    UnsupportedAddressType {
        value: String,
        kind: String,
    },
    NotAnIpAddress {
        value: String,
    },
    /// `spec.addresses` holds an address outside the ProxyConfig's `allowed` ranges.
    AddressNotUsable {
        value: String,
        allowed: Vec<String>,
    },
}

impl Problem for GatewayProblem {
    fn reason(&self) -> &'static str {
        match self {
            GatewayProblem::ClassNotAccepted { .. }
            | GatewayProblem::ParametersRefKind { .. }
            | GatewayProblem::ProxyConfigNotFound { .. }
            | GatewayProblem::ProxyConfigRejected { .. } => reason::INVALID_PARAMETERS,
            GatewayProblem::NoListenerAccepted => reason::LISTENERS_NOT_VALID,
            GatewayProblem::UnsupportedAddressType { .. } | GatewayProblem::NotAnIpAddress { .. } => {
                reason::UNSUPPORTED_ADDRESS
            }
            GatewayProblem::AddressNotUsable { .. } => reason::ADDRESS_NOT_USABLE,
        }
    }

    fn message(&self) -> String {
        match self {
            GatewayProblem::ClassNotAccepted { class, problem } => {
                format!("GatewayClass {class} is not accepted: {}", problem.message())
            }
            GatewayProblem::ParametersRefKind { kind, group } => format!(
                "infrastructure.parametersRef must point to a ProxyConfig.{}, not {kind}.{group}",
                sluice_crds::GROUP
            ),
            GatewayProblem::ProxyConfigNotFound { config } => format!("ProxyConfig {config} not found"),
            GatewayProblem::ProxyConfigRejected { config, problem } => {
                format!("ProxyConfig {config} cannot be used: {}", problem.message())
            }
            GatewayProblem::NoListenerAccepted => {
                "no listener is accepted, so the Gateway has nothing to serve".to_string()
            }
            GatewayProblem::UnsupportedAddressType { value, kind } => {
                format!("address {value:?} of type {kind} is not supported; only IPAddress addresses are")
            }
            GatewayProblem::NotAnIpAddress { value } => format!("address {value:?} is not an IP address"),
            GatewayProblem::AddressNotUsable { value, allowed } if allowed.is_empty() => format!(
                "address {value} cannot be used: the GatewayClass's ProxyConfig allows no static addresses \
                 (allowedAddresses); remove it from spec.addresses or ask the platform team"
            ),
            GatewayProblem::AddressNotUsable { value, allowed } => format!(
                "address {value} cannot be used: it is outside the ranges the GatewayClass's ProxyConfig allows \
                 (allowedAddresses: {}); remove it from spec.addresses",
                allowed.join(", ")
            ),
        }
    }
}

/// Why a ListenerSet is not attached to its Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListenerSetProblem {
    NotAllowed { gateway: ObjectKey, namespace: String },
    ParentNotAccepted { gateway: ObjectKey, message: String },
}

impl Problem for ListenerSetProblem {
    fn reason(&self) -> &'static str {
        match self {
            ListenerSetProblem::NotAllowed { .. } => reason::NOT_ALLOWED,
            ListenerSetProblem::ParentNotAccepted { .. } => reason::PARENT_NOT_ACCEPTED,
        }
    }

    fn message(&self) -> String {
        match self {
            ListenerSetProblem::NotAllowed { gateway, namespace } => {
                format!("Gateway {gateway} does not allow ListenerSets from namespace {namespace}")
            }
            ListenerSetProblem::ParentNotAccepted { gateway, message } => {
                format!("Gateway {gateway} is not accepted: {message}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classes::ClassProblem;
    use crate::rule_problems::RuleProblem;

    /// Messages no golden file shows: the texts they had as (reason, message) tuples.
    #[test]
    fn messages_keep_their_texts() {
        let key = ObjectKey::new("ns", "name");
        let cases: Vec<(Box<dyn Problem>, &str, &str)> = vec![
            (
                Box::new(ClassProblem::AllowedAddress { config: key.clone(), entry: "x".into() }),
                reason::INVALID_PARAMETERS,
                "ProxyConfig ns/name: allowedAddresses entry \"x\" is not a CIDR such as 203.0.113.0/24",
            ),
            (
                Box::new(GatewayProblem::NotAnIpAddress { value: "x".into() }),
                reason::UNSUPPORTED_ADDRESS,
                "address \"x\" is not an IP address",
            ),
            (
                Box::new(ListenerProblem::NoValidCaCertificate { field: "f".into(), problems: vec![] }),
                reason::NO_VALID_CA_CERTIFICATE,
                "no CA certificate of the client certificate validation (f) is valid: it has no caCertificateRefs",
            ),
            (
                Box::new(ListenerProblem::CaRefs(vec![
                    CaProblem::NotFound { config_map: key.clone() },
                    CaProblem::NoBundle { config_map: key.clone(), key: "ca.crt" },
                ])),
                reason::INVALID_CA_CERTIFICATE_REF,
                "ConfigMap ns/name not found; ConfigMap ns/name has no ca.crt",
            ),
            (
                Box::new(RuleProblem::SlashInExact { what: "service", value: "a/b".into() }),
                reason::UNSUPPORTED_VALUE,
                "service \"a/b\" must not contain /",
            ),
            (
                Box::new(RuleProblem::InvalidHostname { what: "redirect hostname", hostname: "a b".into() }),
                reason::UNSUPPORTED_VALUE,
                "redirect hostname \"a b\" is not a valid hostname",
            ),
        ];
        for (problem, reason, message) in cases {
            assert_eq!((problem.reason(), problem.message().as_str()), (reason, message));
        }
    }
}
