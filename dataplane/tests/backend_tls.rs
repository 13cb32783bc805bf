//! TLS to backends (BackendTLSPolicy) on loopback: SNI, verification against the policy's
//! CA, hostname or subjectAltNames (DNS and URI), a client certificate, failures as 502
//! (never plaintext), pooled connections never shared across policies, mirrors over TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::sync::Arc;

use sluice_snapshot::{
    Certificate, HttpFilter, HttpMatch, HttpRoute, PathMatch, PathMatchType, RequestMirror, Snapshot, SubjectAltName,
    UpstreamTls, http_filter, subject_alt_name,
};
use support::{DataPlane, Echo, cluster, free_port, get, to};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pki {
    ca_pem: String,
    other_ca_pem: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "backend CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = other_params.self_signed(&other_key).unwrap();

    let server_key = rcgen::KeyPair::generate().unwrap();
    let mut server = rcgen::CertificateParams::new(vec!["abc.example.com".to_string()]).unwrap();
    server.subject_alt_names.push(rcgen::SanType::URI("spiffe://abc.example.com/test-identity".try_into().unwrap()));
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        other_ca_pem: other_ca.pem(),
        server: (server_cert.pem(), server_key.serialize_pem()),
        client: (client_cert.pem(), client_key.serialize_pem()),
    }
}

/// An HTTPS backend answering every request with `sni=<SNI> client=<yes|no> path=<path>`;
/// it asks for (but does not require) a client certificate from `client_ca`. Counts
/// connections in `connections`.
fn tls_backend(pki: &Pki, runtime: &tokio::runtime::Runtime, connections: Arc<std::sync::atomic::AtomicUsize>) -> u16 {
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<_> =
        rustls_pki_types::CertificateDer::pem_slice_iter(pki.server.0.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.server.1.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    runtime.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let (_, connection) = tls.get_ref();
                let sni = connection.server_name().unwrap_or("-").to_string();
                let client = if connection.peer_certificates().is_some_and(|c| !c.is_empty()) { "yes" } else { "no" };
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = tls.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buffer[..end]).to_string();
                        buffer.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        let body = format!("sni={sni} client={client} path={path}");
                        let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                        if tls.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

fn route(path: &str, backend: &str) -> HttpRoute {
    HttpRoute {
        name: format!("httproute/test/r{}/rule/0/match/0", path.replace('/', "-")),
        r#match: Some(HttpMatch {
            path: Some(PathMatch { r#type: PathMatchType::Exact as i32, value: path.into() }),
            ..Default::default()
        }),
        backends: vec![to(backend, 1)],
        ..Default::default()
    }
}

fn tls(policy: &str, sni: &str, ca: &str, sans: Vec<subject_alt_name::Kind>, client: &str) -> UpstreamTls {
    UpstreamTls {
        policy: format!("backendtlspolicy/test/{policy}"),
        sni: sni.into(),
        ca_pem: ca.into(),
        system_roots: false,
        subject_alt_names: sans.into_iter().map(|kind| SubjectAltName { kind: Some(kind) }).collect(),
        client_certificate: client.into(),
    }
}

#[test]
fn backends_are_reached_over_verified_tls_or_not_at_all() {
    let pki = pki();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let backend = tls_backend(&pki, &runtime, connections.clone());
    let port = free_port();
    use subject_alt_name::Kind::{Hostname, Uri};
    let clusters = [
        ("ok", tls("ok", "abc.example.com", &pki.ca_pem, vec![], "")),
        ("wrong-host", tls("wrong-host", "mismatch.example.com", &pki.ca_pem, vec![], "")),
        ("wrong-ca", tls("wrong-ca", "abc.example.com", &pki.other_ca_pem, vec![], "")),
        (
            "san-uri",
            tls(
                "san-uri",
                "abc.example.com",
                &pki.ca_pem,
                vec![Uri("spiffe://abc.example.com/test-identity".into())],
                "",
            ),
        ),
        ("san-dns", tls("san-dns", "other.example.com", &pki.ca_pem, vec![Hostname("abc.example.com".into())], "")),
        (
            "san-mismatch",
            tls(
                "san-mismatch",
                "abc.example.com",
                &pki.ca_pem,
                vec![Uri("spiffe://def.example.com/x".into()), Hostname("def.example.com".into())],
                "",
            ),
        ),
        ("client", tls("client", "abc.example.com", &pki.ca_pem, vec![], "secret/test/client")),
    ];
    let mut snapshot = Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![sluice_snapshot::Listener {
            name: "gateway/test/gw/listener/http".into(),
            port: u32::from(port),
            protocol: sluice_snapshot::Protocol::Http as i32,
            http_routes: clusters.iter().map(|(name, _)| route(&format!("/{name}"), name)).collect(),
            ..Default::default()
        }],
        clusters: clusters
            .iter()
            .map(|(name, tls)| sluice_snapshot::Cluster { tls: Some(tls.clone()), ..cluster(name, &[backend]) })
            .collect(),
        certificates: vec![Certificate {
            name: "secret/test/client".into(),
            cert_chain_pem: pki.client.0.clone(),
            private_key_pem: pki.client.1.clone(),
        }],
        ..Default::default()
    };
    // A mirror of /ok to the TLS backend (its copy goes over TLS, or not at all).
    snapshot.listeners[0].http_routes[0].filters.push(HttpFilter {
        kind: Some(http_filter::Kind::RequestMirror(RequestMirror {
            cluster: "ok".into(),
            numerator: 1,
            denominator: 1,
        })),
    });
    let _plane = DataPlane::start(&snapshot);

    let ok = get(port, "gw.example", "/ok", &[]);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body, "sni=abc.example.com client=no path=/ok");
    let client = get(port, "gw.example", "/client", &[]);
    assert_eq!(client.body, "sni=abc.example.com client=yes path=/client", "the client certificate is presented");
    let san_uri = get(port, "gw.example", "/san-uri", &[]);
    assert_eq!(san_uri.status, 200, "{}", san_uri.body);
    let san_dns = get(port, "gw.example", "/san-dns", &[]);
    assert_eq!(san_dns.status, 200, "{}", san_dns.body);
    assert_eq!(san_dns.body, "sni=other.example.com client=no path=/san-dns", "the SNI stays the hostname");
    // Pooled connections of /ok are verified for abc.example.com under one CA: requests
    // of other policies to the same endpoint never ride on them.
    for _ in 0..3 {
        for path in ["/wrong-host", "/wrong-ca", "/san-mismatch"] {
            let refused = get(port, "gw.example", path, &[]);
            assert_eq!(refused.status, 502, "{path}: {}", refused.body);
        }
        assert_eq!(get(port, "gw.example", "/ok", &[]).status, 200);
    }
    // Every mirrored copy arrived over TLS (the backend only speaks TLS): a connection
    // per mirrored request at least, besides the proxied ones.
    assert!(connections.load(std::sync::atomic::Ordering::Relaxed) >= 4);
}

