//! Client certificate validation on HTTPS ports (Gateway `spec.tls.frontend`), on
//! loopback with real TLS: AllowValidOnly fails the handshake of a client without a
//! certificate of the CA bundle, AllowInsecureFallback serves every client, a new CA
//! bundle applies to the next handshake (also to resumed sessions) while established
//! connections keep being served.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::HandshakeKind;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use sluice_snapshot::{
    Certificate, ClientValidation, ClientValidationMode, HttpMatch, HttpRoute, Listener, PathMatch, PathMatchType,
    Protocol, Snapshot, TlsMode,
};
use support::{DataPlane, Echo, cluster, free_port, parse_response, to};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap()
}

/// A client CA and a client certificate it signed (EKU clientAuth), as PEM.
struct ClientCa {
    ca_pem: String,
    client: Arc<CertifiedKey>,
}

fn client_ca(name: &str) -> ClientCa {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("client of {name}"));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &*issuer).unwrap();
    let client = sluice_snapshot::compile::load_certificate(&cert.pem(), &key.serialize_pem()).unwrap().key;
    ClientCa { ca_pem: issuer.pem(), client }
}

fn validation(name: &str, ca: &ClientCa, mode: ClientValidationMode) -> ClientValidation {
    ClientValidation { name: name.into(), ca_bundle_pem: ca.ca_pem.clone(), mode: mode as i32 }
}

fn https_listener(name: &str, port: u16, validation: &str, backend: &str) -> Listener {
    Listener {
        name: format!("gateway/test/gw/listener/{name}"),
        port: u32::from(port),
        protocol: Protocol::Https as i32,
        hostname: "a.example.com".into(),
        tls_mode: TlsMode::Terminate as i32,
        certificates: vec!["secret/test/a".into()],
        http_routes: vec![HttpRoute {
            name: format!("httproute/test/{name}/rule/0/match/0"),
            r#match: Some(HttpMatch {
                path: Some(PathMatch { r#type: PathMatchType::Prefix as i32, value: "/".into() }),
                ..Default::default()
            }),
            backends: vec![to(backend, 1)],
            ..Default::default()
        }],
        client_validation: validation.into(),
        ..Default::default()
    }
}

fn snapshot(listeners: Vec<Listener>, validations: Vec<ClientValidation>, backend_port: u16) -> Snapshot {
    Snapshot {
        gateway: "test/gw".into(),
        listeners,
        clusters: vec![cluster("a", &[backend_port])],
        certificates: vec![Certificate {
            name: "secret/test/a".into(),
            cert_chain_pem: fixture("a.example.com.crt"),
            private_key_pem: fixture("a.example.com.key"),
        }],
        client_validations: validations,
        ..Default::default()
    }
}

/// Presents `certificate` (or none) when the server asks, and counts the asks.
#[derive(Debug)]
struct Presenter {
    certificate: Option<Arc<CertifiedKey>>,
    asked: AtomicUsize,
}

impl ResolvesClientCert for Presenter {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.certificate.clone()
    }

    fn has_certs(&self) -> bool {
        self.certificate.is_some()
    }
}

/// A TLS client trusting the fixtures' CA, presenting `certificate` when asked; one
/// config resumes its sessions on later connections.
struct Client {
    config: Arc<rustls::ClientConfig>,
    presenter: Arc<Presenter>,
}

impl Client {
    fn new(certificate: Option<&Arc<CertifiedKey>>) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(fixture("ca.crt").as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let presenter = Arc::new(Presenter { certificate: certificate.cloned(), asked: AtomicUsize::new(0) });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_cert_resolver(presenter.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client { config: Arc::new(config), presenter }
    }

    fn asked(&self) -> usize {
        self.presenter.asked.load(Ordering::SeqCst)
    }

    fn connect(&self, port: u16) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let name = rustls_pki_types::ServerName::try_from("a.example.com").unwrap();
        let connection = rustls::ClientConnection::new(self.config.clone(), name).unwrap();
        let socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        rustls::StreamOwned::new(connection, socket)
    }

    /// `GET /` on a new connection: the response, or why there was none; and how the
    /// handshake went.
    fn get(&self, port: u16) -> (Result<support::Response, String>, Option<HandshakeKind>) {
        let mut tls = self.connect(port);
        let result = exchange(&mut tls, "close");
        (result, tls.conn.handshake_kind())
    }
}

/// One request on `tls` (`connection` header as given) and its response; an error when
/// the handshake or the connection fails, or the connection closes without a response.
fn exchange(
    tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    connection: &str,
) -> Result<support::Response, String> {
    let request = format!("GET / HTTP/1.1\r\nhost: a.example.com\r\nconnection: {connection}\r\n\r\n");
    tls.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match tls.read(&mut chunk) {
            Ok(n) => n,
            Err(_) if !bytes.is_empty() => 0,
            Err(error) => return Err(error.to_string()),
        };
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        // One whole response (Content-Length framed, as the echo backends answer).
        let text = String::from_utf8_lossy(&bytes);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|length| body.len() >= length) {
                break;
            }
        }
    }
    if bytes.is_empty() {
        return Err("the connection closed without a response".into());
    }
    Ok(parse_response(&bytes))
}

