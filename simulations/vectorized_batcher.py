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

The phone side — the jobs and :class:`~fedlora.simulations.vectorized_jobs.VectorizedLocalTrainer`
— is :mod:`fedlora.simulations.vectorized_jobs`, which does not import torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

import torch

from fedlora.adapter import BaseModelSpec
from fedlora.client.base_facts import BaseFacts
from fedlora.client.model_loading import LoadedBase
from fedlora.client.tokens import PortableTokenizer
from fedlora.simulations.vectorized import PhoneJob, VectorizedLoraTrainer
from fedlora.simulations.vectorized_jobs import VectorizedJob, VectorizedOutcome

J = TypeVar("J")
R = TypeVar("R")


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


def portable_facts(base: LoadedBase) -> BaseFacts | None:
    """The base as phones need to know it, in a form they can use without torch: its facts
    with the tokenizer as a :class:`~fedlora.client.tokens.PortableTokenizer` (None for a
    slow tokenizer: phones then load the base themselves)."""
    tokenizer = PortableTokenizer.of(base.tokenizer)
    return None if tokenizer is None else replace(base.facts, tokenizer=tokenizer)


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
