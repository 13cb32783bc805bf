//! The push link end to end: a push server in the test, real data-plane processes, real
//! backends. Identity checks, NACKs and dropped pieces, versions across controller restarts, and a
//! controller outage under load.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sluice_controller::push::auth::{Authenticator, Caller, StaticTokens};
use sluice_controller::push::ca::CertificateAuthority;
use sluice_controller::push::{Authentication, ServerTls};
use sluice_snapshot::push::config_push_client::ConfigPushClient;
use sluice_snapshot::push::{DataPlaneMessage, Hello, control_plane_message, data_plane_message};
use support::*;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Opens a stream as `gateway`, trusting `ca_pem` for the server and presenting `token`;
/// returns the first snapshot's gateway, or the gRPC status code / transport error.
async fn ask(address: std::net::SocketAddr, ca_pem: &str, token: Option<&str>, gateway: &str) -> String {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    let endpoint = Endpoint::from_shared(format!("https://{address}")).unwrap().tls_config(tls).unwrap();
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(error) => return format!("transport error: {error}"),
    };
    let mut client = ConfigPushClient::new(channel);
    let hello =
        Hello { gateway: gateway.into(), pod: "probe".into(), current: None, dropped: vec![], accepts_deltas: true };
    let message = DataPlaneMessage { message: Some(data_plane_message::Message::Hello(hello)) };
    let outbound = tokio_stream::iter(vec![message]).chain(tokio_stream::pending());
    let mut request = tonic::Request::new(outbound);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let mut inbound = match client.stream(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return format!("{:?}", status.code()),
    };
    match tokio::time::timeout(Duration::from_secs(5), inbound.message()).await {
        Ok(Ok(Some(message))) => match message.message {
            Some(control_plane_message::Message::Snapshot(encoded)) => {
                let snapshot = <sluice_snapshot::Snapshot as prost::Message>::decode(encoded).unwrap();
                format!("snapshot of {}", snapshot.gateway)
            }
            Some(control_plane_message::Message::Delta(_)) => "a delta".into(),
            None => "empty message".into(),
        },
        Ok(Ok(None)) => "stream ended".into(),
        Ok(Err(status)) => format!("{:?}", status.code()),
        Err(_) => "no answer".into(),
    }
}

/// A push server certificate for 127.0.0.1 from `ca`.
fn server_tls(ca: &CertificateAuthority) -> ServerTls {
    let server = ca.issue_server(&["127.0.0.1"], 1).unwrap();
    ServerTls { certificate_pem: server.certificate_pem, private_key_pem: server.private_key_pem }
}

fn tokens(tokens: &StaticTokens) -> Authentication {
    Authentication::Token(Arc::new(tokens.clone()))
}

#[test]
fn a_client_gets_only_its_own_gateway() {
    let ca = CertificateAuthority::generate("test CA", 1).unwrap();
    let issued = StaticTokens::new();
    let controller = Controller::start(0, Some((server_tls(&ca), tokens(&issued))));
    for gateway in ["team-a/web", "team-b/web"] {
        controller.push.publish(gateway, snapshot(gateway, 1, "a.example", 1, "v1", "echo"));
    }
    let a = issued.issue("team-a/web");
    let other_ca = CertificateAuthority::generate("other CA", 1).unwrap();
    let address = controller.address;
    let (ca_pem, other_pem) = (ca.certificate_pem().to_string(), other_ca.certificate_pem().to_string());
    let answers = controller.runtime().block_on(async {
        [
            ask(address, &ca_pem, Some(&a), "team-a/web").await,
            ask(address, &ca_pem, Some(&a), "team-b/web").await,
            ask(address, &ca_pem, Some(&a), "team-a/other").await,
            ask(address, &ca_pem, Some("forged"), "team-b/web").await,
            ask(address, &ca_pem, None, "team-a/web").await,
            // A client that does not trust the server's CA never sends its token.
            ask(address, &other_pem, Some(&a), "team-a/web").await,
        ]
    });
    assert_eq!(answers[0], "snapshot of team-a/web");
    assert_eq!(answers[1], "PermissionDenied");
    assert_eq!(answers[2], "PermissionDenied");
    assert_eq!(answers[3], "Unauthenticated");
    assert_eq!(answers[4], "Unauthenticated");
    assert!(answers[5].starts_with("transport error"), "{answers:?}");
}

