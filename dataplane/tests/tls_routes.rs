//! TLS listeners (protocol TLS) on loopback: SNI routing with passthrough to TLS backends,
//! termination in front of backends that speak first, both modes on one port, and
//! connections closed without a TLS alert when nothing serves them (no route, an invalid
//! backend, no endpoint, a slow, hostile or oversized ClientHello).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use sluice_snapshot::{
    Certificate, DirectResponse, Listener, Protocol, Snapshot, TlsMode, TlsRoute, WeightedBackend, weighted_backend,
};
use support::{DataPlane, cluster, free_port, to};

/// A self-signed certificate (rcgen) for `names`: its PEM chain and key, and its DER.
struct TestCertificate {
    chain_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn certificate_for(names: &[&str]) -> TestCertificate {
    let names: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names).unwrap();
    TestCertificate { chain_pem: cert.pem(), key_pem: signing_key.serialize_pem(), der: cert.der().to_vec() }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS backend: after its handshake it says `hello from NAME (SNI sni)` first, then
/// answers each line with `NAME: line`.
fn tls_backend(name: &str, certificate: &TestCertificate) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let chain = vec![rustls_pki_types::CertificateDer::from(certificate.der.clone())];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(certificate.key_pem.as_bytes()).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let name = name.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (config, name) = (config.clone(), name.clone());
            std::thread::spawn(move || {
                let connection = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(connection, stream);
                while tls.conn.is_handshaking() {
                    if tls.conn.complete_io(&mut tls.sock).is_err() {
                        return;
                    }
                }
                let sni = tls.conn.server_name().unwrap_or("-").to_string();
                serve_lines(&mut tls, &name, &format!("hello from {name} (SNI {sni})\n"));
            });
        }
    });
    port
}

/// A plain TCP backend that speaks first (`greeting from NAME`), as the conformance TCP
/// echo server does, then answers each line with `NAME: line`.
fn greeting_backend(name: &str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let name = name.to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let name = name.clone();
            std::thread::spawn(move || serve_lines(&mut stream, &name, &format!("greeting from {name}\n")));
        }
    });
    port
}

fn serve_lines<S: Read + Write>(stream: &mut S, name: &str, first: &str) {
    if stream.write_all(first.as_bytes()).and_then(|()| stream.flush()).is_err() {
        return;
    }
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let stream = reader.get_mut();
        if stream.write_all(format!("{name}: {line}").as_bytes()).and_then(|()| stream.flush()).is_err() {
            return;
        }
    }
}

type Client = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection through the data plane with SNI `sni`, trusting only `trusted`; no
/// ALPN offered (as the conformance suite's TLS client).
fn connect(port: u16, sni: &str, trusted: &TestCertificate) -> Result<Client, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(trusted.der.clone())).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, socket);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

