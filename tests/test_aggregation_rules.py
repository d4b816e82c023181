"""Each aggregation rule against a straightforward reference; exact and linear claims.

References are written the long way (per phone, per slot, through the core's own
``pad_to_rank`` / ``LoraAdapter.plus`` / ``delta_weight``), not through the rules' code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.adapter import LoraAdapter, LoraPair
from fedlora.aggregation import (
    RULES,
    Aggregate,
    AggregationSpec,
    Contribution,
    FedAvg,
    FedSALoRA,
    FFALoRA,
    FlexLoRA,
    FLoRA,
    HetLoRA,
    LinearAggregator,
    RankedSum,
    RankFedAvg,
    adapter_norm,
    finish_round,
    redistribute,
    shared_a,
)
from fedlora.aggregation.synthetic import default_spec, random_adapter
from fedlora.ranks import pad_to_rank

# one module whose stack folds to dense at once (min(d) = 5), one that stacks a while (12)
SHAPES = {
    "model.layers.0.self_attn.q_proj": (6, 5),
    "model.layers.1.self_attn.v_proj": (16, 12),
}
RANKS = (1, 2, 4)


def small_spec(ranks: Sequence[int] = RANKS) -> AggregationSpec:
    return default_spec(ranks, linear_shapes=SHAPES, dtype="float64", scaling=2.0)


def make_phones(
    spec: AggregationSpec,
    plan: Sequence[tuple[int, float]],
    seed: int,
    *,
    zero_a: bool = False,
    scale: float = 0.5,
) -> list[Contribution]:
    rng = np.random.default_rng(seed)
    return [
        Contribution(
            delta=random_adapter(spec, r, rng, kind="delta", scale=scale, zero_a=zero_a),
            weight=w,
            client_id=f"p{i}",
        )
        for i, (r, w) in enumerate(plan)
    ]


def padded(c: Contribution, r_max: int) -> LoraAdapter:
    return pad_to_rank(c.delta, r_max)


def community_and_views(
    spec: AggregationSpec, seed: int, *, nested: bool
) -> tuple[LoraAdapter, dict[int, LoraAdapter]]:
    community = random_adapter(spec, spec.r_max, np.random.default_rng(seed + 1000), scale=0.3)
    views = {r: v.adapter for r, v in redistribute(community, spec.ranks, nested=nested).items()}
    return community, views


def dense_change_reference(
    spec: AggregationSpec, cs: Sequence[Contribution], views: dict[int, LoraAdapter]
) -> dict[str, np.ndarray]:
    """Σ wᵢ [ΔW(viewᵢ + deltaᵢ) − ΔW(viewᵢ)] / Σ wᵢ through the core adapter API."""
    total = sum(c.weight for c in cs)
    out = {m: np.zeros((spec.linear_shapes[m][1], spec.linear_shapes[m][0])) for m in spec.modules}
    for c in cs:
        view = views[c.rank]
        after = view.plus(c.delta)
        for m in spec.modules:
            out[m] += c.weight * (after.delta_weight(m) - view.delta_weight(m)) / total
    return out


def assert_tensors_close(got: Aggregate, want: dict[str, np.ndarray], tol: float = 1e-10) -> None:
    assert set(got.tensors) == set(want)
    for name, w in want.items():
        np.testing.assert_allclose(got.tensors[name], w, rtol=tol, atol=tol, err_msg=name)


plans = st.lists(
    st.tuples(st.sampled_from(RANKS), st.integers(1, 20).map(float)), min_size=1, max_size=6
)
seeds = st.integers(0, 10_000)


# ---------------------------------------------------------------------------- references
def ref_rank_fedavg(spec: AggregationSpec, cs: Sequence[Contribution]) -> dict[str, np.ndarray]:
    """FedAvg within each rank group, then fuse group means slot by slot by group weight."""
    r_max = spec.r_max
    groups: dict[int, list[Contribution]] = {}
    for c in cs:
        groups.setdefault(c.rank, []).append(c)
    means: dict[int, tuple[float, LoraAdapter]] = {}
    for r, members in groups.items():
        wsum = sum(c.weight for c in members)
        pairs = {
            m: LoraPair(
                A=sum(c.weight * c.delta.pairs[m].A for c in members) / wsum,
                B=sum(c.weight * c.delta.pairs[m].B for c in members) / wsum,
            )
            for m in spec.modules
        }
        means[r] = (wsum, pad_to_rank(LoraAdapter(meta=members[0].delta.meta, pairs=pairs), r_max))
    out: dict[str, np.ndarray] = {}
    for m in spec.modules:
        d_in, d_out = spec.linear_shapes[m]
        a, b = np.zeros((r_max, d_in)), np.zeros((d_out, r_max))
        for k in range(r_max):
            holders = [(w, mean) for r, (w, mean) in means.items() if r > k]
            den = sum(w for w, _ in holders)
            if den > 0:
                a[k] = sum(w * mean.pairs[m].A[k] for w, mean in holders) / den
                b[:, k] = sum(w * mean.pairs[m].B[:, k] for w, mean in holders) / den
        out[f"{m}.lora_A.weight"], out[f"{m}.lora_B.weight"] = a, b
    return out


def ref_zero_pad_mean(
    spec: AggregationSpec, cs: Sequence[Contribution], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """Σ pᵢ pad(xᵢ) / Σ pᵢ (HetLoRA's zero-padding average)."""
    total = sum(weights)
    out: dict[str, np.ndarray] = {}
    for m in spec.modules:
        out[f"{m}.lora_A.weight"] = (
            sum(p * padded(c, spec.r_max).pairs[m].A for c, p in zip(cs, weights, strict=True))
            / total
        )
        out[f"{m}.lora_B.weight"] = (
            sum(p * padded(c, spec.r_max).pairs[m].B for c, p in zip(cs, weights, strict=True))
            / total
        )
    return out


def ref_per_slot_a(spec: AggregationSpec, cs: Sequence[Contribution]) -> dict[str, np.ndarray]:
    """FedSA: each A row averaged over the phones that have it; B untouched (zero update)."""
    out: dict[str, np.ndarray] = {}
    for m in spec.modules:
        d_in, d_out = spec.linear_shapes[m]
        a = np.zeros((spec.r_max, d_in))
        for k in range(spec.r_max):
            have = [c for c in cs if c.rank > k]
            if have:
                a[k] = sum(c.weight * c.delta.pairs[m].A[k] for c in have) / sum(
                    c.weight for c in have
                )
        out[f"{m}.lora_A.weight"] = a
        out[f"{m}.lora_B.weight"] = np.zeros((d_out, spec.r_max))
    return out


# ---------------------------------------------------------------------------- rules vs refs
@settings(max_examples=25, deadline=None)
@given(plan=plans, seed=seeds)
def test_rank_fedavg_is_group_fedavg_fused_per_slot(
    plan: list[tuple[int, float]], seed: int
) -> None:
    spec = small_spec()
    cs = make_phones(spec, plan, seed)
    got = RankFedAvg(spec).aggregate(cs)
    assert_tensors_close(got, ref_rank_fedavg(spec, cs))
    assert got.group_weights == {r: sum(w for rr, w in plan if rr == r) for r in RANKS}
    assert got.slot_weights[0] == pytest.approx(sum(w for _, w in plan))


@settings(max_examples=25, deadline=None)
@given(plan=plans, seed=seeds, given_norm=st.booleans())
def test_hetlora_is_norm_weighted_zero_padding(
    plan: list[tuple[int, float]], seed: int, given_norm: bool
) -> None:
    spec = small_spec()
    cs = make_phones(spec, plan, seed)
    if given_norm:  # the paper's norm: ‖s·B A‖_F of a trained adapter, set by the phone
        rng = np.random.default_rng(seed)
        cs = [
            Contribution(
                c.delta, c.weight, c.client_id, norm=adapter_norm(random_adapter(spec, c.rank, rng))
            )
            for c in cs
        ]
    norms = [
        c.norm
        if c.norm is not None
        else float(np.linalg.norm(np.concatenate([t.ravel() for t in c.delta.tensors().values()])))
        for c in cs
    ]
    got = HetLoRA(spec).aggregate(cs)
    assert_tensors_close(
        got, ref_zero_pad_mean(spec, cs, [c.weight * n for c, n in zip(cs, norms, strict=True)])
    )


def test_adapter_norm_is_frobenius_of_dense_delta_weight() -> None:
    a = random_adapter(small_spec(), 4, np.random.default_rng(3))
    dense = np.sqrt(sum(np.sum(a.delta_weight(m) ** 2) for m in a.modules))
    assert adapter_norm(a) == pytest.approx(dense, rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(plan=plans, seed=seeds)
def test_ffa_averages_b_over_everyone_and_freezes_a(
    plan: list[tuple[int, float]], seed: int
) -> None:
    spec = small_spec()
    cs = make_phones(spec, plan, seed, zero_a=True)
    ref = ref_zero_pad_mean(spec, cs, [c.weight for c in cs])
    for name in ref:
        if name.endswith("lora_A.weight"):
            ref[name] = np.zeros_like(ref[name])
    assert_tensors_close(FFALoRA(spec).aggregate(cs), ref)


@settings(max_examples=25, deadline=None)
@given(plan=plans, seed=seeds)
def test_fedsa_averages_a_per_slot_and_keeps_b_local(
    plan: list[tuple[int, float]], seed: int
) -> None:
    spec = small_spec()
    cs = make_phones(spec, plan, seed)
    assert_tensors_close(FedSALoRA(spec).aggregate(cs), ref_per_slot_a(spec, cs))


@settings(max_examples=20, deadline=None)
@given(plan=plans, seed=seeds, dense_upload=st.booleans())
def test_flexlora_is_the_mean_dense_change(
    plan: list[tuple[int, float]], seed: int, dense_upload: bool
) -> None:
    spec = small_spec()
    _, views = community_and_views(spec, seed, nested=False)
    cs = make_phones(spec, plan, seed)
    got = FlexLoRA(spec, views, dense_upload=dense_upload).aggregate(cs)
    assert got.space == "dense" and got.publish_rank == spec.r_max
    assert_tensors_close(got, dense_change_reference(spec, cs, views))


@settings(max_examples=20, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.sampled_from(RANKS), st.integers(1, 20).map(float)), min_size=1, max_size=12
    ),
    seed=seeds,
)
def test_flora_stack_equals_mean_dense_change(plan: list[tuple[int, float]], seed: int) -> None:
    """Up to 12 phones: the 16×12 module stacks for a while, then folds to dense."""
    spec = small_spec()
    _, views = community_and_views(spec, seed, nested=False)
    cs = make_phones(spec, plan, seed)
    rule = FLoRA(spec, views)
    state = rule.init_state()
    for c in cs:
        rule.accumulate(state, c)
    assert_tensors_close(rule.finalize(state), dense_change_reference(spec, cs, views))


