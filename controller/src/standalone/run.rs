//! The run loop: the push server, the directory watch and the reconcile pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use super::backends::Echoes;
use super::dataplanes::{DataPlanes, Launch};
use super::files::{Change, classify};
use super::manifests::{Manifests, Problem};
use super::report::Reporter;
use super::{Options, write_private};
use crate::push::auth::StaticTokens;
use crate::push::ca::CertificateAuthority;
use crate::push::{Authentication, PushServer, ServerTls};
use crate::reconcile::Reconciler;

pub(super) async fn run_in(
    options: &Options,
    state_dir: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let ca = CertificateAuthority::generate("sluice standalone push CA", 365)?;
    let server_certificate = ca.issue_server(&["127.0.0.1", "localhost"], 365)?;
    let ca_file = state_dir.join("ca.crt");
    write_private(&ca_file, ca.certificate_pem())?;

    let push = PushServer::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the push server")?;
    let push_address = listener.local_addr()?;
    let (stop_push, push_stopped) = tokio::sync::oneshot::channel::<()>();
    let tls = ServerTls {
        certificate_pem: server_certificate.certificate_pem,
        private_key_pem: server_certificate.private_key_pem,
    };
    // Each data plane gets its own token, which reads its Gateway only.
    let tokens = StaticTokens::new();
    let authentication = Authentication::Token(std::sync::Arc::new(tokens.clone()));
    let push_task = tokio::spawn({
        let push = push.clone();
        async move {
            if let Err(error) =
                push.serve(listener, Some(tls), authentication, async { drop(push_stopped.await) }).await
            {
                tracing::error!("{error:#}");
            }
        }
    });

    let (events, mut changes) = mpsc::unbounded_channel::<Change>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let change = classify(&event);
            if change == Change::Complete && tracing::enabled!(tracing::Level::DEBUG) {
                log_event_delay(&event);
            }
            if change != Change::None {
                let _ = events.send(change);
            }
        }
    })
    .context("watching the directory")?;
    notify::Watcher::watch(&mut watcher, &options.dir, notify::RecursiveMode::Recursive)
        .context("watching the directory")?;

    let launch = Launch {
        command: options.dataplane.clone(),
        bind: options.bind,
        state_dir: state_dir.to_path_buf(),
        tokens,
        ca_file,
        push_address,
    };
    let mut runner = Runner {
        dir: options.dir.clone(),
        push: push.clone(),
        manifests: Manifests::new(&options.dir),
        reconciler: Reconciler::new(push.clone()),
        problems: Arc::default(),
        data_planes: DataPlanes::new(launch),
        echoes: Echoes::default(),
        reporter: Reporter::new(options.quiet, options.status_file.clone()),
    };
    println!("sluice: serving the Gateways in {} (push server {push_address})", options.dir.display());
    // Subscribed before the first publish, so that no ACK goes unnoticed.
    let mut progress = push.watch_progress();
    runner.reconcile().await;

    let mut rescan = tokio::time::interval(Duration::from_secs(2));
    let mut supervise = tokio::time::interval(Duration::from_millis(500));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(change) = changes.recv() => {
                // A completed write (close after writing, a rename into place, a removal)
                // is applied at once; other changes once the directory is quiet for the
                // quiet period, and never more than 50 ms after they began.
                let started = Instant::now();
                let mut complete = change == Change::Complete;
                while started.elapsed() < Duration::from_millis(50) {
                    // Once complete, only the events already queued are taken: a zero
                    // timeout would still wait for the next timer tick (1 ms).
                    let next = if complete {
                        changes.try_recv().ok()
                    } else {
                        tokio::time::timeout(options.quiet_period, changes.recv()).await.ok().flatten()
                    };
                    match next {
                        Some(change) => complete |= change == Change::Complete,
                        None => break,
                    }
                }
                tracing::debug!(debounce_ms = started.elapsed().as_secs_f64() * 1e3, complete, "directory changed");
                runner.reconcile().await;
            }
            _ = rescan.tick() => runner.reconcile().await,
            _ = progress.changed() => runner.report(),
            _ = supervise.tick() => runner.supervise().await,
        }
    }
    drop(watcher);
    runner.data_planes.stop_all().await;
    let _ = stop_push.send(());
    let _ = push_task.await;
    Ok(())
}

/// The state of the loop: the provider (files), the shared reconcile pass, and what
/// standalone mode runs (data planes, echo backends) and reports.
struct Runner {
    dir: PathBuf,
    push: PushServer,
    manifests: Manifests,
    /// Translation and publishing, shared with Kubernetes mode.
    reconciler: Reconciler,
    problems: Arc<Vec<Problem>>,
    data_planes: DataPlanes,
    echoes: Echoes,
    reporter: Reporter,
}

impl Runner {
    /// Reads the directory and, if it changed (or the clock changed the last
    /// translation), translates, publishes and brings processes and echoes in line.
    async fn reconcile(&mut self) {
        let started = Instant::now();
        let changed = match self.manifests.refresh() {
            Ok(changed) => changed,
            Err(error) => {
                eprintln!("sluice: reading {}: {error}", self.dir.display());
                true
            }
        };
        let refreshed = started.elapsed();
        let manifests = &self.manifests;
        let problems = &mut self.problems;
        let mut merged = Duration::ZERO;
        let outcome = self.reconciler.refresh(changed, || {
            let merging = Instant::now();
            let (world, read) = manifests.world();
            merged = merging.elapsed();
            *problems = Arc::new(read);
            world
        });
        let Some(last) = self.reconciler.last().filter(|_| outcome != crate::reconcile::Refreshed::Nothing) else {
            return;
        };
        let published = started.elapsed();
        self.reporter.translated(&last.status);
        let summarized = started.elapsed();
        let mut wanted = BTreeMap::new();
        for (key, gateway) in &last.output.gateways {
            let mut ports: Vec<u32> = gateway.infra.ports.iter().filter_map(|p| u32::try_from(p.port).ok()).collect();
            ports.dedup();
            if !ports.is_empty() {
                wanted.insert(key.to_string(), ports);
            }
        }
        self.data_planes.ensure_all(&wanted).await;
        let ensured = started.elapsed();
        self.echoes.ensure(&last.world).await;
        let echoed = started.elapsed();
        self.report();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            refresh_ms = ms(refreshed),
            world_ms = ms(merged),
            reconciler_ms = ms(published - refreshed),
            summary_ms = ms(summarized - published),
            data_planes_ms = ms(ensured - summarized),
            echoes_ms = ms(echoed - ensured),
            report_ms = ms(started.elapsed() - echoed),
            total_ms = ms(started.elapsed()),
            "reconciled"
        );
    }

    /// Recomputes the overlay from the last translation and reports it (no translation).
    fn report(&mut self) {
        self.reporter.report(&self.reconciler, self.push.progress(), &self.data_planes, &self.problems);
    }

    async fn supervise(&mut self) {
        if self.data_planes.supervise().await {
            self.report();
        }
    }
}

/// How long after a file's last change (its ctime: a rename sets it) the event arrived.
fn log_event_delay(event: &notify::Event) {
    use std::os::unix::fs::MetadataExt;
    for path in &event.paths {
        let Ok(metadata) = std::fs::metadata(path) else { continue };
        let changed =
            std::time::UNIX_EPOCH + Duration::new(metadata.ctime().max(0) as u64, metadata.ctime_nsec().max(0) as u32);
        if let Ok(age) = std::time::SystemTime::now().duration_since(changed) {
            tracing::debug!(path = %path.display(), delay_ms = age.as_secs_f64() * 1e3, "file event");
        }
    }
}
