"""What travels between the ServerApp and a phone's ClientApp in one round.

Both sides import these names and types, so the wire has one definition. Flower's Message
API carries a ``RecordDict``; we use:

* ``fedlora.community`` (ArrayRecord + ``.meta``): the community adapter at the phone's rank;
* ``fedlora.round`` (ConfigRecord): :class:`RoundInstructions`, server → phone;
* ``fedlora.privacy`` (ConfigRecord): the round's privacy context, server → phone;
* ``fedlora.delta`` (ArrayRecord + ``.meta``): the phone's LoRA delta — only when secure
  aggregation is off;
* ``fedlora.vector`` (ArrayRecord): the phone's privatized contribution vector — only when
  secure aggregation is off (with it, the vector only ever leaves the phone masked); for a
  rule that needs each phone (FLoRA) it is the phone's own delta in
  ``AggregationSpec.rank_layout(report.rank)`` (docs/aggregation.md);
* ``fedlora.report`` (ConfigRecord): :class:`PhoneReport`, phone → server.

Adapters use :func:`fedlora.records.put_adapter` / ``get_adapter`` (``<name>`` and
``<name>.meta``). Under secure aggregation the delta never appears in a reply: the phone keeps
its privatized vector and hands it to the secure-aggregation stages instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from flwr.app import ConfigRecord

from fedlora.errors import FedloraError

TRAIN = "train"
EVALUATE = "evaluate"

COMMUNITY = "fedlora.community"
ROUND = "fedlora.round"
PRIVACY = "fedlora.privacy"
DELTA = "fedlora.delta"
VECTOR = "fedlora.vector"
REPORT = "fedlora.report"

PhoneStatus = Literal["trained", "not_allowed", "deadline", "no_data", "failed"]


class ProtocolError(FedloraError, ValueError):
    """A message does not have the records or values the protocol requires."""


def _to_config(obj: Any) -> ConfigRecord:
    return ConfigRecord({k: v for k, v in asdict(obj).items() if v is not None})


def _from_config(cls: Any, record: ConfigRecord | None, what: str) -> Any:
    if record is None:
        raise ProtocolError(f"message has no {what} record")
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in record:
            kwargs[f.name] = record[f.name]
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ProtocolError(f"{what} record is incomplete: {exc}") from None


@dataclass(frozen=True)
class RoundInstructions:
    """What the server asks one phone to do this round."""

    round: int
    rank: int
    r_max: int
    local_steps: int
    batch_size: int
    learning_rate: float
    seed: int
    layout_digest: str
    round_ranks: str = ""
    rule: str = "rank_fedavg"
    secure_aggregation: bool = False
    micro_batch_size: int | None = None
    deadline_s: float | None = None

    def to_record(self) -> ConfigRecord:
        return _to_config(self)

    @property
    def ranks(self) -> tuple[int, ...]:
        """All rank groups of the round (the aggregation layout is padded to their max)."""
        if not self.round_ranks:
            return (self.rank,)
        return tuple(sorted({int(r) for r in self.round_ranks.split(",")}))

    @classmethod
    def from_record(cls, record: ConfigRecord | None) -> RoundInstructions:
        out: RoundInstructions = _from_config(cls, record, ROUND)
        if out.rank < 1 or out.rank > out.r_max:
            raise ProtocolError(f"rank {out.rank} outside 1..r_max={out.r_max}")
        return out


@dataclass(frozen=True)
class PhoneReport:
    """What a phone says about its round: status plus metrics (never raw text or weights)."""

    status: PhoneStatus
    reason: str = ""
    num_examples: int = 0
    steps: int = 0
    loss_before: float | None = None
    loss_after: float | None = None
    seconds: float = 0.0
    peak_memory_mb: float | None = None
    backend: str = ""
    dtype: str = ""
    quantization: str = ""
    rank: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    def to_record(self) -> ConfigRecord:
        return _to_config(self)

    @classmethod
    def from_record(cls, record: ConfigRecord | None) -> PhoneReport:
        out: PhoneReport = _from_config(cls, record, REPORT)
        return out
