"""PEFT interoperability: our PEFT directory loads in plain peft with identical logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from transformers import AutoModelForCausalLM  # noqa: E402

from fedlora.adapter import LoraAdapter, LoraPair  # noqa: E402
from fedlora.adapter_io import load_adapter, save_peft_dir  # noqa: E402
from fedlora.client.peft_bridge import (  # noqa: E402
    attach_adapter,
    base_model_spec,
    extract_adapter,
    target_module_paths,
)
from fedlora.errors import AdapterValidationError  # noqa: E402
from fedlora.fingerprint import fingerprint_model_dir  # noqa: E402


def random_adapter(model_dir: Path, ranks: dict[str, int], seed: int = 0) -> LoraAdapter:
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    spec = base_model_spec(base, fingerprint_model_dir(model_dir).id)
    rng = np.random.default_rng(seed)
    pairs = {}
    for path in target_module_paths(base, ["q_proj", "v_proj", "down_proj"]):
        r = ranks.get(path.rsplit(".", 1)[-1], 4)
        d_in, d_out = spec.linear_shapes[path]
        pairs[path] = LoraPair(
            rng.standard_normal((r, d_in)).astype(np.float32) * 0.3,
            rng.standard_normal((d_out, r)).astype(np.float32) * 0.3,
        )
    return LoraAdapter.create(
        pairs, base_fingerprint=spec.fingerprint, alpha={p: 2.0 * pairs[p].rank for p in pairs}
    )


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(1, 17).reshape(2, 8) % 90
    with torch.no_grad():
        return model(input_ids=ids).logits


def manual_merge_logits(model_dir: Path, adapter: LoraAdapter) -> torch.Tensor:
    """Independent reference: W ← W + (alpha/r)·B@A computed in NumPy, no PEFT involved."""
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    modules = dict(base.named_modules())
    with torch.no_grad():
        for name in adapter.modules:
            w = modules[name].weight
            w += torch.from_numpy(adapter.delta_weight(name).astype(np.float32))
    return logits(base)


def test_plain_peft_load_gives_identical_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter = random_adapter(tiny_model_dir, ranks={"q_proj": 4, "v_proj": 2, "down_proj": 8})
    out = save_peft_dir(adapter, tmp_path / "peft", base_model_name_or_path=str(tiny_model_dir))

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    plain = peft.PeftModel.from_pretrained(base, out)
    ours = attach_adapter(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        adapter,
        base_model_spec(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter.meta.base_fingerprint
        ),
    )
    plain_logits, our_logits = logits(plain), logits(ours)
    torch.testing.assert_close(plain_logits, our_logits, rtol=0, atol=0)
    # both agree with the format's definition ΔW = (alpha/r)·B@A
    torch.testing.assert_close(
        plain_logits, manual_merge_logits(tiny_model_dir, adapter), rtol=1e-4, atol=1e-4
    )
    # and the adapter changed the function at all
    assert not torch.allclose(
        plain_logits, logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    )


def test_extract_round_trip_through_peft(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter = random_adapter(
        tiny_model_dir, ranks={"q_proj": 3, "v_proj": 5, "down_proj": 1}, seed=3
    )
    out = save_peft_dir(adapter, tmp_path / "peft")
    plain = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), out
    )
    back = extract_adapter(plain, base_fingerprint=adapter.meta.base_fingerprint)
    assert back.modules == adapter.modules
    assert back.meta.ranks == adapter.meta.ranks
    assert back.meta.alphas == pytest.approx(adapter.meta.alphas)
    for name in adapter.modules:
        np.testing.assert_array_equal(back.pairs[name].A, adapter.pairs[name].A)
        np.testing.assert_array_equal(back.pairs[name].B, adapter.pairs[name].B)


def test_peft_saved_directory_is_readable(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A directory written by PEFT itself (bf16 weights, no fedlora metadata) loads too."""
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False)
    model = peft.get_peft_model(base, cfg).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "theirs")
    adapter = load_adapter(tmp_path / "theirs", base_fingerprint=None)
    assert adapter.meta.producer == "peft"
    assert set(adapter.meta.ranks.values()) == {4}
    assert adapter.meta.scaling(adapter.modules[0]) == pytest.approx(2.0)
    assert adapter.pairs[adapter.modules[0]].A.dtype == np.float32


def test_bad_adapter_leaves_model_untouched(tiny_model_dir: Path) -> None:
    adapter = random_adapter(tiny_model_dir, ranks={})
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = logits(base)
    spec = base_model_spec(base, "another-base")
    with pytest.raises(AdapterValidationError, match="made for base model"):
        attach_adapter(base, adapter, spec)
    assert not isinstance(base, peft.PeftModel)
    assert not any("lora_" in n for n, _ in base.named_modules())
    torch.testing.assert_close(logits(base), before, rtol=0, atol=0)


def test_fingerprint_detects_weight_change(tiny_model_dir: Path, tmp_path: Path) -> None:
    fp = fingerprint_model_dir(tiny_model_dir)
    assert fp == fingerprint_model_dir(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    model.save_pretrained(tmp_path / "changed")
    fp2 = fingerprint_model_dir(tmp_path / "changed")
    assert fp2.config_hash == fp.config_hash
    assert fp2.weights_hash != fp.weights_hash
