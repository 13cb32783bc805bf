//! A delta applied to the served tables by compiling only what it changes.
//!
//! ```text
//!  served snapshot + layout + tables ──patch(delta)──► Patched { tables, layout edits }
//!        (read only; None: the delta needs a full compile)        │
//!  applier: snapshot edited in place, Patched::commit(layout), content hash checked, swap
//! ```
//!
//! A delta qualifies when it keeps every listener with its header and changes only HTTP
//! routes and clusters: added, changed (new endpoints: the HTTP routes using the cluster
//! are compiled again, in their places) or removed with no route left pointing at them.
//! Every inserted route must compile cleanly and every removed or recompiled one must have
//! been served. Anything else (certificates, listeners, L4 and TLS routes or their
//! clusters, a route that fails) takes the full compile, which reuses unchanged pieces.
//! The result serves exactly like a full compile of the new snapshot
//! (`routes_reuse_tests`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sluice_snapshot::{HttpRoute, HttpRouteHunk, Protocol, Snapshot, SnapshotDelta};

use crate::tables::host_index::{Entry, between};
use crate::tables::{ClusterTable, Compiled, Layout, ListenerTable, Slot, cluster_table, compile_route};

/// (start, end, new slots) in base positions, in order.
type SlotEdits = Vec<(usize, usize, Vec<Slot>)>;

/// The tables a delta makes, and the edits that bring the layout along.
pub struct Patched {
    compiled: Compiled,
    /// By listener name, the edits of its slots.
    edits: Vec<(String, SlotEdits)>,
    /// Change of each cluster's route count.
    uses: HashMap<String, isize>,
}

impl Patched {
    /// Brings `layout` to the patched tables and returns them (to be swapped in).
    pub fn commit(self, layout: &mut Layout) -> Compiled {
        for (name, hunks) in self.edits {
            if let Some(slots) = layout.listeners.get_mut(&name) {
                for (start, end, new) in hunks.into_iter().rev() {
                    slots.splice(start..end, new);
                }
            }
        }
        for (name, change) in self.uses {
            let count = layout.cluster_uses.entry(name).or_default();
            *count = count.saturating_add_signed(change);
        }
        layout.cluster_uses.retain(|_, count| *count > 0);
        self.compiled
    }
}

/// The tables `delta` makes of the served ones, compiling only the routes and clusters it
/// inserts; `None` when the delta needs a full compile. Nothing is changed.
pub fn patch(
    base: &Snapshot,
    served: &Compiled,
    layout: &Layout,
    delta: &SnapshotDelta,
    metrics: &crate::metrics::Metrics,
) -> Option<Patched> {
    let qualifies = sluice_snapshot::delta::keeps_listeners(base, delta)
        && delta.gateway == base.gateway
        && delta.certificates.is_empty()
        && delta.client_validations.is_empty()
        && delta
            .listeners
            .iter()
            .all(|l| l.tcp_routes.is_empty() && l.udp_routes.is_empty() && l.tls_routes.is_empty());
    if !qualifies || served.clusters.len() != base.clusters.len() {
        return None;
    }
    let (clusters, removed, changed) = patch_clusters(base, served, delta)?;
    if !changed.is_empty() && l4_uses_any(base, &changed) {
        return None;
    }
    let mut uses: HashMap<String, isize> = HashMap::new();
    let mut ports = served.ports.clone();
    let mut edits = Vec::new();
    for (listener, change) in base.listeners.iter().zip(&delta.listeners) {
        let spans = spans(&listener.http_routes, &change.http_routes, &changed)?;
        if spans.is_empty() {
            continue;
        }
        if !matches!(listener.protocol(), Protocol::Http | Protocol::Https) {
            return None;
        }
        let port = u16::try_from(listener.port).ok()?;
        let table = ports.get_mut(&port)?.listeners.iter_mut().find(|t| t.name == listener.name)?;
        let slots = layout.listeners.get(&listener.name)?;
        if slots.len() != listener.http_routes.len() {
            return None;
        }
        let (index, hunks) =
            patch_listener(table, &listener.http_routes, slots, &spans, &clusters, &mut uses, metrics)?;
        *table = ListenerTable { name: listener.name.clone(), index };
        edits.push((listener.name.clone(), hunks));
    }
    // A cluster leaves alone only when no route points at it any more.
    for name in removed {
        let left = layout.cluster_uses.get(&name).map_or(0, |n| isize::try_from(*n).unwrap_or(isize::MAX));
        if left + uses.get(&name).copied().unwrap_or(0) > 0 {
            return None;
        }
    }
    let compiled = Compiled {
        gateway: served.gateway.clone(),
        generation: delta.version.as_ref().map_or(0, |v| v.generation),
        ports,
        tls: served.tls.clone(),
        client_auth: served.client_auth.clone(),
        tcp: served.tcp.clone(),
        udp: served.udp.clone(),
        tls_ports: served.tls_ports.clone(),
        dropped: served.dropped.clone(),
        clusters,
        compiled_unix_ms: crate::tables::now_unix_ms(),
    };
    Some(Patched { compiled, edits, uses })
}

/// Cluster tables, and the names of the clusters removed and of those changed.
type PatchedClusters = (Vec<Arc<ClusterTable>>, HashSet<String>, HashSet<String>);

