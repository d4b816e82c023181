"""The phone's local LoRA trainer.

One optimizer step consumes ``batch_size`` examples, processed as micro-batches with gradient
accumulation (the memory lever: live activations scale with the micro-batch). The loss of a
step is the token-weighted mean over the whole batch, so accumulation does not change the
result, only the memory. Around that core the loop handles what a phone needs:

* **gradient checkpointing** (recompute activations in the backward pass; less memory, more
  time) switched on for the run and off again afterwards, since the base is shared;
* **cooling**: pause ``cooling_seconds`` every ``cooling_every`` steps so a phone that trains
  on its charger does not heat up (thermal throttling would slow it anyway);
* **a deadline**: a step that would not finish before ``deadline_s`` (judged from the
  steps so far) is not started; the result says ``deadline`` and how many steps were done —
  the delta of those steps still counts;
* **resumability**: every ``checkpoint_every`` steps the full state goes to disk atomically
  (:mod:`fedlora.client.train_state`); a restarted process with the same ``run_key``
  continues from there and ends with the same adapter as an uninterrupted run;
* **two update rules**: AdamW on the LoRA tensors (``backprop``) or MeZO's forward-only
  SPSA (``mezo``, :mod:`fedlora.client.mezo`) when even rank-1 backprop does not fit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Protocol

import torch

from fedlora.client.mezo import MezoStepper
from fedlora.client.model_loading import assert_only_lora_trainable
from fedlora.client.text_batches import (
    TokenizedTexts,
    batch_schedule,
    collate,
    predicted_tokens,
    summed_token_loss,
    to_device,
)
from fedlora.client.train_config import TrainConfig as TrainConfig
from fedlora.client.train_config import TrainResult as TrainResult
from fedlora.client.train_config import TrainStatus as TrainStatus
from fedlora.client.train_state import TrainState, load_state, save_state

Batch = dict[str, torch.Tensor]


def steps_for_epochs(num_examples: int, batch_size: int, epochs: float) -> int:
    """Optimizer steps that make ``epochs`` passes over ``num_examples``."""
    return max(1, math.ceil(epochs * num_examples / max(1, min(batch_size, num_examples))))


def micro_batches(indices: list[int], micro: int | None) -> list[list[int]]:
    size = micro or len(indices)
    return [indices[i : i + size] for i in range(0, len(indices), size)]


class Stepper(Protocol):
    """One update rule: consumes a step's micro-batches, returns the step's loss."""

    def step(self, parts: Sequence[Batch], n_tokens: int, step_index: int) -> float: ...

    def state_dict(self) -> dict[str, Any] | None: ...

    def load_state_dict(self, state: dict[str, Any] | None) -> None: ...


class AdamWStepper:
    """Backprop with gradient accumulation, global-norm clipping and AdamW."""

    def __init__(
        self,
        model: torch.nn.Module,
        params: list[torch.nn.Parameter],
        cfg: TrainConfig,
    ) -> None:
        self.model = model
        self.params = params
        self.max_grad_norm = cfg.max_grad_norm
        self.opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def step(self, parts: Sequence[Batch], n_tokens: int, step_index: int) -> float:
        total = 0.0
        for batch in parts:
            loss = summed_token_loss(self.model, batch) / max(n_tokens, 1)
            loss.backward()
            total += float(loss.detach())
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return total

    def state_dict(self) -> dict[str, Any] | None:
        state: dict[str, Any] = self.opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.opt.load_state_dict(state)


def _hf_model(model: torch.nn.Module) -> Any:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@contextmanager
def gradient_checkpointing(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Checkpoint each decoder layer during the block, then switch it off again.

    Non-reentrant checkpointing works with frozen inputs and LoRA parameters inside the
    layer, so the embedding-output ``requires_grad`` hook transformers installs for the
    reentrant variant is removed again (it would only add backward work).
    """
    hf = _hf_model(model)
    if not enabled or not getattr(hf, "supports_gradient_checkpointing", False):
        yield
        return
    kwargs = {"use_reentrant": False}
    if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.x
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        disable = hf.activation_checkpointing_disable
    else:  # pragma: no cover - older transformers
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        disable = hf.gradient_checkpointing_disable
    if hasattr(hf, "disable_input_require_grads"):
        with suppress(AttributeError):
            hf.disable_input_require_grads()
    try:
        yield
    finally:
        disable()


