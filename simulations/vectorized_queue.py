"""One queue of waiting phones, batches to as many trainers as there are cores — no torch.

In ``fedlora simulate`` every simulated phone's round runs in its own Flower ClientApp call
(one Ray actor each, one call at a time); to train K phones in one batched pass their calls
must meet somewhere. :class:`Batcher` is that place: callers ``await submit(job)``, and a
dispatcher hands batches of the waiting jobs to whichever *runner* is free (one per worker
process, each holding the frozen base; :mod:`fedlora.simulations.vectorized_service`). One
queue for all runners keeps the batches even: with a queue per runner, phones split by
partition id gave batches of 1–5 where 4 were due, and a runner with fewer phones waited
for stragglers while the other had more than it could batch.

When a runner is free, a batch goes out as soon as

* ``batch_target`` jobs wait (the K phones' share of one runner), or
* every phone that can be in flight has arrived (``expected`` = K, the number of Flower
  actors whose calls can wait here at once: pending + running = K means nobody else can
  come), or
* ``linger_s`` has passed since the last arrival (fewer phones came: some refused, vanished,
  missed their deadline, or the round is ending),

and then takes ``batch_target`` jobs, or, when the wait is over for another reason, an even
share of what waits over the free runners. Every caller gets its own result (or the batch's
exception); a caller that gave up is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")

Runner = Callable[[list[J]], Awaitable[Sequence[R]]]
"""Runs one batch (results in job order): a worker actor's method, or a thread."""


@dataclass
class _Pending(Generic[J, R]):
    job: J
    future: asyncio.Future[R]


@dataclass
class BatchStats:
    """Sizes and wall seconds of the batches run so far."""

    sizes: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def threaded_runner(fn: Callable[[list[J]], Sequence[R]], executor: Executor) -> Runner[J, R]:
    """A runner that calls a blocking ``fn`` on ``executor`` (in-process services, tests)."""

    async def run(jobs: list[J]) -> Sequence[R]:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, jobs)

    return run


class Batcher(Generic[J, R]):
    """Collects concurrently submitted jobs into batches for free runners (module doc)."""

    def __init__(
        self,
        runners: Sequence[Runner[J, R]],
        *,
        batch_target: int,
        linger_s: float,
        expected: int | None = None,
    ) -> None:
        if not runners:
            raise ValueError("need at least one runner")
        if batch_target < 1:
            raise ValueError(f"batch_target must be >= 1, got {batch_target}")
        if linger_s < 0:
            raise ValueError(f"linger_s must be >= 0, got {linger_s}")
        if expected is not None and expected < 1:
            raise ValueError(f"expected must be >= 1, got {expected}")
        self.batch_target = batch_target
        self.linger_s = linger_s
        self.expected = expected
        self.stats = BatchStats()
        self._free: list[Runner[J, R]] = list(runners)
        self._pending: list[_Pending[J, R]] = []
        self._running = 0
        self._last_arrival = 0.0
        self._wake: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, job: J) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append(_Pending(job, future))
        self._last_arrival = loop.time()
        self._poke()
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = loop.create_task(self._dispatch())
        return await future

    def _poke(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()

    async def _sleep(self, timeout: float | None) -> None:
        """Until an arrival or a finished batch (or ``timeout`` seconds)."""
        assert self._wake is not None
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _all_arrived(self) -> bool:
        return self.expected is not None and len(self._pending) + self._running >= self.expected

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            if not self._free:
                await self._sleep(None)
                continue
            waiting = len(self._pending)
            if waiting >= self.batch_target:
                n = self.batch_target
            else:
                delay = self._last_arrival + self.linger_s - loop.time()
                if delay > 0 and not self._all_arrived():
                    await self._sleep(delay)
                    continue
                n = math.ceil(waiting / len(self._free))
            batch, self._pending = self._pending[:n], self._pending[n:]
            batch = [p for p in batch if not p.future.done()]  # a caller that gave up
            if not batch:
                continue
            runner = self._free.pop()
            self._running += len(batch)
            task = loop.create_task(self._run(runner, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, runner: Runner[J, R], batch: list[_Pending[J, R]]) -> None:
        t0 = time.perf_counter()
        try:
            results = await runner([p.job for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
        except Exception as exc:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        else:
            self.stats.sizes.append(len(batch))
            self.stats.seconds.append(time.perf_counter() - t0)
            for p, r in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(r)
        finally:
            self._running -= len(batch)
            self._free.append(runner)
            self._poke()
