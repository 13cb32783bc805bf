//! The report printed after changes and the status file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_translate::ObjectKey;
use sluice_translate::status::{Condition, ConditionStatus};
use tokio::sync::watch;

use super::dataplanes::DataPlanes;
use super::manifests::Problem;
use crate::push::GatewayProgress;
use crate::reconcile::{self, Hold, Reconciler};

/// Standalone mode's status sink: the printed report and the status file's writer.
pub(super) struct Reporter {
    /// Print only problems.
    quiet: bool,
    /// The routes' summary text of the last translation.
    routes_text: String,
    last_report: String,
    /// The latest status, for the status file writer.
    document: watch::Sender<Option<Arc<StatusDocument>>>,
}

impl Reporter {
    /// A reporter; with `status_file`, a task writes the status there after changes.
    pub(super) fn new(quiet: bool, status_file: Option<PathBuf>) -> Reporter {
        let document = watch::Sender::new(None);
        if let Some(file) = status_file {
            tokio::spawn(write_status_file(file, document.subscribe()));
        }
        Reporter { quiet, routes_text: String::new(), last_report: String::new(), document }
    }

    /// Takes in a new translation's routes (summarized once per translation).
    pub(super) fn translated(&mut self, status: &sluice_translate::Status) {
        self.routes_text = render_routes(status, self.quiet);
    }

    /// Prints what changed in the status, and hands the status to the file writer.
    pub(super) fn report(
        &mut self,
        reconciler: &Reconciler,
        progress: BTreeMap<String, GatewayProgress>,
        data_planes: &DataPlanes,
        problems: &Arc<Vec<Problem>>,
    ) {
        let Some(last) = reconciler.last() else { return };
        // Standalone mode's precondition of Programmed: the data-plane process runs.
        let holds = reconciler.holds(&progress, |key| data_planes.exited(&key.to_string()).map(Hold::pending));
        let document = StatusDocument {
            status: last.status.clone(),
            programmed_holds: holds,
            data_planes: progress,
            problems: problems.clone(),
        };
        if self.document.borrow().as_deref().is_some_and(|last| last.same_as(&document)) {
            return;
        }
        let mut text = render_gateways(&document, data_planes, self.quiet);
        text.push_str(&self.routes_text);
        for (gateway, progress) in &document.data_planes {
            for (piece, problem) in progress.dropped() {
                text.push_str(&format!("gateway {gateway}: the data plane does not serve {piece}: {problem}\n"));
            }
        }
        for problem in document.problems.iter() {
            text.push_str(&format!("skipped in {}: {}\n", problem.file.display(), problem.message));
        }
        if text != self.last_report {
            print!("{text}");
            self.last_report = text;
        }
        self.document.send_replace(Some(Arc::new(document)));
    }
}

