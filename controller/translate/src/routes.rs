//! Attaching routes of every kind to the listeners of our Gateways and placing their
//! rules there.

use crate::attach::{Attachment, attach, hostname_rank};
use crate::conditions::route_conditions;
use crate::httproutes::{CompiledRoute, RouteKind, compile_route, place_rule};
use crate::index::ObjectKey;
use crate::l4routes::{L4Route, compile_l4_route};
use crate::status::reason;
use crate::tlsroutes::place_tls_route;
use crate::translation::Translation;
use crate::{CONTROLLER_NAME, ParentRef, RouteParentStatus, RouteStatus, grpcroutes};
use sluice_snapshot::Protocol;

impl Translation<'_> {
    pub(crate) fn http_route(
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

    pub(crate) fn grpc_route(
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

    pub(crate) fn l4_route<R: L4Route>(&mut self, route: &R, rank: usize) -> Option<(ObjectKey, RouteStatus)> {
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
}
