//! Sluice's translator: one pure function from every watched object to what the
//! controller must do.
//!
//! ```text
//!  World (GatewayClasses, Gateways, ListenerSets, HTTPRoutes, GRPCRoutes, TCPRoutes,
//!         UDPRoutes, TLSRoutes, ReferenceGrants, BackendTLSPolicies, Services,
//!         EndpointSlices, Secrets, ConfigMaps, Namespaces, ProxyConfigs)
//!    │ translate()          no client, no clock, no I/O; deterministic
//!    ▼
//!  Output ── per Gateway: Snapshot (listeners → ordered routes, clusters, certificates,
//!         │                client certificate validations)
//!         │                Infra (ports, ProxyConfig, labels) for the deployer
//!         └─ status of every GatewayClass, Gateway (+ listeners), ListenerSet and route
//!            parentRef
//! ```
//!
//! User mistakes never fail translation: they become status conditions with the reasons
//! Gateway API v1.7.0 defines, and invalid backends answer 500 for their share of traffic.

/// The parentRefs of a route, as status echoes them. Every route kind has its own
/// generated parentRef type with the same fields, hence a macro (defined before the
/// modules so that `l4routes` uses it too).
macro_rules! parent_refs {
    ($route:expr) => {
        $route
            .spec
            .parent_refs
            .iter()
            .flatten()
            .map(|p| ParentRef {
                group: p.group.clone(),
                kind: p.kind.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                section_name: p.section_name.clone(),
                port: p.port,
            })
            .collect::<Vec<ParentRef>>()
    };
}

mod attach;
mod backend_client;
mod backends;
mod classes;
mod features;
mod frontend;
mod gateways;
mod grpcroutes;
mod httproutes;
mod index;
mod l4routes;
mod listenersets;
mod policies;
pub mod status;
mod tlsroutes;
mod world;

use std::collections::{BTreeMap, BTreeSet};

use sluice_crds::ProxyConfigSpec;
use sluice_snapshot::{ClientValidationMode, Cluster, Listener, Protocol, Snapshot, TcpRoute, TlsMode, UdpRoute};

pub use classes::SUPPORTED_BUNDLE_VERSIONS;
pub use features::SUPPORTED_FEATURES;
pub use index::ObjectKey;
pub use policies::{PolicyAncestorStatus, PolicyStatus};
pub use status::{
    CONTROLLER_NAME, Condition, ConditionStatus, GatewayClassStatus, GatewayStatus, ListenerSetStatus, ListenerStatus,
    ParentRef, RouteGroupKind, RouteParentStatus, RouteStatus,
};
pub use world::{Skipped, World};

use attach::{Attachment, attach, hostname_rank, is_gateway_ref, is_listener_set_ref};
use backends::{BackendError, ClusterCache};
use gateways::{GatewayPlan, ListenerPlan, plan_gateway};
use httproutes::{CompiledRoute, RouteKind, RouteOrder, by_age, compile_route, place_rule};
use index::Index;
use l4routes::{L4Route, L4Rule, compile_l4_route};
use status::reason;
use tlsroutes::{TlsOrder, place_tls_route};

/// Everything translation decides.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// Per accepted Gateway: what its data plane serves and how to deploy it.
    pub gateways: BTreeMap<ObjectKey, GatewayOutput>,
    pub status: Status,
    /// With `World::now`: the earliest later instant (Unix seconds) at which the same
    /// World translates differently (a referenced certificate becomes valid or expires).
    /// The controller translates again then, so status and snapshots follow the clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_change_at: Option<i64>,
}

/// What one Gateway's data plane gets and how it is deployed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GatewayOutput {
    pub snapshot: Snapshot,
    pub infra: Infra,
}

/// What the deployer creates for a Gateway.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Infra {
    /// Distinct listener ports the data plane binds (also the Service's ports), sorted.
    pub ports: Vec<InfraPort>,
    /// The GatewayClass's ProxyConfig merged with the Gateway's own.
    pub proxy_config: ProxyConfigSpec,
    /// `spec.infrastructure.labels`/`annotations` of the Gateway.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// IP addresses the Gateway asks for in `spec.addresses`.
    pub requested_addresses: Vec<String>,
}

/// One port of the data plane.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct InfraPort {
    pub port: i32,
    /// `UDP` for UDP listeners, `TCP` for every other protocol (HTTP, HTTPS and TCP).
    pub protocol: String,
}

