"""What a phone adds to the secure sum: its payload plus metadata *as coordinates*.

No per-phone plaintext metadata travels in any message: the example count (weight) and the
phone's rank ride inside the masked vector as extra coordinates, so the server learns only
their sums. For ranks ``R = (r_1 … r_m)`` allowed in the round, the vector is

    [ payload (r_max-padded flat LoRA delta, quantized) | count_r1…count_rm | weight_r1…weight_rm ]

with ``count_r = 1`` and ``weight_r = w`` at the phone's own rank and 0 elsewhere. The sum
then gives, per rank group, the number of contributors and their total weight — exactly
what rank-aware aggregation needs (which rank slots got how much weight) — and the total
contributor count, which the server cross-checks against the number of survivors.

Heterogeneous ranks share *one* session: every phone's payload uses the layout at
``r_max`` (zero-padded, :func:`fedlora.ranks.pad_to_rank`), so every rank group's
contribution is hidden inside the same sum, no rank group needs its own ``min_clients``,
and the neighbourhood graph is as large as the round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import SecAggIntegrityError
from .fixedpoint import as_int64


@dataclass(frozen=True)
class ContributionLayout:
    """Payload length plus one count and one weight coordinate per allowed rank."""

    payload_len: int
    ranks: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.payload_len < 1:
            raise ValueError("payload_len must be ≥ 1")
        if not self.ranks or len(set(self.ranks)) != len(self.ranks) or min(self.ranks) < 1:
            raise ValueError(f"ranks must be distinct positive integers, got {self.ranks}")

    @property
    def metadata_len(self) -> int:
        return 2 * len(self.ranks)

    @property
    def size(self) -> int:
        return self.payload_len + self.metadata_len

    def coordinate_bound(self, payload_bound: int, max_weight: int) -> int:
        """``B`` for the whole vector: payload values and metadata (count 1, weight ≤ w)."""
        return max(payload_bound, max_weight, 1)

    def pack(self, payload: np.ndarray, *, rank: int, weight: int) -> np.ndarray:
        """One phone's int64 vector: payload ‖ one-hot count ‖ one-hot weight."""
        x = as_int64(payload)
        if x.shape[0] != self.payload_len:
            raise ValueError(f"payload has {x.shape[0]} values, layout expects {self.payload_len}")
        if rank not in self.ranks:
            raise ValueError(f"rank {rank} is not one of the round's ranks {self.ranks}")
        if weight < 0:
            raise ValueError(f"weight must be ≥ 0, got {weight}")
        out = np.zeros(self.size, dtype=np.int64)
        out[: self.payload_len] = x
        slot = self.ranks.index(rank)
        out[self.payload_len + slot] = 1
        out[self.payload_len + len(self.ranks) + slot] = weight
        return out

    def unpack(self, total: np.ndarray, *, expected_contributors: int | None = None) -> SecureSum:
        """The summed vector → payload sum + per-rank counts and weights."""
        s = as_int64(total)
        if s.shape[0] != self.size:
            raise ValueError(f"sum has {s.shape[0]} values, layout expects {self.size}")
        m = len(self.ranks)
        counts = s[self.payload_len : self.payload_len + m]
        weights = s[self.payload_len + m :]
        result = SecureSum(
            payload=s[: self.payload_len].copy(),
            counts={r: int(c) for r, c in zip(self.ranks, counts, strict=True)},
            weights={r: int(w) for r, w in zip(self.ranks, weights, strict=True)},
        )
        if min(result.counts.values()) < 0 or min(result.weights.values()) < 0:
            raise SecAggIntegrityError(f"negative count/weight in the secure sum: {result.counts}")
        if expected_contributors is not None and result.num_contributors != expected_contributors:
            raise SecAggIntegrityError(
                f"the sum's count coordinates add up to {result.num_contributors}, but "
                f"{expected_contributors} phones survived: some phone sent a malformed vector"
            )
        return result


@dataclass(frozen=True)
class SecureSum:
    """The unmasked sum, split back into payload and per-rank metadata."""

    payload: np.ndarray
    counts: dict[int, int]
    weights: dict[int, int]

    @property
    def num_contributors(self) -> int:
        return sum(self.counts.values())

    @property
    def total_weight(self) -> int:
        return sum(self.weights.values())

    def weight_at_least(self, rank_slot: int) -> int:
        """Total weight of the phones whose rank covers ``rank_slot`` (0-based): the
        normaliser of that slot in a rank-padded average."""
        return sum(w for r, w in self.weights.items() if r > rank_slot)


def ranks_tuple(ranks: Sequence[int]) -> tuple[int, ...]:
    """Canonical (sorted, distinct) rank tuple."""
    return tuple(sorted({int(r) for r in ranks}))
