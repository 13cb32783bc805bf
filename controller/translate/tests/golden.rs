//! Golden tests: `testdata/NAME.in.yaml` (Kubernetes manifests) → `testdata/NAME.out.yaml`
//! (skipped documents, status, and per Gateway the snapshot and infra).
//!
//! Regenerate after an intended change with `UPDATE_GOLDEN=1 cargo test -p sluice-translate`
//! and review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::{Path, PathBuf};

use sluice_translate::{World, translate};

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    cases.sort();
    cases
}

/// The golden rendering: readable YAML, private keys and long PEM blobs elided.
fn render(input: &str) -> String {
    let (world, skipped) = World::from_manifests(input);
    let mut output = translate(&world);
    // The feature list is the same for every class; it is checked once, in its own test.
    for class in output.status.gateway_classes.values_mut() {
        class.supported_features = vec![format!("<{} features>", class.supported_features.len())];
    }
    for gateway in output.gateways.values_mut() {
        sluice_snapshot::validate(&gateway.snapshot)
            .unwrap_or_else(|error| panic!("translator emitted an invalid snapshot: {error}"));
        for certificate in &mut gateway.snapshot.certificates {
            certificate.cert_chain_pem = format!("<{} bytes of PEM>", certificate.cert_chain_pem.len());
            certificate.private_key_pem = "<redacted>".into();
        }
    }
    let mut rendered = serde_yaml::to_string(&serde_yaml::Mapping::from_iter([(
        "skipped".into(),
        serde_yaml::to_value(&skipped).unwrap(),
    )]))
    .unwrap();
    rendered.push_str(&serde_yaml::to_string(&output).unwrap());
    rendered
}

#[test]
fn golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let cases = cases();
    assert!(cases.len() >= 60, "expected at least 60 golden cases, found {}", cases.len());
    let mut failures = Vec::new();
    for input_path in &cases {
        let input = std::fs::read_to_string(input_path).unwrap();
        let rendered = render(&input);
        let output_path = PathBuf::from(input_path.to_string_lossy().replace(".in.yaml", ".out.yaml"));
        if update {
            std::fs::write(&output_path, &rendered).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&output_path).unwrap_or_default();
        if expected != rendered {
            failures.push(output_path.display().to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "golden files differ (run UPDATE_GOLDEN=1 cargo test -p sluice-translate and review the diff):\n{}",
        failures.join("\n")
    );
}

#[test]
fn translation_does_not_depend_on_input_order() {
    for input_path in cases() {
        let input = std::fs::read_to_string(&input_path).unwrap();
        let (world, _) = World::from_manifests(&input);
        let mut reversed = world.clone();
        reversed.gateway_classes.reverse();
        reversed.gateways.reverse();
        reversed.http_routes.reverse();
        reversed.tcp_routes.reverse();
        reversed.reference_grants.reverse();
        reversed.services.reverse();
        reversed.endpoint_slices.reverse();
        reversed.secrets.reverse();
        reversed.namespaces.reverse();
        reversed.proxy_configs.reverse();
        assert_eq!(translate(&world), translate(&reversed), "{}", input_path.display());
    }
}
