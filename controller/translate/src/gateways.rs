//! Gateways and their listeners: validation, conflicts, certificates, allowedRoutes.

use std::collections::{BTreeMap, BTreeSet};

use sluice_crds::{GROUP, ProxyConfigSpec};
use sluice_gateway_api::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom,
    GatewayListenersAllowedRoutesNamespacesSelector, GatewayListenersTlsMode,
};
use sluice_snapshot::{Certificate, ClientValidation, HttpRoute, Protocol, TlsRoute};

use crate::l4routes::L4Rule;
use crate::listenersets::ListenerSetPlan;
use sluice_gateway_api::listenersets::ListenerSet;

use crate::certificates::load_certificate;
use crate::classes::{Cidr, ClassInfo, merge_proxy_config, override_problem};
use crate::conflicts::{mark_conflicts, mark_duplicate_names, mark_overlapping_tls};
use crate::index::{Index, NAMESPACE_NAME_LABEL, ObjectKey};
use crate::problems::{GatewayProblem, ListenerProblem};
use crate::status::RouteGroupKind;

pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Which namespaces may attach routes to a listener.
pub(crate) enum NamespacePolicy {
    Same,
    All,
    Selector(GatewayListenersAllowedRoutesNamespacesSelector),
}

/// One listener of one of our Gateways, as translation proceeds.
pub(crate) struct ListenerPlan {
    pub name: String,
    /// Where the listener is defined: None for the Gateway itself, else the index of its
    /// ListenerSet in [`GatewayPlan::listener_sets`].
    pub owner: Option<usize>,
    /// The namespace of the object defining the listener (`allowedRoutes` `Same` is
    /// relative to it, and certificateRefs default to it).
    pub namespace: String,
    pub port: i32,
    pub protocol: Protocol,
    pub hostname: Option<String>,
    pub tls_passthrough: bool,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub namespaces: NamespacePolicy,
    /// Accepted=False when set.
    pub not_accepted: Option<ListenerProblem>,
    /// Conflicted=True when set.
    pub conflicted: Option<ListenerProblem>,
    /// ResolvedRefs=False when set.
    pub unresolved: Option<ListenerProblem>,
    /// OverlappingTLSConfig=True (OverlappingHostnames) when set: the other listeners.
    pub overlapping_tls: Option<String>,
    /// Names of valid certificates (snapshot `secret/ns/name`), in certificateRefs order.
    pub certificates: Vec<String>,
    /// HTTPS listeners whose clients must present certificates: the name of the snapshot
    /// client validation (`gateway/ns/name/frontend/...`).
    pub client_validation: Option<String>,
    pub attached_routes: i32,
    pub http_routes: Vec<HttpRoute>,
    /// TCP or UDP rules, by the listener's protocol.
    pub l4_routes: Vec<L4Rule>,
    /// TLS listeners: the attached TLSRoutes in precedence order.
    pub tls_routes: Vec<TlsRoute>,
}

impl ListenerPlan {
    /// Whether the data plane serves this listener.
    pub fn serves(&self) -> bool {
        self.not_accepted.is_none()
            && self.conflicted.is_none()
            && !self.supported_kinds.is_empty()
            && (!self.terminates() || !self.certificates.is_empty())
    }

    /// Whether the listener terminates TLS (and so needs a certificate): HTTPS, and TLS
    /// unless it passes the stream through.
    pub fn terminates(&self) -> bool {
        self.protocol == Protocol::Https || (self.protocol == Protocol::Tls && !self.tls_passthrough)
    }

    /// Whether the listener is accepted: routes may attach to it (even if it cannot be
    /// programmed, e.g. for a missing certificate).
    pub fn accepted(&self) -> bool {
        self.not_accepted.is_none() && self.conflicted.is_none()
    }

    pub fn supports_kind(&self, kind: &str) -> bool {
        self.supported_kinds.iter().any(|k| k.kind == kind && k.group == GATEWAY_GROUP)
    }
}

/// One of our Gateways, as translation proceeds.
pub(crate) struct GatewayPlan<'w> {
    pub key: ObjectKey,
    pub gateway: &'w Gateway,
    pub generation: i64,
    /// Accepted=False when set (the Gateway is not programmed at all).
    pub not_accepted: Option<GatewayProblem>,
    /// Programmed=False (AddressNotUsable) when set: a `spec.addresses` entry the
    /// Gateway may not have; it is never requested from the Service.
    pub unusable_address: Option<GatewayProblem>,
    pub listeners: Vec<ListenerPlan>,
    pub proxy_config: ProxyConfigSpec,
    pub certificates: BTreeMap<String, Certificate>,
    /// Client certificate validations of the HTTPS listeners, by name.
    pub client_validations: BTreeMap<String, ClientValidation>,
    /// IP addresses requested in `spec.addresses`.
    pub requested_addresses: Vec<String>,
    /// ListenerSets naming this Gateway as their parent, in precedence order.
    pub listener_sets: Vec<ListenerSetPlan>,
}

