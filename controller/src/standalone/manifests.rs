//! The file provider: Gateway API manifests read from a directory, re-read incrementally.
//!
//! Every `*.yaml`/`*.yml` file below the directory (hidden entries skipped) is parsed on
//! its own and cached by content, so a change to one file re-parses only that file; the
//! World is the concatenation in path order, later definitions replacing earlier ones.
//! How often each object is defined is counted as files change, so that the merge
//! looks for replaced definitions only while some object is defined twice.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sluice_translate::{Skipped, World};

struct Parsed {
    /// Size, modification time and inode when the file was read.
    stamp: Option<FileStamp>,
    hash: u64,
    world: World,
    skipped: Vec<Skipped>,
}

/// The cached manifests of one directory.
pub struct Manifests {
    root: PathBuf,
    files: BTreeMap<PathBuf, Parsed>,
    /// How many files define each object.
    definitions: HashMap<Identity, u32>,
    /// How many objects more than one file defines.
    defined_twice: usize,
}

/// What a later definition replaces: the kind (World's field) and the namespaced name.
type Identity = (&'static str, Option<String>, Option<String>);

/// Calls `each` with the identity of every object of `world`.
fn identities(world: &World, mut each: impl FnMut(Identity)) {
    macro_rules! of {
        ($($field:ident),*) => {
            $(for object in &world.$field {
                let meta = kube::Resource::meta(object.as_ref());
                each((stringify!($field), meta.namespace.clone(), meta.name.clone()));
            })*
        };
    }
    of!(
        gateway_classes,
        gateways,
        listener_sets,
        http_routes,
        grpc_routes,
        tcp_routes,
        udp_routes,
        tls_routes,
        reference_grants,
        backend_tls_policies,
        services,
        endpoint_slices,
        secrets,
        config_maps,
        namespaces,
        proxy_configs
    );
}

/// One problem reading the directory, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub message: String,
}

impl Manifests {
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_path_buf(), files: BTreeMap::new(), definitions: HashMap::new(), defined_twice: 0 }
    }

    /// Counts the definitions of a file that is read.
    fn count(&mut self, world: &World) {
        identities(world, |identity| {
            let count = self.definitions.entry(identity).or_default();
            *count += 1;
            if *count == 2 {
                self.defined_twice += 1;
            }
        });
    }

    /// Uncounts the definitions of a file that is gone or replaced.
    fn uncount(&mut self, world: &World) {
        identities(world, |identity| {
            if let Some(count) = self.definitions.get_mut(&identity) {
                *count -= 1;
                if *count == 1 {
                    self.defined_twice -= 1;
                } else if *count == 0 {
                    self.definitions.remove(&identity);
                }
            }
        });
    }

    fn remove(&mut self, path: &Path) -> bool {
        let Some(parsed) = self.files.remove(path) else { return false };
        self.uncount(&parsed.world);
        true
    }

    /// Re-reads the directory; returns whether anything changed.
    pub fn refresh(&mut self) -> std::io::Result<bool> {
        let mut paths = Vec::new();
        collect(&self.root, &mut paths)?;
        let mut changed = false;
        let listed: std::collections::BTreeSet<&PathBuf> = paths.iter().collect();
        let gone: Vec<PathBuf> = self.files.keys().filter(|path| !listed.contains(path)).cloned().collect();
        for path in gone {
            changed |= self.remove(&path);
        }
        for path in paths {
            // An unchanged stamp means unchanged content, unless the file was modified so
            // recently that a second write within the same timestamp tick could hide.
            let stamp = FileStamp::of(&path);
            if let (Some(stamp), Some(parsed)) = (&stamp, self.files.get(&path))
                && parsed.stamp.as_ref() == Some(stamp)
                && stamp.settled()
            {
                continue;
            }
            // A file may vanish between listing and reading: it is simply gone.
            let Ok(bytes) = std::fs::read(&path) else {
                changed |= self.remove(&path);
                continue;
            };
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut hasher);
            let hash = hasher.finish();
            if let Some(parsed) = self.files.get_mut(&path)
                && parsed.hash == hash
            {
                parsed.stamp = stamp;
                continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            let (world, skipped) = World::from_manifests(&text);
            self.remove(&path);
            self.count(&world);
            self.files.insert(path, Parsed { stamp, hash, world, skipped });
            changed = true;
        }
        Ok(changed)
    }

    /// The World of all files, and every document that was skipped, with its file.
    pub fn world(&self) -> (World, Vec<Problem>) {
        let mut world = World::default();
        let mut problems = Vec::new();
        for (path, parsed) in &self.files {
            world.extend(&parsed.world);
            for skip in &parsed.skipped {
                let at = skip.document.map(|d| format!("document {d}: ")).unwrap_or_default();
                let object = if skip.object.is_empty() { String::new() } else { format!("{}: ", skip.object) };
                problems.push(Problem { file: path.clone(), message: format!("{at}{object}{}", skip.reason) });
            }
        }
        let mut duplicates = Vec::new();
        // Looking for them costs a hash of every object's name: only when there are some.
        if self.defined_twice > 0 {
            world.keep_last_definitions(&mut duplicates);
        }
        for skip in duplicates {
            problems.push(Problem { file: self.root.clone(), message: format!("{}: {}", skip.object, skip.reason) });
        }
        (world, problems)
    }
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: std::time::SystemTime,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path).ok()?;
        Some(Self { len: metadata.len(), modified: metadata.modified().ok()?, inode: metadata.ino() })
    }

    /// Whether the file was last modified long enough ago (file timestamps are coarse).
    fn settled(&self) -> bool {
        self.modified.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(1))
    }
}

