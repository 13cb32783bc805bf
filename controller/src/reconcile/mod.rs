//! The reconcile pass both modes drive: translate → publish → status overlay.
//!
//! ```text
//!  provider (reflector stores | YAML files)
//!      │ inputs changed, or the output's clock deadline passed
//!      ▼
//!  Reconciler::refresh ──translate──► Output ──publish──► push server ──► data planes
//!      │ (kept: World, Output, Status)                          │ ACK/NACK, dropped pieces
//!      ▼                                                        ▼
//!  Reconciler::holds + overlay ◄──────────── progress (no translation) ──┘
//!      │ Programmed held (Pending, AddressNotAssigned), ListenerSets, dropped pieces
//!      ▼
//!  sink (leader-only SSA status writer | standalone report and status file)
//! ```
//!
//! Data-plane progress and leadership changes only recompute the overlay from the last
//! translation: translating again is for changed inputs (or a clock deadline).
//! Whether a Gateway is `Programmed` is decided here, in [`Reconciler::holds`] and
//! [`overlay`]; a mode adds only its own precondition (an address, a running process).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use sluice_snapshot::Snapshot;
use sluice_translate::status::reason;
use sluice_translate::{ObjectKey, Output, Status, World};

use crate::push::{GatewayProgress, PushServer};

/// Why a Gateway's `Programmed` is held at False although its configuration is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub reason: &'static str,
    pub message: String,
}

impl Hold {
    /// Held until the data planes applied the current version.
    pub fn pending(message: impl Into<String>) -> Hold {
        Hold { reason: reason::PENDING, message: message.into() }
    }
}

/// The last translation.
#[derive(Debug)]
pub struct Translated {
    /// The inputs it was made from.
    pub world: World,
    /// Its output; the snapshots were moved to the push server and the status to
    /// [`Translated::status`].
    pub output: Output,
    /// The translator's status, before any overlay (shared with sinks that compare it
    /// by identity).
    pub status: Arc<Status>,
}

/// What [`Reconciler::refresh`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// Nothing: the inputs did not change.
    Nothing,
    /// Only EndpointSlices changed: the endpoints of the clusters that use them were
    /// recomputed and republished; status, infra and every route are as they were.
    Endpoints,
    /// Only routes changed (a few): the last output was patched, the Gateways they
    /// concern republished and the status patched; infra is as it was.
    Routes,
    /// The World was translated again and every Gateway's snapshot published.
    Translated,
}

/// Owns translation and publishing for one controller; cheap to keep.
pub struct Reconciler {
    push: PushServer,
    last: Option<Translated>,
    /// The Gateways published by the last translation.
    published: BTreeSet<String>,
    /// Per Gateway, the generation its last translation published: later versions only
    /// patched routes or endpoints, and a data plane that applied this one keeps the
    /// Gateway `Programmed` while they travel (no flip to `Pending` per route change).
    translated_at: BTreeMap<String, u64>,
    translations: u64,
    endpoint_refreshes: u64,
    route_patches: u64,
}

impl Reconciler {
    pub fn new(push: PushServer) -> Reconciler {
        Reconciler {
            push,
            last: None,
            published: BTreeSet::new(),
            translated_at: BTreeMap::new(),
            translations: 0,
            endpoint_refreshes: 0,
            route_patches: 0,
        }
    }

    /// The last translation, if any.
    pub fn last(&self) -> Option<&Translated> {
        self.last.as_ref()
    }

    /// How many times the World was translated.
    pub fn translations(&self) -> u64 {
        self.translations
    }

    /// How many changes only refreshed endpoints (no translation).
    pub fn endpoint_refreshes(&self) -> u64 {
        self.endpoint_refreshes
    }

    /// How many route changes patched the last output (no translation).
    pub fn route_patches(&self) -> u64 {
        self.route_patches
    }

    /// When the clock alone changes the last translation (Unix seconds).
    pub fn next_change_at(&self) -> Option<i64> {
        self.last.as_ref().and_then(|t| t.output.next_change_at)
    }

