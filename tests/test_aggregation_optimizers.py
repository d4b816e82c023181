"""Server optimizers against hand-computed steps (Reddi et al. 2021, Algorithm 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.aggregation import (
    AggregationError,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    OptimizerState,
    make_server_optimizer,
)
from fedlora.config import AggregationSettings
from fedlora.errors import ConfigError

X0 = {"w": np.array([1.0, -2.0]), "b": np.array([[0.5]])}
D1 = {"w": np.array([0.2, -0.4]), "b": np.array([[1.0]])}
D2 = {"w": np.array([-0.1, 0.0]), "b": np.array([[0.5]])}


def test_fedavg() -> None:
    x, st1 = FedAvg(lr=0.5).step(X0, D1)
    np.testing.assert_allclose(x["w"], [1.1, -2.2])
    np.testing.assert_allclose(x["b"], [[1.0]])
    assert st1.step == 1 and dict(st1.slots) == {}


def test_fedavgm_two_steps() -> None:
    opt = FedAvgM(lr=0.5, momentum=0.9)
    x1, s1 = opt.step(X0, D1)
    # m1 = Δ1 ; x1 = x0 + 0.5 m1
    np.testing.assert_allclose(x1["w"], [1.0 + 0.5 * 0.2, -2.0 + 0.5 * -0.4])
    x2, s2 = opt.step(x1, D2, s1)
    m2 = [0.9 * 0.2 - 0.1, 0.9 * -0.4 + 0.0]
    np.testing.assert_allclose(s2.slots["m"]["w"], m2)
    np.testing.assert_allclose(x2["w"], [x1["w"][0] + 0.5 * m2[0], x1["w"][1] + 0.5 * m2[1]])
    assert s2.step == 2


def _adam_like(yogi: bool) -> None:
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    opt = (FedYogi if yogi else FedAdam)(lr=lr, beta1=b1, beta2=b2, tau=tau)
    x, state = dict(X0), None
    m = {"w": [0.0, 0.0], "b": [0.0]}
    v = {"w": [tau**2, tau**2], "b": [tau**2]}  # v₋₁ = τ²
    xs = {"w": [1.0, -2.0], "b": [0.5]}
    for d in (D1, D2, D1):
        x, state = opt.step(x, d, state)
        for name in ("w", "b"):
            for i, di in enumerate(np.ravel(d[name]).tolist()):
                m[name][i] = b1 * m[name][i] + (1 - b1) * di
                if yogi:
                    sign = (
                        math.copysign(1.0, v[name][i] - di * di) if v[name][i] != di * di else 0.0
                    )
                    v[name][i] = v[name][i] - (1 - b2) * di * di * sign
                else:
                    v[name][i] = b2 * v[name][i] + (1 - b2) * di * di
                xs[name][i] += lr * m[name][i] / (math.sqrt(v[name][i]) + tau)
            np.testing.assert_allclose(np.ravel(x[name]), xs[name], rtol=1e-12)
            np.testing.assert_allclose(np.ravel(state.slots["v"][name]), v[name], rtol=1e-12)
            np.testing.assert_allclose(np.ravel(state.slots["m"][name]), m[name], rtol=1e-12)
    assert state is not None and state.step == 3


def test_fedadam_matches_hand_computation() -> None:
    _adam_like(yogi=False)


def test_fedyogi_matches_hand_computation() -> None:
    _adam_like(yogi=True)


def test_yogi_and_adam_differ_where_the_paper_says() -> None:
    """Yogi's v moves additively (by (1−β₂)Δ²), Adam's multiplicatively toward Δ²."""
    x = {"p": np.zeros(1)}
    big = {"p": np.array([10.0])}
    _, sa = FedAdam(beta2=0.5).step(x, big)
    _, sy = FedYogi(beta2=0.5).step(x, big)
    tau2 = 1e-6
    assert sa.slots["v"]["p"][0] == pytest.approx(0.5 * tau2 + 0.5 * 100)
    assert sy.slots["v"]["p"][0] == pytest.approx(tau2 + 0.5 * 100)


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.floats(-5, 5), min_size=1, max_size=8),
    deltas=st.lists(st.floats(-5, 5), min_size=1, max_size=8),
)
def test_flat_vector_and_per_tensor_agree(values: list[float], deltas: list[float]) -> None:
    n = min(len(values), len(deltas))
    flat = {"flat": np.array(values[:n])}
    upd = {"flat": np.array(deltas[:n])}
    split_p = {f"t{i}": flat["flat"][i : i + 1] for i in range(n)}
    split_u = {f"t{i}": upd["flat"][i : i + 1] for i in range(n)}
    for opt in (FedAvg(0.7), FedAvgM(0.7, 0.5), FedAdam(0.1), FedYogi(0.1)):
        a, sa = opt.step(flat, upd)
        b, sb = opt.step(split_p, split_u)
        a, _ = opt.step(a, upd, sa)
        b, _ = opt.step(b, split_u, sb)
        np.testing.assert_allclose(
            a["flat"], np.concatenate([b[f"t{i}"] for i in range(n)]), rtol=1e-12
        )


def test_step_is_pure_and_validates() -> None:
    opt = FedAdam()
    x = {k: v.copy() for k, v in X0.items()}
    _, s1 = opt.step(x, D1)
    m_before = {k: v.copy() for k, v in s1.slots["m"].items()}
    opt.step(x, D2, s1)
    for k in X0:
        np.testing.assert_array_equal(x[k], X0[k])
        np.testing.assert_array_equal(s1.slots["m"][k], m_before[k])
    with pytest.raises(AggregationError, match="different tensors"):
        opt.step(x, {"w": D1["w"]})
    with pytest.raises(AggregationError, match="shape"):
        opt.step(x, {"w": np.zeros(3), "b": D1["b"]})
    with pytest.raises(AggregationError, match="non-finite"):
        opt.step(x, {"w": np.array([np.nan, 0.0]), "b": D1["b"]})
    with pytest.raises(AggregationError, match="state"):
        opt.step(x, D1, OptimizerState(step=1, slots={}))


def test_registry_builds_each_optimizer_with_its_settings() -> None:
    s = AggregationSettings(
        server_optimizer="fedyogi", server_lr=0.3, beta1=0.8, beta2=0.95, tau=1e-2
    )
    opt = make_server_optimizer(s)
    assert isinstance(opt, FedYogi) and (opt.lr, opt.beta1, opt.beta2, opt.tau) == (
        0.3,
        0.8,
        0.95,
        1e-2,
    )
    assert make_server_optimizer(
        AggregationSettings(server_optimizer="fedavgm", momentum=0.5)
    ) == FedAvgM(1.0, 0.5)
    assert isinstance(make_server_optimizer(AggregationSettings()), FedAvg)
    assert isinstance(make_server_optimizer("fedadam"), FedAdam)
    with pytest.raises(ConfigError, match="unknown optimizer 'sgd'"):
        make_server_optimizer("sgd")
