"""Ed25519 signatures on community adapters: only what the server signed gets loaded."""

from __future__ import annotations

import numpy as np
import pytest

from fedlora.adapter import LoraAdapter, LoraPair
from fedlora.adapter_io import to_safetensors_bytes
from fedlora.errors import FedloraError
from fedlora.privacy.signing import (
    AdapterSignature,
    SignatureError,
    SignatureFailure,
    canonical_metadata_json,
    generate_signing_key,
    key_id,
    load_signature,
    load_verified,
    private_key_from_pem,
    private_key_from_raw,
    private_key_to_pem,
    private_key_to_raw,
    public_key_from_pem,
    public_key_from_raw,
    public_key_to_pem,
    public_key_to_raw,
    save_signature,
    sign_adapter,
    signing_payload,
    verify_adapter,
)


def make_adapter(seed: int = 0) -> LoraAdapter:
    rng = np.random.default_rng(seed)
    pairs = {
        f"model.layers.{i}.self_attn.{m}": LoraPair(
            rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32)
        )
        for i in range(2)
        for m in ("q_proj", "v_proj")
    }
    return LoraAdapter.create(pairs, base_fingerprint="base-123", alpha=8.0, version=3, round=7)


@pytest.fixture(scope="module")
def server_key():
    return generate_signing_key()


def test_sign_and_verify(server_key) -> None:
    adapter = make_adapter()
    sig = sign_adapter(adapter, server_key)
    verify_adapter(adapter, sig, server_key.public_key())
    verify_adapter(adapter, sig, public_key_to_raw(server_key.public_key()))  # pinned raw bytes
    assert sig.key_id == key_id(server_key.public_key())
    assert len(sig.signature) == 64
    assert signing_payload(adapter).startswith(
        b"fedlora-adapter-signature/v1\n" + sig.content_hash.encode()
    )
    assert canonical_metadata_json(adapter.meta).encode() in signing_payload(adapter)


def _refused(adapter: LoraAdapter, sig: AdapterSignature | None, key) -> SignatureFailure:
    with pytest.raises(SignatureError) as info:
        verify_adapter(adapter, sig, key)
    assert isinstance(info.value, FedloraError)
    return info.value.reason


def test_tampered_tensors_metadata_wrong_key_missing(server_key) -> None:
    adapter = make_adapter()
    sig = sign_adapter(adapter, server_key)
    pk = server_key.public_key()

    name = next(iter(adapter.pairs))
    a = adapter.pairs[name].A.copy()
    a[0, 0] += 1e-3
    tampered = LoraAdapter(
        meta=adapter.meta, pairs={**adapter.pairs, name: LoraPair(a, adapter.pairs[name].B)}
    )
    assert _refused(tampered, sig, pk) is SignatureFailure.TENSORS_TAMPERED

    assert _refused(adapter.with_meta(version=4), sig, pk) is SignatureFailure.METADATA_TAMPERED
    assert (
        _refused(adapter.with_meta(extra={"note": "x"}), sig, pk)
        is SignatureFailure.METADATA_TAMPERED
    )

    other = generate_signing_key()
    assert _refused(adapter, sig, other.public_key()) is SignatureFailure.WRONG_KEY
    assert _refused(adapter, sign_adapter(adapter, other), pk) is SignatureFailure.WRONG_KEY
    assert _refused(adapter, None, pk) is SignatureFailure.MISSING

    forged = AdapterSignature(**{**sig.__dict__, "signature": bytes(64)})
    assert _refused(adapter, forged, pk) is SignatureFailure.INVALID
    # lying hints cannot make a tampered adapter pass
    lying = AdapterSignature(**{**sig.__dict__, "tensors_sha256": "0" * 64})
    assert _refused(tampered, lying, pk) in {
        SignatureFailure.TENSORS_TAMPERED,
        SignatureFailure.INVALID,
    }


def test_key_rotation_accepts_any_pinned_key(server_key) -> None:
    adapter = make_adapter()
    new_key = generate_signing_key()
    verify_adapter(
        adapter, sign_adapter(adapter, new_key), [server_key.public_key(), new_key.public_key()]
    )


def test_load_verified_from_bytes(server_key, tmp_path) -> None:
    adapter = make_adapter(1)
    data = to_safetensors_bytes(adapter)
    sig = sign_adapter(adapter, server_key)
    path = save_signature(sig, tmp_path / "adapter.sig.json")
    assert load_signature(path) == sig
    assert load_signature(tmp_path / "absent.sig.json") is None
    loaded = load_verified(data, load_signature(path), server_key.public_key())
    assert loaded.meta == adapter.meta
    # flip one byte inside the tensor data (the last bytes of the file)
    bad = bytearray(data)
    bad[-3] ^= 0x10
    with pytest.raises(SignatureError) as info:
        load_verified(bytes(bad), sig, server_key.public_key())
    assert info.value.reason is SignatureFailure.TENSORS_TAMPERED
    with pytest.raises(SignatureError) as info:
        load_verified(b"not safetensors", sig, server_key.public_key())
    assert info.value.reason is SignatureFailure.UNREADABLE
    with pytest.raises(SignatureError) as info:
        load_verified(data, None, server_key.public_key())
    assert info.value.reason is SignatureFailure.MISSING


def test_signature_record_serialization(server_key) -> None:
    sig = sign_adapter(make_adapter(), server_key)
    assert AdapterSignature.from_json(sig.to_json()) == sig
    for bad in ("{", "[]", '{"signature": "x"}', sig.to_json().replace('"ed25519"', '"rsa"')):
        with pytest.raises(SignatureError) as info:
            AdapterSignature.from_json(bad)
        assert info.value.reason is SignatureFailure.MALFORMED
    short = sig.to_dict()
    short["signature"] = "AAAA"
    with pytest.raises(SignatureError, match="64 bytes"):
        AdapterSignature.from_dict(short)


def test_key_serialization_round_trips(server_key) -> None:
    pk = server_key.public_key()
    assert public_key_to_raw(public_key_from_pem(public_key_to_pem(pk))) == public_key_to_raw(pk)
    assert public_key_to_raw(public_key_from_raw(public_key_to_raw(pk))) == public_key_to_raw(pk)
    raw = private_key_to_raw(server_key)
    assert private_key_to_raw(private_key_from_raw(raw)) == raw
    assert private_key_to_raw(private_key_from_pem(private_key_to_pem(server_key))) == raw
    enc = private_key_to_pem(server_key, password=b"s3cret")
    assert b"ENCRYPTED" in enc
    assert private_key_to_raw(private_key_from_pem(enc, password=b"s3cret")) == raw
    with pytest.raises(SignatureError):
        public_key_from_raw(b"short")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SignatureError, match="Ed25519"):
        public_key_from_pem(ec_pem)
