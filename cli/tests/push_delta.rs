//! Deltas end to end: the real push server, real data-plane processes, real backends.
//! The first message of a stream is the whole snapshot and later changes travel as
//! deltas; a reconnect, a delta that does not hash to its version (Resync) and a Nack of a
//! delta are each followed by the whole snapshot, and the data plane converges on it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

mod support;

use std::time::Duration;

use sluice_controller::push::{PushServer, Sent};
use sluice_snapshot::HttpRoute;
use sluice_snapshot::push::config_push_client::ConfigPushClient;
use sluice_snapshot::push::{DataPlaneMessage, Hello, control_plane_message, data_plane_message};
use support::*;
use tokio_stream::StreamExt;

const GATEWAY: &str = "test/gw";

/// A counter of the data plane's `/metrics`, by its whole name with labels (0 if absent).
fn metric(admin: u16, name: &str) -> u64 {
    let (_, _, body) = get(admin, "admin", "/metrics").unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |value| value.trim().parse().unwrap())
}

const APPLIED_SNAPSHOTS: &str = "sluice_config_pushes_applied_total{kind=\"snapshot\"}";
const APPLIED_DELTAS: &str = "sluice_config_pushes_applied_total{kind=\"delta\"}";
const RESYNCS: &str = "sluice_config_resyncs_requested_total";

/// Messages sent so far, as (whole snapshots, deltas).
fn sent(push: &PushServer) -> (u64, u64) {
    let Sent { snapshots, deltas, .. } = push.sent();
    (snapshots, deltas)
}

/// Waits until `a.example` answers with `x-version: tag`.
fn serves(port: u16, tag: &str) {
    eventually(Duration::from_secs(20), &format!("x-version {tag}"), || {
        get(port, "a.example", "/").is_ok_and(|(_, head, _)| head.contains(&format!("x-version: {tag}")))
    });
}

#[test]
fn a_stream_starts_whole_then_gets_deltas_and_a_reconnect_starts_whole_again() {
    let (backend, _echo) = echo("echo");
    let controller = Controller::start(0, None);
    let (port, admin) = (free_port(), free_port());
    let content = |tag: &str| snapshot(GATEWAY, port, "a.example", backend, tag, "echo");
    controller.push.publish(GATEWAY, content("v1"));
    let _dataplane = dataplane(controller.address, GATEWAY, "pod-0", admin);
    serves(port, "v1");
    assert_eq!(sent(&controller.push), (1, 0), "the first message of a stream is the whole snapshot");

    for (n, tag) in ["v2", "v3"].into_iter().enumerate() {
        controller.push.publish(GATEWAY, content(tag));
        serves(port, tag);
        eventually(Duration::from_secs(5), "the ACK", || controller.push.progress()[GATEWAY].programmed().is_ok());
        assert_eq!(sent(&controller.push), (1, n as u64 + 1), "a change is a delta");
    }
    assert_eq!((metric(admin, APPLIED_SNAPSHOTS), metric(admin, APPLIED_DELTAS)), (1, 2));
    assert_eq!(served_generation(admin), Some(3));

    // The stream ends (the controller goes to standby); the content changes meanwhile.
    controller.push.set_standby(true);
    eventually(Duration::from_secs(10), "the stream to end", || {
        !controller.push.progress()[GATEWAY].pods.get("pod-0").is_some_and(|pod| pod.connected)
    });
    controller.push.publish(GATEWAY, content("v4"));
    controller.push.set_standby(false);
    serves(port, "v4");
    assert_eq!(sent(&controller.push), (2, 2), "a reconnect gets the whole snapshot");
    assert_eq!((metric(admin, APPLIED_SNAPSHOTS), metric(admin, APPLIED_DELTAS)), (2, 2));

    // And the reconnected stream gets deltas again.
    controller.push.publish(GATEWAY, content("v5"));
    serves(port, "v5");
    eventually(Duration::from_secs(5), "the ACK", || controller.push.progress()[GATEWAY].programmed().is_ok());
    assert_eq!(sent(&controller.push), (2, 3));
    assert_eq!(served_generation(admin), Some(5));
    assert_eq!(metric(admin, RESYNCS), 0);
}

/// The generation of the snapshot saved in a `--state-dir` (None while there is none).
fn saved_generation(state: &std::path::Path) -> Option<u64> {
    let bytes = std::fs::read(state.join("snapshot.pb")).ok()?;
    let newline = bytes.iter().position(|b| *b == b'\n')?;
    let snapshot: sluice_snapshot::Snapshot = prost::Message::decode(&bytes[newline + 1..]).ok()?;
    Some(snapshot.version?.generation)
}

