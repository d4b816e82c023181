"""Ed25519 signatures on community adapters: phones load only what the server signed.

The server signs each published adapter over

    "fedlora-adapter-signature/v1\\n" ‖ content_hash ‖ "\\n" ‖ canonical metadata JSON

where ``content_hash`` is :func:`fedlora.adapter_io.content_hash` (SHA-256 of the canonical
safetensors bytes: every tensor, every metadata field) and the canonical metadata JSON is
the metadata with sorted keys and no whitespace. A phone pins the server's public key (raw
32 bytes or PEM, shipped with the app) and calls :func:`verify_adapter` — or
:func:`load_verified` on downloaded bytes — *before* loading anything into a model.

Refused with :class:`SignatureError` (``.reason`` says which): a missing signature, a
signature by another key, tampered tensors, tampered metadata, or a signature that does not
verify. The signature record also carries unsigned *hints* (key id, tensor and metadata
digests) used only to say which part changed after verification has already failed: they
can never make a tampered adapter pass.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import safetensors.numpy as stn
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedlora.adapter import AdapterMetadata, LoraAdapter
from fedlora.adapter_io import atomic_write_bytes, content_hash, from_safetensors_bytes
from fedlora.errors import AdapterValidationError, FedloraError

ALGORITHM = "ed25519"
DOMAIN = b"fedlora-adapter-signature/v1\n"
SIGNATURE_SUFFIX = ".sig.json"

PublicKeyLike = Ed25519PublicKey | bytes


class SignatureFailure(StrEnum):
    MISSING = "missing_signature"
    MALFORMED = "malformed_signature"
    WRONG_KEY = "wrong_key"
    TENSORS_TAMPERED = "tensors_tampered"
    METADATA_TAMPERED = "metadata_tampered"
    INVALID = "invalid_signature"
    UNREADABLE = "unreadable_adapter"


class SignatureError(FedloraError):
    """An adapter's signature is missing or does not verify under the pinned key."""

    def __init__(self, reason: SignatureFailure, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"adapter signature refused ({reason}): {detail}")


