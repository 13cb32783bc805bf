//! The deployer's renderer: what Sluice runs for each Gateway, as Kubernetes objects.
//!
//! ```text
//!  Gateway (identity, uid) + Infra (ports, ProxyConfig, spec.infrastructure) + options
//!     ──render──► ServiceAccount, Deployment (data plane), Service
//!                 (+ PodDisruptionBudget with more than one replica, + HorizontalPodAutoscaler)
//! ```
//!
//! Pure: the caller applies the objects with server-side apply. Everything carries the
//! Gateway's `gateway.networking.k8s.io/gateway-name` label (GEP-1762) and an owner
//! reference to the Gateway, so deleting the Gateway deletes them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, LifecycleHandler, ObjectFieldSelector,
    PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource,
    SecurityContext, Service, ServiceAccount, ServiceAccountTokenProjection, ServicePort, ServiceSpec, SleepAction,
    Volume, VolumeMount, VolumeProjection, WeightedPodAffinityTerm,
};
use k8s_openapi::api::core::v1::{ResourceRequirements, SeccompProfile, Sysctl};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_crds::{ExternalTrafficPolicy, ServiceType};
use sluice_translate::Infra;

/// The label every generated object carries (GEP-1762).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Port of the data plane's admin endpoint (`/ready`, `/metrics`) in its pods.
pub const ADMIN_PORT: i32 = sluice_snapshot::ADMIN_PORT as i32;
/// Where the push token (projected, audience `sluice.dev/push`) is mounted in data-plane
/// pods.
pub const PUSH_TOKEN_DIR: &str = "/var/run/secrets/sluice.dev/push";
/// The audience of the data planes' push tokens.
pub const PUSH_AUDIENCE: &str = "sluice.dev/push";
/// Push tokens live an hour; the kubelet renews them after 80% of that, and the push
/// server ends a stream when its token expires, so the data plane reconnects with the new one.
const PUSH_TOKEN_SECONDS: i64 = 3600;
/// The environment variable that carries the push trust bundle (CA certificates, PEM).
pub const PUSH_CA_ENV: &str = "SLUICE_PUSH_CA";
/// Allocator settings for the data plane (see the constant's own documentation).
pub const DATA_PLANE_ALLOCATOR_ENV: [(&str, &str); 2] = sluice_snapshot::DATA_PLANE_ALLOCATOR_ENV;
/// The data plane's `--state-dir` (an emptyDir): the last applied snapshot, so that a
/// restarted container serves while its controller is unreachable.
pub const STATE_DIR: &str = "/var/lib/sluice";

/// The Gateway a deployment is for.
#[derive(Debug, Clone)]
pub struct GatewayIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub class: String,
}

/// Cluster-wide settings of the deployer.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// The data-plane image when the ProxyConfig names none.
    pub default_image: String,
    /// The push server as data planes reach it, e.g. `https://sluice-controller.sluice-system.svc:9443`.
    pub control_plane_url: String,
    /// The CA certificates (PEM) data planes trust for the push server.
    pub push_trust_bundle: String,
}

/// The objects of one Gateway's data plane.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rendered {
    pub service_account: ServiceAccount,
    pub deployment: Deployment,
    pub service: Service,
    /// At most one pod unavailable at a time, when there can be more than one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    /// With ProxyConfig `autoscaling` (the Deployment's replicas are then its).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<HorizontalPodAutoscaler>,
}

/// The data-plane container's resource requests when the ProxyConfig sets none (an
/// autoscaler needs a CPU request to scale on).
const DEFAULT_CPU_REQUEST: &str = "100m";
const DEFAULT_MEMORY_REQUEST: &str = "64Mi";
/// The user and group the data plane runs as (distroless's `nonroot`).
pub const DATA_PLANE_UID: i64 = 65532;

/// The name of everything generated for a Gateway: `<gateway>-<class>`, shortened with a
/// stable hash when longer than a DNS label allows.
pub fn generated_name(gateway: &GatewayIdentity) -> String {
    dns_label(&format!("{}-{}", gateway.name, gateway.class))
}

/// `value` if it fits a DNS label / label value (63 characters), else its first 54
/// characters and a hash of the whole.
fn dns_label(value: &str) -> String {
    let full = value.to_string();
    if full.len() <= 63 {
        return full;
    }
    let hash = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(full.as_bytes());
        digest.iter().take(4).map(|b| format!("{b:02x}")).collect::<String>()
    };
    let kept: String = full.chars().take(63 - 9).collect();
    format!("{}-{hash}", kept.trim_end_matches('-'))
}

