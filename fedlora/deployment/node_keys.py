"""SuperNode authentication keys: one ECDSA key pair per phone, registered with the SuperLink.

How Flower 1.41 authenticates SuperNodes (read from its source, ``flwr.superlink.routers.fleet.
node_auth`` and ``flwr.cli.supernode.register``): the SuperLink runs with
``--enable-supernode-auth`` (which requires TLS) and refuses to let nodes register
themselves; an operator registers each node's *public* key over the Control API
(``flwr supernode register KEY.pub CONNECTION``), which yields the node id. The SuperNode
(``--auth-supernode-private-key``) signs a timestamp with its private key on every Fleet
request; the SuperLink checks the signature, the timestamp window and that the key belongs
to the node id it claims. A node whose key was never registered cannot activate, so it never
pulls a message.

Flower reads both halves in OpenSSH encodings (``load_ssh_private_key`` /
``load_ssh_public_key``) and accepts NIST curves only; we use P-384, the curve its
documentation uses. The private key never leaves the phone; the ``.pub`` file is what the
operator registers.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedlora.deployment.files import write_file
from fedlora.errors import FedloraError

PUBLIC_SUFFIX = ".pub"


class NodeKeyError(FedloraError, ValueError):
    """A SuperNode key file is unreadable or not an ECDSA key on a NIST curve."""


@dataclass(frozen=True)
class NodeKeyFiles:
    """Where one SuperNode's key pair lives."""

    private: Path
    public: Path

    @classmethod
    def at(cls, directory: Path, name: str) -> NodeKeyFiles:
        return cls(private=directory / name, public=directory / f"{name}{PUBLIC_SUFFIX}")


def generate_node_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def private_key_to_openssh(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def public_key_to_openssh(key: ec.EllipticCurvePublicKey, comment: str = "") -> bytes:
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line + (b" " + comment.encode() if comment else b"") + b"\n"


def load_node_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (ValueError, TypeError) as exc:
        raise NodeKeyError(f"{path}: not an OpenSSH public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise NodeKeyError(f"{path}: SuperNode keys must be ECDSA (NIST curve)")
    return key


def load_node_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise NodeKeyError(f"{path}: not an unencrypted OpenSSH private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise NodeKeyError(f"{path}: SuperNode keys must be ECDSA (NIST curve)")
    return key


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """``SHA256:…`` as ``ssh-keygen -l`` prints it, to match keys across machines by eye."""
    blob = base64.b64decode(public_key_to_openssh(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def write_node_key(
    directory: Path, name: str, *, overwrite: bool = False
) -> tuple[NodeKeyFiles, str]:
    """Create ``directory/name`` (private, 0600) and ``name.pub``; returns files + fingerprint."""
    if not name or "/" in name or name.startswith("."):
        raise NodeKeyError(f"invalid SuperNode key name {name!r}")
    files = NodeKeyFiles.at(directory, name)
    key = generate_node_key()
    write_file(files.private, private_key_to_openssh(key), secret=True, overwrite=overwrite)
    write_file(
        files.public,
        public_key_to_openssh(key.public_key(), comment=f"fedlora-supernode-{name}"),
        secret=False,
        overwrite=overwrite,
    )
    return files, fingerprint(key.public_key())
