//! The status writer: puts the translator's status on the objects with server-side
//! apply (field manager `sluice.dev/gateway-controller`). It writes only what changed
//! (compared with the watched objects, ignoring `lastTransitionTime`), keeps the
//! transition time of conditions whose status did not change, and on routes keeps every
//! other controller's `status.parents` entry as it is (that list is atomic, so the
//! apply carries the object's resourceVersion and a concurrent change means a retry).
//!
//! It runs as its own task ([`run_writer`]), fed the latest [`Desired`] statuses through
//! a watch channel, writing only while this replica leads. [`Writer`] keeps up to
//! [`CONCURRENT_WRITES`] writes in flight, at most one per object; a burst of changes
//! becomes one write per object, and failed writes are retried after a second (or at the
//! next watch event) with the latest desired status.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use sluice_gateway_api::gatewayclasses::GatewayClass;
use sluice_gateway_api::gateways::Gateway;
use sluice_translate::{CONTROLLER_NAME, Condition, ObjectKey, PolicyStatus, RouteStatus, Status};

use super::watch::Stores;

/// Field manager of every write Sluice's controller makes.
pub const FIELD_MANAGER: &str = "sluice.dev/gateway-controller";

/// One entry of a Gateway's `status.addresses`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Address {
    /// `IPAddress` or `Hostname`.
    pub type_: &'static str,
    pub value: String,
}

/// What the status writer is to put on the objects: the overlaid status and each
/// Gateway's addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub status: Status,
    pub addresses: BTreeMap<ObjectKey, Vec<Address>>,
}

/// How long a failed write waits before the writer tries again (unless a new desired
/// status or a watch event comes first).
const RETRY: Duration = Duration::from_secs(1);

/// How many status writes are in flight at most.
pub const CONCURRENT_WRITES: usize = 32;

/// How long after a change of the desired statuses the writer starts writing them. A
/// status write costs the API server, etcd and every watcher of the object CPU; started
/// at once, they competed with the change's push and its first requests for the CPU.
/// Changes arriving meanwhile are written together.
const WRITE_DELAY: Duration = Duration::from_millis(20);

/// The leader-only status writer: writes the latest desired status whenever it changes
/// (and again after a second while writes fail), only while `leading` is true.
pub async fn run_writer(
    client: Client,
    stores: Stores,
    mut desired: tokio::sync::watch::Receiver<Option<Arc<Desired>>>,
    mut leading: tokio::sync::watch::Receiver<bool>,
) {
    let mut writer = Writer::new(KubeStatusApi { client }, stores, CONCURRENT_WRITES);
    // No write starts before this (see WRITE_DELAY).
    let mut held: Option<tokio::time::Instant> = None;
    loop {
        let retry_at = writer.retry_at();
        tokio::select! {
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
                let latest = desired.borrow_and_update().clone();
                match latest.filter(|_| *leading.borrow()) {
                    Some(latest) => {
                        writer.set_desired(latest);
                        held.get_or_insert_with(|| tokio::time::Instant::now() + WRITE_DELAY);
                    }
                    None => writer.stop(),
                }
            }
            _ = tokio::time::sleep_until(held.unwrap_or_else(tokio::time::Instant::now)), if held.is_some() => {
                held = None;
            }
            changed = leading.changed() => {
                // Writing starts with the next desired status the loop sends.
                if changed.is_err() || !*leading.borrow_and_update() {
                    writer.stop();
                }
            }
            Some(done) = writer.next_done() => writer.complete(done),
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                writer.retry();
            }
        }
        if held.is_none() {
            writer.start();
        }
    }
}

/// A kind whose status Sluice writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    GatewayClass,
    Gateway,
    ListenerSet,
    HttpRoute,
    GrpcRoute,
    TcpRoute,
    UdpRoute,
    TlsRoute,
    BackendTlsPolicy,
}

impl Kind {
    /// Whether the status is applied with the object's `resourceVersion` (a list of other
    /// controllers' entries that must come back unchanged).
    fn with_resource_version(self) -> bool {
        !matches!(self, Kind::GatewayClass | Kind::Gateway | Kind::ListenerSet)
    }
}

/// One object whose status Sluice writes (a GatewayClass has an empty namespace).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub kind: Kind,
    pub key: ObjectKey,
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}", self.kind, self.key)
    }
}

/// An object's status as the watch cache holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached {
    pub status: Value,
    pub resource_version: Option<String>,
}

/// Where the writer reads the objects' current status.
pub trait StatusCache {
    /// Whether the kind is watched (its CRD installed): statuses of unwatched kinds are
    /// not written.
    fn watched(&self, kind: Kind) -> bool;
    /// The object as the cache holds it; None if the cache does not have it.
    fn get(&self, id: &ObjectId) -> Option<Cached>;
    /// Only the object's `resourceVersion` (cheaper than [`StatusCache::get`]); None if
    /// the cache does not have the object.
    fn version(&self, id: &ObjectId) -> Option<Option<String>> {
        self.get(id).map(|c| c.resource_version)
    }
    /// The objects the cache saw change since the last call (see [`Journal::take`]); None
    /// when that is not known and every object is to be compared.
    fn touched(&self) -> Option<HashSet<ObjectId>> {
        None
    }
}

/// The objects whose watch events came since the status writer last looked, for kinds
/// whose status Sluice writes: what the writer must compare again besides the entries of
/// the desired status that changed. Bounded: past [`Journal::LIMIT`] objects, or after a
/// relist, it says "everything".
#[derive(Clone)]
pub struct Journal {
    state: Arc<std::sync::Mutex<JournalState>>,
}

struct JournalState {
    ids: HashSet<ObjectId>,
    /// Everything changed (the start, a relist, too many objects to name).
    all: bool,
}

impl Default for Journal {
    fn default() -> Self {
        Journal { state: Arc::new(std::sync::Mutex::new(JournalState { ids: HashSet::new(), all: true })) }
    }
}

impl Journal {
    /// More objects than this since the writer last looked are recorded as "everything"
    /// (a standby replica's writer never looks).
    pub const LIMIT: usize = 4096;

    fn lock(&self) -> std::sync::MutexGuard<'_, JournalState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a watch event of `id`.
    pub fn touch(&self, id: ObjectId) {
        let mut state = self.lock();
        if state.all {
            return;
        }
        state.ids.insert(id);
        if state.ids.len() > Self::LIMIT {
            state.touch_all();
        }
    }

    /// Records that any object may have changed (a relist).
    pub fn touch_all(&self) {
        self.lock().touch_all();
    }

    /// The objects recorded since the last call; None for "everything". Starts empty.
    pub fn take(&self) -> Option<HashSet<ObjectId>> {
        let mut state = self.lock();
        let ids = std::mem::take(&mut state.ids);
        (!std::mem::replace(&mut state.all, false)).then_some(ids)
    }
}

impl JournalState {
    fn touch_all(&mut self) {
        self.all = true;
        self.ids = HashSet::new();
    }
}

/// Why a write failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// The object is gone: nothing to write.
    NotFound,
    /// The object changed since the `resourceVersion` sent.
    Conflict,
    Other(String),
}

/// Applies a status to an object; returns the `resourceVersion` the write made.
pub trait StatusApi: Clone + Send + Sync + 'static {
    fn apply(
        &self,
        id: ObjectId,
        body: Value,
    ) -> impl std::future::Future<Output = Result<Option<String>, WriteError>> + Send + 'static;
}

/// The API server, with server-side apply on the status subresource.
#[derive(Clone)]
pub struct KubeStatusApi {
    pub client: Client,
}

