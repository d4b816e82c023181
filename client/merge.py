"""Using the community adapter on the phone: merge it into the base for inference.

For inference a phone does not want LoRA's extra matmuls: ``W' = W + (alpha/r)·B@A`` folded
into each adapted linear layer (PEFT's ``merge_and_unload``) gives a plain model with the
base's speed. Merging is checked, not trusted: the logits of the merged model on probe
inputs must match base + adapter (unmerged) within a tolerance, else
:class:`MergeMismatchError` and nothing is saved.

Merge into a float base (``none`` or ``bf16``): merging into a 4-bit base dequantizes,
adds and re-quantizes, so the result differs from base + adapter by the quantization
error of ΔW — the check then needs a looser tolerance (and reports the difference).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fedlora.adapter import LoraAdapter
from fedlora.client.model_loading import load_base
from fedlora.client.peft_bridge import attach_adapter
from fedlora.errors import FedloraError


class MergeMismatchError(FedloraError, RuntimeError):
    """The merged model's outputs differ from base + adapter by more than the tolerance."""


@dataclass(frozen=True)
class MergeResult:
    directory: str
    max_abs_logit_diff: float
    adapter_effect: float
    """max |logits(base + adapter) − logits(base)|: shows the adapter changed something."""


def _probe_ids(vocab: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (2, 16), generator=gen)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=ids.to(device)).logits.float().cpu()
    return out


def merge_for_inference(
    base_source: str,
    adapter: LoraAdapter,
    out_dir: Path,
    *,
    quantization: str = "none",
    device: str = "auto",
    atol: float = 1e-4,
) -> MergeResult:
    """Merge ``adapter`` into a freshly loaded base, check the outputs, save the model.

    The saved directory is an ordinary Hugging Face model (weights + config + tokenizer)
    that loads with ``AutoModelForCausalLM.from_pretrained`` and needs no PEFT.
    """
    base = load_base(base_source, quantization, device=device)
    ids = _probe_ids(int(base.model.config.vocab_size))
    plain = _logits(base.model, ids)
    model = attach_adapter(base.model, adapter, base.spec)
    model.eval()
    with_adapter = _logits(model, ids)
    merged = model.merge_and_unload()
    merged_logits = _logits(merged, ids)
    diff = float((merged_logits - with_adapter).abs().max())
    if not diff <= atol:
        raise MergeMismatchError(
            f"merged model differs from base + adapter by {diff:.3g} (tolerance {atol:.3g})"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir)
    base.tokenizer.save_pretrained(out_dir)
    return MergeResult(
        directory=str(out_dir),
        max_abs_logit_diff=diff,
        adapter_effect=float((with_adapter - plain).abs().max()),
    )
