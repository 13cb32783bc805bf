"""Sluice's image assembly (images/oci.py is the command line), standard library only.

    packages.lock ──► .debs (sha256-checked) ──► debs: base rootfs ──► layout: base layer (shared)
    release binary ──► elf: libraries present? ────────────────────► layout: binary layer
    both layers + config ──► manifest ──► OCI layout + manifest.json in one tar ──► verify

Everything written is a function of the inputs: entries sorted, numeric owners, no
user or group names, one mtime (SOURCE_DATE_EPOCH), gzip without a name or time.
"""

NONROOT = 65532
NOBODY = 65534
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"


class Failure(Exception):
    """An error to report in one line, without a traceback."""

