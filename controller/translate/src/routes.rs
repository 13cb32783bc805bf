//! Attaching routes of every kind to the listeners of our Gateways and placing their
//! rules there: one loop for all kinds, each kind supplying only what differs.
//!
//! ```text
//!  route ─► any parentRef ours? ── no ─► no status from Sluice
//!    │ yes
//!    ▼ Route::compile (once, whatever it attaches to)
//!  per parentRef of ours ─► attach (listeners, allowedRoutes, hostnames) ─► Attachment
//!    │ Attached: clusters + policy uses recorded for the Gateway, attachedRoutes counted,
//!    │           Compiled::place on each served listener (HTTP/gRPC, TLS or TCP/UDP maps)
//!    ▼
//!  RouteParentStatus (route_conditions) per parentRef of ours
//! ```

use std::sync::Arc;

use sluice_gateway_api::grpcroutes::GrpcRoute as GRPCRoute;
use sluice_gateway_api::httproutes::HttpRoute as HTTPRoute;
use sluice_snapshot::{Cluster, Protocol};

use crate::attach::{AttachProblem, Attachment, attach, hostname_rank};
use crate::backends::{BackendError, ClusterCache};
use crate::conditions::route_conditions;
use crate::gateways::ListenerPlan;
use crate::httproutes::{Age, CompiledRoute, RouteKind, by_age, compile_route, place_rule};
use crate::index::{Index, ObjectKey};
use crate::l4routes::{CompiledL4Route, L4Route, compile_l4_route};
use crate::tlsroutes::place_tls_route;
use crate::translation::{Placements, Translation};
use crate::{CONTROLLER_NAME, ParentRef, RouteParentStatus, RouteStatus, grpcroutes};

/// A route kind as attachment sees it.
pub(crate) trait Route: kube::Resource<DynamicType = ()> {
    /// The kind's name in the API (`allowedRoutes.kinds`, messages).
    const KIND: &'static str;
    type Compiled: Compiled;
    fn parent_refs(&self) -> Vec<ParentRef>;
    /// The hostnames the route serves (TLSRoute: SNI names); none for TCP and UDP.
    fn route_hostnames(&self) -> Vec<String>;
    /// Compiles the route's rules once, whatever listeners it attaches to.
    fn compile(&self, index: &Index<'_>, cache: &mut ClusterCache<'_>) -> Self::Compiled;
}

/// A route's compiled rules: what it references and how it lands on one listener.
pub(crate) trait Compiled {
    fn clusters(&self) -> &[Arc<Cluster>];
    /// The first unresolved reference (ResolvedRefs=False).
    fn unresolved(&self) -> Option<&BackendError>;
    /// Rules dropped, with why.
    fn invalid_rules(&self) -> &[String];
    /// Whether every rule was dropped (then the route is not Accepted).
    fn all_invalid(&self) -> bool;
    /// Places the rules on one listener the route attached to.
    fn place(&self, placements: &mut Placements, on: Spot<'_>);
}

/// Where a route lands: one served listener it attached to.
pub(crate) struct Spot<'a> {
    /// The Gateway and the listener's index in its plan.
    pub at: (ObjectKey, usize),
    pub listener: &'a ListenerPlan,
    pub route: &'a ObjectKey,
    /// The route's age, then namespace/name.
    pub rank: &'a Age,
    /// The route's own hostnames.
    pub hostnames: &'a [String],
    /// The hostnames it serves on this listener (empty: any).
    pub hosts: &'a [String],
}

/// HTTPRoute and GRPCRoute: both compile into snapshot HTTP routes.
macro_rules! http_like_route {
    ($type:ty, $kind:expr, $compile:path) => {
        impl Route for $type {
            const KIND: &'static str = $kind.name();
            type Compiled = CompiledRoute;
            fn parent_refs(&self) -> Vec<ParentRef> {
                parent_refs!(self)
            }
            fn route_hostnames(&self) -> Vec<String> {
                self.spec.hostnames.clone().unwrap_or_default()
            }
            fn compile(&self, index: &Index<'_>, cache: &mut ClusterCache<'_>) -> CompiledRoute {
                $compile(self, index, cache)
            }
        }
    };
}

