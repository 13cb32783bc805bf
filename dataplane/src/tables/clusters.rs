//! Clusters and weighted backends, compiled: endpoints with their balancing, and the
//! weighted pick of a route's backends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_snapshot::{
    AppProtocol, Cluster, HttpFilter, HttpRoute, LoadBalancing, Snapshot, WeightedBackend, http_filter,
    weighted_backend,
};

/// The clusters `backends` point at, with repeats.
fn backend_clusters(backends: &[WeightedBackend]) -> impl Iterator<Item = &str> {
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

/// The clusters the TCP, UDP and TLS routes of `listener` point at, with repeats.
pub(crate) fn l4_route_clusters(listener: &sluice_snapshot::Listener) -> impl Iterator<Item = &str> {
    let tcp = listener.tcp_routes.iter().flat_map(|r| backend_clusters(&r.backends));
    let udp = listener.udp_routes.iter().flat_map(|r| backend_clusters(&r.backends));
    let tls = listener.tls_routes.iter().flat_map(|r| backend_clusters(&r.backends));
    tcp.chain(udp).chain(tls)
}

/// Where a route's traffic goes: weighted targets.
#[derive(Debug, Default)]
pub struct Backends {
    /// (weight, target, the backendRef's own filters)
    targets: Vec<(u32, Target, Vec<HttpFilter>)>,
    total_weight: u64,
    counter: AtomicUsize,
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

impl Backends {
    /// The filters of the backend at `index` (from `pick`).
    pub fn filters(&self, index: usize) -> &[HttpFilter] {
        self.targets.get(index).map_or(&[], |(_, _, filters)| filters.as_slice())
    }

    /// The targets, in the snapshot's order.
    pub(crate) fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.iter().map(|(_, target, _)| target)
    }

    pub(crate) fn new(targets: Vec<(u32, Target, Vec<HttpFilter>)>) -> Self {
        let total_weight = targets.iter().map(|(w, _, _)| u64::from(*w)).sum();
        Backends { targets, total_weight, counter: AtomicUsize::new(0) }
    }

    /// Whether some target is a cluster that only Pingora's path reaches (HTTP/2 or TLS
    /// to the backend): asked when the route is compiled (`Route::fast`), so that the
    /// HTTP/1.1 fast path hands the route's requests over before picking and each request
    /// is picked once.
    pub fn pingora_only(&self) -> bool {
        self.targets.iter().any(|(_, target, _)| {
            matches!(target, Target::Cluster(cluster) if cluster.app_protocol == AppProtocol::H2c || cluster.tls.is_some())
        })
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
