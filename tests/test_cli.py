"""The `fedlora` CLI: help everywhere, clear errors, adapter and data commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedlora.adapter import LoraAdapter, LoraPair
from fedlora.adapter_io import load_adapter, save_adapter
from fedlora.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "args",
    [[], ["base"], ["data"], ["adapter"], ["client"], ["config"], ["adapter", "convert"]],
)
def test_help_everywhere(args: list[str]) -> None:
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_console_script_is_installed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fedlora", "--help"], capture_output=True, text=True, check=True
    )
    assert "federated LoRA" in out.stdout


def test_config_error_names_key_and_range() -> None:
    result = runner.invoke(app, ["config", "check", "--set", "privacy.clip_norm=-2"])
    assert result.exit_code == 2
    assert "privacy.clip_norm" in result.output and "> 0" in result.output


def test_config_show_applies_overrides() -> None:
    result = runner.invoke(app, ["config", "show", "--set", "lora.rank=2"])
    assert result.exit_code == 0, result.output
    assert "rank = 2" in result.output


def _adapter() -> LoraAdapter:
    rng = np.random.default_rng(0)
    pairs = {
        f"model.layers.{i}.self_attn.q_proj": LoraPair(
            rng.standard_normal((4, 8)).astype(np.float32),
            rng.standard_normal((8, 4)).astype(np.float32),
        )
        for i in range(2)
    }
    return LoraAdapter.create(pairs, base_fingerprint="fp:x", alpha=8.0)


def test_adapter_inspect_and_convert(tmp_path: Path) -> None:
    src = save_adapter(_adapter(), tmp_path / "a.safetensors")
    result = runner.invoke(app, ["adapter", "inspect", str(src)])
    assert result.exit_code == 0, result.output
    assert "model.layers.1.self_attn.q_proj" in result.output and "fp:x" in result.output

    result = runner.invoke(app, ["adapter", "convert", str(src), str(tmp_path / "peft")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "peft" / "adapter_config.json").exists()

    result = runner.invoke(
        app, ["adapter", "convert", str(src), str(tmp_path / "r2.safetensors"), "--rank", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "rank view error" in result.output
    assert set(load_adapter(tmp_path / "r2.safetensors").meta.ranks.values()) == {2}


def test_adapter_inspect_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    result = runner.invoke(app, ["adapter", "inspect", str(bad)])
    assert result.exit_code == 2
    assert "error" in result.output


def test_data_generate_writes_loadable_clients(tmp_path: Path) -> None:
    out = tmp_path / "data"
    result = runner.invoke(
        app,
        [
            "data",
            "generate",
            "--out",
            str(out),
            "--set",
            "data.num_clients=5",
            "--set",
            "data.examples_per_client=6",
        ],
    )
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.jsonl"))
    assert len(files) == 5
    first = json.loads(files[0].read_text().splitlines()[0])
    assert set(first) >= {"text"}
    result = runner.invoke(app, ["data", "stats", "--set", f'data.source="{out}"'])
    assert result.exit_code == 0, result.output
    assert "5 clients" in result.output
