//! Incremental translation equals a full translation after every change.
//!
//! Random sequences of changes (EndpointSlices rewritten, added, removed or moved to
//! another Service; routes, Services and grants changed; objects replaced by equal
//! copies; the clock advanced) are applied to a World the way the controller does: when
//! `endpoints_only` allows it, the published snapshots are patched with
//! `refresh_endpoints`, else the World is translated again. After every step the result
//! must equal `translate` of the new World, status included.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::sync::Arc;

use proptest::prelude::*;
use sluice_translate::{Output, World, endpoints_only, refresh_endpoints, translate};

const SERVICES: [(&str, &str); 4] = [("apps", "s0"), ("apps", "s1"), ("apps", "s2"), ("other", "s3")];

fn base() -> World {
    let text = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sluice, generation: 1}
spec: {controllerName: sluice.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra, generation: 1}
spec:
  gatewayClassName: sluice
  listeners:
    - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
    - {name: dns, port: 53, protocol: UDP, allowedRoutes: {namespaces: {from: All}}}
    - {name: tcp, port: 9000, protocol: TCP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw2, namespace: infra, generation: 1}
spec:
  gatewayClassName: sluice
  listeners:
    - {name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
"#;
    let (world, skipped) = World::from_manifests(text);
    assert!(skipped.is_empty(), "{skipped:?}");
    world
}

fn one(text: &str) -> World {
    let (world, skipped) = World::from_manifests(text);
    assert!(skipped.is_empty(), "{skipped:?}\n{text}");
    world
}

fn service(index: usize, least_request: bool, h2c: bool) -> Arc<k8s_openapi::api::core::v1::Service> {
    let (namespace, name) = SERVICES[index];
    let annotation = if least_request { "annotations: {sluice.dev/load-balancing: least-request}" } else { "" };
    let app_protocol = if h2c { ", appProtocol: kubernetes.io/h2c" } else { "" };
    one(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}, {annotation}}}\nspec:\n  ports:\n    - {{name: http, port: 80, targetPort: 8080{app_protocol}}}\n    - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}\n    - {{name: raw, port: 9000, protocol: TCP, targetPort: 9000}}\n"
    ))
    .services
    .remove(0)
}

/// One endpoint of a generated slice: address octet, ready, serving, terminating.
type GenEndpoint = (u8, Option<bool>, Option<bool>, Option<bool>);

#[derive(Debug, Clone)]
struct GenSlice {
    /// Index into SERVICES, or None for a slice without the service-name label.
    service: Option<usize>,
    /// Namespace of the slice: the service's, or a wrong one.
    wrong_namespace: bool,
    fqdn: bool,
    ports: Vec<(&'static str, i32)>,
    endpoints: Vec<GenEndpoint>,
}

fn slice(name: &str, slice: &GenSlice) -> Arc<k8s_openapi::api::discovery::v1::EndpointSlice> {
    let namespace = match (slice.service, slice.wrong_namespace) {
        (Some(index), false) => SERVICES[index].0,
        (Some(_), true) | (None, _) => "elsewhere",
    };
    let labels = match slice.service {
        Some(index) => format!("labels: {{kubernetes.io/service-name: {}}}", SERVICES[index].1),
        None => String::new(),
    };
    let address_type = if slice.fqdn { "FQDN" } else { "IPv4" };
    let ports: Vec<String> = slice.ports.iter().map(|(name, port)| format!("{{name: {name}, port: {port}}}")).collect();
    let mut text = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: {namespace}, {labels}}}\naddressType: {address_type}\nports: [{}]\nendpoints:\n",
        ports.join(", ")
    );
    if slice.endpoints.is_empty() {
        text.push_str("  []\n");
    }
    for (octet, ready, serving, terminating) in &slice.endpoints {
        let address = if slice.fqdn { format!("host{octet}.example") } else { format!("10.0.0.{octet}") };
        let mut conditions = Vec::new();
        for (field, value) in [("ready", ready), ("serving", serving), ("terminating", terminating)] {
            if let Some(value) = value {
                conditions.push(format!("{field}: {value}"));
            }
        }
        text.push_str(&format!("  - addresses: [\"{address}\"]\n    conditions: {{{}}}\n", conditions.join(", ")));
    }
    one(&text).endpoint_slices.remove(0)
}

