//! Status as the translator computes it, shaped like the Gateway API status fields.
//!
//! Conditions carry no `lastTransitionTime`: translation has no clock. The status writer
//! adds it, keeping the old time for conditions whose status did not change.

use serde::Serialize;

/// The controllerName Sluice answers for.
pub const CONTROLLER_NAME: &str = "sluice.dev/gateway-controller";

/// A `metav1.Condition` without its transition time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    pub observed_generation: i64,
}

/// `True`, `False` or `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    /// `"True"`, `"False"` or `"Unknown"`, as written to the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl Condition {
    pub(crate) fn new(
        type_: &str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
        observed_generation: i64,
    ) -> Self {
        Condition {
            type_: type_.into(),
            status: if status { ConditionStatus::True } else { ConditionStatus::False },
            reason: reason.into(),
            message: bounded_message(&message.into()),
            observed_generation,
        }
    }
}

/// Status of a GatewayClass whose controllerName is ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassStatus {
    pub conditions: Vec<Condition>,
    /// Names of the Gateway API features Sluice implements, sorted.
    pub supported_features: Vec<String>,
}

/// Status of a Gateway of one of our GatewayClasses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    pub conditions: Vec<Condition>,
    /// The Gateway's own listeners (not those of its ListenerSets).
    pub listeners: Vec<ListenerStatus>,
    /// How many ListenerSets are attached and Accepted; set when `spec.allowedListeners`
    /// admits some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attached_listener_sets: Option<i32>,
}

/// Status of a ListenerSet whose parent is one of our Gateways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSetStatus {
    /// The parent Gateway (not part of the written status).
    #[serde(skip)]
    pub gateway: crate::ObjectKey,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
}

impl GatewayStatus {
    /// The translator says `Programmed=True` when the configuration is valid; the
    /// controller holds it at `False` with `reason` until the data plane applied it (or
    /// the Gateway has an address).
    pub fn hold_programmed(&mut self, reason: &str, message: &str) {
        for condition in self.conditions.iter_mut().filter(|c| c.type_ == reason::PROGRAMMED) {
            if condition.status == ConditionStatus::True {
                condition.status = ConditionStatus::False;
                condition.reason = reason.into();
                condition.message = bounded_message(message);
            }
        }
    }
}

/// `status.listeners[]` of a Gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub attached_routes: i32,
    pub conditions: Vec<Condition>,
}

/// A route kind, as listed in `supportedKinds`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RouteGroupKind {
    pub group: String,
    pub kind: String,
}

/// Status of a route: one entry per parentRef that points at one of our Gateways.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct RouteStatus {
    pub parents: Vec<RouteParentStatus>,
}

/// `status.parents[]` of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentRef,
    pub controller_name: String,
    pub conditions: Vec<Condition>,
}

/// A route's parentRef, copied as the user wrote it (status must echo it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// Condition types and reasons of Gateway API v1.7.0 that Sluice writes.
pub mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const CONFLICTED: &str = "Conflicted";
    pub const PARTIALLY_INVALID: &str = "PartiallyInvalid";
    pub const SUPPORTED_VERSION: &str = "SupportedVersion";
    pub const OVERLAPPING_TLS_CONFIG: &str = "OverlappingTLSConfig";
    pub const OVERLAPPING_HOSTNAMES: &str = "OverlappingHostnames";
    pub const INSECURE_FRONTEND_VALIDATION_MODE: &str = "InsecureFrontendValidationMode";
    pub const CONFIGURATION_CHANGED: &str = "ConfigurationChanged";

    pub const INVALID_PARAMETERS: &str = "InvalidParameters";
    pub const UNSUPPORTED_VERSION: &str = "UnsupportedVersion";
    pub const INVALID: &str = "Invalid";
    pub const PENDING: &str = "Pending";
    pub const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    pub const UNSUPPORTED_ADDRESS: &str = "UnsupportedAddress";
    pub const ADDRESS_NOT_USABLE: &str = "AddressNotUsable";
    pub const NO_CONFLICTS: &str = "NoConflicts";
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub const PORT_UNAVAILABLE: &str = "PortUnavailable";
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub const INVALID_CA_CERTIFICATE_REF: &str = "InvalidCACertificateRef";
    pub const NO_VALID_CA_CERTIFICATE: &str = "NoValidCACertificate";
    pub const INVALID_CLIENT_CERTIFICATE_REF: &str = "InvalidClientCertificateRef";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const INVALID_CA_CERTIFICATE_KIND: &str = "InvalidCACertificateKind";

    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const NOT_ALLOWED: &str = "NotAllowed";
    pub const PARENT_NOT_ACCEPTED: &str = "ParentNotAccepted";
    pub const PARENT_NOT_PROGRAMMED: &str = "ParentNotProgrammed";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
}

