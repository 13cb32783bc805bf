//! TCPRoutes: each rule becomes one snapshot TCP route with weighted backends.

use gateway_api::experimental::tcproutes::TcpRoute as TCPRoute;
use sluice_snapshot::{Cluster, DirectResponse, TcpRoute, WeightedBackend, weighted_backend};

use crate::backends::{BackendError, BackendRef, ClusterCache, Traffic, cluster_name};
use crate::httproutes::INVALID_BACKEND_STATUS;
use crate::index::{Index, ObjectKey};

pub(crate) struct CompiledTcpRoute {
    pub routes: Vec<TcpRoute>,
    pub unresolved: Option<BackendError>,
    pub clusters: Vec<std::sync::Arc<Cluster>>,
}

pub(crate) fn compile_tcp_route(route: &TCPRoute, index: &Index<'_>, cache: &mut ClusterCache) -> CompiledTcpRoute {
    let key = ObjectKey::of(route);
    let mut out = CompiledTcpRoute { routes: Vec::new(), unresolved: None, clusters: Vec::new() };
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let mut backends = Vec::new();
        for backend in &rule.backend_refs {
            let reference = BackendRef {
                group: backend.group.as_deref(),
                kind: backend.kind.as_deref(),
                name: &backend.name,
                namespace: backend.namespace.as_deref(),
                port: backend.port,
            };
            let namespace = reference.namespace.filter(|ns| !ns.is_empty()).unwrap_or(&key.namespace);
            let name = cluster_name(&ObjectKey::new(namespace, reference.name), reference.port.unwrap_or_default());
            let target = match cache.resolve(index, "TCPRoute", &key.namespace, reference, Traffic::Tcp) {
                Ok(cluster) => {
                    let target = weighted_backend::Target::Cluster(cluster.name.clone());
                    out.clusters.push(cluster);
                    target
                }
                Err(error) => {
                    out.unresolved.get_or_insert(error);
                    // On TCP the data plane closes connections that land on this share.
                    weighted_backend::Target::Invalid(DirectResponse {
                        status: INVALID_BACKEND_STATUS,
                        body: String::new(),
                    })
                }
            };
            let weight = u32::try_from(backend.weight.unwrap_or(1)).unwrap_or(0);
            backends.push(WeightedBackend { name, weight, target: Some(target), filters: Vec::new() });
        }
        out.routes.push(TcpRoute { name: format!("tcproute/{}/{}/rule/{i}", key.namespace, key.name), backends });
    }
    out
}
