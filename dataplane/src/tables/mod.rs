//! Compiled routing tables: a snapshot turned into what the request path needs, built off
//! the request path and swapped in whole.
//!
//! ```text
//!  Snapshot ──compile──► Compiled { ports: port → PortTable }
//!                           PortTable: listener chosen by Host (exact > longest wildcard > any)
//!                           ListenerTable: candidate routes by Host, in precedence order
//!                           Route: match (path, headers, query, method) + action
//! ```
//!
//! Listeners are isolated: a request is routed by the most specific listener whose
//! hostname matches, never by another. Within a listener, routes whose hostname matches
//! the request more specifically come first (exact, then longer wildcards, then routes
//! for any host); within those, the snapshot's order, which is the spec's precedence.

use std::collections::HashMap;
use std::sync::Arc;

use pingora_rustls::sign::CertifiedKey;
use sluice_snapshot::{Certificate, Cluster, HttpRoute, Piece, Protocol, Snapshot, TlsMode, WeightedBackend};

use crate::client_auth::ClientAuth;
use crate::view::RequestView;

mod clusters;
mod dropped;
pub(crate) mod host_index;
mod http_routes;
pub(crate) mod tls_routes;

pub(crate) use clusters::{
    Backends, ClusterLookup, ClusterTable, InFlight, Target, backend_target, cluster_table, http_route_clusters,
    l4_route_clusters, now_unix_ms,
};
pub(crate) use dropped::Dropped;
use host_index::longest_wildcard_suffix;
use http_routes::failed_route;
pub(crate) use http_routes::{Route, compile_route, terminal_filter};

/// Everything the proxy needs for one snapshot.
#[derive(Debug, Default)]
pub struct Compiled {
    pub gateway: String,
    pub generation: u64,
    pub ports: HashMap<u16, PortTable>,
    /// Certificates of the TLS-terminating ports, chosen by SNI.
    pub tls: HashMap<u16, Arc<CertificateTable>>,
    /// HTTPS ports whose clients are asked for certificates, with their validation.
    pub client_auth: HashMap<u16, Arc<ClientAuth>>,
    /// Backends of the TCP ports.
    pub tcp: HashMap<u16, Arc<Backends>>,
    /// Backends of the UDP ports.
    pub udp: HashMap<u16, Arc<Backends>>,
    /// The TLS listeners (protocol TLS) of each port.
    pub tls_ports: HashMap<u16, Arc<tls_routes::TlsPortTable>>,
    /// The pieces of the snapshot that could not be compiled and are not served (the
    /// push ACK reports them, so that their route's or listener's status says why).
    pub dropped: Vec<Dropped>,
    /// Every cluster of the snapshot, by name (the admin endpoint lists their endpoints).
    pub clusters: Vec<Arc<ClusterTable>>,
    /// When these tables were built, in milliseconds since the Unix epoch; they are swapped
    /// in right after, so this is when the snapshot's content started to be served.
    pub compiled_unix_ms: u64,
}

/// The certificates of the listeners sharing one TLS port.
#[derive(Debug, Default)]
pub struct CertificateTable {
    by_exact: HashMap<String, Arc<CertifiedKey>>,
    by_wildcard: HashMap<String, Arc<CertifiedKey>>,
    any: Option<Arc<CertifiedKey>>,
}

impl CertificateTable {
    /// The certificate for a TLS server name: the listener with that exact hostname, else
    /// the longest matching wildcard, else the listener without hostname. Without SNI, the
    /// listener without hostname, else any listener's.
    pub fn lookup(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return self
                .any
                .clone()
                .or_else(|| self.by_exact.values().chain(self.by_wildcard.values()).next().cloned());
        };
        self.by_exact
            .get(&name)
            .or_else(|| {
                longest_wildcard_suffix(&name, |s| self.by_wildcard.contains_key(s))
                    .and_then(|s| self.by_wildcard.get(s))
            })
            .or(self.any.as_ref())
            .cloned()
    }
}

/// The listeners sharing one port.
#[derive(Debug, Default, Clone)]
pub struct PortTable {
    pub protocol: Option<Protocol>,
    by_exact: HashMap<String, usize>,
    by_wildcard: HashMap<String, usize>,
    any: Option<usize>,
    pub listeners: Vec<ListenerTable>,
}