/// A route to Service `target`, of kind `kind` (0 HTTP on gw, 1 HTTP on both Gateways,
/// 2 gRPC, 3 UDP, 4 TCP).
fn route(name: &str, kind: u8, target: usize) -> World {
    let (namespace, service) = SERVICES[target];
    let backend = |port: u16| format!("[{{name: {service}, namespace: {namespace}, port: {port}}}]");
    let text = match kind {
        0 | 1 => {
            let parents = if kind == 0 {
                "[{name: gw, namespace: infra}]"
            } else {
                "[{name: gw, namespace: infra}, {name: gw2, namespace: infra}]"
            };
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: apps, generation: 1}}\nspec:\n  parentRefs: {parents}\n  rules:\n    - matches: [{{path: {{type: PathPrefix, value: /{name}}}}}]\n      backendRefs: {}\n",
                backend(80)
            )
        }
        2 => format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: apps, generation: 1}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra, sectionName: http}}]\n  hostnames: [{name}.grpc.example]\n  rules:\n    - backendRefs: {}\n",
            backend(80)
        ),
        3 => format!(
            "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: UDPRoute\nmetadata: {{name: {name}, namespace: apps, generation: 1}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra, sectionName: dns}}]\n  rules:\n    - backendRefs: {}\n",
            backend(53)
        ),
        _ => format!(
            "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {{name: {name}, namespace: apps, generation: 1}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra, sectionName: tcp}}]\n  rules:\n    - backendRefs: {}\n",
            backend(9000)
        ),
    };
    one(&text)
}

fn grant() -> World {
    one(
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: apps-to-other, namespace: other}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: apps}]\n  to: [{group: \"\", kind: Service}]\n",
    )
}

#[derive(Debug, Clone)]
enum Change {
    /// Rewrites (or adds) slice `n`.
    Slice(usize, GenSlice),
    RemoveSlice(usize),
    /// Points route `n` at another Service.
    Route(usize, u8, usize),
    RemoveRoute(usize),
    Service(usize, bool, bool),
    ToggleGrant,
    /// Replaces an object by an equal copy (a relist does that).
    CopyOfAService(usize),
    Clock(i64),
}

fn gen_slice() -> impl Strategy<Value = GenSlice> {
    let endpoint = (0u8..6, any::<Option<bool>>(), any::<Option<bool>>(), any::<Option<bool>>());
    (
        proptest::option::weighted(0.9, 0usize..SERVICES.len()),
        proptest::bool::weighted(0.1),
        proptest::bool::weighted(0.1),
        proptest::sample::subsequence(vec![("http", 8080), ("dns", 5353), ("raw", 9000), ("other", 7)], 0..=4),
        proptest::collection::vec(endpoint, 0..4),
    )
        .prop_map(|(service, wrong_namespace, fqdn, ports, endpoints)| GenSlice {
            service,
            wrong_namespace,
            fqdn,
            ports,
            endpoints,
        })
}

fn gen_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        6 => (0usize..6, gen_slice()).prop_map(|(n, s)| Change::Slice(n, s)),
        1 => (0usize..6).prop_map(Change::RemoveSlice),
        1 => (0usize..5, 0u8..5, 0usize..SERVICES.len()).prop_map(|(n, k, t)| Change::Route(n, k, t)),
        1 => (0usize..5).prop_map(Change::RemoveRoute),
        1 => (0usize..SERVICES.len(), any::<bool>(), any::<bool>()).prop_map(|(n, l, h)| Change::Service(n, l, h)),
        1 => Just(Change::ToggleGrant),
        1 => (0usize..SERVICES.len()).prop_map(Change::CopyOfAService),
        1 => (0i64..100).prop_map(Change::Clock),
    ]
}

/// The objects the changes act on, by slot; the World is assembled from them.
#[derive(Default, Clone)]
struct Model {
    services: Vec<Option<Arc<k8s_openapi::api::core::v1::Service>>>,
    slices: Vec<Option<Arc<k8s_openapi::api::discovery::v1::EndpointSlice>>>,
    routes: Vec<Option<World>>,
    grant: Option<World>,
    now: Option<i64>,
}

