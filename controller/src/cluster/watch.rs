//! The controller's inputs: one kube-runtime reflector (a shared, always current store)
//! per kind the translator reads. A change to any of them wakes the reconcile loop, which
//! debounces and recomputes from the stores; a restart lists everything again.
//!
//! Of the kinds whose status Sluice writes (GatewayClass, Gateway, ListenerSet, the
//! routes, BackendTLSPolicy), an event that changes only the status or the metadata
//! every write touches (`resourceVersion`, `managedFields`) does not change what the
//! translator reads: it wakes the loop through [`Signals::observed`], which makes the
//! status writer compare again without translating (mostly our own writes coming back).
//! Every other change, and every event of the other kinds, goes to [`Signals::changed`].

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_crds::ProxyConfig;
use sluice_gateway_api::backendtlspolicies::BackendTlsPolicy;
use sluice_gateway_api::gatewayclasses::GatewayClass;
use sluice_gateway_api::gateways::Gateway;
use sluice_gateway_api::grpcroutes::GrpcRoute;
use sluice_gateway_api::httproutes::HttpRoute;
use sluice_gateway_api::listenersets::ListenerSet;
use sluice_gateway_api::referencegrants::ReferenceGrant;
use sluice_gateway_api::tcproutes::TcpRoute;
use sluice_gateway_api::tlsroutes::TlsRoute;
use sluice_gateway_api::udproutes::UdpRoute;
use sluice_translate::{ObjectKey, World};
use tokio::sync::Notify;

use super::status::{Journal, Kind, ObjectId};

/// How watch events wake the reconcile loop.
#[derive(Clone, Default)]
pub struct Signals {
    /// The inputs of the translation changed.
    pub changed: Arc<Notify>,
    /// Only the status (or `resourceVersion`/`managedFields`) of an object whose status
    /// Sluice writes changed: the writer compares again, nothing is translated.
    pub observed: Arc<Notify>,
}

/// The stores of every input.
#[derive(Clone)]
pub struct Stores {
    pub gateway_classes: Store<GatewayClass>,
    pub gateways: Store<Gateway>,
    pub listener_sets: Option<Store<ListenerSet>>,
    pub http_routes: Store<HttpRoute>,
    pub grpc_routes: Option<Store<GrpcRoute>>,
    pub tcp_routes: Option<Store<TcpRoute>>,
    pub udp_routes: Option<Store<UdpRoute>>,
    pub tls_routes: Option<Store<TlsRoute>>,
    pub reference_grants: Store<ReferenceGrant>,
    pub backend_tls_policies: Option<Store<BackendTlsPolicy>>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub secrets: Store<Secret>,
    /// Only their `ca.crt` (CA bundles of BackendTLSPolicies and of client certificate
    /// validation) is kept.
    pub config_maps: Store<ConfigMap>,
    pub namespaces: Store<Namespace>,
    pub proxy_configs: Option<Store<ProxyConfig>>,
    /// Node addresses, for the addresses of Gateways behind NodePort Services.
    pub nodes: Store<Node>,
    /// The `bundle-version` of the installed Gateway API CRDs (read at start).
    pub crd_bundle_version: Option<String>,
    /// What the translator reads of the kinds whose status Sluice writes.
    pub views: Views,
    /// The objects of those kinds whose watch events came since the status writer last
    /// compared.
    pub journal: Journal,
}

/// The [`View`] of each kind whose status Sluice writes (None: its CRD is not installed).
#[derive(Clone)]
pub struct Views {
    pub gateway_classes: View<GatewayClass>,
    pub gateways: View<Gateway>,
    pub listener_sets: Option<View<ListenerSet>>,
    pub http_routes: View<HttpRoute>,
    pub grpc_routes: Option<View<GrpcRoute>>,
    pub tcp_routes: Option<View<TcpRoute>>,
    pub udp_routes: Option<View<UdpRoute>>,
    pub tls_routes: Option<View<TlsRoute>>,
    pub backend_tls_policies: Option<View<BackendTlsPolicy>>,
}

impl Views {
    /// Whether every view took its first list in.
    fn listed(&self) -> bool {
        fn listed<K: Resource + Serialize + Clone + Trim>(view: Option<&View<K>>) -> bool {
            view.is_none_or(View::listed)
        }
        self.gateway_classes.listed()
            && self.gateways.listed()
            && self.http_routes.listed()
            && listed(self.listener_sets.as_ref())
            && listed(self.grpc_routes.as_ref())
            && listed(self.tcp_routes.as_ref())
            && listed(self.udp_routes.as_ref())
            && listed(self.tls_routes.as_ref())
            && listed(self.backend_tls_policies.as_ref())
    }
}