/// Writes the status file after changes, off the path that pushes config (at thousands
/// of routes the YAML takes tens of milliseconds).
async fn write_status_file(file: PathBuf, mut status: watch::Receiver<Option<Arc<StatusDocument>>>) {
    while status.changed().await.is_ok() {
        // Trailing debounce: write once changes pause for a second (at most 5 s late),
        // so that serializing a large status never competes with applying changes.
        let first = Instant::now();
        while first.elapsed() < Duration::from_secs(5) {
            match tokio::time::timeout(Duration::from_secs(1), status.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let Some(document) = status.borrow_and_update().clone() else { continue };
        let file = file.clone();
        let written = tokio::task::spawn_blocking(move || {
            let yaml = document.to_yaml()?;
            write_atomically(&file, &yaml).map_err(|e| format!("writing {}: {e}", file.display()))
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("sluice: status file: {error}"),
            Err(error) => eprintln!("sluice: status file: {error}"),
        }
    }
}

/// Everything the status file holds: the translator's status, with `Programmed` held
/// at `False`/`Pending` for the Gateways whose data planes have not applied it.
#[derive(Debug)]
struct StatusDocument {
    status: Arc<sluice_translate::Status>,
    /// Per Gateway, why it is not programmed yet.
    programmed_holds: BTreeMap<ObjectKey, Hold>,
    data_planes: BTreeMap<String, GatewayProgress>,
    problems: Arc<Vec<Problem>>,
}

impl StatusDocument {
    /// Cheap equality: the large parts are compared by identity.
    fn same_as(&self, other: &StatusDocument) -> bool {
        Arc::ptr_eq(&self.status, &other.status)
            && Arc::ptr_eq(&self.problems, &other.problems)
            && self.programmed_holds == other.programmed_holds
            && self.data_planes == other.data_planes
    }

    /// The status with the holds and the dropped pieces applied.
    fn status(&self) -> sluice_translate::Status {
        reconcile::overlay(&self.status, &self.programmed_holds, &self.data_planes)
    }

    fn to_yaml(&self) -> Result<String, String> {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct File<'a> {
            status: sluice_translate::Status,
            data_planes: &'a BTreeMap<String, GatewayProgress>,
            problems: Vec<String>,
        }
        let problems = self.problems.iter().map(|p| format!("{}: {}", p.file.display(), p.message)).collect();
        serde_saphyr::to_string(&File { status: self.status(), data_planes: &self.data_planes, problems })
            .map_err(|e| e.to_string())
    }
}

/// Conflicted and OverlappingTLSConfig are fine when False; the other conditions when True.
fn good_when_false(condition: &Condition) -> bool {
    matches!(condition.type_.as_str(), "Conflicted" | "OverlappingTLSConfig")
}

fn is_good(condition: &Condition) -> bool {
    (condition.status == ConditionStatus::True) != good_when_false(condition)
}

/// `Accepted, ResolvedRefs, Programmed=False (Pending: ...)`, and whether all is well.
fn describe(conditions: &[Condition]) -> (bool, String) {
    let parts: Vec<String> = conditions
        .iter()
        .map(|c| match (is_good(c), good_when_false(c)) {
            (true, false) => c.type_.clone(),
            (true, true) => format!("{}=False", c.type_),
            (false, _) => format!("{}={} ({}: {})", c.type_, c.status.as_str(), c.reason, c.message),
        })
        .collect();
    (conditions.iter().all(is_good), parts.join(", "))
}

/// The human summary of GatewayClasses, Gateways and listeners (few, and changing with
/// the data planes' progress).
fn render_gateways(document: &StatusDocument, data_planes: &DataPlanes, quiet: bool) -> String {
    let mut out = String::new();
    for (name, class) in &document.status.gateway_classes {
        let (healthy, text) = describe(&class.conditions);
        if !healthy || !quiet {
            out.push_str(&format!("GatewayClass {name}: {text}\n"));
        }
    }
    // Gateways and ListenerSets with the holds (routes are summarized apart).
    let mut held = sluice_translate::Status {
        gateways: document.status.gateways.clone(),
        listener_sets: document.status.listener_sets.clone(),
        ..Default::default()
    };
    reconcile::apply_holds(&mut held, &document.programmed_holds);
    for (key, gateway) in &held.gateways {
        let name = key.to_string();
        let (healthy, text) = describe(&gateway.conditions);
        let progress = document.data_planes.get(&name);
        let version = progress.and_then(|p| p.version).map(|v| format!(" [version {v}]")).unwrap_or_default();
        let admin = data_planes.admin(&name).map(|a| format!(" admin http://{a}")).unwrap_or_default();
        if !healthy || !quiet {
            out.push_str(&format!("Gateway {name}: {text}{version}{admin}\n"));
        }
        for listener in &gateway.listeners {
            let (healthy, text) = describe(&listener.conditions);
            if !healthy || !quiet {
                out.push_str(&format!(
                    "  listener {}: {} route(s) attached; {text}\n",
                    listener.name, listener.attached_routes
                ));
            }
        }
    }
    for (key, set) in &held.listener_sets {
        let (healthy, text) = describe(&set.conditions);
        if !healthy || !quiet {
            out.push_str(&format!("ListenerSet {key} (Gateway {}): {text}\n", set.gateway));
        }
        for listener in &set.listeners {
            let (healthy, text) = describe(&listener.conditions);
            if !healthy || !quiet {
                out.push_str(&format!(
                    "  listener {}: {} route(s) attached; {text}\n",
                    listener.name, listener.attached_routes
                ));
            }
        }
    }
    out
}

/// The routes' part of the summary: every route parent that is not fully accepted, and a
/// count of those that are. Computed once per translation.
fn render_routes(status: &sluice_translate::Status, quiet: bool) -> String {
    let mut out = String::new();
    let mut accepted = 0;
    for (kind, routes) in [
        ("HTTPRoute", &status.http_routes),
        ("GRPCRoute", &status.grpc_routes),
        ("TCPRoute", &status.tcp_routes),
        ("UDPRoute", &status.udp_routes),
        ("TLSRoute", &status.tls_routes),
    ] {
        for (key, route) in routes {
            for parent in &route.parents {
                if parent.conditions.iter().all(is_good) {
                    accepted += 1;
                } else {
                    let (_, text) = describe(&parent.conditions);
                    let namespace = parent.parent_ref.namespace.as_deref().unwrap_or(&key.namespace);
                    out.push_str(&format!("{kind} {key} -> {namespace}/{}: {text}\n", parent.parent_ref.name));
                }
            }
        }
    }
    for (key, policy) in &status.backend_tls_policies {
        for ancestor in &policy.ancestors {
            if !ancestor.conditions.iter().all(is_good) {
                let (_, text) = describe(&ancestor.conditions);
                out.push_str(&format!("BackendTLSPolicy {key} -> {}: {text}\n", ancestor.gateway));
            }
        }
    }
    if !quiet {
        out.push_str(&format!("{accepted} route parent(s) accepted with resolved references\n"));
    }
    out
}

fn write_atomically(path: &Path, content: &str) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, content)?;
    std::fs::rename(&temporary, path)
}
