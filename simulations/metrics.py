"""Per-round metrics of a simulated run: one JSON object per round in ``metrics.jsonl``.

A record is the server's :class:`~fedlora.server.round_loop.RoundSummary` (what the real
round loop measured: contributors, dropouts, ε, the phones' held-out loss of the community
adapter they received, bytes, timings) plus what only the simulation knows — the phones'
decision trace (:mod:`fedlora.simulations.trace`: refusals by device policy, deadline misses,
vanishing by protocol stage, simulated device time) and, once the run is over, the held-out
loss of that round's community adapter on the fixed evaluation sample (``eval_loss``).
Records are appended as rounds finish, so a run that dies still leaves its history.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fedlora.server.round_loop import RoundSummary
from fedlora.simulations.trace import RoundOutcomes


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def round_record(summary: RoundSummary, outcomes: RoundOutcomes, wall_s: float) -> dict[str, Any]:
    """The JSON object of one round (keys are stable: reports and plots read them)."""
    rec = asdict(summary)
    rec["rank_mix"] = {str(k): v for k, v in sorted(summary.rank_mix.items())}
    rec["epsilon"] = _finite(summary.epsilon)
    loss = _finite(summary.community_loss)
    rec["community_loss"] = loss
    rec["community_perplexity"] = math.exp(loss) if loss is not None else None
    rec["local_loss_after"] = _finite(summary.local_loss_after)
    counts = outcomes.counts
    rec["trained"] = int(counts.get("trained", 0))
    rec["deadline"] = int(counts.get("deadline", 0))
    rec["vanished_train"] = int(counts.get("vanished:train", 0))
    # stages 0-2 lose the phone's input; in stage 3 (unmasking) its masked input is already
    # in the sum, so it still counts among the contributors
    rec["vanished_secagg"] = int(sum(counts.get(f"vanished:secagg.{k}", 0) for k in range(3)))
    rec["vanished_unmasking"] = int(counts.get("vanished:secagg.3", 0))
    rec["max_device_s"] = outcomes.max_device_s
    # which local trainer ran each trained phone (vectorized service or plain PEFT)
    rec["trainers"] = {
        k.removeprefix("trainer:"): int(v)
        for k, v in sorted(counts.items())
        if k.startswith("trainer:")
    }
    rec["round_s"] = float(sum(summary.timings.values()))
    rec["wall_s"] = wall_s
    rec["eval_loss"] = None
    return rec


class MetricsFile:
    """Appends round records as they come; :meth:`rewrite` replaces them all at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        tmp.replace(self.path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
