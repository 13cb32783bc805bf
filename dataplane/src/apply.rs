//! Applying snapshots: validate, compile (reusing what did not change, or patching only
//! what a delta changes), swap the tables in atomically, remember what is served.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arc_swap::ArcSwap;
use sluice_snapshot::digest::Digests;
use sluice_snapshot::push::Dropped;
use sluice_snapshot::{Snapshot, SnapshotDelta, Version};

use crate::metrics::Metrics;
use crate::tables::Tables;
use crate::tables::{Layout, Previous, compile_reusing};

/// What serving needs of the first snapshot applied: its Gateway and listeners (the
/// ports are fixed for the life of the process). Not the snapshot itself, which the
/// applier keeps or drops.
pub struct Listening {
    pub gateway: String,
    /// (protocol, port) of every listener.
    pub listeners: Vec<(sluice_snapshot::Protocol, u32)>,
}

impl Listening {
    pub(crate) fn of(snapshot: &Snapshot) -> Listening {
        Listening {
            gateway: snapshot.gateway.clone(),
            listeners: snapshot.listeners.iter().map(|l| (l.protocol(), l.port)).collect(),
        }
    }
}

impl Applier {
    /// An applier with nothing served yet; `first` gets what serving needs of the first
    /// snapshot applied, and its tables. With `keep`, the snapshot served and what its
    /// tables were compiled with are kept, so that deltas apply and the next compile
    /// reuses what did not change (the push client); without, every snapshot is compiled
    /// whole and nothing but the tables is held (a snapshot file: a few MB less at 5000
    /// routes).
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        first: Option<std::sync::mpsc::Sender<(Listening, Tables)>>,
        keep: bool,
    ) -> Applier {
        Applier {
            keep,
            metrics,
            tables: None,
            current: None,
            snapshot: None,
            layout: None,
            digests: None,
            first,
            ports: Vec::new(),
            dropped: Vec::new(),
        }
    }
}

/// Applies snapshots and remembers what is served.
pub(crate) struct Applier {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tables: Option<Tables>,
    pub(crate) current: Option<Version>,
    /// The snapshot served (its version is `current`): the base of the next delta, and
    /// what the next compile reuses unchanged pieces of.
    pub(crate) snapshot: Option<Snapshot>,
    /// What the served tables were compiled with, position by position (see [`Layout`]).
    pub(crate) layout: Option<Layout>,
    /// The digests of `snapshot`'s items (made once a whole snapshot is answered): a
    /// delta's result is hashed at the cost of its changes.
    pub(crate) digests: Option<Digests>,
    pub(crate) first: Option<std::sync::mpsc::Sender<(Listening, Tables)>>,
    /// The listening sockets as (port, UDP?): a port moving between TCP and UDP needs a
    /// restart as much as a new port does.
    pub(crate) ports: Vec<(u32, bool)>,
    /// The pieces of the current snapshot that are not served (reported in every ACK and
    /// in the Hello of a reconnect).
    pub(crate) dropped: Vec<Dropped>,
    /// Whether `snapshot` and `layout` are kept (see [`Applier::new`]).
    pub(crate) keep: bool,
}

impl Applier {
    pub(crate) fn apply(&mut self, snapshot: Snapshot) -> Result<Version, String> {
        let version = snapshot.version.clone().ok_or("the snapshot has no version")?;
        if let Some(current) = &self.current {
            if version.generation < current.generation {
                return Err(format!(
                    "version {} is older than the served version {}",
                    version.generation, current.generation
                ));
            }
            let same_content = current.content_hash == version.content_hash && !version.content_hash.is_empty();
            if version.generation == current.generation && !same_content {
                return Err(format!("version {} is already serving other content", version.generation));
            }
            if same_content {
                // Same content, maybe a newer number: nothing to reload.
                self.metrics.generation.store(version.generation, Ordering::Relaxed);
                self.current = Some(version.clone());
                if let Some(served) = &mut self.snapshot {
                    served.version = Some(version.clone());
                }
                return Ok(version);
            }
        }
        self.install(snapshot)?;
        Ok(version)
    }

