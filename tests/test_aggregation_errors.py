"""Bad inputs fail loudly, name the phone and tensor, and never half-enter a sum."""

from __future__ import annotations

import numpy as np
import pytest

from fedlora.adapter import LoraAdapter, LoraPair
from fedlora.aggregation import (
    AggregationError,
    AggregationSpec,
    Contribution,
    ContributionError,
    FedAdam,
    FFALoRA,
    FlexLoRA,
    FLoRA,
    HetLoRA,
    NotLinearError,
    RankedSum,
    RankFedAvg,
    apply_aggregate,
    make_aggregator,
    redistribute,
)
from fedlora.aggregation.synthetic import default_spec, random_adapter
from fedlora.errors import AdapterValidationError, FedloraError

SHAPES = {"model.layers.0.self_attn.q_proj": (6, 5), "model.layers.0.self_attn.v_proj": (6, 5)}
Q, V = SHAPES


def spec_() -> AggregationSpec:
    return default_spec((2, 4), linear_shapes=SHAPES, dtype="float64")


def delta(spec: AggregationSpec, rank: int = 2, seed: int = 0, **kw: object) -> LoraAdapter:
    return random_adapter(spec, rank, np.random.default_rng(seed), kind="delta", **kw)  # type: ignore[arg-type]


def raw(
    d: LoraAdapter, module: str, *, A: np.ndarray | None = None, B: np.ndarray | None = None
) -> LoraAdapter:
    """Same adapter with one pair replaced, bypassing validation (as a decoder bug would)."""
    pairs = dict(d.pairs)
    p = pairs[module]
    pairs[module] = LoraPair(A if A is not None else p.A, B if B is not None else p.B)
    return LoraAdapter(meta=d.meta, pairs=pairs)


def snapshot(state: RankedSum) -> tuple[np.ndarray, np.ndarray, int]:
    return state.payload.copy(), state.group_weights.copy(), state.count


def assert_unchanged(state: RankedSum, snap: tuple[np.ndarray, np.ndarray, int]) -> None:
    np.testing.assert_array_equal(state.payload, snap[0])
    np.testing.assert_array_equal(state.group_weights, snap[1])
    assert state.count == snap[2]


def test_non_finite_values_name_phone_and_tensor_and_leave_state_untouched() -> None:
    spec = spec_()
    rule = RankFedAvg(spec)
    state = rule.init_state()
    rule.accumulate(state, Contribution(delta(spec, seed=1), 2.0, "good"))
    snap = snapshot(state)
    d = delta(spec, seed=2)
    bad_b = d.pairs[V].B.copy()
    bad_b[0, 0] = np.nan  # in the *last* module: earlier ones must not have been added
    with pytest.raises(ContributionError) as err:
        rule.accumulate(state, Contribution(raw(d, V, B=bad_b), 1.0, "phone-7"))
    assert err.value.contribution == "phone-7"
    assert err.value.tensor == f"{V}.lora_B.weight"
    assert "phone-7" in str(err.value) and "non-finite" in str(err.value)
    assert isinstance(err.value, AdapterValidationError) and isinstance(err.value, FedloraError)
    assert_unchanged(state, snap)
    bad_a = d.pairs[Q].A.copy()
    bad_a[1, 2] = np.inf
    with pytest.raises(ContributionError, match="non-finite"):
        rule.accumulate(state, Contribution(raw(d, Q, A=bad_a), 1.0, "phone-8"))
    assert_unchanged(state, snap)


@pytest.mark.parametrize(
    ("make", "tensor", "match"),
    [
        (lambda s: raw(delta(s), Q, A=np.zeros((2, 7))), f"{Q}.lora_A.weight", "input features"),
        (lambda s: raw(delta(s), Q, B=np.zeros((9, 2))), f"{Q}.lora_B.weight", "output features"),
        (
            lambda s: LoraAdapter(
                meta=delta(s).meta.model_copy(update={"ranks": {Q: 2}, "alphas": {Q: 4.0}}),
                pairs={Q: delta(s).pairs[Q]},
            ),
            V,
            "missing",
        ),
    ],
)
def test_mismatched_layouts_are_named(make, tensor: str, match: str) -> None:  # type: ignore[no-untyped-def]
    spec = spec_()
    with pytest.raises(ContributionError, match=match) as err:
        RankFedAvg(spec).accumulate(
            RankFedAvg(spec).init_state(), Contribution(make(spec), 1.0, "x")
        )
    assert err.value.tensor == tensor


