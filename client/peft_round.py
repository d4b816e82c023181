"""The phone round's work on the loaded base with PEFT: training and memory probes.

:class:`~fedlora.client.session.PhoneSession` decides *what* a round does (policy, hygiene,
plan, delta, report) without torch; this module is *how* it runs on the phone's own base —
attach the view as PEFT LoRA layers, evaluate, train, evaluate, extract, unload — and how
a memory plan is verified by measuring one worst-case micro-step. It imports torch and peft,
so the session imports it only when a round actually trains (or probes) on the local base.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from fedlora.adapter import LoraAdapter
from fedlora.client.memory_meter import MB, PeakMemoryMeter
from fedlora.client.memory_plan import ModelFootprint, TrainPlan
from fedlora.client.model_loading import LoadedBase
from fedlora.client.peft_bridge import ADAPTER_NAME, attach_adapter, extract_adapter
from fedlora.client.text_batches import (
    TokenizedTexts,
    collate,
    evaluate_loss,
    longest_rows,
    predicted_tokens,
    summed_token_loss,
    to_device,
)
from fedlora.client.trainer import TrainConfig, TrainResult, gradient_checkpointing, train_lora
from fedlora.ranks import truncate_to_rank


@dataclass(frozen=True)
class PeftRoundResult:
    """Training result, held-out loss before/after, the trained adapter, the peak memory."""

    result: TrainResult
    loss_before: float
    loss_after: float
    adapter: LoraAdapter
    peak_memory_mb: float


def footprint(base: LoadedBase, targets: Sequence[str]) -> ModelFootprint:
    """The base's memory footprint for LoRA on ``targets`` (for the memory plan)."""
    shapes = base.spec.linear_shapes
    dims = [shapes[m] for m in targets]
    act = torch.finfo(base.compute_dtype).bits // 8
    return ModelFootprint.from_model(base.model, dims, base.weight_bytes, act)


def _lora_layers(model: Any) -> dict[str, Any]:
    return {
        n.removeprefix("base_model.model."): m
        for n, m in model.named_modules()
        if hasattr(m, "lora_A") and ADAPTER_NAME in getattr(m, "lora_A", {})
    }


def freeze_a(model: Any) -> None:
    """FFA-LoRA: A stays as received (no gradient)."""
    for layer in _lora_layers(model).values():
        layer.lora_A[ADAPTER_NAME].weight.requires_grad_(False)


def train_on_peft(
    base: LoadedBase,
    start: LoraAdapter,
    tok: TokenizedTexts,
    eval_tok: TokenizedTexts,
    cfg: TrainConfig,
    *,
    rule: str,
    dropout: float,
    started: float,
) -> PeftRoundResult:
    """Plain PEFT: attach → evaluate → train → evaluate → extract (the deployment path).

    ``cfg.deadline_s`` counts from ``started`` (the round's start); time for the final
    evaluation is kept back from it.
    """
    model = attach_adapter(base.model, start, base.spec, dropout=dropout)
    try:
        if rule == "ffa":
            freeze_a(model)
        t_eval = time.perf_counter()
        loss_before = evaluate_loss(model, eval_tok)
        eval_seconds = time.perf_counter() - t_eval
        remaining = None
        if cfg.deadline_s is not None:  # keep time for the final evaluation and the delta
            used = time.perf_counter() - started
            remaining = max(0.0, cfg.deadline_s - used - 1.5 * eval_seconds)
        cfg = replace(cfg, deadline_s=remaining)
        with PeakMemoryMeter(base.device) as meter:
            result = train_lora(model, tok, cfg)
        loss_after = evaluate_loss(model, eval_tok)
        after = extract_adapter(model, base_fingerprint=base.fingerprint)
    finally:
        model.unload()
    return PeftRoundResult(result, loss_before, loss_after, after, peak_mb(base, meter))


def probe_peak_mb(
    base: LoadedBase,
    view: LoraAdapter,
    tok: TokenizedTexts,
    plan: TrainPlan,
    fp: ModelFootprint,
    *,
    rule: str,
    dropout: float,
) -> float:
    """Measured peak MB of one worst-case micro-step under ``plan`` (nothing is updated)."""
    start = view if plan.rank == view.max_rank else truncate_to_rank(view, plan.rank)
    model = attach_adapter(base.model, start, base.spec, dropout=dropout)
    try:
        if rule == "ffa":
            freeze_a(model)
        batch = to_device(collate(tok, longest_rows(tok, plan.micro_batch)), base.device)
        model.train()
        mezo = plan.method == "mezo"
        with (
            gradient_checkpointing(model, plan.checkpointing and not mezo),
            PeakMemoryMeter(base.device) as meter,
        ):
            if mezo:
                with torch.no_grad():
                    summed_token_loss(model, batch)
            else:
                loss = summed_token_loss(model, batch) / max(predicted_tokens(batch), 1)
                loss.backward()
        model.zero_grad(set_to_none=True)
        model.eval()
    finally:
        model.unload()
    moments = 0.0 if mezo else 8.0 * fp.lora_parameters(plan.rank)
    return peak_mb(base, meter, moments)


def peak_mb(base: LoadedBase, meter: PeakMemoryMeter, extra_bytes: float = 0.0) -> float:
    """Weights + measured working set (CPU) or the device allocator's peak (accelerators),
    plus ``extra_bytes`` not yet allocated when measured (a probe has no AdamW moments)."""
    if base.device.type != "cpu":
        peak = float(meter.device_peak_bytes)
    else:
        peak = float(base.weight_bytes + meter.peak_increase_bytes)
    return (peak + extra_bytes) / MB
