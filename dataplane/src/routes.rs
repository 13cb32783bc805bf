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
use std::sync::atomic::{AtomicUsize, Ordering};

use pingora_rustls::sign::CertifiedKey;
use regex::Regex;

use crate::client_auth::ClientAuth;
use sluice_snapshot::{
    AppProtocol, Certificate, Cluster, HttpFilter, HttpRoute, LoadBalancing, PathMatchType, Piece, Protocol, Snapshot,
    TlsMode, ValueMatchType, WeightedBackend, http_filter, weighted_backend,
};

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
    pub tls_ports: HashMap<u16, Arc<crate::tls_routes::TlsPortTable>>,
    /// The pieces of the snapshot that could not be compiled and are not served (the
    /// push ACK reports them, so that their route's or listener's status says why).
    pub dropped: Vec<Dropped>,
    /// Every cluster of the snapshot, by name (the admin endpoint lists their endpoints).
    pub clusters: Vec<Arc<ClusterTable>>,
    /// When these tables were built, in milliseconds since the Unix epoch; they are swapped
    /// in right after, so this is when the snapshot's content started to be served.
    pub compiled_unix_ms: u64,
}

/// A piece of a snapshot the data plane does not serve: a route (it answers 500, or never
/// matches when its match cannot be compiled), a listener, a certificate or a client
/// validation (the listeners that need it are dropped too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The piece's snapshot name (`httproute/ns/r/rule/0/match/0`, `gateway/ns/gw/listener/l`).
    pub name: String,
    pub problem: String,
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
    pub(crate) index: crate::host_index::HostIndex,
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

/// The clusters `backends` point at, with repeats.
pub(crate) fn backend_clusters(backends: &[WeightedBackend]) -> impl Iterator<Item = &str> {
    backends.iter().filter_map(|b| match &b.target {
        Some(weighted_backend::Target::Cluster(name)) => Some(name.as_str()),
        _ => None,
    })
}

/// The clusters `route` points at (backends and mirrors), with repeats.
pub(crate) fn http_route_clusters(route: &HttpRoute) -> impl Iterator<Item = &str> {
    let backends = backend_clusters(&route.backends);
    let mirrors = route.filters.iter().filter_map(|f| match &f.kind {
        Some(http_filter::Kind::RequestMirror(mirror)) => Some(mirror.cluster.as_str()),
        _ => None,
    });
    backends.chain(mirrors)
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

/// The clusters the TCP, UDP and TLS routes of `listener` point at, with repeats.
pub(crate) fn l4_route_clusters(listener: &sluice_snapshot::Listener) -> impl Iterator<Item = &str> {
    let tcp = listener.tcp_routes.iter().flat_map(|r| backend_clusters(&r.backends));
    let udp = listener.udp_routes.iter().flat_map(|r| backend_clusters(&r.backends));
    let tls = listener.tls_routes.iter().flat_map(|r| backend_clusters(&r.backends));
    tcp.chain(udp).chain(tls)
}

/// One snapshot route, ready to match.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    path: PathMatcher,
    headers: Vec<(http::HeaderName, ValueMatcher)>,
    query_params: Vec<(String, ValueMatcher)>,
    method: Option<http::Method>,
    pub path_prefix: Option<String>,
    pub filters: Vec<HttpFilter>,
    /// Mirrors of the rule: cluster and the share of requests to copy (numerator, denominator).
    pub mirrors: Vec<(Arc<ClusterTable>, u32, u32)>,
    pub backends: Backends,
    pub metrics: Arc<crate::metrics::RouteMetrics>,
    pub request_timeout_ms: u64,
    pub backend_timeout_ms: u64,
    /// The rule's retries (HTTPRoute `retry`).
    pub retry: Option<sluice_snapshot::Retry>,
    /// The rule's CORS policy (HTTPRoute filter `CORS`).
    pub cors: Option<Box<crate::cors::Policy>>,
    /// The HTTP/1.1 fast path forwards its requests: no mirrors, timeouts or retries,
    /// and no backend reached over HTTP/2 or TLS (those are Pingora's). Decided here,
    /// before any request, so that a weighted pick is made by one path only.
    pub fast: bool,
}

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    /// Prefix without its trailing slash ("" for "/").
    Prefix(String),
    Regex(Regex),
    /// A dropped route whose match could not be compiled: it matches nothing.
    Never,
}