http_like_route!(HTTPRoute, RouteKind::Http, compile_route);
http_like_route!(GRPCRoute, RouteKind::Grpc, grpcroutes::compile_grpc_route);

impl<R: L4Route> Route for R {
    const KIND: &'static str = <R as L4Route>::KIND;
    type Compiled = CompiledL4Route;
    fn parent_refs(&self) -> Vec<ParentRef> {
        self.parents()
    }
    fn route_hostnames(&self) -> Vec<String> {
        self.hostnames().to_vec()
    }
    fn compile(&self, index: &Index<'_>, cache: &mut ClusterCache<'_>) -> CompiledL4Route {
        compile_l4_route(self, index, cache)
    }
}

impl Compiled for CompiledRoute {
    fn clusters(&self) -> &[Arc<Cluster>] {
        &self.clusters
    }
    fn unresolved(&self) -> Option<&BackendError> {
        self.unresolved.as_ref()
    }
    fn invalid_rules(&self) -> &[String] {
        &self.invalid_rules
    }
    fn all_invalid(&self) -> bool {
        self.rules.is_empty() && !self.invalid_rules.is_empty()
    }
    fn place(&self, placements: &mut Placements, on: Spot<'_>) {
        let hostname = hostname_rank(on.listener.hostname.as_deref(), on.hostnames);
        let placed = placements.http.entry(on.at).or_default();
        for rule in &self.rules {
            placed.extend(place_rule(on.route, on.rank.clone(), rule, on.hosts, hostname));
        }
    }
}

impl Compiled for CompiledL4Route {
    fn clusters(&self) -> &[Arc<Cluster>] {
        &self.clusters
    }
    fn unresolved(&self) -> Option<&BackendError> {
        self.unresolved.as_ref()
    }
    fn invalid_rules(&self) -> &[String] {
        &[]
    }
    fn all_invalid(&self) -> bool {
        false
    }
    fn place(&self, placements: &mut Placements, on: Spot<'_>) {
        if on.listener.protocol == Protocol::Tls {
            let placed = place_tls_route(on.rank, &self.rules, on.hostnames, on.hosts);
            placements.tls.entry(on.at).or_default().extend(placed);
        } else {
            placements.l4.entry(on.at).or_default().push((on.rank.clone(), self.rules.clone()));
        }
    }
}

/// Everything one route contributes to a translation. It is computed from the route,
/// the Gateway plans and the index alone (never from other routes), so the same route in
/// the same surroundings always contributes the same: the fast path for route changes
/// (`incremental::RoutePatch`) takes a route's old contribution out and puts its new one
/// in.
pub(crate) struct Fragment {
    pub(crate) key: ObjectKey,
    pub(crate) status: RouteStatus,
    /// Listeners (Gateway, index in its plan) whose `attachedRoutes` count the route,
    /// once per parentRef that attached there.
    pub(crate) attached: Vec<(ObjectKey, usize)>,
    /// Clusters the route's Gateways need (it serves on a listener of them).
    pub(crate) clusters: Vec<(ObjectKey, Vec<Arc<Cluster>>)>,
    /// (Gateway, Service, port name) of every backend port the route uses on a Gateway
    /// (BackendTLSPolicy status).
    pub(crate) policy_uses: Vec<(ObjectKey, ObjectKey, String)>,
    /// The route's entries on each listener it serves on.
    pub(crate) placements: Placements,
}

