//! Sluice's own CRDs (API group `gateway.sluice.dev`, version `v1alpha1`).
//!
//! `ProxyConfig` tunes the data plane deployed for a Gateway. A GatewayClass points at one
//! with `spec.parametersRef`; a Gateway may override it with
//! `spec.infrastructure.parametersRef` (same namespace as the Gateway).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of Sluice's own resources.
pub const GROUP: &str = "gateway.sluice.dev";

/// How the data plane of a Gateway is deployed and tuned.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.sluice.dev",
    version = "v1alpha1",
    kind = "ProxyConfig",
    plural = "proxyconfigs",
    shortname = "pxc",
    namespaced,
    derive = "Default",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfigSpec {
    /// Data-plane replicas (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Resource requests and limits of the data-plane container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Type of the Service in front of the data plane (default LoadBalancer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<ServiceType>,
    /// externalTrafficPolicy of that Service (LoadBalancer and NodePort only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<ExternalTrafficPolicy>,
    /// Labels added to every generated resource and the data-plane pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to every generated resource and the data-plane pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Data-plane image (default: the image matching the controller's version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Data-plane log filter, e.g. `info` or `sluice_dataplane=debug` (default info).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Proxies in front of the data plane (e.g. a cloud load balancer) whose
    /// X-Forwarded-For entries are kept. Default 0: a client's own X-Forwarded-For,
    /// Forwarded, X-Forwarded-Host, X-Forwarded-Port and X-Real-IP never reach a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub trusted_hops: Option<u32>,
    /// A HorizontalPodAutoscaler for the data plane; `replicas` is then left to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Class-level only: the IP ranges (CIDRs, e.g. `203.0.113.0/24`) a Gateway of the
    /// class may ask for in `spec.addresses`. Other addresses, and every address when this
    /// is empty (the default), are refused with `UnsupportedAddress`: a Gateway can never
    /// claim an IP the platform team did not hand out (CVE-2020-8554 through externalIPs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_addresses: Vec<String>,
    /// Class-level only: what a Gateway's own ProxyConfig may set besides the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_overrides: Option<GatewayOverrides>,
}

/// Autoscaling of a Gateway's data plane by CPU use.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Fewest replicas (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: Option<i32>,
    /// Most replicas.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU use, in percent of the requested CPU, that the autoscaler keeps
    /// (default 80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: Option<i32>,
}

/// Settings a Gateway's own ProxyConfig may change only when its class allows it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayOverrides {
    /// A Gateway may run another data-plane image (default false).
    #[serde(default)]
    pub image: bool,
    /// A Gateway may add annotations to its pods and Service (default false; they can
    /// drive cloud load balancers, sidecar injection or admission webhooks).
    #[serde(default)]
    pub annotations: bool,
}

/// Service type for a Gateway's data plane.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// An external load balancer (the default).
    #[default]
    LoadBalancer,
    /// A port on every node.
    NodePort,
    /// Reachable inside the cluster only (internal gateways).
    ClusterIP,
}

/// externalTrafficPolicy of the data-plane Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ExternalTrafficPolicy {
    /// Balance across all nodes (the Kubernetes default).
    #[default]
    Cluster,
    /// Keep client source IPs; only nodes with a data-plane pod answer.
    Local,
}

/// The CustomResourceDefinition YAML of every Sluice CRD, as shipped in `crds/yaml/`.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    use kube::CustomResourceExt;
    let crd = ProxyConfig::crd();
    Ok(format!(
        "# Generated from crds/src/lib.rs: run `UPDATE_CRDS=1 cargo test -p sluice-crds` to refresh.\n{}",
        serde_saphyr::to_string(&crd)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_yaml_is_up_to_date() {
        // The CRD as shipped in crds/yaml/ and in the Helm chart's crds/.
        let paths = [
            concat!(env!("CARGO_MANIFEST_DIR"), "/yaml/gateway.sluice.dev_proxyconfigs.yaml"),
            concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/sluice/crds/gateway.sluice.dev_proxyconfigs.yaml"),
        ];
        let generated = crd_yaml().unwrap();
        for path in paths {
            if std::env::var_os("UPDATE_CRDS").is_some() {
                std::fs::write(path, &generated).unwrap();
            }
            let shipped = std::fs::read_to_string(path).unwrap_or_default();
            assert!(shipped == generated, "{path} is stale: run `UPDATE_CRDS=1 cargo test -p sluice-crds`");
        }
    }

    #[test]
    fn parses_a_user_manifest() {
        let yaml = r#"
apiVersion: gateway.sluice.dev/v1alpha1
kind: ProxyConfig
metadata: {name: internal, namespace: infra}
spec:
  replicas: 3
  serviceType: ClusterIP
  externalTrafficPolicy: Local
  labels: {team: platform}
  resources: {limits: {cpu: "1", memory: 256Mi}}
"#;
        let config: ProxyConfig = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(config.spec.replicas, Some(3));
        assert_eq!(config.spec.service_type, Some(ServiceType::ClusterIP));
        assert_eq!(config.spec.external_traffic_policy, Some(ExternalTrafficPolicy::Local));
        assert_eq!(config.spec.labels.get("team").map(String::as_str), Some("platform"));
        assert!(config.spec.resources.is_some());
    }
}
