//! GatewayClasses: which are ours, whether they are accepted, and their ProxyConfig.

use std::collections::BTreeMap;

use sluice_crds::{GROUP, ProxyConfigSpec};
use sluice_gateway_api::gatewayclasses::GatewayClass;

use crate::World;
use crate::features::supported_features;
use crate::index::{Index, ObjectKey};
use crate::problems::Problem;
use crate::status::{CONTROLLER_NAME, Condition, GatewayClassStatus, reason};

/// One of our GatewayClasses after validation.
pub(crate) struct ClassInfo {
    /// Accepted classes program their Gateways; the problem says why not otherwise.
    pub rejected: Option<ClassProblem>,
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
        let (condition, info) = match class_proxy_config(class, index) {
            Ok(proxy_config) => (
                Condition::new(reason::ACCEPTED, true, reason::ACCEPTED, "Accepted by Sluice", generation),
                ClassInfo { rejected: None, proxy_config },
            ),
            Err(problem) => (
                Condition::new(reason::ACCEPTED, false, problem.reason(), problem.message(), generation),
                ClassInfo { rejected: Some(problem), proxy_config: ProxyConfigSpec::default() },
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

/// Why one of our GatewayClasses is not accepted (its parametersRef).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClassProblem {
    ParametersRefKind {
        kind: String,
        group: String,
    },
    ParametersRefWithoutNamespace,
    ProxyConfigNotFound {
        config: ObjectKey,
    },
    /// An `allowedAddresses` entry that is not a CIDR.
    AllowedAddress {
        config: ObjectKey,
        entry: String,
    },
    Autoscaling {
        config: ObjectKey,
        problem: AutoscalingProblem,
    },
}

impl Problem for ClassProblem {
    fn reason(&self) -> &'static str {
        reason::INVALID_PARAMETERS
    }

    fn message(&self) -> String {
        match self {
            ClassProblem::ParametersRefKind { kind, group } => {
                format!("parametersRef must point to a ProxyConfig.{GROUP}, not {kind}.{group}")
            }
            ClassProblem::ParametersRefWithoutNamespace => "parametersRef to a ProxyConfig needs a namespace".into(),
            ClassProblem::ProxyConfigNotFound { config } => format!("ProxyConfig {config} not found"),
            ClassProblem::AllowedAddress { config, entry } => {
                format!("ProxyConfig {config}: allowedAddresses entry {entry:?} is not a CIDR such as 203.0.113.0/24")
            }
            ClassProblem::Autoscaling { config, problem } => format!("ProxyConfig {config}: {}", problem.message()),
        }
    }
}

/// An `autoscaling` setting that cannot be used: minReplicas above maxReplicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AutoscalingProblem {
    min: i32,
    max: i32,
}

impl AutoscalingProblem {
    pub(crate) fn message(&self) -> String {
        format!("autoscaling.minReplicas ({}) is above autoscaling.maxReplicas ({})", self.min, self.max)
    }
}

/// Why a Gateway's own ProxyConfig may not be used under its class's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OverrideProblem {
    /// It sets allowedAddresses or gatewayOverrides.
    PlatformFields,
    Image,
    Annotations,
    Autoscaling(AutoscalingProblem),
}

impl OverrideProblem {
    pub(crate) fn message(&self) -> String {
        match self {
            OverrideProblem::PlatformFields => {
                "allowedAddresses and gatewayOverrides are set on the GatewayClass's ProxyConfig only".into()
            }
            OverrideProblem::Image => {
                "it sets image, which the GatewayClass's ProxyConfig does not allow (gatewayOverrides.image)".into()
            }
            OverrideProblem::Annotations => "it sets annotations, which the GatewayClass's ProxyConfig does not allow \
                                             (gatewayOverrides.annotations)"
                .into(),
            OverrideProblem::Autoscaling(problem) => problem.message(),
        }
    }
}

fn class_proxy_config(class: &GatewayClass, index: &Index<'_>) -> Result<ProxyConfigSpec, ClassProblem> {
    let Some(parameters) = &class.spec.parameters_ref else {
        return Ok(ProxyConfigSpec::default());
    };
    if parameters.group != GROUP || parameters.kind != "ProxyConfig" {
        return Err(ClassProblem::ParametersRefKind { kind: parameters.kind.clone(), group: parameters.group.clone() });
    }
    let Some(namespace) = parameters.namespace.as_deref().filter(|ns| !ns.is_empty()) else {
        return Err(ClassProblem::ParametersRefWithoutNamespace);
    };
    let key = ObjectKey::new(namespace, parameters.name.clone());
    let Some(config) = index.proxy_configs.get(&key) else {
        return Err(ClassProblem::ProxyConfigNotFound { config: key });
    };
    if let Some(bad) = config.spec.allowed_addresses.iter().find(|cidr| Cidr::parse(cidr).is_none()) {
        return Err(ClassProblem::AllowedAddress { config: key, entry: bad.clone() });
    }
    if let Some(problem) = config.spec.autoscaling.as_ref().and_then(autoscaling_problem) {
        return Err(ClassProblem::Autoscaling { config: key, problem });
    }
    Ok(config.spec.clone())
}

/// Why an `autoscaling` setting cannot be used, if so.
pub(crate) fn autoscaling_problem(autoscaling: &sluice_crds::Autoscaling) -> Option<AutoscalingProblem> {
    let min = autoscaling.min_replicas.unwrap_or(1);
    (min > autoscaling.max_replicas).then_some(AutoscalingProblem { min, max: autoscaling.max_replicas })
}

/// An IP range: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cidr {
    network: std::net::IpAddr,
    prefix: u32,
}

impl Cidr {
    /// `203.0.113.0/24`, `2001:db8::/32`, or a single address (`198.51.100.7`).
    pub(crate) fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: std::net::IpAddr = address.parse().ok()?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) if prefix.bytes().all(|b| b.is_ascii_digit()) => prefix.parse().ok()?,
            Some(_) => return None,
            None => bits,
        };
        (prefix <= bits).then_some(Cidr { network, prefix })
    }

    pub(crate) fn contains(&self, address: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.network, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix).unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix).unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
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
        autoscaling: gateway.autoscaling.clone().or_else(|| class.autoscaling.clone()),
        // Policies of the platform team: the class's only.
        allowed_addresses: class.allowed_addresses.clone(),
        gateway_overrides: class.gateway_overrides,
    }
}

/// Why a Gateway's own ProxyConfig may not be used under its class's, if so.
pub(crate) fn override_problem(class: &ProxyConfigSpec, gateway: &ProxyConfigSpec) -> Option<OverrideProblem> {
    let allowed = class.gateway_overrides.unwrap_or_default();
    if !gateway.allowed_addresses.is_empty() || gateway.gateway_overrides.is_some() {
        return Some(OverrideProblem::PlatformFields);
    }
    if gateway.image.is_some() && !allowed.image {
        return Some(OverrideProblem::Image);
    }
    if !gateway.annotations.is_empty() && !allowed.annotations {
        return Some(OverrideProblem::Annotations);
    }
    gateway.autoscaling.as_ref().and_then(autoscaling_problem).map(OverrideProblem::Autoscaling)
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
