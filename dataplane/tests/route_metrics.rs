//! The counters of a route live as long as the route is served: a route gone from the
//! config loses its series (and the memory behind it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::time::{Duration, Instant};

use sluice_snapshot::{HttpMatch, HttpRoute, Listener, PathMatch, PathMatchType, Protocol, Snapshot};
use support::{DataPlane, Echo, cluster, free_port, get, to};

fn snapshot(port: u16, backend_port: u16, prefixes: &[&str]) -> Snapshot {
    let routes = prefixes
        .iter()
        .map(|prefix| HttpRoute {
            name: format!("httproute/ns{prefix}/rule/0/match/0"),
            r#match: Some(HttpMatch {
                path: Some(PathMatch { r#type: PathMatchType::Prefix as i32, value: (*prefix).into() }),
                ..Default::default()
            }),
            backends: vec![to("a", 1)],
            ..Default::default()
        })
        .collect();
    Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![Listener {
            name: "gateway/test/gw/listener/http".into(),
            port: u32::from(port),
            protocol: Protocol::Http as i32,
            http_routes: routes,
            ..Default::default()
        }],
        clusters: vec![cluster("a", &[backend_port])],
        ..Default::default()
    }
}

#[test]
fn a_removed_route_loses_its_counters() {
    let a = Echo::start("a");
    let port = free_port();
    let plane = DataPlane::start(&snapshot(port, a.port, &["/kept", "/gone"]));
    assert_eq!(get(port, "x", "/kept", &[]).status, 200);
    assert_eq!(get(port, "x", "/gone", &[]).status, 200);
    let kept = r#"sluice_requests_total{route="httproute/ns/kept/rule/0/match/0",code="200"} 1"#;
    let gone = "httproute/ns/gone/";
    let metrics = plane.admin("/metrics");
    assert!(metrics.contains(kept) && metrics.contains(gone), "{metrics}");

    plane.write_snapshot(&serde_json::to_string(&snapshot(port, a.port, &["/kept"])).unwrap());
    // No request in flight holds the old tables: the swap itself drops the counters.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut metrics = plane.admin("/metrics");
    while metrics.contains(gone) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        metrics = plane.admin("/metrics");
    }
    assert!(!metrics.contains(gone), "the removed route's series stayed: {metrics}");
    assert!(metrics.contains(kept), "the kept route keeps its counters across the swap: {metrics}");
    assert_eq!(get(port, "x", "/gone", &[]).status, 404);
}