#[test]
fn a_rejected_snapshot_is_nacked_and_a_broken_route_is_dropped_alone() {
    let (backend, _echo) = echo("echo");
    let controller = Controller::start(0, None);
    let (port, admin) = (free_port(), free_port());
    let gateway = "test/gw";
    controller.push.publish(gateway, snapshot(gateway, port, "a.example", backend, "v1", "echo"));
    let _dataplane = dataplane(controller.address, gateway, "pod-0", admin);
    eventually(Duration::from_secs(20), "the first snapshot to serve", || {
        get(port, "a.example", "/").is_ok_and(|(status, _, _)| status == 200)
    });
    eventually(Duration::from_secs(5), "the ACK", || controller.push.progress()[gateway].programmed().is_ok());

    // Two listeners of one name: structurally invalid, the data plane must reject it.
    let mut invalid = snapshot(gateway, port, "a.example", backend, "v2", "echo");
    invalid.listeners.push(invalid.listeners[0].clone());
    let bad = controller.push.publish(gateway, invalid);
    assert_eq!(bad.unwrap().generation, 2);
    eventually(Duration::from_secs(5), "the NACK", || {
        controller.push.progress()[gateway].pods["pod-0"].rejected.as_ref().is_some_and(|(v, _)| *v == 2)
    });
    let why = controller.push.progress()[gateway].programmed().unwrap_err();
    assert!(why.contains("pod-0 rejected version 2") && why.contains("duplicate listener name"), "{why}");
    let (status, head, _) = get(port, "a.example", "/").unwrap();
    assert_eq!(status, 200);
    assert!(head.contains("x-version: v1"), "the previous snapshot serves: {head}");
    assert_eq!(served_generation(admin), Some(1));

    // The next good snapshot is applied and clears the NACK.
    controller.push.publish(gateway, snapshot(gateway, port, "a.example", backend, "v3", "echo"));
    eventually(Duration::from_secs(5), "version 3", || {
        get(port, "a.example", "/").is_ok_and(|(_, head, _)| head.contains("x-version: v3"))
    });
    eventually(Duration::from_secs(5), "the ACK of 3", || controller.push.progress()[gateway].programmed().is_ok());
    assert_eq!(served_generation(admin), Some(3));
    assert!(controller.push.progress()[gateway].dropped().is_empty());

    // One route to a cluster the snapshot does not define: that route is dropped (it
    // answers 500), the snapshot is applied and the ACK says which route was dropped.
    let mut one_bad = snapshot(gateway, port, "a.example", backend, "v4", "echo");
    let mut broken = one_bad.listeners[0].http_routes[0].clone();
    broken.name = "httproute/team-a/broken/rule/0/match/0".into();
    broken.hostnames = vec!["b.example".into()];
    broken.backends[0].target = Some(sluice_snapshot::weighted_backend::Target::Cluster("missing".into()));
    one_bad.listeners[0].http_routes.push(broken);
    controller.push.publish(gateway, one_bad);
    eventually(Duration::from_secs(5), "the ACK of 4", || {
        controller.push.progress()[gateway].programmed().is_ok() && served_generation(admin) == Some(4)
    });
    let dropped = controller.push.progress()[gateway].dropped();
    assert_eq!(dropped.keys().collect::<Vec<_>>(), ["httproute/team-a/broken/rule/0/match/0"]);
    assert!(dropped.values().all(|problem| problem.contains("unknown cluster missing")), "{dropped:?}");
    let (status, head, _) = get(port, "a.example", "/").unwrap();
    assert_eq!(status, 200);
    assert!(head.contains("x-version: v4"), "{head}");
    assert_eq!(get(port, "b.example", "/").unwrap().0, 500);
}

