"""AdamW and gradient clipping for K phones stacked in one ``(K, N)`` tensor.

AdamW is element-wise, so one optimizer over the stacked factors *is* K independent AdamWs —
as long as everything that is per phone stays per phone:

* **step counters** (bias correction): each phone counts its own steps;
* **learning rate and weight decay**: per phone;
* **finished phones**: a phone that has done its steps (fewer steps, or a chunk whose other
  phones train longer) gets no update at all — parameters, moments and step count untouched;
* **gradient clipping**: the phone's trainer clips the global norm of *its* gradient
  (:func:`torch.nn.utils.clip_grad_norm_` over its LoRA tensors), so we clip each row of the
  gradient by that row's norm.

The arithmetic is torch's single-tensor AdamW (``torch.optim.adam._single_tensor_adam`` with
``decoupled_weight_decay=True``, non-capturable path), op for op. When all stepping phones
share step count, learning rate and weight decay (the usual case) the scalar coefficients are
passed exactly as torch passes them, so a single phone's update is bit-identical to
``torch.optim.AdamW``; otherwise they are per-row tensors computed in float64 and rounded once,
which agrees to the last bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s denominator guard


def clip_grad_norm_per_phone_(grad: torch.Tensor, max_norm: Sequence[float | None]) -> torch.Tensor:
    """Clip each row of ``grad (K, N)`` to its phone's ``max_norm`` (None: no clipping).

    Same rule as :func:`torch.nn.utils.clip_grad_norm_`: ``g ← g · min(1, c / (‖g‖ + 1e-6))``.
    Returns the per-phone norms before clipping.
    """
    norms = torch.linalg.vector_norm(grad, 2, dim=1)
    limits = [math.inf if m is None else float(m) for m in max_norm]
    if all(math.isinf(m) for m in limits):
        return norms
    c = torch.tensor(limits, dtype=norms.dtype, device=norms.device)
    coef = torch.clamp(c / (norms + CLIP_EPS), max=1.0)
    grad.mul_(coef.unsqueeze(1))
    return norms


class VectorizedAdamW:
    """AdamW over the rows of one ``(K, N)`` parameter, each row an independent phone."""

    def __init__(
        self,
        param: torch.Tensor,
        lr: Sequence[float],
        weight_decay: Sequence[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        k = param.shape[0]
        if len(lr) != k or len(weight_decay) != k:
            raise ValueError(f"need one lr and one weight_decay per phone ({k})")
        self.param = param
        self.lr = np.asarray(lr, dtype=np.float64)
        self.weight_decay = np.asarray(weight_decay, dtype=np.float64)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.exp_avg = torch.zeros_like(param, memory_format=torch.contiguous_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.contiguous_format)
        self.steps = np.zeros(k, dtype=np.int64)

    @torch.no_grad()
    def step(self, active: Sequence[bool]) -> None:
        """One AdamW step for the phones marked active; the others are left untouched."""
        grad = self.param.grad
        if grad is None:
            raise RuntimeError("no gradient to step on: call backward() first")
        mask = np.asarray(active, dtype=bool)
        if not mask.any():
            return
        self.steps[mask] += 1
        if mask.all():
            self._update(self.param, grad, self.exp_avg, self.exp_avg_sq, mask)
            return
        idx = torch.from_numpy(np.flatnonzero(mask)).to(self.param.device)
        p, m, v = (t.index_select(0, idx) for t in (self.param, self.exp_avg, self.exp_avg_sq))
        self._update(p, grad.index_select(0, idx), m, v, mask)
        for full, part in ((self.param, p), (self.exp_avg, m), (self.exp_avg_sq, v)):
            full.index_copy_(0, idx, part)

    def _update(
        self,
        p: torch.Tensor,
        g: torch.Tensor,
        m: torch.Tensor,
        v: torch.Tensor,
        mask: np.ndarray,
    ) -> None:
        lr, wd, step = self.lr[mask], self.weight_decay[mask], self.steps[mask].astype(np.float64)
        uniform = bool((lr == lr[0]).all() and (wd == wd[0]).all() and (step == step[0]).all())
        if uniform:
            self._update_scalar(p, g, m, v, float(lr[0]), float(wd[0]), float(step[0]))
        else:
            self._update_rows(p, g, m, v, lr, wd, step)

    def _update_scalar(
        self,
        p: torch.Tensor,
        g: torch.Tensor,
        m: torch.Tensor,
        v: torch.Tensor,
        lr: float,
        wd: float,
        step: float,
    ) -> None:
        # torch.optim.adam._single_tensor_adam, decoupled weight decay, non-capturable
        if wd != 0:
            p.mul_(1 - lr * wd)
        m.lerp_(g, 1 - self.beta1)
        v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
        bias_correction1 = 1 - self.beta1**step
        bias_correction2 = 1 - self.beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        denom = (v.sqrt() / bias_correction2_sqrt).add_(self.eps)
        p.addcdiv_(m, denom, value=-step_size)

    def _update_rows(
        self,
        p: torch.Tensor,
        g: torch.Tensor,
        m: torch.Tensor,
        v: torch.Tensor,
        lr: np.ndarray,
        wd: np.ndarray,
        step: np.ndarray,
    ) -> None:
        def col(x: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(x).to(device=p.device, dtype=p.dtype).unsqueeze(1)

        if (wd != 0).any():
            p.mul_(col(1 - lr * wd))
        m.lerp_(g, 1 - self.beta1)
        v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
        step_size = lr / (1 - self.beta1**step)
        bias_correction2_sqrt = (1 - self.beta2**step) ** 0.5
        denom = (v.sqrt() / col(bias_correction2_sqrt)).add_(self.eps)
        p.add_((m / denom).mul_(col(-step_size)))
