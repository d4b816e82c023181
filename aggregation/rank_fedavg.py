"""Rank-matched FedAvg: average within rank groups, fuse groups slot by slot.

Each rank group ``g`` (the phones of rank ``r_g``) is averaged by ordinary FedAvg
(McMahan et al., 2017). The group means are then fused by zero-padding with per-slot
contributor weights — the rank-aware idea of raFLoRA / PreLort (2026): a rank slot is
averaged only over the phones that have it, so the many low-rank phones do not shrink the
high slots that only capable phones train (the "rank collapse" of plain zero-padding).

Fusing group means ``μ_g`` with weights ``W_g`` per slot ``k``::

    x[k] = Σ_{g: r_g > k} W_g μ_g[k] / Σ_{g: r_g > k} W_g = Σ_{i: r_i > k} wᵢ xᵢ[k] / T_k

so the rule needs only the weighted padded sum and the per-group weight totals: it is
**linear** (runs on secure sums). It averages factors, not products, so it is **not exact**.
Views are by truncation (nested slots).
"""

from __future__ import annotations

from .padded import PaddedFactorRule


class RankFedAvg(PaddedFactorRule):
    """Per-slot weighted mean of zero-padded A and B deltas (linear, not exact, nested)."""

    name = "rank_fedavg"
    exact = False
    per_slot = True
