//! Kubernetes mode: the controller as it runs in a cluster.
//!
//! ```text
//!  reflectors (watch.rs) ──input change──► intake ──► World ──► reconcile::Reconciler
//!                        (a status-only change: no translation, the writer compares again)
//!                                                                │ translate, publish
//!     every replica:  push server (TLS, tokens.rs) ─► data-plane pods ─► progress
//!     leader only:    deployer (apply.rs): SA, Deployment, Service, PDB, HPA (SSA)
//!                     overlay (Programmed, addresses) ─► watch channel ─► status writer
//!                     task (status.rs): GatewayClass, Gateway, ListenerSet, routes (SSA)
//! ```
//!
//! A Gateway is `Programmed` once its Service has an address and a data-plane pod has
//! applied its current snapshot. Push progress and leadership changes recompute only the
//! overlay (no translation); failed deployments and status writes are retried after a
//! second.

pub mod apply;
pub mod leader;
pub mod status;
pub mod tokens;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_translate::ObjectKey;

use crate::deploy::DeployOptions;
use crate::push::{Authentication, PushServer, ServerTls};
use crate::reconcile::{self, Hold, Reconciler, Translated};

/// Settings of Kubernetes mode.
#[derive(Debug, Clone)]
pub struct Options {
    /// The controller's own namespace: the push CA Secret and the leader Lease live here.
    pub namespace: String,
    /// This replica's name in the leader election (the pod name).
    pub identity: String,
    pub leader_election: bool,
    /// Where the push server listens.
    pub push_listen: SocketAddr,
    /// Names (DNS or IP) in the push server's certificate.
    pub push_names: Vec<String>,
    /// The deployer's defaults: data-plane image, the push URL data planes dial.
    pub deploy: DeployOptions,
    /// How long inputs must be quiet before a recompute.
    pub debounce: Duration,
}

/// The push server's certificate is issued for a year and replaced every 30 days.
const SERVER_CERTIFICATE_DAYS: i64 = 365;
const SERVER_CERTIFICATE_RENEWAL: Duration = Duration::from_secs(30 * 24 * 3600);

pub async fn run(mut options: Options, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let client = kube::Client::try_default().await.context("connecting to the API server")?;
    let apply::PushCa { ca, trust_bundle } = apply::load_or_create_ca(&client, &options.namespace).await?;
    // Data planes find the bundle in their Deployment: a rotation step rolls them.
    options.deploy.push_trust_bundle = trust_bundle;
    let names = options.push_names.clone();
    let issue = move || {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let server = ca.issue_server(&names, SERVER_CERTIFICATE_DAYS)?;
        Ok(ServerTls { certificate_pem: server.certificate_pem, private_key_pem: server.private_key_pem })
    };
    issue().context("issuing the push server certificate")?;
    // The caches first: the push port is the readiness probe, so a replica is Ready only
    // once every watched kind was listed (one started while the API server is down stays
    // unready; a leader that loses the API server keeps serving pushes from its caches).
    let signals = watch::Signals::default();
    let stores = watch::Stores::start(&client, signals.clone()).await?;
    tracing::info!("caches synced");
    let push = PushServer::new();
    let listener = tokio::net::TcpListener::bind(options.push_listen)
        .await
        .with_context(|| format!("binding the push server to {}", options.push_listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let push_task = tokio::spawn({
        let push = push.clone();
        let stop = stop_rx.clone();
        let authentication = Authentication::Token(Arc::new(tokens::TokenReviewer::new(client.clone())));
        async move { push.serve_renewing(listener, issue, authentication, SERVER_CERTIFICATE_RENEWAL, stop).await }
    });
    tracing::info!("push server on {} (names {:?})", options.push_listen, options.push_names);

    let (leader_tx, mut leader_rx) = tokio::sync::watch::channel(!options.leader_election);
    let election = options.leader_election.then(|| {
        tokio::spawn(leader::run(
            client.clone(),
            options.namespace.clone(),
            options.identity.clone(),
            leader_tx,
            stop_rx.clone(),
        ))
    });

    // The status writer: its own leader-only task, fed the latest desired statuses.
    let (desired_tx, desired_rx) = tokio::sync::watch::channel(None);
    let writer = tokio::spawn(status::run_writer(client.clone(), stores.clone(), desired_rx, leader_rx.clone()));

    let mut deployer = apply::Deployer::new(client.clone(), options.deploy.clone());
    let mut reconciler = Reconciler::new(push.clone());
    let mut progress = push.watch_progress();
    let mut deploy_retry: Option<tokio::time::Instant> = None;
    let mut was_leading = false;
    let mut intake = Intake::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // When the clock alone changes the translation (a certificate expires).
        let clock_change = reconciler.next_change_at().map(crate::instant_of_unix);
        let wake_at = [deploy_retry, clock_change]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        let mut inputs_changed = false;
        // Only statuses changed (mostly our own writes coming back): compare again.
        let mut observed = false;
        tokio::select! {
            _ = signals.changed.notified() => {
                intake.take(&signals.changed, options.debounce).await;
                inputs_changed = true;
            }
            _ = signals.observed.notified() => {
                // A change of the inputs meanwhile is not held back by this wait.
                tokio::select! {
                    _ = tokio::time::sleep(options.debounce) => observed = true,
                    _ = signals.changed.notified() => {
                        intake.take(&signals.changed, options.debounce).await;
                        inputs_changed = true;
                    }
                }
            }
            _ = progress.changed() => {}
            _ = leader_rx.changed() => {}
            _ = tokio::time::sleep_until(wake_at) => {
                inputs_changed = clock_change.is_some_and(|at| at <= tokio::time::Instant::now());
            }
            _ = &mut shutdown => break,
        }
        // Data-plane progress alone never translates: it only changes the overlay; nor
        // does a change of statuses alone.
        let started = std::time::Instant::now();
        let translated = reconciler.refresh(inputs_changed, || stores.world()) == reconcile::Refreshed::Translated;
        if translated {
            tracing::debug!(
                translations = reconciler.translations(),
                ms = started.elapsed().as_secs_f64() * 1e3,
                "translated"
            );
        }
        let leading = *leader_rx.borrow_and_update();
        let leadership_changed = std::mem::replace(&mut was_leading, leading) != leading;
        // Only the leader serves data planes: its push progress decides Programmed.
        push.set_standby(!leading);
        let Some(last) = reconciler.last().filter(|_| leading) else {
            // A new leader deploys anyway; a standby retries nothing.
            deploy_retry = None;
            continue;
        };
        let deploy_due = deploy_retry.is_some_and(|at| at <= tokio::time::Instant::now());
        if translated || leadership_changed || deploy_due {
            let failures = deployer.apply(&last.output, &last.world).await;
            deploy_retry = (failures > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(1));
        }
        let addresses = apply::addresses(&last.output, &last.world, &stores.nodes.state());
        let progress_now = push.progress();
        let holds = reconciler.holds(&progress_now, |key| address_hold(last, &addresses, key));
        let overlaid = std::time::Instant::now();
        let desired = status::Desired { status: reconcile::overlay(&last.status, &holds, &progress_now), addresses };
        // A new leader writes even an unchanged status (another may have written since).
        // So does any change of the watched objects, a status-only one included: the
        // writer compares with the watch cache, which may have been behind its last write
        // (it skipped a status the stale cache already showed, then the cache caught up
        // with an older write); the event that brings the cache up to date must make it
        // compare again.
        desired_tx.send_if_modified(|current| {
            let modified = leadership_changed || inputs_changed || observed || current.as_deref() != Some(&desired);
            if modified {
                *current = Some(Arc::new(desired));
            }
            modified
        });
        tracing::debug!(ms = overlaid.elapsed().as_secs_f64() * 1e3, "status overlaid");
    }
    tracing::info!("shutting down");
    stop_tx.send_replace(true);
    if let Some(election) = election {
        let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), push_task).await;
    writer.abort();
    Ok(())
}