/// With --state-dir, the result of deltas is saved shortly after they apply (a burst once,
/// after its ACKs rather than before each), and a data plane restarted while its
/// controller is down serves it.
#[test]
fn the_result_of_deltas_is_saved_and_served_after_a_restart() {
    let (backend, _echo) = echo("echo");
    let controller = Controller::start(0, None);
    let (port, admin) = (free_port(), free_port());
    let content = |tag: &str| snapshot(GATEWAY, port, "a.example", backend, tag, "echo");
    let state = std::env::temp_dir().join(format!("sluice-delta-saved-{}-{port}", std::process::id()));
    let state_arg = state.to_string_lossy().into_owned();
    controller.push.publish(GATEWAY, content("v1"));
    let first = dataplane_with(controller.address, GATEWAY, "pod-0", admin, &["--state-dir", &state_arg]);
    serves(port, "v1");
    eventually(Duration::from_secs(5), "the whole snapshot saved", || saved_generation(&state) == Some(1));
    for tag in ["v2", "v3", "v4"] {
        controller.push.publish(GATEWAY, content(tag));
        serves(port, tag);
    }
    assert_eq!(metric(admin, APPLIED_DELTAS), 3);
    eventually(Duration::from_secs(10), "the deltas' result saved", || saved_generation(&state) == Some(4));
    let push = controller.address;
    drop(controller);
    drop(first);

    let _second = dataplane_with(push, GATEWAY, "pod-0", admin, &["--state-dir", &state_arg]);
    serves(port, "v4");
    let _ = std::fs::remove_dir_all(&state);
}

