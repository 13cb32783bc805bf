//! Changes that touch only routes: the last output is patched instead of translated.
//!
//! ```text
//!  before, after, last Output ─► routes_only ── None ─► translate(after)
//!                                    │ Some(RoutePatch): per changed route, the fragment it
//!                                    │ contributed (old) and contributes now (new)
//!                                    ▼
//!  snapshot of each of          ─► patch_snapshot (in place): old entries out, new ones in at
//!  patch.gateways()                their order key, cluster use counts, a cluster in or out;
//!                                  returns the Edits it made (their delta: Edits::delta)
//!  Status                        ─► patch_status: the routes' status, attachedRoutes
//! ```
//!
//! A route's fragment (`routes::Fragment`) depends on the route, the Gateway plans and the
//! index, never on other routes. When nothing but routes changed, the plans and the index
//! are what the last translation had, so the old version of a changed route contributed
//! exactly its fragment computed now, and the output of a full translation is the last one
//! minus the old fragments plus the new ones. Entries go in at their order key (`Orders`:
//! kept per listener, parallel to the snapshot's lists), which a stable sort would give
//! them. The property test `tests/incremental.rs` checks the result against a full
//! translation after every step.
//!
//! Not patched (a full translation instead): more than [`MAX_CHANGED`] routes at once, any
//! BackendTLSPolicy in the World (its ancestors and the backend client certificate follow
//! which routes use which Service), a changed route that reads the clock (a certificate's
//! validity), and a changed route whose namespace/name is held twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use sluice_snapshot::edits::{Edits, ListEdits};
use sluice_snapshot::{Protocol, Snapshot, TcpRoute, UdpRoute};

use crate::gateways::GatewayPlan;
use crate::incremental::{differing, same_but_routes_and_slices, same_objects};
use crate::index::ObjectKey;
use crate::l4routes::L4Rule;
use crate::routes::{Fragment, Route};
use crate::translation::{Orders, Translation};
use crate::{Output, Status, World};

/// The most routes one patch takes; more changed at once are translated in full.
pub const MAX_CHANGED: usize = 64;

/// The route changes between two Worlds that differ only in routes, as fragments to take
/// out of and put into the last output.
pub struct RoutePatch {
    changes: Vec<Change>,
    /// Per Gateway of ours, per listener of its plan: where it is.
    listeners: BTreeMap<ObjectKey, Vec<ListenerAt>>,
}

/// Which status map a route's status lives in.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Http,
    Grpc,
    Tcp,
    Udp,
    Tls,
}

struct Change {
    kind: Kind,
    key: ObjectKey,
    /// What the route contributed (None: it was not there, or had no parent of ours).
    old: Option<Fragment>,
    /// What it contributes now.
    new: Option<Fragment>,
}

/// Where one listener of a plan is.
struct ListenerAt {
    status: StatusAt,
    /// Its index among the snapshot's listeners (served listeners only).
    snapshot: Option<usize>,
}

enum StatusAt {
    /// `status.listeners[i]` of the Gateway.
    Gateway(usize),
    /// `status.listeners[i]` of a ListenerSet.
    ListenerSet(ObjectKey, usize),
}