fn read_line(tls: &mut Client) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while tls.read(&mut byte).unwrap() == 1 {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

/// The server's first line, then the answer to `ping`.
fn talk(tls: &mut Client) -> (String, String) {
    let first = read_line(tls);
    tls.write_all(b"ping\n").unwrap();
    tls.flush().unwrap();
    (first, read_line(tls))
}

fn tls_route(name: &str, hostnames: &[&str], backends: Vec<WeightedBackend>) -> TlsRoute {
    TlsRoute {
        name: format!("tlsroute/test/{name}/rule/0"),
        hostnames: hostnames.iter().map(|h| (*h).to_string()).collect(),
        backends,
    }
}

fn tls_listener(name: &str, port: u16, hostname: &str, certificate: Option<&str>, routes: Vec<TlsRoute>) -> Listener {
    Listener {
        name: format!("gateway/test/gw/listener/{name}"),
        port: u32::from(port),
        protocol: Protocol::Tls as i32,
        hostname: hostname.into(),
        tls_mode: if certificate.is_some() { TlsMode::Terminate } else { TlsMode::Passthrough } as i32,
        certificates: certificate.map(|c| vec![c.to_string()]).unwrap_or_default(),
        tls_routes: routes,
        ..Default::default()
    }
}

fn snapshot_certificate(name: &str, certificate: &TestCertificate) -> Certificate {
    Certificate {
        name: name.into(),
        cert_chain_pem: certificate.chain_pem.clone(),
        private_key_pem: certificate.key_pem.clone(),
    }
}

fn invalid(weight: u32) -> WeightedBackend {
    WeightedBackend {
        name: "service/test/missing/port/443".into(),
        weight,
        target: Some(weighted_backend::Target::Invalid(DirectResponse { status: 500, body: String::new() })),
        filters: vec![],
    }
}

/// How a connection attempt ended, as the conformance suite's rejection check sees it.
#[derive(Debug, PartialEq)]
enum Rejection {
    /// EOF or a reset during the handshake: what the suite accepts.
    Closed,
    /// Anything else (an alert, a completed handshake, a timeout) fails it.
    Other(String),
}

fn rejection(result: Result<Client, std::io::Error>) -> Rejection {
    match result {
        Ok(_) => Rejection::Other("the handshake completed".into()),
        Err(error)
            if matches!(error.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset) =>
        {
            Rejection::Closed
        }
        Err(error) => Rejection::Other(format!("{:?}: {error}", error.kind())),
    }
}

/// Passthrough by SNI: the exact hostname beats the wildcard, the backend completes the
/// client's handshake (its own certificate, the SNI the client sent) and speaks first.
#[test]
fn passthrough_routes_by_sni_and_the_backend_handshakes_with_the_client() {
    let (exact_cert, wild_cert) = (certificate_for(&["abc.example.com"]), certificate_for(&["*.example.com"]));
    let (exact, wild) = (tls_backend("exact", &exact_cert), tls_backend("wild", &wild_cert));
    let port = free_port();
    let snapshot = Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![tls_listener(
            "pass",
            port,
            "*.example.com",
            None,
            vec![
                tls_route("wild", &["*.example.com"], vec![to("wild", 1)]),
                tls_route("exact", &["abc.example.com"], vec![to("exact", 1)]),
            ],
        )],
        clusters: vec![cluster("exact", &[exact]), cluster("wild", &[wild])],
        ..Default::default()
    };
    let plane = DataPlane::start(&snapshot);

    let mut tls = connect(port, "abc.example.com", &exact_cert).unwrap();
    assert_eq!(talk(&mut tls), ("hello from exact (SNI abc.example.com)\n".into(), "exact: ping\n".into()));
    assert_eq!(tls.conn.peer_certificates().unwrap()[0].as_ref(), exact_cert.der.as_slice());
    drop(tls);
    let mut tls = connect(port, "other.example.com", &wild_cert).unwrap();
    assert_eq!(talk(&mut tls), ("hello from wild (SNI other.example.com)\n".into(), "wild: ping\n".into()));
    drop(tls);
    // A name outside the listener's hostname: closed.
    assert_eq!(rejection(connect(port, "abc.example.org", &exact_cert)), Rejection::Closed);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = plane.admin("/metrics");
        let line = format!("sluice_tls_connections_total{{port=\"{port}\",outcome=\"passthrough\"}} 2");
        if metrics.contains(&line)
            && metrics.contains(&format!("sluice_tls_connections_total{{port=\"{port}\",outcome=\"no_route\"}} 1"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Terminate: the listener's certificate, a plaintext backend that speaks before the
/// client sends anything, and bytes both ways.
#[test]
fn terminate_presents_the_listener_certificate_and_connects_the_backend_at_once() {
    let listener_cert = certificate_for(&["tls.example.com"]);
    let backend = greeting_backend("plain");
    let port = free_port();
    let snapshot = Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![tls_listener(
            "term",
            port,
            "tls.example.com",
            Some("secret/test/tls"),
            vec![tls_route("term", &["tls.example.com"], vec![to("plain", 1)])],
        )],
        clusters: vec![cluster("plain", &[backend])],
        certificates: vec![snapshot_certificate("secret/test/tls", &listener_cert)],
        ..Default::default()
    };
    let _plane = DataPlane::start(&snapshot);
    let mut tls = connect(port, "tls.example.com", &listener_cert).unwrap();
    assert_eq!(tls.conn.peer_certificates().unwrap()[0].as_ref(), listener_cert.der.as_slice());
    assert_eq!(talk(&mut tls), ("greeting from plain\n".into(), "plain: ping\n".into()));
    tls.write_all(b"again\n").unwrap();
    assert_eq!(read_line(&mut tls), "plain: again\n");
    // The backend closing ends the client's stream too (close_notify, then EOF).
    drop(tls);
    assert_eq!(rejection(connect(port, "other.example.com", &listener_cert)), Rejection::Closed);
}

/// TLSRouteModeMixed: on one port, the SNI picks a terminating or a passthrough listener.
#[test]
fn one_port_terminates_or_passes_through_by_sni() {
    let (listener_cert, backend_cert) = (certificate_for(&["tls.example.com"]), certificate_for(&["abc.example.com"]));
    let (plain, secure) = (greeting_backend("plain"), tls_backend("secure", &backend_cert));
    let port = free_port();
    let snapshot = Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![
            tls_listener(
                "tls-terminate",
                port,
                "tls.example.com",
                Some("secret/test/tls"),
                vec![tls_route("term", &["tls.example.com"], vec![to("plain", 1)])],
            ),
            tls_listener(
                "tls-passthrough",
                port,
                "abc.example.com",
                None,
                vec![tls_route("pass", &["abc.example.com"], vec![to("secure", 1)])],
            ),
        ],
        clusters: vec![cluster("plain", &[plain]), cluster("secure", &[secure])],
        certificates: vec![snapshot_certificate("secret/test/tls", &listener_cert)],
        ..Default::default()
    };
    let _plane = DataPlane::start(&snapshot);
    let terminated = std::thread::spawn(move || {
        let mut tls = connect(port, "tls.example.com", &listener_cert).unwrap();
        talk(&mut tls)
    });
    let mut tls = connect(port, "abc.example.com", &backend_cert).unwrap();
    assert_eq!(talk(&mut tls), ("hello from secure (SNI abc.example.com)\n".into(), "secure: ping\n".into()));
    assert_eq!(terminated.join().unwrap(), ("greeting from plain\n".into(), "plain: ping\n".into()));
}

/// A terminated connection to a backend with a BackendTLSPolicy: the data plane opens TLS
/// of its own (the policy's SNI, verified against its CA) and copies plaintext between the
/// two sessions; a backend the policy's CA does not trust is never reached in plaintext.
/// Passed-through TLS ignores the policy: the client's session reaches the backend as is.
#[test]
fn terminate_originates_tls_to_a_backend_with_a_policy() {
    let listener_cert = certificate_for(&["tls.example.com", "pass.example.com"]);
    let backend_cert = certificate_for(&["abc.example.com"]);
    let stranger = certificate_for(&["abc.example.com"]);
    let secure = tls_backend("secure", &backend_cert);
    let policy = |ca: &TestCertificate| sluice_snapshot::UpstreamTls {
        policy: "backendtlspolicy/test/btls".into(),
        sni: "abc.example.com".into(),
        ca_pem: ca.chain_pem.clone(),
        ..Default::default()
    };
    let port = free_port();
    let snapshot = Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![
            tls_listener(
                "term",
                port,
                "tls.example.com",
                Some("secret/test/tls"),
                vec![tls_route("term", &["tls.example.com"], vec![to("trusted", 1)])],
            ),
            tls_listener(
                "untrusted",
                port,
                "bad.example.com",
                Some("secret/test/tls"),
                vec![tls_route("bad", &["bad.example.com"], vec![to("untrusted", 1)])],
            ),
            tls_listener(
                "pass",
                port,
                "abc.example.com",
                None,
                vec![tls_route("pass", &["abc.example.com"], vec![to("trusted", 1)])],
            ),
        ],
        clusters: vec![
            sluice_snapshot::Cluster { tls: Some(policy(&backend_cert)), ..cluster("trusted", &[secure]) },
            sluice_snapshot::Cluster { tls: Some(policy(&stranger)), ..cluster("untrusted", &[secure]) },
        ],
        certificates: vec![snapshot_certificate("secret/test/tls", &listener_cert)],
        ..Default::default()
    };
    let _plane = DataPlane::start(&snapshot);
    let mut tls = connect(port, "tls.example.com", &listener_cert).unwrap();
    assert_eq!(tls.conn.peer_certificates().unwrap()[0].as_ref(), listener_cert.der.as_slice());
    assert_eq!(talk(&mut tls), ("hello from secure (SNI abc.example.com)\n".into(), "secure: ping\n".into()));
    drop(tls);
    let mut tls = connect(port, "abc.example.com", &backend_cert).unwrap();
    assert_eq!(tls.conn.peer_certificates().unwrap()[0].as_ref(), backend_cert.der.as_slice());
    assert_eq!(talk(&mut tls), ("hello from secure (SNI abc.example.com)\n".into(), "secure: ping\n".into()));
    drop(tls);
    assert_eq!(rejection(connect(port, "bad.example.com", &listener_cert)), Rejection::Closed);
}