fn status(result: &Result<support::Response, String>) -> Result<u16, String> {
    result.as_ref().map(|r| r.status).map_err(Clone::clone)
}

#[test]
fn allow_valid_only_fails_the_handshake_without_a_certificate_of_the_bundle() {
    let backend = Echo::start("a");
    let (a, b) = (client_ca("ca-a"), client_ca("ca-b"));
    let (valid_only, plain) = (free_port(), free_port());
    let snapshot = snapshot(
        vec![https_listener("valid-only", valid_only, "v", "a"), https_listener("plain", plain, "", "a")],
        vec![validation("v", &a, ClientValidationMode::AllowValidOnly)],
        backend.port,
    );
    let _plane = DataPlane::start(&snapshot);

    let with_a = Client::new(Some(&a.client));
    let (response, _) = with_a.get(valid_only);
    let response = response.unwrap();
    assert_eq!((response.status, response.echo("backend")), (200, Some("a")));
    assert_eq!(with_a.asked(), 1, "the server asks for a certificate");

    let with_b = Client::new(Some(&b.client));
    let (response, _) = with_b.get(valid_only);
    let error = response.unwrap_err();
    assert!(error.contains("alert") || error.contains("Alert"), "a TLS alert, not an HTTP answer: {error}");
    assert_eq!(with_b.asked(), 1);

    let without = Client::new(None);
    let (response, _) = without.get(valid_only);
    let error = response.unwrap_err();
    assert!(error.contains("alert") || error.contains("Alert"), "a TLS alert, not an HTTP answer: {error}");

    // A port without validation never asks.
    let (response, _) = with_b.get(plain);
    assert_eq!(status(&response), Ok(200));
    assert_eq!(with_b.asked(), 1, "the port without validation asked for a certificate");
}

#[test]
fn allow_insecure_fallback_serves_valid_invalid_and_missing_certificates() {
    let backend = Echo::start("a");
    let (a, b) = (client_ca("ca-a"), client_ca("ca-b"));
    let port = free_port();
    let snapshot = snapshot(
        vec![https_listener("fallback", port, "v", "a")],
        vec![validation("v", &a, ClientValidationMode::AllowInsecureFallback)],
        backend.port,
    );
    let _plane = DataPlane::start(&snapshot);
    for (client, what) in [
        (Client::new(Some(&a.client)), "valid"),
        (Client::new(Some(&b.client)), "other CA"),
        (Client::new(None), "none"),
    ] {
        let (response, _) = client.get(port);
        assert_eq!(status(&response), Ok(200), "certificate: {what}");
        assert_eq!(client.asked(), 1, "certificate: {what}: the server asks for one");
    }
}

#[test]
fn a_new_ca_bundle_applies_to_new_handshakes_and_resumed_sessions_not_to_open_connections() {
    let backend = Echo::start("a");
    let (a, b) = (client_ca("ca-a"), client_ca("ca-b"));
    let port = free_port();
    let listeners = vec![https_listener("rotating", port, "v", "a")];
    let before =
        snapshot(listeners.clone(), vec![validation("v", &a, ClientValidationMode::AllowValidOnly)], backend.port);
    let plane = DataPlane::start(&before);

    let with_a = Client::new(Some(&a.client));
    let mut open = with_a.connect(port);
    assert_eq!(status(&exchange(&mut open, "keep-alive")), Ok(200));
    // This client's next connection resumes its TLS session (no certificate is asked for
    // then: the session carries the one it presented).
    let (response, kind) = with_a.get(port);
    assert_eq!(status(&response), Ok(200));
    assert_eq!(kind, Some(HandshakeKind::Resumed));
    let with_b = Client::new(Some(&b.client));
    assert!(with_b.get(port).0.is_err());

    let after = snapshot(listeners, vec![validation("v", &b, ClientValidationMode::AllowValidOnly)], backend.port);
    plane.write_snapshot(&serde_json::to_string(&after).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Client::new(Some(&b.client)).get(port).0.is_err() {
        assert!(Instant::now() < deadline, "the new CA bundle was not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Client::new(Some(&a.client)).get(port).0.is_err(), "a certificate of the old CA on a new handshake");
    let (response, kind) = with_a.get(port);
    assert_eq!(kind, Some(HandshakeKind::Resumed), "the old session was resumed");
    assert!(response.is_err(), "a resumed session with a certificate of the old CA was served: {response:?}");
    // The connection established before the change is still served.
    assert_eq!(status(&exchange(&mut open, "close")), Ok(200));
}
