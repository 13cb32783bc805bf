//! `World`: every input of the translator, as the watches (or files) deliver them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use sluice_crds::ProxyConfig;
use sluice_gateway_api::gatewayclasses::GatewayClass;
use sluice_gateway_api::gateways::Gateway;
use sluice_gateway_api::httproutes::HttpRoute as HTTPRoute;
use sluice_gateway_api::referencegrants::ReferenceGrant;
use sluice_gateway_api::tcproutes::TcpRoute as TCPRoute;
use sluice_gateway_api::udproutes::UdpRoute as UDPRoute;

/// Every object the translator reads. Order does not matter: translation sorts.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub gateway_classes: Vec<Arc<GatewayClass>>,
    pub gateways: Vec<Arc<Gateway>>,
    pub http_routes: Vec<Arc<HTTPRoute>>,
    pub tcp_routes: Vec<Arc<TCPRoute>>,
    pub udp_routes: Vec<Arc<UDPRoute>>,
    pub reference_grants: Vec<Arc<ReferenceGrant>>,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub secrets: Vec<Arc<Secret>>,
    pub namespaces: Vec<Arc<Namespace>>,
    pub proxy_configs: Vec<Arc<ProxyConfig>>,
    /// The `bundle-version` of the Gateway API CRDs installed in the cluster ("" when the
    /// annotation is missing); None where no CRDs are involved (standalone mode).
    pub crd_bundle_version: Option<String>,
    /// The time of this pass in seconds since the Unix epoch, against which certificates'
    /// validity is checked; None: validity is not checked (golden tests).
    pub now: Option<i64>,
}

/// A manifest document that was not taken into the World, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// Position of the document in the stream (0-based), when one document is meant.
    pub document: Option<usize>,
    /// `Kind namespace/name` when known.
    pub object: String,
    pub reason: String,
}

impl World {
    /// Reads a multi-document YAML stream of Kubernetes manifests (as `kubectl apply`
    /// takes them). Documents of kinds the translator does not read are skipped, as are
    /// documents that do not parse; each skip is reported, nothing panics.
    pub fn from_manifests(text: &str) -> (World, Vec<Skipped>) {
        let mut world = World::default();
        let mut skipped = Vec::new();
        for (document, value) in split_documents(text).into_iter().enumerate() {
            let value = match value {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(value) => value,
                Err(reason) => {
                    skipped.push(Skipped { document: Some(document), object: String::new(), reason });
                    continue;
                }
            };
            if let Err((object, reason)) = world.add_value(value) {
                skipped.push(Skipped { document: Some(document), object, reason });
            }
        }
        world.keep_last_definitions(&mut skipped);
        (world, skipped)
    }

    /// Appends `other`'s objects to this World. Follow with [`World::keep_last_definitions`]
    /// when both may define the same object (e.g. worlds read from several files).
    pub fn extend(&mut self, other: &World) {
        self.gateway_classes.extend(other.gateway_classes.iter().cloned());
        self.gateways.extend(other.gateways.iter().cloned());
        self.http_routes.extend(other.http_routes.iter().cloned());
        self.tcp_routes.extend(other.tcp_routes.iter().cloned());
        self.udp_routes.extend(other.udp_routes.iter().cloned());
        self.reference_grants.extend(other.reference_grants.iter().cloned());
        self.services.extend(other.services.iter().cloned());
        self.endpoint_slices.extend(other.endpoint_slices.iter().cloned());
        self.secrets.extend(other.secrets.iter().cloned());
        self.namespaces.extend(other.namespaces.iter().cloned());
        self.proxy_configs.extend(other.proxy_configs.iter().cloned());
    }

    /// A manifest stream may define the same object twice; as with `kubectl apply`, the
    /// later definition replaces the earlier one, which is reported as skipped.
    pub fn keep_last_definitions(&mut self, skipped: &mut Vec<Skipped>) {
        fn dedupe<T: kube::Resource<DynamicType = ()>>(objects: &mut Vec<Arc<T>>, skipped: &mut Vec<Skipped>) {
            let mut seen = std::collections::HashSet::new();
            let mut kept = Vec::with_capacity(objects.len());
            for object in objects.drain(..).rev() {
                let meta = object.meta();
                let key = (meta.namespace.clone(), meta.name.clone());
                if seen.insert(key) {
                    kept.push(object);
                } else {
                    skipped.push(Skipped {
                        document: None,
                        object: format!(
                            "{} {}/{}",
                            T::kind(&()),
                            meta.namespace.as_deref().unwrap_or_default(),
                            meta.name.as_deref().unwrap_or_default()
                        ),
                        reason: "defined again later in the stream; the later definition is used".into(),
                    });
                }
            }
            kept.reverse();
            *objects = kept;
        }
        dedupe(&mut self.gateway_classes, skipped);
        dedupe(&mut self.gateways, skipped);
        dedupe(&mut self.http_routes, skipped);
        dedupe(&mut self.tcp_routes, skipped);
        dedupe(&mut self.udp_routes, skipped);
        dedupe(&mut self.reference_grants, skipped);
        dedupe(&mut self.services, skipped);
        dedupe(&mut self.endpoint_slices, skipped);
        dedupe(&mut self.secrets, skipped);
        dedupe(&mut self.namespaces, skipped);
        dedupe(&mut self.proxy_configs, skipped);
    }

