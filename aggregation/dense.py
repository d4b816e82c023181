"""Dense ΔW helpers for the product rules (FlexLoRA, FLoRA).

A phone trains from the view it was sent (``V = (B, A)`` at its rank) and uploads a factor
delta ``(dB, dA)``. Its change of ``ΔW`` is

    Δᵢ = s · [(B + dB)(A + dA) − B A] = s · [B dA + dB (A + dA)]

which is *not* linear in the delta (``dB dA``) and needs the view — so the server either
computes it per phone (FlexLoRA, FLoRA: not linear) or the phone computes and uploads it
(FlexLoRA's dense-upload variant: linear, its secure sum lives in the :class:`DenseLayout`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np

from fedlora.adapter import LoraAdapter, LoraPair, natural_key

from .contribution import SCALING_RTOL, AggregationSpec
from .errors import AggregationError


class DenseLayout:
    """One ``(d_out, d_in)`` block per module, natural module order, row-major."""

    def __init__(self, linear_shapes: Mapping[str, tuple[int, int]]) -> None:
        self.modules = tuple(sorted(linear_shapes, key=natural_key))
        self.shapes = {m: (linear_shapes[m][1], linear_shapes[m][0]) for m in self.modules}
        self.offsets: dict[str, int] = {}
        off = 0
        for m in self.modules:
            self.offsets[m] = off
            off += self.shapes[m][0] * self.shapes[m][1]
        self.size = off

    def to_json(self) -> str:
        return json.dumps([[m, list(self.shapes[m])] for m in self.modules], separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def block(self, vector: np.ndarray, module: str) -> np.ndarray:
        """The view of ``module``'s ``(d_out, d_in)`` block inside ``vector``."""
        d_out, d_in = self.shapes[module]
        off = self.offsets[module]
        return vector[off : off + d_out * d_in].reshape(d_out, d_in)


def increment_factors(view: LoraPair, delta: LoraPair) -> tuple[np.ndarray, np.ndarray]:
    """Factors ``(Bₛ, Aₛ)`` with ``Bₛ Aₛ = (B + dB)(A + dA) − B A`` (rank ``2r``, float64).

    ``[B | dB] @ [dA ; A + dA] = B dA + dB A + dB dA``: the phone's change as a stackable pair.
    """
    b = view.B.astype(np.float64)
    a = view.A.astype(np.float64)
    db = delta.B.astype(np.float64)
    da = delta.A.astype(np.float64)
    return np.concatenate([b, db], axis=1), np.concatenate([da, a + da], axis=0)


def dense_increment(view: LoraPair, delta: LoraPair, scaling: float) -> np.ndarray:
    """The phone's dense change ``s · [(B + dB)(A + dA) − B A]`` of one module (float64)."""
    b = view.B.astype(np.float64)
    a = view.A.astype(np.float64)
    db = delta.B.astype(np.float64)
    da = delta.A.astype(np.float64)
    return scaling * (b @ da + db @ (a + da))


def check_views(
    spec: AggregationSpec, views: Mapping[int, LoraAdapter] | None, rule: str
) -> dict[int, LoraAdapter]:
    """The starting view of every rank group, checked against ``spec``.

    Product rules need the exact adapters the phones trained from (what the server sent
    them last round), keyed by rank. The server passes one per rank group; a phone encoding
    its own dense upload passes just its own. A contribution whose rank has no view is
    refused when it arrives.
    """
    if not views:
        raise AggregationError(
            f"{rule} needs the starting views (the adapters phones trained from), by rank"
        )
    out: dict[int, LoraAdapter] = {}
    for r, v in views.items():
        if r not in spec.ranks:
            raise AggregationError(
                f"{rule}: starting view for rank {r}, which is not one of {list(spec.ranks)}"
            )
        if set(v.pairs) != set(spec.modules):
            odd = sorted(set(v.pairs) ^ set(spec.modules), key=natural_key)
            raise AggregationError(
                f"{rule}: starting view of rank {r} differs at module {odd[0]!r}"
            )
        for m, p in v:
            d_in, d_out = spec.linear_shapes[m]
            if (p.rank, p.in_features, p.out_features) != (r, d_in, d_out):
                raise AggregationError(
                    f"{rule}: starting view of rank {r}, module {m!r}: shape A{p.A.shape} "
                    f"B{p.B.shape} does not fit rank {r}, d_in {d_in}, d_out {d_out}"
                )
            s, want = v.meta.scaling(m), spec.scalings[m]
            if abs(s - want) > SCALING_RTOL * abs(want):
                raise AggregationError(
                    f"{rule}: starting view of rank {r}, module {m!r}: scaling {s} != {want}"
                )
        out[r] = v
    return out
