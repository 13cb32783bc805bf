//! Snapshot deltas: the change from one snapshot to the next, O(changed) in size.
//!
//! ```text
//!  push server: diff(last published, new) ──► SnapshotDelta{base, version, hunks} ──► streams at `base`
//!  data plane:  apply(served, delta) ──► content_hash == version.content_hash? ──► compile what changed
//!                                                      └─ no ──► Resync (whole snapshot)
//! ```
//!
//! Every ordered list travels as a splice of its base list: hunks of "keep n, skip m,
//! insert these", the rest of the base kept. Lists sorted by name (clusters,
//! certificates, client validations) are diffed by a merge walk, so any number of
//! scattered changes costs only the changed items; other lists (a listener's routes, in
//! evaluation order) keep their common prefix and suffix and replace the middle, so one
//! added, removed or changed route costs that route. Both are exact for any input.

use std::collections::HashMap;

use crate::{
    Certificate, CertificateHunk, ClientValidation, ClientValidationHunk, Cluster, ClusterHunk, HttpRoute,
    HttpRouteHunk, Listener, ListenerDelta, Snapshot, SnapshotDelta, TcpRoute, TcpRouteHunk, TlsRoute, TlsRouteHunk,
    UdpRoute, UdpRouteHunk,
};

/// A delta that does not apply to the snapshot it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// A hunk keeps or skips more items than the base list has.
    #[error("the delta edits {list} past the end of its base list")]
    PastEnd {
        /// Which list: "clusters", "http_routes", ...
        list: &'static str,
    },
    /// A listener names a base listener that does not exist.
    #[error("the delta names base listener {index}, the base has {count}")]
    NoSuchListener {
        /// The index named.
        index: u32,
        /// How many listeners the base has.
        count: usize,
    },
    /// A new listener comes without its header.
    #[error("a new listener of the delta has no header")]
    MissingHeader,
}

/// One edit of a base list.
pub(crate) trait Hunk: Sized {
    type Item: Clone + PartialEq;
    fn new(keep: u32, skip: u32, insert: Vec<Self::Item>) -> Self;
    fn keep(&self) -> u32;
    fn skip(&self) -> u32;
    fn insert(&self) -> &[Self::Item];
    fn take_insert(&mut self) -> Vec<Self::Item>;
}

macro_rules! hunk {
    ($hunk:ty, $item:ty) => {
        impl Hunk for $hunk {
            type Item = $item;
            fn new(keep: u32, skip: u32, insert: Vec<$item>) -> Self {
                Self { keep, skip, insert }
            }
            fn keep(&self) -> u32 {
                self.keep
            }
            fn skip(&self) -> u32 {
                self.skip
            }
            fn insert(&self) -> &[$item] {
                &self.insert
            }
            fn take_insert(&mut self) -> Vec<$item> {
                std::mem::take(&mut self.insert)
            }
        }
    };
}

hunk!(ClusterHunk, Cluster);
hunk!(CertificateHunk, Certificate);
hunk!(ClientValidationHunk, ClientValidation);
hunk!(HttpRouteHunk, HttpRoute);
hunk!(TcpRouteHunk, TcpRoute);
hunk!(UdpRouteHunk, UdpRoute);
hunk!(TlsRouteHunk, TlsRoute);

/// Counts as u32 (a snapshot list never holds 4 billion items; saturate rather than wrap).
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The hunks turning `base` into `new`: common prefix and suffix kept, the middle replaced.
fn splice<H: Hunk>(base: &[H::Item], new: &[H::Item]) -> Vec<H> {
    let prefix = base.iter().zip(new).take_while(|(b, n)| b == n).count();
    let (base_rest, new_rest) = (&base[prefix..], &new[prefix..]);
    let suffix = base_rest.iter().rev().zip(new_rest.iter().rev()).take_while(|(b, n)| b == n).count();
    let skip = base_rest.len() - suffix;
    let insert = &new_rest[..new_rest.len() - suffix];
    if skip == 0 && insert.is_empty() {
        return Vec::new();
    }
    vec![H::new(count(prefix), count(skip), insert.to_vec())]
}

