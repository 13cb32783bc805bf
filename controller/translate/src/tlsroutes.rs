//! TLSRoutes on TLS listeners: the order in which a ClientHello's SNI picks a route.
//!
//! ```text
//!  SNI ──► exact hostname ──► longest wildcard ──► a route without hostnames   (data plane)
//!                   └─ several routes with that same hostname: the first in the snapshot
//!  snapshot order = (specificity of the route's own hostname behind it, age, namespace/name)
//! ```
//!
//! Once intersected with the listener hostname, two routes can serve the same hostname:
//! on a listener for `abc.example.com`, routes for `*.example.com` and `abc.example.com`
//! both serve `abc.example.com`. The route whose own hostname is more specific wins
//! (Gateway API's GatewayRouteHostnameIntersectionPrecedence), then the older route. A
//! route whose hostnames on a listener stem from hostnames of different specificity is
//! placed once per specificity, so that each of its hostnames competes at its own rank.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use sluice_snapshot::TlsRoute;

use crate::attach::covers;
use crate::httproutes::Age;
use crate::l4routes::L4Rule;

/// How specific a route hostname is: exact names first, then wildcards with more
/// labels, then no hostname at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Specificity {
    Exact,
    /// A wildcard, by the number of labels after `*.` (more first).
    Wildcard(Reverse<usize>),
    Any,
}

impl Specificity {
    fn of(hostname: &str) -> Self {
        match hostname.strip_prefix("*.") {
            Some(suffix) => Specificity::Wildcard(Reverse(suffix.split('.').count())),
            None => Specificity::Exact,
        }
    }
}

/// Where a snapshot TLS route goes among its listener's: (specificity, the route's rank
/// by age then namespace/name, its rule).
pub(crate) type TlsOrder = (Specificity, Age, usize);

/// The snapshot entries of one TLSRoute on one listener: `hosts` are the hostnames it
/// serves there (empty: any SNI), `route_hostnames` those the route itself lists.
pub(crate) fn place_tls_route(
    rank: &Age,
    rules: &[L4Rule],
    route_hostnames: &[String],
    hosts: &[String],
) -> Vec<(TlsOrder, TlsRoute)> {
    let mut groups: BTreeMap<Specificity, Vec<String>> = BTreeMap::new();
    if hosts.is_empty() {
        groups.insert(Specificity::Any, Vec::new());
    }
    for host in hosts {
        groups.entry(behind(host, route_hostnames)).or_default().push(host.clone());
    }
    let mut placed = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        for (specificity, hostnames) in &groups {
            let route =
                TlsRoute { name: rule.name.clone(), hostnames: hostnames.clone(), backends: rule.backends.clone() };
            placed.push(((*specificity, rank.clone(), index), route));
        }
    }
    placed
}

/// The specificity of the most specific route hostname behind `host` on a listener: the
/// hostname itself, or a wildcard covering it (then `host` is the listener's hostname).
fn behind(host: &str, route_hostnames: &[String]) -> Specificity {
    route_hostnames
        .iter()
        .filter(|own| own.as_str() == host || covers(own, host))
        .map(|own| Specificity::of(own))
        .min()
        .unwrap_or(Specificity::Any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|h| (*h).to_string()).collect()
    }

    #[test]
    fn specificity_orders_exact_then_longer_wildcards_then_none() {
        let mut order =
            vec![Specificity::Any, Specificity::of("*.com"), Specificity::of("a.b.com"), Specificity::of("*.b.com")];
        order.sort();
        assert_eq!(
            order,
            [
                Specificity::Exact,
                Specificity::Wildcard(Reverse(2)),
                Specificity::Wildcard(Reverse(1)),
                Specificity::Any
            ]
        );
    }

    #[test]
    fn hostnames_are_ranked_by_the_route_hostname_behind_them() {
        let rule = L4Rule { name: "tlsroute/ns/r/rule/0".into(), backends: vec![] };
        // On a listener for *.example.com: abc.example.com is the route's own exact name,
        // *.example.com stems from the route's *.com.
        let seven = Age::named("7");
        let placed = place_tls_route(
            &seven,
            std::slice::from_ref(&rule),
            &names(&["abc.example.com", "*.com"]),
            &names(&["*.example.com", "abc.example.com"]),
        );
        let got: Vec<(TlsOrder, Vec<String>)> = placed.into_iter().map(|(o, r)| (o, r.hostnames)).collect();
        assert_eq!(
            got,
            [
                ((Specificity::Exact, seven.clone(), 0), names(&["abc.example.com"])),
                ((Specificity::Wildcard(Reverse(1)), seven.clone(), 0), names(&["*.example.com"])),
            ]
        );
        // A route without hostnames serves any SNI (or the listener's hostname) last.
        let zero = Age::named("0");
        let placed = place_tls_route(&zero, std::slice::from_ref(&rule), &[], &names(&["abc.example.com"]));
        assert_eq!(placed[0].0, (Specificity::Any, zero.clone(), 0));
        let placed = place_tls_route(&zero, std::slice::from_ref(&rule), &[], &[]);
        assert_eq!((placed[0].0.clone(), placed[0].1.hostnames.len()), ((Specificity::Any, zero, 0), 0));
    }
}