/// Condition messages are cut to this many bytes: the API allows 32768, and a status
/// write that fails on its size would be retried forever.
pub const MAX_MESSAGE_BYTES: usize = 32_000;

/// `message`, cut at a character boundary to at most [`MAX_MESSAGE_BYTES`] bytes, with a
/// marker when cut.
pub fn bounded_message(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.to_string();
    }
    const MARKER: &str = " ... (truncated)";
    let mut end = MAX_MESSAGE_BYTES - MARKER.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARKER}", &message[..end])
}

impl crate::Status {
    /// A ListenerSet is programmed only as far as its Gateway is: while the controller
    /// holds the Gateway's `Programmed` at False (data planes not yet on the current
    /// version, no address), its ListenerSets say `Programmed=False ParentNotProgrammed`.
    pub fn hold_listener_sets_with_gateways(&mut self) {
        for set in self.listener_sets.values_mut() {
            let parent_programmed = self.gateways.get(&set.gateway).is_some_and(|gateway| {
                gateway.conditions.iter().any(|c| c.type_ == reason::PROGRAMMED && c.status == ConditionStatus::True)
            });
            if parent_programmed {
                continue;
            }
            for condition in set.conditions.iter_mut().filter(|c| c.type_ == reason::PROGRAMMED) {
                if condition.status == ConditionStatus::True {
                    condition.status = ConditionStatus::False;
                    condition.reason = reason::PARENT_NOT_PROGRAMMED.into();
                    condition.message = format!("Gateway {} is not programmed yet", set.gateway);
                }
            }
        }
    }

