//! Hostile and odd clients on raw sockets: every one gets its defined answer within its
//! deadline, with the HTTP/1.1 fast path on and off (CI runs both).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sluice_snapshot::{HttpMatch, HttpRoute, PathMatch, PathMatchType};
use support::{DataPlane, Echo, catch_all, cluster, free_port, parse_response, to};

/// Sends `request`, then reads until the server closes; returns the response and how long
/// the close took. Fails the test if the server holds the connection for `limit`.
fn exchange(port: u16, request: &[u8], limit: Duration) -> (support::Response, Duration) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    let started = Instant::now();
    stream.write_all(request).unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{request:?}: the connection was held open for {limit:?} ({e}); got {bytes:?}"),
        }
    }
    let (response, took) = (parse_response(&bytes), started.elapsed());
    // `cargo test --test hostile -- --nocapture` lists every case with its answer and time.
    eprintln!("case {:?}: status {} closed after {took:?}", String::from_utf8_lossy(request), response.status);
    (response, took)
}

#[test]
fn requests_without_or_with_two_hosts_get_their_answer_at_once() {
    let a = Echo::start("a");
    let port = free_port();
    let _plane = DataPlane::start(&catch_all(port, a.port));
    let limit = Duration::from_secs(3);

    // A complete HTTP/1.0 request without Host, shorter than the h2c preface: answered
    // (routed as for an empty host) and closed, not held waiting for 24 bytes.
    let (response, took) = exchange(port, b"GET /x HTTP/1.0\r\n\r\n", limit);
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.echo("path"), Some("/x"));
    assert!(took < Duration::from_secs(1), "{took:?}");

    // HTTP/1.1 requires Host (RFC 9112 §3.2): 400 and close.
    let (response, took) = exchange(port, b"GET /x HTTP/1.1\r\n\r\n", limit);
    assert_eq!(response.status, 400, "{response:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let (response, _) = exchange(port, b"GET http://a.example/x HTTP/1.1\r\n\r\n", limit);
    assert_eq!(response.status, 400, "absolute-form does not replace Host: {response:?}");

    // Two Host fields: 400 and close, nothing forwarded.
    let seen = a.seen().len();
    let (response, took) = exchange(port, b"GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", limit);
    assert_eq!(response.status, 400, "{response:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(a.seen().len(), seen, "nothing reaches the backend");

    // The h2c preface itself still selects HTTP/2 (curl --http2-prior-knowledge).
    let answer = support::curl(&["--http2-prior-knowledge", &format!("http://127.0.0.1:{port}/h2")]);
    assert_eq!(answer, "2 200");
}

#[test]
fn heads_that_never_complete_are_closed_at_the_head_deadline() {
    let a = Echo::start("a");
    let port = free_port();
    let _plane = DataPlane::start_with(&catch_all(port, a.port), &["--request-header-timeout-secs", "1"]);
    for partial in [&b"G"[..], b"GET", b"PRI * HTTP/2.0\r\n", b"GET / HTTP/1.1\r\nHost: a"] {
        let (response, took) = exchange(port, partial, Duration::from_secs(4));
        assert!(response.status == 0 || response.status == 408, "{partial:?}: {response:?}");
        assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(2500), "{partial:?}: {took:?}");
    }
}

#[test]
fn dot_segments_with_path_parameters_are_resolved_before_routing() {
    let (public, admin) = (Echo::start("public"), Echo::start("admin"));
    let port = free_port();
    let prefix = |name: &str, value: &str, backend: &str| HttpRoute {
        name: name.into(),
        r#match: Some(HttpMatch {
            path: Some(PathMatch { r#type: PathMatchType::Prefix as i32, value: value.into() }),
            ..Default::default()
        }),
        backends: vec![to(backend, 1)],
        ..Default::default()
    };
    let mut snapshot = catch_all(port, public.port);
    snapshot.listeners[0].http_routes = vec![prefix("public", "/public", "public"), prefix("admin", "/admin", "admin")];
    snapshot.clusters = vec![cluster("public", &[public.port]), cluster("admin", &[admin.port])];
    let _plane = DataPlane::start(&snapshot);
    for (path, backend, seen) in [
        ("/public/..;/admin/x", "admin", "/admin/x"),
        ("/public/..;jsessionid=1/admin", "admin", "/admin"),
        ("/public/.;x/y", "public", "/public/y"),
        ("/public/a;v=1/b", "public", "/public/a;v=1/b"),
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n");
        let (response, _) = exchange(port, request.as_bytes(), Duration::from_secs(3));
        assert_eq!(response.status, 200, "{path}: {response:?}");
        assert_eq!((response.echo("backend"), response.echo("path")), (Some(backend), Some(seen)), "{path}");
    }
}

