//! Pod sandboxes: a network namespace per pod with a veth to the host bridge
//! and one address from the pod network. Everything goes through `ip`
//! (iproute2), so the agent needs no unsafe code of its own.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// Prefix of every network namespace the agent creates.
pub const NETNS_PREFIX: &str = "sluice-pod-";

/// Runs `ip ARGS`, failing with its stderr.
pub async fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output().await.context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The bridge must exist and own the node address (conformance/cluster/up makes it).
pub async fn check_bridge(bridge: &str, node_ip: Ipv4Addr) -> Result<()> {
    let out = ip(&["-4", "-o", "addr", "show", "dev", bridge])
        .await
        .with_context(|| format!("bridge {bridge} (conformance/cluster/up creates it)"))?;
    if !out.contains(&format!("inet {node_ip}/")) {
        bail!("bridge {bridge} does not have address {node_ip}");
    }
    Ok(())
}

/// Addresses handed to pods: the pod network minus its first /24, which is
/// kept for the node and other infrastructure.
pub struct IpPool {
    first: u32,
    last: u32,
    used: Mutex<BTreeSet<u32>>,
}

impl IpPool {
    pub fn new(node_ip: Ipv4Addr, prefix: u8) -> Result<IpPool> {
        if !(8..=22).contains(&prefix) {
            bail!("pod network prefix /{prefix} is out of range (8..=22)");
        }
        let mask = u32::MAX << (32 - prefix);
        let network = u32::from(node_ip) & mask;
        Ok(IpPool { first: network + 256 + 1, last: (network | !mask) - 1, used: Mutex::new(BTreeSet::new()) })
    }

    pub fn allocate(&self) -> Result<Ipv4Addr> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let start = used.last().map_or(self.first, |l| l + 1);
        let candidates = (start..=self.last).chain(self.first..start);
        for candidate in candidates {
            if !used.contains(&candidate) {
                used.insert(candidate);
                return Ok(Ipv4Addr::from(candidate));
            }
        }
        bail!("the pod network is full")
    }

    pub fn release(&self, addr: Ipv4Addr) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.remove(&u32::from(addr));
    }
}

/// A pod's network namespace and veth.
pub struct Sandbox {
    pub netns: String,
}

fn veth_name(uid: &str) -> String {
    let hex: String = uid.chars().filter(|c| c.is_ascii_hexdigit()).take(12).collect();
    format!("sv{hex}")
}

impl Sandbox {
    pub fn netns_for(uid: &str) -> String {
        format!("{NETNS_PREFIX}{uid}")
    }

    /// Creates the namespace, the veth pair (host end on the bridge, with
    /// hairpin so a pod reaches itself through its own Service) and the
    /// routes: the pod network directly, the rest of the test range through
    /// the node, and no default route, so anything else fails at once.
    pub async fn create(
        uid: &str,
        ip_addr: Ipv4Addr,
        bridge: &str,
        node_ip: Ipv4Addr,
        prefix: u8,
        test_range: &str,
    ) -> Result<Sandbox> {
        let netns = Self::netns_for(uid);
        let host = veth_name(uid);
        let sandbox = Sandbox { netns };
        let result = async {
            let ns = sandbox.netns.as_str();
            // Leftovers of an earlier attempt for the same pod.
            let _ = ip(&["netns", "del", ns]).await;
            let _ = ip(&["link", "del", &host]).await;
            ip(&["netns", "add", ns]).await?;
            ip(&["link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", ns]).await?;
            ip(&["link", "set", &host, "master", bridge]).await?;
            ip(&["link", "set", &host, "type", "bridge_slave", "hairpin", "on"]).await?;
            ip(&["link", "set", &host, "up"]).await?;
            let cidr = format!("{ip_addr}/{prefix}");
            ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"]).await?;
            ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
            ip(&["-n", ns, "link", "set", "eth0", "up"]).await?;
            let gateway = node_ip.to_string();
            ip(&["-n", ns, "route", "add", test_range, "via", &gateway]).await?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            sandbox.destroy().await;
            return Err(e);
        }
        Ok(sandbox)
    }

    /// Kills whatever still runs in the namespace and deletes it (the veth
    /// goes with it).
    pub async fn destroy(&self) {
        kill_netns_processes(&self.netns).await;
        if let Err(e) = ip(&["netns", "del", &self.netns]).await {
            tracing::debug!("deleting {}: {e:#}", self.netns);
        }
    }
}

/// SIGKILLs every process in a network namespace.
pub async fn kill_netns_processes(netns: &str) {
    let Ok(pids) = ip(&["netns", "pids", netns]).await else {
        return;
    };
    for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Removes every sandbox and pod state dir a previous agent left behind.
pub async fn sweep(state_dir: &Path) {
    if let Ok(list) = ip(&["netns", "list"]).await {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.starts_with(NETNS_PREFIX)) {
            tracing::info!("removing leftover network namespace {name}");
            kill_netns_processes(name).await;
            let _ = ip(&["netns", "del", name]).await;
        }
    }
    let pods = state_dir.join("pods");
    if let Ok(entries) = std::fs::read_dir(&pods) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_skips_the_infrastructure_range_and_reuses_released_addresses() {
        let pool = IpPool::new(Ipv4Addr::new(198, 18, 0, 1), 22).unwrap();
        let a = pool.allocate().unwrap();
        assert_eq!(a, Ipv4Addr::new(198, 18, 1, 1));
        let mut last = a;
        for _ in 0..(3 * 256 - 3) {
            last = pool.allocate().unwrap();
        }
        assert_eq!(last, Ipv4Addr::new(198, 18, 3, 254));
        assert!(pool.allocate().is_err(), "pool should be exhausted");
        pool.release(Ipv4Addr::new(198, 18, 2, 7));
        assert_eq!(pool.allocate().unwrap(), Ipv4Addr::new(198, 18, 2, 7));
    }

    #[test]
    fn veth_names_fit_the_interface_name_limit() {
        let name = veth_name("0f3c2a4e-91b2-4c53-8a57-0123456789ab");
        assert_eq!(name, "sv0f3c2a4e91b2");
        assert!(name.len() <= 15);
    }
}
