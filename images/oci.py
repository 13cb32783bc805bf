#!/usr/bin/env python3
"""Assemble Sluice's OCI image archives from Debian packages and release binaries.

Standard library only, no daemon. `images/build` downloads and verifies the pinned
packages and builds the binaries, then calls `build`; `images/check-reproducible` calls
`verify` on each archive.

    packages.lock ──► .debs (sha256-checked) ──► base rootfs ──► base layer (shared)
    release binary ──────────────────────────────────────────► binary layer
    both layers + config ──► manifest ──► OCI layout + manifest.json in one tar

Everything written is a function of the inputs: entries sorted, numeric owners, no
user or group names, one mtime (SOURCE_DATE_EPOCH), gzip without a name or time.
"""

import argparse
import datetime
import fnmatch
import gzip
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile

NONROOT = 65532
NOBODY = 65534
MULTIARCH = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
GZIP_LEVEL = 9

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

# What each package contributes to the base, as path patterns inside the .deb (fnmatch:
# `*` also matches `/`). Every package also keeps its usr/share/doc/NAME/copyright.
# Packages not listed keep everything outside documentation, manuals and locales.
KEEP = {
    # The loader and the shared libraries; no gconv modules (the binaries do no iconv),
    # no locales, no docs.
    "libc6": ["lib/*", "lib64/*", "etc/ld.so.conf.d/*"],
    "libgcc-s1": ["lib/*"],
    # Only for its copyright file: libgcc-s1's documentation directory links here.
    "gcc-12-base": [],
    # The individual certificates go into one bundle (see ca_bundle), not into the image.
    "ca-certificates": [],
    "netbase": ["etc/protocols", "etc/services", "etc/rpc", "etc/ethertypes"],
}
DROP_BY_DEFAULT = ["usr/share/doc/*", "usr/share/man/*", "usr/share/info/*",
                   "usr/share/locale/*", "usr/share/lintian/*", "usr/lib/*/gconv/*"]
CA_DIR = "usr/share/ca-certificates/"
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"


class Failure(Exception):
    """An error to report in one line, without a traceback."""


# ---------------------------------------------------------------------------------------
# The root file system model: relative path → entry.

class Entry:
    """One file system object of a layer."""

    def __init__(self, kind, mode, uid=0, gid=0, data=b"", link="", source=None):
        self.kind = kind  # "dir", "file", "symlink"
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.data = data
        self.link = link
        self.source = source  # a path to read the file's contents from, instead of data


def norm(path):
    """A tar member name as a relative path: no leading ./ or /, no trailing /."""
    while path.startswith("./"):
        path = path[2:]
    path = path.lstrip("/")
    return "" if path == "." else path.rstrip("/")


def add_parents(tree, path):
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        parent = "/".join(parts[:i])
        if parent not in tree:
            tree[parent] = Entry("dir", 0o755)
        elif tree[parent].kind != "dir":
            raise Failure(f"{parent} is both a directory and a {tree[parent].kind}")


def put(tree, path, entry):
    add_parents(tree, path)
    tree[path] = entry


# ---------------------------------------------------------------------------------------
# Debian packages: ar archive with control.tar.* and data.tar.*.

def ar_members(path):
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise Failure(f"{path}: not a Debian package (no ar header)")
        while True:
            header = f.read(60)
            if not header:
                return
            if len(header) != 60 or header[58:60] != b"`\n":
                raise Failure(f"{path}: truncated ar header")
            name = header[0:16].decode("ascii").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            data = f.read(size)
            if size % 2:
                f.read(1)
            yield name, data


def open_member_tar(deb, name, data):
    if name.endswith(".xz"):
        data = lzma.decompress(data)
    elif name.endswith(".gz"):
        data = gzip.decompress(data)
    elif name.endswith(".zst"):
        # No zstd in the standard library; dpkg-deb reads it.
        flag = "--ctrl-tarfile" if name.startswith("control") else "--fsys-tarfile"
        data = subprocess.run(["dpkg-deb", flag, deb], check=True, capture_output=True).stdout
    elif not name.endswith(".tar"):
        raise Failure(f"{deb}: unknown member compression {name}")
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:")