impl KubeStatusApi {
    async fn patch<K>(api: Api<K>, id: &ObjectId, body: Value) -> Result<Option<String>, WriteError>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let mut body = body;
        body["apiVersion"] = json!(K::api_version(&()));
        body["kind"] = json!(K::kind(&()));
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch_status(&id.key.name, &params, &Patch::Apply(&body)).await {
            Ok(object) => Ok(object.meta().resource_version.clone()),
            Err(kube::Error::Api(e)) if e.code == 404 => Err(WriteError::NotFound),
            Err(kube::Error::Api(e)) if e.code == 409 => Err(WriteError::Conflict),
            Err(e) => Err(WriteError::Other(e.to_string())),
        }
    }
}

impl StatusApi for KubeStatusApi {
    fn apply(
        &self,
        id: ObjectId,
        body: Value,
    ) -> impl std::future::Future<Output = Result<Option<String>, WriteError>> + Send + 'static {
        let client = self.client.clone();
        async move {
            use sluice_gateway_api as g;
            let ns = id.key.namespace.as_str();
            match id.kind {
                Kind::GatewayClass => Self::patch::<GatewayClass>(Api::all(client), &id, body).await,
                Kind::Gateway => Self::patch::<Gateway>(Api::namespaced(client, ns), &id, body).await,
                Kind::ListenerSet => {
                    Self::patch::<g::listenersets::ListenerSet>(Api::namespaced(client, ns), &id, body).await
                }
                Kind::HttpRoute => {
                    Self::patch::<g::httproutes::HttpRoute>(Api::namespaced(client, ns), &id, body).await
                }
                Kind::GrpcRoute => {
                    Self::patch::<g::grpcroutes::GrpcRoute>(Api::namespaced(client, ns), &id, body).await
                }
                Kind::TcpRoute => Self::patch::<g::tcproutes::TcpRoute>(Api::namespaced(client, ns), &id, body).await,
                Kind::UdpRoute => Self::patch::<g::udproutes::UdpRoute>(Api::namespaced(client, ns), &id, body).await,
                Kind::TlsRoute => Self::patch::<g::tlsroutes::TlsRoute>(Api::namespaced(client, ns), &id, body).await,
                Kind::BackendTlsPolicy => {
                    let api = Api::namespaced(client, ns);
                    Self::patch::<g::backendtlspolicies::BackendTlsPolicy>(api, &id, body).await
                }
            }
        }
    }
}

/// The cached object's status (as JSON, unless `with_status` is false: then null) and
/// `resourceVersion`.
fn cached<K: Resource, S: serde::Serialize>(
    object: Option<Arc<K>>,
    with_status: bool,
    status: impl Fn(&K) -> Option<&S>,
) -> Option<Cached> {
    object.map(|o| Cached {
        status: status(&o).filter(|_| with_status).and_then(|s| serde_json::to_value(s).ok()).unwrap_or(Value::Null),
        resource_version: o.meta().resource_version.clone(),
    })
}

impl StatusCache for Stores {
    fn watched(&self, kind: Kind) -> bool {
        match kind {
            Kind::GatewayClass | Kind::Gateway | Kind::HttpRoute => true,
            Kind::ListenerSet => self.listener_sets.is_some(),
            Kind::GrpcRoute => self.grpc_routes.is_some(),
            Kind::TcpRoute => self.tcp_routes.is_some(),
            Kind::UdpRoute => self.udp_routes.is_some(),
            Kind::TlsRoute => self.tls_routes.is_some(),
            Kind::BackendTlsPolicy => self.backend_tls_policies.is_some(),
        }
    }

    fn get(&self, id: &ObjectId) -> Option<Cached> {
        self.cached(id, true)
    }

    fn version(&self, id: &ObjectId) -> Option<Option<String>> {
        self.cached(id, false).map(|c| c.resource_version)
    }

    fn touched(&self) -> Option<HashSet<ObjectId>> {
        self.journal.take()
    }
}

impl Stores {
    fn cached(&self, id: &ObjectId, with_status: bool) -> Option<Cached> {
        use kube::runtime::reflector::ObjectRef;
        let key = &id.key;
        match id.kind {
            Kind::GatewayClass => {
                cached(self.gateway_classes.get(&ObjectRef::new(&key.name)), with_status, |o| o.status.as_ref())
            }
            Kind::Gateway => cached(self.gateways.get(&within(key)), with_status, |o| o.status.as_ref()),
            Kind::ListenerSet => {
                cached(self.listener_sets.as_ref()?.get(&within(key)), with_status, |o| o.status.as_ref())
            }
            Kind::HttpRoute => cached(self.http_routes.get(&within(key)), with_status, |o| o.status.as_ref()),
            Kind::GrpcRoute => cached(self.grpc_routes.as_ref()?.get(&within(key)), with_status, |o| o.status.as_ref()),
            Kind::TcpRoute => cached(self.tcp_routes.as_ref()?.get(&within(key)), with_status, |o| o.status.as_ref()),
            Kind::UdpRoute => cached(self.udp_routes.as_ref()?.get(&within(key)), with_status, |o| o.status.as_ref()),
            Kind::TlsRoute => cached(self.tls_routes.as_ref()?.get(&within(key)), with_status, |o| o.status.as_ref()),
            Kind::BackendTlsPolicy => {
                cached(self.backend_tls_policies.as_ref()?.get(&within(key)), with_status, |o| o.status.as_ref())
            }
        }
    }
}

/// The store reference of a namespaced object.
fn within<K: Resource<DynamicType = ()>>(key: &ObjectKey) -> kube::runtime::reflector::ObjectRef<K> {
    kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace)
}

/// Every object the desired status names.
fn ids(desired: &Desired) -> Vec<ObjectId> {
    fn of<'a>(kind: Kind, keys: impl Iterator<Item = &'a ObjectKey> + 'a) -> impl Iterator<Item = ObjectId> + 'a {
        keys.map(move |key| ObjectId { kind, key: key.clone() })
    }
    let s = &desired.status;
    let classes =
        s.gateway_classes.keys().map(|n| ObjectId { kind: Kind::GatewayClass, key: ObjectKey::new("", n.clone()) });
    classes
        .chain(of(Kind::Gateway, s.gateways.keys()))
        .chain(of(Kind::ListenerSet, s.listener_sets.keys()))
        .chain(of(Kind::HttpRoute, s.http_routes.keys()))
        .chain(of(Kind::GrpcRoute, s.grpc_routes.keys()))
        .chain(of(Kind::TcpRoute, s.tcp_routes.keys()))
        .chain(of(Kind::UdpRoute, s.udp_routes.keys()))
        .chain(of(Kind::TlsRoute, s.tls_routes.keys()))
        .chain(of(Kind::BackendTlsPolicy, s.backend_tls_policies.keys()))
        .collect()
}

/// The status to put on `id`, given what it carries now (`base`); None if the desired
/// status does not name it, or if there is nothing of ours to write or remove.
fn desired_value(desired: &Desired, id: &ObjectId, base: &Value, now: &str) -> Option<Value> {
    let s = &desired.status;
    let key = &id.key;
    Some(match id.kind {
        Kind::GatewayClass => gateway_class_status(s.gateway_classes.get(&key.name)?, base, now),
        Kind::Gateway => {
            let addresses = desired.addresses.get(key).map(Vec::as_slice).unwrap_or_default();
            gateway_status(s.gateways.get(key)?, addresses, base, now)
        }
        Kind::ListenerSet => listener_set_status(s.listener_sets.get(key)?, base, now),
        Kind::HttpRoute => route_status(s.http_routes.get(key)?, base, now),
        Kind::GrpcRoute => route_status(s.grpc_routes.get(key)?, base, now),
        Kind::TcpRoute => route_status(s.tcp_routes.get(key)?, base, now),
        Kind::UdpRoute => route_status(s.udp_routes.get(key)?, base, now),
        Kind::TlsRoute => route_status(s.tls_routes.get(key)?, base, now),
        Kind::BackendTlsPolicy => {
            let policy = s.backend_tls_policies.get(key)?;
            let ours = base.get("ancestors").and_then(Value::as_array).is_some_and(|a| {
                a.iter().any(|e| e.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME))
            });
            if policy.ancestors.is_empty() && !ours {
                return None;
            }
            policy_status(policy, base, now)
        }
    })
}

