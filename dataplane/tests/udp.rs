//! UDP listeners on loopback: sessions per client, weighted backends, live swaps that
//! keep sessions, idle expiry, the session limit, whole large datagrams.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use sluice_snapshot::{Listener, Protocol, Snapshot, UdpRoute, WeightedBackend};
use support::{DataPlane, cluster, to};

/// A UDP backend answering every datagram with `NAME:` and the datagram.
fn udp_echo(name: &'static str) -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 65535];
        while let Ok((len, from)) = socket.recv_from(&mut buffer) {
            let mut answer = format!("{name}:").into_bytes();
            answer.extend_from_slice(&buffer[..len]);
            let _ = socket.send_to(&answer, from);
        }
    });
    port
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn snapshot(port: u16, backends: Vec<WeightedBackend>, clusters: Vec<sluice_snapshot::Cluster>) -> Snapshot {
    Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![Listener {
            name: "gateway/test/gw/listener/udp".into(),
            port: u32::from(port),
            protocol: Protocol::Udp as i32,
            udp_routes: vec![UdpRoute { name: "udproute/test/r/rule/0".into(), backends }],
            ..Default::default()
        }],
        clusters,
        ..Default::default()
    }
}

fn client() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    socket
}

/// Sends `payload` to the proxy and returns the answer (retrying while the listener
/// starts), or None when nothing comes back.
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

#[test]
fn echo_weights_and_large_datagrams() {
    let (a, b) = (udp_echo("a"), udp_echo("b"));
    let port = free_udp_port();
    let plane =
        DataPlane::start(&snapshot(port, vec![to("a", 1), to("b", 0)], vec![cluster("a", &[a]), cluster("b", &[b])]));
    let socket = client();
    assert_eq!(text(ask(&socket, port, b"hello", 20)), "a:hello");
    // Weight 0 never gets a session, whatever the client.
    for _ in 0..10 {
        assert_eq!(text(ask(&client(), port, b"x", 5)), "a:x");
    }
    // A 60000-byte datagram goes through whole.
    let big = vec![b'z'; 60000];
    let answer = ask(&socket, port, &big, 5).unwrap();
    assert_eq!(answer.len(), 60002);
    assert!(answer[2..].iter().all(|&byte| byte == b'z'));
    let metrics = plane.admin("/metrics");
    assert!(metrics.contains("udp_sessions 11"), "{metrics}");
    drop(plane);
}

#[test]
fn weights_spread_sessions_over_backends() {
    let (a, b) = (udp_echo("a"), udp_echo("b"));
    let port = free_udp_port();
    let _plane =
        DataPlane::start(&snapshot(port, vec![to("a", 1), to("b", 1)], vec![cluster("a", &[a]), cluster("b", &[b])]));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let answer = text(ask(&client(), port, b"x", 20));
        seen.insert(answer);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a:x", "b:x"]);
}

#[test]
fn swaps_keep_sessions_until_idle() {
    let (a, b) = (udp_echo("a"), udp_echo("b"));
    let port = free_udp_port();
    let clusters = vec![cluster("a", &[a]), cluster("b", &[b])];
    let plane =
        DataPlane::start_with(&snapshot(port, vec![to("a", 1)], clusters.clone()), &["--udp-idle-timeout-secs", "2"]);
    let old = client();
    assert_eq!(text(ask(&old, port, b"1", 20)), "a:1");
    plane.write_snapshot(&serde_json::to_string(&snapshot(port, vec![to("b", 1)], clusters)).unwrap());
    // A new client reaches the new backend once the swap is applied...
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if text(ask(&client(), port, b"2", 20)) == "b:2" {
            break;
        }
        assert!(Instant::now() < deadline, "the new snapshot was never applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...while the existing session stays on the old one.
    assert_eq!(text(ask(&old, port, b"3", 5)), "a:3");
    // Once idle, the same client address starts a new session on the new backend.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(text(ask(&old, port, b"4", 5)), "b:4");
}

#[test]
fn session_limit_and_missing_backends() {
    let a = udp_echo("a");
    let port = free_udp_port();
    let plane = DataPlane::start_with(
        &snapshot(port, vec![to("a", 1)], vec![cluster("a", &[a])]),
        &["--udp-max-sessions", "2"],
    );
    let (first, second, third) = (client(), client(), client());
    assert_eq!(text(ask(&first, port, b"1", 20)), "a:1");
    assert_eq!(text(ask(&second, port, b"2", 5)), "a:2");
    assert_eq!(ask(&third, port, b"3", 2), None, "a third session is over the limit");
    assert_eq!(text(ask(&first, port, b"4", 5)), "a:4", "existing sessions keep working");
    assert!(plane.admin("/metrics").contains(r#"udp_dropped_datagrams_total{reason="session_limit"} 2"#));
    drop(plane);

    // A port whose only backend has no endpoint answers nothing (and stays up).
    let port = free_udp_port();
    let plane = DataPlane::start(&snapshot(port, vec![to("empty", 1)], vec![cluster("empty", &[])]));
    assert_eq!(ask(&client(), port, b"x", 2), None);
    let metrics = plane.admin("/metrics");
    assert!(metrics.contains(r#"udp_dropped_datagrams_total{reason="no_backend"} 2"#), "{metrics}");
}
