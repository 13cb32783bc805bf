//! Data-plane processes: one per Gateway with listeners, restarted when they exit.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::process::{Child, Command};

use super::write_private;
use crate::push::auth::StaticTokens;

/// How data planes are started: the command and what they need to reach the push server.
pub(super) struct Launch {
    /// The program and leading arguments.
    pub(super) command: Vec<OsString>,
    /// The address data-plane listeners bind to.
    pub(super) bind: IpAddr,
    /// Where each data plane's token file is written.
    pub(super) state_dir: PathBuf,
    pub(super) tokens: StaticTokens,
    pub(super) ca_file: PathBuf,
    pub(super) push_address: SocketAddr,
}

/// The data-plane processes, one per Gateway with listeners.
pub(super) struct DataPlanes {
    launch: Launch,
    processes: BTreeMap<String, DataPlane>,
}

struct DataPlane {
    child: Child,
    ports: Vec<u32>,
    admin: SocketAddr,
    /// Set once the process exited, with how; it is restarted after a pause.
    exited: Option<(String, Instant)>,
    started: Instant,
    /// Exits in a row without a minute of running in between (for the restart backoff).
    failures: u32,
}

impl DataPlane {
    /// How long to wait before restarting after `failures` quick exits in a row: 2 s,
    /// doubling up to a minute (e.g. while another program holds the port).
    fn restart_pause(failures: u32) -> Duration {
        Duration::from_secs(2u64.saturating_mul(1 << failures.saturating_sub(1).min(5)).min(60))
    }
}

impl DataPlanes {
    pub(super) fn new(launch: Launch) -> DataPlanes {
        DataPlanes { launch, processes: BTreeMap::new() }
    }

    /// Runs a data plane for each Gateway of `wanted` on its ports; stops the others.
    pub(super) async fn ensure_all(&mut self, wanted: &BTreeMap<String, Vec<u32>>) {
        for (name, ports) in wanted {
            self.ensure(name, ports.clone()).await;
        }
        let gone: Vec<String> = self.processes.keys().filter(|name| !wanted.contains_key(*name)).cloned().collect();
        for name in gone {
            if let Some(mut process) = self.processes.remove(&name) {
                let _ = process.child.kill().await;
            }
        }
    }

    /// Stops every data plane.
    pub(super) async fn stop_all(&mut self) {
        for (_, mut process) in std::mem::take(&mut self.processes) {
            let _ = process.child.kill().await;
        }
    }

    /// Why the Gateway's data plane is not running, if it exited.
    pub(super) fn exited(&self, gateway: &str) -> Option<&str> {
        self.processes.get(gateway)?.exited.as_ref().map(|(why, _)| why.as_str())
    }

    /// The admin address of the Gateway's data plane.
    pub(super) fn admin(&self, gateway: &str) -> Option<SocketAddr> {
        self.processes.get(gateway).map(|p| p.admin)
    }

    async fn ensure(&mut self, gateway: &str, ports: Vec<u32>) {
        if let Some(process) = self.processes.get(gateway) {
            if process.ports == ports {
                return;
            }
            // Listener ports are part of the process (as they are of a Deployment):
            // a port change restarts the data plane.
            if let Some(mut old) = self.processes.remove(gateway) {
                let _ = old.child.kill().await;
            }
        }
        match self.spawn(gateway, &ports) {
            Ok((child, admin)) => {
                let process = DataPlane { child, ports, admin, exited: None, started: Instant::now(), failures: 0 };
                self.processes.insert(gateway.to_string(), process);
            }
            Err(error) => eprintln!("sluice: cannot start the data plane of {gateway}: {error:#}"),
        }
    }

    fn spawn(&self, gateway: &str, ports: &[u32]) -> Result<(Child, SocketAddr)> {
        let token = self.launch.state_dir.join(format!("{}.token", gateway.replace('/', "_")));
        write_private(&token, &self.launch.tokens.issue(gateway))?;
        let admin = free_loopback_port()?;
        let (program, leading) = self.launch.command.split_first().context("no data-plane command")?;
        let mut command = Command::new(program);
        command
            .args(leading)
            .arg("--control-plane")
            .arg(format!("https://{}", self.launch.push_address))
            .args(["--gateway", gateway, "--pod", "standalone"])
            .arg("--ca")
            .arg(&self.launch.ca_file)
            .arg("--token-file")
            .arg(&token)
            .args(["--bind", &self.launch.bind.to_string(), "--admin", &admin.to_string(), "--exit-with-stdin"])
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        // The deployer's allocator settings, unless set already (docs/standalone.md).
        for (name, value) in crate::deploy::DATA_PLANE_ALLOCATOR_ENV {
            if std::env::var_os(name).is_none() {
                command.env(name, value);
            }
        }
        let child = command.spawn().with_context(|| format!("running {}", program.to_string_lossy()))?;
        let listening: Vec<String> = ports.iter().map(|p| format!("{}:{p}", self.launch.bind)).collect();
        println!("sluice: data plane for {gateway} on {} (admin http://{admin})", listening.join(", "));
        Ok((child, admin))
    }

    /// Notices data planes that exited and restarts them after a pause; returns whether
    /// any exited or restarted.
    pub(super) async fn supervise(&mut self) -> bool {
        let mut changed = false;
        let mut restart = Vec::new();
        for (gateway, process) in &mut self.processes {
            if let Some((_, since)) = &process.exited {
                if since.elapsed() > DataPlane::restart_pause(process.failures) {
                    restart.push((gateway.clone(), process.ports.clone(), process.failures));
                }
                continue;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                let ran_a_while = process.started.elapsed() > Duration::from_secs(60);
                process.failures = if ran_a_while { 1 } else { process.failures.saturating_add(1) };
                let pause = DataPlane::restart_pause(process.failures);
                eprintln!("sluice: the data plane of {gateway} exited ({status}); restarting it in {pause:?}");
                process.exited = Some((format!("the data plane process exited ({status})"), Instant::now()));
                changed = true;
            }
        }
        for (gateway, ports, failures) in restart {
            self.processes.remove(&gateway);
            self.ensure(&gateway, ports).await;
            if let Some(process) = self.processes.get_mut(&gateway) {
                process.failures = failures;
            }
            changed = true;
        }
        changed
    }
}

fn free_loopback_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free admin port")?;
    Ok(listener.local_addr()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_to_a_minute() {
        let pauses: Vec<u64> = (1..=8).map(|n| DataPlane::restart_pause(n).as_secs()).collect();
        assert_eq!(pauses, [2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