    /// Whether the World must be translated: its inputs changed, nothing was translated
    /// yet, or the last translation's clock deadline passed.
    pub fn needs_translation(&self, inputs_changed: bool, now: i64) -> bool {
        inputs_changed || self.last.is_none() || self.next_change_at().is_some_and(|at| now >= at)
    }

    /// Translates the World `world()` returns if [`Reconciler::needs_translation`], and
    /// publishes every Gateway's snapshot; when only EndpointSlices changed since the
    /// last translation, republishes only the endpoints that changed; when only a few
    /// routes changed, patches the last output with them (`sluice_translate::RoutePatch`).
    pub fn refresh(&mut self, inputs_changed: bool, world: impl FnOnce() -> World) -> Refreshed {
        let now = crate::unix_now();
        if !self.needs_translation(inputs_changed, now) {
            return Refreshed::Nothing;
        }
        let started = Instant::now();
        let mut world = world();
        world.now = Some(now);
        let endpoints_only = self
            .last
            .as_ref()
            .and_then(|last| sluice_translate::endpoints_only(&last.world, &world, last.output.next_change_at));
        match endpoints_only {
            Some(services) => {
                self.refresh_endpoints(world, &services, started);
                Refreshed::Endpoints
            }
            None => {
                let patch = self
                    .last
                    .as_ref()
                    .and_then(|last| sluice_translate::routes_only(&last.world, &world, &last.output));
                match patch {
                    Some(patch) => {
                        self.patch_routes(world, &patch, started);
                        Refreshed::Routes
                    }
                    None => {
                        self.translate(world);
                        Refreshed::Translated
                    }
                }
            }
        }
    }

    /// Patches the last output with a route change and republishes the Gateways it
    /// concerns; `world` differs from the last one only in those routes. (`started`: when
    /// the refresh began, before the World was taken: the logged `published_ms` counts
    /// from there.)
    fn patch_routes(&mut self, world: World, patch: &sluice_translate::RoutePatch, started: Instant) {
        let found_ms = started.elapsed().as_secs_f64() * 1e3;
        self.route_patches += 1;
        let Some(last) = self.last.as_mut() else { return };
        for key in patch.gateways() {
            let name = key.to_string();
            let output = &mut last.output;
            let published = self.push.publish_edited(&name, |snapshot| patch.patch_snapshot(output, &key, snapshot));
            if let Some(version) = published {
                tracing::debug!(
                    gateway = name,
                    generation = version.generation,
                    routes = patch.len(),
                    found_ms,
                    published_ms = started.elapsed().as_secs_f64() * 1e3,
                    "published routes"
                );
            }
        }
        // After the publish: a data plane need not wait for the status.
        patch.patch_status(Arc::make_mut(&mut last.status));
        last.world = world;
    }

    /// Republishes the snapshots whose clusters use `services`, their endpoints
    /// recomputed from `world` (which differs from the last one only in EndpointSlices).
    fn refresh_endpoints(&mut self, world: World, services: &BTreeSet<ObjectKey>, started: Instant) {
        let found_ms = started.elapsed().as_secs_f64() * 1e3;
        self.endpoint_refreshes += 1;
        for name in &self.published {
            // A look at the clusters' names first: an edit needs a copy when none is kept.
            let concerned = self.push.content(name).is_some_and(|c| sluice_translate::endpoints_concern(services, &c));
            if !concerned {
                continue;
            }
            let refresh = |snapshot: &mut Snapshot| sluice_translate::refresh_endpoints(&world, services, snapshot);
            if let Some(version) = self.push.publish_edited(name, refresh) {
                tracing::debug!(
                    gateway = name,
                    generation = version.generation,
                    services = services.len(),
                    found_ms,
                    published_ms = started.elapsed().as_secs_f64() * 1e3,
                    "published endpoints"
                );
            }
        }
        if let Some(last) = self.last.as_mut() {
            last.world = world;
        }
    }

