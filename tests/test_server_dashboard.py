"""The dashboard in a real headless Chromium: it renders its charts from the hub's API.

A hub with a seeded run (including a failed round) serves on 127.0.0.1; Chromium loads
``/dashboard``, runs its script (``--virtual-time-budget`` lets the fetches finish), dumps
the DOM and takes a screenshot. The DOM must hold one data point per committed round in
every chart, with the API's values; the PNG is kept in the test's tmp dir and, when
``FEDLORA_ARTIFACTS`` is set, copied there for people to look at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from test_server_support import serve_in_thread

from fedlora.privacy.signing import generate_signing_key
from fedlora.server.demo import seed_demo_run
from fedlora.server.hub import create_app
from fedlora.server.registry import Registry

LINE_CHARTS = {
    "loss": ["loss"],
    "perplexity": ["perplexity"],
    "epsilon": ["ε"],
    "participants": ["participants", "dropouts"],
    "bytes": ["up", "down"],
}


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no headless Chromium found (apt-get install chromium)")


class _Charts(HTMLParser):
    """Collects data points (circles/rects with data-round) per chart, and table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.chart: str | None = None
        self.points: dict[str, list[dict[str, str]]] = defaultdict(list)
        self.markers: dict[str, list[int]] = defaultdict(list)
        self.body: dict[str, str] = {}
        self.rows: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        elif tag == "svg" and "data-chart" in a:
            self.chart = a["data-chart"]
        elif self.chart and tag in ("circle", "rect") and "data-round" in a:
            self.points[self.chart].append(a)
        elif self.chart and tag == "line" and a.get("class") == "failed-marker":
            self.markers[self.chart].append(int(a["data-round"]))
        elif tag == "tr" and "data-round" in a:
            self.rows.append(a.get("class", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.chart = None


def test_dashboard_renders_charts_from_the_api(tmp_path: Path) -> None:
    chromium = _chromium()
    reg = Registry.open(
        database_url=f"sqlite:///{tmp_path / 'r.db'}",
        blob_dir=tmp_path / "blobs",
        signing_key=generate_signing_key(),
    )
    seed_demo_run(reg, 6, failed_round=3)
    png = tmp_path / "dashboard.png"
    with serve_in_thread(create_app(reg, tokens=[])) as base:
        run_id = httpx.get(f"{base}/v1/runs").json()[0]["id"]
        rounds = httpx.get(f"{base}/v1/runs/{run_id}/rounds").json()
        cmd = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-sync",
            "--disable-component-update",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--hide-scrollbars",
            "--window-size=1280,1650",
            "--virtual-time-budget=8000",
            f"--screenshot={png}",
            "--dump-dom",
            f"{base}/dashboard",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    reg.close()
    assert out.returncode == 0, out.stderr[-2000:]
    dom = _Charts()
    dom.feed(out.stdout)

    committed = [r for r in rounds if r["status"] == "committed"]
    failed = [r["number"] for r in rounds if r["status"] == "failed"]
    assert len(committed) == 6 and failed == [3]
    assert dom.body.get("data-state") == "ready", out.stdout[:2000]
    numbers = [r["number"] for r in committed]
    for chart, series in LINE_CHARTS.items():
        for name in series:
            pts = [p for p in dom.points[chart] if p["data-series"] == name]
            assert sorted(int(p["data-round"]) for p in pts) == numbers, (chart, name)
        assert dom.markers[chart] == failed, chart
    by_round = {int(p["data-round"]): float(p["data-value"]) for p in dom.points["loss"]}
    for r in committed:
        assert by_round[r["number"]] == pytest.approx(r["loss"])
    mix: dict[int, float] = defaultdict(float)
    for p in dom.points["rankmix"]:
        mix[int(p["data-round"])] += float(p["data-value"])
    assert mix == {r["number"]: r["participants"] for r in committed}
    phases = {p["data-series"] for p in dom.points["timings"]}
    assert phases == {"configure", "train", "secagg", "aggregate", "publish"}
    assert {int(p["data-round"]) for p in dom.points["timings"]} == set(numbers)
    assert dom.rows.count("failed") == 1 and dom.rows.count("committed") == 6

    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    artifacts = os.environ.get("FEDLORA_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(artifacts) / "dashboard.png")
