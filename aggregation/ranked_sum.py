"""``RankedSum``: what a linear rule needs from a round, and all the server sees under SecAgg.

Every phone of a linear rule encodes its contribution as one vector in the rule's fixed flat
layout — its rank slots zero-padded to ``r_max`` and already multiplied by its weight — with
its weight riding in a one-hot tail, one entry per rank group::

    [ w·pad(x) ........................ | 0 … w … 0 ]   (w sits at the phone's rank group)

The sum of such vectors over phones is a :class:`RankedSum`: the weighted payload sum and the
weight total of each rank group (from which the per-slot totals follow: slot ``k`` is held
by every group of rank > k). Summing per-phone encodings and accumulating phones one by one
give the same RankedSum, which is why linear rules give identical results from either.

The ``layout_digest`` names the payload layout (the rule's padded factor layout or its dense
layout) so that sums built for another rule, layout or rank set are refused, not mixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import AggregationError


@dataclass
class RankedSum:
    """Weighted sum of padded vectors plus per-rank-group weight totals.

    Mutable on purpose: it is also the streaming accumulator of linear rules, added to in
    place so memory stays one model's worth however many phones take part.
    """

    layout_digest: str
    ranks: tuple[int, ...]
    payload: np.ndarray
    group_weights: np.ndarray
    count: int = 0

    @classmethod
    def zeros(cls, layout_digest: str, ranks: tuple[int, ...], size: int) -> RankedSum:
        return cls(
            layout_digest=layout_digest,
            ranks=tuple(ranks),
            payload=np.zeros(size, dtype=np.float64),
            group_weights=np.zeros(len(ranks), dtype=np.float64),
            count=0,
        )

    @property
    def total_weight(self) -> float:
        return float(np.sum(self.group_weights))

    def weights_by_rank(self) -> dict[int, float]:
        return {r: float(w) for r, w in zip(self.ranks, self.group_weights, strict=True)}

    # ------------------------------------------------------------------ wire form
    def to_vector(self) -> np.ndarray:
        """``payload ++ group_weights``: the vector phones mask and the server unmasks."""
        return np.concatenate([self.payload, self.group_weights])

    @classmethod
    def from_vector(
        cls, vector: np.ndarray, *, layout_digest: str, ranks: tuple[int, ...], count: int
    ) -> RankedSum:
        """Inverse of :meth:`to_vector`; ``count`` is the number of phones summed."""
        vec = np.asarray(vector, dtype=np.float64)
        if vec.ndim != 1 or vec.shape[0] <= len(ranks):
            raise AggregationError(
                f"summed vector of shape {vec.shape} is too short for {len(ranks)} rank groups"
            )
        if count < 0:
            raise AggregationError(f"count must be >= 0, got {count}")
        k = len(ranks)
        return cls(
            layout_digest=layout_digest,
            ranks=tuple(ranks),
            payload=vec[:-k].copy(),
            group_weights=vec[-k:].copy(),
            count=int(count),
        )

    # ------------------------------------------------------------------ arithmetic
    def check_compatible(self, other: RankedSum) -> None:
        """Raise unless ``other`` can be added to ``self`` (same layout, ranks and size)."""
        if other.layout_digest != self.layout_digest:
            raise AggregationError(
                f"sum has layout {other.layout_digest!r}, expected {self.layout_digest!r} "
                "(built for another rule or adapter layout?)"
            )
        if tuple(other.ranks) != tuple(self.ranks):
            raise AggregationError(
                f"sum has rank groups {list(other.ranks)}, expected {list(self.ranks)}"
            )
        if other.payload.shape != self.payload.shape:
            raise AggregationError(
                f"sum payload has shape {other.payload.shape}, expected {self.payload.shape}"
            )
        if other.group_weights.shape != self.group_weights.shape:
            raise AggregationError(
                f"sum has {other.group_weights.shape} group weights, expected "
                f"{self.group_weights.shape}"
            )
        if not np.all(np.isfinite(other.payload)):
            bad = int(other.payload.size - np.count_nonzero(np.isfinite(other.payload)))
            raise AggregationError(f"sum payload has {bad} non-finite values (NaN or inf)")
        if not np.all(np.isfinite(other.group_weights)):
            raise AggregationError("sum group weights have non-finite values (NaN or inf)")
        if other.count < 0:
            raise AggregationError(f"sum count must be >= 0, got {other.count}")

    def add_(self, other: RankedSum) -> RankedSum:
        """In-place ``self += other`` after checking compatibility (nothing changes on error)."""
        self.check_compatible(other)
        self.payload += other.payload
        self.group_weights += other.group_weights
        self.count += other.count
        return self

    def copy(self) -> RankedSum:
        return RankedSum(
            layout_digest=self.layout_digest,
            ranks=self.ranks,
            payload=self.payload.copy(),
            group_weights=self.group_weights.copy(),
            count=self.count,
        )
