//! UDP listeners on loopback: sessions per client, weighted backends, live swaps that
//! keep sessions, idle expiry, the session limit, unusable backends, whole large
//! datagrams. Every receive has a timeout, so a broken proxy fails instead of hanging.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice_snapshot::{
    Cluster, DirectResponse, Listener, Protocol, Snapshot, TcpRoute, UdpRoute, Version, WeightedBackend,
    weighted_backend,
};
use support::{DataPlane, Echo, cluster, free_port, get, to};

/// A UDP backend answering every datagram with `NAME:` and the datagram (with an empty
/// name: the datagram alone), counting what it received.
struct UdpEcho {
    port: u16,
    received: Arc<AtomicUsize>,
}

impl UdpEcho {
    fn start(name: &'static str) -> UdpEcho {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let received = Arc::new(AtomicUsize::new(0));
        let count = received.clone();
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 65535];
            while let Ok((len, from)) = socket.recv_from(&mut buffer) {
                count.fetch_add(1, Ordering::Relaxed);
                let mut answer = if name.is_empty() { Vec::new() } else { format!("{name}:").into_bytes() };
                answer.extend_from_slice(&buffer[..len]);
                let _ = socket.send_to(&answer, from);
            }
        });
        UdpEcho { port, received }
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }
}

fn udp_listener(name: &str, port: u16, backends: Option<Vec<WeightedBackend>>) -> Listener {
    Listener {
        name: format!("gateway/test/gw/listener/{name}"),
        port: u32::from(port),
        protocol: Protocol::Udp as i32,
        udp_routes: backends
            .map(|backends| UdpRoute { name: format!("udproute/test/{name}/rule/0"), backends })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

fn snapshot_of(generation: u64, listeners: Vec<Listener>, clusters: Vec<Cluster>) -> Snapshot {
    Snapshot {
        gateway: "test/gw".into(),
        version: Some(Version { generation, content_hash: String::new() }),
        listeners,
        clusters,
        ..Default::default()
    }
}

/// One UDP listener on `port` whose route sends to `backends`.
fn snapshot(generation: u64, port: u16, backends: Vec<WeightedBackend>, clusters: Vec<Cluster>) -> Snapshot {
    snapshot_of(generation, vec![udp_listener("udp", port, Some(backends))], clusters)
}

/// A backendRef the translator found invalid.
fn invalid(weight: u32) -> WeightedBackend {
    WeightedBackend {
        name: "service/test/missing/port/53".into(),
        weight,
        target: Some(weighted_backend::Target::Invalid(DirectResponse { status: 500, body: String::new() })),
        filters: vec![],
    }
}

/// Writes `snapshot` and waits until the data plane serves its generation.
fn apply(plane: &DataPlane, snapshot: &Snapshot) {
    let generation = snapshot.version.as_ref().map_or(0, |v| v.generation);
    plane.write_snapshot(&serde_json::to_string(snapshot).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !plane.admin("/config").contains(&format!("generation={generation}\n")) {
        assert!(Instant::now() < deadline, "generation {generation} was not applied");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn client() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    socket
}

/// Sends `payload` to the proxy and returns the answer (sending again up to `tries`
/// times, e.g. while the listener starts), or None when nothing comes back.
fn ask(socket: &UdpSocket, port: u16, payload: &[u8], tries: usize) -> Option<Vec<u8>> {
    let mut buffer = vec![0u8; 65535];
    for _ in 0..tries {
        socket.send_to(payload, ("127.0.0.1", port)).unwrap();
        if let Ok(len) = socket.recv(&mut buffer) {
            return Some(buffer[..len].to_vec());
        }
    }
    None
}

fn text(answer: Option<Vec<u8>>) -> String {
    String::from_utf8(answer.expect("an answer")).unwrap()
}

/// The value of one series on `/metrics`, e.g. `sluice_udp_sessions{port="53"}`.
fn metric(plane: &DataPlane, series: &str) -> u64 {
    let metrics = plane.admin("/metrics");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
}

/// Waits (2 s at most) until a counter reaches `least`: the proxy counts a forwarded
/// datagram after sending it, so the client may read the answer before the count moves.
fn metric_reaches(plane: &DataPlane, series: &str, least: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if metric(plane, series) >= least {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn echo_round_trip() {
    let a = UdpEcho::start("a");
    let port = free_port();
    let plane = DataPlane::start(&snapshot(1, port, vec![to("a", 1)], vec![cluster("a", &[a.port])]));
    let socket = client();
    assert_eq!(text(ask(&socket, port, b"hello", 20)), "a:hello");
    assert_eq!(text(ask(&socket, port, b"again", 5)), "a:again");
    assert_eq!(metric(&plane, &format!(r#"sluice_udp_sessions{{port="{port}"}}"#)), 1);
    assert!(metric_reaches(&plane, &format!(r#"sluice_udp_datagrams_total{{port="{port}",direction="in"}}"#), 2));
    assert!(metric_reaches(&plane, &format!(r#"sluice_udp_datagrams_total{{port="{port}",direction="out"}}"#), 2));
}

#[test]
fn zero_weight_backend_never_receives() {
    let (a, b) = (UdpEcho::start("a"), UdpEcho::start("b"));
    let port = free_port();
    let _plane = DataPlane::start(&snapshot(
        1,
        port,
        vec![to("a", 1), to("b", 0)],
        vec![cluster("a", &[a.port]), cluster("b", &[b.port])],
    ));
    assert_eq!(text(ask(&client(), port, b"first", 20)), "a:first");
    for _ in 0..10 {
        assert_eq!(text(ask(&client(), port, b"x", 5)), "a:x");
    }
    assert!(a.received() >= 11);
    assert_eq!(b.received(), 0);
}

#[test]
fn weights_spread_sessions_over_backends() {
    let (a, b) = (UdpEcho::start("a"), UdpEcho::start("b"));
    let port = free_port();
    let _plane = DataPlane::start(&snapshot(
        1,
        port,
        vec![to("a", 1), to("b", 1)],
        vec![cluster("a", &[a.port]), cluster("b", &[b.port])],
    ));
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        *answers.entry(text(ask(&client(), port, b"x", 20))).or_default() += 1;
    }
    assert_eq!(answers.keys().collect::<Vec<_>>(), ["a:x", "b:x"]);
    assert!(answers.values().all(|&n| n >= 5), "{answers:?}");
}

#[test]
fn live_swap_keeps_existing_sessions_and_new_clients_use_the_new_tables() {
    let (a, b) = (UdpEcho::start("a"), UdpEcho::start("b"));
    let port = free_port();
    let clusters = vec![cluster("a", &[a.port]), cluster("b", &[b.port])];
    let plane = DataPlane::start(&snapshot(1, port, vec![to("a", 1)], clusters.clone()));
    let old = client();
    assert_eq!(text(ask(&old, port, b"1", 20)), "a:1");

    apply(&plane, &snapshot(2, port, vec![to("b", 1)], clusters.clone()));
    assert_eq!(text(ask(&client(), port, b"2", 5)), "b:2", "a new client uses the new tables");
    assert_eq!(text(ask(&old, port, b"3", 5)), "a:3", "an existing session keeps its endpoint");

    // The port's route disappears: new clients get nothing, existing sessions go on.
    apply(&plane, &snapshot_of(3, vec![udp_listener("udp", port, None)], clusters));
    assert_eq!(ask(&client(), port, b"4", 2), None);
    assert_eq!(text(ask(&old, port, b"5", 5)), "a:5");
    assert_eq!(
        metric(&plane, &format!(r#"sluice_udp_dropped_datagrams_total{{port="{port}",reason="no_backend"}}"#)),
        2
    );
}

#[test]
fn idle_sessions_expire_and_the_same_client_starts_a_new_one() {
    let (a, b) = (UdpEcho::start("a"), UdpEcho::start("b"));
    let port = free_port();
    let clusters = vec![cluster("a", &[a.port]), cluster("b", &[b.port])];
    let plane = DataPlane::start_with(
        &snapshot(1, port, vec![to("a", 1)], clusters.clone()),
        &["--udp-idle-timeout-secs", "1"],
    );
    let socket = client();
    assert_eq!(text(ask(&socket, port, b"1", 20)), "a:1");
    let sessions = format!(r#"sluice_udp_sessions{{port="{port}"}}"#);
    assert_eq!(metric(&plane, &sessions), 1);
    apply(&plane, &snapshot(2, port, vec![to("b", 1)], clusters));
    // Once idle for the timeout, the session is gone...
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&plane, &sessions) != 0 {
        assert!(Instant::now() < deadline, "the idle session never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...and the same client address starts a new one, on the new backend.
    assert_eq!(text(ask(&socket, port, b"2", 5)), "b:2");
    assert_eq!(metric(&plane, &sessions), 1);
}

#[test]
fn session_limit_drops_new_clients_and_keeps_live_sessions() {
    let a = UdpEcho::start("a");
    let port = free_port();
    let plane = DataPlane::start_with(
        &snapshot(1, port, vec![to("a", 1)], vec![cluster("a", &[a.port])]),
        &["--udp-max-sessions", "2"],
    );
    let (first, second, third) = (client(), client(), client());
    assert_eq!(text(ask(&first, port, b"1", 20)), "a:1");
    assert_eq!(text(ask(&second, port, b"2", 5)), "a:2");
    assert_eq!(ask(&third, port, b"3", 2), None, "a third session is over the limit");
    assert_eq!(text(ask(&first, port, b"4", 5)), "a:4", "existing sessions keep working");
    assert_eq!(text(ask(&second, port, b"5", 5)), "a:5", "existing sessions keep working");
    assert_eq!(
        metric(&plane, &format!(r#"sluice_udp_dropped_datagrams_total{{port="{port}",reason="session_limit"}}"#)),
        2
    );
    assert_eq!(metric(&plane, &format!(r#"sluice_udp_sessions{{port="{port}"}}"#)), 2);
}

#[test]
fn unusable_backends_answer_nothing_while_other_ports_serve() {
    let a = UdpEcho::start("a");
    let (invalid_port, empty_port, no_route_port, good_port) = (free_port(), free_port(), free_port(), free_port());
    let plane = DataPlane::start(&snapshot_of(
        1,
        vec![
            udp_listener("invalid", invalid_port, Some(vec![invalid(1)])),
            udp_listener("empty", empty_port, Some(vec![to("empty", 1)])),
            udp_listener("no-route", no_route_port, None),
            udp_listener("good", good_port, Some(vec![to("a", 1)])),
        ],
        vec![cluster("a", &[a.port]), cluster("empty", &[])],
    ));
    assert_eq!(text(ask(&client(), good_port, b"1", 20)), "a:1");
    for port in [invalid_port, empty_port, no_route_port] {
        assert_eq!(ask(&client(), port, b"x", 2), None, "port {port}");
        let dropped = format!(r#"sluice_udp_dropped_datagrams_total{{port="{port}",reason="no_backend"}}"#);
        assert_eq!(metric(&plane, &dropped), 2, "port {port}");
    }
    assert_eq!(text(ask(&client(), good_port, b"2", 5)), "a:2");
    assert_eq!(a.received(), 2);
}

#[test]
fn large_datagrams_round_trip_intact() {
    let echo = UdpEcho::start("");
    let port = free_port();
    let _plane = DataPlane::start(&snapshot(1, port, vec![to("echo", 1)], vec![cluster("echo", &[echo.port])]));
    let socket = client();
    assert_eq!(text(ask(&socket, port, b"small", 20)), "small");
    // 60000 bytes, and the largest UDP payload over IPv4 (65535 - 8 - 20).
    for size in [60000usize, 65507] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let answer = ask(&socket, port, &payload, 5).expect("an answer");
        assert_eq!(answer.len(), size);
        assert!(answer == payload, "a {size}-byte datagram came back changed");
    }
}

#[test]
fn tcp_and_udp_listeners_share_a_port_number() {
    let (http, udp) = (Echo::start("tcp"), UdpEcho::start("udp"));
    let port = free_port();
    let mut tcp = udp_listener("tcp", port, None);
    tcp.protocol = Protocol::Tcp as i32;
    tcp.tcp_routes = vec![TcpRoute { name: "tcproute/test/tcp/rule/0".into(), backends: vec![to("http", 1)] }];
    let _plane = DataPlane::start(&snapshot_of(
        1,
        vec![tcp, udp_listener("udp", port, Some(vec![to("udp", 1)]))],
        vec![cluster("http", &[http.port]), cluster("udp", &[udp.port])],
    ));
    assert_eq!(text(ask(&client(), port, b"datagram", 20)), "udp:datagram");
    assert_eq!(get(port, "example.com", "/", &[]).echo("backend"), Some("tcp"));
}
