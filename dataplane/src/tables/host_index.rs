//! A listener's routes by the hosts they serve, built so that a change of a few routes
//! costs those routes, not the listener.
//!
//! ```text
//!  shards[hash(key) % n] ──► { exact host ──► [Entry], ".wildcard.suffix" ──► [Entry] }
//!  any ──► [Entry]                         Entry = (order key, Arc<Route>), by order key
//!  find(host): exact entries, then each wildcard suffix of host (longest first), then any
//! ```
//!
//! The candidates of a host are composed when it is looked up instead of stored per host,
//! so a route for any host (or a wildcard) is one entry, not one in every host's list.
//! Order keys give the snapshot's order without positions: a route inserted between two
//! others takes a key between theirs, and no other entry changes. The shards are shared
//! between a table and the next one made from it by [`HostIndex::edit`], which copies only
//! the shards it changes.

use std::collections::HashMap;
use std::sync::Arc;

use super::http_routes::Route;

/// The distance between the order keys of consecutive routes in a full compile: room for
/// 40 routes inserted one after another at one place before the listener is compiled
/// again from scratch (see [`between`]), and for 2^24 routes per listener (far more than
/// a snapshot holds: each route is at least a few dozen bytes of a message kept in memory).
/// 2^24 ran out after 24 new routes placed side by side, each then costing a full compile.
pub const ORDER_STEP: u64 = 1 << 40;

/// One route in a host's candidate list.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The route's place in the listener's order (the snapshot's order).
    pub order: u64,
    pub route: Arc<Route>,
}

/// A host's or suffix's candidates, by order key.
type Entries = Arc<[Entry]>;

#[derive(Debug, Clone, Default)]
struct Shard {
    exact: HostMap,
    wildcard: HostMap,
}

/// The routes of one listener by the hosts they serve.
#[derive(Debug, Clone)]
pub struct HostIndex {
    /// A power-of-two number of shards.
    shards: Vec<Arc<Shard>>,
    any: Entries,
    /// How many wildcard suffixes have routes (none: lookups skip the suffix walk).
    wildcards: usize,
}

impl Default for HostIndex {
    fn default() -> Self {
        HostIndex { shards: vec![Arc::new(Shard::default())], any: Arc::from(Vec::new()), wildcards: 0 }
    }
}

/// Hostnames (wildcards without their `*`) to their entries in order.
type HostMap = HashMap<Box<str>, Entries>;

/// The map of `host`'s shard that holds it (made this index's own to edit), its key (a
/// wildcard without its `*`) and whether it is a wildcard.
fn host_map<'a>(shards: &'a mut [Arc<Shard>], host: &'a str) -> Option<(&'a mut HostMap, &'a str, bool)> {
    let wildcard = host.starts_with('*');
    let key = host.strip_prefix('*').unwrap_or(host);
    let at = shard_of(key, shards.len());
    let shard = Arc::make_mut(shards.get_mut(at)?);
    Some((if wildcard { &mut shard.wildcard } else { &mut shard.exact }, key, wildcard))
}

/// FNV-1a: a fixed, cheap hash to pick a shard (the shard's map hashes again).
fn shard_of(key: &str, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash as usize) & (shards - 1)
}

/// The order keys of `count` routes placed between keys `after` and `before` (exclusive),
/// evenly spread; `None` when there is no room (the listener is compiled again).
pub fn between(after: u64, before: Option<u64>, count: usize) -> Option<Vec<u64>> {
    let count_u64 = u64::try_from(count).ok()?;
    let before = match before {
        Some(before) => before,
        None => after.checked_add(ORDER_STEP.checked_mul(count_u64.checked_add(1)?)?)?,
    };
    let step = before.checked_sub(after)? / count_u64.checked_add(1)?;
    if step == 0 {
        return None;
    }
    Some((1..=count_u64).map(|i| after + step * i).collect())
}

