"""Phone half of a round's contribution: delta → rule encoding → privacy pipeline.

The phone encodes its LoRA delta exactly as the server's aggregation rule will read it
(:meth:`~fedlora.aggregation.linear.LinearAggregator.encode`: the rule's weight times the
delta scattered into the round's ``r_max``-padded layout), then runs the round's privacy
pipeline (clip → noise [→ quantize → distributed noise]) on that payload. With secure
aggregation the integer payload is packed with its rank and weight as extra coordinates
(:class:`~fedlora.privacy.secagg.ContributionLayout`), so the server only ever learns sums.

Rules that need each phone's factors (FLoRA, :func:`~fedlora.aggregation.needs_each_phone`)
run on no sum: the phone uploads its *own* delta at its own rank, flattened in
:meth:`~fedlora.aggregation.AggregationSpec.rank_layout` (modules in natural order,
``lora_A`` then ``lora_B``, row-major; no padding, no weight applied), after clipping and —
in ``local`` mode — noise. Its weight travels in the :class:`~fedlora.protocol.PhoneReport`
(its example count) and the server derives it exactly as :func:`contribution_weight` does.
Secure aggregation and ``central`` / ``distributed`` noise protect a sum, so they are refused.

Weights: under differential privacy every phone has weight 1 (an unbounded example count
would make the sensitivity unbounded — DP-FedAvg's fixed-denominator estimator, McMahan et
al. 2018); without noise the weight is the phone's number of training examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedlora.adapter import LoraAdapter
from fedlora.aggregation import (
    AggregationSpec,
    Contribution,
    make_sum_aggregator,
    needs_each_phone,
    per_phone_privacy_problems,
)
from fedlora.aggregation.linear import LinearAggregator
from fedlora.errors import FedloraError
from fedlora.privacy.dp import RoundContext
from fedlora.privacy.round_pipeline import pipeline_for_round
from fedlora.privacy.secagg import ContributionLayout
from fedlora.protocol import RoundInstructions


@dataclass(frozen=True)
class PreparedContribution:
    """What leaves the phone: a privatized vector (float, or packed int64 for SecAgg)."""

    vector: np.ndarray
    rank: int
    weight: float
    secure: bool


def contribution_weight(ctx: RoundContext, num_examples: int) -> float:
    return 1.0 if ctx.noise_mode != "none" else float(max(num_examples, 0))


def linear_rule(instr: RoundInstructions, community: LoraAdapter) -> LinearAggregator:
    """The round's aggregation rule as the phone must encode for it."""
    spec = AggregationSpec.from_adapter(community, instr.ranks)
    rule = make_sum_aggregator(instr.rule, spec, starting_views={instr.rank: community})
    if not isinstance(rule, LinearAggregator):
        raise FedloraError(
            f"aggregation rule {instr.rule!r} is not linear: the phone cannot pre-encode its "
            "delta for it (send the delta itself, without secure aggregation)"
        )
    return rule


def prepare_contribution(
    delta: LoraAdapter,
    community: LoraAdapter,
    instr: RoundInstructions,
    ctx: RoundContext,
    *,
    num_examples: int,
    phone_id: str,
) -> PreparedContribution:
    """Encode and privatize one phone's delta for the round described by ``instr``/``ctx``."""
    if delta.meta.kind != "delta":
        raise FedloraError("only a LoRA delta (kind='delta') may enter the privacy pipeline")
    weight = contribution_weight(ctx, num_examples)
    if needs_each_phone(instr.rule):
        return _prepare_own_delta(delta, community, instr, ctx, weight=weight, phone_id=phone_id)
    rule = linear_rule(instr, community)
    encoded = rule.encode(Contribution(delta=delta, weight=weight, client_id=phone_id))
    payload, _local_metrics = pipeline_for_round(ctx.for_phone(phone_id)).postprocess_one_user(
        encoded.payload, ctx.for_phone(phone_id)
    )
    rank = delta.max_rank
    if instr.secure_aggregation:
        layout = ContributionLayout(payload_len=int(payload.shape[0]), ranks=instr.ranks)
        packed = layout.pack(payload, rank=rank, weight=round(weight))
        return PreparedContribution(vector=packed, rank=rank, weight=weight, secure=True)
    return PreparedContribution(
        vector=np.asarray(payload, dtype=np.float32), rank=rank, weight=weight, secure=False
    )


def _prepare_own_delta(
    delta: LoraAdapter,
    community: LoraAdapter,
    instr: RoundInstructions,
    ctx: RoundContext,
    *,
    weight: float,
    phone_id: str,
) -> PreparedContribution:
    """A per-phone rule's upload: the phone's own delta in ``rank_layout``, privatized."""
    problems = per_phone_privacy_problems(
        instr.rule, secure_aggregation=instr.secure_aggregation, noise=ctx.noise_mode
    )
    if problems:
        raise FedloraError("; ".join(problems))
    spec = AggregationSpec.from_adapter(community, instr.ranks)
    rank = delta.max_rank
    layout = spec.rank_layout(rank)
    flat = layout.flatten(delta, dtype="float64")
    phone_ctx = ctx.for_phone(phone_id)
    payload, _local_metrics = pipeline_for_round(phone_ctx).postprocess_one_user(flat, phone_ctx)
    return PreparedContribution(
        vector=np.asarray(payload, dtype=np.float32), rank=rank, weight=weight, secure=False
    )
