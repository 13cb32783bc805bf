//! Listeners of one Gateway that cannot be served side by side: duplicate names,
//! port/protocol and hostname conflicts, overlapping TLS hostnames.

use std::collections::{BTreeMap, BTreeSet};

use sluice_snapshot::Protocol;

use crate::gateways::{ListenerPlan, protocol_name};
use crate::problems::ListenerProblem;

/// Listener names must be unique; later duplicates are not accepted.
pub(crate) fn mark_duplicate_names(listeners: &mut [ListenerPlan]) {
    let mut seen = BTreeSet::new();
    for listener in listeners.iter_mut() {
        if !seen.insert(listener.name.clone()) && listener.not_accepted.is_none() {
            listener.not_accepted = Some(ListenerProblem::DuplicateName { name: listener.name.clone() });
        }
    }
}

/// Listeners on one port must share a protocol (ProtocolConflict) and, for the same
/// protocol, have distinct hostnames (HostnameConflict); a TCP listener has its port to
/// itself. As Gateway API v1.5.1 requires, no conflicting listener is picked as a winner:
/// every listener involved in a conflict is marked and none of them is served.
pub(crate) fn mark_conflicts(listeners: &mut [ListenerPlan]) {
    // UDP is another transport: a UDP listener may share its port number with a TCP-based
    // one, and is checked apart from them.
    let mut by_port: BTreeMap<(bool, i32), Vec<usize>> = BTreeMap::new();
    for (i, listener) in listeners.iter().enumerate() {
        if listener.not_accepted.is_none() {
            by_port.entry((listener.protocol == Protocol::Udp, listener.port)).or_default().push(i);
        }
    }
    for ((_, port), members) in by_port {
        let protocols: BTreeSet<&str> = members.iter().map(|&i| protocol_name(listeners[i].protocol)).collect();
        let exclusive = members.len() > 1
            && members.iter().any(|&i| matches!(listeners[i].protocol, Protocol::Tcp | Protocol::Udp));
        if protocols.len() > 1 || exclusive {
            let list = protocols.into_iter().collect::<Vec<_>>().join(", ");
            for &i in &members {
                listeners[i].conflicted = Some(ListenerProblem::ProtocolConflict { port, protocols: list.clone() });
            }
            continue;
        }
        let mut by_hostname: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
        for &i in &members {
            by_hostname.entry(listeners[i].hostname.clone()).or_default().push(i);
        }
        for (hostname, same) in by_hostname.into_iter().filter(|(_, same)| same.len() > 1) {
            let names: Vec<String> = same.iter().map(|&i| listeners[i].name.clone()).collect();
            for &i in &same {
                listeners[i].conflicted = Some(ListenerProblem::HostnameConflict {
                    port,
                    listeners: names.join(", "),
                    hostname: hostname.clone().unwrap_or_default(),
                });
            }
        }
    }
}

/// TLS listeners on one port whose hostnames overlap (equal hostnames are a conflict
/// already; here a wildcard covering another hostname, or a listener without hostname next
/// to others) get OverlappingTLSConfig, as v1.5.1 requires of every controller.
pub(crate) fn mark_overlapping_tls(listeners: &mut [ListenerPlan]) {
    let tls: Vec<usize> =
        (0..listeners.len()).filter(|&i| listeners[i].protocol == Protocol::Https && listeners[i].accepted()).collect();
    for &i in &tls {
        let others: Vec<String> = tls
            .iter()
            .filter(|&&j| j != i && listeners[j].port == listeners[i].port)
            .filter(|&&j| match (&listeners[i].hostname, &listeners[j].hostname) {
                (Some(a), Some(b)) => crate::attach::intersect_hostnames(Some(a), std::slice::from_ref(b)).is_some(),
                _ => true,
            })
            .map(|&j| listeners[j].name.clone())
            .collect();
        if !others.is_empty() {
            listeners[i].overlapping_tls = Some(others.join(", "));
        }
    }
}
