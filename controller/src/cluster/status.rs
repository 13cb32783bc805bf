//! The status writer: puts the translator's status on the objects with server-side
//! apply (field manager `sluice.dev/gateway-controller`). It writes only what changed
//! (compared with the watched objects, ignoring `lastTransitionTime`), keeps the
//! transition time of conditions whose status did not change, and on routes keeps every
//! other controller's `status.parents` entry as it is (that list is atomic, so the
//! apply carries the object's resourceVersion and a concurrent change means a retry).
//!
//! It runs as its own task ([`run_writer`]), fed the latest [`Desired`] statuses through
//! a watch channel (a burst of changes becomes one write per object), writing only while
//! this replica leads and retrying failed writes after a second.

use std::collections::BTreeMap;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use sluice_gateway_api::gatewayclasses::GatewayClass;
use sluice_gateway_api::gateways::Gateway;
use sluice_translate::{CONTROLLER_NAME, Condition, ObjectKey, PolicyStatus, RouteStatus, Status};

use super::watch::Stores;

/// Field manager of every write Sluice's controller makes.
pub const FIELD_MANAGER: &str = "sluice.dev/gateway-controller";

/// One entry of a Gateway's `status.addresses`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Address {
    /// `IPAddress` or `Hostname`.
    pub type_: &'static str,
    pub value: String,
}

/// What the status writer is to put on the objects: the overlaid status and each
/// Gateway's addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub status: Status,
    pub addresses: BTreeMap<ObjectKey, Vec<Address>>,
}

/// How long a failed write waits before the writer tries again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The leader-only status writer: writes the latest desired status whenever it changes
/// (and again after a second while writes fail), only while `leading` is true.
pub async fn run_writer(
    client: Client,
    stores: Stores,
    mut desired: tokio::sync::watch::Receiver<Option<std::sync::Arc<Desired>>>,
    leading: tokio::sync::watch::Receiver<bool>,
) {
    let mut retry = false;
    loop {
        if retry {
            // A new desired status ends the wait early; either way the latest is written.
            let _ = tokio::time::timeout(RETRY, desired.changed()).await;
        } else if desired.changed().await.is_err() {
            return;
        }
        let latest = desired.borrow_and_update().clone();
        let Some(latest) = latest.filter(|_| *leading.borrow()) else {
            retry = false;
            continue;
        };
        let written = write(&client, &stores, &latest.status, &latest.addresses).await;
        if written.writes > 0 {
            tracing::debug!("wrote {} statuses", written.writes);
        }
        retry = written.failed > 0;
    }
}

