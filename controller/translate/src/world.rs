//! `World`: every input of the translator, as the watches (or files) deliver them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use sluice_crds::ProxyConfig;
use sluice_gateway_api::backendtlspolicies::BackendTlsPolicy;
use sluice_gateway_api::gatewayclasses::GatewayClass;
use sluice_gateway_api::gateways::Gateway;
use sluice_gateway_api::grpcroutes::GrpcRoute as GRPCRoute;
use sluice_gateway_api::httproutes::HttpRoute as HTTPRoute;
use sluice_gateway_api::listenersets::ListenerSet;
use sluice_gateway_api::referencegrants::ReferenceGrant;
use sluice_gateway_api::tcproutes::TcpRoute as TCPRoute;
use sluice_gateway_api::tlsroutes::TlsRoute as TLSRoute;
use sluice_gateway_api::udproutes::UdpRoute as UDPRoute;

/// Every object the translator reads. Order does not matter: translation sorts.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub gateway_classes: Vec<Arc<GatewayClass>>,
    pub gateways: Vec<Arc<Gateway>>,
    /// Extra listeners for Gateways that allow them (`spec.allowedListeners`).
    pub listener_sets: Vec<Arc<ListenerSet>>,
    pub http_routes: Vec<Arc<HTTPRoute>>,
    pub grpc_routes: Vec<Arc<GRPCRoute>>,
    pub tcp_routes: Vec<Arc<TCPRoute>>,
    pub udp_routes: Vec<Arc<UDPRoute>>,
    pub tls_routes: Vec<Arc<TLSRoute>>,
    pub reference_grants: Vec<Arc<ReferenceGrant>>,
    pub backend_tls_policies: Vec<Arc<BackendTlsPolicy>>,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub secrets: Vec<Arc<Secret>>,
    /// CA bundles (`ca.crt`) of BackendTLSPolicies and of client certificate validation.
    pub config_maps: Vec<Arc<ConfigMap>>,
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
        for (document, chunk) in split_documents(text).into_iter().enumerate() {
            let header = match serde_saphyr::from_str_with_options::<Option<Document>>(&chunk, yaml_options()) {
                Ok(Some(Document::Manifest(header))) => header,
                Ok(Some(Document::Other(_))) => Header::default(),
                Ok(None) => continue,
                Err(error) => {
                    let reason = format!("invalid YAML: {error}");
                    skipped.push(Skipped { document: Some(document), object: String::new(), reason });
                    continue;
                }
            };
            if let Err((object, reason)) = world.add_document(&header, &chunk) {
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
        self.listener_sets.extend(other.listener_sets.iter().cloned());
        self.http_routes.extend(other.http_routes.iter().cloned());
        self.grpc_routes.extend(other.grpc_routes.iter().cloned());
        self.tcp_routes.extend(other.tcp_routes.iter().cloned());
        self.udp_routes.extend(other.udp_routes.iter().cloned());
        self.tls_routes.extend(other.tls_routes.iter().cloned());
        self.reference_grants.extend(other.reference_grants.iter().cloned());
        self.backend_tls_policies.extend(other.backend_tls_policies.iter().cloned());
        self.services.extend(other.services.iter().cloned());
        self.endpoint_slices.extend(other.endpoint_slices.iter().cloned());
        self.secrets.extend(other.secrets.iter().cloned());
        self.config_maps.extend(other.config_maps.iter().cloned());
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
        dedupe(&mut self.listener_sets, skipped);
        dedupe(&mut self.http_routes, skipped);
        dedupe(&mut self.grpc_routes, skipped);
        dedupe(&mut self.tcp_routes, skipped);
        dedupe(&mut self.udp_routes, skipped);
        dedupe(&mut self.tls_routes, skipped);
        dedupe(&mut self.reference_grants, skipped);
        dedupe(&mut self.backend_tls_policies, skipped);
        dedupe(&mut self.services, skipped);
        dedupe(&mut self.endpoint_slices, skipped);
        dedupe(&mut self.secrets, skipped);
        dedupe(&mut self.config_maps, skipped);
        dedupe(&mut self.namespaces, skipped);
        dedupe(&mut self.proxy_configs, skipped);
    }

    /// Adds one manifest (`document` is its YAML text, `header` its type and name); on
    /// failure returns the object's description and the reason.
    fn add_document(&mut self, header: &Header, document: &str) -> Result<(), (String, String)> {
        let text = |value: &Option<Scalar>| value.as_ref().map(|v| v.0.clone()).unwrap_or_default();
        let meta = header.metadata.as_ref();
        let api_version = text(&header.api_version);
        let kind = text(&header.kind);
        let name = meta.map(|m| text(&m.name)).unwrap_or_default();
        let namespace = meta.map(|m| text(&m.namespace)).unwrap_or_default();
        let group = api_version.rsplit_once('/').map(|(group, _)| group).unwrap_or_default();
        let object = if namespace.is_empty() { format!("{kind} {name}") } else { format!("{kind} {namespace}/{name}") };
        let fail = |reason: String| (object.clone(), reason);
        if name.is_empty() {
            return Err(fail("metadata.name is missing".into()));
        }
        match (group, kind.as_str()) {
            ("gateway.networking.k8s.io", "GatewayClass") => push(&mut self.gateway_classes, document),
            ("gateway.networking.k8s.io", "Gateway") => push_namespaced(&mut self.gateways, document),
            ("gateway.networking.k8s.io", "ListenerSet") => push_namespaced(&mut self.listener_sets, document),
            ("gateway.networking.k8s.io", "HTTPRoute") => push_namespaced(&mut self.http_routes, document),
            ("gateway.networking.k8s.io", "GRPCRoute") => push_namespaced(&mut self.grpc_routes, document),
            ("gateway.networking.k8s.io", "TCPRoute") => push_namespaced(&mut self.tcp_routes, document),
            ("gateway.networking.k8s.io", "UDPRoute") => push_namespaced(&mut self.udp_routes, document),
            ("gateway.networking.k8s.io", "TLSRoute") => push_namespaced(&mut self.tls_routes, document),
            ("gateway.networking.k8s.io", "ReferenceGrant") => push_namespaced(&mut self.reference_grants, document),
            ("gateway.networking.k8s.io", "BackendTLSPolicy") => {
                push_namespaced(&mut self.backend_tls_policies, document)
            }
            ("", "Service") => push_namespaced(&mut self.services, document),
            ("discovery.k8s.io", "EndpointSlice") => push_namespaced(&mut self.endpoint_slices, document),
            ("", "Secret") => push_namespaced(&mut self.secrets, document),
            ("", "ConfigMap") => push_namespaced(&mut self.config_maps, document),
            ("", "Namespace") => push(&mut self.namespaces, document),
            (sluice_crds::GROUP, "ProxyConfig") => push_namespaced(&mut self.proxy_configs, document),
            _ => Err(format!("kind {kind} of {api_version:?} is not read by Sluice")),
        }
        .map_err(fail)
    }
}

