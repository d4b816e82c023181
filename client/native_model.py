"""A self-contained Llama + LoRA training step for native handsets (ExecuTorch export).

Why not export the Hugging Face model directly: its forward carries caches, mask builders and
config switches that ``torch.export`` has to trace through, and bitsandbytes layers have no
ExecuTorch kernels at all. The native program only needs one fixed-shape computation:
``loss(input_ids, labels)`` of a frozen base plus LoRA. So this module rebuilds exactly that
from a Hugging Face Llama's weights with a handful of plain ATen ops that ExecuTorch's
portable kernels implement:

* base linear weights are **int8, weight-only, per output channel** (symmetric,
  ``w ≈ q · scale``) and are dequantized *inside the graph* (``q.to(f32) * scale``), so the
  .pte stores one byte per weight and no separate quantized kernels are needed;
* LoRA factors ``A (r, d_in)`` and ``B (d_out, r)`` are the only ``nn.Parameter``\\ s, so
  ``_export_forward_backward`` emits gradients for them and nothing else;
* the loss is the token-weighted mean next-token cross-entropy over positions whose label is
  not -100, the same definition as :mod:`fedlora.client.text_batches` (written with
  ``log_softmax`` + ``gather`` + a mask, avoiding ``ignore_index`` kernels).

Only what the embedded default model and typical small Llamas use is supported (RoPE
``default``, no attention/MLP bias, SiLU MLP); anything else is a :class:`NativeExportError`
rather than a silently different model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedlora.errors import FedloraError

IGNORE_INDEX = -100


class NativeExportError(FedloraError, ValueError):
    """The base model (or the request) cannot be expressed as a native training program."""


def quantize_int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``weight ≈ q.float() * scale`` with ``scale`` shaped (rows, 1)."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    scale = amax / 127.0
    q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
    return q, scale


class FrozenLinear(nn.Module):
    """A frozen base linear layer (int8 or float weights) with an optional LoRA pair."""

    def __init__(
        self,
        weight: torch.Tensor,
        *,
        int8: bool,
        rank: int = 0,
        scaling: float = 1.0,
    ) -> None:
        super().__init__()
        self.int8 = int8
        if int8:
            q, scale = quantize_int8_rows(weight)
            self.register_buffer("weight_q", q)
            self.register_buffer("weight_scale", scale)
        else:
            self.register_buffer("weight", weight.detach().float().clone())
        self.rank = rank
        self.scaling = float(scaling)
        d_out, d_in = weight.shape
        if rank > 0:
            self.lora_A = nn.Parameter(torch.zeros(rank, d_in))
            self.lora_B = nn.Parameter(torch.zeros(d_out, rank))

    def dense_weight(self) -> torch.Tensor:
        if self.int8:
            return self.weight_q.to(torch.float32) * self.weight_scale
        w: torch.Tensor = self.weight
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.dense_weight().t())
        if self.rank > 0:
            y = y + torch.matmul(torch.matmul(x, self.lora_A.t()), self.lora_B.t()) * self.scaling
        return y


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    var = torch.mean(x * x, dim=-1, keepdim=True)
    return x * torch.rsqrt(var + eps) * weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass(frozen=True)
class NativeShape:
    """The dimensions of the Llama being rebuilt (read from its Hugging Face config)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float
    rope_theta: float
    tie_embeddings: bool

    @classmethod
    def from_hf_config(cls, config: Any) -> NativeShape:
        if getattr(config, "model_type", "") != "llama":
            raise NativeExportError(
                f"native export supports Llama models, got model_type={config.model_type!r}"
            )
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            raise NativeExportError("native export does not support attention/MLP biases")
        if getattr(config, "hidden_act", "silu") != "silu":
            raise NativeExportError(f"native export needs a SiLU MLP, got {config.hidden_act!r}")
        rope = getattr(config, "rope_parameters", None) or {}
        rope_type = rope.get("rope_type", "default") if isinstance(rope, Mapping) else "default"
        if rope_type != "default":
            raise NativeExportError(f"native export supports default RoPE, got {rope_type!r}")
        theta = float(
            rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
            if isinstance(rope, Mapping)
            else getattr(config, "rope_theta", 10000.0)
        )
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        return cls(
            vocab_size=int(config.vocab_size),
            hidden_size=int(config.hidden_size),
            num_layers=int(config.num_hidden_layers),
            num_heads=heads,
            num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=head_dim,
            rms_eps=float(config.rms_norm_eps),
            rope_theta=theta,
            tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )


ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


