//! TLS termination with SNI certificate selection, live certificate replacement, and TCP
//! listeners, on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_snapshot::{
    Certificate, HttpMatch, HttpRoute, Listener, PathMatch, PathMatchType, Protocol, Snapshot, TcpRoute, TlsMode,
};
use support::{DataPlane, Echo, cluster, curl, free_port, parse_response, to};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

fn certificate(name: &str, file: &str) -> Certificate {
    Certificate {
        name: name.into(),
        cert_chain_pem: fixture(&format!("{file}.crt")),
        private_key_pem: fixture(&format!("{file}.key")),
    }
}

fn catch_all(name: &str, backend: &str) -> HttpRoute {
    HttpRoute {
        name: name.into(),
        r#match: Some(HttpMatch {
            path: Some(PathMatch { r#type: PathMatchType::Prefix as i32, value: "/".into() }),
            ..Default::default()
        }),
        backends: vec![to(backend, 1)],
        ..Default::default()
    }
}

fn https_listener(name: &str, port: u16, hostname: &str, certificate: &str, backend: &str) -> Listener {
    Listener {
        name: format!("gateway/test/gw/listener/{name}"),
        port: u32::from(port),
        protocol: Protocol::Https as i32,
        hostname: hostname.into(),
        tls_mode: TlsMode::Terminate as i32,
        certificates: vec![certificate.into()],
        http_routes: vec![catch_all(name, backend)],
        ..Default::default()
    }
}