#[test]
fn versions_never_go_backwards_across_controller_restarts() {
    let (backend, _echo) = echo("echo");
    let (port, admin) = (free_port(), free_port());
    let gateway = "test/gw";
    let content = |tag: &str| snapshot(gateway, port, "a.example", backend, tag, "echo");
    let first = Controller::start(0, None);
    let push_port = first.address.port();
    for tag in ["a", "b", "c"] {
        first.push.publish(gateway, content(tag));
    }
    let _dataplane = dataplane(first.address, gateway, "pod-0", admin);
    eventually(Duration::from_secs(20), "version 3", || served_generation(admin) == Some(3));
    let reloads_before = applied_reloads(admin);
    drop(first);

    // A restarted controller with the same content adopts the served version: no reload.
    let second = Controller::start(push_port, None);
    assert_eq!(second.push.publish(gateway, content("c")).unwrap().generation, 1);
    eventually(Duration::from_secs(20), "the reconnect", || {
        second.push.progress()[gateway].pods.get("pod-0").is_some_and(|p| p.connected)
    });
    assert_eq!(second.push.progress()[gateway].version, Some(3));
    assert!(second.push.progress()[gateway].programmed().is_ok());
    assert_eq!(served_generation(admin), Some(3));
    assert_eq!(applied_reloads(admin), reloads_before, "reconnecting at the same content must not reload");
    // Its next change continues from there.
    assert_eq!(second.push.publish(gateway, content("d")).unwrap().generation, 4);
    eventually(Duration::from_secs(5), "version 4", || served_generation(admin) == Some(4));
    drop(second);

    // A restarted controller with other content stamps it above what is served.
    let third = Controller::start(push_port, None);
    assert_eq!(third.push.publish(gateway, content("e")).unwrap().generation, 1);
    eventually(Duration::from_secs(20), "version 5", || served_generation(admin) == Some(5));
    assert_eq!(third.push.progress()[gateway].version, Some(5));
    let (_, head, _) = get(port, "a.example", "/").unwrap();
    assert!(head.contains("x-version: e"), "{head}");
}