def test_flora_streams_in_bounded_memory() -> None:
    spec = small_spec()
    _, views = community_and_views(spec, 0, nested=False)
    rule = FLoRA(spec, views)
    state = rule.init_state()
    for c in make_phones(spec, [(4, 1.0)] * 30, 0):
        rule.accumulate(state, c)
    for m in spec.modules:  # never more than min(d_in, d_out) stacked columns, or one dense sum
        assert state.B[m].shape[1] <= min(spec.linear_shapes[m])
        assert m in state.dense


# ---------------------------------------------------------------------------- exactness
def _exact_rule(
    name: str, spec: AggregationSpec, seed: int
) -> tuple[object, LoraAdapter, dict[int, LoraAdapter]]:
    if name == "ffa":
        a = shared_a(spec.linear_shapes, spec.r_max, seed)
        rng = np.random.default_rng(seed)
        community = LoraAdapter.create(
            {
                m: LoraPair(a[m], rng.standard_normal((spec.linear_shapes[m][1], spec.r_max)))
                for m in spec.modules
            },
            base_fingerprint=spec.base_fingerprint,
            alpha=2.0 * spec.r_max,
        )
        views = {r: v.adapter for r, v in redistribute(community, spec.ranks, nested=True).items()}
        return FFALoRA(spec), community, views
    community, views = community_and_views(spec, seed, nested=False)
    if name == "flexlora":
        return FlexLoRA(spec, views), community, views
    return FLoRA(spec, views), community, views


