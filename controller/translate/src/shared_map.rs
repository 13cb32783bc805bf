//! [`SharedMap`]: an ordered map whose copies share their bulk, for the status of
//! thousands of routes that the reconcile pass, the status writer and the standalone
//! report each hold a version of.
//!
//! A copy of a `BTreeMap` copies every entry; a route change then costs a copy of every
//! route's status wherever the old status is still held. A `SharedMap` keeps its entries
//! in a base shared by its copies and the entries changed since in a small map of its
//! own: a copy costs the changes, a change costs an insertion into them. When the changes
//! outgrow [`SharedMap::max_recent`] (32 and a 64th of the base), they are folded into the
//! base, which is copied first only if another copy still shares it: one copy of the
//! whole for every few dozen changes.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::btree_map;
use std::iter::Peekable;
use std::sync::Arc;

/// An ordered map from `K` to `V`, cheap to copy (see the module's documentation).
#[derive(Clone)]
pub struct SharedMap<K, V> {
    base: Arc<BTreeMap<K, V>>,
    /// Entries changed since the base: `None` where an entry of the base was removed.
    recent: BTreeMap<K, Option<V>>,
    len: usize,
}

impl<K, V> Default for SharedMap<K, V> {
    fn default() -> Self {
        SharedMap { base: Arc::new(BTreeMap::new()), recent: BTreeMap::new(), len: 0 }
    }
}

impl<K: Ord + Clone, V: Clone> SharedMap<K, V> {
    /// How many changed entries a map keeps before folding them into its base.
    pub fn max_recent(&self) -> usize {
        32 + self.base.len() / 64
    }

    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self.recent.get(key) {
            Some(recent) => recent.as_ref(),
            None => self.base.get(key),
        }
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.get(key).is_some()
    }

    /// The entry of `key` to change in place (copied out of the base first).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        if !self.recent.contains_key(key) {
            let value = self.base.get(key)?.clone();
            self.recent.insert(key.clone(), Some(value));
        }
        // A change made here is folded with the next insertion or removal.
        self.recent.get_mut(key).and_then(Option::as_mut)
    }

    /// Inserts or replaces `key`'s entry; returns whether there was one.
    pub fn insert(&mut self, key: K, value: V) -> bool {
        let had = self.contains_key(&key);
        if !had {
            self.len += 1;
        }
        self.recent.insert(key, Some(value));
        self.fold_if_due();
        had
    }

    /// Removes `key`'s entry; returns whether there was one.
    pub fn remove(&mut self, key: &K) -> bool {
        if !self.contains_key(key) {
            return false;
        }
        self.len -= 1;
        if self.base.contains_key(key) {
            self.recent.insert(key.clone(), None);
        } else {
            self.recent.remove(key);
        }
        self.fold_if_due();
        true
    }

    /// The entries in key order.
    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter { base: self.base.iter().peekable(), recent: self.recent.iter().peekable() }
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// Whether both share their base (copies of one another, with no fold since).
    pub fn shares_base_with(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.base, &other.base)
    }

    /// The keys whose entries differ between `self` and `other` when they share their
    /// base (found among the changes each made since: O(those changes)); None when they
    /// do not.
    pub fn changed_keys<'a>(&'a self, other: &'a Self) -> Option<impl Iterator<Item = &'a K> + 'a>
    where
        V: PartialEq,
    {
        let differs = |key: &&K| self.get(*key) != other.get(*key);
        let ours = self.recent.keys().filter(differs);
        let theirs = other.recent.keys().filter(|key| !self.recent.contains_key(*key)).filter(differs);
        self.shares_base_with(other).then(|| ours.chain(theirs))
    }

    fn fold_if_due(&mut self) {
        if self.recent.len() <= self.max_recent() {
            return;
        }
        let base = Arc::make_mut(&mut self.base);
        for (key, value) in std::mem::take(&mut self.recent) {
            match value {
                Some(value) => base.insert(key, value),
                None => base.remove(&key),
            };
        }
    }
}

impl<K: Ord, V> From<BTreeMap<K, V>> for SharedMap<K, V> {
    fn from(map: BTreeMap<K, V>) -> Self {
        SharedMap { len: map.len(), base: Arc::new(map), recent: BTreeMap::new() }
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for SharedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        SharedMap::from(iter.into_iter().collect::<BTreeMap<K, V>>())
    }
}