/// Whether `a` and `b` want the same status on `id` (its entry, and for a Gateway its
/// addresses).
fn same_entry(a: &Desired, b: &Desired, id: &ObjectId) -> bool {
    if std::ptr::eq(a, b) {
        return true;
    }
    let (s, t, key) = (&a.status, &b.status, &id.key);
    match id.kind {
        Kind::GatewayClass => s.gateway_classes.get(&key.name) == t.gateway_classes.get(&key.name),
        Kind::Gateway => s.gateways.get(key) == t.gateways.get(key) && a.addresses.get(key) == b.addresses.get(key),
        Kind::ListenerSet => s.listener_sets.get(key) == t.listener_sets.get(key),
        Kind::HttpRoute => s.http_routes.get(key) == t.http_routes.get(key),
        Kind::GrpcRoute => s.grpc_routes.get(key) == t.grpc_routes.get(key),
        Kind::TcpRoute => s.tcp_routes.get(key) == t.tcp_routes.get(key),
        Kind::UdpRoute => s.udp_routes.get(key) == t.udp_routes.get(key),
        Kind::TlsRoute => s.tls_routes.get(key) == t.tls_routes.get(key),
        Kind::BackendTlsPolicy => s.backend_tls_policies.get(key) == t.backend_tls_policies.get(key),
    }
}

/// Whether the desired status names `id`.
fn names(desired: &Desired, id: &ObjectId) -> bool {
    let (s, key) = (&desired.status, &id.key);
    match id.kind {
        Kind::GatewayClass => s.gateway_classes.contains_key(&key.name),
        Kind::Gateway => s.gateways.contains_key(key),
        Kind::ListenerSet => s.listener_sets.contains_key(key),
        Kind::HttpRoute => s.http_routes.contains_key(key),
        Kind::GrpcRoute => s.grpc_routes.contains_key(key),
        Kind::TcpRoute => s.tcp_routes.contains_key(key),
        Kind::UdpRoute => s.udp_routes.contains_key(key),
        Kind::TlsRoute => s.tls_routes.contains_key(key),
        Kind::BackendTlsPolicy => s.backend_tls_policies.contains_key(key),
    }
}

/// The objects whose entries may differ between `a` and `b` (a superset): the keys of
/// the small maps (GatewayClasses, Gateways and their addresses, ListenerSets) whose
/// entries differ, and the route and policy entries either changed since the base they
/// share. None when a route or policy map does not share its base with the other's (a
/// translation, or changes folded into a new base): then everything is compared.
fn changed_entries(a: &Desired, b: &Desired) -> Option<Vec<ObjectId>> {
    fn differing<'a, K: Ord, V: PartialEq>(
        a: &'a BTreeMap<K, V>,
        b: &'a BTreeMap<K, V>,
    ) -> impl Iterator<Item = &'a K> + 'a {
        let only_b = b.keys().filter(|key| !a.contains_key(*key));
        a.iter().filter(|(key, value)| b.get(*key) != Some(*value)).map(|(key, _)| key).chain(only_b)
    }
    let (s, t) = (&a.status, &b.status);
    let id = |kind: Kind| move |key: &ObjectKey| ObjectId { kind, key: key.clone() };
    let mut ids: Vec<ObjectId> = differing(&s.gateway_classes, &t.gateway_classes)
        .map(|name| ObjectId { kind: Kind::GatewayClass, key: ObjectKey::new("", name.clone()) })
        .collect();
    ids.extend(differing(&s.gateways, &t.gateways).map(id(Kind::Gateway)));
    ids.extend(differing(&a.addresses, &b.addresses).map(id(Kind::Gateway)));
    ids.extend(differing(&s.listener_sets, &t.listener_sets).map(id(Kind::ListenerSet)));
    ids.extend(s.http_routes.changed_keys(&t.http_routes)?.map(id(Kind::HttpRoute)));
    ids.extend(s.grpc_routes.changed_keys(&t.grpc_routes)?.map(id(Kind::GrpcRoute)));
    ids.extend(s.tcp_routes.changed_keys(&t.tcp_routes)?.map(id(Kind::TcpRoute)));
    ids.extend(s.udp_routes.changed_keys(&t.udp_routes)?.map(id(Kind::UdpRoute)));
    ids.extend(s.tls_routes.changed_keys(&t.tls_routes)?.map(id(Kind::TlsRoute)));
    ids.extend(s.backend_tls_policies.changed_keys(&t.backend_tls_policies)?.map(id(Kind::BackendTlsPolicy)));
    Some(ids)
}

/// True if resourceVersion `a` is older than `b`. The API server's are integers that
/// grow (comparable since Kubernetes 1.35); anything else is not known to be older.
fn older(a: Option<&str>, b: &str) -> bool {
    match (a.and_then(|a| a.parse::<u128>().ok()), b.parse::<u128>().ok()) {
        (Some(a), Some(b)) => a < b,
        (None, Some(_)) => a.is_none(),
        _ => false,
    }
}

/// A status this writer wrote, with the `resourceVersion` the write made.
#[derive(Debug, Clone)]
struct Wrote {
    resource_version: String,
    status: Value,
}

/// One finished write.
pub struct Done {
    id: ObjectId,
    /// The `resourceVersion` the object had as far as the writer knew when it wrote.
    base_version: Option<String>,
    status: Value,
    result: Result<Option<String>, WriteError>,
    took: Duration,
}

/// Counters of the writer (logged at debug level when a burst of writes ends).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriterStats {
    /// Successful writes.
    pub writes: u64,
    /// Objects compared (their cached status read and the desired one rendered).
    pub compared: u64,
    /// Writes refused because the object changed meanwhile (written again).
    pub conflicts: u64,
    /// Other failed writes (retried).
    pub errors: u64,
    /// Most writes in flight at once.
    pub max_in_flight: usize,
    /// Total and longest write latency.
    pub latency_total: Duration,
    pub latency_max: Duration,
}

/// The writer's state: which objects need a write, which writes are in flight (at most
/// one per object, at most `limit` in all), and what it wrote lately.
///
/// Each desired status (and each watch event, which makes the loop send the desired status
/// again) makes it compare every object named with what the object carries: the watch
/// cache, or what this writer wrote if the cache has not caught up with that write yet
/// (older `resourceVersion`), or what is being written if a write is in flight. An object
/// that differs is marked dirty; a dirty object is written as soon as it has no write in
/// flight and a slot is free, with the status computed then from the latest desired
/// status, so a burst of changes becomes one write per object. Only objects whose desired
/// entry or cached `resourceVersion` changed since their last comparison (or that this
/// writer is writing) are compared again: a route change among thousands costs one
/// comparison, not thousands. Nor are the others looked at, when the cache names the
/// objects its watch saw change ([`Journal`]) and the desired statuses share their route
/// maps' base (see [`changed_entries`]): a pass then costs the change, not the objects.
pub struct Writer<A: StatusApi, C: StatusCache> {
    api: A,
    cache: C,
    limit: usize,
    desired: Option<Arc<Desired>>,
    dirty: BTreeSet<ObjectId>,
    in_flight: HashMap<ObjectId, Value>,
    wrote: HashMap<ObjectId, Wrote>,
    /// Objects whose last write failed, with the `resourceVersion` the write was based
    /// on: written again after [`RETRY`], or as soon as the cache shows another version
    /// (after a conflict, the watch event of the change that caused it).
    failed: BTreeMap<ObjectId, Option<String>>,
    /// Per object, the cache's `resourceVersion` when it was last compared, against the
    /// entry it has in `compared_with`: an object whose entry and version are as they
    /// were, and that has no write of this writer in flight, pending in the cache or
    /// failed, keeps its verdict without being compared again (a comparison serializes
    /// the cached status and renders the desired one).
    compared: HashMap<ObjectId, Option<String>>,
    compared_with: Option<Arc<Desired>>,
    /// Objects to compare at the next comparison whatever else changed (a write finished,
    /// a retry is due).
    recheck: HashSet<ObjectId>,
    retry_at: Option<tokio::time::Instant>,
    tasks: tokio::task::JoinSet<Done>,
    pub stats: WriterStats,
    /// Stats when the last burst ended.
    logged: WriterStats,
    burst_started: Option<std::time::Instant>,
}

