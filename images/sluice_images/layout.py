"""Writing layers, blobs, the image config and the archive (OCI layout + manifest.json)."""

import datetime
import gzip
import hashlib
import io
import json
import os
import tarfile

from . import CA_BUNDLE, NONROOT
from .rootfs import Entry

GZIP_LEVEL = 9


MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"


MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"


MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"



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