#[test]
fn ready_answers_at_once_while_other_admin_clients_stall() {
    let a = Echo::start("a");
    let port = free_port();
    let plane = DataPlane::start(&catch_all(port, a.port));
    let admin = plane.admin_port;
    // Clients that send half a head and stop, or ask for /metrics and never read it. (A
    // server taking one client at a time would make /ready wait for each of them.)
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut dribbler = TcpStream::connect(("127.0.0.1", admin)).unwrap();
        dribbler.write_all(b"GET /rea").unwrap();
        stalled.push(dribbler);
        let mut reader = TcpStream::connect(("127.0.0.1", admin)).unwrap();
        reader.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        stalled.push(reader);
    }
    for _ in 0..5 {
        let started = Instant::now();
        let (response, _) = exchange(admin, b"GET /ready HTTP/1.1\r\n\r\n", Duration::from_secs(2));
        assert_eq!(response.status, 200, "{response:?}");
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    }
    // A head that never completes is closed after the admin read timeout (2 s).
    let started = Instant::now();
    let (response, _) = exchange(admin, b"GET /ready HTT", Duration::from_secs(5));
    assert_eq!(response.status, 0);
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    drop(stalled);
}

#[test]
fn connections_beyond_the_listener_cap_are_closed_and_counted() {
    let a = Echo::start("a");
    // Readiness connects to the lowest port (and hangs up): its connection may be taken
    // in at any moment and would count there, so the cap is checked on another port.
    let (one, two) = (free_port(), free_port());
    let (probed, port) = (one.min(two), one.max(two));
    let mut snapshot = catch_all(port, a.port);
    let mut other = snapshot.listeners[0].clone();
    other.name = "gateway/test/gw/listener/probed".into();
    other.port = u32::from(probed);
    snapshot.listeners.push(other);
    let plane = DataPlane::start_with(&snapshot, &["--max-connections-per-listener", "2"]);
    // Two connections sit open mid-head (within the head deadline).
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\n").unwrap();
            stream
        })
        .collect();
    // Both are taken in before the third comes.
    let open = format!("sluice_connections_open{{port=\"{port}\"}} 2\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !plane.admin("/metrics").contains(&open) {
        assert!(std::time::Instant::now() < deadline, "never counted open: {}", plane.admin("/metrics"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (response, took) =
        exchange(port, b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n", Duration::from_secs(3));
    assert_eq!(response.status, 0, "the third connection is closed unanswered: {response:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let metrics = plane.admin("/metrics");
    assert!(metrics.contains(&format!("sluice_connections_refused_total{{port=\"{port}\"}} 1")), "{metrics}");
    assert!(metrics.contains(&format!("sluice_connections_open{{port=\"{port}\"}} 2")), "{metrics}");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let (response, _) =
        exchange(port, b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n", Duration::from_secs(3));
    assert_eq!(response.status, 200, "a freed slot serves again: {response:?}");
}

#[test]
fn a_clients_forwarding_headers_count_only_through_trusted_hops() {
    let a = Echo::start("a");
    let request = b"GET /f HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\nX-Forwarded-For: 6.6.6.6, 7.7.7.7\r\n\
Forwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n\r\n";
    for (hops, want) in [("0", "127.0.0.1"), ("1", "7.7.7.7, 127.0.0.1")] {
        let port = free_port();
        let _plane = DataPlane::start_with(&catch_all(port, a.port), &["--trusted-hops", hops]);
        let (response, _) = exchange(port, request, Duration::from_secs(3));
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.echo("x-forwarded-for"), Some(want), "trusted hops {hops}");
        assert_eq!(response.echo("x-forwarded-proto"), Some("http"), "always the data plane's own");
        let kept = hops != "0";
        for name in ["forwarded", "x-real-ip", "x-forwarded-host"] {
            assert_eq!(response.echo(name).is_some(), kept, "{name} with trusted hops {hops}");
        }
    }
}

/// A route filter that sets X-Forwarded-Proto does not make the field travel twice: the
/// data plane's own value replaces it, on the fast path as on Pingora's.
#[test]
fn a_filter_set_x_forwarded_proto_is_replaced_not_doubled() {
    use sluice_snapshot::{Header, HeaderModifier, HttpFilter, http_filter};
    let a = Echo::start("a");
    let port = free_port();
    let mut snapshot = catch_all(port, a.port);
    snapshot.listeners[0].http_routes[0].filters.push(HttpFilter {
        kind: Some(http_filter::Kind::RequestHeaderModifier(HeaderModifier {
            set: vec![Header { name: "X-Forwarded-Proto".into(), value: "https".into() }],
            ..Default::default()
        })),
    });
    let _plane = DataPlane::start(&snapshot);
    let (response, _) =
        exchange(port, b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n", Duration::from_secs(3));
    assert_eq!(response.status, 200, "{response:?}");
    let sent: Vec<&str> = response.body.lines().filter(|line| line.starts_with("x-forwarded-proto:")).collect();
    assert_eq!(sent, ["x-forwarded-proto: http"], "{}", response.body);
}

/// Sends `bytes`, then reads (and discards) until the server closes; returns how long it
/// held the connection. Fails the test if that exceeds `limit`.
fn held_for(port: u16, bytes: &[u8], limit: Duration) -> Duration {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    let started = Instant::now();
    stream.write_all(bytes).unwrap();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{bytes:?}: the connection was held open for {limit:?} ({e})"),
        }
    }
    let took = started.elapsed();
    eprintln!("case {:?}: closed after {took:?}", String::from_utf8_lossy(bytes));
    took
}

/// The HTTP/2 connection preface, then an empty SETTINGS frame.
const H2_PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[test]
fn http2_connections_need_their_preface_in_time_and_close_when_idle() {
    let a = Echo::start("a");
    let port = free_port();
    let _plane = DataPlane::start_with(
        &catch_all(port, a.port),
        &["--request-header-timeout-secs", "1", "--http2-idle-timeout-secs", "2"],
    );
    // A preface cut short after its blank line: closed at the head deadline (1 s).
    let took = held_for(port, b"PRI * HTTP/2.0\r\n\r\nSM", Duration::from_secs(5));
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(2500), "{took:?}");
    // A whole preface and SETTINGS, then nothing: closed at the HTTP/2 idle timeout (2 s).
    let took = held_for(port, H2_PREFACE_AND_SETTINGS, Duration::from_secs(6));
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_millis(4000), "{took:?}");
    // Requests still work on HTTP/2 with these limits.
    let answer = support::curl(&["--http2-prior-knowledge", &format!("http://127.0.0.1:{port}/h2")]);
    assert_eq!(answer, "2 200");
}

#[test]
fn a_backend_that_stops_answering_gets_504_at_the_idle_timeout() {
    let slow = Echo::start_with_delay("slow", Duration::from_secs(6));
    let port = free_port();
    let _plane = DataPlane::start_with(&catch_all(port, slow.port), &["--idle-timeout-secs", "1"]);
    let (response, took) =
        exchange(port, b"GET /slow HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n", Duration::from_secs(5));
    assert_eq!(response.status, 504, "{response:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(3000), "{took:?}");
    assert_eq!(slow.seen(), ["GET /slow"], "sent once, never again on another connection");
}

#[test]
fn a_request_body_slower_than_its_deadline_gets_408() {
    let a = Echo::start("a");
    let port = free_port();
    let _plane = DataPlane::start_with(&catch_all(port, a.port), &["--request-body-timeout-secs", "1"]);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    stream.write_all(b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1000\r\n\r\n").unwrap();
    // Ten bytes every 200 ms: each read is well within the idle timeout, the whole body
    // never within its deadline.
    let dribble = {
        let mut writer = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..50 {
                if writer.write_all(&[b'x'; 10]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("held open ({e}); got {bytes:?}"),
        }
    }
    let took = started.elapsed();
    let response = parse_response(&bytes);
    eprintln!("case a body of 10 bytes per 200 ms: status {} after {took:?}", response.status);
    assert_eq!(response.status, 408, "{response:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(3000), "{took:?}");
    drop(stream);
    dribble.join().unwrap();
}

#[test]
fn a_client_that_never_reads_its_response_is_closed_at_the_idle_timeout() {
    // A backend answering every request with 256 MiB, as fast as it can.
    const SIZE: usize = 256 << 20;
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in backend.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head);
                let _ = stream.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {SIZE}\r\n\r\n").as_bytes());
                let block = vec![0u8; 1 << 20];
                for _ in 0..SIZE >> 20 {
                    if stream.write_all(&block).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let port = free_port();
    let _plane = DataPlane::start_with(&catch_all(port, backend_port), &["--idle-timeout-secs", "1"]);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(b"GET /big HTTP/1.1\r\nHost: a.example\r\n\r\n").unwrap();
    // Never read for three idle timeouts, then read what was buffered: the data plane
    // gave up writing and closed, long before the whole response.
    std::thread::sleep(Duration::from_secs(3));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut received = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the connection was held open ({e}) after {received} bytes"),
        }
    }
    eprintln!("case a client that never reads: closed after {received} of {SIZE} bytes");
    assert!(received > 0 && received < SIZE / 2, "{received} of {SIZE} bytes");
}