impl Model {
    fn new() -> Model {
        Model {
            services: (0..SERVICES.len()).map(|i| Some(service(i, false, false))).collect(),
            slices: vec![None; 6],
            routes: (0..5)
                .map(|n| Some(route(&format!("r{n}"), u8::try_from(n).unwrap(), n % SERVICES.len())))
                .collect(),
            grant: None,
            // The controller always translates with a clock.
            now: Some(1_000_000),
        }
    }

    fn apply(&mut self, change: &Change) {
        match change {
            Change::Slice(n, generated) => self.slices[*n] = Some(slice(&format!("slice-{n}"), generated)),
            Change::RemoveSlice(n) => self.slices[*n] = None,
            Change::Route(n, kind, target) => self.routes[*n] = Some(route(&format!("r{n}"), *kind, *target)),
            Change::RemoveRoute(n) => self.routes[*n] = None,
            Change::Service(n, least_request, h2c) => self.services[*n] = Some(service(*n, *least_request, *h2c)),
            Change::ToggleGrant => self.grant = if self.grant.is_some() { None } else { Some(grant()) },
            Change::CopyOfAService(n) => {
                self.services[*n] = self.services[*n].as_ref().map(|s| Arc::new(s.as_ref().clone()));
            }
            Change::Clock(step) => self.now = self.now.map(|now| now + step),
        }
    }

    /// The World, with `base`'s objects (shared, as a watch keeps them).
    fn world(&self, base: &World) -> World {
        let mut world = base.clone();
        world.services.extend(self.services.iter().flatten().cloned());
        world.endpoint_slices.extend(self.slices.iter().flatten().cloned());
        for extra in self.routes.iter().flatten().chain(self.grant.iter()) {
            world.extend(extra);
        }
        world.now = self.now;
        world
    }
}

/// What the controller holds after a change: the last World translated or patched, and
/// its output (snapshots included).
fn step(last: &mut Option<(World, Output)>, world: World) -> bool {
    let patched = match last.as_mut() {
        Some((before, output)) => match endpoints_only(before, &world, output.next_change_at) {
            Some(services) => {
                for gateway in output.gateways.values_mut() {
                    if let Some(snapshot) = refresh_endpoints(&world, &services, &gateway.snapshot) {
                        gateway.snapshot = snapshot;
                    }
                }
                *before = world.clone();
                true
            }
            None => false,
        },
        None => false,
    };
    if !patched {
        let output = translate(&world);
        *last = Some((world, output));
    }
    patched
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_full_after_every_change(changes in proptest::collection::vec(gen_change(), 1..24)) {
        let base = base();
        let mut model = Model::new();
        let mut last = None;
        step(&mut last, model.world(&base));
        for change in &changes {
            model.apply(change);
            let world = model.world(&base);
            let patched = step(&mut last, world.clone());
            match change {
                Change::Slice(..) | Change::RemoveSlice(..) | Change::Clock(_) => prop_assert!(patched, "{:?}", change),
                // Removing a route that is already gone changes nothing.
                Change::RemoveRoute(_) => {}
                _ => prop_assert!(!patched, "{:?}", change),
            }
            let (_, output) = last.as_ref().unwrap();
            prop_assert_eq!(output, &translate(&world), "after {:?}", change);
        }
    }
}

/// The fast path is taken for slice changes and changes something visible: a test of the
/// generator as much as of the code (a property that never patches proves nothing).
#[test]
fn a_slice_change_patches_the_endpoints_it_concerns() {
    let base = base();
    let mut model = Model::new();
    let mut last = None;
    step(&mut last, model.world(&base));
    let endpoints = |last: &Option<(World, Output)>| {
        let (_, output) = last.as_ref().unwrap();
        let gateway = &output.gateways[&sluice_translate::ObjectKey::new("infra", "gw")];
        gateway.snapshot.clusters.iter().find(|c| c.name == "service/apps/s0/port/80").unwrap().endpoints.len()
    };
    assert_eq!(endpoints(&last), 0);
    let generated = GenSlice {
        service: Some(0),
        wrong_namespace: false,
        fqdn: false,
        ports: vec![("http", 8080)],
        endpoints: vec![(1, Some(true), None, None), (2, Some(true), None, None)],
    };
    model.apply(&Change::Slice(0, generated));
    assert!(step(&mut last, model.world(&base)), "a slice change takes the fast path");
    assert_eq!(endpoints(&last), 2);
    assert_eq!(last.as_ref().unwrap().1, translate(&model.world(&base)));
}