def test_extra_module_is_refused() -> None:
    spec = spec_()
    d = delta(spec)
    pairs = {**d.pairs, "model.layers.9.mlp.up_proj": d.pairs[Q]}
    extra = LoraAdapter.create(
        pairs, base_fingerprint=spec.base_fingerprint, alpha=4.0, kind="delta"
    )
    with pytest.raises(ContributionError, match="not part of the round") as err:
        RankFedAvg(spec).aggregate([Contribution(extra, 1.0, "x")])
    assert err.value.tensor == "model.layers.9.mlp.up_proj"


def test_unknown_rank_and_mixed_ranks_and_scaling_and_kind_and_base() -> None:
    spec = spec_()
    rule = RankFedAvg(spec)
    st = rule.init_state()
    with pytest.raises(ContributionError, match=r"rank 3 is not one of the round's ranks \[2, 4\]"):
        rule.accumulate(st, Contribution(delta(spec, 3), 1.0, "r3"))
    with pytest.raises(ContributionError, match="not one of the round's ranks"):
        rule.accumulate(st, Contribution(delta(spec, 8), 1.0, "r8"))
    d2, d4 = delta(spec, 2), delta(spec, 4)
    mixed = LoraAdapter.create(
        {Q: d2.pairs[Q], V: d4.pairs[V]},
        base_fingerprint=spec.base_fingerprint,
        alpha={Q: 4.0, V: 8.0},
        kind="delta",
    )
    with pytest.raises(ContributionError, match="differs from the phone's rank"):
        rule.accumulate(st, Contribution(mixed, 1.0, "mixed"))
    wrong_alpha = d2.with_meta(alphas={Q: 16.0, V: 16.0})
    with pytest.raises(ContributionError, match="keep alpha/r constant"):
        rule.accumulate(st, Contribution(wrong_alpha, 1.0, "alpha"))
    with pytest.raises(ContributionError, match="expected a delta"):
        rule.accumulate(st, Contribution(d2.with_meta(kind="adapter"), 1.0, "kind"))
    with pytest.raises(ContributionError, match="base model"):
        rule.accumulate(st, Contribution(d2.with_meta(base_fingerprint="other"), 1.0, "base"))
    assert st.count == 0 and not np.any(st.payload)


@pytest.mark.parametrize("w", [-1.0, float("nan"), float("inf")])
def test_bad_weights(w: float) -> None:
    spec = spec_()
    with pytest.raises(ContributionError, match="weight") as err:
        RankFedAvg(spec).aggregate([Contribution(delta(spec), w, "w")])
    assert err.value.tensor == "<weight>"


def test_zero_total_weight_is_refused_and_finalize_is_all_or_nothing() -> None:
    spec = spec_()
    for rule in (RankFedAvg(spec), FFALoRA(spec)):
        state = rule.init_state()
        rule.accumulate(state, Contribution(delta(spec, zero_a=True), 0.0, "z"))
        snap = snapshot(state)
        with pytest.raises(AggregationError, match="total weight"):
            rule.finalize(state)
        assert_unchanged(state, snap)
        # the round can go on: a weighted phone arrives, finalize works, twice, same answer
        rule.accumulate(state, Contribution(delta(spec, seed=3, zero_a=True), 2.0, "w"))
        first, second = rule.finalize(state), rule.finalize(state)
        for name, t in first.tensors.items():
            np.testing.assert_array_equal(t, second.tensors[name])
    with pytest.raises(AggregationError, match="no contributions"):
        RankFedAvg(spec).aggregate([])
    # HetLoRA: a phone whose update is all zeros has zero norm, hence zero weight
    with pytest.raises(AggregationError, match="total weight"):
        HetLoRA(spec).aggregate([Contribution(delta(spec, zero_a=True, zero_b=True), 5.0, "z")])


def test_ffa_refuses_a_changed_a() -> None:
    spec = spec_()
    with pytest.raises(ContributionError, match="freezes A") as err:
        FFALoRA(spec).aggregate([Contribution(delta(spec), 1.0, "moved-a")])
    assert err.value.tensor.endswith("lora_A.weight")