/// The controller is down for 60 s (SLUICE_OUTAGE_SECS to shorten it locally) while
/// clients keep sending requests: none may fail, and the served version stays.
#[test]
fn a_controller_outage_under_load_drops_nothing() {
    let outage =
        Duration::from_secs(std::env::var("SLUICE_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60));
    let (backend, _echo) = echo("echo");
    let (port, admin) = (free_port(), free_port());
    let gateway = "test/gw";
    let controller = Controller::start(0, None);
    let push_port = controller.address.port();
    controller.push.publish(gateway, snapshot(gateway, port, "a.example", backend, "v1", "echo"));
    let _dataplane = dataplane(controller.address, gateway, "pod-0", admin);
    eventually(Duration::from_secs(20), "serving", || get(port, "a.example", "/").is_ok_and(|(s, _, _)| s == 200));

    let running = Arc::new(AtomicBool::new(true));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (running, sent, failed) = (running.clone(), sent.clone(), failed.clone());
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    match get(port, "a.example", "/") {
                        Ok((200, head, _)) if head.contains("x-version: v1") => {}
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            eprintln!("failed request: {other:?}");
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    drop(controller);
    let before = sent.load(Ordering::Relaxed);
    std::thread::sleep(outage);
    assert_eq!(served_generation(admin), Some(1));
    running.store(false, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let during = sent.load(Ordering::Relaxed) - before;
    assert!(during > 100, "the load kept going during the outage ({during} requests)");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests out of {}", sent.load(Ordering::Relaxed));

    // The controller comes back (no state) and the data plane picks up new config; the
    // reconnect waits out the client's backoff (at most 10 s).
    let back = Controller::start(push_port, None);
    back.push.publish(gateway, snapshot(gateway, port, "a.example", backend, "v2", "echo"));
    eventually(Duration::from_secs(40), "version 2 after the outage", || {
        get(port, "a.example", "/").is_ok_and(|(_, head, _)| head.contains("x-version: v2"))
    });
    assert_eq!(served_generation(admin), Some(2));
}

#[test]
fn snapshots_far_above_grpc_default_limits_are_pushed() {
    // tonic's default limit is 4 MiB per message; configs beyond that must still arrive.
    let (backend, _echo) = echo("echo");
    let controller = Controller::start(0, None);
    let (port, admin) = (free_port(), free_port());
    let gateway = "test/gw";
    let mut big = snapshot(gateway, port, "a.example", backend, "big", "echo");
    let template = big.listeners[0].http_routes[0].clone();
    for i in 0..60_000 {
        let mut route = template.clone();
        route.name = format!("httproute/test/r{i}/rule/0/match/0");
        route.hostnames = vec![format!("host-{i}.example.com")];
        big.listeners[0].http_routes.push(route);
    }
    assert!(prost::Message::encoded_len(&big) > 5 * 1024 * 1024);
    controller.push.publish(gateway, big);
    let _dataplane = dataplane(controller.address, gateway, "pod-0", admin);
    eventually(Duration::from_secs(60), "the big snapshot", || {
        get(port, "host-59999.example.com", "/").is_ok_and(|(status, _, _)| status == 200)
    });
}

/// A data plane that stops answering (frozen with SIGSTOP, as a hung node would) is
/// noticed by the server's HTTP/2 keepalives (10 s interval, 5 s timeout), and the
/// Gateway is no longer counted as programmed by it.
#[test]
fn keepalives_detect_a_frozen_data_plane() {
    let (backend, _echo) = echo("echo");
    let controller = Controller::start(0, None);
    let (port, admin) = (free_port(), free_port());
    let gateway = "test/gw";
    controller.push.publish(gateway, snapshot(gateway, port, "a.example", backend, "v1", "echo"));
    let dataplane = dataplane(controller.address, gateway, "pod-0", admin);
    eventually(Duration::from_secs(20), "the ACK", || controller.push.progress()[gateway].programmed().is_ok());
    let pid = dataplane.0.id().to_string();
    let signal =
        |name: &str| assert!(std::process::Command::new("kill").args([name, &pid]).status().unwrap().success());
    signal("-STOP");
    let frozen = std::time::Instant::now();
    eventually(Duration::from_secs(40), "the server to drop the frozen stream", || {
        // Its entry goes with its stream (pods whose stream ended are forgotten).
        !controller.push.progress()[gateway].pods.get("pod-0").is_some_and(|pod| pod.connected)
    });
    assert!(frozen.elapsed() >= Duration::from_secs(4), "dropped before any keepalive could time out");
    assert!(controller.push.progress()[gateway].programmed().is_err());
    signal("-CONT");
    // Thawed, it reconnects and is counted again.
    eventually(Duration::from_secs(30), "the reconnect", || controller.push.progress()[gateway].programmed().is_ok());
}

/// A data plane that restarts while its controller is down serves the snapshot it saved
/// in --state-dir, within 2 s, marked stale; a corrupted file is ignored, never served.
#[test]
fn a_data_plane_restarted_without_its_controller_serves_its_saved_snapshot() {
    let (backend, _echo) = echo("echo");
    let (port, admin) = (free_port(), free_port());
    let state = std::env::temp_dir().join(format!("sluice-state-{}-{port}", std::process::id()));
    let state_arg = state.to_string_lossy().into_owned();
    let gateway = "test/gw";
    let controller = Controller::start(0, None);
    let push = controller.address;
    controller.push.publish(gateway, snapshot(gateway, port, "a.example", backend, "v1", "echo"));
    let first = dataplane_with(push, gateway, "pod-0", admin, &["--state-dir", &state_arg]);
    eventually(Duration::from_secs(20), "serving", || get(port, "a.example", "/").is_ok_and(|(s, _, _)| s == 200));
    drop(controller);
    drop(first);

    let started = std::time::Instant::now();
    let _second = dataplane_with(push, gateway, "pod-0", admin, &["--state-dir", &state_arg]);
    eventually(Duration::from_secs(5), "the saved snapshot to serve", || {
        get(port, "a.example", "/").is_ok_and(|(status, head, _)| status == 200 && head.contains("x-version: v1"))
    });
    let took = started.elapsed();
    eprintln!("a restarted data plane served its saved snapshot after {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let (_, _, metrics) = get(admin, "admin", "/metrics").unwrap();
    assert!(metrics.contains("sluice_config_stale 1"), "{metrics}");
    let (status, _, _) = get(admin, "admin", "/ready").unwrap();
    assert_eq!(status, 200, "Ready with the saved snapshot");
    drop(_second);

    // A torn file (its checksum fails) is not served: the data plane waits for its
    // controller, and serves the controller's snapshot once it is back.
    let file = state.join("snapshot.pb");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 10]).unwrap();
    let _third = dataplane_with(push, gateway, "pod-0", admin, &["--state-dir", &state_arg]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(get(port, "a.example", "/").is_err(), "a corrupted snapshot must not be served");
    let back = Controller::start(push.port(), None);
    back.push.publish(gateway, snapshot(gateway, port, "a.example", backend, "v2", "echo"));
    eventually(Duration::from_secs(30), "the controller's snapshot", || {
        get(port, "a.example", "/").is_ok_and(|(_, head, _)| head.contains("x-version: v2"))
    });
    let (_, _, metrics) = get(admin, "admin", "/metrics").unwrap();
    assert!(metrics.contains("sluice_config_stale 0"), "{metrics}");
    let _ = std::fs::remove_dir_all(&state);
}

/// A client that connects to the push server and never finishes its TLS handshake is
/// disconnected after the handshake timeout.
#[test]
fn a_stalled_tls_handshake_is_cut() {
    use std::io::{Read, Write};
    let ca = CertificateAuthority::generate("test CA", 1).unwrap();
    let controller = Controller::start(0, Some((server_tls(&ca), tokens(&StaticTokens::new()))));
    let limit = sluice_controller::push::TLS_HANDSHAKE_TIMEOUT;
    let mut stream = std::net::TcpStream::connect(controller.address).unwrap();
    stream.set_read_timeout(Some(limit * 2)).unwrap();
    let started = std::time::Instant::now();
    // The first bytes of a ClientHello record, then nothing.
    stream.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    let mut buffer = [0u8; 64];
    let closed = matches!(stream.read(&mut buffer), Ok(0) | Err(_)) && started.elapsed() < limit * 2;
    let took = started.elapsed();
    eprintln!("a stalled TLS handshake was cut after {took:?}");
    assert!(closed && took >= limit - Duration::from_secs(1), "held for {took:?}");
}

/// Credentials as a cluster issues them: each token is for one Gateway object (its
/// UID) and expires.
struct ClusterLike;

#[tonic::async_trait]
impl Authenticator for ClusterLike {
    async fn authenticate(&self, token: &str) -> Result<Caller, tonic::Status> {
        let (uid, lifetime) = match token {
            "old" => ("uid-old", 3600),
            "new" => ("uid-new", 3600),
            "short" => ("uid-new", 1),
            _ => return Err(tonic::Status::unauthenticated("unknown token")),
        };
        Ok(Caller {
            gateway: "team-a/web".into(),
            gateway_uid: Some(uid.into()),
            expires_at: Some(std::time::SystemTime::now() + Duration::from_secs(lifetime)),
        })
    }
}

/// A credential of an earlier Gateway of the same name (another UID) is refused once the
/// server knows the current Gateway's UID.
#[test]
fn credentials_of_an_earlier_gateway_of_the_same_name_are_refused() {
    let ca = CertificateAuthority::generate("test CA", 1).unwrap();
    let controller = Controller::start(0, Some((server_tls(&ca), Authentication::Token(Arc::new(ClusterLike)))));
    let gateway = "team-a/web";
    controller.push.publish(gateway, snapshot(gateway, 1, "a.example", 1, "v1", "echo"));
    controller.push.bind_uid(gateway, "uid-new");
    let (address, ca_pem) = (controller.address, ca.certificate_pem().to_string());
    let answers = controller.runtime().block_on(async {
        [ask(address, &ca_pem, Some("old"), gateway).await, ask(address, &ca_pem, Some("new"), gateway).await]
    });
    assert_eq!(answers, ["PermissionDenied".to_string(), format!("snapshot of {gateway}")]);
}

/// A stream ends when its credential expires (the data plane then reconnects with the
/// token its kubelet renewed).
#[test]
fn a_stream_ends_when_its_token_expires() {
    let ca = CertificateAuthority::generate("test CA", 1).unwrap();
    let controller = Controller::start(0, Some((server_tls(&ca), Authentication::Token(Arc::new(ClusterLike)))));
    let gateway = "team-a/web";
    controller.push.publish(gateway, snapshot(gateway, 1, "a.example", 1, "v1", "echo"));
    let (address, ca_pem) = (controller.address, ca.certificate_pem().to_string());
    let ended = |token: &'static str| {
        let ca_pem = ca_pem.clone();
        controller.runtime().block_on(async move {
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
            let endpoint = Endpoint::from_shared(format!("https://{address}")).unwrap().tls_config(tls).unwrap();
            let mut client = ConfigPushClient::new(endpoint.connect().await.unwrap());
            let hello = Hello {
                gateway: gateway.into(),
                pod: "probe".into(),
                current: None,
                dropped: vec![],
                accepts_deltas: true,
            };
            let message = DataPlaneMessage { message: Some(data_plane_message::Message::Hello(hello)) };
            let mut request = tonic::Request::new(tokio_stream::iter(vec![message]).chain(tokio_stream::pending()));
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            let mut inbound = client.stream(request).await.unwrap().into_inner();
            assert!(inbound.message().await.unwrap().is_some(), "the snapshot comes first");
            let started = std::time::Instant::now();
            let end = tokio::time::timeout(Duration::from_secs(3), inbound.message()).await;
            end.is_ok().then(|| started.elapsed())
        })
    };
    let took = ended("short").expect("the stream of an expiring token ends");
    assert!(took <= Duration::from_millis(1500), "{took:?}");
    assert_eq!(ended("new"), None, "a token valid for an hour keeps its stream open");
}

/// The push server replaces its certificate on schedule (each time with a newly issued
/// one) and answers streams again after each replacement.
#[test]
fn the_push_server_renews_its_certificate_and_keeps_answering() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let ca = Arc::new(CertificateAuthority::generate("test CA", 1).unwrap());
    let push = sluice_controller::push::PushServer::new();
    let gateway = "team-a/web";
    push.publish(gateway, snapshot(gateway, 1, "a.example", 1, "v1", "echo"));
    let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0))).unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let issued = Arc::new(AtomicU64::new(0));
    let issue = {
        let (ca, issued) = (ca.clone(), issued.clone());
        move || {
            issued.fetch_add(1, Ordering::Relaxed);
            Ok(server_tls(&ca))
        }
    };
    let server = push.clone();
    let registry = StaticTokens::new();
    let authentication = tokens(&registry);
    let task = runtime.spawn(async move {
        server.serve_renewing(listener, issue, authentication, Duration::from_secs(1), stopped).await
    });
    let token = registry.issue(gateway);
    let ca_pem = ca.certificate_pem().to_string();
    let credentials = Some(token.as_str());
    // Streams keep working across renewals (each renewal ends open streams; clients reconnect).
    for _ in 0..3 {
        let answer = runtime.block_on(async {
            let mut answer = String::new();
            for _ in 0..50 {
                answer = ask(address, &ca_pem, credentials, gateway).await;
                if answer.starts_with("snapshot") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answer
        });
        assert_eq!(answer, format!("snapshot of {gateway}"));
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(issued.load(Ordering::Relaxed) >= 3, "renewed {} times", issued.load(Ordering::Relaxed));
    stop.send_replace(true);
    runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap() });
}