impl Stores {
    /// Starts every watch; returns once every store holds a complete first list (so the
    /// first translation never sees a half-loaded cluster). Optional kinds (ListenerSet and
    /// the v1 TCPRoute, UDPRoute and TLSRoute of recent releases, ProxyConfig) are watched
    /// only if their CRD is installed.
    pub async fn start(client: &Client, signals: Signals) -> Result<Stores> {
        let changed = signals.changed.clone();
        let journal = Journal::default();
        let crd_bundle_version = bundle_version(client).await;
        tracing::info!(
            found = crd_bundle_version.as_deref().unwrap_or("(unknown)"),
            supported = ?sluice_translate::SUPPORTED_BUNDLE_VERSIONS,
            "Gateway API CRDs"
        );
        let listener_sets = if installed::<ListenerSet>(client).await {
            Some(watch_status(client, &signals, &journal))
        } else {
            tracing::warn!(
                "the ListenerSet v1 CRD (Gateway API v1.5 or later) is not installed: ListenerSets are not served"
            );
            None
        };
        let grpc_routes = if installed::<GrpcRoute>(client).await {
            Some(watch_status(client, &signals, &journal))
        } else {
            tracing::warn!("the GRPCRoute v1 CRD is not installed: GRPCRoutes are not served");
            None
        };
        let backend_tls_policies = if installed::<BackendTlsPolicy>(client).await {
            Some(watch_status(client, &signals, &journal))
        } else {
            tracing::warn!("the BackendTLSPolicy v1 CRD is not installed: backends are reached without TLS");
            None
        };
        let tcp_routes = if installed::<TcpRoute>(client).await {
            Some(watch_status(client, &signals, &journal))
        } else {
            tracing::warn!(
                "the TCPRoute v1 CRD (Gateway API v1.6 or later) is not installed: TCPRoutes are not served"
            );
            None
        };
        let udp_routes = if installed::<UdpRoute>(client).await {
            Some(watch_status(client, &signals, &journal))
        } else {
            tracing::warn!(
                "the UDPRoute v1 CRD (Gateway API v1.6 or later) is not installed: UDPRoutes are not served"
            );
            None
        };
        let tls_routes = if installed::<TlsRoute>(client).await {
            Some(watch_status(client, &signals, &journal))
        } else {
            tracing::warn!(
                "the TLSRoute v1 CRD (Gateway API v1.5 or later) is not installed: TLSRoutes are not served"
            );
            None
        };
        let proxy_configs = if installed::<ProxyConfig>(client).await {
            Some(watch(client, watcher::Config::default(), &changed))
        } else {
            tracing::warn!("the ProxyConfig CRD is not installed: GatewayClass/Gateway parametersRefs cannot resolve");
            None
        };
        let (gateway_classes, gateway_class_view) = watch_status(client, &signals, &journal);
        let (gateways, gateway_view) = watch_status(client, &signals, &journal);
        let (http_routes, http_route_view) = watch_status(client, &signals, &journal);
        let views = Views {
            gateway_classes: gateway_class_view,
            gateways: gateway_view,
            listener_sets: listener_sets.as_ref().map(|(_, view)| view.clone()),
            http_routes: http_route_view,
            grpc_routes: grpc_routes.as_ref().map(|(_, view)| view.clone()),
            tcp_routes: tcp_routes.as_ref().map(|(_, view)| view.clone()),
            udp_routes: udp_routes.as_ref().map(|(_, view)| view.clone()),
            tls_routes: tls_routes.as_ref().map(|(_, view)| view.clone()),
            backend_tls_policies: backend_tls_policies.as_ref().map(|(_, view)| view.clone()),
        };
        let stores = Stores {
            gateway_classes,
            gateways,
            listener_sets: listener_sets.map(|(store, _)| store),
            http_routes,
            grpc_routes: grpc_routes.map(|(store, _)| store),
            tcp_routes: tcp_routes.map(|(store, _)| store),
            udp_routes: udp_routes.map(|(store, _)| store),
            tls_routes: tls_routes.map(|(store, _)| store),
            reference_grants: watch(client, watcher::Config::default(), &changed),
            backend_tls_policies: backend_tls_policies.map(|(store, _)| store),
            services: watch(client, watcher::Config::default(), &changed),
            endpoint_slices: watch(client, watcher::Config::default(), &changed),
            // Only TLS Secrets can be certificateRefs; others are never read.
            secrets: watch(client, watcher::Config::default().fields("type=kubernetes.io/tls"), &changed),
            // No selector can pick the ConfigMaps that hold CA bundles: every one is
            // watched, and the store keeps only what the translator reads.
            config_maps: watch_trimmed(client, watcher::Config::default(), &changed, keep_ca_bundle),
            namespaces: watch(client, watcher::Config::default(), &changed),
            proxy_configs,
            nodes: watch(client, watcher::Config::default(), &changed),
            crd_bundle_version,
            views,
            journal,
        };
        let ready = async {
            stores.gateway_classes.wait_until_ready().await?;
            stores.gateways.wait_until_ready().await?;
            stores.http_routes.wait_until_ready().await?;
            if let Some(s) = &stores.listener_sets {
                s.wait_until_ready().await?;
            }
            if let Some(s) = &stores.grpc_routes {
                s.wait_until_ready().await?;
            }
            if let Some(s) = &stores.tcp_routes {
                s.wait_until_ready().await?;
            }
            if let Some(s) = &stores.udp_routes {
                s.wait_until_ready().await?;
            }
            if let Some(s) = &stores.tls_routes {
                s.wait_until_ready().await?;
            }
            stores.reference_grants.wait_until_ready().await?;
            if let Some(s) = &stores.backend_tls_policies {
                s.wait_until_ready().await?;
            }
            stores.services.wait_until_ready().await?;
            stores.endpoint_slices.wait_until_ready().await?;
            stores.secrets.wait_until_ready().await?;
            stores.config_maps.wait_until_ready().await?;
            stores.namespaces.wait_until_ready().await?;
            if let Some(s) = &stores.proxy_configs {
                s.wait_until_ready().await?;
            }
            stores.nodes.wait_until_ready().await?;
            // The views take the first lists in right after their stores.
            while !stores.views.listed() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        };
        ready.await.context("waiting for the first list of every watched kind")?;
        Ok(stores)
    }

