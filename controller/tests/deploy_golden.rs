//! Golden files for the deployer: `testdata/deploy/NAME.in.yaml` (Gateway API manifests)
//! → `NAME.out.yaml` (the ServiceAccount, Deployment and Service rendered per Gateway).
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p sluice-controller --test deploy_golden`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::collections::BTreeMap;
use std::path::Path;

use sluice_controller::deploy::{DeployOptions, GatewayIdentity, Rendered, render};
use sluice_translate::{World, translate};

fn rendered(input: &str) -> String {
    let (world, skipped) = World::from_manifests(input);
    assert!(skipped.is_empty(), "{skipped:?}");
    let output = translate(&world);
    let options = DeployOptions {
        default_image: "ghcr.io/example/sluice-dataplane:test".into(),
        control_plane_url: "https://sluice-controller.sluice-system.svc:9443".into(),
        push_trust_bundle: "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n".into(),
    };
    let mut all: BTreeMap<String, Rendered> = BTreeMap::new();
    for (key, gateway) in &output.gateways {
        let object = world
            .gateways
            .iter()
            .find(|g| {
                g.metadata.namespace.as_deref() == Some(&key.namespace) && g.metadata.name.as_deref() == Some(&key.name)
            })
            .unwrap();
        let identity = GatewayIdentity {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            uid: object.metadata.uid.clone().unwrap_or_else(|| "uid-unset".into()),
            class: object.spec.gateway_class_name.clone(),
        };
        all.insert(key.to_string(), render(&identity, &gateway.infra, &options));
    }
    serde_saphyr::to_string(&all).unwrap()
}

#[test]
fn rendered_manifests_match_the_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/deploy");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 4, "golden inputs are missing from {}", dir.display());
    let mut failures = Vec::new();
    for input in inputs {
        let expected_path = input.to_string_lossy().replace(".in.yaml", ".out.yaml");
        let actual = rendered(&std::fs::read_to_string(&input).unwrap());
        if update {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!("{} differs from {expected_path}:\n{actual}", input.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