/// Kubernetes mode's precondition of `Programmed`: the Gateway's Service has an address,
/// and every address of `spec.addresses`.
fn address_hold(
    last: &Translated,
    addresses: &BTreeMap<ObjectKey, Vec<status::Address>>,
    key: &ObjectKey,
) -> Option<Hold> {
    const REASON: &str = "AddressNotAssigned";
    let Some(assigned) = addresses.get(key) else {
        return Some(Hold { reason: REASON, message: "waiting for the Gateway's Service to get an address".into() });
    };
    let requested = last.output.gateways.get(key).map(|g| g.infra.requested_addresses.as_slice()).unwrap_or_default();
    let missing: Vec<&String> = requested.iter().filter(|r| !assigned.iter().any(|a| &a.value == *r)).collect();
    (!missing.is_empty()).then(|| Hold {
        reason: REASON,
        message: format!("spec.addresses {missing:?} are not (yet) assigned to the Gateway's Service"),
    })
}

/// How long the inputs must be quiet after a change within a burst before it is taken in:
/// concurrent writers' objects arrive a few milliseconds apart.
const QUIET: Duration = Duration::from_millis(2);

/// A change this long after the last one taken in starts no burst: it is taken in at once.
/// (One `kubectl apply` sends its objects one request after another, each some
/// milliseconds long: a quiet period shorter than that would not gather them anyway.)
const IDLE: Duration = Duration::from_millis(50);

/// When the loop takes in a change of the inputs: a lone change (none taken in for
/// [`IDLE`]) at once, the changes of a burst together once the inputs are quiet
/// ([`settle`]).
#[derive(Default)]
struct Intake {
    last: Option<tokio::time::Instant>,
}

impl Intake {
    async fn take(&mut self, changed: &tokio::sync::Notify, longest: Duration) {
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < IDLE) {
            settle(changed, longest).await;
        }
        self.last = Some(tokio::time::Instant::now());
    }
}

/// Waits after a change of the inputs until no other change came for [`QUIET`], or
/// `longest` (`--debounce-ms`) passed since the first: a steady stream of changes is
/// taken in batches, a single change almost at once.
async fn settle(changed: &tokio::sync::Notify, longest: Duration) {
    let deadline = tokio::time::Instant::now() + longest;
    loop {
        let quiet_until = (tokio::time::Instant::now() + QUIET).min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(quiet_until) => return,
            _ = changed.notified() => {
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_single_change_is_taken_in_once_the_inputs_are_quiet() {
        let changed = tokio::sync::Notify::new();
        let started = tokio::time::Instant::now();
        // Far longer than the quiet time: a lone change must not wait for it.
        settle(&changed, Duration::from_secs(30)).await;
        assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_change_is_taken_in_at_once_and_a_burst_once_quiet() {
        let changed = tokio::sync::Notify::new();
        let mut intake = Intake::default();
        let started = tokio::time::Instant::now();
        intake.take(&changed, Duration::from_secs(1)).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "the first change waits for nothing");
        // The next change soon after: part of a burst, taken in once the inputs are quiet.
        tokio::time::advance(Duration::from_millis(5)).await;
        let second = tokio::time::Instant::now();
        intake.take(&changed, Duration::from_secs(1)).await;
        assert!(second.elapsed() >= QUIET, "took {:?}", second.elapsed());
        // After a quiet spell, a lone change again.
        tokio::time::advance(IDLE).await;
        let third = tokio::time::Instant::now();
        intake.take(&changed, Duration::from_secs(1)).await;
        assert_eq!(third.elapsed(), Duration::ZERO);
    }
}
