//! Certificate validity is checked against the pass's clock (`World::now`), with the
//! same loader the data plane uses.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use sluice_translate::{ObjectKey, World, translate};

fn world(now: Option<i64>) -> World {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/tenant-isolation-hostile-input.in.yaml"
    ))
    .unwrap();
    let (mut world, skipped) = World::from_manifests(&text);
    assert!(skipped.is_empty(), "{skipped:?}");
    world.now = now;
    world
}

fn https_listener(world: &World) -> (String, String, Vec<String>) {
    let output = translate(world);
    let key = ObjectKey::new("infra", "gw");
    let listener = output.status.gateways[&key].listeners.iter().find(|l| l.name == "https").unwrap().clone();
    let resolved = listener.conditions.iter().find(|c| c.type_ == "ResolvedRefs").unwrap();
    let served = output.gateways[&key].snapshot.certificates.iter().map(|c| c.name.clone()).collect();
    (resolved.reason.clone(), resolved.message.clone(), served)
}

#[test]
fn expired_and_not_yet_valid_certificates_are_invalid_refs() {
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dataplane/tests/fixtures/a.example.com.crt"
    ))
    .unwrap();
    let key = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dataplane/tests/fixtures/a.example.com.key"
    ))
    .unwrap();
    let loaded = sluice_snapshot::compile::load_certificate(&pem, &key).unwrap();

    let (reason, _, served) = https_listener(&world(Some(loaded.not_before + 60)));
    assert_eq!(reason, "ResolvedRefs");
    assert_eq!(served, ["secret/infra/good"]);

    let (reason, message, served) = https_listener(&world(Some(loaded.not_after + 1)));
    assert_eq!(reason, "InvalidCertificateRef");
    assert!(message.starts_with("Secret infra/good: the certificate expired at "), "{message}");
    assert!(served.is_empty(), "an expired certificate is not served: {served:?}");

    let (reason, message, _) = https_listener(&world(Some(loaded.not_before - 1)));
    assert_eq!(reason, "InvalidCertificateRef");
    assert!(message.contains("is not valid before"), "{message}");

    // Without a clock (golden tests) validity is not checked.
    assert_eq!(https_listener(&world(None)).0, "ResolvedRefs");
}

#[test]
fn translation_says_when_a_certificate_becomes_valid_or_expires() {
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dataplane/tests/fixtures/a.example.com.crt"
    ))
    .unwrap();
    let key = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../dataplane/tests/fixtures/a.example.com.key"
    ))
    .unwrap();
    let loaded = sluice_snapshot::compile::load_certificate(&pem, &key).unwrap();
    // Valid now: the next change is the moment after notAfter, and there it is expired.
    let at = translate(&world(Some(loaded.not_before + 60))).next_change_at;
    assert_eq!(at, Some(loaded.not_after + 1));
    assert_eq!(https_listener(&world(at)).0, "InvalidCertificateRef");
    // Not valid yet: the next change is notBefore, and there it is served.
    let at = translate(&world(Some(loaded.not_before - 3600))).next_change_at;
    assert_eq!(at, Some(loaded.not_before));
    assert_eq!(https_listener(&world(at)).0, "ResolvedRefs");
    // Expired: nothing changes with time any more; without a clock, nothing is known.
    assert_eq!(translate(&world(Some(loaded.not_after + 1))).next_change_at, None);
    assert_eq!(translate(&world(None)).next_change_at, None);
}
