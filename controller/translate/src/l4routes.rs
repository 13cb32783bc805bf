//! TCPRoutes, UDPRoutes and TLSRoutes: each rule becomes one snapshot L4 route with
//! weighted backends. The kinds have the same shape (TLSRoute adds SNI hostnames), so one
//! compile serves them all.

use sluice_gateway_api::tcproutes::TcpRoute as TCPRoute;
use sluice_gateway_api::tlsroutes::TlsRoute as TLSRoute;
use sluice_gateway_api::udproutes::UdpRoute as UDPRoute;
use sluice_snapshot::{Cluster, WeightedBackend};

use crate::backends::{BackendError, BackendRef, ClusterCache, Traffic, weighted_backend};
use crate::index::{Index, ObjectKey};
use crate::status::ParentRef;

/// A route kind that forwards whole connections (TCP, TLS) or datagram sessions (UDP).
pub(crate) trait L4Route: kube::Resource<DynamicType = ()> {
    /// `TCPRoute`, `UDPRoute` or `TLSRoute`.
    const KIND: &'static str;
    /// Lower-case kind, the prefix of snapshot route names.
    const PREFIX: &'static str;
    const TRAFFIC: Traffic;
    fn parents(&self) -> Vec<ParentRef>;
    /// The hostnames the route serves (TLSRoute: SNI names); none for TCP and UDP.
    fn hostnames(&self) -> &[String];
    /// Per rule, its backendRefs with their weights.
    fn rules(&self) -> Vec<Vec<(BackendRef<'_>, i32)>>;
}

macro_rules! l4_route {
    ($type:ty, $kind:literal, $prefix:literal, $traffic:expr, |$route:ident| $hostnames:expr) => {
        impl L4Route for $type {
            const KIND: &'static str = $kind;
            const PREFIX: &'static str = $prefix;
            const TRAFFIC: Traffic = $traffic;
            fn parents(&self) -> Vec<ParentRef> {
                parent_refs!(self)
            }
            fn hostnames(&self) -> &[String] {
                let $route = self;
                $hostnames
            }
            fn rules(&self) -> Vec<Vec<(BackendRef<'_>, i32)>> {
                self.spec
                    .rules
                    .iter()
                    .map(|rule| {
                        rule.backend_refs
                            .iter()
                            .map(|b| {
                                let reference = backend_ref!(b);
                                (reference, b.weight.unwrap_or(1))
                            })
                            .collect()
                    })
                    .collect()
            }
        }
    };
}

l4_route!(TCPRoute, "TCPRoute", "tcproute", Traffic::Tcp, |_route| &[]);
l4_route!(UDPRoute, "UDPRoute", "udproute", Traffic::Udp, |_route| &[]);
l4_route!(TLSRoute, "TLSRoute", "tlsroute", Traffic::Tcp, |route| &route.spec.hostnames);

/// One rule of an L4 route, as the snapshot carries it (a TcpRoute or a UdpRoute).
#[derive(Debug, Clone)]
pub(crate) struct L4Rule {
    pub name: String,
    pub backends: Vec<WeightedBackend>,
}

pub(crate) struct CompiledL4Route {
    pub rules: Vec<L4Rule>,
    pub unresolved: Option<BackendError>,
    pub clusters: Vec<std::sync::Arc<Cluster>>,
}

pub(crate) fn compile_l4_route<R: L4Route>(
    route: &R,
    index: &Index<'_>,
    cache: &mut ClusterCache<'_>,
) -> CompiledL4Route {
    let key = ObjectKey::of(route);
    let mut out = CompiledL4Route { rules: Vec::new(), unresolved: None, clusters: Vec::new() };
    for (i, rule) in route.rules().into_iter().enumerate() {
        let mut backends = Vec::new();
        for (reference, weight) in rule {
            let weight = u32::try_from(weight).unwrap_or(0);
            let resolved = cache.resolve(index, R::KIND, &key.namespace, reference, R::TRAFFIC);
            // The data plane closes the connections (drops the datagrams) that land on an
            // invalid share.
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
        out.rules.push(L4Rule { name: format!("{}/{}/{}/rule/{i}", R::PREFIX, key.namespace, key.name), backends });
    }
    out
}
