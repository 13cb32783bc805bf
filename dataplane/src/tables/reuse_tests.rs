//! An incrementally compiled table routes exactly like a fully compiled one, and keeps the
//! `Arc`s of what did not change.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // test code

use super::*;
use crate::metrics::Metrics;
use crate::view::Headers;
use sluice_snapshot::{
    Endpoint, HttpMatch, Listener, LoadBalancing, PathMatch, PathMatchType, ValueMatch, ValueMatchType, Version,
    weighted_backend,
};

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

/// Everything `compiled` holds for the request path, in a stable order (its hash maps
/// sorted; taken before any request moves a counter).
fn describe(compiled: &Compiled) -> String {
    fn sorted<T: std::fmt::Debug>(map: &HashMap<String, T>) -> Vec<String> {
        let mut entries: Vec<String> = map.iter().map(|(key, value)| format!("{key}={value:?}")).collect();
        entries.sort();
        entries
    }
    let mut ports: Vec<_> = compiled.ports.iter().collect();
    ports.sort_by_key(|(port, _)| **port);
    let mut out = format!("gateway={} generation={}\n", compiled.gateway, compiled.generation);
    for (port, table) in ports {
        out += &format!(
            "port {port} {:?} exact={:?} wildcard={:?} any={:?}\n",
            table.protocol,
            sorted(&table.by_exact),
            sorted(&table.by_wildcard),
            table.any
        );
        for listener in &table.listeners {
            out += &format!("  listener {} {}\n", listener.name, listener.index.describe());
        }
    }
    out + &format!("clusters={:?}\ndropped={:?}\n", compiled.clusters, compiled.dropped)
}

#[test]
fn incremental_compile_equals_a_full_one_and_keeps_exactly_the_unchanged_pieces() {
    let metrics = Metrics::default();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for round in 0..200 {
        let count = 1 + rng.below(30);
        let base = snapshot(&mut rng, count);
        let (served, layout) = compile_reusing(&base, &metrics, None).unwrap();
        let mut next = base.clone();
        next.version = Some(Version { generation: 2, content_hash: "h2".into() });
        let routes = &mut next.listeners[0].http_routes;
        match round % 5 {
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
            3 => {
                let at = rng.below(next.clusters.len());
                next.clusters[at].endpoints[0].address = "10.0.0.2".into();
            }
            _ => {
                // A route to a cluster the snapshot lacks: dropped, compiled again (500).
                let at = rng.below(routes.len());
                let missing = "service/ns/missing/port/80".to_string();
                routes[at].backends[0].target = Some(weighted_backend::Target::Cluster(missing));
            }
        }
        let (incremental, next_layout) =
            compile_reusing(&next, &metrics, Some(Previous { snapshot: &base, compiled: &served, layout: &layout }))
                .unwrap();
        let full = compile(&next, &metrics).unwrap();
        assert_eq!(describe(&incremental), describe(&full), "round {round}");
        assert_eq!(routing(&incremental), routing(&full), "round {round}");

        // A cluster keeps its table (in-flight counters carry over) exactly when its
        // content is unchanged.
        for new in &incremental.clusters {
            let old = served.clusters.iter().find(|old| old.name == new.name).unwrap();
            let unchanged =
                base.clusters.iter().find(|c| c.name == new.name) == next.clusters.iter().find(|c| c.name == new.name);
            assert_eq!(Arc::ptr_eq(old, new), unchanged, "round {round}: cluster {}", new.name);
        }
        // A route keeps its compiled form exactly when it and the cluster it points at are
        // unchanged (and it was not dropped).
        let listener = "gateway/ns/gw/listener/http";
        let old_routes: Vec<_> = layout.listeners[listener].iter().map(|slot| slot.route.clone()).collect();
        let new_routes: Vec<_> = next_layout.listeners[listener].iter().map(|slot| slot.route.clone()).collect();
        for (source, new) in next.listeners[0].http_routes.iter().zip(new_routes) {
            let cluster_of = |route: &HttpRoute, snapshot: &Snapshot| match &route.backends[0].target {
                Some(weighted_backend::Target::Cluster(name)) => {
                    snapshot.clusters.iter().find(|c| &c.name == name).cloned()
                }
                _ => None,
            };
            let before = base.listeners[0].http_routes.iter().position(|r| r.name == source.name);
            let expected = before.is_some_and(|at| {
                let old = &base.listeners[0].http_routes[at];
                old == source
                    && cluster_of(source, &next).is_some()
                    && cluster_of(old, &base) == cluster_of(source, &next)
            });
            let reused = before.is_some_and(|at| Arc::ptr_eq(&old_routes[at], &new));
            assert_eq!(reused, expected, "round {round}: route {}", source.name);
        }
    }
}

