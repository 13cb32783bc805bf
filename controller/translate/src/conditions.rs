//! Condition builders: the status conditions of routes, Gateways and listeners.

use std::collections::BTreeSet;

use sluice_snapshot::ClientValidationMode;

use crate::attach::Attachment;
use crate::backends::BackendError;
use crate::gateways::{GatewayPlan, ListenerPlan};
use crate::problems::{ListenerProblem, Problem};
use crate::status::reason;
use crate::{Condition, GatewayStatus, ListenerStatus, listenersets};

pub(crate) fn route_conditions(
    attachment: &Attachment,
    unresolved: Option<&BackendError>,
    invalid_rules: &[String],
    all_invalid: bool,
    generation: i64,
) -> Vec<Condition> {
    let accepted = match attachment {
        Attachment::Rejected(problem) => {
            Condition::new(reason::ACCEPTED, false, problem.reason(), problem.message(), generation)
        }
        Attachment::Attached(_) if all_invalid => Condition::new(
            reason::ACCEPTED,
            false,
            reason::UNSUPPORTED_VALUE,
            format!("every rule is invalid: {}", invalid_rules.join("; ")),
            generation,
        ),
        Attachment::Attached(_) => {
            Condition::new(reason::ACCEPTED, true, reason::ACCEPTED, "Route is accepted", generation)
        }
    };
    let resolved = match unresolved {
        Some(error) => Condition::new(reason::RESOLVED_REFS, false, error.reason(), error.message(), generation),
        None => Condition::new(
            reason::RESOLVED_REFS,
            true,
            reason::RESOLVED_REFS,
            "All references are resolved",
            generation,
        ),
    };
    let mut conditions = vec![accepted, resolved];
    if !all_invalid && !invalid_rules.is_empty() {
        conditions.push(Condition::new(
            reason::PARTIALLY_INVALID,
            true,
            reason::UNSUPPORTED_VALUE,
            format!("Dropped Rule(s): {}", invalid_rules.join("; ")),
            generation,
        ));
    }
    conditions
}

pub(crate) fn gateway_status(plan: &GatewayPlan<'_>) -> GatewayStatus {
    let generation = plan.generation;
    let listeners: Vec<ListenerStatus> = plan.own_listeners().map(|l| listener_status(l, plan, generation)).collect();
    let serving = plan.own_listeners().filter(|l| l.serves()).count();
    let invalid = listeners.len() - serving;
    let conditions = match &plan.not_accepted {
        Some(problem) => vec![
            Condition::new(reason::ACCEPTED, false, problem.reason(), problem.message(), generation),
            Condition::new(reason::PROGRAMMED, false, reason::INVALID, "The Gateway is not accepted", generation),
        ],
        None => {
            let accepted = accepted_despite_listeners(invalid, listeners.len(), "Gateway is accepted", generation);
            let programmed = if let Some(problem) = plan.unusable_address.as_ref().filter(|_| serving > 0) {
                Condition::new(reason::PROGRAMMED, false, problem.reason(), problem.message(), generation)
            } else if serving > 0 {
                Condition::new(reason::PROGRAMMED, true, reason::PROGRAMMED, "Gateway is programmed", generation)
            } else {
                Condition::new(reason::PROGRAMMED, false, reason::INVALID, "No listener is valid", generation)
            };
            let mut conditions = vec![accepted, programmed];
            // A negative-polarity condition: present only while true.
            let insecure_ports: BTreeSet<i32> = plan
                .listeners
                .iter()
                .filter(|l| l.serves())
                .filter(|l| {
                    l.client_validation
                        .as_ref()
                        .and_then(|name| plan.client_validations.get(name))
                        .is_some_and(|validation| validation.mode() == ClientValidationMode::AllowInsecureFallback)
                })
                .map(|l| l.port)
                .collect();
            if !insecure_ports.is_empty() {
                let ports: Vec<String> = insecure_ports.iter().map(i32::to_string).collect();
                conditions.push(Condition::new(
                    reason::INSECURE_FRONTEND_VALIDATION_MODE,
                    true,
                    reason::CONFIGURATION_CHANGED,
                    format!(
                        "client certificate validation is AllowInsecureFallback on port {}: clients without a valid \
                         certificate are served too",
                        ports.join(", ")
                    ),
                    generation,
                ));
            }
            conditions
        }
    };
    let attached_listener_sets = listenersets::gateway_admits_any(plan.gateway).then(|| {
        let attached = plan.listener_sets.iter().filter(|set| set.accepted(plan)).count();
        i32::try_from(attached).unwrap_or(i32::MAX)
    });
    GatewayStatus { conditions, listeners, attached_listener_sets }
}

pub(crate) fn listener_status(listener: &ListenerPlan, plan: &GatewayPlan<'_>, generation: i64) -> ListenerStatus {
    let condition = |type_: &str, problem: &Option<ListenerProblem>, good: &str, message: &str| match problem {
        Some(problem) => Condition::new(type_, false, problem.reason(), problem.message(), generation),
        None => Condition::new(type_, true, good, message, generation),
    };
    let mut accepted = condition(reason::ACCEPTED, &listener.not_accepted, reason::ACCEPTED, "Listener is accepted");
    let conflicted = match &listener.conflicted {
        Some(problem) => {
            accepted = Condition::new(reason::ACCEPTED, false, problem.reason(), problem.message(), generation);
            Condition::new(reason::CONFLICTED, true, problem.reason(), problem.message(), generation)
        }
        None => Condition::new(reason::CONFLICTED, false, reason::NO_CONFLICTS, "No conflicts", generation),
    };
    let resolved =
        condition(reason::RESOLVED_REFS, &listener.unresolved, reason::RESOLVED_REFS, "All references are resolved");
    let programmed = match (&listener.conflicted, listener.serves() && plan.not_accepted.is_none()) {
        (Some(problem), _) => {
            Condition::new(reason::PROGRAMMED, false, problem.reason(), problem.message(), generation)
        }
        (None, true) => {
            Condition::new(reason::PROGRAMMED, true, reason::PROGRAMMED, "Listener is programmed", generation)
        }
        (None, false) => {
            Condition::new(reason::PROGRAMMED, false, reason::INVALID, "Listener is not valid", generation)
        }
    };
    let mut conditions = vec![accepted, conflicted, resolved, programmed];
    // A negative-polarity condition: present only when true.
    if let Some(others) = &listener.overlapping_tls {
        conditions.push(Condition::new(
            reason::OVERLAPPING_TLS_CONFIG,
            true,
            reason::OVERLAPPING_HOSTNAMES,
            format!("the hostname overlaps with TLS listeners {others}; clients coalescing connections may reach the wrong listener"),
            generation,
        ));
    }
    ListenerStatus {
        name: listener.name.clone(),
        supported_kinds: listener.supported_kinds.clone(),
        attached_routes: listener.attached_routes,
        conditions,
    }
}

/// Accepted=True of a Gateway or ListenerSet: with reason ListenersNotValid while `invalid`
/// of its `total` listeners are not valid.
pub(crate) fn accepted_despite_listeners(invalid: usize, total: usize, good: &str, generation: i64) -> Condition {
    if invalid == 0 {
        Condition::new(reason::ACCEPTED, true, reason::ACCEPTED, good, generation)
    } else {
        Condition::new(
            reason::ACCEPTED,
            true,
            reason::LISTENERS_NOT_VALID,
            format!("{invalid} of {total} listeners are not valid"),
            generation,
        )
    }
}
