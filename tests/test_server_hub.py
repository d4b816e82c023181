"""The hub's HTTP API, through FastAPI's test client (no sockets)."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from fedlora.adapter_io import load_peft_dir, to_safetensors_bytes
from fedlora.privacy.signing import (
    AdapterSignature,
    generate_signing_key,
    load_verified,
    public_key_from_raw,
)
from fedlora.server.blobstore import BlobStore
from fedlora.server.demo import make_demo_adapter, seed_demo_run
from fedlora.server.hub import create_app
from fedlora.server.registry import Registry

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return generate_signing_key()


@pytest.fixture
def reg(tmp_path: Path, key: Ed25519PrivateKey) -> Iterator[Registry]:
    r = Registry.open(
        database_url=f"sqlite:///{tmp_path / 'r.db'}", blob_dir=tmp_path / "blobs", signing_key=key
    )
    seed_demo_run(r, 4, failed_round=2)
    yield r
    r.close()


@pytest.fixture
def client(reg: Registry) -> Iterator[TestClient]:
    with TestClient(create_app(reg, tokens=[TOKEN]), raise_server_exceptions=False) as c:
        yield c


def _signature(resp: object) -> AdapterSignature:
    headers = resp.headers  # type: ignore[attr-defined]
    return AdapterSignature.from_json(base64.b64decode(headers["x-fedlora-signature"]))


def test_latest_download_verifies_with_the_pinned_key(client: TestClient) -> None:
    key = client.get("/v1/signing-key").json()
    pinned = public_key_from_raw(base64.b64decode(key["public_key_raw_b64"]))
    assert key["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    for rank in (4, 8, 16):
        r = client.get("/v1/adapters/latest", params={"rank": rank})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream"
        h = r.headers["x-fedlora-content-sha256"]
        assert r.headers["etag"] == f'"{h}"'
        assert r.headers["x-fedlora-key-id"] == key["key_id"]
        assert r.headers["cache-control"] == "no-cache"
        adapter = load_verified(r.content, _signature(r), pinned)
        assert adapter.max_rank == rank == int(r.headers["x-fedlora-rank"])
        meta = json.loads(base64.b64decode(r.headers["x-fedlora-metadata"]))
        assert meta["round"] == int(r.headers["x-fedlora-round"]) == 5
    community = client.get("/v1/adapters/latest")
    assert community.headers["x-fedlora-role"] == "community"
    assert community.headers["x-fedlora-rank"] == "16"


def test_etag_if_none_match_gives_304(client: TestClient) -> None:
    r = client.get("/v1/adapters/latest", params={"rank": 4})
    etag = r.headers["etag"]
    again = client.get("/v1/adapters/latest", params={"rank": 4}, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    listed = client.get(
        "/v1/adapters/latest", params={"rank": 4}, headers={"If-None-Match": f'"x", W/{etag}'}
    )
    assert listed.status_code == 304
    stale = client.get("/v1/adapters/latest", params={"rank": 4}, headers={"If-None-Match": '"x"'})
    assert stale.status_code == 200 and stale.content == r.content
    metrics = client.get("/metrics").text
    assert "fedlora_hub_not_modified_total 2.0" in metrics


def test_version_by_id_and_by_hash_are_immutable(client: TestClient) -> None:
    latest = client.get("/v1/adapters/latest", params={"rank": 8})
    version, h = latest.headers["x-fedlora-version"], latest.headers["x-fedlora-content-sha256"]
    by_id = client.get(f"/v1/adapters/{version}")
    by_hash = client.get(f"/v1/adapters/{h}")
    assert by_id.content == by_hash.content == latest.content
    assert "immutable" in by_id.headers["cache-control"]
    info = client.get(f"/v1/adapters/{version}/info").json()
    assert info["content_hash"] == h and info["rank"] == 8 and info["role"] == "view"
    assert info["signature"]["content_hash"] == h
    parent = client.get(f"/v1/adapters/{info['parent_version']}/info").json()
    assert parent["role"] == "community" and parent["round"] == info["round"]


def test_peft_zip_is_a_loadable_peft_directory(client: TestClient, tmp_path: Path) -> None:
    latest = client.get("/v1/adapters/latest", params={"rank": 4})
    version = latest.headers["x-fedlora-version"]
    r = client.get(f"/v1/adapters/{version}/peft.zip")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = set(zf.namelist())
        assert {"adapter_config.json", "adapter_model.safetensors"} <= names
        zf.extractall(tmp_path / "peft")
    adapter = load_peft_dir(tmp_path / "peft")
    assert to_safetensors_bytes(adapter) == latest.content  # exact round trip
    sig = json.loads((tmp_path / "peft" / "fedlora_signature.json").read_text())
    assert sig["content_hash"] == latest.headers["x-fedlora-content-sha256"]
    cached = client.get(f"/v1/adapters/{version}/peft.zip", headers={"If-None-Match": "*"})
    assert cached.status_code == 304


def test_runs_and_rounds(client: TestClient) -> None:
    runs = client.get("/v1/runs").json()
    assert [r["name"] for r in runs] == ["demo"]
    assert (runs[0]["rounds_committed"], runs[0]["rounds_failed"]) == (4, 1)
    run_id = runs[0]["id"]
    assert client.get(f"/v1/runs/{run_id}").json()["latest_round"] == 5
    rounds = client.get(f"/v1/runs/{run_id}/rounds").json()
    assert [r["status"] for r in rounds] == ["committed", "failed"] + ["committed"] * 3
    failed = rounds[1]
    assert "min_clients" in failed["failure_reason"] and failed["community_version"] is None
    good = rounds[-1]
    assert good["view_ranks"] == [4, 8] and set(good["rank_mix"]) == {"4", "8", "16"}
    assert sum(good["rank_mix"].values()) == good["participants"]
    assert good["epsilon"] > 0 and good["loss"] > 0 and good["timings"]["train"] > 0
    part = client.get(f"/v1/runs/{run_id}/participation").json()
    assert part["clients"] > 0 and sum(part["histogram"].values()) == part["clients"]


def test_not_found_and_validation_are_4xx_with_reasons(client: TestClient) -> None:
    cases = {
        "/v1/runs/999": 404,
        "/v1/runs/0": 422,
        "/v1/runs/abc": 422,
        f"/v1/runs/{2**70}": 422,
        "/v1/runs/999/rounds": 404,
        "/v1/adapters/999999": 404,
        "/v1/adapters/" + "a" * 64: 404,
        "/v1/adapters/not-a-version": 422,
        "/v1/adapters/latest?rank=3": 404,
        "/v1/adapters/latest?rank=0": 422,
        "/v1/adapters/latest?rank=x": 422,
        "/v1/adapters/latest?run=77": 404,
        "/dashboard/nope.js": 404,
    }
    for path, code in cases.items():
        r = client.get(path)
        assert r.status_code == code, (path, r.status_code, r.text)
        assert r.json()["detail"], path
    assert (
        "available ranks: [4, 8, 16]" in client.get("/v1/adapters/latest?rank=3").json()["detail"]
    )


def test_writes_need_a_valid_token(client: TestClient, reg: Registry) -> None:
    body = {"name": "ext", "config": {"note": "external"}}
    assert client.post("/v1/runs", json=body).status_code == 401
    bad = client.post("/v1/runs", json=body, headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401 and "invalid" in bad.json()["detail"]
    assert client.post("/v1/admin/fsck").status_code == 401
    created = client.post("/v1/runs", json=body, headers=AUTH)
    assert created.status_code == 201, created.text
    assert client.post("/v1/runs", json=body, headers=AUTH).status_code == 409
    bad_name = client.post("/v1/runs", json={"name": "../etc"}, headers=AUTH)
    assert bad_name.status_code == 422
    with TestClient(create_app(reg, tokens=[])) as closed:
        r = closed.post("/v1/runs", json=body, headers=AUTH)
        assert r.status_code == 403 and "FEDLORA_HUB_TOKEN" in r.json()["detail"]


def test_publish_adapter_over_http(client: TestClient, key: Ed25519PrivateKey) -> None:
    run_id = client.post("/v1/runs", json={"name": "upload"}, headers=AUTH).json()["id"]
    blob = to_safetensors_bytes(make_demo_adapter(8, seed=42))
    url = f"/v1/runs/{run_id}/adapters"
    assert client.post(url, content=blob).status_code == 401
    r = client.post(url, content=blob, params={"views": [2, 4]}, headers=AUTH)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["round"]["number"] == 1 and [v["rank"] for v in out["views"]] == [2, 4]
    got = client.get("/v1/adapters/latest", params={"run": run_id, "rank": 2})
    assert got.status_code == 200
    load_verified(got.content, _signature(got), key.public_key())
    assert client.get("/v1/adapters/latest", params={"run": run_id}).content == blob
    # Bad uploads are 4xx with a reason, and leave no committed round behind.
    for payload, params, code in [
        (b"", {}, 422),
        (b"garbage" * 10, {}, 422),
        (blob, {"views": [32]}, 422),
        (blob, {"views": [0]}, 422),
        (blob, {"method": "magic"}, 422),
    ]:
        bad = client.post(url, content=payload, params=params, headers=AUTH)
        assert bad.status_code == code, (payload[:10], params, bad.text)
        assert bad.json()["detail"]
    assert client.post("/v1/runs/999/adapters", content=blob, headers=AUTH).status_code == 404
    rounds = client.get(f"/v1/runs/{run_id}/rounds").json()
    assert [r["status"] for r in rounds if r["status"] == "committed"] == ["committed"]


def test_upload_size_cap(reg: Registry) -> None:
    with TestClient(create_app(reg, tokens=[TOKEN], max_upload_bytes=1000)) as c:
        r = c.post("/v1/runs/1/adapters", content=b"x" * 5000, headers=AUTH)
        assert r.status_code == 413


def test_admin_fail_fsck_gc(client: TestClient, reg: Registry) -> None:
    run = reg.begin_run("ops")
    reg.start_round(run.id, 1)
    url = f"/v1/admin/runs/{run.id}/rounds/1/fail"
    r = client.post(url, json={"reason": "stuck"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "failed"
    assert client.post(url, json={"reason": ""}, headers=AUTH).status_code == 422
    missing = f"/v1/admin/runs/{run.id}/rounds/7/fail"
    assert client.post(missing, json={"reason": "x"}, headers=AUTH).status_code == 404
    fsck = client.post("/v1/admin/fsck", headers=AUTH).json()
    assert fsck["ok"] and fsck["versions_checked"] >= 12
    assert client.post("/v1/admin/gc", params={"grace_s": 0}, headers=AUTH).json() == {
        "removed": []
    }


def test_corrupt_blob_is_refused_not_served(client: TestClient, reg: Registry) -> None:
    latest = client.get("/v1/adapters/latest", params={"rank": 4})
    path = reg.blobs.path_for(latest.headers["x-fedlora-content-sha256"])
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    reg.blobs.forget_cache()
    r = client.get("/v1/adapters/latest", params={"rank": 4})
    assert r.status_code == 500 and "corrupt" in r.json()["detail"]
    assert not r.content.startswith(latest.content[:8])


def test_health_ready_metrics(client: TestClient, reg: Registry, tmp_path: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ok"
    client.get("/v1/adapters/latest")
    text = client.get("/metrics").text
    assert (
        'fedlora_hub_requests_total{method="GET",route="/v1/adapters/latest",status="200"}' in text
    )
    assert 'fedlora_latest_round{run="demo"} 5.0' in text
    assert 'fedlora_rounds{run="demo",status="failed"} 1.0' in text
    assert "fedlora_registry_up 1.0" in text
    client.get("/v1/runs/123456789")
    assert 'route="/v1/runs/{run_id}"' in client.get("/metrics").text  # templates, not paths
    # A registry whose database cannot be opened: not ready (503), but still alive.
    broken = Registry(create_engine(f"sqlite:///{tmp_path}/missing/dir/x.db"), BlobStore(tmp_path))
    with TestClient(create_app(broken, tokens=[]), raise_server_exceptions=False) as c:
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        assert c.get("/v1/runs").status_code == 503
        assert "fedlora_registry_up 0.0" in c.get("/metrics").text


def test_dashboard_pages(client: TestClient) -> None:
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/dashboard"
    page = client.get("/dashboard")
    assert page.status_code == 200 and "<svg" not in page.text  # charts are drawn by JS
    assert "/dashboard/dashboard.js" in page.text
    js = client.get("/dashboard/dashboard.js")
    assert js.headers["content-type"].startswith("text/javascript")
    assert "/v1/runs" in js.text


def test_openapi_schema_lists_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = set(spec["paths"])
    assert {
        "/v1/adapters/latest",
        "/v1/adapters/{version}",
        "/v1/adapters/{version}/peft.zip",
        "/v1/runs",
        "/v1/runs/{run_id}/rounds",
        "/v1/signing-key",
        "/v1/runs/{run_id}/adapters",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= paths
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_run_config_secrets_are_redacted(client: TestClient, reg: Registry) -> None:
    reg.begin_run(
        "secret",
        config={
            "server": {"database_url": "postgresql+psycopg://fedlora:hunter2@db:5432/x"},
            "hub_token": "abcdefghijklmnopqrstuvwxyz",
            "nested": [{"api_secret": "s3"}],
        },
    )
    body = client.get("/v1/runs").text
    assert "hunter2" not in body and "abcdefghijklmnop" not in body and "s3" not in body
    run = next(r for r in client.get("/v1/runs").json() if r["name"] == "secret")
    assert run["config"]["server"]["database_url"] == "postgresql+psycopg://fedlora:***@db:5432/x"
