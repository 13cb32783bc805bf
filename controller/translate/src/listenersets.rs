//! ListenerSets: extra listeners merged into a parent Gateway that allows them.
//!
//! ```text
//!  ListenerSet ──parentRef──► Gateway (ours) ── spec.allowedListeners.namespaces.from
//!     None (default) / not selected ─► Accepted=False NotAllowed, nothing merged
//!     Gateway not accepted ──────────► Accepted=False ParentNotAccepted
//!     allowed ─► its listeners are planned like the Gateway's and appended after them,
//!                in precedence order (the Gateway's own, then ListenerSets oldest first,
//!                then by namespace/name); a listener that conflicts (port/protocol,
//!                hostname) with an accepted one of higher precedence loses
//!                (Conflicted=True, Accepted=False); the winner keeps serving
//!     no listener served ─► Accepted=False ListenersNotValid (the Gateway does not count it)
//! ```
//!
//! Routes attach to a ListenerSet's listeners only through a parentRef of kind
//! `ListenerSet`; a parentRef to the Gateway selects only the Gateway's own listeners.

use std::ops::Range;

use sluice_gateway_api::gateways::{
    Gateway, GatewayAllowedListenersNamespacesFrom, GatewayListeners, GatewayListenersAllowedRoutesNamespacesSelector,
};
use sluice_gateway_api::listenersets::ListenerSet;
use sluice_snapshot::Protocol;

use crate::conflicts::{mark_duplicate_names, mark_overlapping_tls};
use crate::gateways::{
    GATEWAY_GROUP, GatewayPlan, ListenerOwner, ListenerPlan, plan_listener, protocol_name, selector_matches,
};
use crate::index::{Index, NAMESPACE_NAME_LABEL, ObjectKey};
use crate::problems::{ListenerProblem, ListenerSetProblem, Problem};
use crate::status::{Condition, ListenerSetStatus, reason};

/// One ListenerSet naming one of our Gateways, as translation proceeds.
pub(crate) struct ListenerSetPlan {
    pub key: ObjectKey,
    pub generation: i64,
    /// Why it is not attached to the Gateway (its listeners are not merged), if so.
    pub not_attached: Option<ListenerSetProblem>,
    /// Its listeners in [`GatewayPlan::listeners`].
    pub listeners: Range<usize>,
}

impl ListenerSetPlan {
    /// Whether it is attached and at least one of its listeners is served: it is
    /// Accepted and counts in the Gateway's `attachedListenerSets`.
    pub fn accepted(&self, plan: &GatewayPlan<'_>) -> bool {
        self.not_attached.is_none() && plan.listeners[self.listeners.clone()].iter().any(ListenerPlan::serves)
    }
}

/// The Gateway a ListenerSet's parentRef names, if it names a Gateway.
pub(crate) fn parent_gateway(listener_set: &ListenerSet) -> Option<ObjectKey> {
    let parent = &listener_set.spec.parent_ref;
    let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
    let kind = parent.kind.as_deref().unwrap_or("Gateway");
    if group != GATEWAY_GROUP || kind != "Gateway" {
        return None;
    }
    let own_namespace = listener_set.metadata.namespace.clone().unwrap_or_default();
    let namespace = parent.namespace.clone().filter(|ns| !ns.is_empty()).unwrap_or(own_namespace);
    Some(ObjectKey::new(namespace, parent.name.clone()))
}

/// Whether the Gateway's `spec.allowedListeners` admits ListenerSets from `namespace`.
fn gateway_allows(gateway: &Gateway, gateway_namespace: &str, namespace: &str, index: &Index<'_>) -> bool {
    let Some(allowed) = gateway.spec.allowed_listeners.as_ref().and_then(|a| a.namespaces.as_ref()) else {
        return false;
    };
    match allowed.from {
        Some(GatewayAllowedListenersNamespacesFrom::All) => true,
        Some(GatewayAllowedListenersNamespacesFrom::Same) => namespace == gateway_namespace,
        Some(GatewayAllowedListenersNamespacesFrom::Selector) => {
            // The selector has the same shape as allowedRoutes' (a LabelSelector).
            let selector: Option<GatewayListenersAllowedRoutesNamespacesSelector> =
                allowed.selector.as_ref().and_then(|s| convert(s).ok());
            let Some(selector) = selector else { return false };
            match index.namespace_labels.get(namespace) {
                Some(labels) => selector_matches(&selector, labels),
                None => {
                    let labels = [(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string())].into_iter().collect();
                    selector_matches(&selector, &labels)
                }
            }
        }
        Some(GatewayAllowedListenersNamespacesFrom::None) | None => false,
    }
}

/// Whether the Gateway admits ListenerSets at all (then its status has `attachedListenerSets`).
pub(crate) fn gateway_admits_any(gateway: &Gateway) -> bool {
    gateway.spec.allowed_listeners.as_ref().and_then(|a| a.namespaces.as_ref()).is_some_and(|n| {
        matches!(
            n.from,
            Some(
                GatewayAllowedListenersNamespacesFrom::All
                    | GatewayAllowedListenersNamespacesFrom::Same
                    | GatewayAllowedListenersNamespacesFrom::Selector
            )
        )
    })
}

/// Converts between two generated types of the same shape (a ListenerSet's listener and
/// a Gateway's, both from the API's common listener definition).
fn convert<A: serde::Serialize, B: serde::de::DeserializeOwned>(from: &A) -> Result<B, String> {
    serde_json::to_value(from).and_then(serde_json::from_value).map_err(|error| error.to_string())
}