    /// Everything the translator reads, as the stores (and for the kinds whose status
    /// Sluice writes, their views) hold it now.
    pub fn world(&self) -> World {
        let views = &self.views;
        World {
            gateway_classes: views.gateway_classes.objects(),
            gateways: views.gateways.objects(),
            listener_sets: views.listener_sets.as_ref().map(View::objects).unwrap_or_default(),
            http_routes: views.http_routes.objects(),
            grpc_routes: views.grpc_routes.as_ref().map(View::objects).unwrap_or_default(),
            tcp_routes: views.tcp_routes.as_ref().map(View::objects).unwrap_or_default(),
            udp_routes: views.udp_routes.as_ref().map(View::objects).unwrap_or_default(),
            tls_routes: views.tls_routes.as_ref().map(View::objects).unwrap_or_default(),
            reference_grants: self.reference_grants.state(),
            backend_tls_policies: views.backend_tls_policies.as_ref().map(View::objects).unwrap_or_default(),
            services: self.services.state(),
            endpoint_slices: self.endpoint_slices.state(),
            secrets: self.secrets.state(),
            config_maps: self.config_maps.state(),
            namespaces: self.namespaces.state(),
            proxy_configs: self.proxy_configs.as_ref().map(Store::state).unwrap_or_default(),
            crd_bundle_version: Some(self.crd_bundle_version.clone().unwrap_or_default()),
            now: None,
        }
    }
}

/// The `gateway.networking.k8s.io/bundle-version` annotation of the GatewayClass CRD
/// (every Gateway API CRD of one release carries the same one). None if it cannot be read.
async fn bundle_version(client: &Client) -> Option<String> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    match api.get("gatewayclasses.gateway.networking.k8s.io").await {
        Ok(crd) => {
            Some(crd.metadata.annotations.unwrap_or_default().remove(BUNDLE_VERSION_ANNOTATION).unwrap_or_default())
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the GatewayClass CRD's bundle-version");
            None
        }
    }
}

const BUNDLE_VERSION_ANNOTATION: &str = "gateway.networking.k8s.io/bundle-version";

