"""Files the Flower tools read: the CLI's SuperLink connection and a ``flwr run`` run config.

Flower 1.41's CLI (``flwr run``, ``flwr supernode register``, ``flwr ls``) no longer reads
federations from the app's pyproject.toml: it reads named *SuperLink connections* from
``$FLWR_HOME/config.toml`` (``[superlink.NAME] address = …, root-certificates = …``). We write
that file into the deployment directory and point ``FLWR_HOME`` at it, so an operator's own
``~/.flwr`` is never touched and the CA the CLI trusts is the deployment's.

The run config goes to ``flwr run --run-config FILE.toml`` as a file rather than as
``key=value`` words: fedlora's overrides contain ``=``, ``;`` and double quotes, which
Flower's word splitter does not survive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import tomli_w

from fedlora.deployment.files import write_file

DEFAULT_CONNECTION = "fedlora"


def superlink_connection_toml(
    address: str,
    root_certificates: Path | None,
    *,
    name: str = DEFAULT_CONNECTION,
) -> str:
    """The ``config.toml`` text with one (default) connection; TLS unless no CA is given."""
    conn: dict[str, object] = {"address": address}
    if root_certificates is None:
        conn["insecure"] = True
    else:
        conn["root-certificates"] = str(root_certificates.resolve())
    return tomli_w.dumps({"superlink": {"default": name, name: conn}})


def write_superlink_connection(
    flwr_home: Path,
    address: str,
    root_certificates: Path | None,
    *,
    name: str = DEFAULT_CONNECTION,
) -> Path:
    """Write ``flwr_home/config.toml`` (replacing it: it is ours, generated)."""
    text = superlink_connection_toml(address, root_certificates, name=name)
    return write_file(flwr_home / "config.toml", text.encode(), secret=False, overwrite=True)


def fedlora_set_value(overrides: Sequence[str]) -> str:
    """``section.key=value`` overrides joined the way the apps split them (``;``)."""
    for item in overrides:
        if ";" in item:
            raise ValueError(f"override {item!r} contains ';', which separates overrides")
        if "=" not in item:
            raise ValueError(f"override {item!r} is not section.key=value")
    return ";".join(o.strip() for o in overrides if o.strip())


def run_config_toml(
    overrides: Sequence[str],
    *,
    config_path: str = "",
    run_name: str = "",
    extra: Mapping[str, str | int | float | bool] | None = None,
) -> str:
    """The run config for ``flwr run --run-config``: the keys the fedlora apps read."""
    data: dict[str, str | int | float | bool] = {
        "fedlora-config": config_path,
        "fedlora-set": fedlora_set_value(overrides),
        "fedlora-run": run_name,
    }
    data.update(extra or {})
    return tomli_w.dumps(data)


def write_run_config(path: Path, overrides: Sequence[str], *, run_name: str = "") -> Path:
    text = run_config_toml(overrides, run_name=run_name)
    return write_file(path, text.encode(), secret=False, overwrite=True)
