"""From an aggregate to the next community adapter and its rank views.

The aggregate is a pseudo-gradient; the server optimizer applies it to the community's
parameters in the aggregate's space:

* factor space — the community's factors, zero-padded to ``r_max``, plus the optimizer's
  step; published as is (no approximation);
* dense space — the community's dense ``ΔW`` plus the step, re-factored to the rule's
  publish rank (FlexLoRA: ``r_max``; FLoRA: the exact numerical rank). ``publish_error`` is
  the relative error of that re-factoring.

Then :func:`~fedlora.aggregation.redistribute.redistribute` makes one view per rank group.
Everything is computed into new objects: the input community and optimizer state are never
modified, and any failure raises before a result exists (all-or-nothing).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedlora.adapter import LoraAdapter, LoraPair
from fedlora.ranks import factor_dense

from .base import Aggregate, Aggregator
from .contribution import SCALING_RTOL, AggregationSpec, Contribution
from .errors import AggregationError
from .optimizers import FedAvg, OptimizerState, ServerOptimizer
from .ranked_sum import RankedSum
from .redistribute import RankView, redistribute


@dataclass(frozen=True)
class ServerStep:
    """The new community adapter, the optimizer's new state and the publishing error."""

    community: LoraAdapter
    optimizer_state: OptimizerState
    publish_error: float


@dataclass(frozen=True)
class RoundResult:
    """Everything a round publishes: community, per-rank views (with errors), bookkeeping."""

    community: LoraAdapter
    optimizer_state: OptimizerState
    views: dict[int, RankView]
    publish_error: float
    aggregate: Aggregate


def _check_community(spec: AggregationSpec, community: LoraAdapter) -> None:
    if community.meta.base_fingerprint != spec.base_fingerprint:
        raise AggregationError(
            f"community adapter is for base {community.meta.base_fingerprint!r}, "
            f"the aggregate for {spec.base_fingerprint!r}"
        )
    if set(community.pairs) != set(spec.modules):
        odd = sorted(set(community.pairs) ^ set(spec.modules))
        raise AggregationError(f"community adapter and aggregate differ at module {odd[0]!r}")
    for m, p in community:
        if (p.in_features, p.out_features) != spec.linear_shapes[m]:
            raise AggregationError(f"community module {m!r} has other shapes than the aggregate")
        s, want = community.meta.scaling(m), spec.scalings[m]
        if abs(s - want) > SCALING_RTOL * abs(want):
            raise AggregationError(f"community module {m!r}: scaling {s} != aggregate's {want}")


def _factor_params(spec: AggregationSpec, community: LoraAdapter) -> dict[str, np.ndarray]:
    r_max = spec.r_max
    params: dict[str, np.ndarray] = {}
    for m in spec.modules:
        p = community.pairs[m]
        if p.rank > r_max:
            raise AggregationError(
                f"community module {m!r} has rank {p.rank} > r_max {r_max}: a factor-space rule "
                "needs the community at rank <= r_max (re-factor it first)"
            )
        d_in, d_out = spec.linear_shapes[m]
        a = np.zeros((r_max, d_in))
        b = np.zeros((d_out, r_max))
        a[: p.rank] = p.A
        b[:, : p.rank] = p.B
        params[f"{m}.lora_A.weight"] = a
        params[f"{m}.lora_B.weight"] = b
    return params


def numerical_rank(matrices: Iterable[np.ndarray]) -> int:
    """Largest numerical rank among ``matrices`` (singular values above float64 noise), ≥ 1."""
    best = 1
    for mat in matrices:
        s = np.linalg.svd(mat, compute_uv=False)
        if s.size == 0 or s[0] == 0:
            continue
        tol = max(mat.shape) * np.finfo(np.float64).eps * s[0]
        best = max(best, int(np.count_nonzero(s > tol)))
    return best


def apply_aggregate(
    community: LoraAdapter,
    aggregate: Aggregate,
    optimizer: ServerOptimizer,
    state: OptimizerState | None = None,
) -> ServerStep:
    """Apply ``aggregate`` to ``community`` through ``optimizer`` (see module docstring)."""
    spec = aggregate.spec
    _check_community(spec, community)
    dtype = community.meta.dtype
    if aggregate.space == "factor":
        params = _factor_params(spec, community)
        new, new_state = optimizer.step(params, aggregate.tensors, state)
        r = spec.r_max
        pairs = {
            m: LoraPair(
                A=new[f"{m}.lora_A.weight"].astype(dtype), B=new[f"{m}.lora_B.weight"].astype(dtype)
            )
            for m in spec.modules
        }
        publish_error = 0.0
    else:
        params = {m: community.delta_weight(m) for m in spec.modules}
        new, new_state = optimizer.step(params, aggregate.tensors, state)
        r = aggregate.publish_rank or numerical_rank(new.values())
        pairs = {m: factor_dense(new[m], r, spec.scalings[m], dtype) for m in spec.modules}
        num = den = 0.0
        for m in spec.modules:
            got = spec.scalings[m] * (pairs[m].B.astype(np.float64) @ pairs[m].A.astype(np.float64))
            num += float(np.sum((new[m] - got) ** 2))
            den += float(np.sum(new[m] ** 2))
        publish_error = math.sqrt(num / den) if den > 0 else math.sqrt(num)
    meta = community.meta.model_copy(
        update={
            "ranks": dict.fromkeys(spec.modules, r),
            "alphas": {m: spec.scalings[m] * r for m in spec.modules},
            "kind": "adapter",
        }
    )
    out = LoraAdapter(meta=meta, pairs={m: pairs[m] for m in community.pairs})
    out.check_consistent()
    return ServerStep(community=out, optimizer_state=new_state, publish_error=publish_error)


def finish_round(
    community: LoraAdapter,
    aggregate: Aggregate,
    optimizer: ServerOptimizer | None = None,
    state: OptimizerState | None = None,
    ranks: Iterable[int] | None = None,
) -> RoundResult:
    """Server step (default FedAvg, η = 1) plus one view per rank (default: the spec's)."""
    step = apply_aggregate(community, aggregate, optimizer or FedAvg(), state)
    views = redistribute(
        step.community, aggregate.spec.ranks if ranks is None else ranks, nested=aggregate.nested
    )
    return RoundResult(
        community=step.community,
        optimizer_state=step.optimizer_state,
        views=views,
        publish_error=step.publish_error,
        aggregate=aggregate,
    )


def run_round(
    aggregator: Aggregator[Any],
    community: LoraAdapter,
    *,
    contributions: Iterable[Contribution] = (),
    sums: Iterable[RankedSum] = (),
    optimizer: ServerOptimizer | None = None,
    state: OptimizerState | None = None,
) -> RoundResult:
    """Stream per-phone ``contributions`` and/or secure ``sums`` through ``aggregator``, then
    :func:`finish_round`. Mixing both is allowed for linear rules (e.g. a SecAgg cohort plus
    trusted simulated phones)."""
    acc = aggregator.init_state()
    for c in contributions:
        acc = aggregator.accumulate(acc, c)
    for s in sums:
        acc = aggregator.accumulate_sum(acc, s)
    return finish_round(community, aggregator.finalize(acc), optimizer, state)
