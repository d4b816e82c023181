"""The simulation driver: a scenario → a federated run on Flower's simulation engine → a run
directory with metrics, evaluation, plots and a report.

The phones and the server are the deployment code: :func:`fedlora.client.app.make_client_app`
(local training, clipping/noise/quantization, SecAgg+) with a
:class:`~fedlora.simulations.behaviour.PopulationHook` deciding each simulated phone's rank
tier, policy, deadline and dropouts, and :func:`fedlora.server.app.make_server_app` (round
loop, secure sum, aggregation, registry). The registry lives in the run directory — SQLite
file, blob directory, signing key — so a run is self-contained and the hub can serve it.

Efficiency: Ray starts one actor per ``simulation.num_cpus_per_client`` CPUs; each actor
process loads the base model once (the phone session caches it) and builds the synthetic
federation once (deterministic, per process); only adapters and contribution vectors move
between driver and actors. With ``simulation.vectorized`` (the default) each actor gets
``cpus / K`` CPUs and the phones' local training goes to one shared Ray actor that trains
the waiting phones in one batched pass (:mod:`fedlora.simulations.vectorized_service`).
The driver keeps per-round records only — nothing per phone — and the phones' decision
trace goes to a file. ``ray_address`` connects to an existing Ray
cluster instead of starting one (``init_args={"address": ...}``).

Run directory::

    scenario.toml        the effective scenario (rerun it with --scenario <this file>)
    metrics.jsonl        one JSON object per round (see fedlora.simulations.metrics)
    summary.json         run facts, triad, ε, bytes, timings, peak memory
    report.html          self-contained report (plots embedded)
    plots/*.png          loss, ε, participation, bytes, timings, triad
    adapter/             the final community adapter as a PEFT directory
    trace.csv            the phones' decisions (round, partition, event, value)
    registry.db, blobs/, signing_key.pem    the run's registry
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedlora.config import FedloraSettings
from fedlora.errors import ConfigError
from fedlora.simulations.behaviour import PopulationHook
from fedlora.simulations.engine_threads import engine_threads
from fedlora.simulations.metrics import MetricsFile, round_record
from fedlora.simulations.population import describe, profile_for, run_rank
from fedlora.simulations.progress import Display, NullDisplay
from fedlora.simulations.resources import TreeMemorySampler
from fedlora.simulations.scenario import Scenario
from fedlora.simulations.trace import TraceReader, participation

log = logging.getLogger(__name__)

OBJECT_STORE_BYTES = 256 * 1024 * 1024
"""Ray's shared-memory object store for a local cluster: messages are adapters (≤ a few MiB),
so the default (30 % of RAM) would only take memory from the phones."""


@dataclass(frozen=True)
class RunPaths:
    """Where everything of one run goes."""

    root: Path

    @property
    def scenario(self) -> Path:
        return self.root / "scenario.toml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def trace(self) -> Path:
        return self.root / "trace.csv"

    @property
    def database(self) -> Path:
        return self.root / "registry.db"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def signing_key(self) -> Path:
        return self.root / "signing_key.pem"


@dataclass(frozen=True)
class SimulationResult:
    paths: RunPaths
    summary: dict[str, Any]
    records: list[dict[str, Any]]


def run_settings(scenario: Scenario, paths: RunPaths, ray_address: str | None) -> FedloraSettings:
    """The scenario's settings with the registry in the run directory."""
    doc = scenario.settings.model_dump(mode="json")
    doc["server"]["database_url"] = f"sqlite:///{paths.database.resolve()}"
    doc["server"]["blob_dir"] = str(paths.blobs.resolve())
    if ray_address is not None:
        doc["simulation"]["ray_address"] = ray_address
    return FedloraSettings.model_validate(doc)


def backend_config(settings: FedloraSettings) -> dict[str, Any]:
    """Flower's ``backend_config`` for the Ray backend (``init_args`` go to ``ray.init``)."""
    init: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    address = settings.simulation.ray_address
    if address:
        init["address"] = address
    else:
        init["object_store_memory"] = OBJECT_STORE_BYTES
    return {
        "client_resources": {"num_cpus": client_cpus(settings), "num_gpus": 0.0},
        "init_args": init,
    }


def client_cpus(settings: FedloraSettings) -> float:
    """CPUs per Flower actor: ``num_cpus_per_client``, or in vectorized mode this machine's
    CPUs / K (:func:`vectorized_k`) — K actors whose calls wait on the service together (the
    service itself reserves none and uses every core)."""
    sim = settings.simulation
    if not sim.vectorized:
        return sim.num_cpus_per_client
    share = (os.cpu_count() or 1) / vectorized_k(settings)
    return math.floor(share * 1e4) / 1e4  # Ray's resolution; K actors must fit exactly


def vectorized_k(settings: FedloraSettings) -> int:
    """Phones trained at once: ``vectorized_phones``, at most the phones sampled per round
    (more actors would only wait — and each is a process with torch in it)."""
    sim, server = settings.simulation, settings.server
    return max(1, min(sim.vectorized_phones, server.clients_per_round, settings.data.num_clients))