def trainable_lora(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    names = set(assert_only_lora_trainable(model))
    return [(n, p) for n, p in model.named_parameters() if n in names]


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(p.device for p in model.parameters())


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    acc = None
    if device.type == "cuda":
        acc = torch.cuda.get_rng_state(device)
    return torch.get_rng_state(), acc


def _restore(
    params: list[tuple[str, torch.nn.Parameter]], stepper: Stepper, state: TrainState
) -> None:
    with torch.no_grad():
        for name, p in params:
            p.copy_(state.lora[name].to(p.device, p.dtype))
    stepper.load_state_dict(state.optimizer)
    torch.set_rng_state(state.rng)
    if state.accelerator_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state.accelerator_rng)


def train_lora(
    model: torch.nn.Module,
    data: TokenizedTexts,
    cfg: TrainConfig,
    on_step: Callable[[int, float], None] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> TrainResult:
    """Run up to ``cfg.steps`` optimizer steps on the model's LoRA tensors."""
    params = trainable_lora(model)
    plist = [p for _, p in params]
    stepper: Stepper
    if cfg.method == "mezo":
        stepper = MezoStepper(
            model, plist, cfg.learning_rate, cfg.mezo_eps, cfg.weight_decay, cfg.seed
        )
    else:
        stepper = AdamWStepper(model, plist, cfg)
    device = _device_of(model)
    schedule = batch_schedule(len(data), cfg.batch_size, cfg.steps, cfg.seed)
    losses: list[float] = []
    seen = 0
    start = 0
    ckpt = cfg.checkpoint_path if cfg.checkpoint_every > 0 else None
    if ckpt is not None:
        saved = load_state(ckpt, cfg.run_key)
        if saved is not None:
            _restore(params, stepper, saved)
            start, losses, seen = saved.step, list(saved.losses), saved.examples_seen
    started = clock()
    status: TrainStatus = "completed"
    step_times: list[float] = []
    model.train()
    try:
        with gradient_checkpointing(model, cfg.gradient_checkpointing and cfg.method != "mezo"):
            for step in range(start, cfg.steps):
                if cfg.deadline_s is not None:
                    expected = max(step_times[-3:]) if step_times else 0.0
                    if clock() - started + expected > cfg.deadline_s:
                        status = "deadline"
                        break
                t0 = clock()
                indices = schedule[step]
                parts = [
                    to_device(collate(data, mb), device)
                    for mb in micro_batches(indices, cfg.micro_batch_size)
                ]
                n_tokens = sum(predicted_tokens(b) for b in parts)
                loss = stepper.step(parts, n_tokens, step)
                losses.append(loss)
                seen += len(indices)
                done = step + 1
                if ckpt is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                    rng, acc_rng = _rng_state(device)
                    save_state(
                        ckpt,
                        TrainState(
                            run_key=cfg.run_key,
                            step=done,
                            lora={n: p.detach() for n, p in params},
                            optimizer=stepper.state_dict(),
                            rng=rng,
                            losses=losses,
                            examples_seen=seen,
                            accelerator_rng=acc_rng,
                        ),
                    )
                if on_step is not None:  # after the save: "step N done" means "N is durable"
                    on_step(done, loss)
                step_times.append(clock() - t0)
                if cfg.cooling_every and done % cfg.cooling_every == 0 and done < cfg.steps:
                    sleep(cfg.cooling_seconds)
    finally:
        model.eval()
    return TrainResult(
        steps=len(losses),
        examples_seen=seen,
        first_loss=losses[0] if losses else float("nan"),
        last_loss=losses[-1] if losses else float("nan"),
        seconds=clock() - started,
        status=status,
        resumed_from=start,
        losses=tuple(losses),
    )
