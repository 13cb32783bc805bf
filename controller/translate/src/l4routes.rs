//! TCPRoutes: each rule becomes one snapshot TCP route with weighted backends.

use sluice_gateway_api::tcproutes::TcpRoute as TCPRoute;
use sluice_snapshot::{Cluster, TcpRoute};

use crate::backends::{BackendError, BackendRef, ClusterCache, Traffic, weighted_backend};
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
            let weight = u32::try_from(backend.weight.unwrap_or(1)).unwrap_or(0);
            let resolved = cache.resolve(index, "TCPRoute", &key.namespace, reference, Traffic::Tcp);
            // On TCP the data plane closes the connections that land on an invalid share.
            backends.push(weighted_backend(
                reference,
                &key.namespace,
                weight,
                resolved,
                Vec::new(),
                &mut out.clusters,
                &mut out.unresolved,
            ));
        }
        out.routes.push(TcpRoute { name: format!("tcproute/{}/{}/rule/{i}", key.namespace, key.name), backends });
    }
    out
}