/// What the suite's rejection check needs: no route, an invalid backend, a backend without
/// endpoints or one that refuses: the connection closes promptly, never with an alert. A
/// route with a valid and an invalid backend serves only its valid share.
#[test]
fn connections_nothing_can_serve_are_closed_without_an_alert() {
    let listener_cert = certificate_for(&["*.example.com"]);
    let plain = greeting_backend("plain");
    let refusing = free_port();
    let (pass_port, term_port) = (free_port(), free_port());
    let routes = || {
        vec![
            tls_route("invalid", &["invalid.example.com"], vec![invalid(1)]),
            tls_route("empty", &["empty.example.com"], vec![to("empty", 1)]),
            tls_route("refused", &["refused.example.com"], vec![to("refusing", 1)]),
            tls_route("half", &["half.example.com"], vec![to("plain", 1), invalid(1)]),
        ]
    };
    let snapshot = Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![
            tls_listener("pass", pass_port, "", None, routes()),
            tls_listener("term", term_port, "*.example.com", Some("secret/test/tls"), routes()),
        ],
        clusters: vec![cluster("plain", &[plain]), cluster("empty", &[]), cluster("refusing", &[refusing])],
        certificates: vec![snapshot_certificate("secret/test/tls", &listener_cert)],
        ..Default::default()
    };
    let _plane = DataPlane::start(&snapshot);
    for port in [pass_port, term_port] {
        for sni in ["nomatch.example.com", "invalid.example.com", "empty.example.com", "refused.example.com"] {
            let started = Instant::now();
            assert_eq!(rejection(connect(port, sni, &listener_cert)), Rejection::Closed, "port {port}, SNI {sni}");
            assert!(started.elapsed() < Duration::from_secs(3), "port {port}, SNI {sni}: {:?}", started.elapsed());
        }
    }
    // Half of the connections for half.example.com reach the backend, half are closed.
    let mut served = 0;
    for _ in 0..4 {
        if let Ok(mut tls) = connect(term_port, "half.example.com", &listener_cert) {
            assert_eq!(read_line(&mut tls), "greeting from plain\n");
            served += 1;
        }
    }
    assert_eq!(served, 2);
}