/// Status of every object Sluice is responsible for, keyed by name.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub gateway_classes: BTreeMap<String, GatewayClassStatus>,
    pub gateways: BTreeMap<ObjectKey, GatewayStatus>,
    /// ListenerSets whose parentRef names one of our Gateways.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub listener_sets: BTreeMap<ObjectKey, ListenerSetStatus>,
    pub http_routes: BTreeMap<ObjectKey, RouteStatus>,
    pub grpc_routes: BTreeMap<ObjectKey, RouteStatus>,
    pub tcp_routes: BTreeMap<ObjectKey, RouteStatus>,
    pub udp_routes: BTreeMap<ObjectKey, RouteStatus>,
    pub tls_routes: BTreeMap<ObjectKey, RouteStatus>,
    /// Every BackendTLSPolicy targeting a Service: Sluice's ancestors (none when no
    /// Gateway of Sluice's uses a targeted port).
    pub backend_tls_policies: BTreeMap<ObjectKey, PolicyStatus>,
}

/// Snapshot routes placed on one listener of one Gateway, before ordering.
type Placed<O, R> = BTreeMap<(ObjectKey, usize), Vec<(O, R)>>;

/// State of one translation pass.
struct Translation<'w> {
    index: Index<'w>,
    plans: BTreeMap<ObjectKey, GatewayPlan<'w>>,
    /// ListenerSets whose parent is one of our Gateways: the Gateway and the set's index
    /// in its plan.
    listener_set_parents: BTreeMap<ObjectKey, (ObjectKey, usize)>,
    cache: ClusterCache<'w>,
    clusters: BTreeMap<ObjectKey, BTreeMap<String, std::sync::Arc<Cluster>>>,
    http_routes: Placed<RouteOrder, sluice_snapshot::HttpRoute>,
    /// TCP and UDP rules per listener (a listener is one or the other).
    l4_routes: Placed<usize, Vec<L4Rule>>,
    /// TLSRoutes per TLS listener.
    tls_routes: Placed<TlsOrder, sluice_snapshot::TlsRoute>,
}

/// Translates the whole World. Pure and deterministic.
pub fn translate(world: &World) -> Output {
    let index = Index::new(world);
    let mut output = Output::default();
    let classes = classes::translate_classes(world, &index, &mut output.status.gateway_classes);
    let mut listener_sets: BTreeMap<ObjectKey, Vec<&sluice_gateway_api::listenersets::ListenerSet>> = BTreeMap::new();
    for listener_set in by_age(&world.listener_sets) {
        if let Some(parent) = listenersets::parent_gateway(listener_set) {
            listener_sets.entry(parent).or_default().push(listener_set);
        }
    }
    let mut plans = BTreeMap::new();
    let mut listener_set_parents = BTreeMap::new();
    for gateway in &world.gateways {
        if let Some(class) = classes.get(&gateway.spec.gateway_class_name) {
            let key = ObjectKey::of(gateway.as_ref());
            let sets = listener_sets.get(&key).map(Vec::as_slice).unwrap_or_default();
            let plan = plan_gateway(gateway, class, sets, &index);
            for (set_index, set) in plan.listener_sets.iter().enumerate() {
                listener_set_parents.insert(set.key.clone(), (plan.key.clone(), set_index));
            }
            plans.insert(plan.key.clone(), plan);
        }
    }
    let policies = policies::Policies::new(&world.backend_tls_policies, &index);
    let mut pass = Translation {
        index,
        plans,
        listener_set_parents,
        cache: ClusterCache::new(policies),
        clusters: BTreeMap::new(),
        http_routes: BTreeMap::new(),
        l4_routes: BTreeMap::new(),
        tls_routes: BTreeMap::new(),
    };
    for (rank, route) in by_age(&world.http_routes).into_iter().enumerate() {
        if let Some((key, status)) = pass.http_route(route, rank) {
            output.status.http_routes.insert(key, status);
        }
    }
    for (rank, route) in by_age(&world.grpc_routes).into_iter().enumerate() {
        if let Some((key, status)) = pass.grpc_route(route, rank) {
            output.status.grpc_routes.insert(key, status);
        }
    }
    for (rank, route) in by_age(&world.tcp_routes).into_iter().enumerate() {
        if let Some((key, status)) = pass.l4_route(route, rank) {
            output.status.tcp_routes.insert(key, status);
        }
    }
    for (rank, route) in by_age(&world.udp_routes).into_iter().enumerate() {
        if let Some((key, status)) = pass.l4_route(route, rank) {
            output.status.udp_routes.insert(key, status);
        }
    }
    for (rank, route) in by_age(&world.tls_routes).into_iter().enumerate() {
        if let Some((key, status)) = pass.l4_route(route, rank) {
            output.status.tls_routes.insert(key, status);
        }
    }
    output.next_change_at = pass.index.next_change.get();
    pass.finish(&mut output);
    output
}

