"""Per-rank redistribution: one view of the community adapter for each rank group.

Nested rules (rank slots mean the same at every rank: rank-matched FedAvg, HetLoRA, FFA,
FedSA) give a rank-``r`` phone the first ``r`` slots (:func:`fedlora.ranks.truncate_to_rank`).
Product rules (FlexLoRA, FLoRA) give it the best rank-``r`` approximation
(:func:`fedlora.ranks.refactor_to_rank`, Eckart–Young). A view at a rank at or above the
community's is exact (zero-padding). Every view carries its relative approximation error
``‖ΔW − ΔW_view‖ / ‖ΔW‖`` (:func:`fedlora.ranks.view_error`), so the server can report what a
low-rank phone is missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fedlora.adapter import LoraAdapter
from fedlora.ranks import pad_to_rank, refactor_to_rank, truncate_to_rank, view_error

from .errors import AggregationError

ViewMethod = Literal["same", "pad", "truncate", "svd"]


@dataclass(frozen=True)
class RankView:
    """The adapter a rank-``rank`` phone receives, how it was made, and its error."""

    rank: int
    adapter: LoraAdapter
    error: float
    method: ViewMethod


def rank_view(community: LoraAdapter, rank: int, *, nested: bool) -> RankView:
    """One view of ``community`` at ``rank`` (see module docstring for the method)."""
    ranks = set(community.meta.ranks.values())
    if len(ranks) != 1:
        raise AggregationError(f"community adapter has mixed module ranks {sorted(ranks)}")
    current = ranks.pop()
    method: ViewMethod
    if rank == current:
        view, method = community, "same"
    elif rank > current:
        view, method = pad_to_rank(community, rank), "pad"
    elif nested:
        view, method = truncate_to_rank(community, rank), "truncate"
    else:
        view, method = refactor_to_rank(community, rank), "svd"
    error = 0.0 if method in ("same", "pad") else view_error(community, view)
    return RankView(rank=rank, adapter=view, error=error, method=method)


def redistribute(
    community: LoraAdapter, ranks: Iterable[int], *, nested: bool
) -> dict[int, RankView]:
    """A :class:`RankView` for every rank in ``ranks`` (ascending)."""
    return {r: rank_view(community, r, nested=nested) for r in sorted(set(ranks))}
