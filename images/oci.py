#!/usr/bin/env python3
"""Assemble Sluice's OCI image archives from Debian packages and release binaries.

Standard library only, no daemon. `images/build` downloads and verifies the pinned
packages and builds the binaries, then calls `build`; `images/check-reproducible` calls
`verify` on each archive. The pieces are in sluice_images/ (see its __init__).
"""

import argparse
import os
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sluice_images import Failure  # noqa: E402
from sluice_images.debs import base_tree, read_lock, sha256_file  # noqa: E402
from sluice_images.elf import check_libraries  # noqa: E402
from sluice_images.layout import (  # noqa: E402
    MEDIA_CONFIG, MEDIA_INDEX, MEDIA_MANIFEST, Blobs, canonical_json, full_name,
    image_config, write_archive)
from sluice_images.rootfs import Entry, put  # noqa: E402
from sluice_images.verify import verify  # noqa: E402


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