/// A route split 1:1 between a TLS backend and a plain one keeps its weights for requests
/// on new connections: the HTTP/1.1 fast path hands such a route over to Pingora before
/// picking a backend, so each request is picked once (a pick on each path sent every
/// first request of a connection to the same backend).
#[test]
fn a_route_split_between_a_tls_and_a_plain_backend_keeps_its_weights() {
    let pki = pki();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let secure = tls_backend(&pki, &runtime, Arc::new(std::sync::atomic::AtomicUsize::new(0)));
    let plain = Echo::start("plain");
    let port = free_port();
    let mut split = route("/split", "secure");
    split.backends = vec![to("secure", 1), to("plain", 1)];
    let snapshot = Snapshot {
        gateway: "test/gw".into(),
        listeners: vec![sluice_snapshot::Listener {
            name: "gateway/test/gw/listener/http".into(),
            port: u32::from(port),
            protocol: sluice_snapshot::Protocol::Http as i32,
            http_routes: vec![split],
            ..Default::default()
        }],
        clusters: vec![
            cluster("plain", &[plain.port]),
            sluice_snapshot::Cluster {
                tls: Some(tls("secure", "abc.example.com", &pki.ca_pem, vec![], "")),
                ..cluster("secure", &[secure])
            },
        ],
        ..Default::default()
    };
    let _plane = DataPlane::start(&snapshot);
    let (mut to_secure, mut to_plain) = (0, 0);
    // Each request on its own connection (`connection: close`).
    for _ in 0..40 {
        let response = get(port, "x", "/split", &[]);
        assert_eq!(response.status, 200, "{}", response.body);
        if response.body.starts_with("sni=abc.example.com") {
            to_secure += 1;
        } else if response.echo("backend") == Some("plain") {
            to_plain += 1;
        }
    }
    assert_eq!((to_secure, to_plain), (20, 20));
}