fn collect(dir: &Path, into: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for entry in entries {
        let hidden = entry.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if entry.is_dir() {
            collect(&entry, into)?;
        } else if entry.extension().is_some_and(|ext| ext == "yaml" || ext == "yml") {
            into.push(entry);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_reparsed_only_when_they_change_and_later_files_win() {
        let dir = std::env::temp_dir().join(format!("sluice-manifests-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let gateway = |port: u16| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\n\
                 spec:\n  gatewayClassName: c\n  listeners: [{{name: l, port: {port}, protocol: HTTP}}]\n"
            )
        };
        std::fs::write(dir.join("a.yaml"), gateway(80)).unwrap();
        std::fs::write(dir.join("sub/b.yml"), gateway(81)).unwrap();
        std::fs::write(dir.join("notes.txt"), "not yaml").unwrap();
        std::fs::write(dir.join("bad.yaml"), "kind: [").unwrap();
        let mut manifests = Manifests::new(&dir);
        assert!(manifests.refresh().unwrap());
        assert!(!manifests.refresh().unwrap());
        let (world, problems) = manifests.world();
        assert_eq!(world.gateways.len(), 1);
        assert_eq!(world.gateways[0].spec.listeners[0].port, 81);
        assert!(problems.iter().any(|p| p.file.ends_with("bad.yaml")), "{problems:?}");
        assert!(problems.iter().any(|p| p.message.contains("defined again")), "{problems:?}");
        std::fs::remove_file(dir.join("sub/b.yml")).unwrap();
        assert!(manifests.refresh().unwrap());
        let (world, problems) = manifests.world();
        assert_eq!(world.gateways[0].spec.listeners[0].port, 80);
        assert!(!problems.iter().any(|p| p.message.contains("defined again")), "{problems:?}");
        std::fs::write(dir.join("c.yaml"), gateway(82)).unwrap();
        assert!(manifests.refresh().unwrap());
        let (world, problems) = manifests.world();
        assert_eq!((world.gateways.len(), world.gateways[0].spec.listeners[0].port), (1, 82));
        assert!(problems.iter().any(|p| p.message.contains("defined again")), "{problems:?}");
        std::fs::remove_file(dir.join("c.yaml")).unwrap();
        assert!(manifests.refresh().unwrap());
        assert_eq!(manifests.defined_twice, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
