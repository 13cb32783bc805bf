//! Attaching routes to listeners: parentRef (sectionName, port), allowedRoutes
//! (namespaces, kinds) and hostname intersection.

use crate::gateways::{GATEWAY_GROUP, GatewayPlan, namespace_allowed};
use crate::index::{Index, ObjectKey};
use crate::problems::Problem;
use crate::status::{ParentRef, reason};

/// Where a parentRef attached, or why it did not.
pub(crate) enum Attachment {
    /// Listener indexes with the hostnames the route serves on each (empty = any host).
    Attached(Vec<(usize, Vec<String>)>),
    Rejected(AttachProblem),
}

/// Why a route does not attach through a parentRef (its Accepted=False condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AttachProblem {
    /// One of the route's hostnames is not a DNS name or wildcard.
    InvalidHostname(String),
    /// The Gateway is not accepted (`message` says why).
    GatewayNotAccepted {
        gateway: ObjectKey,
        message: String,
    },
    ListenerSetNotAccepted {
        listener_set: ObjectKey,
        gateway: ObjectKey,
    },
    /// No listener of `parent` has the parentRef's sectionName / port (`wanted`).
    NoSuchListener {
        parent: String,
        wanted: Vec<String>,
    },
    /// The listeners the parentRef selects are not accepted.
    ListenersNotAccepted {
        parent: String,
    },
    /// No selected listener allows the route's kind from its namespace.
    NotAllowedByListeners {
        parent: String,
        kind: String,
        namespace: String,
    },
    /// No selected listener's hostname intersects the route's.
    NoMatchingListenerHostname {
        parent: String,
    },
}

impl Problem for AttachProblem {
    fn reason(&self) -> &'static str {
        match self {
            AttachProblem::InvalidHostname(_) => reason::UNSUPPORTED_VALUE,
            AttachProblem::GatewayNotAccepted { .. }
            | AttachProblem::ListenerSetNotAccepted { .. }
            | AttachProblem::NoSuchListener { .. }
            | AttachProblem::ListenersNotAccepted { .. } => reason::NO_MATCHING_PARENT,
            AttachProblem::NotAllowedByListeners { .. } => reason::NOT_ALLOWED_BY_LISTENERS,
            AttachProblem::NoMatchingListenerHostname { .. } => reason::NO_MATCHING_LISTENER_HOSTNAME,
        }
    }

    fn message(&self) -> String {
        match self {
            AttachProblem::InvalidHostname(bad) => format!("hostname {bad:?} is not a valid DNS name or wildcard"),
            AttachProblem::GatewayNotAccepted { gateway, message } => {
                format!("Gateway {gateway} is not accepted: {message}")
            }
            AttachProblem::ListenerSetNotAccepted { listener_set, gateway } => {
                format!("ListenerSet {listener_set} is not accepted by Gateway {gateway}")
            }
            AttachProblem::NoSuchListener { parent, wanted } => {
                format!("{parent} has no listener {}", wanted.join(" "))
            }
            AttachProblem::ListenersNotAccepted { parent } => {
                format!("the listeners of {parent} this route selects are not accepted")
            }
            AttachProblem::NotAllowedByListeners { parent, kind, namespace } => {
                format!("no listener of {parent} allows a {kind} from namespace {namespace}")
            }
            AttachProblem::NoMatchingListenerHostname { parent } => {
                format!("no listener of {parent} matches the route's hostnames")
            }
        }
    }
}

/// Whether a parentRef names a Gateway.
pub(crate) fn is_gateway_ref(parent: &ParentRef) -> bool {
    parent.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        && parent.kind.as_deref().unwrap_or("Gateway") == "Gateway"
}

/// Whether a parentRef names a ListenerSet.
pub(crate) fn is_listener_set_ref(parent: &ParentRef) -> bool {
    parent.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP && parent.kind.as_deref() == Some("ListenerSet")
}

/// Attaches a route of `kind` in `route_namespace` with `hostnames` through `parent`: to
/// the Gateway's own listeners (`owner` None) or to those of its ListenerSet `owner`. The
/// caller counts the route in `attachedRoutes` of the listeners when the route ends up
/// Accepted (only accepted routes count).
pub(crate) fn attach(
    plan: &GatewayPlan<'_>,
    parent: &ParentRef,
    owner: Option<usize>,
    kind: &str,
    route_namespace: &str,
    hostnames: &[String],
    index: &Index<'_>,
) -> Attachment {
    let set = owner.and_then(|i| plan.listener_sets.get(i));
    let parent_name = match set {
        Some(set) => format!("ListenerSet {}", set.key),
        None => format!("Gateway {}", plan.key),
    };
    if let Some(problem) = &plan.not_accepted {
        return Attachment::Rejected(AttachProblem::GatewayNotAccepted {
            gateway: plan.key.clone(),
            message: problem.message(),
        });
    }
    if let Some(set) = set
        && !set.accepted(plan)
    {
        return Attachment::Rejected(AttachProblem::ListenerSetNotAccepted {
            listener_set: set.key.clone(),
            gateway: plan.key.clone(),
        });
    }
    let selected: Vec<usize> = (0..plan.listeners.len())
        .filter(|&i| {
            let listener = &plan.listeners[i];
            listener.owner == owner
                && parent.section_name.as_deref().is_none_or(|section| section == listener.name)
                && parent.port.is_none_or(|port| port == listener.port)
        })
        .collect();
    if selected.is_empty() {
        let mut wanted = Vec::new();
        if let Some(section) = &parent.section_name {
            wanted.push(format!("named {section}"));
        }
        if let Some(port) = parent.port {
            wanted.push(format!("on port {port}"));
        }
        return Attachment::Rejected(AttachProblem::NoSuchListener { parent: parent_name, wanted });
    }
    let selected: Vec<usize> = selected.into_iter().filter(|&i| plan.listeners[i].accepted()).collect();
    if selected.is_empty() {
        return Attachment::Rejected(AttachProblem::ListenersNotAccepted { parent: parent_name });
    }
    let allowed: Vec<usize> = selected
        .into_iter()
        .filter(|&i| {
            let listener = &plan.listeners[i];
            listener.supports_kind(kind) && namespace_allowed(listener, route_namespace, index)
        })
        .collect();
    if allowed.is_empty() {
        return Attachment::Rejected(AttachProblem::NotAllowedByListeners {
            parent: parent_name,
            kind: kind.to_string(),
            namespace: route_namespace.to_string(),
        });
    }
    let matched: Vec<(usize, Vec<String>)> = allowed
        .into_iter()
        .filter_map(|i| intersect_hostnames(plan.listeners[i].hostname.as_deref(), hostnames).map(|h| (i, h)))
        .collect();
    if matched.is_empty() {
        return Attachment::Rejected(AttachProblem::NoMatchingListenerHostname { parent: parent_name });
    }
    Attachment::Attached(matched)
}