@pytest.mark.parametrize("name", [n for n, info in RULES.items() if info.exact])
@settings(max_examples=15, deadline=None)
@given(plan=plans, seed=seeds)
def test_exact_rules_preserve_weighted_sum_of_products(
    name: str, plan: list[tuple[int, float]], seed: int
) -> None:
    """ΔW(new community) − ΔW(old) = Σ wᵢ ΔWᵢ-changes / Σ wᵢ (before any re-factoring)."""
    spec = small_spec()
    rule, community, views = _exact_rule(name, spec, seed)
    cs = make_phones(spec, plan, seed, zero_a=(name == "ffa"))
    want = dense_change_reference(spec, cs, views)
    agg = rule.aggregate(cs)  # type: ignore[attr-defined]
    assert agg.exact
    if agg.space == "dense":
        assert_tensors_close(agg, want)
    if name != "flexlora":  # flexlora publishes at r_max, a (reported) approximation
        new = finish_round(community, agg, FedAvg()).community
        for m in spec.modules:
            change = new.delta_weight(m) - community.delta_weight(m)
            np.testing.assert_allclose(change, want[m], rtol=1e-9, atol=1e-9)


def test_flexlora_publishes_best_rank_rmax_and_reports_its_error() -> None:
    spec = small_spec()
    rule, community, _views = _exact_rule("flexlora", spec, 7)
    cs = make_phones(spec, [(1, 3.0), (2, 1.0), (4, 2.0), (4, 5.0)], 7)
    agg = rule.aggregate(cs)  # type: ignore[attr-defined]
    res = finish_round(community, agg, FedAvg())
    num = den = 0.0
    for m in spec.modules:
        target = community.delta_weight(m) + agg.tensors[m]
        s = np.linalg.svd(target, compute_uv=False)
        num += float(np.sum(s[spec.r_max :] ** 2))  # Eckart–Young residual
        den += float(np.sum(s**2))
    assert res.community.max_rank == spec.r_max
    assert res.publish_error == pytest.approx(np.sqrt(num / den), rel=1e-6)


