"""Whole rounds: registry → aggregate → server optimizer → per-rank views (with errors)."""

from __future__ import annotations

import numpy as np
import pytest

from fedlora.aggregation import (
    RULES,
    AggregationError,
    AggregationSpec,
    Contribution,
    FedAdam,
    FedAvg,
    FedSALoRA,
    FFALoRA,
    FlexLoRA,
    FLoRA,
    RankFedAvg,
    finish_round,
    initial_adapter,
    make_aggregator,
    make_server_optimizer,
    personalize,
    rank_view,
    redistribute,
    run_round,
    shared_a,
)
from fedlora.aggregation.synthetic import (
    default_spec,
    llama_linear_shapes,
    random_adapter,
    random_contributions,
)
from fedlora.config import AggregationSettings
from fedlora.errors import AdapterValidationError, ConfigError
from fedlora.ranks import view_error

SHAPES = {
    "model.layers.0.self_attn.q_proj": (8, 6),
    "model.layers.0.self_attn.o_proj": (6, 8),
}


def spec_(dtype: str = "float64") -> AggregationSpec:
    return default_spec((2, 3, 5), linear_shapes=SHAPES, dtype=dtype)


def test_default_shapes_are_the_default_adapter() -> None:
    shapes = llama_linear_shapes()
    assert len(shapes) == 16 and set(shapes.values()) == {(128, 128)}
    assert "model.layers.3.self_attn.v_proj" in shapes
    spec = default_spec()
    assert spec.ranks == (4, 8, 16) and spec.r_max == 16
    assert spec.factor_layout.size == 16 * 2 * 16 * 128


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("optimizer", ["fedavg", "fedavgm", "fedadam", "fedyogi"])
def test_three_rounds_of_every_rule_and_optimizer(rule: str, optimizer: str) -> None:
    spec = spec_(dtype="float32")
    settings = AggregationSettings(rule=rule, server_optimizer=optimizer, server_lr=0.5)  # type: ignore[arg-type]
    community = (
        initial_adapter(spec, seed=1)
        if rule == "ffa"
        else random_adapter(spec, spec.r_max, np.random.default_rng(0), scale=0.2)
    )
    opt = make_server_optimizer(settings)
    state = None
    views = None
    rng = np.random.default_rng(2)
    for rnd in range(3):
        agg_rule = make_aggregator(settings, spec, starting_views=views, community=community)
        res = run_round(
            agg_rule,
            community,
            contributions=random_contributions(spec, 6, rng, scale=0.1, zero_a=(rule == "ffa")),
            optimizer=opt,
            state=state,
        )
        assert res.optimizer_state.step == rnd + 1
        assert res.community.meta.kind == "adapter" and res.community.meta.dtype == "float32"
        assert set(res.views) == set(spec.ranks)
        for r, v in res.views.items():
            assert v.adapter.max_rank == r
            assert v.error == pytest.approx(view_error(res.community, v.adapter), abs=1e-12)
            for m in spec.modules:  # alpha/r stays constant across views
                assert v.adapter.meta.scaling(m) == pytest.approx(spec.scalings[m])
        if rule == "ffa":  # A never moves from the shared seed, whatever the optimizer
            for m, a in shared_a(spec.linear_shapes, spec.r_max, 1).items():
                np.testing.assert_allclose(res.community.pairs[m].A, a.astype("float32"))
        community, state = res.community, res.optimizer_state
        views = {r: v.adapter for r, v in res.views.items()}


def test_nested_views_truncate_and_svd_views_are_optimal() -> None:
    spec = spec_()
    community = random_adapter(spec, 5, np.random.default_rng(3))
    nested = redistribute(community, [2, 5, 8], nested=True)
    assert [nested[r].method for r in (2, 5, 8)] == ["truncate", "same", "pad"]
    np.testing.assert_array_equal(
        nested[2].adapter.pairs[spec.modules[0]].A, community.pairs[spec.modules[0]].A[:2]
    )
    assert nested[5].error == 0 and nested[8].error == 0 and nested[2].error > 0
    svd = rank_view(community, 2, nested=False)
    assert svd.method == "svd" and 0 < svd.error < nested[2].error  # Eckart–Young beats truncation
    num = den = 0.0
    for m in spec.modules:
        s = np.linalg.svd(community.delta_weight(m), compute_uv=False)
        num += float(np.sum(s[2:] ** 2))
        den += float(np.sum(s**2))
    assert svd.error == pytest.approx(np.sqrt(num / den), rel=1e-9)


def test_secure_aggregation_path_end_to_end_equals_per_phone() -> None:
    """Phones encode (payload ++ rank weights), the server unmasks only the sum."""
    spec = spec_()
    community = random_adapter(spec, spec.r_max, np.random.default_rng(0), scale=0.3)
    for name in ("rank_fedavg", "hetlora", "fedsa", "flexlora"):
        phones = list(random_contributions(spec, 7, np.random.default_rng(4), scale=0.1))
        rule = make_aggregator(name, spec, secure_aggregation=True, community=community)
        vectors = [rule.encode_vector(c) for c in phones]  # type: ignore[attr-defined]
        assert len({v.shape for v in vectors}) == 1  # every rank shares one layout
        total = np.sum(vectors, axis=0)
        from_sum = run_round(
            rule,
            community,
            sums=[rule.sum_from_vector(total, count=len(phones))],  # type: ignore[attr-defined]
        )
        per_phone = run_round(rule, community, contributions=phones)
        for m in spec.modules:
            np.testing.assert_allclose(
                from_sum.community.delta_weight(m),
                per_phone.community.delta_weight(m),
                rtol=1e-10,
                atol=1e-12,
            )