def read_deb(path):
    """The control paragraph and the data members (TarInfo, bytes) of one package."""
    control, data = None, None
    for name, blob in ar_members(path):
        if name.startswith("control.tar"):
            with open_member_tar(path, name, blob) as t:
                for m in t.getmembers():
                    if norm(m.name) == "control":
                        control = t.extractfile(m).read().decode("utf-8")
        elif name.startswith("data.tar"):
            with open_member_tar(path, name, blob) as t:
                data = [(m, t.extractfile(m).read() if m.isreg() else b"") for m in t.getmembers()]
    if control is None or data is None:
        raise Failure(f"{path}: no control or data member")
    return control, data


def control_field(control, field):
    for line in control.splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise Failure(f"control file has no {field} field")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_lock(path):
    """[(name, version, arch, sha256)] from packages.lock."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            if len(fields) != 4:
                raise Failure(f"{path}:{number}: want 'name version arch sha256', got {line!r}"
                              " (images/build --update-lock fills in a name alone)")
            rows.append(tuple(fields))
    return rows


def deb_file_name(name, version, arch):
    # apt-get download's name for a package file (an epoch's colon is written %3a).
    return f"{name}_{version.replace(':', '%3a')}_{arch}.deb"


def keep(package, path):
    if path == f"usr/share/doc/{package}/copyright":
        return True
    if package in KEEP:
        return any(fnmatch.fnmatchcase(path, p) for p in KEEP[package])
    return not any(fnmatch.fnmatchcase(path, p) for p in DROP_BY_DEFAULT)


def base_tree(lock, deb_dir):
    """The base root file system from the locked packages plus the generated files."""
    tree = {}
    certs = {}
    arch = None
    for name, version, pkg_arch, sha in lock:
        deb = os.path.join(deb_dir, deb_file_name(name, version, pkg_arch))
        if not os.path.isfile(deb):
            raise Failure(f"{deb} is missing (images/build downloads it)")
        got = sha256_file(deb)
        if got != sha:
            raise Failure(f"{deb}: sha256 {got}, packages.lock says {sha}")
        control, members = read_deb(deb)
        if control_field(control, "Package") != name or control_field(control, "Version") != version:
            raise Failure(f"{deb}: its control file names another package or version")
        if pkg_arch != "all":
            if arch not in (None, pkg_arch):
                raise Failure(f"packages.lock mixes architectures {arch} and {pkg_arch}")
            arch = pkg_arch
        dirs = {}
        contents = {norm(info.name): data for info, data in members if info.isreg()}
        for info, data in members:
            path = norm(info.name)
            if not path:
                continue
            if info.isdir():
                dirs[path] = info.mode
                continue
            if name == "ca-certificates" and path.startswith(CA_DIR) and path.endswith(".crt"):
                certs[path[len(CA_DIR):]] = data
            if not keep(name, path):
                continue
            if info.isreg():
                entry = Entry("file", info.mode, info.uid, info.gid, data)
            elif info.issym():
                entry = Entry("symlink", 0o777, info.uid, info.gid, link=info.linkname)
            elif info.islnk():
                # A copy, not a link: sorted entries could put a link before its target.
                target = contents.get(norm(info.linkname))
                if target is None:
                    raise Failure(f"{deb}: {path} links to {info.linkname}, which it lacks")
                entry = Entry("file", info.mode, info.uid, info.gid, target)
            else:
                raise Failure(f"{deb}: {path} is of a type the base does not take")
            if path in tree:
                raise Failure(f"{path} is in two packages")
            put(tree, path, entry)
        # Directories keep the mode their package gives them.
        for path, mode in dirs.items():
            if path in tree and tree[path].kind == "dir":
                tree[path].mode = mode
        status = control.rstrip("\n") + "\n"
        put(tree, f"var/lib/dpkg/status.d/{name}", Entry("file", 0o644, data=status.encode()))
    if arch is None:
        raise Failure("packages.lock has no architecture-specific package (libc6)")
    if certs:
        put(tree, CA_BUNDLE, Entry("file", 0o644, data=ca_bundle(certs)))
    for path, entry in generated_files().items():
        put(tree, path, entry)
    return tree, arch


def ca_bundle(certs):
    out = bytearray()
    for name in sorted(certs):
        pem = certs[name]
        out += pem if pem.endswith(b"\n") else pem + b"\n"
    return bytes(out)


def generated_files():
    text = lambda s: Entry("file", 0o644, data=s.encode())  # noqa: E731
    return {
        "etc/passwd": text(
            "root:x:0:0:root:/root:/sbin/nologin\n"
            f"nobody:x:{NOBODY}:{NOBODY}:nobody:/nonexistent:/sbin/nologin\n"
            f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"),
        "etc/group": text(f"root:x:0:\nnobody:x:{NOBODY}:\nnonroot:x:{NONROOT}:\n"),
        "etc/nsswitch.conf": text(
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"
            "protocols: files\nservices: files\nethers: files\nrpc: files\n"),
        # Scanners read the distribution from here and the packages from status.d.
        "etc/os-release": text(
            'PRETTY_NAME="Sluice base (Debian GNU/Linux 12 packages)"\nNAME="Debian GNU/Linux"\n'
            'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'
            'HOME_URL="https://www.debian.org/"\n'),
        "tmp": Entry("dir", 0o1777),
        "root": Entry("dir", 0o700),
        "home/nonroot": Entry("dir", 0o700, NONROOT, NONROOT),
    }


# ---------------------------------------------------------------------------------------
# ELF: which libraries a binary needs, so a missing package fails the build, not the pod.

def elf_needs(path):
    """(interpreter, [DT_NEEDED names]) of a 64-bit little-endian ELF file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise Failure(f"{path}: not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic, interp = [], None, None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:
            dynamic = (p_offset, p_filesz)
        elif p_type == 3:
            interp = data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
    if dynamic is None:
        return interp, []

    def offset(vaddr):
        for start, off, size in loads:
            if start <= vaddr < start + size:
                return off + vaddr - start
        raise Failure(f"{path}: address {vaddr:#x} outside the loaded segments")

    needed, strtab = [], None
    for i in range(0, dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, dynamic[0] + i)
        if tag == 0:
            break
        if tag == 1:
            needed.append(value)
        elif tag == 5:
            strtab = offset(value)
    if strtab is None:
        raise Failure(f"{path}: dynamic section without a string table")

    def string(at):
        return data[at:data.index(b"\0", at)].decode()

    return interp, [string(strtab + n) for n in needed]


def resolve(tree, path, depth=0):
    """The entry a path leads to, following symlinks inside the tree."""
    entry = tree.get(path)
    if entry is None or entry.kind != "symlink":
        return entry
    if depth > 16:
        raise Failure(f"symlink loop at {path}")
    target = entry.link
    target = norm(target) if target.startswith("/") else os.path.normpath(
        os.path.join(os.path.dirname(path), target))
    return resolve(tree, target, depth + 1)


def check_libraries(tree, arch, binary):
    interp, needed = elf_needs(binary)
    if interp is not None and resolve(tree, norm(interp)) is None:
        raise Failure(f"{binary} wants the loader {interp}, which the base lacks")
    triplet = MULTIARCH.get(arch, "")
    search = [f"lib/{triplet}", f"usr/lib/{triplet}", "lib", "usr/lib"]
    for lib in needed:
        if not any(resolve(tree, f"{d}/{lib}") for d in search):
            raise Failure(f"{binary} needs {lib}, which no package in images/packages.lock "
                          "provides: add its package to the lock (images/build --update-lock)")
    return needed


# ---------------------------------------------------------------------------------------
# Writing: layers, blobs, the archive.

class HashingWriter:
    """A write-only file that hashes and counts what passes through to `out`."""

    def __init__(self, out):
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, b):
        self.hash.update(b)
        self.size += len(b)
        return self.out.write(b)

    def flush(self):
        self.out.flush()

    def digest(self):
        return "sha256:" + self.hash.hexdigest()


