"""Fixed-point quantization with stochastic rounding, and its server-side inverse.

Phone half: ``q = round_stochastic(s·x)`` with the round's power-of-two scale ``s`` (from
:func:`~fedlora.privacy.dp.plan.plan_quantization`), then clamp to ``±max_abs`` so the sum of
``num_sampled`` vectors provably fits the secure-aggregation modulus. Stochastic rounding
(round up with probability equal to the fractional part) is unbiased, ``E[q] = s·x``, so the
dequantized sum is an unbiased estimate of the float sum (Kairouz et al. 2021 use the same
rounding; Suresh et al. 2017 analyse it for distributed mean estimation).

Server half: the signed integer sum divided by ``s``.

:func:`to_modular` / :func:`from_modular` convert between the signed integers of this
pipeline and the residues mod 2^b that secure aggregation adds.
"""

from __future__ import annotations

import numpy as np

from .context import RoundContext
from .errors import PrivacyConfigError
from .pipeline import Metrics, check_float_vector, check_int_vector
from .plan import plan_quantization


def stochastic_round(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unbiased integer rounding: ``⌊x⌋ + Bernoulli(x − ⌊x⌋)`` elementwise, as int64."""
    floor = np.floor(x)
    up = rng.random(x.shape) < (x - floor)
    return floor.astype(np.int64) + up.astype(np.int64)


def to_modular(values: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers → residues in ``[0, 2^bits)`` (uint64) for modular secure sums."""
    _check_bits(bits)
    return np.mod(np.asarray(values, dtype=np.int64), np.int64(2**bits)).astype(np.uint64)


def from_modular(residues: np.ndarray, bits: int) -> np.ndarray:
    """Residues mod 2^bits → the signed integers in ``[−2^(bits−1), 2^(bits−1))`` (int64)."""
    _check_bits(bits)
    r = np.mod(np.asarray(residues).astype(np.uint64), np.uint64(2**bits)).astype(np.int64)
    return np.where(r >= 2 ** (bits - 1), r - np.int64(2**bits), r)


def _check_bits(bits: int) -> None:
    if not 2 <= bits <= 62:
        raise PrivacyConfigError(f"modulus bits must be in [2, 62], got {bits}")


class QuantizeStep:
    """Float → bounded int64 on the phone; integer sum → float sum on the server."""

    name = "quantize"

    def postprocess_one_user(
        self, vec: np.ndarray, ctx: RoundContext
    ) -> tuple[np.ndarray, Metrics]:
        x = check_float_vector(vec, "quantize")
        plan = plan_quantization(ctx, x.shape[0])
        q = stochastic_round(x * plan.scale, ctx.rng("rounding"))
        clamped = int(np.count_nonzero(np.abs(q) > plan.max_abs))
        if clamped:
            q = np.clip(q, -plan.max_abs, plan.max_abs)
        return q, {"scale": plan.scale, "max_abs": float(plan.max_abs), "clamped": float(clamped)}

    def postprocess_server(self, aggregate: np.ndarray, ctx: RoundContext) -> np.ndarray:
        q = check_int_vector(aggregate, "quantize (server)")
        plan = plan_quantization(ctx, q.shape[0])
        return q.astype(np.float64) / plan.scale
