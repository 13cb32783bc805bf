//! From a container spec to a process: which binary, which arguments, which
//! environment (kubelet's rules for `$(VAR)` expansion and downward-API
//! fieldRefs).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;

use crate::Agent;

/// `registry.example/path/echo-basic:v1@sha256:…` → `echo-basic`.
pub fn image_name(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split(':').next().unwrap_or(last)
}

/// The program and arguments for a container. The image names a local
/// binary (the `--image` map). A `command` replaces it only when its first
/// element is itself a mapped image name or an existing absolute path;
/// otherwise the command's remaining elements are passed to the image's
/// binary, which is how an image's entrypoint wrapper behaves.
pub fn program(
    images: &std::collections::HashMap<String, PathBuf>,
    container: &Container,
    env: &BTreeMap<String, String>,
) -> Result<(PathBuf, Vec<String>)> {
    let image = container.image.as_deref().unwrap_or_default();
    let mapped = images.get(image_name(image));
    let command: Vec<String> = container.command.iter().flatten().map(|c| expand(c, env)).collect();
    let args = container.args.iter().flatten().map(|a| expand(a, env));
    if let Some(first) = command.first() {
        let base = Path::new(first).file_name().and_then(|b| b.to_str()).unwrap_or(first);
        let program = if let Some(p) = images.get(base) {
            p.clone()
        } else if first.starts_with('/') && Path::new(first).is_file() {
            PathBuf::from(first)
        } else if let Some(p) = mapped {
            p.clone()
        } else {
            bail!("image {image:?} is not in the node's image map and command {first:?} is not a host binary");
        };
        return Ok((program, command[1..].iter().cloned().chain(args).collect()));
    }
    match mapped {
        Some(p) => Ok((p.clone(), args.collect())),
        None => bail!("image {image:?} ({}) is not in the node's image map (--image NAME=PATH)", image_name(image)),
    }
}

/// Kubelet's `$(VAR)` expansion: defined variables are replaced, `$$` is a
/// literal `$`, anything else stays as written.
pub fn expand(input: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(value) = env.get(&inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A downward-API field of the pod.
pub fn field(pod: &Pod, path: &str, pod_ip: Ipv4Addr, host_ip: Ipv4Addr) -> Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|k| k.strip_suffix("']"))
            .map(|k| map.and_then(|m| m.get(k)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", meta.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => {
            spec.and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into())
        }
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        other => bail!("unsupported fieldRef {other:?}"),
    })
}

/// The container's environment, in kubelet's order: the `kubernetes`
/// Service variables, `envFrom`, then `env` (later entries see earlier ones
/// in `$(VAR)`).
pub async fn environment(
    agent: &Agent,
    pod: &Pod,
    container: &Container,
    pod_ip: Ipv4Addr,
) -> Result<BTreeMap<String, String>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string());
    env.insert("HOSTNAME".into(), pod.metadata.name.clone().unwrap_or_default());
    let host = &agent.cli.kubernetes_service_host;
    let port = agent.cli.kubernetes_service_port.to_string();
    env.insert("KUBERNETES_SERVICE_HOST".into(), host.clone());
    env.insert("KUBERNETES_SERVICE_PORT".into(), port.clone());
    env.insert("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.clone());
    env.insert("KUBERNETES_PORT".into(), format!("tcp://{host}:{port}"));
    let secrets: Api<Secret> = Api::namespaced(agent.client.clone(), ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(agent.client.clone(), ns);
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(r) = &source.config_map_ref {
            match config_maps.get_opt(&r.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        env.insert(format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => bail!("configmap {ns}/{} not found", r.name),
            }
        }
        if let Some(r) = &source.secret_ref {
            match secrets.get_opt(&r.name).await? {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        env.insert(format!("{prefix}{k}"), String::from_utf8_lossy(&v.0).into());
                    }
                }
                None if r.optional == Some(true) => {}
                None => bail!("secret {ns}/{} not found", r.name),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            expand(v, &env)
        } else if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                field(pod, &f.field_path, pod_ip, agent.cli.node_ip)?
            } else if let Some(k) = &from.secret_key_ref {
                let secret = secrets.get_opt(&k.name).await?;
                match secret.and_then(|s| s.data).and_then(|d| d.get(&k.key).cloned()) {
                    Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                    None if k.optional == Some(true) => continue,
                    None => bail!("secret key {ns}/{}[{}] not found", k.name, k.key),
                }
            } else if let Some(k) = &from.config_map_key_ref {
                let cm = config_maps.get_opt(&k.name).await?;
                match cm.and_then(|c| c.data).and_then(|d| d.get(&k.key).cloned()) {
                    Some(v) => v,
                    None if k.optional == Some(true) => continue,
                    None => bail!("configmap key {ns}/{}[{}] not found", k.name, k.key),
                }
            } else if let Some(r) = &from.resource_field_ref {
                resource_field(container, &r.resource)
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env)
}

