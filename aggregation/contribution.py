"""What a phone contributes to a round, and what the round expects of it.

A :class:`Contribution` is a *delta* (``LoraAdapter`` with ``meta.kind == "delta"``,
factor-wise ``after − before``) at the phone's rank, tagged with a weight (usually its
example count). An :class:`AggregationSpec` fixes what every contribution of a round must
agree on: the base model, the adapted modules and their shapes, the per-module scaling
``alpha / r`` (constant across ranks, so zero-padded rank slots line up) and the allowed
ranks (the rank groups). :func:`validate_contribution` checks one against the other before
anything is added to an accumulator, so a bad phone never half-enters a sum.

A phone trains all its modules at one rank (its capability class): a contribution's rank is
that single rank, and a delta with mixed per-module ranks is rejected.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

from fedlora.adapter import AdapterMetadata, LoraAdapter, natural_key
from fedlora.errors import AdapterValidationError
from fedlora.layout import FlatLayout

from .errors import AggregationError, ContributionError

#: Relative tolerance when comparing a contribution's ``alpha / r`` with the round's.
SCALING_RTOL = 1e-6


@dataclass(frozen=True)
class Contribution:
    """One phone's update: a delta at its rank, its weight and (optionally) its norm.

    ``norm`` is only read by norm-weighted rules (HetLoRA). The phone can set it to the
    Frobenius norm of its trained ``ΔW`` (:func:`fedlora.aggregation.hetlora.adapter_norm`);
    when absent, those rules use the L2 norm of the delta's factors.
    """

    delta: LoraAdapter
    weight: float = 1.0
    client_id: str = "?"
    norm: float | None = None

    @property
    def rank(self) -> int:
        """The phone's rank (the largest module rank; validation insists they are equal)."""
        return self.delta.max_rank