impl GatewayPlan<'_> {
    /// The Gateway's own listeners (not those of its ListenerSets).
    pub fn own_listeners(&self) -> impl Iterator<Item = &ListenerPlan> {
        self.listeners.iter().filter(|l| l.owner.is_none())
    }
}

/// Route kinds Sluice serves, per listener protocol.
fn kinds_for(protocol: Protocol) -> &'static [&'static str] {
    match protocol {
        Protocol::Http | Protocol::Https => &["HTTPRoute", "GRPCRoute"],
        Protocol::Tcp => &["TCPRoute"],
        Protocol::Udp => &["UDPRoute"],
        Protocol::Tls => &["TLSRoute"],
        Protocol::Unspecified => &[],
    }
}

/// Plans a Gateway of one of our classes with its own listeners, then merges in the
/// listeners of `listener_sets` (those naming it as parent, in precedence order).
pub(crate) fn plan_gateway<'w>(
    gateway: &'w Gateway,
    class: &ClassInfo,
    listener_sets: &[&'w ListenerSet],
    index: &Index<'_>,
) -> GatewayPlan<'w> {
    let key = ObjectKey::of(gateway);
    let generation = gateway.metadata.generation.unwrap_or_default();
    let mut certificates = BTreeMap::new();
    let owner = ListenerOwner { kind: "Gateway", key: &key, index: None };
    let mut listeners: Vec<ListenerPlan> = gateway
        .spec
        .listeners
        .iter()
        .map(|listener| plan_listener(listener, &owner, index, &mut certificates))
        .collect();
    let mut client_validations = BTreeMap::new();
    crate::frontend::plan_client_validation(gateway, &key, &mut listeners, index, &mut client_validations);
    mark_duplicate_names(&mut listeners);
    mark_conflicts(&mut listeners);
    mark_overlapping_tls(&mut listeners);

    let mut not_accepted = class.rejected.as_ref().map(|problem| GatewayProblem::ClassNotAccepted {
        class: gateway.spec.gateway_class_name.clone(),
        problem: problem.clone(),
    });
    let gateway_config = match gateway_proxy_config(gateway, &key, &class.proxy_config, index) {
        Ok(config) => config,
        Err(problem) => {
            not_accepted.get_or_insert(problem);
            None
        }
    };
    if !listeners.iter().any(ListenerPlan::accepted) {
        not_accepted.get_or_insert(GatewayProblem::NoListenerAccepted);
    }
    let mut requested_addresses = Vec::new();
    let mut unusable_address = None;
    for address in gateway.spec.addresses.iter().flatten() {
        let kind = address.r#type.as_deref().unwrap_or("IPAddress");
        let value = address.value.clone().unwrap_or_default();
        if kind != "IPAddress" {
            not_accepted.get_or_insert(GatewayProblem::UnsupportedAddressType { value, kind: kind.to_string() });
            continue;
        }
        // An IPAddress without a value asks for any address: the Service gets one.
        if value.is_empty() {
            continue;
        }
        let Ok(ip) = value.parse::<std::net::IpAddr>() else {
            not_accepted.get_or_insert(GatewayProblem::NotAnIpAddress { value });
            continue;
        };
        // An address outside the platform team's allowlist is never put on the Service
        // (externalIPs would let any Gateway take over any IP: CVE-2020-8554); the Gateway
        // stays accepted but not programmed, as the spec's AddressNotUsable describes.
        let allowed = &class.proxy_config.allowed_addresses;
        if allowed.iter().filter_map(|cidr| Cidr::parse(cidr)).any(|cidr| cidr.contains(ip)) {
            requested_addresses.push(value);
        } else {
            unusable_address.get_or_insert(GatewayProblem::AddressNotUsable { value, allowed: allowed.clone() });
        }
    }
    let mut plan = GatewayPlan {
        key,
        gateway,
        generation,
        not_accepted,
        unusable_address,
        listeners,
        proxy_config: merge_proxy_config(&class.proxy_config, gateway_config.as_ref()),
        certificates,
        client_validations,
        requested_addresses,
        listener_sets: Vec::new(),
    };
    crate::listenersets::merge_listener_sets(&mut plan, listener_sets, index);
    plan
}

