"""Shared machinery of linear rules: encode on the phone, sum anywhere, normalize on the server.

A linear rule is two halves (the pfl-research postprocessor shape):

* phone half — :meth:`LinearAggregator.encode` turns a contribution into a one-phone
  :class:`~fedlora.aggregation.ranked_sum.RankedSum`: the rule's weight ``wᵢ`` times the
  contribution scattered into the rule's padded layout, plus ``wᵢ`` at its rank group.
  :meth:`~LinearAggregator.encode_vector` gives the flat vector to clip, noise and mask.
* server half — :meth:`LinearAggregator.finalize` normalizes the summed payload by the
  weight totals (per slot or overall, as the rule says).

``accumulate`` (one phone) and ``accumulate_sum`` (a pre-summed RankedSum) both add into the
same RankedSum accumulator, so the two paths give the same result up to float rounding.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np

from .base import Aggregate, Aggregator, Space
from .contribution import Contribution, validate_contribution
from .errors import AggregationError, ContributionError
from .ranked_sum import RankedSum


class LinearAggregator(Aggregator[RankedSum]):
    """Base of rules whose result depends on contributions only through a weighted sum."""

    linear = True
    space: Space = "factor"

    # ------------------------------------------------------------------ rule-specific
    @property
    @abstractmethod
    def layout_digest(self) -> str:
        """Names the payload layout (rule + shapes) so foreign sums are refused."""

    @property
    @abstractmethod
    def payload_size(self) -> int:
        """Length of the payload vector (the rank-group tail comes on top)."""

    @abstractmethod
    def scatter(self, target: np.ndarray, c: Contribution, scale: float) -> None:
        """Add ``scale ·`` (this rule's encoding of a *validated* ``c``) into ``target``."""

    @abstractmethod
    def normalize(self, state: RankedSum) -> dict[str, np.ndarray]:
        """The aggregate's tensors from a summed state with positive total weight."""

    def check(self, c: Contribution) -> int:
        """Validate ``c`` (rules add their own checks); return its rank."""
        return validate_contribution(self.spec, c)

    def client_weight(self, c: Contribution) -> float:
        """The weight ``wᵢ`` the phone multiplies its vector by (default: ``c.weight``)."""
        return float(c.weight)

    @property
    def publish_rank(self) -> int | None:
        return None

    # ------------------------------------------------------------------ phone half
    def encode(self, c: Contribution) -> RankedSum:
        """One phone's RankedSum (``count == 1``): what it would add to the secure sum."""
        out = self.init_state()
        self.accumulate(out, c)
        return out

    def encode_vector(self, c: Contribution) -> np.ndarray:
        """One phone's flat vector ``w·pad(x) ++ w·onehot(rank group)`` for SecAgg."""
        return self.encode(c).to_vector()

    def sum_from_vector(self, vector: np.ndarray, count: int) -> RankedSum:
        """The server's RankedSum from an unmasked (dequantized) sum of ``count`` vectors."""
        rs = RankedSum.from_vector(
            vector, layout_digest=self.layout_digest, ranks=self.spec.ranks, count=count
        )
        self.init_state().check_compatible(rs)
        return rs

    # ------------------------------------------------------------------ streaming
    def init_state(self) -> RankedSum:
        return RankedSum.zeros(self.layout_digest, self.spec.ranks, self.payload_size)

    def _check_state(self, state: RankedSum) -> None:
        if not isinstance(state, RankedSum):
            raise AggregationError(f"{self.name}: state must be a RankedSum, got {type(state)}")
        if (
            state.layout_digest != self.layout_digest
            or tuple(state.ranks) != self.spec.ranks
            or state.payload.shape != (self.payload_size,)
        ):
            raise AggregationError(f"{self.name}: state was not made by this rule's init_state()")

    def accumulate(self, state: RankedSum, contribution: Contribution) -> RankedSum:
        self._check_state(state)
        rank = self.check(contribution)
        w = self.client_weight(contribution)
        if not (math.isfinite(w) and w >= 0):
            raise ContributionError(
                contribution.client_id,
                "<weight>",
                f"{self.name} weight must be finite and >= 0, got {w}",
            )
        # everything is validated: from here on nothing can fail half-way
        if w > 0:
            self.scatter(state.payload, contribution, w)
        state.group_weights[self.spec.group_index(rank)] += w
        state.count += 1
        return state

    def accumulate_sum(self, state: RankedSum, ranked_sum: RankedSum) -> RankedSum:
        self._check_state(state)
        return state.add_(ranked_sum)

    def finalize(self, state: RankedSum) -> Aggregate:
        self._check_state(state)
        if state.count == 0:
            raise AggregationError(f"{self.name}: no contributions to aggregate")
        total = state.total_weight
        if not (math.isfinite(total) and total > 0):
            raise AggregationError(
                f"{self.name}: total weight of the {state.count} contributions is {total}; "
                "it must be > 0 (all weights zero?)"
            )
        if not np.all(np.isfinite(state.payload)):
            raise AggregationError(f"{self.name}: the summed payload has non-finite values")
        tensors = self.normalize(state)
        for name, t in tensors.items():
            if not np.all(np.isfinite(t)):
                raise AggregationError(f"{self.name}: aggregated tensor {name!r} is not finite")
        return Aggregate(
            rule=self.name,
            space=self.space,
            tensors=tensors,
            spec=self.spec,
            num_contributions=state.count,
            total_weight=total,
            group_weights=state.weights_by_rank(),
            slot_weights=tuple(self.spec.slot_weights(list(state.group_weights))),
            linear=self.linear,
            exact=self.exact,
            nested=self.nested,
            publish_rank=self.publish_rank,
        )
