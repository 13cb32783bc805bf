//! GatewayClasses: which are ours, whether they are accepted, and their ProxyConfig.

use std::collections::BTreeMap;

use sluice_crds::{GROUP, ProxyConfigSpec};
use sluice_gateway_api::gatewayclasses::GatewayClass;

use crate::World;
use crate::features::supported_features;
use crate::index::{Index, ObjectKey};
use crate::status::{CONTROLLER_NAME, Condition, GatewayClassStatus, reason};

/// One of our GatewayClasses after validation.
pub(crate) struct ClassInfo {
    /// Accepted classes program their Gateways; the message says why not otherwise.
    pub rejected: Option<String>,
    pub proxy_config: ProxyConfigSpec,
}

/// Validates every GatewayClass whose controllerName is ours; others are left alone.
pub(crate) fn translate_classes(
    world: &World,
    index: &Index<'_>,
    status: &mut BTreeMap<String, GatewayClassStatus>,
) -> BTreeMap<String, ClassInfo> {
    let mut classes = BTreeMap::new();
    for class in &world.gateway_classes {
        if class.spec.controller_name != CONTROLLER_NAME {
            continue;
        }
        let Some(name) = class.metadata.name.clone() else { continue };
        let generation = class.metadata.generation.unwrap_or_default();
        let (info, condition) = match class_proxy_config(class, index) {
            Ok(proxy_config) => (
                ClassInfo { rejected: None, proxy_config },
                Condition::new(reason::ACCEPTED, true, reason::ACCEPTED, "Accepted by Sluice", generation),
            ),
            Err(message) => (
                ClassInfo { rejected: Some(message.clone()), proxy_config: ProxyConfigSpec::default() },
                Condition::new(reason::ACCEPTED, false, reason::INVALID_PARAMETERS, message, generation),
            ),
        };
        let mut conditions = vec![condition];
        conditions.extend(supported_version(world.crd_bundle_version.as_deref(), generation));
        status.insert(name.clone(), GatewayClassStatus { conditions, supported_features: supported_features() });
        classes.insert(name, info);
    }
    classes
}

/// Gateway API releases whose CRDs Sluice reads (the two latest, as conformance counts).
pub const SUPPORTED_BUNDLE_VERSIONS: &[&str] = &["v1.6", "v1.7"];

/// The SupportedVersion condition: True when the installed CRDs come from a supported
/// release (any patch of it). Other versions get best-effort support (the class stays
/// Accepted), as the spec allows. None without CRDs (standalone mode).
fn supported_version(found: Option<&str>, generation: i64) -> Option<Condition> {
    let found = found?;
    let supported = SUPPORTED_BUNDLE_VERSIONS
        .iter()
        .any(|minor| found.strip_prefix(minor).is_some_and(|rest| rest.is_empty() || rest.starts_with('.')));
    let wanted = SUPPORTED_BUNDLE_VERSIONS.iter().map(|v| format!("{v}.x")).collect::<Vec<_>>().join(", ");
    Some(if supported {
        Condition::new(
            reason::SUPPORTED_VERSION,
            true,
            reason::SUPPORTED_VERSION,
            format!("Gateway API CRDs {found} found; Sluice supports {wanted}"),
            generation,
        )
    } else {
        let found =
            if found.is_empty() { "without a bundle-version annotation".to_string() } else { found.to_string() };
        Condition::new(
            reason::SUPPORTED_VERSION,
            false,
            reason::UNSUPPORTED_VERSION,
            format!("Gateway API CRDs {found} found; Sluice supports {wanted} (best effort for others)"),
            generation,
        )
    })
}

fn class_proxy_config(class: &GatewayClass, index: &Index<'_>) -> Result<ProxyConfigSpec, String> {
    let Some(parameters) = &class.spec.parameters_ref else {
        return Ok(ProxyConfigSpec::default());
    };
    if parameters.group != GROUP || parameters.kind != "ProxyConfig" {
        return Err(format!(
            "parametersRef must point to a ProxyConfig.{GROUP}, not {}.{}",
            parameters.kind, parameters.group
        ));
    }
    let Some(namespace) = parameters.namespace.as_deref().filter(|ns| !ns.is_empty()) else {
        return Err("parametersRef to a ProxyConfig needs a namespace".into());
    };
    let key = ObjectKey::new(namespace, parameters.name.clone());
    match index.proxy_configs.get(&key) {
        Some(config) => Ok(config.spec.clone()),
        None => Err(format!("ProxyConfig {key} not found")),
    }
}

/// A Gateway's ProxyConfig overrides its class's field by field.
pub(crate) fn merge_proxy_config(class: &ProxyConfigSpec, gateway: Option<&ProxyConfigSpec>) -> ProxyConfigSpec {
    let Some(gateway) = gateway else { return class.clone() };
    let mut labels = class.labels.clone();
    labels.extend(gateway.labels.clone());
    let mut annotations = class.annotations.clone();
    annotations.extend(gateway.annotations.clone());
    ProxyConfigSpec {
        replicas: gateway.replicas.or(class.replicas),
        resources: gateway.resources.clone().or_else(|| class.resources.clone()),
        service_type: gateway.service_type.or(class.service_type),
        external_traffic_policy: gateway.external_traffic_policy.or(class.external_traffic_policy),
        labels,
        annotations,
        image: gateway.image.clone().or_else(|| class.image.clone()),
        log_level: gateway.log_level.clone().or_else(|| class.log_level.clone()),
        trusted_hops: gateway.trusted_hops.or(class.trusted_hops),
    }
}

#[cfg(test)]
mod tests {
    use super::supported_version;

    #[test]
    fn supported_versions() {
        assert_eq!(supported_version(None, 1), None);
        for (found, status, reason) in [
            ("v1.7.0", true, "SupportedVersion"),
            ("v1.7.12", true, "SupportedVersion"),
            ("v1.6.3", true, "SupportedVersion"),
            ("v1.5.1", false, "UnsupportedVersion"),
            ("v1.70.0", false, "UnsupportedVersion"),
            ("", false, "UnsupportedVersion"),
        ] {
            let condition = supported_version(Some(found), 3).unwrap();
            assert_eq!(condition.status == crate::ConditionStatus::True, status, "{found}");
            assert_eq!(condition.reason, reason, "{found}");
            assert_eq!(condition.observed_generation, 3);
            assert!(condition.message.contains("v1.6.x, v1.7.x"), "{}", condition.message);
        }
    }
}
