"""Backends, dtypes and quantized bases: the phone loads what it is told, or says why not."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from peft import LoraConfig, get_peft_model  # noqa: E402
from test_client_support import PRIVATE_TEXTS, phone_model_dir  # noqa: E402

from fedlora.client.backends import (  # noqa: E402
    Backend,
    BackendUnavailableError,
    available_backends,
    compute_dtype,
    resolve_backend,
)
from fedlora.client.model_loading import (  # noqa: E402
    assert_only_lora_trainable,
    load_base,
)
from fedlora.client.text_batches import tokenize_texts  # noqa: E402
from fedlora.client.trainer import TrainConfig, train_lora  # noqa: E402
from fedlora.errors import FedloraError  # noqa: E402


@pytest.fixture(scope="module")
def phone_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phone_model_dir(tiny_model_dir, tmp_path_factory.mktemp("phone-backends"))


def test_cpu_always_available_and_auto_resolves() -> None:
    assert available_backends()[-1] == "cpu"
    backend = resolve_backend("auto")
    assert backend.name in available_backends()
    assert resolve_backend("cpu").device == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "mps", "xpu", "cuda:3", "npu"])
def test_missing_backend_is_a_clear_error_not_a_cpu_fallback(name: str) -> None:
    if name.split(":")[0] in available_backends() and name != "cuda:3":
        pytest.skip(f"{name} exists on this machine")
    with pytest.raises(BackendUnavailableError, match=r"not available|only") as info:
        resolve_backend(name)
    assert isinstance(info.value, FedloraError)
    assert "cpu" in str(info.value)


def test_compute_dtype_never_fp16_on_cpu() -> None:
    for bf16 in (True, False):
        cpu = Backend("cpu", torch.device("cpu"), native_bf16=bf16)
        assert compute_dtype(cpu, "none") == torch.float32
        assert compute_dtype(cpu, "bf16") == torch.bfloat16
        for q in ("int8", "nf4"):
            assert compute_dtype(cpu, q) == (torch.bfloat16 if bf16 else torch.float32)
    old_gpu = Backend("cuda", torch.device("cuda"), native_bf16=False)
    assert compute_dtype(old_gpu, "nf4") == torch.float16


def test_load_base_unknown_quantization(phone_dir: Path) -> None:
    with pytest.raises(ValueError, match="quantization"):
        load_base(str(phone_dir), "int3")


@pytest.mark.parametrize("quantization", ["none", "bf16", "int8", "nf4"])
def test_quantized_base_trains_only_lora(phone_dir: Path, quantization: str) -> None:
    base = load_base(str(phone_dir), quantization, device="cpu")
    assert base.quantization == quantization
    assert base.backend is not None and base.backend.name == "cpu"
    if quantization == "nf4":
        linear = base.model.model.layers[0].self_attn.q_proj
        assert type(linear).__name__ == "Linear4bit"
    if quantization == "int8":
        assert type(base.model.model.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"
    assert not any(p.requires_grad for p in base.model.parameters())
    model = get_peft_model(
        base.model,
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], bias="none"),
    )
    names = assert_only_lora_trainable(model)
    assert names and all(".lora_" in n for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    data = tokenize_texts(base.tokenizer, PRIVATE_TEXTS, 32)
    result = train_lora(model, data, TrainConfig(steps=2, batch_size=4, learning_rate=1e-2))
    assert result.steps == 2 and result.last_loss == result.last_loss  # finite
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p.detach(), before[n]), f"frozen tensor {n} changed"


def test_base_weight_bytes_shrink_with_quantization(phone_dir: Path) -> None:
    sizes = {q: load_base(str(phone_dir), q, device="cpu").weight_bytes for q in ("none", "bf16")}
    assert sizes["bf16"] == pytest.approx(sizes["none"] / 2, rel=0.02)


def test_trainable_base_parameter_is_refused(phone_dir: Path) -> None:
    base = load_base(str(phone_dir), "none", device="cpu")
    model = get_peft_model(base.model, LoraConfig(r=2, target_modules=["q_proj"]))
    model.base_model.model.model.norm.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="base-model parameters are trainable"):
        assert_only_lora_trainable(model)
