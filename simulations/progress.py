"""The terminal display of a simulated run (rich): a progress bar over rounds with the latest
round's numbers, one line per finished round, and a final summary table.

The round loop calls back once per round from the ServerApp thread; rich's ``Progress`` is
safe to update from there. :class:`NullDisplay` is the same interface doing nothing (tests,
benchmarks, ``--quiet``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedlora.simulations.report import fmt, mib, triad_rows


class Display(Protocol):
    def start(self, title: str, rounds: int) -> None: ...

    def phase(self, text: str) -> None: ...

    def round_done(self, record: Mapping[str, Any]) -> None: ...

    def stop(self) -> None: ...


class NullDisplay:
    def start(self, title: str, rounds: int) -> None:
        return None

    def phase(self, text: str) -> None:
        return None

    def round_done(self, record: Mapping[str, Any]) -> None:
        return None

    def stop(self) -> None:
        return None


def round_line(r: Mapping[str, Any]) -> str:
    """``round 3 published: 14/20 in sum · 3 not allowed · ... · ε 2.31 · loss 3.12``."""
    bits = [f"{r.get('contributors', 0)}/{r.get('sampled', 0)} in sum"]
    for key, label in (
        ("not_allowed", "not allowed"),
        ("deadline", "missed deadline"),
        ("vanished_train", "vanished in training"),
        ("vanished_secagg", "vanished in SecAgg"),
        ("vanished_unmasking", "vanished while unmasking (input kept)"),
    ):
        if r.get(key):
            bits.append(f"{r[key]} {label}")
    eps = r.get("epsilon")
    bits.append(f"ε {eps:.3g}" if isinstance(eps, float) else "ε ∞")
    loss = r.get("community_loss")
    if isinstance(loss, float):
        bits.append(f"loss {loss:.3f}")
    bits.append(f"{r.get('round_s', 0.0):.1f}s")
    status = r.get("status", "")
    reason = f" ({r.get('reason')})" if r.get("reason") and status != "published" else ""
    return f"round {r.get('round')} {status}{reason}: " + " · ".join(bits)


class RichDisplay:
    """Progress bar + per-round lines on a rich console."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
        )
        self.task: Any = None

    def start(self, title: str, rounds: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(title, total=rounds, status="starting phones…")

    def phase(self, text: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, status=text)
        else:
            self.console.print(text)

    def round_done(self, record: Mapping[str, Any]) -> None:
        line = round_line(record)
        self.progress.console.print(line, markup=False)
        if self.task is not None:
            eps = record.get("epsilon")
            loss = record.get("community_loss")
            status = (
                f"round {record.get('round')}: {record.get('contributors', 0)} in sum, ε {eps:.3g} "
                if isinstance(eps, float)
                else f"round {record.get('round')} "
            )
            if isinstance(loss, float):
                status += f"loss {loss:.3f}"
            self.progress.update(self.task, advance=1, status=status)

    def stop(self) -> None:
        self.progress.stop()


def summary_table(summary: Mapping[str, Any]) -> Table:
    """The final table: run facts and, when evaluated, the triad."""
    t = Table(title=f"fedlora simulate: {summary.get('scenario')}", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("phones", str(summary.get("phones")))
    t.add_row(
        "rounds published / planned",
        f"{summary.get('rounds_published')} / {summary.get('rounds_planned')}",
    )
    t.add_row("contributions in sums", str(summary.get("contributions")))
    eps = summary.get("epsilon")
    t.add_row("ε (δ)", f"{fmt(eps, 3)} ({fmt(summary.get('delta'))})")
    t.add_row(
        "bytes down / up", f"{mib(summary.get('bytes_down'))} / {mib(summary.get('bytes_up'))}"
    )
    wall = (summary.get("wall_s") or {}).get("total")
    t.add_row("wall time", f"{fmt(wall, 3)} s")
    t.add_row("peak RSS (process tree)", f"{fmt(summary.get('peak_rss_mb'), 4)} MB")
    triad = summary.get("triad")
    if triad:
        for name, loss, _how in triad_rows(triad):
            ppl = f"  (ppl {math.exp(loss):.2f})" if isinstance(loss, float) else ""
            t.add_row(f"held-out loss: {name}", f"{fmt(loss)}{ppl}")
    t.add_row("status", str(summary.get("status")))
    return t
