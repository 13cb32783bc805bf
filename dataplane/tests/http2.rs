//! HTTP/2 clients (cleartext h2c here; TLS with ALPN h2 in tls_tcp.rs) on real sockets:
//! every response framing of an HTTP/1.1 backend, request bodies with and without a
//! length, concurrent streams, routes that need Pingora's proxy on the same connection,
//! proxy answers, upstream failures. (CI also runs these with
//! `SLUICE_TEST_HTTP1_FAST_PATH=false`: Pingora's path must give the same answers.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sluice_snapshot::{HttpMatch, HttpRoute, PathMatch, PathMatchType, Snapshot, http_filter};
use support::{DataPlane, catch_all, cluster, free_port, read_chunks, to};

/// A backend that logs every request (head, then the body: `[chunked]` and the decoded
/// data for a chunked one) and answers by path.
struct Backend {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || serve(stream, &seen));
            }
        });
        Backend { port, log }
    }

    /// The logged request whose request line has `path`.
    fn request(&self, path: &str) -> String {
        let needle = format!(" {path} HTTP/1.1\r\n");
        self.log.lock().unwrap().iter().find(|r| r.contains(&needle)).cloned().unwrap_or_default()
    }
}

fn serve(stream: TcpStream, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let lower = head.to_ascii_lowercase();
        let length = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0usize);
        let body = if lower.contains("\r\ntransfer-encoding: chunked\r\n") {
            let mut body = b"[chunked]".to_vec();
            body.extend(read_chunks(&mut reader));
            body
        } else {
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            body
        };
        let request = format!("{head}{}", String::from_utf8_lossy(&body));
        log.lock().unwrap().push(request.clone());
        let path = head.split_whitespace().nth(1).unwrap_or_default();
        let (bytes, close): (Vec<u8>, bool) = match path {
            "/length" => (b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nx-kind: length\r\n\r\nlength".to_vec(), false),
            "/chunked" => (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n3\r\nchu\r\n4;x=y\r\nnked\r\n0\r\nx-t: 1\r\n\r\n"
                    .to_vec(),
                false,
            ),
            "/close" => (b"HTTP/1.1 200 OK\r\n\r\nuntil close".to_vec(), true),
            "/interim" => (
                b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 7\r\n\r\ncreated"
                    .to_vec(),
                false,
            ),
            "/empty" => (b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), false),
            "/head" => (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".to_vec(), false),
            "/big" => {
                let body = "x".repeat(300_000);
                (format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes(), false)
            }
            "/broken" => (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort".to_vec(), true),
            // Everything else: the request as it arrived.
            _ => (
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{request}", request.len()).into_bytes(),
                false,
            ),
        };
        if writer.write_all(&bytes).is_err() || close {
            return;
        }
    }
}

/// One HTTP/2 response: status, header fields, body (or the stream's error).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Result<Vec<u8>, String>,
}

/// A request to send on the connection: method, path, extra fields, body (`Some` with
/// `length`: sent with Content-Length; without: DATA frames only).
struct Ask {
    method: &'static str,
    path: String,
    fields: Vec<(&'static str, &'static str)>,
    body: Option<(Vec<u8>, bool)>,
}

fn ask(method: &'static str, path: &str) -> Ask {
    Ask { method, path: path.to_string(), fields: Vec::new(), body: None }
}

/// Sends every request on one cleartext HTTP/2 connection at once and collects the
/// replies in order.
fn exchange(port: u16, asks: Vec<Ask>) -> Vec<Reply> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut pending = Vec::new();
        for ask in asks {
            let mut client = client.clone().ready().await.unwrap();
            let mut request =
                http::Request::builder().method(ask.method).uri(format!("http://app.example:{port}{}", ask.path));
            for (name, value) in &ask.fields {
                request = request.header(*name, *value);
            }
            if let Some((body, true)) = &ask.body {
                request = request.header("content-length", body.len());
            }
            let end = ask.body.is_none();
            let (response, mut send) = client.send_request(request.body(()).unwrap(), end).unwrap();
            if let Some((body, _)) = ask.body {
                // In two DATA frames.
                let (first, second) = body.split_at(body.len() / 2);
                send.send_data(Bytes::copy_from_slice(first), false).unwrap();
                send.send_data(Bytes::copy_from_slice(second), true).unwrap();
            }
            pending.push(tokio::spawn(async move {
                let response = match response.await {
                    Ok(response) => response,
                    Err(error) => {
                        return Reply { status: 0, headers: http::HeaderMap::new(), body: Err(error.to_string()) };
                    }
                };
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let mut stream = response.into_body();
                let mut body = Vec::new();
                while let Some(data) = stream.data().await {
                    match data {
                        Ok(data) => {
                            let _ = stream.flow_control().release_capacity(data.len());
                            body.extend_from_slice(&data);
                        }
                        Err(error) => return Reply { status, headers, body: Err(error.to_string()) },
                    }
                }
                Reply { status, headers, body: Ok(body) }
            }));
        }
        let mut replies = Vec::new();
        for reply in pending {
            replies.push(reply.await.unwrap());
        }
        replies
    })
}

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(reply.body.as_ref().unwrap()).to_string()
}