/// Whether names strictly increase (sorted, no duplicates).
fn strictly_sorted<T>(items: &[T], name: fn(&T) -> &str) -> bool {
    items.windows(2).all(|pair| name(&pair[0]) < name(&pair[1]))
}

/// The hunks turning `base` into `new` for lists sorted by name: a merge walk, so only
/// changed, added and removed items cost anything. Unsorted lists fall back to [`splice`].
fn merge<H: Hunk>(base: &[H::Item], new: &[H::Item], name: fn(&H::Item) -> &str) -> Vec<H> {
    if !strictly_sorted(base, name) || !strictly_sorted(new, name) {
        return splice(base, new);
    }
    let mut hunks = Vec::new();
    let (mut keep, mut skip, mut insert) = (0u32, 0u32, Vec::new());
    let (mut b, mut n) = (0, 0);
    loop {
        match (base.get(b), new.get(n)) {
            (None, None) => break,
            (Some(old), Some(next)) if name(old) == name(next) => {
                if old == next {
                    if skip > 0 || !insert.is_empty() {
                        hunks.push(H::new(keep, skip, std::mem::take(&mut insert)));
                        (keep, skip) = (0, 0);
                    }
                    keep = keep.saturating_add(1);
                } else {
                    skip = skip.saturating_add(1);
                    insert.push(next.clone());
                }
                b += 1;
                n += 1;
            }
            (Some(old), Some(next)) if name(old) < name(next) => {
                skip = skip.saturating_add(1);
                b += 1;
            }
            (Some(_), None) => {
                skip = skip.saturating_add(1);
                b += 1;
            }
            (_, Some(next)) => {
                insert.push(next.clone());
                n += 1;
            }
        }
    }
    if skip > 0 || !insert.is_empty() {
        hunks.push(H::new(keep, skip, insert));
    }
    hunks
}

/// Applies `hunks` to `base`.
fn edit<H: Hunk>(base: &[H::Item], hunks: &[H], list: &'static str) -> Result<Vec<H::Item>, DeltaError> {
    let mut out = Vec::with_capacity(base.len());
    let mut at = 0usize;
    for hunk in hunks {
        let kept = at.checked_add(hunk.keep() as usize).ok_or(DeltaError::PastEnd { list })?;
        out.extend_from_slice(base.get(at..kept).ok_or(DeltaError::PastEnd { list })?);
        at = kept.checked_add(hunk.skip() as usize).ok_or(DeltaError::PastEnd { list })?;
        if at > base.len() {
            return Err(DeltaError::PastEnd { list });
        }
        out.extend_from_slice(hunk.insert());
    }
    out.extend_from_slice(base.get(at..).unwrap_or_default());
    Ok(out)
}

/// Where each hunk applies in `base_len` items: (start, end) of the items it replaces.
pub(crate) fn spans<H: Hunk>(
    base_len: usize,
    hunks: &[H],
    list: &'static str,
) -> Result<Vec<(usize, usize)>, DeltaError> {
    let mut at = 0usize;
    let mut spans = Vec::with_capacity(hunks.len());
    for hunk in hunks {
        let start = at.checked_add(hunk.keep() as usize).ok_or(DeltaError::PastEnd { list })?;
        at = start.checked_add(hunk.skip() as usize).ok_or(DeltaError::PastEnd { list })?;
        if at > base_len {
            return Err(DeltaError::PastEnd { list });
        }
        spans.push((start, at));
    }
    Ok(spans)
}

/// What one list's in-place edit replaced: (start in the edited list, how many items were
/// inserted there, the items they replaced), first edit first.
type Replaced<T> = Vec<(usize, usize, Vec<T>)>;

/// Applies `hunks` to `list` in place (`spans` from [`spans`]), last hunk first so that
/// every span still names base positions: O(changed) besides moving the tail. Returns what
/// [`restore`] needs to undo it.
fn edit_in_place<H: Hunk>(list: &mut Vec<H::Item>, hunks: &mut [H], spans: &[(usize, usize)]) -> Replaced<H::Item> {
    let mut replaced = Vec::with_capacity(hunks.len());
    for (hunk, &(start, end)) in hunks.iter_mut().zip(spans).rev() {
        let insert = hunk.take_insert();
        let inserted = insert.len();
        replaced.push((start, inserted, list.splice(start..end, insert).collect::<Vec<_>>()));
    }
    replaced.reverse();
    // Where each edit sits in the edited list: shifted by the edits before it.
    let mut shift = 0isize;
    for (start, inserted, old) in &mut replaced {
        let removed = old.len();
        *start = start.saturating_add_signed(shift);
        shift += isize::try_from(*inserted).unwrap_or(isize::MAX) - isize::try_from(removed).unwrap_or(isize::MAX);
    }
    replaced
}

