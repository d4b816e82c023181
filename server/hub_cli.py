"""``fedlora hub …``: serve the hub, seed a demo run, check and clean the registry.

A typer sub-app (:data:`app`) for the main CLI to mount (``app.add_typer(hub_cli.app,
name="hub")``); it also runs alone as ``python -m fedlora.server.hub_cli``, which is what the
container's entry point and the load benchmark use. Storage comes from the config
(``server.database_url``, ``server.blob_dir``) or the environment (``FEDLORA_HOME``,
``FEDLORA_DATABASE_URL``); admin tokens only from the environment (see
:mod:`fedlora.server.hub_auth`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from fedlora.config import FedloraSettings, load_settings
from fedlora.errors import FedloraError

if TYPE_CHECKING:
    from .registry import Registry

# The same -c/--set options as the rest of the CLI. They are defined here rather than
# imported from fedlora.cli.common: importing anything under fedlora.cli runs the main CLI's
# __init__, which imports this module (an import cycle) and every other command group.
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML configuration file (see fedlora.toml)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override a setting: section.key=value (TOML literal). Repeatable."
    ),
]
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def settings_from(config: Path | None, overrides: list[str] | None) -> FedloraSettings:
    return load_settings(config, overrides or [])


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Our own errors as one clear message and exit status 2, like the rest of the CLI."""
    try:
        yield
    except (FedloraError, FileNotFoundError, ValueError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        sys.exit(2)


app = typer.Typer(
    help="The adapter hub: HTTP API for phones, dashboard, registry maintenance.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

DbOpt = Annotated[
    str | None, typer.Option("--database-url", help="SQLAlchemy URL (overrides the config).")
]
BlobOpt = Annotated[
    Path | None, typer.Option("--blob-dir", help="Blob directory (overrides the config).")
]


def _open_registry(
    config: Path | None,
    set_: list[str] | None,
    database_url: str | None,
    blob_dir: Path | None,
    *,
    with_key: bool = True,
) -> Registry:
    from . import paths
    from .keys import load_or_create_signing_key
    from .registry import Registry

    settings = settings_from(config, set_)
    key = load_or_create_signing_key(paths.signing_key_path()) if with_key else None
    return Registry.open(
        settings.server, database_url=database_url, blob_dir=blob_dir, signing_key=key
    )


@app.command("serve")
def serve(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    host: Annotated[
        str | None,
        typer.Option(envvar="FEDLORA_HUB_HOST", help="Bind address (server.hub_host)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(envvar="FEDLORA_HUB_PORT", help="Port (server.hub_port)."),
    ] = None,
    database_url: DbOpt = None,
    blob_dir: BlobOpt = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
) -> None:
    """Serve the hub (API + dashboard) with uvicorn until interrupted."""
    import uvicorn

    from .hub import create_app

    with friendly_errors():
        settings = settings_from(config, set_)
        registry = _open_registry(config, set_, database_url, blob_dir)
        application = create_app(registry)
        bind_host = host or settings.server.hub_host
        bind_port = port or settings.server.hub_port
    console.print(f"fedlora hub on http://{bind_host}:{bind_port}/ (dashboard at /dashboard)")
    uvicorn.run(
        application,
        host=bind_host,
        port=bind_port,
        log_level=log_level,
        access_log=access_log,
        proxy_headers=False,
    )


@app.command("seed-demo")
def seed_demo(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    rounds: Annotated[int, typer.Option(min=1, max=10_000)] = 8,
    name: Annotated[str, typer.Option(help="Run name.")] = "demo",
    hidden: Annotated[int, typer.Option(min=4, max=8192, help="Demo adapter width.")] = 64,
    layers: Annotated[int, typer.Option(min=1, max=256, help="Demo adapter depth.")] = 2,
    database_url: DbOpt = None,
    blob_dir: BlobOpt = None,
) -> None:
    """Publish a synthetic run (random adapters, plausible metrics) for demos and smoke tests."""
    from .demo import seed_demo_run

    with friendly_errors():
        registry = _open_registry(config, set_, database_url, blob_dir)
        last = seed_demo_run(registry, rounds, name=name, hidden=hidden, layers=layers)
        assert last is not None
        console.print(
            f"run {name!r} (id {last.run_id}): round {last.round.number} committed, "
            f"community adapter v{last.community.id} {last.community.content_hash[:12]}…, "
            f"views at ranks {sorted(last.views)}"
        )


@app.command("publish")
def publish(
    adapter_path: Annotated[Path, typer.Argument(help="A fedlora .safetensors adapter.")],
    run: Annotated[str, typer.Option(help="Run name (created if missing).")] = "manual",
    views: Annotated[list[int] | None, typer.Option("--view", help="Derive a view.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    database_url: DbOpt = None,
    blob_dir: BlobOpt = None,
) -> None:
    """Sign and publish an adapter file as the next round of a run (no HTTP involved)."""
    from fedlora.adapter_io import load_adapter

    with friendly_errors():
        registry = _open_registry(config, set_, database_url, blob_dir)
        info = registry.begin_run(run)
        committed = registry.publish_external(
            info.id, load_adapter(adapter_path), views or [], note="cli"
        )
        console.print(
            f"published v{committed.community.id} as round {committed.round.number} of {run!r}"
        )


@app.command("fsck")
def fsck(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    database_url: DbOpt = None,
    blob_dir: BlobOpt = None,
) -> None:
    """Verify every referenced blob against its hash; exit 1 if any is missing or corrupt."""
    with friendly_errors():
        registry = _open_registry(config, set_, database_url, blob_dir, with_key=False)
        rep = registry.fsck()
    console.print(
        f"checked {rep.versions_checked} blobs: {len(rep.missing)} missing, "
        f"{len(rep.corrupt)} corrupt, {len(rep.unreferenced)} unreferenced, "
        f"{rep.temp_files} temp files"
    )
    for h in rep.missing:
        console.print(f"missing: {h}")
    for h in rep.corrupt:
        console.print(f"corrupt: {h}")
    if not rep.ok:
        raise typer.Exit(1)


@app.command("gc")
def gc(
    grace_s: Annotated[float, typer.Option(min=0.0, help="Keep files younger than this.")] = 3600,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    database_url: DbOpt = None,
    blob_dir: BlobOpt = None,
) -> None:
    """Delete unreferenced blobs and leftover temp files older than the grace period."""
    with friendly_errors():
        registry = _open_registry(config, set_, database_url, blob_dir, with_key=False)
        removed = registry.gc(grace_s=grace_s)
    console.print(f"removed {len(removed)} files")


@app.command("public-key")
def public_key() -> None:
    """Print the server's signing public key (PEM) and key id: what phones pin."""
    from fedlora.privacy.signing import key_id, public_key_to_pem

    from . import paths
    from .keys import load_or_create_signing_key

    with friendly_errors():
        key = load_or_create_signing_key(paths.signing_key_path()).public_key()
    console.print(f"key id: {key_id(key)}")
    console.print(public_key_to_pem(key).decode(), markup=False)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app()


if __name__ == "__main__":
    main()
