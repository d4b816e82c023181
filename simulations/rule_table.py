"""Held-out loss per aggregation rule at equal rounds, with and without DP.

    python -m fedlora.simulations.rule_table --out runs/rules --doc docs/aggregation-results.md

One fixed, modest scenario (:class:`TableSetup`: a ``mixed`` population with ranks 4/8/16
from RAM, the same phones, data, sampling, seeds and number of rounds for every cell) is
simulated once per aggregation rule × {no DP, DP} with the deployment code
(:func:`fedlora.simulations.driver.run_scenario`). Each cell's community adapters are then
scored on the held-out texts of a fixed sample of phones with the evaluation module's
:class:`~fedlora.simulations.evaluation.Evaluator` — base and community only: the local-only
and centralized baselines do not depend on the rule and are not run (``scenario.evaluate``
is off, there is no knob for "community only").

Fairness:

* the server samples phones by seeded index into the *sorted node ids*; Flower draws node
  ids from ``os.urandom``, so which partitions a round samples would differ from run to
  run. :func:`seeded_node_ids` makes those ids a seeded sequence for the duration of a run
  (the only change to third-party behaviour, and only inside this process); the JSON and
  the page record whether every cell trained the same phones in every round;
* phone profiles, data, local-training seeds and noise seeds are deterministic already.

Privacy columns (see docs/aggregation-results.md for the reasoning):

* **no DP** — no noise, and a clip norm far above any phone's (weighted) delta, so nothing
  is clipped (phones weigh their delta by their example count before clipping);
* **DP** — central Gaussian noise with the same clip norm and noise multiplier for every
  rule, phone weight 1; ε from the server's accountant (RDP, Poisson sampling).

Secure aggregation (SecAgg+) is on in both columns for the rules that are linear
(:data:`~fedlora.simulations.scenario.LINEAR_RULES`): ``flexlora`` can only be summed in its
dense-upload form, which the round loop uses for every sum. ``flora`` has no sum: its phones
upload their own deltas without secure aggregation, and noise on a sum (``central``) does not
apply to it, so its DP cell is refused with that reason — the table shows the reason rather
than leaving the cell out.

The raw numbers go to ``<out>/rule-table.json`` (written after every cell, so an
interrupted table keeps what it has); the markdown goes between the
``<!-- BEGIN rule-table -->`` / ``<!-- END rule-table -->`` markers of ``--doc``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedlora.simulations.scenario import LINEAR_RULES, Scenario, load_scenario

RULES: tuple[str, ...] = ("rank_fedavg", "hetlora", "ffa", "flexlora", "fedsa", "flora")
Mode = Literal["none", "dp"]
MODES: tuple[Mode, ...] = ("none", "dp")
MODE_TITLES: dict[Mode, str] = {"none": "no DP", "dp": "DP"}
BEGIN = "<!-- BEGIN rule-table -->"
END = "<!-- END rule-table -->"
JSON_NAME = "rule-table.json"
BASE_SCENARIO = "smoke"
"""Every key the table depends on is overridden; the bundled file only supplies the rest."""

DEFAULT_COMMAND = (
    "python -m fedlora.simulations.rule_table --out runs/rules --doc docs/aggregation-results.md"
)


@dataclass(frozen=True)
class TableSetup:
    """The one scenario every cell runs (only ``aggregation.rule`` and privacy change)."""

    phones: int = 60
    population: str = "mixed"
    ranks: tuple[int, ...] = (4, 8, 16)
    examples_per_client: int = 40
    per_round: int = 10
    min_clients: int = 4
    rounds: int = 8
    local_steps: int = 10
    batch_size: int = 8
    learning_rate: float = 3e-3
    server_optimizer: str = "fedavg"
    server_lr: float = 1.0
    secure_aggregation: bool = True
    clip_norm_plain: float = 1e4
    clip_norm_dp: float = 0.25
    noise_multiplier: float = 0.8
    dp_noise: str = "central"
    delta: float = 1e-5
    eval_phones: int = 16
    seed: int = 0

    def secure_for(self, rule: str) -> bool:
        return self.secure_aggregation and rule in LINEAR_RULES

    def overrides(self, rule: str, mode: Mode) -> list[str]:
        """``--set`` overrides of :data:`BASE_SCENARIO` for one cell."""
        dp = mode == "dp"

        def s(x: str) -> str:
            return json.dumps(x)

        return [
            f"scenario.name={s(f'rules-{rule}-{mode}')}",
            f"scenario.description={s(self.describe())}",
            'scenario.policy="always"',
            "scenario.deadline_s=1e9",
            "scenario.dropout_scale=0.0",
            "scenario.evaluate=false",
            "scenario.eval_per_round=false",
            f"scenario.eval_phones={self.eval_phones}",
            "scenario.node_wait_s=120.0",
            f"data.num_clients={self.phones}",
            f"data.examples_per_client={self.examples_per_client}",
            f"data.seed={self.seed}",
            'data.partition="natural"',
            f"client.local_steps={self.local_steps}",
            f"client.batch_size={self.batch_size}",
            f"client.learning_rate={self.learning_rate}",
            f"client.seed={self.seed}",
            f"server.rounds={self.rounds}",
            f"server.clients_per_round={self.per_round}",
            f"server.min_clients={self.min_clients}",
            f"privacy.noise={s(self.dp_noise if dp else 'none')}",
            f"privacy.clip_norm={self.clip_norm_dp if dp else self.clip_norm_plain}",
            f"privacy.noise_multiplier={self.noise_multiplier if dp else 0.0}",
            f"privacy.delta={self.delta}",
            "privacy.adaptive_clipping=false",
            f"privacy.secure_aggregation={str(self.secure_for(rule)).lower()}",
            f"aggregation.rule={s(rule)}",
            f"aggregation.server_optimizer={s(self.server_optimizer)}",
            f"aggregation.server_lr={self.server_lr}",
            f"simulation.population={s(self.population)}",
            f"simulation.ranks={list(self.ranks)}",
        ]

    def describe(self) -> str:
        return (
            f"{self.phones} {self.population} phones (ranks "
            f"{'/'.join(str(r) for r in self.ranks)}), {self.per_round} per round x "
            f"{self.rounds} rounds, {self.local_steps} local steps"
        )


@dataclass
class Cell:
    """One rule under one privacy mode: what happened and what it scored."""

    rule: str
    mode: Mode
    status: Literal["ok", "partial", "failed", "diverged"]
    loss: float | None = None
    per_round: dict[int, float] = field(default_factory=dict)
    epsilon: float | None = None
    delta: float | None = None
    rounds_published: int = 0
    rounds_planned: int = 0
    secure_aggregation: bool = False
    noise: str = "none"
    error: str | None = None
    wall_s: float = 0.0
    simulation_s: float = 0.0
    eval_s: float = 0.0
    sampled: dict[int, list[int]] = field(default_factory=dict)
    node_ids_seeded: bool = False
    run_dir: str = ""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["per_round"] = {str(k): v for k, v in sorted(self.per_round.items())}
        out["sampled"] = {str(k): v for k, v in sorted(self.sampled.items())}
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Cell:
        d = dict(doc)
        d["per_round"] = {int(k): float(v) for k, v in (d.get("per_round") or {}).items()}
        d["sampled"] = {int(k): list(v) for k, v in (d.get("sampled") or {}).items()}
        return cls(**d)


# ------------------------------------------------------------------ fair sampling
@contextmanager
def seeded_node_ids(seed: int) -> Iterator[bool]:
    """Make Flower's simulated node ids a seeded sequence while the block runs.

    The round loop samples ``clients_per_round`` indices (seeded by the data seed and the
    round) into the sorted node ids; Flower maps node id → partition in registration order
    but draws the ids from ``os.urandom``, so the same indices name different partitions in
    every run. With the ids drawn from ``random.Random(seed)`` instead, node ``i`` gets the
    same id in every run and every rule samples the same phones. Yields whether the hook
    could be installed (a Flower without it runs unseeded; the page then says so).
    """
    try:
        from flwr.server.superlink.linkstate import in_memory_linkstate as mod
    except ImportError:  # pragma: no cover - depends on the installed Flower
        yield False
        return
    original = getattr(mod, "generate_rand_int_from_bytes", None)
    if original is None:  # pragma: no cover
        yield False
        return
    rng = random.Random(f"fedlora-rule-table-{seed}")
    lock = threading.Lock()

    def draw(num_bytes: int, exclude: set[int] | None = None) -> int:
        with lock:
            while True:
                num = int.from_bytes(rng.randbytes(num_bytes), "little", signed=False)
                if not exclude or num not in exclude:
                    return num

    mod.generate_rand_int_from_bytes = draw
    try:
        yield True
    finally:
        mod.generate_rand_int_from_bytes = original


def sampled_partitions(trace: Path) -> dict[int, list[int]]:
    """Round → the partitions that had any event in it (with policy ``always``, no
    deadline and no dropouts: exactly the sampled phones)."""
    from fedlora.simulations.trace import iter_events

    out: dict[int, set[int]] = {}
    if not trace.exists():
        return {}
    for ev in iter_events(trace):
        out.setdefault(ev.round, set()).add(ev.partition_id)
    return {r: sorted(p) for r, p in sorted(out.items())}


# ------------------------------------------------------------------ evaluation
class HeldOutScorer:
    """Base and community held-out loss on a fixed sample (as the driver's evaluation does:
    token-weighted loss per phone, averaged over phones), with the base model loaded once
    for the whole table."""

    def __init__(self, scenario: Scenario) -> None:
        import numpy as np

        from fedlora.data.from_settings import load_federation
        from fedlora.simulations.evaluation import Evaluator, eval_sample

        self._np = np
        settings = scenario.settings
        self.evaluator = Evaluator(settings)
        fed = load_federation(settings.data)
        ids = fed.client_ids
        self.pids = eval_sample(len(ids), scenario.knobs.eval_phones, settings.data.seed)
        self.heldouts = [self.evaluator.tokenize(fed.clients[ids[p]].heldout) for p in self.pids]
        self.base = self.loss(None)

    def loss(self, adapter: Any) -> float:
        return float(self._np.mean(self.evaluator.losses(adapter, self.heldouts)))


def committed_losses(run_dir: Path, score: Callable[[Any], float]) -> dict[int, float]:
    """Held-out loss of every committed round's community adapter in the run's registry."""
    from fedlora.server.registry import Registry

    db = run_dir / "registry.db"
    if not db.exists():
        return {}
    reg = Registry.open(database_url=f"sqlite:///{db.resolve()}", blob_dir=run_dir / "blobs")
    try:
        out: dict[int, float] = {}
        for run in reg.list_runs():
            for rnd in reg.list_rounds(run.id):
                if rnd.status == "committed" and rnd.community_version_id is not None:
                    out[rnd.number] = score(reg.load_adapter(rnd.community_version_id))
        return out
    finally:
        reg.close()


# ------------------------------------------------------------------ one cell
def _first_reason(records: Sequence[Mapping[str, Any]]) -> str | None:
    for r in records:
        if r.get("status") != "published" and r.get("reason"):
            return f"round {r.get('round')} {r.get('status')}: {r['reason']}"
    return None


def classify(
    loss: float | None, rounds_published: int, rounds_planned: int, error: str | None
) -> Literal["ok", "partial", "failed", "diverged"]:
    if loss is not None and not math.isfinite(loss):
        return "diverged"
    if rounds_published == 0 or loss is None:
        return "failed"
    if rounds_published < rounds_planned or error:
        return "partial"
    return "ok"


def run_cell(
    setup: TableSetup,
    rule: str,
    mode: Mode,
    run_dir: Path,
    scorer: Callable[[Scenario], HeldOutScorer],
    *,
    ray_address: str | None = None,
) -> Cell:
    """Simulate and score one cell; every failure becomes a :class:`Cell` with its error."""
    from fedlora.simulations.driver import run_scenario

    t0 = time.perf_counter()
    secure = setup.secure_for(rule)
    noise = setup.dp_noise if mode == "dp" else "none"
    cell = Cell(
        rule=rule,
        mode=mode,
        status="failed",
        rounds_planned=setup.rounds,
        secure_aggregation=secure,
        noise=noise,
        run_dir=str(run_dir),
    )
    try:
        scenario = load_scenario(BASE_SCENARIO, setup.overrides(rule, mode))
        with seeded_node_ids(setup.seed) as seeded:
            result = run_scenario(scenario, run_dir, ray_address=ray_address)
        cell.node_ids_seeded = seeded
        cell.simulation_s = float(result.summary.get("wall_s", {}).get("total") or 0.0)
        summary, records = result.summary, result.records
        cell.rounds_published = int(summary.get("rounds_published") or 0)
        eps = summary.get("epsilon")
        cell.epsilon = float(eps) if isinstance(eps, int | float) else None
        cell.delta = summary.get("delta")
        cell.error = summary.get("error") or _first_reason(records)
        cell.sampled = sampled_partitions(run_dir / "trace.csv")
        t_eval = time.perf_counter()
        if cell.rounds_published:
            ev = scorer(scenario)
            cell.per_round = {0: ev.base, **committed_losses(run_dir, ev.loss)}
            last = max(cell.per_round)
            cell.loss = cell.per_round[last] if last > 0 else None
        cell.eval_s = time.perf_counter() - t_eval
    except Exception as exc:  # the table reports every failure, whatever it is
        cell.error = f"{type(exc).__name__}: {exc}"
    cell.status = classify(cell.loss, cell.rounds_published, cell.rounds_planned, cell.error)
    cell.wall_s = time.perf_counter() - t0
    return cell


# ------------------------------------------------------------------ rendering
def _f(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "—"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}f}"


def _short(text: str, limit: int = 140) -> str:
    one = " ".join(text.split()).replace("|", "\\|")
    return one if len(one) <= limit else one[: limit - 1] + "…"


def _cell_text(cell: Cell | None, base: float | None, notes: list[str]) -> str:
    if cell is None:
        return "not run"
    if cell.status == "failed":
        notes.append(
            f"`{cell.rule}`, {MODE_TITLES[cell.mode]}: {cell.error or 'no round published'}"
        )
        return f"**failed** [{len(notes)}]"
    if cell.status == "diverged":
        return f"**diverged** (loss {_f(cell.loss)})"
    text = f"{_f(cell.loss)}"
    if base is not None and cell.loss is not None:
        diff = cell.loss - base
        text += f" ({diff:+.3f}, worse than base)" if diff > 0 else f" ({diff:+.3f})"
    if cell.status == "partial":
        notes.append(
            f"`{cell.rule}`, {MODE_TITLES[cell.mode]}: {cell.rounds_published}/"
            f"{cell.rounds_planned} rounds published; {cell.error or ''}".rstrip("; ")
        )
        text += f" [{len(notes)}]"
    return text


def sampling_check(cells: Sequence[Cell]) -> str:
    """One sentence: did every cell that ran train the same phones in every round?"""
    ran = [c for c in cells if c.sampled]
    if not ran:
        return "No cell recorded its sampled phones."
    ref = ran[0].sampled
    differ = [f"`{c.rule}` ({MODE_TITLES[c.mode]})" for c in ran if c.sampled != ref]
    seeded = all(c.node_ids_seeded for c in ran)
    if not differ:
        return (
            f"Every run sampled the same phones in every round ({len(ref)} rounds checked "
            "from the phones' trace"
            + ("" if seeded else "; node ids were not seeded, so this is luck")
            + ")."
        )
    return "The phones sampled differed from the first run in: " + ", ".join(differ) + "."


def render(doc: Mapping[str, Any]) -> str:
    """The generated part of the page (between the markers) from ``rule-table.json``."""
    setup = TableSetup(**{**doc["setup"], "ranks": tuple(doc["setup"]["ranks"])})
    cells = [Cell.from_json(c) for c in doc["cells"]]
    by = {(c.rule, c.mode): c for c in cells}
    base = doc.get("base_loss")
    rules = [r for r in RULES if any((r, m) in by for m in MODES)]
    rules += sorted({c.rule for c in cells} - set(rules))
    notes: list[str] = []
    eps_values = sorted({round(c.epsilon, 2) for c in cells if c.epsilon is not None})
    eps_text = ", ".join(f"{e:.2f}" for e in eps_values) if eps_values else "—"
    n_eval = doc.get("eval_phones", setup.eval_phones)
    lines = [
        f"Held-out loss (mean next-token loss on the held-out texts of {n_eval} "
        f"fixed phones; lower is better; in brackets the change against the base model) "
        f"after {setup.rounds} rounds. Base model alone: **{_f(base)}**.",
        "",
        f"| rule | no DP | DP (ε = {eps_text}, δ = {setup.delta:g}) "
        f"| rounds published of {setup.rounds} (no DP / DP) | SecAgg+ | wall time (no DP / DP) |",
        "|---|---|---|---|---|---|",
    ]
    for rule in rules:
        plain, dp = by.get((rule, "none")), by.get((rule, "dp"))
        pub = " / ".join(str(c.rounds_published) if c else "—" for c in (plain, dp))
        secure = {c.secure_aggregation for c in (plain, dp) if c}
        sec = "yes" if secure == {True} else "no" if secure == {False} else "mixed"
        wall = " / ".join(f"{c.wall_s:.0f} s" if c else "—" for c in (plain, dp))
        lines.append(
            f"| `{rule}` | {_cell_text(plain, base, notes)} | {_cell_text(dp, base, notes)} "
            f"| {pub} | {sec} | {wall} |"
        )
    if notes:
        lines.append("")
        lines += [f"{i}. {_short(n, 400)}" for i, n in enumerate(notes, 1)]

    ok = [c for c in cells if c.per_round and len(c.per_round) > 1]
    if ok:
        rounds = sorted({r for c in ok for r in c.per_round})
        lines += [
            "",
            "Held-out loss after each round (round 0 = base model):",
            "",
            "| rule | privacy | " + " | ".join(str(r) for r in rounds) + " |",
            "|---|---|" + "---|" * len(rounds),
        ]
        for c in sorted(ok, key=lambda c: (rules.index(c.rule), MODES.index(c.mode))):
            vals = " | ".join(_f(c.per_round.get(r)) for r in rounds)
            lines.append(f"| `{c.rule}` | {MODE_TITLES[c.mode]} | {vals} |")

    lines += [
        "",
        f"Setup: {setup.describe()}, batch {setup.batch_size}, local lr "
        f"{setup.learning_rate:g}, server optimizer `{setup.server_optimizer}` (lr "
        f"{setup.server_lr:g}), data seed {setup.seed}. No DP: no noise, clip norm "
        f"{setup.clip_norm_plain:g} (far above any weighted delta), phones weighted by example "
        "count. DP: "
        f"`{setup.dp_noise}` Gaussian noise, clip norm {setup.clip_norm_dp:g}, noise "
        f"multiplier {setup.noise_multiplier:g}, phone weight 1. {sampling_check(cells)}",
        "",
        f"Generated {doc.get('generated', '?')} on {doc.get('machine', '?')} in "
        f"{_minutes(doc.get('wall_s'))} by `{doc.get('command', DEFAULT_COMMAND)}`; raw numbers "
        f"in `{JSON_NAME}` of the run directory.",
    ]
    return "\n".join(lines) + "\n"


def _minutes(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    return f"{seconds / 60:.1f} min"


def write_doc(doc_path: Path, generated: str) -> None:
    """Replace the text between the markers (or create the page with them)."""
    block = f"{BEGIN}\n{generated.rstrip()}\n{END}"
    if doc_path.exists():
        text = doc_path.read_text()
        if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            doc_path.write_text(head + block + tail)
            return
        doc_path.write_text(text.rstrip() + "\n\n" + block + "\n")
        return
    doc_path.parent.mkdir(parents=True, exist_ok=True)
    doc_path.write_text(f"# Aggregation rules compared\n\n{block}\n")


# ------------------------------------------------------------------ the table
def run_table(
    setup: TableSetup,
    out: Path,
    *,
    rules: Sequence[str] = RULES,
    modes: Sequence[Mode] = MODES,
    command: str = DEFAULT_COMMAND,
    ray_address: str | None = None,
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Run every cell into ``out/<rule>-<mode>/`` and return (and write) the JSON doc."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    scorer_box: list[HeldOutScorer] = []

    def scorer(scenario: Scenario) -> HeldOutScorer:
        if not scorer_box:
            scorer_box.append(HeldOutScorer(scenario))
        return scorer_box[0]

    doc: dict[str, Any] = {
        "setup": asdict(setup),
        "base_loss": None,
        "eval_phones": setup.eval_phones,
        "eval_partitions": None,
        "cells": [],
        "command": command,
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {_cpus()} CPUs",
        "wall_s": None,
    }
    for rule in rules:
        for mode in modes:
            say(f"[rule-table] {rule} / {MODE_TITLES[mode]} …")
            cell = run_cell(
                setup, rule, mode, out / f"{rule}-{mode}", scorer, ray_address=ray_address
            )
            say(
                f"[rule-table] {rule} / {MODE_TITLES[mode]}: {cell.status}, loss {_f(cell.loss)}, "
                f"ε {_f(cell.epsilon, 2)}, {cell.rounds_published}/{cell.rounds_planned} rounds, "
                f"{cell.wall_s:.0f} s" + (f" — {_short(cell.error)}" if cell.error else "")
            )
            doc["cells"].append(cell.to_json())
            if scorer_box:
                doc["base_loss"] = scorer_box[0].base
                doc["eval_partitions"] = scorer_box[0].pids
            doc["wall_s"] = time.perf_counter() - t0
            (out / JSON_NAME).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return doc


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fedlora.simulations.rule_table", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", type=Path, required=True, help="run directory (one subfolder per cell)")
    p.add_argument("--doc", type=Path, help="markdown page to write the table into (markers)")
    p.add_argument("--rules", default=",".join(RULES), help="comma-separated subset of rules")
    p.add_argument("--modes", default="none,dp", help="comma-separated subset of none,dp")
    p.add_argument("--rounds", type=int, help="override the number of rounds (default 8)")
    p.add_argument(
        "--render-only", action="store_true", help="re-render --doc from <out>/rule-table.json"
    )
    p.add_argument("--ray-address", help="an existing Ray cluster")
    args = p.parse_args(argv)

    if args.render_only:
        doc = json.loads((args.out / JSON_NAME).read_text())
    else:
        rules = [r.strip() for r in args.rules.split(",") if r.strip()]
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        bad = [r for r in rules if r not in RULES] + [m for m in modes if m not in MODES]
        if bad:
            p.error(f"unknown rule or mode: {', '.join(bad)}")
        setup = TableSetup() if args.rounds is None else TableSetup(rounds=args.rounds)
        argv_list = list(sys.argv[1:] if argv is None else argv)
        command = "python -m fedlora.simulations.rule_table " + shlex.join(argv_list)
        doc = run_table(
            setup,
            args.out,
            rules=rules,
            modes=[m for m in MODES if m in modes],
            command=command,
            ray_address=args.ray_address,
        )
    if args.doc is not None:
        write_doc(args.doc, render(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
