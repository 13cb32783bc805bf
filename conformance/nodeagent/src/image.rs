//! OCI images: an image archive (`docker save`/`images/build` format: an OCI image
//! layout, optionally with a docker `manifest.json`, in one tar) unpacked once into a
//! root filesystem that containers of that image share read-only (each gets its own
//! overlay on top), and the image config's entrypoint, cmd, env, user and working dir.
//!
//! ```text
//!  archive.tar ──tar -x──► index.json → manifest → config + layers (tar+gzip)
//!                                                      │ tar -xz, in order
//!                                                      ▼
//!                               <state>/images/<manifest digest>/rootfs
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::process::Command;

/// An unpacked image.
#[derive(Debug)]
pub struct Image {
    pub rootfs: PathBuf,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` entries of the image config.
    pub env: Vec<(String, String)>,
    /// `uid`, `uid:gid` (numeric only; names would need the image's /etc/passwd).
    pub user: Option<String>,
    pub working_dir: Option<String>,
}

/// Unpacked images by archive path, so that each archive is unpacked once per agent.
#[derive(Default)]
pub struct Cache {
    unpacked: tokio::sync::Mutex<HashMap<PathBuf, Arc<Image>>>,
}

impl Cache {
    pub async fn get(&self, archive: &Path, state_dir: &Path) -> Result<Arc<Image>> {
        let mut unpacked = self.unpacked.lock().await;
        if let Some(image) = unpacked.get(archive) {
            return Ok(image.clone());
        }
        let image = Arc::new(unpack(archive, &state_dir.join("images")).await?);
        unpacked.insert(archive.to_path_buf(), image.clone());
        Ok(image)
    }
}

async fn tar(args: &[&str]) -> Result<()> {
    let out = Command::new("tar").args(args).output().await.context("running tar")?;
    if !out.status.success() {
        bail!("tar {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The path of a blob in an OCI layout, checked to be a plain sha256 digest.
fn blob(layout: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest.strip_prefix("sha256:").with_context(|| format!("digest {digest:?} is not sha256"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("digest {digest:?} is malformed");
    }
    Ok(layout.join("blobs/sha256").join(hex))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
}

/// Unpacks `archive` under `images` (once per manifest digest; a finished unpack is kept
/// across agent runs) and reads its config.
pub async fn unpack(archive: &Path, images: &Path) -> Result<Image> {
    std::fs::create_dir_all(images).with_context(|| format!("creating {}", images.display()))?;
    let layout = images.join(format!(".layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&layout);
    std::fs::create_dir_all(&layout)?;
    let archive_text = archive.to_string_lossy().into_owned();
    let layout_text = layout.to_string_lossy().into_owned();
    tar(&["-xf", &archive_text, "-C", &layout_text]).await.with_context(|| format!("image {}", archive.display()))?;
    let result = unpack_layout(&layout, images).await.with_context(|| format!("image {}", archive.display()));
    let _ = std::fs::remove_dir_all(&layout);
    result
}

async fn unpack_layout(layout: &Path, images: &Path) -> Result<Image> {
    let index = read_json(&layout.join("index.json"))?;
    let manifest_digest = index["manifests"][0]["digest"].as_str().context("index.json names no manifest")?;
    let manifest = read_json(&blob(layout, manifest_digest)?)?;
    let config_digest = manifest["config"]["digest"].as_str().context("the manifest names no config")?;
    let config = read_json(&blob(layout, config_digest)?)?;
    let dir = images.join(manifest_digest.trim_start_matches("sha256:"));
    let rootfs = dir.join("rootfs");
    if !dir.join("complete").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&rootfs)?;
        let rootfs_text = rootfs.to_string_lossy().into_owned();
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let digest = layer["digest"].as_str().context("a layer without digest")?;
            let media = layer["mediaType"].as_str().unwrap_or_default();
            let path = blob(layout, digest)?.to_string_lossy().into_owned();
            // Whiteouts (.wh.*) are not applied: images built by images/build have none.
            let unzip = if media.ends_with("gzip") { "-xzf" } else { "-xf" };
            tar(&[unzip, &path, "-C", &rootfs_text, "--numeric-owner", "--same-permissions", "--same-owner"]).await?;
        }
        // Mount points every container needs, whether the image has them or not.
        for mount_point in ["proc", "dev", "tmp", "etc", "sys"] {
            std::fs::create_dir_all(rootfs.join(mount_point))?;
        }
        std::fs::write(dir.join("complete"), manifest_digest)?;
    }
    let settings = &config["config"];
    let env = strings(&settings["Env"])
        .into_iter()
        .filter_map(|entry| entry.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    Ok(Image {
        rootfs,
        entrypoint: strings(&settings["Entrypoint"]),
        cmd: strings(&settings["Cmd"]),
        env,
        user: settings["User"].as_str().filter(|u| !u.is_empty()).map(str::to_string),
        working_dir: settings["WorkingDir"].as_str().filter(|w| !w.is_empty()).map(str::to_string),
    })
}

/// Kubernetes' rule: `command` replaces the entrypoint, `args` the cmd; with a command
/// and no args, the image's cmd is dropped.
pub fn command_line(image: &Image, command: &[String], args: Option<Vec<String>>) -> Result<Vec<String>> {
    let line: Vec<String> = if command.is_empty() {
        image.entrypoint.iter().cloned().chain(args.unwrap_or_else(|| image.cmd.clone())).collect()
    } else {
        command.iter().cloned().chain(args.unwrap_or_default()).collect()
    };
    if line.is_empty() {
        bail!("the image has no entrypoint or cmd and the container no command");
    }
    Ok(line)
}

/// The numeric `uid:gid` a container runs as: its securityContext, else the pod's, else
/// the image's user (gid defaults to the uid's when only a uid is known), else root.
pub fn user(image: &Image, run_as_user: Option<i64>, run_as_group: Option<i64>) -> Result<(u32, u32)> {
    let (image_uid, image_gid) = match image.user.as_deref() {
        Some(user) => {
            let (uid, gid) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
            let uid: u32 = uid.parse().with_context(|| format!("image user {user:?} is not numeric"))?;
            let gid: Option<u32> = gid.map(str::parse).transpose().with_context(|| format!("image user {user:?}"))?;
            (Some(uid), gid)
        }
        None => (None, None),
    };
    let id = |v: i64| u32::try_from(v).context("a user or group id out of range");
    let uid = match run_as_user {
        Some(u) => id(u)?,
        None => image_uid.unwrap_or(0),
    };
    let gid = match run_as_group {
        Some(g) => id(g)?,
        None => image_gid.or(image_uid.filter(|_| run_as_user.is_none())).unwrap_or(uid),
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(user: Option<&str>) -> Image {
        Image {
            rootfs: PathBuf::new(),
            entrypoint: vec!["/bin/app".into()],
            cmd: vec!["--serve".into()],
            env: Vec::new(),
            user: user.map(str::to_string),
            working_dir: None,
        }
    }

    #[test]
    fn command_and_args_follow_kubernetes() {
        let i = image(None);
        assert_eq!(command_line(&i, &[], None).unwrap(), ["/bin/app", "--serve"]);
        assert_eq!(command_line(&i, &[], Some(vec!["-v".into()])).unwrap(), ["/bin/app", "-v"]);
        assert_eq!(command_line(&i, &["/bin/other".into()], None).unwrap(), ["/bin/other"]);
        let empty = Image { entrypoint: Vec::new(), cmd: Vec::new(), ..image(None) };
        assert!(command_line(&empty, &[], None).is_err());
    }

    #[test]
    fn users_come_from_the_security_context_then_the_image() {
        assert_eq!(user(&image(Some("65532:65532")), None, None).unwrap(), (65532, 65532));
        assert_eq!(user(&image(Some("65532")), None, None).unwrap(), (65532, 65532));
        assert_eq!(user(&image(Some("65532:65532")), Some(1000), None).unwrap(), (1000, 65532));
        assert_eq!(user(&image(None), Some(1000), Some(2000)).unwrap(), (1000, 2000));
        assert_eq!(user(&image(None), None, None).unwrap(), (0, 0));
        assert!(user(&image(Some("nonroot")), None, None).is_err(), "names need /etc/passwd");
        assert!(blob(Path::new("/x"), "sha256:../../etc").is_err());
    }
}
