"""`fedlora client export`: an ExecuTorch training program for native handset apps.

Register in ``fedlora/cli/client.py`` with::

    from fedlora.cli.client_export import export as _export
    app.command("export")(_export)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedlora.cli.common import ConfigOpt, SetOpt, console, friendly_errors, settings_from


def export(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path, typer.Option(help="Output directory for the .pte and its files.")] = Path(
        "runs/native"
    ),
    rank: Annotated[int | None, typer.Option(help="LoRA rank (default: lora.rank).", min=1)] = None,
    seq_len: Annotated[
        int | None, typer.Option(help="Tokens per example (default: model.max_seq_len).", min=2)
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per training call.", min=1)] = 1,
    adapter: Annotated[
        Path | None,
        typer.Option(help="Start from this adapter (file or PEFT dir); sets rank and targets."),
    ] = None,
    float_base: Annotated[
        bool, typer.Option("--float-base", help="Keep base weights fp32 instead of int8.")
    ] = False,
) -> None:
    """Export base (int8 weight-only, in-graph) + LoRA training step as an ExecuTorch .pte."""
    with friendly_errors():
        settings = settings_from(config, list(set_ or []))
        from fedlora.adapter_io import load_adapter
        from fedlora.client.native_export import export_native

        start = load_adapter(adapter) if adapter is not None else None
        lora = settings.lora
        r = rank or lora.rank
        alpha = lora.alpha * r / lora.rank  # keep alpha / r (the scaling) as configured
        result = export_native(
            settings.model.base,
            out,
            rank=r,
            alpha=alpha,
            targets=lora.target_modules,
            seq_len=seq_len or settings.model.max_seq_len,
            batch_size=batch_size,
            adapter=start,
            int8=not float_base,
        )
        console.print(
            f"wrote {result.pte_path} ({result.pte_bytes / 1e6:.1f} MB, rank {result.rank}, "
            f"{len(result.parameters)} LoRA tensors) in {result.seconds:.0f}s"
        )
        typer.echo(json.dumps(result.as_dict()))