/// The hostnames a route serves on a listener: `None` when they do not intersect,
/// `Some(vec![])` for any host.
pub(crate) fn intersect_hostnames(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let Some(listener) = listener else {
        return Some(route.to_vec());
    };
    if route.is_empty() {
        return Some(vec![listener.to_string()]);
    }
    let mut out: Vec<String> = route.iter().filter_map(|host| intersect(listener, host)).collect();
    out.sort();
    out.dedup();
    if out.is_empty() { None } else { Some(out) }
}

/// The more specific of two hostnames if one covers the other.
fn intersect(a: &str, b: &str) -> Option<String> {
    if a == b {
        return Some(a.to_string());
    }
    if covers(a, b) {
        return Some(b.to_string());
    }
    if covers(b, a) {
        return Some(a.to_string());
    }
    None
}

/// How specific the route's own hostnames are on a listener (GEP-3859,
/// `GatewayRouteHostnameIntersectionPrecedence`): the most specific of the route's
/// hostnames that intersect the listener's, as written in the route (an exact name above
/// any wildcard, a longer wildcard above a shorter one; a route without hostnames least).
/// Two routes with the same intersection on a listener rank by this before anything else,
/// so a route for `abc.example.com` wins over an older one for `*.example.com`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct HostnameRank {
    exact: bool,
    length: usize,
}

pub(crate) fn hostname_rank(listener: Option<&str>, route: &[String]) -> HostnameRank {
    route
        .iter()
        .filter(|host| listener.is_none_or(|listener| intersect(listener, host).is_some()))
        .map(|host| HostnameRank { exact: !host.starts_with('*'), length: host.len() })
        .max()
        .unwrap_or_default()
}

/// Whether wildcard `pattern` (`*.example.com`) covers `host` (exact or wildcard): the
/// wildcard label stands for one or more labels.
pub(crate) fn covers(pattern: &str, host: &str) -> bool {
    let Some(suffix) = pattern.strip_prefix('*') else { return false };
    let host_tail = host.strip_prefix('*').unwrap_or(host);
    host_tail.len() > suffix.len() && host_tail.ends_with(suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|h| (*h).to_string()).collect()
    }

    #[test]
    fn hostname_intersection() {
        assert_eq!(intersect_hostnames(None, &[]), Some(vec![]));
        assert_eq!(intersect_hostnames(Some("a.com"), &[]), Some(hosts(&["a.com"])));
        assert_eq!(intersect_hostnames(Some("a.com"), &hosts(&["b.com"])), None);
        assert_eq!(
            intersect_hostnames(Some("*.example.com"), &hosts(&["foo.example.com", "example.com", "a.b.example.com"])),
            Some(hosts(&["a.b.example.com", "foo.example.com"]))
        );
        assert_eq!(
            intersect_hostnames(Some("foo.example.com"), &hosts(&["*.example.com"])),
            Some(hosts(&["foo.example.com"]))
        );
        assert_eq!(
            intersect_hostnames(Some("*.example.com"), &hosts(&["*.foo.example.com"])),
            Some(hosts(&["*.foo.example.com"]))
        );
        assert_eq!(
            intersect_hostnames(Some("*.foo.example.com"), &hosts(&["*.example.com"])),
            Some(hosts(&["*.foo.example.com"]))
        );
        assert_eq!(intersect_hostnames(Some("*.example.com"), &hosts(&["*.example.org"])), None);
        assert_eq!(intersect_hostnames(Some("*.example.com"), &hosts(&["example.com"])), None);
    }

    #[test]
    fn hostname_rank_follows_the_routes_own_hostnames() {
        let rank = |listener, route: &[&str]| hostname_rank(listener, &hosts(route));
        let exact = rank(Some("abc.example.com"), &["abc.example.com"]);
        let wildcard = rank(Some("abc.example.com"), &["*.example.com"]);
        let shorter = rank(Some("*.example.com"), &["*.com"]);
        let longer = rank(Some("*.example.com"), &["*.example.com"]);
        assert!(exact > wildcard && longer > shorter && wildcard > rank(Some("abc.example.com"), &[]));
        // Only hostnames that intersect the listener count.
        assert_eq!(rank(Some("*.example.com"), &["a.example.org", "*.com"]), shorter);
        assert_eq!(rank(None, &["*.com"]), shorter);
    }
}