/// The patch from `before` (translated or patched last, into `output`) to `after`, if
/// only routes differ and the change qualifies (see the module's documentation); None
/// when `after` must be translated in full.
pub fn routes_only(before: &World, after: &World, output: &Output) -> Option<RoutePatch> {
    let same = after.backend_tls_policies.is_empty()
        && same_but_routes_and_slices(before, after, output.next_change_at)
        && same_objects(&before.endpoint_slices, &after.endpoint_slices);
    if !same {
        return None;
    }
    let http = changed_routes(&before.http_routes, &after.http_routes)?;
    let grpc = changed_routes(&before.grpc_routes, &after.grpc_routes)?;
    let tcp = changed_routes(&before.tcp_routes, &after.tcp_routes)?;
    let udp = changed_routes(&before.udp_routes, &after.udp_routes)?;
    let tls = changed_routes(&before.tls_routes, &after.tls_routes)?;
    let total = http.len() + grpc.len() + tcp.len() + udp.len() + tls.len();
    if total == 0 || total > MAX_CHANGED {
        return None;
    }
    let mut pass = Translation::new(after, &mut BTreeMap::new());
    let clock = pass.index.next_change.get();
    let mut changes = Vec::with_capacity(total);
    fragments(&mut pass, Kind::Http, http, &mut changes);
    fragments(&mut pass, Kind::Grpc, grpc, &mut changes);
    fragments(&mut pass, Kind::Tcp, tcp, &mut changes);
    fragments(&mut pass, Kind::Udp, udp, &mut changes);
    fragments(&mut pass, Kind::Tls, tls, &mut changes);
    if pass.index.next_change.get() != clock {
        return None;
    }
    let listeners = pass.plans.iter().map(|(key, plan)| (key.clone(), listeners_of(plan))).collect();
    Some(RoutePatch { changes, listeners })
}

/// The changed routes of one kind: (key, old version, new version); None if a changed
/// route's namespace/name is held by more than one object on either side.
#[allow(clippy::type_complexity)]
fn changed_routes<'a, R: kube::Resource>(
    before: &'a [Arc<R>],
    after: &'a [Arc<R>],
) -> Option<Vec<(ObjectKey, Option<&'a R>, Option<&'a R>)>> {
    // Only the middles that differ are compared: an object that moved out of them (in one
    // list's middle, the other's shared part) is seen as removed or added, and the check
    // of the keys below then asks for a full translation.
    let (before_middle, after_middle) = differing(before, after);
    if before_middle.is_empty() && after_middle.is_empty() {
        return Some(Vec::new());
    }
    let before_set: HashSet<*const R> = before_middle.iter().map(Arc::as_ptr).collect();
    let after_set: HashSet<*const R> = after_middle.iter().map(Arc::as_ptr).collect();
    let mut changed: BTreeMap<ObjectKey, (Option<&R>, Option<&R>)> = BTreeMap::new();
    for route in before_middle.iter().filter(|r| !after_set.contains(&Arc::as_ptr(r))) {
        let entry = changed.entry(ObjectKey::of(route.as_ref())).or_default();
        if entry.0.replace(route.as_ref()).is_some() {
            return None;
        }
    }
    for route in after_middle.iter().filter(|r| !before_set.contains(&Arc::as_ptr(r))) {
        let entry = changed.entry(ObjectKey::of(route.as_ref())).or_default();
        if entry.1.replace(route.as_ref()).is_some() {
            return None;
        }
    }
    if changed.len() > MAX_CHANGED {
        return None;
    }
    // An unchanged object under a changed key: the two would compete for one status.
    // Every object is looked at; names are compared first (no hashing per object).
    let keys: HashSet<(&str, &str)> = changed.keys().map(|k| (k.namespace.as_str(), k.name.as_str())).collect();
    let names: HashSet<&str> = changed.keys().map(|k| k.name.as_str()).collect();
    let mut held: HashMap<(&str, &str), usize> = HashMap::new();
    for route in before.iter().chain(after) {
        let meta = route.meta();
        let name = meta.name.as_deref().unwrap_or_default();
        if !names.iter().any(|n| *n == name) {
            continue;
        }
        let key = (meta.namespace.as_deref().unwrap_or("default"), name);
        if keys.contains(&key) {
            *held.entry(key).or_default() += 1;
        }
    }
    for (key, (old, new)) in &changed {
        let expected = usize::from(old.is_some()) + usize::from(new.is_some());
        if held.get(&(key.namespace.as_str(), key.name.as_str())).copied().unwrap_or_default() != expected {
            return None;
        }
    }
    Some(changed.into_iter().map(|(key, (old, new))| (key, old, new)).collect())
}

