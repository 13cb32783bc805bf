//! `sluice-dataplane`: serves one Gateway's config snapshots with Pingora (see the library).

fn main() -> anyhow::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    allocator_settings();
    sluice_dataplane::main()
}

/// glibc reads its allocator settings only when a program starts: without
/// `GLIBC_TUNABLES`, the data plane starts itself again (same process, `exec`) with the
/// settings the deployer gives its pods ([`sluice_snapshot::DATA_PLANE_GLIBC_TUNABLES`]),
/// so that one started by hand holds as little memory. Set `GLIBC_TUNABLES` (even empty)
/// to keep your own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn allocator_settings() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let Ok(program) = std::env::current_exe() else { return };
    let error = std::process::Command::new(program)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", sluice_snapshot::DATA_PLANE_GLIBC_TUNABLES)
        .exec();
    // Only reached when the exec failed: go on with glibc's defaults.
    eprintln!("sluice-dataplane: running with glibc's default allocator settings ({error})");
}
