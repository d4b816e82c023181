"""MeZO: forward-only LoRA training reduces the loss and never touches autograd."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from test_client_support import PRIVATE_TEXTS, community_adapter, phone_model_dir  # noqa: E402

from fedlora.client.mezo import MezoStepper, step_seed  # noqa: E402
from fedlora.client.model_loading import load_base  # noqa: E402
from fedlora.client.peft_bridge import attach_adapter  # noqa: E402
from fedlora.client.text_batches import evaluate_loss, tokenize_texts  # noqa: E402
from fedlora.client.trainer import TrainConfig, train_lora  # noqa: E402


@pytest.fixture(scope="module")
def phone_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phone_model_dir(tiny_model_dir, tmp_path_factory.mktemp("phone-mezo"))


def test_mezo_reduces_loss_without_autograd(phone_dir: Path) -> None:
    base = load_base(str(phone_dir), "none", device="cpu")
    model = attach_adapter(base.model, community_adapter(phone_dir, 4, b_scale=0.02), base.spec)
    data = tokenize_texts(base.tokenizer, PRIVATE_TEXTS, 48)
    graphs: list[bool] = []
    hook = model.register_forward_hook(lambda m, i, o: graphs.append(o.logits.requires_grad))
    before = evaluate_loss(model, data)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = TrainConfig(steps=25, batch_size=12, learning_rate=1e-2, method="mezo", mezo_eps=1e-3)
    result = train_lora(model, data, cfg)
    hook.remove()
    after = evaluate_loss(model, data)
    assert after < before - 0.005, (before, after)
    assert result.losses[-1] < result.losses[0]
    assert graphs and not any(graphs), "a MeZO forward pass built an autograd graph"
    for name, p in model.named_parameters():
        assert p.grad is None, f"{name} has a gradient"
        if p.requires_grad:
            assert not torch.equal(p.detach(), start[name]), f"{name} did not move"


def test_perturbations_are_regenerated_exactly(phone_dir: Path) -> None:
    """+ε, −2ε, +ε with z regenerated from the seed restores θ (up to rounding) — so no z
    is ever stored."""
    base = load_base(str(phone_dir), "none", device="cpu")
    model = attach_adapter(base.model, community_adapter(phone_dir, 2), base.spec)
    params = [p for p in model.parameters() if p.requires_grad]
    stepper = MezoStepper(model, params, learning_rate=0.0, eps=1e-2)
    snapshot = [p.detach().clone() for p in params]
    seed = step_seed(0, 5)
    with torch.no_grad():
        stepper._perturb(seed, 1e-2)
        moved = [p.detach().clone() for p in params]
        stepper._perturb(seed, -2e-2)
        stepper._perturb(seed, 1e-2)
    assert any(not torch.equal(a, b) for a, b in zip(moved, snapshot, strict=True))
    for p, s in zip(params, snapshot, strict=True):
        torch.testing.assert_close(p.detach(), s, rtol=0, atol=1e-6)
    assert step_seed(0, 5) == seed and step_seed(0, 6) != seed


def test_mezo_only_moves_trainable_tensors(phone_dir: Path) -> None:
    """With A frozen (FFA-LoRA), MeZO perturbs and updates B only."""
    base = load_base(str(phone_dir), "none", device="cpu")
    model = attach_adapter(base.model, community_adapter(phone_dir, 2), base.spec)
    for name, p in model.named_parameters():
        if ".lora_A." in name:
            p.requires_grad_(False)
    a_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_A." in n}
    data = tokenize_texts(base.tokenizer, PRIVATE_TEXTS, 48)
    train_lora(model, data, TrainConfig(steps=3, batch_size=4, method="mezo"))
    for n, p in model.named_parameters():
        if ".lora_A." in n:
            assert torch.equal(p.detach(), a_before[n])
