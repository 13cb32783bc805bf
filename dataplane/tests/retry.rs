//! HTTPRoute retries on loopback: listed codes are retried up to the attempts, others and
//! exhausted attempts pass the backend's answer through, bodies are resent whole,
//! connection failures move to another endpoint, and the request timeout bounds it all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sluice_snapshot::{
    Cluster, HttpMatch, HttpRoute, Listener, PathMatch, PathMatchType, Protocol, Retry, Snapshot, Timeouts,
};
use support::{DataPlane, Echo, cluster, free_port, get, raw, to};

/// A backend that answers `fail` with status `code` for its first `failures` requests,
/// then 200 with the request body; it records every body it got.
struct Flaky {
    port: u16,
    requests: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<String>>>,
}

fn flaky(code: u16, failures: usize) -> Flaky {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (count, log) = (requests.clone(), bodies.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (count, log) = (count.clone(), log.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header.trim().is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    reader.read_exact(&mut body).unwrap();
                    log.lock().unwrap().push(String::from_utf8_lossy(&body).to_string());
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let (status, text) = if n < failures { (code, "fail") } else { (200, "ok") };
                    let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{text}", text.len());
                    if writer.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Flaky { port, requests, bodies }
}

fn route(retry: Retry, timeouts: Option<Timeouts>) -> HttpRoute {
    HttpRoute {
        name: "httproute/test/r/rule/0/match/0".into(),
        r#match: Some(HttpMatch {
            path: Some(PathMatch { r#type: PathMatchType::Prefix as i32, value: "/".into() }),
            ..Default::default()
        }),
        backends: vec![to("b", 1)],
        retry: Some(retry),
        timeouts,
        ..Default::default()
    }
}

fn snapshot(port: u16, route: HttpRoute, backend: Cluster) -> Snapshot {
    Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![Listener {
            name: "gateway/test/gw/listener/http".into(),
            port: u32::from(port),
            protocol: Protocol::Http as i32,
            http_routes: vec![route],
            ..Default::default()
        }],
        clusters: vec![backend],
        ..Default::default()
    }
}

fn retry(codes: &[u32], attempts: u32) -> Retry {
    Retry { codes: codes.to_vec(), attempts, backoff_ms: 10 }
}

#[test]
fn listed_codes_are_retried_up_to_the_attempts() {
    // Two failures, three attempts allowed: the third try succeeds.
    let backend = flaky(500, 2);
    let port = free_port();
    let plane = DataPlane::start(&snapshot(port, route(retry(&[500], 3), None), cluster("b", &[backend.port])));
    assert_eq!(get(port, "x", "/", &[]).status, 200);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 3);
    assert!(plane.admin("/metrics").contains(r#"sluice_retries_total{route="httproute/test/r/rule/0/match/0"} 2"#));
    drop(plane);

    // Four failures, two retries: the backend's own 500 comes back after three tries.
    let backend = flaky(500, 4);
    let port = free_port();
    let _plane = DataPlane::start(&snapshot(port, route(retry(&[500], 2), None), cluster("b", &[backend.port])));
    let response = get(port, "x", "/", &[]);
    assert_eq!((response.status, response.body.as_str()), (500, "fail"));
    assert_eq!(backend.requests.load(Ordering::SeqCst), 3);
}

#[test]
fn unlisted_codes_and_zero_attempts_are_not_retried() {
    let backend = flaky(503, 1);
    let port = free_port();
    let _plane = DataPlane::start(&snapshot(port, route(retry(&[500], 3), None), cluster("b", &[backend.port])));
    assert_eq!(get(port, "x", "/", &[]).status, 503);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);

    let backend = flaky(500, 1);
    let port = free_port();
    let _plane = DataPlane::start(&snapshot(port, route(retry(&[500], 0), None), cluster("b", &[backend.port])));
    assert_eq!(get(port, "x", "/", &[]).status, 500);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);
}

#[test]
fn request_bodies_are_resent_whole() {
    let backend = flaky(502, 1);
    let port = free_port();
    let _plane = DataPlane::start(&snapshot(port, route(retry(&[502], 2), None), cluster("b", &[backend.port])));
    let body = "a".repeat(3000);
    let request = format!(
        "POST /upload HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = raw(port, request.as_bytes());
    assert_eq!(response.status, 200, "{} after {} requests", response.body, backend.requests.load(Ordering::SeqCst));
    assert_eq!(*backend.bodies.lock().unwrap(), vec![body.clone(), body]);
}

#[test]
fn connection_failures_move_to_another_endpoint() {
    let echo = Echo::start("alive");
    let refused = free_port();
    let port = free_port();
    let _plane = DataPlane::start(&snapshot(port, route(retry(&[], 5), None), cluster("b", &[refused, echo.port])));
    for _ in 0..6 {
        let response = get(port, "x", "/", &[]);
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.echo("backend"), Some("alive"));
    }
}

#[test]
fn retries_stop_at_the_request_timeout() {
    // The backend always fails slowly enough that 5 retries cannot fit in 300 ms.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buffer) {
                    if n == 0 {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(120));
                    let _ = stream.write_all(b"HTTP/1.1 500 X\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    let port = free_port();
    let timeouts = Timeouts { request_ms: 300, backend_request_ms: 0 };
    let _plane = DataPlane::start(&snapshot(port, route(retry(&[500], 5), Some(timeouts)), cluster("b", &[backend])));
    let started = std::time::Instant::now();
    assert_eq!(get(port, "x", "/", &[]).status, 504);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
}

#[test]
fn bodies_beyond_the_retry_buffer_are_never_resent() {
    let backend = flaky(502, 1);
    let port = free_port();
    let _plane = DataPlane::start(&snapshot(port, route(retry(&[502], 2), None), cluster("b", &[backend.port])));
    let body = "b".repeat(100_000);
    let request = format!(
        "POST /upload HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(raw(port, request.as_bytes()).status, 502);
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);
}