/// The served cluster tables with the delta's hunks applied (new and changed clusters
/// compiled), the names of the clusters it removes and of those it changes; `None` when
/// it inserts a cluster that is not valid on its own.
fn patch_clusters(base: &Snapshot, served: &Compiled, delta: &SnapshotDelta) -> Option<PatchedClusters> {
    if delta.clusters.is_empty() {
        return Some((served.clusters.clone(), HashSet::new(), HashSet::new()));
    }
    let mut tables = Vec::with_capacity(served.clusters.len() + 1);
    let mut removed = HashSet::new();
    let mut inserted = HashSet::new();
    let mut at = 0usize;
    for hunk in &delta.clusters {
        let start = at.checked_add(hunk.keep as usize)?;
        let end = start.checked_add(hunk.skip as usize)?;
        tables.extend_from_slice(served.clusters.get(at..start)?);
        for (table, cluster) in served.clusters.get(start..end)?.iter().zip(base.clusters.get(start..end)?) {
            // The tables are the snapshot's clusters sorted by name: the same list when
            // the snapshot's is sorted, which the check of the result below requires.
            if table.name != cluster.name {
                return None;
            }
            removed.insert(cluster.name.clone());
        }
        for cluster in &hunk.insert {
            if !sluice_snapshot::plain_cluster_valid(cluster) {
                return None;
            }
            inserted.insert(cluster.name.clone());
            tables.push(Arc::new(cluster_table(cluster, base)));
        }
        at = end;
    }
    tables.extend_from_slice(served.clusters.get(at..)?);
    // Sorted without repeats: a name both skipped and inserted is a changed cluster.
    let sorted = tables.windows(2).all(|pair| matches!(pair, [a, b] if a.name < b.name));
    let changed: HashSet<String> = removed.intersection(&inserted).cloned().collect();
    removed.retain(|name| !changed.contains(name));
    sorted.then_some((tables, removed, changed))
}

/// Whether a TCP, UDP or TLS route of `snapshot` points at one of `names` (their tables
/// are only built by the full compile).
fn l4_uses_any(snapshot: &Snapshot, names: &HashSet<String>) -> bool {
    snapshot.listeners.iter().flat_map(crate::tables::l4_route_clusters).any(|name| names.contains(name))
}

/// One edit of a listener's routes, in base positions: `start..end` replaced by `insert`.
struct Span<'a> {
    start: usize,
    end: usize,
    insert: &'a [HttpRoute],
    /// The one route at `start` compiled again in its place (its clusters changed).
    again: bool,
}

/// A listener's delta hunks as spans, with a span for every other route that uses a
/// changed cluster; in order.
fn spans<'a>(routes: &'a [HttpRoute], hunks: &'a [HttpRouteHunk], changed: &HashSet<String>) -> Option<Vec<Span<'a>>> {
    let mut spans = Vec::with_capacity(hunks.len());
    let mut at = 0usize;
    for hunk in hunks {
        let start = at.checked_add(hunk.keep as usize)?;
        let end = start.checked_add(hunk.skip as usize)?;
        spans.push(Span { start, end, insert: &hunk.insert, again: false });
        at = end;
    }
    if changed.is_empty() {
        return Some(spans);
    }
    let replaced = |i: usize| spans.iter().any(|s| s.start <= i && i < s.end);
    let mut again = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        if crate::tables::http_route_clusters(route).any(|name| changed.contains(name)) && !replaced(i) {
            again.push(Span { start: i, end: i + 1, insert: std::slice::from_ref(route), again: true });
        }
    }
    if !again.is_empty() {
        spans.extend(again);
        // A pure insertion at i comes before the route at i.
        spans.sort_by_key(|s| (s.start, s.end));
    }
    Some(spans)
}

type ListenerEdit = (crate::tables::host_index::HostIndex, SlotEdits);

/// One listener's index with its route hunks applied, and the layout edits.
fn patch_listener(
    table: &ListenerTable,
    routes: &[sluice_snapshot::HttpRoute],
    slots: &[Slot],
    spans: &[Span<'_>],
    clusters: &[Arc<ClusterTable>],
    uses: &mut HashMap<String, isize>,
    metrics: &crate::metrics::Metrics,
) -> Option<ListenerEdit> {
    let mut index = table.index.edit();
    let mut edits = Vec::with_capacity(spans.len());
    let mut at = 0usize;
    // The order key of the last route placed so far (0: none yet).
    let mut last = 0u64;
    let known = |name: &str| crate::tables::ClusterLookup::cluster(clusters, name).is_some();
    for span in spans {
        let (start, end) = (span.start, span.end);
        if start < at || end < start {
            return None;
        }
        if start > at {
            last = slots.get(start - 1)?.order;
        }
        for (slot, route) in slots.get(start..end)?.iter().zip(routes.get(start..end)?) {
            if slot.dropped {
                return None;
            }
            index.remove(&route.hostnames, slot.order);
            for name in crate::tables::http_route_clusters(route) {
                *uses.entry(name.to_string()).or_default() -= 1;
            }
        }
        // A route compiled again keeps its order key; inserted ones go between neighbours.
        let orders = match span.again {
            true => vec![slots.get(start)?.order],
            false => between(last, slots.get(end).map(|slot| slot.order), span.insert.len())?,
        };
        let mut new = Vec::with_capacity(span.insert.len());
        for (route, order) in span.insert.iter().zip(orders) {
            if !sluice_snapshot::http_route_problems(route, &known).is_empty() {
                return None;
            }
            let compiled = Arc::new(compile_route(route, clusters, metrics).ok()?);
            index.insert(&route.hostnames, &Entry { order, route: compiled.clone() });
            for name in crate::tables::http_route_clusters(route) {
                *uses.entry(name.to_string()).or_default() += 1;
            }
            new.push(Slot { order, route: compiled, dropped: false });
            last = order;
        }
        edits.push((start, end, new));
        at = end;
    }
    if at > slots.len() {
        return None;
    }
    Some((index, edits))
}