class NativeLlama(nn.Module):
    """Llama forward (logits) from a state dict, frozen base, LoRA on chosen linear layers."""

    def __init__(
        self,
        shape: NativeShape,
        state: Mapping[str, torch.Tensor],
        *,
        seq_len: int,
        lora_targets: Sequence[str],
        rank: int,
        alpha: float,
        int8: bool = True,
    ) -> None:
        super().__init__()
        self.shape = shape
        unknown = sorted(set(lora_targets) - set(ATTENTION + MLP))
        if unknown:
            raise NativeExportError(f"cannot put LoRA on {unknown}: known are {ATTENTION + MLP}")
        self.lora_targets = tuple(lora_targets)
        scaling = alpha / rank if rank > 0 else 1.0
        embed = state["model.embed_tokens.weight"].detach().float()
        self.int8 = int8
        if int8:
            q, s = quantize_int8_rows(embed)
            self.register_buffer("embed_q", q)
            self.register_buffer("embed_scale", s)
        else:
            self.register_buffer("embed", embed.clone())
        head = state.get("lm_head.weight") if not shape.tie_embeddings else None
        self.lm_head = FrozenLinear(embed if head is None else head, int8=int8)
        self.register_buffer("final_norm", state["model.norm.weight"].detach().float().clone())
        self.layers = nn.ModuleList()
        for i in range(shape.num_layers):
            pre = f"model.layers.{i}."
            layer = nn.Module()
            for group, names in (("self_attn", ATTENTION), ("mlp", MLP)):
                block = nn.Module()
                for name in names:
                    r = rank if name in self.lora_targets else 0
                    w = state[f"{pre}{group}.{name}.weight"]
                    block.add_module(name, FrozenLinear(w, int8=int8, rank=r, scaling=scaling))
                layer.add_module(group, block)
            layer.register_buffer(
                "input_norm", state[f"{pre}input_layernorm.weight"].detach().float().clone()
            )
            layer.register_buffer(
                "post_norm",
                state[f"{pre}post_attention_layernorm.weight"].detach().float().clone(),
            )
            self.layers.append(layer)
        inv = 1.0 / (
            shape.rope_theta
            ** (torch.arange(0, shape.head_dim, 2, dtype=torch.float32) / shape.head_dim)
        )
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("rope_cos", emb.cos())
        self.register_buffer("rope_sin", emb.sin())
        mask = torch.full((seq_len, seq_len), float("-inf")).triu(1)
        self.register_buffer("causal_mask", mask)

    def lora_modules(self) -> dict[str, FrozenLinear]:
        """Hugging Face module path (``model.layers.<i>.self_attn.q_proj``) → layer with LoRA.

        Inside :class:`NativeTrainingStep` this module is the attribute ``model``, so the
        exported parameter names are exactly these paths + ``.lora_A`` / ``.lora_B``.
        """
        out: dict[str, FrozenLinear] = {}
        for i, layer in enumerate(self.layers):
            for name in self.lora_targets:
                group = "self_attn" if name in ATTENTION else "mlp"
                out[f"model.layers.{i}.{group}.{name}"] = getattr(getattr(layer, group), name)
        return out

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.int8:
            rows = torch.nn.functional.embedding(input_ids, self.embed_q.to(torch.float32))
            scale = torch.nn.functional.embedding(input_ids, self.embed_scale)
            return rows * scale
        return torch.nn.functional.embedding(input_ids, self.embed)

    def _attention(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        s = self.shape
        b, t, _ = x.shape
        q = attn.q_proj(x).view(b, t, s.num_heads, s.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, t, s.num_kv_heads, s.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(b, t, s.num_kv_heads, s.head_dim).transpose(1, 2)
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        groups = s.num_heads // s.num_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) * (s.head_dim**-0.5)
        scores = scores + self.causal_mask[:t, :t]
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, s.num_heads * s.head_dim)
        result: torch.Tensor = attn.o_proj(out)
        return result

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        eps = self.shape.rms_eps
        h = self._embed(input_ids)
        for layer in self.layers:
            h = h + self._attention(layer.self_attn, _rms_norm(h, layer.input_norm, eps))
            x = _rms_norm(h, layer.post_norm, eps)
            mlp = layer.mlp
            h = h + mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        logits: torch.Tensor = self.lm_head(_rms_norm(h, self.final_norm, eps))
        return logits


def masked_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose (shifted) label is not -100."""
    logp = torch.log_softmax(logits[:, :-1, :], dim=-1)
    target = labels[:, 1:]
    valid = target != IGNORE_INDEX
    safe = torch.where(valid, target, torch.zeros_like(target))
    picked = torch.gather(logp, 2, safe.unsqueeze(-1)).squeeze(-1)
    mask = valid.to(logp.dtype)
    return -(picked * mask).sum() / mask.sum().clamp(min=1.0)


class NativeTrainingStep(nn.Module):
    """``(input_ids, labels) → loss``: the method the .pte exposes as ``forward``."""

    def __init__(self, model: NativeLlama) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return masked_token_loss(self.model(input_ids), labels)
