"""Benchmark: what does simulating a federation cost over training the same phones in a loop?

The same total local-training work — ``rounds × per_round`` phone-rounds, each ``steps``
AdamW steps of ``batch`` examples plus the held-out evaluation before and after that a phone
does in a round — is run:

* **standalone** — one process, one phone at a time, through the phone code the ClientApp
  uses (:class:`fedlora.client.session.PhoneSession`), torch with 1 thread (``--allcores``
  also times all cores and takes the faster as the baseline; on a busy machine spinning
  OpenMP threads make it several times slower);
* **simulated** — ``fedlora simulate`` on Flower's simulation engine (Ray, one actor per
  CPU, real ClientApp/ServerApp, registry), a ``uniform`` population (nobody refuses or
  drops, so the work is identical), no DP or secure aggregation (their cost is not the
  framework's), no end-of-run evaluation; every phone trains alone on PEFT
  (``simulation.vectorized=false``); with ``phones`` and with ``big_phones`` simulated
  phones (same per-round work) to show memory is flat in the population size;
* **simulated, vectorized** — the same run with ``simulation.vectorized=true`` (the default):
  the phones' training goes to the shared vectorized service
  (:mod:`fedlora.simulations.vectorized_service`), K = ``simulation.vectorized_phones`` at once.

Each variant runs as a child process, timed from spawn to exit (imports, Ray start and
model loads included on both sides); peak memory is the RSS of the child's whole process
tree (driver, GCS, raylet, workers) sampled every 0.5 s.

``overhead_vs_standalone`` = simulated (not vectorized) wall / standalone wall;
``vectorized_speedup`` = standalone wall / simulated vectorized wall (> 1: simulating with
vectorized phones is faster than the plain one-phone-at-a-time loop). Both include each
side's start (imports, Ray, actors, model loads), which on a small machine is a large part
of a short run, so the JSON also has ``steady_*``: the same ratios over the mean wall time of
rounds 2..N (a standalone "round" is its ``per_round`` phones one after the other), and
``startup_s`` (wall minus the rounds).

Run:  python benchmarks/simulation.py            (≈ 10-20 minutes on 2 busy cores)
      python benchmarks/simulation.py --quick    (a smoke run)
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedlora.simulations.resources import TreeMemorySampler


def _work_settings(args: argparse.Namespace, phones: int) -> list[str]:
    return [
        f"data.num_clients={phones}",
        f"server.rounds={args.rounds}",
        f"server.clients_per_round={args.per_round}",
        "server.min_clients=1",
        f"client.local_steps={args.steps}",
        f"client.batch_size={args.batch}",
        'privacy.noise="none"',
        "privacy.secure_aggregation=false",
        'simulation.population="uniform"',
        "simulation.ranks=[4, 8, 16]",
        "scenario.evaluate=false",
        'scenario.policy="always"',
    ]


# ---------------------------------------------------------------------------- children
def child_standalone(args: argparse.Namespace) -> None:
    """The phones' rounds one by one in this process (what each simulated phone does)."""
    import numpy as np
    import torch

    from fedlora.base_model import resolve_model
    from fedlora.client.session import PhoneSession
    from fedlora.data.from_settings import load_federation
    from fedlora.protocol import RoundInstructions
    from fedlora.ranks import truncate_to_rank
    from fedlora.simulations.evaluation import Evaluator
    from fedlora.simulations.scenario import load_scenario

    if args.threads:
        torch.set_num_threads(args.threads)
    sc = load_scenario("smoke", _work_settings(args, args.phones))
    s = sc.settings
    resolve_model(s.model.base)
    initial = Evaluator(s, threads=torch.get_num_threads()).initial  # the round-0 adapter
    fed = load_federation(s.data)
    ids = fed.client_ids
    ranks = sorted(s.simulation.ranks)
    session = PhoneSession()
    rng = np.random.default_rng(0)
    digest = ""
    round_s: list[float] = []
    for rnd in range(1, args.rounds + 1):
        t_round = time.perf_counter()
        for pid in rng.choice(len(ids), size=args.per_round, replace=False):
            rank = ranks[int(pid) % len(ranks)]
            view = truncate_to_rank(initial, rank)
            instr = RoundInstructions(
                round=rnd,
                rank=rank,
                r_max=ranks[-1],
                local_steps=args.steps,
                batch_size=args.batch,
                learning_rate=s.client.learning_rate,
                seed=int(rng.integers(0, 2**31)),
                layout_digest=digest,
                round_ranks=",".join(str(r) for r in ranks),
                rule=s.aggregation.rule,
            )
            data = fed.clients[ids[int(pid)]]
            out = session.run_round(instr, view, data.train, s, heldout_texts=data.heldout)
            assert out.report.status == "trained", out.report
        round_s.append(time.perf_counter() - t_round)
    print(json.dumps({"round_s": round_s}))


