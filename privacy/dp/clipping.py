"""L2 clipping of one phone's delta, per vector or per layer group, and adaptive clipping.

Clipping bounds what one phone can contribute (the L2 sensitivity the noise is calibrated
to). Per-group clipping (McMahan et al. 2018, "Learning Differentially Private Recurrent
Language Models", per-layer clipping) gives group g the bound ``C·sqrt(w_g)`` with
``Σ w_g = 1``, so the whole vector still has norm ≤ C.

Adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy 2021, "Differentially Private
Learning with Adaptive Clipping") tracks a target quantile γ of the phones' delta norms:
each phone reports the bit ``b = [‖Δ‖ ≤ C]``; the server sees only the noisy sum of the
centred bits and updates ``C ← C·exp(−η(b̄ − γ))``. Here the centred bit rides along as one
extra coordinate ``κ·(b − ½)`` of the phone's vector (κ from
:attr:`RoundContext.bit_scale`), so it is secure-aggregated and noised with the delta by one
draw; the server half strips it and updates the :class:`AdaptiveClipController`. The next
clip norm only affects the *next* round's context: this round's noise has already used this
round's C.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedlora.layout import FlatLayout

from .calibration import default_count_stddev
from .context import RoundContext
from .errors import PrivacyConfigError
from .pipeline import Metrics, check_float_vector

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


def l2_clip(vec: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """``vec`` scaled to L2 norm ≤ ``clip_norm``; returns ``(clipped, norm_before)``.

    A vector already within the bound is returned as is (not rescaled, not copied).
    """
    norm = float(np.linalg.norm(vec))
    if norm <= clip_norm:
        return vec, norm
    return vec * (clip_norm / norm), norm


def validate_groups(groups: Sequence[slice], dim: int) -> list[slice]:
    """Groups as plain slices that tile ``[0, dim)`` exactly (disjoint, no gaps)."""
    spans = sorted((g.indices(dim)[:2] for g in groups), key=lambda s: s[0])
    for g in groups:
        if g.step not in (None, 1):
            raise PrivacyConfigError(f"clip groups must be contiguous slices, got {g}")
    pos = 0
    for start, stop in spans:
        if start != pos or stop <= start:
            raise PrivacyConfigError(
                f"clip groups must tile [0, {dim}) without gaps or overlaps; problem at {pos}"
            )
        pos = stop
    if pos != dim:
        raise PrivacyConfigError(f"clip groups cover [0, {pos}) but the vector has {dim} entries")
    return [slice(a, b) for a, b in spans]


def group_clip(
    vec: np.ndarray,
    groups: Sequence[slice],
    clip_norm: float,
    weights: Sequence[float] | None = None,
) -> tuple[np.ndarray, list[float]]:
    """Clip each group g to ``clip_norm·sqrt(w_g)`` (equal weights by default).

    Returns the clipped vector (``vec`` itself if no group needed clipping) and each group's
    norm before clipping. ``Σ w_g = 1`` keeps the total norm ≤ ``clip_norm``.
    """
    tiles = validate_groups(groups, vec.shape[0])
    w = np.full(len(tiles), 1.0 / len(tiles)) if weights is None else np.asarray(weights, float)
    if w.shape != (len(tiles),) or np.any(w <= 0) or not math.isclose(float(w.sum()), 1.0):
        raise PrivacyConfigError(
            f"group weights must be {len(tiles)} positive numbers summing to 1, got {weights}"
        )
    out = vec
    norms: list[float] = []
    for tile, wg in zip(tiles, w, strict=True):
        bound = clip_norm * math.sqrt(float(wg))
        norm = float(np.linalg.norm(vec[tile]))
        norms.append(norm)
        if norm > bound:
            if out is vec:
                out = vec.copy()
            out[tile] = vec[tile] * (bound / norm)
    return out, norms


def layout_groups(layout: FlatLayout, by: str | Callable[[str], str] = "module") -> list[slice]:
    """Clip groups from a flat layout: consecutive tensors with the same key form a group.

    ``by="module"``: one group per LoRA module (its A and B); ``by="layer"``: one per
    transformer layer (``...layers.N...``); or a function of the tensor name.
    """
    if callable(by):
        key = by
    elif by == "module":

        def key(name: str) -> str:
            return name.rsplit(".lora_", 1)[0]
    elif by == "layer":

        def key(name: str) -> str:
            m = _LAYER.search(name)
            return f"layers.{m.group(1)}" if m else name.rsplit(".lora_", 1)[0]
    else:
        raise PrivacyConfigError(
            f"layout_groups: by must be 'module', 'layer' or a function, got {by!r}"
        )
    groups: list[slice] = []
    current: str | None = None
    start = 0
    for entry in layout.entries:
        k = key(entry.name)
        if k != current:
            if current is not None:
                groups.append(slice(start, entry.offset))
            current, start = k, entry.offset
    if current is not None:
        groups.append(slice(start, layout.size))
    return groups


@dataclass
class AdaptiveClipController:
    """Server-side state of adaptive clipping (Andrew et al. 2021): the clip norm to use next.

    ``count_stddev`` is σ_b, the noise on the count of unclipped phones; None uses
    :func:`~fedlora.privacy.dp.calibration.default_count_stddev` (``n/20``, at least z).
    """

    clip_norm: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (self.clip_norm > 0 and 0 < self.target_quantile < 1 and self.learning_rate > 0):
            raise PrivacyConfigError(
                "adaptive clipping needs clip_norm > 0, 0 < target_quantile < 1 and "
                f"learning_rate > 0; got {self.clip_norm}, {self.target_quantile}, "
                f"{self.learning_rate}"
            )

    def count_stddev_for(self, num_sampled: int, noise_multiplier: float) -> float:
        """σ_b for a round with ``num_sampled`` phones."""
        if self.count_stddev is not None:
            return self.count_stddev
        return default_count_stddev(num_sampled, noise_multiplier)

    def update(self, ctx: RoundContext, noisy_unclipped_count: float) -> float:
        """Geometric update from the round's noisy count; returns (and keeps) the next C.

        Uses ``ctx.clip_norm`` — the norm this round applied — as the base, so the state and
        the round can never disagree.
        """
        fraction = noisy_unclipped_count / ctx.contributors
        new = ctx.clip_norm * math.exp(-self.learning_rate * (fraction - self.target_quantile))
        self.history.append(
            {"round": float(ctx.round), "clip_norm": ctx.clip_norm, "unclipped_fraction": fraction}
        )
        self.clip_norm = float(new)
        return self.clip_norm

    def to_dict(self) -> dict[str, Any]:
        return {
            "clip_norm": self.clip_norm,
            "target_quantile": self.target_quantile,
            "learning_rate": self.learning_rate,
            "count_stddev": self.count_stddev,
            "history": list(self.history),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptiveClipController:
        return cls(
            clip_norm=float(data["clip_norm"]),
            target_quantile=float(data["target_quantile"]),
            learning_rate=float(data["learning_rate"]),
            count_stddev=None if data.get("count_stddev") is None else float(data["count_stddev"]),
            history=[dict(h) for h in data.get("history", [])],
        )


class ClipStep:
    """L2 clipping (whole vector or per group) plus the adaptive-clipping bit.

    Phone half: clip to ``ctx.clip_norm``; with ``ctx.adaptive_clipping`` append
    ``κ·(b − ½)`` with ``b = [‖Δ‖ ≤ C]``. Server half: strip that coordinate, turn it into
    the noisy unclipped count ``Σb + noise`` and hand it to the controller (if any).
    """

    name = "clip"

    def __init__(
        self,
        groups: Sequence[slice] | None = None,
        group_weights: Sequence[float] | None = None,
        controller: AdaptiveClipController | None = None,
    ) -> None:
        self.groups = list(groups) if groups else None
        self.group_weights = list(group_weights) if group_weights is not None else None
        self.controller = controller
        self.last_unclipped_fraction: float | None = None

    def postprocess_one_user(
        self, vec: np.ndarray, ctx: RoundContext
    ) -> tuple[np.ndarray, Metrics]:
        x = check_float_vector(vec, "clip")
        norm = float(np.linalg.norm(x))
        if self.groups is None:
            clipped, _ = l2_clip(x, ctx.clip_norm)
        else:
            clipped, _ = group_clip(x, self.groups, ctx.clip_norm, self.group_weights)
        metrics: Metrics = {"norm_before": norm, "clipped": float(clipped is not x)}
        if ctx.adaptive_clipping:
            bit = 1.0 if norm <= ctx.clip_norm else 0.0
            clipped = np.append(clipped, ctx.bit_scale * (bit - 0.5))
            metrics["unclipped_bit"] = bit
        return clipped, metrics

    def postprocess_server(self, aggregate: np.ndarray, ctx: RoundContext) -> np.ndarray:
        if not ctx.adaptive_clipping:
            return aggregate
        agg = check_float_vector(aggregate, "clip (server)")
        noisy_count = float(agg[-1]) / ctx.bit_scale + ctx.contributors / 2.0
        self.last_unclipped_fraction = noisy_count / ctx.contributors
        if self.controller is not None:
            self.controller.update(ctx, noisy_count)
        return agg[:-1]
