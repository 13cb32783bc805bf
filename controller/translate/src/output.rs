//! Output assembly: the snapshot and infra of one accepted Gateway.

use std::collections::{BTreeMap, BTreeSet};

use sluice_snapshot::{Cluster, Listener, Protocol, Snapshot, TcpRoute, TlsMode, UdpRoute};

use crate::gateways::GatewayPlan;
use crate::{GatewayOutput, Infra, InfraPort};

/// The snapshot and infra of a Gateway; `backend_client` is presented on TLS connections
/// to backends.
pub(crate) fn gateway_output(
    plan: GatewayPlan<'_>,
    clusters: BTreeMap<String, std::sync::Arc<Cluster>>,
    backend_client: Option<sluice_snapshot::Certificate>,
) -> GatewayOutput {
    let mut ports = BTreeSet::new();
    let mut listeners = Vec::new();
    let mut used_certificates = BTreeSet::new();
    let mut used_validations = BTreeSet::new();
    for listener in plan.listeners {
        if !listener.serves() {
            continue;
        }
        let name = match listener.owner.and_then(|set| plan.listener_sets.get(set)) {
            Some(set) => {
                format!("listenerset/{}/{}/listener/{}", set.key.namespace, set.key.name, listener.name)
            }
            None => format!("gateway/{}/{}/listener/{}", plan.key.namespace, plan.key.name, listener.name),
        };
        let transport = if listener.protocol == Protocol::Udp { "UDP" } else { "TCP" };
        ports.insert(InfraPort { port: listener.port, protocol: transport.into() });
        let (tcp_routes, udp_routes) = if listener.protocol == Protocol::Udp {
            (
                Vec::new(),
                listener.l4_routes.into_iter().map(|r| UdpRoute { name: r.name, backends: r.backends }).collect(),
            )
        } else {
            (
                listener.l4_routes.into_iter().map(|r| TcpRoute { name: r.name, backends: r.backends }).collect(),
                Vec::new(),
            )
        };
        used_certificates.extend(listener.certificates.iter().cloned());
        used_validations.extend(listener.client_validation.iter().cloned());
        listeners.push(Listener {
            name,
            port: u32::try_from(listener.port).unwrap_or_default(),
            protocol: listener.protocol as i32,
            hostname: listener.hostname.unwrap_or_default(),
            tls_mode: if listener.tls_passthrough {
                TlsMode::Passthrough as i32
            } else if listener.certificates.is_empty() {
                TlsMode::Unspecified as i32
            } else {
                TlsMode::Terminate as i32
            },
            certificates: listener.certificates,
            http_routes: listener.http_routes,
            tcp_routes,
            udp_routes,
            tls_routes: listener.tls_routes,
            client_validation: listener.client_validation.unwrap_or_default(),
        });
    }
    let infrastructure = plan.gateway.spec.infrastructure.as_ref();
    let mut clusters: Vec<Cluster> = clusters.into_values().map(|cluster| cluster.as_ref().clone()).collect();
    let mut certificates = plan.certificates;
    if let Some(client) = backend_client
        && clusters.iter().any(|c| c.tls.is_some())
    {
        for tls in clusters.iter_mut().filter_map(|c| c.tls.as_mut()) {
            tls.client_certificate = client.name.clone();
        }
        used_certificates.insert(client.name.clone());
        certificates.insert(client.name.clone(), client);
    }
    let snapshot = Snapshot {
        gateway: plan.key.to_string(),
        version: None,
        listeners,
        clusters,
        certificates: certificates
            .into_iter()
            .filter(|(name, _)| used_certificates.contains(name))
            .map(|(_, c)| c)
            .collect(),
        client_validations: plan
            .client_validations
            .into_iter()
            .filter(|(name, _)| used_validations.contains(name))
            .map(|(_, v)| v)
            .collect(),
    };
    GatewayOutput {
        snapshot,
        infra: Infra {
            ports: ports.into_iter().collect(),
            proxy_config: plan.proxy_config,
            labels: infrastructure.and_then(|i| i.labels.clone()).unwrap_or_default(),
            annotations: infrastructure.and_then(|i| i.annotations.clone()).unwrap_or_default(),
            requested_addresses: plan.requested_addresses,
        },
    }
}
