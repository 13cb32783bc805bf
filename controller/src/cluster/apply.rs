//! The deployer's writes: per Gateway the rendered ServiceAccount, Deployment, Service,
//! PodDisruptionBudget and HorizontalPodAutoscaler (the last two only when rendered,
//! deleted otherwise), all with server-side apply, labelled
//! `app.kubernetes.io/managed-by: sluice` and owned by the Gateway; the push CA kept in a
//! Secret of the controller's namespace. Data planes authenticate with their
//! ServiceAccount's projected token (tokens.rs), so no credential is written per Gateway.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Node, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use sluice_translate::{ObjectKey, Output, World};

use super::status::{Address, FIELD_MANAGER};
use crate::deploy::{self, DeployOptions, GatewayIdentity};
use crate::push::ca::CertificateAuthority;

/// Name of the Secret that keeps the push CA (`tls.crt`, `tls.key`, and during a
/// rotation `trusted.crt`).
pub const CA_SECRET: &str = "sluice-push-ca";

/// The push CA and the certificates data planes trust for the push server.
pub struct PushCa {
    /// Signs the push server's certificate.
    pub ca: CertificateAuthority,
    /// The CA certificates data planes trust (PEM): the CA's own plus, during a rotation,
    /// the other CA of `trusted.crt`; sorted, so that the same set renders the same.
    pub trust_bundle: String,
}

/// Loads the push CA from its Secret, creating both when missing. Every replica calls
/// this; the first create wins and the others read its CA.
pub async fn load_or_create_ca(client: &Client, namespace: &str) -> Result<PushCa> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..5 {
        if let Some(secret) = api.get_opt(CA_SECRET).await.context("reading the push CA Secret")? {
            let data = secret.data.unwrap_or_default();
            let text = |k: &str| data.get(k).map(|v| String::from_utf8_lossy(&v.0).into_owned());
            let (Some(cert), Some(key)) = (text("tls.crt"), text("tls.key")) else {
                anyhow::bail!(
                    "Secret {namespace}/{CA_SECRET} lacks tls.crt or tls.key; delete it to have a new CA made"
                );
            };
            let ca = CertificateAuthority::from_pem(&cert, &key)
                .with_context(|| format!("the push CA in Secret {namespace}/{CA_SECRET}"))?;
            let trust_bundle = crate::push::ca::trust_bundle(&[&cert, &text("trusted.crt").unwrap_or_default()])
                .with_context(|| format!("the certificates in Secret {namespace}/{CA_SECRET}"))?;
            return Ok(PushCa { ca, trust_bundle });
        }
        let ca = CertificateAuthority::generate("sluice push CA", 3650)?;
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": CA_SECRET, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "sluice"}},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": ca.certificate_pem(), "tls.key": ca.private_key_pem()},
        }))?;
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!("created the push CA in Secret {namespace}/{CA_SECRET}");
                let trust_bundle = crate::push::ca::trust_bundle(&[ca.certificate_pem()])?;
                return Ok(PushCa { ca, trust_bundle });
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e).context("creating the push CA Secret"),
        }
    }
    anyhow::bail!("could not create or read Secret {namespace}/{CA_SECRET}")
}

/// What the deployer applied, so unchanged Gateways cost nothing.
pub struct Deployer {
    client: Client,
    options: DeployOptions,
    /// Per Gateway: a hash of what was applied last.
    applied: HashMap<ObjectKey, (GatewayIdentity, u64)>,
}

fn hash(value: &impl serde::Serialize) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(value).unwrap_or_default().hash(&mut h);
    h.finish()
}

impl Deployer {
    pub fn new(client: Client, options: DeployOptions) -> Deployer {
        Deployer { client, options, applied: HashMap::new() }
    }