def tar_info(path, entry, epoch):
    info = tarfile.TarInfo(path)
    info.mode = entry.mode & 0o7777
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    info.mtime = epoch
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, entry.link
    else:
        info.type = tarfile.REGTYPE
        info.size = os.path.getsize(entry.source) if entry.source else len(entry.data)
    return info


def write_tar(tree, out, epoch):
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as t:
        for path in sorted(tree):
            entry = tree[path]
            info = tar_info(path, entry, epoch)
            if entry.kind != "file":
                t.addfile(info)
            elif entry.source:
                with open(entry.source, "rb") as f:
                    t.addfile(info, f)
            else:
                t.addfile(info, io.BytesIO(entry.data))


class Blobs:
    """Content-addressed blobs in a scratch directory."""

    def __init__(self, root):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def path(self, digest):
        return os.path.join(self.root, digest.split(":", 1)[1])

    def add_bytes(self, data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(self.path(digest), "wb") as f:
            f.write(data)
        return {"digest": digest, "size": len(data)}

    def add_layer(self, tree, epoch):
        """Writes tree as a gzip layer; returns its descriptor, diff_id and raw size."""
        scratch = os.path.join(self.root, "layer.tmp")
        with open(scratch, "wb") as f:
            compressed = HashingWriter(f)
            with gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL,
                               fileobj=compressed, mtime=0) as gz:
                raw = HashingWriter(gz)
                write_tar(tree, raw, epoch)
        digest = compressed.digest()
        os.replace(scratch, self.path(digest))
        return {"mediaType": MEDIA_LAYER, "digest": digest, "size": compressed.size}, \
            raw.digest(), raw.size


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def full_name(ref):
    """The fully qualified name containerd and podman store (docker.io/library/x:tag)."""
    first = ref.split("/", 1)[0]
    if "/" not in ref:
        return "docker.io/library/" + ref
    if "." in first or ":" in first or first == "localhost":
        return ref
    return "docker.io/" + ref


