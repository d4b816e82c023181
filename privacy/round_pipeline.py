"""The privacy pipeline of one round, built from the round's context alone.

The server decides the round's privacy parameters and sends them to every sampled phone as a
:class:`~fedlora.privacy.dp.RoundContext`; phone and server then build the *same* pipeline
from it, so a phone cannot drift from what the accountant charges:

    clip → noise (local)  [→ quantize → distributed noise → secure-sum marker]

The last step marks where SecAgg+ takes over. Masking itself is a multi-message protocol
(:mod:`fedlora.privacy.secagg.flower`), so this step does not transform the vector: on the
phone it refuses anything that is not a bounded integer vector (so the modular sum provably
cannot wrap), and on the server it is the identity — the protocol already hands over the sum.
"""

from __future__ import annotations

import numpy as np

from fedlora.privacy.dp import (
    AdaptiveClipController,
    ClipStep,
    DistributedNoiseStep,
    GaussianNoiseStep,
    PrivacyPipeline,
    PrivacyStep,
    QuantizeStep,
    RoundContext,
    plan_quantization,
)
from fedlora.privacy.dp.errors import HeadroomError
from fedlora.privacy.dp.pipeline import Metrics, check_int_vector


class SecureSumStep:
    """Marks the secure-aggregation boundary: bounded integers in, their sum out."""

    name = "secure_sum"

    def postprocess_one_user(
        self, vec: np.ndarray, ctx: RoundContext
    ) -> tuple[np.ndarray, Metrics]:
        x = check_int_vector(vec, self.name)
        if ctx.modulus_bits is None:
            raise HeadroomError("secure sum needs the round's modulus bits (ctx.modulus_bits)")
        bound = plan_quantization(ctx, x.shape[0]).max_abs
        worst = int(np.max(np.abs(x))) if x.size else 0
        if worst > bound:
            raise HeadroomError(
                f"a coordinate of {worst} exceeds the round's bound {bound}: the secure sum "
                f"of {ctx.num_sampled} phones could wrap modulo 2^{ctx.modulus_bits}"
            )
        return x, {}

    def postprocess_server(self, aggregate: np.ndarray, ctx: RoundContext) -> np.ndarray:
        return aggregate


def pipeline_for_round(
    ctx: RoundContext, controller: AdaptiveClipController | None = None
) -> PrivacyPipeline:
    """The round's pipeline; the server passes its adaptive-clipping controller."""
    steps: list[PrivacyStep] = [ClipStep(controller=controller), GaussianNoiseStep()]
    if ctx.modulus_bits is not None:
        steps += [QuantizeStep(), DistributedNoiseStep(), SecureSumStep()]
    return PrivacyPipeline(steps)