    /// Adds one manifest; on failure returns the object's description and the reason.
    fn add_value(&mut self, value: serde_yaml::Value) -> Result<(), (String, String)> {
        let text = |key: &str| value.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let meta = |key: &str| {
            value.get("metadata").and_then(|m| m.get(key)).and_then(|v| v.as_str()).unwrap_or_default().to_string()
        };
        let api_version = text("apiVersion");
        let kind = text("kind");
        let group = api_version.rsplit_once('/').map(|(group, _)| group).unwrap_or_default();
        let namespace = meta("namespace");
        let object = if namespace.is_empty() {
            format!("{kind} {}", meta("name"))
        } else {
            format!("{kind} {namespace}/{}", meta("name"))
        };
        let fail = |reason: String| (object.clone(), reason);
        if meta("name").is_empty() {
            return Err(fail("metadata.name is missing".into()));
        }
        match (group, kind.as_str()) {
            ("gateway.networking.k8s.io", "GatewayClass") => push(&mut self.gateway_classes, value),
            ("gateway.networking.k8s.io", "Gateway") => push_namespaced(&mut self.gateways, value),
            ("gateway.networking.k8s.io", "HTTPRoute") => push_namespaced(&mut self.http_routes, value),
            ("gateway.networking.k8s.io", "TCPRoute") => push_namespaced(&mut self.tcp_routes, value),
            ("gateway.networking.k8s.io", "UDPRoute") => push_namespaced(&mut self.udp_routes, value),
            ("gateway.networking.k8s.io", "ReferenceGrant") => push_namespaced(&mut self.reference_grants, value),
            ("", "Service") => push_namespaced(&mut self.services, value),
            ("discovery.k8s.io", "EndpointSlice") => push_namespaced(&mut self.endpoint_slices, value),
            ("", "Secret") => push_namespaced(&mut self.secrets, value),
            ("", "Namespace") => push(&mut self.namespaces, value),
            (sluice_crds::GROUP, "ProxyConfig") => push_namespaced(&mut self.proxy_configs, value),
            _ => Err(format!("kind {kind} of {api_version:?} is not read by Sluice")),
        }
        .map_err(fail)
    }
}

/// Splits a YAML stream at its `---` separator lines and parses each document on its
/// own, so that one bad document does not hide the others.
fn split_documents(text: &str) -> Vec<Result<serde_yaml::Value, String>> {
    let mut chunks = vec![String::new()];
    for line in text.lines() {
        let is_separator = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_separator {
            chunks.push(String::new());
        } else if let Some(chunk) = chunks.last_mut() {
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    chunks
        .iter()
        .filter(|chunk| chunk.lines().any(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#')))
        .map(|chunk| serde_yaml::from_str(chunk).map_err(|error| format!("invalid YAML: {error}")))
        .collect()
}

fn push<T: DeserializeOwned + kube::Resource>(into: &mut Vec<Arc<T>>, value: serde_yaml::Value) -> Result<(), String> {
    let mut object: T = serde_yaml::from_value(value).map_err(|error| format!("invalid object: {error}"))?;
    defaults(object.meta_mut());
    into.push(Arc::new(object));
    Ok(())
}

/// Fills in what the API server would: `metadata.generation` starts at 1.
fn defaults(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.generation.get_or_insert(1);
}

/// Namespaced objects without a namespace land in `default`, as `kubectl apply` does.
fn push_namespaced<T: DeserializeOwned + kube::Resource>(
    into: &mut Vec<Arc<T>>,
    value: serde_yaml::Value,
) -> Result<(), String> {
    let mut object: T = serde_yaml::from_value(value).map_err(|error| format!("invalid object: {error}"))?;
    defaults(object.meta_mut());
    if object.meta().namespace.as_deref().unwrap_or_default().is_empty() {
        object.meta_mut().namespace = Some("default".into());
    }
    into.push(Arc::new(object));
    Ok(())
}