#[test]
fn streams_pass_every_response_framing_and_request_body() {
    let backend = Backend::start();
    let port = free_port();
    let _plane = DataPlane::start(&catch_all(port, backend.port));
    let mut with_length = ask("POST", "/with-length");
    with_length.body = Some((b"hello world".to_vec(), true));
    let mut without_length = ask("PUT", "/without-length");
    without_length.body = Some((b"streamed body".to_vec(), false));
    let mut cookies = ask("GET", "/cookies");
    cookies.fields = vec![("cookie", "a=1"), ("cookie", "b=2"), ("x-forwarded-proto", "forged")];
    let replies = exchange(
        port,
        vec![
            ask("GET", "/length"),
            ask("GET", "/chunked"),
            ask("GET", "/close"),
            ask("GET", "/interim"),
            ask("GET", "/empty"),
            ask("HEAD", "/head"),
            ask("GET", "/big"),
            with_length,
            without_length,
            cookies,
            ask("GET", "/length?again=1"),
        ],
    );
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 201, 204, 200, 200, 200, 200, 200, 200], "{replies:?}");
    assert_eq!(text(&replies[0]), "length");
    assert_eq!(replies[0].headers.get("x-kind").unwrap(), "length");
    assert_eq!(replies[0].headers.get("content-length").unwrap(), "6");
    assert_eq!(text(&replies[1]), "chunked", "decoded, without the chunked framing");
    assert!(replies[1].headers.get("transfer-encoding").is_none() && replies[1].headers.get("connection").is_none());
    assert_eq!(text(&replies[2]), "until close");
    assert_eq!(text(&replies[3]), "created", "the final response after a 1xx");
    assert_eq!(text(&replies[4]), "");
    assert_eq!(text(&replies[5]), "", "HEAD: no body");
    assert_eq!(replies[5].headers.get("content-length").unwrap(), "100");
    assert_eq!(replies[6].body.as_ref().unwrap().len(), 300_000, "larger than any window or buffer");
    for reply in &replies {
        assert!(reply.headers.get("date").is_some(), "{reply:?}");
    }
    // What the backend saw: HTTP/1.1 with Host from :authority, the body framed by its
    // length or chunked, the cookies in one field, the proxy's own X-Forwarded-Proto.
    // (Field names compared in lower case: Pingora's path writes some capitalized.)
    let request = text(&replies[7]).to_ascii_lowercase();
    assert!(request.starts_with("post /with-length http/1.1\r\n"), "{request}");
    assert!(request.contains("\r\nhost: app.example:") && request.contains("\r\ncontent-length: 11\r\n"), "{request}");
    assert!(request.ends_with("\r\n\r\nhello world"), "{request}");
    assert!(request.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"), "{request}");
    let streamed = backend.request("/without-length");
    assert!(streamed.ends_with("\r\n\r\n[chunked]streamed body"), "{streamed}");
    let request = text(&replies[9]).to_ascii_lowercase();
    assert!(request.contains("\r\ncookie: a=1; b=2\r\n"), "{request}");
    assert!(request.contains("\r\nx-forwarded-proto: http\r\n") && !request.contains("forged"), "{request}");
}

fn snapshot(port: u16, routes: Vec<HttpRoute>, clusters: Vec<sluice_snapshot::Cluster>) -> Snapshot {
    let mut snapshot = catch_all(port, 0);
    snapshot.listeners[0].http_routes = routes;
    snapshot.clusters = clusters;
    snapshot
}