    /// Translates `world` and publishes the result; forgets Gateways no longer there.
    fn translate(&mut self, world: World) {
        let started = Instant::now();
        let mut output = sluice_translate::translate(&world);
        self.translations += 1;
        let translated = started.elapsed();
        let status = Arc::new(std::mem::take(&mut output.status));
        let mut current = BTreeSet::new();
        for (key, gateway) in &mut output.gateways {
            let name = key.to_string();
            if let Some(uid) = gateway_uid(&world, key) {
                self.push.bind_uid(&name, uid);
            }
            // The snapshot moves to the push server; sinks need only the status.
            if let Some(version) = self.push.publish(&name, std::mem::take(&mut gateway.snapshot)) {
                self.translated_at.insert(name.clone(), version.generation);
                tracing::debug!(
                    gateway = name,
                    generation = version.generation,
                    translate_ms = translated.as_secs_f64() * 1e3,
                    published_ms = started.elapsed().as_secs_f64() * 1e3,
                    "published"
                );
            }
            current.insert(name);
        }
        for gone in self.published.difference(&current) {
            self.push.remove(gone);
            self.translated_at.remove(gone);
        }
        self.published = current;
        self.last = Some(Translated { world, output, status });
    }

    /// Per Gateway of the last translation, why its `Programmed` is held: the mode's own
    /// `precondition` first (no address yet, a data-plane process exited), then the
    /// data planes' progress: on the version the last translation published (route and
    /// endpoint patches published since do not hold it while they travel).
    pub fn holds(
        &self,
        progress: &BTreeMap<String, GatewayProgress>,
        precondition: impl Fn(&ObjectKey) -> Option<Hold>,
    ) -> BTreeMap<ObjectKey, Hold> {
        let mut holds = BTreeMap::new();
        for key in self.last.iter().flat_map(|t| t.output.gateways.keys()) {
            let name = key.to_string();
            let hold = precondition(key).or_else(|| match progress.get(&name) {
                Some(progress) => {
                    progress.programmed_from(self.translated_at.get(&name).copied()).err().map(Hold::pending)
                }
                None => Some(Hold::pending("no configuration has been published yet")),
            });
            if let Some(hold) = hold {
                holds.insert(key.clone(), hold);
            }
        }
        holds
    }
}

/// The UID of the Gateway `key`, if the World has one.
fn gateway_uid<'w>(world: &'w World, key: &ObjectKey) -> Option<&'w str> {
    world
        .gateways
        .iter()
        .find(|g| {
            g.metadata.namespace.as_deref() == Some(&key.namespace) && g.metadata.name.as_deref() == Some(&key.name)
        })
        .and_then(|g| g.metadata.uid.as_deref())
        .filter(|uid| !uid.is_empty())
}

/// Holds the Gateways' `Programmed` and, with them, their ListenerSets'.
pub fn apply_holds(status: &mut Status, holds: &BTreeMap<ObjectKey, Hold>) {
    for (key, gateway) in &mut status.gateways {
        if let Some(hold) = holds.get(key) {
            gateway.hold_programmed(hold.reason, &hold.message);
        }
    }
    status.hold_listener_sets_with_gateways();
}

