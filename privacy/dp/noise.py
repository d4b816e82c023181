"""Gaussian noise of the round, in the three places it can be added.

* ``local`` — :class:`GaussianNoiseStep`, phone half: each phone adds N(0, (σ_Δ·C)²) to its
  own clipped float vector. Private even against the server (each report is a Gaussian
  mechanism with multiplier z), at the cost of n times the noise in the sum.
* ``central`` — :class:`GaussianNoiseStep`, server half: a *trusted* server adds
  N(0, (σ_Δ·C)²) once to the dequantized sum (DP-FedAvg, McMahan et al. 2018).
* ``distributed`` — :class:`DistributedNoiseStep`: after quantization each phone adds an
  integer share (discrete Gaussian, Kairouz, Liu & Steinke 2021; or Skellam, Agarwal,
  Kairouz & Liu 2021) with variance ``σ_int²/(h·n)``, so the securely aggregated sum of any
  ``h·n`` honest phones carries at least the target variance. Its server half refuses a sum
  with fewer than ``⌈h·n⌉`` contributors.

All of them read the clip norm from the round's context, i.e. the norm that round's
clipping applied, never an updated one.
"""

from __future__ import annotations

import math

import numpy as np

from .context import RoundContext
from .discrete import sample_discrete_gaussian, sample_skellam
from .errors import InsufficientNoiseError
from .pipeline import Metrics, check_float_vector, check_int_vector
from .plan import plan_quantization


class GaussianNoiseStep:
    """Float Gaussian noise: on the phone in ``local`` mode, on the server in ``central``."""

    name = "noise"
    provides_noise = frozenset({"local", "central"})

    def postprocess_one_user(
        self, vec: np.ndarray, ctx: RoundContext
    ) -> tuple[np.ndarray, Metrics]:
        if ctx.noise_mode != "local":
            return vec, {}
        x = check_float_vector(vec, "noise")
        std = ctx.noise_std
        return x + ctx.rng("noise").normal(0.0, std, x.shape), {"std": std}

    def postprocess_server(self, aggregate: np.ndarray, ctx: RoundContext) -> np.ndarray:
        if ctx.noise_mode != "central":
            return aggregate
        agg = check_float_vector(aggregate, "noise (server)")
        return agg + ctx.rng("central-noise").normal(0.0, ctx.noise_std, agg.shape)


def min_honest_contributors(ctx: RoundContext) -> int:
    """Contributors the server must see before releasing a distributed-noise sum."""
    return math.ceil(ctx.honest_fraction * ctx.num_sampled - 1e-9)


class DistributedNoiseStep:
    """Integer noise shares added on each phone after quantization (``distributed`` mode)."""

    name = "distributed_noise"
    provides_noise = frozenset({"distributed"})

    def postprocess_one_user(
        self, vec: np.ndarray, ctx: RoundContext
    ) -> tuple[np.ndarray, Metrics]:
        if ctx.noise_mode != "distributed":
            return vec, {}
        q = check_int_vector(vec, "distributed_noise")
        plan = plan_quantization(ctx, q.shape[0])
        rng = ctx.rng("distributed-noise")
        if ctx.distributed_noise == "skellam":
            noise = sample_skellam(plan.party_mu, q.shape[0], rng)
        else:
            noise = sample_discrete_gaussian(plan.party_variance, q.shape[0], rng)
        out = q + noise
        clamped = int(np.count_nonzero(np.abs(out) > plan.max_abs))
        if clamped:
            out = np.clip(out, -plan.max_abs, plan.max_abs)
        return out, {"party_std": plan.party_std, "clamped": float(clamped)}

    def postprocess_server(self, aggregate: np.ndarray, ctx: RoundContext) -> np.ndarray:
        if ctx.noise_mode != "distributed":
            return aggregate
        need = min_honest_contributors(ctx)
        if ctx.contributors < need:
            raise InsufficientNoiseError(
                f"round {ctx.round}: only {ctx.contributors} of {ctx.num_sampled} sampled phones "
                f"contributed; distributed noise reaches its target variance only with at least "
                f"{need} honest contributors (honest_fraction={ctx.honest_fraction:g}). The sum "
                "must not be released."
            )
        return aggregate