/// What one pass of the writer did.
#[derive(Debug, Default)]
pub struct Written {
    pub writes: usize,
    /// Writes that failed (conflicts, API errors): the caller tries again soon.
    pub failed: usize,
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The conditions as written: the old transition time is kept when the status did not
/// change.
fn conditions(desired: &[Condition], current: Option<&Value>, now: &str) -> Value {
    let current = current.and_then(Value::as_array);
    Value::Array(
        desired
            .iter()
            .map(|c| {
                let kept = current
                    .into_iter()
                    .flatten()
                    .find(|old| old.get("type").and_then(Value::as_str) == Some(c.type_.as_str()))
                    .filter(|old| old.get("status").and_then(Value::as_str) == Some(c.status.as_str()))
                    .and_then(|old| old.get("lastTransitionTime").cloned());
                json!({
                    "type": c.type_,
                    "status": c.status.as_str(),
                    "reason": c.reason,
                    "message": c.message,
                    "observedGeneration": c.observed_generation,
                    "lastTransitionTime": kept.unwrap_or_else(|| json!(now)),
                })
            })
            .collect(),
    )
}

/// True if `current` already has everything `desired` says: objects may carry more keys,
/// arrays must match element by element.
pub fn covers(current: &Value, desired: &Value) -> bool {
    match (current, desired) {
        (Value::Object(c), Value::Object(d)) => {
            d.iter().all(|(k, dv)| c.get(k).is_some_and(|cv| covers(cv, dv)) || (dv.is_null() && !c.contains_key(k)))
        }
        (Value::Array(c), Value::Array(d)) => c.len() == d.len() && c.iter().zip(d).all(|(cv, dv)| covers(cv, dv)),
        // Integers may come back as other number representations.
        (Value::Number(c), Value::Number(d)) => c.as_f64() == d.as_f64(),
        (c, d) => c == d,
    }
}

fn current_status<K: serde::Serialize>(object: Option<&K>) -> Value {
    object
        .and_then(|o| serde_json::to_value(o).ok())
        .and_then(|mut v| v.get_mut("status").map(Value::take))
        .unwrap_or(Value::Null)
}

/// The desired status of a GatewayClass.
fn gateway_class_status(status: &sluice_translate::GatewayClassStatus, current: &Value, now: &str) -> Value {
    json!({
        "conditions": conditions(&status.conditions, current.get("conditions"), now),
        "supportedFeatures": status.supported_features.iter().map(|f| json!({"name": f})).collect::<Vec<_>>(),
    })
}

/// The desired `status.listeners` of a Gateway or ListenerSet.
fn listeners_status(listeners: &[sluice_translate::ListenerStatus], current: &Value, now: &str) -> Vec<Value> {
    let current_listeners = current.get("listeners").and_then(Value::as_array);
    listeners
        .iter()
        .map(|l| {
            let old = current_listeners
                .into_iter()
                .flatten()
                .find(|c| c.get("name").and_then(Value::as_str) == Some(l.name.as_str()));
            json!({
                "name": l.name,
                "supportedKinds": l.supported_kinds.iter().map(|k| json!({"group": k.group, "kind": k.kind})).collect::<Vec<_>>(),
                "attachedRoutes": l.attached_routes,
                "conditions": conditions(&l.conditions, old.and_then(|o| o.get("conditions")), now),
            })
        })
        .collect()
}

/// The desired status of a Gateway.
fn gateway_status(
    status: &sluice_translate::GatewayStatus,
    addresses: &[Address],
    current: &Value,
    now: &str,
) -> Value {
    let mut value = json!({
        "conditions": conditions(&status.conditions, current.get("conditions"), now),
        "listeners": listeners_status(&status.listeners, current, now),
    });
    if let Some(attached) = status.attached_listener_sets {
        value["attachedListenerSets"] = json!(attached);
    }
    if !addresses.is_empty() {
        value["addresses"] =
            addresses.iter().map(|a| json!({"type": a.type_, "value": a.value})).collect::<Vec<_>>().into();
    }
    value
}

/// The desired status of a ListenerSet.
fn listener_set_status(status: &sluice_translate::ListenerSetStatus, current: &Value, now: &str) -> Value {
    json!({
        "conditions": conditions(&status.conditions, current.get("conditions"), now),
        "listeners": listeners_status(&status.listeners, current, now),
    })
}

/// The desired `status.parents` of a route: other controllers' entries as they are, then
/// ours.
fn route_status(status: &RouteStatus, current: &Value, now: &str) -> Value {
    let current_parents = current.get("parents").and_then(Value::as_array);
    let mut parents: Vec<Value> = current_parents
        .into_iter()
        .flatten()
        .filter(|p| p.get("controllerName").and_then(Value::as_str) != Some(CONTROLLER_NAME))
        .cloned()
        .collect();
    for parent in &status.parents {
        let parent_ref = serde_json::to_value(&parent.parent_ref).unwrap_or(Value::Null);
        let old = current_parents.into_iter().flatten().find(|p| {
            p.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
                && p.get("parentRef").is_some_and(|r| covers(r, &parent_ref))
        });
        parents.push(json!({
            "parentRef": parent_ref,
            "controllerName": parent.controller_name,
            "conditions": conditions(&parent.conditions, old.and_then(|o| o.get("conditions")), now),
        }));
    }
    json!({ "parents": parents })
}

/// The desired `status.ancestors` of a BackendTLSPolicy: other controllers' entries as
/// they are (the list is atomic: they must come back unchanged), then ours, one per
/// Gateway.
fn policy_status(status: &PolicyStatus, current: &Value, now: &str) -> Value {
    let current_ancestors = current.get("ancestors").and_then(Value::as_array);
    let mut ancestors: Vec<Value> = current_ancestors
        .into_iter()
        .flatten()
        .filter(|a| a.get("controllerName").and_then(Value::as_str) != Some(CONTROLLER_NAME))
        .cloned()
        .collect();
    for ancestor in &status.ancestors {
        let ancestor_ref = json!({
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "namespace": ancestor.gateway.namespace,
            "name": ancestor.gateway.name,
        });
        let old = current_ancestors.into_iter().flatten().find(|a| {
            a.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
                && a.get("ancestorRef").is_some_and(|r| covers(r, &ancestor_ref))
        });
        ancestors.push(json!({
            "ancestorRef": ancestor_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": conditions(&ancestor.conditions, old.and_then(|o| o.get("conditions")), now),
        }));
    }
    json!({ "ancestors": ancestors })
}

/// Applies `status` to the object unless it already has it.
async fn apply<K>(
    api: Api<K>,
    key: &ObjectKey,
    current: &Value,
    status: Value,
    resource_version: Option<String>,
    written: &mut Written,
) where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if covers(current, &status) {
        return;
    }
    let mut metadata = json!({"name": key.name});
    if !key.namespace.is_empty() {
        metadata["namespace"] = json!(key.namespace);
    }
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": metadata,
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch_status(&key.name, &params, &Patch::Apply(&body)).await {
        Ok(_) => written.writes += 1,
        // Deleted meanwhile: nothing to write.
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::debug!("{} {key}: status changed meanwhile; writing again", K::kind(&()));
            written.failed += 1;
        }
        Err(e) => {
            tracing::warn!("{} {key}: writing status: {e}", K::kind(&()));
            written.failed += 1;
        }
    }
}

