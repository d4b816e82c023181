"""Native handsets: the ExecuTorch training program trains LoRA exactly like eager PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_client_support import community_adapter, phone_model_dir  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from fedlora.adapter_io import save_adapter  # noqa: E402
from fedlora.client.native_export import (  # noqa: E402
    META_FILE,
    build_training_step,
    rewrite_unsupported_ops,
)
from fedlora.client.native_model import (  # noqa: E402
    NativeExportError,
    NativeLlama,
    NativeShape,
    masked_token_loss,
)

SEQ, BATCH = 16, 2


@pytest.fixture(scope="module")
def phone_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phone_model_dir(tiny_model_dir, tmp_path_factory.mktemp("phone-native"))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 80, (BATCH, SEQ), generator=gen)
    labels = ids.clone()
    labels[1, 11:] = -100  # a right-padded example
    return ids, labels


def test_native_llama_reproduces_the_hugging_face_model(phone_dir: Path) -> None:
    hf = AutoModelForCausalLM.from_pretrained(phone_dir)
    shape = NativeShape.from_hf_config(hf.config)
    ids, labels = batch()
    kw = {"seq_len": SEQ, "lora_targets": ("q_proj",), "rank": 2, "alpha": 4.0}
    exact = NativeLlama(shape, hf.state_dict(), int8=False, **kw)
    int8 = NativeLlama(shape, hf.state_dict(), int8=True, **kw)
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        torch.testing.assert_close(exact(ids), ref, rtol=1e-5, atol=1e-5)
        err = (int8(ids) - ref).abs().max().item()
        assert 0 < err < 0.05  # weight-only int8 error, small but real
        hf_loss = torch.nn.functional.cross_entropy(
            ref[:, :-1].reshape(-1, ref.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )
        torch.testing.assert_close(masked_token_loss(exact(ids), labels), hf_loss)


def test_unsupported_architecture_is_refused(phone_dir: Path) -> None:
    cfg = AutoModelForCausalLM.from_pretrained(phone_dir).config
    cfg.rope_parameters = {"rope_type": "llama3", "rope_theta": 10000.0}
    with pytest.raises(NativeExportError, match="RoPE"):
        NativeShape.from_hf_config(cfg)


def test_int8_base_is_a_quarter_of_fp32(phone_dir: Path) -> None:
    step8 = build_training_step(phone_dir, rank=2, alpha=4, targets=["q_proj"], seq_len=SEQ)
    step32 = build_training_step(
        phone_dir, rank=2, alpha=4, targets=["q_proj"], seq_len=SEQ, int8=False
    )

    def nbytes(step: torch.nn.Module) -> int:
        return sum(b.numel() * b.element_size() for b in step.buffers())

    assert nbytes(step8) < 0.4 * nbytes(step32)
    assert [n for n, p in step8.named_parameters() if p.requires_grad] == [
        "model.layers.0.self_attn.q_proj.lora_A",
        "model.layers.0.self_attn.q_proj.lora_B",
        "model.layers.1.self_attn.q_proj.lora_A",
        "model.layers.1.self_attn.q_proj.lora_B",
    ]


@pytest.mark.slow
def test_executorch_program_trains_like_eager(phone_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip(
        "executorch.extension.training",
        reason="ExecuTorch is not installed (pip install 'fedlora[native]'); CI installs it",
    )
    import typer
    from typer.testing import CliRunner

    from fedlora.cli.client_export import export
    from fedlora.client.native_runtime import NativeTrainer

    adapter = community_adapter(phone_dir, 4, targets=("q_proj", "v_proj"), b_scale=0.05)
    save_adapter(adapter, tmp_path / "community.safetensors")
    cli = typer.Typer()
    cli.command()(export)
    cli.command("noop")(lambda: None)  # keep `export` a sub-command, as under `fedlora client`
    out = tmp_path / "native"
    result = CliRunner().invoke(
        cli,
        [
            "export", "--out", str(out), "--seq-len", str(SEQ), "--batch-size", str(BATCH),
            "--adapter", str(tmp_path / "community.safetensors"),
            "--set", f"model.base={json.dumps(str(phone_dir))}",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(next(x for x in result.output.splitlines() if x.startswith("{")))
    assert summary["rank"] == 4 and summary["pte_bytes"] > 0
    meta = json.loads((out / META_FILE).read_text())
    assert meta["inputs"]["input_ids"]["shape"] == [BATCH, SEQ]
    assert meta["base_fingerprint"] == adapter.meta.base_fingerprint
    assert (out / "tokenizer.json").exists()

    ids, labels = batch()
    native = NativeTrainer(Path(summary["pte_path"]))
    eager = build_training_step(
        phone_dir, rank=4, alpha=8.0, targets=["q_proj", "v_proj"], seq_len=SEQ, adapter=adapter
    )
    lr = 0.5
    opt = torch.optim.SGD(eager.parameters(), lr=lr)
    native_losses, eager_losses = [], []
    for _ in range(4):
        native_losses.append(native.step(ids, labels, lr))
        loss = eager(ids, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        eager_losses.append(float(loss.detach()))
    np.testing.assert_allclose(native_losses, eager_losses, rtol=1e-4, atol=1e-5)
    assert native_losses[-1] < native_losses[0]

    delta = native.delta(adapter)
    assert delta.meta.kind == "delta" and delta.modules == adapter.modules
    assert delta.meta.alphas == adapter.meta.alphas
    name = adapter.modules[0]
    eager_b = dict(eager.named_parameters())[f"{name}.lora_B"].detach().numpy()
    np.testing.assert_allclose(adapter.pairs[name].B + delta.pairs[name].B, eager_b, atol=1e-5)

    # a new round: the app loads the next community adapter into the same program
    native.load_adapter(adapter)
    fresh = build_training_step(
        phone_dir, rank=4, alpha=8.0, targets=["q_proj", "v_proj"], seq_len=SEQ, adapter=adapter
    )
    want = float(fresh(ids, labels).detach())
    assert native.step(ids, labels, 0.0) == pytest.approx(want, rel=1e-5)


def test_empty_permuted_is_rewritten() -> None:
    """The backward of a transpose-heavy graph emits aten.empty_permuted; it must go."""
    from torch.export import export
    from torch.export.experimental import _export_forward_backward

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 3, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.matmul(x.transpose(1, 2), self.w.transpose(1, 2))
            return torch.log_softmax(y, dim=-1).sum()

    ep = _export_forward_backward(export(Tiny(), (torch.randn(4, 5, 3),), strict=False))
    rewrite_unsupported_ops(ep)
    targets = {str(n.target) for n in ep.graph.nodes}
    assert not any("empty_permuted" in t for t in targets)
