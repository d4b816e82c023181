"""PNG plots of a simulated run (matplotlib, Agg backend: no display needed).

Each function draws one figure from the per-round records of ``metrics.jsonl`` (and the
end-of-run triad) and returns the file it wrote. Figures are small (≈ 30-60 KB at 90 dpi) so
they can be embedded in the HTML report and committed under ``docs/img``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Record = Mapping[str, Any]
DPI = 90
SIZE = (6.4, 3.6)


def _rounds(records: Sequence[Record]) -> list[int]:
    return [int(r["round"]) for r in records]


def _series(records: Sequence[Record], key: str) -> list[float]:
    out: list[float] = []
    for r in records:
        v = r.get(key)
        out.append(float(v) if isinstance(v, int | float) else math.nan)
    return out


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_loss(records: Sequence[Record], triad: Mapping[str, Any] | None, path: Path) -> Path:
    """Held-out loss and perplexity per round, with the triad's reference lines."""
    fig, (ax, axp) = plt.subplots(1, 2, figsize=(SIZE[0] * 1.5, SIZE[1]))
    rounds = _rounds(records)
    lines = [
        ("community_loss", "community (phones, before training)", "o-"),
        ("eval_loss", "community (fixed eval sample)", "s-"),
        ("local_loss_after", "after local training (phones)", "x--"),
    ]
    for key, label, style in lines:
        ys = _series(records, key)
        if any(not math.isnan(y) for y in ys):
            ax.plot(rounds, ys, style, label=label, markersize=4)
            axp.plot(rounds, [math.exp(y) for y in ys], style, label=label, markersize=4)
    if triad:
        refs = [("base", "base", "gray"), ("local_only", "local-only", "tab:orange")]
        refs.append(("centralized", "centralized", "tab:green"))
        for key, label, color in refs:
            v = triad.get(key)
            if isinstance(v, int | float):
                ax.axhline(v, linestyle=":", color=color, label=label)
                axp.axhline(math.exp(v), linestyle=":", color=color, label=label)
    ax.set(xlabel="round", ylabel="held-out loss (nats/token)", title="Loss")
    axp.set(xlabel="round", ylabel="perplexity", title="Perplexity")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    axp.grid(alpha=0.3)
    return _save(fig, path)


def plot_epsilon(records: Sequence[Record], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=SIZE)
    eps = _series(records, "epsilon")
    if any(not math.isnan(e) for e in eps):
        ax.plot(_rounds(records), eps, "o-", color="tab:red")
    else:
        ax.text(0.5, 0.5, "no differential privacy (ε = ∞)", ha="center", transform=ax.transAxes)
    ax.set(xlabel="round", ylabel="ε spent", title="Privacy: ε after each round")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_participation(records: Sequence[Record], path: Path) -> Path:
    """What happened to each round's sampled phones (stacked)."""
    fig, ax = plt.subplots(figsize=SIZE)
    rounds = _rounds(records)
    parts = [
        ("contributors", "in the sum", "tab:green"),
        ("vanished_secagg", "vanished in SecAgg (input lost)", "tab:purple"),
        ("vanished_train", "vanished in training", "tab:red"),
        ("deadline", "missed deadline", "tab:orange"),
        ("not_allowed", "not allowed (policy)", "tab:gray"),
    ]
    bottom = [0.0] * len(rounds)
    for key, label, color in parts:
        ys = [float(r.get(key) or 0) for r in records]
        ax.bar(rounds, ys, bottom=bottom, label=label, color=color)
        bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
    other = [float(r.get("sampled") or 0) - b for r, b in zip(records, bottom, strict=True)]
    if any(o > 0 for o in other):
        ax.bar(rounds, [max(o, 0) for o in other], bottom=bottom, label="other", color="black")
    ax.set(xlabel="round", ylabel="phones", title="Sampled phones per round")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_bytes(records: Sequence[Record], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=SIZE)
    rounds = _rounds(records)
    mb = 1024 * 1024
    width = 0.4
    down = [float(r["bytes_down"]) / mb for r in records]
    up = [float(r["bytes_up"]) / mb for r in records]
    ax.bar([r - width / 2 for r in rounds], down, width, label="down (community views)")
    ax.bar([r + width / 2 for r in rounds], up, width, label="up (phones' contributions)")
    ax.set(xlabel="round", ylabel="MiB", title="Bytes per round")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_timings(records: Sequence[Record], path: Path) -> Path:
    """Server-side wall time per round by phase (stacked)."""
    fig, ax = plt.subplots(figsize=SIZE)
    rounds = _rounds(records)
    phases: list[str] = []
    for r in records:
        for k in r.get("timings") or {}:
            if k not in phases:
                phases.append(k)
    bottom = [0.0] * len(rounds)
    for phase in phases:
        ys = [float((r.get("timings") or {}).get(phase, 0.0)) for r in records]
        ax.bar(rounds, ys, bottom=bottom, label=phase)
        bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
    ax.set(xlabel="round", ylabel="seconds (wall)", title="Round time by phase")
    if phases:
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_triad(triad: Mapping[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=SIZE)
    names = [("base", "base"), ("community", "community"), ("local_only", "local-only")]
    names.append(("centralized", "centralized"))
    labels, values = [], []
    for key, label in names:
        v = triad.get(key)
        if isinstance(v, int | float):
            labels.append(label)
            values.append(float(v))
    bars = ax.bar(
        labels, values, color=["gray", "tab:blue", "tab:orange", "tab:green"][: len(values)]
    )
    for b, v in zip(bars, values, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    lo = min(values) if values else 0.0
    ax.set_ylim(max(0.0, lo - 0.5), max(values) * 1.05 if values else 1.0)
    ax.set(ylabel="held-out loss", title=f"End of run, {triad.get('phones')} sampled phones")
    return _save(fig, path)


def write_plots(
    records: Sequence[Record], triad: Mapping[str, Any] | None, out_dir: Path
) -> dict[str, Path]:
    """All plots of a run; keys are stable names used by the HTML report and the docs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "loss": plot_loss(records, triad, out_dir / "loss.png"),
        "epsilon": plot_epsilon(records, out_dir / "epsilon.png"),
        "participation": plot_participation(records, out_dir / "participation.png"),
        "bytes": plot_bytes(records, out_dir / "bytes.png"),
        "timings": plot_timings(records, out_dir / "timings.png"),
    }
    if triad:
        plots["triad"] = plot_triad(triad, out_dir / "triad.png")
    return plots