fn prefix(name: &str, prefix: &str, backend: &str) -> HttpRoute {
    HttpRoute {
        name: name.into(),
        r#match: Some(HttpMatch {
            path: Some(PathMatch { r#type: PathMatchType::Prefix as i32, value: prefix.into() }),
            ..Default::default()
        }),
        backends: vec![to(backend, 1)],
        ..Default::default()
    }
}

#[test]
fn routes_for_pingora_and_proxy_answers_share_a_connection_with_forwarded_streams() {
    let backend = Backend::start();
    let port = free_port();
    // Retries are Pingora's (timeouts are not any more).
    let mut timed = prefix("timed", "/timed", "a");
    timed.retry = Some(sluice_snapshot::Retry { codes: vec![503], attempts: 1, backoff_ms: 10 });
    let mut redirect = prefix("redirect", "/old", "a");
    redirect.backends.clear();
    redirect.filters = vec![sluice_snapshot::HttpFilter {
        kind: Some(http_filter::Kind::RequestRedirect(sluice_snapshot::RequestRedirect {
            hostname: "new.example".into(),
            status_code: 301,
            ..Default::default()
        })),
    }];
    let mut edited = prefix("edited", "/edited", "a");
    edited.filters = vec![sluice_snapshot::HttpFilter {
        kind: Some(http_filter::Kind::ResponseHeaderModifier(sluice_snapshot::HeaderModifier {
            set: vec![sluice_snapshot::Header { name: "x-edited".into(), value: "yes".into() }],
            ..Default::default()
        })),
    }];
    let _plane = DataPlane::start(&snapshot(
        port,
        vec![timed, redirect, edited, prefix("gone", "/gone", "nowhere"), prefix("rest", "/known", "a")],
        vec![cluster("a", &[backend.port]), cluster("nowhere", &[])],
    ));
    let replies = exchange(
        port,
        vec![
            ask("GET", "/timed/x"),
            ask("GET", "/old/y?q=1"),
            ask("GET", "/edited"),
            ask("GET", "/gone"),
            ask("GET", "/unknown"),
            ask("GET", "/known/z"),
            ask("GET", "/timed/again"),
        ],
    );
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 301, 200, 503, 404, 200, 200], "{replies:?}");
    assert!(text(&replies[0]).starts_with("GET /timed/x HTTP/1.1\r\n"));
    assert_eq!(replies[1].headers.get("location").unwrap(), &format!("http://new.example:{port}/old/y?q=1"));
    assert_eq!(replies[2].headers.get("x-edited").unwrap(), "yes");
    assert!(text(&replies[5]).starts_with("GET /known/z HTTP/1.1\r\n"));
    assert!(text(&replies[6]).starts_with("GET /timed/again HTTP/1.1\r\n"));
}

#[test]
fn a_backend_breaking_its_response_resets_only_that_stream() {
    let backend = Backend::start();
    let port = free_port();
    let refused = free_port();
    let _plane = DataPlane::start(&snapshot(
        port,
        vec![prefix("refused", "/refused", "down"), prefix("rest", "/", "a")],
        vec![cluster("a", &[backend.port]), cluster("down", &[refused])],
    ));
    let replies = exchange(port, vec![ask("GET", "/broken"), ask("GET", "/refused"), ask("GET", "/length")]);
    // The body broke off after the head: the stream ends in a reset (the head may or
    // may not have reached the client before it), never in a complete response.
    assert!(replies[0].body.is_err(), "{replies:?}");
    assert_eq!(replies[1].status, 503, "connection refused: {replies:?}");
    assert_eq!(text(&replies[2]), "length", "the sibling stream is served: {replies:?}");
}

#[test]
fn streams_to_routes_with_timeouts_answer_504_when_the_backend_is_slow() {
    let slow = support::Echo::start_with_delay("slow", std::time::Duration::from_millis(1500));
    let backend = Backend::start();
    let port = free_port();
    let mut timed = prefix("timed", "/timed", "slow");
    timed.timeouts = Some(sluice_snapshot::Timeouts { request_ms: 300, backend_request_ms: 0 });
    let _plane = DataPlane::start(&snapshot(
        port,
        vec![timed, prefix("rest", "/length", "a")],
        vec![cluster("slow", &[slow.port]), cluster("a", &[backend.port])],
    ));
    let started = std::time::Instant::now();
    let replies = exchange(port, vec![ask("GET", "/timed/x"), ask("GET", "/length")]);
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [504, 200], "the slow stream times out, the other is served");
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_millis(1200), "took {took:?}");
}
