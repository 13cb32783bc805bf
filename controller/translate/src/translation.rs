//! The translation pass: plans every Gateway of ours, attaches every route kind in
//! turn, then orders what each listener got and emits outputs and status.

use std::collections::BTreeMap;

use sluice_snapshot::Cluster;

use crate::attach::{is_gateway_ref, is_listener_set_ref};
use crate::backends::ClusterCache;
use crate::conditions::{gateway_status, listener_status};
use crate::gateways::{GatewayPlan, plan_gateway};
use crate::httproutes::{Age, RouteOrder, by_age};
use crate::index::{Index, ObjectKey};
use crate::l4routes::L4Rule;
use crate::output::gateway_output;
use crate::tlsroutes::TlsOrder;
use crate::{Output, ParentRef, World, backend_client, classes, listenersets, policies};

/// Snapshot routes placed on one listener of one Gateway, before ordering.
pub(crate) type Placed<O, R> = BTreeMap<(ObjectKey, usize), Vec<(O, R)>>;

/// State of one translation pass.
pub(crate) struct Translation<'w> {
    pub(crate) index: Index<'w>,
    pub(crate) plans: BTreeMap<ObjectKey, GatewayPlan<'w>>,
    /// ListenerSets whose parent is one of our Gateways: the Gateway and the set's index
    /// in its plan.
    pub(crate) listener_set_parents: BTreeMap<ObjectKey, (ObjectKey, usize)>,
    pub(crate) cache: ClusterCache<'w>,
    /// Per Gateway: the clusters its routes use, each with how many route attachments
    /// use it.
    pub(crate) clusters: BTreeMap<ObjectKey, BTreeMap<String, (std::sync::Arc<Cluster>, usize)>>,
    pub(crate) placements: Placements,
}

/// What the routes placed on each listener, before ordering.
#[derive(Default)]
pub(crate) struct Placements {
    /// HTTPRoute and GRPCRoute rules per HTTP(S) listener.
    pub(crate) http: Placed<RouteOrder, sluice_snapshot::HttpRoute>,
    /// TCP and UDP rules per listener (a listener is one or the other).
    pub(crate) l4: Placed<Age, Vec<L4Rule>>,
    /// TLSRoutes per TLS listener.
    pub(crate) tls: Placed<TlsOrder, sluice_snapshot::TlsRoute>,
}

/// Translates the whole World. Pure and deterministic.
pub fn translate(world: &World) -> Output {
    let mut output = Output::default();
    let mut pass = Translation::new(world, &mut output.status.gateway_classes);
    let [mut http, mut grpc, mut tcp, mut udp, mut tls] = <[BTreeMap<ObjectKey, crate::RouteStatus>; 5]>::default();
    pass.attach_routes(&world.http_routes, &mut http);
    pass.attach_routes(&world.grpc_routes, &mut grpc);
    pass.attach_routes(&world.tcp_routes, &mut tcp);
    pass.attach_routes(&world.udp_routes, &mut udp);
    pass.attach_routes(&world.tls_routes, &mut tls);
    let status = &mut output.status;
    (status.http_routes, status.grpc_routes, status.tcp_routes) = (http.into(), grpc.into(), tcp.into());
    (status.udp_routes, status.tls_routes) = (udp.into(), tls.into());
    output.next_change_at = pass.index.next_change.get();
    pass.finish(&mut output);
    output
}