# ---------------------------------------------------------------------------- keys
def generate_signing_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 signing key (keep it on the server, never in the registry)."""
    return Ed25519PrivateKey.generate()


def private_key_to_pem(key: Ed25519PrivateKey, password: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with ``password`` when given."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def private_key_from_pem(data: bytes, password: bytes | None = None) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(data, password=password)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(SignatureFailure.MALFORMED, "PEM does not hold an Ed25519 private key")
    return key


def private_key_to_raw(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def private_key_from_raw(raw: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_key_to_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_from_pem(data: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(SignatureFailure.MALFORMED, "PEM does not hold an Ed25519 public key")
    return key


def public_key_to_raw(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes: what a phone app pins."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_raw(raw: bytes) -> Ed25519PublicKey:
    if len(raw) != 32:
        raise SignatureError(
            SignatureFailure.MALFORMED, f"raw Ed25519 public key must be 32 bytes, got {len(raw)}"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def _as_public(key: PublicKeyLike) -> Ed25519PublicKey:
    return key if isinstance(key, Ed25519PublicKey) else public_key_from_raw(key)


def key_id(key: PublicKeyLike) -> str:
    """Short fingerprint of a public key: first 16 hex digits of SHA-256(raw key)."""
    return hashlib.sha256(public_key_to_raw(_as_public(key))).hexdigest()[:16]


# ---------------------------------------------------------------------------- payload
def canonical_metadata_json(meta: AdapterMetadata) -> str:
    """Metadata as JSON with sorted keys and no whitespace: one string per metadata."""
    return json.dumps(
        meta.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def tensors_digest(adapter: LoraAdapter) -> str:
    """SHA-256 of the tensors alone (safetensors bytes without metadata): a diagnosis hint."""
    tensors = {k: np.ascontiguousarray(v) for k, v in adapter.tensors().items()}
    return hashlib.sha256(stn.save(tensors)).hexdigest()


def signing_payload(adapter: LoraAdapter) -> bytes:
    """The exact bytes that are signed."""
    return (
        DOMAIN
        + content_hash(adapter).encode()
        + b"\n"
        + canonical_metadata_json(adapter.meta).encode()
    )


@dataclass(frozen=True)
class AdapterSignature:
    """A detached signature plus unsigned hints (key id, digests) for clear refusals."""

    signature: bytes
    key_id: str
    content_hash: str
    metadata_sha256: str
    tensors_sha256: str
    algorithm: str = ALGORITHM

    def to_dict(self) -> dict[str, str]:
        d = asdict(self)
        d["signature"] = base64.b64encode(self.signature).decode()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, d: object) -> AdapterSignature:
        fields = (
            "signature",
            "key_id",
            "content_hash",
            "metadata_sha256",
            "tensors_sha256",
            "algorithm",
        )
        if not isinstance(d, dict) or not all(isinstance(d.get(f), str) for f in fields):
            raise SignatureError(
                SignatureFailure.MALFORMED, f"signature record needs string fields {fields}"
            )
        if d["algorithm"] != ALGORITHM:
            raise SignatureError(
                SignatureFailure.MALFORMED, f"unsupported algorithm {d['algorithm']!r}"
            )
        try:
            sig = base64.b64decode(d["signature"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SignatureError(SignatureFailure.MALFORMED, "signature is not base64") from exc
        if len(sig) != 64:
            raise SignatureError(
                SignatureFailure.MALFORMED, f"Ed25519 signature must be 64 bytes, got {len(sig)}"
            )
        return cls(
            signature=sig,
            key_id=d["key_id"],
            content_hash=d["content_hash"],
            metadata_sha256=d["metadata_sha256"],
            tensors_sha256=d["tensors_sha256"],
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> AdapterSignature:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise SignatureError(
                SignatureFailure.MALFORMED, f"signature record is not JSON: {exc}"
            ) from exc


# ---------------------------------------------------------------------------- sign / verify
def sign_adapter(adapter: LoraAdapter, key: Ed25519PrivateKey) -> AdapterSignature:
    """Server side: sign (content hash + canonical metadata JSON) with Ed25519."""
    meta_json = canonical_metadata_json(adapter.meta)
    return AdapterSignature(
        signature=key.sign(signing_payload(adapter)),
        key_id=key_id(key.public_key()),
        content_hash=content_hash(adapter),
        metadata_sha256=hashlib.sha256(meta_json.encode()).hexdigest(),
        tensors_sha256=tensors_digest(adapter),
    )


def verify_adapter(
    adapter: LoraAdapter,
    signature: AdapterSignature | None,
    pinned: PublicKeyLike | Sequence[PublicKeyLike],
) -> None:
    """Phone side: return only if ``signature`` is a valid signature of ``adapter`` by a
    pinned key (several keys may be pinned during a key rotation); else SignatureError."""
    if signature is None:
        raise SignatureError(SignatureFailure.MISSING, "the adapter carries no signature")
    keys = [
        _as_public(k)
        for k in (
            pinned if isinstance(pinned, Sequence) and not isinstance(pinned, bytes) else [pinned]
        )
    ]
    payload = signing_payload(adapter)
    for key in keys:
        try:
            key.verify(signature.signature, payload)
            return
        except InvalidSignature:
            continue
    # Verification failed: say why, using the (unsigned) hints.
    pinned_ids = {key_id(k) for k in keys}
    if signature.key_id not in pinned_ids:
        raise SignatureError(
            SignatureFailure.WRONG_KEY,
            f"signed by key {signature.key_id}, but this phone trusts only {sorted(pinned_ids)}",
        )
    if signature.tensors_sha256 != tensors_digest(adapter):
        raise SignatureError(
            SignatureFailure.TENSORS_TAMPERED, "the tensors differ from the signed ones"
        )
    meta_digest = hashlib.sha256(canonical_metadata_json(adapter.meta).encode()).hexdigest()
    if signature.metadata_sha256 != meta_digest:
        raise SignatureError(
            SignatureFailure.METADATA_TAMPERED, "the metadata differs from the signed one"
        )
    raise SignatureError(
        SignatureFailure.INVALID, "the signature does not verify under the pinned key"
    )


def load_verified(
    data: bytes,
    signature: AdapterSignature | None,
    pinned: PublicKeyLike | Sequence[PublicKeyLike],
) -> LoraAdapter:
    """Downloaded safetensors bytes → adapter, only if its signature verifies."""
    if signature is None:
        raise SignatureError(SignatureFailure.MISSING, "the adapter carries no signature")
    try:
        adapter = from_safetensors_bytes(data)
    except AdapterValidationError as exc:
        raise SignatureError(SignatureFailure.UNREADABLE, str(exc)) from exc
    verify_adapter(adapter, signature, pinned)
    return adapter


def save_signature(signature: AdapterSignature, path: str | Path) -> Path:
    """Write the detached signature as JSON (atomically)."""
    p = Path(path)
    atomic_write_bytes(p, signature.to_json().encode())
    return p


def load_signature(path: str | Path) -> AdapterSignature | None:
    """Read a detached signature; ``None`` if there is no file (→ refused as missing)."""
    p = Path(path)
    if not p.exists():
        return None
    return AdapterSignature.from_json(p.read_bytes())
