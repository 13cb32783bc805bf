//! Content hashing and monotonic version stamping.

use prost::Message;
use sha2::{Digest, Sha256};

use crate::{Snapshot, Version};

/// The snapshot's content hash: everything but `version`, from the digests of its items
/// (see [`crate::digest`]).
///
/// Encodings are deterministic: the model has no maps, and every list is ordered by the
/// translator, so equal content always hashes equal.
pub fn content_hash(snapshot: &Snapshot) -> String {
    crate::digest::Digests::of(snapshot).hash(&snapshot.gateway)
}

/// Hex SHA-256 of `bytes` (a saved snapshot's integrity check).
pub fn hash_encoded(unversioned: &[u8]) -> String {
    hex(&Sha256::digest(unversioned))
}

/// Lower-case hex of a digest.
pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The encoding of a snapshot with `version`, from its encoding without one: protobuf
/// merges a message field that appears later, so appending the version is enough (no
/// second encoding of a large snapshot).
pub fn encode_with_version(unversioned: &[u8], version: &Version) -> Vec<u8> {
    let tail = Snapshot { version: Some(version.clone()), ..Default::default() }.encode_to_vec();
    let mut encoded = Vec::with_capacity(unversioned.len() + tail.len());
    encoded.extend_from_slice(unversioned);
    encoded.extend_from_slice(&tail);
    encoded
}

/// Assigns versions to one Gateway's snapshots: the generation grows by one for every
/// change of content and never goes backwards.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Versioner {
    current: Option<Version>,
}

impl Versioner {
    /// A versioner whose next generation is above `floor` (e.g. the highest generation a
    /// reconnecting data plane reports after a controller restart).
    pub fn resuming_above(floor: u64) -> Self {
        Self { current: Some(Version { generation: floor, content_hash: String::new() }) }
    }

    /// The version of the latest stamped snapshot.
    pub fn current(&self) -> Option<&Version> {
        self.current.as_ref()
    }

    /// Raises the floor so the next generation is above `generation`; never lowers it.
    /// Equal generations count: content seen elsewhere under our current number must get
    /// a new one.
    pub fn observe(&mut self, generation: u64) {
        let current = self.current.get_or_insert_with(Version::default);
        if generation >= current.generation {
            current.generation = generation;
            current.content_hash.clear();
        }
    }

    /// Takes `version` as the current one when it is newer: a reconnecting data plane
    /// already serves this content under a higher generation (the controller restarted),
    /// so adopting it avoids a reload with the same content. Returns whether it was taken.
    pub fn adopt(&mut self, version: &Version) -> bool {
        match &self.current {
            Some(current) if current.generation >= version.generation => false,
            _ => {
                self.current = Some(version.clone());
                true
            }
        }
    }

    /// Stamps `snapshot` with a new version if its content differs from the last one;
    /// returns `None` (and leaves the snapshot untouched) when nothing changed.
    pub fn stamp(&mut self, snapshot: &mut Snapshot) -> Option<Version> {
        let version = self.stamp_hash(content_hash(snapshot))?;
        snapshot.version = Some(version.clone());
        Some(version)
    }

    /// Like [`Versioner::stamp`], for a snapshot known by its content hash (see
    /// [`content_hash`]); returns the new version if the content changed.
    pub fn stamp_hash(&mut self, hash: String) -> Option<Version> {
        let previous = self.current.as_ref();
        if previous.is_some_and(|version| version.content_hash == hash) {
            return None;
        }
        let generation = previous.map_or(1, |version| version.generation.saturating_add(1));
        let version = Version { generation, content_hash: hash };
        self.current = Some(version.clone());
        Some(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Listener;

    fn snapshot(port: u32) -> Snapshot {
        Snapshot {
            gateway: "default/gw".into(),
            listeners: vec![Listener { name: "l".into(), port, ..Default::default() }],
            ..Default::default()
        }
    }

    #[test]
    fn hash_ignores_version_and_tracks_content() {
        let mut a = snapshot(80);
        let plain = content_hash(&a);
        a.version = Some(Version { generation: 9, content_hash: "x".into() });
        assert_eq!(content_hash(&a), plain);
        assert_ne!(content_hash(&snapshot(81)), plain);
        assert_eq!(plain.len(), 64);
    }

    #[test]
    fn versions_grow_only_on_change() {
        let mut versioner = Versioner::default();
        let mut first = snapshot(80);
        assert_eq!(versioner.stamp(&mut first).map(|v| v.generation), Some(1));
        let mut same = snapshot(80);
        assert_eq!(versioner.stamp(&mut same), None);
        assert_eq!(same.version, None);
        let mut changed = snapshot(81);
        assert_eq!(versioner.stamp(&mut changed).map(|v| v.generation), Some(2));
        // Going back to earlier content is still a new, higher version.
        let mut back = snapshot(80);
        assert_eq!(versioner.stamp(&mut back).map(|v| v.generation), Some(3));
    }

    #[test]
    fn resume_and_observe_never_go_backwards() {
        let mut versioner = Versioner::resuming_above(41);
        let mut s = snapshot(80);
        assert_eq!(versioner.stamp(&mut s).map(|v| v.generation), Some(42));
        versioner.observe(7);
        assert_eq!(versioner.current().map(|v| v.generation), Some(42));
        versioner.observe(42);
        let mut same = snapshot(80);
        assert_eq!(versioner.stamp(&mut same).map(|v| v.generation), Some(43), "an equal number is outnumbered");
        versioner.observe(100);
        // Same content, but the floor moved: it must be re-stamped above it.
        let mut again = snapshot(80);
        assert_eq!(versioner.stamp(&mut again).map(|v| v.generation), Some(101));
    }

    #[test]
    fn appending_the_version_encodes_the_versioned_snapshot() {
        let mut s = snapshot(80);
        let unversioned = s.encode_to_vec();
        let version = Version { generation: 12, content_hash: hash_encoded(&unversioned) };
        let decoded = Snapshot::decode(encode_with_version(&unversioned, &version).as_slice()).unwrap();
        s.version = Some(version);
        assert_eq!(decoded, s);
        assert_eq!(content_hash(&decoded), content_hash(&snapshot(80)));
    }

    #[test]
    fn adopt_takes_only_newer_versions() {
        let mut versioner = Versioner::default();
        let mut s = snapshot(80);
        let stamped = versioner.stamp(&mut s).unwrap();
        let reported = Version { generation: 57, content_hash: stamped.content_hash.clone() };
        assert!(versioner.adopt(&reported));
        assert_eq!(versioner.current(), Some(&reported));
        // Same content again: nothing to push.
        assert_eq!(versioner.stamp(&mut snapshot(80)), None);
        assert!(!versioner.adopt(&Version { generation: 3, content_hash: "old".into() }));
        assert_eq!(versioner.stamp(&mut snapshot(81)).map(|v| v.generation), Some(58));
    }
}
