//! Pod volumes as host directories: emptyDir, secret, configMap, projected
//! (service-account token from the TokenRequest API, the cluster CA,
//! downward API), downwardAPI and hostPath. Files are written atomically
//! (temp file, rename) so a refresh never shows a half-written file, and
//! the directories are bind-mounted into the container's mount namespace.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume};
use kube::Api;
use kube::api::PostParams;

use crate::Agent;
use crate::spec::field;

/// Tokens are requested again when older than this.
const TOKEN_REFRESH: Duration = Duration::from_secs(600);

/// The volumes of one pod and when each token was last requested.
pub struct Volumes {
    root: PathBuf,
    tokens: BTreeMap<PathBuf, Instant>,
}

impl Volumes {
    pub fn new(pod_dir: &Path) -> Volumes {
        Volumes { root: pod_dir.join("volumes"), tokens: BTreeMap::new() }
    }

    /// The host path that backs a volume.
    pub fn source(&self, volume: &Volume) -> PathBuf {
        match &volume.host_path {
            Some(h) => PathBuf::from(&h.path),
            None => self.root.join(&volume.name),
        }
    }

    /// Writes (or refreshes) every volume of the pod.
    pub async fn materialize(&mut self, agent: &Agent, pod: &Pod, pod_ip: Ipv4Addr) -> Result<()> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        // As kubelet: files owned by root and, with an fsGroup, by that group, so that a
        // non-root container reads them only through the modes and the group it is given.
        let fs_group = pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref())
            .and_then(|c| c.fs_group)
            .and_then(|g| u32::try_from(g).ok());
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let dir = self.source(volume);
            let name = &volume.name;
            if volume.host_path.is_some() {
                continue;
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating volume dir {}", dir.display()))?;
            if volume.empty_dir.is_some() {
                // World-writable, as kubelet makes emptyDirs; setgid with an fsGroup.
                let mode = if fs_group.is_some() { 0o2777 } else { 0o777 };
                own(&dir, fs_group, mode).with_context(|| format!("volume {name}"))?;
                continue;
            }
            own(&dir, fs_group, 0o755).with_context(|| format!("volume {name}"))?;
            let mode = volume
                .secret
                .as_ref()
                .and_then(|v| v.default_mode)
                .or(volume.config_map.as_ref().and_then(|v| v.default_mode))
                .or(volume.projected.as_ref().and_then(|v| v.default_mode))
                .or(volume.downward_api.as_ref().and_then(|v| v.default_mode))
                .and_then(|m| u32::try_from(m).ok())
                .unwrap_or(0o644);
            let mut files: Vec<(String, Vec<u8>)> = Vec::new();
            if let Some(s) = &volume.secret {
                let secret_name = s.secret_name.as_deref().unwrap_or_default();
                files.extend(secret_files(agent, ns, secret_name, s.items.as_deref(), s.optional).await?);
            } else if let Some(c) = &volume.config_map {
                files.extend(config_map_files(agent, ns, &c.name, c.items.as_deref(), c.optional).await?);
            } else if let Some(d) = &volume.downward_api {
                files.extend(downward_files(pod, d.items.as_deref(), pod_ip, agent.cli.node_ip)?);
            } else if let Some(p) = &volume.projected {
                for source in p.sources.iter().flatten() {
                    if let Some(t) = &source.service_account_token {
                        let path = dir.join(&t.path);
                        let fresh = self.tokens.get(&path).is_some_and(|at| at.elapsed() < TOKEN_REFRESH);
                        if !fresh {
                            let token = request_token(agent, pod, t.audience.clone(), t.expiration_seconds).await?;
                            files.push((t.path.clone(), token.into_bytes()));
                            self.tokens.insert(path, Instant::now());
                        }
                    }
                    if let Some(c) = &source.config_map {
                        files.extend(config_map_files(agent, ns, &c.name, c.items.as_deref(), c.optional).await?);
                    }
                    if let Some(s) = &source.secret {
                        files.extend(secret_files(agent, ns, &s.name, s.items.as_deref(), s.optional).await?);
                    }
                    if let Some(d) = &source.downward_api {
                        files.extend(downward_files(pod, d.items.as_deref(), pod_ip, agent.cli.node_ip)?);
                    }
                }
            } else {
                bail!(
                    "volume {name}: only emptyDir, secret, configMap, projected, downwardAPI and hostPath volumes are supported"
                );
            }
            for (path, data) in files {
                write_atomic(&dir, &path, &data, fs_group, mode)
                    .with_context(|| format!("volume {name}: writing {path}"))?;
            }
        }
        Ok(())
    }
}