    /// Compiles `snapshot` (reusing the pieces the served tables share with it) and serves
    /// it, without looking at its version: what a `--snapshot` file says is served as it
    /// is, and `apply` has checked a pushed snapshot's.
    pub(crate) fn install(&mut self, snapshot: Snapshot) -> Result<(), String> {
        let started = Instant::now();
        let served = self.tables.as_ref().map(|tables| tables.load_full());
        let previous = match (&self.snapshot, &served, &self.layout) {
            (Some(snapshot), Some(compiled), Some(layout)) => Some(Previous { snapshot, compiled, layout }),
            _ => None,
        };
        let (compiled, layout) =
            compile_reusing(&snapshot, &self.metrics, previous).map_err(|error| error.to_string())?;
        drop(served);
        let compiled_at = started.elapsed();
        self.dropped =
            compiled.dropped.iter().map(|d| Dropped { name: d.name.clone(), problem: d.problem.clone() }).collect();
        self.metrics.generation.store(compiled.generation, Ordering::Relaxed);
        self.metrics.dropped_pieces.store(compiled.dropped.len() as u64, Ordering::Relaxed);
        let mut ports: Vec<(u32, bool)> =
            snapshot.listeners.iter().map(|l| (l.port, l.protocol() == sluice_snapshot::Protocol::Udp)).collect();
        ports.sort_unstable();
        ports.dedup();
        match &self.tables {
            Some(tables) => {
                swap_in(tables, compiled, &self.metrics);
                if ports != self.ports {
                    tracing::warn!(
                        serving = ?self.ports,
                        wanted = ?ports,
                        "listener ports changed; they take effect when the data plane restarts"
                    );
                }
            }
            None => {
                let tables: Tables = Arc::new(ArcSwap::from_pointee(compiled));
                self.tables = Some(tables.clone());
                self.ports = ports;
                if let Some(first) = self.first.take() {
                    let _ = first.send((Listening::of(&snapshot), tables));
                }
            }
        }
        let swapped_at = started.elapsed();
        self.current = snapshot.version.clone();
        if self.keep {
            self.snapshot = Some(compact(snapshot));
            self.layout = Some(layout);
        }
        // Only now does nothing hold the counters of routes gone (the old layout did).
        self.metrics.prune_routes();
        self.digests = None;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            compile_ms = ms(compiled_at),
            swap_ms = ms(swapped_at - compiled_at),
            keep_ms = ms(started.elapsed() - swapped_at),
            "compiled"
        );
        Ok(())
    }

    /// Digests the served snapshot if it has no digests yet (a whole snapshot was just
    /// applied), so that hashing the next delta's result digests only what it inserts.
    pub(crate) fn digest_served(&mut self) {
        if self.digests.is_none()
            && let Some(snapshot) = &self.snapshot
        {
            self.digests = Some(Digests::of(snapshot));
        }
    }

    /// Applies a delta to the served snapshot. Returns the new version and the new
    /// snapshot's encoding (for `--state-dir`), or what to answer.
    pub(crate) fn apply_delta(&mut self, encoded: &[u8]) -> Applied {
        let started = Instant::now();
        let delta: Box<SnapshotDelta> = prost::Message::decode(encoded)
            .map(Box::new)
            .map_err(|error| Unapplied::Resync(format!("cannot decode: {error}")))?;
        let version = delta.version.clone().ok_or_else(|| Unapplied::Resync("the delta has no version".into()))?;
        let base_hash = delta.base.as_ref().map(|v| v.content_hash.as_str());
        let at_base = self.snapshot.as_ref().is_some_and(|served| {
            served.version.as_ref().map(|v| v.content_hash.as_str()) == base_hash && base_hash.is_some()
        });
        if !at_base {
            return Err(Unapplied::Resync("the delta's base is not the snapshot served".into()));
        }
        let newer = self.current.as_ref().is_none_or(|current| version.generation > current.generation);
        let delta = if newer {
            match self.apply_patch(delta, &version, started) {
                Ok(applied) => return applied,
                Err(delta) => delta,
            }
        } else {
            delta
        };
        let Some(base) = self.snapshot.as_ref() else {
            return Err(Unapplied::Resync("the delta's base is not the snapshot served".into()));
        };
        let mut next =
            sluice_snapshot::delta::apply(base, &delta).map_err(|error| Unapplied::Resync(error.to_string()))?;
        let applied_at = started.elapsed();
        let digests = self
            .digests
            .get_or_insert_with(|| Digests::of(base))
            .after(&delta)
            .map_err(|error| Unapplied::Resync(error.to_string()))?;
        drop(delta);
        let hash = digests.hash(&next.gateway);
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(delta_ms = ms(applied_at), hash_ms = ms(started.elapsed() - applied_at), "delta applied");
        if hash != version.content_hash {
            return Err(Unapplied::Resync(format!(
                "the delta's result hashes to {hash}, not {}",
                version.content_hash
            )));
        }
        next.version = Some(version.clone());
        let applied = self.apply(next).map_err(|error| Unapplied::Rejected(Some(version.clone()), error))?;
        self.digests = Some(digests);
        Ok(applied)
    }
}

