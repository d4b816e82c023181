"""Noise: samplers and the variance each mode puts into the sum (chi-square CIs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedlora.privacy.dp import (
    DistributedNoiseStep,
    GaussianNoiseStep,
    InsufficientNoiseError,
    PrivacyConfigError,
    PrivacyPipeline,
    QuantizeStep,
    RoundContext,
    plan_quantization,
    sample_discrete_gaussian,
    sample_skellam,
)
from fedlora.privacy.dp.discrete import discrete_gaussian_variance

ALPHA = 1e-6


def in_variance_ci(samples: np.ndarray, variance: float) -> bool:
    """Is ``variance`` inside the (1 − ALPHA) χ² CI of zero-mean ``samples``?"""
    n = samples.size
    ss = float(np.sum(samples.astype(np.float64) ** 2))
    return ss / stats.chi2.ppf(1 - ALPHA / 2, n) <= variance <= ss / stats.chi2.ppf(ALPHA / 2, n)


@pytest.mark.parametrize("variance", [0.3, 2.0, 17.0, 1e6, 3.7e13])
def test_discrete_gaussian_sampler_variance(variance: float) -> None:
    x = sample_discrete_gaussian(variance, 200_000, np.random.default_rng(1))
    assert x.dtype == np.int64
    exact = discrete_gaussian_variance(variance) if variance < 1e4 else variance
    assert in_variance_ci(x, exact)
    assert abs(x.mean()) < 6 * math.sqrt(exact / x.size)


def test_discrete_gaussian_sampler_matches_pmf_for_small_sigma() -> None:
    variance = 1.5
    x = sample_discrete_gaussian(variance, 200_000, np.random.default_rng(2))
    support = np.arange(-8, 9)
    pmf = np.exp(-(support**2) / (2 * variance))
    pmf /= pmf.sum()
    counts = np.array([(x == k).sum() for k in support])
    assert counts.sum() == x.size  # nothing beyond ±8 (probability < 1e-9)
    chi2 = float(((counts - x.size * pmf) ** 2 / (x.size * pmf)).sum())
    assert chi2 < stats.chi2.ppf(1 - ALPHA, support.size - 1)


@pytest.mark.parametrize("mu", [0.5, 40.0, 1e9])
def test_skellam_sampler_variance(mu: float) -> None:
    x = sample_skellam(mu, 200_000, np.random.default_rng(3))
    assert in_variance_ci(x, 2 * mu)


def test_local_noise_variance_per_phone_and_in_the_sum() -> None:
    ctx = RoundContext(
        round=1, clip_norm=0.5, num_sampled=8, noise_mode="local", noise_multiplier=1.3
    )
    step = GaussianNoiseStep()
    total = np.zeros(50_000)
    for i in range(8):
        out, _ = step.postprocess_one_user(np.zeros(50_000), ctx.for_phone(str(i)))
        if i == 0:
            assert in_variance_ci(out, (1.3 * 0.5) ** 2)
        total += out
    assert in_variance_ci(total, 8 * (1.3 * 0.5) ** 2)
    # The server adds nothing in local mode.
    assert step.postprocess_server(total, ctx.with_contributors(8)) is total


def test_central_noise_variance_added_once_on_the_server() -> None:
    ctx = RoundContext(
        round=2, clip_norm=3.0, num_sampled=100, noise_mode="central", noise_multiplier=0.9
    )
    step = GaussianNoiseStep()
    vec = np.zeros(100_000)
    out, metrics = step.postprocess_one_user(vec, ctx.for_phone("a"))
    assert out is vec and metrics == {}  # phones add nothing in central mode
    agg = step.postprocess_server(np.zeros(100_000), ctx.with_contributors(100))
    assert in_variance_ci(agg, (0.9 * 3.0) ** 2)


def test_noise_is_independent_across_phones_and_reproducible_with_a_seed() -> None:
    ctx = RoundContext(
        round=1, clip_norm=1.0, num_sampled=2, noise_mode="local", noise_multiplier=1.0, seed=11
    )
    step = GaussianNoiseStep()
    a, _ = step.postprocess_one_user(np.zeros(1000), ctx.for_phone("a"))
    b, _ = step.postprocess_one_user(np.zeros(1000), ctx.for_phone("b"))
    a2, _ = step.postprocess_one_user(np.zeros(1000), ctx.for_phone("a"))
    assert np.array_equal(a, a2) and not np.allclose(a, b)
    unseeded = RoundContext(
        round=1, clip_norm=1.0, num_sampled=2, noise_mode="local", noise_multiplier=1.0
    ).for_phone("a")
    c, _ = step.postprocess_one_user(np.zeros(1000), unseeded)
    c2, _ = step.postprocess_one_user(np.zeros(1000), unseeded)
    assert not np.allclose(c, c2)  # CSPRNG-seeded: fresh every time


@pytest.mark.parametrize(
    ("kind", "honest"), [("discrete_gaussian", 1.0), ("discrete_gaussian", 0.5), ("skellam", 0.5)]
)
def test_distributed_noise_sum_of_shares_has_target_variance(kind: str, honest: float) -> None:
    n, d = 16, 20_000
    ctx = RoundContext(
        round=3,
        clip_norm=1.0,
        num_sampled=n,
        noise_mode="distributed",
        noise_multiplier=1.1,
        honest_fraction=honest,
        modulus_bits=40,
        distributed_noise=kind,
    )
    pipe = PrivacyPipeline([QuantizeStep(), DistributedNoiseStep()])
    total = np.zeros(d, dtype=np.int64)
    for i in range(n):
        out, _ = pipe.postprocess_one_user(np.zeros(d), ctx.for_phone(str(i)))
        assert out.dtype == np.int64
        total += out
    plan = plan_quantization(ctx, d)
    # Integer domain: exactly n shares of the planned variance.
    share = plan.party_variance if kind == "discrete_gaussian" else 2 * plan.party_mu
    assert in_variance_ci(total, n * share)
    # Honest phones alone (h·n of them) carry at least (z·Δ_int)²: the target.
    assert honest * n * share >= (1.1 * plan.l2_sensitivity) ** 2 * (1 - 1e-12)
    assert honest * n * share <= (1.1 * plan.l2_sensitivity) ** 2 * 1.001
    # Float domain after dequantization: ≈ (z·C)²/h (rounding inflates by ≤ √d/s).
    agg = pipe.postprocess_server(total, ctx.with_contributors(n))
    assert in_variance_ci(agg, n * share / plan.scale**2)
    assert n * share / plan.scale**2 == pytest.approx((1.1 * 1.0) ** 2 / honest, rel=0.01)


def test_distributed_sum_refused_with_too_few_contributors() -> None:
    ctx = RoundContext(
        round=5,
        clip_norm=1.0,
        num_sampled=10,
        noise_mode="distributed",
        noise_multiplier=1.0,
        honest_fraction=0.6,
        modulus_bits=32,
    )
    step = DistributedNoiseStep()
    step.postprocess_server(np.zeros(4, dtype=np.int64), ctx.with_contributors(6))
    with pytest.raises(InsufficientNoiseError, match="only 5 of 10") as err:
        step.postprocess_server(np.zeros(4, dtype=np.int64), ctx.with_contributors(5))
    assert "at least 6" in str(err.value)


def test_pipeline_refuses_a_noise_mode_it_cannot_provide() -> None:
    ctx = RoundContext(
        round=1, clip_norm=1.0, num_sampled=2, noise_mode="distributed", noise_multiplier=1.0
    )
    pipe = PrivacyPipeline([GaussianNoiseStep()])
    with pytest.raises(PrivacyConfigError, match="no step"):
        pipe.postprocess_one_user(np.zeros(3), ctx)


def test_distributed_noise_too_small_for_the_modulus_is_refused() -> None:
    # 10 bits for 50 phones: the integer scale is tiny, the shares cannot be made private.
    ctx = RoundContext(
        round=1,
        clip_norm=1.0,
        num_sampled=50,
        noise_mode="distributed",
        noise_multiplier=1.0,
        modulus_bits=10,
    )
    from fedlora.privacy.dp import HeadroomError

    with pytest.raises(HeadroomError, match="10-bit modulus"):
        plan_quantization(ctx, 100_000)