fn fragments<R: Route>(
    pass: &mut Translation<'_>,
    kind: Kind,
    routes: Vec<(ObjectKey, Option<&R>, Option<&R>)>,
    changes: &mut Vec<Change>,
) {
    for (key, old, new) in routes {
        let old = old.and_then(|route| pass.route_fragment(route));
        let new = new.and_then(|route| pass.route_fragment(route));
        changes.push(Change { kind, key, old, new });
    }
}

fn listeners_of(plan: &GatewayPlan<'_>) -> Vec<ListenerAt> {
    let mut own = 0;
    let mut served = 0;
    let mut at = Vec::with_capacity(plan.listeners.len());
    for (index, listener) in plan.listeners.iter().enumerate() {
        let status = match listener.owner.and_then(|set| plan.listener_sets.get(set)) {
            Some(set) => StatusAt::ListenerSet(set.key.clone(), index - set.listeners.start),
            None => {
                own += 1;
                StatusAt::Gateway(own - 1)
            }
        };
        let snapshot = listener.serves().then(|| {
            served += 1;
            served - 1
        });
        at.push(ListenerAt { status, snapshot });
    }
    at
}

impl RoutePatch {
    /// How many routes changed.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether no route changed (never true for a patch `routes_only` returns).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The Gateways whose snapshot the patch changes.
    pub fn gateways(&self) -> BTreeSet<ObjectKey> {
        let mut gateways = BTreeSet::new();
        for fragment in self.changes.iter().flat_map(|c| c.old.iter().chain(c.new.iter())) {
            gateways.extend(fragment.clusters.iter().map(|(gateway, _)| gateway.clone()));
            let placements = &fragment.placements;
            gateways.extend(placements.http.keys().map(|(gateway, _)| gateway.clone()));
            gateways.extend(placements.l4.keys().map(|(gateway, _)| gateway.clone()));
            gateways.extend(placements.tls.keys().map(|(gateway, _)| gateway.clone()));
        }
        gateways
    }

    /// Patches `gateway`'s snapshot (as the last output had it; one of
    /// [`RoutePatch::gateways`]) in place, and the order keys kept in `output`; returns
    /// where the snapshot's lists were edited (`Edits::delta` makes the delta of them).
    pub fn patch_snapshot(&self, output: &mut Output, gateway: &ObjectKey, snapshot: &mut Snapshot) -> Edits {
        let mut edits = Edits::new(snapshot);
        let Some(orders) = output.orders.get_mut(gateway) else { return edits };
        let mut at = Patching { listeners: self.listeners.get(gateway), orders, snapshot, edits: &mut edits, gateway };
        for change in &self.changes {
            if let Some(old) = &change.old {
                at.remove(old);
            }
            if let Some(new) = &change.new {
                at.add(new);
            }
        }
        edits
    }

    /// Patches the status: the changed routes' own and the listeners' `attachedRoutes`.
    pub fn patch_status(&self, status: &mut Status) {
        for change in &self.changes {
            let routes = match change.kind {
                Kind::Http => &mut status.http_routes,
                Kind::Grpc => &mut status.grpc_routes,
                Kind::Tcp => &mut status.tcp_routes,
                Kind::Udp => &mut status.udp_routes,
                Kind::Tls => &mut status.tls_routes,
            };
            routes.remove(&change.key);
            if let Some(new) = &change.new {
                routes.insert(change.key.clone(), new.status.clone());
            }
            for (fragment, step) in [(&change.old, -1), (&change.new, 1)] {
                for (gateway, listener) in fragment.iter().flat_map(|f| f.attached.iter()) {
                    if let Some(count) = self.attached_routes(status, gateway, *listener) {
                        *count += step;
                    }
                }
            }
        }
    }

