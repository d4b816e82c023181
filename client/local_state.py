"""What a phone keeps between rounds in its own state directory (never sent anywhere).

* ``train_state.pt`` — the resumable state of the round in progress
  (:mod:`fedlora.client.train_state`); removed when the round's outcome is built.
* ``round_plan.json`` — the memory plan of the round in progress, so a restarted process
  resumes with the same micro-batch / rank / method instead of re-measuring (a different
  plan would not fit the saved state).
* ``fedsa_personal.safetensors`` — under FedSA-LoRA the phone's own B matrices (the server
  shares only A). The next round overlays them on the community's A
  (:func:`fedlora.aggregation.fedsa.personalize`). If the phone's instructed rank changes,
  the stored adapter is truncated or zero-padded to the new rank (nested views, scaling
  kept), so personal knowledge survives a rank change.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from fedlora.adapter import LoraAdapter
from fedlora.adapter_io import atomic_write_bytes, load_adapter, save_adapter
from fedlora.client.memory_plan import TrainPlan
from fedlora.ranks import pad_to_rank, truncate_to_rank

TRAIN_STATE = "train_state.pt"
PLAN = "round_plan.json"
PERSONAL = "fedsa_personal.safetensors"


class PhoneLocalState:
    """A phone's private directory of between-round state."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    @property
    def train_state_path(self) -> Path:
        return self.directory / TRAIN_STATE

    @property
    def personal_path(self) -> Path:
        return self.directory / PERSONAL

    @property
    def plan_path(self) -> Path:
        return self.directory / PLAN

    def save_plan(self, round_key: str, plan: TrainPlan) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {"round_key": round_key, "plan": asdict(plan)}
        atomic_write_bytes(self.plan_path, json.dumps(data).encode())

    def load_plan(self, round_key: str) -> TrainPlan | None:
        """The plan saved for this round (same key), or None."""
        try:
            data = json.loads(self.plan_path.read_text())
            if data.get("round_key") != round_key:
                return None
            return TrainPlan(**data["plan"])
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def clear_round(self) -> None:
        """Forget the finished round's resumable state and plan (personal B stays)."""
        for path in (self.train_state_path, self.plan_path):
            path.unlink(missing_ok=True)

    def save_personal(self, adapter: LoraAdapter) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        save_adapter(adapter, self.personal_path)

    def load_personal(self, view: LoraAdapter) -> LoraAdapter | None:
        """The stored personal adapter shaped like ``view`` (same base, modules, rank)."""
        if not self.personal_path.exists():
            return None
        own = load_adapter(self.personal_path)
        if own.meta.base_fingerprint != view.meta.base_fingerprint or own.modules != view.modules:
            return None
        rank = view.max_rank
        if own.max_rank > rank:
            own = truncate_to_rank(own, rank)
        elif own.max_rank < rank:
            own = pad_to_rank(own, rank)
        for name, pair in own:
            if pair.B.shape != view.pairs[name].B.shape:
                return None
        return own