impl Translation<'_> {
    /// The Gateway of ours a parentRef leads to, and whether through one of its
    /// ListenerSets (its index in the Gateway's plan). Other parents get no status from
    /// Sluice (another controller, or nothing, owns them).
    fn resolve_parent(&self, parent: &ParentRef, route: &ObjectKey) -> Option<(ObjectKey, Option<usize>)> {
        let namespace = parent.namespace.clone().filter(|ns| !ns.is_empty()).unwrap_or_else(|| route.namespace.clone());
        let key = ObjectKey::new(namespace, parent.name.clone());
        if is_gateway_ref(parent) {
            return self.plans.contains_key(&key).then_some((key, None));
        }
        if is_listener_set_ref(parent) {
            return self.listener_set_parents.get(&key).map(|(gateway, set)| (gateway.clone(), Some(*set)));
        }
        None
    }

    fn add_clusters(
        all: &mut BTreeMap<ObjectKey, BTreeMap<String, std::sync::Arc<Cluster>>>,
        gateway: &ObjectKey,
        clusters: &[std::sync::Arc<Cluster>],
    ) {
        let gateway_clusters = match all.get_mut(gateway) {
            Some(existing) => existing,
            None => all.entry(gateway.clone()).or_default(),
        };
        for cluster in clusters {
            if !gateway_clusters.contains_key(&cluster.name) {
                gateway_clusters.insert(cluster.name.clone(), cluster.clone());
            }
        }
    }

    fn http_route(
        &mut self,
        route: &sluice_gateway_api::httproutes::HttpRoute,
        rank: usize,
    ) -> Option<(ObjectKey, RouteStatus)> {
        let key = ObjectKey::of(route);
        let parents = parent_refs!(route);
        if !parents.iter().any(|p| self.resolve_parent(p, &key).is_some()) {
            return None;
        }
        let compiled = compile_route(route, &self.index, &mut self.cache);
        let touched = self.cache.take_touched();
        let generation = route.metadata.generation.unwrap_or_default();
        let hostnames = route.spec.hostnames.clone().unwrap_or_default();
        Some(self.place_http_like(key, RouteKind::Http, generation, parents, hostnames, compiled, touched, rank))
    }

    fn grpc_route(
        &mut self,
        route: &sluice_gateway_api::grpcroutes::GrpcRoute,
        rank: usize,
    ) -> Option<(ObjectKey, RouteStatus)> {
        let key = ObjectKey::of(route);
        let parents = parent_refs!(route);
        if !parents.iter().any(|p| self.resolve_parent(p, &key).is_some()) {
            return None;
        }
        let compiled = grpcroutes::compile_grpc_route(route, &self.index, &mut self.cache);
        let touched = self.cache.take_touched();
        let generation = route.metadata.generation.unwrap_or_default();
        let hostnames = route.spec.hostnames.clone().unwrap_or_default();
        Some(self.place_http_like(key, RouteKind::Grpc, generation, parents, hostnames, compiled, touched, rank))
    }

    /// Attaches a compiled HTTPRoute or GRPCRoute through each of its parents (ours) and
    /// places its rules on the listeners it attached to; returns its status.
    #[allow(clippy::too_many_arguments)]
    fn place_http_like(
        &mut self,
        key: ObjectKey,
        kind: RouteKind,
        generation: i64,
        parents: Vec<ParentRef>,
        hostnames: Vec<String>,
        compiled: CompiledRoute,
        touched: Vec<(ObjectKey, String)>,
        rank: usize,
    ) -> (ObjectKey, RouteStatus) {
        let all_invalid = compiled.rules.is_empty() && !compiled.invalid_rules.is_empty();
        let invalid_hostname = hostnames.iter().find(|h| !sluice_snapshot::valid_hostname(h));
        let mut statuses = Vec::new();
        for parent in parents {
            let Some((gateway_key, owner)) = self.resolve_parent(&parent, &key) else { continue };
            let Some(plan) = self.plans.get_mut(&gateway_key) else { continue };
            let attachment = match invalid_hostname {
                Some(bad) => Attachment::Rejected(
                    reason::UNSUPPORTED_VALUE,
                    format!("hostname {bad:?} is not a valid DNS name or wildcard"),
                ),
                None => attach(plan, &parent, owner, kind.name(), &key.namespace, &hostnames, &self.index),
            };
            if let Attachment::Attached(listeners) = &attachment
                && !all_invalid
            {
                if listeners.iter().any(|(l, _)| plan.listeners[*l].serves()) {
                    Self::add_clusters(&mut self.clusters, &gateway_key, &compiled.clusters);
                }
                for (service, port) in &touched {
                    self.cache.policies.record_use(&gateway_key, service, port);
                }
                for (listener, hosts) in listeners {
                    plan.listeners[*listener].attached_routes += 1;
                    if !plan.listeners[*listener].serves() {
                        continue;
                    }
                    let hostname = hostname_rank(plan.listeners[*listener].hostname.as_deref(), &hostnames);
                    let placed = self.http_routes.entry((gateway_key.clone(), *listener)).or_default();
                    for rule in &compiled.rules {
                        placed.extend(place_rule(&key, rank, rule, hosts, hostname));
                    }
                }
            }
            let conditions = route_conditions(
                &attachment,
                compiled.unresolved.as_ref(),
                &compiled.invalid_rules,
                all_invalid,
                generation,
            );
            statuses.push(RouteParentStatus {
                parent_ref: parent,
                controller_name: CONTROLLER_NAME.into(),
                conditions,
            });
        }
        (key, RouteStatus { parents: statuses })
    }

    fn l4_route<R: L4Route>(&mut self, route: &R, rank: usize) -> Option<(ObjectKey, RouteStatus)> {
        let key = ObjectKey::of(route);
        let generation = route.meta().generation.unwrap_or_default();
        let parents = route.parents();
        if !parents.iter().any(|p| self.resolve_parent(p, &key).is_some()) {
            return None;
        }
        let compiled = compile_l4_route(route, &self.index, &mut self.cache);
        let hostnames = route.hostnames();
        let invalid_hostname = hostnames.iter().find(|h| !sluice_snapshot::valid_hostname(h));
        let touched = self.cache.take_touched();
        let mut statuses = Vec::new();
        for parent in parents {
            let Some((gateway_key, owner)) = self.resolve_parent(&parent, &key) else { continue };
            let Some(plan) = self.plans.get_mut(&gateway_key) else { continue };
            let attachment = match invalid_hostname {
                Some(bad) => Attachment::Rejected(
                    reason::UNSUPPORTED_VALUE,
                    format!("hostname {bad:?} is not a valid DNS name or wildcard"),
                ),
                None => attach(plan, &parent, owner, R::KIND, &key.namespace, hostnames, &self.index),
            };
            if let Attachment::Attached(listeners) = &attachment {
                if listeners.iter().any(|(l, _)| plan.listeners[*l].serves()) {
                    Self::add_clusters(&mut self.clusters, &gateway_key, &compiled.clusters);
                }
                for (service, port) in &touched {
                    self.cache.policies.record_use(&gateway_key, service, port);
                }
                for (listener, hosts) in listeners {
                    plan.listeners[*listener].attached_routes += 1;
                    if !plan.listeners[*listener].serves() {
                        continue;
                    }
                    let at = (gateway_key.clone(), *listener);
                    if plan.listeners[*listener].protocol == Protocol::Tls {
                        let placed = place_tls_route(rank, &compiled.rules, hostnames, hosts);
                        self.tls_routes.entry(at).or_default().extend(placed);
                    } else {
                        self.l4_routes.entry(at).or_default().push((rank, compiled.rules.clone()));
                    }
                }
            }
            let conditions = route_conditions(&attachment, compiled.unresolved.as_ref(), &[], false, generation);
            statuses.push(RouteParentStatus {
                parent_ref: parent,
                controller_name: CONTROLLER_NAME.into(),
                conditions,
            });
        }
        Some((key, RouteStatus { parents: statuses }))
    }

    /// Orders every listener's routes and emits status and outputs per Gateway.
    fn finish(mut self, output: &mut Output) {
        output.status.backend_tls_policies = self.cache.policies.status();
        for ((gateway, listener), mut routes) in std::mem::take(&mut self.http_routes) {
            routes.sort_by_key(|entry| entry.0);
            if let Some(plan) = self.plans.get_mut(&gateway) {
                plan.listeners[listener].http_routes = routes.into_iter().map(|(_, route)| route).collect();
            }
        }
        for ((gateway, listener), mut routes) in std::mem::take(&mut self.l4_routes) {
            routes.sort_by_key(|entry| entry.0);
            if let Some(plan) = self.plans.get_mut(&gateway) {
                plan.listeners[listener].l4_routes = routes.into_iter().flat_map(|(_, routes)| routes).collect();
            }
        }
        for ((gateway, listener), mut routes) in std::mem::take(&mut self.tls_routes) {
            routes.sort_by_key(|entry| entry.0);
            if let Some(plan) = self.plans.get_mut(&gateway) {
                plan.listeners[listener].tls_routes = routes.into_iter().map(|(_, route)| route).collect();
            }
        }
        for (key, plan) in self.plans {
            let client = backend_client::backend_client_certificate(plan.gateway, &key, &self.index);
            let mut status = gateway_status(&plan);
            if let Some(condition) = backend_client::resolved_refs_condition(&client, plan.generation) {
                status.conditions.push(condition);
            }
            output.status.gateways.insert(key.clone(), status);
            let statuses =
                listenersets::listener_set_statuses(&plan, |l, generation| listener_status(l, &plan, generation));
            output.status.listener_sets.extend(statuses);
            if plan.not_accepted.is_none() {
                let clusters = self.clusters.remove(&key).unwrap_or_default();
                output.gateways.insert(key, gateway_output(plan, clusters, client.and_then(Result::ok)));
            }
        }
    }
}

