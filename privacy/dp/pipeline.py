"""Composable privacy steps over one flat LoRA-delta vector, with a server half each.

The shape is pfl-research's postprocessor pipeline: every step has a phone half
(:meth:`PrivacyStep.postprocess_one_user`, run on one phone's vector) and a server half
(:meth:`PrivacyStep.postprocess_server`, run once on the *sum* of the phones' vectors, in
reverse step order, undoing scaling and quantization). The server never needs an individual
vector, which is what lets the last step be secure aggregation.

The standard order is ``clip → noise (float) → quantize → distributed noise (integer) →
mask``; :func:`fedlora.privacy.dp.build.build_pipeline` assembles it from the run settings.

Contract for the mask step (secure aggregation, :mod:`fedlora.privacy.secagg`): its phone
half receives a signed ``int64`` vector whose entries are bounded by the round's
:class:`~fedlora.privacy.dp.plan.QuantizationPlan` (so the sum of ``num_sampled`` of them fits
in ``modulus_bits`` signed bits) and returns whatever it sends; its server half receives the
unmasked sum and must return the *signed* ``int64`` sum (see
:func:`fedlora.privacy.dp.quantize.from_modular`).

Only LoRA deltas enter: :func:`delta_vector` refuses anything whose metadata is not
``kind == "delta"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from fedlora.adapter import LoraAdapter
from fedlora.layout import FlatLayout

from .context import RoundContext
from .errors import DeltaInputError, PrivacyConfigError

#: Scalar metrics of a step. Phone-side metrics describe one phone's private data (e.g. its
#: pre-clip norm): they are for on-device logs and must never be sent in the clear.
Metrics = dict[str, float]


@runtime_checkable
class PrivacyStep(Protocol):
    """One composable privacy step: a phone half and a server half.

    Steps may also set ``provides_noise: frozenset[str]`` (noise modes they implement); the
    pipeline refuses a round whose noise mode no step provides, so a misassembled pipeline
    fails loudly instead of silently adding no noise.
    """

    @property
    def name(self) -> str:
        """Short unique name; prefixes the step's metrics."""
        ...

    def postprocess_one_user(
        self, vec: np.ndarray, ctx: RoundContext
    ) -> tuple[np.ndarray, Metrics]:
        """Phone half: transform one phone's vector; never mutates ``vec``."""
        ...

    def postprocess_server(self, aggregate: np.ndarray, ctx: RoundContext) -> np.ndarray:
        """Server half: transform the sum of the contributing phones' vectors."""
        ...


class PrivacyPipeline:
    """Steps applied in order on the phone and in reverse order on the server's sum.

    A pipeline is itself a :class:`PrivacyStep`, so pipelines nest.
    """

    name = "pipeline"

    def __init__(self, steps: Sequence[PrivacyStep]) -> None:
        names = [s.name for s in steps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise PrivacyConfigError(f"privacy steps need unique names; repeated: {dupes}")
        self._steps = tuple(steps)
        self.provides_noise: frozenset[str] = frozenset().union(
            *(getattr(s, "provides_noise", frozenset()) for s in steps)
        )

    @property
    def steps(self) -> tuple[PrivacyStep, ...]:
        return self._steps

    def then(self, step: PrivacyStep) -> PrivacyPipeline:
        """A new pipeline with ``step`` appended (e.g. the secure-aggregation mask)."""
        return PrivacyPipeline([*self._steps, step])

    def _check_mode(self, ctx: RoundContext) -> None:
        if ctx.noise_mode != "none" and ctx.noise_mode not in self.provides_noise:
            raise PrivacyConfigError(
                f"round {ctx.round} asks for noise_mode={ctx.noise_mode!r} but no step of this "
                f"pipeline ({[s.name for s in self._steps]}) provides it"
            )

    def postprocess_one_user(
        self, vec: np.ndarray, ctx: RoundContext
    ) -> tuple[np.ndarray, Metrics]:
        """Phone side: run every step in order; metrics are prefixed ``<step>/``."""
        self._check_mode(ctx)
        metrics: Metrics = {}
        out = vec
        for step in self._steps:
            out, step_metrics = step.postprocess_one_user(out, ctx)
            metrics.update({f"{step.name}/{k}": v for k, v in step_metrics.items()})
        return out, metrics

    def postprocess_server(self, aggregate: np.ndarray, ctx: RoundContext) -> np.ndarray:
        """Server side: run every step's server half in reverse order on the sum.

        ``ctx.num_contributors`` must be set (:meth:`RoundContext.with_contributors`): the
        clip-count and the distributed-noise check depend on how many vectors were summed.
        """
        if ctx.num_contributors is None:
            raise PrivacyConfigError(
                "the server half needs ctx.num_contributors: use ctx.with_contributors(k) with "
                "the number of phones whose vectors are in the sum"
            )
        if ctx.num_contributors < 1:
            raise PrivacyConfigError(f"round {ctx.round}: no phone contributed; nothing to release")
        self._check_mode(ctx)
        out = aggregate
        for step in reversed(self._steps):
            out = step.postprocess_server(out, ctx)
        return out


def check_float_vector(vec: np.ndarray, where: str) -> np.ndarray:
    """``vec`` as a 1-D float64 array, or :class:`DeltaInputError` naming ``where``."""
    arr = np.asarray(vec)
    if arr.ndim != 1:
        raise DeltaInputError(f"{where}: expected a 1-D delta vector, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise DeltaInputError(
            f"{where}: expected a float vector, got dtype {arr.dtype} (is this step placed "
            "after quantization?)"
        )
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise DeltaInputError(f"{where}: non-finite value at index {bad}; refusing to send it")
    return arr


def check_int_vector(vec: np.ndarray, where: str) -> np.ndarray:
    """``vec`` as a 1-D int64 array, or :class:`DeltaInputError` naming ``where``."""
    arr = np.asarray(vec)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DeltaInputError(
            f"{where}: expected a 1-D integer vector, got {arr.dtype} of shape {arr.shape} (is "
            "this step placed before quantization?)"
        )
    return arr.astype(np.int64, copy=False)


def delta_vector(delta: LoraAdapter, layout: FlatLayout) -> np.ndarray:
    """The float64 vector of a LoRA *delta* in the agreed layout (the pipeline's input).

    Refuses full adapters (``kind != "delta"``): only deltas of LoRA tensors are ever
    privatized and sent, never weights.
    """
    kind = getattr(delta.meta, "kind", None)
    if kind != "delta":
        raise DeltaInputError(
            f"only LoRA deltas enter the privacy pipeline; got an adapter of kind {kind!r}"
        )
    return check_float_vector(layout.flatten(delta, dtype="float64"), "delta_vector")
