"""What goes into and comes out of the registry: plain frozen dataclasses.

They keep the round loop and the hub independent of SQLAlchemy sessions (no lazy-loading
surprises after a session closed) and of each other. Inputs: :class:`RoundPublication`
with :class:`RoundMetrics` and :class:`PrivacySnapshot`. Outputs: :class:`RunInfo`,
:class:`RoundInfo`, :class:`AdapterVersionInfo`, :class:`CommittedRound`, :class:`FsckReport`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from fedlora.adapter import LoraAdapter
from fedlora.errors import FedloraError
from fedlora.privacy.signing import AdapterSignature


# ---------------------------------------------------------------------------- errors
class RegistryError(FedloraError):
    """A registry operation cannot be done as asked (the message says why)."""


class NotFoundError(RegistryError, LookupError):
    """A run, round or adapter version does not exist."""


class RoundStateError(RegistryError):
    """A round is not in a state that allows the operation (e.g. publishing it twice)."""


class RegistryUnavailable(RegistryError):
    """The database or the blob store cannot be reached (readiness fails)."""


# ---------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class RoundMetrics:
    """Numbers describing one round, for the dashboard and for operators.

    ``participants``/``dropouts`` default to the number of client ids given to
    :class:`RoundPublication`; ``rank_mix`` maps a rank to how many phones trained at it;
    ``timings`` is the round-time breakdown in seconds by phase (e.g. ``configure``,
    ``train``, ``secagg``, ``aggregate``, ``publish``).
    """

    participants: int | None = None
    dropouts: int | None = None
    rank_mix: Mapping[int, int] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    loss: float | None = None
    perplexity: float | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    extra: Mapping[str, float | str] = field(default_factory=dict)


class LedgerLike(Protocol):
    """What :meth:`PrivacySnapshot.from_ledger` reads (``fedlora.privacy.dp.PrivacyLedger``)."""

    @property
    def epsilon(self) -> float: ...

    @property
    def delta(self) -> float: ...

    @property
    def records(self) -> Sequence[Any]: ...

    def to_json(self) -> str: ...


@dataclass(frozen=True)
class PrivacySnapshot:
    """The privacy ledger after a round: cumulative ε at δ, the round's mechanism, and the
    whole ledger as JSON (what a restarted server feeds to ``PrivacyLedger.from_json``)."""

    epsilon: float
    delta: float
    noise_mode: str
    noise_multiplier: float
    sampling_rate: float
    ledger_json: str
    clip_norm: float | None = None

    @classmethod
    def from_ledger(cls, ledger: LedgerLike, *, clip_norm: float | None = None) -> PrivacySnapshot:
        """Snapshot a ``PrivacyLedger`` (duck-typed, so the server need not import dp code)."""
        records = ledger.records
        last = records[-1] if records else None
        return cls(
            epsilon=float(ledger.epsilon),
            delta=float(ledger.delta),
            noise_mode=str(getattr(last, "noise_mode", "none")),
            noise_multiplier=float(getattr(last, "noise_multiplier", 0.0)),
            sampling_rate=float(getattr(last, "sampling_rate", 1.0)),
            ledger_json=ledger.to_json(),
            clip_norm=clip_norm,
        )


@dataclass(frozen=True)
class RoundPublication:
    """Everything a committed round consists of; published in one transaction.

    ``community`` is the round's community adapter (at ``r_max``); ``views`` maps a rank to
    the view phones of that rank download. ``participants``/``dropouts`` are client ids
    (e.g. Flower node ids); only salted hashes are stored. ``signatures`` is needed only when
    the registry has no signing key: pre-made signatures keyed by content hash.
    """

    community: LoraAdapter
    views: Mapping[int, LoraAdapter] = field(default_factory=dict)
    metrics: RoundMetrics = field(default_factory=RoundMetrics)
    privacy: PrivacySnapshot | None = None
    participants: Sequence[str | int] = ()
    dropouts: Sequence[str | int] = ()
    signatures: Mapping[str, AdapterSignature] = field(default_factory=dict)


# ---------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class RunInfo:
    id: int
    name: str
    status: str
    created_at: datetime
    config: dict[str, Any]
    rounds_committed: int = 0
    rounds_failed: int = 0
    latest_round: int | None = None


@dataclass(frozen=True)
class AdapterVersionInfo:
    """One published blob: the version id is what ``/v1/adapters/{version}`` takes."""

    id: int
    run_id: int
    round: int
    role: str
    rank: int
    content_hash: str
    size_bytes: int
    parent_id: int | None
    signature_json: str
    key_id: str
    metadata_json: str
    created_at: datetime

    @property
    def signature(self) -> AdapterSignature:
        return AdapterSignature.from_json(self.signature_json)

    @property
    def metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.metadata_json)
        return out


@dataclass(frozen=True)
class RoundInfo:
    run_id: int
    number: int
    attempt: int
    status: str
    started_at: datetime
    finished_at: datetime | None
    failure_reason: str | None
    participants: int
    dropouts: int
    rank_mix: dict[int, int]
    timings: dict[str, float]
    bytes_up: int
    bytes_down: int
    loss: float | None
    perplexity: float | None
    epsilon: float | None
    delta: float | None
    extra: dict[str, float | str]
    community_version_id: int | None = None
    view_ranks: tuple[int, ...] = ()

    @property
    def duration_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class CommittedRound:
    """The state a restarted round loop resumes from."""

    run_id: int
    round: RoundInfo
    community: AdapterVersionInfo
    views: dict[int, AdapterVersionInfo]
    ledger_json: str | None

    @property
    def number(self) -> int:
        """The committed round's number."""
        return self.round.number

    @property
    def community_version_id(self) -> int:
        """The community adapter's version id (:meth:`Registry.load_adapter` takes it)."""
        return self.community.id


@dataclass(frozen=True)
class FsckReport:
    """Result of checking every referenced blob and listing unreferenced files."""

    versions_checked: int
    missing: list[str]
    corrupt: list[str]
    unreferenced: list[str]
    temp_files: int

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt


def finite_or_none(x: float | None) -> float | None:
    """``None`` for NaN/±inf: JSON has no such numbers, and the dashboard skips them."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)
