//! Deltas from recorded edits: whoever edits a snapshot in place notes where, and the delta
//! follows from those places instead of from comparing the two snapshots item by item.
//!
//! ```text
//!  base ──edit in place (record: list, position, items removed)──► edited
//!  Edits::new(base) ─────────────────────────────────────────────► Edits::delta(edited)
//!                                                                   = one hunk per edited list
//! ```
//!
//! Each list keeps the shortest untouched prefix and suffix any edit left: an edit at
//! position `at` of a list `len` long that removes `n` items leaves the `at` items before
//! it and the `len - at - n` after it as they were. The list's hunk keeps the prefix, skips
//! the rest of the base up to the suffix and inserts the edited list's middle, so a delta
//! costs what lies between the first and the last edit of each list.

use crate::delta::Hunk;
use crate::{
    CertificateHunk, ClientValidationHunk, ClusterHunk, HttpRouteHunk, ListenerDelta, Snapshot, SnapshotDelta,
    TcpRouteHunk, TlsRouteHunk, UdpRouteHunk,
};

/// The edits of one list: its length before them and what they left untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListEdits {
    base_len: usize,
    prefix: usize,
    suffix: usize,
    edited: bool,
}

impl ListEdits {
    fn new(base_len: usize) -> Self {
        Self { base_len, prefix: base_len, suffix: base_len, edited: false }
    }

    /// Notes that `removed` items at `at` of the list, `len` long before this edit, were
    /// replaced (by any number of items).
    pub fn splice(&mut self, len: usize, at: usize, removed: usize) {
        self.edited = true;
        self.prefix = self.prefix.min(at);
        self.suffix = self.suffix.min(len.saturating_sub(at.saturating_add(removed)));
    }

    /// The hunks turning the base into `edited`; None when the notes cannot describe
    /// `edited` (an edit went unrecorded).
    fn hunks<H: Hunk>(&self, edited: &[H::Item]) -> Option<Vec<H>> {
        if !self.edited {
            return (edited.len() == self.base_len).then(Vec::new);
        }
        let kept = self.prefix.checked_add(self.suffix)?;
        if kept > self.base_len || kept > edited.len() {
            return None;
        }
        let skip = self.base_len - kept;
        let insert = &edited[self.prefix..edited.len() - self.suffix];
        if skip == 0 && insert.is_empty() {
            return Some(Vec::new());
        }
        let count = |n: usize| u32::try_from(n).ok();
        Some(vec![H::new(count(self.prefix)?, count(skip)?, insert.to_vec())])
    }
}

/// The edits of one listener's route lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerEdits {
    pub http_routes: ListEdits,
    pub tcp_routes: ListEdits,
    pub udp_routes: ListEdits,
    pub tls_routes: ListEdits,
}

/// The edits of one snapshot's lists. Listeners keep their place and header: a change to
/// those is not an edit this records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edits {
    pub clusters: ListEdits,
    pub certificates: ListEdits,
    pub client_validations: ListEdits,
    pub listeners: Vec<ListenerEdits>,
}

impl Edits {
    /// No edits yet of `base`.
    pub fn new(base: &Snapshot) -> Self {
        Self {
            clusters: ListEdits::new(base.clusters.len()),
            certificates: ListEdits::new(base.certificates.len()),
            client_validations: ListEdits::new(base.client_validations.len()),
            listeners: base
                .listeners
                .iter()
                .map(|listener| ListenerEdits {
                    http_routes: ListEdits::new(listener.http_routes.len()),
                    tcp_routes: ListEdits::new(listener.tcp_routes.len()),
                    udp_routes: ListEdits::new(listener.udp_routes.len()),
                    tls_routes: ListEdits::new(listener.tls_routes.len()),
                })
                .collect(),
        }
    }

