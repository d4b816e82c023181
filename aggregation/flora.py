"""FLoRA: stack the phones' LoRA modules — exact, but needs each phone's factors.

Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous Low-Rank
Adaptations", NeurIPS 2024. Instead of averaging factors (which mixes ``BᵢAⱼ`` cross terms),
the server *stacks* them: ``B = [w₁B₁ | … | wₙBₙ]``, ``A = [A₁; …; Aₙ]`` so ``B A = Σ wᵢ BᵢAᵢ``
exactly, whatever the ranks. The stacked module has rank ``Σ rᵢ``.

With deltas, phone ``i``'s change is stacked as the rank-``2rᵢ`` pair
``[B | dB] @ [dA ; A + dA]`` (:func:`~fedlora.aggregation.dense.increment_factors`), from the
view ``(B, A)`` it trained from. Streaming: the stack lives in a fixed buffer per module of
``min(d_in, d_out)`` columns; a stack that would grow past that rank carries no more
information than its dense product, so it is then folded, once and exactly, into a dense
``d_out × d_in`` sum that later phones add their products to. Memory is bounded by the
model's size, not the number of phones, and no SVD runs while phones stream in. The
aggregate is the dense mean change (**exact**); the community is published at its exact
numerical rank.

**Not linear**: a secure sum overlays all phones' factors in the same slots, and a stack
needs them side by side — the very individual contributions secure aggregation hides. The
rule refuses sums (:class:`~fedlora.aggregation.errors.NotLinearError`); in a federated round
each phone uploads its own delta instead (secure aggregation off, noise ``none`` or
``local``; docs/aggregation.md, "Rules that need each phone").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedlora.adapter import LoraAdapter

from .base import Aggregate, Aggregator
from .contribution import AggregationSpec, Contribution, validate_contribution
from .dense import check_views, increment_factors
from .errors import AggregationError, ContributionError


@dataclass
class StackState:
    """Per module a stacked ``B (d_out, cap)`` / ``A (cap, d_in)`` with its fill, or — once a
    module's stack outgrew ``cap = min(d_in, d_out)`` — its dense sum ``B A`` instead."""

    B: dict[str, np.ndarray]
    A: dict[str, np.ndarray]
    fill: dict[str, int]
    dense: dict[str, np.ndarray]
    group_weights: np.ndarray
    count: int = 0

    def product(self, module: str) -> np.ndarray:
        """``Σ wᵢ sᵢ Δᵢ`` of one module (the stack's product, or the dense sum)."""
        if module in self.dense:
            return self.dense[module].copy()
        f = self.fill[module]
        return self.B[module][:, :f] @ self.A[module][:f]


class FLoRA(Aggregator[StackState]):
    """Stacking of per-phone changes (exact, not linear, SVD views)."""

    name = "flora"
    linear = False
    exact = True
    nested = False
    why_not_linear = (
        "stacking places each phone's factors side by side (rank Σ rᵢ), but a sum of phones' "
        "vectors overlays them in the same slots and cannot be unstacked — stacking needs the "
        "individual contributions that secure aggregation exists to hide; use flexlora "
        "(dense upload) or ffa for an exact rule that runs on secure sums"
    )

    def __init__(
        self, spec: AggregationSpec, starting_views: Mapping[int, LoraAdapter] | None
    ) -> None:
        super().__init__(spec)
        self.views = check_views(spec, starting_views, self.name)

    def _capacity(self, module: str) -> int:
        d_in, d_out = self.spec.linear_shapes[module]
        return min(d_in, d_out)

    def init_state(self) -> StackState:
        B: dict[str, np.ndarray] = {}
        A: dict[str, np.ndarray] = {}
        for m in self.spec.modules:
            d_in, d_out = self.spec.linear_shapes[m]
            cap = self._capacity(m)
            B[m] = np.zeros((d_out, cap))
            A[m] = np.zeros((cap, d_in))
        return StackState(
            B=B,
            A=A,
            fill=dict.fromkeys(self.spec.modules, 0),
            dense={},
            group_weights=np.zeros(len(self.spec.ranks)),
        )

    def accumulate(self, state: StackState, contribution: Contribution) -> StackState:
        if not isinstance(state, StackState) or set(state.B) != set(self.spec.modules):
            raise AggregationError("flora: state was not made by this rule's init_state()")
        c = contribution
        rank = validate_contribution(self.spec, c)
        if rank not in self.views:
            raise ContributionError(c.client_id, "<rank>", f"no starting view for rank {rank}")
        w = float(c.weight)
        view = self.views[rank]
        # compute every module's stack entry first: nothing below can fail half-way
        entries = {}
        if w > 0:
            for m, pair in c.delta:
                bs, as_ = increment_factors(view.pairs[m], pair)
                entries[m] = ((w * self.spec.scalings[m]) * bs, as_)
        for m, (bs, as_) in entries.items():
            if m in state.dense:
                state.dense[m] += bs @ as_
                continue
            k = bs.shape[1]
            f = state.fill[m]
            if f + k > state.B[m].shape[1]:
                # the stack would outgrow min(d_in, d_out): fold it into its dense product
                state.dense[m] = state.B[m][:, :f] @ state.A[m][:f] + bs @ as_
                state.B[m] = np.zeros((state.B[m].shape[0], 0))
                state.A[m] = np.zeros((0, state.A[m].shape[1]))
                state.fill[m] = 0
                continue
            state.B[m][:, f : f + k] = bs
            state.A[m][f : f + k] = as_
            state.fill[m] = f + k
        state.group_weights[self.spec.group_index(rank)] += w
        state.count += 1
        return state

    def finalize(self, state: StackState) -> Aggregate:
        if state.count == 0:
            raise AggregationError("flora: no contributions to aggregate")
        total = float(np.sum(state.group_weights))
        if not (math.isfinite(total) and total > 0):
            raise AggregationError(
                f"flora: total weight of the {state.count} contributions is {total}; it must be > 0"
            )
        tensors: dict[str, np.ndarray] = {}
        for m in self.spec.modules:
            tensors[m] = state.product(m) / total
            if not np.all(np.isfinite(tensors[m])):
                raise AggregationError(f"flora: aggregated tensor {m!r} is not finite")
        return Aggregate(
            rule=self.name,
            space="dense",
            tensors=tensors,
            spec=self.spec,
            num_contributions=state.count,
            total_weight=total,
            group_weights={
                r: float(w) for r, w in zip(self.spec.ranks, state.group_weights, strict=True)
            },
            slot_weights=tuple(self.spec.slot_weights(list(state.group_weights))),
            linear=False,
            exact=True,
            nested=False,
            publish_rank=None,
        )
