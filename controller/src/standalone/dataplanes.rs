//! Data-plane processes: one per Gateway with listeners, restarted when they exit.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::process::{Child, Command};

use super::run::Runner;
use super::write_private;

pub(super) struct DataPlane {
    pub(super) child: Child,
    pub(super) ports: Vec<u32>,
    pub(super) admin: SocketAddr,
    /// Set once the process exited, with how; it is restarted after a pause.
    pub(super) exited: Option<(String, Instant)>,
    pub(super) started: Instant,
    /// Exits in a row without a minute of running in between (for the restart backoff).
    pub(super) failures: u32,
}

impl DataPlane {
    /// How long to wait before restarting after `failures` quick exits in a row: 2 s,
    /// doubling up to a minute (e.g. while another program holds the port).
    pub(super) fn restart_pause(failures: u32) -> Duration {
        Duration::from_secs(2u64.saturating_mul(1 << failures.saturating_sub(1).min(5)).min(60))
    }
}

impl Runner {
    pub(super) async fn ensure_process(&mut self, gateway: &str, ports: Vec<u32>) {
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

    pub(super) fn spawn(&self, gateway: &str, ports: &[u32]) -> Result<(Child, SocketAddr)> {
        let token = self.state_dir.join(format!("{}.token", gateway.replace('/', "_")));
        write_private(&token, &self.tokens.issue(gateway))?;
        let admin = free_loopback_port()?;
        let (program, leading) = self.options.dataplane.split_first().context("no data-plane command")?;
        let mut command = Command::new(program);
        command
            .args(leading)
            .arg("--control-plane")
            .arg(format!("https://{}", self.push_address))
            .args(["--gateway", gateway, "--pod", "standalone"])
            .arg("--ca")
            .arg(&self.ca_file)
            .arg("--token-file")
            .arg(&token)
            .args(["--bind", &self.options.bind.to_string(), "--admin", &admin.to_string(), "--exit-with-stdin"])
            .stdin(std::process::Stdio::piped())
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        let child = command.spawn().with_context(|| format!("running {}", program.to_string_lossy()))?;
        let listening: Vec<String> = ports.iter().map(|p| format!("{}:{p}", self.options.bind)).collect();
        println!("sluice: data plane for {gateway} on {} (admin http://{admin})", listening.join(", "));
        Ok((child, admin))
    }

    /// Notices data planes that exited and restarts them after a pause.
    pub(super) async fn supervise(&mut self) {
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
            self.ensure_process(&gateway, ports).await;
            if let Some(process) = self.processes.get_mut(&gateway) {
                process.failures = failures;
            }
            changed = true;
        }
        if changed {
            self.report();
        }
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
