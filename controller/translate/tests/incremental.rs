//! Incremental translation equals a full translation after every change.
//!
//! Random sequences of changes (EndpointSlices rewritten, added, removed or moved to
//! another Service; routes of every kind added, rewritten or removed, with random ages,
//! paths and hostnames; Services and grants changed; objects replaced by equal copies;
//! the clock advanced), one to three per step, are applied to a World the way the
//! controller does: when `endpoints_only` allows it, the published snapshots are patched
//! with `refresh_endpoints`; when `routes_only` allows it, with a `RoutePatch`; else the
//! World is translated again. After every step the result must equal `translate` of the
//! new World, status included.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::sync::Arc;

use proptest::prelude::*;
use sluice_translate::{Output, World, endpoints_concern, endpoints_only, refresh_endpoints, routes_only, translate};

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
    - {name: tls, port: 8443, protocol: TLS, tls: {mode: Passthrough}, allowedRoutes: {namespaces: {from: All}}}
    - {name: site, port: 80, protocol: HTTP, hostname: "*.site.example", allowedRoutes: {namespaces: {from: Same}}}
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

/// How a generated route looks: its kind (0 HTTP on gw, 1 HTTP on both Gateways, 2 gRPC,
/// 3 UDP, 4 TCP, 5 TLS), target Service, creation day (None: no timestamp), path and
/// hostname (shared between routes, so that their entries compete on one listener).
#[derive(Debug, Clone, Copy)]
struct GenRoute {
    kind: u8,
    target: usize,
    created: Option<u8>,
    path: u8,
    host: Option<u8>,
}

fn route(name: &str, generated: GenRoute) -> World {
    let GenRoute { kind, target, created, path, host } = generated;
    let (namespace, service) = SERVICES[target];
    let backend = |port: u16| format!("[{{name: {service}, namespace: {namespace}, port: {port}}}]");
    let created =
        created.map(|day| format!(", creationTimestamp: \"2026-01-0{}T00:00:00Z\"", day + 1)).unwrap_or_default();
    let meta = format!("metadata: {{name: {name}, namespace: apps, generation: 1{created}}}");
    let hostnames = match host {
        Some(0) => "  hostnames: [\"*.site.example\"]\n".to_string(),
        Some(h) => format!("  hostnames: [h{h}.site.example]\n"),
        None => String::new(),
    };
    let text = match kind {
        0 | 1 => {
            let parents = if kind == 0 {
                "[{name: gw, namespace: infra}]"
            } else {
                "[{name: gw, namespace: infra}, {name: gw2, namespace: infra}]"
            };
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n{meta}\nspec:\n  parentRefs: {parents}\n{hostnames}  rules:\n    - matches: [{{path: {{type: PathPrefix, value: /p{path}}}}}]\n      backendRefs: {}\n    - matches: [{{path: {{type: Exact, value: /{name}}}}}]\n      backendRefs: {}\n",
                backend(80),
                backend(80)
            )
        }
        2 => format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n{meta}\nspec:\n  parentRefs: [{{name: gw, namespace: infra, sectionName: http}}]\n  hostnames: [g{path}.grpc.example]\n  rules:\n    - backendRefs: {}\n",
            backend(80)
        ),
        3 => format!(
            "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: UDPRoute\n{meta}\nspec:\n  parentRefs: [{{name: gw, namespace: infra, sectionName: dns}}]\n  rules:\n    - backendRefs: {}\n",
            backend(53)
        ),
        4 => format!(
            "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\n{meta}\nspec:\n  parentRefs: [{{name: gw, namespace: infra, sectionName: tcp}}]\n  rules:\n    - backendRefs: {}\n",
            backend(9000)
        ),
        _ => format!(
            "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\n{meta}\nspec:\n  parentRefs: [{{name: gw, namespace: infra, sectionName: tls}}]\n  hostnames: [t{path}.tls.example, \"*.tls.example\"]\n  rules:\n    - backendRefs: {}\n",
            backend(9000)
        ),
    };
    one(&text)
}

fn gen_route() -> impl Strategy<Value = GenRoute> {
    (0u8..6, 0usize..SERVICES.len(), proptest::option::of(0u8..3), 0u8..3, proptest::option::of(0u8..3))
        .prop_map(|(kind, target, created, path, host)| GenRoute { kind, target, created, path, host })
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
    /// Rewrites (or adds) route `n`.
    Route(usize, GenRoute),
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
        3 => (0usize..5, gen_route()).prop_map(|(n, r)| Change::Route(n, r)),
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
                .map(|n| {
                    let kind = u8::try_from(n).unwrap();
                    let generated = GenRoute { kind, target: n % SERVICES.len(), created: None, path: 0, host: None };
                    Some(route(&format!("r{n}"), generated))
                })
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
            Change::Route(n, generated) => self.routes[*n] = Some(route(&format!("r{n}"), *generated)),
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

/// Whether two one-route Worlds hold the same route object.
fn same_routes(a: &World, b: &World) -> bool {
    fn same<T>(a: &[Arc<T>], b: &[Arc<T>]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(a, b)| Arc::ptr_eq(a, b))
    }
    same(&a.http_routes, &b.http_routes)
        && same(&a.grpc_routes, &b.grpc_routes)
        && same(&a.tcp_routes, &b.tcp_routes)
        && same(&a.udp_routes, &b.udp_routes)
        && same(&a.tls_routes, &b.tls_routes)
}

