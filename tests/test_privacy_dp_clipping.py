"""DP clipping: L2 bound, untouched small vectors, per-group bounds, layout groups, inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedlora.adapter import LoraAdapter, LoraPair
from fedlora.layout import FlatLayout
from fedlora.privacy.dp import (
    ClipStep,
    DeltaInputError,
    PrivacyConfigError,
    RoundContext,
    delta_vector,
    group_clip,
    l2_clip,
    layout_groups,
)

SHAPES = {
    "model.layers.0.self_attn.q_proj": (6, 6),
    "model.layers.0.self_attn.v_proj": (6, 4),
    "model.layers.1.self_attn.q_proj": (6, 6),
    "model.layers.10.self_attn.q_proj": (6, 6),
}


def make_adapter(kind: str = "delta", seed: int = 0) -> LoraAdapter:
    rng = np.random.default_rng(seed)
    pairs = {
        name: LoraPair(rng.standard_normal((2, d_in)), rng.standard_normal((d_out, 2)))
        for name, (d_in, d_out) in SHAPES.items()
    }
    return LoraAdapter.create(pairs, base_fingerprint="fp:test", alpha=4.0, kind=kind)  # type: ignore[arg-type]


@pytest.mark.parametrize("scale", [1e-3, 0.5, 1.0, 3.0, 1e4])
def test_l2_clip_bounds_norm_and_keeps_direction(scale: float) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1000)
    x *= scale / np.linalg.norm(x)
    clipped, norm = l2_clip(x, 1.0)
    assert norm == pytest.approx(scale)
    assert np.linalg.norm(clipped) <= 1.0 + 1e-12
    if scale <= 1.0:
        assert clipped is x  # untouched: not rescaled, not copied
    else:
        assert np.linalg.norm(clipped) == pytest.approx(1.0)
        assert np.allclose(clipped * scale, x)


def test_group_clip_bounds_each_group_and_total() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal(30)
    x[:10] *= 100.0  # only the first group is large
    groups = [slice(0, 10), slice(10, 20), slice(20, 30)]
    out, norms = group_clip(x, groups, clip_norm=3.0)
    bound = 3.0 / math.sqrt(3)
    assert np.linalg.norm(out[:10]) == pytest.approx(bound)
    for g, n in zip(groups[1:], norms[1:], strict=True):
        if n <= bound:
            assert np.array_equal(out[g], x[g])  # small groups untouched
    assert np.linalg.norm(out) <= 3.0 + 1e-12
    assert np.allclose(x[:10] / np.linalg.norm(x[:10]), out[:10] / np.linalg.norm(out[:10]))


def test_group_clip_weights_and_untouched_vector() -> None:
    x = np.ones(4) * 0.1
    out, _ = group_clip(x, [slice(0, 1), slice(1, 4)], 10.0, weights=[0.25, 0.75])
    assert out is x
    big = np.array([10.0, 10.0, 10.0, 10.0])
    out, _ = group_clip(big, [slice(0, 1), slice(1, 4)], 2.0, weights=[0.25, 0.75])
    assert np.linalg.norm(out[:1]) == pytest.approx(2.0 * 0.5)
    assert np.linalg.norm(out[1:]) == pytest.approx(2.0 * math.sqrt(0.75))
    with pytest.raises(PrivacyConfigError, match="sum"):
        group_clip(big, [slice(0, 1), slice(1, 4)], 2.0, weights=[0.5, 0.75])


@pytest.mark.parametrize(
    "groups", [[slice(0, 3)], [slice(0, 3), slice(2, 5)], [slice(0, 2), slice(3, 5)]]
)
def test_groups_must_tile_the_vector(groups: list[slice]) -> None:
    with pytest.raises(PrivacyConfigError, match="groups"):
        group_clip(np.ones(5), groups, 1.0)


def test_layout_groups_by_module_and_layer() -> None:
    layout = FlatLayout.of(make_adapter())
    by_module = layout_groups(layout, "module")
    assert len(by_module) == 4
    assert by_module[0].start == 0 and by_module[-1].stop == layout.size
    by_layer = layout_groups(layout, "layer")
    assert len(by_layer) == 3  # layers 0 (q and v), 1, 10
    first = layout.entries[0]
    assert by_layer[0] == slice(0, layout.entries[4].offset)
    assert first.name.startswith("model.layers.0.")


def test_clip_step_with_layout_groups_on_a_real_delta() -> None:
    delta = make_adapter()
    layout = FlatLayout.of(delta)
    vec = delta_vector(delta, layout)
    step = ClipStep(groups=layout_groups(layout, "layer"))
    ctx = RoundContext(round=1, clip_norm=0.5, num_sampled=1)
    out, metrics = step.postprocess_one_user(vec, ctx)
    assert np.linalg.norm(out) <= 0.5 + 1e-12
    assert metrics["norm_before"] == pytest.approx(np.linalg.norm(vec))
    assert metrics["clipped"] == 1.0
    assert out.shape == vec.shape  # no bit appended without adaptive clipping


def test_only_deltas_enter_the_pipeline() -> None:
    adapter = make_adapter(kind="adapter")
    with pytest.raises(DeltaInputError, match="only LoRA deltas"):
        delta_vector(adapter, FlatLayout.of(adapter))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_delta_is_refused(bad: float) -> None:
    x = np.zeros(8)
    x[3] = bad
    with pytest.raises(DeltaInputError, match="index 3"):
        ClipStep().postprocess_one_user(x, RoundContext(round=1, clip_norm=1.0, num_sampled=1))


def test_integer_vector_is_refused_by_float_steps() -> None:
    with pytest.raises(DeltaInputError, match="after quantization"):
        ClipStep().postprocess_one_user(
            np.zeros(4, dtype=np.int64), RoundContext(round=1, clip_norm=1.0, num_sampled=1)
        )
