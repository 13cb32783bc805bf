//! Backend references → clusters (a Service port with its endpoints) or a typed error.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sluice_snapshot::{AppProtocol, Cluster, Endpoint, LoadBalancing};

use crate::index::{Index, ObjectKey};
use crate::policies::{Applied, Policies};
use crate::status::reason;

/// A backendRef (or a mirror's backendRef) as the user wrote it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackendRef<'a> {
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub port: Option<i32>,
}

/// Why a backendRef cannot be used; becomes the route's ResolvedRefs=False condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BackendError {
    RefNotPermitted(String),
    InvalidKind(String),
    BackendNotFound(String),
    UnsupportedProtocol(String),
    /// The Service port's BackendTLSPolicy cannot be used: its requests get an error,
    /// never plaintext. The policy's status says why, not the route's.
    TlsPolicy(String),
}

impl BackendError {
    pub fn reason(&self) -> &'static str {
        match self {
            BackendError::RefNotPermitted(_) => reason::REF_NOT_PERMITTED,
            BackendError::InvalidKind(_) => reason::INVALID_KIND,
            BackendError::BackendNotFound(_) => reason::BACKEND_NOT_FOUND,
            BackendError::UnsupportedProtocol(_) => reason::UNSUPPORTED_PROTOCOL,
            BackendError::TlsPolicy(_) => reason::RESOLVED_REFS,
        }
    }

    /// Whether the route's ResolvedRefs condition reports this (a policy's problem is on
    /// the policy).
    pub fn is_route_problem(&self) -> bool {
        !matches!(self, BackendError::TlsPolicy(_))
    }

    pub fn message(&self) -> &str {
        match self {
            BackendError::RefNotPermitted(m)
            | BackendError::InvalidKind(m)
            | BackendError::BackendNotFound(m)
            | BackendError::UnsupportedProtocol(m)
            | BackendError::TlsPolicy(m) => m,
        }
    }
}

/// What a backend is used for: HTTP traffic checks the Service port's appProtocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Traffic {
    Http,
    /// gRPC: HTTP/2 to the backend, whatever the Service port's appProtocol says.
    Grpc,
    Tcp,
    /// Datagrams: only a Service port with `protocol: UDP` will do.
    Udp,
}

/// Clusters built so far, shared by every Gateway of one translation so that a Service
/// port's endpoints are computed once.
pub(crate) struct ClusterCache<'w> {
    built: HashMap<(ObjectKey, i32, bool), Result<Arc<Cluster>, BackendError>>,
    /// HTTP/2 variants of Service ports whose appProtocol is not h2c, for gRPC.
    grpc: HashMap<(ObjectKey, i32), Arc<Cluster>>,
    /// BackendTLSPolicies: TLS for the ports they target, and their status.
    pub policies: Policies<'w>,
    /// (Service, port name) of every port resolved since `take_touched`: a BackendTLSPolicy
    /// on it gets the Gateways of the route as ancestors.
    touched: Vec<(ObjectKey, String)>,
}

/// `service/<ns>/<name>/port/<port>`, the snapshot name of a Service port
/// (`…/port/<port>/udp` for its UDP port, which may share the number).
pub(crate) fn cluster_name(service: &ObjectKey, port: i32) -> String {
    format!("service/{}/{}/port/{port}", service.namespace, service.name)
}

fn udp_cluster_name(service: &ObjectKey, port: i32) -> String {
    format!("{}/udp", cluster_name(service, port))
}

impl<'w> ClusterCache<'w> {
    pub fn new(policies: Policies<'w>) -> Self {
        ClusterCache { built: HashMap::new(), grpc: HashMap::new(), policies, touched: Vec::new() }
    }

    /// The Service ports resolved since the last call.
    pub fn take_touched(&mut self) -> Vec<(ObjectKey, String)> {
        std::mem::take(&mut self.touched)
    }

