"""Vectorized phones inside ``fedlora simulate``: one Ray actor trains concurrent phones at once.

Flower's Ray backend runs one ClientApp call per actor at a time, so K phones can only be
trained together if their calls meet in a shared place. That place is the
:class:`VectorizedService` Ray actor: created lazily by the first phone that needs it
(``.options(name=..., get_if_exists=True, num_cpus=0)`` — Flower initialised Ray in the
driver, and actors created from its workers share the job's namespace), it loads the frozen
base **once**, and batches the train jobs of the phones whose calls are waiting on it
(:class:`~fedlora.simulations.vectorized_batcher.Batcher`: ``k_target`` pending, or a short
linger after the last arrival), trains them in one batched pass, and answers each phone
with its trained adapter, steps and losses before/after. With several CPUs the driver starts
one single-threaded replica per CPU (``<name>-0``, ``<name>-1``, …) and a phone goes to the
replica of its partition id: a small model's batched pass does not use a second thread, so
one service alone would leave cores idle that plain PEFT phones keep busy.

The phones themselves still run the deployment ClientApp and :class:`PhoneSession` —
device policy, hygiene, FedSA, memory plan, delta, clipping, noise, quantization, SecAgg+
— only attach → evaluate → train → evaluate → extract is replaced
(:class:`~fedlora.simulations.vectorized_jobs.VectorizedLocalTrainer`); rounds the
service cannot run (MeZO, wall-clock deadline, cooling, resumable state) stay on PEFT in the
phone's actor. Which one ran is the reply's ``fedlora.phone_metrics`` ``trainer`` and a
``trainer:<name>`` line of the run's trace (counted per round in ``metrics.jsonl``).

For K calls to be waiting at once the driver gives each Flower actor ``cpus / K`` CPUs
(K = ``simulation.vectorized_phones``, at most ``server.clients_per_round``): K actors,
which do no heavy compute; ``k_target`` of each of the R replicas is ⌈K / R⌉.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flwr.app import Context

from fedlora.adapter import LoraAdapter
from fedlora.client.app import RoundOutcome
from fedlora.client.base_facts import BaseFacts
from fedlora.config import FedloraSettings, ModelSettings
from fedlora.data.federated import ClientData
from fedlora.protocol import RoundInstructions
from fedlora.simulations.vectorized_jobs import VectorizedJob, VectorizedOutcome

if TYPE_CHECKING:  # torch only in the service's process, never in a phone's
    from fedlora.simulations.vectorized_batcher import Batcher

log = logging.getLogger(__name__)

LINGER_S = 0.3
"""Seconds the service waits after the last arrival before training fewer than k_target."""


@dataclass(frozen=True)
class ServiceSpec:
    """What the service needs to start (picklable; built by the driver)."""

    name: str
    model: ModelSettings
    device: str
    lora_dropout: float
    k_target: int
    linger_s: float = LINGER_S
    threads: int | None = None
    chunk_size: int = 32
    tokens_per_pass: int = 1024
    replicas: int = 1

    @classmethod
    def for_run(
        cls, settings: FedloraSettings, name: str, k_target: int, replicas: int = 1
    ) -> ServiceSpec:
        """``replicas`` services, each single-threaded when there are several: the batched
        pass of a small model does not scale to a second thread (measured: 6 phones x 10
        steps, 1.9-2.0 s on 1 thread, 2.1 s on 2), so one service per core keeps every core
        busy; each replica waits for its share of the K phones."""
        replicas = max(1, min(replicas, k_target))
        return cls(
            name=name,
            model=settings.model,
            device=settings.client.device,
            lora_dropout=settings.lora.dropout,
            k_target=-(-k_target // replicas),
            threads=1 if replicas > 1 else None,
            replicas=replicas,
        )

    def replica_names(self) -> list[str]:
        """Ray actor names of the replicas (one name when there is one replica)."""
        if self.replicas == 1:
            return [self.name]
        return [f"{self.name}-{i}" for i in range(self.replicas)]

    def replica_for(self, partition_id: int) -> str:
        """The replica a phone's round goes to: by partition id, so the phones sampled in a
        round spread over the replicas (and a phone always uses the same one)."""
        names = self.replica_names()
        return names[partition_id % len(names)]


class VectorizedService:
    """The Ray actor's class (async: many phones' ``train`` calls wait in it at once)."""

    def __init__(self, spec: ServiceSpec) -> None:
        from fedlora.client.session import PhoneSession
        from fedlora.simulations.vectorized_batcher import Batcher, ServiceCore, portable_facts

        threads = spec.threads or os.cpu_count() or 1
        import torch

        torch.set_num_threads(threads)
        base = PhoneSession.base_for(spec.model, spec.device)
        self.facts = portable_facts(base)
        self.core = ServiceCore(
            base.model,
            base.spec,
            chunk_size=spec.chunk_size,
            tokens_per_pass=spec.tokens_per_pass,
            lora_dropout=spec.lora_dropout,
            threads=threads,
        )
        self.batcher: Batcher[VectorizedJob, VectorizedOutcome] = Batcher(
            self.core.run_batch, k_target=spec.k_target, linger_s=spec.linger_s
        )

    async def train(self, job: VectorizedJob) -> VectorizedOutcome:
        return await self.batcher.submit(job)

    async def describe(self) -> BaseFacts | None:
        """The base's tokenizer and identity for the phones (see ``portable_facts``)."""
        return self.facts

    async def stats(self) -> dict[str, Any]:
        s = self.batcher.stats
        return {"batches": len(s.sizes), "sizes": list(s.sizes), "seconds": list(s.seconds)}


