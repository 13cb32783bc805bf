//! Kubernetes mode: the controller as it runs in a cluster.
//!
//! ```text
//!  reflectors (watch.rs) ──any change──► debounce ──► World ──translate──► Output
//!                                                              │
//!     every replica:  publish snapshots ─► push server (TLS, tokens.rs) ─► data-plane pods
//!     leader only:    deployer (apply.rs): SA, Deployment, Service, PDB, HPA (SSA)
//!                     status writer (status.rs): GatewayClass, Gateway, routes (SSA)
//! ```
//!
//! A Gateway is `Programmed` once its Service has an address and a data-plane pod has
//! applied its current snapshot. Push progress and leadership changes also trigger a pass;
//! failed writes are retried after a second.

pub mod apply;
pub mod leader;
pub mod status;
pub mod tokens;
pub mod watch;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_translate::status::reason;
use tokio::sync::Notify;

use crate::deploy::DeployOptions;
use crate::push::{Authentication, PushServer, ServerTls};

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
    let changed = Arc::new(Notify::new());
    let stores = watch::Stores::start(&client, changed.clone()).await?;
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

    let mut deployer = apply::Deployer::new(client.clone(), options.deploy.clone());
    let mut progress = push.watch_progress();
    let mut published: BTreeSet<String> = BTreeSet::new();
    let mut retry: Option<tokio::time::Instant> = None;
    // When the clock alone changes the translation (a certificate expires).
    let mut clock_change: Option<tokio::time::Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let retry_at = [retry, clock_change]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = changed.notified() => tokio::time::sleep(options.debounce).await,
            _ = progress.changed() => {}
            _ = leader_rx.changed() => {}
            _ = tokio::time::sleep_until(retry_at) => {}
            _ = &mut shutdown => break,
        }
        retry = None;
        let mut world = stores.world();
        world.now = Some(crate::unix_now());
        let output = sluice_translate::translate(&world);
        clock_change = output.next_change_at.map(crate::instant_of_unix);
        let mut current = BTreeSet::new();
        for (key, gateway) in &output.gateways {
            let name = key.to_string();
            if let Some(identity) = apply::identity(&world, key).filter(|identity| !identity.uid.is_empty()) {
                push.bind_uid(&name, &identity.uid);
            }
            push.publish(&name, gateway.snapshot.clone());
            current.insert(name);
        }
        for gone in published.difference(&current) {
            push.remove(gone);
        }
        published = current;
        let leading = *leader_rx.borrow_and_update();
        // Only the leader serves data planes: its push progress decides Programmed.
        push.set_standby(!leading);
        if !leading {
            continue;
        }
        let failures = deployer.apply(&output, &world).await;
        let addresses = apply::addresses(&output, &world, &stores.nodes.state());
        let progress_now = push.progress();
        let mut status = output.status.clone();
        for (key, gateway) in &mut status.gateways {
            if !output.gateways.contains_key(key) {
                continue;
            }
            let requested = output.gateways.get(key).map(|g| g.infra.requested_addresses.clone()).unwrap_or_default();
            let assigned: Vec<&str> = addresses.get(key).into_iter().flatten().map(|a| a.value.as_str()).collect();
            let missing: Vec<&String> = requested.iter().filter(|r| !assigned.contains(&r.as_str())).collect();
            if !addresses.contains_key(key) {
                gateway.hold_programmed("AddressNotAssigned", "waiting for the Gateway's Service to get an address");
            } else if !missing.is_empty() {
                let message = format!("spec.addresses {missing:?} are not (yet) assigned to the Gateway's Service");
                gateway.hold_programmed("AddressNotAssigned", &message);
            } else if let Err(message) = progress_now
                .get(&key.to_string())
                .map_or_else(|| Err("no configuration published yet".to_string()), |p| p.programmed())
            {
                gateway.hold_programmed(reason::PENDING, &message);
            }
        }
        status.hold_listener_sets_with_gateways();
        for key in output.gateways.keys() {
            if let Some(progress) = progress_now.get(&key.to_string()) {
                status.apply_dropped(key, &progress.dropped());
            }
        }
        let written = status::write(&client, &stores, &status, &addresses).await;
        if written.writes > 0 {
            tracing::debug!("wrote {} statuses", written.writes);
        }
        if failures + written.failed > 0 {
            retry = Some(tokio::time::Instant::now() + Duration::from_secs(1));
        }
    }
    tracing::info!("shutting down");
    stop_tx.send_replace(true);
    if let Some(election) = election {
        let _ = tokio::time::timeout(Duration::from_secs(5), election).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), push_task).await;
    Ok(())
}
