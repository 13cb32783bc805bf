"""Verifying an archive: structure, digests, and the entrypoint running in its rootfs."""

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile

from . import CA_BUNDLE, NONROOT, Failure
from .layout import MEDIA_CONFIG, MEDIA_LAYER, MEDIA_MANIFEST, full_name
from .rootfs import norm


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

