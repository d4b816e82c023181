"""``fedlora hub …`` commands (the typer sub-app the main CLI mounts), and the settings →
storage paths rules they share with the ServerApp."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedlora.adapter_io import save_adapter
from fedlora.config import ServerSettings
from fedlora.server import paths
from fedlora.server.demo import make_demo_adapter
from fedlora.server.hub_cli import app
from fedlora.server.registry import Registry


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEDLORA_HOME", str(tmp_path))
    monkeypatch.delenv("FEDLORA_DATABASE_URL", raising=False)
    monkeypatch.delenv("FEDLORA_SIGNING_KEY", raising=False)
    return tmp_path


def test_default_paths_follow_home_config_and_env(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert paths.database_url() == f"sqlite:///{home / 'registry.db'}"
    assert paths.blob_dir() == home / "blobs"
    assert paths.signing_key_path() == home / "signing_key.pem"
    monkeypatch.setenv("FEDLORA_DATABASE_URL", "postgresql://db/x")
    assert paths.database_url() == "postgresql://db/x"
    s = ServerSettings(database_url="sqlite:////data/r.db", blob_dir="/data/blobs")
    assert paths.database_url(s) == "sqlite:////data/r.db"
    assert paths.blob_dir(s) == Path("/data/blobs")


def test_seed_publish_fsck_gc_public_key(home: Path) -> None:
    runner = CliRunner()
    seeded = runner.invoke(app, ["seed-demo", "--rounds", "2", "--name", "demo"])
    assert seeded.exit_code == 0, seeded.output
    assert "round 2 committed" in seeded.output
    adapter_file = home / "mine.safetensors"
    save_adapter(make_demo_adapter(8, seed=5), adapter_file)
    pub = runner.invoke(app, ["publish", str(adapter_file), "--run", "manual", "--view", "4"])
    assert pub.exit_code == 0, pub.output
    reg = Registry.open()
    assert [r.name for r in reg.list_runs()] == ["demo", "manual"]
    assert reg.latest_version(rank=4).round == 1
    reg.close()
    key = runner.invoke(app, ["public-key"])
    assert key.exit_code == 0 and "BEGIN PUBLIC KEY" in key.output
    ok = runner.invoke(app, ["fsck"])
    assert ok.exit_code == 0 and "0 missing, 0 corrupt" in ok.output
    assert runner.invoke(app, ["gc", "--grace-s", "0"]).exit_code == 0
    victim = next((home / "blobs" / "sha256").rglob("*.safetensors"))
    victim.write_bytes(b"rot")
    bad = runner.invoke(app, ["fsck"])
    assert bad.exit_code == 1 and "corrupt" in bad.output


def test_bad_input_is_a_clear_error(home: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["publish", str(home / "missing.safetensors")])
    assert r.exit_code == 2 and "error" in r.output
    r = runner.invoke(app, ["seed-demo", "--set", "server.hub_port=0"])
    assert r.exit_code == 2 and "server.hub_port" in r.output
