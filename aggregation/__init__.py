"""Pure NumPy aggregation: from (sums of) rank-tagged LoRA contributions to one community
adapter, plus server optimizers. No torch, no network.

A round, server side::

    spec = AggregationSpec.from_adapter(community, ranks=(4, 8, 16))
    rule = make_aggregator(settings.aggregation, spec, secure_aggregation=False,
                           community=community)
    state = rule.init_state()
    for c in contributions:                 # or rule.accumulate_sum(state, ranked_sum)
        state = rule.accumulate(state, c)   # validates first; O(model) memory
    result = finish_round(community, rule.finalize(state),
                          make_server_optimizer(settings.aggregation), opt_state)
    result.community, result.views[4].adapter, result.views[4].error

See docs/aggregation.md for the rules and what each promises (linear? exact?).
"""

from .base import Aggregate, Aggregator
from .contribution import AggregationSpec, Contribution, validate_contribution
from .errors import AggregationError, ContributionError, NotLinearError
from .fedsa import FedSALoRA, personalize
from .ffa import FFALoRA, initial_adapter, shared_a
from .flexlora import FlexLoRA
from .flora import FLoRA
from .hetlora import HetLoRA, adapter_norm, factor_norm
from .linear import LinearAggregator
from .optimizers import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    OptimizerState,
    ServerOptimizer,
)
from .rank_fedavg import RankFedAvg
from .ranked_sum import RankedSum
from .redistribute import RankView, rank_view, redistribute
from .registry import (
    RULES,
    SUM_NOISE_MODES,
    RuleInfo,
    make_aggregator,
    make_server_optimizer,
    make_sum_aggregator,
    needs_each_phone,
    per_phone_privacy_problems,
)
from .server_round import (
    RoundResult,
    ServerStep,
    apply_aggregate,
    finish_round,
    run_round,
)

__all__ = [
    "RULES",
    "SUM_NOISE_MODES",
    "Aggregate",
    "AggregationError",
    "AggregationSpec",
    "Aggregator",
    "Contribution",
    "ContributionError",
    "FFALoRA",
    "FLoRA",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedSALoRA",
    "FedYogi",
    "FlexLoRA",
    "HetLoRA",
    "LinearAggregator",
    "NotLinearError",
    "OptimizerState",
    "RankFedAvg",
    "RankView",
    "RankedSum",
    "RoundResult",
    "RuleInfo",
    "ServerOptimizer",
    "ServerStep",
    "adapter_norm",
    "apply_aggregate",
    "factor_norm",
    "finish_round",
    "initial_adapter",
    "make_aggregator",
    "make_server_optimizer",
    "make_sum_aggregator",
    "needs_each_phone",
    "per_phone_privacy_problems",
    "personalize",
    "rank_view",
    "redistribute",
    "run_round",
    "shared_a",
    "validate_contribution",
]
