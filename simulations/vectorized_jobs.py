"""What a simulated phone sends to the vectorized service and gets back — without torch.

The phone side of the vectorized-phones service: :class:`VectorizedJob` (a phone's round as
plain, picklable data), :class:`VectorizedOutcome` (the service's answer) and
:class:`VectorizedLocalTrainer`, the :class:`~fedlora.client.session.LocalTrainer` that
:class:`~fedlora.client.session.PhoneSession` calls instead of PEFT. It ships the job to
``submit`` (the Ray service, or a core in-process in tests), says which rounds it cannot run
(MeZO, a wall-clock deadline, cooling pauses, resumable checkpoints, another LoRA dropout:
those stay on plain PEFT) and, given ``describe``, hands the session the service's tokenizer
and base identity (:class:`~fedlora.client.base_facts.BaseFacts`), so that a phone's process
imports none of torch, transformers or peft. The service's side, which does need torch, is
:mod:`fedlora.simulations.vectorized_core`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from fedlora.adapter import LoraAdapter
from fedlora.client.base_facts import BaseFacts
from fedlora.client.session import LocalTrainingJob, LocalTrainingResult
from fedlora.client.tokens import TokenizedTexts
from fedlora.client.train_config import TrainConfig, TrainResult
from fedlora.config import ModelSettings


@dataclass(frozen=True)
class VectorizedJob:
    """One phone's round as it travels to the service (picklable: numpy and tuples)."""

    adapter: LoraAdapter
    train: TokenizedTexts
    eval: TokenizedTexts
    config: TrainConfig
    freeze_a: bool = False


@dataclass(frozen=True)
class VectorizedOutcome:
    """The service's answer for one phone: the trained adapter (at the start's ranks, start's
    metadata), training numbers, evaluation loss before/after, and the batch it was in."""

    adapter: LoraAdapter
    steps: int
    examples_seen: int
    first_loss: float
    last_loss: float
    loss_before: float
    loss_after: float
    batch_phones: int
    batch_seconds: float


@dataclass(frozen=True)
class VectorizedLocalTrainer:
    """The phone side: a :class:`~fedlora.client.session.LocalTrainer` that ships the round to
    ``submit`` (blocking until its batch is done); with ``describe`` (the service's tokenizer
    and base identity) the phone's process loads neither the base nor torch."""

    submit: Callable[[VectorizedJob], VectorizedOutcome]
    lora_dropout: float = 0.0
    name: str = "vectorized"
    describe: Callable[[ModelSettings, str], BaseFacts | None] | None = None

    def base_facts(self, model: ModelSettings, device: str) -> BaseFacts | None:
        """The service's base (``describe``), so the phone need not load its own; None
        without ``describe`` (the phone then loads the base, as on PEFT)."""
        return self.describe(model, device) if self.describe is not None else None

    def unsupported(self, job: LocalTrainingJob) -> str | None:
        cfg = job.config
        if cfg.method != "backprop":
            return f"{cfg.method} plan"
        if cfg.deadline_s is not None:
            return "wall-clock round deadline"
        if cfg.cooling_every:
            return "cooling pauses"
        if cfg.checkpoint_every:
            return "resumable training state"
        if job.lora_dropout != self.lora_dropout:
            return f"lora dropout {job.lora_dropout} != service's {self.lora_dropout}"
        return None

    def run(self, job: LocalTrainingJob) -> LocalTrainingResult:
        t0 = time.perf_counter()
        out = self.submit(VectorizedJob(job.start, job.train, job.eval, job.config, job.freeze_a))
        result = TrainResult(
            steps=out.steps,
            examples_seen=out.examples_seen,
            first_loss=out.first_loss,
            last_loss=out.last_loss,
            seconds=out.batch_seconds,
        )
        return LocalTrainingResult(
            adapter=out.adapter,
            result=result,
            loss_before=out.loss_before,
            loss_after=out.loss_after,
            metrics={
                "vectorized_batch": out.batch_phones,
                "vectorized_wait_s": max(0.0, time.perf_counter() - t0 - out.batch_seconds),
            },
        )