/// What a layout says about each listener (the routes in order and whether they were
/// dropped) and the clusters' use counts, comparable between two compiles.
fn describe_layout(layout: &Layout) -> String {
    let mut listeners: Vec<_> = layout
        .listeners
        .iter()
        .map(|(name, slots)| {
            let routes: Vec<String> = slots.iter().map(|s| format!("{} dropped={}", s.route.name, s.dropped)).collect();
            format!("{name}: {routes:?}")
        })
        .collect();
    listeners.sort();
    let mut uses: Vec<_> = layout.cluster_uses.iter().collect();
    uses.sort();
    format!("{listeners:?} uses={uses:?}")
}

#[test]
fn patched_tables_serve_like_a_full_compile_along_a_chain_of_deltas() {
    let metrics = Metrics::default();
    let mut rng = Rng(0x0dd_ba11_cafe_f00d);
    let (mut patches, mut full) = (0, 0);
    for chain in 0..20 {
        let count = 5 + rng.below(40);
        let mut current = snapshot(&mut rng, count);
        current.listeners.push(Listener {
            name: "gateway/ns/gw/listener/other".into(),
            port: 8080,
            protocol: Protocol::Http as i32,
            hostname: "other.test".into(),
            http_routes: (0..3).map(|id| route(&mut rng, 500 + id)).collect(),
            ..Default::default()
        });
        let (mut served, mut layout) = compile_reusing(&current, &metrics, None).unwrap();
        for step in 0..40 {
            let mut next = current.clone();
            next.version = Some(Version { generation: 2 + step, content_hash: format!("h{step}") });
            let l = rng.below(2);
            let routes = &mut next.listeners[l].http_routes;
            // Which changes must take the patch (true) and which the full compile.
            let patchable = match rng.below(8) {
                0 | 1 => {
                    // Inserted anywhere, often at one place: order keys run out sometimes.
                    let at = if rng.below(2) == 0 { rng.below(routes.len() + 1) } else { routes.len().min(2) };
                    routes.insert(at, route(&mut rng, 2000 + 100 * chain + step as usize));
                    None
                }
                2 if !routes.is_empty() => {
                    routes.remove(rng.below(routes.len()));
                    None
                }
                3 if !routes.is_empty() => {
                    let at = rng.below(routes.len());
                    routes[at] = HttpRoute { name: routes[at].name.clone(), ..route(&mut rng, at) };
                    None
                }
                4 => {
                    // A new cluster with a new route pointing at it.
                    let id = 10 + step as usize;
                    next.clusters.push(cluster(id, 3));
                    let mut added = route(&mut rng, 3000 + step as usize);
                    let name = cluster(id, 3).name;
                    added.backends[0].target = Some(weighted_backend::Target::Cluster(name));
                    next.listeners[l].http_routes.push(added);
                    Some(true)
                }
                5 => {
                    // A changed cluster (new endpoints): its routes compile again in their
                    // places, sometimes beside a route inserted or removed in the same delta.
                    let at = rng.below(next.clusters.len());
                    next.clusters[at].endpoints[0].port += 1;
                    match rng.below(3) {
                        0 => {
                            let at = rng.below(routes.len() + 1);
                            routes.insert(at, route(&mut rng, 5000 + 100 * chain + step as usize));
                        }
                        1 if !routes.is_empty() => {
                            routes.remove(rng.below(routes.len()));
                        }
                        _ => {}
                    }
                    None
                }
                6 => {
                    // A route to a cluster the snapshot lacks: it fails, so the full compile.
                    let mut broken = route(&mut rng, 4000 + step as usize);
                    let missing = "service/ns/missing/port/80".to_string();
                    broken.backends[0].target = Some(weighted_backend::Target::Cluster(missing));
                    routes.push(broken);
                    Some(false)
                }
                _ => {
                    // Clusters no route uses leave with the patch.
                    let used: Vec<String> = next
                        .listeners
                        .iter()
                        .flat_map(|l| l.http_routes.iter().flat_map(|r| http_route_clusters(r).map(String::from)))
                        .collect();
                    let before = next.clusters.len();
                    next.clusters.retain(|c| used.contains(&c.name) || c.name.ends_with("00/port/80"));
                    (next.clusters.len() < before).then_some(true)
                }
            };
            let mut delta = sluice_snapshot::delta::diff(&current, &next);
            delta.version = next.version.clone();
            let (compiled, new_layout) = match crate::incremental::patch(&current, &served, &layout, &delta, &metrics) {
                Some(patched) => {
                    assert_ne!(patchable, Some(false), "chain {chain} step {step}: patched a change that cannot be");
                    patches += 1;
                    let compiled = patched.commit(&mut layout);
                    (compiled, layout)
                }
                None => {
                    assert_ne!(patchable, Some(true), "chain {chain} step {step}: no patch");
                    full += 1;
                    let previous = Previous { snapshot: &current, compiled: &served, layout: &layout };
                    compile_reusing(&next, &metrics, Some(previous)).unwrap()
                }
            };
            let (fresh, fresh_layout) = compile_reusing(&next, &metrics, None).unwrap();
            assert_eq!(describe(&compiled), describe(&fresh), "chain {chain} step {step}");
            assert_eq!(describe_layout(&new_layout), describe_layout(&fresh_layout), "chain {chain} step {step}");
            (served, layout, current) = (compiled, new_layout, next);
        }
        let (fresh, _) = compile_reusing(&current, &metrics, None).unwrap();
        assert_eq!(routing(&served), routing(&fresh), "chain {chain}");
    }
    // Most changes of these chains are route changes: they must take the patch.
    assert!(patches > 400, "{patches} patched, {full} compiled in full");
}

