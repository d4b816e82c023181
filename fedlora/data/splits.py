"""Train / held-out split of one client's examples.

Personalisation is judged on text the adapter never trained on, so every client keeps a
held-out slice. The split is deterministic in ``seed`` and keeps each side in its original
order; any client with two or more examples holds out at least one and trains on at least one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def heldout_count(n: int, heldout_fraction: float) -> int:
    """How many of ``n`` examples are held out: ``round(n * fraction)``, within [1, n - 1]."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if n < 2:
        return 0
    return min(n - 1, max(1, round(n * heldout_fraction)))


def train_heldout_split(
    examples: Sequence[T], heldout_fraction: float, seed: int
) -> tuple[list[T], list[T]]:
    """Split ``examples`` into (train, held-out); a single example goes to train."""
    k = heldout_count(len(examples), heldout_fraction)
    chosen = np.zeros(len(examples), dtype=bool)
    if k:
        chosen[np.random.default_rng(seed).choice(len(examples), size=k, replace=False)] = True
    train = [x for x, held in zip(examples, chosen, strict=True) if not held]
    heldout = [x for x, held in zip(examples, chosen, strict=True) if held]
    return train, heldout
