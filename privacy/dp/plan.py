"""Integer headroom: the scale and bounds that keep a secure-aggregation sum from overflowing.

Secure aggregation adds integers modulo 2^b. The sum of ``n`` phones' integer vectors must
stay in the signed range ``[−2^(b−1), 2^(b−1) − 1]`` or the server's unmasked sum wraps
around and the community adapter is garbage. :func:`headroom_bits` gives the bits needed for
``n`` vectors bounded by ``M``; :func:`plan_quantization` picks, for a round, the largest
power-of-two scale ``s`` whose per-phone bound ``M`` satisfies ``n·M ≤ 2^(b−1) − 1``:

* clipped values: ``|x_i| ≤ sensitivity`` ⇒ ``|round(s·x_i)| ≤ ⌈s·sensitivity⌉``;
* local noise (float, before quantization): plus a Gaussian tail bound;
* distributed noise (integer, after quantization): plus the discrete-Gaussian or Skellam
  tail bound of the per-phone share.

Tails are unbounded, so each phone clamps its integers to ``±M``; the tail bounds are set so
that a clamp happens with probability at most ``ctx.tail_probability`` per phone and round.
The sum of ``n`` clamped vectors then *never* overflows. Phone and server derive the same
plan from the same context and vector length; a power-of-two scale makes dequantization
exact. The scale is also capped so every phone integer stays below 2^52 (float64-exact) and
Skellam shares stay where NumPy's Poisson sampler is accurate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from .calibration import (
    ddg_party_variance,
    gaussian_tail,
    integer_l2_sensitivity,
    skellam_party_mu,
    skellam_tail,
)
from .context import RoundContext
from .errors import HeadroomError, PrivacyConfigError

_MAX_EXPONENT = 60
_MIN_EXPONENT = -60
_FLOAT_EXACT = 2**52
#: NumPy's Poisson sampler is accurate to ~1e-4 in variance up to λ ≈ 1e13 and visibly
#: over-dispersed beyond 1e15 (measured); Skellam shares stay below this λ.
_SKELLAM_MAX_MU = 2.0**40


def headroom_bits(num_vectors: int, max_abs: int) -> int:
    """Smallest b such that any sum of ``num_vectors`` integers in ``[−max_abs, max_abs]``
    lies in the signed range ``[−2^(b−1), 2^(b−1) − 1]`` of a modulus 2^b."""
    if num_vectors < 1 or max_abs < 0:
        raise PrivacyConfigError(
            f"headroom_bits needs num_vectors >= 1 and max_abs >= 0, got {num_vectors}, {max_abs}"
        )
    return (num_vectors * max_abs).bit_length() + 1


def check_headroom(bits: int, num_vectors: int, max_abs: int) -> None:
    """Raise :class:`HeadroomError` unless ``num_vectors`` values ``≤ max_abs`` fit 2^bits."""
    need = headroom_bits(num_vectors, max_abs)
    if need > bits:
        raise HeadroomError(
            f"modulus 2^{bits} overflows: {num_vectors} vectors with entries up to {max_abs} "
            f"need {need} bits"
        )


@dataclass(frozen=True)
class QuantizationPlan:
    """The integer encoding of one round, identical on phones and server.

    ``party_variance`` (discrete Gaussian) or ``party_mu`` (Skellam) is each phone's share
    of distributed noise in integer units; both are 0 outside distributed mode.
    """

    scale: float
    max_abs: int
    bits: int
    num_vectors: int
    dim: int
    l2_sensitivity: float
    party_variance: float = 0.0
    party_mu: float = 0.0

    @property
    def required_bits(self) -> int:
        return headroom_bits(self.num_vectors, self.max_abs)

    @property
    def sensitivity_inflation(self) -> float:
        """Integer sensitivity over the ideal ``s·sensitivity`` (rounding's cost, ≥ 1)."""
        ideal = self.l2_sensitivity - math.sqrt(self.dim)
        return self.l2_sensitivity / ideal if ideal > 0 else math.inf

    @property
    def party_std(self) -> float:
        """Std of one phone's integer noise share."""
        return math.sqrt(self.party_variance if self.party_variance else 2.0 * self.party_mu)


def _plan_for_scale(ctx: RoundContext, dim: int, scale: float) -> QuantizationPlan:
    per_coord_tail = ctx.tail_probability / dim
    value_bound = ctx.sensitivity
    if ctx.noise_mode == "local":
        value_bound += gaussian_tail(ctx.noise_std, per_coord_tail)
    max_abs = math.ceil(scale * value_bound)
    l2_int = integer_l2_sensitivity(ctx.sensitivity, scale, dim)
    variance = mu = 0.0
    if ctx.noise_mode == "distributed" and ctx.noise_multiplier > 0:
        honest = ctx.honest_fraction * ctx.num_sampled
        if ctx.distributed_noise == "skellam":
            mu = skellam_party_mu(ctx.noise_multiplier, l2_int, honest, dim)
            max_abs += math.ceil(skellam_tail(mu, per_coord_tail))
        else:
            variance = ddg_party_variance(
                ctx.noise_multiplier, l2_int, honest, ctx.num_sampled, dim
            )
            max_abs += math.ceil(gaussian_tail(math.sqrt(variance), per_coord_tail))
    return QuantizationPlan(
        scale=scale,
        max_abs=max_abs,
        bits=ctx.modulus_bits or 0,
        num_vectors=ctx.num_sampled,
        dim=dim,
        l2_sensitivity=l2_int,
        party_variance=variance,
        party_mu=mu,
    )


def plan_quantization(ctx: RoundContext, dim: int) -> QuantizationPlan:
    """The largest power-of-two scale whose sums of ``ctx.num_sampled`` vectors fit.

    Raises :class:`HeadroomError` (naming bits, phones and bound) when even the smallest
    scale does not fit, or when ``ctx.modulus_bits`` is unset.
    """
    return _plan_cached(_plan_key(ctx), dim)


def _plan_key(ctx: RoundContext) -> RoundContext:
    # Fields that do not change the plan are normalised so phones share one cache entry.
    return RoundContext(
        round=0,
        clip_norm=ctx.clip_norm,
        num_sampled=ctx.num_sampled,
        noise_mode=ctx.noise_mode,
        noise_multiplier=ctx.noise_multiplier,
        honest_fraction=ctx.honest_fraction,
        adaptive_clipping=ctx.adaptive_clipping,
        clip_count_stddev=ctx.clip_count_stddev,
        modulus_bits=ctx.modulus_bits,
        distributed_noise=ctx.distributed_noise,
        tail_probability=ctx.tail_probability,
    )


@lru_cache(maxsize=64)
def _plan_cached(ctx: RoundContext, dim: int) -> QuantizationPlan:
    if ctx.modulus_bits is None:
        raise HeadroomError("quantization needs ctx.modulus_bits (the secure-aggregation modulus)")
    if dim < 1:
        raise PrivacyConfigError(f"cannot quantize an empty vector (dim={dim})")
    limit = 2 ** (ctx.modulus_bits - 1) - 1
    smallest: QuantizationPlan | None = None
    for exponent in range(_MAX_EXPONENT, _MIN_EXPONENT - 1, -1):
        try:
            plan = _plan_for_scale(ctx, dim, 2.0**exponent)
        except PrivacyConfigError:
            break  # distributed noise too small to be private: smaller scales are worse
        smallest = plan
        if plan.party_mu > _SKELLAM_MAX_MU:
            continue
        if plan.max_abs <= _FLOAT_EXACT and ctx.num_sampled * plan.max_abs <= limit:
            return plan
    detail = (
        f"; at scale {smallest.scale:g} one phone's entries reach {smallest.max_abs}"
        if smallest is not None
        else ""
    )
    raise HeadroomError(
        f"round {ctx.round}: a {ctx.modulus_bits}-bit modulus cannot hold the sum of "
        f"{ctx.num_sampled} phones' quantized vectors (dim {dim}, noise {ctx.noise_mode!r})"
        f"{detail}; use more secagg_bits or fewer phones per round"
    )