impl<A: StatusApi, C: StatusCache> Writer<A, C> {
    pub fn new(api: A, cache: C, limit: usize) -> Self {
        Writer {
            api,
            cache,
            limit: limit.max(1),
            desired: None,
            dirty: BTreeSet::new(),
            in_flight: HashMap::new(),
            wrote: HashMap::new(),
            failed: BTreeMap::new(),
            compared: HashMap::new(),
            compared_with: None,
            recheck: HashSet::new(),
            retry_at: None,
            tasks: tokio::task::JoinSet::new(),
            stats: WriterStats::default(),
            logged: WriterStats::default(),
            burst_started: None,
        }
    }

    /// Takes a new desired status (or the same one after a watch event) and compares
    /// every object it names again.
    pub fn set_desired(&mut self, desired: Arc<Desired>) {
        self.desired = Some(desired);
        self.compare_all();
    }

    /// Stops writing (no longer leading): in-flight writes are abandoned, and everything
    /// is compared from scratch when writing resumes.
    pub fn stop(&mut self) {
        self.tasks.abort_all();
        self.in_flight.clear();
        self.dirty.clear();
        self.failed.clear();
        self.wrote.clear();
        self.compared.clear();
        self.compared_with = None;
        self.recheck.clear();
        self.desired = None;
        self.retry_at = None;
    }

    /// When failed writes are tried again.
    pub fn retry_at(&self) -> Option<tokio::time::Instant> {
        self.retry_at
    }

    /// The retry time came: compare again (failed writes included).
    pub fn retry(&mut self) {
        self.retry_at = None;
        self.recheck.extend(std::mem::take(&mut self.failed).into_keys());
        self.compare_all();
    }

    /// Whether writes are in flight or waiting.
    pub fn busy(&self) -> bool {
        !self.tasks.is_empty() || !self.dirty.is_empty()
    }