_HANDLES: dict[str, Any] = {}
_HANDLES_LOCK = threading.Lock()


def service_handle(spec: ServiceSpec, name: str | None = None) -> Any:
    """The service actor ``name`` (default: the first replica), created by whichever phone
    asks first."""
    import ray

    name = name or spec.replica_names()[0]
    with _HANDLES_LOCK:
        handle = _HANDLES.get(name)
        if handle is None:
            actor = ray.remote(VectorizedService)
            handle = actor.options(
                name=name,
                get_if_exists=True,
                num_cpus=0,
                max_concurrency=1000,
                # idle OpenMP threads sleep instead of spinning: on a shared, busy machine
                # spinning made 2-thread batches ~10x slower than 1 thread (measured)
                runtime_env={"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}},
            ).remote(spec)
            _HANDLES[name] = handle
    return handle


def start_when_ray_is_up(spec: ServiceSpec, stop: threading.Event) -> threading.Thread:
    """Create the service as soon as Flower has initialised Ray in this (driver) process, so
    that its start (a process, torch, the base) overlaps the phones' actors starting instead
    of delaying round 1's training. Phones find it by name; without it they create it."""

    def run() -> None:
        import ray

        while not stop.is_set():
            if ray.is_initialized():
                try:
                    for name in spec.replica_names():
                        service_handle(spec, name)
                except Exception as exc:  # the phones will create it themselves
                    log.debug("could not pre-start the vectorized service: %s", exc)
                return
            stop.wait(0.2)

    thread = threading.Thread(target=run, name="vectorized-service-start", daemon=True)
    thread.start()
    return thread


def submit_to_service(
    spec: ServiceSpec, job: VectorizedJob, partition_id: int = 0
) -> VectorizedOutcome:
    import ray

    handle = service_handle(spec, spec.replica_for(partition_id))
    out: VectorizedOutcome = ray.get(handle.train.remote(job))
    return out


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
    partition_id: int = 0

    def __call__(self, job: VectorizedJob) -> VectorizedOutcome:
        return submit_to_service(self.spec, job, self.partition_id)


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
            submit = _ServiceSubmit(self.spec, max(pid, 0))
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