def rfc3339(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_config(args, name, arch, diff_ids, history):
    labels = {
        "org.opencontainers.image.title": name,
        "org.opencontainers.image.version": args.version,
        "org.opencontainers.image.revision": args.revision,
        "org.opencontainers.image.source": args.source,
        "org.opencontainers.image.licenses": args.license,
        "org.opencontainers.image.created": rfc3339(args.epoch),
    }
    return {
        "architecture": arch,
        "os": "linux",
        "created": rfc3339(args.epoch),
        "config": {
            "User": f"{NONROOT}:{NONROOT}",
            "Entrypoint": [f"/usr/local/bin/{name}"],
            "WorkingDir": "/home/nonroot",
            "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                f"SSL_CERT_FILE=/{CA_BUNDLE}",
            ],
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": rfc3339(args.epoch), "created_by": h} for h in history],
    }


def write_archive(path, files, blobs, blob_digests, epoch):
    """The image archive: small files from `files`, then every blob, sorted by path."""
    entries = {"blobs": None, "blobs/sha256": None}
    for name, data in files.items():
        entries[name] = data
    for digest in blob_digests:
        entries["blobs/sha256/" + digest.split(":", 1)[1]] = blobs.path(digest)
    tmp = path + ".tmp"
    with open(tmp, "wb") as out, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as t:
        for name in sorted(entries):
            value = entries[name]
            if value is None:
                t.addfile(tar_info(name, Entry("dir", 0o755), epoch))
            elif isinstance(value, bytes):
                t.addfile(tar_info(name, Entry("file", 0o644, data=value), epoch), io.BytesIO(value))
            else:
                with open(value, "rb") as f:
                    t.addfile(tar_info(name, Entry("file", 0o644, source=value), epoch), f)
    os.replace(tmp, path)


def build(args):
    lock = read_lock(args.lock)
    tree, arch = base_tree(lock, args.debs)
    binaries = []
    for spec in args.image:
        name, sep, binary = spec.partition("=")
        if not sep or not os.path.isfile(binary):
            raise Failure(f"--image {spec}: want NAME=PATH to an existing binary")
        needed = check_libraries(tree, arch, binary)
        binaries.append((name, binary, needed))
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sluice-oci-") as scratch:
        blobs = Blobs(scratch)
        packages = ", ".join(f"{n} {v}" for n, v, _, _ in lock)
        base, base_diff, base_raw = blobs.add_layer(tree, args.epoch)
        summary = []
        for name, binary, needed in binaries:
            layer_tree = {}
            put(layer_tree, f"usr/local/bin/{name}", Entry("file", 0o755, source=binary))
            layer, diff, raw = blobs.add_layer(layer_tree, args.epoch)
            history = [f"images/build: base from Debian packages ({packages})",
                       f"images/build: /usr/local/bin/{name} (cargo build --release --locked)"]
            config = blobs.add_bytes(canonical_json(
                image_config(args, name, arch, [base_diff, diff], history)))
            manifest_doc = {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, **config},
                "layers": [base, layer],
            }
            manifest = blobs.add_bytes(canonical_json(manifest_doc))
            ref = f"{args.prefix}{name}:{args.tag}"
            index = {
                "schemaVersion": 2,
                "mediaType": MEDIA_INDEX,
                "manifests": [{
                    "mediaType": MEDIA_MANIFEST, **manifest,
                    "annotations": {
                        "io.containerd.image.name": full_name(ref),
                        "org.opencontainers.image.ref.name": args.tag,
                    },
                }],
            }
            docker_manifest = [{
                "Config": "blobs/sha256/" + config["digest"].split(":", 1)[1],
                "RepoTags": [ref],
                "Layers": ["blobs/sha256/" + d["digest"].split(":", 1)[1] for d in (base, layer)],
            }]
            files = {
                "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
                "index.json": canonical_json(index),
                "manifest.json": canonical_json(docker_manifest),
            }
            archive = os.path.join(args.out, f"{name}.tar")
            write_archive(archive, files, blobs,
                          [config["digest"], manifest["digest"], base["digest"], layer["digest"]],
                          args.epoch)
            compressed = config["size"] + base["size"] + layer["size"]
            summary.append({
                "ref": ref,
                "manifest": manifest["digest"],
                "compressed": compressed,
                "uncompressed": base_raw + raw,
                "base_layer": base["digest"],
                "archive_sha256": sha256_file(archive),
                "needs": needed,
            })
    with open(os.path.join(args.out, "images.json"), "wb") as f:
        f.write(canonical_json(summary) + b"\n")
    for s in summary:
        print(f"{s['ref']}  manifest {s['manifest']}  compressed {mb(s['compressed'])}"
              f"  uncompressed {mb(s['uncompressed'])}  (libraries: {' '.join(s['needs'])})")