    /// Applies the data planes of every accepted Gateway and removes those of Gateways
    /// that are no longer ours. Returns the number of failures (retried by the caller).
    pub async fn apply(&mut self, output: &Output, world: &World) -> usize {
        let mut failures = 0;
        for (key, gateway) in &output.gateways {
            let Some(identity) = identity(world, key) else {
                continue;
            };
            let rendered = deploy::render(&identity, &gateway.infra, &self.options);
            let digest = hash(&rendered);
            if self.applied.get(key).is_some_and(|(_, d)| *d == digest) {
                continue;
            }
            match self.apply_one(&identity, &rendered).await {
                Ok(()) => {
                    tracing::info!("deployed the data plane of Gateway {key}");
                    self.applied.insert(key.clone(), (identity, digest));
                }
                Err(e) => {
                    tracing::warn!("deploying the data plane of Gateway {key}: {e:#}");
                    failures += 1;
                }
            }
        }
        let gone: Vec<ObjectKey> = self.applied.keys().filter(|k| !output.gateways.contains_key(*k)).cloned().collect();
        for key in gone {
            if let Some((identity, _)) = self.applied.remove(&key) {
                if let Err(e) = self.remove(&identity).await {
                    tracing::warn!("removing the data plane of Gateway {key}: {e:#}");
                    failures += 1;
                } else {
                    tracing::info!("removed the data plane of Gateway {key}");
                }
            }
        }
        failures
    }

    async fn apply_one(&self, identity: &GatewayIdentity, rendered: &deploy::Rendered) -> Result<()> {
        let ns = &identity.namespace;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let sa_name = rendered.service_account.metadata.name.clone().unwrap_or_default();
        self.replace_an_earlier_gateways(identity, &sa_name).await?;
        Api::<ServiceAccount>::namespaced(self.client.clone(), ns)
            .patch(&sa_name, &params, &Patch::Apply(&rendered.service_account))
            .await
            .context("applying the ServiceAccount")?;
        let name = rendered.deployment.metadata.name.clone().unwrap_or_default();
        Api::<Deployment>::namespaced(self.client.clone(), ns)
            .patch(&name, &params, &Patch::Apply(&rendered.deployment))
            .await
            .context("applying the Deployment")?;
        let name = rendered.service.metadata.name.clone().unwrap_or_default();
        Api::<Service>::namespaced(self.client.clone(), ns)
            .patch(&name, &params, &Patch::Apply(&rendered.service))
            .await
            .context("applying the Service")?;
        let budgets = Api::<PodDisruptionBudget>::namespaced(self.client.clone(), ns);
        apply_or_delete(&budgets, &name, rendered.pod_disruption_budget.as_ref())
            .await
            .context("the PodDisruptionBudget")?;
        let autoscalers = Api::<HorizontalPodAutoscaler>::namespaced(self.client.clone(), ns);
        apply_or_delete(&autoscalers, &name, rendered.autoscaler.as_ref())
            .await
            .context("the HorizontalPodAutoscaler")?;
        Ok(())
    }

    /// Deletes the ServiceAccount and Deployment of an earlier Gateway of the same name
    /// (owned by another UID) before the new Gateway's are applied: a new ServiceAccount
    /// gets a new UID, so the earlier pods' push tokens stop working at once (applying
    /// over it would hand the earlier Gateway's pods the new Gateway's identity).
    async fn replace_an_earlier_gateways(&self, identity: &GatewayIdentity, sa_name: &str) -> Result<()> {
        if identity.uid.is_empty() {
            return Ok(());
        }
        let accounts = Api::<ServiceAccount>::namespaced(self.client.clone(), &identity.namespace);
        let Some(account) = accounts.get_opt(sa_name).await.context("reading the ServiceAccount")? else {
            return Ok(());
        };
        let earlier = account
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.kind == "Gateway" && r.name == identity.name && r.uid != identity.uid);
        if earlier {
            tracing::info!(
                "Gateway {}/{} was created again: replacing the earlier one's data plane",
                identity.namespace,
                identity.name
            );
            self.remove(identity).await?;
        }
        Ok(())
    }

    async fn remove(&self, identity: &GatewayIdentity) -> Result<()> {
        let name = deploy::generated_name(identity);
        let ns = &identity.namespace;
        let dp = DeleteParams::background();
        absent(
            Api::<HorizontalPodAutoscaler>::namespaced(self.client.clone(), ns).delete(&name, &dp).await.map(|_| ()),
        )?;
        absent(Api::<PodDisruptionBudget>::namespaced(self.client.clone(), ns).delete(&name, &dp).await.map(|_| ()))?;
        absent(Api::<Deployment>::namespaced(self.client.clone(), ns).delete(&name, &dp).await.map(|_| ()))?;
        absent(Api::<Service>::namespaced(self.client.clone(), ns).delete(&name, &dp).await.map(|_| ()))?;
        absent(Api::<ServiceAccount>::namespaced(self.client.clone(), ns).delete(&name, &dp).await.map(|_| ()))?;
        Ok(())
    }
}

