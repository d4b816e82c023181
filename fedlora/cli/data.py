"""`fedlora data ...`: synthetic private phone data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedlora.cli.common import ConfigOpt, SetOpt, console, friendly_errors, settings_from

app = typer.Typer(help="Generate and inspect phones' private data.", no_args_is_help=True)


@app.command("generate")
def generate(
    out: Annotated[Path, typer.Option(help="Directory to write one <client>.jsonl per phone.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing client files.")] = False,
) -> None:
    """Write each synthetic user's raw private data (data.num_clients users) as JSONL.

    Point `data.source` at the directory to train on it; held-out splits are made on load.
    """
    from fedlora.data import generate_user_examples, make_population, write_client_dir

    with friendly_errors():
        d = settings_from(config, set_).data
        users = make_population(d.num_clients, seed=d.seed)
        clients = {
            u.user_id: generate_user_examples(u, d.examples_per_client, seed=d.seed) for u in users
        }
        files = write_client_dir(out, clients, overwrite=overwrite)
        total = sum(len(v) for v in clients.values())
        console.print(f"wrote {len(files)} client files ({total} examples) to {out}")


@app.command("stats")
def stats(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Summarise the configured federation: clients, examples, topic skew."""
    from fedlora.data.from_settings import load_federation

    with friendly_errors():
        fed = load_federation(settings_from(config, set_).data)
        n_train = [len(c.train) for c in fed.clients.values()]
        n_held = [len(c.heldout) for c in fed.clients.values()]
        console.print(
            f"{fed.num_clients} clients; train examples min/mean/max "
            f"{min(n_train)}/{sum(n_train) / len(n_train):.1f}/{max(n_train)}; "
            f"held-out {sum(n_held)} in total"
        )