def mb(n):
    return f"{n / 1e6:.2f} MB ({n} bytes)"


# ---------------------------------------------------------------------------------------
# Verifying an archive: structure, digests, and the entrypoint running in its rootfs.

def verify(args):
    with tarfile.open(args.archive, mode="r:") as t:
        files = {norm(m.name): t.extractfile(m).read() for m in t.getmembers() if m.isreg()}

    def blob(desc, what):
        digest, size = desc["digest"], desc["size"]
        path = "blobs/sha256/" + digest.split(":", 1)[1]
        data = files.get(path)
        if data is None:
            raise Failure(f"{args.archive}: {what} {digest} missing")
        if len(data) != size or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise Failure(f"{args.archive}: {what} {digest}: size or digest differs")
        return data

    def need(ok, message):
        if not ok:
            raise Failure(f"{args.archive}: {message}")

    need(json.loads(files.get("oci-layout", b"{}")).get("imageLayoutVersion") == "1.0.0",
         "oci-layout missing or not 1.0.0")
    index = json.loads(files["index.json"])
    need(index.get("schemaVersion") == 2 and len(index.get("manifests", [])) == 1,
         "index.json must list exactly one manifest")
    desc = index["manifests"][0]
    need(desc.get("mediaType") == MEDIA_MANIFEST, "index.json: manifest media type")
    annotations = desc.get("annotations", {})
    name = annotations.get("io.containerd.image.name", "")
    tag = annotations.get("org.opencontainers.image.ref.name", "")
    need(name and tag and name.endswith(":" + tag), "index.json: image name annotations")
    manifest = json.loads(blob(desc, "manifest"))
    need(manifest.get("mediaType") == MEDIA_MANIFEST and manifest["config"]["mediaType"] == MEDIA_CONFIG,
         "manifest media types")
    config = json.loads(blob(manifest["config"], "config"))
    layers = manifest["layers"]
    diff_ids = config["rootfs"]["diff_ids"]
    need(len(layers) == len(diff_ids) == 2, "want two layers (base, binary) and two diff_ids")
    raw_layers = []
    for layer, diff_id in zip(layers, diff_ids):
        need(layer["mediaType"] == MEDIA_LAYER, f"layer {layer['digest']}: media type")
        raw = gzip.decompress(blob(layer, "layer"))
        need("sha256:" + hashlib.sha256(raw).hexdigest() == diff_id,
             f"layer {layer['digest']}: diff_id differs")
        raw_layers.append(raw)
    docker = json.loads(files["manifest.json"])
    hexes = lambda ds: ["blobs/sha256/" + d["digest"].split(":", 1)[1] for d in ds]  # noqa: E731
    need(len(docker) == 1 and docker[0]["Config"] == hexes([manifest["config"]])[0]
         and docker[0]["Layers"] == hexes(layers), "manifest.json disagrees with index.json")
    need(len(docker[0]["RepoTags"]) == 1 and full_name(docker[0]["RepoTags"][0]) == name,
         "manifest.json RepoTags disagree with io.containerd.image.name")
    for path, data in files.items():
        if path.startswith("blobs/sha256/"):
            need(hashlib.sha256(data).hexdigest() == path.rsplit("/", 1)[1], f"{path}: digest")
    cfg = config["config"]
    need(cfg.get("User") == f"{NONROOT}:{NONROOT}", "config User")
    entrypoint = cfg.get("Entrypoint") or []
    need(len(entrypoint) == 1, "config Entrypoint")
    print(f"{args.archive}: {name} manifest {desc['digest']}: structure ok")
    if args.run:
        run_entrypoint(args, raw_layers, entrypoint[0], cfg["User"])


