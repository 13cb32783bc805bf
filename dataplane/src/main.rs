//! `sluice-dataplane`: serves one Gateway's config snapshots with Pingora (see the library).

fn main() -> anyhow::Result<()> {
    sluice_dataplane::main()
}
