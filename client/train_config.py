"""What a phone's local training is asked to do and what it reports, as plain data.

Kept apart from :mod:`fedlora.client.trainer` (which needs torch) so that the code that
*plans* a round — the phone session, the simulation's vectorized service client — can build
and read these without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TrainStatus = Literal["completed", "deadline"]


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int = 8
    micro_batch_size: int | None = None
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    max_grad_norm: float | None = 1.0
    gradient_checkpointing: bool = False
    cooling_every: int = 0
    cooling_seconds: float = 0.0
    deadline_s: float | None = None
    checkpoint_every: int = 0
    checkpoint_path: Path | None = None
    run_key: str = ""
    method: Literal["backprop", "mezo"] = "backprop"
    mezo_eps: float = 1e-3


@dataclass(frozen=True)
class TrainResult:
    steps: int
    examples_seen: int
    first_loss: float
    last_loss: float
    seconds: float
    status: TrainStatus = "completed"
    resumed_from: int = 0
    losses: tuple[float, ...] = ()