/// True if the API server serves the kind (its CRD is installed).
async fn installed<K>(client: &Client) -> bool
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let api: Api<K> = Api::all(client.clone());
    match api.list_metadata(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(kube::Error::Api(e)) if e.code == 404 => false,
        // Anything else (RBAC, a flaky connection) is the watch's problem to report.
        Err(_) => true,
    }
}

/// The ConfigMap key holding a CA bundle (`caCertificateRefs`).
const CA_BUNDLE_KEY: &str = "ca.crt";

/// Drops everything of a ConfigMap but its identity and its CA bundle: ConfigMaps are
/// watched cluster-wide, and most hold other data (the last-applied annotation repeats
/// all of it).
fn keep_ca_bundle(config_map: &mut ConfigMap) {
    config_map.metadata.managed_fields = None;
    config_map.metadata.annotations = None;
    if let Some(data) = &mut config_map.data {
        data.retain(|key, _| key == CA_BUNDLE_KEY);
    }
    if let Some(data) = &mut config_map.binary_data {
        data.retain(|key, _| key == CA_BUNDLE_KEY);
    }
}

/// Starts a reflector for `K` and returns its store. Watch errors are logged and retried
/// with back-off; every event wakes the reconcile loop.
fn watch<K>(client: &Client, config: watcher::Config, changed: &Arc<Notify>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watch_trimmed(client, config, changed, |_: &mut K| {})
}

/// As [`watch`], storing each object as `trim` leaves it.
fn watch_trimmed<K>(
    client: &Client,
    config: watcher::Config,
    changed: &Arc<Notify>,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let signals = Signals { changed: changed.clone(), observed: changed.clone() };
    reflect(client, config, signals, trim, |_: &watcher::Event<K>| Wake::Changed)
}

/// A reflector for a kind whose status Sluice writes, and its [`View`]: events that change
/// only the status (see [`fingerprint`]) wake [`Signals::observed`], the others
/// [`Signals::changed`].
/// Each event is also recorded in `journal` for the status writer.
fn watch_status<K>(client: &Client, signals: &Signals, journal: &Journal) -> (Store<K>, View<K>)
where
    K: Resource<DynamicType = ()>
        + StatusKind
        + Clone
        + DeserializeOwned
        + Serialize
        + Trim
        + Debug
        + Send
        + Sync
        + 'static,
{
    let view = View::default();
    let events = view.clone();
    let journal = journal.clone();
    let classify = move |event: &watcher::Event<K>| {
        match event {
            watcher::Event::Apply(object) | watcher::Event::Delete(object) => {
                let (namespace, name) = identity(object);
                journal.touch(ObjectId { kind: K::KIND, key: ObjectKey::new(namespace, name) });
            }
            // The store swaps in the relisted objects at its end.
            watcher::Event::InitDone => journal.touch_all(),
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
        events.event(event)
    };
    let store = reflect(client, watcher::Config::default(), signals.clone(), |_: &mut K| {}, classify);
    (store, view)
}

/// The [`Kind`] of the status writer for a watched type.
pub trait StatusKind {
    const KIND: Kind;
}

macro_rules! status_kind {
    ($($type:ty => $kind:ident),*) => {
        $(impl StatusKind for $type {
            const KIND: Kind = Kind::$kind;
        })*
    };
}

status_kind!(
    GatewayClass => GatewayClass, Gateway => Gateway, ListenerSet => ListenerSet, HttpRoute => HttpRoute,
    GrpcRoute => GrpcRoute, TcpRoute => TcpRoute, UdpRoute => UdpRoute, TlsRoute => TlsRoute,
    BackendTlsPolicy => BackendTlsPolicy
);

/// What a watch event wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The loop, to translate: the inputs changed.
    Changed,
    /// The loop, to compare the status again without translating.
    Observed,
    /// Nothing (yet): an object of a relist, before the store swaps at its end.
    Nothing,
}

fn reflect<K>(
    client: &Client,
    config: watcher::Config,
    signals: Signals,
    trim: impl FnMut(&mut K) + Send + 'static,
    mut classify: impl FnMut(&watcher::Event<K>) -> Wake + Send + 'static,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let api: Api<K> = Api::all(client.clone());
    let stream = reflector::reflector(writer, watcher(api, config).modify(trim)).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if failing {
                        tracing::info!("watch of {}s recovered", K::kind(&()));
                        failing = false;
                    }
                    match classify(&event) {
                        Wake::Changed => signals.changed.notify_one(),
                        Wake::Observed => signals.observed.notify_one(),
                        Wake::Nothing => {}
                    }
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!("watch of {}s failed (retrying with back-off): {error}", K::kind(&()));
                    }
                    // default_backoff() waits before the watch resumes.
                    failing = true;
                }
            }
        }
    });
    reader
}

