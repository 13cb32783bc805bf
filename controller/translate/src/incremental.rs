//! Changes that need no translation: when only EndpointSlices changed between two
//! Worlds, every route, listener and status stays what it was, and only the endpoints of
//! the clusters of the Services whose slices changed are recomputed.
//!
//! ```text
//!  before, after ─► endpoints_only ── None ─► translate(after)   (anything else changed)
//!                        │ Some(Services whose slices changed)
//!                        ▼
//!  each published Snapshot ─► refresh_endpoints ─► the same Snapshot edited in place:
//!                                                  those clusters' endpoints recomputed
//!                                                  (Edits say which, for the delta)
//! ```
//!
//! The result equals a full translation of `after` (a property test drives random
//! changes and compares after every step): endpoints are the only thing translation reads
//! from EndpointSlices, and objects are compared by identity (`Arc::ptr_eq`), so an
//! object replaced by an equal copy merely takes the full path.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use sluice_snapshot::Snapshot;
use sluice_snapshot::edits::Edits;

use crate::World;
use crate::backends::{endpoints, find_port};
use crate::index::{ObjectKey, SERVICE_NAME_LABEL};

/// The Services whose EndpointSlices differ between `before` (translated last, with
/// `next_change_at` from its output) and `after`, if nothing else differs that
/// translation reads; None when `after` must be translated in full.
pub fn endpoints_only(before: &World, after: &World, next_change_at: Option<i64>) -> Option<BTreeSet<ObjectKey>> {
    let same = same_but_routes_and_slices(before, after, next_change_at)
        && same_objects(&before.http_routes, &after.http_routes)
        && same_objects(&before.grpc_routes, &after.grpc_routes)
        && same_objects(&before.tcp_routes, &after.tcp_routes)
        && same_objects(&before.udp_routes, &after.udp_routes)
        && same_objects(&before.tls_routes, &after.tls_routes);
    if !same {
        return None;
    }
    let mut services = BTreeSet::new();
    for slice in changed_objects(&before.endpoint_slices, &after.endpoint_slices) {
        if let Some(service) = service_of(slice) {
            services.insert(service);
        }
    }
    Some(services)
}

/// Whether `snapshot` has a cluster of one of `services` (whose endpoints
/// [`refresh_endpoints`] would recompute): a look at its clusters' names, no copy.
pub fn endpoints_concern(services: &BTreeSet<ObjectKey>, snapshot: &Snapshot) -> bool {
    snapshot.clusters.iter().any(|c| cluster_service(&c.name).is_some_and(|(service, ..)| services.contains(&service)))
}

/// Recomputes, in place, the endpoints of `snapshot`'s clusters of `services` from
/// `world`'s EndpointSlices, and says which clusters it replaced (none when no endpoint
/// changed): the delta follows from the edits, as for a route patch. Only the clusters of
/// `services` are looked at beyond their names.
pub fn refresh_endpoints(world: &World, services: &BTreeSet<ObjectKey>, snapshot: &mut Snapshot) -> Edits {
    let mut edits = Edits::new(snapshot);
    if !endpoints_concern(services, snapshot) {
        return edits;
    }
    let concerned = |name: &str| cluster_service(name).filter(|(service, ..)| services.contains(service));
    let mut slices: HashMap<ObjectKey, Vec<&EndpointSlice>> = HashMap::new();
    for slice in &world.endpoint_slices {
        if let Some(service) = service_of(slice).filter(|s| services.contains(s)) {
            slices.entry(service).or_default().push(slice);
        }
    }
    let found: HashMap<ObjectKey, &k8s_openapi::api::core::v1::Service> = world
        .services
        .iter()
        .map(|s| (ObjectKey::of(s.as_ref()), s.as_ref()))
        .filter(|(key, _)| services.contains(key))
        .collect();
    let len = snapshot.clusters.len();
    for (at, cluster) in snapshot.clusters.iter_mut().enumerate() {
        let Some((service, port, udp)) = concerned(&cluster.name) else { continue };
        // The Service is unchanged, so the port the cluster was built from is still there.
        let Some(service_port) = found.get(&service).and_then(|s| find_port(s, port, udp)) else { continue };
        let port_name = service_port.name.as_deref().unwrap_or_default();
        let endpoints = endpoints(slices.get(&service).map(Vec::as_slice).unwrap_or_default(), port_name);
        if endpoints != cluster.endpoints {
            cluster.endpoints = endpoints;
            edits.clusters.splice(len, at, 1);
        }
    }
    edits
}

