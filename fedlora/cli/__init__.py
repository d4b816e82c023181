"""The `fedlora` command line (typer + rich). Each command group lives in its own module."""

from __future__ import annotations

import typer

from fedlora import __version__
from fedlora.cli import adapter, base, client, data, deploy, keys, simulate
from fedlora.cli.common import ConfigOpt, SetOpt, console, friendly_errors, settings_from
from fedlora.server import hub_cli

app = typer.Typer(
    help="fedlora: federated LoRA fine-tuning for phones.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(base.app, name="base")
app.add_typer(data.app, name="data")
app.add_typer(adapter.app, name="adapter")
app.add_typer(client.app, name="client")
app.add_typer(hub_cli.app, name="hub")
app.add_typer(keys.app, name="keys")
app.add_typer(deploy.app, name="deploy")
app.command("simulate")(simulate.simulate)

config_app = typer.Typer(help="Show and check configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@app.command("version")
def version() -> None:
    """Print the fedlora version."""
    console.print(__version__)


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the effective configuration (defaults + file + overrides) as TOML."""
    from fedlora.config import settings_to_toml

    with friendly_errors():
        console.print(settings_to_toml(settings_from(config, set_)), markup=False, highlight=False)


@config_app.command("check")
def config_check(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Validate a configuration; exits 2 with a message naming each bad key."""
    with friendly_errors():
        settings_from(config, set_)
        console.print("configuration is valid")


def main() -> None:
    app()