    /// Resolves `backend`, referenced from a `from_kind` in `from_namespace`.
    pub fn resolve(
        &mut self,
        index: &Index<'_>,
        from_kind: &str,
        from_namespace: &str,
        backend: BackendRef<'_>,
        traffic: Traffic,
    ) -> Result<Arc<Cluster>, BackendError> {
        let group = backend.group.unwrap_or_default();
        let kind = backend.kind.unwrap_or("Service");
        let namespace = backend.namespace.filter(|ns| !ns.is_empty()).unwrap_or(from_namespace);
        let key = ObjectKey::new(namespace, backend.name);
        if !(group.is_empty() || group == "core") || kind != "Service" {
            let shown = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
            return Err(BackendError::InvalidKind(format!(
                "backendRef {key} has unsupported kind {shown}; only core Services are supported"
            )));
        }
        // Checked before existence, so status never tells whether the object exists.
        if !index.reference_allowed("gateway.networking.k8s.io", from_kind, from_namespace, "", "Service", &key) {
            return Err(BackendError::RefNotPermitted(format!(
                "backendRef to Service {key} is not permitted by any ReferenceGrant in namespace {namespace}"
            )));
        }
        let Some(port) = backend.port else {
            return Err(BackendError::BackendNotFound(format!("backendRef to Service {key} needs a port")));
        };
        let udp = traffic == Traffic::Udp;
        if !udp && let Some(service_port) = index.services.get(&key).and_then(|s| find_port(s, port, false)) {
            self.touched.push((key.clone(), service_port.name.clone().unwrap_or_default()));
        }
        let policies = &self.policies;
        let cluster = self
            .built
            .entry((key.clone(), port, udp))
            .or_insert_with(|| build_cluster(index, policies, &key, port, udp).map(Arc::new))
            .clone()?;
        if matches!(traffic, Traffic::Http | Traffic::Grpc) && cluster.app_protocol() == AppProtocol::Unspecified {
            return Err(BackendError::UnsupportedProtocol(format!(
                "Service {key} port {port} has an appProtocol Sluice cannot speak to over HTTP"
            )));
        }
        if traffic == Traffic::Grpc && cluster.app_protocol() != AppProtocol::H2c {
            // The same endpoints spoken to over HTTP/2: a cluster of its own, shared by
            // every GRPCRoute that uses this Service port.
            return Ok(self
                .grpc
                .entry((key, port))
                .or_insert_with(|| {
                    let mut h2c = cluster.as_ref().clone();
                    h2c.name = format!("{}/grpc", cluster.name);
                    h2c.app_protocol = AppProtocol::H2c as i32;
                    Arc::new(h2c)
                })
                .clone());
        }
        Ok(cluster)
    }
}

fn build_cluster(
    index: &Index<'_>,
    policies: &Policies<'_>,
    key: &ObjectKey,
    port: i32,
    udp: bool,
) -> Result<Cluster, BackendError> {
    let Some(service) = index.services.get(key) else {
        return Err(BackendError::BackendNotFound(format!("Service {key} not found")));
    };
    let Some(service_port) = find_port(service, port, udp) else {
        let protocol = if udp { "UDP port" } else { "port" };
        return Err(BackendError::BackendNotFound(format!("Service {key} has no {protocol} {port}")));
    };
    let slices = index.endpoint_slices.get(key).map(Vec::as_slice).unwrap_or_default();
    let port_name = service_port.name.as_deref().unwrap_or_default();
    let tls = if udp {
        None
    } else {
        match policies.applied(key, port_name) {
            Applied::None => None,
            Applied::Tls(tls) => Some(tls),
            Applied::Refused(why) => return Err(BackendError::TlsPolicy(why)),
        }
    };
    let mut protocol = app_protocol(service_port.app_protocol.as_deref());
    if tls.is_some() && protocol == AppProtocol::Unspecified {
        // `https` and `kubernetes.io/wss` name the TLS the policy provides.
        protocol = if service_port.app_protocol.as_deref() == Some("kubernetes.io/wss") {
            AppProtocol::Ws
        } else {
            AppProtocol::Http1
        };
    }
    Ok(Cluster {
        name: if udp { udp_cluster_name(key, port) } else { cluster_name(key, port) },
        app_protocol: protocol as i32,
        endpoints: endpoints(slices, port_name),
        load_balancing: load_balancing(service) as i32,
        tls,
    })
}

/// The Service annotation that chooses how requests spread over its endpoints.
pub const LOAD_BALANCING_ANNOTATION: &str = "sluice.dev/load-balancing";