/// One listener: its routes, grouped by the hosts they serve.
#[derive(Debug, Default, Clone)]
pub struct ListenerTable {
    pub name: String,
    pub(crate) index: host_index::HostIndex,
}

/// What a compile knows of each HTTP listener it served, beyond the tables: the compiled
/// route at each position of the listener's snapshot routes, with its order key. Kept by
/// the applier next to the served snapshot (and edited in place with it), so that the next
/// change finds what it replaces by position.
#[derive(Debug, Default)]
pub struct Layout {
    /// By listener name, parallel to the listener's `http_routes`.
    pub(crate) listeners: HashMap<String, Vec<Slot>>,
    /// How many routes (of every kind) point at each cluster, by cluster name: a cluster
    /// leaves without compiling anything else only when none does.
    pub(crate) cluster_uses: HashMap<String, usize>,
}

/// One compiled route of a listener.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub order: u64,
    pub route: Arc<Route>,
    /// The route could not be compiled (it answers 500 or never matches).
    pub dropped: bool,
}

/// How many routes of `snapshot` point at each cluster.
fn cluster_uses(snapshot: &Snapshot) -> HashMap<String, usize> {
    let mut uses: HashMap<String, usize> = HashMap::new();
    let mut count = |name: &str| *uses.entry(name.to_string()).or_default() += 1;
    for listener in &snapshot.listeners {
        for route in &listener.http_routes {
            http_route_clusters(route).for_each(&mut count);
        }
        l4_route_clusters(listener).for_each(&mut count);
    }
    uses
}

/// Shared, atomically swapped routing tables: the request paths load them once per
/// request, the config sources swap them.
pub type Tables = Arc<arc_swap::ArcSwap<Compiled>>;

/// Why a snapshot could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Invalid(#[from] sluice_snapshot::ValidationError),
}

/// Builds the routing tables for `snapshot`. A structurally invalid snapshot (names,
/// ports, clusters that do not fit together) is an error; a route, listener or
/// certificate that cannot be compiled is dropped alone (see [`Dropped`]) and the rest
/// is served.
pub fn compile(snapshot: &Snapshot, metrics: &crate::metrics::Metrics) -> Result<Compiled, CompileError> {
    compile_reusing(snapshot, metrics, None).map(|(compiled, _)| compiled)
}

/// The snapshot the served tables were compiled from, with those tables: what
/// [`compile_reusing`] may take over.
#[derive(Clone, Copy)]
pub struct Previous<'a> {
    pub snapshot: &'a Snapshot,
    pub compiled: &'a Compiled,
    pub layout: &'a Layout,
}

/// The compiled pieces of a previous snapshot that a new one may reuse as they are: the
/// cluster tables by name and the routes by (listener, route name), each with the
/// snapshot content it was compiled from.
struct Reusable<'a> {
    clusters: HashMap<&'a str, (&'a Cluster, &'a Arc<ClusterTable>)>,
    routes: HashMap<(&'a str, &'a str), (&'a HttpRoute, &'a Arc<Route>)>,
}

impl<'a> Reusable<'a> {
    fn new(previous: Previous<'a>) -> Self {
        let Previous { snapshot, compiled, layout } = previous;
        let tables: HashMap<&str, &Arc<ClusterTable>> =
            compiled.clusters.iter().map(|table| (table.name.as_str(), table)).collect();
        let clusters = snapshot
            .clusters
            .iter()
            // A cluster presenting a client certificate depends on that certificate too:
            // it is compiled again (rare enough not to track the certificate).
            .filter(|cluster| cluster.tls.as_ref().is_none_or(|tls| tls.client_certificate.is_empty()))
            .filter_map(|cluster| Some((cluster.name.as_str(), (cluster, *tables.get(cluster.name.as_str())?))))
            .collect();
        let mut routes = HashMap::new();
        for listener in &snapshot.listeners {
            let Some(slots) = layout.listeners.get(listener.name.as_str()) else { continue };
            if slots.len() != listener.http_routes.len() {
                continue;
            }
            for (source, slot) in listener.http_routes.iter().zip(slots) {
                // A route that failed answers 500: compiled again, to report it again.
                if !slot.dropped {
                    routes.entry((listener.name.as_str(), source.name.as_str())).or_insert((source, &slot.route));
                }
            }
        }
        Self { clusters, routes }
    }