@dataclass(frozen=True)
class AggregationSpec:
    """What every contribution of a round must agree on.

    ``linear_shapes`` maps module path → ``(d_in, d_out)``; ``scalings`` maps module path →
    ``alpha / r``; ``ranks`` are the allowed ranks (rank groups), sorted ascending. The
    padded layout of the round is every module at ``r_max = max(ranks)``.
    """

    base_fingerprint: str
    linear_shapes: Mapping[str, tuple[int, int]]
    scalings: Mapping[str, float]
    ranks: tuple[int, ...]
    dtype: str = "float32"
    _modules: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.linear_shapes:
            raise AggregationError("aggregation spec needs at least one LoRA module")
        if set(self.scalings) != set(self.linear_shapes):
            odd = sorted(set(self.scalings) ^ set(self.linear_shapes))
            raise AdapterValidationError(odd[0], "scalings and shapes name different modules")
        ranks = tuple(int(r) for r in self.ranks)
        if not ranks or any(r < 1 for r in ranks) or len(set(ranks)) != len(ranks):
            raise AggregationError(f"ranks must be distinct positive integers, got {self.ranks}")
        for module, s in self.scalings.items():
            if not (math.isfinite(s) and s > 0):
                raise AdapterValidationError(module, f"scaling alpha/r must be > 0, got {s}")
        object.__setattr__(self, "ranks", tuple(sorted(ranks)))
        object.__setattr__(self, "_modules", tuple(sorted(self.linear_shapes, key=natural_key)))

    @classmethod
    def from_adapter(
        cls, adapter: LoraAdapter, ranks: tuple[int, ...] | list[int]
    ) -> AggregationSpec:
        """The spec of a round whose community adapter is ``adapter`` and rank groups ``ranks``."""
        shapes = {m: (p.in_features, p.out_features) for m, p in adapter}
        scalings = {m: adapter.meta.scaling(m) for m in adapter.modules}
        return cls(
            base_fingerprint=adapter.meta.base_fingerprint,
            linear_shapes=shapes,
            scalings=scalings,
            ranks=tuple(ranks),
            dtype=adapter.meta.dtype,
        )

    @property
    def modules(self) -> tuple[str, ...]:
        return self._modules

    @property
    def r_max(self) -> int:
        return self.ranks[-1]

    @cached_property
    def factor_layout(self) -> FlatLayout:
        """The round's flat layout: every module's factors zero-padded to ``r_max``."""
        return FlatLayout.for_ranks(self.linear_shapes, {m: self.r_max for m in self.modules})

    def rank_layout(self, rank: int) -> FlatLayout:
        """The flat layout of one phone's own delta at ``rank`` (no padding): modules in
        natural order, ``lora_A (rank, d_in)`` then ``lora_B (d_out, rank)``, row-major —
        what a phone uploads for a rule that needs each phone's factors (FLoRA)."""
        if rank not in self.ranks:
            raise AggregationError(
                f"rank {rank} is not one of the round's ranks {list(self.ranks)}"
            )
        return FlatLayout.for_ranks(self.linear_shapes, {m: rank for m in self.modules})

    def delta_from_vector(self, vector: np.ndarray, rank: int) -> LoraAdapter:
        """A phone's delta at ``rank`` from its :meth:`rank_layout` vector (float64)."""
        layout = self.rank_layout(rank)
        return layout.unflatten(
            np.asarray(vector, dtype=np.float64), self.metadata(rank, kind="delta")
        )

    def group_index(self, rank: int) -> int:
        """Index of ``rank`` among the rank groups (raises for an unknown rank)."""
        try:
            return self.ranks.index(rank)
        except ValueError:
            raise AggregationError(
                f"rank {rank} is not one of the round's ranks {list(self.ranks)}"
            ) from None

    def slot_weights(self, group_weights: Mapping[int, float] | list[float]) -> list[float]:
        """Per-slot weight totals: slot ``k`` is held by every group with rank > k."""
        w = (
            [float(group_weights.get(r, 0.0)) for r in self.ranks]
            if isinstance(group_weights, Mapping)
            else [float(x) for x in group_weights]
        )
        return [
            sum(wg for r, wg in zip(self.ranks, w, strict=True) if r > k) for k in range(self.r_max)
        ]

    def metadata(
        self, rank: int, *, kind: Literal["adapter", "delta"] = "adapter"
    ) -> AdapterMetadata:
        """Metadata of an adapter at ``rank`` in this spec (alpha = scaling · rank)."""
        return AdapterMetadata(
            base_fingerprint=self.base_fingerprint,
            target_modules=tuple(sorted({m.rsplit(".", 1)[-1] for m in self.modules})),
            ranks={m: rank for m in self.modules},
            alphas={m: self.scalings[m] * rank for m in self.modules},
            dtype=self.dtype,
            kind=kind,
        )


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def validate_contribution(spec: AggregationSpec, c: Contribution) -> int:
    """Check ``c`` against ``spec``; return its rank or raise :class:`ContributionError`.

    Checks: weight (finite, ≥ 0), optional norm, kind is ``delta``, base fingerprint,
    module set, shapes, finite values and dtypes, one rank across modules, rank is one of
    the round's ranks, and ``alpha / r`` equal to the round's (else padded slots would not
    mean the same thing across phones).
    """
    cid = c.client_id
    if not isinstance(c.delta, LoraAdapter):
        raise ContributionError(cid, "<delta>", f"must be a LoraAdapter, got {type(c.delta)}")
    if not (_is_number(c.weight) and math.isfinite(c.weight) and c.weight >= 0):
        raise ContributionError(
            cid, "<weight>", f"weight must be finite and >= 0, got {c.weight!r}"
        )
    if c.norm is not None and not (_is_number(c.norm) and math.isfinite(c.norm) and c.norm >= 0):
        raise ContributionError(cid, "<norm>", f"norm must be finite and >= 0, got {c.norm!r}")
    meta = c.delta.meta
    if meta.kind != "delta":
        raise ContributionError(
            cid, "<meta>", f"expected a delta (after − before), got kind={meta.kind!r}"
        )
    if meta.base_fingerprint != spec.base_fingerprint:
        raise ContributionError(
            cid,
            "<meta>",
            f"made for base model {meta.base_fingerprint!r}, the round's base is "
            f"{spec.base_fingerprint!r}",
        )
    mods = set(c.delta.pairs)
    if mods != set(spec.modules):
        missing = sorted(set(spec.modules) - mods, key=natural_key)
        extra = sorted(mods - set(spec.modules), key=natural_key)
        if missing:
            raise ContributionError(cid, missing[0], "missing: the round's layout has this module")
        raise ContributionError(cid, extra[0], "not part of the round's layout")
    try:
        c.delta.check_consistent()
    except AdapterValidationError as exc:
        raise ContributionError(cid, exc.tensor, exc.reason) from None
    rank = c.delta.max_rank
    for module, pair in c.delta:
        d_in, d_out = spec.linear_shapes[module]
        if pair.in_features != d_in:
            raise ContributionError(
                cid,
                f"{module}.lora_A.weight",
                f"expects {d_in} input features, has {pair.in_features}",
            )
        if pair.out_features != d_out:
            raise ContributionError(
                cid,
                f"{module}.lora_B.weight",
                f"expects {d_out} output features, has {pair.out_features}",
            )
        if pair.rank != rank:
            raise ContributionError(
                cid, module, f"rank {pair.rank} differs from the phone's rank {rank} elsewhere"
            )
        s, want = meta.scaling(module), spec.scalings[module]
        if abs(s - want) > SCALING_RTOL * abs(want):
            raise ContributionError(
                cid,
                module,
                f"scaling alpha/r = {s} but the round uses {want} (keep alpha/r constant)",
            )
    if rank not in spec.ranks:
        raise ContributionError(
            cid, "<rank>", f"rank {rank} is not one of the round's ranks {list(spec.ranks)}"
        )
    return rank
