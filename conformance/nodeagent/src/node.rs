//! The Node object and its heartbeats (a Lease every 10 s, node status every
//! minute), as kubelet keeps them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::Agent;

const MANAGER: &str = "sluice-nodeagent";

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn node_status(agent: &Agent) -> serde_json::Value {
    let resources: BTreeMap<&str, Quantity> = [
        ("cpu", Quantity("64".into())),
        ("memory", Quantity("256Gi".into())),
        ("pods", Quantity("1000".into())),
        ("ephemeral-storage", Quantity("100Gi".into())),
    ]
    .into_iter()
    .collect();
    let t = now();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": t, "lastTransitionTime": t,
        })
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    json!({
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "sluice-nodeagent does not track memory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "sluice-nodeagent does not track disk"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "sluice-nodeagent does not track pids"),
            condition("Ready", "True", "KubeletReady", "sluice-nodeagent is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": agent.cli.node_ip.to_string()}],
        "capacity": resources,
        "allocatable": resources,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": agent.cli.kubelet_port}},
        "nodeInfo": {
            "architecture": std::env::consts::ARCH,
            "bootID": boot_id.trim(),
            "containerRuntimeVersion": concat!("sluice-nodeagent://", env!("CARGO_PKG_VERSION")),
            "kernelVersion": kernel.trim(),
            "kubeProxyVersion": "",
            "kubeletVersion": concat!("sluice-nodeagent-", env!("CARGO_PKG_VERSION")),
            "machineID": "",
            "operatingSystem": "linux",
            "osImage": "sluice test node",
            "systemUUID": "",
        },
    })
}

/// Creates or updates the Node and marks it Ready.
pub async fn register(agent: &Agent) -> Result<()> {
    let nodes: Api<Node> = Api::all(agent.client.clone());
    let name = &agent.cli.node_name;
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH },
                "node.kubernetes.io/instance-type": "sluice-process-node",
            },
        },
        "spec": {},
    });
    let pp = PatchParams::apply(MANAGER).force();
    nodes.patch(name, &pp, &Patch::Apply(&node)).await.with_context(|| format!("registering node {name}"))?;
    update_status(agent).await?;
    tracing::info!("node {name} registered and Ready");
    Ok(())
}

async fn update_status(agent: &Agent) -> Result<()> {
    let nodes: Api<Node> = Api::all(agent.client.clone());
    let patch = json!({"status": node_status(agent)});
    nodes
        .patch_status(&agent.cli.node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .context("updating node status")?;
    Ok(())
}

async fn renew_lease(agent: &Agent) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(agent.client.clone(), "kube-node-lease");
    let name = &agent.cli.node_name;
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": 40,
            "renewTime": MicroTime(jiff::Timestamp::now()),
        },
    });
    leases
        .patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&lease))
        .await
        .context("renewing the node lease")?;
    Ok(())
}

/// Renews the Lease every 10 s and re-posts node status every 60 s (which
/// also re-creates a Node someone deleted).
pub async fn heartbeat(agent: Arc<Agent>) {
    let mut tick = 0u64;
    loop {
        if let Err(e) = renew_lease(&agent).await {
            tracing::warn!("{e:#}");
        }
        if tick % 6 == 5 {
            let result = match update_status(&agent).await {
                Err(_) => register(&agent).await,
                ok => ok,
            };
            if let Err(e) = result {
                tracing::warn!("{e:#}");
            }
        }
        tick += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}
