"""Vectorized phones inside ``fedlora simulate``: a Ray service trains concurrent phones at once.

Flower's Ray backend runs one ClientApp call per actor at a time, so K phones can only be
trained together if their calls meet in a shared place. That place is the
:class:`VectorizedService` Ray actor (async, torch-free), created by the driver as soon as
Flower has started Ray (or by the first phone that needs it:
``.options(name=..., get_if_exists=True, num_cpus=0)``; actors created from Flower's workers
share the job's namespace). It keeps one queue of the phones whose calls wait on it
(:class:`~fedlora.simulations.vectorized_queue.Batcher`) and hands batches to its
:class:`VectorizedWorker` actors — one per CPU, single-threaded (a small model's batched pass
does not use a second thread; measured: 6 phones x 10 steps, 1.9-2.0 s on 1 thread, 2.1 s
on 2), each holding the frozen base once — whichever is free. Each phone gets its trained
adapter, steps and losses before/after back.

The phones themselves still run the deployment ClientApp and :class:`PhoneSession` —
device policy, hygiene, FedSA, memory plan, delta, clipping, noise, quantization, SecAgg+
— only attach → evaluate → train → evaluate → extract is replaced
(:class:`~fedlora.simulations.vectorized_jobs.VectorizedLocalTrainer`), and the phone
tokenizes with the service's tokenizer (:meth:`VectorizedService.describe`), so a phone's
process never imports torch; rounds the service cannot run (MeZO, wall-clock deadline,
cooling, resumable state) stay on PEFT in the phone's actor, which then loads the base.
Which one ran is the reply's ``fedlora.phone_metrics`` ``trainer`` and a
``trainer:<name>`` line of the run's trace (counted per round in ``metrics.jsonl``).

For K calls to be waiting at once the driver gives each Flower actor ``cpus / K`` CPUs
(K = ``simulation.vectorized_phones``, at most ``server.clients_per_round``): K light
actors; a batch goes to a worker when its share ⌈K / workers⌉ waits, when all K phones
have arrived, or 0.3 s after the last arrival.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from flwr.app import Context

from fedlora.adapter import LoraAdapter
from fedlora.client.app import RoundOutcome
from fedlora.client.base_facts import BaseFacts
from fedlora.config import FedloraSettings, ModelSettings
from fedlora.data.federated import ClientData
from fedlora.protocol import RoundInstructions
from fedlora.simulations.vectorized_jobs import VectorizedJob, VectorizedOutcome
from fedlora.simulations.vectorized_queue import Batcher, Runner

log = logging.getLogger(__name__)

LINGER_S = 0.3
"""Seconds the service waits after the last arrival before training a short batch."""

WORKER_ENV = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}
"""Idle OpenMP threads sleep instead of spinning: on a shared, busy machine spinning made
2-thread batches ~10x slower than 1 thread (measured)."""


@dataclass(frozen=True)
class ServiceSpec:
    """What the service needs to start (picklable; built by the driver).

    ``k``: phones whose calls can wait at once (the Flower actors); ``workers``: worker
    actors (each single-threaded when there are several); a batch's target size is
    ``⌈k / workers⌉``.
    """

    name: str
    model: ModelSettings
    device: str
    lora_dropout: float
    k: int
    workers: int = 1
    linger_s: float = LINGER_S
    chunk_size: int = 32
    tokens_per_pass: int = 1024

    @classmethod
    def for_run(cls, settings: FedloraSettings, name: str, k: int, workers: int = 1) -> ServiceSpec:
        """At most ``k`` workers (more could never all be busy)."""
        return cls(
            name=name,
            model=settings.model,
            device=settings.client.device,
            lora_dropout=settings.lora.dropout,
            k=k,
            workers=max(1, min(workers, k)),
        )

    @property
    def batch_target(self) -> int:
        return -(-self.k // self.workers)

    @property
    def worker_threads(self) -> int:
        """torch threads per worker: 1 when there are several, else every core."""
        return 1 if self.workers > 1 else os.cpu_count() or 1


class VectorizedWorker:
    """A Ray actor that holds the frozen base and runs batches (the service's workers)."""

    def __init__(self, spec: ServiceSpec) -> None:
        import torch

        from fedlora.client.session import PhoneSession
        from fedlora.simulations.vectorized_core import ServiceCore, portable_facts

        torch.set_num_threads(spec.worker_threads)
        base = PhoneSession.base_for(spec.model, spec.device)
        self.facts = portable_facts(base)
        self.core = ServiceCore(
            base.model,
            base.spec,
            chunk_size=spec.chunk_size,
            tokens_per_pass=spec.tokens_per_pass,
            lora_dropout=spec.lora_dropout,
            threads=spec.worker_threads,
        )

    def run_batch(self, jobs: list[VectorizedJob]) -> list[VectorizedOutcome]:
        return self.core.run_batch(jobs)

    def describe(self) -> BaseFacts | None:
        return self.facts


def _remote_runner(worker: Any) -> Runner[VectorizedJob, VectorizedOutcome]:
    """A batch runner that calls a :class:`VectorizedWorker` actor."""

    async def run(jobs: list[VectorizedJob]) -> list[VectorizedOutcome]:
        out: list[VectorizedOutcome] = await worker.run_batch.remote(jobs)
        return out

    return run


class VectorizedService:
    """The Ray actor phones call (async: many phones' ``train`` calls wait in it at once;
    torch-free: it only queues, dispatches and forwards)."""

    def __init__(self, spec: ServiceSpec) -> None:
        import ray

        worker = ray.remote(VectorizedWorker).options(num_cpus=0, runtime_env=WORKER_ENV)
        self.workers = [worker.remote(spec) for _ in range(spec.workers)]
        self.batcher: Batcher[VectorizedJob, VectorizedOutcome] = Batcher(
            [_remote_runner(w) for w in self.workers],
            batch_target=spec.batch_target,
            linger_s=spec.linger_s,
            expected=spec.k,
        )
        self._facts: Any = None

    async def train(self, job: VectorizedJob) -> VectorizedOutcome:
        return await self.batcher.submit(job)

    async def describe(self) -> BaseFacts | None:
        """The base's tokenizer and identity for the phones (see ``portable_facts``)."""
        if self._facts is None:
            self._facts = self.workers[0].describe.remote()
        facts: BaseFacts | None = await self._facts
        return facts

    async def stats(self) -> dict[str, Any]:
        s = self.batcher.stats
        return {"batches": len(s.sizes), "sizes": list(s.sizes), "seconds": list(s.seconds)}


_HANDLES: dict[str, Any] = {}
_HANDLES_LOCK = threading.Lock()


def service_handle(spec: ServiceSpec) -> Any:
    """The service actor, created by whichever process asks first (driver or phone)."""
    import ray

    with _HANDLES_LOCK:
        handle = _HANDLES.get(spec.name)
        if handle is None:
            actor = ray.remote(VectorizedService)
            handle = actor.options(
                name=spec.name, get_if_exists=True, num_cpus=0, max_concurrency=1000
            ).remote(spec)
            _HANDLES[spec.name] = handle
    return handle


def start_when_ray_is_up(spec: ServiceSpec, stop: threading.Event) -> threading.Thread:
    """Create the service as soon as Flower has initialised Ray in this (driver) process, so
    that its workers' start (a process, torch, the base) overlaps the phones' actors starting
    instead of delaying round 1's training. Phones find it by name; without it they create it."""

    def run() -> None:
        import ray

        while not stop.is_set():
            if ray.is_initialized():
                try:
                    service_handle(spec)
                except Exception as exc:  # the phones will create it themselves
                    log.debug("could not pre-start the vectorized service: %s", exc)
                return
            stop.wait(0.2)

    thread = threading.Thread(target=run, name="vectorized-service-start", daemon=True)
    thread.start()
    return thread


_FACTS: dict[str, BaseFacts | None] = {}
"""Explicit cache: each service's answer to ``describe``, asked once per phone process."""


def describe_service(spec: ServiceSpec) -> BaseFacts | None:
    """The service's base facts (one Ray call per process and run, then cached)."""
    import ray

    with _HANDLES_LOCK:
        if spec.name in _FACTS:
            return _FACTS[spec.name]
    facts: BaseFacts | None = ray.get(service_handle(spec).describe.remote())
    with _HANDLES_LOCK:
        _FACTS[spec.name] = facts
    return facts


@dataclass(frozen=True)
class _ServiceDescribe:
    """``describe`` of :class:`VectorizedLocalTrainer` for a Ray service (picklable): the
    service's base facts when the phone's settings name the service's base and device."""

    spec: ServiceSpec

    def __call__(self, model: ModelSettings, device: str) -> BaseFacts | None:
        if model != self.spec.model or device != self.spec.device:
            return None
        return describe_service(self.spec)


@dataclass(frozen=True)
class _ServiceSubmit:
    """``submit`` of :class:`VectorizedLocalTrainer` for a Ray service (picklable)."""

    spec: ServiceSpec

    def __call__(self, job: VectorizedJob) -> VectorizedOutcome:
        import ray

        out: VectorizedOutcome = ray.get(service_handle(self.spec).train.remote(job))
        return out


@dataclass(frozen=True)
class SimulatedRoundTrainer:
    """The simulation's ClientApp trainer (``make_client_app(trainer=...)``): the deployment
    round (:func:`fedlora.client.round_training.session_round`), with the vectorized service
    as local trainer when ``spec`` is given (plain PEFT when None); publishes ``trainer`` (and
    a fallback reason) with the reply and appends ``round,partition,trainer:<name>,0`` to the
    trace."""

    spec: ServiceSpec | None = None
    trace_path: str | None = None

    def __call__(
        self,
        instr: RoundInstructions,
        community: LoraAdapter,
        data: ClientData,
        settings: FedloraSettings,
        context: Context,
    ) -> RoundOutcome:
        from fedlora.client.round_training import session_round
        from fedlora.client.session import PhoneOptions
        from fedlora.simulations.vectorized_jobs import VectorizedLocalTrainer

        pid = int(context.node_config.get("partition-id", -1))
        options = None
        if self.spec is not None:
            submit = _ServiceSubmit(self.spec)
            describe = _ServiceDescribe(self.spec)
            trainer = VectorizedLocalTrainer(submit, self.spec.lora_dropout, describe=describe)
            options = PhoneOptions(trainer=trainer)
        outcome = session_round(instr, community, data, settings, context, options)
        name = str(outcome.metrics.get("trainer", ""))
        published: dict[str, int | float | str] = {}
        if name:
            published["trainer"] = name
            append_trace(self.trace_path, instr.round, pid, f"trainer:{name}")
        if "trainer_fallback" in outcome.metrics:
            published["trainer_fallback"] = str(outcome.metrics["trainer_fallback"])
        return RoundOutcome(delta=outcome.delta, report=outcome.report, metrics=published)


def append_trace(path: str | None, rnd: int, pid: int, event: str, value: float = 0.0) -> None:
    """One line of the run's trace (O_APPEND: concurrent workers' lines stay whole)."""
    if path is None:
        return
    line = f"{rnd},{pid},{event},{value:.3f}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