fn gateway_proxy_config(
    gateway: &Gateway,
    key: &ObjectKey,
    class: &ProxyConfigSpec,
    index: &Index<'_>,
) -> Result<Option<ProxyConfigSpec>, GatewayProblem> {
    let Some(parameters) = gateway.spec.infrastructure.as_ref().and_then(|i| i.parameters_ref.as_ref()) else {
        return Ok(None);
    };
    if parameters.group != GROUP || parameters.kind != "ProxyConfig" {
        return Err(GatewayProblem::ParametersRefKind {
            kind: parameters.kind.clone(),
            group: parameters.group.clone(),
        });
    }
    let config_key = ObjectKey::new(key.namespace.clone(), parameters.name.clone());
    let Some(config) = index.proxy_configs.get(&config_key) else {
        return Err(GatewayProblem::ProxyConfigNotFound { config: config_key });
    };
    if let Some(problem) = override_problem(class, &config.spec) {
        return Err(GatewayProblem::ProxyConfigRejected { config: config_key, problem });
    }
    Ok(Some(config.spec.clone()))
}

/// The object defining a listener: a Gateway or a ListenerSet.
pub(crate) struct ListenerOwner<'k> {
    /// `Gateway` or `ListenerSet`: the `from` kind of ReferenceGrants for its certificateRefs.
    pub kind: &'static str,
    pub key: &'k ObjectKey,
    /// For a ListenerSet: its index in [`GatewayPlan::listener_sets`].
    pub index: Option<usize>,
}