    fn attached_routes<'s>(&self, status: &'s mut Status, gateway: &ObjectKey, listener: usize) -> Option<&'s mut i32> {
        let listener = match &self.listeners.get(gateway)?.get(listener)?.status {
            StatusAt::Gateway(index) => status.gateways.get_mut(gateway)?.listeners.get_mut(*index)?,
            StatusAt::ListenerSet(set, index) => status.listener_sets.get_mut(set)?.listeners.get_mut(*index)?,
        };
        Some(&mut listener.attached_routes)
    }
}

/// One Gateway's snapshot being patched, with its order keys and the edits made so far.
struct Patching<'p> {
    gateway: &'p ObjectKey,
    listeners: Option<&'p Vec<ListenerAt>>,
    orders: &'p mut Orders,
    snapshot: &'p mut Snapshot,
    edits: &'p mut Edits,
}

impl Patching<'_> {
    /// The index of plan listener `listener` among the snapshot's listeners, if served.
    fn served(&self, listener: usize) -> Option<usize> {
        let at = self.listeners?.get(listener)?.snapshot?;
        (at < self.snapshot.listeners.len() && at < self.edits.listeners.len()).then_some(at)
    }

    /// Takes a route's old contribution out.
    fn remove(&mut self, fragment: &Fragment) {
        for cluster in fragment.clusters.iter().filter(|(g, _)| g == self.gateway).flat_map(|(_, c)| c) {
            let Some(uses) = self.orders.cluster_uses.get_mut(&cluster.name) else { continue };
            *uses -= 1;
            if *uses == 0 {
                self.orders.cluster_uses.remove(&cluster.name);
                let clusters = &mut self.snapshot.clusters;
                if let Ok(at) = clusters.binary_search_by(|c| c.name.as_str().cmp(&cluster.name)) {
                    self.edits.clusters.splice(clusters.len(), at, 1);
                    clusters.remove(at);
                }
            }
        }
        for ((_, listener), entries) in fragment.placements.http.iter().filter(|((g, _), _)| g == self.gateway) {
            let Some(at) = self.served(*listener) else { continue };
            let (served, edits) = (&mut self.snapshot.listeners[at], &mut self.edits.listeners[at]);
            remove_entries(&mut self.orders.http, *listener, &mut served.http_routes, &mut edits.http_routes, entries);
        }
        for ((_, listener), entries) in fragment.placements.l4.iter().filter(|((g, _), _)| g == self.gateway) {
            let Some(at) = self.served(*listener) else { continue };
            let (served, edits) = (&mut self.snapshot.listeners[at], &mut self.edits.listeners[at]);
            let Some(keys) = self.orders.l4.get_mut(listener) else { continue };
            for (age, rules) in entries {
                let start = keys.partition_point(|k| k < age);
                let end = (start + rules.len()).min(keys.len());
                keys.drain(start..end);
                if served.protocol == Protocol::Udp as i32 {
                    let list = &mut served.udp_routes;
                    let end = end.min(list.len());
                    edits.udp_routes.splice(list.len(), start, end.saturating_sub(start));
                    list.drain(start.min(end)..end);
                } else {
                    let list = &mut served.tcp_routes;
                    let end = end.min(list.len());
                    edits.tcp_routes.splice(list.len(), start, end.saturating_sub(start));
                    list.drain(start.min(end)..end);
                }
            }
            if keys.is_empty() {
                self.orders.l4.remove(listener);
            }
        }
        for ((_, listener), entries) in fragment.placements.tls.iter().filter(|((g, _), _)| g == self.gateway) {
            let Some(at) = self.served(*listener) else { continue };
            let (served, edits) = (&mut self.snapshot.listeners[at], &mut self.edits.listeners[at]);
            remove_entries(&mut self.orders.tls, *listener, &mut served.tls_routes, &mut edits.tls_routes, entries);
        }
    }

    /// Puts a route's new contribution in, each entry after those with an equal or lower
    /// order key (where a stable sort of every entry would put it).
    fn add(&mut self, fragment: &Fragment) {
        for cluster in fragment.clusters.iter().filter(|(g, _)| g == self.gateway).flat_map(|(_, c)| c) {
            let uses = self.orders.cluster_uses.entry(cluster.name.clone()).or_default();
            *uses += 1;
            let clusters = &mut self.snapshot.clusters;
            if *uses == 1
                && let Err(at) = clusters.binary_search_by(|c| c.name.as_str().cmp(&cluster.name))
            {
                self.edits.clusters.splice(clusters.len(), at, 0);
                clusters.insert(at, cluster.as_ref().clone());
            }
        }
        for ((_, listener), entries) in fragment.placements.http.iter().filter(|((g, _), _)| g == self.gateway) {
            let Some(at) = self.served(*listener) else { continue };
            let (served, edits) = (&mut self.snapshot.listeners[at], &mut self.edits.listeners[at]);
            let keys = self.orders.http.entry(*listener).or_default();
            insert_entries(keys, &mut served.http_routes, &mut edits.http_routes, entries);
        }
        for ((_, listener), entries) in fragment.placements.l4.iter().filter(|((g, _), _)| g == self.gateway) {
            let Some(at) = self.served(*listener) else { continue };
            let (served, edits) = (&mut self.snapshot.listeners[at], &mut self.edits.listeners[at]);
            let keys = self.orders.l4.entry(*listener).or_default();
            for (age, rules) in entries {
                let at = keys.partition_point(|k| k <= age);
                keys.splice(at..at, std::iter::repeat_n(age.clone(), rules.len()));
                let rules = rules.iter().cloned();
                if served.protocol == Protocol::Udp as i32 {
                    let list = &mut served.udp_routes;
                    let at = at.min(list.len());
                    edits.udp_routes.splice(list.len(), at, 0);
                    list.splice(at..at, rules.map(|L4Rule { name, backends }| UdpRoute { name, backends }));
                } else {
                    let list = &mut served.tcp_routes;
                    let at = at.min(list.len());
                    edits.tcp_routes.splice(list.len(), at, 0);
                    list.splice(at..at, rules.map(|L4Rule { name, backends }| TcpRoute { name, backends }));
                }
            }
        }
        for ((_, listener), entries) in fragment.placements.tls.iter().filter(|((g, _), _)| g == self.gateway) {
            let Some(at) = self.served(*listener) else { continue };
            let (served, edits) = (&mut self.snapshot.listeners[at], &mut self.edits.listeners[at]);
            let keys = self.orders.tls.entry(*listener).or_default();
            insert_entries(keys, &mut served.tls_routes, &mut edits.tls_routes, entries);
        }
    }
}

