//! Lookup tables over the World, built once per translation.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use sluice_crds::ProxyConfig;
use sluice_gateway_api::referencegrants::ReferenceGrant;

use crate::World;

/// `namespace/name` of a namespaced object, ordered by namespace then name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey { namespace: namespace.into(), name: name.into() }
    }

    /// Key of a namespaced object; objects without a namespace land in `default`.
    pub fn of<K: kube::Resource>(object: &K) -> Self {
        let meta = object.meta();
        ObjectKey::new(
            meta.namespace.clone().unwrap_or_else(|| "default".into()),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

impl serde::Serialize for ObjectKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

pub(crate) struct Index<'w> {
    pub services: HashMap<ObjectKey, &'w Service>,
    /// EndpointSlices by the Service they belong to (label `kubernetes.io/service-name`).
    pub endpoint_slices: HashMap<ObjectKey, Vec<&'w EndpointSlice>>,
    pub secrets: HashMap<ObjectKey, &'w Secret>,
    pub config_maps: HashMap<ObjectKey, &'w ConfigMap>,
    pub proxy_configs: HashMap<ObjectKey, &'w ProxyConfig>,
    /// Namespace labels, with `kubernetes.io/metadata.name` as the API server sets it.
    pub namespace_labels: HashMap<String, BTreeMap<String, String>>,
    /// ReferenceGrants by the namespace they live in (the target namespace).
    pub grants: HashMap<&'w str, Vec<&'w ReferenceGrant>>,
    /// `World::now`.
    pub now: Option<i64>,
    /// The earliest instant after `now` at which a certificate read so far becomes valid
    /// or expires (`Output::next_change_at`).
    pub next_change: std::cell::Cell<Option<i64>>,
}

/// The label the API server puts on every Namespace, holding its name.
pub(crate) const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl<'w> Index<'w> {
    pub fn new(world: &'w World) -> Self {
        let mut endpoint_slices: HashMap<ObjectKey, Vec<&EndpointSlice>> = HashMap::new();
        for slice in &world.endpoint_slices {
            let service = slice.metadata.labels.as_ref().and_then(|labels| labels.get(SERVICE_NAME_LABEL));
            if let Some(service) = service {
                let key = ObjectKey::new(ObjectKey::of(slice.as_ref()).namespace, service.clone());
                endpoint_slices.entry(key).or_default().push(slice);
            }
        }
        for slices in endpoint_slices.values_mut() {
            slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        let mut grants: HashMap<&str, Vec<&ReferenceGrant>> = HashMap::new();
        for grant in &world.reference_grants {
            grants.entry(grant.metadata.namespace.as_deref().unwrap_or("default")).or_default().push(grant);
        }
        let mut namespace_labels = HashMap::new();
        for namespace in &world.namespaces {
            if let Some(name) = &namespace.metadata.name {
                let mut labels = namespace.metadata.labels.clone().unwrap_or_default();
                labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
                namespace_labels.insert(name.clone(), labels);
            }
        }
        Index {
            services: world.services.iter().map(|s| (ObjectKey::of(s.as_ref()), s.as_ref())).collect(),
            endpoint_slices,
            secrets: world.secrets.iter().map(|s| (ObjectKey::of(s.as_ref()), s.as_ref())).collect(),
            config_maps: world.config_maps.iter().map(|c| (ObjectKey::of(c.as_ref()), c.as_ref())).collect(),
            proxy_configs: world.proxy_configs.iter().map(|p| (ObjectKey::of(p.as_ref()), p.as_ref())).collect(),
            namespace_labels,
            grants,
            now: world.now,
            next_change: std::cell::Cell::new(None),
        }
    }

    /// Notes that translation answers differently from `at` on (a certificate's validity
    /// starts or ends then).
    pub fn changes_at(&self, at: i64) {
        let earliest = self.next_change.get().map_or(at, |known| known.min(at));
        self.next_change.set(Some(earliest));
    }

    /// The one ReferenceGrant check for every cross-namespace reference: may an object of
    /// `from_group/from_kind` in `from_namespace` refer to `to_group/to_kind` `to`?
    /// Same-namespace references are always allowed.
    pub fn reference_allowed(
        &self,
        from_group: &str,
        from_kind: &str,
        from_namespace: &str,
        to_group: &str,
        to_kind: &str,
        to: &ObjectKey,
    ) -> bool {
        if from_namespace == to.namespace {
            return true;
        }
        let Some(grants) = self.grants.get(to.namespace.as_str()) else {
            return false;
        };
        grants.iter().any(|grant| {
            grant
                .spec
                .from
                .iter()
                .any(|from| from.group == from_group && from.kind == from_kind && from.namespace == from_namespace)
                && grant.spec.to.iter().any(|target| {
                    target.group == to_group
                        && target.kind == to_kind
                        && target.name.as_deref().is_none_or(|name| name.is_empty() || name == to.name)
                })
        })
    }
}