    /// The delta from the base to `edited` (the base after the recorded edits), without
    /// versions; None when the edits do not describe `edited` (listeners added or
    /// removed, a list whose length the notes do not explain).
    pub fn delta(&self, edited: &Snapshot) -> Option<SnapshotDelta> {
        if edited.listeners.len() != self.listeners.len() {
            return None;
        }
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for (index, (edits, listener)) in self.listeners.iter().zip(&edited.listeners).enumerate() {
            listeners.push(ListenerDelta {
                base_index: Some(u32::try_from(index).ok()?),
                header: None,
                http_routes: edits.http_routes.hunks::<HttpRouteHunk>(&listener.http_routes)?,
                tcp_routes: edits.tcp_routes.hunks::<TcpRouteHunk>(&listener.tcp_routes)?,
                udp_routes: edits.udp_routes.hunks::<UdpRouteHunk>(&listener.udp_routes)?,
                tls_routes: edits.tls_routes.hunks::<TlsRouteHunk>(&listener.tls_routes)?,
            });
        }
        Some(SnapshotDelta {
            base: None,
            version: None,
            gateway: edited.gateway.clone(),
            clusters: self.clusters.hunks::<ClusterHunk>(&edited.clusters)?,
            certificates: self.certificates.hunks::<CertificateHunk>(&edited.certificates)?,
            client_validations: self.client_validations.hunks::<ClientValidationHunk>(&edited.client_validations)?,
            listeners,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cluster, HttpRoute, Listener};

    fn route(name: &str) -> HttpRoute {
        HttpRoute { name: name.into(), ..Default::default() }
    }

    fn snapshot(routes: &[&str], clusters: &[&str]) -> Snapshot {
        Snapshot {
            gateway: "ns/gw".into(),
            listeners: vec![
                Listener {
                    name: "a".into(),
                    http_routes: routes.iter().map(|r| route(r)).collect(),
                    ..Default::default()
                },
                Listener { name: "b".into(), http_routes: vec![route("other")], ..Default::default() },
            ],
            clusters: clusters.iter().map(|name| Cluster { name: (*name).into(), ..Default::default() }).collect(),
            ..Default::default()
        }
    }

    /// A small seeded generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn recorded_edits_give_a_delta_that_makes_the_edited_snapshot() {
        let mut rng = Rng(0x5eed);
        for case in 0..500 {
            let names: Vec<String> = (0..rng.below(12)).map(|i| format!("r{i}")).collect();
            let base = snapshot(&names.iter().map(String::as_str).collect::<Vec<_>>(), &["c1", "c2"]);
            let mut edited = base.clone();
            let mut edits = Edits::new(&base);
            for step in 0..rng.below(5) {
                let routes = &mut edited.listeners[0].http_routes;
                let len = routes.len();
                let at = rng.below(len + 1);
                let removed = rng.below(len - at + 1).min(2);
                let inserted: Vec<HttpRoute> =
                    (0..rng.below(3)).map(|i| route(&format!("n{case}-{step}-{i}"))).collect();
                edits.listeners[0].http_routes.splice(len, at, removed);
                routes.splice(at..at + removed, inserted);
            }
            if rng.below(2) == 0 {
                edits.clusters.splice(edited.clusters.len(), 1, 1);
                edited.clusters.remove(1);
            }
            let delta = edits.delta(&edited).unwrap();
            assert!(delta.listeners[1].http_routes.is_empty(), "an unedited list has no hunk");
            assert!(delta.listeners.iter().all(|l| l.header.is_none()));
            assert_eq!(crate::delta::apply(&base, &delta).unwrap(), edited, "case {case}");
        }
    }

    #[test]
    fn an_unrecorded_edit_gives_no_delta() {
        let base = snapshot(&["a", "b"], &[]);
        let mut edited = base.clone();
        edited.listeners[0].http_routes.push(route("c"));
        assert_eq!(Edits::new(&base).delta(&edited), None);
        edited.listeners.pop();
        assert_eq!(Edits::new(&base).delta(&edited), None, "a listener went");
    }

    #[test]
    fn one_route_replaced_in_the_middle_costs_that_route() {
        let base = snapshot(&["a", "b", "c", "d"], &[]);
        let mut edited = base.clone();
        let mut edits = Edits::new(&base);
        edits.listeners[0].http_routes.splice(4, 2, 1);
        edited.listeners[0].http_routes.remove(2);
        edits.listeners[0].http_routes.splice(3, 2, 0);
        edited.listeners[0].http_routes.insert(2, route("c2"));
        let delta = edits.delta(&edited).unwrap();
        assert_eq!(delta.listeners[0].http_routes, vec![HttpRouteHunk { keep: 2, skip: 1, insert: vec![route("c2")] }]);
        assert_eq!(delta.clusters, vec![]);
    }
}
