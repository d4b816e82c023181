"""The batching core of the vectorized-phones service, without Ray.

In ``fedlora simulate`` every simulated phone's round runs in its own Flower ClientApp call
(one Ray actor each, one call at a time). To train K phones in one batched pass
(:class:`~fedlora.simulations.vectorized.VectorizedLoraTrainer`) their calls must meet
somewhere: the vectorized service (:mod:`fedlora.simulations.vectorized_service`, a Ray
actor) holds the base once and this module's pieces:

* :class:`Batcher` — an asyncio collector: callers ``await submit(job)``; a batch runs when
  ``k_target`` jobs are pending, or ``linger_s`` after the last arrival (fewer phones came
  this round: some refused, vanished or missed their deadline), on one worker thread so the
  event loop keeps collecting the next batch meanwhile. Every caller gets its own result (or
  the batch's exception).
* :class:`ServiceCore` — what a batch does: each phone's loss on its evaluation rows before
  training, the batched training, the loss after — the same numbers a phone's
  attach → evaluate → train → evaluate → extract gives on PEFT (to float tolerance).
* :class:`VectorizedLocalTrainer` — the phone side: a
  :class:`~fedlora.client.session.LocalTrainer` for :class:`~fedlora.client.session.PhoneSession`
  that ships a round's job to ``submit`` (the Ray service, or a core in-process in tests)
  and says which rounds it cannot run (MeZO, a wall-clock deadline, cooling pauses,
  resumable checkpoints, another LoRA dropout): those stay on plain PEFT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from fedlora.adapter import BaseModelSpec, LoraAdapter
from fedlora.client.session import LocalTrainingJob, LocalTrainingResult
from fedlora.client.text_batches import TokenizedTexts
from fedlora.client.trainer import TrainConfig, TrainResult
from fedlora.simulations.vectorized import PhoneJob, VectorizedLoraTrainer

J = TypeVar("J")
R = TypeVar("R")


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


@dataclass
class _Pending(Generic[J, R]):
    job: J
    future: asyncio.Future[R]


@dataclass
class BatchStats:
    """Sizes and wall seconds of the batches run so far."""

    sizes: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


class Batcher(Generic[J, R]):
    """Collects concurrently submitted jobs into batches for ``run_batch`` (see module doc).

    ``run_batch(jobs) -> results`` (same order) runs on one worker thread; all pending jobs
    go into the batch (the trainer chunks them by its own ``chunk_size``).
    """

    def __init__(
        self,
        run_batch: Callable[[list[J]], Sequence[R]],
        *,
        k_target: int,
        linger_s: float,
    ) -> None:
        if k_target < 1:
            raise ValueError(f"k_target must be >= 1, got {k_target}")
        if linger_s < 0:
            raise ValueError(f"linger_s must be >= 0, got {linger_s}")
        self.run_batch = run_batch
        self.k_target = k_target
        self.linger_s = linger_s
        self.stats = BatchStats()
        self._pending: list[_Pending[J, R]] = []
        self._last_arrival = 0.0
        self._wake: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vectorized")

    async def submit(self, job: J) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append(_Pending(job, future))
        self._last_arrival = loop.time()
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while self._pending:
            while len(self._pending) < self.k_target:
                delay = self._last_arrival + self.linger_s - loop.time()
                if delay <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            batch, self._pending = self._pending, []
            batch = [p for p in batch if not p.future.done()]  # a caller that gave up
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._executor, self.run_batch, [p.job for p in batch]
                )
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
            except Exception as exc:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self.stats.sizes.append(len(batch))
            self.stats.seconds.append(time.perf_counter() - t0)
            for p, r in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(r)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class ServiceCore:
    """One frozen base + a :class:`VectorizedLoraTrainer`; :meth:`run_batch` is a batch.

    ``threads``: torch intra-op threads for the batch (set on the calling thread, which is the
    batcher's worker; default: every core of the machine).
    """

    def __init__(
        self,
        base_model: torch.nn.Module,
        spec: BaseModelSpec,
        *,
        chunk_size: int = 32,
        tokens_per_pass: int = 1024,
        lora_dropout: float = 0.0,
        threads: int | None = None,
    ) -> None:
        self.trainer = VectorizedLoraTrainer(
            base_model,
            chunk_size=chunk_size,
            tokens_per_pass=tokens_per_pass,
            spec=spec,
            lora_dropout=lora_dropout,
        )
        self.threads = threads or os.cpu_count() or 1

    def run_batch(self, jobs: list[VectorizedJob]) -> list[VectorizedOutcome]:
        torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        starts = [j.adapter for j in jobs]
        evals = [j.eval for j in jobs]
        before = self.trainer.evaluate(starts, evals)
        results = self.trainer.train(
            [PhoneJob(j.adapter, j.train, j.config, freeze_a=j.freeze_a) for j in jobs]
        )
        after = self.trainer.evaluate([r.adapter for r in results], evals)
        seconds = time.perf_counter() - t0
        return [
            VectorizedOutcome(
                adapter=r.adapter,
                steps=r.steps,
                examples_seen=r.examples_seen,
                first_loss=r.first_loss,
                last_loss=r.last_loss,
                loss_before=b,
                loss_after=a,
                batch_phones=len(jobs),
                batch_seconds=seconds,
            )
            for r, b, a in zip(results, before, after, strict=True)
        ]


@dataclass(frozen=True)
class VectorizedLocalTrainer:
    """The phone side: a :class:`~fedlora.client.session.LocalTrainer` that ships the round to
    ``submit`` (blocking until its batch is done)."""

    submit: Callable[[VectorizedJob], VectorizedOutcome]
    lora_dropout: float = 0.0
    name: str = "vectorized"

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
