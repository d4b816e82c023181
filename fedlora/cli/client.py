"""`fedlora client ...`: the phone side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedlora.cli.client_export import export as _export
from fedlora.cli.common import (
    ConfigOpt,
    SetOpt,
    console,
    friendly_errors,
    progress_printer,
    settings_from,
)

app = typer.Typer(help="Phone-side commands.", no_args_is_help=True)
app.command("export")(_export)


@app.command("finetune")
def finetune(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    client: Annotated[str, typer.Option(help="Client id or index of the phone to train.")] = "0",
    steps: Annotated[
        int | None, typer.Option(help="Local steps (overrides client.local_steps).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where to write the adapter.")] = Path("runs/finetune"),
) -> None:
    """Fine-tune one phone locally on its private data; print held-out loss before/after."""
    with friendly_errors():
        overrides = list(set_ or [])
        if steps is not None:
            overrides.append(f"client.local_steps={steps}")
        settings = settings_from(config, overrides)
        from fedlora.client.finetune import finetune_one_phone

        result = finetune_one_phone(settings, client, out, progress=progress_printer("[phone] "))
        console.print(
            f"held-out loss {result.heldout_loss_before:.4f} → "
            f"[bold]{result.heldout_loss_after:.4f}[/] "
            f"after {result.steps} steps in {result.seconds:.1f}s"
        )
        console.print(f"adapter: {result.adapter_file}  PEFT dir: {result.peft_dir}")
        typer.echo(json.dumps(result.as_dict()))