#[test]
fn a_changed_cluster_is_patched_only_when_no_l4_route_uses_it() {
    let metrics = Metrics::default();
    let mut rng = Rng(0x5eed_0fc1_u64);
    let mut base = snapshot(&mut rng, 30);
    let to = |cluster: &str| WeightedBackend {
        name: cluster.into(),
        weight: 1,
        target: Some(weighted_backend::Target::Cluster(cluster.into())),
        filters: vec![],
    };
    base.listeners.push(Listener {
        name: "gateway/ns/gw/listener/tcp".into(),
        port: 9000,
        protocol: Protocol::Tcp as i32,
        tcp_routes: vec![sluice_snapshot::TcpRoute {
            name: "tcproute/ns/t/rule/0".into(),
            backends: vec![to(&cluster(0, 1).name)],
        }],
        ..Default::default()
    });
    let (served, layout) = compile_reusing(&base, &metrics, None).unwrap();
    let changed = |at: usize| {
        let mut next = base.clone();
        next.version = Some(Version { generation: 2, content_hash: "h2".into() });
        next.clusters[at].endpoints[0].address = "10.0.0.9".into();
        let mut delta = sluice_snapshot::delta::diff(&base, &next);
        delta.version = next.version.clone();
        (next, delta)
    };
    // s00 also carries the TCP route: its table is built by the full compile only.
    let (_, delta) = changed(0);
    assert!(crate::incremental::patch(&base, &served, &layout, &delta, &metrics).is_none());
    // s01 only HTTP routes use: they are compiled again in place, and serve the new endpoint.
    let (next, delta) = changed(1);
    let mut layout = layout;
    let patched = crate::incremental::patch(&base, &served, &layout, &delta, &metrics).expect("patched");
    let before = layout.listeners.clone();
    let compiled = patched.commit(&mut layout);
    let (fresh, fresh_layout) = compile_reusing(&next, &metrics, None).unwrap();
    assert_eq!(describe(&compiled), describe(&fresh));
    assert_eq!(describe_layout(&layout), describe_layout(&fresh_layout));
    let endpoints_of = |compiled: &Compiled| -> Vec<std::net::SocketAddr> {
        routing(compiled)
            .into_iter()
            .flatten()
            .filter(|(_, e)| e.iter().any(|a| a.ip().to_string() == "10.0.0.9"))
            .flat_map(|(_, e)| e)
            .collect()
    };
    assert!(!endpoints_of(&compiled).is_empty(), "no request reaches the new endpoint");
    // Only the routes that use s01 were compiled again.
    let listener = &base.listeners[0];
    let (before, after) = (&before[&listener.name], &layout.listeners[&listener.name]);
    for ((old, new), route) in before.iter().zip(after).zip(&listener.http_routes) {
        let uses = http_route_clusters(route).any(|name| name == cluster(1, 1).name);
        assert_eq!(Arc::ptr_eq(&old.route, &new.route), !uses, "{}", route.name);
        assert_eq!(old.order, new.order);
    }
}
