//! Deltas over the push link, against a push server in the test that sends exactly what
//! each case needs: a delta after the first whole snapshot applies and routes, a delta
//! whose result hashes otherwise (or whose base is not served) is not applied and the data
//! plane asks for the whole snapshot, and converges on it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_snapshot::push::config_push_server::{ConfigPush, ConfigPushServer};
use sluice_snapshot::push::{ControlPlaneMessage, DataPlaneMessage, control_plane_message, data_plane_message};
use sluice_snapshot::{Snapshot, Version};
use support::{Echo, TempDir, catch_all, cluster, free_port, get};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// A push server whose one stream the test drives.
struct Scripted {
    to_plane: Mutex<Option<mpsc::Receiver<Result<ControlPlaneMessage, Status>>>>,
    from_plane: mpsc::Sender<DataPlaneMessage>,
}

#[tonic::async_trait]
impl ConfigPush for Scripted {
    type StreamStream = ReceiverStream<Result<ControlPlaneMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<DataPlaneMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let receiver = self.to_plane.lock().unwrap().take().ok_or_else(|| Status::unavailable("one stream only"))?;
        let mut inbound = request.into_inner();
        let sender = self.from_plane.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                if sender.send(message).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// `snapshot` with version `generation` and its real content hash.
fn stamped(mut snapshot: Snapshot, generation: u64) -> Snapshot {
    snapshot.version = None;
    let content_hash = sluice_snapshot::content_hash(&snapshot);
    snapshot.version = Some(Version { generation, content_hash });
    snapshot
}

fn whole(snapshot: &Snapshot) -> ControlPlaneMessage {
    let bytes = prost::Message::encode_to_vec(snapshot);
    ControlPlaneMessage { message: Some(control_plane_message::Message::Snapshot(bytes.into())) }
}

fn delta(delta: &sluice_snapshot::SnapshotDelta) -> ControlPlaneMessage {
    let bytes = prost::Message::encode_to_vec(delta);
    ControlPlaneMessage { message: Some(control_plane_message::Message::Delta(bytes.into())) }
}

/// The backend that answers `GET /` on `port`, once the data plane serves `backend`.
fn wait_for_backend(port: u16, backend: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The listeners open after the first snapshot is applied.
        let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        let response = listening.then(|| get(port, "x", "/", &[]));
        if response.as_ref().and_then(|r| r.echo("backend")) == Some(backend) {
            return;
        }
        assert!(Instant::now() < deadline, "never routed to {backend}: {response:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn deltas_apply_and_a_mismatch_asks_for_the_whole_snapshot() {
    let (a, b, c) = (Echo::start("a"), Echo::start("b"), Echo::start("c"));
    let port = free_port();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (to_plane, plane_inbound) = mpsc::channel(8);
    let (from_plane_sender, mut from_plane) = mpsc::channel(8);
    let scripted = Scripted { to_plane: Mutex::new(Some(plane_inbound)), from_plane: from_plane_sender };
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(ConfigPushServer::new(scripted))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let dir = TempDir(std::env::temp_dir().join(format!("sluice-dp-delta-{}-{port}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let admin = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice-dataplane"))
        .args(["--control-plane", &format!("http://{address}"), "--gateway", "test/gw", "--pod", "p"])
        .args(["--bind", "127.0.0.1", "--admin", &format!("127.0.0.1:{admin}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Killed when the test ends, also when an assertion fails (a leaked child would keep
    // the test runner's output pipe open).
    let _child = KillOnDrop(child);

    let mut next = |what: &str| -> data_plane_message::Message {
        let message = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), from_plane.recv()).await })
            .unwrap_or_else(|_| panic!("no {what} from the data plane"))
            .unwrap();
        message.message.unwrap()
    };
    let send = |message: ControlPlaneMessage| runtime.block_on(to_plane.send(Ok(message))).unwrap();
    let acked = |message: data_plane_message::Message| match message {
        data_plane_message::Message::Ack(ack) => ack.version.unwrap().generation,
        other => panic!("expected an Ack, got {other:?}"),
    };

    assert!(matches!(next("Hello"), data_plane_message::Message::Hello(_)));
    let mut base = catch_all(port, a.port);
    base.clusters.push(cluster("b", &[b.port]));
    base.clusters.push(cluster("c", &[c.port]));
    let v1 = stamped(base, 1);
    send(whole(&v1));
    assert_eq!(acked(next("Ack v1")), 1);
    wait_for_backend(port, "a");

    // A delta after the whole snapshot: the route moves to b.
    let mut v2 = v1.clone();
    v2.listeners[0].http_routes[0].backends = vec![support::to("b", 1)];
    let v2 = stamped(v2, 2);
    let change = sluice_snapshot::delta::diff(&v1, &v2);
    assert!(prost::Message::encoded_len(&change) < prost::Message::encoded_len(&v2));
    send(delta(&change));
    assert_eq!(acked(next("Ack v2")), 2);
    wait_for_backend(port, "b");

    // A delta whose result does not hash to its version: not applied, Resync.
    let mut v3 = v2.clone();
    v3.listeners[0].http_routes[0].backends = vec![support::to("c", 1)];
    let v3 = stamped(v3, 3);
    let mut corrupt = sluice_snapshot::delta::diff(&v2, &v3);
    corrupt.version = Some(Version { generation: 3, content_hash: "0".repeat(64) });
    send(delta(&corrupt));
    match next("Resync") {
        data_plane_message::Message::Resync(resync) => {
            assert_eq!(resync.current.unwrap().generation, 2);
            assert!(resync.reason.contains("hashes to"), "{}", resync.reason);
        }
        other => panic!("expected a Resync, got {other:?}"),
    }
    assert_eq!(get(port, "x", "/", &[]).echo("backend"), Some("b"), "still serving v2");

    // A delta on a base the data plane does not serve: Resync too.
    send(delta(&sluice_snapshot::delta::diff(&v1, &v3)));
    assert!(matches!(next("Resync"), data_plane_message::Message::Resync(_)));

    // Bytes that are no delta, and a delta naming a listener its base lacks: Resync, and
    // the data plane goes on serving.
    let garbage = ControlPlaneMessage { message: Some(control_plane_message::Message::Delta(vec![0xff; 3].into())) };
    send(garbage);
    match next("Resync") {
        data_plane_message::Message::Resync(resync) => assert!(resync.reason.contains("decode"), "{}", resync.reason),
        other => panic!("expected a Resync, got {other:?}"),
    }
    let mut no_such_listener = sluice_snapshot::delta::diff(&v2, &v3);
    no_such_listener.listeners[0].base_index = Some(7);
    send(delta(&no_such_listener));
    match next("Resync") {
        data_plane_message::Message::Resync(resync) => {
            assert!(resync.reason.contains("base listener 7"), "{}", resync.reason)
        }
        other => panic!("expected a Resync, got {other:?}"),
    }
    assert_eq!(get(port, "x", "/", &[]).echo("backend"), Some("b"), "still serving v2");

    // The whole snapshot converges.
    send(whole(&v3));
    assert_eq!(acked(next("Ack v3")), 3);
    wait_for_backend(port, "c");

    // And deltas apply again on top of it.
    let mut v4 = v3.clone();
    v4.listeners[0].http_routes[0].backends = vec![support::to("a", 1)];
    let v4 = stamped(v4, 4);
    send(delta(&sluice_snapshot::delta::diff(&v3, &v4)));
    assert_eq!(acked(next("Ack v4")), 4);
    wait_for_backend(port, "a");

    // A snapshot with a piece that cannot be served (a route whose regex does not
    // compile once anchored): the Ack names it, and so does the metrics' gauge, as for
    // a snapshot file.
    let dropped_pieces = || {
        let metrics = get(admin, "admin", "/metrics", &[]).body;
        metrics.lines().find_map(|l| l.strip_prefix("sluice_snapshot_dropped_pieces ").map(str::to_string))
    };
    assert_eq!(dropped_pieces().as_deref(), Some("0"));
    let mut v5 = v4.clone();
    let mut broken = v5.listeners[0].http_routes[0].clone();
    broken.name = "httproute/test/broken/rule/0/match/0".into();
    broken.r#match = Some(sluice_snapshot::HttpMatch {
        path: Some(sluice_snapshot::PathMatch {
            r#type: sluice_snapshot::PathMatchType::RegularExpression as i32,
            value: "(?x)/r#".into(),
        }),
        ..Default::default()
    });
    v5.listeners[0].http_routes.insert(0, broken);
    let v5 = stamped(v5, 5);
    send(whole(&v5));
    match next("Ack v5") {
        data_plane_message::Message::Ack(ack) => {
            assert_eq!(ack.version.unwrap().generation, 5);
            assert_eq!(ack.dropped.len(), 1, "{:?}", ack.dropped);
        }
        other => panic!("expected an Ack, got {other:?}"),
    }
    assert_eq!(dropped_pieces().as_deref(), Some("1"));
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
