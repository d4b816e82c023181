"""`fedlora base ...`: the embedded default base model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedlora.cli.common import console, friendly_errors, progress_printer

app = typer.Typer(help="Build and inspect base models.", no_args_is_help=True)


@app.command("build")
def build(
    out: Annotated[
        Path | None, typer.Option(help="Directory to build into (default: $FEDLORA_HOME/models).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if already built.")] = False,
) -> None:
    """Build the embedded default model offline (seeded, deterministic) and print its losses."""
    from fedlora.base_model import (
        build_default_model,
        default_model_dir,
        is_built,
        read_build_report,
    )

    with friendly_errors():
        target = out or default_model_dir()
        if is_built(target) and not force:
            report = read_build_report(target)
            console.print(f"already built: {target} (use --force to rebuild)")
        else:
            report = build_default_model(target, progress=progress_printer("[base] "))
        if report is not None:
            console.print(
                f"held-out loss on generic text: built base [bold]{report.heldout_loss:.3f}[/] "
                f"vs random init of the same shape [bold]{report.random_init_loss:.3f}[/]"
            )
            console.print(f"fingerprint {report.fingerprint}")


@app.command("info")
def info(
    model: Annotated[
        str, typer.Argument(help="'default', a model directory or a hub id.")
    ] = "default",
) -> None:
    """Where a base model lives, its fingerprint and build record."""
    from fedlora.base_model import read_build_report, resolve_model
    from fedlora.fingerprint import fingerprint_model_dir

    with friendly_errors():
        directory = resolve_model(model, progress=progress_printer("[base] "))
        fp = fingerprint_model_dir(directory)
        console.print(f"directory   {directory}")
        console.print(f"fingerprint {fp.id}")
        report = read_build_report(directory)
        if report is not None:
            console.print(
                json.dumps(
                    {
                        "heldout_loss": report.heldout_loss,
                        "random_init_loss": report.random_init_loss,
                    }
                )
            )
