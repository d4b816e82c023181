"""The run directory's human-facing outputs: ``summary.json`` and a self-contained HTML report.

The HTML embeds its plots as base64 PNGs, so the single file can be mailed or attached to a
CI run; it shows the key facts, the end-of-run triad, a table of rounds and the effective
scenario (TOML) that reproduces the run.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Record = Mapping[str, Any]


def write_summary(path: Path, summary: Mapping[str, Any]) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def fmt(v: Any, digits: int = 4) -> str:
    """A table cell: numbers rounded, None as an en dash."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "∞" if v > 0 else "–"
        return f"{v:.{digits}g}" if abs(v) >= 1e4 or abs(v) < 1e-3 else f"{v:.{digits}f}"
    return str(v)


def mib(n: Any) -> str:
    return f"{float(n) / (1024 * 1024):.1f} MiB" if isinstance(n, int | float) else "–"


def triad_rows(triad: Mapping[str, Any]) -> list[tuple[str, float | None, str]]:
    """(name, loss, how) rows of the triad, in the order the docs use."""
    steps = triad.get("local_only_steps_mean", 0.0)
    return [
        ("base model alone", triad.get("base"), "frozen base, no adapter"),
        ("community adapter", triad.get("community"), "final federated adapter"),
        (
            "local-only",
            triad.get("local_only"),
            f"each phone alone, same steps as its participation (mean {fmt(steps, 3)})",
        ),
        (
            "centralized (upper bound)",
            triad.get("centralized"),
            f"{triad.get('centralized_steps')} steps × batch "
            f"{triad.get('centralized_batch_size')} on the union of all phones' data",
        ),
    ]


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


ROUND_COLUMNS = (
    ("round", "round"),
    ("status", "status"),
    ("sampled", "sampled"),
    ("contributors", "in sum"),
    ("not_allowed", "not allowed"),
    ("deadline", "deadline"),
    ("vanished_train", "vanished (train)"),
    ("vanished_secagg", "vanished (SecAgg)"),
    ("epsilon", "ε"),
    ("community_loss", "loss (phones)"),
    ("eval_loss", "loss (eval sample)"),
    ("round_s", "round s"),
)


def write_html(
    path: Path,
    summary: Mapping[str, Any],
    records: Sequence[Record],
    plots: Mapping[str, Path],
    scenario_toml: str,
) -> Path:
    title = f"fedlora simulation: {summary.get('scenario', '')}"
    planned = summary.get("rounds_planned")
    facts = [
        ("phones", summary.get("phones")),
        ("population", (summary.get("population") or {}).get("population")),
        ("rounds published / planned", f"{summary.get('rounds_published')} / {planned}"),
        ("contributions in sums", summary.get("contributions")),
        ("ε (δ)", f"{fmt(summary.get('epsilon'), 3)} ({fmt(summary.get('delta'))})"),
        ("bytes down / up", f"{mib(summary.get('bytes_down'))} / {mib(summary.get('bytes_up'))}"),
        ("wall time", f"{fmt((summary.get('wall_s') or {}).get('total'), 3)} s"),
        ("peak RSS (process tree)", f"{fmt(summary.get('peak_rss_mb'), 4)} MB"),
        ("status", summary.get("status")),
    ]
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(str(summary.get('description', '')))}</p>",
        _table(["", ""], facts),
    ]
    if summary.get("error"):
        parts.append(f"<p class='err'>error: {html.escape(str(summary['error']))}</p>")
    triad = summary.get("triad")
    if triad:
        parts.append("<h2>Held-out loss at the end of the run</h2>")
        rows = [
            (n, v, math.exp(v) if isinstance(v, float) else None, how)
            for n, v, how in triad_rows(triad)
        ]
        parts.append(_table(["model", "loss", "perplexity", "how"], rows))
    for name, p in plots.items():
        data = base64.b64encode(Path(p).read_bytes()).decode()
        parts.append(
            f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(name)}</figcaption></figure>"
        )
    parts.append("<h2>Rounds</h2>")
    parts.append(
        _table(
            [h for _, h in ROUND_COLUMNS], [[r.get(k) for k, _ in ROUND_COLUMNS] for r in records]
        )
    )
    parts.append("<h2>Scenario (reproduces the run)</h2>")
    parts.append(f"<pre>{html.escape(scenario_toml)}</pre>")
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:right}th{background:#f4f4f4}"
        "figure{display:inline-block;margin:0.5em}pre{background:#f8f8f8;padding:1em}"
        ".err{color:#b00}"
    )
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    path.write_text(doc)
    return path