/// Which way a step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Endpoints,
    Routes,
    Full,
}

/// What the controller holds after a change: the last World translated or patched, and
/// its output (snapshots included).
fn step(last: &mut Option<(World, Output)>, world: World) -> Path {
    if let Some((before, output)) = last.as_mut() {
        if let Some(services) = endpoints_only(before, &world, output.next_change_at) {
            for gateway in output.gateways.values_mut() {
                let before = gateway.snapshot.clone();
                let edits = refresh_endpoints(&world, &services, &mut gateway.snapshot);
                assert!(
                    endpoints_concern(&services, &before) || gateway.snapshot == before,
                    "a snapshot no Service concerns was edited"
                );
                // The delta from the recorded edits makes the refreshed snapshot of the last.
                let delta = edits.delta(&gateway.snapshot).expect("the edits describe the refreshed snapshot");
                assert_eq!(sluice_snapshot::delta::apply(&before, &delta).unwrap(), gateway.snapshot);
            }
            *before = world;
            return Path::Endpoints;
        }
        if let Some(patch) = routes_only(before, &world, output) {
            for key in patch.gateways() {
                let Some(mut snapshot) = output.gateways.get_mut(&key).map(|g| std::mem::take(&mut g.snapshot)) else {
                    continue;
                };
                let before = snapshot.clone();
                let edits = patch.patch_snapshot(output, &key, &mut snapshot);
                // The delta from the recorded edits makes the patched snapshot of the last.
                let delta = edits.delta(&snapshot).expect("the edits describe the patched snapshot");
                assert_eq!(sluice_snapshot::delta::apply(&before, &delta).unwrap(), snapshot, "{key}");
                output.gateways.get_mut(&key).unwrap().snapshot = snapshot;
            }
            patch.patch_status(&mut output.status);
            *before = world;
            return Path::Routes;
        }
    }
    let output = translate(&world);
    *last = Some((world, output));
    Path::Full
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_full_after_every_change(
        steps in proptest::collection::vec(proptest::collection::vec(gen_change(), 1..4), 1..24)
    ) {
        let base = base();
        let mut model = Model::new();
        let mut last = None;
        step(&mut last, model.world(&base));
        for changes in &steps {
            let before = model.clone();
            for change in changes {
                model.apply(change);
            }
            let world = model.world(&base);
            let path = step(&mut last, world.clone());
            let endpoints = |c: &Change| matches!(c, Change::Slice(..) | Change::RemoveSlice(..) | Change::Clock(_));
            let routes = |c: &Change| matches!(c, Change::Route(..) | Change::RemoveRoute(_));
            if changes.iter().all(endpoints) {
                prop_assert_eq!(path, Path::Endpoints, "{:?}", changes);
            } else if changes.iter().all(routes) {
                // Removing routes that are already gone changes nothing.
                let unchanged = before.routes.iter().zip(&model.routes).all(|(a, b)| match (a, b) {
                    (None, None) => true,
                    (Some(a), Some(b)) => same_routes(a, b),
                    _ => false,
                });
                prop_assert!(path == Path::Routes || unchanged, "{:?} went {:?}", changes, path);
            } else if changes.iter().any(|c| matches!(c, Change::Service(..) | Change::CopyOfAService(_)))
                || before.grant.is_some() != model.grant.is_some()
            {
                prop_assert_eq!(path, Path::Full, "{:?}", changes);
            }
            let (_, output) = last.as_ref().unwrap();
            prop_assert_eq!(output, &translate(&world), "after {:?}", changes);
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
    assert_eq!(step(&mut last, model.world(&base)), Path::Endpoints, "a slice change takes the fast path");
    assert_eq!(endpoints(&last), 2);
    assert_eq!(last.as_ref().unwrap().1, translate(&model.world(&base)));
}

/// A route change takes the route path and lands in the snapshot at its place.
#[test]
fn a_route_change_patches_the_listeners_it_concerns() {
    let base = base();
    let mut model = Model::new();
    let mut last = None;
    step(&mut last, model.world(&base));
    let older = GenRoute { kind: 0, target: 1, created: Some(0), path: 1, host: None };
    model.apply(&Change::Route(3, older));
    assert_eq!(step(&mut last, model.world(&base)), Path::Routes);
    let names = |last: &Option<(World, Output)>| {
        let (_, output) = last.as_ref().unwrap();
        let gateway = &output.gateways[&sluice_translate::ObjectKey::new("infra", "gw")];
        let listener = gateway.snapshot.listeners.iter().find(|l| l.name.ends_with("/listener/http")).unwrap();
        listener.http_routes.iter().map(|r| r.name.clone()).collect::<Vec<_>>()
    };
    // r3 has a creation timestamp: it is older than every route without one, so its
    // rules come before r0's and r1's equal ones.
    let got = names(&last);
    let r3 = got.iter().position(|n| n.starts_with("httproute/apps/r3/")).unwrap();
    let r0 = got.iter().position(|n| n.starts_with("httproute/apps/r0/")).unwrap();
    assert!(r3 < r0, "{got:?}");
    assert_eq!(last.as_ref().unwrap().1, translate(&model.world(&base)));
    model.apply(&Change::RemoveRoute(3));
    assert_eq!(step(&mut last, model.world(&base)), Path::Routes);
    assert!(!names(&last).iter().any(|n| n.starts_with("httproute/apps/r3/")));
    assert_eq!(last.as_ref().unwrap().1, translate(&model.world(&base)));
}