def test_registry_maps_every_config_name() -> None:
    spec = spec_()
    community = random_adapter(spec, 5, np.random.default_rng(0))
    want = {
        "rank_fedavg": RankFedAvg,
        "hetlora": type(make_aggregator("hetlora", spec)),
        "ffa": FFALoRA,
        "fedsa": FedSALoRA,
        "flexlora": FlexLoRA,
        "flora": FLoRA,
    }
    for name, cls in want.items():
        rule = make_aggregator(AggregationSettings(rule=name), spec, community=community)  # type: ignore[arg-type]
        assert type(rule) is cls and rule.name == name
    with pytest.raises(ConfigError, match="unknown rule 'fedprox'"):
        make_aggregator("fedprox", spec)
    with pytest.raises(TypeError):
        RULES["x"] = RULES["ffa"]  # type: ignore[index]


def test_ffa_initial_adapter_is_seeded_and_nested() -> None:
    spec = spec_()
    a1, a2 = initial_adapter(spec, 7), initial_adapter(spec, 7)
    b = initial_adapter(spec, 8)
    m = spec.modules[0]
    np.testing.assert_array_equal(a1.pairs[m].A, a2.pairs[m].A)
    assert not np.array_equal(a1.pairs[m].A, b.pairs[m].A)
    assert not np.any(a1.pairs[m].B) and a1.pairs[m].rank == spec.r_max
    small = shared_a({m: spec.linear_shapes[m]}, spec.r_max, 7)[m]  # independent of other modules
    np.testing.assert_array_equal(small, a1.pairs[m].A)
    bound = 1 / np.sqrt(spec.linear_shapes[m][0])
    assert np.all(np.abs(a1.pairs[m].A) <= bound)


def test_fedsa_personalize_keeps_own_b() -> None:
    spec = spec_()
    community = random_adapter(spec, 5, np.random.default_rng(0))
    view = redistribute(community, [3], nested=True)[3].adapter
    own = random_adapter(spec, 3, np.random.default_rng(1))
    mine = personalize(view, own)
    for m in spec.modules:
        np.testing.assert_array_equal(mine.pairs[m].A, view.pairs[m].A)
        np.testing.assert_array_equal(mine.pairs[m].B, own.pairs[m].B)
    with pytest.raises(AdapterValidationError, match="local B"):
        personalize(view, random_adapter(spec, 2, np.random.default_rng(1)))


def test_fedsa_round_leaves_community_b_alone() -> None:
    spec = spec_()
    community = random_adapter(spec, spec.r_max, np.random.default_rng(0))
    res = run_round(
        FedSALoRA(spec),
        community,
        contributions=random_contributions(spec, 5, np.random.default_rng(1)),
        optimizer=FedAdam(),
    )
    for m in spec.modules:
        np.testing.assert_allclose(res.community.pairs[m].B, community.pairs[m].B)
        assert not np.allclose(res.community.pairs[m].A, community.pairs[m].A)


def test_empty_rank_slots_get_no_update_under_rank_fedavg() -> None:
    spec = spec_()
    community = random_adapter(spec, spec.r_max, np.random.default_rng(0))
    phones = [
        Contribution(random_adapter(spec, 2, np.random.default_rng(i), kind="delta"), 1.0, f"p{i}")
        for i in range(3)
    ]
    res = finish_round(community, RankFedAvg(spec).aggregate(phones), FedAvg())
    for m in spec.modules:  # nobody held slots 2..4: they are untouched, not shrunk
        np.testing.assert_allclose(res.community.pairs[m].A[2:], community.pairs[m].A[2:])
        np.testing.assert_allclose(res.community.pairs[m].B[:, 2:], community.pairs[m].B[:, 2:])


def test_factor_aggregate_as_delta_and_numpy_weights() -> None:
    spec = spec_()
    phones = [
        Contribution(
            random_adapter(spec, 3, np.random.default_rng(i), kind="delta"),
            np.float32(2.0) if i else np.int64(3),  # type: ignore[arg-type]
            f"p{i}",
        )
        for i in range(2)
    ]
    agg = RankFedAvg(spec).aggregate(phones)
    d = agg.as_delta()
    assert d.meta.kind == "delta" and d.max_rank == spec.r_max
    for m in spec.modules:
        np.testing.assert_array_equal(d.pairs[m].A, agg.tensors[f"{m}.lora_A.weight"])
    community = random_adapter(spec, spec.r_max, np.random.default_rng(9))
    dense = make_aggregator("flexlora", spec, community=community).aggregate(phones)
    with pytest.raises(AggregationError, match="dense"):
        dense.as_delta()


def test_aggregation_imports_neither_torch_nor_flower() -> None:
    """The server container has no torch: aggregation must import without it."""
    import subprocess
    import sys

    code = (
        "import sys, fedlora.aggregation, fedlora.aggregation.synthetic; "
        "bad = [m for m in ('torch', 'flwr', 'requests', 'httpx') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
