"""The phone's local LoRA trainer: AdamW on LoRA tensors over the phone's private examples.

One optimizer step consumes ``batch_size`` examples, processed as micro-batches with gradient
accumulation (the memory lever: live activations scale with the micro-batch). The loss of a
step is the token-weighted mean over the whole batch, so accumulation does not change the
result, only the memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedlora.client.model_loading import assert_only_lora_trainable
from fedlora.client.text_batches import IGNORE_INDEX, TokenizedTexts, batch_schedule, collate


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int = 8
    micro_batch_size: int | None = None
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    max_grad_norm: float | None = 1.0


@dataclass(frozen=True)
class TrainResult:
    steps: int
    examples_seen: int
    first_loss: float
    last_loss: float
    seconds: float


def micro_batches(indices: list[int], micro: int | None) -> list[list[int]]:
    size = micro or len(indices)
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def train_lora(
    model: torch.nn.Module,
    data: TokenizedTexts,
    cfg: TrainConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Run ``cfg.steps`` optimizer steps on the model's LoRA tensors."""
    names = assert_only_lora_trainable(model)
    params = [p for n, p in model.named_parameters() if n in set(names)]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = batch_schedule(len(data), cfg.batch_size, cfg.steps, cfg.seed)
    model.train()
    started = time.perf_counter()
    first = last = float("nan")
    seen = 0
    for step, indices in enumerate(schedule):
        parts = [collate(data, mb) for mb in micro_batches(indices, cfg.micro_batch_size)]
        n_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in parts)
        total = 0.0
        for batch in parts:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits = out.logits[:, :-1].float()
            labels = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            ) / max(n_tokens, 1)
            loss.backward()
            total += loss.item()
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen += len(indices)
        if step == 0:
            first = total
        last = total
        if on_step is not None:
            on_step(step + 1, total)
    model.eval()
    return TrainResult(
        steps=cfg.steps,
        examples_seen=seen,
        first_loss=first,
        last_loss=last,
        seconds=time.perf_counter() - started,
    )