/// Takes `entries` out of a listener's list (`routes`, with its order keys kept under
/// `listener` in `orders`); drops the keys once the list is empty.
fn remove_entries<O: Ord, R: PartialEq>(
    orders: &mut BTreeMap<usize, Vec<O>>,
    listener: usize,
    routes: &mut Vec<R>,
    edits: &mut ListEdits,
    entries: &[(O, R)],
) {
    let Some(keys) = orders.get_mut(&listener) else { return };
    for (order, route) in entries {
        let start = keys.partition_point(|k| k < order);
        let found = (start..keys.len()).take_while(|&i| keys[i] == *order).find(|&i| routes.get(i) == Some(route));
        if let Some(at) = found {
            keys.remove(at);
            edits.splice(routes.len(), at, 1);
            routes.remove(at);
        }
    }
    if keys.is_empty() {
        orders.remove(&listener);
    }
}

/// Puts `entries` into a listener's list (`routes`, parallel to `keys`), each after those
/// with an equal or lower order key.
fn insert_entries<O: Ord + Clone, R: Clone>(
    keys: &mut Vec<O>,
    routes: &mut Vec<R>,
    edits: &mut ListEdits,
    entries: &[(O, R)],
) {
    for (order, route) in entries {
        let at = keys.partition_point(|k| k <= order);
        keys.insert(at, order.clone());
        let at = at.min(routes.len());
        edits.splice(routes.len(), at, 0);
        routes.insert(at, route.clone());
    }
}