impl Applier {
    /// Applies `delta` by compiling only what it changes (see [`crate::incremental`]);
    /// gives the delta back when it needs the full compile (nothing was changed then).
    fn apply_patch(
        &mut self,
        delta: Box<SnapshotDelta>,
        version: &Version,
        started: Instant,
    ) -> Result<Applied, Box<SnapshotDelta>> {
        let (Some(tables), Some(layout), Some(base)) = (&self.tables, &mut self.layout, &mut self.snapshot) else {
            return Err(delta);
        };
        let served = tables.load_full();
        let Some(patched) = crate::incremental::patch(base, &served, layout, &delta, &self.metrics) else {
            return Err(delta);
        };
        drop(served);
        let patched_at = started.elapsed();
        // On any answer but success, nothing changed: the served snapshot and its digests
        // stay the base of the next delta.
        let next = match self.digests.get_or_insert_with(|| Digests::of(base)).after(&delta) {
            Ok(next) => next,
            Err(error) => return Ok(Err(Unapplied::Resync(error.to_string()))),
        };
        let hash = next.hash(&delta.gateway);
        let hashed_at = started.elapsed();
        if hash != version.content_hash {
            let problem = format!("the delta's result hashes to {hash}, not {}", version.content_hash);
            return Ok(Err(Unapplied::Resync(problem)));
        }
        if let Err(error) = sluice_snapshot::delta::apply_in_place(base, *delta) {
            // Checked by the patch already; the base is unchanged.
            return Ok(Err(Unapplied::Resync(error.to_string())));
        }
        self.digests = Some(next);
        let compiled = patched.commit(layout);
        let edited_at = started.elapsed();
        base.version = Some(version.clone());
        self.metrics.generation.store(version.generation, Ordering::Relaxed);
        swap_in(tables, compiled, &self.metrics);
        self.metrics.prune_routes();
        self.current = Some(version.clone());
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        tracing::debug!(
            patch_ms = ms(patched_at),
            hash_ms = ms(hashed_at - patched_at),
            edit_ms = ms(edited_at - hashed_at),
            swap_ms = ms(started.elapsed() - edited_at),
            "delta patched"
        );
        Ok(Ok(version.clone()))
    }
}

/// The snapshot with its long lists in allocations of about their length, with room for
/// the next deltas ([`sluice_snapshot::room::fit_room`]): decoding grows them by doubling
/// (8192 routes' room for 5000 routes: ~0.8 MB of the ~264-byte routes), and the snapshot
/// is kept while it is served.
fn compact(mut snapshot: Snapshot) -> Snapshot {
    sluice_snapshot::room::fit_room(&mut snapshot);
    snapshot
}

/// Serves `compiled` from now on (requests in flight finish on the tables they hold);
/// the caller prunes the counters of routes gone once it holds none of them itself.
fn swap_in(tables: &Tables, compiled: crate::tables::Compiled, metrics: &Metrics) {
    tables.store(Arc::new(compiled));
    metrics.reloads_applied.fetch_add(1, Ordering::Relaxed);
}

/// A delta's outcome: the new version, or what to answer.
pub(crate) type Applied = Result<Version, Unapplied>;

/// Why a delta was not applied.
pub(crate) enum Unapplied {
    /// It does not fit the snapshot served: the whole snapshot is asked for.
    Resync(String),
    /// Its result is rejected like a snapshot would be (NACK).
    Rejected(Option<Version>, String),
}
