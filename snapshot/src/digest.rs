//! The content hash of a snapshot from digests of its items, so that a delta's result is
//! hashed at the cost of what the delta changes.
//!
//! ```text
//!  item digest = SHA-256(item's protobuf encoding)        (cluster, certificate, client
//!                                                          validation, listener header, route)
//!  content hash = hex SHA-256(tag, gateway, every list's length and item digests in order)
//! ```
//!
//! Both sides keep the digests of the snapshot they hold: the controller edits the last
//! published one's with the delta it sends, the data plane the served one's with the
//! delta it receives, each hashing only inserted items. The hash covers every field of the
//! snapshot but `version` (a new field of `Snapshot` must join [`Digests::hash`]).

use prost::Message;
use sha2::{Digest as _, Sha256};

use crate::delta::{DeltaError, Hunk, listener_header, spans};
use crate::{Snapshot, SnapshotDelta};

/// SHA-256 of one item's encoding.
pub type Digest = [u8; 32];

fn digest<M: Message>(item: &M) -> Digest {
    Sha256::digest(item.encode_to_vec()).into()
}

/// The digests of one listener: its header (everything but its routes) and its routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ListenerDigests {
    header: Digest,
    http: Vec<Digest>,
    tcp: Vec<Digest>,
    udp: Vec<Digest>,
    tls: Vec<Digest>,
}

/// The item digests of one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Digests {
    clusters: Vec<Digest>,
    certificates: Vec<Digest>,
    client_validations: Vec<Digest>,
    listeners: Vec<ListenerDigests>,
}

/// `list` with the delta's hunks applied (where [`spans`] says), inserted items digested.
fn edit<H: Hunk>(list: &mut Vec<Digest>, hunks: &[H], name: &'static str) -> Result<(), DeltaError>
where
    H::Item: Message,
{
    let spans = spans(list.len(), hunks, name)?;
    for (hunk, (start, end)) in hunks.iter().zip(spans).rev() {
        list.splice(start..end, hunk.insert().iter().map(digest));
    }
    Ok(())
}

impl Digests {
    /// The digests of every item of `snapshot`.
    pub fn of(snapshot: &Snapshot) -> Self {
        Digests {
            clusters: snapshot.clusters.iter().map(digest).collect(),
            certificates: snapshot.certificates.iter().map(digest).collect(),
            client_validations: snapshot.client_validations.iter().map(digest).collect(),
            listeners: snapshot
                .listeners
                .iter()
                .map(|listener| ListenerDigests {
                    header: digest(&listener_header(listener)),
                    http: listener.http_routes.iter().map(digest).collect(),
                    tcp: listener.tcp_routes.iter().map(digest).collect(),
                    udp: listener.udp_routes.iter().map(digest).collect(),
                    tls: listener.tls_routes.iter().map(digest).collect(),
                })
                .collect(),
        }
    }

    /// The content hash (hex) of the snapshot of `gateway` these are the digests of.
    pub fn hash(&self, gateway: &str) -> String {
        let mut hasher = {
            // Tag and gateway first: a different scheme or Gateway never hashes equal.
            let mut top = Sha256::new();
            top.update(b"sluice-content-v2\0");
            top.update((gateway.len() as u64).to_le_bytes());
            top.update(gateway.as_bytes());
            top
        };
        let mut list = |digests: &[Digest]| {
            hasher.update((digests.len() as u64).to_le_bytes());
            for d in digests {
                hasher.update(d);
            }
        };
        list(&self.clusters);
        list(&self.certificates);
        list(&self.client_validations);
        list(&[]);
        for listener in &self.listeners {
            list(std::slice::from_ref(&listener.header));
            list(&listener.http);
            list(&listener.tcp);
            list(&listener.udp);
            list(&listener.tls);
        }
        list(&[]);
        crate::hash::hex(&hasher.finalize())
    }

    /// The digests of the snapshot `delta` makes of the one these are of, digesting only
    /// the items it inserts.
    pub fn after(&self, delta: &SnapshotDelta) -> Result<Digests, DeltaError> {
        let mut next = self.clone_shallow_for(delta)?;
        edit(&mut next.clusters, &delta.clusters, "clusters")?;
        edit(&mut next.certificates, &delta.certificates, "certificates")?;
        edit(&mut next.client_validations, &delta.client_validations, "client_validations")?;
        for (listener, change) in next.listeners.iter_mut().zip(&delta.listeners) {
            if let Some(header) = &change.header {
                listener.header = digest(&listener_header(header));
            }
            edit(&mut listener.http, &change.http_routes, "http_routes")?;
            edit(&mut listener.tcp, &change.tcp_routes, "tcp_routes")?;
            edit(&mut listener.udp, &change.udp_routes, "udp_routes")?;
            edit(&mut listener.tls, &change.tls_routes, "tls_routes")?;
        }
        Ok(next)
    }

    /// The digests the delta's listeners start from (their base listeners', or none for a
    /// new one), with the other lists taken over.
    fn clone_shallow_for(&self, delta: &SnapshotDelta) -> Result<Digests, DeltaError> {
        let mut listeners = Vec::with_capacity(delta.listeners.len());
        for change in &delta.listeners {
            let listener = match change.base_index {
                Some(index) => self
                    .listeners
                    .get(index as usize)
                    .cloned()
                    .ok_or(DeltaError::NoSuchListener { index, count: self.listeners.len() })?,
                None if change.header.is_none() => return Err(DeltaError::MissingHeader),
                None => ListenerDigests::default(),
            };
            listeners.push(listener);
        }
        Ok(Digests {
            clusters: self.clusters.clone(),
            certificates: self.certificates.clone(),
            client_validations: self.client_validations.clone(),
            listeners,
        })
    }
}
