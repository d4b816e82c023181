"""Resumable training state, written atomically.

Phones get killed: the OS reclaims memory, the user unplugs, the battery saver kicks in. The
trainer therefore saves, every K steps, everything that determines the rest of the run — the
LoRA tensors, the optimizer state, the step reached (which fixes the position in the seeded
batch schedule), the torch RNG state (LoRA dropout) and the losses so far — so that a
restarted process continues exactly where the killed one stopped and ends with the same
adapter as an uninterrupted run.

Atomicity: the state goes to a temporary file in the same directory, is flushed and fsynced,
then renamed over the previous state (``os.replace`` is atomic on POSIX), and the directory
is fsynced. A kill at any instant leaves either the old or the new state, never a torn one.
A state carries a ``run_key`` (a digest of what the run depends on: instructions, the
received adapter, the data, the plan); a state with another key is ignored, so a checkpoint
of last round never leaks into this one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "train_state.pt"


@dataclass
class TrainState:
    """Everything needed to continue a run after step ``step``."""

    run_key: str
    step: int
    lora: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    rng: torch.Tensor
    losses: list[float] = field(default_factory=list)
    examples_seen: int = 0
    accelerator_rng: torch.Tensor | None = None


def save_state(path: Path, state: TrainState) -> None:
    """Write ``state`` to ``path`` atomically (tmp file + fsync + rename + dir fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "run_key": state.run_key,
        "step": state.step,
        "lora": {k: v.detach().cpu().clone() for k, v in state.lora.items()},
        "optimizer": state.optimizer,
        "rng": state.rng,
        "accelerator_rng": state.accelerator_rng,
        "losses": list(state.losses),
        "examples_seen": state.examples_seen,
    }
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_state(path: Path, run_key: str) -> TrainState | None:
    """The saved state at ``path`` if it exists and belongs to ``run_key``; else None."""
    if not path.exists():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a state from another torch version or a damaged file: start over
        return None
    if not isinstance(raw, dict) or raw.get("run_key") != run_key:
        return None
    return TrainState(
        run_key=str(raw["run_key"]),
        step=int(raw["step"]),
        lora=dict(raw["lora"]),
        optimizer=raw.get("optimizer"),
        rng=raw["rng"],
        losses=[float(x) for x in raw.get("losses", [])],
        examples_seen=int(raw.get("examples_seen", 0)),
        accelerator_rng=raw.get("accelerator_rng"),
    )


def clear_state(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