impl HostIndex {
    /// An index of `routes` (hostnames, entry), in order.
    pub fn build<'a>(routes: impl ExactSizeIterator<Item = (&'a [String], Entry)>) -> Self {
        let mut hosts = 0usize;
        let routes: Vec<_> = routes.inspect(|(hostnames, _)| hosts += hostnames.len()).collect();
        // About 64 hosts per shard: a change copies one shard's map, not the listener's.
        let shards = (hosts / 64).clamp(1, 4096).next_power_of_two();
        let mut index =
            HostIndex { shards: (0..shards).map(|_| Arc::new(Shard::default())).collect(), ..Default::default() };
        let mut any = Vec::new();
        type Lists = HashMap<Box<str>, Vec<Entry>>;
        let mut lists: Vec<(Lists, Lists)> = (0..shards).map(|_| Default::default()).collect();
        for (hostnames, entry) in routes {
            if hostnames.is_empty() {
                any.push(entry.clone());
            }
            for host in hostnames {
                let key = host.strip_prefix('*').unwrap_or(host);
                if let Some((exact, wildcard)) = lists.get_mut(shard_of(key, shards)) {
                    let map = if host.starts_with('*') { wildcard } else { exact };
                    map.entry(key.into()).or_default().push(entry.clone());
                }
            }
        }
        for (shard, (exact, wildcard)) in index.shards.iter_mut().zip(lists) {
            index.wildcards += wildcard.len();
            *shard = Arc::new(Shard {
                exact: exact.into_iter().map(|(k, v)| (k, Arc::from(v))).collect(),
                wildcard: wildcard.into_iter().map(|(k, v)| (k, Arc::from(v))).collect(),
            });
        }
        index.any = Arc::from(any);
        index
    }

    fn shard(&self, key: &str) -> Option<&Shard> {
        self.shards.get(shard_of(key, self.shards.len())).map(|shard| &**shard)
    }

    /// The first route for `host` that `matches` accepts: routes for exactly that host,
    /// then those of each wildcard covering it (longest first), then routes for any host;
    /// each group in the listener's order.
    pub fn find<'a>(&'a self, host: &str, matches: impl Fn(&Route) -> bool) -> Option<&'a Arc<Route>> {
        let first = |entries: &'a [Entry]| entries.iter().map(|e| &e.route).find(|route| matches(route));
        if let Some(found) = self.shard(host).and_then(|s| s.exact.get(host)).and_then(|e| first(e)) {
            return Some(found);
        }
        if self.wildcards > 0 {
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                let suffix = &rest[dot..];
                if let Some(found) = self.shard(suffix).and_then(|s| s.wildcard.get(suffix)).and_then(|e| first(e)) {
                    return Some(found);
                }
                rest = &rest[dot + 1..];
            }
        }
        first(&self.any)
    }

    /// Every host's and suffix's routes and the routes for any host, in a stable order
    /// (not the order keys: a table compiled from scratch and one edited into the same
    /// content describe the same).
    #[cfg(test)]
    pub fn describe(&self) -> String {
        let routes = |entries: &[Entry]| entries.iter().map(|e| format!("{:?}", e.route)).collect::<Vec<_>>();
        let (mut exact, mut wildcard) = (Vec::new(), Vec::new());
        for shard in &self.shards {
            exact.extend(shard.exact.iter().map(|(key, entries)| format!("{key}={:?}", routes(entries))));
            wildcard.extend(shard.wildcard.iter().map(|(key, entries)| format!("{key}={:?}", routes(entries))));
        }
        exact.sort();
        wildcard.sort();
        format!("exact={exact:?} wildcard={wildcard:?} any={:?} wildcards={}", routes(&self.any), self.wildcards)
    }

    /// A copy to edit: it shares every shard until it changes one.
    pub fn edit(&self) -> Self {
        self.clone()
    }

    /// Adds `entry` for `hostnames` (for any host when there are none), at its order.
    pub fn insert(&mut self, hostnames: &[String], entry: &Entry) {
        if hostnames.is_empty() {
            self.any = with(&self.any, entry);
        }
        for host in hostnames {
            let Some((map, key, wildcard)) = host_map(&mut self.shards, host) else { continue };
            match map.get_mut(key) {
                Some(entries) => *entries = with(entries, entry),
                None => {
                    map.insert(key.into(), Arc::from(vec![entry.clone()]));
                    if wildcard {
                        self.wildcards += 1;
                    }
                }
            }
        }
    }

    /// Removes the entry with key `order` from `hostnames` (from the routes for any host
    /// when there are none).
    pub fn remove(&mut self, hostnames: &[String], order: u64) {
        if hostnames.is_empty() {
            self.any = without(&self.any, order);
        }
        for host in hostnames {
            let Some((map, key, wildcard)) = host_map(&mut self.shards, host) else { continue };
            let Some(entries) = map.get_mut(key) else { continue };
            let left = without(entries, order);
            if left.is_empty() {
                map.remove(key);
                if wildcard {
                    self.wildcards = self.wildcards.saturating_sub(1);
                }
            } else {
                *entries = left;
            }
        }
    }
}

/// `entries` with `entry` at its order (after entries of the same key).
fn with(entries: &[Entry], entry: &Entry) -> Entries {
    let at = entries.partition_point(|e| e.order <= entry.order);
    let mut out = Vec::with_capacity(entries.len() + 1);
    out.extend_from_slice(entries.get(..at).unwrap_or_default());
    out.push(entry.clone());
    out.extend_from_slice(entries.get(at..).unwrap_or_default());
    Arc::from(out)
}

/// `entries` without those of key `order`.
fn without(entries: &[Entry], order: u64) -> Entries {
    entries.iter().filter(|e| e.order != order).cloned().collect::<Vec<_>>().into()
}

/// The longest `.suffix` of `host` (at least one label removed) accepted by `known`.
pub(crate) fn longest_wildcard_suffix(host: &str, known: impl Fn(&str) -> bool) -> Option<&str> {
    let mut rest = host;
    while let Some(dot) = rest.find('.') {
        let suffix = &rest[dot..];
        if known(suffix) {
            return Some(suffix);
        }
        rest = &rest[dot + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)] // test code

    use super::*;

    #[test]
    fn keys_between_neighbours_run_out_only_when_there_is_no_room() {
        assert_eq!(between(0, Some(4), 3), Some(vec![1, 2, 3]));
        assert_eq!(between(0, Some(3), 3), None);
        assert_eq!(between(10, None, 2), Some(vec![10 + ORDER_STEP, 10 + 2 * ORDER_STEP]));
        assert_eq!(between(u64::MAX - 1, None, 1), None);
        // Repeated insertion at one place halves the gap: ORDER_STEP leaves room for 40.
        let (mut low, high) = (ORDER_STEP, 2 * ORDER_STEP);
        let mut fits = 0;
        while let Some(keys) = between(low, Some(high), 1) {
            low = keys[0];
            fits += 1;
        }
        assert_eq!(fits, 40);
    }
}