/// A TLS client trusting only the test CA; returns the response and the peer's leaf certificate.
fn https_get(port: u16, server_name: &str, path: &str) -> (support::Response, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    let ca = fixture("ca.crt");
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, socket);
    tls.write_all(format!("GET {path} HTTP/1.1\r\nhost: {server_name}\r\nconnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut bytes = Vec::new();
    let _ = tls.read_to_end(&mut bytes);
    let leaf = tls.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    (parse_response(&bytes), leaf)
}

use rustls_pki_types::pem::PemObject;

fn der_of(file: &str) -> Vec<u8> {
    rustls_pki_types::CertificateDer::from_pem_slice(fixture(&format!("{file}.crt")).as_bytes()).unwrap().to_vec()
}

#[test]
fn terminates_tls_with_the_certificate_chosen_by_sni_and_swaps_it_live() {
    let (a, w) = (Echo::start("a"), Echo::start("w"));
    let port = free_port();
    let snapshot = Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![
            https_listener("a", port, "a.example.com", "secret/test/a", "a"),
            https_listener("wild", port, "*.wild.example.com", "secret/test/wild", "w"),
        ],
        clusters: vec![cluster("a", &[a.port]), cluster("w", &[w.port])],
        certificates: vec![certificate("secret/test/a", "a.example.com"), certificate("secret/test/wild", "wild")],
        ..Default::default()
    };
    let plane = DataPlane::start(&snapshot);

    let (response, leaf) = https_get(port, "a.example.com", "/hello");
    assert_eq!(response.status, 200);
    assert_eq!(response.echo("backend"), Some("a"));
    assert_eq!(response.echo("x-forwarded-proto"), Some("https"));
    assert_eq!(leaf, der_of("a.example.com"));

    let (response, leaf) = https_get(port, "sub.wild.example.com", "/");
    assert_eq!(response.echo("backend"), Some("w"));
    assert_eq!(leaf, der_of("wild"));

    // Replace listener a's certificate with the wildcard one: the next handshake for
    // a.example.com presents it (and the client, expecting a.example.com, refuses it).
    let mut swapped = snapshot.clone();
    swapped.certificates[0] = certificate("secret/test/a", "wild");
    plane.write_snapshot(&serde_json::to_string(&swapped).unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let leaf = presented_certificate(port, "a.example.com");
        if leaf == der_of("wild") {
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate was not served");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TLS client configuration that accepts any server certificate.
fn accept_any_config() -> rustls::ClientConfig {
    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls_pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls_pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth()
}

/// The leaf certificate presented for SNI `sni`, accepted whatever it is.
fn presented_certificate(port: u16, sni: &str) -> Vec<u8> {
    let config = accept_any_config();
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while connection.is_handshaking() {
        if connection.complete_io(&mut socket).is_err() {
            break;
        }
    }
    connection.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default()
}

#[test]
fn tcp_listeners_proxy_bytes_to_weighted_backends() {
    // A TCP echo backend that prefixes what it sends back with its name.
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in backend.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buffer = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buffer) {
                    if n == 0 || stream.write_all(&[b"tcp-echo:", &buffer[..n]].concat()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let (port, dead_port) = (free_port(), free_port());
    let snapshot = Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![
            Listener {
                name: "gateway/test/gw/listener/db".into(),
                port: u32::from(port),
                protocol: Protocol::Tcp as i32,
                tcp_routes: vec![TcpRoute { name: "tcproute/test/db/rule/0".into(), backends: vec![to("db", 1)] }],
                ..Default::default()
            },
            Listener {
                name: "gateway/test/gw/listener/dead".into(),
                port: u32::from(dead_port),
                protocol: Protocol::Tcp as i32,
                tcp_routes: vec![TcpRoute { name: "tcproute/test/dead/rule/0".into(), backends: vec![to("empty", 1)] }],
                ..Default::default()
            },
        ],
        clusters: vec![cluster("db", &[backend_port]), cluster("empty", &[])],
        ..Default::default()
    };
    let _plane = DataPlane::start(&snapshot);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for message in ["hello", "again"] {
        client.write_all(message.as_bytes()).unwrap();
        let mut buffer = [0u8; 64];
        let n = client.read(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], format!("tcp-echo:{message}").as_bytes());
    }
    // A listener whose backend has no endpoint closes connections at once.
    let mut dead = TcpStream::connect(("127.0.0.1", dead_port)).unwrap();
    dead.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buffer = [0u8; 8];
    assert_eq!(dead.read(&mut buffer).unwrap_or(0), 0);
}

/// An HTTP/1.1 request over TLS with SNI `sni` and `Host: host` (any certificate accepted).
fn misdirected_get(port: u16, sni: &str, host: &str) -> support::Response {
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(accept_any_config()), name).unwrap();
    let socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, socket);
    tls.write_all(format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut bytes = Vec::new();
    let _ = tls.read_to_end(&mut bytes);
    parse_response(&bytes)
}

/// HTTPS listeners sharing a port: a request whose Host belongs to another listener than
/// the one its connection's SNI chose gets 421 (conformance:
/// HTTPRouteHTTPSListenerDetectMisdirectedRequests), over HTTP/1.1 and HTTP/2.
#[test]
fn requests_for_another_listener_than_the_sni_chose_are_misdirected() {
    let (a, w, any) = (Echo::start("a"), Echo::start("w"), Echo::start("any"));
    let port = free_port();
    let snapshot = Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![
            https_listener("a", port, "a.example.com", "secret/test/a", "a"),
            https_listener("wild", port, "*.wild.example.com", "secret/test/wild", "w"),
            https_listener("any", port, "", "secret/test/wild", "any"),
        ],
        clusters: vec![cluster("a", &[a.port]), cluster("w", &[w.port]), cluster("any", &[any.port])],
        certificates: vec![certificate("secret/test/a", "a.example.com"), certificate("secret/test/wild", "wild")],
        ..Default::default()
    };
    let _plane = DataPlane::start(&snapshot);
    for (sni, host, status, backend) in [
        ("a.example.com", "a.example.com", 200, Some("a")),
        ("a.example.com", "x.wild.example.com", 421, None),
        ("a.example.com", "other.example", 421, None),
        ("x.wild.example.com", "y.wild.example.com", 200, Some("w")),
        ("x.wild.example.com", "a.example.com", 421, None),
        ("other.example", "another.example", 200, Some("any")),
        ("other.example", "a.example.com", 421, None),
    ] {
        let response = misdirected_get(port, sni, host);
        assert_eq!(response.status, status, "SNI {sni}, Host {host}");
        assert_eq!(response.echo("backend"), backend, "SNI {sni}, Host {host}");
    }

    // HTTP/2 (ALPN h2), where connection reuse across hosts is what makes this matter.
    let h2 = |host: &str| {
        let resolve = format!("a.example.com:{port}:127.0.0.1");
        let host = format!("host: {host}");
        let url = format!("https://a.example.com:{port}/");
        curl(&["-k", "--http2", "--resolve", &resolve, "-H", &host, &url])
    };
    assert_eq!(h2("a.example.com"), "2 200");
    assert_eq!(h2("x.wild.example.com"), "2 421");
}