#[derive(Debug)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

/// Shared, atomically swapped routing tables: the request paths load them once per
/// request, the config sources swap them.
pub type Tables = Arc<arc_swap::ArcSwap<Compiled>>;

/// Where a route's traffic goes: weighted targets.
#[derive(Debug, Default)]
pub struct Backends {
    /// (weight, target, the backendRef's own filters)
    targets: Vec<(u32, Target, Vec<HttpFilter>)>,
    total_weight: u64,
    counter: AtomicUsize,
    /// Some target is a cluster only Pingora's path reaches (HTTP/2 or TLS to the
    /// backend), decided when the route is compiled: the HTTP/1.1 fast path hands the
    /// route's requests over before picking, so each request is picked once.
    pingora_only: bool,
}

/// One weighted backend of a route.
#[derive(Debug, Clone)]
pub enum Target {
    Cluster(Arc<ClusterTable>),
    /// An invalid backendRef: its share of traffic gets this status.
    Status(u16),
}

/// A backend cluster's endpoints, balanced round robin or by fewest requests in flight.
#[derive(Debug)]
pub struct ClusterTable {
    pub name: String,
    pub app_protocol: AppProtocol,
    /// TLS to the endpoints (BackendTLSPolicy), or why it cannot be set up (requests
    /// then fail with 502, never in plaintext).
    pub tls: Option<Result<Arc<crate::upstream_tls::UpstreamTlsTable>, String>>,
    pub endpoints: Vec<std::net::SocketAddr>,
    pub load_balancing: LoadBalancing,
    next: AtomicUsize,
    /// Requests in flight per endpoint (least-request only).
    in_flight: Box<[AtomicUsize]>,
}

