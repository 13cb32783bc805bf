"""The root file system model of a layer: relative path → Entry, and the generated files."""

import os

from . import NOBODY, NONROOT, Failure


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

