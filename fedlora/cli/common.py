"""Shared CLI plumbing: the console, config options and turning our errors into messages."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from fedlora.config import FedloraSettings, load_settings
from fedlora.errors import FedloraError

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)

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

T = TypeVar("T")


def settings_from(config: Path | None, overrides: list[str] | None) -> FedloraSettings:
    return load_settings(config, overrides or [])


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Print fedlora's own errors as one clear message and exit 2 (no traceback)."""
    try:
        yield
    except (FedloraError, FileNotFoundError, ValueError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        sys.exit(2)


def run_friendly(fn: Callable[[], T]) -> T:
    with friendly_errors():
        return fn()


def progress_printer(prefix: str = "") -> Callable[[str], None]:
    def say(msg: str) -> None:
        console.print(f"[dim]{prefix}[/]{msg}" if prefix else msg, soft_wrap=True)

    return say
