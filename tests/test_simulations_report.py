"""Run-directory outputs: metrics.jsonl, the decision trace, plots, HTML report, summary and
the generated docs page — from synthetic round summaries, no simulation needed."""

from __future__ import annotations

import json
import math
from pathlib import Path

from fedlora.server.round_loop import RoundSummary
from fedlora.simulations.metrics import MetricsFile, read_metrics, round_record
from fedlora.simulations.plots import write_plots
from fedlora.simulations.progress import round_line, summary_table
from fedlora.simulations.report import write_html, write_summary
from fedlora.simulations.results import write_results
from fedlora.simulations.trace import RoundOutcomes, TraceReader, participation

TRIAD = {
    "phones": 4,
    "base": 4.8,
    "community": 4.1,
    "local_only": 4.4,
    "centralized": 3.7,
    "local_only_steps_mean": 7.5,
    "local_only_trained_phones": 3,
    "centralized_steps": 40,
    "centralized_batch_size": 32,
    "per_round": {"0": 4.8, "1": 4.4, "2": 4.1},
}


def fake_records() -> list[dict[str, object]]:
    out = []
    for rnd in (1, 2, 3):
        status = "aborted" if rnd == 3 else "published"
        s = RoundSummary(
            round=rnd,
            status=status,
            reason="only 1 survivor" if rnd == 3 else "",
            sampled=5,
            contributors=3 if rnd < 3 else 0,
            dropouts=2,
            not_allowed=1,
            rank_mix={4: 1, 16: 2},
            epsilon=1.5 * rnd if rnd < 3 else None,
            community_loss=4.5 - 0.2 * rnd if rnd < 3 else None,
            local_loss_after=3.9,
            bytes_up=3 << 20,
            bytes_down=1 << 20,
            timings={"configure": 0.1, "train": 2.0, "secure_sum": 0.5},
        )
        oc = RoundOutcomes()
        oc.counts.update({"trained": 4, "not_allowed": 1, "vanished:secagg.2": 1})
        oc.max_device_s = 33.0
        out.append(round_record(s, oc, wall_s=10.0 * rnd))
    return out


def test_round_records_are_json_and_complete(tmp_path: Path) -> None:
    recs = fake_records()
    f = MetricsFile(tmp_path / "metrics.jsonl")
    for r in recs:
        f.append(r)
    back = read_metrics(tmp_path / "metrics.jsonl")
    assert len(back) == 3 and back[0]["round"] == 1
    assert back[0]["vanished_secagg"] == 1 and back[0]["trained"] == 4
    assert back[0]["rank_mix"] == {"4": 1, "16": 2}
    assert back[1]["community_perplexity"] == math.exp(back[1]["community_loss"])
    assert back[2]["epsilon"] is None and back[2]["status"] == "aborted"
    back[0]["eval_loss"] = 4.4
    f.rewrite(back)
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["eval_loss"] == 4.4
    assert "not allowed" in round_line(back[0]) and "ε 1.5" in round_line(back[0])


def test_trace_reader_is_incremental_and_counts_participation(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    reader = TraceReader(path)
    assert reader.outcomes(1).counts == {}
    path.write_text("1,5,trained,12.5\n1,6,not_allowed,0.000\n1,7,deadline,200.0\n1,5,van")
    oc = reader.outcomes(1)
    assert oc.counts == {"trained": 1, "not_allowed": 1, "deadline": 1}
    assert oc.max_device_s == 12.5
    with path.open("a") as f:  # the half-written line completes later
        f.write("ished:secagg.1,0.0\n2,5,trained,3.0\n")
    assert reader.outcomes(1).counts["vanished:secagg.1"] == 1
    assert reader.outcomes(2).counts["trained"] == 1
    assert participation(path, [5, 6, 9]) == {5: 2, 6: 0, 9: 0}


def test_plots_html_summary_and_results_page(tmp_path: Path) -> None:
    run = tmp_path / "run"
    recs = fake_records()
    MetricsFile(run / "metrics.jsonl").rewrite(recs)
    plots = write_plots(recs, TRIAD, run / "plots")
    assert set(plots) == {"loss", "epsilon", "participation", "bytes", "timings", "triad"}
    for p in plots.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.stat().st_size < 200 * 1024
    summary = {
        "scenario": "unit",
        "description": "synthetic",
        "phones": 5,
        "population": {"population": "mixed", "classes": {"mid": 5}},
        "rounds_planned": 3,
        "rounds_published": 2,
        "contributions": 6,
        "epsilon": 3.0,
        "delta": 1e-5,
        "noise": "distributed",
        "secure_aggregation": True,
        "bytes_up": 9 << 20,
        "bytes_down": 3 << 20,
        "triad": TRIAD,
        "status": "completed",
        "wall_s": {"total": 30.0, "simulation": 25.0, "evaluation": 4.0},
        "peak_rss_mb": 1234.5,
        "knobs": {"deadline_s": 120.0, "step_seconds": 6.0, "policy": "default"},
    }
    html = write_html(run / "report.html", summary, recs, plots, "[scenario]\nname = 'unit'\n")
    text = html.read_text()
    assert text.count("data:image/png;base64,") == len(plots)
    assert "community adapter" in text and "only 1 survivor" not in text.split("<h2>Rounds")[0]
    assert "[scenario]" in text
    write_summary(run / "summary.json", summary)
    assert json.loads((run / "summary.json").read_text())["triad"]["community"] == 4.1
    table = summary_table(summary)
    assert table.row_count > 8

    doc = write_results(run, tmp_path / "docs" / "results.md", tmp_path / "docs" / "img")
    md = doc.read_text()
    assert "| community adapter | 4.1000 |" in md
    assert "fedlora simulate --scenario unit" in md
    assert "![loss](img/results-loss.png)" in md
    assert (tmp_path / "docs" / "img" / "results-triad.png").exists()
