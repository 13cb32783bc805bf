//! Replays every committed fuzz corpus file (`fuzz/corpus/TARGET/*`) through the check
//! its fuzz target runs (`sluice_dataplane::fuzzing`, `fuzz/translate_check.rs`), so
//! `cargo test` keeps them passing without a nightly toolchain (docs/development.md).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::path::Path;

#[path = "../../fuzz/translate_check.rs"]
mod translate_check;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|entry| entry.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    for file in files {
        let data = std::fs::read(&file).unwrap();
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{}: {message}", file.display());
        }
    }
}

#[test]
fn path_normalize_corpus() {
    replay("path_normalize", sluice_dataplane::fuzzing::path_normalize);
}

#[test]
fn http1_head_corpus() {
    replay("http1_head", sluice_dataplane::fuzzing::http1_head);
}

#[test]
fn chunked_corpus() {
    replay("chunked", sluice_dataplane::fuzzing::chunked);
}

#[test]
fn snapshot_corpus() {
    replay("snapshot", sluice_dataplane::fuzzing::snapshot);
}

#[test]
fn translate_corpus() {
    replay("translate", translate_check::translate);
}
