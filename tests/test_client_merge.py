"""Using the community adapter on the phone: merged weights behave like base + adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from test_client_support import community_adapter, phone_model_dir  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from fedlora.client.merge import MergeMismatchError, merge_for_inference  # noqa: E402
from fedlora.client.model_loading import load_base  # noqa: E402
from fedlora.client.peft_bridge import attach_adapter  # noqa: E402


@pytest.fixture(scope="module")
def phone_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phone_model_dir(tiny_model_dir, tmp_path_factory.mktemp("phone-merge"))


def test_merged_model_matches_base_plus_adapter(phone_dir: Path, tmp_path: Path) -> None:
    adapter = community_adapter(phone_dir, 4, b_scale=0.2, seed=3)
    result = merge_for_inference(str(phone_dir), adapter, tmp_path / "merged", device="cpu")
    assert result.max_abs_logit_diff <= 1e-4
    assert result.adapter_effect > 1e-3  # the adapter does change the model

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # plain HF, no PEFT
    assert not any("lora" in n for n, _ in merged.named_modules())
    base = load_base(str(phone_dir), "none", device="cpu")
    reference = attach_adapter(base.model, adapter, base.spec).eval()
    ids = torch.tensor([[1, 20, 33, 41, 5, 60, 7, 18]])
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=1e-4, atol=1e-4
        )
    assert (tmp_path / "merged" / "tokenizer.json").exists()


def test_merge_mismatch_is_refused_and_nothing_saved(phone_dir: Path, tmp_path: Path) -> None:
    adapter = community_adapter(phone_dir, 2, b_scale=0.2)
    with pytest.raises(MergeMismatchError, match="differs from base"):
        merge_for_inference(str(phone_dir), adapter, tmp_path / "m", device="cpu", atol=-1.0)
    assert not (tmp_path / "m").exists()
