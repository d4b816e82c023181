"""`fedlora simulate`: hundreds of simulated phones on one machine (Flower simulation engine).

Register on the main app with ``app.command("simulate")(simulate.simulate)``; ``app`` here is
a one-command Typer app of its own, for tests and ``python -m fedlora.cli.simulate``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from fedlora.cli.common import SetOpt, console, friendly_errors


def _default_out(output_dir: str, name: str) -> Path:
    return Path(output_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def simulate(
    scenario: Annotated[
        str,
        typer.Option(
            "--scenario",
            help="Bundled scenario name (see --list) or a scenario TOML file.",
        ),
    ] = "default",
    set_: SetOpt = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="Connect to an existing Ray cluster (e.g. auto, ray://head:10001) "
            "instead of starting one here.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Run directory (new or empty). Default: <simulation.output_dir>/"
            "<scenario>-<timestamp>.",
        ),
    ] = None,
    list_: Annotated[
        bool, typer.Option("--list", help="List the bundled scenarios and exit.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress display; print the summary JSON.")
    ] = False,
) -> None:
    """Simulate a federated run: real ClientApp/ServerApp, device populations, DP, secure
    aggregation, registry; writes metrics, plots, an HTML report and the final adapter."""
    with friendly_errors():
        from fedlora.simulations.scenario import bundled_scenarios, load_scenario

        if list_:
            for name in bundled_scenarios():
                sc = load_scenario(name)
                console.print(f"[bold]{name}[/]  {sc.knobs.description}")
            return
        sc = load_scenario(scenario, set_ or [])
        from fedlora.simulations.driver import run_scenario
        from fedlora.simulations.progress import NullDisplay, RichDisplay, summary_table

        run_dir = out or _default_out(sc.settings.simulation.output_dir, sc.name)
        display = NullDisplay() if quiet else RichDisplay(console)
        result = run_scenario(sc, run_dir, ray_address=ray_address, display=display)
        if quiet:
            typer.echo(json.dumps(result.summary, default=str))
        else:
            console.print(summary_table(result.summary))
            console.print(f"run directory: {result.paths.root}  report: {result.paths.report}")
        if result.summary.get("status") != "completed":
            raise typer.Exit(1)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(simulate)

if __name__ == "__main__":  # pragma: no cover
    app()
