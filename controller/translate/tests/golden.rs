//! Golden tests: `testdata/NAME.in.yaml` (Kubernetes manifests) → `testdata/NAME.out.yaml`
//! (skipped documents, status, and per Gateway the snapshot and infra). Each case is its
//! own test, plus one that checks translation does not depend on input order.
//!
//! Regenerate after an intended change with `UPDATE_GOLDEN=1 cargo test -p sluice-translate`
//! and review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::{Path, PathBuf};

use libtest_mimic::{Arguments, Failed, Trial};
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

/// The golden rendering: readable YAML, private keys and long PEM blobs (certificates, CA
/// bundles) elided.
fn render(input: &str) -> Result<String, Failed> {
    let (world, skipped) = World::from_manifests(input);
    let mut output = translate(&world);
    // The feature list is the same for every class; it is checked once, in its own test,
    // so that claiming a feature does not touch every golden file.
    for class in output.status.gateway_classes.values_mut() {
        if !class.supported_features.is_empty() {
            class.supported_features = vec!["<SUPPORTED_FEATURES>".to_string()];
        }
    }
    for (gateway, out) in output.gateways.iter_mut() {
        sluice_snapshot::validate(&out.snapshot)
            .map_err(|error| format!("translator emitted an invalid snapshot for {gateway}: {error}"))?;
        for cluster in &mut out.snapshot.clusters {
            if let Some(tls) = cluster.tls.as_mut().filter(|t| !t.ca_pem.is_empty()) {
                tls.ca_pem = format!("<{} bytes of PEM>", tls.ca_pem.len());
            }
        }
        for certificate in &mut out.snapshot.certificates {
            certificate.cert_chain_pem = format!("<{} bytes of PEM>", certificate.cert_chain_pem.len());
            certificate.private_key_pem = "<redacted>".into();
        }
        for validation in &mut out.snapshot.client_validations {
            validation.ca_bundle_pem = format!("<{} bytes of PEM>", validation.ca_bundle_pem.len());
        }
    }
    #[derive(serde::Serialize)]
    struct Skipped<'a> {
        skipped: &'a [sluice_translate::Skipped],
    }
    let mut rendered = serde_saphyr::to_string(&Skipped { skipped: &skipped }).unwrap();
    rendered.push_str(&serde_saphyr::to_string(&output).unwrap());
    Ok(rendered)
}

fn check_case(input_path: &Path, update: bool) -> Result<(), Failed> {
    let input = std::fs::read_to_string(input_path).map_err(|e| format!("{}: {e}", input_path.display()))?;
    let rendered = render(&input)?;
    let output_path = PathBuf::from(input_path.to_string_lossy().replace(".in.yaml", ".out.yaml"));
    if update {
        std::fs::write(&output_path, &rendered).map_err(|e| format!("{}: {e}", output_path.display()))?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(&output_path).unwrap_or_default();
    if expected == rendered {
        return Ok(());
    }
    let first_difference = expected
        .lines()
        .zip(rendered.lines())
        .enumerate()
        .find(|(_, (want, got))| want != got)
        .map(|(line, (want, got))| format!("line {}: expected {want:?}, got {got:?}", line + 1))
        .unwrap_or_else(|| "the outputs differ in length".into());
    Err(format!(
        "{} differs ({first_difference}); run UPDATE_GOLDEN=1 cargo test -p sluice-translate and review the diff",
        output_path.display()
    )
    .into())
}

/// Translating the same objects in reverse order must give the same output.
fn check_order_independence(cases: &[PathBuf]) -> Result<(), Failed> {
    for input_path in cases {
        let input = std::fs::read_to_string(input_path).unwrap();
        let (world, _) = World::from_manifests(&input);
        let mut reversed = world.clone();
        reversed.gateway_classes.reverse();
        reversed.gateways.reverse();
        reversed.http_routes.reverse();
        reversed.tcp_routes.reverse();
        reversed.udp_routes.reverse();
        reversed.tls_routes.reverse();
        reversed.reference_grants.reverse();
        reversed.services.reverse();
        reversed.endpoint_slices.reverse();
        reversed.secrets.reverse();
        reversed.config_maps.reverse();
        reversed.namespaces.reverse();
        reversed.proxy_configs.reverse();
        if translate(&world) != translate(&reversed) {
            return Err(format!("{}: output depends on input order", input_path.display()).into());
        }
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let cases = cases();
    let mut trials: Vec<Trial> = cases
        .iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().trim_end_matches(".in.yaml").to_string();
            let path = path.clone();
            Trial::test(format!("golden::{name}"), move || check_case(&path, update))
        })
        .collect();
    let count = cases.len();
    trials.push(Trial::test("golden::at_least_60_cases", move || {
        if count >= 60 { Ok(()) } else { Err(format!("expected at least 60 golden cases, found {count}").into()) }
    }));
    trials.push(Trial::test("golden::order_independence", move || check_order_independence(&cases)));
    libtest_mimic::run(&args, trials).exit();
}