def run_entrypoint(args, raw_layers, entrypoint, user):
    with tempfile.TemporaryDirectory(prefix="sluice-rootfs-") as root:
        # The root of a container is 0755; a temporary directory is 0700.
        os.chmod(root, 0o755)
        for raw in raw_layers:
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as t:
                extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
                t.extractall(root, numeric_owner=True, **extra)
        st = os.lstat(os.path.join(root, "tmp"))
        if stat.S_IMODE(st.st_mode) != 0o1777:
            raise Failure(f"{args.archive}: /tmp has mode {stat.S_IMODE(st.st_mode):o}, want 1777")
        home = os.lstat(os.path.join(root, "home/nonroot"))
        if (home.st_uid, home.st_gid) != (NONROOT, NONROOT):
            raise Failure(f"{args.archive}: /home/nonroot is not owned by {NONROOT}")
        if os.path.getsize(os.path.join(root, CA_BUNDLE)) == 0:
            raise Failure(f"{args.archive}: /{CA_BUNDLE} is empty")
        chroot = shutil.which("chroot")
        if chroot is None:
            raise Failure("chroot (coreutils) not found")
        result = subprocess.run([chroot, f"--userspec={user}", root, entrypoint, "--version"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise Failure(f"{args.archive}: {entrypoint} --version in the unpacked rootfs failed "
                          f"({result.returncode}): {result.stderr.strip()}")
        print(f"{args.archive}: chroot --userspec={user} ROOTFS {entrypoint} --version: "
              f"{(result.stdout.strip().splitlines() or [''])[0]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="assemble image archives")
    b.add_argument("--lock", required=True)
    b.add_argument("--debs", required=True, help="directory with the locked .deb files")
    b.add_argument("--image", action="append", required=True, help="NAME=BINARY")
    b.add_argument("--out", required=True)
    b.add_argument("--tag", required=True)
    b.add_argument("--prefix", default="", help="registry/repository prefix of the image names")
    b.add_argument("--version", required=True)
    b.add_argument("--revision", required=True)
    b.add_argument("--source", required=True)
    b.add_argument("--license", required=True)
    b.add_argument("--epoch", type=int, required=True)
    v = sub.add_parser("verify", help="check an archive's structure (and run its entrypoint)")
    v.add_argument("archive")
    v.add_argument("--run", action="store_true", help="unpack and run ENTRYPOINT --version in a chroot")
    args = parser.parse_args()
    try:
        build(args) if args.command == "build" else verify(args)
    except Failure as e:
        print(f"oci.py: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