/// Undoes [`edit_in_place`]: last edit first, so earlier positions stay valid.
fn restore<T>(list: &mut Vec<T>, replaced: Replaced<T>) {
    for (start, inserted, old) in replaced.into_iter().rev() {
        list.splice(start..start + inserted, old);
    }
}

/// Per listener, what its four route lists' edits replaced.
type ListenerReplaced = (Replaced<HttpRoute>, Replaced<TcpRoute>, Replaced<UdpRoute>, Replaced<TlsRoute>);

/// What [`apply_in_place`] replaced, to put the base back ([`Undo::restore`]).
#[derive(Debug)]
pub struct Undo {
    gateway: String,
    version: Option<crate::Version>,
    /// Set when the whole snapshot was replaced.
    whole: Option<Box<Snapshot>>,
    clusters: Replaced<Cluster>,
    certificates: Replaced<Certificate>,
    client_validations: Replaced<ClientValidation>,
    listeners: Vec<ListenerReplaced>,
}

impl Undo {
    /// Turns the edited snapshot back into the base it was made from.
    pub fn restore(self, edited: &mut Snapshot) {
        if let Some(whole) = self.whole {
            *edited = *whole;
            return;
        }
        restore(&mut edited.clusters, self.clusters);
        restore(&mut edited.certificates, self.certificates);
        restore(&mut edited.client_validations, self.client_validations);
        for (listener, (http, tcp, udp, tls)) in edited.listeners.iter_mut().zip(self.listeners) {
            restore(&mut listener.http_routes, http);
            restore(&mut listener.tcp_routes, tcp);
            restore(&mut listener.udp_routes, udp);
            restore(&mut listener.tls_routes, tls);
        }
        edited.gateway = self.gateway;
        edited.version = self.version;
    }
}

/// A listener without its routes: what a `ListenerDelta.header` carries.
pub fn listener_header(listener: &Listener) -> Listener {
    Listener {
        name: listener.name.clone(),
        port: listener.port,
        protocol: listener.protocol,
        hostname: listener.hostname.clone(),
        tls_mode: listener.tls_mode,
        certificates: listener.certificates.clone(),
        client_validation: listener.client_validation.clone(),
        http_routes: Vec::new(),
        tcp_routes: Vec::new(),
        udp_routes: Vec::new(),
        tls_routes: Vec::new(),
    }
}

/// Whether two listeners have the same header (everything but their routes).
fn same_header(a: &Listener, b: &Listener) -> bool {
    a.name == b.name
        && a.port == b.port
        && a.protocol == b.protocol
        && a.hostname == b.hostname
        && a.tls_mode == b.tls_mode
        && a.certificates == b.certificates
        && a.client_validation == b.client_validation
}

/// The delta from `base` to `new`, versioned with their versions. Listeners are matched
/// by name (in order, for repeated names).
pub fn diff(base: &Snapshot, new: &Snapshot) -> SnapshotDelta {
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, listener) in base.listeners.iter().enumerate().rev() {
        by_name.entry(listener.name.as_str()).or_default().push(index);
    }
    let listeners = new
        .listeners
        .iter()
        .map(|listener| {
            let base_index = by_name.get_mut(listener.name.as_str()).and_then(Vec::pop);
            let old = base_index.and_then(|index| base.listeners.get(index));
            let empty = Listener::default();
            let from = old.unwrap_or(&empty);
            ListenerDelta {
                base_index: base_index.map(count),
                header: match old {
                    Some(old) if same_header(old, listener) => None,
                    _ => Some(listener_header(listener)),
                },
                http_routes: splice(&from.http_routes, &listener.http_routes),
                tcp_routes: splice(&from.tcp_routes, &listener.tcp_routes),
                udp_routes: splice(&from.udp_routes, &listener.udp_routes),
                tls_routes: splice(&from.tls_routes, &listener.tls_routes),
            }
        })
        .collect();
    SnapshotDelta {
        base: base.version.clone(),
        version: new.version.clone(),
        gateway: new.gateway.clone(),
        clusters: merge(&base.clusters, &new.clusters, |c: &Cluster| &c.name),
        certificates: merge(&base.certificates, &new.certificates, |c: &Certificate| &c.name),
        client_validations: merge(&base.client_validations, &new.client_validations, |c: &ClientValidation| &c.name),
        listeners,
    }
}