/// What the translator reads of a kind whose status Sluice writes: the objects the store
/// holds, except that an object whose last events changed only what the translator does
/// not read (its status, `resourceVersion`, `managedFields`: see [`fingerprint`]) stays
/// the instance it was before them. The reconciler's fast paths (`endpoints_only`,
/// `routes_only`) compare objects by identity; without this, each status write would
/// make its object count as changed at the next change, and a change after a burst of
/// status writes would translate everything. The status writer reads the store itself.
pub struct View<K> {
    state: Arc<std::sync::Mutex<ViewState<K>>>,
}

impl<K> Clone for View<K> {
    fn clone(&self) -> Self {
        View { state: self.state.clone() }
    }
}

impl<K> Default for View<K> {
    fn default() -> Self {
        View { state: Arc::new(std::sync::Mutex::new(ViewState::default())) }
    }
}

impl<K: Resource + Serialize + Clone + Trim> View<K> {
    /// Records a watch event; says what it wakes.
    pub fn event(&self, event: &watcher::Event<K>) -> Wake {
        self.lock().event(event)
    }

    /// The objects as the translator sees them.
    pub fn objects(&self) -> Vec<Arc<K>> {
        self.lock().known.values().map(|(_, object)| object.clone()).collect()
    }

    /// Whether the first list was taken in.
    pub fn listed(&self) -> bool {
        self.lock().listed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ViewState<K>> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Objects by namespace and name, each with its fingerprint.
type Known<K> = HashMap<(String, String), (u64, Arc<K>)>;

/// What a [`View`] keeps of an object: all but its status and `managedFields`, which the
/// translator never reads (and which are most of a route's size once its status is
/// written; the store keeps them for the status writer).
pub trait Trim {
    fn trim(&mut self);
}

macro_rules! trim_status {
    ($($kind:ty),*) => {
        $(impl Trim for $kind {
            fn trim(&mut self) {
                self.status = None;
                self.metadata.managed_fields = None;
            }
        })*
    };
}

trim_status!(GatewayClass, Gateway, ListenerSet, HttpRoute, GrpcRoute, TcpRoute, UdpRoute, TlsRoute, BackendTlsPolicy);

/// The trimmed copy a [`View`] keeps.
fn trimmed<K: Clone + Trim>(object: &K) -> Arc<K> {
    let mut copy = object.clone();
    copy.trim();
    Arc::new(copy)
}

/// A [`View`]'s objects.
pub struct ViewState<K> {
    known: Known<K>,
    /// Filled during a relist; replaces `known` when it ends.
    relisting: Option<Known<K>>,
    listed: bool,
}

impl<K> Default for ViewState<K> {
    fn default() -> Self {
        ViewState { known: HashMap::new(), relisting: None, listed: false }
    }
}

impl<K: Resource + Serialize + Clone + Trim> ViewState<K> {
    fn event(&mut self, event: &watcher::Event<K>) -> Wake {
        match event {
            watcher::Event::Apply(object) => {
                let print = fingerprint(object);
                let id = identity(object);
                match self.known.get(&id) {
                    Some((before, _)) if *before == print => Wake::Observed,
                    _ => {
                        self.known.insert(id, (print, trimmed(object)));
                        Wake::Changed
                    }
                }
            }
            watcher::Event::Delete(object) => {
                self.known.remove(&identity(object));
                Wake::Changed
            }
            watcher::Event::Init => {
                self.relisting = Some(HashMap::new());
                Wake::Nothing
            }
            watcher::Event::InitApply(object) => {
                let print = fingerprint(object);
                let id = identity(object);
                // An object the relist finds unchanged stays the instance it was.
                let kept = self.known.get(&id).filter(|(before, _)| *before == print).map(|(_, o)| o.clone());
                let object = kept.unwrap_or_else(|| trimmed(object));
                self.relisting.get_or_insert_with(HashMap::new).insert(id, (print, object));
                Wake::Nothing
            }
            watcher::Event::InitDone => {
                self.known = self.relisting.take().unwrap_or_default();
                self.listed = true;
                // Objects may have come, gone or changed while the watch was down.
                Wake::Changed
            }
        }
    }
}

fn identity<K: Resource>(object: &K) -> (String, String) {
    let meta = object.meta();
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

fn fingerprint<K: Serialize>(object: &K) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut value = serde_json::to_value(object).unwrap_or(serde_json::Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(serde_json::Value::as_object_mut) {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_maps_keep_only_their_ca_bundle() {
        let mut config_map: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "ca", "namespace": "infra", "labels": {"team": "a"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                "managedFields": [{"manager": "kubectl"}],
            },
            "data": {"ca.crt": "PEM", "other": "big"},
            "binaryData": {"ca.crt": "UEVN", "blob": "AAAA"},
        }))
        .unwrap();
        keep_ca_bundle(&mut config_map);
        assert_eq!(
            serde_json::to_value(&config_map).unwrap(),
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "ca", "namespace": "infra", "labels": {"team": "a"}},
                "data": {"ca.crt": "PEM"},
                "binaryData": {"ca.crt": "UEVN"},
            })
        );
    }

    fn route(version: &str, hostname: &str, accepted: &str) -> HttpRoute {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "apps", "resourceVersion": version, "generation": 1,
                         "managedFields": [{"manager": version}]},
            "spec": {"hostnames": [hostname]},
            "status": {"parents": [{"parentRef": {"name": "gw"}, "controllerName": "x/y",
                                    "conditions": [{"type": "Accepted", "status": accepted, "reason": "R",
                                                    "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}]},
        }))
        .unwrap()
    }

    /// The one object of a view.
    fn only(view: &View<HttpRoute>) -> Arc<HttpRoute> {
        let objects = view.objects();
        assert_eq!(objects.len(), 1);
        objects[0].clone()
    }

    #[test]
    fn a_status_only_change_does_not_translate_and_keeps_the_instance() {
        let view = View::default();
        assert_eq!(view.event(&watcher::Event::Apply(route("1", "a.example", "True"))), Wake::Changed);
        let first = only(&view);
        // Our own status write coming back: the translator sees the same instance.
        assert_eq!(view.event(&watcher::Event::Apply(route("2", "a.example", "False"))), Wake::Observed);
        assert!(Arc::ptr_eq(&first, &only(&view)));
        assert_eq!(view.event(&watcher::Event::Apply(route("3", "b.example", "False"))), Wake::Changed);
        let changed = only(&view);
        assert!(!Arc::ptr_eq(&first, &changed));
        assert_eq!(changed.spec.hostnames.as_deref(), Some(&["b.example".to_string()][..]));
        // Kept without what the translator never reads.
        assert!(changed.status.is_none() && changed.metadata.managed_fields.is_none());
        assert_eq!(changed.metadata.generation, Some(1));
        assert_eq!(view.event(&watcher::Event::Delete(route("4", "b.example", "False"))), Wake::Changed);
        assert!(view.objects().is_empty());
        // Gone: the same object coming back is a change.
        assert_eq!(view.event(&watcher::Event::Apply(route("5", "b.example", "False"))), Wake::Changed);
    }

    #[test]
    fn a_relist_wakes_once_at_its_end_and_keeps_unchanged_instances() {
        let view = View::default();
        assert!(!view.listed());
        assert_eq!(view.event(&watcher::Event::Apply(route("1", "a.example", "True"))), Wake::Changed);
        let first = only(&view);
        assert_eq!(view.event(&watcher::Event::<HttpRoute>::Init), Wake::Nothing);
        assert_eq!(view.event(&watcher::Event::InitApply(route("2", "a.example", "False"))), Wake::Nothing);
        assert_eq!(view.event(&watcher::Event::<HttpRoute>::InitDone), Wake::Changed);
        assert!(view.listed());
        assert!(Arc::ptr_eq(&first, &only(&view)), "unchanged but for its status: the same instance");
        assert_eq!(view.event(&watcher::Event::<HttpRoute>::Init), Wake::Nothing);
        assert_eq!(view.event(&watcher::Event::InitApply(route("3", "b.example", "False"))), Wake::Nothing);
        assert!(Arc::ptr_eq(&first, &only(&view)), "the relist takes effect at its end");
        assert_eq!(view.event(&watcher::Event::<HttpRoute>::InitDone), Wake::Changed);
        assert!(!Arc::ptr_eq(&first, &only(&view)));
        // The relist's objects are the ones known now.
        assert_eq!(view.event(&watcher::Event::Apply(route("4", "b.example", "True"))), Wake::Observed);
    }
}