pub(crate) fn plan_listener(
    listener: &GatewayListeners,
    owner: &ListenerOwner<'_>,
    index: &Index<'_>,
    certificates: &mut BTreeMap<String, Certificate>,
) -> ListenerPlan {
    let protocol = match listener.protocol.as_str() {
        "HTTP" => Protocol::Http,
        "HTTPS" => Protocol::Https,
        "TLS" => Protocol::Tls,
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        _ => Protocol::Unspecified,
    };
    let mut not_accepted = None;
    if protocol == Protocol::Unspecified {
        not_accepted = Some(ListenerProblem::UnsupportedProtocol { protocol: listener.protocol.clone() });
    } else if !(1..=65535).contains(&listener.port) {
        not_accepted = Some(ListenerProblem::PortOutOfRange { port: listener.port });
    } else if u32::try_from(listener.port).ok() == Some(sluice_snapshot::ADMIN_PORT) {
        not_accepted = Some(ListenerProblem::PortReserved { port: listener.port });
    }
    let hostname = listener.hostname.clone().filter(|h| !h.is_empty());
    if not_accepted.is_none()
        && let Some(host) = &hostname
        && !sluice_snapshot::valid_hostname(host)
    {
        not_accepted = Some(ListenerProblem::InvalidHostname { hostname: host.clone() });
    }

    let allowed = listener.allowed_routes.as_ref();
    let namespaces = match allowed.and_then(|a| a.namespaces.as_ref()) {
        None => NamespacePolicy::Same,
        Some(ns) => match ns.from {
            Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => NamespacePolicy::All,
            Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => match &ns.selector {
                Some(selector) => NamespacePolicy::Selector(selector.clone()),
                // A Selector policy without a selector selects nothing.
                None => NamespacePolicy::Selector(GatewayListenersAllowedRoutesNamespacesSelector {
                    match_expressions: Some(vec![]),
                    match_labels: Some(BTreeMap::from([(String::new(), String::new())])),
                }),
            },
            Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) | None => NamespacePolicy::Same,
        },
    };

    let valid_kinds = kinds_for(protocol);
    let mut unresolved = None;
    // An empty kinds list means "the protocol's default kinds", as an absent one does.
    let supported_kinds: Vec<RouteGroupKind> = match allowed.and_then(|a| a.kinds.as_ref()).filter(|k| !k.is_empty()) {
        Some(requested) => {
            let mut kinds = BTreeSet::new();
            for kind in requested {
                let group = kind.group.clone().unwrap_or_else(|| GATEWAY_GROUP.to_string());
                if group == GATEWAY_GROUP && valid_kinds.contains(&kind.kind.as_str()) {
                    kinds.insert(RouteGroupKind { group, kind: kind.kind.clone() });
                } else if unresolved.is_none() {
                    unresolved = Some(ListenerProblem::InvalidRouteKind {
                        kind: kind.kind.clone(),
                        group,
                        protocol: listener.protocol.clone(),
                    });
                }
            }
            kinds.into_iter().collect()
        }
        None => valid_kinds
            .iter()
            .map(|kind| RouteGroupKind { group: GATEWAY_GROUP.into(), kind: (*kind).into() })
            .collect(),
    };

    let tls = listener.tls.as_ref();
    let tls_passthrough = matches!(tls.and_then(|t| t.mode.as_ref()), Some(GatewayListenersTlsMode::Passthrough));
    let mut listener_certificates = Vec::new();
    // HTTPS listeners, and TLS listeners in mode Terminate (the default), need certificates.
    let terminates = protocol == Protocol::Https || (protocol == Protocol::Tls && !tls_passthrough);
    if terminates && not_accepted.is_none() {
        if protocol == Protocol::Https && tls_passthrough {
            not_accepted = Some(ListenerProblem::PassthroughOnHttps);
        }
        let refs = tls.and_then(|t| t.certificate_refs.as_ref()).map(Vec::as_slice).unwrap_or_default();
        if refs.is_empty() {
            unresolved.get_or_insert(ListenerProblem::NoCertificateRefs { https: protocol == Protocol::Https });
        }
        for cert_ref in refs {
            let group = cert_ref.group.as_deref().unwrap_or_default();
            let kind = cert_ref.kind.as_deref().unwrap_or("Secret");
            let namespace = cert_ref.namespace.as_deref().filter(|ns| !ns.is_empty()).unwrap_or(&owner.key.namespace);
            let secret_key = ObjectKey::new(namespace, cert_ref.name.clone());
            let result = if !group.is_empty() || kind != "Secret" {
                Err(ListenerProblem::CertificateRefKind {
                    secret: secret_key,
                    kind: kind.to_string(),
                    group: group.to_string(),
                })
            } else if !index.reference_allowed(
                GATEWAY_GROUP,
                owner.kind,
                &owner.key.namespace,
                "",
                "Secret",
                &secret_key,
            ) {
                Err(ListenerProblem::CertificateRefNotPermitted {
                    secret: secret_key,
                    namespace: namespace.to_string(),
                })
            } else {
                load_certificate(index, &secret_key).map_err(ListenerProblem::Certificate)
            };
            match result {
                Ok(certificate) => {
                    listener_certificates.push(certificate.name.clone());
                    certificates.insert(certificate.name.clone(), certificate);
                }
                Err(problem) => {
                    unresolved.get_or_insert(problem);
                }
            }
        }
    }

    ListenerPlan {
        name: listener.name.clone(),
        owner: owner.index,
        namespace: owner.key.namespace.clone(),
        port: listener.port,
        protocol,
        hostname,
        tls_passthrough,
        supported_kinds,
        namespaces,
        not_accepted,
        conflicted: None,
        overlapping_tls: None,
        unresolved,
        certificates: listener_certificates,
        client_validation: None,
        attached_routes: 0,
        http_routes: Vec::new(),
        l4_routes: Vec::new(),
        tls_routes: Vec::new(),
    }
}

pub(crate) fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http => "HTTP",
        Protocol::Https => "HTTPS",
        Protocol::Tls => "TLS",
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Unspecified => "unsupported",
    }
}

/// Whether a route in `namespace` may attach to `listener` (allowedRoutes.namespaces;
/// `Same` is the namespace of the Gateway or ListenerSet defining the listener).
pub(crate) fn namespace_allowed(listener: &ListenerPlan, namespace: &str, index: &Index<'_>) -> bool {
    match &listener.namespaces {
        NamespacePolicy::Same => namespace == listener.namespace,
        NamespacePolicy::All => true,
        NamespacePolicy::Selector(selector) => {
            // A namespace without a Namespace object (standalone files) still carries the
            // name label the API server would give it.
            match index.namespace_labels.get(namespace) {
                Some(labels) => selector_matches(selector, labels),
                None => {
                    let labels = BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string())]);
                    selector_matches(selector, &labels)
                }
            }
        }
    }
}

pub(crate) fn selector_matches(
    selector: &GatewayListenersAllowedRoutesNamespacesSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_match = selector.match_labels.iter().flatten().all(|(key, value)| labels.get(key) == Some(value));
    let expressions_match = selector.match_expressions.iter().flatten().all(|expression| {
        let values = expression.values.as_deref().unwrap_or_default();
        let value = labels.get(&expression.key);
        match expression.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}