#[test]
fn one_broken_route_or_certificate_leaves_the_rest_serving() {
    use sluice_snapshot::{HttpFilter, PathModifier, UrlRewrite, http_filter, path_modifier};
    let a = Echo::start("a");
    let (http_port, https_port) = (free_port(), free_port());
    let prefix = |value: &str| HttpMatch {
        path: Some(PathMatch { r#type: PathMatchType::Prefix as i32, value: value.into() }),
        ..Default::default()
    };
    let route = |name: &str, m: HttpMatch| HttpRoute {
        name: format!("httproute/{name}/rule/0/match/0"),
        r#match: Some(m),
        backends: vec![to("a", 1)],
        ..Default::default()
    };
    // Team A: a regex valid alone but not once anchored, and a rewrite that would inject
    // a header into the upstream request. Team B: a plain route.
    let bad_regex = route(
        "team-a/regex",
        HttpMatch {
            path: Some(PathMatch { r#type: PathMatchType::RegularExpression as i32, value: "(?x)/r#".into() }),
            ..Default::default()
        },
    );
    let mut injection = route("team-a/rewrite", prefix("/evil"));
    injection.filters.push(HttpFilter {
        kind: Some(http_filter::Kind::UrlRewrite(UrlRewrite {
            hostname: String::new(),
            path: Some(PathModifier {
                kind: Some(path_modifier::Kind::ReplaceFullPath("/x HTTP/1.1\r\nX-Evil: 1\r\n\r\nGET /y".into())),
            }),
        })),
    });
    let good = route("team-b/good", prefix("/"));
    let mut mismatched = certificate("secret/team-a/broken", "a.example.com");
    mismatched.private_key_pem = fixture("wild.key");
    let mut broken_https = https_listener("broken", https_port, "broken.example.com", "secret/team-a/broken", "a");
    broken_https.http_routes[0].name = "httproute/team-a/tls/rule/0/match/0".into();
    let snapshot = Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![
            Listener {
                name: "gateway/test/gw/listener/http".into(),
                port: u32::from(http_port),
                protocol: Protocol::Http as i32,
                http_routes: vec![bad_regex, injection, good],
                ..Default::default()
            },
            https_listener("a", https_port, "a.example.com", "secret/test/a", "a"),
            broken_https,
        ],
        clusters: vec![cluster("a", &[a.port])],
        certificates: vec![certificate("secret/test/a", "a.example.com"), mismatched],
        ..Default::default()
    };
    // A data plane starting from this snapshot serves everything but the broken pieces.
    let plane = DataPlane::start(&snapshot);
    let http = |path: &str| support::get(http_port, "any.example.com", path, &[]);
    let response = http("/good");
    assert_eq!((response.status, response.echo("backend")), (200, Some("a")));
    assert_eq!(response.echo("path"), Some("/good"));
    // The rewrite route answers 500 and nothing reaches the backend.
    let seen_before = a.seen().len();
    assert_eq!(http("/evil/thing").status, 500);
    assert_eq!(a.seen().len(), seen_before, "the broken route must not reach its backend");
    // The regex route matches nothing: its requests fall to the next route.
    assert_eq!(http("/r").echo("path"), Some("/r"));
    let (response, leaf) = https_get(https_port, "a.example.com", "/");
    assert_eq!((response.status, leaf), (200, der_of("a.example.com")));
    assert!(
        presented_certificate(https_port, "broken.example.com").is_empty(),
        "no certificate for the broken listener"
    );

    // The same holds for a live swap: team B's changed route serves while team A's stay broken.
    let mut next = snapshot.clone();
    next.listeners[0].http_routes[2] = route("team-b/good", prefix("/v2"));
    plane.write_snapshot(&serde_json::to_string(&next).unwrap());
    let deadline = Instant::now() + Duration::from_secs(5);
    while http("/other").status != 404 {
        assert!(Instant::now() < deadline, "the new snapshot was not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http("/v2/x").echo("path"), Some("/v2/x"));
    assert_eq!(http("/evil").status, 500);
    let metrics = plane.admin("/metrics");
    assert!(metrics.contains("sluice_config_reloads_total{result=\"applied\"} 1"), "{metrics}");
    // Team A's regex and rewrite routes, its certificate and its listener.
    assert!(metrics.contains("sluice_snapshot_dropped_pieces 4"), "{metrics}");
}

#[test]
fn an_http2_client_over_tls_must_send_its_preface_within_the_head_deadline() {
    let a = Echo::start("a");
    let port = free_port();
    let snapshot = Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![https_listener("a", port, "a.example.com", "secret/test/a", "a")],
        clusters: vec![cluster("a", &[a.port])],
        certificates: vec![certificate("secret/test/a", "a.example.com")],
        ..Default::default()
    };
    let _plane = DataPlane::start_with(&snapshot, &["--request-header-timeout-secs", "1"]);
    for partial in [&b""[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n"] {
        let mut config = accept_any_config();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = rustls_pki_types::ServerName::try_from("a.example.com").unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, socket);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
        let started = Instant::now();
        tls.write_all(partial).unwrap();
        tls.flush().unwrap();
        let mut bytes = Vec::new();
        let result = tls.read_to_end(&mut bytes);
        let took = started.elapsed();
        assert!(
            result.as_ref().err().is_none_or(|e| e.kind() != std::io::ErrorKind::WouldBlock),
            "{partial:?}: held open ({result:?})"
        );
        assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(2500), "{partial:?}: {took:?}");
    }
}