/// Refuses `..`, absolute paths and empty names, as the API server does.
fn safe_relative(path: &str) -> Result<&Path> {
    let p = Path::new(path);
    if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("invalid volume file path {path:?}");
    }
    Ok(p)
}

/// Owner root, group `group` (if any), permission bits `mode`.
fn own(path: &Path, group: Option<u32>, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(0), group).with_context(|| format!("chown {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn write_atomic(dir: &Path, path: &str, data: &[u8], group: Option<u32>, mode: u32) -> Result<()> {
    let target = dir.join(safe_relative(path)?);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::read(&target).is_ok_and(|old| old == data) {
        return own(&target, group, mode);
    }
    let file_name = target.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = target.with_file_name(format!(".{file_name}.tmp"));
    std::fs::write(&tmp, data)?;
    own(&tmp, group, mode)?;
    std::fs::rename(&tmp, &target)?;
    Ok(())
}

fn select(data: BTreeMap<String, Vec<u8>>, items: Option<&[KeyToPath]>, what: &str) -> Result<Vec<(String, Vec<u8>)>> {
    match items {
        None => Ok(data.into_iter().collect()),
        Some(items) => items
            .iter()
            .map(|item| match data.get(&item.key) {
                Some(v) => Ok((item.path.clone(), v.clone())),
                None => bail!("{what} has no key {:?}", item.key),
            })
            .collect(),
    }
}

/// The files of a Secret or ConfigMap (`data` is `None` when it does not exist).
fn keyed_files(
    kind: &str,
    ns: &str,
    name: &str,
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
) -> Result<Vec<(String, Vec<u8>)>> {
    match data {
        Some(data) => select(data, items, &format!("{kind} {ns}/{name}")),
        None if optional == Some(true) => Ok(Vec::new()),
        None => bail!("{kind} {ns}/{name} not found"),
    }
}

async fn secret_files(
    agent: &Agent,
    ns: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let api: Api<Secret> = Api::namespaced(agent.client.clone(), ns);
    let data = api.get_opt(name).await?.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .chain(s.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())))
            .collect()
    });
    keyed_files("secret", ns, name, data, items, optional)
}

async fn config_map_files(
    agent: &Agent,
    ns: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let api: Api<ConfigMap> = Api::namespaced(agent.client.clone(), ns);
    let data = api.get_opt(name).await?.map(|c| {
        c.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .chain(c.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)))
            .collect()
    });
    keyed_files("configmap", ns, name, data, items, optional)
}

fn downward_files(
    pod: &Pod,
    items: Option<&[DownwardAPIVolumeFile]>,
    pod_ip: Ipv4Addr,
    host_ip: Ipv4Addr,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for item in items.unwrap_or_default() {
        if let Some(f) = &item.field_ref {
            let value = match f.field_path.as_str() {
                // Whole maps are written as key="value" lines.
                "metadata.labels" | "metadata.annotations" => {
                    let map = if f.field_path == "metadata.labels" {
                        pod.metadata.labels.clone()
                    } else {
                        pod.metadata.annotations.clone()
                    };
                    map.unwrap_or_default().iter().map(|(k, v)| format!("{k}={v:?}\n")).collect()
                }
                path => field(pod, path, pod_ip, host_ip)?,
            };
            files.push((item.path.clone(), value.into_bytes()));
        }
    }
    Ok(files)
}

async fn request_token(agent: &Agent, pod: &Pod, audience: Option<String>, expiration: Option<i64>) -> Result<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(agent.client.clone(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().collect(),
            expiration_seconds: Some(expiration.unwrap_or(3607)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let response = api
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for serviceaccount {ns}/{sa}"))?;
    match response.status {
        Some(s) => Ok(s.token),
        None => bail!("token request for {ns}/{sa} returned no token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_paths_cannot_escape() {
        assert!(safe_relative("ca.crt").is_ok());
        assert!(safe_relative("a/b").is_ok());
        assert!(safe_relative("../x").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        assert!(safe_relative("").is_err());
    }

    #[test]
    fn items_select_and_rename_keys() {
        let data: BTreeMap<String, Vec<u8>> =
            [("tls.crt".to_string(), b"c".to_vec()), ("tls.key".to_string(), b"k".to_vec())].into_iter().collect();
        let items = [KeyToPath { key: "tls.crt".into(), path: "cert.pem".into(), mode: None }];
        let files = select(data.clone(), Some(&items), "s").unwrap();
        assert_eq!(files, vec![("cert.pem".to_string(), b"c".to_vec())]);
        assert_eq!(select(data.clone(), None, "s").unwrap().len(), 2);
        let missing = [KeyToPath { key: "nope".into(), path: "x".into(), mode: None }];
        assert!(select(data, Some(&missing), "s").is_err());
    }
}
