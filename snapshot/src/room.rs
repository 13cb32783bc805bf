//! Room in a snapshot's long lists for the edits that deltas make in place.
//!
//! A list decoded or cloned has about its length in capacity, so the first item a delta
//! inserts copies the whole list into a new allocation (10000 routes of ~264 bytes: a few
//! milliseconds). Whoever keeps a snapshot to edit it in place (the data plane's served
//! snapshot, the controller's published content and its private copy) gives its lists
//! [`with_room`] first.

use crate::Snapshot;

/// The capacity for a list of `len` items that deltas edit in place: room for a few
/// insertions (1/64 more, at least 8).
pub fn with_room(len: usize) -> usize {
    len.saturating_add(len / 64).saturating_add(8)
}

/// The least room a list keeps before [`make_room`] gives it more.
fn least_room(len: usize) -> usize {
    len.saturating_add(len / 128).saturating_add(4)
}

/// Calls `each` with every long list of `snapshot` (clusters, listeners and their routes),
/// as a closure over a list of any item type.
macro_rules! each_list {
    ($snapshot:expr, $each:ident) => {{
        $each(&mut $snapshot.clusters);
        $each(&mut $snapshot.certificates);
        $each(&mut $snapshot.listeners);
        for listener in &mut $snapshot.listeners {
            $each(&mut listener.http_routes);
            $each(&mut listener.tls_routes);
            $each(&mut listener.tcp_routes);
            $each(&mut listener.udp_routes);
        }
    }};
}

/// Gives each long list of `snapshot` room for a few insertions, in a fresh allocation of
/// [`with_room`] its length where it has less than about half that room; lists with room
/// are left where they are. O(the lists refitted).
pub fn make_room(snapshot: &mut Snapshot) {
    fn refit<T>(list: &mut Vec<T>) {
        if list.capacity() < least_room(list.len()) {
            list.reserve_exact(with_room(list.len()) - list.len());
        }
    }
    each_list!(snapshot, refit);
}

/// Fits each long list of `snapshot` to [`with_room`] its length: more room is given where
/// there is too little, and a list with more (decoding grows lists by doubling) moves to a
/// fresh allocation of that size, as allocators keep a block in place when it shrinks by
/// less than half.
pub fn fit_room(snapshot: &mut Snapshot) {
    fn fit<T>(list: &mut Vec<T>) {
        let room = with_room(list.len());
        if list.capacity() > room {
            let mut fitted = Vec::with_capacity(room);
            fitted.append(list);
            *list = fitted;
        } else if list.capacity() < least_room(list.len()) {
            list.reserve_exact(room - list.len());
        }
    }
    each_list!(snapshot, fit);
}

/// A copy of `snapshot` whose long lists have [`with_room`] their length (a clone has
/// none). Costs what a clone costs.
pub fn copy_with_room(snapshot: &Snapshot) -> Snapshot {
    fn roomy<T: Clone>(list: &[T]) -> Vec<T> {
        let mut copy = Vec::with_capacity(with_room(list.len()));
        copy.extend_from_slice(list);
        copy
    }
    let mut listeners = Vec::with_capacity(with_room(snapshot.listeners.len()));
    listeners.extend(snapshot.listeners.iter().map(|listener| crate::Listener {
        http_routes: roomy(&listener.http_routes),
        tls_routes: roomy(&listener.tls_routes),
        tcp_routes: roomy(&listener.tcp_routes),
        udp_routes: roomy(&listener.udp_routes),
        ..crate::delta::listener_header(listener)
    }));
    Snapshot {
        gateway: snapshot.gateway.clone(),
        version: snapshot.version.clone(),
        listeners,
        clusters: roomy(&snapshot.clusters),
        certificates: roomy(&snapshot.certificates),
        client_validations: snapshot.client_validations.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cluster, HttpRoute, Listener};

    fn snapshot(routes: usize) -> Snapshot {
        Snapshot {
            gateway: "default/gw".into(),
            listeners: vec![Listener {
                name: "http".into(),
                port: 80,
                http_routes: (0..routes).map(|i| HttpRoute { name: format!("r{i}"), ..Default::default() }).collect(),
                ..Default::default()
            }],
            clusters: (0..routes).map(|i| Cluster { name: format!("c{i}"), ..Default::default() }).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_copy_with_room_equals_the_original_and_takes_an_insertion_in_place() {
        let original = snapshot(1000);
        let mut copy = copy_with_room(&original);
        assert_eq!(copy, original);
        let routes = &mut copy.listeners[0].http_routes;
        assert_eq!(routes.capacity(), with_room(1000));
        let at = routes.as_ptr();
        routes.insert(10, HttpRoute { name: "new".into(), ..Default::default() });
        assert_eq!(routes.as_ptr(), at, "the insertion moved the list");
        assert_eq!(copy.clusters.capacity(), with_room(1000));
    }

    #[test]
    fn make_room_refits_only_lists_without_room() {
        let mut roomless = snapshot(1000);
        roomless.listeners[0].http_routes.shrink_to_fit();
        make_room(&mut roomless);
        assert!(roomless.listeners[0].http_routes.capacity() >= with_room(1000));
        let at = roomless.listeners[0].http_routes.as_ptr();
        make_room(&mut roomless);
        assert_eq!(roomless.listeners[0].http_routes.as_ptr(), at, "a list with room was moved");
    }

    #[test]
    fn fit_room_shrinks_lists_with_far_more_room_and_keeps_the_content() {
        let mut grown = snapshot(100);
        grown.clusters.reserve_exact(4000);
        let before = grown.clone();
        fit_room(&mut grown);
        assert_eq!(grown, before);
        assert_eq!(grown.clusters.capacity(), with_room(100));
    }
}
