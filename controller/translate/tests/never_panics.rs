//! Property test: translation never panics and only ever emits snapshots the data plane
//! accepts, whatever objects (valid or not) the World holds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};
use sluice_translate::{World, translate};

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

fn opt(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    prop_oneof![1 => Just(Value::Null), 3 => value]
}

const NAMES: &[&str] = &["a", "a", "b"];
const NAMESPACES: &[&str] = &["default", "default", "default", "ns1", "ns2"];
const HOSTS: &[&str] =
    &["", "example.com", "a.example.com", "*.example.com", "*.a.example.com", "*", "Bad_Host", "a..b"];
const PATHS: &[&str] = &[
    "/",
    "/foo",
    "/foo/",
    "",
    "foo",
    "/(",
    "^/v[0-9]+$",
    "/a/b/c",
    "(?P<x",
    "/%2F",
    "(?x)a#",
    "/x\r\nX-Evil: 1",
    "/a b",
    "/é",
    r"\w{1000}\w{1000}",
];
const PORTS: &[i64] = &[80, 80, 80, 443, 8080, 0, -1, 70000, 9000];
const WEIGHTS: &[i64] = &[0, 1, 5, -3, 1_000_000];

fn hostname() -> impl Strategy<Value = Value> {
    pick(HOSTS).prop_map(|h| json!(h))
}

fn backend_ref() -> impl Strategy<Value = Value> {
    (pick(NAMES), opt(pick(NAMESPACES).prop_map(|n| json!(n))), opt(pick(PORTS).prop_map(|p| json!(p))),
     opt(pick(WEIGHTS).prop_map(|w| json!(w))), pick(&["Service", "Service", "Foo", ""]), pick(&["", "", "example.com"]))
        .prop_map(|(name, namespace, port, weight, kind, group)| {
            json!({"name": name, "namespace": namespace, "port": port, "weight": weight, "kind": kind, "group": group})
        })
}

const GOOD_PATHS: &[&str] = &["/", "/foo", "/a/b/c", "/foo/"];

fn http_match() -> impl Strategy<Value = Value> {
    (pick(&["Exact", "PathPrefix", "PathPrefix", "RegularExpression"]), prop_oneof![4 => pick(GOOD_PATHS), 1 => pick(PATHS)], proptest::collection::vec((pick(&["x-a", "X-A", "b", "bad name"]), prop_oneof![4 => pick(GOOD_PATHS), 1 => pick(PATHS)], pick(&["Exact", "Exact", "RegularExpression"])), 0..2),
     opt(pick(&["GET", "POST", "PATCH"]).prop_map(|m| json!(m))))
        .prop_map(|(kind, value, headers, method)| {
            let headers: Vec<Value> = headers.into_iter().map(|(n, v, t)| json!({"name": n, "value": v, "type": t})).collect();
            json!({"path": {"type": kind, "value": value}, "headers": headers, "queryParams": [{"name": "q", "value": "1"}], "method": method})
        })
}

fn filter() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => Just(json!({"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}], "remove": ["y"]}})),
        8 => Just(json!({"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x", "value": "1"}]}})),
        8 => Just(json!({"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/p"}}})),
        1 => Just(json!({"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "bad name", "value": "1"}]}})),
        1 => (opt(pick(PORTS).prop_map(|p| json!(p))), pick(&[301i64, 302, 200, 308])).prop_map(|(port, code)| json!({"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "port": port, "statusCode": code}})),
        1 => Just(json!({"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}})),
        1 => Just(json!({"type": "URLRewrite", "urlRewrite": {"hostname": "rewritten.example.com", "path": {"type": "ReplaceFullPath", "replaceFullPath": "/x"}}})),
        1 => Just(json!({"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch"}}})),
        1 => pick(PATHS).prop_map(|p| json!({"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": p}}})),
        1 => pick(PATHS).prop_map(|p| json!({"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplaceFullPath", "replaceFullPath": p}}})),
        1 => pick(&["a\r\nb", "é", "ok", "\u{0}"]).prop_map(|v| json!({"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": v}]}})),
        1 => (backend_ref(), opt(pick(&[0i64, 50, 100, 150]).prop_map(|p| json!(p)))).prop_map(|(b, percent)| json!({"type": "RequestMirror", "requestMirror": {"backendRef": b, "percent": percent}})),
        1 => Just(json!({"type": "ExtensionRef", "extensionRef": {"group": "x", "kind": "Y", "name": "z"}})),
        1 => Just(json!({"type": "RequestMirror"})),
    ]
}