    /// The previous table of `cluster`, if its content is unchanged.
    fn cluster(&self, cluster: &Cluster) -> Option<Arc<ClusterTable>> {
        let (old, table) = self.clusters.get(cluster.name.as_str())?;
        (*old == cluster).then(|| Arc::clone(table))
    }

    /// The previous compiled `route` of `listener`, if its content is unchanged and it
    /// points at the very cluster tables the new snapshot uses.
    fn route(
        &self,
        listener: &str,
        route: &HttpRoute,
        clusters: &HashMap<&str, Arc<ClusterTable>>,
    ) -> Option<Arc<Route>> {
        let (old, compiled) = self.routes.get(&(listener, route.name.as_str()))?;
        if *old != route {
            return None;
        }
        let same = |table: &Arc<ClusterTable>| {
            clusters.get(table.name.as_str()).is_some_and(|current| Arc::ptr_eq(current, table))
        };
        let backends_same = compiled.backends.targets().all(|target| match target {
            Target::Cluster(table) => same(table),
            Target::Status(_) => true,
        });
        (backends_same && compiled.mirrors.iter().all(|(table, _, _)| same(table))).then(|| Arc::clone(compiled))
    }
}

/// Like [`compile`], taking over from `previous` the cluster tables and routes whose
/// snapshot content is unchanged: their `Arc`s carry over, so endpoint state (requests in
/// flight, round-robin position) lives on and only what changed is compiled. Also returns
/// the [`Layout`] the next change starts from.
pub fn compile_reusing(
    snapshot: &Snapshot,
    metrics: &crate::metrics::Metrics,
    previous: Option<Previous<'_>>,
) -> Result<(Compiled, Layout), CompileError> {
    let reusable = previous.map(Reusable::new);
    let mut broken: HashMap<Piece, String> = HashMap::new();
    let mut structural = Vec::new();
    for problem in sluice_snapshot::problems(snapshot) {
        if problem.piece == Piece::Snapshot {
            structural.push(problem.to_string());
            continue;
        }
        let entry = broken.entry(problem.piece).or_default();
        if !entry.is_empty() {
            entry.push_str("; ");
        }
        entry.push_str(&problem.message);
    }
    if !structural.is_empty() {
        return Err(CompileError::Invalid(sluice_snapshot::ValidationError { problems: structural }));
    }
    let mut dropped = Vec::new();
    let mut layout = Layout::default();
    let clusters: HashMap<&str, Arc<ClusterTable>> = snapshot
        .clusters
        .iter()
        .map(|c| {
            let table = reusable.as_ref().and_then(|r| r.cluster(c));
            (c.name.as_str(), table.unwrap_or_else(|| Arc::new(cluster_table(c, snapshot))))
        })
        .collect();
    let mut keys: HashMap<&str, Result<Arc<CertifiedKey>, String>> = HashMap::new();
    for certificate in &snapshot.certificates {
        let key = match broken.get(&Piece::Certificate(certificate.name.clone())) {
            Some(problem) => Err(problem.clone()),
            None => certified_key(certificate),
        };
        if let Err(problem) = &key {
            dropped.push(Dropped { name: certificate.name.clone(), problem: problem.clone() });
        }
        keys.insert(certificate.name.as_str(), key);
    }
    let mut validations: HashMap<&str, Result<Arc<ClientAuth>, String>> = HashMap::new();
    for validation in &snapshot.client_validations {
        let auth = match broken.get(&Piece::ClientValidation(validation.name.clone())) {
            Some(problem) => Err(problem.clone()),
            None => ClientAuth::compile(validation).map(Arc::new),
        };
        if let Err(problem) = &auth {
            dropped.push(Dropped { name: validation.name.clone(), problem: problem.clone() });
        }
        validations.insert(validation.name.as_str(), auth);
    }
    let mut ports: HashMap<u16, PortTable> = HashMap::new();
    let mut tls: HashMap<u16, CertificateTable> = HashMap::new();
    let mut client_auth: HashMap<u16, Arc<ClientAuth>> = HashMap::new();
    let mut tcp: HashMap<u16, Backends> = HashMap::new();
    let mut udp: HashMap<u16, Backends> = HashMap::new();
    let mut tls_ports: HashMap<u16, tls_routes::TlsPortTable> = HashMap::new();
    // The first attached route of a TCP or UDP listener is served.
    let l4_backends = |route: Option<(&str, &[WeightedBackend])>, dropped: &mut Vec<Dropped>| -> Backends {
        let Some((name, backends)) = route else { return Backends::default() };
        let targets = match broken.get(&Piece::Route(name.to_string())) {
            Some(problem) => Err(problem.clone()),
            None => backends
                .iter()
                .map(|b| backend_target(b, &clusters).map(|t| (b.weight, t, Vec::new())))
                .collect::<Result<Vec<_>, String>>(),
        };
        match targets {
            Ok(targets) => Backends::new(targets),
            Err(problem) => {
                dropped.push(Dropped { name: name.to_string(), problem });
                Backends::default()
            }
        }
    };
    for listener in &snapshot.listeners {
        let Ok(port) = u16::try_from(listener.port) else { continue };
        if let Some(problem) = broken.get(&Piece::Listener(listener.name.clone())) {
            dropped.push(Dropped { name: listener.name.clone(), problem: problem.clone() });
            continue;
        }
        if listener.protocol() == Protocol::Tcp {
            let route = listener.tcp_routes.first().map(|r| (r.name.as_str(), r.backends.as_slice()));
            tcp.insert(port, l4_backends(route, &mut dropped));
            continue;
        }
        if listener.protocol() == Protocol::Udp {
            let route = listener.udp_routes.first().map(|r| (r.name.as_str(), r.backends.as_slice()));
            udp.insert(port, l4_backends(route, &mut dropped));
            continue;
        }
        // A listener is never served without the client validation it was given.
        let auth = match listener.client_validation.as_str() {
            _ if listener.protocol() != Protocol::Https => None,
            "" => None,
            name => match validations.get(name) {
                Some(Ok(auth)) => Some(auth.clone()),
                Some(Err(problem)) => {
                    let problem = format!("client validation {name} cannot be used: {problem}");
                    dropped.push(Dropped { name: listener.name.clone(), problem });
                    continue;
                }
                None => {
                    let problem = format!("unknown client validation {name}");
                    dropped.push(Dropped { name: listener.name.clone(), problem });
                    continue;
                }
            },
        };
        let terminates = listener.protocol() == Protocol::Https
            || (listener.protocol() == Protocol::Tls && listener.tls_mode() == TlsMode::Terminate);
        let key = if terminates {
            match listener.certificates.first().map(|name| (name, keys.get(name.as_str()))) {
                Some((_, Some(Ok(key)))) => Some(key.clone()),
                Some((name, Some(Err(problem)))) => {
                    let problem = format!("certificate {name} cannot be served: {problem}");
                    dropped.push(Dropped { name: listener.name.clone(), problem });
                    continue;
                }
                Some((_, None)) | None => {
                    dropped.push(Dropped { name: listener.name.clone(), problem: "no certificate".into() });
                    continue;
                }
            }
        } else {
            None
        };
        if listener.protocol() == Protocol::Tls {
            let table = tls_ports.entry(port).or_default();
            if let Err(problem) = table.add(listener, key, &clusters, &broken, &mut dropped) {
                dropped.push(Dropped { name: listener.name.clone(), problem });
            }
            continue;
        }
        if let Some(key) = key {
            if let Some(auth) = auth {
                client_auth.insert(port, auth);
            }
            let table = tls.entry(port).or_default();
            match listener.hostname.strip_prefix('*') {
                _ if listener.hostname.is_empty() => table.any = Some(key),
                Some(suffix) => {
                    table.by_wildcard.insert(suffix.to_string(), key);
                }
                None => {
                    table.by_exact.insert(listener.hostname.clone(), key);
                }
            }
        }
        let table = ports.entry(port).or_default();
        table.protocol = Some(listener.protocol());
        let mut slots = Vec::with_capacity(sluice_snapshot::room::with_room(listener.http_routes.len()));
        for (route, order) in
            listener.http_routes.iter().zip((1..).map(|i: u64| i.saturating_mul(host_index::ORDER_STEP)))
        {
            let broken_route = broken.get(&Piece::Route(route.name.clone()));
            if broken_route.is_none()
                && let Some(reused) = reusable.as_ref().and_then(|r| r.route(&listener.name, route, &clusters))
            {
                slots.push(Slot { order, route: reused, dropped: false });
                continue;
            }
            let compiled = match broken_route {
                Some(problem) => Err(problem.clone()),
                None => compile_route(route, &clusters, metrics),
            };
            let slot = match compiled {
                Ok(compiled) => Slot { order, route: Arc::new(compiled), dropped: false },
                Err(problem) => {
                    dropped.push(Dropped { name: route.name.clone(), problem });
                    Slot { order, route: Arc::new(failed_route(route, metrics)), dropped: true }
                }
            };
            slots.push(slot);
        }
        let listener_table = listener_table(listener.name.clone(), &slots, &listener.http_routes);
        layout.listeners.entry(listener.name.clone()).or_insert(slots);
        let index = table.listeners.len();
        table.listeners.push(listener_table);
        match listener.hostname.strip_prefix('*') {
            _ if listener.hostname.is_empty() => table.any = Some(index),
            Some(suffix) => {
                table.by_wildcard.insert(suffix.to_string(), index);
            }
            None => {
                table.by_exact.insert(listener.hostname.clone(), index);
            }
        }
    }
    for piece in &dropped {
        tracing::warn!(piece = piece.name, problem = piece.problem, "not serving a piece of the snapshot");
    }
    let generation = snapshot.version.as_ref().map_or(0, |v| v.generation);
    let mut clusters: Vec<Arc<ClusterTable>> = clusters.into_values().collect();
    clusters.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let compiled_unix_ms = now_unix_ms();
    fn shared<T>(map: HashMap<u16, T>) -> HashMap<u16, Arc<T>> {
        map.into_iter().map(|(port, table)| (port, Arc::new(table))).collect()
    }
    let compiled = Compiled {
        gateway: snapshot.gateway.clone(),
        generation,
        ports,
        tls: shared(tls),
        client_auth,
        tcp: shared(tcp),
        udp: shared(udp),
        tls_ports: shared(tls_ports),
        dropped,
        clusters,
        compiled_unix_ms,
    };
    layout.cluster_uses = cluster_uses(snapshot);
    Ok((compiled, layout))
}

