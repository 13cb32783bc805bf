//! Measures a full translation of N HTTPRoutes spread over 100 namespaces, each routing
//! to its namespace's Service (3 endpoints), all attached to one Gateway.
//!
//! Usage: `translate_bench N [N ...]`; prints one line per N:
//! `translate routes=N full_ms=T snapshot_kb=S` (T: median of 7 runs after a warm-up).

use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use serde_json::json;
use sluice_translate::{World, translate};

const NAMESPACES: usize = 100;

fn from<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Arc<T> {
    match serde_json::from_value(value) {
        Ok(object) => Arc::new(object),
        Err(error) => panic!("bench object does not parse: {error}"),
    }
}

fn world(routes: usize) -> World {
    let mut world = World::default();
    world.gateway_classes.push(from(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "sluice"},
        "spec": {"controllerName": "sluice.dev/gateway-controller"}
    })));
    world.gateways.push(from(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "infra", "generation": 1},
        "spec": {"gatewayClassName": "sluice", "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}
        ]}
    })));
    for ns in 0..NAMESPACES {
        let namespace = format!("team-{ns}");
        world.namespaces.push(from(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})));
        world.services.push(from(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 8080}]}
        })));
        let endpoints: Vec<_> = (1..=3)
            .map(|e| json!({"addresses": [format!("10.{}.{}.{e}", ns / 250, ns % 250)], "conditions": {"ready": true}}))
            .collect();
        world.endpoint_slices.push(from(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "app-1", "namespace": namespace, "labels": {"kubernetes.io/service-name": "app"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints
        })));
    }
    for i in 0..routes {
        let namespace = format!("team-{}", i % NAMESPACES);
        world.http_routes.push(from(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": format!("route-{i}"), "namespace": namespace, "generation": 1,
                         "creationTimestamp": format!("2026-01-01T00:{:02}:{:02}Z", (i / 60) % 60, i % 60)},
            "spec": {
                "parentRefs": [{"name": "gw", "namespace": "infra"}],
                "hostnames": [format!("r{i}.example.com")],
                "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "x-env", "value": "prod"}]}],
                     "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-route", "value": format!("{i}")}]}}],
                     "backendRefs": [{"name": "app", "port": 8080}]},
                    {"matches": [{"path": {"type": "Exact", "value": "/health"}}],
                     "backendRefs": [{"name": "app", "port": 8080, "weight": 1}]}
                ]
            }
        })));
    }
    world
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    for routes in if sizes.is_empty() { vec![1000, 10000, 5000] } else { sizes } {
        let world = world(routes);
        let output = translate(&world);
        let mut times = Vec::new();
        for _ in 0..7 {
            let start = Instant::now();
            let output = translate(&world);
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            std::hint::black_box(output);
        }
        times.sort_by(f64::total_cmp);
        let snapshot_bytes: usize = output.gateways.values().map(|g| g.snapshot.encoded_len()).sum();
        let placed: usize =
            output.gateways.values().flat_map(|g| &g.snapshot.listeners).map(|l| l.http_routes.len()).sum();
        assert_eq!(placed, routes * 2, "every rule must be programmed");
        println!(
            "translate routes={routes} full_ms={:.1} snapshot_kb={}",
            times[times.len() / 2],
            snapshot_bytes / 1024
        );
    }
}