/// Writes every status that differs from what the objects carry.
pub async fn write(
    client: &Client,
    stores: &Stores,
    status: &Status,
    addresses: &BTreeMap<ObjectKey, Vec<Address>>,
) -> Written {
    let now = now();
    let mut written = Written::default();
    for (name, desired) in &status.gateway_classes {
        let object = stores.gateway_classes.get(&kube::runtime::reflector::ObjectRef::new(name));
        let current = current_status(object.as_deref());
        let value = gateway_class_status(desired, &current, &now);
        apply::<GatewayClass>(
            Api::all(client.clone()),
            &ObjectKey::new("", name.clone()),
            &current,
            value,
            None,
            &mut written,
        )
        .await;
    }
    for (key, desired) in &status.gateways {
        let object = stores.gateways.get(&kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace));
        let current = current_status(object.as_deref());
        let value = gateway_status(desired, addresses.get(key).map(Vec::as_slice).unwrap_or_default(), &current, &now);
        apply::<Gateway>(Api::namespaced(client.clone(), &key.namespace), key, &current, value, None, &mut written)
            .await;
    }
    if let Some(store) = &stores.listener_sets {
        for (key, desired) in &status.listener_sets {
            let object = store.get(&kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace));
            let current = current_status(object.as_deref());
            let value = listener_set_status(desired, &current, &now);
            let api = Api::namespaced(client.clone(), &key.namespace);
            apply::<sluice_gateway_api::listenersets::ListenerSet>(api, key, &current, value, None, &mut written).await;
        }
    }
    for (key, desired) in &status.http_routes {
        let object =
            stores.http_routes.get(&kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace));
        let current = current_status(object.as_deref());
        let rv = object.as_ref().and_then(|o| o.metadata.resource_version.clone());
        let value = route_status(desired, &current, &now);
        apply::<sluice_gateway_api::httproutes::HttpRoute>(
            Api::namespaced(client.clone(), &key.namespace),
            key,
            &current,
            value,
            rv,
            &mut written,
        )
        .await;
    }
    if let Some(store) = &stores.backend_tls_policies {
        for (key, desired) in &status.backend_tls_policies {
            let object = store.get(&kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace));
            let current = current_status(object.as_deref());
            // Nothing of ours to write and nothing of ours to remove.
            let ours = |v: &Value| {
                v.get("ancestors").and_then(Value::as_array).is_some_and(|a| {
                    a.iter().any(|e| e.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME))
                })
            };
            if desired.ancestors.is_empty() && !ours(&current) {
                continue;
            }
            let rv = object.as_ref().and_then(|o| o.metadata.resource_version.clone());
            let value = policy_status(desired, &current, &now);
            let api = Api::namespaced(client.clone(), &key.namespace);
            apply::<sluice_gateway_api::backendtlspolicies::BackendTlsPolicy>(
                api,
                key,
                &current,
                value,
                rv,
                &mut written,
            )
            .await;
        }
    }
    if let Some(store) = &stores.grpc_routes {
        for (key, desired) in &status.grpc_routes {
            let object = store.get(&kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace));
            let current = current_status(object.as_deref());
            let rv = object.as_ref().and_then(|o| o.metadata.resource_version.clone());
            let value = route_status(desired, &current, &now);
            let api = Api::namespaced(client.clone(), &key.namespace);
            apply::<sluice_gateway_api::grpcroutes::GrpcRoute>(api, key, &current, value, rv, &mut written).await;
        }
    }
    if let Some(store) = &stores.tcp_routes {
        for (key, desired) in &status.tcp_routes {
            let object = store.get(&kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace));
            let current = current_status(object.as_deref());
            let rv = object.as_ref().and_then(|o| o.metadata.resource_version.clone());
            let value = route_status(desired, &current, &now);
            let api = Api::namespaced(client.clone(), &key.namespace);
            apply::<sluice_gateway_api::tcproutes::TcpRoute>(api, key, &current, value, rv, &mut written).await;
        }
    }
    if let Some(store) = &stores.udp_routes {
        for (key, desired) in &status.udp_routes {
            let object = store.get(&kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace));
            let current = current_status(object.as_deref());
            let rv = object.as_ref().and_then(|o| o.metadata.resource_version.clone());
            let value = route_status(desired, &current, &now);
            let api = Api::namespaced(client.clone(), &key.namespace);
            apply::<sluice_gateway_api::udproutes::UdpRoute>(api, key, &current, value, rv, &mut written).await;
        }
    }
    if let Some(store) = &stores.tls_routes {
        for (key, desired) in &status.tls_routes {
            let object = store.get(&kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace));
            let current = current_status(object.as_deref());
            let rv = object.as_ref().and_then(|o| o.metadata.resource_version.clone());
            let value = route_status(desired, &current, &now);
            let api = Api::namespaced(client.clone(), &key.namespace);
            apply::<sluice_gateway_api::tlsroutes::TlsRoute>(api, key, &current, value, rv, &mut written).await;
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_translate::ConditionStatus;

    fn condition(type_: &str, status: bool) -> Condition {
        Condition {
            type_: type_.into(),
            status: if status { ConditionStatus::True } else { ConditionStatus::False },
            reason: type_.into(),
            message: String::new(),
            observed_generation: 2,
        }
    }

    #[test]
    fn transition_time_is_kept_while_the_status_stays() {
        let current = json!([
            {"type": "Accepted", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Programmed", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ]);
        let out = conditions(&[condition("Accepted", true), condition("Programmed", false)], Some(&current), "NOW");
        assert_eq!(out[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(out[1]["lastTransitionTime"], "NOW");
    }

    #[test]
    fn an_unchanged_status_is_not_written_again() {
        let current = json!({
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                            "observedGeneration": 2, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "supportedFeatures": [{"name": "Gateway"}],
        });
        let desired = sluice_translate::GatewayClassStatus {
            conditions: vec![condition("Accepted", true)],
            supported_features: vec!["Gateway".into()],
        };
        assert!(covers(&current, &gateway_class_status(&desired, &current, "NOW")));
        let changed = sluice_translate::GatewayClassStatus {
            conditions: vec![condition("Accepted", true)],
            supported_features: vec!["Gateway".into(), "HTTPRoute".into()],
        };
        assert!(!covers(&current, &gateway_class_status(&changed, &current, "NOW")));
    }

    #[test]
    fn listener_sets_and_attached_listener_sets_are_written() {
        let listener = sluice_translate::ListenerStatus {
            name: "web".into(),
            supported_kinds: vec![sluice_translate::RouteGroupKind {
                group: "gateway.networking.k8s.io".into(),
                kind: "HTTPRoute".into(),
            }],
            attached_routes: 2,
            conditions: vec![condition("Accepted", true)],
        };
        let set = sluice_translate::ListenerSetStatus {
            gateway: ObjectKey::new("infra", "gw"),
            conditions: vec![condition("Accepted", true), condition("Programmed", true)],
            listeners: vec![listener.clone()],
        };
        let out = listener_set_status(&set, &Value::Null, "NOW");
        assert_eq!(out["conditions"].as_array().unwrap().len(), 2);
        assert_eq!(out["listeners"][0]["name"], "web");
        assert_eq!(out["listeners"][0]["attachedRoutes"], 2);
        assert_eq!(out["listeners"][0]["supportedKinds"][0]["kind"], "HTTPRoute");
        let mut gateway = sluice_translate::GatewayStatus {
            conditions: vec![condition("Accepted", true)],
            listeners: vec![listener],
            attached_listener_sets: Some(1),
        };
        assert_eq!(gateway_status(&gateway, &[], &Value::Null, "NOW")["attachedListenerSets"], 1);
        gateway.attached_listener_sets = None;
        assert!(gateway_status(&gateway, &[], &Value::Null, "NOW").get("attachedListenerSets").is_none());
    }

    #[test]
    fn other_controllers_route_parents_are_kept() {
        let current = json!({"parents": [
            {"parentRef": {"name": "theirs"}, "controllerName": "example.com/other", "conditions": []},
            {"parentRef": {"name": "stale"}, "controllerName": CONTROLLER_NAME, "conditions": []},
        ]});
        let desired = RouteStatus {
            parents: vec![sluice_translate::RouteParentStatus {
                parent_ref: sluice_translate::ParentRef {
                    group: None,
                    kind: None,
                    namespace: None,
                    name: "ours".into(),
                    section_name: None,
                    port: None,
                },
                controller_name: CONTROLLER_NAME.into(),
                conditions: vec![condition("Accepted", true)],
            }],
        };
        let out = route_status(&desired, &current, "NOW");
        let parents = out["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2);
        assert_eq!(parents[0]["controllerName"], "example.com/other");
        assert_eq!(parents[1]["parentRef"]["name"], "ours");
    }
}