def test_factor_averaging_is_not_exact() -> None:
    """The `exact=False` flag is honest: averaging A and B separately is not averaging BA."""
    spec = small_spec()
    community, views = community_and_views(spec, 0, nested=True)
    cs = make_phones(spec, [(4, 1.0), (4, 1.0)], 0)
    rule = RankFedAvg(spec)
    assert not rule.exact
    new = finish_round(community, rule.aggregate(cs), FedAvg()).community
    want = dense_change_reference(spec, cs, views)
    m = spec.modules[0]
    assert not np.allclose(new.delta_weight(m) - community.delta_weight(m), want[m], atol=1e-6)


# ---------------------------------------------------------------------------- linearity
def _linear_rules(spec: AggregationSpec, views: dict[int, LoraAdapter]) -> list[LinearAggregator]:
    return [
        RankFedAvg(spec),
        HetLoRA(spec),
        FFALoRA(spec),
        FedSALoRA(spec),
        FlexLoRA(spec, views, dense_upload=True),
    ]


@settings(max_examples=20, deadline=None)
@given(plan=plans, seed=seeds, cut=st.integers(0, 6))
def test_linear_rules_agree_on_phones_sums_and_cohorts(
    plan: list[tuple[int, float]], seed: int, cut: int
) -> None:
    spec = small_spec()
    _, views = community_and_views(spec, seed, nested=False)
    cs = make_phones(spec, plan, seed, zero_a=True)  # zero A so FFA accepts them too
    for rule in _linear_rules(spec, views):
        assert rule.linear
        direct = rule.aggregate(cs)
        # what the SecAgg server sees: one summed flat vector (payload ++ rank-group weights)
        vec = np.sum([rule.encode_vector(c) for c in cs], axis=0)
        from_vector = rule.aggregate_sums([rule.sum_from_vector(vec, count=len(cs))])
        # two cohorts summed separately (e.g. two SecAgg groups)
        cohorts: list[RankedSum] = []
        for part in (cs[:cut], cs[cut:]):
            if part:
                s = rule.encode(part[0])
                for c in part[1:]:
                    s.add_(rule.encode(c))
                cohorts.append(s)
        from_cohorts = rule.aggregate_sums(cohorts)
        for other in (from_vector, from_cohorts):
            assert other.num_contributions == direct.num_contributions == len(cs)
            assert other.group_weights == pytest.approx(direct.group_weights)
            for name, t in direct.tensors.items():
                np.testing.assert_allclose(other.tensors[name], t, rtol=1e-12, atol=1e-13)


def test_declared_properties_match_the_registry() -> None:
    spec = small_spec()
    _, views = community_and_views(spec, 0, nested=False)
    rules = {
        "rank_fedavg": RankFedAvg(spec),
        "hetlora": HetLoRA(spec),
        "ffa": FFALoRA(spec),
        "fedsa": FedSALoRA(spec),
        "flexlora": FlexLoRA(spec, views),
        "flora": FLoRA(spec, views),
    }
    for name, rule in rules.items():
        info = RULES[name]
        assert (rule.name, rule.linear, rule.exact, rule.nested) == (
            name,
            info.linear,
            info.exact,
            info.nested,
        )
    assert FlexLoRA(spec, views, dense_upload=True).linear


def test_accumulating_sums_and_phones_mixes_for_linear_rules() -> None:
    spec = small_spec()
    cs = make_phones(spec, [(1, 2.0), (2, 3.0), (4, 1.0), (4, 4.0)], 5)
    rule = RankFedAvg(spec)
    direct = rule.aggregate(cs)
    state = rule.init_state()
    rule.accumulate_sum(state, rule.encode(cs[0]))
    rule.accumulate_sum(state, rule.encode(cs[1]))
    for c in cs[2:]:
        rule.accumulate(state, c)
    mixed = rule.finalize(state)
    for name, t in direct.tensors.items():
        np.testing.assert_allclose(mixed.tensors[name], t, rtol=1e-12)
