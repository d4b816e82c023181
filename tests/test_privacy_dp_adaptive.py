"""Adaptive clipping (Andrew et al. 2021): convergence to the target quantile, and the noise
of each round uses that round's clip norm and the paper's adjusted multiplier."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedlora.config import PrivacySettings
from fedlora.privacy.dp import (
    AdaptiveClipController,
    PrivacyConfigError,
    adaptive_delta_noise_multiplier,
    build_pipeline,
    make_controller,
    round_context,
)

ALPHA = 1e-6  # two-sided level of every variance confidence interval


def variance_ci(samples: np.ndarray) -> tuple[float, float]:
    """(1 − ALPHA) CI for the variance of zero-mean samples: n·s²/σ² ~ χ²_n."""
    n = samples.size
    ss = float(np.sum(samples.astype(np.float64) ** 2))
    return ss / stats.chi2.ppf(1 - ALPHA / 2, n), ss / stats.chi2.ppf(ALPHA / 2, n)


def test_adjusted_noise_multiplier_matches_the_paper() -> None:
    z, sigma_b = 1.0, 5.0
    sigma_delta = adaptive_delta_noise_multiplier(z, sigma_b)
    assert sigma_delta == pytest.approx((z**-2 - (2 * sigma_b) ** -2) ** -0.5)
    # Delta and bit together are one Gaussian mechanism with multiplier z again.
    assert (sigma_delta**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(z)
    assert sigma_delta > z
    with pytest.raises(PrivacyConfigError, match="z < 2"):
        adaptive_delta_noise_multiplier(2.0, 1.0)


def run_rounds(
    quantile: float, rounds: int, n: int, noise: str, seed: int, start: float = 0.05
) -> tuple[AdaptiveClipController, np.ndarray]:
    settings = PrivacySettings(
        noise=noise,  # type: ignore[arg-type]
        noise_multiplier=1.0,
        adaptive_clipping=True,
        clip_norm=start,
        target_quantile=quantile,
        clip_learning_rate=0.2,
    )
    controller = make_controller(settings)
    assert controller is not None
    pipe = build_pipeline(settings, controller=controller)
    rng = np.random.default_rng(seed)
    norms_seen = []
    for r in range(1, rounds + 1):
        ctx = round_context(
            settings, round=r, num_sampled=n, sampling_rate=0.01, controller=controller, seed=seed
        )
        norms = rng.lognormal(mean=0.0, sigma=0.5, size=n)  # median 1.0
        norms_seen.append(norms)
        total = np.zeros(5)
        for i, norm in enumerate(norms):
            direction = rng.standard_normal(4)
            vec, _ = pipe.postprocess_one_user(
                direction * (norm / np.linalg.norm(direction)), ctx.for_phone(str(i))
            )
            total += vec
        pipe.postprocess_server(total, ctx.with_contributors(n))
    return controller, np.concatenate(norms_seen)


@pytest.mark.parametrize(("quantile", "noise"), [(0.5, "central"), (0.8, "central"), (0.3, "none")])
def test_adaptive_clipping_converges_to_the_target_quantile(quantile: float, noise: str) -> None:
    controller, _ = run_rounds(quantile, rounds=120, n=100, noise=noise, seed=7)
    true_quantile = math.exp(0.5 * stats.norm.ppf(quantile))  # of lognormal(0, 0.5)
    late = np.array([h["clip_norm"] for h in controller.history[-40:]])
    assert late.mean() == pytest.approx(true_quantile, rel=0.08)
    # The fraction of phones under the learned norm is near the target.
    fresh = np.random.default_rng(99).lognormal(0.0, 0.5, 200_000)
    assert np.mean(fresh <= late.mean()) == pytest.approx(quantile, abs=0.05)
    # It started far away (0.05) and moved geometrically.
    assert controller.history[0]["clip_norm"] == pytest.approx(0.05)


def test_central_noise_uses_this_rounds_clip_norm_and_adjusted_multiplier() -> None:
    """The Flower bug: noise computed with the *updated* clip norm. Here it cannot happen."""
    n, d = 20, 40_000
    settings = PrivacySettings(
        noise="central", noise_multiplier=1.0, adaptive_clipping=True, clip_norm=2.0
    )
    controller = make_controller(settings)
    assert controller is not None
    pipe = build_pipeline(settings, controller=controller)
    z = settings.noise_multiplier
    stds = []
    for r in (1, 2):
        c_round = controller.clip_norm
        ctx = round_context(
            settings, round=r, num_sampled=n, sampling_rate=0.1, controller=controller, seed=3
        )
        assert ctx.clip_norm == c_round
        sigma_b = ctx.clip_count_stddev
        assert sigma_b == pytest.approx(max(n / 20, z))  # default σ_b
        sigma_delta = (z**-2 - (2 * sigma_b) ** -2) ** -0.5
        # Every phone sends a zero delta (all unclipped): the aggregate is pure noise.
        total = np.zeros(d + 1)
        for i in range(n):
            vec, _ = pipe.postprocess_one_user(np.zeros(d), ctx.for_phone(str(i)))
            total += vec
        agg = pipe.postprocess_server(total, ctx.with_contributors(n))
        assert agg.shape == (d,)
        lo, hi = variance_ci(agg)
        expected = (sigma_delta * c_round) ** 2
        assert lo <= expected <= hi, (r, lo, expected, hi)
        assert not lo <= (z * c_round) ** 2 <= hi  # the adjustment for the bit is applied
        c_next = controller.clip_norm
        assert c_next < c_round  # all phones unclipped: the norm shrinks
        assert not lo <= (sigma_delta * c_next) ** 2 <= hi  # not the updated norm
        assert math.sqrt(expected) == pytest.approx(ctx.noise_std)
        assert ctx.noise_std == pytest.approx(z * ctx.sensitivity)  # = z · C_round (effective)
        stds.append(math.sqrt(expected))
    assert stds[1] < stds[0]


def test_local_noise_std_is_z_times_round_clip_norm() -> None:
    settings = PrivacySettings(noise="local", noise_multiplier=0.7, clip_norm=0.3)
    pipe = build_pipeline(settings)
    ctx = round_context(settings, round=4, num_sampled=10, sampling_rate=0.1, seed=5)
    out, metrics = pipe.postprocess_one_user(np.zeros(200_000), ctx.for_phone("p"))
    lo, hi = variance_ci(out)
    assert lo <= (0.7 * 0.3) ** 2 <= hi
    assert metrics["noise/std"] == pytest.approx(0.7 * 0.3)


def test_adaptive_context_refuses_too_small_count_noise() -> None:
    settings = PrivacySettings(noise="central", noise_multiplier=3.0, adaptive_clipping=True)
    controller = AdaptiveClipController(clip_norm=1.0, count_stddev=1.0)
    with pytest.raises(PrivacyConfigError, match="σ_b"):
        round_context(settings, round=1, num_sampled=10, sampling_rate=0.1, controller=controller)


def test_controller_state_round_trips() -> None:
    controller, _ = run_rounds(0.5, rounds=3, n=20, noise="central", seed=1)
    again = AdaptiveClipController.from_dict(controller.to_dict())
    assert again == controller
