"""The numbers behind the mechanisms: noise calibration and tail bounds.

Pure functions of floats and ints, so the phone and the server compute identical values from
the same :class:`~fedlora.privacy.dp.context.RoundContext`. Each function cites where its
formula comes from; none of them *accounts* privacy (that is :mod:`.accounting`, through
``dp_accounting``): they decide how much noise a round must add so that the accountant's
Gaussian model is true (or conservative).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import PrivacyConfigError


def adaptive_delta_noise_multiplier(z: float, count_stddev: float) -> float:
    """σ_Δ such that the delta plus the clip-count bit together cost exactly ``z``.

    Andrew et al. 2021 ("Differentially Private Learning with Adaptive Clipping", Thm. 1):
    releasing the centred bits ``b_i − ½`` (sensitivity ½) with noise σ_b alongside the
    clipped deltas with noise σ_Δ·C is one Gaussian mechanism with multiplier
    ``(σ_Δ⁻² + (2σ_b)⁻²)^(-1/2)``. Solving for the target ``z`` gives
    ``σ_Δ = (z⁻² − (2σ_b)⁻²)^(-1/2)`` — the delta must get *more* noise than ``z·C`` to pay
    for the bit. Requires ``z < 2σ_b``.
    """
    if z <= 0:
        return 0.0
    if count_stddev <= 0 or z >= 2.0 * count_stddev:
        raise PrivacyConfigError(
            f"adaptive clipping needs noise_multiplier z < 2·σ_b (the clip-count noise); got "
            f"z={z:g}, σ_b={count_stddev:g}. Raise σ_b (clip_count_stddev) or lower z."
        )
    return float((z**-2 - (2.0 * count_stddev) ** -2) ** -0.5)


def default_count_stddev(num_sampled: int, z: float) -> float:
    """σ_b default: ``num_sampled / 20`` (Andrew et al. 2021, §4), at least ``z``.

    The floor keeps small rounds usable: with σ_b = z the delta's noise grows by
    ``1/sqrt(3/4) ≈ 1.155``; with the paper's setting (100 phones, z = 1) by 0.5%.
    """
    return max(num_sampled / 20.0, z, 1e-12)


def gaussian_tail(std: float, probability: float) -> float:
    """t with P(|X| > t) ≤ probability for X ~ N(0, std²) (and the discrete Gaussian).

    ``P(|X| > t) ≤ 2·exp(−t²/2σ²)``; the discrete Gaussian N_Z(0, σ²) is σ-sub-Gaussian
    (Canonne, Kamath & Steinke 2020, Cor. 9), so the same bound holds for it.
    """
    if std <= 0:
        return 0.0
    return float(std * math.sqrt(2.0 * math.log(2.0 / probability)))


def skellam_tail(mu: float, probability: float) -> float:
    """t with P(|X| ≥ t) ≤ probability for X = Poisson(μ) − Poisson(μ) (variance 2μ).

    Bernstein's inequality for the sub-gamma variable X (variance factor 2μ, scale 1/3):
    ``P(X ≥ t) ≤ exp(−t²/(2(2μ + t/3)))``; solving for t with a factor 2 for both tails.
    """
    if mu <= 0:
        return 0.0
    big_l = math.log(2.0 / probability)
    return float(big_l / 3.0 + math.sqrt(big_l**2 / 9.0 + 4.0 * mu * big_l))


def integer_l2_sensitivity(value_bound: float, scale: float, dim: int) -> float:
    """L2 bound of one phone's stochastically rounded vector ``round(scale · x)``.

    ``‖round(sx)‖ ≤ s‖x‖ + ‖round(sx) − sx‖ ≤ s·value_bound + sqrt(dim)`` (each coordinate
    moves by less than 1). Deterministic, unlike the conditional rounding of Kairouz et al.
    2021, which buys a slightly smaller bound with a failure probability.
    """
    return float(scale * value_bound + math.sqrt(dim))


def ddg_tau(party_variance: float, num_parties: int) -> float:
    """τ for a sum of discrete Gaussians (Kairouz, Liu & Steinke 2021, "The Distributed
    Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation", Thm. 1).

    ``τ = 10·Σ_{k=1}^{n−1} exp(−2π²σ²·k/(k+1))``: how far the sum of n N_Z(0, σ²) is from
    a single discrete Gaussian of variance nσ². Increasing in n, decreasing in σ².
    """
    if num_parties < 2 or math.exp(-(math.pi**2) * party_variance) == 0.0:
        return 0.0
    # Terms fall with k; beyond `exact` terms each is bounded by the last exact one.
    exact = min(num_parties - 1, 100_000)
    k = np.arange(1, exact + 1, dtype=np.float64)
    terms = np.exp(-2.0 * math.pi**2 * party_variance * k / (k + 1.0))
    total = float(terms.sum()) + (num_parties - 1 - exact) * float(terms[-1])
    return 10.0 * total


def ddg_party_variance(
    z: float, l2_sensitivity: float, honest_parties: float, num_parties: int, dim: int
) -> float:
    """Per-phone discrete-Gaussian variance so the honest sum is at least as private as z.

    Kairouz et al. 2021 (Prop. 14 of the arXiv version): the sum of ``n_h`` honest
    N_Z(0, σ_p²) shares satisfies RDP ``α/2·Δ²/(n_h σ_p²) + τ·d`` at order α. For this to
    be ≤ the Gaussian's ``α/(2z²)`` at every order α ≥ 1 we need
    ``Δ²/(n_h σ_p²) ≤ z⁻² − 2τd``. τ is evaluated at the Gaussian-only σ_p and only shrinks
    as σ_p grows, so the returned variance is conservative.
    """
    if z <= 0:
        return 0.0
    base = l2_sensitivity**2 * z**2 / honest_parties
    slack = z**-2 - 2.0 * ddg_tau(base, num_parties) * dim
    if slack <= 0.5 * z**-2:
        raise PrivacyConfigError(
            f"distributed discrete Gaussian: per-phone variance {base:.3g} (integer units) is "
            f"too small for {dim} coordinates and {num_parties} phones (τ term dominates); "
            "use more secure-aggregation bits so the quantization scale grows."
        )
    return float(l2_sensitivity**2 / (honest_parties * slack))


def skellam_party_mu(z: float, l2_sensitivity: float, honest_parties: float, dim: int) -> float:
    """Per-phone Skellam parameter μ_p (each share is Poisson(μ_p) − Poisson(μ_p)).

    Agarwal, Kairouz & Liu 2021 ("The Skellam Mechanism for Differentially Private Federated
    Learning", §3, integer orders α > 1): Sk with total parameter μ (variance 2μ) satisfies RDP
    ``αΔ₂²/(4μ) + 3Δ₁/(4μ)``. The first term is exactly the Gaussian's with σ² = 2μ; the
    second is absorbed by inflating μ by ``1 + 3Δ₁/Δ₂²`` so that RDP ≤ α/(2z²) for α ≥ 1.
    ``Δ₁ ≤ min(√d·Δ₂, Δ₂²)`` for integer vectors. Sums of Skellams are Skellam, so the
    honest sum is exactly Sk(n_h·μ_p).
    """
    if z <= 0:
        return 0.0
    l1 = min(math.sqrt(dim) * l2_sensitivity, l2_sensitivity**2)
    inflation = 1.0 + 3.0 * l1 / l2_sensitivity**2
    total_mu = (z * l2_sensitivity) ** 2 / 2.0 * inflation
    return float(total_mu / honest_parties)
