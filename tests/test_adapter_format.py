"""Adapter format: round trips (safetensors, ArrayRecord, flat vector), validation errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedlora.adapter import BaseModelSpec, LoraAdapter, LoraPair, validate_for_base
from fedlora.adapter_io import (
    content_hash,
    from_safetensors_bytes,
    load_adapter,
    read_safetensors,
    save_adapter,
    to_safetensors_bytes,
)
from fedlora.errors import AdapterValidationError
from fedlora.layout import FlatLayout
from fedlora.records import adapter_from_records, adapter_to_records, tensors_to_array_record

SHAPES = {
    "model.layers.0.self_attn.q_proj": (16, 16),
    "model.layers.0.self_attn.v_proj": (16, 8),
    "model.layers.1.self_attn.q_proj": (16, 16),
    "model.layers.10.self_attn.q_proj": (16, 16),
}


def make_adapter(rank: int = 4, seed: int = 0, ranks: dict[str, int] | None = None) -> LoraAdapter:
    rng = np.random.default_rng(seed)
    pairs = {}
    for name, (d_in, d_out) in SHAPES.items():
        r = (ranks or {}).get(name, rank)
        pairs[name] = LoraPair(
            rng.standard_normal((r, d_in)).astype(np.float32),
            rng.standard_normal((d_out, r)).astype(np.float32),
        )
    return LoraAdapter.create(pairs, base_fingerprint="fp:test", alpha=8.0, version=3, round=2)


def assert_same(a: LoraAdapter, b: LoraAdapter) -> None:
    assert a.meta == b.meta
    assert a.modules == b.modules
    for name in a.modules:
        np.testing.assert_array_equal(a.pairs[name].A, b.pairs[name].A)
        np.testing.assert_array_equal(a.pairs[name].B, b.pairs[name].B)
        assert a.pairs[name].A.dtype == b.pairs[name].A.dtype


def test_module_order_is_natural() -> None:
    adapter = make_adapter()
    assert adapter.modules == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.10.self_attn.q_proj",
    ]
    assert adapter.meta.target_modules == ("q_proj", "v_proj")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_safetensors_round_trip_exact(dtype: str) -> None:
    adapter = make_adapter(ranks={"model.layers.0.self_attn.v_proj": 2}).astype(dtype)
    data = to_safetensors_bytes(adapter)
    back = from_safetensors_bytes(data)
    assert_same(adapter, back)
    assert to_safetensors_bytes(back) == data  # deterministic bytes
    assert content_hash(back) == content_hash(adapter)


def test_file_and_peft_dir_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    adapter = make_adapter(ranks={"model.layers.1.self_attn.q_proj": 8})
    f = save_adapter(adapter, tmp_path / "a.safetensors")
    assert_same(adapter, load_adapter(f))
    d = save_adapter(adapter, tmp_path / "peft")
    assert (d / "adapter_config.json").exists()
    assert_same(adapter, load_adapter(d))


def test_bf16_tensors_are_widened_exactly() -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save

    t = torch.randn(3, 5).bfloat16()
    tensors, meta = read_safetensors(save({"x": t}, metadata={"k": "v"}))
    np.testing.assert_array_equal(tensors["x"], t.float().numpy())
    assert meta == {"k": "v"}


def test_array_record_round_trip_exact() -> None:
    adapter = make_adapter(ranks={"model.layers.0.self_attn.q_proj": 1})
    arrays, config = adapter_to_records(adapter)
    assert_same(adapter, adapter_from_records(arrays, config))


def test_array_record_casts_bf16_state_dict() -> None:
    torch = pytest.importorskip("torch")
    t = torch.randn(4, 2).bfloat16()
    rec = tensors_to_array_record({"w": t})
    assert rec["w"].dtype == "float32"
    np.testing.assert_array_equal(rec["w"].numpy(), t.float().numpy())


def test_flat_vector_round_trip_and_stable_layout() -> None:
    adapter = make_adapter(ranks={"model.layers.0.self_attn.v_proj": 2})
    layout = FlatLayout.of(adapter)
    vec = layout.flatten(adapter)
    assert vec.shape == (adapter.num_parameters,)
    assert_same(adapter, layout.unflatten(vec, adapter.meta))
    # the first slice is layer 0's q_proj A, row-major
    np.testing.assert_array_equal(
        vec[: 4 * 16], adapter.pairs["model.layers.0.self_attn.q_proj"].A.reshape(-1)
    )
    assert FlatLayout.from_json(layout.to_json()) == layout
    assert (
        layout.digest()
        == FlatLayout.of(
            make_adapter(seed=5, ranks={"model.layers.0.self_attn.v_proj": 2})
        ).digest()
    )
    assert layout.digest() != FlatLayout.of(make_adapter()).digest()


def test_flatten_rejects_other_layout() -> None:
    layout = FlatLayout.of(make_adapter(rank=4))
    with pytest.raises(AdapterValidationError, match="does not match the layout"):
        layout.flatten(make_adapter(rank=2))
    with pytest.raises(AdapterValidationError, match="length"):
        layout.unflatten(np.zeros(layout.size + 1, np.float32), make_adapter().meta)


def spec(max_rank: int | None = None) -> BaseModelSpec:
    return BaseModelSpec(fingerprint="fp:test", linear_shapes=SHAPES, max_rank=max_rank)


def test_validation_accepts_good_adapter() -> None:
    validate_for_base(make_adapter(), spec())


def test_validation_wrong_fingerprint() -> None:
    with pytest.raises(AdapterValidationError, match="made for base model 'fp:other'"):
        validate_for_base(make_adapter().with_meta(base_fingerprint="fp:other"), spec())


def test_validation_unknown_module() -> None:
    adapter = make_adapter()
    pairs = dict(adapter.pairs)
    pairs["model.layers.0.mlp.gate_proj"] = pairs["model.layers.0.self_attn.q_proj"]
    bad = LoraAdapter.create(pairs, base_fingerprint="fp:test", alpha=8.0)
    with pytest.raises(
        AdapterValidationError, match=r"'model\.layers\.0\.mlp\.gate_proj'.*unknown module"
    ):
        validate_for_base(bad, spec())


def test_validation_wrong_shape_names_tensor() -> None:
    adapter = make_adapter()
    pairs = dict(adapter.pairs)
    p = pairs["model.layers.0.self_attn.v_proj"]
    pairs["model.layers.0.self_attn.v_proj"] = LoraPair(p.A, np.zeros((9, p.rank), np.float32))
    bad = LoraAdapter.create(pairs, base_fingerprint="fp:test", alpha=8.0)
    with pytest.raises(AdapterValidationError) as err:
        validate_for_base(bad, spec())
    assert err.value.tensor == "model.layers.0.self_attn.v_proj.lora_B.weight"


def test_validation_rank_too_large_and_mismatched() -> None:
    with pytest.raises(AdapterValidationError, match="exceeds the maximum 2"):
        validate_for_base(make_adapter(rank=4), spec(max_rank=2))
    adapter = make_adapter()
    p = adapter.pairs["model.layers.0.self_attn.q_proj"]
    with pytest.raises(AdapterValidationError, match="rank of A"):
        LoraAdapter.create(
            {"model.layers.0.self_attn.q_proj": LoraPair(p.A, p.B[:, :2])},
            base_fingerprint="x",
            alpha=1.0,
        )
    with pytest.raises(AdapterValidationError, match="not one of the allowed ranks"):
        validate_for_base(make_adapter(rank=3), spec(), allowed_ranks={4, 8})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected_by_name(bad: float) -> None:
    adapter = make_adapter()
    pairs = dict(adapter.pairs)
    p = pairs["model.layers.1.self_attn.q_proj"]
    B = p.B.copy()
    B[2, 1] = bad
    pairs["model.layers.1.self_attn.q_proj"] = LoraPair(p.A, B)
    with pytest.raises(AdapterValidationError) as err:
        LoraAdapter.create(pairs, base_fingerprint="fp:test", alpha=8.0)
    assert err.value.tensor == "model.layers.1.self_attn.q_proj.lora_B.weight"
    assert "non-finite" in str(err.value)


def test_corrupt_blobs_are_clear_errors() -> None:
    data = to_safetensors_bytes(make_adapter())
    with pytest.raises(AdapterValidationError, match="too short"):
        from_safetensors_bytes(b"abc")
    with pytest.raises(AdapterValidationError):
        from_safetensors_bytes(data[:-7])
    import safetensors.numpy as stn

    with pytest.raises(AdapterValidationError, match="no fedlora metadata"):
        from_safetensors_bytes(stn.save({"a.lora_A.weight": np.zeros((1, 2), np.float32)}))


def test_delta_arithmetic() -> None:
    a, b = make_adapter(seed=1), make_adapter(seed=2)
    d = a.minus(b)
    assert d.meta.kind == "delta"
    back = b.plus(d)
    for name in a.modules:
        np.testing.assert_allclose(back.pairs[name].A, a.pairs[name].A, rtol=1e-6, atol=1e-6)
    with pytest.raises(AdapterValidationError, match="shape mismatch"):
        a.minus(make_adapter(rank=2))