/// Applies `object` (server-side apply) as `name`, or deletes `name` when there is none.
async fn apply_or_delete<K>(api: &Api<K>, name: &str, object: Option<&K>) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    match object {
        Some(object) => {
            api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object)).await.map(|_| ())
        }
        None => absent(api.delete(name, &DeleteParams::background()).await.map(|_| ())),
    }
}

/// A delete's result, where an object already gone is no failure.
fn absent(result: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other,
    }
}

/// The deployer's view of the Gateway `key`, if the World has it.
pub(super) fn identity(world: &World, key: &ObjectKey) -> Option<GatewayIdentity> {
    let gateway = world.gateways.iter().find(|g| {
        g.metadata.namespace.as_deref() == Some(&key.namespace) && g.metadata.name.as_deref() == Some(&key.name)
    })?;
    Some(GatewayIdentity {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        uid: gateway.metadata.uid.clone().unwrap_or_default(),
        class: gateway.spec.gateway_class_name.clone(),
    })
}

/// The addresses of each Gateway, from its generated Service: load-balancer ingress IPs
/// and hostnames for LoadBalancer, the nodes' addresses for NodePort (ExternalIPs when any
/// node has one, else InternalIPs), the ClusterIP(s) for ClusterIP.
pub fn addresses(output: &Output, world: &World, nodes: &[std::sync::Arc<Node>]) -> BTreeMap<ObjectKey, Vec<Address>> {
    let node_addresses = |kind: &str| -> Vec<String> {
        let mut list: Vec<String> = nodes
            .iter()
            .filter_map(|n| n.status.as_ref()?.addresses.clone())
            .flatten()
            .filter(|a| a.type_ == kind)
            .map(|a| a.address)
            .collect();
        list.sort();
        list.dedup();
        list
    };
    let mut out = BTreeMap::new();
    for key in output.gateways.keys() {
        let Some(identity) = identity(world, key) else {
            continue;
        };
        let name = deploy::generated_name(&identity);
        let Some(service) = world.services.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(&key.namespace) && s.metadata.name.as_deref() == Some(&name)
        }) else {
            continue;
        };
        let mut list = Vec::new();
        let spec = service.spec.as_ref();
        let kind = spec.and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP");
        if kind == "LoadBalancer" {
            for ingress in service
                .status
                .iter()
                .filter_map(|s| s.load_balancer.as_ref())
                .flat_map(|lb| lb.ingress.iter().flatten())
            {
                if let Some(ip) = &ingress.ip {
                    list.push(Address { type_: "IPAddress", value: ip.clone() });
                } else if let Some(host) = &ingress.hostname {
                    list.push(Address { type_: "Hostname", value: host.clone() });
                }
            }
        } else if kind == "NodePort" {
            let mut ips: Vec<String> = spec.and_then(|s| s.external_ips.clone()).unwrap_or_default();
            ips.extend(node_addresses("ExternalIP"));
            if ips.is_empty() {
                ips = node_addresses("InternalIP");
            }
            list.extend(ips.into_iter().map(|value| Address { type_: "IPAddress", value }));
        } else {
            let ips = spec
                .and_then(|s| s.cluster_ips.clone())
                .unwrap_or_else(|| spec.and_then(|s| s.cluster_ip.clone()).into_iter().collect());
            // Static addresses (spec.addresses → externalIPs) are the Gateway's addresses;
            // the ClusterIP only when none was asked for.
            let external = spec.and_then(|s| s.external_ips.clone()).unwrap_or_default();
            let chosen = if external.is_empty() { ips } else { external };
            for ip in chosen.into_iter().filter(|ip| !ip.is_empty() && ip != "None") {
                list.push(Address { type_: "IPAddress", value: ip });
            }
        }
        if !list.is_empty() {
            out.insert(key.clone(), list);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world_with(service_type: &str) -> (Output, World) {
        world_with_extra(service_type, "")
    }

    fn world_with_extra(service_type: &str, extra: &str) -> (Output, World) {
        let manifests = format!(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: sluice}}
spec: {{controllerName: sluice.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: web, namespace: infra}}
spec:
  gatewayClassName: sluice
  listeners: [{{name: http, port: 80, protocol: HTTP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-sluice, namespace: infra}}
spec:
  type: {service_type}
  {extra}
  clusterIP: 10.0.0.7
  clusterIPs: [10.0.0.7]
  ports: [{{port: 80}}]
status:
  loadBalancer:
    ingress: [{{ip: 192.0.2.10}}, {{hostname: lb.example.com}}]
"#
        );
        let (world, skipped) = World::from_manifests(&manifests);
        assert!(skipped.is_empty(), "{skipped:?}");
        (sluice_translate::translate(&world), world)
    }

    fn node(internal: &str, external: Option<&str>) -> std::sync::Arc<Node> {
        let mut addresses = vec![serde_json::json!({"type": "InternalIP", "address": internal})];
        if let Some(e) = external {
            addresses.push(serde_json::json!({"type": "ExternalIP", "address": e}));
        }
        std::sync::Arc::new(
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": internal}, "status": {"addresses": addresses}}),
            )
            .unwrap(),
        )
    }

    fn values(map: &BTreeMap<ObjectKey, Vec<Address>>) -> Vec<(&'static str, String)> {
        map.get(&ObjectKey::new("infra", "web")).into_iter().flatten().map(|a| (a.type_, a.value.clone())).collect()
    }

    #[test]
    fn addresses_follow_the_service_type() {
        let (output, world) = world_with("LoadBalancer");
        assert_eq!(
            values(&addresses(&output, &world, &[])),
            vec![("IPAddress", "192.0.2.10".to_string()), ("Hostname", "lb.example.com".to_string())]
        );
        let (output, world) = world_with("ClusterIP");
        assert_eq!(values(&addresses(&output, &world, &[])), vec![("IPAddress", "10.0.0.7".to_string())]);
        let (output, world) = world_with_extra("ClusterIP", "externalIPs: [198.18.0.77]");
        assert_eq!(
            values(&addresses(&output, &world, &[])),
            vec![("IPAddress", "198.18.0.77".to_string())],
            "static addresses replace the ClusterIP (GatewayStaticAddresses wants exactly those)"
        );
        let (output, world) = world_with("NodePort");
        let nodes = [node("10.1.0.2", None), node("10.1.0.1", None)];
        assert_eq!(
            values(&addresses(&output, &world, &nodes)),
            vec![("IPAddress", "10.1.0.1".to_string()), ("IPAddress", "10.1.0.2".to_string())]
        );
        let nodes = [node("10.1.0.2", Some("203.0.113.5")), node("10.1.0.1", None)];
        assert_eq!(values(&addresses(&output, &world, &nodes)), vec![("IPAddress", "203.0.113.5".to_string())]);
    }
}