fn http_route() -> impl Strategy<Value = Value> {
    let rule = (proptest::collection::vec(http_match(), 0..3), proptest::collection::vec(filter(), 0..2),
                proptest::collection::vec(backend_ref(), 0..3), prop_oneof![4 => Just(Value::Null), 1 => pick(&["10s", "1ms", "bogus", "0s"]).prop_map(|t| json!({"request": "5s", "backendRequest": t}))])
        .prop_map(|(matches, filters, backends, timeouts)| json!({"matches": matches, "filters": filters, "backendRefs": backends, "timeouts": timeouts}));
    (pick(NAMES), pick(NAMESPACES), prop_oneof![3 => Just(vec![]), 1 => proptest::collection::vec(hostname(), 1..3)], proptest::collection::vec(parent_ref(), 1..3),
     proptest::collection::vec(rule, 0..3), 0i64..5)
        .prop_map(|(name, namespace, hostnames, parents, rules, age)| json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": namespace, "generation": 2, "creationTimestamp": format!("2026-01-0{}T00:00:00Z", age + 1)},
            "spec": {"hostnames": hostnames, "parentRefs": parents, "rules": rules}
        }))
}

fn parent_ref() -> impl Strategy<Value = Value> {
    (pick(NAMES), opt(pick(NAMESPACES).prop_map(|n| json!(n))), prop_oneof![2 => Just(Value::Null), 1 => pick(&["http", "https", "tcp", "nope"]).prop_map(|s| json!(s))],
     prop_oneof![2 => Just(Value::Null), 1 => pick(PORTS).prop_map(|p| json!(p))], pick(&["Gateway", "Gateway", "Gateway", "Gateway", "Service"]))
        .prop_map(|(name, namespace, section, port, kind)| json!({"name": name, "namespace": namespace, "sectionName": section, "port": port, "kind": kind}))
}

fn listener() -> impl Strategy<Value = Value> {
    (pick(&["http", "https", "tcp", "http", "tls"]), pick(PORTS), pick(&["HTTP", "HTTP", "HTTP", "HTTPS", "TCP", "TLS", "TLS", "UDP", "example.com/x"]), opt(hostname()),
     pick(&["Same", "All", "All", "Selector"]), prop_oneof![3 => Just(vec![]), 1 => proptest::collection::vec(pick(&["HTTPRoute", "TCPRoute", "GRPCRoute", "TLSRoute"]), 1..3)],
     proptest::collection::vec((pick(NAMES), opt(pick(NAMESPACES).prop_map(|n| json!(n)))), 0..2), opt(pick(&["Terminate", "Passthrough"]).prop_map(|m| json!(m))))
        .prop_map(|(name, port, protocol, hostname, from, kinds, certs, mode)| {
            let kinds: Vec<Value> = kinds.into_iter().map(|k| json!({"kind": k})).collect();
            let certs: Vec<Value> = certs.into_iter().map(|(n, ns)| json!({"name": n, "namespace": ns})).collect();
            json!({"name": name, "port": port, "protocol": protocol, "hostname": hostname,
                   "allowedRoutes": {"namespaces": {"from": from, "selector": {"matchLabels": {"team": "a"}}}, "kinds": kinds},
                   "tls": {"mode": mode, "certificateRefs": certs}})
        })
}

fn gateway() -> impl Strategy<Value = Value> {
    (pick(NAMES), pick(NAMESPACES), pick(&["sluice", "sluice", "sluice", "sluice", "sluice", "other", "missing"]), proptest::collection::vec(listener(), 0..3).prop_map(|mut listeners| {
        // One plain listener first, so that most worlds reach route programming.
        listeners.insert(0, json!({"name": "web", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}));
        // And one for TLS passthrough, so that TLSRoutes are programmed too.
        listeners.insert(1, json!({"name": "pass", "port": 8443, "protocol": "TLS", "tls": {"mode": "Passthrough"}, "allowedRoutes": {"namespaces": {"from": "All"}}}));
        listeners
    }),
     prop_oneof![6 => Just(Value::Null), 1 => pick(&["1.2.3.4", "not-an-ip"]).prop_map(|a| json!([{"value": a}]))])
        .prop_map(|(name, namespace, class, listeners, addresses)| json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": {"gatewayClassName": class, "listeners": listeners, "addresses": addresses}
        }))
}

