"""FFA-LoRA with a nested shared A: freeze A, train and average only B.

Sun et al., "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024. With A
fixed (random, from a seed every party shares) and only B trained, ``ΔW = s · B A`` is linear
in the trained parameters, so averaging B averages ``ΔW`` exactly — and the same linearity
makes it the natural partner of DP noise and secure aggregation.

Heterogeneous ranks, nested: A is drawn once at ``r_max``; a rank-``r`` phone uses its first
``r`` rows (the truncated view). Phone ``i``'s change is ``s · dBᵢ A[:rᵢ] = s · pad(dBᵢ) A``,
so with every slot divided by the *total* weight

    s · (Σ wᵢ pad(dBᵢ) / Σ wᵢ) · A = Σ wᵢ (s · dBᵢ A[:rᵢ]) / Σ wᵢ

the rule is **exact** across ranks, and **linear** (only ``Σ wᵢ pad(dBᵢ)`` and ``Σ wᵢ`` are
needed). A phone's ``lora_A`` delta must be zero; under secure aggregation the A part of the
vector is ignored (phones send zeros there; any noise in it is discarded). Nested views.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from fedlora.adapter import LoraAdapter, LoraPair

from .contribution import AggregationSpec, Contribution
from .errors import ContributionError
from .padded import PaddedFactorRule


class FFALoRA(PaddedFactorRule):
    """Zero-padded mean of B over all phones, A frozen (linear, exact, nested)."""

    name = "ffa"
    exact = True
    share_a = False
    per_slot = False

    def check(self, c: Contribution) -> int:
        rank = super().check(c)
        for module, pair in c.delta:
            if np.any(pair.A != 0):
                raise ContributionError(
                    c.client_id,
                    f"{module}.lora_A.weight",
                    "FFA-LoRA freezes A (shared seed); the delta must be zero here",
                )
        return rank


def _module_rng(seed: int, module: str) -> np.random.Generator:
    """A generator that depends on the seed and the module's name only (not on order)."""
    digest = hashlib.sha256(module.encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def shared_a(
    linear_shapes: Mapping[str, tuple[int, int]], r_max: int, seed: int
) -> dict[str, np.ndarray]:
    """The frozen A of every module at ``r_max``: uniform(±1/√d_in) from ``seed``.

    The bound is PEFT's Kaiming-uniform default for ``lora_A``. Every party derives the same
    matrices from the seed; a rank-``r`` phone uses the first ``r`` rows.
    """
    out: dict[str, np.ndarray] = {}
    for module, (d_in, _d_out) in linear_shapes.items():
        bound = 1.0 / np.sqrt(d_in)
        out[module] = _module_rng(seed, module).uniform(-bound, bound, size=(r_max, d_in))
    return out


def initial_adapter(spec: AggregationSpec, seed: int) -> LoraAdapter:
    """The round-0 FFA community adapter: shared A at ``r_max`` from ``seed``, B = 0."""
    a = shared_a(spec.linear_shapes, spec.r_max, seed)
    pairs = {
        m: LoraPair(
            A=a[m].astype(spec.dtype),
            B=np.zeros((spec.linear_shapes[m][1], spec.r_max), dtype=spec.dtype),
        )
        for m in spec.modules
    }
    return LoraAdapter.create(
        pairs,
        base_fingerprint=spec.base_fingerprint,
        alpha={m: spec.scalings[m] * spec.r_max for m in spec.modules},
        dtype=spec.dtype,
        extra={"ffa_seed": str(seed)},
    )
