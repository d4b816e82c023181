"""The aggregator interface and its result.

Shape borrowed from pfl-research: an aggregator is streaming — ``init_state()``, then
``accumulate(state, contribution)`` once per phone, then ``finalize(state)``. The state holds
one model's worth of memory (a sum, never a list of contributions), so a round of a thousand
phones costs what a round of ten does.

Guarantees every implementation keeps:

* ``accumulate`` validates the whole contribution before touching ``state``, so a rejected
  phone leaves the sum exactly as it was;
* ``finalize`` does not modify ``state`` and either returns a complete :class:`Aggregate` or
  raises — nothing half-aggregated is ever published.

Two declared properties tell the server what a rule can promise:

* ``linear`` — the result depends on the contributions only through their (weighted) sum,
  so the rule also runs on a secure-aggregation :class:`~fedlora.aggregation.ranked_sum.RankedSum`
  via ``accumulate_sum`` and gives the same answer as from per-phone inputs;
* ``exact`` — the community update preserves ``Σ wᵢ ΔWᵢ / Σ wᵢ``: the change of the
  community's ``ΔW = scaling · B @ A`` equals the weighted mean of the phones' changes
  (before any re-factoring to a publishable rank).

``nested`` says how rank views are made: by truncation (rank slots keep their meaning across
ranks) or by SVD re-factoring.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

import numpy as np

from fedlora.adapter import LoraAdapter, LoraPair

from .contribution import AggregationSpec, Contribution
from .errors import AggregationError, NotLinearError
from .ranked_sum import RankedSum

Space = Literal["factor", "dense"]
S = TypeVar("S")


@dataclass(frozen=True)
class Aggregate:
    """The fused update of one round: the pseudo-gradient the server optimizer consumes.

    ``space == "factor"``: ``tensors`` are padded factor deltas named like our safetensors
    files (``<module>.lora_A.weight`` at ``(r_max, d_in)``, ``<module>.lora_B.weight`` at
    ``(d_out, r_max)``), added factor-wise to the community adapter.

    ``space == "dense"``: ``tensors`` map ``<module>`` to a dense ``ΔW`` update
    ``(d_out, d_in)``, added to the community's dense ``ΔW`` and re-factored to
    ``publish_rank`` (``None``: the exact numerical rank).

    All arrays are float64.
    """

    rule: str
    space: Space
    tensors: Mapping[str, np.ndarray]
    spec: AggregationSpec
    num_contributions: int
    total_weight: float
    group_weights: Mapping[int, float]
    slot_weights: tuple[float, ...]
    linear: bool
    exact: bool
    nested: bool
    publish_rank: int | None = None

    def as_delta(self) -> LoraAdapter:
        """A factor-space aggregate as a delta adapter at ``r_max`` (float64)."""
        if self.space != "factor":
            raise AggregationError(f"rule {self.rule!r} aggregates dense ΔW, not factors")
        pairs = {
            m: LoraPair(
                A=np.asarray(self.tensors[f"{m}.lora_A.weight"]),
                B=np.asarray(self.tensors[f"{m}.lora_B.weight"]),
            )
            for m in self.spec.modules
        }
        meta = self.spec.metadata(self.spec.r_max, kind="delta").model_copy(
            update={"dtype": "float64"}
        )
        out = LoraAdapter(meta=meta, pairs=pairs)
        out.check_consistent()
        return out


class Aggregator(ABC, Generic[S]):
    """A streaming aggregation rule over rank-tagged contributions (see module docstring)."""

    #: config name (``fedlora.config.AggregationSettings.rule``)
    name: str = "?"
    linear: bool = False
    exact: bool = False
    nested: bool = True
    #: for non-linear rules: why a sum is not enough (shown when refusing secure aggregation)
    why_not_linear: str = ""

    def __init__(self, spec: AggregationSpec) -> None:
        self.spec = spec

    @abstractmethod
    def init_state(self) -> S:
        """A fresh, empty accumulator."""

    @abstractmethod
    def accumulate(self, state: S, contribution: Contribution) -> S:
        """Validate ``contribution`` and add it to ``state`` (in place; returns ``state``)."""

    def accumulate_sum(self, state: S, ranked_sum: RankedSum) -> S:
        """Add a pre-summed (secure-aggregation) :class:`RankedSum`; linear rules only."""
        raise NotLinearError(self.name, self.why_not_linear or "it needs each phone's update")

    @abstractmethod
    def finalize(self, state: S) -> Aggregate:
        """The round's :class:`Aggregate`; raises (and publishes nothing) if it cannot."""

    # ------------------------------------------------------------------ conveniences
    def aggregate(self, contributions: Iterable[Contribution]) -> Aggregate:
        """Stream ``contributions`` (any iterable, e.g. a generator) through the rule."""
        state = self.init_state()
        for c in contributions:
            state = self.accumulate(state, c)
        return self.finalize(state)

    def aggregate_sums(self, sums: Iterable[RankedSum]) -> Aggregate:
        """Aggregate one or more secure sums (e.g. one per SecAgg cohort)."""
        state = self.init_state()
        for s in sums:
            state = self.accumulate_sum(state, s)
        return self.finalize(state)
