"""`fedlora simulate --scenario smoke` end to end (Ray, real ClientApp/ServerApp, DP + SecAgg+,
registry, evaluation, report): every artifact of the run directory, and held-out loss that
improves over the base model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

pytest.importorskip("ray")

from fedlora.adapter_io import load_peft_dir
from fedlora.cli import app as main_app
from fedlora.cli.simulate import app as simulate_app
from fedlora.simulations.metrics import read_metrics

runner = CliRunner()


def invoke(args: list[str]) -> Result:
    """Through `fedlora simulate` once the command is registered, else its own app."""
    registered = any(c.name == "simulate" for c in main_app.registered_commands)
    app: typer.Typer = main_app if registered else simulate_app
    return runner.invoke(app, (["simulate"] if registered else []) + args)


def test_list_shows_bundled_scenarios() -> None:
    result = invoke(["--list"])
    assert result.exit_code == 0, result.output
    for name in ("smoke", "default", "phones-1000", "dp-strict", "hetero-ranks", "flaky-network"):
        assert name in result.output


def test_bad_override_is_a_clear_error(tmp_path: Path) -> None:
    result = invoke(["--scenario", "smoke", "--set", "scenario.policy=sometimes"])
    assert result.exit_code == 2
    assert "scenario.policy" in result.output


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("simulate") / "smoke-run"
    result = invoke(["--scenario", "smoke", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_smoke_run_directory_has_every_artifact(smoke_run: Path) -> None:
    for name in (
        "scenario.toml",
        "metrics.jsonl",
        "summary.json",
        "report.html",
        "trace.csv",
        "registry.db",
        "signing_key.pem",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ):
        assert (smoke_run / name).is_file(), name
    for plot in ("loss", "epsilon", "participation", "bytes", "timings", "triad"):
        assert (smoke_run / "plots" / f"{plot}.png").stat().st_size > 1000
    assert any((smoke_run / "blobs").rglob("*"))
    records = read_metrics(smoke_run / "metrics.jsonl")
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["status"] == "published" and r["contributors"] == 4 for r in records)
    assert all(r["eval_loss"] is not None for r in records)
    eps = [r["epsilon"] for r in records]
    assert eps[0] > 0 and eps[1] > eps[0]
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_published"] == 2
    assert summary["bytes_up"] > 0 and summary["peak_rss_mb"] > 100
    html = (smoke_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6
    adapter = load_peft_dir(smoke_run / "adapter")
    assert adapter.max_rank == 16 and adapter.meta.round == 2


@pytest.mark.slow
def test_smoke_run_registry_is_signed_and_complete(smoke_run: Path) -> None:
    from fedlora.privacy.signing import verify_adapter
    from fedlora.server.keys import load_signing_key
    from fedlora.server.registry import Registry

    reg = Registry.open(
        database_url=f"sqlite:///{smoke_run / 'registry.db'}", blob_dir=smoke_run / "blobs"
    )
    try:
        [run] = reg.list_runs()
        committed = reg.latest_committed_round(run.id)
        assert committed is not None and committed.number == 2
        key = load_signing_key(smoke_run / "signing_key.pem").public_key()
        adapter = reg.load_adapter(committed.community_version_id)
        verify_adapter(adapter, committed.community.signature, key)
        assert sorted(committed.views) == [4, 8, 16]
    finally:
        reg.close()


@pytest.mark.slow
def test_smoke_run_improves_held_out_loss_over_the_base(smoke_run: Path) -> None:
    triad = json.loads((smoke_run / "summary.json").read_text())["triad"]
    assert triad["community"] < triad["base"], triad
    assert triad["per_round"]["2"] < triad["per_round"]["0"]
    assert triad["centralized"] < triad["base"] and triad["local_only"] < triad["base"]


@pytest.mark.slow
def test_smoke_run_phones_train_on_the_vectorized_service(smoke_run: Path) -> None:
    """Vectorized phones are the default: every trained phone's reply says so."""
    records = read_metrics(smoke_run / "metrics.jsonl")
    assert all(r["trained"] > 0 and r["trainers"] == {"vectorized": r["trained"]} for r in records)
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["trainers"] == {"vectorized": sum(r["trained"] for r in records)}
