//! `sluice-dataplane`: serves one Gateway's config snapshots with Pingora (see the library).

/// mimalloc, with [`sluice_snapshot::DATA_PLANE_ALLOCATOR_ENV`]: freed memory goes back to
/// the system at once (glibc's allocator kept what a snapshot's decoding or a burst of
/// connections had freed: 4 MB more at 5000 routes), at the same requests per CPU-second.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    #[cfg(unix)]
    allocator_settings();
    sluice_dataplane::main()
}

/// mimalloc reads its settings only when a program starts: when none of them is set, the
/// data plane starts itself again (same process, `exec`) with the settings the deployer
/// gives its pods ([`sluice_snapshot::DATA_PLANE_ALLOCATOR_ENV`]), so that one started
/// by hand holds as little memory. Set any of them yourself (even empty) to keep your own.
#[cfg(unix)]
fn allocator_settings() {
    use std::os::unix::process::CommandExt;
    let settings = sluice_snapshot::DATA_PLANE_ALLOCATOR_ENV;
    if settings.iter().any(|(name, _)| std::env::var_os(name).is_some()) {
        return;
    }
    let Ok(program) = std::env::current_exe() else { return };
    let error = std::process::Command::new(program).args(std::env::args_os().skip(1)).envs(settings).exec();
    // Only reached when the exec failed: go on with mimalloc's defaults.
    eprintln!("sluice-dataplane: running with the allocator's default settings ({error})");
}