fn tcp_route() -> impl Strategy<Value = Value> {
    (
        pick(NAMES),
        pick(NAMESPACES),
        proptest::collection::vec(parent_ref(), 0..2),
        proptest::collection::vec(backend_ref(), 0..3),
    )
        .prop_map(|(name, namespace, parents, backends)| {
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"parentRefs": parents, "rules": [{"backendRefs": backends}]}
            })
        })
}

fn tls_route() -> impl Strategy<Value = Value> {
    (
        pick(NAMES),
        pick(NAMESPACES),
        prop_oneof![1 => Just(vec![]), 4 => proptest::collection::vec(hostname(), 1..3)],
        proptest::collection::vec(parent_ref(), 1..3),
        prop_oneof![1 => Just(vec![]), 6 => proptest::collection::vec(backend_ref(), 1..3).prop_map(|b| vec![b]), 1 => proptest::collection::vec(proptest::collection::vec(backend_ref(), 1..3), 2..3)],
        0i64..3,
    )
        .prop_map(|(name, namespace, hostnames, parents, rules, age)| {
            let rules: Vec<Value> = rules.into_iter().map(|backends| json!({"backendRefs": backends})).collect();
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "TLSRoute",
                "metadata": {"name": name, "namespace": namespace, "generation": 2, "creationTimestamp": format!("2026-01-0{}T00:00:00Z", age + 1)},
                "spec": {"hostnames": hostnames, "parentRefs": parents, "rules": rules}
            })
        })
}

fn service() -> impl Strategy<Value = Value> {
    (
        pick(NAMES),
        pick(NAMESPACES),
        pick(PORTS),
        pick(&["", "kubernetes.io/h2c", "kubernetes.io/ws", "kubernetes.io/wss", "https"]),
    )
        .prop_map(|(name, namespace, port, app)| {
            json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
                "spec": {"ports": [{"name": "web", "port": port, "appProtocol": app}]}
            })
        })
}

fn endpoint_slice() -> impl Strategy<Value = Value> {
    (pick(NAMES), pick(NAMESPACES), pick(&["10.0.0.1", "fd00::1", "not-ip"]), any::<bool>(), any::<bool>(), pick(PORTS))
        .prop_map(|(service, namespace, address, ready, terminating, port)| json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{service}-x"), "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "web", "port": port}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": ready, "serving": true, "terminating": terminating}}]
        }))
}

fn grant() -> impl Strategy<Value = Value> {
    (pick(NAMESPACES), pick(NAMESPACES), pick(&["HTTPRoute", "Gateway", "TCPRoute", "TLSRoute"]), pick(&["Service", "Secret"]), opt(pick(NAMES).prop_map(|n| json!(n))))
        .prop_map(|(namespace, from, from_kind, to_kind, name)| json!({
            "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": "g", "namespace": namespace},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": from_kind, "namespace": from}], "to": [{"group": "", "kind": to_kind, "name": name}]}
        }))
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../dataplane/tests/fixtures");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

fn secret() -> impl Strategy<Value = Value> {
    let garbage_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_string();
    let pairs = vec![
        ("garbage".to_string(), garbage_key.clone()),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_string(), garbage_key),
        (fixture("a.example.com.crt"), fixture("a.example.com.key")),
        // A key of another certificate: rustls would fail every handshake.
        (fixture("a.example.com.crt"), fixture("wild.key")),
    ];
    (pick(NAMES), pick(NAMESPACES), proptest::sample::select(pairs))
        .prop_map(|(name, namespace, (crt, key))| json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": name, "namespace": namespace},
            "stringData": {"tls.crt": crt, "tls.key": key}
        }))
}

