"""From the run's :class:`~fedlora.config.PrivacySettings` to a pipeline, contexts and ledger.

The assembly rules live here so that an inconsistent configuration fails at start-up with
a message, not half-way through a run with a silently weaker guarantee:

* ``distributed`` noise requires ``secure_aggregation``: without it the server would see
  each phone's vector carrying only ``1/(h·n)`` of the noise variance;
* ``secure_aggregation`` requires the mask step (from :mod:`fedlora.privacy.secagg`) and
  implies quantization to ``secagg_bits``-bit integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedlora.config import PrivacySettings

from .clipping import AdaptiveClipController, ClipStep
from .context import DEFAULT_TAIL_PROBABILITY, DistributedNoise, RoundContext
from .errors import PrivacyConfigError
from .noise import DistributedNoiseStep, GaussianNoiseStep
from .pipeline import PrivacyPipeline, PrivacyStep
from .quantize import QuantizeStep

if TYPE_CHECKING:
    from .accounting import AccountantKind, PrivacyLedger


def check_settings(settings: PrivacySettings, mask: PrivacyStep | None = None) -> None:
    """Raise :class:`PrivacyConfigError` for combinations that would weaken the guarantee."""
    if settings.noise == "distributed" and not settings.secure_aggregation:
        raise PrivacyConfigError(
            "privacy.noise='distributed' needs privacy.secure_aggregation=true: without it the "
            "server sees every phone's vector with only 1/(honest_fraction·n) of the noise"
        )
    if settings.secure_aggregation and mask is None:
        raise PrivacyConfigError(
            "privacy.secure_aggregation=true needs the masking step "
            "(fedlora.privacy.secagg) passed as build_pipeline(..., mask=...)"
        )
    if settings.epsilon_budget is not None and settings.noise == "none":
        raise PrivacyConfigError(
            "privacy.epsilon_budget is set but privacy.noise='none': without noise ε is "
            "infinite and no round fits the budget"
        )


def make_controller(
    settings: PrivacySettings, count_stddev: float | None = None
) -> AdaptiveClipController | None:
    """The adaptive-clipping state for the server, or None when clipping is fixed."""
    if not settings.adaptive_clipping:
        return None
    return AdaptiveClipController(
        clip_norm=settings.clip_norm,
        target_quantile=settings.target_quantile,
        learning_rate=settings.clip_learning_rate,
        count_stddev=count_stddev,
    )


def build_pipeline(
    settings: PrivacySettings,
    *,
    mask: PrivacyStep | None = None,
    groups: Sequence[slice] | None = None,
    group_weights: Sequence[float] | None = None,
    controller: AdaptiveClipController | None = None,
) -> PrivacyPipeline:
    """``clip → noise → [quantize → distributed noise → mask]`` for these settings.

    The same pipeline object serves the phone half and the server half; on the server pass
    the :class:`AdaptiveClipController` so the clip step can update it.
    """
    check_settings(settings, mask)
    steps: list[PrivacyStep] = [
        ClipStep(groups=groups, group_weights=group_weights, controller=controller),
        GaussianNoiseStep(),
    ]
    if settings.secure_aggregation:
        steps += [QuantizeStep(), DistributedNoiseStep()]
        assert mask is not None  # check_settings guarantees it
        steps.append(mask)
    return PrivacyPipeline(steps)


def round_context(
    settings: PrivacySettings,
    *,
    round: int,
    num_sampled: int,
    sampling_rate: float,
    controller: AdaptiveClipController | None = None,
    distributed_noise: DistributedNoise = "discrete_gaussian",
    tail_probability: float = DEFAULT_TAIL_PROBABILITY,
    seed: int | None = None,
) -> RoundContext:
    """The server's context for a round: clip norm from the controller when adaptive.

    ``sampling_rate`` is the probability that a given phone of the population is sampled
    this round (``clients_per_round / population`` for uniform sampling).
    """
    adaptive = settings.adaptive_clipping
    if adaptive and controller is None:
        raise PrivacyConfigError("adaptive clipping needs the server's AdaptiveClipController")
    clip_norm = controller.clip_norm if (adaptive and controller) else settings.clip_norm
    count_stddev = (
        controller.count_stddev_for(num_sampled, settings.noise_multiplier)
        if (adaptive and controller)
        else 0.0
    )
    return RoundContext(
        round=round,
        clip_norm=clip_norm,
        num_sampled=num_sampled,
        noise_mode=settings.noise,
        noise_multiplier=settings.noise_multiplier if settings.noise != "none" else 0.0,
        sampling_rate=sampling_rate,
        honest_fraction=settings.honest_fraction if settings.noise == "distributed" else 1.0,
        adaptive_clipping=adaptive,
        clip_count_stddev=count_stddev,
        modulus_bits=settings.secagg_bits if settings.secure_aggregation else None,
        distributed_noise=distributed_noise,
        tail_probability=tail_probability,
        seed=seed,
    )


def make_ledger(
    settings: PrivacySettings, accountant: AccountantKind = "rdp", amplification: bool = True
) -> PrivacyLedger:
    """The run's ledger at ``settings.delta`` with ``settings.epsilon_budget``."""
    from .accounting import PrivacyLedger  # dp_accounting: server side only

    return PrivacyLedger(
        delta=settings.delta,
        epsilon_budget=settings.epsilon_budget,
        accountant=accountant,
        amplification=amplification,
    )