/// Renders the data plane of one Gateway.
pub fn render(gateway: &GatewayIdentity, infra: &Infra, options: &DeployOptions) -> Rendered {
    let name = generated_name(gateway);
    let config = &infra.proxy_config;
    // Label values are limited to 63 characters; Gateway names are not.
    let selector: BTreeMap<String, String> = [
        (GATEWAY_NAME_LABEL.to_string(), dns_label(&gateway.name)),
        ("app.kubernetes.io/name".to_string(), "sluice-dataplane".to_string()),
    ]
    .into();
    // ProxyConfig first, then the Gateway's own spec.infrastructure, then ours (which
    // the selector needs: nobody may override them).
    let mut labels = config.labels.clone();
    labels.extend(infra.labels.clone());
    labels.extend([
        ("app.kubernetes.io/instance".to_string(), name.clone()),
        ("app.kubernetes.io/managed-by".to_string(), "sluice".to_string()),
        ("app.kubernetes.io/component".to_string(), "dataplane".to_string()),
    ]);
    labels.extend(selector.clone());
    let mut annotations = config.annotations.clone();
    annotations.extend(infra.annotations.clone());
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(gateway.namespace.clone()),
        labels: Some(labels.clone()),
        annotations: (!annotations.is_empty()).then(|| annotations.clone()),
        owner_references: Some(vec![OwnerReference {
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "Gateway".into(),
            name: gateway.name.clone(),
            uid: gateway.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..Default::default()
    };

    let service_account =
        ServiceAccount { metadata: meta.clone(), automount_service_account_token: Some(false), ..Default::default() };

    let ports: Vec<ContainerPort> = infra
        .ports
        .iter()
        .map(|p| ContainerPort {
            name: Some(port_name(p)),
            container_port: p.port,
            protocol: Some(p.protocol.clone()),
            ..Default::default()
        })
        .chain([ContainerPort {
            name: Some("admin".into()),
            container_port: ADMIN_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }])
        .collect();
    let log_level = config.log_level.clone().unwrap_or_else(|| "info".into());
    let low_port = infra.ports.iter().any(|p| p.port < 1024);
    let container = Container {
        name: "dataplane".into(),
        image: Some(config.image.clone().unwrap_or_else(|| options.default_image.clone())),
        args: Some(
            vec![
                "--control-plane".into(),
                options.control_plane_url.clone(),
                "--gateway".into(),
                format!("{}/{}", gateway.namespace, gateway.name),
                "--token-file".into(),
                format!("{PUSH_TOKEN_DIR}/token"),
                "--bind".into(),
                "0.0.0.0".into(),
                "--admin".into(),
                format!("0.0.0.0:{ADMIN_PORT}"),
                "--state-dir".into(),
                STATE_DIR.into(),
            ]
            .into_iter()
            .chain(config.trusted_hops.into_iter().flat_map(|hops| ["--trusted-hops".to_string(), hops.to_string()]))
            .collect(),
        ),
        env: Some(
            [
                EnvVar {
                    name: "POD_NAME".into(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                EnvVar { name: "RUST_LOG".into(), value: Some(log_level), ..Default::default() },
                EnvVar {
                    name: PUSH_CA_ENV.into(),
                    value: Some(options.push_trust_bundle.clone()),
                    ..Default::default()
                },
            ]
            .into_iter()
            .chain(DATA_PLANE_ALLOCATOR_ENV.iter().map(|(name, value)| EnvVar {
                name: (*name).into(),
                value: Some((*value).into()),
                ..Default::default()
            }))
            .collect(),
        ),
        ports: Some(ports),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::Int(ADMIN_PORT),
                ..Default::default()
            }),
            period_seconds: Some(2),
            failure_threshold: Some(2),
            ..Default::default()
        }),
        // Endpoints are removed from load balancers before the proxy stops accepting;
        // then Pingora drains in-flight requests on SIGTERM.
        lifecycle: Some(k8s_openapi::api::core::v1::Lifecycle {
            pre_stop: Some(LifecycleHandler { sleep: Some(SleepAction { seconds: 5 }), ..Default::default() }),
            ..Default::default()
        }),
        resources: Some(config.resources.clone().unwrap_or_else(|| {
            ResourceRequirements {
                requests: Some(
                    [
                        ("cpu".to_string(), Quantity(DEFAULT_CPU_REQUEST.into())),
                        ("memory".to_string(), Quantity(DEFAULT_MEMORY_REQUEST.into())),
                    ]
                    .into(),
                ),
                ..Default::default()
            }
        })),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                drop: Some(vec!["ALL".into()]),
                // Listener ports below 1024 (80, 443) without running as root.
                add: low_port.then(|| vec!["NET_BIND_SERVICE".into()]),
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "push-token".into(),
                mount_path: PUSH_TOKEN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            // The root filesystem is read-only; Pingora may keep runtime files in /tmp.
            VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() },
            VolumeMount { name: "state".into(), mount_path: STATE_DIR.into(), ..Default::default() },
        ]),
        ..Default::default()
    };
    let pod_meta = ObjectMeta {
        labels: Some(labels.clone()),
        annotations: (!annotations.is_empty()).then_some(annotations),
        ..Default::default()
    };
    let deployment = Deployment {
        metadata: meta.clone(),
        spec: Some(DeploymentSpec {
            // With an autoscaler the replicas are its to set.
            replicas: config.autoscaling.is_none().then(|| config.replicas.unwrap_or(1)),
            selector: LabelSelector { match_labels: Some(selector.clone()), ..Default::default() },
            // Never below the wanted capacity while rolling (e.g. after a listener change).
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(pod_meta),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(35),
                    // Pod Security "restricted": non-root, the runtime's seccomp profile; the
                    // push token (0440) is readable through fsGroup.
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(DATA_PLANE_UID),
                        run_as_group: Some(DATA_PLANE_UID),
                        fs_group: Some(DATA_PLANE_UID),
                        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                        // Ports below 1024 without root: a capability added to a non-root
                        // container is not effective (no ambient capabilities), this
                        // namespaced sysctl is (a "safe" sysctl, allowed by Pod Security).
                        sysctls: low_port.then(|| {
                            vec![Sysctl { name: "net.ipv4.ip_unprivileged_port_start".into(), value: "0".into() }]
                        }),
                        ..Default::default()
                    }),
                    affinity: Some(Affinity {
                        pod_anti_affinity: Some(PodAntiAffinity {
                            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                                weight: 100,
                                pod_affinity_term: PodAffinityTerm {
                                    label_selector: Some(LabelSelector {
                                        match_labels: Some(selector.clone()),
                                        ..Default::default()
                                    }),
                                    topology_key: "kubernetes.io/hostname".into(),
                                    ..Default::default()
                                },
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![
                        // The ServiceAccount token the push server checks (TokenReview): for
                        // the push server only, bound to this pod, renewed by the kubelet.
                        Volume {
                            name: "push-token".into(),
                            projected: Some(ProjectedVolumeSource {
                                default_mode: Some(0o440),
                                sources: Some(vec![VolumeProjection {
                                    service_account_token: Some(ServiceAccountTokenProjection {
                                        audience: Some(PUSH_AUDIENCE.into()),
                                        expiration_seconds: Some(PUSH_TOKEN_SECONDS),
                                        path: "token".into(),
                                    }),
                                    ..Default::default()
                                }]),
                            }),
                            ..Default::default()
                        },
                        Volume {
                            name: "tmp".into(),
                            empty_dir: Some(k8s_openapi::api::core::v1::EmptyDirVolumeSource::default()),
                            ..Default::default()
                        },
                        Volume {
                            name: "state".into(),
                            empty_dir: Some(k8s_openapi::api::core::v1::EmptyDirVolumeSource::default()),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };

    let service_type = config.service_type.unwrap_or_default();
    let external = matches!(service_type, ServiceType::LoadBalancer | ServiceType::NodePort);
    let service = Service {
        metadata: meta.clone(),
        spec: Some(ServiceSpec {
            type_: Some(
                match service_type {
                    ServiceType::LoadBalancer => "LoadBalancer",
                    ServiceType::NodePort => "NodePort",
                    ServiceType::ClusterIP => "ClusterIP",
                }
                .into(),
            ),
            selector: Some(selector.clone()),
            ports: Some(
                infra
                    .ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(port_name(p)),
                        port: p.port,
                        target_port: Some(IntOrString::Int(p.port)),
                        protocol: Some(p.protocol.clone()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            // spec.addresses (IP addresses; the translator refuses other kinds): asked of the
            // load balancer, or published as external IPs that kube-proxy routes.
            load_balancer_ip: matches!(service_type, ServiceType::LoadBalancer)
                .then(|| infra.requested_addresses.first().cloned())
                .flatten(),
            external_ips: (!matches!(service_type, ServiceType::LoadBalancer) && !infra.requested_addresses.is_empty())
                .then(|| infra.requested_addresses.clone()),
            external_traffic_policy: external.then(|| {
                match config.external_traffic_policy.unwrap_or_default() {
                    ExternalTrafficPolicy::Cluster => "Cluster",
                    ExternalTrafficPolicy::Local => "Local",
                }
                .into()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let most_replicas = config.autoscaling.as_ref().map_or(config.replicas.unwrap_or(1), |a| a.max_replicas);
    let pod_disruption_budget = (most_replicas > 1).then(|| PodDisruptionBudget {
        metadata: meta.clone(),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector.clone()), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let autoscaler = config.autoscaling.as_ref().map(|autoscaling| HorizontalPodAutoscaler {
        metadata: meta.clone(),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: name.clone(),
            },
            min_replicas: Some(autoscaling.min_replicas.unwrap_or(1)),
            max_replicas: autoscaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(autoscaling.target_cpu_utilization_percentage.unwrap_or(80)),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    Rendered { service_account, deployment, service, pod_disruption_budget, autoscaler }
}

/// `port-8080`: a valid port name (a DNS label of at most 15 characters) for any port.
/// `port-<n>` for TCP, `udp-<n>` for UDP (both may use one number; names must differ).
fn port_name(port: &sluice_translate::InfraPort) -> String {
    if port.protocol == "UDP" { format!("udp-{}", port.port) } else { format!("port-{}", port.port) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(name: &str) -> GatewayIdentity {
        GatewayIdentity { namespace: "ns".into(), name: name.into(), uid: "u".into(), class: "sluice".into() }
    }

    #[test]
    fn names_are_dns_labels() {
        assert_eq!(generated_name(&gateway("web")), "web-sluice");
        let long = generated_name(&gateway(&"a".repeat(70)));
        assert!(long.len() <= 63, "{long}");
        assert_ne!(long, generated_name(&gateway(&"a".repeat(71))), "distinct names stay distinct");
    }

    /// Pod Security "restricted" (and resource requests) for every pod Sluice renders,
    /// whatever the ProxyConfig says.
    #[test]
    fn data_plane_pods_meet_pod_security_restricted() {
        let options = DeployOptions {
            default_image: "i".into(),
            control_plane_url: "https://c".into(),
            push_trust_bundle: "CA".into(),
        };
        let low_port = Infra {
            ports: vec![sluice_translate::InfraPort { port: 80, protocol: "TCP".into() }],
            ..Default::default()
        };
        for infra in [Infra::default(), low_port] {
            let rendered = render(&gateway("web"), &infra, &options);
            let pod = rendered.deployment.spec.unwrap().template.spec.unwrap();
            let security = pod.security_context.unwrap();
            assert_eq!(security.run_as_non_root, Some(true));
            assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");
            assert_eq!(
                (security.run_as_user, security.run_as_group, security.fs_group),
                (Some(65532), Some(65532), Some(65532))
            );
            assert!(pod.host_network.is_none() && pod.host_pid.is_none());
            for container in &pod.containers {
                let c = container.security_context.clone().unwrap();
                assert_eq!((c.allow_privilege_escalation, c.read_only_root_filesystem), (Some(false), Some(true)));
                let capabilities = c.capabilities.unwrap();
                assert_eq!(capabilities.drop, Some(vec!["ALL".to_string()]));
                assert!(capabilities.add.unwrap_or_default().iter().all(|c| c == "NET_BIND_SERVICE"));
                let requests = container.resources.clone().unwrap().requests.unwrap();
                assert!(requests.contains_key("cpu") && requests.contains_key("memory"), "{requests:?}");
            }
            assert!(rendered.pod_disruption_budget.is_none(), "one replica: no budget to keep");
        }
    }

    #[test]
    fn the_gateway_name_label_fits_label_values() {
        let name = "g".repeat(100);
        let rendered = render(
            &gateway(&name),
            &Infra::default(),
            &DeployOptions {
                default_image: "i".into(),
                control_plane_url: "https://c".into(),
                push_trust_bundle: "CA".into(),
            },
        );
        let labels = rendered.deployment.metadata.labels.unwrap();
        assert!(labels[GATEWAY_NAME_LABEL].len() <= 63);
        // The owner reference keeps the real name.
        assert_eq!(rendered.service.metadata.owner_references.unwrap()[0].name, name);
    }
}
