"""Batched multi-LoRA on a shared frozen base: each phone's LoRA applied to its own rows.

The idea is the one multi-tenant LoRA servers use for inference — S-LoRA's unified batching
and Punica's BGMV kernel (batched gather matrix-vector) run one GEMM through the shared base
for every request and add each request's own low-rank term — applied here to *training*. For
a targeted linear layer and a batch whose row ``i`` belongs to phone ``k = row_phone[i]``, the
layer computes

    y_i = base(x_i) + ((x_i @ A_kᵀ) ⊙ s_k) @ B_kᵀ

where ``s_k`` is phone ``k``'s rank mask with ``alpha/r`` folded in (see
:mod:`fedlora.simulations.vectorized_stack`). The gather of BGMV is one ``index_select`` of
the stacked factors per pass (rows → their phone's factors); the per-row products are two
``torch.bmm`` calls over the row axis — no Python loop over phones. Gathering per row rather
than reshaping a phone-major batch ``(K·b, T, d) → (K, b·T, d)`` lets a pass hold any rows of
any phones, which is what length bucketing needs
(:mod:`fedlora.simulations.vectorized_batches`); the gathered factors are ``r/T`` of the
layer's input activations in size.

The LoRA term is installed with forward hooks on the base's own modules: the base is neither
copied nor changed, its layer is called as-is (``nn.Linear``, or bitsandbytes ``Linear4bit`` /
``Linear8bitLt`` for nf4 / int8 bases), and the hooks are removed when the context ends. Like
PEFT, the LoRA term is computed in the factors' dtype (float32) and the sum is cast back to
the base layer's output dtype.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class ActiveFactors:
    """The factors the hooks apply on the next forward pass (set by the trainer per pass).

    ``factors[path] = (A (R, r, d_in), B (R, d_out, r), scale (R, r))``: row ``i``'s phone's
    factors, already gathered for the ``R`` rows of the batch.
    """

    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default_factory=dict
    )
    #: LoRA dropout on the layer input of the LoRA term (training mode only), as PEFT's
    #: ``lora_dropout``; the random masks of course differ from PEFT's.
    dropout: float = 0.0


def batched_lora_term(
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    dropout: float = 0.0,
) -> torch.Tensor:
    """``((x_i @ A_iᵀ) ⊙ s_i) @ B_iᵀ`` for every row ``i`` of ``x``, with per-row factors.

    ``x``: ``(R, …, d_in)``; ``a``: ``(R, r, d_in)``; ``b``: ``(R, d_out, r)``; ``scale``:
    ``(R, r)``. Returns ``(R, …·, d_out)`` flattened over the middle axes, in the factors' dtype.
    """
    if x.shape[0] != a.shape[0]:
        raise ValueError(f"{x.shape[0]} rows but factors for {a.shape[0]}")
    xs = x.reshape(x.shape[0], -1, x.shape[-1]).to(a.dtype)
    if dropout > 0:
        xs = F.dropout(xs, dropout, training=True)
    h = torch.bmm(xs, a.transpose(1, 2))
    h = h * scale.unsqueeze(1)
    return torch.bmm(h, b.transpose(1, 2))


def _hook_for(path: str, state: ActiveFactors) -> Any:
    def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        entry = state.factors.get(path)
        if entry is None:
            return output
        a, b, scale = entry
        dropout = state.dropout if module.training else 0.0
        term = batched_lora_term(args[0], a, b, scale, dropout)
        return (output + term.view(output.shape)).to(output.dtype)

    return hook


@contextmanager
def batched_lora_hooks(
    model: torch.nn.Module, paths: list[str], state: ActiveFactors
) -> Iterator[None]:
    """Add the batched LoRA term to the outputs of ``model``'s modules at ``paths``.

    The hooks read ``state`` at every call, so one installation serves every forward pass of
    a chunk of phones; they are removed on exit even if training fails.
    """
    modules = dict(model.named_modules())
    missing = [p for p in paths if p not in modules]
    if missing:
        raise ValueError(f"the base model has no module {missing[0]!r}")
    handles = [modules[p].register_forward_hook(_hook_for(p, state)) for p in paths]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