/// A YAML document: a manifest, or anything else (a scalar, a list), which has no name.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Document {
    Manifest(Header),
    Other(serde::de::IgnoredAny),
}

/// The fields of a manifest that say what it is, read before the whole object.
#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<Scalar>,
    kind: Option<Scalar>,
    metadata: Option<HeaderMetadata>,
}

#[derive(Default, serde::Deserialize)]
struct HeaderMetadata {
    name: Option<Scalar>,
    namespace: Option<Scalar>,
}

/// A header field: any scalar is taken as its text; a mapping or list there is ignored
/// (the typed read of the whole object reports it).
struct Scalar(String);

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a scalar")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Scalar, E> {
                Ok(Scalar(value.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar(String::new()))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Scalar, E> {
                Ok(Scalar(String::new()))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Scalar, E> {
                Ok(Scalar(String::new()))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar(String::new()))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar(String::new()))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar(String::new()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Scalar(String::new()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                Ok(Scalar(String::new()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// YAML 1.2 readings (`yes`/`no`/`on`/`off` stay strings, as Kubernetes reads them), and
/// errors without a snippet of the document: a Secret's data must not reach a status.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true, with_snippet: false }
}

/// Splits a YAML stream at its `---` separator lines, so that one bad document does not
/// hide the others; each document is parsed on its own.
fn split_documents(text: &str) -> Vec<String> {
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
    chunks.retain(|chunk| chunk.lines().any(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#')));
    chunks
}

fn push<T: DeserializeOwned + kube::Resource>(into: &mut Vec<Arc<T>>, document: &str) -> Result<(), String> {
    let mut object: T = read_object(document)?;
    defaults(object.meta_mut());
    into.push(Arc::new(object));
    Ok(())
}

fn read_object<T: DeserializeOwned>(document: &str) -> Result<T, String> {
    serde_saphyr::from_str_with_options(document, yaml_options()).map_err(|error| format!("invalid object: {error}"))
}

/// Fills in what the API server would: `metadata.generation` starts at 1.
fn defaults(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.generation.get_or_insert(1);
}

/// Namespaced objects without a namespace land in `default`, as `kubectl apply` does.
fn push_namespaced<T: DeserializeOwned + kube::Resource>(into: &mut Vec<Arc<T>>, document: &str) -> Result<(), String> {
    let mut object: T = read_object(document)?;
    defaults(object.meta_mut());
    if object.meta().namespace.as_deref().unwrap_or_default().is_empty() {
        object.meta_mut().namespace = Some("default".into());
    }
    into.push(Arc::new(object));
    Ok(())
}