/// Parses a certificate's PEM chain and key into what rustls serves (the translator
/// checks certificates with the same code).
fn certified_key(certificate: &Certificate) -> Result<Arc<CertifiedKey>, String> {
    // The TLS listeners' handshakes use the process-wide provider.
    pingora_rustls::install_default_crypto_provider();
    sluice_snapshot::compile::load_certificate(&certificate.cert_chain_pem, &certificate.private_key_pem)
        .map(|loaded| loaded.key)
        .map_err(|problem| format!("{}: {problem}", certificate.name))
}

fn listener_table(name: String, slots: &[Slot], source: &[HttpRoute]) -> ListenerTable {
    let entries = source.iter().zip(slots).map(|(route, slot)| {
        (route.hostnames.as_slice(), host_index::Entry { order: slot.order, route: slot.route.clone() })
    });
    ListenerTable { name, index: host_index::HostIndex::build(entries) }
}

impl PortTable {
    /// The listener that owns `host` on this port: exact hostname, else the longest
    /// matching wildcard, else the listener without hostname.
    pub fn listener(&self, host: &str) -> Option<&ListenerTable> {
        let index = self
            .by_exact
            .get(host)
            .or_else(|| {
                longest_wildcard_suffix(host, |s| self.by_wildcard.contains_key(s))
                    .and_then(|s| self.by_wildcard.get(s))
            })
            .copied()
            .or(self.any)?;
        self.listeners.get(index)
    }
}

impl ListenerTable {
    /// The first route matching the request, in precedence order.
    pub fn find(&self, request: &RequestView<'_>) -> Option<&Arc<Route>> {
        self.index.find(request.host, |route| route.matches(request))
    }
}

#[cfg(test)]
#[path = "reuse_tests.rs"]
mod reuse_tests;
