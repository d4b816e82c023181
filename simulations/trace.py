"""The phones' decision trace: one CSV line per decision, read back by the driver.

Ray workers append ``round,partition,event,value`` lines (see
:class:`fedlora.simulations.behaviour.PopulationHook`); events are ``trained`` (value: the
simulated device seconds), ``not_allowed``, ``deadline`` (value: simulated seconds),
``vanished:<stage>`` and ``trainer:<name>`` (which local trainer ran a phone's round:
``vectorized`` or ``peft``; written by
:class:`fedlora.simulations.vectorized_service.SimulatedRoundTrainer`). The driver reads
the file incrementally after each round and keeps
only per-round counters, and at the end the participation counts of the evaluation sample,
so its memory does not grow with the number of phones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TraceEvent:
    round: int
    partition_id: int
    event: str
    value: float


def parse_line(line: str) -> TraceEvent | None:
    parts = line.strip().split(",")
    if len(parts) != 4:
        return None
    try:
        return TraceEvent(int(parts[0]), int(parts[1]), parts[2], float(parts[3]))
    except ValueError:
        return None


def iter_events(path: Path) -> Iterator[TraceEvent]:
    if not path.exists():
        return
    with path.open() as f:
        for line in f:
            ev = parse_line(line)
            if ev is not None:
                yield ev


@dataclass
class RoundOutcomes:
    """Counts of one round's decisions, and the slowest trained phone's device time."""

    counts: Counter[str] = field(default_factory=Counter)
    max_device_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = {k: float(v) for k, v in sorted(self.counts.items())}
        out["max_device_s"] = self.max_device_s
        return out


class TraceReader:
    """Reads new complete lines since the last call; per-round counters only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.rounds: dict[int, RoundOutcomes] = {}

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self._offset += end
        for raw in data[:end].decode().splitlines():
            ev = parse_line(raw)
            if ev is None:
                continue
            out = self.rounds.setdefault(ev.round, RoundOutcomes())
            out.counts[ev.event] += 1
            if ev.event == "trained":
                out.max_device_s = max(out.max_device_s, ev.value)

    def outcomes(self, rnd: int) -> RoundOutcomes:
        self.poll()
        return self.rounds.get(rnd, RoundOutcomes())


def participation(path: Path, partition_ids: Iterable[int]) -> dict[int, int]:
    """Rounds each of ``partition_ids`` trained in (its local training happened)."""
    wanted = set(partition_ids)
    counts = dict.fromkeys(sorted(wanted), 0)
    for ev in iter_events(path):
        if ev.event == "trained" and ev.partition_id in wanted:
            counts[ev.partition_id] += 1
    return counts