def test_foreign_or_broken_sums_are_refused() -> None:
    spec = spec_()
    rule = RankFedAvg(spec)
    c = Contribution(delta(spec), 1.0, "p")
    state = rule.init_state()
    with pytest.raises(AggregationError, match="layout"):
        rule.accumulate_sum(state, HetLoRA(spec).encode(c))  # same shape, other rule
    other_ranks = RankFedAvg(default_spec((2, 4, 8), linear_shapes=SHAPES, dtype="float64"))
    with pytest.raises(AggregationError):
        rule.accumulate_sum(state, other_ranks.encode(c))
    broken = rule.encode(c)
    broken.payload[3] = np.nan
    with pytest.raises(AggregationError, match="non-finite"):
        rule.accumulate_sum(state, broken)
    with pytest.raises(AggregationError, match=r"shape|short"):
        rule.sum_from_vector(np.zeros(5), count=1)
    assert state.count == 0 and not np.any(state.payload)
    with pytest.raises(AggregationError, match="init_state"):
        rule.accumulate(HetLoRA(spec).init_state(), c)


def test_non_linear_rules_refuse_secure_sums_and_say_why() -> None:
    spec = spec_()
    community = random_adapter(spec, 4, np.random.default_rng(0))
    views = {r: v.adapter for r, v in redistribute(community, spec.ranks, nested=False).items()}
    lin = RankFedAvg(spec)
    s = lin.encode(Contribution(delta(spec), 1.0, "p"))
    flora = FLoRA(spec, views)
    with pytest.raises(NotLinearError, match="secure aggregation") as err:
        flora.accumulate_sum(flora.init_state(), s)
    assert "stack" in str(err.value) and err.value.rule == "flora"
    with pytest.raises(NotLinearError, match=r"secure aggregation.*stack"):
        make_aggregator("flora", spec, secure_aggregation=True, starting_views=views)
    flex = FlexLoRA(spec, views)
    with pytest.raises(NotLinearError, match="dense-upload"):
        flex.accumulate_sum(flex.init_state(), s)
    secure_flex = make_aggregator("flexlora", spec, secure_aggregation=True, starting_views=views)
    assert secure_flex.linear


def test_product_rules_need_starting_views() -> None:
    spec = spec_()
    with pytest.raises(AggregationError, match="starting views"):
        FlexLoRA(spec, None)
    with pytest.raises(AggregationError, match="starting views"):
        make_aggregator("flora", spec)
    community = random_adapter(spec, 4, np.random.default_rng(0))
    only4 = {4: redistribute(community, [4], nested=False)[4].adapter}
    rule = FlexLoRA(spec, only4)
    with pytest.raises(ContributionError, match="no starting view for rank 2"):
        rule.aggregate([Contribution(delta(spec, 2), 1.0, "p")])
    with pytest.raises(AggregationError, match="not one of"):
        FLoRA(spec, {8: community})
    with pytest.raises(AggregationError, match="does not fit rank 2"):
        FLoRA(spec, {2: community})


def test_server_step_refuses_mismatched_community_and_optimizer_state() -> None:
    spec = spec_()
    agg = RankFedAvg(spec).aggregate([Contribution(delta(spec), 1.0, "p")])
    community = random_adapter(spec, 4, np.random.default_rng(0))
    with pytest.raises(AggregationError, match="base"):
        apply_aggregate(community.with_meta(base_fingerprint="other"), agg, FedAdam())
    bigger = random_adapter(spec, 8, np.random.default_rng(0))
    with pytest.raises(AggregationError, match="r_max"):
        apply_aggregate(bigger, agg, FedAdam())
    step = apply_aggregate(community, agg, FedAdam())
    stale = FedAdam().init_state({"flat": np.zeros(3)})
    with pytest.raises(AggregationError, match="state"):
        apply_aggregate(step.community, agg, FedAdam(), stale)


def test_spec_rejects_nonsense() -> None:
    with pytest.raises(AggregationError, match="ranks"):
        default_spec((4, 4), linear_shapes=SHAPES)
    with pytest.raises(AggregationError, match="ranks"):
        default_spec((0, 4), linear_shapes=SHAPES)
    with pytest.raises(AggregationError, match="at least one"):
        AggregationSpec("fp", {}, {}, (4,))
    with pytest.raises(AggregationError, match="rank 3 is not"):
        spec_().group_index(3)
