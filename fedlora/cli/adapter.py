"""`fedlora adapter ...`: look into and convert adapter files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from fedlora.cli.common import console, friendly_errors

app = typer.Typer(help="Inspect and convert LoRA adapters.", no_args_is_help=True)


@app.command("inspect")
def inspect(
    path: Annotated[Path, typer.Argument(help="A .safetensors adapter blob or a PEFT directory.")],
) -> None:
    """Print an adapter's metadata and per-module ranks and norms."""
    import numpy as np

    from fedlora.adapter_io import content_hash, load_adapter

    with friendly_errors():
        adapter = load_adapter(path)
        m = adapter.meta
        console.print(f"[bold]{path}[/]")
        console.print(
            f"kind {m.kind}  version {m.version}  round {m.round}  "
            f"producer {m.producer}  dtype {m.dtype}"
        )
        console.print(f"base fingerprint {m.base_fingerprint}")
        console.print(f"target modules {', '.join(m.target_modules)}")
        console.print(
            f"parameters {adapter.num_parameters:,}  content sha256 {content_hash(adapter)}"
        )
        table = Table("module", "rank", "alpha", "‖A‖", "‖B‖", "‖ΔW‖")
        for name, pair in adapter:
            table.add_row(
                name,
                str(pair.rank),
                f"{m.alphas[name]:g}",
                f"{np.linalg.norm(pair.A):.4g}",
                f"{np.linalg.norm(pair.B):.4g}",
                f"{np.linalg.norm(adapter.delta_weight(name)):.4g}",
            )
        console.print(table)


@app.command("convert")
def convert(
    src: Annotated[Path, typer.Argument(help="Adapter blob (.safetensors) or PEFT directory.")],
    dst: Annotated[Path, typer.Argument(help="Output: *.safetensors blob, or a directory (PEFT).")],
    rank: Annotated[int | None, typer.Option(help="Produce a view at this rank.")] = None,
    method: Annotated[str, typer.Option(help="How to reach --rank: pad | truncate | svd.")] = "svd",
    base_fingerprint: Annotated[
        str | None, typer.Option(help="Fingerprint to stamp on a PEFT dir written by PEFT itself.")
    ] = None,
) -> None:
    """Convert between formats, optionally changing rank (pad, truncate or SVD re-factor)."""
    from fedlora.adapter_io import load_adapter, save_adapter
    from fedlora.ranks import pad_to_rank, refactor_to_rank, truncate_to_rank, view_error

    with friendly_errors():
        adapter = load_adapter(src, base_fingerprint=base_fingerprint)
        out = adapter
        if rank is not None:
            ops = {"pad": pad_to_rank, "truncate": truncate_to_rank, "svd": refactor_to_rank}
            if method not in ops:
                raise ValueError(f"--method must be one of {sorted(ops)}, got {method!r}")
            out = ops[method](adapter, rank)
            console.print(f"rank view error (relative ‖ΔW‖): {view_error(adapter, out):.3e}")
        written = save_adapter(out, dst)
        kind: Literal["PEFT directory", "safetensors blob"] = (
            "PEFT directory" if written.is_dir() else "safetensors blob"
        )
        console.print(f"wrote {kind} {written}")
