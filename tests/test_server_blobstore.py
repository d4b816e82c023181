"""Content-addressed blob store, signing-key file and admin-token checks: the small parts."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from fedlora.server.blobstore import BlobIntegrityError, BlobMissingError, BlobStore, check_hash
from fedlora.server.db import normalize_url
from fedlora.server.hub_auth import TokenAuth, tokens_from_env
from fedlora.server.keys import load_or_create_signing_key


def test_put_get_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    h = store.put(b"adapter bytes")
    assert h == hashlib.sha256(b"adapter bytes").hexdigest()
    assert store.path_for(h) == tmp_path / "sha256" / h[:2] / f"{h}.safetensors"
    mtime = store.path_for(h).stat().st_mtime_ns
    assert store.put(b"adapter bytes") == h  # a valid copy is not rewritten
    assert store.path_for(h).stat().st_mtime_ns == mtime
    assert store.get(h) == b"adapter bytes"
    assert [b.content_hash for b in store.iter_blobs()] == [h]


def test_corrupt_and_missing_blobs_are_refused_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = BlobStore(tmp_path, cache_bytes=0)
    h = store.put(b"good bytes")
    store.path_for(h).write_bytes(b"evil bytes")
    with pytest.raises(BlobIntegrityError, match="corrupt"):
        store.get(h)
    assert any("integrity" in r.message for r in caplog.records)
    assert store.put(b"good bytes") == h  # rewriting repairs it
    assert store.get(h) == b"good bytes"
    with pytest.raises(BlobMissingError):
        store.get("0" * 64)
    with pytest.raises(ValueError):
        store.get("../../etc/passwd")
    with pytest.raises(ValueError):
        check_hash("A" * 64)


def test_cache_serves_only_verified_bytes(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, cache_bytes=1 << 20)
    h = store.put(b"x" * 100)
    assert store.get(h) == b"x" * 100
    store.path_for(h).write_bytes(b"tampered after verification")
    assert store.get(h) == b"x" * 100  # the verified copy, never the tampered file
    store.forget_cache()
    with pytest.raises(BlobIntegrityError):
        store.get(h)


def test_signing_key_is_created_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing_key.pem"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_signing_key(path)
    assert again.public_key() == key.public_key()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_tokens_compare_in_constant_time_and_must_be_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = TokenAuth(["a" * 20, "b" * 32])
    assert auth.enabled and auth.check("a" * 20) and auth.check("b" * 32)
    assert not auth.check("a" * 19) and not auth.check("") and not auth.check("\udcff")
    assert not TokenAuth([]).enabled
    with pytest.raises(ValueError, match="at least"):
        TokenAuth(["short"])
    secret = tmp_path / "token"
    secret.write_text("c" * 24 + "\n")
    monkeypatch.setenv("FEDLORA_HUB_TOKEN", "x" * 20 + ", " + "y" * 20)
    monkeypatch.setenv("FEDLORA_HUB_TOKEN_FILE", os.fspath(secret))
    assert tokens_from_env() == ["x" * 20, "y" * 20, "c" * 24]


def test_postgres_urls_use_psycopg3() -> None:
    assert normalize_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
