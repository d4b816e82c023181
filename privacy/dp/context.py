"""What every step of one round agrees on: the :class:`RoundContext`.

The server fixes these numbers before a round and sends them to the sampled phones (see
:meth:`RoundContext.to_config`); every phone-side and server-side step reads them from the
same frozen object, so a round can never noise with one clip norm and clip with another —
the bug behind Flower's adaptive-clipping wrappers, whose server noise used the *updated*
clip norm (measured 14× too little noise). All derived quantities (the adjusted noise
multiplier of adaptive clipping, the L2 sensitivity, the noise standard deviation) are
properties here, computed one way for everyone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal, get_args

import numpy as np

from .calibration import adaptive_delta_noise_multiplier
from .errors import PrivacyConfigError
from .rng import derived_generator

NoiseMode = Literal["none", "local", "distributed", "central"]
DistributedNoise = Literal["discrete_gaussian", "skellam"]

#: Default probability that one phone's vector exceeds its integer bound in a round (and is
#: clamped). Only distributed noise makes this matter for privacy; see docs/privacy.md.
DEFAULT_TAIL_PROBABILITY = 2.0**-50

ConfigValue = int | float | str | bool


@dataclass(frozen=True)
class RoundContext:
    """Per-round privacy parameters, identical on the server and on every sampled phone.

    ``noise_multiplier`` is the *target* z that the accountant charges for the round; with
    adaptive clipping the delta itself gets the larger :attr:`delta_noise_multiplier`
    (Andrew et al. 2021) so that the delta and the clip-count bit together cost z.
    ``num_contributors`` is set on the server only, once it knows how many phones' vectors
    are in the sum (:meth:`with_contributors`).
    """

    round: int
    clip_norm: float
    num_sampled: int
    noise_mode: NoiseMode = "none"
    noise_multiplier: float = 0.0
    sampling_rate: float = 1.0
    honest_fraction: float = 1.0
    adaptive_clipping: bool = False
    clip_count_stddev: float = 0.0
    modulus_bits: int | None = None
    distributed_noise: DistributedNoise = "discrete_gaussian"
    tail_probability: float = DEFAULT_TAIL_PROBABILITY
    seed: int | None = None
    phone_id: str = ""
    num_contributors: int | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.round < 0:
            problems.append(f"round must be >= 0, got {self.round}")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            problems.append(f"clip_norm must be finite and > 0, got {self.clip_norm}")
        if self.num_sampled < 1:
            problems.append(f"num_sampled must be >= 1, got {self.num_sampled}")
        if self.noise_mode not in get_args(NoiseMode):
            problems.append(
                f"noise_mode must be one of {get_args(NoiseMode)}, got {self.noise_mode!r}"
            )
        if self.distributed_noise not in get_args(DistributedNoise):
            problems.append(
                f"distributed_noise must be one of {get_args(DistributedNoise)}, "
                f"got {self.distributed_noise!r}"
            )
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            problems.append(
                f"noise_multiplier must be finite and >= 0, got {self.noise_multiplier}"
            )
        if not 0 < self.sampling_rate <= 1:
            problems.append(f"sampling_rate must be in (0, 1], got {self.sampling_rate}")
        if not 0 < self.honest_fraction <= 1:
            problems.append(f"honest_fraction must be in (0, 1], got {self.honest_fraction}")
        if self.modulus_bits is not None and not 2 <= self.modulus_bits <= 62:
            problems.append(f"modulus_bits must be in [2, 62], got {self.modulus_bits}")
        if not 0 < self.tail_probability <= 1e-3:
            problems.append(f"tail_probability must be in (0, 1e-3], got {self.tail_probability}")
        if self.adaptive_clipping and not self.clip_count_stddev > 0 and self._noised:
            problems.append("adaptive clipping with noise needs clip_count_stddev (σ_b) > 0")
        if self.num_contributors is not None and not (
            0 <= self.num_contributors <= self.num_sampled
        ):
            problems.append(
                f"num_contributors must be in [0, num_sampled={self.num_sampled}] (the integer "
                f"headroom is sized for the sampled phones), got {self.num_contributors}"
            )
        if problems:
            raise PrivacyConfigError("invalid round context: " + "; ".join(problems))
        if self.adaptive_clipping and self._noised:
            adaptive_delta_noise_multiplier(self.noise_multiplier, self.clip_count_stddev)

    # ------------------------------------------------------------------ derived numbers
    @property
    def _noised(self) -> bool:
        return self.noise_mode != "none" and self.noise_multiplier > 0

    @property
    def delta_noise_multiplier(self) -> float:
        """σ_Δ: noise std on the delta coordinates, in units of the round's clip norm."""
        if not self._noised:
            return 0.0
        if self.adaptive_clipping:
            return adaptive_delta_noise_multiplier(self.noise_multiplier, self.clip_count_stddev)
        return self.noise_multiplier

    @property
    def bit_scale(self) -> float:
        """κ: the centred clip bit ``b − ½`` travels as ``κ·(b − ½)`` in the vector.

        With κ = C·σ_Δ/σ_b the delta noise σ_Δ·C becomes exactly σ_b on the count (Andrew
        et al. 2021), so one noise draw serves both. Without noise κ = C.
        """
        if not self.adaptive_clipping:
            return 0.0
        if not self._noised:
            return self.clip_norm
        return self.clip_norm * self.delta_noise_multiplier / self.clip_count_stddev

    @property
    def sensitivity(self) -> float:
        """L2 bound of one phone's vector after clipping (delta plus the κ-scaled bit)."""
        if not self.adaptive_clipping:
            return self.clip_norm
        return math.hypot(self.clip_norm, self.bit_scale / 2.0)

    @property
    def noise_std(self) -> float:
        """Std of the noise the *sum* carries per coordinate, float units: σ_Δ·C = z·sensitivity."""
        return self.delta_noise_multiplier * self.clip_norm

    @property
    def contributors(self) -> int:
        """Phones whose vectors are in the server's sum (``num_sampled`` until known)."""
        return self.num_sampled if self.num_contributors is None else self.num_contributors

    # ------------------------------------------------------------------ variants
    def for_phone(self, phone_id: str) -> RoundContext:
        """The phone's copy: its id keys its independent random streams."""
        return replace(self, phone_id=str(phone_id), num_contributors=None)

    def with_contributors(self, num_contributors: int) -> RoundContext:
        """The server's copy once it knows how many vectors it summed."""
        return replace(self, num_contributors=int(num_contributors))

    def rng(self, purpose: str) -> np.random.Generator:
        """Random stream for ``purpose``: CSPRNG-seeded unless the context carries a seed."""
        return derived_generator(self.seed, "fedlora.dp", self.round, self.phone_id, purpose)

    # ------------------------------------------------------------------ wire
    def to_config(self, prefix: str = "dp.") -> dict[str, ConfigValue]:
        """Flat scalars for a Flower ``ConfigRecord`` (None fields are left out)."""
        return {prefix + k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_config(cls, config: dict[str, ConfigValue], prefix: str = "dp.") -> RoundContext:
        """Inverse of :meth:`to_config`; unknown keys under ``prefix`` are an error."""
        fields = set(cls.__dataclass_fields__)
        raw = {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix)}
        unknown = sorted(set(raw) - fields)
        if unknown:
            raise PrivacyConfigError(f"unknown round-context keys: {unknown}")
        ints = {"round", "num_sampled", "modulus_bits", "seed", "num_contributors"}
        floats = {
            "clip_norm",
            "noise_multiplier",
            "sampling_rate",
            "honest_fraction",
            "clip_count_stddev",
            "tail_probability",
        }
        kwargs: dict[str, object] = {}
        for key, value in raw.items():
            if key in ints:
                kwargs[key] = int(value)
            elif key in floats:
                kwargs[key] = float(value)
            elif key == "adaptive_clipping":
                kwargs[key] = bool(value)
            else:
                kwargs[key] = str(value)
        return cls(**kwargs)  # type: ignore[arg-type]