/// CA rotation with overlap (docs/push.md): data planes that trust both the old and the
/// new CA keep being served when the push server switches to a certificate from the new
/// CA; once the old CA is dropped, only the new one is trusted.
#[test]
fn a_ca_rotation_with_overlap_keeps_data_planes_connected() {
    let (backend, _echo) = echo("echo");
    let (port, admin) = (free_port(), free_port());
    let gateway = "team-a/web";
    let old = CertificateAuthority::generate("old push CA", 1).unwrap();
    let new = CertificateAuthority::generate("new push CA", 1).unwrap();
    let both = sluice_controller::push::ca::trust_bundle(&[old.certificate_pem(), new.certificate_pem()]).unwrap();
    let registry = StaticTokens::new();
    let token_file = std::env::temp_dir().join(format!("sluice-push-token-{}-{port}", std::process::id()));
    std::fs::write(&token_file, registry.issue(gateway)).unwrap();

    // Step 1: the server still has the old CA's certificate; data planes trust both.
    let before = Controller::start(0, Some((server_tls(&old), tokens(&registry))));
    let push = before.address;
    before.push.publish(gateway, snapshot(gateway, port, "a.example", backend, "v1", "echo"));
    let child = std::process::Command::new(SLUICE)
        .args(["dataplane", "--control-plane", &format!("https://{push}"), "--gateway", gateway, "--pod", "pod-0"])
        .arg("--token-file")
        .arg(&token_file)
        .args(["--bind", "127.0.0.1", "--admin", &format!("127.0.0.1:{admin}")])
        .env("SLUICE_PUSH_CA", &both)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _dataplane = Process(child);
    eventually(Duration::from_secs(20), "v1 over the old CA", || {
        get(port, "a.example", "/").is_ok_and(|(_, head, _)| head.contains("x-version: v1"))
    });

    // Step 2: the server switches to the new CA's certificate (a controller restart);
    // the data plane reconnects and takes the next snapshot.
    drop(before);
    let after = Controller::start(push.port(), Some((server_tls(&new), tokens(&registry))));
    after.push.publish(gateway, snapshot(gateway, port, "a.example", backend, "v2", "echo"));
    eventually(Duration::from_secs(30), "v2 over the new CA", || {
        get(port, "a.example", "/").is_ok_and(|(_, head, _)| head.contains("x-version: v2"))
    });
    eventually(Duration::from_secs(5), "the ACK", || after.push.progress()[gateway].programmed().is_ok());

    // Step 3: the old CA leaves the bundle: trusting the new CA alone is enough, and a
    // data plane that never took the new CA could not connect.
    let token = registry.issue(gateway);
    let (new_pem, old_pem) = (new.certificate_pem().to_string(), old.certificate_pem().to_string());
    let answers = after.runtime().block_on(async {
        [ask(push, &new_pem, Some(&token), gateway).await, ask(push, &old_pem, Some(&token), gateway).await]
    });
    assert_eq!(answers[0], format!("snapshot of {gateway}"));
    assert!(answers[1].starts_with("transport error"), "{answers:?}");
    let _ = std::fs::remove_file(&token_file);
}
