"""The server's Ed25519 signing key: created once, kept private, never in the database.

The registry signs every adapter it publishes with this key, and the hub serves only its
public half (``GET /v1/signing-key``) for phones to pin. The key file is written atomically
with mode 0600 so a crash while creating it cannot leave a half-written key that would later
sign with garbage, and other local users cannot read it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedlora.privacy.signing import (
    generate_signing_key,
    private_key_from_pem,
    private_key_to_pem,
)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Read an existing key; :class:`FileNotFoundError` if there is none."""
    return private_key_from_pem(path.read_bytes())


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the key at ``path``, creating it (0600, atomically) on first use."""
    if path.exists():
        return load_signing_key(path)
    key = generate_signing_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_key_to_pem(key))
            fh.flush()
            os.fsync(fh.fileno())
        # Two processes racing to create the key: link() fails for the loser, who then reads
        # the winner's key, so everyone signs with the same one.
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_signing_key(path)
    finally:
        tmp.unlink(missing_ok=True)
    return key