impl<'w> Translation<'w> {
    /// Plans every Gateway of ours (with its ListenerSets), before any route attaches;
    /// the GatewayClasses' status goes to `class_status`.
    pub(crate) fn new(
        world: &'w World,
        class_status: &mut BTreeMap<String, crate::GatewayClassStatus>,
    ) -> Translation<'w> {
        let index = Index::new(world);
        let classes = classes::translate_classes(world, &index, class_status);
        let mut listener_sets: BTreeMap<ObjectKey, Vec<&sluice_gateway_api::listenersets::ListenerSet>> =
            BTreeMap::new();
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
        Translation {
            index,
            plans,
            listener_set_parents,
            cache: ClusterCache::new(policies),
            clusters: BTreeMap::new(),
            placements: Placements::default(),
        }
    }

    /// The Gateway of ours a parentRef leads to, and whether through one of its
    /// ListenerSets (its index in the Gateway's plan). Other parents get no status from
    /// Sluice (another controller, or nothing, owns them).
    pub(crate) fn resolve_parent(&self, parent: &ParentRef, route: &ObjectKey) -> Option<(ObjectKey, Option<usize>)> {
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

    /// Records that one attachment of a route to `gateway` uses `clusters`.
    pub(crate) fn add_clusters(
        all: &mut BTreeMap<ObjectKey, BTreeMap<String, (std::sync::Arc<Cluster>, usize)>>,
        gateway: &ObjectKey,
        clusters: &[std::sync::Arc<Cluster>],
    ) {
        let gateway_clusters = match all.get_mut(gateway) {
            Some(existing) => existing,
            None => all.entry(gateway.clone()).or_default(),
        };
        for cluster in clusters {
            match gateway_clusters.get_mut(&cluster.name) {
                Some((_, uses)) => *uses += 1,
                None => {
                    gateway_clusters.insert(cluster.name.clone(), (cluster.clone(), 1));
                }
            }
        }
    }

    /// Orders every listener's routes and emits status and outputs per Gateway.
    fn finish(mut self, output: &mut Output) {
        output.status.backend_tls_policies = self.cache.policies.status().into();
        let Placements { http, l4, tls } = std::mem::take(&mut self.placements);
        let mut orders: BTreeMap<ObjectKey, Orders> = BTreeMap::new();
        for ((gateway, listener), placed) in in_order(http) {
            if let Some(plan) = self.plans.get_mut(&gateway) {
                let (keys, routes) = placed.into_iter().unzip();
                plan.listeners[listener].http_routes = routes;
                orders.entry(gateway).or_default().http.insert(listener, keys);
            }
        }
        for ((gateway, listener), placed) in in_order(l4) {
            if let Some(plan) = self.plans.get_mut(&gateway) {
                let mut keys = Vec::new();
                let mut rules = Vec::new();
                for (age, route_rules) in placed {
                    keys.extend(std::iter::repeat_n(age, route_rules.len()));
                    rules.extend(route_rules);
                }
                plan.listeners[listener].l4_routes = rules;
                orders.entry(gateway).or_default().l4.insert(listener, keys);
            }
        }
        for ((gateway, listener), placed) in in_order(tls) {
            if let Some(plan) = self.plans.get_mut(&gateway) {
                let (keys, routes) = placed.into_iter().unzip();
                plan.listeners[listener].tls_routes = routes;
                orders.entry(gateway).or_default().tls.insert(listener, keys);
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
                let mut clusters = BTreeMap::new();
                let mut gateway_orders = orders.remove(&key).unwrap_or_default();
                for (name, (cluster, uses)) in self.clusters.remove(&key).unwrap_or_default() {
                    gateway_orders.cluster_uses.insert(name.clone(), uses);
                    clusters.insert(name, cluster);
                }
                output.orders.insert(key.clone(), gateway_orders);
                output.gateways.insert(key, gateway_output(plan, clusters, client.and_then(Result::ok)));
            }
        }
    }
}

/// What the fast path for route changes (`incremental::RoutePatch`) needs of one
/// accepted Gateway's translation: the order keys of each served listener's entries
/// (parallel to the snapshot's lists; listeners by their index in the plan) and how many
/// route attachments use each cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Orders {
    pub(crate) http: BTreeMap<usize, Vec<RouteOrder>>,
    /// One key per TCP or UDP rule.
    pub(crate) l4: BTreeMap<usize, Vec<Age>>,
    pub(crate) tls: BTreeMap<usize, Vec<TlsOrder>>,
    pub(crate) cluster_uses: BTreeMap<String, usize>,
}

/// The routes placed on each listener, each listener's in their order (a stable sort:
/// entries with equal keys keep the order they were placed in).
fn in_order<O: Ord, R>(placed: Placed<O, R>) -> impl Iterator<Item = ((ObjectKey, usize), Vec<(O, R)>)> {
    placed.into_iter().map(|(at, mut routes)| {
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        (at, routes)
    })
}