/// The Service of an EndpointSlice (label `kubernetes.io/service-name`).
fn service_of(slice: &EndpointSlice) -> Option<ObjectKey> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ObjectKey::new(ObjectKey::of(slice).namespace, service.clone()))
}

/// The Service, port and UDP-ness a cluster was built from, read back from its name
/// (`backends::cluster_name`, with `/udp` or `/grpc` appended for those variants).
fn cluster_service(name: &str) -> Option<(ObjectKey, i32, bool)> {
    let mut parts = name.strip_prefix("service/")?.split('/');
    let (namespace, service) = (parts.next()?, parts.next()?);
    if parts.next()? != "port" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    let udp = match parts.next() {
        None | Some("grpc") => false,
        Some("udp") => true,
        Some(_) => return None,
    };
    parts.next().is_none().then(|| (ObjectKey::new(namespace, service), port, udp))
}

/// Whether two Worlds hold the same objects (by identity) of every kind but the routes
/// and EndpointSlices, and translate alike on the clock (see [`same_clock_answers`]):
/// what both fast paths require besides their own kind's changes.
pub(crate) fn same_but_routes_and_slices(before: &World, after: &World, next_change_at: Option<i64>) -> bool {
    same_clock_answers(before.now, after.now, next_change_at)
        && before.crd_bundle_version == after.crd_bundle_version
        && same_objects(&before.gateway_classes, &after.gateway_classes)
        && same_objects(&before.gateways, &after.gateways)
        && same_objects(&before.listener_sets, &after.listener_sets)
        && same_objects(&before.reference_grants, &after.reference_grants)
        && same_objects(&before.backend_tls_policies, &after.backend_tls_policies)
        && same_objects(&before.services, &after.services)
        && same_objects(&before.secrets, &after.secrets)
        && same_objects(&before.config_maps, &after.config_maps)
        && same_objects(&before.namespaces, &after.namespaces)
        && same_objects(&before.proxy_configs, &after.proxy_configs)
}

/// Whether a translation at `after` answers every clock-dependent question (certificate
/// validity) as one at `before` did: no validity boundary (`next_change_at`) lies between.
fn same_clock_answers(before: Option<i64>, after: Option<i64>, next_change_at: Option<i64>) -> bool {
    match (before, after) {
        (None, None) => true,
        (Some(before), Some(after)) => after >= before && next_change_at.is_none_or(|at| after < at),
        _ => false,
    }
}

/// Whether two lists hold the same objects (by identity), in any order.
pub(crate) fn same_objects<T>(before: &[Arc<T>], after: &[Arc<T>]) -> bool {
    if before.len() != after.len() {
        return false;
    }
    let (before, after) = differing(before, after);
    if before.is_empty() {
        return true;
    }
    let mut before: Vec<*const T> = before.iter().map(Arc::as_ptr).collect();
    let mut after: Vec<*const T> = after.iter().map(Arc::as_ptr).collect();
    before.sort_unstable();
    after.sort_unstable();
    before == after
}

/// The two lists without the longest prefix and suffix they share (by identity): a
/// change usually edits a few objects in place, so only those are left to compare.
pub(crate) fn differing<'a, T>(before: &'a [Arc<T>], after: &'a [Arc<T>]) -> (&'a [Arc<T>], &'a [Arc<T>]) {
    let prefix = before.iter().zip(after).take_while(|(a, b)| Arc::ptr_eq(a, b)).count();
    let (before, after) = (&before[prefix..], &after[prefix..]);
    let suffix = before.iter().rev().zip(after.iter().rev()).take_while(|(a, b)| Arc::ptr_eq(a, b)).count();
    (&before[..before.len() - suffix], &after[..after.len() - suffix])
}