fn route_conditions(
    attachment: &Attachment,
    unresolved: Option<&BackendError>,
    invalid_rules: &[String],
    all_invalid: bool,
    generation: i64,
) -> Vec<Condition> {
    let accepted = match attachment {
        Attachment::Rejected(why, message) => Condition::new(reason::ACCEPTED, false, why, message.clone(), generation),
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

fn gateway_status(plan: &GatewayPlan<'_>) -> GatewayStatus {
    let generation = plan.generation;
    let listeners: Vec<ListenerStatus> = plan.own_listeners().map(|l| listener_status(l, plan, generation)).collect();
    let serving = plan.own_listeners().filter(|l| l.serves()).count();
    let invalid = listeners.len() - serving;
    let conditions = match &plan.not_accepted {
        Some((why, message)) => vec![
            Condition::new(reason::ACCEPTED, false, why, message.clone(), generation),
            Condition::new(reason::PROGRAMMED, false, reason::INVALID, "The Gateway is not accepted", generation),
        ],
        None => {
            let accepted = if invalid == 0 {
                Condition::new(reason::ACCEPTED, true, reason::ACCEPTED, "Gateway is accepted", generation)
            } else {
                Condition::new(
                    reason::ACCEPTED,
                    true,
                    reason::LISTENERS_NOT_VALID,
                    format!("{invalid} of {} listeners are not valid", listeners.len()),
                    generation,
                )
            };
            let programmed = if let Some((why, message)) = plan.unusable_address.as_ref().filter(|_| serving > 0) {
                Condition::new(reason::PROGRAMMED, false, why, message.clone(), generation)
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

fn listener_status(listener: &ListenerPlan, plan: &GatewayPlan<'_>, generation: i64) -> ListenerStatus {
    let condition = |type_: &str, problem: &Option<(&'static str, String)>, good: &str, message: &str| match problem {
        Some((why, text)) => Condition::new(type_, false, why, text.clone(), generation),
        None => Condition::new(type_, true, good, message, generation),
    };
    let mut accepted = condition(reason::ACCEPTED, &listener.not_accepted, reason::ACCEPTED, "Listener is accepted");
    let conflicted = match &listener.conflicted {
        Some((why, text)) => {
            accepted = Condition::new(reason::ACCEPTED, false, why, text.clone(), generation);
            Condition::new(reason::CONFLICTED, true, why, text.clone(), generation)
        }
        None => Condition::new(reason::CONFLICTED, false, reason::NO_CONFLICTS, "No conflicts", generation),
    };
    let resolved =
        condition(reason::RESOLVED_REFS, &listener.unresolved, reason::RESOLVED_REFS, "All references are resolved");
    let programmed = match (&listener.conflicted, listener.serves() && plan.not_accepted.is_none()) {
        (Some((why, text)), _) => Condition::new(reason::PROGRAMMED, false, why, text.clone(), generation),
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

/// The snapshot and infra of a Gateway; `backend_client` is presented on TLS connections
/// to backends.
fn gateway_output(
    plan: GatewayPlan<'_>,
    clusters: BTreeMap<String, std::sync::Arc<Cluster>>,
    backend_client: Option<sluice_snapshot::Certificate>,
) -> GatewayOutput {
    let mut ports = BTreeSet::new();
    let mut listeners = Vec::new();
    let mut used_certificates = BTreeSet::new();
    let mut used_validations = BTreeSet::new();
    for listener in plan.listeners {
        if !listener.serves() {
            continue;
        }
        let name = match listener.owner.and_then(|set| plan.listener_sets.get(set)) {
            Some(set) => {
                format!("listenerset/{}/{}/listener/{}", set.key.namespace, set.key.name, listener.name)
            }
            None => format!("gateway/{}/{}/listener/{}", plan.key.namespace, plan.key.name, listener.name),
        };
        let transport = if listener.protocol == Protocol::Udp { "UDP" } else { "TCP" };
        ports.insert(InfraPort { port: listener.port, protocol: transport.into() });
        let (tcp_routes, udp_routes) = if listener.protocol == Protocol::Udp {
            (
                Vec::new(),
                listener.l4_routes.into_iter().map(|r| UdpRoute { name: r.name, backends: r.backends }).collect(),
            )
        } else {
            (
                listener.l4_routes.into_iter().map(|r| TcpRoute { name: r.name, backends: r.backends }).collect(),
                Vec::new(),
            )
        };
        used_certificates.extend(listener.certificates.iter().cloned());
        used_validations.extend(listener.client_validation.iter().cloned());
        listeners.push(Listener {
            name,
            port: u32::try_from(listener.port).unwrap_or_default(),
            protocol: listener.protocol as i32,
            hostname: listener.hostname.unwrap_or_default(),
            tls_mode: if listener.tls_passthrough {
                TlsMode::Passthrough as i32
            } else if listener.certificates.is_empty() {
                TlsMode::Unspecified as i32
            } else {
                TlsMode::Terminate as i32
            },
            certificates: listener.certificates,
            http_routes: listener.http_routes,
            tcp_routes,
            udp_routes,
            tls_routes: listener.tls_routes,
            client_validation: listener.client_validation.unwrap_or_default(),
        });
    }
    let infrastructure = plan.gateway.spec.infrastructure.as_ref();
    let mut clusters: Vec<Cluster> = clusters.into_values().map(|cluster| cluster.as_ref().clone()).collect();
    let mut certificates = plan.certificates;
    if let Some(client) = backend_client
        && clusters.iter().any(|c| c.tls.is_some())
    {
        for tls in clusters.iter_mut().filter_map(|c| c.tls.as_mut()) {
            tls.client_certificate = client.name.clone();
        }
        used_certificates.insert(client.name.clone());
        certificates.insert(client.name.clone(), client);
    }
    let snapshot = Snapshot {
        gateway: plan.key.to_string(),
        version: None,
        listeners,
        clusters,
        certificates: certificates
            .into_iter()
            .filter(|(name, _)| used_certificates.contains(name))
            .map(|(_, c)| c)
            .collect(),
        client_validations: plan
            .client_validations
            .into_iter()
            .filter(|(name, _)| used_validations.contains(name))
            .map(|(_, v)| v)
            .collect(),
    };
    GatewayOutput {
        snapshot,
        infra: Infra {
            ports: ports.into_iter().collect(),
            proxy_config: plan.proxy_config,
            labels: infrastructure.and_then(|i| i.labels.clone()).unwrap_or_default(),
            annotations: infrastructure.and_then(|i| i.annotations.clone()).unwrap_or_default(),
            requested_addresses: plan.requested_addresses,
        },
    }
}
