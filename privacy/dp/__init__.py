"""Differential privacy of LoRA-adapter deltas: clip → noise → quantize → (mask), and accounting.

Small modules, one job each:

* :mod:`.context` — :class:`RoundContext`, the per-round numbers every step agrees on;
* :mod:`.pipeline` — the :class:`PrivacyStep` protocol and :class:`PrivacyPipeline`;
* :mod:`.clipping` — L2 / per-group clipping, adaptive clipping (Andrew et al. 2021);
* :mod:`.noise` — local, central and distributed Gaussian noise;
* :mod:`.discrete` — discrete Gaussian and Skellam samplers;
* :mod:`.quantize` / :mod:`.plan` — stochastic-rounding quantization and integer headroom;
* :mod:`.calibration` — noise calibration and tail bounds;
* :mod:`.accounting` — :class:`PrivacyLedger` over ``dp_accounting``;
* :mod:`.build` — assembly from :class:`fedlora.config.PrivacySettings`.

Only numpy, scipy and dp_accounting at module level: no torch (the server has none).
See docs/privacy.md for the threat model and what each mode assumes.

The phone half needs only numpy: the accounting names (``PrivacyLedger``, ``RoundPrivacy``,
``RoundRecord``, ``dp_event_for``) load ``dp_accounting`` (and scipy, ~3 s) on first use, so
a phone without the ``server`` extra can import this package.
"""

from typing import TYPE_CHECKING, Any

from .build import (
    build_pipeline,
    check_settings,
    make_controller,
    make_ledger,
    round_context,
)
from .calibration import adaptive_delta_noise_multiplier, default_count_stddev
from .clipping import (
    AdaptiveClipController,
    ClipStep,
    group_clip,
    l2_clip,
    layout_groups,
)
from .context import DistributedNoise, NoiseMode, RoundContext
from .discrete import sample_discrete_gaussian, sample_skellam
from .errors import (
    DeltaInputError,
    HeadroomError,
    InsufficientNoiseError,
    PrivacyBudgetExceeded,
    PrivacyConfigError,
    PrivacyError,
)
from .noise import DistributedNoiseStep, GaussianNoiseStep
from .pipeline import Metrics, PrivacyPipeline, PrivacyStep, delta_vector
from .plan import (
    QuantizationPlan,
    check_headroom,
    headroom_bits,
    plan_quantization,
)
from .quantize import QuantizeStep, from_modular, stochastic_round, to_modular
from .rng import derived_generator, secure_generator

if TYPE_CHECKING:
    from .accounting import PrivacyLedger, RoundPrivacy, RoundRecord, dp_event_for

_LAZY = {"PrivacyLedger", "RoundPrivacy", "RoundRecord", "dp_event_for"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import accounting

        return getattr(accounting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdaptiveClipController",
    "ClipStep",
    "DeltaInputError",
    "DistributedNoise",
    "DistributedNoiseStep",
    "GaussianNoiseStep",
    "HeadroomError",
    "InsufficientNoiseError",
    "Metrics",
    "NoiseMode",
    "PrivacyBudgetExceeded",
    "PrivacyConfigError",
    "PrivacyError",
    "PrivacyLedger",
    "PrivacyPipeline",
    "PrivacyStep",
    "QuantizationPlan",
    "QuantizeStep",
    "RoundContext",
    "RoundPrivacy",
    "RoundRecord",
    "adaptive_delta_noise_multiplier",
    "build_pipeline",
    "check_headroom",
    "check_settings",
    "default_count_stddev",
    "delta_vector",
    "derived_generator",
    "dp_event_for",
    "from_modular",
    "group_clip",
    "headroom_bits",
    "l2_clip",
    "layout_groups",
    "make_controller",
    "make_ledger",
    "plan_quantization",
    "round_context",
    "sample_discrete_gaussian",
    "sample_skellam",
    "secure_generator",
    "stochastic_round",
    "to_modular",
]
