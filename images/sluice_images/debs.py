"""Debian packages: the lock, reading a .deb (ar, then tar), and the base root file system."""

import fnmatch
import gzip
import hashlib
import io
import lzma
import os
import subprocess
import tarfile

from . import CA_BUNDLE, Failure
from .rootfs import Entry, generated_files, norm, put

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

