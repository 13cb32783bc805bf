//! Live swaps under load: 1000 snapshot swaps while clients send requests without pause;
//! every request must succeed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice_snapshot::{
    Cluster, Endpoint, HttpMatch, HttpRoute, Listener, PathMatch, PathMatchType, Protocol, Snapshot, Version,
    WeightedBackend, weighted_backend,
};
use support::{DataPlane, Echo, free_port, get};

fn snapshot(port: u16, generation: u64, backend: &str, ports: (u16, u16)) -> Snapshot {
    let cluster = |name: &str, port: u16| Cluster {
        name: name.into(),
        app_protocol: sluice_snapshot::AppProtocol::Http1 as i32,
        endpoints: vec![Endpoint { address: "127.0.0.1".into(), port: u32::from(port), ready: true }],
        ..Default::default()
    };
    Snapshot {
        gateway: "test/gw".into(),
        version: Some(Version { generation, content_hash: String::new() }),
        listeners: vec![Listener {
            name: "gateway/test/gw/listener/http".into(),
            port: u32::from(port),
            protocol: Protocol::Http as i32,
            http_routes: vec![HttpRoute {
                name: format!("httproute/test/r/rule/0/match/0/gen{generation}"),
                r#match: Some(HttpMatch {
                    path: Some(PathMatch { r#type: PathMatchType::Prefix as i32, value: "/".into() }),
                    ..Default::default()
                }),
                backends: vec![WeightedBackend {
                    name: backend.into(),
                    weight: 1,
                    target: Some(weighted_backend::Target::Cluster(backend.into())),
                    filters: vec![],
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
        clusters: vec![cluster("a", ports.0), cluster("b", ports.1)],
        ..Default::default()
    }
}

#[test]
fn a_thousand_swaps_under_load_drop_nothing() {
    let (a, b) = (Echo::start("a"), Echo::start("b"));
    let port = free_port();
    let plane =
        Arc::new(DataPlane::start_with(&snapshot(port, 1, "a", (a.port, b.port)), &["--poll-interval-ms", "2"]));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, to_b) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, to_b) = (stop.clone(), ok.clone(), failed.clone(), to_b.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let response = get(port, "x", "/", &[]);
                    if response.status == 200 && matches!(response.echo("backend"), Some("a" | "b")) {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if response.echo("backend") == Some("b") {
                            to_b.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed: {response:?}");
                    }
                }
            })
        })
        .collect();

    let swaps = 1000u64;
    let start = Instant::now();
    for generation in 2..=swaps + 1 {
        let backend = if generation % 2 == 0 { "b" } else { "a" };
        plane.write_snapshot(&serde_json::to_string(&snapshot(port, generation, backend, (a.port, b.port))).unwrap());
        // Wait until the data plane reports this generation, so every swap really happens.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !plane.admin("/config").contains(&format!("generation={generation}\n")) {
            assert!(Instant::now() < deadline, "generation {generation} was not applied");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("swap test: {swaps} swaps in {elapsed:?}, {ok} requests ok, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 1000, "too few requests ran during the swaps: {ok}");
    // Traffic followed the swaps: both snapshots served a share of it.
    let to_b = to_b.load(Ordering::Relaxed);
    assert!(to_b > 0 && to_b < ok, "{to_b} of {ok} requests went to b");
}
