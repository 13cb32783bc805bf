//! Sluice's translator: one pure function from every watched object to what the
//! controller must do.
//!
//! ```text
//!  World (GatewayClasses, Gateways, ListenerSets, HTTPRoutes, GRPCRoutes, TCPRoutes,
//!         UDPRoutes, TLSRoutes, ReferenceGrants, BackendTLSPolicies, Services,
//!         EndpointSlices, Secrets, ConfigMaps, Namespaces, ProxyConfigs)
//!    │ translate()          no client, no clock, no I/O; deterministic
//!    ▼
//!  translation   classes ─► gateways (+ listenersets, frontend) ─► one plan per Gateway
//!    │           routes: every route kind, oldest first ─► compile (httproutes,
//!    │             grpcroutes, l4routes, backends) ─► attach through each parentRef
//!    │             (attach) ─► rules placed on listeners, conditions per parent
//!    ▼           finish: order each listener's routes (tlsroutes, RouteOrder)
//!  Output ── per Gateway (output): Snapshot (listeners → ordered routes, clusters,
//!         │                certificates, client certificate validations)
//!         │                Infra (ports, ProxyConfig, labels) for the deployer
//!         └─ status (conditions) of every GatewayClass, Gateway (+ listeners),
//!            ListenerSet and route parentRef
//! ```
//!
//! User mistakes never fail translation: they are typed problems (`problems`,
//! `rule_problems`, `attach::AttachProblem`, `backends::BackendError`) with `reason()` and
//! `message()`, which `conditions` turns into status conditions with the reasons Gateway
//! API v1.7.0 defines; invalid backends answer 500 for their share of traffic.

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

/// A backendRef as `backends` resolves it. Every route kind (and the mirror filter) has
/// its own generated backendRef type with the same fields, hence a macro.
macro_rules! backend_ref {
    ($backend:expr) => {{
        let backend = $backend;
        crate::backends::BackendRef {
            group: backend.group.as_deref(),
            kind: backend.kind.as_deref(),
            name: &backend.name,
            namespace: backend.namespace.as_deref(),
            port: backend.port,
        }
    }};
}

mod attach;
mod backend_client;
mod backends;
mod certificates;
mod classes;
mod conditions;
mod conflicts;
mod features;
mod frontend;
mod gateways;
mod grpcroutes;
mod httpfilters;
mod httproutes;
mod incremental;
mod index;
mod l4routes;
mod listenersets;
mod output;
mod policies;
mod problems;
mod route_patch;
mod routes;
mod rule_problems;
mod shared_map;
pub mod status;
mod tlsroutes;
mod translation;
mod world;

use std::collections::BTreeMap;

use sluice_crds::ProxyConfigSpec;
use sluice_snapshot::Snapshot;

pub use classes::SUPPORTED_BUNDLE_VERSIONS;
pub use features::SUPPORTED_FEATURES;
pub use incremental::{endpoints_concern, endpoints_only, refresh_endpoints};
pub use index::ObjectKey;
pub use policies::{PolicyAncestorStatus, PolicyStatus};
pub use route_patch::{MAX_CHANGED, RoutePatch, routes_only};
pub use shared_map::SharedMap;
pub use status::{
    CONTROLLER_NAME, Condition, ConditionStatus, GatewayClassStatus, GatewayStatus, ListenerSetStatus, ListenerStatus,
    ParentRef, RouteGroupKind, RouteParentStatus, RouteStatus,
};
pub use translation::translate;
pub use world::{Skipped, World};

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
    /// Per accepted Gateway, what a route change needs to patch the output in place.
    #[serde(skip)]
    pub(crate) orders: BTreeMap<ObjectKey, translation::Orders>,
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
    pub http_routes: SharedMap<ObjectKey, RouteStatus>,
    pub grpc_routes: SharedMap<ObjectKey, RouteStatus>,
    pub tcp_routes: SharedMap<ObjectKey, RouteStatus>,
    pub udp_routes: SharedMap<ObjectKey, RouteStatus>,
    pub tls_routes: SharedMap<ObjectKey, RouteStatus>,
    /// Every BackendTLSPolicy targeting a Service: Sluice's ancestors (none when no
    /// Gateway of Sluice's uses a targeted port).
    pub backend_tls_policies: SharedMap<ObjectKey, PolicyStatus>,
}