def _prepare_environment() -> None:
    """Environment the Ray workers inherit: offline model loading, quiet tokenizers, no
    Flower telemetry, and the same FEDLORA_HOME (the base model is built there once)."""
    from fedlora.home import fedlora_home

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ["FEDLORA_HOME"] = str(fedlora_home())
    # the live display is the run's voice; library chatter goes to ERROR
    for name in ("flwr", "absl", "ray", "torch", "torchao", "bitsandbytes", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _prepare_dir(out_dir: Path) -> RunPaths:
    paths = RunPaths(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError([f"--out {out_dir}: directory exists and is not empty"])
    out_dir.mkdir(parents=True, exist_ok=True)
    return paths


def run_scenario(
    scenario: Scenario,
    out_dir: Path,
    *,
    ray_address: str | None = None,
    display: Display | None = None,
) -> SimulationResult:
    """Simulate ``scenario`` into ``out_dir`` (which must be new or empty)."""
    from flwr.simulation import run_simulation

    from fedlora.base_model import resolve_model
    from fedlora.client.app import make_client_app
    from fedlora.server.app import make_server_app, open_registry

    shown = display or NullDisplay()
    t0 = time.perf_counter()
    paths = _prepare_dir(out_dir)
    _prepare_environment()
    settings = run_settings(scenario, paths, ray_address)
    paths.scenario.write_text(scenario.to_toml())
    knobs = scenario.knobs
    shown.start(f"{scenario.name}: {scenario.num_phones} phones", settings.server.rounds)
    shown.phase("preparing the base model…")
    base_dir = resolve_model(settings.model.base)

    hook = PopulationHook(
        population=settings.simulation.population,
        seed=settings.data.seed,
        ranks=tuple(sorted(set(settings.simulation.ranks))),
        knobs=knobs.behaviour(),
        secure=settings.privacy.secure_aggregation,
        trace_path=str(paths.trace.resolve()),
    )
    trace = TraceReader(paths.trace)
    metrics = MetricsFile(paths.metrics)
    records: list[dict[str, Any]] = []
    run_ids: list[int] = []

    def on_round(summary: Any) -> None:
        rec = round_record(summary, trace.outcomes(summary.round), time.perf_counter() - t0)
        records.append(rec)
        metrics.append(rec)
        shown.round_done(rec)

    def on_done(_summaries: Any, loop: Any) -> None:
        run_ids.append(int(loop.run_info.id))

    server_app = make_server_app(
        settings,
        registry_factory=lambda s: open_registry(s, paths.signing_key),
        run_name=scenario.name,
        population_size=scenario.num_phones,
        progress=on_round,
        on_done=on_done,
        node_wait_s=knobs.node_wait_s,
    )
    from fedlora.simulations.vectorized_service import (
        ServiceSpec,
        SimulatedRoundTrainer,
        start_when_ray_is_up,
    )

    service = None
    if settings.simulation.vectorized:
        name = f"fedlora-vectorized-{uuid.uuid4().hex[:12]}"
        k = vectorized_k(settings)
        workers = settings.simulation.vectorized_workers or os.cpu_count() or 1
        service = ServiceSpec.for_run(settings, name, k, workers=workers)
    trainer = SimulatedRoundTrainer(service, trace_path=str(paths.trace.resolve()))
    client_app = make_client_app(settings, trainer, conditions=hook)
    shown.phase("starting Ray and the phones (first round loads the model in each worker)…")
    error: str | None = None
    t_sim = time.perf_counter()
    stop_starter = threading.Event()
    if service is not None:
        start_when_ray_is_up(service, stop_starter)
    with TreeMemorySampler() as memory, engine_threads():
        try:
            run_simulation(
                server_app,
                client_app,
                num_supernodes=scenario.num_phones,
                backend_config=backend_config(settings),
            )
        except (Exception, SystemExit) as exc:  # report what we have, then fail loudly
            error = f"{type(exc).__name__}: {exc}"
            log.error("simulation failed: %s", error)
        finally:
            stop_starter.set()
    sim_s = time.perf_counter() - t_sim

    shown.phase("evaluating…")
    t_eval = time.perf_counter()
    triad, final_hash = _finish_registry(
        settings, scenario, paths, run_ids, records, str(base_dir), shown
    )
    eval_s = time.perf_counter() - t_eval
    if triad is not None:
        per_round = triad.get("per_round", {})
        for rec in records:
            rec["eval_loss"] = per_round.get(str(rec["round"]))
        metrics.rewrite(records)

    shown.phase("writing the report…")
    t_rep = time.perf_counter()
    summary = build_summary(scenario, settings, records, triad, error)
    summary["final_version_hash"] = final_hash
    summary["peak_rss_mb"] = memory.peak_mb
    summary["wall_s"] = {"simulation": sim_s, "evaluation": eval_s}
    write_outputs(paths, summary, records, scenario.to_toml())
    summary["wall_s"]["report"] = time.perf_counter() - t_rep
    summary["wall_s"]["total"] = time.perf_counter() - t0
    from fedlora.simulations.report import write_summary

    write_summary(paths.summary, summary)
    shown.stop()
    return SimulationResult(paths=paths, summary=summary, records=records)


def _finish_registry(
    settings: FedloraSettings,
    scenario: Scenario,
    paths: RunPaths,
    run_ids: Sequence[int],
    records: Sequence[Mapping[str, Any]],
    base_dir: str,
    shown: Display,
) -> tuple[dict[str, Any] | None, str | None]:
    """Save the final adapter (PEFT dir) and run the evaluation; (triad, final hash)."""
    from fedlora.adapter_io import save_peft_dir
    from fedlora.server.app import open_registry

    if not paths.database.exists():
        return None, None
    registry = open_registry(settings, paths.signing_key)
    try:
        run_id = run_ids[0] if run_ids else _run_id(registry, scenario.name)
        if run_id is None:
            return None, None
        committed = registry.latest_committed_round(run_id)
        community = None
        final_hash = None
        if committed is not None:
            community = registry.load_adapter(committed.community_version_id)
            save_peft_dir(community, paths.adapter, base_model_name_or_path=base_dir)
            final_hash = committed.community.content_hash
        if not scenario.knobs.evaluate:
            return None, final_hash
        rounds = {
            r.number: r.community_version_id
            for r in registry.list_rounds(run_id)
            if r.status == "committed" and r.community_version_id is not None
        }
        loaders = {}
        if scenario.knobs.eval_per_round:
            loaders = {n: (lambda v=v: registry.load_adapter(v)) for n, v in rounds.items()}
        pop, seed = settings.simulation.population, settings.data.seed
        ranks = settings.simulation.ranks
        from fedlora.simulations.evaluation import evaluate_run

        triad = evaluate_run(
            settings,
            community=community,
            round_adapters=loaders,
            participation=lambda pids: participation(paths.trace, pids),
            phone_rank=lambda pid: run_rank(pop, profile_for(pop, seed, pid), ranks),
            contributions=sum(int(r.get("contributors") or 0) for r in records),
            eval_phones=scenario.knobs.eval_phones,
            central_batch_size=scenario.knobs.central_batch_size,
            say=shown.phase,
        )
        return triad.as_dict(), final_hash
    finally:
        registry.close()


def _run_id(registry: Any, name: str) -> int | None:
    runs = [r for r in registry.list_runs() if r.name == name]
    return int(runs[-1].id) if runs else None


def build_summary(
    scenario: Scenario,
    settings: FedloraSettings,
    records: Sequence[Mapping[str, Any]],
    triad: Mapping[str, Any] | None,
    error: str | None,
) -> dict[str, Any]:
    """``summary.json`` (without timings and memory, which the caller adds)."""
    published = [r for r in records if r.get("status") == "published"]
    eps = [r["epsilon"] for r in records if isinstance(r.get("epsilon"), float)]
    pop_phones = min(scenario.num_phones, 2000)
    return {
        "scenario": scenario.name,
        "source": scenario.source,
        "description": scenario.knobs.description,
        "phones": scenario.num_phones,
        "population": describe(
            settings.simulation.population,
            settings.data.seed,
            pop_phones,
            settings.simulation.ranks,
        ),
        "rounds_planned": settings.server.rounds,
        "rounds_published": len(published),
        "rounds_aborted": sum(1 for r in records if r.get("status") == "aborted"),
        "budget_exhausted": any(r.get("status") == "budget_exhausted" for r in records),
        "contributions": sum(int(r.get("contributors") or 0) for r in records),
        "trainers": _trainer_totals(records),
        "epsilon": eps[-1] if eps else None,
        "delta": settings.privacy.delta if settings.privacy.noise != "none" else None,
        "noise": settings.privacy.noise,
        "secure_aggregation": settings.privacy.secure_aggregation,
        "bytes_up": sum(int(r.get("bytes_up") or 0) for r in records),
        "bytes_down": sum(int(r.get("bytes_down") or 0) for r in records),
        "triad": dict(triad) if triad else None,
        "status": "failed" if error else "completed",
        "error": error,
        "adapter_dir": "adapter",
        "registry": {"database": "registry.db", "blobs": "blobs", "signing_key": "signing_key.pem"},
        "knobs": scenario.knobs.model_dump(mode="json"),
    }


def _trainer_totals(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        for name, n in (r.get("trainers") or {}).items():
            out[name] = out.get(name, 0) + int(n)
    return dict(sorted(out.items()))


def write_outputs(
    paths: RunPaths,
    summary: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    scenario_toml: str,
) -> None:
    """Plots and the HTML report (summary.json is written last, by the caller)."""
    from fedlora.simulations.plots import write_plots
    from fedlora.simulations.report import write_html

    plots = write_plots(records, summary.get("triad"), paths.plots)
    write_html(paths.report, summary, records, plots, scenario_toml)
