"""The rule table (`python -m fedlora.simulations.rule_table`): every cell's scenario is valid
and differs only in rule and privacy, rendering is honest about failures, the doc markers are
respected, node ids are seeded, and one tiny real run of two rules (one that works, one that
the round loop refuses) ends up in the table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedlora.errors import ConfigError
from fedlora.simulations.rule_table import (
    BEGIN,
    END,
    JSON_NAME,
    MODES,
    RULES,
    Cell,
    TableSetup,
    classify,
    main,
    render,
    run_table,
    sampling_check,
    seeded_node_ids,
    write_doc,
)
from fedlora.simulations.scenario import load_scenario


def _doc(cells: list[Cell], base: float | None = 4.6) -> dict[str, Any]:
    from dataclasses import asdict

    return {
        "setup": asdict(TableSetup()),
        "base_loss": base,
        "eval_phones": 16,
        "cells": [c.to_json() for c in cells],
        "command": "python -m fedlora.simulations.rule_table --out x",
        "generated": "2026-01-01 00:00 UTC",
        "machine": "test",
        "wall_s": 125.0,
    }


SAMPLED = {1: [0, 3, 5], 2: [1, 2, 5]}


def _ok(rule: str, mode: str, loss: float, eps: float | None = None) -> Cell:
    return Cell(
        rule=rule,
        mode=mode,
        status="ok",
        loss=loss,
        per_round={0: 4.6, 1: (4.6 + loss) / 2, 2: loss},
        epsilon=eps,
        rounds_published=2,
        rounds_planned=2,
        secure_aggregation=True,
        sampled=dict(SAMPLED),
        node_ids_seeded=True,
        wall_s=61.0,
    )


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", MODES)
def test_every_cell_is_a_valid_scenario_differing_only_in_rule_and_privacy(
    rule: str, mode: str
) -> None:
    setup = TableSetup()
    if rule == "flora" and mode == "dp":  # central noise protects a sum flora never forms
        with pytest.raises(ConfigError, match="never forms a sum"):
            load_scenario("smoke", setup.overrides(rule, mode))
        return
    sc = load_scenario("smoke", setup.overrides(rule, mode))
    ref = load_scenario("smoke", setup.overrides("ffa", "none"))
    s, r = sc.settings, ref.settings
    assert s.aggregation.rule == rule
    assert (s.data, s.client, s.server, s.simulation, s.model, s.lora) == (
        r.data,
        r.client,
        r.server,
        r.simulation,
        r.model,
        r.lora,
    )
    assert sc.knobs.model_dump(exclude={"name"}) == ref.knobs.model_dump(exclude={"name"})
    assert s.server.rounds == setup.rounds and s.data.num_clients == setup.phones
    assert sc.knobs.evaluate is False and sc.knobs.dropout_scale == 0.0
    assert sc.knobs.policy == "always"
    # flora cannot be securely summed; every other rule is
    assert s.privacy.secure_aggregation is (rule != "flora")
    if mode == "dp":
        assert s.privacy.noise == "central"
        assert s.privacy.clip_norm == setup.clip_norm_dp
        assert s.privacy.noise_multiplier == setup.noise_multiplier
    else:
        assert s.privacy.noise == "none" and s.privacy.clip_norm == setup.clip_norm_plain


def test_classify() -> None:
    assert classify(4.1, 8, 8, None) == "ok"
    assert classify(4.1, 5, 8, "round 6 aborted: x") == "partial"
    assert classify(None, 0, 8, "boom") == "failed"
    assert classify(float("nan"), 8, 8, None) == "diverged"
    assert classify(float("inf"), 8, 8, None) == "diverged"


def test_render_shows_numbers_failures_and_divergence() -> None:
    cells = [
        _ok("ffa", "none", 4.2),
        _ok("ffa", "dp", 4.5, eps=7.06),
        _ok("rank_fedavg", "none", 3.9),
        _ok("rank_fedavg", "dp", 7.9, eps=7.06),
        Cell(rule="flora", mode="none", status="failed", error="round 1 aborted: no sums"),
        Cell(
            rule="flora",
            mode="dp",
            status="failed",
            error="ConfigError: flora | cannot\nrun",
        ),
        Cell(rule="hetlora", mode="dp", status="diverged", loss=float("nan"), rounds_planned=2),
        Cell(
            rule="fedsa",
            mode="none",
            status="partial",
            loss=4.3,
            rounds_published=1,
            rounds_planned=2,
            error="round 2 aborted: only 1 phones",
        ),
    ]
    text = render(_doc(cells))
    assert "Base model alone: **4.600**" in text
    assert "| `ffa` | 4.200 (-0.400) | 4.500 (-0.100) |" in text
    assert "7.900 (+3.300, worse than base)" in text
    assert "ε = 7.06" in text
    # rules in the canonical order, each once in the main table
    main_rows = [ln for ln in text.splitlines() if ln.startswith("| `")][:5]
    assert [r.split("`")[1] for r in main_rows] == [
        "rank_fedavg",
        "hetlora",
        "ffa",
        "fedsa",
        "flora",
    ]
    assert "**failed** [" in text and "round 1 aborted: no sums" in text
    assert "flora \\| cannot run" in text  # one line, pipe escaped
    assert "**diverged**" in text
    assert "1/2 rounds published; round 2 aborted: only 1 phones" in text
    assert "not run" in text  # hetlora without DP was never run
    assert "Every run sampled the same phones in every round" in text
    assert "2.1 min" in text


def test_sampling_check_names_the_runs_that_differ() -> None:
    a, b = _ok("ffa", "none", 4.2), _ok("ffa", "dp", 4.5)
    b.sampled = {1: [0, 3, 5], 2: [1, 2, 4]}
    assert "differed" in sampling_check([a, b]) and "`ffa` (DP)" in sampling_check([a, b])
    a.node_ids_seeded = False
    assert "luck" in sampling_check([a])
    assert "No cell" in sampling_check([])


def test_cell_json_round_trip() -> None:
    c = _ok("hetlora", "dp", 4.4, eps=3.0)
    back = Cell.from_json(json.loads(json.dumps(c.to_json())))
    assert back == c


def test_write_doc_replaces_only_between_markers(tmp_path: Path) -> None:
    doc = tmp_path / "page.md"
    write_doc(doc, "first\n")
    assert doc.read_text().count(BEGIN) == 1 and "first" in doc.read_text()
    doc.write_text(f"# Title\n\nintro\n\n{BEGIN}\nold table\n{END}\n\noutro\n")
    write_doc(doc, "new table\n")
    text = doc.read_text()
    assert text == f"# Title\n\nintro\n\n{BEGIN}\nnew table\n{END}\n\noutro\n"
    plain = tmp_path / "plain.md"
    plain.write_text("# Page without markers\n")
    write_doc(plain, "t\n")
    assert plain.read_text() == f"# Page without markers\n\n{BEGIN}\nt\n{END}\n"


def test_render_only_rewrites_the_doc_from_the_json(tmp_path: Path) -> None:
    (tmp_path / JSON_NAME).write_text(json.dumps(_doc([_ok("ffa", "none", 4.2)])))
    page = tmp_path / "page.md"
    assert main(["--out", str(tmp_path), "--doc", str(page), "--render-only"]) == 0
    assert "| `ffa` | 4.200 (-0.400) | not run |" in page.read_text()


def test_seeded_node_ids_are_deterministic_and_restored() -> None:
    from flwr.server.superlink.linkstate import in_memory_linkstate as mod

    original = mod.generate_rand_int_from_bytes
    with seeded_node_ids(3) as ok:
        assert ok
        first = [mod.generate_rand_int_from_bytes(8, exclude={0}) for _ in range(5)]
    with seeded_node_ids(3):
        again = [mod.generate_rand_int_from_bytes(8) for _ in range(5)]
        taken = mod.generate_rand_int_from_bytes(8, exclude=set(again) | {0})
    assert first == again and len(set(first)) == 5 and taken not in again
    assert mod.generate_rand_int_from_bytes is original


@pytest.mark.slow
def test_tiny_real_table(tmp_path: Path, default_model_dir: Path) -> None:
    """Two rules, one round, a handful of phones: a summed rule (ffa, under SecAgg+) and one
    that travels per phone (flora, without) both get a number, and the page is written."""
    pytest.importorskip("ray")
    setup = TableSetup(phones=4, per_round=3, min_clients=3, rounds=1, local_steps=1, eval_phones=2)
    doc = run_table(setup, tmp_path / "rules", rules=("ffa", "flora"), modes=("none",))
    cells = {c["rule"]: c for c in doc["cells"]}
    assert cells["ffa"]["status"] == "ok", cells["ffa"]
    assert cells["ffa"]["rounds_published"] == 1 and cells["ffa"]["loss"] is not None
    assert set(cells["ffa"]["per_round"]) == {"0", "1"}
    assert cells["ffa"]["sampled"] == cells["flora"]["sampled"]  # same phones for both rules
    assert cells["flora"]["status"] == "ok", cells["flora"]
    assert cells["flora"]["rounds_published"] == 1 and cells["flora"]["loss"] is not None
    assert json.loads((tmp_path / "rules" / JSON_NAME).read_text())["cells"]
    page = tmp_path / "page.md"
    write_doc(page, render(doc))
    text = page.read_text()
    assert "| `ffa` |" in text and "| `flora` |" in text and "**failed**" not in text
