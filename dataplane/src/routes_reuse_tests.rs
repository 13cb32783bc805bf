//! An incrementally compiled table routes exactly like a fully compiled one, and keeps the
//! `Arc`s of what did not change.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // test code

use super::*;
use crate::metrics::Metrics;
use sluice_snapshot::{Endpoint, HttpMatch, Listener, PathMatch, ValueMatch, Version};

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

const HOSTS: [&str; 4] = ["a.example.com", "b.example.com", "x.wild.example.com", "other.test"];
const PATHS: [&str; 6] = ["/", "/p1", "/p1/x", "/p2", "/api/v1", "/re/42"];

fn cluster(id: usize, endpoint: u8) -> Cluster {
    Cluster {
        name: format!("service/ns/s{id:02}/port/80"),
        endpoints: vec![Endpoint { address: format!("10.0.0.{endpoint}"), port: 80, ready: true }],
        load_balancing: LoadBalancing::LeastRequest as i32,
        ..Default::default()
    }
}

fn route(rng: &mut Rng, id: usize) -> HttpRoute {
    let hostnames = match rng.below(4) {
        0 => vec![],
        1 => vec!["*.wild.example.com".to_string()],
        n => vec![HOSTS[n - 2].to_string()],
    };
    let path = match rng.below(3) {
        0 => PathMatch { r#type: PathMatchType::Exact as i32, value: PATHS[rng.below(PATHS.len())].into() },
        1 => PathMatch { r#type: PathMatchType::RegularExpression as i32, value: "/re/[0-9]+".into() },
        _ => PathMatch { r#type: PathMatchType::Prefix as i32, value: PATHS[rng.below(PATHS.len())].into() },
    };
    let headers = if rng.below(4) == 0 {
        vec![ValueMatch { r#type: ValueMatchType::Exact as i32, name: "x-team".into(), value: "blue".into() }]
    } else {
        vec![]
    };
    let cluster = format!("service/ns/s{:02}/port/80", rng.below(8));
    HttpRoute {
        name: format!("httproute/ns/r{id}/rule/0/match/0"),
        hostnames,
        r#match: Some(HttpMatch { path: Some(path), headers, ..Default::default() }),
        backends: vec![WeightedBackend {
            name: cluster.clone(),
            weight: 1,
            target: Some(weighted_backend::Target::Cluster(cluster)),
            filters: vec![],
        }],
        ..Default::default()
    }
}

fn snapshot(rng: &mut Rng, routes: usize) -> Snapshot {
    Snapshot {
        gateway: "ns/gw".into(),
        version: Some(Version { generation: 1, content_hash: "h1".into() }),
        listeners: vec![Listener {
            name: "gateway/ns/gw/listener/http".into(),
            port: 8080,
            protocol: Protocol::Http as i32,
            http_routes: (0..routes).map(|id| route(rng, id)).collect(),
            ..Default::default()
        }],
        clusters: (0..8).map(|id| cluster(id, 1)).collect(),
        ..Default::default()
    }
}

/// What `compiled` does with every request of a small grid: the route that matches and
/// the endpoints of its backend.
fn routing(compiled: &Compiled) -> Vec<Option<(String, Vec<std::net::SocketAddr>)>> {
    let table = &compiled.ports[&8080];
    let mut seen = Vec::new();
    for host in HOSTS {
        for path in PATHS {
            for team in [None, Some("blue")] {
                let mut headers = http::HeaderMap::new();
                if let Some(team) = team {
                    headers.insert("x-team", team.parse().unwrap());
                }
                let view = RequestView {
                    host,
                    path,
                    query: None,
                    method: &http::Method::GET,
                    headers: Headers::Map(&headers),
                };
                let found = table.listener(host).and_then(|listener| listener.find(&view));
                seen.push(found.map(|route| {
                    let endpoints = match route.backends.pick() {
                        Some((_, Target::Cluster(cluster))) => cluster.endpoints.clone(),
                        _ => vec![],
                    };
                    (route.name.clone(), endpoints)
                }));
            }
        }
    }
    seen
}

#[test]
fn incremental_compile_routes_like_a_full_one_and_keeps_unchanged_pieces() {
    let metrics = Metrics::default();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for round in 0..200 {
        let count = 1 + rng.below(30);
        let base = snapshot(&mut rng, count);
        let served = compile(&base, &metrics).unwrap();
        let mut next = base.clone();
        next.version = Some(Version { generation: 2, content_hash: "h2".into() });
        let routes = &mut next.listeners[0].http_routes;
        match round % 4 {
            0 => {
                let at = rng.below(routes.len() + 1);
                routes.insert(at, route(&mut rng, 1000 + round));
            }
            1 => {
                routes.remove(rng.below(routes.len()));
            }
            2 => {
                let at = rng.below(routes.len());
                routes[at] = HttpRoute { name: routes[at].name.clone(), ..route(&mut rng, at) };
            }
            _ => {
                let at = rng.below(next.clusters.len());
                next.clusters[at].endpoints[0].address = "10.0.0.2".into();
            }
        }
        let incremental =
            compile_reusing(&next, &metrics, Some(Previous { snapshot: &base, compiled: &served })).unwrap();
        let full = compile(&next, &metrics).unwrap();
        assert_eq!(routing(&incremental), routing(&full), "round {round}");
        assert_eq!(incremental.dropped, full.dropped);

        // Unchanged clusters keep their tables (in-flight counters carry over).
        for (old, new) in served.clusters.iter().zip(&incremental.clusters) {
            let unchanged =
                base.clusters.iter().find(|c| c.name == old.name) == next.clusters.iter().find(|c| c.name == new.name);
            assert_eq!(Arc::ptr_eq(old, new), unchanged, "round {round}: cluster {}", old.name);
        }
        // Unchanged routes whose clusters are unchanged keep theirs.
        let old_routes = &served.ports[&8080].listeners[0].routes;
        let new_routes = &incremental.ports[&8080].listeners[0].routes;
        let reused = new_routes.iter().filter(|new| old_routes.iter().any(|old| Arc::ptr_eq(old, new))).count();
        let changed = new_routes.len().abs_diff(reused);
        assert!(changed <= 1 || round % 4 == 3, "round {round}: {changed} routes compiled again");
    }
}
