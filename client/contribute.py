"""Phone half of a round's contribution: delta → rule encoding → privacy pipeline.

The phone encodes its LoRA delta exactly as the server's aggregation rule will read it
(:meth:`~fedlora.aggregation.linear.LinearAggregator.encode`: the rule's weight times the
delta scattered into the round's ``r_max``-padded layout), then runs the round's privacy
pipeline (clip → noise [→ quantize → distributed noise]) on that payload. With secure
aggregation the integer payload is packed with its rank and weight as extra coordinates
(:class:`~fedlora.privacy.secagg.ContributionLayout`), so the server only ever learns sums.

Weights: under differential privacy every phone has weight 1 (an unbounded example count
would make the sensitivity unbounded — DP-FedAvg's fixed-denominator estimator, McMahan et
al. 2018); without noise the weight is the phone's number of training examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedlora.adapter import LoraAdapter
from fedlora.aggregation import AggregationSpec, Contribution, make_aggregator
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
    rule = make_aggregator(
        instr.rule,
        spec,
        secure_aggregation=instr.secure_aggregation,
        starting_views={instr.rank: community},
    )
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
    rule = linear_rule(instr, community)
    weight = contribution_weight(ctx, num_examples)
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