/// The snapshot `delta` makes of `base`, with the delta's version. It does not check
/// `delta.base` against `base.version` nor the result's content hash: the caller does.
pub fn apply(base: &Snapshot, delta: &SnapshotDelta) -> Result<Snapshot, DeltaError> {
    let listeners = delta
        .listeners
        .iter()
        .map(|change| {
            let old = match change.base_index {
                Some(index) => Some(
                    base.listeners
                        .get(index as usize)
                        .ok_or(DeltaError::NoSuchListener { index, count: base.listeners.len() })?,
                ),
                None => None,
            };
            let mut listener = match (&change.header, old) {
                (Some(header), _) => listener_header(header),
                (None, Some(old)) => listener_header(old),
                (None, None) => return Err(DeltaError::MissingHeader),
            };
            let empty = Listener::default();
            let from = old.unwrap_or(&empty);
            listener.http_routes = edit(&from.http_routes, &change.http_routes, "http_routes")?;
            listener.tcp_routes = edit(&from.tcp_routes, &change.tcp_routes, "tcp_routes")?;
            listener.udp_routes = edit(&from.udp_routes, &change.udp_routes, "udp_routes")?;
            listener.tls_routes = edit(&from.tls_routes, &change.tls_routes, "tls_routes")?;
            Ok(listener)
        })
        .collect::<Result<_, _>>()?;
    Ok(Snapshot {
        gateway: delta.gateway.clone(),
        version: delta.version.clone(),
        listeners,
        clusters: edit(&base.clusters, &delta.clusters, "clusters")?,
        certificates: edit(&base.certificates, &delta.certificates, "certificates")?,
        client_validations: edit(&base.client_validations, &delta.client_validations, "client_validations")?,
    })
}

/// Whether `delta` keeps every listener of `base` in place with its header: then it only
/// edits lists, and [`apply_in_place`] touches only what changed.
pub fn keeps_listeners(base: &Snapshot, delta: &SnapshotDelta) -> bool {
    delta.listeners.len() == base.listeners.len()
        && delta
            .listeners
            .iter()
            .enumerate()
            .all(|(index, listener)| listener.header.is_none() && listener.base_index == Some(count(index)))
}

