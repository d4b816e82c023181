"""MeZO: fine-tuning LoRA with forward passes only, for phones too small for backprop.

Malladi et al., "Fine-Tuning Language Models with Just Forward Passes" (NeurIPS 2023). SPSA
estimates the gradient's projection on a random direction ``z ~ N(0, I)`` from two losses:

    g = (L(θ + εz) − L(θ − εz)) / 2ε,        θ ← θ − lr · g · z

The memory trick is that ``z`` is never stored: it is regenerated from a per-step seed each
time it is needed (perturb +ε, perturb −2ε, restore +ε, update), one parameter tensor at a
time, in place. So a step needs the inference footprint only — no activations kept for a
backward pass, no gradients, no optimizer moments — and nothing here touches autograd (all
under ``torch.no_grad``; ``.grad`` stays ``None``).

It runs on the same LoRA tensors, with the same batches, deadline, cooling and checkpointing
as the backprop trainer, and its delta enters the same pipeline. It converges more slowly
per step (a one-dimensional gradient estimate), so phones use it only when the memory plan
says nothing else fits. Dropout masks are held fixed between the two forward passes (the RNG
state is restored) so the difference measures the perturbation, not the dropout noise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from fedlora.client.text_batches import summed_token_loss

Batch = dict[str, torch.Tensor]


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s direction z (stable across processes and resumes)."""
    digest = hashlib.sha256(f"mezo:{seed}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class MezoStepper:
    """SPSA updates of ``params`` in place; stateless apart from the parameters themselves."""

    def __init__(
        self,
        model: torch.nn.Module,
        params: list[torch.nn.Parameter],
        learning_rate: float,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        if eps <= 0:
            raise ValueError(f"MeZO eps must be > 0, got {eps}")
        self.model = model
        self.params = params
        self.lr = learning_rate
        self.eps = eps
        self.weight_decay = weight_decay
        self.seed = seed
        self.last_projected_grad = 0.0

    def _directions(self, seed: int) -> Any:
        """Yield (param, z) with z regenerated from ``seed``: one tensor alive at a time."""
        gens: dict[torch.device, torch.Generator] = {}
        for p in self.params:
            gen = gens.get(p.device)
            if gen is None:
                gen = torch.Generator(device=p.device)
                gen.manual_seed(seed)
                gens[p.device] = gen
            yield p, torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)

    def _perturb(self, seed: int, scale: float) -> None:
        for p, z in self._directions(seed):
            p.add_(z, alpha=scale)

    def _loss(self, parts: Sequence[Batch], n_tokens: int) -> float:
        total = sum(float(summed_token_loss(self.model, b)) for b in parts)
        return total / max(n_tokens, 1)

    @torch.no_grad()
    def step(self, parts: Sequence[Batch], n_tokens: int, step_index: int) -> float:
        seed = step_seed(self.seed, step_index)
        rng = torch.get_rng_state()
        self._perturb(seed, self.eps)
        loss_plus = self._loss(parts, n_tokens)
        torch.set_rng_state(rng)
        self._perturb(seed, -2.0 * self.eps)
        loss_minus = self._loss(parts, n_tokens)
        self._perturb(seed, self.eps)
        g = (loss_plus - loss_minus) / (2.0 * self.eps)
        self.last_projected_grad = g
        for p, z in self._directions(seed):
            if self.weight_decay:
                p.mul_(1.0 - self.lr * self.weight_decay)
            p.add_(z, alpha=-self.lr * g)
        return 0.5 * (loss_plus + loss_minus)

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        return None