def child_simulated(args: argparse.Namespace) -> None:
    from fedlora.simulations.driver import run_scenario
    from fedlora.simulations.scenario import load_scenario

    vectorized = "true" if args.vectorized else "false"
    sets = [*_work_settings(args, args.phones), f"simulation.vectorized={vectorized}"]
    sc = load_scenario("smoke", sets)
    result = run_scenario(sc, Path(args.out))
    summary = result.summary
    print(
        json.dumps(
            {
                "simulation_s": summary["wall_s"]["simulation"],
                "trainers": summary["trainers"],
                "round_s": [r["round_s"] for r in result.records],
            }
        )
    )
    assert summary["status"] == "completed", summary.get("error")
    assert summary["rounds_published"] == args.rounds
    expected = "vectorized" if args.vectorized else "peft"
    assert set(summary["trainers"]) == {expected}, summary["trainers"]


# ---------------------------------------------------------------------------- parent
def run_child(args: argparse.Namespace, mode: str, **extra: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode]
    for key in ("rounds", "per_round", "steps", "batch"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeMemorySampler(proc.pid) as mem:
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed ({proc.returncode}):\n{stderr[-3000:]}")
    inner: dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            inner = json.loads(line)
    return {"wall_s": wall, "peak_rss_mb": mem.peak_mb, **inner}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", choices=["standalone", "simulated"])
    p.add_argument("--phones", type=int, default=200)
    p.add_argument("--big-phones", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--vectorized", type=int, default=0)
    p.add_argument("--out", default="")
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--allcores",
        action="store_true",
        help="also time the standalone loop with torch on all cores (slow on a busy machine)",
    )
    args = p.parse_args()
    if args.child == "standalone":
        child_standalone(args)
        return
    if args.child == "simulated":
        child_simulated(args)
        return
    if args.quick:
        args.rounds, args.per_round, args.steps, args.phones, args.big_phones = 2, 4, 3, 20, 100
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    work = args.rounds * args.per_round
    print(f"work: {work} phone-rounds x {args.steps} steps x batch {args.batch}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants: list[tuple[str, str, dict[str, Any]]] = [
            ("standalone_1thread", "standalone", {"phones": args.phones, "threads": 1}),
        ]
        if args.allcores:
            variants.append(
                ("standalone_allcores", "standalone", {"phones": args.phones, "threads": 0})
            )
        variants += [
            (
                f"simulated_{args.phones}",
                "simulated",
                {"phones": args.phones, "out": Path(tmp, "a")},
            ),
            (
                f"simulated_vectorized_{args.phones}",
                "simulated",
                {"phones": args.phones, "out": Path(tmp, "v"), "vectorized": 1},
            ),
            (
                f"simulated_{args.big_phones}",
                "simulated",
                {"phones": args.big_phones, "out": Path(tmp, "b")},
            ),
        ]
        for name, mode, extra in variants:
            results[name] = run_child(args, mode, **extra)
            r = results[name]
            print(
                f"{name:>26}: {r['wall_s']:7.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB", flush=True
            )
    standalone = min(r["wall_s"] for k, r in results.items() if k.startswith("standalone"))
    sim = results[f"simulated_{args.phones}"]
    big = results[f"simulated_{args.big_phones}"]
    vec = results[f"simulated_vectorized_{args.phones}"]

    def steady(r: dict[str, Any]) -> float:
        """Mean wall seconds of a round after the first (no process starts, no model loads)."""
        later = r["round_s"][1:]
        return sum(later) / len(later) if later else float("nan")

    standalone_run = min(
        (r for k, r in results.items() if k.startswith("standalone")), key=lambda r: r["wall_s"]
    )
    out = {
        "phones": args.phones,
        "big_phones": args.big_phones,
        "phone_rounds": work,
        "steps": args.steps,
        "standalone_wall_s": standalone,
        "standalone_1thread_wall_s": results["standalone_1thread"]["wall_s"],
        "standalone_allcores_wall_s": results.get("standalone_allcores", {}).get("wall_s"),
        "simulated_wall_s": sim["wall_s"],
        "simulated_engine_s": sim.get("simulation_s"),
        "simulated_big_wall_s": big["wall_s"],
        "overhead_vs_standalone": sim["wall_s"] / standalone,
        "simulated_vectorized_wall_s": vec["wall_s"],
        "simulated_vectorized_engine_s": vec.get("simulation_s"),
        "vectorized_speedup": standalone / vec["wall_s"],
        "vectorized_vs_simulated": sim["wall_s"] / vec["wall_s"],
        f"peak_rss_mb_vectorized_{args.phones}": vec["peak_rss_mb"],
        f"peak_rss_mb_{args.phones}": sim["peak_rss_mb"],
        f"peak_rss_mb_{args.big_phones}": big["peak_rss_mb"],
        "peak_rss_ratio": big["peak_rss_mb"] / sim["peak_rss_mb"],
        "steady_round_s": {
            "standalone": steady(standalone_run),
            "simulated": steady(sim),
            "simulated_vectorized": steady(vec),
        },
        "steady_overhead_vs_standalone": steady(sim) / steady(standalone_run),
        "steady_vectorized_speedup": steady(standalone_run) / steady(vec),
        "startup_s": {
            "standalone": standalone_run["wall_s"] - sum(standalone_run["round_s"]),
            "simulated": sim["wall_s"] - sum(sim["round_s"]),
            "simulated_vectorized": vec["wall_s"] - sum(vec["round_s"]),
        },
        "standalone_peak_rss_mb": results["standalone_1thread"]["peak_rss_mb"],
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