/// One request in flight to an endpoint of a least-request cluster; dropping it (when the
/// request's context ends) ends the request.
#[derive(Debug)]
pub struct InFlight {
    cluster: Arc<ClusterTable>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(count) = self.cluster.in_flight.get(self.index) {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl ClusterTable {
    /// The endpoint for the next request, or `None` when there is none (503). For a
    /// least-request cluster, the returned guard counts the request as in flight.
    pub fn pick(self: &Arc<Self>) -> Option<(std::net::SocketAddr, Option<InFlight>)> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        if self.load_balancing != LoadBalancing::LeastRequest || n == 1 {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            return self.endpoints.get(i % n).map(|e| (*e, None));
        }
        // Power of two choices: two distinct endpoints at random, the less loaded wins.
        let first = rand::random_range(0..n);
        let second = (first + 1 + rand::random_range(0..n - 1)) % n;
        let load = |i: usize| self.in_flight.get(i).map_or(usize::MAX, |c| c.load(Ordering::Relaxed));
        let index = if load(second) < load(first) { second } else { first };
        let count = self.in_flight.get(index)?;
        count.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight { cluster: self.clone(), index };
        self.endpoints.get(index).map(|e| (*e, Some(guard)))
    }

    /// Requests in flight per endpoint (least-request clusters; zeros otherwise).
    pub fn in_flight(&self) -> Vec<usize> {
        self.in_flight.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

/// The cluster tables a compile points routes at, by cluster name.
pub(crate) trait ClusterLookup {
    fn cluster(&self, name: &str) -> Option<&Arc<ClusterTable>>;
}

impl ClusterLookup for HashMap<&str, Arc<ClusterTable>> {
    fn cluster(&self, name: &str) -> Option<&Arc<ClusterTable>> {
        self.get(name)
    }
}

/// Tables sorted by name (as [`Compiled::clusters`]).
impl ClusterLookup for [Arc<ClusterTable>] {
    fn cluster(&self, name: &str) -> Option<&Arc<ClusterTable>> {
        self.binary_search_by(|table| table.name.as_str().cmp(name)).ok().and_then(|at| self.get(at))
    }
}

/// Why a snapshot could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Invalid(#[from] sluice_snapshot::ValidationError),
}

impl Backends {
    /// The filters of the backend at `index` (from `pick`).
    pub fn filters(&self, index: usize) -> &[HttpFilter] {
        self.targets.get(index).map_or(&[], |(_, _, filters)| filters.as_slice())
    }

    pub(crate) fn new(targets: Vec<(u32, Target, Vec<HttpFilter>)>) -> Self {
        let total_weight = targets.iter().map(|(w, _, _)| u64::from(*w)).sum();
        let pingora_only = targets.iter().any(|(_, target, _)| {
            matches!(target, Target::Cluster(cluster) if cluster.app_protocol == AppProtocol::H2c || cluster.tls.is_some())
        });
        Backends { targets, total_weight, counter: AtomicUsize::new(0), pingora_only }
    }

    /// Whether some target is a cluster that only Pingora's path reaches (HTTP/2 or TLS
    /// to the backend).
    pub fn pingora_only(&self) -> bool {
        self.pingora_only
    }

    /// Picks a target by smooth weighted rotation over the integer weights: deterministic,
    /// spreads each weight evenly, and needs only one atomic counter.
    pub fn pick(&self) -> Option<(usize, &Target)> {
        if self.total_weight == 0 {
            return None;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed) as u64;
        // Stride through the weight space with a step coprime to it, so consecutive
        // requests land on different targets instead of exhausting one weight first.
        let slot = n.wrapping_mul(stride(self.total_weight)) % self.total_weight;
        let mut acc = 0u64;
        for (index, (weight, target, _)) in self.targets.iter().enumerate() {
            acc += u64::from(*weight);
            if slot < acc {
                return Some((index, target));
            }
        }
        None
    }
}

/// A step coprime with `n`, close to n·φ, so `k·step mod n` visits every slot spread out.
fn stride(n: u64) -> u64 {
    if n <= 2 {
        return 1;
    }
    let mut step = ((n as f64) * 0.618_033_988_75) as u64;
    step = step.max(1);
    while gcd(step, n) != 1 {
        step += 1;
    }
    step
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
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
        let backends_same = compiled.backends.targets.iter().all(|(_, target, _)| match target {
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
    let mut tls_ports: HashMap<u16, crate::tls_routes::TlsPortTable> = HashMap::new();
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
            listener.http_routes.iter().zip((1..).map(|i: u64| i.saturating_mul(crate::host_index::ORDER_STEP)))
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

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn cluster_table(cluster: &Cluster, snapshot: &Snapshot) -> ClusterTable {
    let endpoints = cluster
        .endpoints
        .iter()
        .filter_map(|e| {
            let ip: std::net::IpAddr = e.address.parse().ok()?;
            Some(std::net::SocketAddr::new(ip, u16::try_from(e.port).ok()?))
        })
        .collect();
    let endpoints: Vec<std::net::SocketAddr> = endpoints;
    let tls = cluster.tls.as_ref().map(|tls| {
        let client = (!tls.client_certificate.is_empty())
            .then(|| snapshot.certificates.iter().find(|c| c.name == tls.client_certificate))
            .map(|found| {
                found
                    .map(|c| (c.cert_chain_pem.as_str(), c.private_key_pem.as_str()))
                    .ok_or_else(|| format!("client certificate {} is not in the snapshot", tls.client_certificate))
            })
            .transpose();
        let table = client.and_then(|client| crate::upstream_tls::UpstreamTlsTable::compile(tls, client));
        if let Err(problem) = &table {
            tracing::warn!(cluster = cluster.name, problem, "backend TLS cannot be set up; its requests fail");
        }
        table.map(Arc::new)
    });
    ClusterTable {
        name: cluster.name.clone(),
        app_protocol: cluster.app_protocol(),
        tls,
        in_flight: endpoints.iter().map(|_| AtomicUsize::new(0)).collect(),
        endpoints,
        load_balancing: cluster.load_balancing(),
        next: AtomicUsize::new(0),
    }
}

/// What a route matches, compiled.
struct CompiledMatch {
    path: PathMatcher,
    path_prefix: Option<String>,
    headers: Vec<(http::HeaderName, ValueMatcher)>,
    query_params: Vec<(String, ValueMatcher)>,
    method: Option<http::Method>,
}

fn compile_match(route: &HttpRoute) -> Result<CompiledMatch, String> {
    let http_match = route.r#match.clone().unwrap_or_default();
    let (path, path_prefix) = match &http_match.path {
        None => (PathMatcher::Prefix(String::new()), Some("/".to_string())),
        Some(p) => match p.r#type() {
            PathMatchType::Exact => (PathMatcher::Exact(p.value.clone()), None),
            PathMatchType::Prefix | PathMatchType::Unspecified => {
                (PathMatcher::Prefix(p.value.trim_end_matches('/').to_string()), Some(p.value.clone()))
            }
            PathMatchType::RegularExpression => (PathMatcher::Regex(full_regex(&p.value)?), None),
        },
    };
    let value_matcher = |kind: ValueMatchType, value: &str| -> Result<ValueMatcher, String> {
        Ok(match kind {
            ValueMatchType::RegularExpression => ValueMatcher::Regex(full_regex(value)?),
            _ => ValueMatcher::Exact(value.to_string()),
        })
    };
    let mut headers = Vec::new();
    for header in &http_match.headers {
        let name = http::HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|e| format!("header name {:?}: {e}", header.name))?;
        headers.push((name, value_matcher(header.r#type(), &header.value)?));
    }
    let mut query_params = Vec::new();
    for param in &http_match.query_params {
        query_params.push((param.name.clone(), value_matcher(param.r#type(), &param.value)?));
    }
    let method = if http_match.method.is_empty() {
        None
    } else {
        Some(http::Method::from_bytes(http_match.method.as_bytes()).map_err(|e| e.to_string())?)
    };
    Ok(CompiledMatch { path, path_prefix, headers, query_params, method })
}

pub(crate) fn compile_route(
    route: &HttpRoute,
    clusters: &(impl ClusterLookup + ?Sized),
    metrics: &crate::metrics::Metrics,
) -> Result<Route, String> {
    let CompiledMatch { path, path_prefix, headers, query_params, method } = compile_match(route)?;
    let mut targets = Vec::new();
    for backend in &route.backends {
        targets.push((backend.weight, backend_target(backend, clusters)?, backend.filters.clone()));
    }
    let mut mirrors = Vec::new();
    for filter in &route.filters {
        if let Some(http_filter::Kind::RequestMirror(mirror)) = &filter.kind {
            let cluster = clusters
                .cluster(&mirror.cluster)
                .ok_or_else(|| format!("unknown mirror cluster {}", mirror.cluster))?;
            mirrors.push((cluster.clone(), mirror.numerator, mirror.denominator));
        }
    }
    let cors = route
        .filters
        .iter()
        .find_map(|filter| match &filter.kind {
            Some(http_filter::Kind::Cors(cors)) => Some(crate::cors::Policy::compile(cors).map(Box::new)),
            _ => None,
        })
        .transpose()?;
    let timeouts = route.timeouts.unwrap_or_default();
    let backends = Backends::new(targets);
    let fast = mirrors.is_empty()
        && timeouts.request_ms == 0
        && timeouts.backend_request_ms == 0
        && route.retry.is_none()
        && !backends.pingora_only();
    Ok(Route {
        fast,
        cors,
        mirrors,
        name: route.name.clone(),
        path,
        headers,
        query_params,
        method,
        path_prefix,
        filters: route.filters.clone(),
        backends,
        metrics: metrics.route(&route.name),
        request_timeout_ms: timeouts.request_ms,
        backend_timeout_ms: timeouts.backend_request_ms,
        retry: route.retry.clone(),
    })
}

/// A route that could not be compiled: it answers 500 to what it matches, or matches
/// nothing when its match itself cannot be compiled.
fn failed_route(route: &HttpRoute, metrics: &crate::metrics::Metrics) -> Route {
    let matched = compile_match(route).unwrap_or(CompiledMatch {
        path: PathMatcher::Never,
        path_prefix: None,
        headers: Vec::new(),
        query_params: Vec::new(),
        method: None,
    });
    Route {
        mirrors: Vec::new(),
        name: route.name.clone(),
        path: matched.path,
        headers: matched.headers,
        query_params: matched.query_params,
        method: matched.method,
        path_prefix: matched.path_prefix,
        filters: Vec::new(),
        backends: Backends::new(vec![(1, Target::Status(500), Vec::new())]),
        metrics: metrics.route(&route.name),
        request_timeout_ms: 0,
        backend_timeout_ms: 0,
        retry: None,
        cors: None,
        fast: true,
    }
}

pub(crate) fn backend_target(
    backend: &WeightedBackend,
    clusters: &(impl ClusterLookup + ?Sized),
) -> Result<Target, String> {
    Ok(match &backend.target {
        Some(weighted_backend::Target::Cluster(name)) => match clusters.cluster(name) {
            Some(cluster) => Target::Cluster(cluster.clone()),
            None => return Err(format!("unknown cluster {name}")),
        },
        Some(weighted_backend::Target::Invalid(response)) => {
            Target::Status(u16::try_from(response.status).unwrap_or(500))
        }
        None => Target::Status(500),
    })
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

/// Gateway API regular expressions match the whole value (the translator compiles them
/// with the same function).
fn full_regex(pattern: &str) -> Result<Regex, String> {
    sluice_snapshot::compile::full_regex(pattern)
}

fn listener_table(name: String, slots: &[Slot], source: &[HttpRoute]) -> ListenerTable {
    let entries = source.iter().zip(slots).map(|(route, slot)| {
        (route.hostnames.as_slice(), crate::host_index::Entry { order: slot.order, route: slot.route.clone() })
    });
    ListenerTable { name, index: crate::host_index::HostIndex::build(entries) }
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

/// What a request looks like to the matcher.
pub struct RequestView<'a> {
    pub host: &'a str,
    /// Normalized path, without query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a http::Method,
    pub headers: Headers<'a>,
}

/// A request's header fields: Pingora's parsed map, or the raw fields of the HTTP/1.1
/// fast path (names compared case-insensitively).
#[derive(Clone, Copy)]
pub enum Headers<'a> {
    Map(&'a http::HeaderMap),
    Raw(&'a [httparse::Header<'a>]),
}

impl<'a> Headers<'a> {
    /// The first value of header `name` (lower case), when it is visible ASCII.
    pub fn first(&self, name: &str) -> Option<&'a str> {
        match *self {
            Headers::Map(map) => map.get(name).and_then(|value| value.to_str().ok()),
            Headers::Raw(fields) => fields
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case(name))
                .filter(|f| f.value.iter().all(|b| *b == b'\t' || (32..127).contains(b)))
                .and_then(|f| std::str::from_utf8(f.value).ok()),
        }
    }

    /// Whether any value of header `name` is visible ASCII (what `HeaderValue::to_str`
    /// accepts) and satisfies `test`.
    fn any_value(&self, name: &http::HeaderName, test: impl Fn(&str) -> bool) -> bool {
        match self {
            Headers::Map(map) => map.get_all(name).iter().any(|value| value.to_str().is_ok_and(&test)),
            Headers::Raw(fields) => fields.iter().filter(|f| f.name.eq_ignore_ascii_case(name.as_str())).any(|f| {
                f.value.iter().all(|b| *b == b'\t' || (32..127).contains(b))
                    && std::str::from_utf8(f.value).is_ok_and(&test)
            }),
        }
    }
}

impl ListenerTable {
    /// The first route matching the request, in precedence order.
    pub fn find(&self, request: &RequestView<'_>) -> Option<&Arc<Route>> {
        self.index.find(request.host, |route| route.matches(request))
    }
}

impl Route {
    fn matches(&self, request: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatcher::Exact(value) => request.path == value,
            PathMatcher::Prefix(prefix) => {
                request.path.starts_with(prefix.as_str())
                    && (request.path.len() == prefix.len() || request.path.as_bytes().get(prefix.len()) == Some(&b'/'))
            }
            PathMatcher::Regex(regex) => regex.is_match(request.path),
            PathMatcher::Never => false,
        };
        if !path_ok {
            return false;
        }
        if self.method.as_ref().is_some_and(|m| m != request.method) {
            return false;
        }
        let headers_ok =
            self.headers.iter().all(|(name, matcher)| request.headers.any_value(name, |v| matcher.matches(v)));
        headers_ok
            && self.query_params.iter().all(|(name, matcher)| {
                first_query_value(request.query, name).is_some_and(|value| matcher.matches(&value))
            })
    }
}

impl ValueMatcher {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatcher::Exact(expected) => value == expected,
            ValueMatcher::Regex(regex) => regex.is_match(value),
        }
    }
}

/// The first value of query parameter `name` (exact, case-sensitive name), decoded.
fn first_query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

/// Decodes `%XX` escapes and `+` (form encoding) in a query component.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Whether a route's filters end the request without a backend.
pub fn terminal_filter(filters: &[HttpFilter]) -> Option<&http_filter::Kind> {
    filters
        .iter()
        .filter_map(|f| f.kind.as_ref())
        .find(|kind| matches!(kind, http_filter::Kind::RequestRedirect(_) | http_filter::Kind::DirectResponse(_)))
}

#[cfg(test)]
#[path = "routes_reuse_tests.rs"]
mod reuse_tests;