/// `resourceFieldRef`: limits or requests as whole units (cores rounded up,
/// bytes), with kubelet's fallback to node allocatable when unset.
fn resource_field(container: &Container, resource: &str) -> String {
    let (kind, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let res = container.resources.as_ref();
    let map = match kind {
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => res.and_then(|r| r.limits.as_ref()),
    };
    let quantity = map.and_then(|m| m.get(name)).map(|q| q.0.clone());
    match (name, quantity) {
        ("cpu", Some(q)) => match q.strip_suffix('m').map(str::parse::<u64>) {
            Some(Ok(milli)) => milli.div_ceil(1000).max(1).to_string(),
            _ => q,
        },
        (_, Some(q)) => q,
        ("cpu", None) => "64".into(),
        (_, None) => (256u64 << 30).to_string(),
    }
}

/// The effective working directory, created if needed.
pub fn working_dir(container: &Container, fallback: &Path) -> Result<PathBuf> {
    match container.working_dir.as_deref() {
        Some(dir) if !dir.is_empty() => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating workingDir {dir}"))?;
            Ok(PathBuf::from(dir))
        }
        _ => Ok(fallback.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn image_names_drop_registry_tag_and_digest() {
        assert_eq!(image_name("gcr.io/k8s-staging-gateway-api/echo-basic:v20260204-monthly"), "echo-basic");
        assert_eq!(image_name("localhost:5000/sluice@sha256:abc"), "sluice");
        assert_eq!(image_name("busybox"), "busybox");
    }

    #[test]
    fn expansion_follows_kubelet() {
        let env: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into_iter().collect();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
        assert_eq!(expand("$(A", &env), "$(A");
    }

    #[test]
    fn command_and_image_resolution() {
        let images: HashMap<String, PathBuf> = [
            ("echo-basic".to_string(), PathBuf::from("/bin/echo-basic")),
            ("sluice".to_string(), PathBuf::from("/bin/sluice")),
        ]
        .into_iter()
        .collect();
        let env = BTreeMap::new();
        let mut c = Container {
            image: Some("gcr.io/x/echo-basic:v1".into()),
            args: Some(vec!["-v".into()]),
            ..Default::default()
        };
        let (p, a) = program(&images, &c, &env).unwrap();
        assert_eq!((p, a), (PathBuf::from("/bin/echo-basic"), vec!["-v".to_string()]));
        c.image = Some("ghcr.io/sluice/sluice:1".into());
        c.command = Some(vec!["/usr/bin/sluice".into(), "dataplane".into()]);
        let (p, a) = program(&images, &c, &env).unwrap();
        assert_eq!(p, PathBuf::from("/bin/sluice"));
        assert_eq!(a, vec!["dataplane".to_string(), "-v".to_string()]);
        c.image = Some("nginx".into());
        c.command = None;
        assert!(program(&images, &c, &env).is_err());
    }
}