/// `least-request` or `round-robin` (the default, also for any other value).
fn load_balancing(service: &Service) -> LoadBalancing {
    let annotations = service.metadata.annotations.as_ref();
    match annotations.and_then(|a| a.get(LOAD_BALANCING_ANNOTATION)).map(String::as_str) {
        Some("least-request") => LoadBalancing::LeastRequest,
        _ => LoadBalancing::RoundRobin,
    }
}

/// The Service port `port` for UDP (protocol UDP) or for TCP-based traffic (preferring a
/// port that is not UDP when both exist).
pub(crate) fn find_port(service: &Service, port: i32, udp: bool) -> Option<&ServicePort> {
    let ports = service.spec.as_ref()?.ports.as_ref()?;
    let is_udp = |p: &&ServicePort| p.protocol.as_deref() == Some("UDP");
    if udp {
        ports.iter().filter(|p| p.port == port).find(is_udp)
    } else {
        ports.iter().filter(|p| p.port == port).find(|p| !is_udp(p)).or_else(|| ports.iter().find(|p| p.port == port))
    }
}

/// Maps a Service port's appProtocol (GEP-1911). `Unspecified` marks one Sluice cannot
/// use for HTTP (e.g. `kubernetes.io/wss` or `https`, which need backend TLS).
fn app_protocol(value: Option<&str>) -> AppProtocol {
    match value.unwrap_or_default() {
        "kubernetes.io/h2c" => AppProtocol::H2c,
        "kubernetes.io/ws" => AppProtocol::Ws,
        "kubernetes.io/wss" | "https" | "HTTPS" => AppProtocol::Unspecified,
        _ => AppProtocol::Http1,
    }
}

/// Ready endpoints of the named Service port; when none is ready, the serving-and-
/// terminating ones (so that a rolling update never leaves a gap). Deduplicated, sorted.
pub(crate) fn endpoints(slices: &[&EndpointSlice], port_name: &str) -> Vec<Endpoint> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let slice_port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| (1..=65535).contains(p));
        let Some(port) = slice_port else { continue };
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            // Unknown readiness counts as ready, as the EndpointSlice API asks of consumers.
            let is_ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            for address in &endpoint.addresses {
                if address.parse::<std::net::IpAddr>().is_err() {
                    continue;
                }
                if is_ready && !is_terminating {
                    ready.insert((address.clone(), port));
                } else if serving && is_terminating {
                    terminating.insert((address.clone(), port));
                }
            }
        }
    }
    let (chosen, is_ready) = if ready.is_empty() { (terminating, false) } else { (ready, true) };
    chosen.into_iter().map(|(address, port)| Endpoint { address, port, ready: is_ready }).collect()
}

/// Answer for the share of traffic of an invalid backendRef (and for rules without any).
pub(crate) const INVALID_BACKEND_STATUS: u32 = 500;

/// The snapshot backend for one backendRef: its cluster when it resolved (collected into
/// `clusters`), else a 500 share, remembering the first failure in `unresolved`.
pub(crate) fn weighted_backend(
    reference: BackendRef<'_>,
    route_namespace: &str,
    weight: u32,
    resolved: Result<Arc<Cluster>, BackendError>,
    filters: Vec<sluice_snapshot::HttpFilter>,
    clusters: &mut Vec<Arc<Cluster>>,
    unresolved: &mut Option<BackendError>,
) -> sluice_snapshot::WeightedBackend {
    use sluice_snapshot::{DirectResponse, WeightedBackend, weighted_backend::Target};
    let namespace = reference.namespace.filter(|ns| !ns.is_empty()).unwrap_or(route_namespace);
    let name = cluster_name(&ObjectKey::new(namespace, reference.name), reference.port.unwrap_or_default());
    let target = match resolved {
        Ok(cluster) => {
            let target = Target::Cluster(cluster.name.clone());
            clusters.push(cluster);
            target
        }
        Err(error) => {
            if error.is_route_problem() {
                unresolved.get_or_insert(error);
            }
            Target::Invalid(DirectResponse { status: INVALID_BACKEND_STATUS, body: String::new() })
        }
    };
    WeightedBackend { name, weight, target: Some(target), filters }
}