/// Merges the listeners of the ListenerSets naming `plan`'s Gateway (in precedence
/// order) into the plan, after the Gateway's own.
pub(crate) fn merge_listener_sets<'w>(
    plan: &mut GatewayPlan<'w>,
    listener_sets: &[&'w ListenerSet],
    index: &Index<'_>,
) {
    for (set_index, listener_set) in listener_sets.iter().enumerate() {
        let key = ObjectKey::of(*listener_set);
        let generation = listener_set.metadata.generation.unwrap_or_default();
        let start = plan.listeners.len();
        let not_attached = if !gateway_allows(plan.gateway, &plan.key.namespace, &key.namespace, index) {
            Some(ListenerSetProblem::NotAllowed { gateway: plan.key.clone(), namespace: key.namespace.clone() })
        } else if let Some(problem) = &plan.not_accepted {
            Some(ListenerSetProblem::ParentNotAccepted { gateway: plan.key.clone(), message: problem.message() })
        } else {
            None
        };
        if not_attached.is_none() {
            let owner = ListenerOwner { kind: "ListenerSet", key: &key, index: Some(set_index) };
            let mut planned: Vec<ListenerPlan> = listener_set
                .spec
                .listeners
                .iter()
                .map(|listener| match convert::<_, GatewayListeners>(listener) {
                    Ok(listener) => plan_listener(&listener, &owner, index, &mut plan.certificates),
                    Err(error) => {
                        let mut unreadable = plan_listener(
                            &GatewayListeners { name: listener.name.clone(), ..Default::default() },
                            &owner,
                            index,
                            &mut plan.certificates,
                        );
                        unreadable.not_accepted = Some(ListenerProblem::Unreadable { error });
                        unreadable
                    }
                })
                .collect();
            crate::frontend::plan_client_validation(
                plan.gateway,
                &plan.key,
                &mut planned,
                index,
                &mut plan.client_validations,
            );
            mark_duplicate_names(&mut planned);
            for mut listener in planned {
                if listener.not_accepted.is_none() {
                    listener.conflicted = conflict_with_earlier(&plan.listeners, &listener);
                }
                plan.listeners.push(listener);
            }
        }
        let end = plan.listeners.len();
        plan.listener_sets.push(ListenerSetPlan { key, generation, not_attached, listeners: start..end });
    }
    if plan.listeners.iter().any(|l| l.owner.is_some()) {
        mark_overlapping_tls(&mut plan.listeners);
    }
}

/// Why `candidate` cannot share its port with the accepted listeners of higher
/// precedence in `earlier`, if it cannot (the earlier listener wins, as the spec's
/// precedence says).
fn conflict_with_earlier(earlier: &[ListenerPlan], candidate: &ListenerPlan) -> Option<ListenerProblem> {
    let udp = candidate.protocol == Protocol::Udp;
    for other in earlier.iter().filter(|l| l.accepted()) {
        if (other.protocol == Protocol::Udp) != udp || other.port != candidate.port {
            continue;
        }
        let exclusive = matches!(candidate.protocol, Protocol::Tcp | Protocol::Udp)
            || matches!(other.protocol, Protocol::Tcp | Protocol::Udp);
        if other.protocol != candidate.protocol || exclusive {
            return Some(ListenerProblem::ProtocolTaken {
                port: candidate.port,
                protocol: protocol_name(other.protocol),
            });
        }
        if other.hostname == candidate.hostname {
            return Some(ListenerProblem::HostnameTaken {
                port: candidate.port,
                hostname: candidate.hostname.clone().unwrap_or_default(),
            });
        }
    }
    None
}

/// The status of each ListenerSet of a Gateway's plan.
pub(crate) fn listener_set_statuses(
    plan: &GatewayPlan<'_>,
    listener_status: impl Fn(&ListenerPlan, i64) -> crate::ListenerStatus,
) -> Vec<(ObjectKey, ListenerSetStatus)> {
    plan.listener_sets
        .iter()
        .map(|set| {
            let generation = set.generation;
            let conditions = match &set.not_attached {
                Some(problem) => vec![
                    Condition::new(reason::ACCEPTED, false, problem.reason(), problem.message(), generation),
                    Condition::new(reason::PROGRAMMED, false, problem.reason(), problem.message(), generation),
                ],
                None if set.accepted(plan) => {
                    let listeners = &plan.listeners[set.listeners.clone()];
                    let invalid = listeners.iter().filter(|l| !l.serves()).count();
                    let accepted = crate::conditions::accepted_despite_listeners(
                        invalid,
                        listeners.len(),
                        "ListenerSet is accepted",
                        generation,
                    );
                    vec![
                        accepted,
                        Condition::new(
                            reason::PROGRAMMED,
                            true,
                            reason::PROGRAMMED,
                            "ListenerSet is programmed",
                            generation,
                        ),
                    ]
                }
                None => {
                    let message = "no listener of the ListenerSet is valid";
                    vec![
                        Condition::new(reason::ACCEPTED, false, reason::LISTENERS_NOT_VALID, message, generation),
                        Condition::new(reason::PROGRAMMED, false, reason::LISTENERS_NOT_VALID, message, generation),
                    ]
                }
            };
            let listeners =
                plan.listeners[set.listeners.clone()].iter().map(|l| listener_status(l, generation)).collect();
            (set.key.clone(), ListenerSetStatus { gateway: plan.key.clone(), conditions, listeners })
        })
        .collect()
}