    /// Folds in what a Gateway's data planes reported they could not compile (by snapshot
    /// name, with the problem): a dropped listener is not Programmed, a route with a
    /// dropped rule is PartiallyInvalid towards that Gateway. Other objects are untouched.
    pub fn apply_dropped(&mut self, gateway: &crate::ObjectKey, dropped: &std::collections::BTreeMap<String, String>) {
        let listener_prefix = format!("gateway/{}/{}/listener/", gateway.namespace, gateway.name);
        let mut by_route: std::collections::BTreeMap<(&str, crate::ObjectKey), Vec<String>> = Default::default();
        for (name, problem) in dropped {
            // A ListenerSet's listener: `listenerset/NS/NAME/listener/LISTENER` (the map
            // comes from this Gateway's data planes, so the set is one of its own).
            let set_listener = name.strip_prefix("listenerset/").and_then(|rest| {
                let mut parts = rest.splitn(4, '/');
                match (parts.next(), parts.next(), parts.next(), parts.next()) {
                    (Some(namespace), Some(set), Some("listener"), Some(listener)) => {
                        Some((crate::ObjectKey::new(namespace, set), listener))
                    }
                    _ => None,
                }
            });
            let listeners = if let Some(listener) = name.strip_prefix(&listener_prefix) {
                self.gateways.get_mut(gateway).map(|status| (&mut status.listeners, listener))
            } else if let Some((set, listener)) = set_listener {
                self.listener_sets.get_mut(&set).map(|status| (&mut status.listeners, listener))
            } else {
                None
            };
            if let Some((listeners, listener)) = listeners {
                let Some(entry) = listeners.iter_mut().find(|l| l.name == listener) else { continue };
                for condition in entry.conditions.iter_mut().filter(|c| c.type_ == reason::PROGRAMMED) {
                    condition.status = ConditionStatus::False;
                    condition.reason = reason::INVALID.into();
                    condition.message =
                        bounded_message(&format!("the data plane cannot serve this listener: {problem}"));
                }
                continue;
            }
            let mut parts = name.split('/');
            let (Some(kind), Some(namespace), Some(route), Some("rule"), Some(rule)) =
                (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let key = crate::ObjectKey::new(namespace, route);
            by_route.entry((kind, key)).or_default().push(format!("rule {rule}: {problem}"));
        }
        for ((kind, key), problems) in by_route {
            let routes = match kind {
                "httproute" => &mut self.http_routes,
                "grpcroute" => &mut self.grpc_routes,
                "tcproute" => &mut self.tcp_routes,
                "udproute" => &mut self.udp_routes,
                "tlsroute" => &mut self.tls_routes,
                _ => continue,
            };
            let Some(status) = routes.get_mut(&key) else { continue };
            let message = bounded_message(&format!("the data plane dropped {}", problems.join("; ")));
            for parent in status.parents.iter_mut().filter(|p| {
                p.parent_ref.name == gateway.name
                    && p.parent_ref.namespace.as_deref().unwrap_or(&key.namespace) == gateway.namespace
                    && p.parent_ref.kind.as_deref().is_none_or(|k| k == "Gateway")
            }) {
                let generation = parent.conditions.first().map_or(0, |c| c.observed_generation);
                parent.conditions.retain(|c| c.type_ != reason::PARTIALLY_INVALID);
                parent.conditions.push(Condition::new(
                    reason::PARTIALLY_INVALID,
                    true,
                    reason::UNSUPPORTED_VALUE,
                    message.clone(),
                    generation,
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ObjectKey, Status};

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(bounded_message("short"), "short");
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = bounded_message(&long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES && cut.ends_with("(truncated)"), "{}", cut.len());
    }

    #[test]
    fn dropped_pieces_mark_only_their_listener_and_route() {
        let gateway = ObjectKey::new("infra", "gw");
        let condition = |type_: &str| Condition::new(type_, true, type_, "ok", 3);
        let listener = |name: &str| ListenerStatus {
            name: name.into(),
            supported_kinds: vec![],
            attached_routes: 1,
            conditions: vec![condition(reason::PROGRAMMED)],
        };
        let parent = |gateway: &str| RouteParentStatus {
            parent_ref: ParentRef {
                group: None,
                kind: None,
                namespace: Some("infra".into()),
                name: gateway.into(),
                section_name: None,
                port: None,
            },
            controller_name: CONTROLLER_NAME.into(),
            conditions: vec![condition(reason::ACCEPTED)],
        };
        let mut status = Status::default();
        status.gateways.insert(
            gateway.clone(),
            GatewayStatus {
                conditions: vec![],
                listeners: vec![listener("https"), listener("http")],
                attached_listener_sets: None,
            },
        );
        let set = ObjectKey::new("team-a", "ls");
        status.listener_sets.insert(
            set.clone(),
            ListenerSetStatus {
                gateway: gateway.clone(),
                conditions: vec![],
                listeners: vec![listener("web"), listener("https")],
            },
        );
        let route = |parents| RouteStatus { parents };
        status.http_routes.insert(ObjectKey::new("team-a", "bad"), route(vec![parent("gw"), parent("other")]));
        status.http_routes.insert(ObjectKey::new("team-b", "good"), route(vec![parent("gw")]));
        let before = status.clone();
        let dropped = [
            ("gateway/infra/gw/listener/https".to_string(), "certificate secret/infra/c: bad key".to_string()),
            ("httproute/team-a/bad/rule/1/match/0".to_string(), "invalid regular expression".to_string()),
            ("httproute/team-a/bad/rule/2/match/0".to_string(), "bad path".to_string()),
            ("gateway/infra/other/listener/http".to_string(), "not ours".to_string()),
            ("listenerset/team-a/ls/listener/web".to_string(), "certificate: bad key".to_string()),
        ]
        .into_iter()
        .collect();
        status.apply_dropped(&gateway, &dropped);
        let listeners = &status.gateways[&gateway].listeners;
        assert_eq!(listeners[0].conditions[0].status, ConditionStatus::False);
        assert!(listeners[0].conditions[0].message.contains("bad key"));
        assert_eq!(listeners[1], before.gateways[&gateway].listeners[1]);
        let set_listeners = &status.listener_sets[&set].listeners;
        assert_eq!(set_listeners[0].conditions[0].status, ConditionStatus::False);
        assert_eq!(set_listeners[1], before.listener_sets[&set].listeners[1]);
        let bad = &status.http_routes.get(&ObjectKey::new("team-a", "bad")).unwrap();
        let partially = &bad.parents[0].conditions[1];
        assert_eq!((partially.type_.as_str(), partially.reason.as_str()), ("PartiallyInvalid", "UnsupportedValue"));
        assert_eq!(partially.message, "the data plane dropped rule 1: invalid regular expression; rule 2: bad path");
        assert_eq!(partially.observed_generation, 3);
        assert_eq!(
            bad.parents[1],
            before.http_routes.get(&ObjectKey::new("team-a", "bad")).unwrap().parents[1],
            "other Gateway"
        );
        assert_eq!(
            status.http_routes.get(&ObjectKey::new("team-b", "good")).unwrap(),
            before.http_routes.get(&ObjectKey::new("team-b", "good")).unwrap()
        );
    }
}
