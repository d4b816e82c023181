"""README command (1) in miniature: one phone fine-tunes the default model on its data."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedlora.adapter_io import load_adapter
from fedlora.cli import app
from fedlora.fingerprint import fingerprint_model_dir


@pytest.mark.slow
def test_one_phone_finetune_improves_heldout_loss(default_model_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "client", "finetune", "--client", "3", "--steps", "12", "--out", str(tmp_path),
            "--set", "data.num_clients=8", "--set", "lora.rank=4",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    import json

    summary = json.loads(result.output.strip().splitlines()[-1])
    print(summary)
    assert summary["heldout_loss_after"] < summary["heldout_loss_before"] - 0.05
    adapter = load_adapter(tmp_path / "adapter.safetensors")
    assert adapter.meta.base_fingerprint == fingerprint_model_dir(default_model_dir).id
    assert set(adapter.meta.ranks.values()) == {4}
    assert load_adapter(tmp_path / "peft").meta == adapter.meta
