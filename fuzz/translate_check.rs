//! The `translate` fuzz target's check, shared with its corpus replay
//! (dataplane/tests/fuzz_corpus.rs): YAML bytes → the World as standalone mode reads one
//! file → translate → every emitted snapshot validates and the data plane compiles it
//! (DESIGN.md: the translator never emits what a data plane cannot compile).

/// Panics when the translator emits a snapshot that does not validate or compile.
pub fn translate(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (mut world, mut skipped) = sluice_translate::World::from_manifests(text);
    // As standalone mode merges its files.
    world.keep_last_definitions(&mut skipped);
    let output = sluice_translate::translate(&world);
    for (gateway, out) in &output.gateways {
        if let Err(error) = sluice_snapshot::validate(&out.snapshot) {
            panic!("translator emitted an invalid snapshot for {gateway}: {error}");
        }
        sluice_dataplane::fuzzing::assert_compiles(&out.snapshot);
    }
}