/// Turns `base` into the snapshot `delta` makes of it, like [`apply`], moving the delta's
/// items in instead of copying the base. When the delta keeps every listener in place
/// (see [`keeps_listeners`]) only the edited lists change, O(changed items) besides moving
/// list tails. On an error `base` is unchanged; the returned [`Undo`] puts it back.
pub fn apply_in_place(base: &mut Snapshot, mut delta: SnapshotDelta) -> Result<Undo, DeltaError> {
    let mut undo = Undo {
        gateway: base.gateway.clone(),
        version: base.version.clone(),
        whole: None,
        clusters: Vec::new(),
        certificates: Vec::new(),
        client_validations: Vec::new(),
        listeners: Vec::new(),
    };
    if !keeps_listeners(base, &delta) {
        let whole = std::mem::replace(base, apply(base, &delta)?);
        undo.whole = Some(Box::new(whole));
        return Ok(undo);
    }
    // Every span is checked before anything changes.
    let clusters = spans(base.clusters.len(), &delta.clusters, "clusters")?;
    let certificates = spans(base.certificates.len(), &delta.certificates, "certificates")?;
    let validations = spans(base.client_validations.len(), &delta.client_validations, "client_validations")?;
    let mut listeners = Vec::with_capacity(base.listeners.len());
    for (listener, change) in base.listeners.iter().zip(&delta.listeners) {
        listeners.push((
            spans(listener.http_routes.len(), &change.http_routes, "http_routes")?,
            spans(listener.tcp_routes.len(), &change.tcp_routes, "tcp_routes")?,
            spans(listener.udp_routes.len(), &change.udp_routes, "udp_routes")?,
            spans(listener.tls_routes.len(), &change.tls_routes, "tls_routes")?,
        ));
    }
    undo.clusters = edit_in_place(&mut base.clusters, &mut delta.clusters, &clusters);
    undo.certificates = edit_in_place(&mut base.certificates, &mut delta.certificates, &certificates);
    undo.client_validations = edit_in_place(&mut base.client_validations, &mut delta.client_validations, &validations);
    for ((listener, change), (http, tcp, udp, tls)) in
        base.listeners.iter_mut().zip(&mut delta.listeners).zip(listeners)
    {
        undo.listeners.push((
            edit_in_place(&mut listener.http_routes, &mut change.http_routes, &http),
            edit_in_place(&mut listener.tcp_routes, &mut change.tcp_routes, &tcp),
            edit_in_place(&mut listener.udp_routes, &mut change.udp_routes, &udp),
            edit_in_place(&mut listener.tls_routes, &mut change.tls_routes, &tls),
        ));
    }
    base.gateway = delta.gateway;
    base.version = delta.version;
    Ok(undo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Endpoint, HttpMatch, PathMatch, Version, WeightedBackend, weighted_backend};
    use prost::Message;

    /// A small seeded generator (xorshift64*): reproducible random snapshots.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            if n == 0 { 0 } else { (self.next() % n as u64) as usize }
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    fn cluster(rng: &mut Rng, id: usize) -> Cluster {
        Cluster {
            name: format!("service/ns/s{id:04}/port/80"),
            endpoints: (0..rng.below(4))
                .map(|i| Endpoint { address: format!("10.0.{}.{i}", rng.below(255)), port: 8080, ready: true })
                .collect(),
            ..Default::default()
        }
    }

    fn http_route(rng: &mut Rng, id: usize) -> HttpRoute {
        HttpRoute {
            name: format!("httproute/ns/r{id}/rule/0/match/0"),
            hostnames: vec![format!("h{}.example.com", rng.below(5))],
            r#match: Some(HttpMatch {
                path: Some(PathMatch { r#type: 2, value: format!("/p{}", rng.below(50)) }),
                ..Default::default()
            }),
            backends: vec![WeightedBackend {
                name: format!("service/ns/s{:04}/port/80", rng.below(20)),
                weight: 1,
                target: Some(weighted_backend::Target::Cluster(format!("service/ns/s{:04}/port/80", rng.below(20)))),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn tls_route(rng: &mut Rng, id: usize) -> TlsRoute {
        TlsRoute {
            name: format!("tlsroute/ns/t{}/rule/0", id % 3),
            hostnames: vec![format!("t{}", rng.below(4))],
            ..Default::default()
        }
    }

    fn listener(rng: &mut Rng, id: usize) -> Listener {
        Listener {
            name: format!("gateway/ns/gw/listener/l{id}"),
            port: 80 + rng.below(3) as u32,
            protocol: 1 + rng.below(4) as i32,
            http_routes: (0..rng.below(12)).map(|i| http_route(rng, i)).collect(),
            tls_routes: (0..rng.below(4)).map(|i| tls_route(rng, i)).collect(),
            tcp_routes: (0..rng.below(2))
                .map(|i| TcpRoute { name: format!("tcproute/ns/t{i}/rule/0"), ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    fn snapshot(rng: &mut Rng) -> Snapshot {
        let ids: Vec<usize> = (0..20).filter(|_| rng.chance(60)).collect();
        let mut clusters: Vec<Cluster> = ids.into_iter().map(|id| cluster(rng, id)).collect();
        if rng.chance(10) {
            // Unsorted lists must round-trip too.
            clusters.reverse();
        }
        Snapshot {
            gateway: "ns/gw".into(),
            version: Some(Version { generation: rng.next() % 100, content_hash: format!("{:x}", rng.next()) }),
            listeners: (0..rng.below(4)).map(|id| listener(rng, id)).collect(),
            clusters,
            certificates: (0..rng.below(3))
                .map(|i| Certificate { name: format!("secret/ns/c{i}"), ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    /// A few random edits of `base`: routes added, removed, changed, moved; clusters'
    /// endpoints changed, clusters added and removed; listeners changed, added, dropped.
    fn mutate(rng: &mut Rng, base: &Snapshot) -> Snapshot {
        let mut new = base.clone();
        new.version = Some(Version { generation: rng.next() % 100, content_hash: format!("{:x}", rng.next()) });
        for _ in 0..1 + rng.below(4) {
            match rng.below(9) {
                0 if !new.listeners.is_empty() => {
                    let l = rng.below(new.listeners.len());
                    let routes = &mut new.listeners[l].http_routes;
                    let at = rng.below(routes.len() + 1);
                    routes.insert(at, http_route(rng, 100 + at));
                }
                1 if !new.listeners.is_empty() => {
                    let l = rng.below(new.listeners.len());
                    let routes = &mut new.listeners[l].http_routes;
                    if !routes.is_empty() {
                        routes.remove(rng.below(routes.len()));
                    }
                }
                2 if !new.listeners.is_empty() => {
                    let l = rng.below(new.listeners.len());
                    let routes = &mut new.listeners[l].http_routes;
                    if !routes.is_empty() {
                        let at = rng.below(routes.len());
                        routes[at].hostnames.push("changed.example.com".into());
                    }
                }
                3 if !new.clusters.is_empty() => {
                    let at = rng.below(new.clusters.len());
                    new.clusters[at].endpoints.push(Endpoint { address: "10.9.9.9".into(), port: 1, ready: false });
                }
                4 => {
                    let id = 20 + rng.below(10);
                    let added = cluster(rng, id);
                    if new.clusters.iter().all(|c| c.name != added.name) {
                        let at = new.clusters.partition_point(|c| c.name < added.name);
                        new.clusters.insert(at, added);
                    }
                }
                5 if !new.clusters.is_empty() => {
                    new.clusters.remove(rng.below(new.clusters.len()));
                }
                6 if !new.listeners.is_empty() => {
                    let l = rng.below(new.listeners.len());
                    new.listeners[l].port += 1;
                }
                7 => {
                    let id = new.listeners.len() + rng.below(3);
                    let at = rng.below(new.listeners.len() + 1);
                    let added = listener(rng, id);
                    new.listeners.insert(at, added);
                }
                8 if !new.listeners.is_empty() => {
                    let l = rng.below(new.listeners.len());
                    new.listeners.remove(l);
                }
                _ => new.certificates.push(Certificate { name: "secret/ns/zz".into(), ..Default::default() }),
            }
        }
        new
    }

    #[test]
    fn apply_of_diff_gives_the_new_snapshot_for_random_changes() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for _ in 0..3000 {
            let base = snapshot(&mut rng);
            let new = if rng.chance(20) { snapshot(&mut rng) } else { mutate(&mut rng, &base) };
            let delta = diff(&base, &new);
            // It survives the wire.
            let delta = SnapshotDelta::decode(delta.encode_to_vec().as_slice()).unwrap();
            assert_eq!(apply(&base, &delta).unwrap(), new);
            // The digests follow the delta; the content hash tells contents apart.
            let digests = crate::digest::Digests::of(&base).after(&delta).unwrap();
            assert_eq!(digests, crate::digest::Digests::of(&new));
            assert_eq!(digests.hash(&new.gateway), crate::content_hash(&new));
            let (mut plain_base, mut plain_new) = (base.clone(), new.clone());
            (plain_base.version, plain_new.version) = (None, None);
            assert_eq!(crate::content_hash(&base) == crate::content_hash(&new), plain_base == plain_new);
            let mut in_place = base.clone();
            let undo = apply_in_place(&mut in_place, delta).unwrap();
            assert_eq!(in_place, new);
            undo.restore(&mut in_place);
            assert_eq!(in_place, base);
        }
    }

    #[test]
    fn in_place_edits_with_several_hunks_per_list_and_leaves_the_base_on_errors() {
        let mut rng = Rng(11);
        let mut base = snapshot(&mut rng);
        base.listeners = vec![listener(&mut rng, 0), listener(&mut rng, 1)];
        base.listeners[0].http_routes = (0..50).map(|i| http_route(&mut rng, i)).collect();
        base.listeners[1].http_routes = (50..60).map(|i| http_route(&mut rng, i)).collect();
        base.clusters = (0..40).map(|i| cluster(&mut rng, i)).collect();
        let mut new = base.clone();
        // Scattered cluster changes: several hunks, applied back to front.
        new.clusters.remove(3);
        new.clusters[10].endpoints.clear();
        let after = new.clusters.iter().position(|c| c.name == "service/ns/s0019/port/80").unwrap() + 1;
        new.clusters.insert(after, Cluster { name: "service/ns/s0019a/port/80".into(), ..Default::default() });
        new.clusters.remove(35);
        new.listeners[0].http_routes.insert(7, http_route(&mut rng, 900));
        new.listeners[0].http_routes.remove(30);
        new.listeners[1].http_routes.clear();
        let delta = diff(&base, &new);
        assert!(keeps_listeners(&base, &delta));
        assert!(delta.clusters.len() >= 3, "{:?}", delta.clusters.len());
        let mut in_place = base.clone();
        let undo = apply_in_place(&mut in_place, delta).unwrap();
        assert_eq!(in_place, new);
        undo.restore(&mut in_place);
        assert_eq!(in_place, base);

        // A hunk past the end of a later list: nothing changes, not even the earlier lists.
        let mut delta = diff(&base, &new);
        delta.listeners[1].http_routes = vec![HttpRouteHunk { keep: 10, skip: 1, insert: vec![] }];
        let mut unchanged = base.clone();
        assert_eq!(apply_in_place(&mut unchanged, delta).unwrap_err(), DeltaError::PastEnd { list: "http_routes" });
        assert_eq!(unchanged, base);
    }

    #[test]
    fn one_route_or_one_cluster_change_costs_that_piece() {
        let mut rng = Rng(7);
        let mut base = snapshot(&mut rng);
        base.listeners = vec![listener(&mut rng, 0)];
        base.listeners[0].http_routes = (0..1000).map(|i| http_route(&mut rng, i)).collect();
        base.clusters = (0..500).map(|i| cluster(&mut rng, i)).collect();
        let base_size = base.encoded_len();

        let mut new = base.clone();
        new.listeners[0].http_routes.insert(400, http_route(&mut rng, 5000));
        let delta = diff(&base, &new);
        assert_eq!(delta.listeners[0].http_routes.len(), 1);
        assert_eq!(delta.listeners[0].http_routes[0].insert.len(), 1);
        assert!(delta.encoded_len() < 500, "{} of {base_size}", delta.encoded_len());
        assert_eq!(apply(&base, &delta).unwrap(), new);

        let mut new = base.clone();
        new.listeners[0].http_routes.remove(10);
        new.clusters[250].endpoints.push(Endpoint { address: "10.1.1.1".into(), port: 80, ready: true });
        new.clusters.remove(499);
        let delta = diff(&base, &new);
        assert_eq!(delta.clusters.len(), 2);
        assert_eq!(delta.clusters[0].insert, vec![new.clusters[250].clone()]);
        assert!(delta.encoded_len() < 500, "{} of {base_size}", delta.encoded_len());
        assert_eq!(apply(&base, &delta).unwrap(), new);

        assert!(diff(&base, &base).listeners[0].header.is_none());
        assert!(diff(&base, &base).clusters.is_empty());
    }

    #[test]
    fn deltas_past_the_base_do_not_apply() {
        let base = Snapshot { clusters: vec![Cluster::default()], ..Default::default() };
        let delta =
            SnapshotDelta { clusters: vec![ClusterHunk { keep: 1, skip: 1, insert: vec![] }], ..Default::default() };
        assert_eq!(apply(&base, &delta), Err(DeltaError::PastEnd { list: "clusters" }));
        let delta = SnapshotDelta {
            listeners: vec![ListenerDelta { base_index: Some(0), ..Default::default() }],
            ..Default::default()
        };
        assert_eq!(apply(&base, &delta), Err(DeltaError::NoSuchListener { index: 0, count: 0 }));
        let delta = SnapshotDelta { listeners: vec![ListenerDelta::default()], ..Default::default() };
        assert_eq!(apply(&base, &delta), Err(DeltaError::MissingHeader));
    }
}
