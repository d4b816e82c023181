"""Vectorized phones: train (and evaluate) K simulated phones' LoRA adapters at once.

A simulation runs many phones' local rounds on one machine. Trained one by one, each phone
pays for its own pass through the frozen base, its own copy of the base wrapped by PEFT and its
own ~1,000 small ops per step. Here K phones go through the base *together*: batched
forwards/backwards through the shared frozen (possibly quantized) base, each phone's LoRA
added to its own rows by batched matmuls (S-LoRA / Punica BGMV-style multi-LoRA, applied to
training; see :mod:`fedlora.simulations.vectorized_layers`).

Where the time goes (``benchmarks/vectorized_phones.py``, docs/vectorized-phones.md): on a
CPU the base's forward/backward is compute-bound already at one phone's batch of 8 short
texts, so stacking phones buys only the per-op overhead (≈ 1.25×). The larger savings are
work not done: length-bucketed passes pad ≈ 1.1× instead of ≈ 1.5×
(:mod:`~fedlora.simulations.vectorized_batches`), the output head runs only where a token is
scored (:mod:`~fedlora.simulations.vectorized_loss`), and the per-phone base copy + PEFT
wrapping disappears. On a GPU, where every small op is a kernel launch, stacking itself
should be the main lever (not measured here).

Why the result is the same as training the phones one by one: the loss is
``Σ_k loss_k`` with ``loss_k`` phone ``k``'s token-weighted mean cross-entropy on its own
batch, and the phones' parameters are disjoint, so ``∂total/∂θ_k = ∂loss_k/∂θ_k``. Each
phone keeps its own batch schedule (:func:`fedlora.client.text_batches.batch_schedule` with its
seed), its own gradient clipping, its own AdamW state, step counter and learning rate
(:mod:`fedlora.simulations.vectorized_adamw`), and its own rank (padding + rank mask,
:mod:`fedlora.simulations.vectorized_stack`). The tests check equality with
:func:`fedlora.client.trainer.train_lora` on PEFT to float tolerance.

The deployment client keeps plain PEFT (:mod:`fedlora.client.round_training`): a phone trains
one adapter, and PEFT directories are the interchange format. This module is the simulation's
fast path.

Work and memory: one optimizer step of a chunk (``chunk_size`` phones) runs all their
batches' rows, sorted by length, in passes of at most ``tokens_per_pass`` padded tokens
(:mod:`fedlora.simulations.vectorized_batches`) — so ``tokens_per_pass`` bounds activation
memory, like the micro-batch on a phone, and ``chunk_size`` bounds the phones whose factors
and AdamW state are live at once (16 bytes per LoRA number per phone: factors, gradient and
two moments). The per-phone
``micro_batch_size`` of a :class:`TrainConfig` only changes memory, never the result, and is
ignored here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedlora.adapter import BaseModelSpec, LoraAdapter, validate_for_base
from fedlora.client.peft_bridge import linear_shapes
from fedlora.client.text_batches import TokenizedTexts, batch_schedule
from fedlora.client.trainer import TrainConfig
from fedlora.simulations.vectorized_adamw import VectorizedAdamW, clip_grad_norm_per_phone_
from fedlora.simulations.vectorized_batches import plan_passes, predicted_tokens, stack_rows
from fedlora.simulations.vectorized_layers import ActiveFactors, batched_lora_hooks
from fedlora.simulations.vectorized_loss import phone_loss_sums
from fedlora.simulations.vectorized_stack import StackLayout, stack_adapters


@dataclass(frozen=True)
class PhoneJob:
    """One phone's local round: its start adapter (at its rank), private data and config.

    ``freeze_a`` trains B only (FFA-LoRA: PEFT's ``lora_A.requires_grad_(False)``): A gets
    no gradient, no weight decay and does not count in the gradient-clipping norm.
    """

    adapter: LoraAdapter
    data: TokenizedTexts
    config: TrainConfig
    freeze_a: bool = False


@dataclass(frozen=True)
class PhoneResult:
    """What :func:`fedlora.client.trainer.train_lora` would have left the phone with."""

    adapter: LoraAdapter
    steps: int
    examples_seen: int
    first_loss: float
    last_loss: float


def _chunks(adapters: Sequence[LoraAdapter], size: int) -> list[list[int]]:
    """Indices of ``adapters`` in chunks of ``size``, lowest ranks first.

    A chunk's LoRA matmuls run at its largest rank, so chunks of like ranks waste less
    (ranks 4 / 8 / 16 in one chunk: the rank-4 phones compute 16 slots); results go back in
    input order.
    """
    order = sorted(range(len(adapters)), key=lambda i: adapters[i].max_rank)
    return [order[i : i + size] for i in range(0, len(order), size)]


class VectorizedLoraTrainer:
    """Train or evaluate many phones' adapters on one frozen base, ``chunk_size`` at a time.

    ``base_model`` is a plain Hugging Face causal LM (fp32, bf16, or with bitsandbytes nf4 /
    int8 linear layers); it is frozen in place and shared, never copied, and the LoRA hooks
    are on it only while :meth:`train` / :meth:`evaluate` run.

    * ``chunk_size`` — phones trained together (their factors and AdamW state are live at once);
    * ``tokens_per_pass`` — padded tokens per forward pass: the activation-memory lever;
    * ``r_max`` — the padded rank (default: the largest rank in each chunk);
    * ``spec`` — when given, every adapter is validated against the base (fingerprint, modules,
      shapes) before anything runs, as :func:`fedlora.client.peft_bridge.attach_adapter` does;
    * ``trim_head`` — compute the output head only where a token is scored
      (:mod:`fedlora.simulations.vectorized_loss`);
    * ``lora_dropout``, ``betas``, ``eps`` — as PEFT's ``lora_dropout`` and torch's AdamW.
    """

    def __init__(
        self,
        base_model: torch.nn.Module,
        *,
        chunk_size: int = 32,
        tokens_per_pass: int = 1024,
        r_max: int | None = None,
        spec: BaseModelSpec | None = None,
        trim_head: bool = True,
        lora_dropout: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if tokens_per_pass < 1:
            raise ValueError(f"tokens_per_pass must be >= 1, got {tokens_per_pass}")
        self.model = base_model
        self.chunk_size = chunk_size
        self.tokens_per_pass = tokens_per_pass
        self.r_max = r_max
        self.spec = spec
        self.trim_head = trim_head
        if not 0.0 <= lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout}")
        self.lora_dropout = lora_dropout
        self.betas = betas
        self.eps = eps
        for p in base_model.parameters():
            p.requires_grad_(False)
        self._shapes = linear_shapes(base_model)
        self.device = next(base_model.parameters()).device

    # ------------------------------------------------------------------ setup
    def _layout(self, adapters: Sequence[LoraAdapter]) -> StackLayout:
        """The stack layout of a chunk; raises before anything runs if an adapter misfits."""
        for a in adapters:
            if self.spec is not None:
                validate_for_base(a, self.spec)
        paths = sorted({m for a in adapters for m in a.modules})
        unknown = [p for p in paths if p not in self._shapes]
        if unknown:
            raise ValueError(f"the base model has no linear layer {unknown[0]!r}")
        r_max = self.r_max or max(a.max_rank for a in adapters)
        layout = StackLayout.build({p: self._shapes[p] for p in paths}, r_max)
        for a in adapters:
            layout.check_adapter(a)
        return layout

    def _check_all(self, adapters: Sequence[LoraAdapter]) -> None:
        """Validate every adapter up front, so a bad one fails the call before any chunk."""
        if adapters:
            self._layout(adapters)

    # ------------------------------------------------------------------ training
    def train(self, jobs: Sequence[PhoneJob]) -> list[PhoneResult]:
        """Every phone's local round, ``chunk_size`` phones at a time; results in input order."""
        for j in jobs:
            if len(j.data) == 0:
                raise ValueError("a phone has no training examples")
            if j.config.steps < 1:
                raise ValueError(f"steps must be >= 1, got {j.config.steps}")
        self._check_all([j.adapter for j in jobs])
        out: dict[int, PhoneResult] = {}
        for chunk in _chunks([j.adapter for j in jobs], self.chunk_size):
            out.update(zip(chunk, self._train_chunk([jobs[i] for i in chunk]), strict=True))
        return [out[i] for i in range(len(jobs))]

    def _train_chunk(self, jobs: list[PhoneJob]) -> list[PhoneResult]:
        adapters = [j.adapter for j in jobs]
        stack = PhoneStack.of(self._layout(adapters), adapters, self.device)
        stack.flat.requires_grad_(True)
        stack.state.dropout = self.lora_dropout
        cfgs = [j.config for j in jobs]
        opt = VectorizedAdamW(
            stack.flat,
            lr=[c.learning_rate for c in cfgs],
            weight_decay=[c.weight_decay for c in cfgs],
            betas=self.betas,
            eps=self.eps,
        )
        schedules = [
            batch_schedule(len(j.data), c.batch_size, c.steps, c.seed)
            for j, c in zip(jobs, cfgs, strict=True)
        ]
        losses = np.full((len(jobs), max(c.steps for c in cfgs)), np.nan)
        seen = np.zeros(len(jobs), dtype=np.int64)
        frozen = self._frozen_mask(stack.layout, [j.freeze_a for j in jobs])
        frozen_start = stack.flat.detach().clone() if frozen is not None else None
        was_training = self.model.training
        self.model.train()
        try:
            with batched_lora_hooks(self.model, stack.layout.paths, stack.state):
                for step in range(losses.shape[1]):
                    active = [step < c.steps for c in cfgs]
                    batches = {k: schedules[k][step] for k in range(len(jobs)) if active[k]}
                    for k, rows in batches.items():
                        losses[k, step] = 0.0
                        seen[k] += len(rows)
                    losses[:, step] += self._forward_backward(
                        stack, [j.data for j in jobs], batches
                    )
                    grad = stack.flat.grad
                    assert grad is not None
                    if frozen is not None:  # a frozen A has no gradient (nor clip-norm share)
                        grad.masked_fill_(frozen, 0.0)
                    clip_grad_norm_per_phone_(
                        grad,
                        [c.max_grad_norm if a else None for c, a in zip(cfgs, active, strict=True)],
                    )
                    opt.step(active)
                    if frozen is not None and frozen_start is not None:
                        with torch.no_grad():  # undo weight decay: a frozen A never moves
                            stack.flat.copy_(torch.where(frozen, frozen_start, stack.flat))
                    stack.flat.grad = None
        finally:
            stack.state.factors = {}
            self.model.train(was_training)
        rows = stack.flat.detach().cpu().numpy()
        return [
            PhoneResult(
                adapter=stack.layout.unpack_row(rows[k], jobs[k].adapter),
                steps=cfgs[k].steps,
                examples_seen=int(seen[k]),
                first_loss=float(losses[k, 0]),
                last_loss=float(losses[k, cfgs[k].steps - 1]),
            )
            for k in range(len(jobs))
        ]

    def _frozen_mask(self, layout: StackLayout, freeze_a: Sequence[bool]) -> torch.Tensor | None:
        """``(K, N)`` bool: True at the A factors of phones that freeze A (None if none do)."""
        if not any(freeze_a):
            return None
        a_cols = torch.from_numpy(layout.a_mask()).to(self.device)
        rows = torch.tensor(list(freeze_a), dtype=torch.bool, device=self.device)
        return rows[:, None] & a_cols[None, :]

    def _forward_backward(
        self, stack: PhoneStack, datas: list[TokenizedTexts], batches: dict[int, list[int]]
    ) -> np.ndarray:
        """Accumulate ``∂(Σ_k loss_k)`` for one optimizer step of the phones in ``batches``.

        ``loss_k`` is phone k's token-weighted mean over its whole batch (the sum of its
        token losses over all passes, over its batch's token count). Returns ``loss_k`` per
        phone (0 for phones not in ``batches``).
        """
        n_tokens = np.ones(len(datas))
        for k, rows in batches.items():
            n_tokens[k] = max(predicted_tokens(datas[k], rows), 1)
        denom = torch.from_numpy(n_tokens).to(self.device, torch.float32)
        step_loss = torch.zeros(len(datas), device=self.device)
        for refs in plan_passes(datas, batches, self.tokens_per_pass):
            batch = stack_rows(datas, refs).to(self.device)
            stack.bind(batch.row_phone)
            sums = phone_loss_sums(self.model, batch, trim_head=self.trim_head)
            phone_losses = sums / denom  # as train_lora: sum / tokens, per phone
            phone_losses.sum().backward()
            step_loss += phone_losses.detach()
        return step_loss.cpu().numpy().astype(np.float64)

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        adapters: Sequence[LoraAdapter],
        heldouts: Sequence[TokenizedTexts],
    ) -> list[float]:
        """Each adapter's token-weighted mean next-token loss on its own held-out rows.

        Equals :func:`fedlora.client.text_batches.evaluate_loss` of the adapter on PEFT, for
        ``chunk_size`` adapters at a time, their rows length-bucketed into passes of
        ``tokens_per_pass`` tokens.
        """
        if len(adapters) != len(heldouts):
            raise ValueError("need one held-out set per adapter")
        self._check_all(adapters)
        out: dict[int, float] = {}
        for chunk in _chunks(adapters, self.chunk_size):
            ads = [adapters[i] for i in chunk]
            datas = [heldouts[i] for i in chunk]
            out.update(zip(chunk, self._evaluate_chunk(ads, datas), strict=True))
        return [out[i] for i in range(len(adapters))]

    def _evaluate_chunk(
        self, adapters: list[LoraAdapter], datas: list[TokenizedTexts]
    ) -> list[float]:
        stack = PhoneStack.of(self._layout(adapters), adapters, self.device)
        totals = torch.zeros(len(adapters), dtype=torch.float64, device=self.device)
        rows = {k: range(len(d)) for k, d in enumerate(datas)}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), batched_lora_hooks(self.model, stack.layout.paths, stack.state):
                for refs in plan_passes(datas, rows, self.tokens_per_pass):
                    batch = stack_rows(datas, refs).to(self.device)
                    stack.bind(batch.row_phone)
                    totals += phone_loss_sums(self.model, batch, trim_head=self.trim_head)
        finally:
            stack.state.factors = {}
            self.model.train(was_training)
        counts = [max(predicted_tokens(d, range(len(d))), 1) for d in datas]
        return [float(t / c) for t, c in zip(totals.tolist(), counts, strict=True)]


@dataclass
class PhoneStack:
    """A chunk's stacked factors ``flat (K, N)``, scaled rank masks ``scales (M, K, r_max)``
    and the hook state that points at (a subset of) them for the next forward pass."""

    layout: StackLayout
    flat: torch.Tensor
    scales: torch.Tensor
    state: ActiveFactors

    @classmethod
    def of(
        cls, layout: StackLayout, adapters: Sequence[LoraAdapter], device: torch.device
    ) -> PhoneStack:
        flat, scales = stack_adapters(layout, adapters, device)
        return cls(layout, flat, scales, ActiveFactors())

    def bind(self, row_phone: torch.Tensor) -> None:
        """Point the hooks at each row's phone's factors for the next forward pass.

        One gather for all modules (BGMV's "gather"), then per-module views of it.
        """
        rows = self.flat.index_select(0, row_phone)
        scales = self.scales.index_select(1, row_phone)
        views = self.layout.factor_views(rows)
        self.state.factors = {
            path: (a, b, scales[i]) for i, (path, (a, b)) in enumerate(views.items())
        }
