//! Leader election on a coordination.k8s.io Lease with client-go's timings: a lease of
//! 15 s, renewed every 2 s by the leader, which steps down if it could not renew for
//! 10 s; candidates retry every 2 s. Released on shutdown so a standby takes over at
//! once. Only the leader writes status and applies data planes; every replica keeps
//! warm caches, translates and serves pushes.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;

pub const LEASE_NAME: &str = "sluice-controller-leader";
const LEASE_SECONDS: i64 = 15;
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_secs(2);

/// Runs the election until `stop` turns true, then releases the lease if held.
pub async fn run(
    client: Client,
    namespace: String,
    identity: String,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let mut last_renew = tokio::time::Instant::now();
    loop {
        let held = match try_acquire_or_renew(&api, &identity).await {
            Ok(held) => held,
            Err(e) => {
                tracing::debug!("leader election: {e}");
                // Keep leading through short API trouble, up to the renew deadline.
                *leader.borrow() && last_renew.elapsed() < RENEW_DEADLINE
            }
        };
        if held {
            last_renew = tokio::time::Instant::now();
        }
        if *leader.borrow() != held {
            if held {
                tracing::info!("{identity} is now the leader (Lease {namespace}/{LEASE_NAME})");
            } else {
                tracing::warn!("{identity} is no longer the leader");
            }
            leader.send_replace(held);
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.changed() => break,
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        let release = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "spec": {"holderIdentity": null, "leaseDurationSeconds": 1},
        });
        match api.patch(LEASE_NAME, &PatchParams::default(), &Patch::Merge(&release)).await {
            Ok(_) => tracing::info!("released the leader Lease"),
            Err(e) => tracing::warn!("releasing the leader Lease: {e}"),
        }
    }
}

/// One round: takes the Lease if it is free or expired, renews it if ours. Uses the
/// Lease's resourceVersion, so two candidates never both win.
async fn try_acquire_or_renew(api: &Api<Lease>, identity: &str) -> Result<bool, kube::Error> {
    let now = jiff::Timestamp::now();
    let Some(mut lease) = api.get_opt(LEASE_NAME).await? else {
        let lease: Lease = serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE_NAME},
            "spec": {
                "holderIdentity": identity,
                "leaseDurationSeconds": LEASE_SECONDS,
                "acquireTime": MicroTime(now),
                "renewTime": MicroTime(now),
                "leaseTransitions": 0,
            },
        }))
        .map_err(kube::Error::SerdeError)?;
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let ours = holder == identity;
    let duration = spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS as i32) as i64;
    let expired = spec.renew_time.as_ref().is_none_or(|t| t.0.as_second() + duration < now.as_second());
    if !ours && !holder.is_empty() && !expired {
        return Ok(false);
    }
    if !ours {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(identity.to_string());
    spec.lease_duration_seconds = Some(LEASE_SECONDS as i32);
    spec.renew_time = Some(MicroTime(now));
    match api.replace(LEASE_NAME, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