/// The first flight of a rustls client for `sni`: a complete ClientHello.
fn client_hello(sni: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut bytes = Vec::new();
    client.write_tls(&mut bytes).unwrap();
    bytes
}

/// Reads until the data plane closes the connection; returns what it sent (nothing, for
/// a rejection) and when it closed.
fn until_closed(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return (received, Instant::now()),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return (received, Instant::now()),
            Err(error) => panic!("the connection was not closed: {error}"),
        }
    }
}

/// Hostile clients: a ClientHello trickling in is cut at the deadline, garbage and an
/// oversized ClientHello are refused at once; none gets a byte back. The deadline is 3 s so
/// that "at once" (under 1.5 s) and "at the deadline" stay apart on a loaded CI machine.
#[test]
fn slow_garbage_and_oversized_client_hellos_are_cut_without_an_answer() {
    let backend = greeting_backend("plain");
    let port = free_port();
    let snapshot = Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![tls_listener("pass", port, "", None, vec![tls_route("all", &[], vec![to("plain", 1)])])],
        clusters: vec![cluster("plain", &[backend])],
        ..Default::default()
    };
    let plane = DataPlane::start_with(&snapshot, &["--tls-handshake-timeout-secs", "3"]);

    // A byte every 200 ms: the whole ClientHello would take far longer than 3 s.
    let hello = client_hello("slow.example.com");
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let started = Instant::now();
    let writer = {
        let mut slow = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            for byte in hello {
                if slow.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let (received, closed) = until_closed(&mut slow);
    let took = closed - started;
    assert!(received.is_empty(), "{received:?}");
    assert!(took >= Duration::from_millis(2900) && took < Duration::from_millis(6000), "{took:?}");
    writer.join().unwrap();

    // Not TLS at all.
    let mut garbage = TcpStream::connect(("127.0.0.1", port)).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").unwrap();
    let started = Instant::now();
    let (received, closed) = until_closed(&mut garbage);
    assert!(received.is_empty() && closed - started < Duration::from_millis(1500), "{received:?}");

    // A handshake message announcing 48 KiB, in full records: refused at the size cap,
    // long before it is all sent.
    let mut huge = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut message = vec![0x01, 0x00, 0xc0, 0x00];
    message.resize(4 + 0xc000, 0x41);
    let started = Instant::now();
    let mut refused_while_sending = false;
    for part in message.chunks(16 * 1024 - 5) {
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
        record.extend_from_slice(part);
        if huge.write_all(&record).is_err() {
            refused_while_sending = true;
            break;
        }
    }
    let (received, closed) = if refused_while_sending { (Vec::new(), Instant::now()) } else { until_closed(&mut huge) };
    assert!(received.is_empty() && closed - started < Duration::from_millis(1500), "{received:?}");

    // A well-behaved client is still served.
    let mut good = TcpStream::connect(("127.0.0.1", port)).unwrap();
    good.write_all(&client_hello("good.example.com")).unwrap();
    let mut reader = BufReader::new(good);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "greeting from plain\n", "the ClientHello bytes reach the backend, which answers");

    let metrics = plane.admin("/metrics");
    for outcome in ["client_hello_timeout", "client_hello_invalid", "client_hello_too_large"] {
        let line = format!("sluice_tls_connections_total{{port=\"{port}\",outcome=\"{outcome}\"}} 1");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}