/// The entries of a [`SharedMap`] in key order: its base merged with its changes.
pub struct Iter<'a, K, V> {
    base: Peekable<btree_map::Iter<'a, K, V>>,
    recent: Peekable<btree_map::Iter<'a, K, Option<V>>>,
}

impl<'a, K: Ord, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.base.peek(), self.recent.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((b, _)), Some((r, _))) => b.cmp(r),
            };
            match order {
                Ordering::Less => return self.base.next(),
                Ordering::Equal => {
                    // The change replaces (or removes) the base's entry.
                    self.base.next();
                }
                Ordering::Greater => {}
            }
            if let Some((key, Some(value))) = self.recent.next() {
                return Some((key, value));
            }
        }
    }
}

impl<'a, K: Ord + Clone, V: Clone> IntoIterator for &'a SharedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> PartialEq for SharedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        if self.len != other.len {
            return false;
        }
        if self.shares_base_with(other) && self.recent.len() == other.recent.len() {
            // Copies of one another: only the changes can differ.
            return self.recent == other.recent;
        }
        self.iter().eq(other.iter())
    }
}

impl<K: Ord + Clone, V: Clone + Eq> Eq for SharedMap<K, V> {}

impl<K: Ord + Clone + std::fmt::Debug, V: Clone + std::fmt::Debug> std::fmt::Debug for SharedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Ord + Clone + serde::Serialize, V: Clone + serde::Serialize> serde::Serialize for SharedMap<K, V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u32),
        Remove(u16),
        Mutate(u16),
        Copy,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u16..300, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (0u16..300).prop_map(Op::Remove),
            (0u16..300).prop_map(Op::Mutate),
            Just(Op::Copy),
        ]
    }

    proptest! {
        /// Every operation gives what a BTreeMap gives, and copies taken along the way
        /// keep what they held whatever the original does after.
        #[test]
        fn behaves_as_a_btreemap_and_copies_stay_as_taken(ops in proptest::collection::vec(op(), 0..600)) {
            let mut map = SharedMap::new();
            let mut model = BTreeMap::new();
            let mut copies: Vec<(SharedMap<u16, u32>, BTreeMap<u16, u32>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(map.insert(k, v), model.insert(k, v).is_some()),
                    Op::Remove(k) => prop_assert_eq!(map.remove(&k), model.remove(&k).is_some()),
                    Op::Mutate(k) => {
                        let (a, b) = (map.get_mut(&k), model.get_mut(&k));
                        prop_assert_eq!(a.is_some(), b.is_some());
                        if let (Some(a), Some(b)) = (a, b) {
                            *a = a.wrapping_add(1);
                            *b = b.wrapping_add(1);
                        }
                    }
                    Op::Copy => copies.push((map.clone(), model.clone())),
                }
                prop_assert_eq!(map.len(), model.len());
                prop_assert!(map.iter().eq(model.iter()));
            }
            for (copy, model) in &copies {
                prop_assert!(copy.iter().eq(model.iter()));
                prop_assert_eq!(copy.len(), model.len());
                prop_assert_eq!(copy == &map, model == &map.iter().map(|(k, v)| (*k, *v)).collect::<BTreeMap<_, _>>());
                // Copies sharing the base name every key whose entry differs, and no other.
                if let Some(changed) = copy.changed_keys(&map) {
                    let changed: Vec<u16> = changed.copied().collect();
                    let differing: Vec<u16> = model
                        .keys()
                        .chain(map.keys())
                        .copied()
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .filter(|key| copy.get(key) != map.get(key))
                        .collect();
                    let named: std::collections::BTreeSet<u16> = changed.iter().copied().collect();
                    prop_assert_eq!(named.len(), changed.len(), "a key named twice");
                    prop_assert_eq!(named.into_iter().collect::<Vec<_>>(), differing);
                } else {
                    prop_assert!(!copy.shares_base_with(&map));
                }
            }
        }
    }

    #[test]
    fn changes_fold_into_the_base_without_touching_a_copy() {
        let mut map: SharedMap<u32, u32> = (0..1000).map(|i| (i, i)).collect();
        let copy = map.clone();
        for i in 0..100 {
            map.insert(i, i + 1);
        }
        assert!(!map.shares_base_with(&copy), "folded into a base of its own");
        assert!(map.recent.len() <= map.max_recent());
        assert_eq!(copy.get(&5), Some(&5));
        assert_eq!(map.get(&5), Some(&6));
        assert_ne!(map, copy);
        let again = map.clone();
        assert!(again.shares_base_with(&map));
        assert_eq!(again, map);
    }
}