impl Translation<'_> {
    /// Attaches every route of one kind, oldest first, and records the status of those
    /// with a parent of ours.
    pub(crate) fn attach_routes<R: Route>(
        &mut self,
        routes: &[Arc<R>],
        statuses: &mut std::collections::BTreeMap<ObjectKey, RouteStatus>,
    ) {
        for route in by_age(routes) {
            if let Some(fragment) = self.route_fragment(route) {
                statuses.insert(fragment.key.clone(), self.add_fragment(fragment));
            }
        }
    }

    /// Adds a route's contribution to this translation; returns its status.
    fn add_fragment(&mut self, fragment: Fragment) -> RouteStatus {
        let Fragment { status, attached, clusters, policy_uses, placements, .. } = fragment;
        for (gateway, listener) in attached {
            if let Some(plan) = self.plans.get_mut(&gateway) {
                plan.listeners[listener].attached_routes += 1;
            }
        }
        for (gateway, clusters) in clusters {
            Self::add_clusters(&mut self.clusters, &gateway, &clusters);
        }
        for (gateway, service, port) in policy_uses {
            self.cache.policies.record_use(&gateway, &service, &port);
        }
        let Placements { http, l4, tls } = placements;
        for (at, entries) in http {
            self.placements.http.entry(at).or_default().extend(entries);
        }
        for (at, entries) in l4 {
            self.placements.l4.entry(at).or_default().extend(entries);
        }
        for (at, entries) in tls {
            self.placements.tls.entry(at).or_default().extend(entries);
        }
        status
    }

    /// Attaches a route through each of its parents (ours) and places its rules on the
    /// listeners it attached to; None without a parent of ours. Reads the plans and the
    /// index, changes nothing but the cluster cache.
    pub(crate) fn route_fragment<R: Route>(&mut self, route: &R) -> Option<Fragment> {
        let key = ObjectKey::of(route);
        let parents = route.parent_refs();
        if !parents.iter().any(|p| self.resolve_parent(p, &key).is_some()) {
            return None;
        }
        let rank = Age::of(route);
        let compiled = route.compile(&self.index, &mut self.cache);
        let touched = self.cache.take_touched();
        let generation = route.meta().generation.unwrap_or_default();
        let hostnames = route.route_hostnames();
        let all_invalid = compiled.all_invalid();
        let invalid_hostname = hostnames.iter().find(|h| !sluice_snapshot::valid_hostname(h));
        let mut fragment = Fragment {
            key,
            status: RouteStatus::default(),
            attached: Vec::new(),
            clusters: Vec::new(),
            policy_uses: Vec::new(),
            placements: Placements::default(),
        };
        let key = &fragment.key;
        let mut statuses = Vec::new();
        for parent in parents {
            let Some((gateway_key, owner)) = self.resolve_parent(&parent, key) else { continue };
            let Some(plan) = self.plans.get(&gateway_key) else { continue };
            let attachment = match invalid_hostname {
                Some(bad) => Attachment::Rejected(AttachProblem::InvalidHostname(bad.clone())),
                None => attach(plan, &parent, owner, R::KIND, &key.namespace, &hostnames, &self.index),
            };
            if let Attachment::Attached(listeners) = &attachment
                && !all_invalid
            {
                if listeners.iter().any(|(l, _)| plan.listeners[*l].serves()) {
                    fragment.clusters.push((gateway_key.clone(), compiled.clusters().to_vec()));
                }
                for (service, port) in &touched {
                    fragment.policy_uses.push((gateway_key.clone(), service.clone(), port.clone()));
                }
                for (listener, hosts) in listeners {
                    fragment.attached.push((gateway_key.clone(), *listener));
                    if !plan.listeners[*listener].serves() {
                        continue;
                    }
                    let on = Spot {
                        at: (gateway_key.clone(), *listener),
                        listener: &plan.listeners[*listener],
                        route: key,
                        rank: &rank,
                        hostnames: &hostnames,
                        hosts,
                    };
                    compiled.place(&mut fragment.placements, on);
                }
            }
            let conditions =
                route_conditions(&attachment, compiled.unresolved(), compiled.invalid_rules(), all_invalid, generation);
            statuses.push(RouteParentStatus {
                parent_ref: parent,
                controller_name: CONTROLLER_NAME.into(),
                conditions,
            });
        }
        fragment.status = RouteStatus { parents: statuses };
        Some(fragment)
    }
}