/// The data plane starts from a saved snapshot that claims the controller's content hash
/// but holds one route more: the controller sends nothing on connect (same content, as
/// far as it knows), and its next delta, applied to that base, hashes to something else.
/// The data plane applies nothing, asks for a Resync and converges on the whole snapshot.
#[test]
fn a_delta_whose_result_does_not_hash_to_its_version_is_resynced_whole() {
    let (backend, _echo) = echo("echo");
    let controller = Controller::start(0, None);
    let (port, admin) = (free_port(), free_port());
    let content = |tag: &str| snapshot(GATEWAY, port, "a.example", backend, tag, "echo");
    let version = controller.push.publish(GATEWAY, content("v1")).unwrap();

    let mut wrong_base = content("v1");
    let mut stale = wrong_base.listeners[0].http_routes[0].clone();
    stale = HttpRoute {
        name: "httproute/test/stale/rule/0/match/0".into(),
        hostnames: vec!["stale.example".into()],
        ..stale
    };
    wrong_base.listeners[0].http_routes.push(stale);
    wrong_base.version = Some(version);
    let state = std::env::temp_dir().join(format!("sluice-delta-state-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&state).unwrap();
    let encoded = prost::Message::encode_to_vec(&wrong_base);
    let mut file = format!("sluice-snapshot-v1 {}\n", sluice_snapshot::hash_encoded(&encoded)).into_bytes();
    file.extend_from_slice(&encoded);
    std::fs::write(state.join("snapshot.pb"), file).unwrap();

    let state_arg = state.to_string_lossy().into_owned();
    let _dataplane = dataplane_with(controller.address, GATEWAY, "pod-0", admin, &["--state-dir", &state_arg]);
    eventually(Duration::from_secs(20), "the connect at the same version", || {
        controller.push.progress()[GATEWAY].programmed().is_ok()
    });
    assert_eq!(sent(&controller.push), (0, 0), "it reported our content: nothing to send");
    eventually(Duration::from_secs(10), "serving the wrong base", || {
        get(port, "stale.example", "/").is_ok_and(|(status, _, _)| status == 200)
    });

    controller.push.publish(GATEWAY, content("v2"));
    serves(port, "v2");
    eventually(Duration::from_secs(5), "the ACK of 2", || controller.push.progress()[GATEWAY].programmed().is_ok());
    assert_eq!(sent(&controller.push), (1, 1), "the delta, then the whole snapshot");
    assert_eq!(metric(admin, RESYNCS), 1);
    assert_eq!((metric(admin, APPLIED_SNAPSHOTS), metric(admin, APPLIED_DELTAS)), (1, 0));
    assert_eq!(served_generation(admin), Some(2));
    assert_eq!(get(port, "stale.example", "/").unwrap().0, 404, "converged on the controller's content");

    // From the whole snapshot on, deltas apply.
    controller.push.publish(GATEWAY, content("v3"));
    serves(port, "v3");
    assert_eq!(sent(&controller.push), (1, 2));
    eventually(Duration::from_secs(5), "the delta to be counted", || metric(admin, APPLIED_DELTAS) == 1);
    assert_eq!(metric(admin, RESYNCS), 1);
    let _ = std::fs::remove_dir_all(&state);
}

/// A delta whose result the data plane rejects (two listeners of one name) is NACKed; the
/// controller answers with the whole snapshot (rejected too, and not sent again), and the
/// next change goes whole, since the pod serves what it served before.
#[test]
fn a_nacked_delta_is_followed_by_the_whole_snapshot() {
    let (backend, _echo) = echo("echo");
    let controller = Controller::start(0, None);
    let (port, admin) = (free_port(), free_port());
    let content = |tag: &str| snapshot(GATEWAY, port, "a.example", backend, tag, "echo");
    controller.push.publish(GATEWAY, content("v1"));
    let _dataplane = dataplane(controller.address, GATEWAY, "pod-0", admin);
    serves(port, "v1");

    let mut invalid = content("v2");
    invalid.listeners.push(invalid.listeners[0].clone());
    assert_eq!(controller.push.publish(GATEWAY, invalid).unwrap().generation, 2);
    eventually(Duration::from_secs(10), "the delta and the whole snapshot", || sent(&controller.push) == (2, 1));
    eventually(Duration::from_secs(10), "both NACKs", || {
        metric(admin, "sluice_config_reloads_total{result=\"rejected\"}") == 2
    });
    let progress = controller.push.progress()[GATEWAY].clone();
    assert!(progress.pods["pod-0"].rejected.as_ref().is_some_and(|(v, why)| *v == 2 && why.contains("duplicate")));
    assert_eq!(served_generation(admin), Some(1));
    serves(port, "v1");

    controller.push.publish(GATEWAY, content("v3"));
    serves(port, "v3");
    eventually(Duration::from_secs(5), "the ACK of 3", || controller.push.progress()[GATEWAY].programmed().is_ok());
    assert_eq!(sent(&controller.push), (3, 1), "after a NACK the next change goes whole");
    controller.push.publish(GATEWAY, content("v4"));
    serves(port, "v4");
    assert_eq!(sent(&controller.push), (3, 2), "and then deltas again");
    assert_eq!(metric(admin, RESYNCS), 0);
}

/// What a stream that opens with `accepts_deltas` receives for the first snapshot and two
/// changes: "snapshot" or "delta" each.
fn kinds_received(controller: &Controller, gateway: &str, accepts_deltas: bool) -> Vec<&'static str> {
    let content = |tag: &str| snapshot(gateway, 1, "a.example", 1, tag, "echo");
    controller.push.publish(gateway, content("v1"));
    let (address, push) = (controller.address, controller.push.clone());
    controller.runtime().block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect().await;
        let mut client = ConfigPushClient::new(channel.unwrap());
        let hello =
            Hello { gateway: gateway.into(), pod: "probe".into(), current: None, dropped: vec![], accepts_deltas };
        let hello = DataPlaneMessage { message: Some(data_plane_message::Message::Hello(hello)) };
        let outbound = tokio_stream::iter(vec![hello]).chain(tokio_stream::pending());
        let mut inbound = client.stream(outbound).await.unwrap().into_inner();
        let mut kinds = Vec::new();
        for next in [None, Some("v2"), Some("v3")] {
            if let Some(tag) = next {
                push.publish(gateway, content(tag)).unwrap();
            }
            let message = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await;
            kinds.push(match message.unwrap().unwrap().unwrap().message.unwrap() {
                control_plane_message::Message::Snapshot(_) => "snapshot",
                control_plane_message::Message::Delta(_) => "delta",
            });
        }
        kinds
    })
}

#[test]
fn a_data_plane_from_before_deltas_gets_only_whole_snapshots() {
    let controller = Controller::start(0, None);
    assert_eq!(kinds_received(&controller, "test/new", true), ["snapshot", "delta", "delta"]);
    assert_eq!(kinds_received(&controller, "test/old", false), ["snapshot", "snapshot", "snapshot"]);
}
