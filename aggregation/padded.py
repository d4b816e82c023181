"""Linear rules in factor space: phones' factors zero-padded to ``r_max`` and averaged.

With ``scaling = alpha / r`` constant across ranks, rank slot ``k`` (row ``k`` of ``A``,
column ``k`` of ``B``) means the same thing on every phone that has it, so padded factors can
be added slot by slot. Rules differ in which factors they share and in the denominator:

* per slot — slot ``k`` is divided by the weight of the phones that *have* slot ``k``
  (rank-matched FedAvg, FedSA's A): low-rank phones do not dilute high slots;
* total — every slot is divided by the total weight (HetLoRA, FFA-LoRA): a phone without
  slot ``k`` counts as a zero there, which is what makes FFA exact.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .contribution import AggregationSpec, Contribution
from .linear import LinearAggregator
from .ranked_sum import RankedSum


class PaddedFactorRule(LinearAggregator):
    """Zero-padded factor averaging; subclasses set which factors and which denominator."""

    space = "factor"
    nested = True
    share_a: bool = True
    share_b: bool = True
    per_slot: bool = True

    def __init__(self, spec: AggregationSpec) -> None:
        super().__init__(spec)
        layout = spec.factor_layout
        self._offsets = {e.name: e.offset for e in layout.entries}
        self._size = layout.size
        text = f"{self.name}|{','.join(map(str, spec.ranks))}|{layout.to_json()}"
        self._digest = hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def layout_digest(self) -> str:
        return self._digest

    @property
    def payload_size(self) -> int:
        return self._size

    def scatter(self, target: np.ndarray, c: Contribution, scale: float) -> None:
        r_max = self.spec.r_max
        for module, pair in c.delta:
            d_in, d_out = self.spec.linear_shapes[module]
            r = pair.rank
            if self.share_a:
                off = self._offsets[f"{module}.lora_A.weight"]
                # A is (r_max, d_in) row-major: the first r rows are one contiguous run
                target[off : off + r * d_in] += scale * pair.A.astype(np.float64).reshape(-1)
            if self.share_b:
                off = self._offsets[f"{module}.lora_B.weight"]
                block = target[off : off + d_out * r_max].reshape(d_out, r_max)
                block[:, :r] += scale * pair.B.astype(np.float64)

    def _inverse_denominators(self, state: RankedSum) -> np.ndarray:
        """1 / (weight behind each slot); 0 for slots no phone holds."""
        if self.per_slot:
            denom = np.asarray(self.spec.slot_weights(list(state.group_weights)))
        else:
            denom = np.full(self.spec.r_max, state.total_weight)
        inv = np.zeros_like(denom)
        held = denom > 0
        inv[held] = 1.0 / denom[held]
        return inv

    def normalize(self, state: RankedSum) -> dict[str, np.ndarray]:
        inv = self._inverse_denominators(state)
        r_max = self.spec.r_max
        out: dict[str, np.ndarray] = {}
        for module in self.spec.modules:
            d_in, d_out = self.spec.linear_shapes[module]
            a_name, b_name = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
            oa, ob = self._offsets[a_name], self._offsets[b_name]
            if self.share_a:
                out[a_name] = (
                    state.payload[oa : oa + r_max * d_in].reshape(r_max, d_in) * inv[:, None]
                )
            else:
                out[a_name] = np.zeros((r_max, d_in))
            if self.share_b:
                out[b_name] = (
                    state.payload[ob : ob + d_out * r_max].reshape(d_out, r_max) * inv[None, :]
                )
            else:
                out[b_name] = np.zeros((d_out, r_max))
        return out
