"""Verifying a downloaded adapter against the server's pinned Ed25519 key.

What the server signs (fedlora's ``privacy/signing.py``, docs/privacy.md)::

    b"fedlora-adapter-signature/v1\n" + sha256_hex(blob) + b"\n" + canonical_metadata_json

* ``sha256_hex(blob)`` — the app computes it over the exact bytes it received, so any change
  to a tensor *or* to the metadata inside the blob changes it;
* ``canonical_metadata_json`` — the metadata with sorted keys and no whitespace. The hub
  sends exactly these bytes (base64) in ``X-Fedlora-Metadata``, so an app in any language
  uses them verbatim instead of re-serialising JSON (float formatting differs between
  languages); after the signature verifies, the app checks that the blob's own metadata
  says the same thing (compared as parsed JSON).

The signature record comes in ``X-Fedlora-Signature`` (base64 of JSON: ``signature``
(base64, 64 bytes), ``key_id``, ``algorithm`` = ``ed25519`` and unsigned hints). The key is
*pinned* in the app (32 raw bytes or PEM); several may be pinned during a key rotation. Only
after this succeeds is anything parsed into a model.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedlora_native.adapter import NativeAdapter, parse_adapter, safetensors_metadata
from fedlora_native.errors import Refused
from fedlora_native.hub import Download

DOMAIN = b"fedlora-adapter-signature/v1\n"


def pinned_key(material: bytes) -> Ed25519PublicKey:
    """A pinned key from 32 raw bytes or a PEM ``PUBLIC KEY`` block."""
    if len(material) == 32:
        return Ed25519PublicKey.from_public_bytes(material)
    key = serialization.load_pem_public_key(material)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the pinned key is not an Ed25519 public key")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class VerifiedAdapter:
    """An adapter whose signature verified; ``content_sha256`` is its content address."""

    adapter: NativeAdapter
    content_sha256: str
    key_id: str
    version: str | None


def _signature(download: Download) -> tuple[bytes, str]:
    raw = download.b64_header("X-Fedlora-Signature")
    if raw is None:
        raise Refused("missing_signature", "no (base64) X-Fedlora-Signature header")
    try:
        record = json.loads(raw)
        if record.get("algorithm") != "ed25519":
            raise ValueError(f"algorithm {record.get('algorithm')!r}")
        sig = base64.b64decode(record["signature"], validate=True)
        claimed = str(record.get("key_id", ""))
    except (ValueError, KeyError, TypeError, binascii.Error, AttributeError) as exc:
        raise Refused("malformed_signature", f"signature record unreadable: {exc}") from exc
    if len(sig) != 64:
        raise Refused("malformed_signature", f"Ed25519 signatures are 64 bytes, got {len(sig)}")
    return sig, claimed


def verify_download(download: Download, pinned: Sequence[Ed25519PublicKey]) -> VerifiedAdapter:
    """The adapter in ``download`` if a pinned key signed it; :class:`Refused` otherwise."""
    sig, claimed = _signature(download)
    metadata_json = download.b64_header("X-Fedlora-Metadata")
    if metadata_json is None:
        raise Refused("missing_signature", "no (base64) X-Fedlora-Metadata header")
    digest = hashlib.sha256(download.body).hexdigest()
    payload = DOMAIN + digest.encode() + b"\n" + metadata_json
    signer = None
    for key in pinned:
        try:
            key.verify(sig, payload)
            signer = key
            break
        except InvalidSignature:
            continue
    if signer is None:
        pinned_ids = sorted(key_id(k) for k in pinned)
        if claimed not in pinned_ids:
            raise Refused("wrong_key", f"signed by {claimed!r}; pinned keys are {pinned_ids}")
        raise Refused("invalid_signature", "the signature does not match these bytes")
    embedded = safetensors_metadata(download.body).get("fedlora")
    if embedded is None or json.loads(embedded) != json.loads(metadata_json):
        raise Refused("metadata_mismatch", "the blob's metadata differs from the signed one")
    return VerifiedAdapter(
        adapter=parse_adapter(download.body),
        content_sha256=digest,
        key_id=key_id(signer),
        version=download.header("X-Fedlora-Version"),
    )