    /// The next finished write; None (pending forever) while none is in flight.
    pub async fn next_done(&mut self) -> Option<Done> {
        loop {
            match self.tasks.join_next().await {
                Some(Ok(done)) => return Some(done),
                // Aborted by stop().
                Some(Err(_)) => continue,
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// What `id` carries as far as this writer knows, and the resourceVersion to write
    /// it with.
    fn base(&mut self, id: &ObjectId) -> (Value, Option<String>) {
        let cached = self.cache.get(id);
        let cached_version = cached.as_ref().and_then(|c| c.resource_version.as_deref());
        if let Some(wrote) = self.wrote.get(id) {
            if older(cached_version, &wrote.resource_version) {
                return (wrote.status.clone(), Some(wrote.resource_version.clone()));
            }
            // The cache caught up with the write (or someone wrote since).
            self.wrote.remove(id);
        }
        cached.map_or((Value::Null, None), |c| (c.status, c.resource_version))
    }

    /// Marks dirty every object whose status differs from the desired one. Looks only at
    /// the objects that can have changed since the last comparison when that is known (the
    /// entries the desired status changed, the objects the watch saw change, and the ones
    /// this writer is writing or wrote); otherwise at every object the desired status names.
    fn compare_all(&mut self) {
        let Some(desired) = self.desired.clone() else {
            return;
        };
        let started = std::time::Instant::now();
        let now = now();
        let previous = self.compared_with.replace(desired.clone());
        let touched = self.cache.touched();
        let recheck = std::mem::take(&mut self.recheck);
        let candidates = match (touched, &previous) {
            (Some(touched), Some(previous)) => changed_entries(previous, &desired).map(|changed| {
                let mut candidates: HashSet<ObjectId> = touched;
                candidates.extend(changed);
                candidates.extend(recheck);
                candidates.extend(self.in_flight.keys().cloned());
                candidates.extend(self.wrote.keys().cloned());
                candidates
            }),
            _ => None,
        };
        let mut compared = 0usize;
        let objects = match candidates {
            Some(candidates) => {
                let looked = candidates.len();
                for id in candidates {
                    if !names(&desired, &id) || !self.cache.watched(id.kind) {
                        self.forget(&id);
                        continue;
                    }
                    compared += usize::from(self.compare_one(id, &desired, previous.as_deref(), &now));
                }
                looked
            }
            None => {
                let mut named = HashSet::new();
                for id in ids(&desired) {
                    if !self.cache.watched(id.kind) {
                        continue;
                    }
                    named.insert(id.clone());
                    compared += usize::from(self.compare_one(id, &desired, previous.as_deref(), &now));
                }
                // Objects the desired status no longer names (deleted, no longer ours).
                self.dirty.retain(|id| named.contains(id));
                self.wrote.retain(|id, _| named.contains(id));
                self.compared.retain(|id, _| named.contains(id));
                named.len()
            }
        };
        self.stats.compared += compared as u64;
        tracing::debug!(
            objects,
            compared,
            dirty = self.dirty.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "status compared"
        );
    }

    /// Compares one object the desired status names, unless its entry and cached version
    /// are as they were at its last comparison and this writer has nothing of its own in
    /// flight or pending for it; says whether it compared.
    fn compare_one(&mut self, id: ObjectId, desired: &Desired, previous: Option<&Desired>, now: &str) -> bool {
        let version = self.cache.version(&id).flatten();
        if let Some(failed_at) = self.failed.get(&id) {
            if version == *failed_at {
                return false;
            }
            self.failed.remove(&id);
        }
        let settled = !self.in_flight.contains_key(&id) && !self.wrote.contains_key(&id);
        if settled
            && self.compared.get(&id) == Some(&version)
            && previous.is_some_and(|previous| same_entry(previous, desired, &id))
        {
            return false;
        }
        self.compared.insert(id.clone(), version);
        let differs = match self.in_flight.get(&id) {
            // Compared with what is being written.
            Some(writing) => desired_value(desired, &id, writing, now).is_some_and(|v| !covers(writing, &v)),
            None => {
                let (base, _) = self.base(&id);
                desired_value(desired, &id, &base, now).is_some_and(|v| !covers(&base, &v))
            }
        };
        if differs {
            self.dirty.insert(id);
        } else {
            self.dirty.remove(&id);
        }
        true
    }

    /// Forgets an object the desired status no longer names (deleted, no longer ours).
    fn forget(&mut self, id: &ObjectId) {
        self.dirty.remove(id);
        self.wrote.remove(id);
        self.compared.remove(id);
    }

    /// Starts writes of dirty objects while slots are free.
    pub fn start(&mut self) {
        let Some(desired) = self.desired.clone() else {
            return;
        };
        if self.tasks.len() >= self.limit || self.dirty.is_empty() {
            self.log_burst();
            return;
        }
        let now = now();
        let ready: Vec<ObjectId> = self
            .dirty
            .iter()
            .filter(|id| !self.in_flight.contains_key(*id))
            .take(self.limit - self.tasks.len())
            .cloned()
            .collect();
        for id in ready {
            self.dirty.remove(&id);
            let (base, resource_version) = self.base(&id);
            let Some(status) = desired_value(&desired, &id, &base, &now).filter(|v| !covers(&base, v)) else {
                continue;
            };
            let mut metadata = json!({"name": id.key.name});
            if !id.key.namespace.is_empty() {
                metadata["namespace"] = json!(id.key.namespace);
            }
            let base_version = resource_version.clone();
            if id.kind.with_resource_version()
                && let Some(rv) = resource_version
            {
                metadata["resourceVersion"] = json!(rv);
            }
            let body = json!({"metadata": metadata, "status": status});
            self.in_flight.insert(id.clone(), status.clone());
            self.burst_started.get_or_insert_with(std::time::Instant::now);
            let api = self.api.clone();
            self.tasks.spawn(async move {
                let started = tokio::time::Instant::now();
                let result = api.apply(id.clone(), body).await;
                Done { id, base_version, status, result, took: started.elapsed() }
            });
        }
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.tasks.len());
    }

    /// Records a finished write.
    pub fn complete(&mut self, done: Done) {
        self.in_flight.remove(&done.id);
        // Compared again at the next comparison, whatever the write's outcome.
        self.compared.remove(&done.id);
        self.recheck.insert(done.id.clone());
        self.stats.latency_total += done.took;
        self.stats.latency_max = self.stats.latency_max.max(done.took);
        match done.result {
            Ok(resource_version) => {
                self.stats.writes += 1;
                match resource_version {
                    Some(rv) => {
                        self.wrote.insert(done.id, Wrote { resource_version: rv, status: done.status });
                    }
                    None => {
                        self.wrote.remove(&done.id);
                    }
                }
            }
            Err(WriteError::NotFound) => {
                self.wrote.remove(&done.id);
            }
            Err(error) => {
                match error {
                    WriteError::Conflict => {
                        tracing::debug!("{}: status changed meanwhile; writing again", done.id);
                        self.stats.conflicts += 1;
                    }
                    WriteError::Other(e) => {
                        tracing::warn!("{}: writing status: {e}", done.id);
                        self.stats.errors += 1;
                    }
                    WriteError::NotFound => {}
                }
                // Written again from the cache after a second, or with the next watch event.
                self.wrote.remove(&done.id);
                self.dirty.remove(&done.id);
                self.failed.insert(done.id, done.base_version);
                self.retry_at.get_or_insert_with(|| tokio::time::Instant::now() + RETRY);
            }
        }
    }

    /// Logs the counters once a burst of writes is over.
    fn log_burst(&mut self) {
        if !self.tasks.is_empty() || !self.dirty.is_empty() {
            return;
        }
        let Some(started) = self.burst_started.take() else {
            return;
        };
        let s = &self.stats;
        let writes = s.writes - self.logged.writes;
        let latency = s.latency_total.saturating_sub(self.logged.latency_total);
        let finished = writes + (s.conflicts - self.logged.conflicts) + (s.errors - self.logged.errors);
        tracing::debug!(
            writes,
            conflicts = s.conflicts - self.logged.conflicts,
            errors = s.errors - self.logged.errors,
            burst_ms = started.elapsed().as_secs_f64() * 1e3,
            mean_write_ms = latency.as_secs_f64() * 1e3 / finished.max(1) as f64,
            max_write_ms = s.latency_max.as_secs_f64() * 1e3,
            max_in_flight = s.max_in_flight,
            "status writes"
        );
        self.logged = self.stats.clone();
    }
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The conditions as written: the old transition time is kept when the status did not
/// change.
fn conditions(desired: &[Condition], current: Option<&Value>, now: &str) -> Value {
    let current = current.and_then(Value::as_array);
    Value::Array(
        desired
            .iter()
            .map(|c| {
                let kept = current
                    .into_iter()
                    .flatten()
                    .find(|old| old.get("type").and_then(Value::as_str) == Some(c.type_.as_str()))
                    .filter(|old| old.get("status").and_then(Value::as_str) == Some(c.status.as_str()))
                    .and_then(|old| old.get("lastTransitionTime").cloned());
                json!({
                    "type": c.type_,
                    "status": c.status.as_str(),
                    "reason": c.reason,
                    "message": c.message,
                    "observedGeneration": c.observed_generation,
                    "lastTransitionTime": kept.unwrap_or_else(|| json!(now)),
                })
            })
            .collect(),
    )
}

/// True if `current` already has everything `desired` says: objects may carry more keys,
/// arrays must match element by element.
pub fn covers(current: &Value, desired: &Value) -> bool {
    match (current, desired) {
        (Value::Object(c), Value::Object(d)) => {
            d.iter().all(|(k, dv)| c.get(k).is_some_and(|cv| covers(cv, dv)) || (dv.is_null() && !c.contains_key(k)))
        }
        (Value::Array(c), Value::Array(d)) => c.len() == d.len() && c.iter().zip(d).all(|(cv, dv)| covers(cv, dv)),
        // Integers may come back as other number representations.
        (Value::Number(c), Value::Number(d)) => c.as_f64() == d.as_f64(),
        (c, d) => c == d,
    }
}

/// The desired status of a GatewayClass.
fn gateway_class_status(status: &sluice_translate::GatewayClassStatus, current: &Value, now: &str) -> Value {
    json!({
        "conditions": conditions(&status.conditions, current.get("conditions"), now),
        "supportedFeatures": status.supported_features.iter().map(|f| json!({"name": f})).collect::<Vec<_>>(),
    })
}

/// The desired `status.listeners` of a Gateway or ListenerSet.
fn listeners_status(listeners: &[sluice_translate::ListenerStatus], current: &Value, now: &str) -> Vec<Value> {
    let current_listeners = current.get("listeners").and_then(Value::as_array);
    listeners
        .iter()
        .map(|l| {
            let old = current_listeners
                .into_iter()
                .flatten()
                .find(|c| c.get("name").and_then(Value::as_str) == Some(l.name.as_str()));
            json!({
                "name": l.name,
                "supportedKinds": l.supported_kinds.iter().map(|k| json!({"group": k.group, "kind": k.kind})).collect::<Vec<_>>(),
                "attachedRoutes": l.attached_routes,
                "conditions": conditions(&l.conditions, old.and_then(|o| o.get("conditions")), now),
            })
        })
        .collect()
}

/// The desired status of a Gateway.
fn gateway_status(
    status: &sluice_translate::GatewayStatus,
    addresses: &[Address],
    current: &Value,
    now: &str,
) -> Value {
    let mut value = json!({
        "conditions": conditions(&status.conditions, current.get("conditions"), now),
        "listeners": listeners_status(&status.listeners, current, now),
    });
    if let Some(attached) = status.attached_listener_sets {
        value["attachedListenerSets"] = json!(attached);
    }
    if !addresses.is_empty() {
        value["addresses"] =
            addresses.iter().map(|a| json!({"type": a.type_, "value": a.value})).collect::<Vec<_>>().into();
    }
    value
}

/// The desired status of a ListenerSet.
fn listener_set_status(status: &sluice_translate::ListenerSetStatus, current: &Value, now: &str) -> Value {
    json!({
        "conditions": conditions(&status.conditions, current.get("conditions"), now),
        "listeners": listeners_status(&status.listeners, current, now),
    })
}

/// The desired `status.parents` of a route: other controllers' entries as they are, then
/// ours.
fn route_status(status: &RouteStatus, current: &Value, now: &str) -> Value {
    let current_parents = current.get("parents").and_then(Value::as_array);
    let mut parents: Vec<Value> = current_parents
        .into_iter()
        .flatten()
        .filter(|p| p.get("controllerName").and_then(Value::as_str) != Some(CONTROLLER_NAME))
        .cloned()
        .collect();
    for parent in &status.parents {
        let parent_ref = serde_json::to_value(&parent.parent_ref).unwrap_or(Value::Null);
        let old = current_parents.into_iter().flatten().find(|p| {
            p.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
                && p.get("parentRef").is_some_and(|r| covers(r, &parent_ref))
        });
        parents.push(json!({
            "parentRef": parent_ref,
            "controllerName": parent.controller_name,
            "conditions": conditions(&parent.conditions, old.and_then(|o| o.get("conditions")), now),
        }));
    }
    json!({ "parents": parents })
}

/// The desired `status.ancestors` of a BackendTLSPolicy: other controllers' entries as
/// they are (the list is atomic: they must come back unchanged), then ours, one per
/// Gateway.
fn policy_status(status: &PolicyStatus, current: &Value, now: &str) -> Value {
    let current_ancestors = current.get("ancestors").and_then(Value::as_array);
    let mut ancestors: Vec<Value> = current_ancestors
        .into_iter()
        .flatten()
        .filter(|a| a.get("controllerName").and_then(Value::as_str) != Some(CONTROLLER_NAME))
        .cloned()
        .collect();
    for ancestor in &status.ancestors {
        let ancestor_ref = json!({
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "namespace": ancestor.gateway.namespace,
            "name": ancestor.gateway.name,
        });
        let old = current_ancestors.into_iter().flatten().find(|a| {
            a.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
                && a.get("ancestorRef").is_some_and(|r| covers(r, &ancestor_ref))
        });
        ancestors.push(json!({
            "ancestorRef": ancestor_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": conditions(&ancestor.conditions, old.and_then(|o| o.get("conditions")), now),
        }));
    }
    json!({ "ancestors": ancestors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_translate::ConditionStatus;

    fn condition(type_: &str, status: bool) -> Condition {
        Condition {
            type_: type_.into(),
            status: if status { ConditionStatus::True } else { ConditionStatus::False },
            reason: type_.into(),
            message: String::new(),
            observed_generation: 2,
        }
    }

    #[test]
    fn transition_time_is_kept_while_the_status_stays() {
        let current = json!([
            {"type": "Accepted", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Programmed", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ]);
        let out = conditions(&[condition("Accepted", true), condition("Programmed", false)], Some(&current), "NOW");
        assert_eq!(out[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(out[1]["lastTransitionTime"], "NOW");
    }

    #[test]
    fn an_unchanged_status_is_not_written_again() {
        let current = json!({
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                            "observedGeneration": 2, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "supportedFeatures": [{"name": "Gateway"}],
        });
        let desired = sluice_translate::GatewayClassStatus {
            conditions: vec![condition("Accepted", true)],
            supported_features: vec!["Gateway".into()],
        };
        assert!(covers(&current, &gateway_class_status(&desired, &current, "NOW")));
        let changed = sluice_translate::GatewayClassStatus {
            conditions: vec![condition("Accepted", true)],
            supported_features: vec!["Gateway".into(), "HTTPRoute".into()],
        };
        assert!(!covers(&current, &gateway_class_status(&changed, &current, "NOW")));
    }

    #[test]
    fn listener_sets_and_attached_listener_sets_are_written() {
        let listener = sluice_translate::ListenerStatus {
            name: "web".into(),
            supported_kinds: vec![sluice_translate::RouteGroupKind {
                group: "gateway.networking.k8s.io".into(),
                kind: "HTTPRoute".into(),
            }],
            attached_routes: 2,
            conditions: vec![condition("Accepted", true)],
        };
        let set = sluice_translate::ListenerSetStatus {
            gateway: ObjectKey::new("infra", "gw"),
            conditions: vec![condition("Accepted", true), condition("Programmed", true)],
            listeners: vec![listener.clone()],
        };
        let out = listener_set_status(&set, &Value::Null, "NOW");
        assert_eq!(out["conditions"].as_array().unwrap().len(), 2);
        assert_eq!(out["listeners"][0]["name"], "web");
        assert_eq!(out["listeners"][0]["attachedRoutes"], 2);
        assert_eq!(out["listeners"][0]["supportedKinds"][0]["kind"], "HTTPRoute");
        let mut gateway = sluice_translate::GatewayStatus {
            conditions: vec![condition("Accepted", true)],
            listeners: vec![listener],
            attached_listener_sets: Some(1),
        };
        assert_eq!(gateway_status(&gateway, &[], &Value::Null, "NOW")["attachedListenerSets"], 1);
        gateway.attached_listener_sets = None;
        assert!(gateway_status(&gateway, &[], &Value::Null, "NOW").get("attachedListenerSets").is_none());
    }

    #[test]
    fn other_controllers_route_parents_are_kept() {
        let current = json!({"parents": [
            {"parentRef": {"name": "theirs"}, "controllerName": "example.com/other", "conditions": []},
            {"parentRef": {"name": "stale"}, "controllerName": CONTROLLER_NAME, "conditions": []},
        ]});
        let desired = RouteStatus {
            parents: vec![sluice_translate::RouteParentStatus {
                parent_ref: sluice_translate::ParentRef {
                    group: None,
                    kind: None,
                    namespace: None,
                    name: "ours".into(),
                    section_name: None,
                    port: None,
                },
                controller_name: CONTROLLER_NAME.into(),
                conditions: vec![condition("Accepted", true)],
            }],
        };
        let out = route_status(&desired, &current, "NOW");
        let parents = out["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0]["controllerName"], "example.com/other");
        assert_eq!(parents[1]["parentRef"]["name"], "ours");
    }

    /// A fake API server: records every write, keeps the objects' statuses as a watch
    /// cache would (right away, or never when `lagging`), and refuses writes of the
    /// objects in `conflicts` once each (someone else wrote meanwhile).
    #[derive(Clone, Default)]
    struct FakeApi {
        cache: FakeCache,
        calls: Arc<std::sync::Mutex<Vec<(ObjectId, Value)>>>,
        in_flight: Arc<std::sync::atomic::AtomicUsize>,
        most_in_flight: Arc<std::sync::atomic::AtomicUsize>,
        conflicts: Arc<std::sync::Mutex<HashSet<ObjectId>>>,
        version: Arc<std::sync::atomic::AtomicU64>,
        lagging: bool,
    }

    #[derive(Clone, Default)]
    struct FakeCache {
        objects: Arc<std::sync::Mutex<HashMap<ObjectId, Cached>>>,
        /// When set, the cache names the objects that changed, as the watch does.
        journal: Option<Journal>,
    }

    impl FakeCache {
        /// Puts an object as a watch event would.
        fn put(&self, id: ObjectId, cached: Cached) {
            self.objects.lock().unwrap().insert(id.clone(), cached);
            if let Some(journal) = &self.journal {
                journal.touch(id);
            }
        }
    }

    impl StatusCache for FakeCache {
        fn watched(&self, _: Kind) -> bool {
            true
        }
        fn get(&self, id: &ObjectId) -> Option<Cached> {
            self.objects.lock().unwrap().get(id).cloned()
        }
        fn touched(&self) -> Option<HashSet<ObjectId>> {
            self.journal.as_ref().and_then(Journal::take)
        }
    }

    /// A cache that counts the statuses and the versions read from it.
    #[derive(Clone)]
    struct CountingCache {
        inner: FakeCache,
        reads: Arc<std::sync::atomic::AtomicUsize>,
        versions: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl CountingCache {
        fn new(inner: FakeCache) -> Self {
            CountingCache { inner, reads: Default::default(), versions: Default::default() }
        }
    }

    impl StatusCache for CountingCache {
        fn watched(&self, _: Kind) -> bool {
            true
        }
        fn get(&self, id: &ObjectId) -> Option<Cached> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.get(id)
        }
        fn version(&self, id: &ObjectId) -> Option<Option<String>> {
            self.versions.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.get(id).map(|c| c.resource_version)
        }
        fn touched(&self) -> Option<HashSet<ObjectId>> {
            self.inner.touched()
        }
    }

    impl FakeApi {
        /// An API server whose cache names the objects that changed.
        fn journaled() -> Self {
            FakeApi {
                cache: FakeCache { journal: Some(Journal::default()), ..FakeCache::default() },
                ..Self::default()
            }
        }
        fn bump(&self) -> String {
            (self.version.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 100).to_string()
        }
        fn writes(&self) -> Vec<(ObjectId, Value)> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl StatusApi for FakeApi {
        fn apply(
            &self,
            id: ObjectId,
            body: Value,
        ) -> impl std::future::Future<Output = Result<Option<String>, WriteError>> + Send + 'static {
            use std::sync::atomic::Ordering::SeqCst;
            let api = self.clone();
            async move {
                api.calls.lock().unwrap().push((id.clone(), body.clone()));
                let now = api.in_flight.fetch_add(1, SeqCst) + 1;
                api.most_in_flight.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                api.in_flight.fetch_sub(1, SeqCst);
                let version = api.bump();
                if api.conflicts.lock().unwrap().remove(&id) {
                    let status = api.cache.get(&id).map_or(Value::Null, |c| c.status);
                    api.cache.put(id, Cached { status, resource_version: Some(version) });
                    return Err(WriteError::Conflict);
                }
                if !api.lagging {
                    let cached = Cached { status: body["status"].clone(), resource_version: Some(version.clone()) };
                    api.cache.put(id, cached);
                }
                Ok(Some(version))
            }
        }
    }

    fn route(name: &str) -> ObjectId {
        ObjectId { kind: Kind::HttpRoute, key: ObjectKey::new("apps", name) }
    }

    /// A desired status naming `routes` routes, each Accepted (or not).
    fn desired(routes: usize, accepted: bool) -> Arc<Desired> {
        let mut status = Status::default();
        for i in 0..routes {
            let parent = sluice_translate::RouteParentStatus {
                parent_ref: sluice_translate::ParentRef {
                    group: None,
                    kind: None,
                    namespace: None,
                    name: "gw".into(),
                    section_name: None,
                    port: None,
                },
                controller_name: CONTROLLER_NAME.into(),
                conditions: vec![condition("Accepted", accepted)],
            };
            status.http_routes.insert(route(&format!("r{i}")).key, RouteStatus { parents: vec![parent] });
        }
        Arc::new(Desired { status, addresses: BTreeMap::new() })
    }

    /// Runs the writer until nothing is in flight or waiting.
    async fn settle<A: StatusApi, C: StatusCache>(writer: &mut Writer<A, C>) {
        loop {
            writer.start();
            if !writer.busy() {
                return;
            }
            let done = tokio::time::timeout(Duration::from_secs(5), writer.next_done()).await;
            writer.complete(done.expect("a write finishes").expect("a write is in flight"));
        }
    }

    fn accepted(body: &Value) -> &str {
        body["status"]["parents"][0]["conditions"][0]["status"].as_str().unwrap_or_default()
    }

    #[tokio::test]
    async fn each_object_is_written_once_with_writes_in_parallel() {
        let api = FakeApi::default();
        let mut writer = Writer::new(api.clone(), api.cache.clone(), 8);
        writer.set_desired(desired(100, true));
        settle(&mut writer).await;
        let writes = api.writes();
        let distinct: HashSet<_> = writes.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(writes.len(), 100);
        assert_eq!(distinct.len(), 100);
        assert_eq!(api.most_in_flight.load(std::sync::atomic::Ordering::SeqCst), 8, "the limit, and no more");
        // The same status again (a watch event): nothing to write.
        writer.set_desired(desired(100, true));
        settle(&mut writer).await;
        assert_eq!(api.writes().len(), 100);
        assert_eq!(writer.stats.writes, 100);
    }

    #[tokio::test]
    async fn only_objects_whose_entry_or_cached_version_changed_are_compared_again() {
        let api = FakeApi::default();
        let cache = CountingCache::new(api.cache.clone());
        let mut writer = Writer::new(api.clone(), cache.clone(), 8);
        writer.set_desired(desired(50, true));
        settle(&mut writer).await;
        // Every write's completion makes its object compared once more.
        writer.set_desired(desired(50, true));
        settle(&mut writer).await;
        assert_eq!(api.writes().len(), 50);
        let reads = |cache: &CountingCache| cache.reads.swap(0, std::sync::atomic::Ordering::SeqCst);
        reads(&cache);
        // The same status again: nothing is read from the cache or written.
        writer.set_desired(desired(50, true));
        settle(&mut writer).await;
        assert_eq!(reads(&cache), 0);
        // One route's entry changed: that route alone is read (compared, then written).
        let mut changed = (*desired(50, true)).clone();
        let key = route("r7").key;
        changed.status.http_routes.insert(key.clone(), desired(8, false).status.http_routes.get(&key).unwrap().clone());
        writer.set_desired(Arc::new(changed.clone()));
        settle(&mut writer).await;
        assert_eq!(reads(&cache), 2, "compared, then read for its write");
        assert_eq!(api.writes().len(), 51);
        assert_eq!(api.writes()[50].0, route("r7"));
        // Someone else changed another route's status: its new version makes it compared
        // and written back.
        writer.set_desired(Arc::new(changed.clone()));
        settle(&mut writer).await;
        reads(&cache);
        api.cache
            .objects
            .lock()
            .unwrap()
            .insert(route("r3"), Cached { status: json!({}), resource_version: Some("1".into()) });
        writer.set_desired(Arc::new(changed));
        settle(&mut writer).await;
        assert_eq!(reads(&cache), 2);
        assert_eq!(api.writes().len(), 52);
        assert_eq!(api.writes()[51].0, route("r3"));
    }

    #[tokio::test]
    async fn a_burst_of_changes_becomes_one_more_write() {
        let api = FakeApi::default();
        let mut writer = Writer::new(api.clone(), api.cache.clone(), 4);
        writer.set_desired(desired(1, true));
        writer.start();
        // Four changes while the first write is in flight.
        for accepted in [false, true, false, false] {
            writer.set_desired(desired(1, accepted));
            writer.start();
        }
        settle(&mut writer).await;
        let writes = api.writes();
        assert_eq!(writes.len(), 2, "the write in flight, then the latest status: {writes:?}");
        assert_eq!(accepted(&writes[0].1), "True");
        assert_eq!(accepted(&writes[1].1), "False");
    }

    #[tokio::test]
    async fn a_cache_behind_the_writes_does_not_cause_writes_again() {
        let api = FakeApi { lagging: true, ..FakeApi::default() };
        let mut writer = Writer::new(api.clone(), api.cache.clone(), 4);
        writer.set_desired(desired(3, true));
        settle(&mut writer).await;
        writer.set_desired(desired(3, true));
        settle(&mut writer).await;
        assert_eq!(api.writes().len(), 3);
        // A change is written even though the cache never showed the first write.
        writer.set_desired(desired(3, false));
        settle(&mut writer).await;
        assert_eq!(api.writes().len(), 6);
    }

    #[tokio::test]
    async fn a_conflict_is_written_again_when_the_cache_shows_the_new_version() {
        let api = FakeApi::default();
        api.conflicts.lock().unwrap().insert(route("r1"));
        let mut writer = Writer::new(api.clone(), api.cache.clone(), 4);
        writer.set_desired(desired(2, true));
        settle(&mut writer).await;
        assert_eq!(writer.stats.conflicts, 1);
        assert_eq!(api.writes().len(), 3 - 1, "r1 waits for its watch event");
        assert!(writer.retry_at().is_some());
        // The watch event of the other writer's change.
        writer.set_desired(desired(2, true));
        settle(&mut writer).await;
        let r1: Vec<_> = api.writes().into_iter().filter(|(id, _)| *id == route("r1")).collect();
        assert_eq!(r1.len(), 2);
        assert_eq!(
            api.cache.get(&route("r1")).map(|c| accepted(&json!({"status": c.status})).to_string()),
            Some("True".into())
        );
    }

    #[tokio::test]
    async fn a_failed_write_is_not_retried_before_its_time() {
        let api = FakeApi::default();
        let mut writer = Writer::new(api.clone(), api.cache.clone(), 4);
        writer.set_desired(desired(1, true));
        writer.start();
        let done = writer.next_done().await.unwrap();
        // As if the API server had refused it.
        writer.complete(Done { result: Err(WriteError::Other("refused".into())), ..done });
        api.cache.objects.lock().unwrap().clear();
        writer.set_desired(desired(1, true));
        settle(&mut writer).await;
        assert_eq!(api.writes().len(), 1, "waits for the retry time");
        writer.retry();
        settle(&mut writer).await;
        assert_eq!(api.writes().len(), 2);
        assert_eq!(writer.stats.errors, 1);
    }

    #[tokio::test]
    async fn a_writer_that_stopped_leading_writes_nothing() {
        let api = FakeApi::default();
        let mut writer = Writer::new(api.clone(), api.cache.clone(), 4);
        writer.set_desired(desired(5, true));
        writer.stop();
        settle(&mut writer).await;
        assert!(api.writes().is_empty());
    }

    /// `desired` with route `name`'s entry Accepted (or not): a copy sharing the base.
    fn with_route(desired: &Desired, name: &str, accepted: bool) -> Arc<Desired> {
        let mut changed = desired.clone();
        let key = route(name).key;
        let entry = self::desired(1, accepted).status.http_routes.get(&route("r0").key).cloned().unwrap();
        changed.status.http_routes.insert(key, entry);
        Arc::new(changed)
    }

    #[tokio::test]
    async fn with_a_journal_a_pass_looks_only_at_changed_entries_and_touched_objects() {
        use std::sync::atomic::Ordering::SeqCst;
        let api = FakeApi::journaled();
        let cache = CountingCache::new(api.cache.clone());
        let mut writer = Writer::new(api.clone(), cache.clone(), 8);
        let first = desired(1000, true);
        writer.set_desired(first.clone());
        settle(&mut writer).await;
        writer.set_desired(first.clone());
        settle(&mut writer).await;
        assert_eq!(api.writes().len(), 1000);
        let looked = |cache: &CountingCache| cache.versions.swap(0, SeqCst);
        looked(&cache);
        // The same status again (a watch event of some other object): nothing is looked at.
        writer.set_desired(first.clone());
        settle(&mut writer).await;
        assert_eq!(looked(&cache), 0);
        // One route's entry changed: that route alone is looked at and written.
        let second = with_route(&first, "r7", false);
        writer.set_desired(second.clone());
        settle(&mut writer).await;
        assert_eq!(looked(&cache), 1);
        assert_eq!(api.writes().len(), 1001);
        assert_eq!(api.writes()[1000].0, route("r7"));
        // Its write's watch event: r7 is looked at again, and found written.
        writer.set_desired(second.clone());
        settle(&mut writer).await;
        assert_eq!(looked(&cache), 1);
        assert_eq!(api.writes().len(), 1001);
        // Someone else changed r3's status: the watch names it, it is written back.
        api.cache.put(route("r3"), Cached { status: json!({}), resource_version: Some("1".into()) });
        writer.set_desired(second.clone());
        settle(&mut writer).await;
        assert_eq!(looked(&cache), 1);
        assert_eq!(api.writes().len(), 1002);
        assert_eq!(api.writes()[1001].0, route("r3"));
        writer.set_desired(second.clone());
        settle(&mut writer).await;
        // A route no longer named is forgotten, not written; a watch event of an object the
        // desired status does not name writes nothing either.
        let mut third = (*second).clone();
        third.status.http_routes.remove(&route("r5").key);
        api.cache.put(route("elsewhere"), Cached { status: json!({}), resource_version: Some("2".into()) });
        writer.set_desired(Arc::new(third.clone()));
        settle(&mut writer).await;
        assert_eq!(api.writes().len(), 1002);
        assert!(!writer.compared.contains_key(&route("r5")));
        // Many changes, folded into new bases along the way (then one whole pass each):
        // every change is written once, and the passes look at far fewer than all objects.
        looked(&cache);
        let mut current = Arc::new(third);
        for i in 0..200 {
            current = with_route(&current, &format!("r{}", 10 + i % 50), (i / 50) % 2 == 1);
            writer.set_desired(current.clone());
            settle(&mut writer).await;
        }
        assert_eq!(api.writes().len(), 1002 + 200);
        let looked_at = looked(&cache);
        assert!(looked_at < 10 * 1000, "{looked_at} objects looked at for 200 changes of 1000");
    }

    #[tokio::test]
    async fn with_a_journal_a_failed_write_is_retried_and_a_stopped_writer_compares_all_again() {
        let api = FakeApi::journaled();
        let mut writer = Writer::new(api.clone(), api.cache.clone(), 4);
        let first = desired(3, true);
        writer.set_desired(first.clone());
        settle(&mut writer).await;
        let changed = with_route(&first, "r1", false);
        writer.set_desired(changed.clone());
        writer.start();
        let before = api.cache.get(&route("r1")).unwrap();
        let done = writer.next_done().await.unwrap();
        // As if the API server had refused it: the cache keeps what it had.
        api.cache.objects.lock().unwrap().insert(route("r1"), before);
        writer.complete(Done { result: Err(WriteError::Other("refused".into())), ..done });
        writer.set_desired(changed.clone());
        settle(&mut writer).await;
        assert_eq!(api.writes().len(), 4, "waits for the retry time");
        writer.retry();
        settle(&mut writer).await;
        assert_eq!(api.writes().len(), 5, "written at the retry, though nothing else changed");
        // Stopped (no longer leading) and started again: everything is compared.
        writer.stop();
        api.cache.objects.lock().unwrap().clear();
        writer.set_desired(changed);
        settle(&mut writer).await;
        assert_eq!(api.writes().len(), 8);
    }

    #[test]
    fn a_journal_names_what_was_touched_and_past_its_limit_everything() {
        let journal = Journal::default();
        assert_eq!(journal.take(), None, "everything at the start");
        assert_eq!(journal.take(), Some(HashSet::new()));
        journal.touch(route("a"));
        journal.touch(route("a"));
        assert_eq!(journal.take(), Some(HashSet::from([route("a")])));
        for i in 0..=Journal::LIMIT {
            journal.touch(route(&format!("r{i}")));
        }
        assert_eq!(journal.take(), None);
        journal.touch(route("b"));
        journal.touch_all();
        assert_eq!(journal.take(), None, "a relist");
        assert_eq!(journal.take(), Some(HashSet::new()));
    }
}