/// The status to write: the translator's, with the holds and the pieces the data planes
/// dropped folded in.
pub fn overlay(
    status: &Status,
    holds: &BTreeMap<ObjectKey, Hold>,
    progress: &BTreeMap<String, GatewayProgress>,
) -> Status {
    let mut status = status.clone();
    apply_holds(&mut status, holds);
    let keys: Vec<ObjectKey> = status.gateways.keys().cloned().collect();
    for key in keys {
        if let Some(progress) = progress.get(&key.to_string()) {
            status.apply_dropped(&key, &progress.dropped());
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::PodProgress;
    use sluice_translate::ConditionStatus;

    const MANIFESTS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: sluice}
spec: {controllerName: sluice.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: infra}
spec:
  gatewayClassName: sluice
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: app, namespace: infra}
spec:
  parentRefs: [{name: web}]
  rules: [{backendRefs: [{name: app, port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: infra}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

    fn world() -> World {
        let (world, skipped) = World::from_manifests(MANIFESTS);
        assert!(skipped.is_empty(), "{skipped:?}");
        world
    }

    fn programmed(status: &Status) -> (ConditionStatus, String) {
        let gateway = &status.gateways[&ObjectKey::new("infra", "web")];
        let condition = gateway.conditions.iter().find(|c| c.type_ == reason::PROGRAMMED).unwrap();
        (condition.status, condition.reason.clone())
    }

    #[test]
    fn data_plane_progress_recomputes_the_overlay_without_translating() {
        let push = PushServer::new();
        let mut reconciler = Reconciler::new(push.clone());
        assert_eq!(reconciler.refresh(true, world), Refreshed::Translated);
        assert_eq!(reconciler.translations(), 1);

        let status = reconciler.last().unwrap().status.clone();
        let pending = overlay(&status, &reconciler.holds(&push.progress(), |_| None), &push.progress());
        assert_eq!(programmed(&pending), (ConditionStatus::False, reason::PENDING.to_string()));

        // A data plane applies the current version: a progress-only event.
        let mut progress = push.progress();
        let gateway = progress.get_mut("infra/web").unwrap();
        let version = gateway.version;
        gateway.pods.insert(
            "pod".into(),
            PodProgress { applied: version, rejected: None, connected: true, dropped: Vec::new() },
        );
        let world_was_read = std::cell::Cell::new(false);
        let translated = reconciler.refresh(false, || {
            world_was_read.set(true);
            world()
        });
        assert!(translated == Refreshed::Nothing && !world_was_read.get());
        let programmed_now = overlay(&status, &reconciler.holds(&progress, |_| None), &progress);
        assert_eq!(programmed(&programmed_now), (ConditionStatus::True, reason::PROGRAMMED.to_string()));
        assert_eq!(reconciler.translations(), 1, "progress never translates");

        // A mode's own precondition comes first.
        let held = reconciler.holds(&progress, |_| Some(Hold { reason: "AddressNotAssigned", message: "no".into() }));
        assert_eq!(programmed(&overlay(&status, &held, &progress)).1, "AddressNotAssigned");

        // Changed inputs translate again.
        assert_eq!(reconciler.refresh(true, world), Refreshed::Translated);
        assert_eq!(reconciler.translations(), 2);
    }

    #[test]
    fn a_passed_clock_deadline_translates_again() {
        let mut reconciler = Reconciler::new(PushServer::new());
        assert!(reconciler.needs_translation(false, 0), "nothing translated yet");
        reconciler.refresh(false, world);
        assert!(!reconciler.needs_translation(false, i64::MAX), "no deadline without certificates");
        if let Some(last) = reconciler.last.as_mut() {
            last.output.next_change_at = Some(100);
        }
        assert!(!reconciler.needs_translation(false, 99));
        assert!(reconciler.needs_translation(false, 100));
    }

    #[test]
    fn gateways_gone_from_the_output_are_removed_from_the_push_server() {
        let push = PushServer::new();
        let mut reconciler = Reconciler::new(push.clone());
        reconciler.refresh(true, world);
        assert!(push.progress().contains_key("infra/web"));
        reconciler.refresh(true, World::default);
        assert!(!push.progress().contains_key("infra/web"));
        assert!(reconciler.holds(&push.progress(), |_| None).is_empty());
    }

    /// An EndpointSlice of the app Service with one ready endpoint at `address`.
    fn slice(address: &str) -> Arc<k8s_openapi::api::discovery::v1::EndpointSlice> {
        let text = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: infra, labels: {{kubernetes.io/service-name: app}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [\"{address}\"], conditions: {{ready: true}}}}]\n"
        );
        World::from_manifests(&text).0.endpoint_slices.remove(0)
    }

    #[test]
    fn an_endpoint_slice_change_republishes_endpoints_without_translating() {
        let push = PushServer::new();
        let mut reconciler = Reconciler::new(push.clone());
        let first = world();
        assert_eq!(reconciler.refresh(true, || first.clone()), Refreshed::Translated);
        let status = reconciler.last().unwrap().status.clone();
        let endpoints = || {
            let content = push.content("infra/web").unwrap();
            let cluster = content.clusters.iter().find(|c| c.name == "service/infra/app/port/80").unwrap();
            cluster.endpoints.iter().map(|e| e.address.clone()).collect::<Vec<_>>()
        };
        assert!(endpoints().is_empty());
        let version = push.progress()["infra/web"].version;

        let mut rolled = first.clone();
        rolled.endpoint_slices.push(slice("10.0.0.7"));
        assert_eq!(reconciler.refresh(true, || rolled.clone()), Refreshed::Endpoints);
        assert_eq!(endpoints(), ["10.0.0.7"]);
        assert!(push.progress()["infra/web"].version > version, "a new version is published");
        assert_eq!(reconciler.translations(), 1, "no translation");
        assert_eq!(reconciler.endpoint_refreshes(), 1);
        assert!(Arc::ptr_eq(&status, &reconciler.last().unwrap().status), "status untouched");

        // The next change compares with the World of the refresh, not the translated one.
        let mut rolled_again = first.clone();
        rolled_again.endpoint_slices.push(slice("10.0.0.8"));
        assert_eq!(reconciler.refresh(true, || rolled_again.clone()), Refreshed::Endpoints);
        assert_eq!(endpoints(), ["10.0.0.8"]);

        // Anything else translates.
        let mut other = rolled_again.clone();
        other.services = world().services;
        assert_eq!(reconciler.refresh(true, || other), Refreshed::Translated);
        assert_eq!(reconciler.translations(), 2);
        assert_eq!(endpoints(), ["10.0.0.8"], "the full translation agrees");
    }

    /// An HTTPRoute `name` in `infra` to the app Service, for path `/name`.
    fn route(name: &str) -> Arc<sluice_gateway_api::httproutes::HttpRoute> {
        let text = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: infra}}\nspec:\n  parentRefs: [{{name: web}}]\n  rules: [{{matches: [{{path: {{type: PathPrefix, value: /{name}}}}}], backendRefs: [{{name: app, port: 80}}]}}]\n"
        );
        World::from_manifests(&text).0.http_routes.remove(0)
    }

    #[test]
    fn a_route_change_patches_the_output_without_translating() {
        let push = PushServer::new();
        let mut reconciler = Reconciler::new(push.clone());
        let first = world();
        assert_eq!(reconciler.refresh(true, || first.clone()), Refreshed::Translated);
        let routes = || {
            let content = push.content("infra/web").unwrap();
            content.listeners.iter().flat_map(|l| l.http_routes.iter().map(|r| r.name.clone())).collect::<Vec<_>>()
        };
        let version = push.progress()["infra/web"].version;

        let mut added = first.clone();
        added.http_routes.push(route("extra"));
        assert_eq!(reconciler.refresh(true, || added.clone()), Refreshed::Routes);
        assert!(routes().iter().any(|name| name.starts_with("httproute/infra/extra/")), "{:?}", routes());
        assert!(push.progress()["infra/web"].version > version, "a new version is published");
        assert_eq!((reconciler.translations(), reconciler.route_patches()), (1, 1));
        let status = reconciler.last().unwrap().status.clone();
        assert!(status.http_routes.contains_key(&ObjectKey::new("infra", "extra")));
        let full = sluice_translate::translate(&added);
        assert_eq!(*status, full.status, "the patched status is the full translation's");
        assert_eq!(*push.content("infra/web").unwrap(), {
            let mut snapshot = full.gateways[&ObjectKey::new("infra", "web")].snapshot.clone();
            snapshot.version = push.content("infra/web").unwrap().version.clone();
            snapshot
        });

        // A data plane that applied the translated version keeps the Gateway programmed
        // while the patch travels; one that applied nothing yet does not.
        let mut progress = push.progress();
        let gateway = progress.get_mut("infra/web").unwrap();
        let pod = |applied| PodProgress { applied, rejected: None, connected: true, dropped: Vec::new() };
        gateway.pods.insert("pod".into(), pod(version));
        assert!(reconciler.holds(&progress, |_| None).is_empty());
        progress.get_mut("infra/web").unwrap().pods.insert("new".into(), pod(None));
        assert_eq!(reconciler.holds(&progress, |_| None)[&ObjectKey::new("infra", "web")].reason, reason::PENDING);

        // And back: the route's entries and status are gone.
        assert_eq!(reconciler.refresh(true, || first.clone()), Refreshed::Routes);
        assert!(!routes().iter().any(|name| name.starts_with("httproute/infra/extra/")));
        assert!(!reconciler.last().unwrap().status.http_routes.contains_key(&ObjectKey::new("infra", "extra")));
        assert_eq!(reconciler.translations(), 1);
    }
}