fn objects() -> impl Strategy<Value = Vec<Value>> {
    let class = pick(&["sluice", "other"]).prop_map(|name| json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": name},
        "spec": {"controllerName": if name == "sluice" { "sluice.dev/gateway-controller" } else { "example.com/other" }}
    }));
    let namespace = pick(NAMESPACES).prop_map(
        |name| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"team": "a"}}}),
    );
    (proptest::collection::vec(class, 0..2).prop_map(|mut c| { c.push(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "sluice"}, "spec": {"controllerName": "sluice.dev/gateway-controller"}})); c }), proptest::collection::vec(gateway(), 1..3), proptest::collection::vec(http_route(), 0..5),
     proptest::collection::vec(tcp_route(), 0..2), proptest::collection::vec(service(), 0..4), proptest::collection::vec(endpoint_slice(), 0..4),
     proptest::collection::vec(grant(), 0..2), proptest::collection::vec(secret(), 0..2), proptest::collection::vec(namespace, 0..2),
     proptest::collection::vec(tls_route(), 0..3))
        .prop_map(|(a, b, c, d, e, f, g, h, i, j)| [a, b, c, d, e, f, g, h, i, j].concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn translate_never_panics_and_emits_valid_snapshots(objects in objects()) {
        let text: String = objects.iter().map(|o| format!("---\n{}", serde_saphyr::to_string(o).unwrap())).collect();
        let (world, _skipped) = World::from_manifests(&text);
        let output = translate(&world);
        for (gateway, out) in &output.gateways {
            // The data plane's compile: validate() plus the shared regex and certificate
            // compile (regexes are compiled by validate()).
            if let Err(error) = sluice_snapshot::validate(&out.snapshot) {
                prop_assert!(false, "gateway {gateway}: {error}\ninput:\n{text}");
            }
            for certificate in &out.snapshot.certificates {
                let loaded = sluice_snapshot::compile::load_certificate(&certificate.cert_chain_pem, &certificate.private_key_pem);
                prop_assert!(loaded.is_ok(), "gateway {gateway}: {}: {:?}", certificate.name, loaded.err());
            }
        }
        // Every route parent status names our controller, and observedGeneration is set.
        for status in output.status.http_routes.values().chain(output.status.tls_routes.values()) {
            for parent in &status.parents {
                prop_assert_eq!(&parent.controller_name, sluice_translate::CONTROLLER_NAME);
                prop_assert!(parent.conditions.iter().all(|c| c.observed_generation == 2));
            }
        }
    }
}

#[test]
fn arbitrary_text_never_panics() {
    for text in [
        "",
        "---",
        ":",
        "- a\n- b",
        "kind: Gateway",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: 5",
        "\t\u{0}",
    ] {
        let (world, _) = World::from_manifests(text);
        let _ = translate(&world);
    }
    let _ = Arc::new(());
}

/// Guards the generator itself: enough generated worlds must reach the interesting paths
/// (a programmed Gateway with routes), or the property above proves little.
#[test]
fn generator_reaches_programmed_routes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = objects();
    let (mut with_routes, mut with_tls_routes, mut skipped_total, mut documents) = (0, 0, 0, 0);
    for _ in 0..300 {
        let objects = strategy.new_tree(&mut runner).unwrap().current();
        documents += objects.len();
        let text: String = objects.iter().map(|o| format!("---\n{}", serde_saphyr::to_string(o).unwrap())).collect();
        let (world, skipped) = World::from_manifests(&text);
        skipped_total += skipped.len();
        let output = translate(&world);
        if output.gateways.values().any(|g| g.snapshot.listeners.iter().any(|l| !l.http_routes.is_empty())) {
            with_routes += 1;
        }
        if output.gateways.values().any(|g| g.snapshot.listeners.iter().any(|l| !l.tls_routes.is_empty())) {
            with_tls_routes += 1;
        }
    }
    assert!(skipped_total * 4 < documents, "generator produces mostly unreadable objects: {skipped_total}/{documents}");
    assert!(with_routes >= 20, "only {with_routes}/300 worlds program an HTTP route");
    assert!(with_tls_routes >= 10, "only {with_tls_routes}/300 worlds program a TLS route");
}