/// The objects in one list and not the other (by identity), from both sides.
fn changed_objects<'a, T>(before: &'a [Arc<T>], after: &'a [Arc<T>]) -> Vec<&'a T> {
    let (before, after) = differing(before, after);
    if before.is_empty() && after.is_empty() {
        return Vec::new();
    }
    let mut counts: HashMap<*const T, (isize, &'a T)> = HashMap::new();
    for object in before {
        counts.entry(Arc::as_ptr(object)).or_insert((0, object.as_ref())).0 += 1;
    }
    for object in after {
        counts.entry(Arc::as_ptr(object)).or_insert((0, object.as_ref())).0 -= 1;
    }
    counts.into_values().filter(|(count, _)| *count != 0).map(|(_, object)| object).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::cluster_name;

    #[test]
    fn cluster_names_read_back() {
        let key = ObjectKey::new("apps", "web");
        assert_eq!(cluster_service(&cluster_name(&key, 8080)), Some((key.clone(), 8080, false)));
        assert_eq!(cluster_service(&format!("{}/udp", cluster_name(&key, 53))), Some((key.clone(), 53, true)));
        assert_eq!(cluster_service(&format!("{}/grpc", cluster_name(&key, 9000))), Some((key, 9000, false)));
        for bad in
            ["", "service/a", "service/a/b/port/x", "service/a/b/pork/1", "service/a/b/port/1/tcp", "x/a/b/port/1"]
        {
            assert_eq!(cluster_service(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_clock_matters_only_across_a_validity_boundary() {
        assert!(same_clock_answers(None, None, None));
        assert!(same_clock_answers(Some(10), Some(20), None));
        assert!(same_clock_answers(Some(10), Some(20), Some(21)));
        assert!(!same_clock_answers(Some(10), Some(21), Some(21)));
        assert!(!same_clock_answers(Some(10), Some(9), None), "the clock went back");
        assert!(!same_clock_answers(None, Some(9), None));
    }

    #[test]
    fn identity_not_order_decides_sameness() {
        let (a, b) = (Arc::new(1), Arc::new(1));
        assert!(same_objects(&[a.clone(), b.clone()], &[b.clone(), a.clone()]));
        assert!(!same_objects(std::slice::from_ref(&a), std::slice::from_ref(&b)), "an equal copy is another object");
        assert!(changed_objects(&[a.clone(), b.clone()], &[b.clone(), a.clone()]).is_empty());
        assert_eq!(changed_objects(std::slice::from_ref(&a), std::slice::from_ref(&b)).len(), 2);
    }

    #[test]
    fn only_the_middles_that_differ_are_compared() {
        let objects: Vec<Arc<usize>> = (0..8).map(Arc::new).collect();
        let x = Arc::new(100);
        // One object replaced in place: the middles are that object on each side.
        let mut after = objects.clone();
        after[3] = x.clone();
        let (b, a) = differing(&objects, &after);
        assert_eq!((b.len(), a.len()), (1, 1));
        assert!(Arc::ptr_eq(&b[0], &objects[3]) && Arc::ptr_eq(&a[0], &x));
        assert_eq!(changed_objects(&objects, &after).len(), 2);
        // One inserted, one removed at the ends.
        let mut after = objects.clone();
        after.insert(0, x.clone());
        assert_eq!(differing(&objects, &after).1.len(), 1);
        assert_eq!(differing(&objects[1..], &objects).0.len(), 0);
        // An object moved from the front to the back: the same set, different order.
        let mut after = objects.clone();
        after.rotate_left(1);
        assert!(same_objects(&objects, &after));
        assert!(changed_objects(&objects, &after).is_empty());
        // Repeats count: [a, a, b] is not [a, b, b].
        let (a0, b0) = (objects[0].clone(), objects[1].clone());
        assert!(!same_objects(&[a0.clone(), a0.clone(), b0.clone()], &[a0.clone(), b0.clone(), b0.clone()]));
        assert_eq!(differing(&objects, &objects).0.len(), 0);
    }
}
